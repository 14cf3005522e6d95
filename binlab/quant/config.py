"""One object says how much of a BERT is quantized, and how: :class:`QuantConfig`.

The model reads it in one place (``BertConfig.quant``); :mod:`binlab.quant.layers` turns it into the weight and
activation quantizers of each layer. Presets reproduce the three papers' settings (methods.md §2-§4)::

    preset     weights (embedding)        activations                 attention   FFN    paper
    fp         32 (32)                    32                          softmax     gelu   BERT
    w2a8       TWN, per tensor (TWN/row)  8-bit uniform (PACT clip)   softmax     gelu   BinaryBERT's ternary stage
    w1a8       BWN, per tensor (BWN/row)  8-bit uniform (PACT clip)   softmax     gelu   BinaryBERT 1-1-8
    w1a4       BWN, per tensor (BWN/row)  4-bit LSQ                   softmax     relu   BinaryBERT 1-1-4
    w1a2       BiT (BiT/row)              2-bit elastic               softmax01   relu   BiT's W1A2 (multi-distillation)
    w1a1, bit  BiT (BiT/row)              1-bit elastic               softmax01   relu   BiT 1-1-1
    bibert     BiBERT, per row (BiBERT)   sign, no scale              bool        gelu   BiBERT 1-1-1

``bibert`` maps an attention score of exactly 0 to 0 and applies the attention dropout to the scores before bool(),
as BiBERT's code does (it produced the published numbers); ``bool_zero=1`` is the paper's bool(0) = 1.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

WEIGHT_BITS = (1, 2, 32)
ACT_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 32)
WEIGHT_METHODS = {1: ("bwn", "bibert", "bit"), 2: ("twn",)}
ACT_METHODS = ("uniform", "lsq", "sign", "elastic")
ATTENTION_MODES = ("softmax", "softmax01", "bool")
FFN_ACTS = ("gelu", "relu")
ALPHA_INITS = ("code", "optimal")
BOOL_ZEROS = (0, 1)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class QuantConfig:
    """Which tensors of a BERT are quantized, to how many bits, by which method.

    Attributes:
        weight_bits: bits of the linear layers' weights: 32 (full precision), 2 (ternary), 1 (binary).
        weight_method: at 1 bit ``"bwn"`` (BinaryBERT: alpha * sign(W)), ``"bit"`` (BiT: global mean-centring)
            or ``"bibert"`` (BiBERT: row mean-centring, clamp STE); at 2 bits ``"twn"``. Ignored at 32 bits.
        weight_per_row: one scale per output row for the linear weights (BiBERT's code) instead of per tensor
            (BinaryBERT, BiT). The word embedding is always per row.
        embedding_bits: bits of the word embedding (1, 2 or 32); its method is :attr:`embedding_method`.
        act_bits: bits of the activations (inputs of the linear layers, Q, K, V, probabilities): 32 or 1..8.
        act_method: ``"uniform"`` (PACT clip, sym/asym, needs >= 2 bits), ``"lsq"`` (learned step, >= 2 bits),
            ``"sign"`` (BiBERT, no scale, 1 bit only), ``"elastic"`` (BiT, learned alpha and threshold).
        attention: ``"softmax"``; ``"softmax01"`` (BiT: the probabilities go through the unsigned activation
            quantizer, {0, alpha} at 1 bit); ``"bool"`` (BiBERT: no softmax, bool(scores) in {0, 1}).
        ffn_act: ``"gelu"`` or ``"relu"`` (BinaryBERT at 4 bits and BiT use ReLU, so that the FFN output layer's
            input is non-negative).
        quantize_attention: quantize Q, K, V and the probabilities when ``act_bits < 32``.
        qkv_threshold: give Q, K and V a learned per-channel threshold, as every linear input has (``"elastic"``
            only). BiT's paper has one; its code's ``move_q/k/v`` are dead, so False reproduces the code (and the
            presets); the BiT recipe turns it on (methods.md §4.2, §5 (c)).
        alpha_init: how an ``"elastic"`` alpha starts: ``"code"`` (BiT's code: 2 mean|x|, or 4 mean|x| for the
            {0, alpha} set) or ``"optimal"`` (the paper's alpha*: mean|x| for sign; for {0, alpha} the fixed point
            alpha = mean of the x >= alpha / 2). Multi-bit elastic quantizers start the code's way either way.
        bool_zero: what ``"bool"`` attention makes of a score of exactly 0 (only with ``attention="bool"``). Scores
            sign(Q) sign(K)^T / sqrt(d) are an integer times 1/sqrt(d), so exact zeros are common (~10% at d = 64).
            ``0`` (default, BiBERT's code): bool(x) = 1{x > 0}, with the attention dropout on the scores before
            bool(), as in the code: a dropped score becomes 0, hence a 0 in the map. ``1`` (the paper's
            bool(x) = 1{x >= 0}): a dropped score would become a 1 (a dropped padded key too), so the dropout
            acts on the {0, 1} map after bool() instead (kept entries scaled by 1 / (1 - p), which the next
            layer's sign ignores). See :class:`binlab.model.BertSelfAttention` and methods.md §5 (d).

    Invalid values raise ``ValueError`` naming the field. ``dataclasses.replace(cfg, act_bits=4)`` validates
    again. :meth:`to_dict` / :meth:`from_dict` (and the JSON forms) round-trip.
    """

    weight_bits: int = 32
    weight_method: str = "bwn"
    weight_per_row: bool = False
    embedding_bits: int = 32
    act_bits: int = 32
    act_method: str = "uniform"
    attention: str = "softmax"
    ffn_act: str = "gelu"
    quantize_attention: bool = True
    qkv_threshold: bool = False
    alpha_init: str = "code"
    bool_zero: int = 0

    def __post_init__(self):
        for f in ("weight_bits", "embedding_bits"):
            v = getattr(self, f)
            if not _is_int(v) or v not in WEIGHT_BITS:
                raise ValueError(f"QuantConfig.{f} must be one of {WEIGHT_BITS}, got {v!r}")
        if not _is_int(self.act_bits) or self.act_bits not in ACT_BITS:
            raise ValueError(f"QuantConfig.act_bits must be one of {ACT_BITS}, got {self.act_bits!r}")
        all_weight_methods = WEIGHT_METHODS[1] + WEIGHT_METHODS[2]
        if self.weight_method not in all_weight_methods:
            raise ValueError(f"QuantConfig.weight_method must be one of {all_weight_methods}, "
                             f"got {self.weight_method!r}")
        if self.weight_bits < 32 and self.weight_method not in WEIGHT_METHODS[self.weight_bits]:
            raise ValueError(f"QuantConfig: weight_bits={self.weight_bits} needs weight_method in "
                             f"{WEIGHT_METHODS[self.weight_bits]}, got {self.weight_method!r}")
        if self.act_method not in ACT_METHODS:
            raise ValueError(f"QuantConfig.act_method must be one of {ACT_METHODS}, got {self.act_method!r}")
        if self.act_bits < 32:
            if self.act_method == "sign" and self.act_bits != 1:
                raise ValueError(f"QuantConfig: act_method='sign' is 1 bit, got act_bits={self.act_bits}")
            if self.act_method in ("uniform", "lsq") and self.act_bits < 2:
                raise ValueError(f"QuantConfig: act_method={self.act_method!r} needs act_bits >= 2 "
                                 f"(use 'sign' or 'elastic' for 1 bit), got act_bits={self.act_bits}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"QuantConfig.attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.ffn_act not in FFN_ACTS:
            raise ValueError(f"QuantConfig.ffn_act must be one of {FFN_ACTS}, got {self.ffn_act!r}")
        if self.alpha_init not in ALPHA_INITS:
            raise ValueError(f"QuantConfig.alpha_init must be one of {ALPHA_INITS}, got {self.alpha_init!r}")
        if not _is_int(self.bool_zero) or self.bool_zero not in BOOL_ZEROS:
            raise ValueError(f"QuantConfig.bool_zero must be one of {BOOL_ZEROS} (bool(0) of the 'bool' attention), "
                             f"got {self.bool_zero!r}")
        if self.bool_zero and self.attention != "bool":
            raise ValueError(f"QuantConfig.bool_zero={self.bool_zero} is a choice of attention='bool' (BiBERT), "
                             f"but attention={self.attention!r}")
        for f in ("weight_per_row", "quantize_attention", "qkv_threshold"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"QuantConfig.{f} must be True or False, got {getattr(self, f)!r}")

    @property
    def embedding_method(self) -> str:
        """The word embedding's method: ``"twn"`` at 2 bits; at 1 bit the 1-bit ``weight_method`` (``"bwn"``
        when the weights are ternary or FP)."""
        if self.embedding_bits == 2:
            return "twn"
        return self.weight_method if self.weight_method in WEIGHT_METHODS[1] else "bwn"

    @property
    def label(self) -> str:
        """``"W1E1A1"`` style: bits of weights, embedding, activations (the papers' W-E-A)."""
        return f"W{self.weight_bits}E{self.embedding_bits}A{self.act_bits}"

    @classmethod
    def preset(cls, name: str) -> QuantConfig:
        """One of :data:`PRESETS` (see the module docstring for what each reproduces)."""
        if name not in PRESETS:
            raise ValueError(f"unknown QuantConfig preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(**PRESETS[name])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"QuantConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"QuantConfig.from_dict: unknown key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> QuantConfig:
        return cls.from_dict(json.loads(s))


_BIT = dict(weight_bits=1, weight_method="bit", embedding_bits=1, act_bits=1, act_method="elastic",
            attention="softmax01", ffn_act="relu")

#: name -> the fields that differ from the defaults.
PRESETS: dict[str, dict] = {
    "fp": {},
    "w2a8": dict(weight_bits=2, weight_method="twn", embedding_bits=2, act_bits=8, act_method="uniform"),
    "w1a8": dict(weight_bits=1, weight_method="bwn", embedding_bits=1, act_bits=8, act_method="uniform"),
    "w1a4": dict(weight_bits=1, weight_method="bwn", embedding_bits=1, act_bits=4, act_method="lsq",
                 ffn_act="relu"),
    "w1a2": dict(_BIT, act_bits=2),
    "w1a1": dict(_BIT),
    "bit": dict(_BIT),
    "bibert": dict(weight_bits=1, weight_method="bibert", weight_per_row=True, embedding_bits=1, act_bits=1,
                   act_method="sign", attention="bool", ffn_act="gelu"),
}
