"""The split binary model: every quantized layer of a ternary BERT as two binary halves (BinaryBERT, chapter 4).

The formulas that make the halves (a, b and the three sets) are :mod:`binlab.methods.splitting`; this module does
the surgery. :func:`split_ternary_model` turns every :class:`~binlab.quant.layers.QuantLinear` into a
:class:`SplitQuantLinear` and the word embedding into a :class:`SplitEmbedding`, halves the biases, copies each
activation quantizer into both halves and leaves everything else (LayerNorms, position and token-type
embeddings, Q/K/V/probability quantizers, the classifier) as it was. :func:`build_split_model` builds the
structure again, to load a saved split model into.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from binlab.checkpoint import hf_to_binlab_key
from binlab.methods.splitting import tws_split
from binlab.model import BertForSequenceClassification
from binlab.quant.config import QuantConfig
from binlab.quant.layers import QuantEmbedding, QuantLinear

__all__ = ["SplitQuantLinear", "SplitEmbedding", "binary_quant_config", "split_ternary_model", "build_split_model",
           "is_split_state", "split_model_from_state"]


# ----------------------------------------------------------------------------------------------------------
# the split layers


class SplitQuantLinear(nn.Module):
    """A binary linear layer made of two halves: ``y = dense_1(x) + dense_2(x)``.

    Each half is a :class:`~binlab.quant.layers.QuantLinear` with its own binary weight, its own bias (half of the
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


def is_split_state(state: dict) -> bool:
    """True when a checkpoint's tensors (any naming) are a split model's: some key has a ``dense_1`` or
    ``embedding_1`` half."""
    return any(".dense_1." in k or ".embedding_1." in k for k in state)


def split_model_from_state(config, state: dict) -> nn.Module:
    """The split model of ``config`` holding a saved split checkpoint's ``state`` (Hugging Face names), loaded
    strictly (``RuntimeError`` on a missing or unexpected tensor)."""
    model = build_split_model(config)
    model.load_state_dict({hf_to_binlab_key(k): v for k, v in state.items()}, strict=True)
    return model
