"""How far a binarized student's hidden states are from its teacher's, layer by layer (chapters 5-7).

The distillation losses of BinaryBERT and BiT add one MSE per hidden state; whether a student follows its teacher
through the network, and where it loses it, is what :func:`layer_agreement` measures on real batches:

    cosine     mean over real tokens of cos(h_s, h_t)             1 = same direction, 0 = unrelated
    mse        mean over real tokens and dims of (h_s - h_t)^2    what the loss sees (the loss also counts padding)
    rel_mse    mse / mean(h_t^2)                                  0 = exact, 1 = as far as predicting zeros
    top_dims   share of mean(h_t^2) in the teacher's ``top`` largest dimensions: MiniLM's few outlier
               dimensions, which a plain MSE weights by their square

for hidden state l = 0 (the embedding output) .. N (the last layer).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["layer_agreement", "agreement_table"]


@torch.no_grad()
def layer_agreement(student: nn.Module, teacher: nn.Module, batches: Iterable[dict], top: int = 5) -> list[dict]:
    """Per hidden state: ``{"layer", "cosine", "mse", "rel_mse", "top_dims"}`` over ``batches`` (module docstring).

    ``batches`` hold ``input_ids``, ``attention_mask`` and ``token_type_ids``; both models run in eval mode and are
    put back in the mode they were in."""
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    sums: list[dict] | None = None
    try:
        for batch in batches:
            kw = dict(attention_mask=batch["attention_mask"], token_type_ids=batch.get("token_type_ids"),
                      output_hidden_states=True)
            hs = student(batch["input_ids"], **kw).hidden_states
            ht = teacher(batch["input_ids"], **kw).hidden_states
            if len(hs) != len(ht):
                raise ValueError(f"the student has {len(hs) - 1} layers and the teacher {len(ht) - 1}")
            real = batch["attention_mask"].bool()
            sums = sums or [dict(cos=0.0, sq=0.0, t_sq=0.0, top=0.0, tokens=0) for _ in hs]
            for acc, s, t in zip(sums, hs, ht):
                s, t = s[real].double(), t[real].double()  # (tokens, D)
                acc["cos"] += float(torch.nn.functional.cosine_similarity(s, t, dim=-1).sum())
                acc["sq"] += float(((s - t) ** 2).mean(dim=-1).sum())
                per_dim = (t ** 2).mean(dim=0)  # (D,)
                acc["t_sq"] += float(per_dim.sum() / t.shape[-1] * len(t))
                acc["top"] += float(per_dim.topk(min(top, len(per_dim))).values.sum() / per_dim.sum() * len(t))
                acc["tokens"] += len(t)
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    if not sums or not sums[0]["tokens"]:
        raise ValueError("no real tokens in the batches")
    rows = []
    for layer, acc in enumerate(sums):
        n = acc["tokens"]
        rows.append({"layer": layer, "cosine": acc["cos"] / n, "mse": acc["sq"] / n,
                     "rel_mse": acc["sq"] / acc["t_sq"], "top_dims": acc["top"] / n})
    return rows


def agreement_table(rows: list[dict], top: int = 5) -> str:
    """The rows of :func:`layer_agreement` as a markdown table."""
    lines = [f"| hidden state | cosine | MSE | MSE / mean h_t^2 | teacher's top-{top} dims |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        name = "embeddings" if r["layer"] == 0 else f"layer {r['layer']}"
        lines.append(f"| {name} | {r['cosine']:.3f} | {r['mse']:.4f} | {r['rel_mse']:.3f} | {100 * r['top_dims']:.0f}% |")
    return "\n".join(lines)
