"""How much information a binarized attention map keeps: the entropy of its rows (BiBERT's argument, chapter 6).

A {0, 1} attention row over n real keys with k ones has p = k / n; its binary entropy

    H(p) = - p log2 p - (1 - p) log2 (1 - p)        bits per entry; H(0) = H(1) = 0, H(1/2) = 1

is 0 when the row is all ones or all zeros (it tells nothing about which keys matter) and 1 bit when half of it is
on. BiBERT (Qin et al., ICLR 2022; methods.md §3.3) compares four ways to binarize an attention map::

    method         a 1 of the map where                          from
    sign_softmax   sign(P) = +1, i.e. everywhere (P > 0)          P = softmax(S): the zero-entropy map
    threshold      P > tau (a fixed threshold, swept)             the "shifted sign" of the paper
    bit            alpha round(clip(P / alpha, 0, 1)) = alpha     BiT's {0, alpha}: P > alpha / 2
    bool           S > 0 (S >= 0 with bool(0) = 1)                BiBERT's Bi-Attention on the scores S

with S the layer's attention scores (``QK^T / sqrt(d) + mask``, as the model computes them: sign(Q) sign(K)^T / sqrt(d)
for a BiBERT student) and P = softmax(S). BiT's alpha is the model's own calibrated one when it has a one-bit
{0, alpha} quantizer on its probabilities (:mod:`binlab.train.calibration`); otherwise it is calibrated as BiT does,
on the first batch: :class:`~binlab.quant.quantizers.Elastic` (unsigned, one bit) initialised on that batch's P
(``alpha_init="code"``: alpha = 4 mean(P) = 4 / L for a batch padded to L tokens; ``"optimal"``: the paper's alpha*).

:func:`attention_entropy` returns H averaged over the real (non-padded) query rows, per layer and head, one tidy row
per (layer, head, method, tau); padded keys are not counted in p and padded query rows not at all.
:func:`by_layer` averages the heads, :func:`entropy_table` writes a markdown table. :func:`dev_batches` encodes the
first dev sentences of a local GLUE task; ``binlab entropy`` runs the whole measurement on a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from binlab.checkpoint import load_pretrained, resolve_model_dir
from binlab.data.glue import batches as glue_batches
from binlab.data.glue import get_task, load_glue
from binlab.quant.config import ALPHA_INITS, BOOL_ZEROS
from binlab.quant.quantizers import Elastic
from binlab.tokenizer import load_tokenizer

__all__ = ["DEFAULT_TAUS", "BINARIZATIONS", "binary_entropy", "row_share", "row_entropy", "mean_over_rows", "attention_entropy",
           "by_layer", "entropy_table", "dev_batches", "measure", "add_arguments", "run"]

#: The fixed thresholds on the probabilities that ``threshold`` sweeps (a row of n keys averages 1 / n).
DEFAULT_TAUS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


@dataclass
class LayerMaps:
    """What a binarization sees of one layer: its scores S and probabilities P (B, H, L, L), the threshold of a
    ``threshold`` row, BiT's {0, alpha} quantizer of the layer, and bool(0)."""

    scores: Tensor
    probs: Tensor
    tau: float | None
    bit: nn.Module
    bool_zero: int


#: method -> (label, which entries of the map are 1). Rows of the module docstring's table.
BINARIZATIONS: dict[str, tuple[str, Callable[[LayerMaps], Tensor]]] = {
    "sign_softmax": ("sign(softmax)", lambda m: m.probs >= 0),  # binlab's sign(0) = +1: +1 everywhere
    "threshold": ("softmax > tau", lambda m: m.probs > m.tau),
    "bit": ("BiT {0, alpha}", lambda m: m.bit(m.probs) != 0),
    "bool": ("bool(scores)", lambda m: m.scores >= 0 if m.bool_zero else m.scores > 0),
}


def binary_entropy(p: Tensor) -> Tensor:
    """H(p) = -p log2 p - (1-p) log2 (1-p) in bits, element-wise, with 0 log 0 = 0 (so H(0) = H(1) = 0)."""
    p = p.double()
    q = 1 - p
    return -(torch.where(p > 0, p * torch.log2(p), 0.0) + torch.where(q > 0, q * torch.log2(q), 0.0))


def _check_mask(ones: Tensor, attention_mask: Tensor) -> None:
    B, L = attention_mask.shape
    if ones.dim() != 4 or ones.shape[0] != B or ones.shape[-2:] != (L, L):
        raise ValueError(f"the attention map has shape {tuple(ones.shape)}, but the attention_mask {(B, L)} needs "
                         f"(B, H, L, L) = ({B}, H, {L}, {L})")
    if bool((attention_mask.sum(-1) == 0).any()):
        raise ValueError("an example of the batch has no real token (its attention_mask is all 0)")


