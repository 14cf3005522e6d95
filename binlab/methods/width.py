"""Width pruning: BinaryBERT's half-sized start (DynaBERT width 0.5, methods.md §2.1).

:func:`prune_width` keeps the most important half of the attention heads and FFN neurons, so that the split
binary model (:mod:`binlab.methods.split_model`) has the encoder weights of the full model.
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch
from torch import Tensor, nn

from binlab.quant.layers import QuantLinear
from binlab.train.trainer import default_loss

__all__ = ["width_importance", "prune_width"]


def _gated_weights(model: nn.Module):
    """Per layer: (W_O as (D, H, d), W_out of the FFN as (D, I)), the quantized weights the forward pass uses."""
    if not hasattr(model, "bert"):
        raise TypeError("width pruning works on a BertForSequenceClassification (it needs model.bert)")
    H, d = model.config.num_attention_heads, model.config.head_size
    out = []
    for l, layer in enumerate(model.bert.encoder.layer):
        o, f = layer.attention_output.dense, layer.ffn.output
        if not isinstance(o, QuantLinear) or not isinstance(f, QuantLinear):
            raise TypeError(f"width pruning needs plain QuantLinear layers; layer {l} has {type(o).__name__} "
                            "(prune before ternary weight splitting)")
        out.append((o, f))
    return H, d, out


def width_importance(model: nn.Module, batches=None, loss_fn=None) -> tuple[list[Tensor], list[Tensor]]:
    """A score per attention head (H,) and per FFN neuron (I,) of every layer; higher = more important.

    Without ``batches``, magnitude: the l1 norm of the weights that belong to the unit::

        I_h = sum |W_Q[h rows]| + sum |W_K[h rows]| + sum |W_V[h rows]| + sum |W_O[:, h columns]|
        I_j = sum |W_in[j, :]| + sum |W_out[:, j]|

    With ``batches`` (dicts with input_ids, attention_mask, token_type_ids, labels), the gradient score that
    DynaBERT uses (Michel et al. 2019): put a gate xi on each head's context (each neuron's activation) and
    accumulate |dL/dxi| at xi = 1 over the batches. The gate multiplies the columns of the next weight, so::

        dL/dxi_h = sum_{o, i in h} W_O[o, i] * dL/dW_O[o, i]        dL/dxi_j = sum_o W_out[o, j] * dL/dW_out[o, j]
        I_h = sum_batches |dL/dxi_h|                                 I_j = sum_batches |dL/dxi_j|

    W is the weight the forward pass multiplies (the quantized one in a quantized model, which with an
    identity STE has the same gradient as the latent W). ``loss_fn(model, batch)`` defaults to cross-entropy
    (MSE for one label), the Trainer's default loss. The model's gradients are left zeroed.
    """
    H, d, layers = _gated_weights(model)
    if batches is None:
        heads, neurons = [], []
        for layer, (o, f) in zip(model.bert.encoder.layer, layers):
            att = layer.attention
            qkv = sum(m.weight.detach().abs().reshape(H, d, -1).sum((1, 2)) for m in (att.query, att.key, att.value))
            heads.append(qkv + o.weight.detach().abs().reshape(-1, H, d).sum((0, 2)))
            neurons.append(layer.ffn.intermediate.weight.detach().abs().sum(1) + f.weight.detach().abs().sum(0))
        return heads, neurons
    if loss_fn is None:
        num_labels = model.config.num_labels
        loss_fn = lambda m, b: default_loss(m, b, num_labels)  # noqa: E731
    heads = [torch.zeros(H) for _ in layers]
    neurons = [torch.zeros(f.in_features) for _, f in layers]
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        with torch.no_grad():
            for l, (o, f) in enumerate(layers):
                w_o, w_f = o.weight_quantizer(o.weight), f.weight_quantizer(f.weight)
                heads[l] += (w_o * o.weight.grad).reshape(-1, H, d).sum((0, 2)).abs().cpu()
                neurons[l] += (w_f * f.weight.grad).sum(0).abs().cpu()
    model.zero_grad(set_to_none=True)
    return heads, neurons


def _keep_rows_cols(state: dict, name: str, rows: Tensor | None = None, cols: Tensor | None = None) -> None:
    """Slice the linear ``name`` in a state dict: output rows (weight rows and bias) or input columns."""
    w = state[f"{name}.weight"]
    if rows is not None:
        w = w[rows]
        state[f"{name}.bias"] = state[f"{name}.bias"][rows]
    if cols is not None:
        w = w[:, cols]
        threshold = f"{name}.input_quantizer.bias"  # BiT's per-input-channel threshold follows the columns
        if threshold in state:
            state[threshold] = state[threshold][cols]
    state[f"{name}.weight"] = w


def prune_width(model: nn.Module, keep: float = 0.5, importance=None) -> nn.Module:
    """A narrower copy of ``model`` with the most important ``keep`` fraction of heads and FFN neurons per layer.

    BinaryBERT starts from DynaBERT's width-0.5 model: half the heads (6 x 64 of BERT-base's 12 x 64) and half
    the FFN neurons (1536 of 3072); the hidden size stays. After ternary weight splitting that model has two
    half-width binary matrices where BERT had one full-width matrix, i.e. the encoder weights of the full model.

    Args:
        model: a :class:`~binlab.model.BertForSequenceClassification` (FP or ternary, before splitting).
        keep: fraction of heads and neurons kept per layer (rounded; at least one of each).
        importance: ``(heads, neurons)`` from :func:`width_importance`; default its magnitude score.

    The kept units keep their order. Every other weight, bias and quantizer state is copied. DynaBERT then
    trains the narrow model (by distillation) before it is usable: pruning alone lowers the accuracy.
    Needs ``BertConfig.attention_head_size`` (the attention width is then num_heads * head_size, not hidden_size).
    """
    config = model.config
    if not 0 < keep <= 1:
        raise ValueError(f"prune_width: keep must be in (0, 1], got {keep!r}")
    if "attention_head_size" not in {f.name for f in fields(config)}:
        raise RuntimeError("prune_width needs BertConfig.attention_head_size (an attention width other than "
                           "hidden_size) in binlab/model.py")
    H, d, layers = _gated_weights(model)
    n_heads = max(1, round(H * keep))
    n_neurons = max(1, round(config.intermediate_size * keep))
    heads, neurons = importance if importance is not None else width_importance(model)
    if len(heads) != len(layers) or any(h.shape != (H,) for h in heads) \
            or any(n.shape != (config.intermediate_size,) for n in neurons):
        raise ValueError(f"prune_width: importance must hold one ({H},) head score and one "
                         f"({config.intermediate_size},) neuron score per layer ({len(layers)} layers)")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for l in range(len(layers)):
        kept_heads = heads[l].topk(n_heads).indices.sort().values
        cols = (kept_heads[:, None] * d + torch.arange(d)).reshape(-1)  # the Q/K/V outputs of the kept heads
        kept_neurons = neurons[l].topk(n_neurons).indices.sort().values
        prefix = f"bert.encoder.layer.{l}."
        for name in ("attention.query", "attention.key", "attention.value"):
            _keep_rows_cols(state, prefix + name, rows=cols)
        _keep_rows_cols(state, prefix + "attention_output.dense", cols=cols)
        _keep_rows_cols(state, prefix + "ffn.intermediate", rows=kept_neurons)
        _keep_rows_cols(state, prefix + "ffn.output", cols=kept_neurons)
    narrow = replace(config, num_attention_heads=n_heads, attention_head_size=d, intermediate_size=n_neurons)
    pruned = type(model)(narrow)
    pruned.load_state_dict(state, strict=True)
    p = next(model.parameters())
    return pruned.to(device=p.device, dtype=p.dtype).train(model.training)
