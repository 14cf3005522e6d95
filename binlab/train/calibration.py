"""Calibration: the learned quantizer scales set from data in one explicit pass, before the first optimizer step.

LSQ's step and BiT's alpha start from statistics of the tensor they quantize (2 mean|x|, or the paper's alpha*;
:class:`~binlab.quant.quantizers.Elastic`). Left to themselves they take them from the first training batch, in
a training forward with dropout on. :func:`calibrate` does it on purpose instead:

* on a fixed calibration batch (the first ``n`` training examples, :func:`calibration_batch`), in eval mode (no
  dropout), without gradients: the result is deterministic, the same in every process of a distributed run, and
  is broadcast from rank 0 all the same (:mod:`binlab.train.distributed`), so every process starts from one set;
* every data-initialised quantizer is reset first and then initialised in the order of the forward pass, each from
  everything it sees of the calibration batch, with the quantizers before it already calibrated;
* the scales are parameters, so they are saved with the model and every checkpoint, and a resumed run never
  calibrates again.

It also reports what went wrong for BiT's {0, alpha} attention: with near-uniform attention the threshold alpha / 2
can lie above every probability of a row, which then attends to nothing (``all_zero_attention_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from binlab.data.glue import select_texts
from binlab.quant.quantizers import DataInitialised
from binlab.train.distributed import broadcast_from_main

__all__ = ["CalibrationReport", "calibration_batch", "calibrate", "data_initialised"]


@dataclass
class CalibrationReport:
    """What :func:`calibrate` set and saw.

    Attributes:
        n_examples: sentences (or pairs) in the calibration batch.
        scales: module name -> the value its scale (``alpha`` or ``step``) starts from.
        attention_rows: real query rows of every attention map (per layer, summed over heads and examples).
        all_zero_attention_rows: per layer, how many of those rows binarize to all zeros over their real keys.
    """

    n_examples: int
    scales: dict[str, float] = field(default_factory=dict)
    attention_rows: list[int] = field(default_factory=list)
    all_zero_attention_rows: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"n_examples": self.n_examples, "scales": self.scales, "attention_rows": self.attention_rows,
                "all_zero_attention_rows": self.all_zero_attention_rows}

    def describe(self) -> str:
        zero, rows = sum(self.all_zero_attention_rows), sum(self.attention_rows)
        att = (f"; {zero} of {rows} attention rows binarize to all zeros "
               f"({', '.join(map(str, self.all_zero_attention_rows))} per layer)") if rows else ""
        return f"calibrated {len(self.scales)} quantizer scales on {self.n_examples} examples{att}"


def data_initialised(model: nn.Module) -> dict[str, DataInitialised]:
    """The quantizers of ``model`` whose scale starts from data (LSQ, elastic), by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, DataInitialised)}


def calibration_batch(split, encode: Callable, max_length: int, n_examples: int = 128) -> dict:
    """The first ``n_examples`` of ``split`` (in order) as one encoded batch."""
    if n_examples < 1:
        raise ValueError(f"calibration needs at least one example, got n_examples={n_examples}")
    a, b = select_texts(split, range(min(n_examples, len(split))))
    return dict(encode(a, b, max_length))


def calibrate(model: nn.Module, batch: dict) -> CalibrationReport:
    """Reset and initialise every data-initialised quantizer scale of ``model`` from ``batch`` (module docstring).

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``token_type_ids`` (:func:`calibration_batch`). The
    model's train/eval mode is restored afterwards.
    """
    quantizers = data_initialised(model)
    for m in quantizers.values():
        m.initialized.fill_(False)
    mask = batch["attention_mask"]
    real = mask.bool()  # (B, L)
    counts: list[tuple[int, int]] = []

    def count_all_zero_rows(module, inputs, output):  # output: binarized probabilities (B, H, L, L)
        keys = real[:, None, None, :]  # only real keys count
        queries = real[:, None, :].expand(-1, output.shape[1], -1)  # (B, H, L): only real query rows
        empty = ~((output != 0) & keys).any(-1)  # (B, H, L)
        counts.append((int(queries.sum()), int((empty & queries).sum())))

    hooks = [m.register_forward_hook(count_all_zero_rows) for name, m in model.named_modules()
             if name.endswith("probs_quant") and isinstance(m, DataInitialised)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(batch["input_ids"], attention_mask=mask, token_type_ids=batch.get("token_type_ids"))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    # a distributed run starts from rank 0's scales in every process, whatever each one calibrated on
    broadcast_from_main(getattr(m, m.scale_name) for m in quantizers.values())
    report = CalibrationReport(n_examples=int(batch["input_ids"].shape[0]))
    report.scales = {name: float(getattr(m, m.scale_name).detach()) for name, m in quantizers.items()}
    report.attention_rows = [rows for rows, _ in counts]
    report.all_zero_attention_rows = [zero for _, zero in counts]
    return report