def row_share(ones: Tensor, attention_mask: Tensor) -> Tensor:
    """p of every query row of a binarized map ``ones`` (B, H, L, L; True / nonzero = 1): the share of ones over the
    row's real keys (``attention_mask`` (B, L), 1 = real token). Padded query rows are NaN: (B, H, L), float64."""
    _check_mask(ones, attention_mask)
    real = attention_mask.bool()
    k = ((ones != 0) & real[:, None, None, :]).sum(-1)  # ones among the real keys, (B, H, L)
    n = real.sum(-1)[:, None, None]  # real keys, (B, 1, 1)
    return torch.where(real[:, None, :], k.double() / n, math.nan)


def row_entropy(ones: Tensor, attention_mask: Tensor) -> Tensor:
    """H(p) of every query row (:func:`row_share`), in bits: (B, H, L), NaN on the padded query rows."""
    p = row_share(ones, attention_mask)
    return torch.where(p.isnan(), math.nan, binary_entropy(p))


def _row_sums(values: Tensor, attention_mask: Tensor) -> Tensor:
    """The sum of ``values`` (B, H, L) over the real query rows of every head: (H,)."""
    return torch.where(attention_mask.bool()[:, None, :], values, 0.0).sum((0, 2))


def mean_over_rows(values: Tensor, attention_mask: Tensor) -> Tensor:
    """The mean of ``values`` (B, H, L) over the real query rows of every head: (H,)."""
    return _row_sums(values, attention_mask) / attention_mask.bool().sum()


def _variants(taus) -> list[tuple[str, float | None]]:
    return [("sign_softmax", None), *(("threshold", float(t)) for t in taus), ("bit", None), ("bool", None)]


def _bit_quantizer(model: nn.Module, layer: int, alpha_init: str) -> tuple[nn.Module, str]:
    """The layer's own calibrated one-bit {0, alpha} quantizer, or a fresh one that calibrates on first use."""
    own = getattr(model.bert.encoder.layer[layer].attention, "probs_quant", None)
    if isinstance(own, Elastic) and not own.signed and own.num_bits == 1 and bool(own.initialized):
        return own, "the model's"
    return Elastic(num_bits=1, signed=False, init=alpha_init), f"calibrated on the first batch ({alpha_init})"


@torch.no_grad()
def attention_entropy(model: nn.Module, batches: Iterable[dict], taus: Iterable[float] = DEFAULT_TAUS,
                      alpha_init: str = "code", bool_zero: int | None = None) -> list[dict]:
    """The mean row entropy of each binarization of every layer's and head's attention map over ``batches``.

    Args:
        model: a :class:`~binlab.model.BertForSequenceClassification` (FP, BiT, BiBERT, ...); run in eval mode and
            put back in its mode.
        batches: dicts with ``input_ids``, ``attention_mask`` and ``token_type_ids`` (:func:`dev_batches`).
        taus: the thresholds of ``threshold``.
        alpha_init: how BiT's alpha is calibrated when the model has none of its own (module docstring).
        bool_zero: bool(0) of ``bool``; None: the model's ``quant.bool_zero`` (0, the code's, for other models).

    Returns one dict per (layer, head, method, tau): ``layer`` (0 = the first encoder layer), ``head``, ``method``
    (a key of :data:`BINARIZATIONS`), ``label``, ``tau`` (``threshold`` only), ``alpha`` (``bit`` only), ``entropy``
    (mean H over the real query rows, bits), ``ones`` (mean share of ones over the real keys) and ``rows``.
    """
    if alpha_init not in ALPHA_INITS:
        raise ValueError(f"alpha_init must be one of {ALPHA_INITS}, got {alpha_init!r}")
    bool_zero = model.config.quant.bool_zero if bool_zero is None else bool_zero
    if bool_zero not in BOOL_ZEROS:
        raise ValueError(f"bool_zero must be one of {BOOL_ZEROS}, got {bool_zero!r}")
    variants = _variants(taus)
    n_layers = model.config.num_hidden_layers
    bits = [_bit_quantizer(model, layer, alpha_init) for layer in range(n_layers)]
    sums: dict[tuple[int, str, float | None], list[Tensor]] = {}
    rows = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask = batch["attention_mask"]
            out = model(batch["input_ids"], attention_mask=mask, token_type_ids=batch.get("token_type_ids"),
                        output_attentions=True)
            rows += int(mask.sum())
            for layer, scores in enumerate(out.attention_scores):
                probs = torch.softmax(scores.float(), dim=-1)
                for method, tau in variants:
                    maps = LayerMaps(scores, probs, tau, bits[layer][0], bool_zero)
                    p = row_share(BINARIZATIONS[method][1](maps), mask)
                    acc = sums.setdefault((layer, method, tau), [0.0, 0.0])
                    acc[0] = acc[0] + _row_sums(binary_entropy(p), mask)
                    acc[1] = acc[1] + _row_sums(p, mask)
    finally:
        model.train(was_training)
    if not rows:
        raise ValueError("attention_entropy: no batches (or no real tokens in them)")
    result = []
    for (layer, method, tau), (h_sum, share_sum) in sums.items():
        bit, _ = bits[layer]
        alpha = float(bit.alpha.detach()) if method == "bit" else None
        for head in range(len(h_sum)):
            result.append({"layer": layer, "head": head, "method": method, "label": BINARIZATIONS[method][0],
                           "tau": tau, "alpha": alpha, "entropy": float(h_sum[head]) / rows,
                           "ones": float(share_sum[head]) / rows, "rows": rows})
    return result


