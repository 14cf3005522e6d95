"""Data-parallel training on several processes or machines, on PyTorch's own engine (``torch.distributed``, DDP).

``torchrun --nproc-per-node N -m binlab train ...`` starts N copies of ``binlab train`` and tells each one its place
in environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
:func:`init_from_env` joins them into one process group. What the Trainer and the recipes ask of it:

* **the backend**, chosen per tensor (:func:`backend`): gloo for CPU tensors, and NCCL for CUDA tensors where CUDA
  is there (``"cpu:gloo,cuda:nccl"``). Nothing to set.
* **who is who**: :func:`world_size`, :func:`rank`, :func:`is_main` (1, 0, True in a plain single process, where
  every function here does nothing and costs nothing).
* **the data**: every process draws the same order of the epoch (a function of seed and epoch) and cuts the same
  global batches of ``--batch-size`` examples from it; :func:`shard` hands each process its contiguous share of
  each one (:func:`batches_per_epoch`: a last batch with fewer examples than processes is dropped).
* **the gradients**: :func:`wrap` puts the model and its loss in ``DistributedDataParallel``, which averages the
  gradients in the backward pass (the Trainer weights each shard's loss by its share of the batch, and gives the
  quantizers the global N of their gradient scale: :func:`binlab.quant.quantizers.batch_share`).
  ``find_unused_parameters=True``, looked for from the loss: a parameter that gets no
  gradient in some configuration (the classifier under a hidden-states-only loss, an unused threshold) is skipped
  instead of holding up the reduction (torch then warns, once, when it finds none: harmless).
* **equal starts**: DDP copies rank 0's parameters to every process when it wraps the model; data-initialised
  quantizer scales are calibrated before that and broadcast from rank 0 by the calibration itself
  (:func:`broadcast_from_main`, :func:`binlab.train.calibration.calibrate`).
* **one writer**: only rank 0 writes checkpoints, results, models and progress bars (``if is_main()``); a
  :func:`barrier` makes the others wait before they read what it wrote. ``--out`` must be a folder every
  machine sees (a shared filesystem) for the other machines to read the stages' models and to resume.
"""

from __future__ import annotations

import contextlib
import functools
import os
from datetime import timedelta
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["backend", "init_from_env", "shutdown", "is_distributed", "world_size", "rank", "is_main", "barrier",
           "check_batch_size", "batches_per_epoch", "shard", "all_reduce_sum", "broadcast_from_main",
           "broadcast_float", "gather_rng_states", "wrap", "main_prints_only"]

#: How long a process waits in a collective for the others (an evaluation on the CPU can be long).
TIMEOUT = timedelta(hours=2)


def backend(cuda: bool | None = None) -> str:
    """``"cpu:gloo,cuda:nccl"`` where CUDA is available (each tensor goes over the backend of its device), else
    ``"gloo"``. ``cuda``: override the check (tests)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_from_env(timeout: timedelta = TIMEOUT) -> bool:
    """Join the process group that torchrun describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``). True if this call created the group (the caller then calls
    :func:`shutdown`); False in a plain single process or when a group exists already. ``timeout``: how long a
    collective waits for the slowest process before it fails."""
    if dist.is_initialized() or "WORLD_SIZE" not in os.environ:
        return False
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start the processes with torchrun, "
                         "which sets all four (README, \"Bigger runs\")")
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # NCCL: one GPU per process
    dist.init_process_group(backend(), timeout=timeout)
    return True


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, the process that writes (and in a single process)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


# ----------------------------------------------------------------------------------------------------------
# the data: one global batch, cut into one shard per process


def check_batch_size(batch_size: int, world: int | None = None) -> None:
    """ValueError unless ``world`` processes (default: this group's) can split ``batch_size`` evenly."""
    world = world_size() if world is None else world
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} is the global batch, split evenly over the {world} processes: "
                         f"use a multiple of {world} (e.g. {batch_size - batch_size % world or world})")


def batches_per_epoch(n: int, batch_size: int, world: int | None = None) -> int:
    """Global batches of ``batch_size`` in an epoch of ``n`` examples: the last, smaller one counts only if every
    one of the ``world`` processes gets at least one of its examples (with one process: ``ceil(n / batch_size)``)."""
    world = world_size() if world is None else world
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world else 0)


def shard(indices: torch.Tensor, rank_: int | None = None, world: int | None = None) -> torch.Tensor:
    """This process's contiguous share of one global batch: the ``rank_``-th of ``world`` nearly equal parts (the
    first ``len % world`` one longer). The shards are disjoint and, in rank order, make up the batch."""
    world = world_size() if world is None else world
    rank_ = rank() if rank_ is None else rank_
    if world == 1:
        return indices
    size, extra = divmod(len(indices), world)
    start = rank_ * size + min(rank_, extra)
    return indices[start:start + size + (1 if rank_ < extra else 0)]


# ----------------------------------------------------------------------------------------------------------
# collectives (no-ops in a single process)


def _comm(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` that the backend can send: gloo takes no bool tensors."""
    t = t.detach()
    return t.to(torch.uint8) if t.dtype == torch.bool else t.clone()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the processes (a new tensor; ``t`` itself in a single process)."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def broadcast_from_main(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite every tensor of ``tensors`` (parameters or buffers, in place) with rank 0's value."""
    if not is_distributed():
        return
    for t in tensors:
        buf = _comm(t)
        dist.broadcast(buf, src=0)
        t.copy_(buf.to(t.dtype))


def broadcast_float(value: float) -> float:
    """Rank 0's ``value`` on every process (a dev score: every process then makes the same choices with it)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t)


def gather_rng_states() -> list[torch.Tensor]:
    """Every process's torch RNG state (the dropout of its shard), in rank order, on every process."""
    state = torch.get_rng_state()
    if not is_distributed():
        return [state]
    out = [torch.empty_like(state) for _ in range(world_size())]
    dist.all_gather(out, state)
    return out


# ----------------------------------------------------------------------------------------------------------
# the model and the output


class _Loss(nn.Module):
    """``model`` and ``loss_fn`` as one module whose output is the loss: DistributedDataParallel then looks for the
    parameters that got no gradient from the loss itself, not from everything the model returned."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        object.__setattr__(self, "loss_fn", loss_fn)  # not a submodule: a teacher inside it is not trained

    def forward(self, batch: dict) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def wrap(model: nn.Module, loss_fn: Callable) -> Callable[[dict], torch.Tensor]:
    """``net(batch) -> loss_fn(model, batch)``: in DistributedDataParallel in a process group (the gradients of
    the backward pass averaged over the processes; rank 0's parameters and buffers copied to every process now), the
    plain call in a single process."""
    if not is_distributed():
        return functools.partial(loss_fn, model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter of the model has requires_grad=False")
    device = params[0].device
    # find_unused_parameters: a parameter the loss does not reach (the classifier under a hidden-states loss, an
    # unused threshold) is marked ready instead of holding the reduction up; its gradient stays None, as in one
    # process
    return nn.parallel.DistributedDataParallel(_Loss(model, loss_fn), find_unused_parameters=True,
                                               device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def main_prints_only():
    """Inside the block, what the processes other than rank 0 print to stdout is dropped (one copy of the log).
    stderr (warnings, errors) stays."""
    if is_main():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
