"""Does the bitwise engine predict what the fake-quant model predicts? On a real dev set, with every disagreement traced.

Three runs of one trained W1A1 checkpoint over the same dev batches:

* ``engine``: the packed model run in bits by :class:`binlab.infer.engine.PackedBert` (float32 around the products),
* ``float64``: the fake-quant model in float64, whose products the engine's integer products equal exactly,
* ``float32``: the fake-quant model in float32, as it was trained.

The engine's labels are expected to equal the float64 model's on every example. The float32 model can differ: its
rounding (about 1e-7 relative) moves an activation that lies that close to a binarization threshold to the other
side, one bit flips, and the flip spreads through the rest of the network. :func:`trace_flip` finds, for one
example, the **first** binarization in the forward pass where the float32 and float64 models set a different bit on
a real (non-padded) position: before it the two runs differ only by rounding, so it is the cause. It reports the
decision value there (what is compared with 0: ``x`` for ``sign``, ``x + t`` for BiT's signed binarizer,
``(x + t) / alpha - 1/2`` for its {0, alpha} one) in float64, and how far the float32 run's decision value is from
it. A flip is *explained by rounding* when the float64 decision value is no farther from the threshold than the two
runs' rounding-sized divergence at that site (see :func:`trace_flip`).

``binlab agreement RUN_OR_MODEL --task sst2 --glue-dir DIR`` prints the table; :func:`dev_agreement` returns it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from binlab.analysis.entropy import dev_batches
from binlab.data.glue import get_task
from binlab.data.metrics import compute_metrics
from binlab.infer.engine import PackedBert
from binlab.infer.export import export_packed, load_source_model, resolve_source
from binlab.infer.packed import load_packed
from binlab.model import BertForSequenceClassification
from binlab.quant.quantizers import ALPHA_MIN, Elastic, SteSign
from binlab.tokenizer import load_tokenizer

__all__ = ["Decision", "binarization_sites", "record_decisions", "trace_flip", "compare", "dev_agreement",
           "add_arguments", "run"]


# ----------------------------------------------------------------------------------------------------------
# the binarizations of a fake-quant model and their decision values


def binarization_sites(model: nn.Module) -> dict[str, nn.Module]:
    """name -> module of every activation binarizer: :class:`SteSign` and 1-bit :class:`Elastic` modules.

    (BiBERT's bool(scores) is a function, not a module: its scores are integers over sqrt(d), exact in float32
    and float64 alike, so it cannot flip on its own; a flip upstream of it shows at Q or K.)"""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, SteSign) or (isinstance(m, Elastic) and m.num_bits == 1)}


def _decision(module: nn.Module, x: Tensor) -> Tensor:
    """The value the binarizer compares with 0, computed as the module computes it (in x's dtype)."""
    if isinstance(module, SteSign):
        return x
    z = x if module.bias is None else x + module.bias.to(x.dtype)
    if module.signed:
        return z
    return z / module.alpha.detach().to(x.dtype).clamp_min(ALPHA_MIN) - 0.5


@dataclass
class Decision:
    """One call of one binarizer: its name, the bits it set (output > 0) and its decision values."""

    site: str
    bits: Tensor
    value: Tensor


def record_decisions(model: BertForSequenceClassification, batch: dict) -> tuple[Tensor, list[Decision]]:
    """The logits of ``model`` on ``batch`` and every binarization of its forward pass, in call order."""
    calls: list[Decision] = []
    handles = []
    for name, module in binarization_sites(model).items():
        def hook(m, inputs, output, name=name):
            calls.append(Decision(name, (output > 0).detach(), _decision(m, inputs[0].detach())))
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    finally:
        for h in handles:
            h.remove()
    return logits, calls


def _real(bits: Tensor, mask_row: Tensor) -> Tensor:
    """A boolean tensor shaped like one example's ``bits``: True on real positions (tokens, and keys for [H, L, L])."""
    real = torch.ones_like(bits, dtype=torch.bool)
    L = mask_row.numel()
    if bits.dim() == 2 and bits.shape[0] == L:  # [L, F]: a linear's input, Q, K, V
        real &= mask_row[:, None]
    elif bits.dim() == 3 and bits.shape[1:] == (L, L):  # [H, L, L]: the attention probabilities
        real &= mask_row[None, :, None] & mask_row[None, None, :]
    return real  # [F]: the pooler's input, the [CLS] row: always real


#: Float32 rounding, carried through a few layers, moves a decision value by about 1e-7 to 1e-5 of the site's
#: scale; a divergence above this share of it is a change of the model, not rounding.
ROUNDING_LIMIT = 1e-4


def trace_flip(calls32: list[Decision], calls64: list[Decision], index: int, mask_row: Tensor) -> dict | None:
    """The first binarization where example ``index`` got different bits in float32 and float64 (None if none).

    At that site the two runs still share every earlier bit, so their decision values differ only by what the
    float32 computation rounded: ``noise`` is the largest such difference among the site's real entries that did
    not flip. The flip is explained by rounding when every flipped value lies within ``noise`` of its threshold
    and ``noise`` is rounding-sized (at most :data:`ROUNDING_LIMIT` of the site's largest decision value)."""
    for c32, c64 in zip(calls32, calls64):
        b32, b64 = c32.bits[index], c64.bits[index]
        real = _real(b64, mask_row.bool())
        flipped = (b32 != b64) & real
        if not bool(flipped.any()):
            continue
        v64, v32 = c64.value[index].double(), c32.value[index].double()
        kept = real & ~flipped
        noise = float((v32 - v64)[kept].abs().max()) if bool(kept.any()) else 0.0
        scale = float(v64[real].abs().max())
        at = int(v64[flipped].abs().argmax())  # the flip farthest from its threshold: the one that needs the most
        where = [int(i) for i in flipped.nonzero()[at]]
        distance = float(v64[flipped].abs()[at])
        relative = noise / scale if scale > 0 else float("inf")
        return {"site": c64.site, "flipped": int(flipped.sum()), "position": where,
                "value_float64": float(v64[flipped][at]), "value_float32": float(v32[flipped][at]),
                "distance_to_threshold": distance, "rounding_noise": noise, "noise_relative": relative,
                "explained_by_rounding": distance <= noise and relative <= ROUNDING_LIMIT}
    return None


# ----------------------------------------------------------------------------------------------------------
# the dev set


@dataclass
class Agreement:
    """What :func:`dev_agreement` measured (``rows``: one per traced disagreement)."""

    task: str
    examples: int
    regression: bool
    counts: dict
    metric: dict
    max_abs_logit_diff: dict
    rows: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    engine_dtype: str = "float32"  # the float dtype the engine ran in around its integer products

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def markdown(self) -> str:
        lines = [f"{self.examples} {self.task} dev examples (the engine in {self.engine_dtype} around its products)",
                 "",
                 "| pair | " + ("max abs prediction difference" if self.regression else "equal labels") +
                 " | max abs logit difference |", "|---|---:|---:|"]
        for pair, n in self.counts.items():
            shown = f"{n:.3g}" if self.regression else f"{n} / {self.examples}"
            lines.append(f"| {pair} | {shown} | {self.max_abs_logit_diff[pair]:.3g} |")
        lines += ["", "| model | dev metric |", "|---|---:|"] + [f"| {k} | {v:.4f} |" for k, v in self.metric.items()]
        if self.rows:
            lines += ["", "float32 vs float64 disagreements, each traced to its first flipped bit:", "",
                      "| example | float64 label | float32 label | first flip (site) | bits flipped there | decision "
                      "value (float64) | rounding noise there (relative) | explained by rounding |",
                      "|---:|---:|---:|---|---:|---:|---:|---|"]
            for r in self.rows:
                f = r["flip"] or {}
                lines.append(f"| {r['example']} | {r['float64']} | {r['float32']} | {f.get('site', 'none found')} | "
                             f"{f.get('flipped', '')} | {f.get('value_float64', float('nan')):.3g} | "
                             f"{f.get('rounding_noise', float('nan')):.3g} ({f.get('noise_relative', float('nan')):.2g}) | "
                             f"{f.get('explained_by_rounding', False)} |")
        return "\n".join(lines)


def _metric(task, preds: Tensor, labels: Tensor) -> float:
    """The task's selection metric (accuracy, MCC, (Pearson + Spearman) / 2, ...)."""
    spec = get_task(task)
    return float(compute_metrics(spec, preds.numpy(), labels.numpy())[spec.selection_metric])


def compare(model: BertForSequenceClassification, batches: list[dict], task: str, *, engine: PackedBert | None = None,
            trace: bool = True, progress=None, engine_dtype: torch.dtype = torch.float32) -> Agreement:
    """The engine, the float64 and the float32 copy of the fake-quant ``model`` on ``batches`` (with ``labels``).

    ``engine``: the packed model of ``model`` (exported to a temporary folder when None, run in ``engine_dtype``:
    float32, as ``PackedBert`` runs by default, or float64, in which its labels must equal the float64 model's).
    ``progress``: a callable ``(done, total)`` called after each batch."""
    model32 = copy.deepcopy(model).float().eval()
    model64 = copy.deepcopy(model32).double()
    if engine is None:
        with tempfile.TemporaryDirectory() as tmp:
            engine = PackedBert(load_packed(export_packed(model32, tmp)), dtype=engine_dtype)
    regression = model32.config.num_labels == 1
    logits = {"engine": [], "float64": [], "float32": []}
    seconds = {k: 0.0 for k in logits}
    labels, rows, offset = [], [], 0
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        logits["engine"].append(engine(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).double())
        seconds["engine"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        l64, calls64 = record_decisions(model64, batch) if trace else (_plain(model64, batch), [])
        seconds["float64"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        l32, calls32 = record_decisions(model32, batch) if trace else (_plain(model32, batch), [])
        seconds["float32"] += time.perf_counter() - t0
        logits["float64"].append(l64.double())
        logits["float32"].append(l32.double())
        labels.append(batch["labels"])
        if trace and not regression:
            p32, p64 = l32.argmax(-1), l64.argmax(-1)
            for j in (p32 != p64).nonzero().flatten().tolist():
                rows.append({"example": offset + j, "float64": int(p64[j]), "float32": int(p32[j]),
                             "flip": trace_flip(calls32, calls64, j, batch["attention_mask"][j])})
        offset += len(batch["input_ids"])
        if progress is not None:
            progress(i + 1, len(batches))
    out = {k: torch.cat(v) for k, v in logits.items()}
    y = torch.cat(labels)
    preds = {k: (v[:, 0] if regression else v.argmax(-1)) for k, v in out.items()}
    pairs = (("engine", "float64"), ("engine", "float32"), ("float32", "float64"))
    counts, diffs = {}, {}
    for a, b in pairs:
        name = f"{a} vs {b}"
        counts[name] = float((preds[a] - preds[b]).abs().max()) if regression else int((preds[a] == preds[b]).sum())
        diffs[name] = float((out[a] - out[b]).abs().max())
    metric = {k: _metric(task, p.float() if regression else p, y) for k, p in preds.items()}
    return Agreement(get_task(task).name, len(y), regression, counts, metric, diffs, rows, seconds,
                     str(engine.dtype).removeprefix("torch."))


def dev_agreement(source: str | os.PathLike, task: str, glue_dir: str | os.PathLike, *,
                  packed: str | os.PathLike | None = None, examples: int | None = None, batch_size: int = 32,
                  max_length: int = 128, trace: bool = True, progress=None,
                  engine_dtype: torch.dtype = torch.float32) -> Agreement:
    """:func:`compare` on the dev set of ``task`` in the local GLUE folder ``glue_dir``.

    ``source``: a checkpoint directory, a ``binlab train`` output or a recipe run (as ``binlab export`` takes it);
    ``packed``: its packed export (exported to a temporary folder when None). ``examples``: the first N dev
    examples (None: all). ``engine_dtype``: as :func:`compare` takes it."""
    folder = resolve_source(source)
    model = load_source_model(folder)
    engine = None if packed is None else PackedBert(load_packed(packed), dtype=engine_dtype)
    data = dev_batches(task, glue_dir, load_tokenizer(folder), examples, batch_size, max_length)
    return compare(model, data, task, engine=engine, trace=trace, progress=progress, engine_dtype=engine_dtype)


def _plain(model, batch) -> Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits


# ----------------------------------------------------------------------------------------------------------
# the command line (binlab agreement)


ENGINE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a trained W1A1 checkpoint directory, `binlab train` output or recipe run")
    p.add_argument("--task", required=True, help="GLUE task whose dev set is compared (sst2, stsb, cola, ...)")
    p.add_argument("--glue-dir", required=True, help="the local GLUE folder in the original TSV layout")
    p.add_argument("--packed", default=None, help="its `binlab export` folder (default: export to a temporary one)")
    p.add_argument("--examples", type=int, default=None, help="first N dev examples (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (use the run's; default 128)")
    p.add_argument("--no-trace", action="store_true", help="compare labels only, do not trace disagreements")
    p.add_argument("--engine-dtype", default="float32", choices=sorted(ENGINE_DTYPES),
                   help="the engine's float dtype around its integer products (default: float32, as it runs; "
                        "float64: its labels must then equal the float64 model's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--json", default=None, help="also write the result as JSON to this file")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    result = dev_agreement(args.source, args.task, args.glue_dir, packed=args.packed, examples=args.examples,
                           batch_size=args.batch_size, max_length=args.max_length, trace=not args.no_trace,
                           engine_dtype=ENGINE_DTYPES[args.engine_dtype])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.as_dict(), indent=1))
    print(result.markdown())
    return 0