def by_layer(rows: list[dict]) -> list[dict]:
    """The rows of :func:`attention_entropy` averaged over the heads: one per (layer, method, tau), same keys
    without ``head``. (Every head has the same query rows, so this is the mean over all rows of the layer.)"""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["layer"], r["method"], r["tau"]), []).append(r)
    out = []
    for group in groups.values():
        first = {k: v for k, v in group[0].items() if k != "head"}
        first["entropy"] = sum(r["entropy"] for r in group) / len(group)
        first["ones"] = sum(r["ones"] for r in group) / len(group)
        out.append(first)
    return out


def _name(r: dict) -> str:
    return f"softmax > {r['tau']:g}" if r["method"] == "threshold" else r["label"]


def entropy_table(rows: list[dict]) -> str:
    """Mean row entropy (bits) as a markdown table: one line per binarization, one column per layer, and the mean
    over the layers; BiT's line names its alphas."""
    layered = by_layer(rows)
    layers = sorted({r["layer"] for r in layered})
    lines: dict[str, dict[int, dict]] = {}
    for r in layered:
        lines.setdefault(_name(r), {})[r["layer"]] = r
    out = ["| binarization | " + " | ".join(f"layer {l + 1}" for l in layers) + " | mean | ones |",
           "|---|" + "---:|" * (len(layers) + 2)]
    for name, per in lines.items():
        h = [per[l]["entropy"] for l in layers]
        ones = sum(per[l]["ones"] for l in layers) / len(layers)
        if per[layers[0]]["method"] == "bit":
            name += " (alpha " + ", ".join(f"{per[l]['alpha']:.3g}" for l in layers) + ")"
        out.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in h) + f" | {sum(h) / len(h):.3f} | {ones:.3f} |")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------
# real sentences


def dev_batches(task: str, glue_dir: str | Path, tokenizer, examples: int = 500, batch_size: int = 32,
                max_length: int = 128) -> list[dict]:
    """The first ``examples`` dev sentences (pairs) of ``task`` in the local GLUE folder ``glue_dir``, encoded in
    batches (read in place; ``source="local"``, so a missing folder is an error, never synthetic data)."""
    dev = load_glue(get_task(task), "dev", glue_dir=glue_dir, source="local", max_examples=examples)
    return list(glue_batches(dev, tokenizer, batch_size, max_length=max_length))


def measure(model_dir: str | Path, task: str, glue_dir: str | Path, examples: int = 500, batch_size: int = 32,
            max_length: int = 128, taus: Iterable[float] = DEFAULT_TAUS, alpha_init: str = "code") -> dict:
    """:func:`attention_entropy` of the checkpoint ``model_dir`` on the first ``examples`` dev sentences of
    ``task``: ``{"model", "task", "examples", "quant", "rows", "table"}`` (``rows`` per head, ``table`` markdown)."""
    folder = resolve_model_dir(model_dir)
    model = load_pretrained(folder, verbose=False)
    data = dev_batches(task, glue_dir, load_tokenizer(folder), examples, batch_size, max_length)
    rows = attention_entropy(model, data, taus, alpha_init)
    return {"model": str(folder), "task": get_task(task).name, "examples": sum(len(b["input_ids"]) for b in data),
            "quant": model.config.quant.label, "rows": rows, "table": entropy_table(rows)}


# ----------------------------------------------------------------------------------------------------------
# the command line (binlab entropy)


def _taus(text: str) -> tuple[float, ...]:
    try:
        taus = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thresholds separated by commas, e.g. 0.05,0.1; got {text!r}")
    if not all(0 < t < 1 for t in taus):
        raise argparse.ArgumentTypeError(f"every threshold must lie in (0, 1), got {text!r}")
    return taus


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a checkpoint directory (e.g. runs/sst2-fp/best_model)")
    p.add_argument("--task", required=True, help="GLUE task whose dev sentences are encoded (sst2, stsb, cola, ...)")
    p.add_argument("--glue-dir", required=True, help="the local GLUE folder in the original TSV layout")
    p.add_argument("--examples", type=int, default=500, help="first N dev examples (default: 500)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--taus", type=_taus, default=DEFAULT_TAUS,
                   help=f"thresholds on the probabilities (default: {','.join(map(str, DEFAULT_TAUS))})")
    p.add_argument("--alpha-init", default="code", choices=ALPHA_INITS,
                   help="BiT's alpha when the model has none of its own: code (4 mean(P)) or optimal (alpha*)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--json", default=None, help="also write the result (per head) as JSON to this file")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    result = measure(args.model, args.task, args.glue_dir, args.examples, args.batch_size, args.max_length,
                     args.taus, args.alpha_init)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"attention entropy (bits per entry) of {result['model']} ({result['quant']}) on the first "
          f"{result['examples']} {result['task']} dev examples\n\n{result['table']}")
    return 0
