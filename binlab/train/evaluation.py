"""A model's predictions over a whole split, and its dev score.

    predict(model, split, encode, max_length)          logits (N, num_labels), in order, without gradients
    make_evaluator(task, encode, max_length)           evaluate(model, split) -> (score, metrics), for the Trainer

``encode(texts_a, texts_b, max_length) -> dict of tensors`` is the tokenizer's ``encode_batch``; ``split`` a
:class:`~binlab.data.glue.GlueSplit` (anything with ``texts_a``, ``texts_b`` and ``len``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from binlab.data.glue import select_texts
from binlab.data.metrics import compute_metrics

__all__ = ["predict", "make_evaluator"]


def predict(model: nn.Module, split, encode: Callable, max_length: int, batch_size: int = 64,
            limit: int | None = None) -> torch.Tensor:
    """The model's logits on the first ``limit`` examples of ``split`` (all by default), in the model's dtype.

    Runs under ``torch.no_grad()`` and leaves the model's train/eval mode as it is (the callers choose)."""
    n = len(split) if limit is None else min(limit, len(split))
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            a, b = select_texts(split, range(start, min(start + batch_size, n)))
            batch = encode(a, b, max_length)
            out.append(model(batch["input_ids"], attention_mask=batch["attention_mask"],
                             token_type_ids=batch["token_type_ids"]).logits)
    return torch.cat(out)


def make_evaluator(task, encode: Callable, max_length: int, batch_size: int = 64) -> Callable:
    """``evaluate(model, split) -> (score, metrics)`` over the whole split; the score is the task's selection
    metric (:func:`binlab.data.metrics.compute_metrics`)."""

    def evaluate(model, split):
        logits = predict(model, split, encode, max_length, batch_size).float()
        preds = logits.squeeze(-1) if task.num_labels == 1 else logits
        metrics = compute_metrics(task, preds, split.labels)
        return metrics["score"], metrics

    return evaluate
