"""Quantized layers built from a :class:`~binlab.quant.config.QuantConfig`.

* :class:`QuantLinear`: ``y = input_quantizer(x) @ weight_quantizer(W).T + b``, a drop-in nn.Linear (same
  ``weight`` / ``bias``, so a Hugging Face BERT state dict loads into it);
* :class:`QuantEmbedding`: the word embedding, its table quantized per row at ``embedding_bits``;
* :func:`make_act_quantizer`: the activation quantizer for a tensor role (Identity at 32 bits), used by the
  attention for Q, K, V and the probabilities;
* :func:`make_weight_quantizer`: the weight quantizer for a bit-width and method (Identity at 32 bits).

Which activation quantizer (methods.md §2.3, §3.2, §4.3)::

    act_method   signed=True (LN / matmul outputs)         signed=False (after GELU/ReLU, softmax probabilities)
    uniform      UniformQuantizer(symmetric=True)           UniformQuantizer(symmetric=False)   (min-max)
    lsq          LSQ(symmetric=True)                        LSQ(symmetric=False)
    sign         SteSign(clip_value=1)                      SteSign(clip_value=1)   (BiBERT signs everything)
    elastic      Elastic(signed=True)                       Elastic(signed=False)   ({0, alpha} at 1 bit)

The weights and their biases stay the layer's own ``weight`` / ``bias``; the quantizers only add their
learned clips, steps, alphas and thresholds (under ``input_quantizer.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binlab.quant import quantizers as Q
from binlab.quant.config import QuantConfig


def make_weight_quantizer(bits: int, method: str, per_row: bool) -> nn.Module:
    """The weight quantizer: Identity (32), ``TWN`` (2, ``"twn"``), ``BWN`` (1: ``"bwn"``, ``"bit"``, ``"bibert"``)."""
    if bits == 32:
        return nn.Identity()
    if bits == 2 and method == "twn":
        return Q.TWN(per_row=per_row)
    if bits == 1 and method in ("bwn", "bit", "bibert"):
        return Q.BWN(per_row=per_row, centering=None if method == "bwn" else method)
    raise ValueError(f"make_weight_quantizer: no {bits}-bit weight method {method!r} "
                     f"(1 bit: 'bwn', 'bit', 'bibert'; 2 bits: 'twn'; 32: full precision)")


def make_act_quantizer(config: QuantConfig, signed: bool, num_features: int | None = None) -> nn.Module:
    """The activation quantizer of ``config`` for a signed or a non-negative (``signed=False``) tensor.

    ``nn.Identity()`` when ``config.act_bits == 32``. ``num_features`` (the size of the last dimension) adds
    BiT's learned per-channel threshold to an ``"elastic"`` quantizer; the other methods ignore it.
    """
    if not isinstance(config, QuantConfig):
        raise TypeError(f"make_act_quantizer: config must be a QuantConfig, got {type(config).__name__}")
    bits, method = config.act_bits, config.act_method
    if bits == 32:
        return nn.Identity()
    if method == "uniform":
        return Q.UniformQuantizer(num_bits=bits, symmetric=signed)
    if method == "lsq":
        return Q.LSQ(num_bits=bits, symmetric=signed)
    if method == "sign":
        return Q.SteSign(clip_value=1.0)
    if method == "elastic":
        return Q.Elastic(num_bits=bits, signed=signed, num_features=num_features, init=config.alpha_init)
    raise ValueError(f"make_act_quantizer: unknown act_method {method!r}")  # QuantConfig already checks this


class QuantLinear(nn.Linear):
    """nn.Linear whose weight and input are quantized in its forward pass::

        y = input_quantizer(x) @ weight_quantizer(W)^T + b

    Args:
        in_features, out_features, bias: as nn.Linear (the bias stays full precision).
        config: a :class:`QuantConfig`; ``weight_bits`` / ``weight_method`` / ``weight_per_row`` pick the
            weight quantizer, ``act_bits`` / ``act_method`` the input quantizer. Full precision at 32 bits.
        input_signed: False for an input that is non-negative (the FFN output layer's input, after GELU/ReLU):
            it then gets the asymmetric / unsigned quantizer (BinaryBERT's ``sym_quant_ffn_attn=False``,
            BiT's {0, alpha}).

    ``weight`` and ``bias`` are nn.Linear's, so ``load_state_dict(linear.state_dict(), strict=False)`` works and
    reports only the quantizers' own keys (``input_quantizer.*``) as missing.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: QuantConfig = QuantConfig(), input_signed: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if not isinstance(config, QuantConfig):
            raise TypeError(f"QuantLinear: config must be a QuantConfig, got {type(config).__name__}")
        self.config = config
        self.input_signed = bool(input_signed)
        self.weight_quantizer = make_weight_quantizer(config.weight_bits, config.weight_method, config.weight_per_row)
        self.input_quantizer = make_act_quantizer(config, signed=self.input_signed, num_features=in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, W{self.config.weight_bits}A{self.config.act_bits}, "
                f"input_signed={self.input_signed}")


class QuantEmbedding(nn.Embedding):
    """nn.Embedding whose table is quantized per row (one scale per token vector) at ``config.embedding_bits``,
    by ``config.embedding_method``: BWN / BiT / BiBERT at 1 bit, TWN at 2 bits, full precision at 32.

    The result is the rows of the quantized table, ``F.embedding(ids, Q(W))``, as in the three codes. Because
    every scale is per row, only the rows the batch looks up are quantized (BiT's centring still subtracts the
    mean of the whole table): the same values and gradients, at a fraction of the cost for a 30k-row vocabulary.
    The NaN/inf check then covers those rows only.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, config: QuantConfig = QuantConfig(),
                 padding_idx: int | None = None, device=None, dtype=None):
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx, device=device, dtype=dtype)
        if not isinstance(config, QuantConfig):
            raise TypeError(f"QuantEmbedding: config must be a QuantConfig, got {type(config).__name__}")
        self.config = config
        self.weight_quantizer = make_weight_quantizer(config.embedding_bits, config.embedding_method, per_row=True)

    def forward(self, ids: Tensor) -> Tensor:
        quantizer = self.weight_quantizer
        if not getattr(quantizer, "per_row", False) or self.max_norm is not None or self.sparse:
            return F.embedding(ids, quantizer(self.weight), self.padding_idx, self.max_norm,
                               self.norm_type, self.scale_grad_by_freq, self.sparse)
        used, where = torch.unique(ids, return_inverse=True)  # the rows this batch needs, (U,)
        rows = F.embedding(used, self.weight, self.padding_idx)  # (U, D); the padding row gets no gradient
        if isinstance(quantizer, Q.BWN) and quantizer.centering == "bit":
            rows_q = Q.bwn(rows, True, "bit", mean=self.weight.mean())  # BiT: global mean of the whole table
        else:
            rows_q = quantizer(rows)  # per-row scale (and per-row centring): a row depends on itself only
        return F.embedding(where, rows_q, scale_grad_by_freq=self.scale_grad_by_freq)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, E{self.config.embedding_bits} ({self.config.embedding_method})"
