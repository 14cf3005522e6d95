"""Ternary Weight Splitting (TWS): BinaryBERT's way from a trained ternary model to a binary one.

BinaryBERT (Bai et al., ACL 2021; methods.md §2.5) does not train a binary BERT from scratch. It trains a
half-width *ternary* model, then splits every ternary weight W (latent, full precision) into two latent
weights W1 + W2 = W whose *binarizations* add up to the ternarization of W::

    BWN(W1) + BWN(W2) = TWN(W)          (the splitting equivalency; the book's eqs. 5.20-5.23 give the split)

so the binary network, whose every quantized linear layer computes ``y = dense_1(x) + dense_2(x)``, starts out
computing exactly what the ternary one computed, and then fine-tunes with twice the (binary) weights.

The formulas, with Ŵ = TWN(W) and n the number of entries (of the tensor, or of one row of the word embedding)::

    I = {i : Ŵ_i != 0}        J = {i : Ŵ_i = 0, W_i > 0}        K = {i : Ŵ_i = 0, W_i <= 0}
    S_X = sum_{i in X} |W_i|

    W1_i = a * W_i       on I        W2_i = (1 - a) * W_i    on I
           b + W_i       on J               -b               on J
           b             on K               -b + W_i         on K

    a = (S_I + S_K - S_J) / (2 S_I)                                  tws_a           (what the code computes)
    b = ((n / |I|) S_I - sum_i |W_i|) / (2 (|J| + |K|))              tws_b

Where they come from (BWN's alpha is mean |.|): on J and K the two halves have opposite signs, so their sum is 0
iff alpha_1 = alpha_2, i.e. a S_I + S_J = (1 - a) S_I + S_K, which gives ``a``; on I both halves have the sign of
W, so the sum is alpha_1 + alpha_2 = alpha_t = S_I / |I|, which gives ``b``. It is exact when

    b > 0  and  0 < a < 1     (then W1 and W2 have the signs above, no entry is 0)
    |I| >= 1 and |J| + |K| >= 1   (a and b are defined)

The paper prints ``a = (S_I + S_J - S_K) / (2 S_I)``, with J and K swapped (:func:`tws_a_as_printed`). That
version is not exact: it leaves alpha_1 - alpha_2 = 2 (S_J - S_K) / n on the zero entries, small only because
S_J ~ S_K for symmetric weights (on MiniLM up to 1.8e-4 per linear tensor, 5e-3 for an embedding row, where
alpha_t ~ 0.1; the code's a: below 2.5e-8). :func:`split_error` measures both.

**With quantized activations** (8-bit dynamic uniform, 4-bit LSQ) the split model is still exact: the quantizer
acts on the layer's input x, which both halves share, and each half gets a copy of the ternary layer's quantizer
state (clip, step), so both compute the same q(x) and ``q(x) BWN(W1)^T + q(x) BWN(W2)^T = q(x) TWN(W)^T``;
nothing has to commute with the rounding. In float64 the logits agree to 1e-15. In float32 the two sums round
differently from the one (~1e-7), and now and then that moves a value of the NEXT layer's input across a
rounding boundary (about 1 value in 50k): on MiniLM the last hidden state then differs by ~2.5% (relative
norm). The halves' clips are separate parameters, equal only at the split.

The model surgery (:func:`split_ternary_model`) turns every :class:`~binlab.qlayers.QuantLinear` into a
:class:`SplitQuantLinear` and the word embedding into a :class:`SplitEmbedding`, halves the biases, copies each
activation quantizer into both halves and leaves everything else (LayerNorms, position and token-type
embeddings, Q/K/V/probability quantizers, the classifier) as it was.

:func:`prune_width` is BinaryBERT's half-sized start (DynaBERT width 0.5): it keeps the most important half of
the attention heads and FFN neurons, so that the split binary model has the encoder weights of the full model.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import fields, replace

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from binlab.qconfig import QuantConfig
from binlab.qlayers import QuantEmbedding, QuantLinear
from binlab.quantizers import bwn, twn

__all__ = [
    "tws_a", "tws_a_as_printed", "tws_b", "check_tws_conditions", "tws_split", "split_error",
    "SplitQuantLinear", "SplitEmbedding", "binary_quant_config", "split_ternary_model", "build_split_model",
    "width_importance", "prune_width",
]

A_FORMULAS = ("code", "printed")


# ----------------------------------------------------------------------------------------------------------
# the coefficients a and b


def tws_a(S_I: Tensor, S_J: Tensor, S_K: Tensor) -> Tensor:
    """a = (S_I + S_K - S_J) / (2 S_I): the coefficient that makes alpha_1 = alpha_2 (the authors' code)."""
    return (S_I + S_K - S_J) / (2 * S_I)


def tws_a_as_printed(S_I: Tensor, S_J: Tensor, S_K: Tensor) -> Tensor:
    """a = (S_I + S_J - S_K) / (2 S_I): the formula as the paper prints it, J and K swapped. NOT exact.

    Kept so that the book can show the error numerically (:func:`split_error` with ``a_formula="printed"``).
    """
    return (S_I + S_J - S_K) / (2 * S_I)


def tws_b(S_I: Tensor, S_all: Tensor, n: int, n_I: Tensor, n_zero: Tensor) -> Tensor:
    """b = ((n / |I|) S_I - sum_i |W_i|) / (2 (|J| + |K|)), with S_all = sum_i |W_i| and n_zero = |J| + |K|.

    It makes alpha_1 + alpha_2 = alpha_t = S_I / |I| (the ternary scale) on the non-zero entries.
    """
    return (n / n_I * S_I - S_all) / (2 * n_zero)


def check_tws_conditions(a: Tensor, b: Tensor, n_I: Tensor, n_zero: Tensor, what: str = "weight") -> None:
    """Raise ``ValueError`` unless every row has |I| >= 1, |J| + |K| >= 1, b > 0 and 0 < a < 1.

    All arguments have one entry per row (one row for a per-tensor split). ``what`` names the tensor in the
    message. Without these conditions BWN(W1) + BWN(W2) is not TWN(W): a half would get entries of the wrong
    sign (or 0), or a and b are 0/0.
    """
    problems = [
        (n_I < 1, "no non-zero ternary entry (|I| = 0: the ternary tensor is all zeros, a is 0/0)"),
        (n_zero < 1, "no zero ternary entry (|J| + |K| = 0: b is 0/0; every |W| is above 0.7 mean|W|)"),
        (~(b > 0), "b <= 0 (needs alpha_t > mean|W|)"),
        (~((a > 0) & (a < 1)), "a outside (0, 1) (S_J or S_K too large compared to S_I)"),
    ]
    rows = n_I.numel()
    for bad, reason in problems:
        bad = bad.reshape(-1)
        if bool(bad.any()):
            where = "" if rows == 1 else f" in {int(bad.sum())} of {rows} rows (first: row {int(bad.nonzero()[0])})"
            a0, b0 = float(a.reshape(-1)[bad][0]), float(b.reshape(-1)[bad][0])
            raise ValueError(f"ternary weight splitting of {what}: {reason}{where}; a = {a0:.6g}, b = {b0:.6g}. "
                             f"BWN(W1) + BWN(W2) would not equal TWN(W).")


# ----------------------------------------------------------------------------------------------------------
# splitting one tensor


def tws_split(w: Tensor, per_row: bool = False, a_formula: str = "code", what: str = "weight") -> tuple[Tensor, Tensor]:
    """Split a latent ternary weight W into (W1, W2) with W1 + W2 = W and BWN(W1) + BWN(W2) = TWN(W).

    Args:
        w: the latent full-precision weight of a ternary layer, ``(out, in)`` or ``(vocab, dim)``.
        per_row: a and b per row (BinaryBERT's word embedding, ternarized and binarized per row) instead of per
            tensor (its linear layers). Must match the granularity of TWN and BWN in the model.
        a_formula: ``"code"`` (:func:`tws_a`, exact) or ``"printed"`` (:func:`tws_a_as_printed`, the paper's).
        what: the tensor's name, for error messages.

    The sets I, J, K come from binlab's own :func:`~binlab.quantizers.twn` applied to ``w`` as it is (so they
    are the ternary model's, threshold ties included); S_X, a and b are computed in float64 and W1, W2 cast back
    to ``w``'s dtype, as in the authors' ``tws_split``. Raises ``ValueError`` (:func:`check_tws_conditions`)
    when the split cannot be exact.
    """
    if a_formula not in A_FORMULAS:
        raise ValueError(f"tws_split: a_formula must be one of {A_FORMULAS}, got {a_formula!r}")
    w = w.detach()
    w_t = twn(w, per_row)  # the ternary model's TWN(W): its zeros define I, J, K
    rows = w.shape[0] if per_row else 1
    v = w.double().reshape(rows, -1)  # (rows, n): one row per scale
    on_I = w_t.reshape(rows, -1) != 0
    on_J = ~on_I & (v > 0)
    on_K = ~on_I & ~on_J  # Ŵ = 0 and W <= 0 (the code's "otherwise")
    n = v.shape[1]
    absw = v.abs()
    S_I, S_J, S_K = ((absw * m).sum(1, keepdim=True) for m in (on_I, on_J, on_K))
    n_I = on_I.sum(1, keepdim=True).double()
    n_zero = n - n_I
    a = (tws_a if a_formula == "code" else tws_a_as_printed)(S_I, S_J, S_K)
    b = tws_b(S_I, absw.sum(1, keepdim=True), n, n_I, n_zero)
    check_tws_conditions(a, b, n_I, n_zero, what)  # also catches the 0/0 of an empty I or zero set
    w1 = torch.where(on_I, a * v, torch.where(on_J, b + v, b))
    w2 = torch.where(on_I, (1 - a) * v, torch.where(on_J, -b, v - b))
    return w1.to(w.dtype).reshape(w.shape), w2.to(w.dtype).reshape(w.shape)


def split_error(w: Tensor, per_row: bool = False, a_formula: str = "code") -> float:
    """max |BWN(W1) + BWN(W2) - TWN(W)| after :func:`tws_split` (0 up to float rounding for ``"code"``)."""
    w1, w2 = tws_split(w, per_row, a_formula)
    with torch.no_grad():
        return float((bwn(w1, per_row) + bwn(w2, per_row) - twn(w.detach(), per_row)).abs().max())


# ----------------------------------------------------------------------------------------------------------
# the split layers


class SplitQuantLinear(nn.Module):
    """A binary linear layer made of two halves: ``y = dense_1(x) + dense_2(x)``.

    Each half is a :class:`~binlab.qlayers.QuantLinear` with its own binary weight, its own bias (half of the
    ternary bias) and its own input quantizer (a copy of the ternary layer's), as in BinaryBERT's
    ``modeling_dynabert_binary.py``. Both halves see the same x; with equal quantizer states they quantize it
    identically, so ``dense_1(x) + dense_2(x) = q(x) (BWN(W1) + BWN(W2))^T + b``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: QuantConfig = QuantConfig(), input_signed: bool = True, device=None, dtype=None,
                 _skip_init: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        make = functools.partial(skip_init, QuantLinear) if _skip_init else QuantLinear  # from_ternary fills them
        self.dense_1 = make(in_features, out_features, bias, config, input_signed, device=device, dtype=dtype)
        self.dense_2 = make(in_features, out_features, bias, config, input_signed, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense_1(x) + self.dense_2(x)

    @classmethod
    def from_ternary(cls, linear: QuantLinear, config: QuantConfig, a_formula: str = "code",
                     what: str = "linear") -> SplitQuantLinear:
        """The split of a ternary ``linear``: W1, W2 by :func:`tws_split`, bias / 2 each, input quantizer copied."""
        w = linear.weight
        split = cls(linear.in_features, linear.out_features, linear.bias is not None, config,
                    linear.input_signed, device=w.device, dtype=w.dtype, _skip_init=True)
        w1, w2 = tws_split(w, linear.config.weight_per_row, a_formula, what)
        with torch.no_grad():
            for half, w_half in ((split.dense_1, w1), (split.dense_2, w2)):
                half.weight.copy_(w_half)
                if linear.bias is not None:
                    half.bias.copy_(linear.bias / 2)
                half.input_quantizer = copy.deepcopy(linear.input_quantizer)  # clip / step / alpha and its state
        return split

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}: dense_1(x) + dense_2(x)"


class SplitEmbedding(nn.Module):
    """The split word embedding: ``E_1[ids] + E_2[ids]``, each a binary per-row :class:`QuantEmbedding`."""

    def __init__(self, num_embeddings: int, embedding_dim: int, config: QuantConfig = QuantConfig(),
                 padding_idx: int | None = None, device=None, dtype=None, _skip_init: bool = False):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        make = functools.partial(skip_init, QuantEmbedding) if _skip_init else QuantEmbedding
        self.embedding_1 = make(num_embeddings, embedding_dim, config, padding_idx, device=device, dtype=dtype)
        self.embedding_2 = make(num_embeddings, embedding_dim, config, padding_idx, device=device, dtype=dtype)

    def forward(self, ids: Tensor) -> Tensor:
        return self.embedding_1(ids) + self.embedding_2(ids)

    @classmethod
    def from_ternary(cls, emb: QuantEmbedding, config: QuantConfig, a_formula: str = "code") -> SplitEmbedding:
        """The split of a ternary word embedding, a and b per row (one scale per token vector)."""
        w = emb.weight
        split = cls(emb.num_embeddings, emb.embedding_dim, config, emb.padding_idx, device=w.device, dtype=w.dtype,
                    _skip_init=True)
        w1, w2 = tws_split(w, per_row=True, a_formula=a_formula, what="the word embedding")
        with torch.no_grad():
            split.embedding_1.weight.copy_(w1)
            split.embedding_2.weight.copy_(w2)
        return split

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}: embedding_1(ids) + embedding_2(ids)"


# ----------------------------------------------------------------------------------------------------------
# model surgery


def binary_quant_config(quant: QuantConfig) -> QuantConfig:
    """The binary model's QuantConfig for a ternary one: TWN -> BWN (weights and a ternary embedding); the
    activation settings (bits, method, attention, FFN activation) and the scale granularity are kept."""
    if quant.weight_bits != 2 or quant.weight_method != "twn":
        raise ValueError("ternary weight splitting needs a ternary model (weight_bits=2, weight_method='twn', "
                         f"e.g. the 'w2a8' preset); got weight_bits={quant.weight_bits}, "
                         f"weight_method={quant.weight_method!r}")
    if quant.embedding_bits not in (2, 32):
        raise ValueError(f"ternary weight splitting: the word embedding must be ternary (embedding_bits=2) or full "
                         f"precision (32), got embedding_bits={quant.embedding_bits}")
    return replace(quant, weight_bits=1, weight_method="bwn", embedding_bits=1 if quant.embedding_bits == 2 else 32)


def _with_split_layers(model: nn.Module, make_linear, make_embedding) -> nn.Module:
    """Replace (in place) every QuantLinear and QuantEmbedding of ``model`` by what the two factories build."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, (QuantLinear, QuantEmbedding))]
    for name, m in targets:
        if isinstance(m, QuantLinear):
            model.set_submodule(name, make_linear(name, m))
        elif m.config.embedding_bits < 32:  # a full-precision word embedding stays one table
            model.set_submodule(name, make_embedding(name, m))
    return model


def _set_config(model: nn.Module, config) -> None:
    model.config = config
    if hasattr(model, "bert"):
        model.bert.config = config


def split_ternary_model(model: nn.Module, a_formula: str = "code") -> nn.Module:
    """The binary BinaryBERT model that computes what the ternary ``model`` computes. ``model`` is not modified.

    ``model`` is a :class:`~binlab.model.BertForSequenceClassification` (or ``BertModel``) whose
    ``config.quant`` is ternary (``weight_bits=2``, ``"twn"``; the ``"w2a8"`` preset). In a deep copy:

    * every :class:`QuantLinear` (Q, K, V, attention output, FFN in/out, pooler) becomes a
      :class:`SplitQuantLinear` (per-tensor a, b; per-row if ``weight_per_row``);
    * a ternary word embedding becomes a :class:`SplitEmbedding` (per-row a, b);
    * biases are halved into the two halves; each half gets a copy of the layer's activation quantizer;
    * everything else is copied unchanged: LayerNorms, position / token-type embeddings, the Q, K, V and
      probability quantizers of the attention, the classifier.

    ``config.quant`` becomes :func:`binary_quant_config` (``weight_bits=1``, ``"bwn"``). To reload a saved
    split model, build the structure with :func:`build_split_model` and ``load_state_dict``.
    """
    binary = binary_quant_config(model.config.quant)
    new = copy.deepcopy(model)
    _with_split_layers(new, lambda name, m: SplitQuantLinear.from_ternary(m, binary, a_formula, name),
                       lambda name, m: SplitEmbedding.from_ternary(m, binary, a_formula))
    _set_config(new, replace(model.config, quant=binary))
    return new.train(model.training)


def build_split_model(config) -> nn.Module:
    """An untrained split binary model of this shape, to ``load_state_dict`` a saved split model into.

    ``config`` is a :class:`~binlab.model.BertConfig` whose ``quant`` is binary (``weight_bits=1``) or ternary
    (then converted by :func:`binary_quant_config`).
    """
    from binlab.model import BertForSequenceClassification

    if config.quant.weight_bits == 2:
        config = replace(config, quant=binary_quant_config(config.quant))
    if config.quant.weight_bits != 1:
        raise ValueError("build_split_model: a split model has binary weights, "
                         f"got weight_bits={config.quant.weight_bits}")
    model = BertForSequenceClassification(config)
    return _with_split_layers(
        model,
        lambda name, m: SplitQuantLinear(m.in_features, m.out_features, m.bias is not None, m.config, m.input_signed),
        lambda name, m: SplitEmbedding(m.num_embeddings, m.embedding_dim, m.config, m.padding_idx))


# ----------------------------------------------------------------------------------------------------------
# width pruning: BinaryBERT's half-sized start (DynaBERT width 0.5, methods.md §2.1)


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
        from binlab.trainer import default_loss

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
