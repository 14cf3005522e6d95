"""Fine-tuning and evaluation loop with checkpoints that survive interruption.

One loop for every chapter: full-precision teachers, quantized students and (through ``loss_fn``)
distillation. What it guarantees:

* **Nothing lost on interruption.** Every ``save_every`` steps (and at every evaluation) the model,
  the optimizer and schedule state, the RNG state and the position in the data are written to a new
  ``step-N/`` folder; only then is the ``latest`` pointer replaced (atomically, ``os.replace``). A run
  killed at any moment resumes from the last complete checkpoint with ``resume=True`` and ends with the
  same weights as a run that was never interrupted (same seed): the data order is a function of
  (seed, epoch), and dropout draws from the restored RNG.
* **No pickle.** Tensors go to safetensors, everything else to JSON.
* **Honest numbers.** The dev set is evaluated every ``eval_every`` steps; the results JSON reports the
  best dev score (what the papers report, methods.md §1) *and* the final one.
* **Any number of processes.** Under torchrun (:mod:`binlab.train.distributed`) each process trains on its shard of
  every global batch of ``batch_size`` examples, DistributedDataParallel averages the gradients, and rank 0 alone
  writes; a resume must use as many processes as the run that wrote the checkpoint (see :class:`Trainer`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from binlab.data.glue import select_texts
from binlab.data.sampling import encoded_lengths, length_grouped_order, shuffled_order
from binlab.files import atomic_save_tensors, atomic_write_text, fsync_dir, load_tensors
from binlab.quant.quantizers import batch_share
from binlab.train import distributed as D
from binlab.train.calibration import calibrate, calibration_batch, data_initialised
from binlab.train.optim import clip_gradients, make_optimizer, make_schedule


@dataclass
class TrainConfig:
    """How one Trainer run trains. The defaults are ``binlab train``'s (its flags read them from here): plain
    fine-tuning of a full-precision teacher. Recipes hold one and replace the learning rate and epochs per stage.
    """

    lr: float = 5e-5
    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    warmup: float = 0.1
    weight_decay: float = 0.01
    clip_lr: float = 1e-4
    optimizer: str = "adamw"          # "adamw" | "adamw_fused" | "bertadam" (binlab.train.optim.OPTIMIZERS)
    grad_clip: float = 1.0
    eval_every: int = 500             # steps; 0 = only at the end of each epoch
    save_every: int = 200             # steps; checkpoints are also written at every evaluation
    keep_checkpoints: int = 1
    seed: int = 42
    max_steps: int = 0                # stop after this many steps (0 = run all epochs)
    group_by_length: bool = False     # batches of similar length (binlab.data.sampling): less padding
    dropout: float | None = None      # both dropout probabilities of the trained model (None: the model's own)
    progress: bool = True

    def __post_init__(self):
        for name in ("lr", "epochs", "batch_size", "eval_batch_size", "max_length"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"TrainConfig.warmup must be in [0, 1), got {self.warmup}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"TrainConfig.dropout must be in [0, 1) or None, got {self.dropout}")


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of ``model`` at probability ``p``, and its config's two dropout fields (what a saved copy
    says), for ``TrainConfig.dropout`` (``binlab train --dropout``)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
    config = getattr(model, "config", None)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if hasattr(config, name):
            setattr(config, name, p)


# ----------------------------------------------------------------------------- optimizer state <-> safetensors

def _optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for idx, d in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------- the loop

@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    best_metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    elapsed_s: float = 0.0


def default_loss(model: nn.Module, batch: dict, num_labels: int | None = None) -> torch.Tensor:
    """Cross-entropy on ``batch["labels"]`` for classification, MSE for regression (``num_labels == 1``; None:
    regression when the model has a single output). The loss of plain fine-tuning, of the loss landscapes and of
    the width-pruning importance."""
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   token_type_ids=batch.get("token_type_ids")).logits
    if (logits.shape[-1] == 1) if num_labels is None else (num_labels == 1):
        return nn.functional.mse_loss(logits.squeeze(-1), batch["labels"].to(logits.dtype))
    return nn.functional.cross_entropy(logits, batch["labels"].long())


class Trainer:
    """Train ``model`` on ``train`` (a GLUE split), evaluate on ``dev``, checkpoint into ``out_dir``.

    ``encode(texts_a, texts_b, max_length) -> dict of tensors`` turns text into model inputs (the
    tokenizer's ``encode_batch``). ``evaluate(model, dev) -> (score, metrics)`` scores the model; the
    score is the task's selection metric. ``loss_fn(model, batch) -> loss`` defaults to CE / MSE and is
    what distillation replaces; it is a mean over the batch's examples (a distributed run averages the shards').

    In a process group of W > 1 processes (torchrun; :mod:`binlab.train.distributed`):

    * ``batch_size`` is the global batch and must be a multiple of W; each process computes its contiguous
      ``batch_size / W`` examples of every global batch (a last batch of an epoch with fewer than W examples is
      dropped), DistributedDataParallel averages the gradients, and the loss is weighted so that the average is
      the gradient of the whole batch's mean also when the shards of the last batch differ in size;
    * the learned-step quantizers' 1/sqrt(N) gradient scale counts the N of the global batch
      (:func:`binlab.quant.quantizers.batch_share`);
    * data-initialised quantizer scales not set yet (LSQ's first-batch initialisation) are calibrated on the first
      training examples before the model is wrapped (:func:`binlab.train.calibration.calibrate`, broadcast from
      rank 0): a single process initialises them from its first training batch instead;
    * each process draws its own dropout (seed + rank); the checkpoint holds every process's RNG state and the
      number of processes, and a resume with another number is refused;
    * every process evaluates the whole dev set, and rank 0's score decides the best step; only rank 0 writes
      checkpoints, ``best_model.safetensors``, ``results.json`` and the progress bar.

    With dropout off and a fixed padded length the final weights equal one process's on the full batch to float
    rounding (tests/test_distributed.py). What cannot match exactly (docs/methods.md, "Data-parallel training"):
    quantizers whose forward takes a statistic of the whole tensor (the 8-bit max-abs, the per-tensor minimum of
    the unsigned multi-bit LSQ / elastic, BiBERT's DMD similarity over the batch's tokens), losses averaged over
    tokens with dynamic padding (each shard pads to its own longest sentence), and dropout.
    """

    def __init__(self, model: nn.Module, train, dev, encode: Callable, evaluate: Callable,
                 out_dir: str | os.PathLike, config: TrainConfig, loss_fn: Callable | None = None,
                 num_labels: int = 2, run_info: dict | None = None):
        if len(train) == 0:
            raise ValueError("the training split is empty")
        self.model, self.train, self.dev = model, train, dev
        self.encode, self.evaluate, self.cfg = encode, evaluate, config
        self.num_labels = num_labels
        self.loss_fn = loss_fn or (lambda m, b: default_loss(m, b, num_labels))
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.run_info = run_info or {}
        self.world, self.rank = D.world_size(), D.rank()
        D.check_batch_size(config.batch_size, self.world)
        self.steps_per_epoch = D.batches_per_epoch(len(train), config.batch_size, self.world)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train)} training examples are fewer than the {self.world} processes")
        if config.dropout is not None:
            set_dropout(model, config.dropout)
        self.total_steps = math.ceil(self.steps_per_epoch * config.epochs)
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.optimizer = make_optimizer(model, config.optimizer, config.lr, config.weight_decay, config.clip_lr)
        self.schedule = make_schedule(self.optimizer, self.total_steps, config.warmup)
        self.state = TrainState()
        self._lengths = None  # train_lengths(), for length-grouped batches

    # -- data order: a pure function of (seed, epoch), so a resumed run sees the same batches
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 1000003 + epoch)
        if self.cfg.group_by_length:
            return length_grouped_order(self.train_lengths(), self.cfg.batch_size, g)
        return shuffled_order(len(self.train), g)

    def train_lengths(self) -> torch.Tensor:
        """The encoded length of every training example (tokens, at most ``max_length``), computed once."""
        if self._lengths is None:
            self._lengths = encoded_lengths(self.train, self.encode, self.cfg.max_length)
        return self._lengths

    def _batch(self, indices) -> dict:
        idx = [int(i) for i in indices]
        a, b = select_texts(self.train, idx)
        batch = dict(self.encode(a, b, self.cfg.max_length))
        labels = [self.train.labels[i] for i in idx]
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if self.num_labels == 1 else torch.long)
        return batch

    # -- checkpoints
    def _ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self) -> Path:
        rng = D.gather_rng_states()  # every process takes part; rank 0 alone writes
        root = self._ckpt_root()
        final = root / f"step-{self.state.step:07d}"
        if not D.is_main():
            return final
        root.mkdir(exist_ok=True)
        tmp = root / f".tmp-step-{self.state.step:07d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        atomic_save_tensors(self.model.state_dict(), tmp / "model.safetensors")
        opt_tensors, opt_meta = _optimizer_to_flat(self.optimizer)
        opt_tensors["rng.torch"] = rng[0]
        opt_tensors.update({f"rng.torch.rank{r}": state for r, state in enumerate(rng[1:], start=1)})
        atomic_save_tensors(opt_tensors, tmp / "optimizer.safetensors")
        sched = {k: v for k, v in self.schedule.state_dict().items() if k != "lr_lambdas"}
        atomic_write_text(tmp / "trainer_state.json", json.dumps(
            {"state": asdict(self.state), "optimizer": opt_meta, "schedule": sched,
             "config": asdict(self.cfg), "total_steps": self.total_steps, "world_size": self.world}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        atomic_write_text(root / "latest", final.name)
        # keep only the newest few complete checkpoints
        done = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in done[:-max(1, self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self) -> bool:
        """Restore the newest complete checkpoint; False if there is none."""
        pointer = self._ckpt_root() / "latest"
        if not pointer.is_file():
            return False
        ckpt = self._ckpt_root() / pointer.read_text().strip()
        meta = json.loads((ckpt / "trainer_state.json").read_text())
        if meta.get("world_size", 1) != self.world:
            raise ValueError(f"checkpoint {ckpt} was written by a run on {meta.get('world_size', 1)} process(es), "
                             f"this one has {self.world}: resume with the same number (torchrun's nodes times "
                             "processes per node), since each process's share of a batch and its dropout depend on it")
        if meta["config"].get("group_by_length", False) != self.cfg.group_by_length:
            raise ValueError(f"checkpoint {ckpt} was written with group_by_length="
                             f"{meta['config'].get('group_by_length', False)}: resume with the same data order")
        if meta["config"].get("seed") != self.cfg.seed or meta["total_steps"] != self.total_steps:
            raise ValueError(f"checkpoint {ckpt} was written by a run with another seed or length; "
                             "use a new output directory or the same settings")
        missing, unexpected = self.model.load_state_dict(load_tensors(ckpt / "model.safetensors"), strict=True), None
        del missing, unexpected
        opt_tensors = load_tensors(ckpt / "optimizer.safetensors")
        torch.set_rng_state(opt_tensors["rng.torch" if self.rank == 0 else f"rng.torch.rank{self.rank}"])
        opt_tensors = {k: v for k, v in opt_tensors.items() if not k.startswith("rng.")}
        self.optimizer.load_state_dict(_optimizer_from_flat(opt_tensors, meta["optimizer"]))
        self.schedule.load_state_dict({**self.schedule.state_dict(), **meta["schedule"]})
        self.state = TrainState(**meta["state"])
        return True

    def save_best(self) -> None:
        """The best-dev model, as a state dict (the CLI also writes an HF-format copy). Rank 0 only."""
        if D.is_main():
            atomic_save_tensors(self.model.state_dict(), self.out / "best_model.safetensors")

    # -- evaluation
    def _evaluate(self) -> dict:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            score, metrics = self.evaluate(self.model, self.dev)
        score = D.broadcast_float(score)  # rank 0's: every process picks the same best step
        self.model.train(was_training)
        entry = {"step": self.state.step, "epoch": self.state.epoch, "score": score, **metrics}
        self.state.history.append(entry)
        if score > self.state.best_score:
            self.state.best_score, self.state.best_step, self.state.best_metrics = score, self.state.step, metrics
            self.save_best()
        return entry

    # -- one step
    def _calibrate_unset_scales(self) -> None:
        """Distributed runs: data-initialised quantizer scales that are not set yet would each start from their own
        process's first shard. Calibrate them on the first training examples instead, the same in every process."""
        unset = [name for name, m in data_initialised(self.model).items() if not bool(m.initialized)]
        if unset:
            report = calibrate(self.model, calibration_batch(self.train, self.encode, self.cfg.max_length))
            if D.is_main():
                print(f"{len(unset)} quantizer scales were not initialised yet; on the first training examples, the "
                      f"same in every process: {report.describe()}", flush=True)

    def _step(self, net: Callable, indices: torch.Tensor) -> float:
        """One optimizer step on the global batch ``indices``, of which this process computes its shard; returns the
        loss of the whole global batch. ``net(batch)`` is the loss of the model (in DistributedDataParallel in a
        distributed run, :func:`binlab.train.distributed.wrap`)."""
        local = D.shard(indices, self.rank, self.world)
        share = len(local) / len(indices)
        batch = self._batch(local)
        with batch_share(share):  # the quantizers' gradient scales count the global batch
            loss = net(batch)
        # every process's mean, weighted by its share of the examples: the global batch's mean, the same everywhere
        total = D.all_reduce_sum(loss.detach() * share) if self.world > 1 else loss.detach()
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became {total.item()} at step {self.state.step}; "
                                     "lower the learning rate or check the inputs")
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages the processes' gradients: weighted by share * W, that average is the gradient of the global
        # batch's mean also when the shards differ in size (the last batch of an epoch)
        (loss * (share * self.world) if self.world > 1 else loss).backward()
        clip_gradients(self.model, self.optimizer, self.cfg.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        return total.item()

    def fit(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if resume and self.load_checkpoint():
            if D.is_main():
                print(f"resumed from step {self.state.step} (epoch {self.state.epoch}, "
                      f"batch {self.state.batch_in_epoch})", flush=True)
        else:
            torch.manual_seed(cfg.seed + self.rank)  # each process its own dropout
        if self.world > 1:
            self._calibrate_unset_scales()
        net = D.wrap(self.model, self.loss_fn)  # after any calibration: every process starts from rank 0's weights
        self.model.train()
        t0 = time.perf_counter() - self.state.elapsed_s
        bar = None
        if cfg.progress and D.is_main():
            bar = tqdm(total=self.total_steps, initial=self.state.step, desc="train", dynamic_ncols=True)
        last_loss = math.nan
        while self.state.step < self.total_steps:
            order = self._epoch_order(self.state.epoch)
            starts = range(self.state.batch_in_epoch * cfg.batch_size, self.steps_per_epoch * cfg.batch_size,
                           cfg.batch_size)
            for start in starts:
                if self.state.step >= self.total_steps:
                    break
                last_loss = self._step(net, order[start:start + cfg.batch_size])
                self.state.step += 1
                self.state.batch_in_epoch += 1
                self.state.elapsed_s = time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.4f}", epoch=self.state.epoch)
                evaluated = False
                if cfg.eval_every and self.state.step % cfg.eval_every == 0:
                    entry = self._evaluate()
                    evaluated = True
                    msg = (f"step {self.state.step}/{self.total_steps}: train loss {last_loss:.4f}, "
                           f"dev {entry['score']:.4f} (best {self.state.best_score:.4f} @ {self.state.best_step}), "
                           f"{self.state.elapsed_s:.0f} s")
                    if bar is not None:
                        bar.write(msg)
                    elif D.is_main():
                        print(msg, flush=True)
                if evaluated or (cfg.save_every and self.state.step % cfg.save_every == 0):
                    self.save_checkpoint()
            else:
                # the epoch ran to its end
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                if not cfg.eval_every:
                    self._evaluate()
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        final = self._evaluate() if not self.state.history or self.state.history[-1]["step"] != self.state.step \
            else self.state.history[-1]
        self.state.elapsed_s = time.perf_counter() - t0
        self.save_checkpoint()
        results = {
            **self.run_info,
            "config": asdict(cfg),
            "steps": self.state.step,
            "wall_time_s": round(self.state.elapsed_s, 1),
            "final_train_loss": last_loss,
            "best": {"step": self.state.best_step, "score": self.state.best_score, **self.state.best_metrics},
            "final": final,
            "history": self.state.history,
            "world_size": self.world,
        }
        if D.is_main():
            atomic_write_text(self.out / "results.json", json.dumps(results, indent=1))
        D.barrier()  # what rank 0 wrote is there before any process reads it
        return results
