"""The bitwise forward pass of a packed W1A1 BERT: every binarized product an XNOR- or AND-popcount.

:class:`PackedBert` runs a model read by :func:`binlab.infer.packed.load_packed`. No binarized matrix is ever
unpacked to float: the weights stay packed uint64 words (blocked once, at load), and every activation that meets
them is binarized and packed on the way (:mod:`binlab.infer.fused`). Per encoder layer, with ``P`` an integer
popcount product and ``a`` the value of one bit (alpha, or 1 for BiBERT's sign)::

    Q, K, V      P = bits(h) . bits(W_q/k/v)           XNOR     y = a_in alpha_W P + b, then the bits of Q, K, V
    scores       P = bits(Q) . bits(K)                 XNOR     BiT:    s = a_q a_k P / sqrt(d) + mask
                                                                BiBERT: A = 1{P > 0} on real keys (no softmax)
    probs        BiT: p = softmax(s), bits 1{p / alpha_p > 1/2}                ({0, alpha_p})
    context      P = bits(p or A) . bits(V) over keys  AND      ctx = a_p a_v P
    attn output  P = bits(ctx) . bits(W_o)             XNOR     LayerNorm(a alpha P + b + h)
    FFN1         P = bits(h') . bits(W_1)              XNOR     ReLU -> {0, alpha} bits (BiT), or GELU -> signs
    FFN2         P = bits(.) . bits(W_2)               AND for BiT's {0, alpha}, XNOR for signs;  LayerNorm(... + h')
    pooler       P = bits(h_CLS) . bits(W_p)           XNOR     tanh(a alpha P + b)

Two shortcuts give the same bits with less work (``PackedBert(..., thresholds=, fused_scores=)`` turn them off):
where bits follow ``y`` directly or through the FFN's activation (Q, K, V; ReLU or GELU into FFN2) they are
integer thresholds on P, found once per model (:func:`fused.product_thresholds`, :func:`gelu_thresholds`); and the
scores are never stored: Q . K^T runs inside the softmax or bool kernel, a few heads at a time
(:func:`fused.scores_softmax_binarize`, :func:`fused.scores_bool_binarize`), except when a ``trace`` asks for them.

BinaryBERT's split model (``PackedModel.split``) runs the same way with two products per binarized layer, one per
half, each half binarizing its input with its own binarizer: ``y = (a_1 alpha_1 P_1 + b_1) + (a_2 alpha_2 P_2 + b_2)``
(trace names ``NAME`` and ``NAME.half2``), and the word embedding as the sum of its two packed tables. That path
sums the halves in numpy rather than in the fused kernels: it is there to run the model exactly, not fast.

A forward pass runs from a plan made once per input shape [B, L] (``plans=False`` turns it off): the list of
every kernel call the pass makes (:func:`binlab.kernels.products.product_steps` for the products), each with the
buffers it reads and writes, made and checked once. The calls and their arguments are those of the step-by-step
path, which still runs a split model, a ``trace`` and the float kernels; what the plan saves is the Python between
the kernels (about 1,000 calls of a MiniLM forward pass: the products' checks, the buffers' allocation).

The row-wise steps (each LayerNorm with the bits of the next products' inputs in the same pass, the integer
thresholds) run on parts of the rows at once, one per numba thread, above :data:`ROWS_PARALLEL_MIN` rows
(:mod:`binlab.infer.rows`; the same bits on any number of parts).

LayerNorm, softmax, tanh, the residual sums, the embedding sum and the classifier stay float (the classifier as an
elementwise product and a sum: no float matrix product runs anywhere in the forward pass); GELU too, where its
thresholds are off or refused (it is evaluated in float once per model, at every P, to find them). Floats
are ``dtype``: float32, or float64 to compare with a float64 fake-quant model. In float64 the integer products
equal that model's exactly and only the order of the float operations differs: the logits agree to ~1e-15 when the
stored scales are exact (tests/test_infer.py), ~1e-7 in general, because the derived weight scales alpha = mean |W|
(float64 in the fake-quant model) are stored in float32.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as F

from binlab.infer import fused, rows
from binlab.infer.packed import (HALF2, Binarizer, PackedModel, input_binarizer, linear_shapes, load_packed,
                                 probs_binarizer, qkv_binarizer)
from binlab.kernels.packing import unpack_bits01, words_for
from binlab.kernels.products import PackedWeight, get_backend, popcount_product, product_steps
from binlab.model import MASK_VALUE
from binlab.quant.quantizers import ALPHA_MIN

__all__ = ["PackedBert", "load_engine", "gelu_thresholds", "STEPS"]

#: The steps ``timings`` names, in the order of the forward pass: once per call (no prefix) or once per encoder layer
#: (``layer.i.`` before it). ``.pack`` binarizes and packs an operand, ``.gemm`` is the popcount product, the rest the
#: float work after it (scale, bias, residual, LayerNorm, activation, the next operand's bits).
STEPS = (
    ("inputs", "the input checks and the attention mask"),
    ("embeddings", "word bits x scale + position + token type, LayerNorm"),
    ("qkv.pack", "the bits of h for Q, K, V"),
    ("qkv.gemm", "Q, K, V: XNOR products with W_q, W_k, W_v"),
    ("qkv.binarize", "scale + bias, then the bits of Q, K, V per head"),
    ("scores", "Q . K^T: XNOR product per head (in probs, fused, unless traced)"),
    ("probs", "Q . K^T, then softmax and {0, alpha} bits (BiT) or bool(scores) (BiBERT)"),
    ("context", "probs . V: AND product per head"),
    ("attn_out.pack", "the bits of the context"),
    ("attn_out.gemm", "the attention output: XNOR product with W_o"),
    ("attn_out.ln", "scale + bias + residual, LayerNorm"),
    ("ffn1.pack", "the bits of h'"),
    ("ffn1.gemm", "FFN1: XNOR product with W_1"),
    ("ffn1.act", "scale + bias, ReLU or GELU, the bits of the FFN2 input"),
    ("ffn2.gemm", "FFN2: AND or XNOR product with W_2"),
    ("ffn2.ln", "scale + bias + residual, LayerNorm"),
    ("pooler", "the [CLS] bits, XNOR product with W_p, tanh"),
    ("classifier", "the float classifier"),
)
#: the steps of :data:`STEPS` that run once per encoder layer
LAYER_STEPS = tuple(name for name, _ in STEPS if name not in ("inputs", "embeddings", "pooler", "classifier"))

_DTYPES = (torch.float32, torch.float64)
#: BiT's softmax over fewer scores than this runs serially (a thread launch costs more than it saves).
PARALLEL_MIN_WORK = 1 << 16
#: the row-wise steps (:mod:`binlab.infer.rows`) of a pass with fewer rows (tokens in the batch) than this run serially
ROWS_PARALLEL_MIN = 32
#: the plans (one per input shape and thread count, :meth:`PackedBert._plan`) an engine keeps
PLANS_KEPT = 8


@dataclass
class _Act:
    """A binarizer ready for the fused kernels: kind code, alpha [1] (clamped), threshold [K] (zeros if none)."""

    spec: Binarizer
    code: int
    alpha: np.ndarray
    thr: np.ndarray

    @property
    def value(self) -> np.ndarray:
        """The value of one bit: alpha, or 1 for a sign."""
        return self.alpha if self.spec.has_alpha else np.ones(1, self.alpha.dtype)


@dataclass
class _Linear:
    """A packed binary linear layer: blocked weight, c = a_in * alpha_W [N], bias [N], input binarizer."""

    weight: PackedWeight
    k: int
    n: int
    c: np.ndarray
    bias: np.ndarray
    act: _Act

    @property
    def use_and(self) -> bool:
        """Whether the product is an AND-popcount (a {0, alpha} input), else XNOR."""
        return self.act.spec.product == "and"

    def product(self, words: np.ndarray, backend) -> np.ndarray:
        """The int32 popcount product [R, N] of packed input rows with the weight."""
        return popcount_product(words, self.weight, self.k, use_and=self.use_and, backend=backend)

    def affine(self, prod: np.ndarray) -> np.ndarray:
        """``c * P + b`` [R, N] in the compute dtype (what :func:`fused.affine` computes), for the split path."""
        return prod.astype(self.c.dtype) * self.c + self.bias


class _Laps:
    """The optional time breakdown of a forward pass: ``lap(key)`` adds the seconds since the previous lap to
    ``timings[key]``. Off (``timings=None``) every lap is :func:`_no_lap`, a call that does nothing."""

    __slots__ = ("timings", "last")

    def __init__(self, timings: dict):
        self.timings, self.last = timings, time.perf_counter()

    def __call__(self, key: str) -> None:
        now = time.perf_counter()
        self.timings[key] = self.timings.get(key, 0.0) + (now - self.last)
        self.last = now


def _no_lap(key: str) -> None:
    pass


def _nothing() -> None:
    """A step of a plan with no kernel of its own (its work is done in the step before or after): a lap only."""


@dataclass
class _Plan:
    """A forward pass over inputs of one shape [B, L]: the inputs' buffers, then ``steps``, every kernel call in
    order as ``(function, args, where, step)`` (``where`` names a binarizer for a NaN count the call returns;
    ``step`` is the :data:`STEPS` lap it belongs to); the pooler's ``c P + b`` lands in ``y`` [B, D]."""

    ids: np.ndarray
    types: np.ndarray
    valid: np.ndarray
    mask: np.ndarray
    steps: list
    y: np.ndarray


def _chunks(work: int, tasks: int) -> int:
    """How many chunks BiT's softmax over ``work`` scores (``tasks`` query blocks) is cut into: numba's current
    thread count, or 1 (the serial kernel) below :data:`PARALLEL_MIN_WORK` scores."""
    if work < PARALLEL_MIN_WORK:
        return 1
    return max(1, min(numba.get_num_threads(), tasks))


def _check_nan(n_nan: int, where: str) -> None:
    if n_nan:
        raise ValueError(f"PackedBert: {n_nan} NaN value(s) reached the binarizer of {where}")


class PackedBert:
    """A packed W1A1 BERT classifier, run bitwise (module docstring).

    Args:
        packed: a :class:`~binlab.infer.packed.PackedModel` (``load_packed(folder)``), or a folder.
        dtype: the float dtype of everything that stays float: ``torch.float32`` (default) or ``torch.float64``.
        backend: the kernels' backend (``"simd8"``, ``"simd1"``, ``"scalar"``; None: binlab.kernels' default).
        thresholds: turn the bits that follow a product directly (Q, K, V) or through the activation (ReLU or
            GELU into FFN2) into integer thresholds on the product, found once here (:func:`fused.product_thresholds`,
            :func:`gelu_thresholds`; the same bits, no float work per entry). False: the float kernels compute
            every entry (as a split model always does).
        fused_scores: Q . K^T and the attention bits in one kernel (:func:`fused.scores_softmax_binarize`, BiT;
            :func:`fused.scores_bool_binarize`, BiBERT; the same bits). False, or a ``trace``: the scores as an
            array first (the trace records them).
        plans: run a forward pass from the plan of its input shape (:meth:`_plan`: every kernel call of the pass
            listed once, on buffers made once; the same calls with the same arguments as the step-by-step path,
            so the same logits), where the model allows it (not split; thresholds and fused scores on) and no
            ``trace`` is asked for. False: always step by step.

    ``engine(input_ids, attention_mask=None, token_type_ids=None)`` returns the logits ``(B, num_labels)``;
    ``trace={}`` collects every integer product by name (``layer.0.query``, ``layer.0.scores``, ...).
    ``timings={}`` receives the seconds each step took (:data:`STEPS`; ``layer.0.qkv.gemm``, ...), for
    ``binlab bench model``'s breakdown; without it the forward pass only makes a no-op call per step.
    A plan's buffers are reused by every call of its shape: one forward pass at a time per engine (an engine per
    thread).
    """

    def __init__(self, packed: PackedModel | str | os.PathLike, dtype: torch.dtype = torch.float32,
                 backend: str | None = None, thresholds: bool = True, fused_scores: bool = True, plans: bool = True):
        if not isinstance(packed, PackedModel):
            packed = load_packed(packed)
        if dtype not in _DTYPES:
            raise ValueError(f"PackedBert: dtype must be torch.float32 or torch.float64, got {dtype}")
        self.packed, self.config, self.dtype, self.backend = packed, packed.config, dtype, backend
        self.fused_scores = fused_scores
        self._np = np.dtype(np.float32 if dtype == torch.float32 else np.float64)
        t, c, q = packed.tensors, packed.config, packed.config.quant
        self.num_heads, self.head_size = c.num_attention_heads, c.head_size
        self.split = packed.split
        self.word_bits = np.ascontiguousarray(t["embeddings.word.bits"])
        self.word_scale = self._fp("embeddings.word.scale")
        if self.split:
            self.word_bits2 = np.ascontiguousarray(t[f"embeddings.word.{HALF2}.bits"])
            self.word_scale2 = self._fp(f"embeddings.word.{HALF2}.scale")
        self.position = self._fp("embeddings.position")
        self.token_type = self._fp("embeddings.token_type")
        self.emb_ln = (self._fp("embeddings.ln.weight"), self._fp("embeddings.ln.bias"))
        # every binarized layer by its packed name: a split model's second halves under NAME.half2
        self.suffixes = ("", f".{HALF2}") if self.split else ("",)
        self.linears = {name + s: self._linear(name + s, k, n, input_binarizer(q, signed))
                        for name, (k, n, signed) in linear_shapes(c).items() for s in self.suffixes}
        self.layers = []
        A = c.attention_size
        # a split model sums the halves' Q, K, V in float first: qkv_binarize then takes c = 1, b = 0
        self.qkv_unit = (np.ones((3, A), self._np), np.zeros((3, A), self._np)) if self.split else None
        for i in range(c.num_hidden_layers):
            p = f"layer.{i}."
            acts = [self._act(p + a, qkv_binarizer(q), A) for a in ("q_act", "k_act", "v_act")]
            probs = probs_binarizer(q)
            qkv_halves = []  # per half: (name suffix, input binarizers, stacked weight [3], c [3, A], b [3, A])
            for suffix in self.suffixes:
                qkv = [self.linears[p + n + suffix] for n in ("query", "key", "value")]
                weight = PackedWeight.from_words(np.stack([lin.weight.words[0] for lin in qkv]), c.hidden_size)
                qkv_halves.append((suffix, [lin.act for lin in qkv], weight, np.stack([lin.c for lin in qkv]),
                                   np.stack([lin.bias for lin in qkv])))
            self.layers.append({
                "prefix": p,
                "qkv_halves": qkv_halves,
                "qkv_acts": acts,
                "qkv_kinds": np.array([a.code for a in acts], np.int64),
                "qkv_alphas": np.concatenate([a.alpha for a in acts]),
                "qkv_thr": np.stack([a.thr for a in acts]),
                "scores_c": acts[0].value * acts[1].value,
                "probs": None if probs is None else self._act(p + "probs_act", probs, 1),
                "attention_ln": (self._fp(p + "attention_ln.weight"), self._fp(p + "attention_ln.bias")),
                "ffn_ln": (self._fp(p + "ffn_ln.weight"), self._fp(p + "ffn_ln.bias")),
                # the binarizers a LayerNorm's output feeds, packed in the LayerNorm's pass (none for a split model)
                "qkv_in": self._binarizers([] if self.split else qkv_halves[0][1]),
                "ffn_in": self._binarizers([] if self.split else [self.linears[p + "intermediate"].act]),
            })
            if thresholds and not self.split:
                self._add_thresholds(self.layers[-1])
        self.classifier = (self._tensor("classifier.weight"), self._tensor("classifier.bias"))
        self.no_bits = self._binarizers([])  # a LayerNorm whose output feeds no binarizer of its pass
        # the plan per input shape runs when every layer has its integer thresholds and the scores are fused
        self.plannable = plans and fused_scores and not self.split and all(
            layer.get("qkv_lohi") is not None and layer.get("ffn1_lohi") is not None for layer in self.layers)
        self._plans: dict[tuple[int, int, int, str], _Plan] = {}

    def _binarizers(self, acts: list[_Act]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kinds [J], alphas [J], thresholds [J, D]) of J input binarizers, for :mod:`binlab.infer.rows`."""
        D = self.config.hidden_size
        return (np.array([a.code for a in acts], np.int64), np.array([a.alpha[0] for a in acts], self._np),
                np.array([a.thr for a in acts], self._np).reshape(len(acts), D))

    def _norm(self, y: np.ndarray, ln, binarizers, prod=None, lin=None) -> tuple[np.ndarray, np.ndarray]:
        """``LayerNorm(c P + b + y)`` (``prod``, ``lin``) or ``LayerNorm(y)`` [R, D], and its bits for each of the
        ``binarizers`` [J, R, DW] (:func:`rows.residual_layer_norm_binarize`, on parts of the rows at once)."""
        kinds, alphas, thrs = binarizers
        R, D = y.shape
        out = np.empty((R, D), self._np)
        words = np.empty((kinds.shape[0], R, words_for(D)), np.uint64)
        n_chunks = self._chunks(R)
        if prod is None:
            n_nan = rows.layer_norm_binarize(n_chunks, y, ln[0], ln[1], self.config.layer_norm_eps, kinds, alphas,
                                             thrs, out, words)
        else:
            n_nan = rows.residual_layer_norm_binarize(n_chunks, prod, lin.c, lin.bias, y, ln[0], ln[1],
                                                      self.config.layer_norm_eps, kinds, alphas, thrs, out, words)
        _check_nan(n_nan, "a LayerNorm's output")
        return out, words

    def _add_thresholds(self, layer: dict) -> None:
        """Integer thresholds on the products for the bits that follow them (Q, K, V; FFN1 into FFN2, through ReLU
        or GELU): ``layer["qkv_lohi"]``, ``layer["ffn1_lohi"]``, each None where a value is not finite (the float
        kernels then run, and report the NaN)."""
        p, A, k = layer["prefix"], self.config.attention_size, self.config.hidden_size
        _, _, _, c, b = layer["qkv_halves"][0]
        lo, hi = np.empty((3, A), np.int32), np.empty((3, A), np.int32)
        ok = all(fused.product_thresholds(k, c[j], b[j], False, int(layer["qkv_kinds"][j]),
                                          layer["qkv_alphas"][j:j + 1], layer["qkv_thr"][j], lo[j], hi[j])
                 for j in range(3))
        layer["qkv_lohi"] = (lo, hi) if ok else None
        inter, act = self.linears[p + "intermediate"], self.linears[p + "output"].act
        if self.config.quant.ffn_act == "relu":
            lo, hi = np.empty(inter.n, np.int32), np.empty(inter.n, np.int32)
            ok = fused.product_thresholds(inter.k, inter.c, inter.bias, True, act.code, act.alpha, act.thr, lo, hi)
            layer["ffn1_lohi"] = (lo, hi, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint64)) \
                if ok else None
        else:
            step = 1 if inter.use_and else 2  # an XNOR product has the parity of k
            layer["ffn1_lohi"] = gelu_thresholds(inter.k, step, inter.c, inter.bias, act.code, act.alpha, act.thr)

    # ------------------------------------------------------------------------------------------------------
    # reading the packed tensors

    def _fp(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(self.packed.tensors[name], dtype=self._np)

    def _tensor(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self._fp(name))

    def _act(self, name: str, spec: Binarizer, k: int) -> _Act:
        if spec.has_alpha:  # clamped as the quantizer clamps it, in the compute dtype
            alpha = np.maximum(self._fp(f"{name}.alpha"), self._np.type(ALPHA_MIN))
        else:
            alpha = np.ones(1, self._np)
        thr = self._fp(f"{name}.threshold") if spec.threshold else np.zeros(max(k, 1), self._np)
        return _Act(spec, fused.KIND_CODES[spec.kind], alpha, thr)

    def _halves(self, name: str) -> list[tuple[str, _Linear]]:
        """``[(packed name, layer)]`` of binarized layer ``name``: itself, or a split model's two halves."""
        return [(name + s, self.linears[name + s]) for s in self.suffixes]

    def _linear(self, name: str, k: int, n: int, spec: Binarizer) -> _Linear:
        act = self._act(f"{name}.input", spec, k)
        scale = self._fp(f"{name}.scale")
        c = np.ascontiguousarray(np.broadcast_to(act.value * scale, (n,)))  # a_in * alpha_W, in the compute dtype
        weight = PackedWeight.from_words(np.ascontiguousarray(self.packed.tensors[f"{name}.bits"]), k)
        return _Linear(weight, k, n, c, self._fp(f"{name}.bias"), act)

    # ------------------------------------------------------------------------------------------------------
    # the forward pass

    def _check_inputs(self, input_ids, attention_mask, token_type_ids):
        c = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.numel() == 0:
            raise ValueError("input_ids must be a non-empty 2-D tensor (batch, seq_len) of token ids, got "
                             f"{type(input_ids).__name__} {tuple(getattr(input_ids, 'shape', ()))}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        B, L = input_ids.shape
        if L > c.max_position_embeddings:
            raise ValueError(f"sequence length {L} exceeds max_position_embeddings={c.max_position_embeddings}")
        ids = input_ids.numpy()  # the checks in numpy: a few us each, where torch's small ops cost several times that
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= c.vocab_size:
            raise ValueError(f"token ids must be in [0, {c.vocab_size}), got range [{lo}, {hi}]")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if tuple(t.shape) != (B, L):
                raise ValueError(f"{name} must have the shape of input_ids {(B, L)}, got {tuple(t.shape)}")
        m = attention_mask.numpy()
        if not ((m == 0) | (m == 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
        types = token_type_ids.numpy()
        if int(types.min()) < 0 or int(types.max()) >= c.type_vocab_size:
            raise ValueError(f"token_type_ids must be in [0, {c.type_vocab_size})")
        return input_ids.long(), attention_mask, token_type_ids.long()

    def _layer_norm(self, x: np.ndarray, ln) -> np.ndarray:
        return self._norm(np.ascontiguousarray(x), ln, self.no_bits)[0]

    def _binarize(self, x: np.ndarray, act: _Act, where: str) -> np.ndarray:
        out = np.empty((x.shape[0], words_for(x.shape[1])), np.uint64)
        _check_nan(rows.binarize_rows_parallel(self._chunks(x.shape[0]), x, act.code, act.alpha, act.thr, out), where)
        return out

    def _attention(self, layer: dict, h: np.ndarray, hw: np.ndarray, B: int, L: int, mask: np.ndarray,
                   valid: np.ndarray, trace: dict | None, lap=_no_lap) -> list[np.ndarray]:
        """h [B*L, D] -> the attention output's input bits [B*L, ceil(A / 64)], one array per half. ``hw``: the
        bits of h for Q, K, V [3, B*L, DW] if the LayerNorm made them (``layer["qkv_in"]``), else empty."""
        p, H, d = layer["prefix"], self.num_heads, self.head_size
        halves = layer["qkv_halves"]
        prods = []
        for _, inputs, weight, _, _ in halves:
            x = hw
            if not len(hw):
                x = np.empty((3, h.shape[0], words_for(h.shape[1])), np.uint64)  # [3, B*L, DW]: written in place
                for j, a in enumerate(inputs):
                    _check_nan(fused.binarize_rows(h, a.code, a.alpha, a.thr, x[j]), p + "qkv input")
            lap(p + "qkv.pack")
            prods.append(popcount_product(x, weight, self.config.hidden_size, backend=self.backend))
            lap(p + "qkv.gemm")
        prod, c, b = prods[0], halves[0][3], halves[0][4]
        if self.split:  # Q, K, V as floats, the two halves summed; qkv_binarize then only binarizes (c = 1, b = 0)
            prod = sum(pr.astype(c_h.dtype) * c_h[:, None] + b_h[:, None]
                       for pr, (_, _, _, c_h, b_h) in zip(prods, halves))
            c, b = self.qkv_unit
        dw, lw = words_for(d), words_for(L)
        qw, kw = np.empty((B, H, L, dw), np.uint64), np.empty((B, H, L, dw), np.uint64)
        vw = np.empty((B, H, d, lw), np.uint64)
        if layer.get("qkv_lohi") is not None:  # the same bits from integer thresholds on P
            rows.qkv_threshold_bits_parallel(self._chunks(B * L), prod, *layer["qkv_lohi"], L, H, d, qw, kw, vw)
        else:
            _check_nan(fused.qkv_binarize(prod, c, b, layer["qkv_kinds"], layer["qkv_alphas"],
                                          layer["qkv_thr"], L, H, d, qw, kw, vw), p + "Q, K, V")
        lap(p + "qkv.binarize")
        pw = np.empty((B, H, L, lw), np.uint64)
        probs = layer["probs"]
        fuse = trace is None and self.fused_scores
        scores = None if fuse else popcount_product(qw, kw, d, backend=self.backend)  # [B, H, L, L]
        lap(p + "scores")
        if fuse and probs is None:  # BiBERT: Q K^T and bool(scores) in one pass
            fused.scores_bool_binarize(qw, kw, d, bool(self.config.quant.bool_zero), valid, pw)
            ctx_value = layer["qkv_acts"][2].value
            use_and = True
        elif fuse:  # BiT: Q K^T and the softmax bits in one pass, each head's scores in a scratch block
            sqrt_d = np.array([math.sqrt(d)], self._np)
            args = (qw, kw, d, layer["scores_c"], sqrt_d, mask, probs.code, probs.alpha, pw)
            n_chunks = _chunks(B * H * L * L, B * H)
            n_nan = (fused.scores_softmax_binarize_parallel(n_chunks, *args) if n_chunks > 1
                     else fused.scores_softmax_binarize(*args))
            _check_nan(n_nan, p + "attention probabilities")
            ctx_value = probs.value * layer["qkv_acts"][2].value
            use_and = probs.spec.product == "and"
        elif probs is None:  # BiBERT: A = bool(scores), no softmax
            fused.bool_binarize(scores, bool(self.config.quant.bool_zero), valid, pw)
            ctx_value = layer["qkv_acts"][2].value
            use_and = True
        else:
            sqrt_d = np.array([math.sqrt(d)], self._np)
            args = (scores, layer["scores_c"], sqrt_d, mask, probs.code, probs.alpha, pw)
            n_chunks = _chunks(scores.size, B * H)
            n_nan = fused.softmax_binarize_parallel(n_chunks, *args) if n_chunks > 1 else fused.softmax_binarize(*args)
            _check_nan(n_nan, p + "attention probabilities")
            ctx_value = probs.value * layer["qkv_acts"][2].value
            use_and = probs.spec.product == "and"
        lap(p + "probs")
        ctx = popcount_product(pw, vw, L, use_and=use_and, backend=self.backend)  # [B, H, L, d]
        lap(p + "context")
        if trace is not None:
            for (half, *_), pr in zip(halves, prods):
                for j, name in enumerate(("query", "key", "value")):
                    trace[p + name + half] = torch.from_numpy(pr[j].reshape(B, L, -1))
            trace[p + "scores"] = torch.from_numpy(scores)
            trace[p + "context"] = torch.from_numpy(ctx)
        out = []
        for _, out_lin in self._halves(p + "attention_output"):
            words = np.empty((B * L, words_for(H * d)), np.uint64)
            _check_nan(rows.context_binarize_parallel(self._chunks(B * L), ctx, np.ascontiguousarray(ctx_value),
                                                      out_lin.act.code, out_lin.act.alpha, out_lin.act.thr, words),
                       p + "attention output input")
            out.append(words)
        lap(p + "attn_out.pack")
        return out

    def _ffn(self, layer: dict, h: np.ndarray, bits: np.ndarray, following, trace: dict | None,
             lap=_no_lap) -> tuple[np.ndarray, np.ndarray]:
        """h [B*L, D] (after the attention's LayerNorm) and its bits for FFN1 [1, B*L, DW] -> the FFN block's
        output, LayerNorm included, and its bits for the ``following`` binarizers (the next layer's Q, K, V)."""
        p = layer["prefix"]
        if self.split:
            return self._ffn_split(layer, h, trace, lap), bits[:0]
        inter, out_lin = self.linears[p + "intermediate"], self.linears[p + "output"]
        bits = bits[0]
        lap(p + "ffn1.pack")
        prod = inter.product(bits, self.backend)
        lap(p + "ffn1.gemm")
        words = np.empty((h.shape[0], words_for(inter.n)), np.uint64)
        act = out_lin.act
        if layer.get("ffn1_lohi") is not None:  # the same bits from integer thresholds on P
            rows.threshold_bits_parallel(self._chunks(h.shape[0]), prod, *layer["ffn1_lohi"], words)
        elif self.config.quant.ffn_act == "relu":  # ReLU and the binarizer in one pass: {0, alpha} (BiT) or signs
            _check_nan(fused.affine_binarize(prod, inter.c, inter.bias, True, act.code, act.alpha, act.thr, words),
                       p + "FFN output input")
        else:  # GELU as torch computes it (its float32 underflow to -0.0 decides some signs), then the bits
            y = np.empty(prod.shape, self._np)
            fused.affine(prod, inter.c, inter.bias, y)
            words = self._binarize(F.gelu(torch.from_numpy(y)).numpy(), act, p + "FFN output input")
        lap(p + "ffn1.act")
        prod2 = out_lin.product(words, self.backend)
        lap(p + "ffn2.gemm")
        if trace is not None:
            trace[p + "intermediate"] = torch.from_numpy(prod)
            trace[p + "output"] = torch.from_numpy(prod2)
        out = self._norm(h, layer["ffn_ln"], following, prod2, out_lin)
        lap(p + "ffn2.ln")
        return out

    def _split_linear(self, name: str, x: np.ndarray, trace: dict | None, lap=_no_lap, step: str = "") -> np.ndarray:
        """A split layer on float input x: ``(c_1 P_1 + b_1) + (c_2 P_2 + b_2)``, each half binarizing x itself."""
        y = None
        for key, lin in self._halves(name):
            words = self._binarize(x, lin.act, f"{key} input")
            lap(step + ".pack")
            prod = lin.product(words, self.backend)
            lap(step + ".gemm")
            if trace is not None:
                trace[key] = torch.from_numpy(prod)
            y = lin.affine(prod) if y is None else y + lin.affine(prod)
        return y

    def _ffn_split(self, layer: dict, h: np.ndarray, trace: dict | None, lap=_no_lap) -> np.ndarray:
        """The FFN block of a split model (float activations between the halves' products)."""
        p = layer["prefix"]
        y = self._split_linear(p + "intermediate", h, trace, lap, p + "ffn1")
        t = torch.from_numpy(y)
        z = (torch.relu(t) if self.config.quant.ffn_act == "relu" else F.gelu(t)).numpy()
        lap(p + "ffn1.act")
        y2 = self._split_linear(p + "output", np.ascontiguousarray(z), trace, lap, p + "ffn2")
        out = self._layer_norm(y2 + h, layer["ffn_ln"])
        lap(p + "ffn2.ln")
        return out

    def _chunks(self, n_rows: int) -> int:
        """Parts of the rows the row-wise steps run on at once: numba's thread count, or 1 below
        :data:`ROWS_PARALLEL_MIN` rows."""
        return numba.get_num_threads() if n_rows >= ROWS_PARALLEL_MIN else 1

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, trace: dict | None = None,
                 timings: dict | None = None) -> torch.Tensor:
        """The logits ``(B, num_labels)`` in ``dtype``. ``trace``: a dict that receives every int32 product;
        ``timings``: a dict to which the seconds of every step (:data:`STEPS`) are added."""
        lap = _no_lap if timings is None else _Laps(timings)
        input_ids, attention_mask, token_type_ids = self._check_inputs(input_ids, attention_mask, token_type_ids)
        B, L = input_ids.shape
        D = self.config.hidden_size
        if trace is None and self.plannable:
            return self._run_plan(self._plan(B, L), input_ids, attention_mask, token_type_ids, lap)
        valid = np.ascontiguousarray(attention_mask.numpy() != 0)
        mask = self._additive_mask(valid)
        lap("inputs")
        x = np.empty((B, L, D), self._np)
        ids, types = input_ids.contiguous().numpy(), token_type_ids.contiguous().numpy()
        if self.split:
            fused.embed_split(ids, types, self.word_bits, self.word_scale, self.word_bits2, self.word_scale2,
                              self.position, self.token_type, x)
        else:
            fused.embed(ids, types, self.word_bits, self.word_scale, self.position, self.token_type, x)
        h, hw = self._norm(x.reshape(B * L, D), self.emb_ln, self.layers[0]["qkv_in"])
        lap("embeddings")
        for i, layer in enumerate(self.layers):
            p = layer["prefix"]
            words = self._attention(layer, h, hw, B, L, mask, valid, trace, lap)
            lins = self._halves(p + "attention_output")
            prods = [lin.product(w, self.backend) for w, (_, lin) in zip(words, lins)]
            lap(p + "attn_out.gemm")
            if trace is not None:
                for (key, _), prod in zip(lins, prods):
                    trace[key] = torch.from_numpy(prod)
            if self.split:
                h, hw = self._norm(sum(lin.affine(pr) for (_, lin), pr in zip(lins, prods)) + h,
                                   layer["attention_ln"], self.no_bits)
            else:
                h, hw = self._norm(h, layer["attention_ln"], layer["ffn_in"], prods[0], lins[0][1])
            lap(p + "attn_out.ln")
            following = self.layers[i + 1]["qkv_in"] if i + 1 < len(self.layers) else self.no_bits
            h, hw = self._ffn(layer, h, hw, following, trace, lap)
        pooler = self.linears["pooler"]
        cls = np.ascontiguousarray(h.reshape(B, L, D)[:, 0])
        if self.split:
            y = self._split_linear("pooler", cls, trace)
        else:
            prod = pooler.product(self._binarize(cls, pooler.act, "pooler input"), self.backend)
            if trace is not None:
                trace["pooler"] = torch.from_numpy(prod)
            y = np.empty((B, D), self._np)
            fused.affine(prod, pooler.c, pooler.bias, y)
        return self._classify(y, lap)

    def _additive_mask(self, valid: np.ndarray) -> np.ndarray:
        """The model's additive attention mask [B, L]: 0 on real tokens, MASK_VALUE on padding."""
        return (self._np.type(1.0) - valid.astype(self._np)) * self._np.type(MASK_VALUE)

    def _classify(self, y: np.ndarray, lap) -> torch.Tensor:
        """The pooler's ``c P + b`` [B, D] -> tanh -> the FP classifier's logits [B, num_labels]."""
        pooled = torch.tanh(torch.from_numpy(y))
        lap("pooler")
        w, b = self.classifier
        logits = (pooled[:, None, :] * w[None]).sum(-1) + b  # the FP classifier, without a matrix product
        lap("classifier")
        return logits

    # ------------------------------------------------------------------------------------------------------
    # the plan of one input shape: the same kernels on buffers made once

    def _plan(self, B: int, L: int) -> _Plan:
        """The plan of inputs [B, L] at numba's current thread count and the kernels' backend, made on first use;
        the last :data:`PLANS_KEPT` are kept."""
        key = (B, L, numba.get_num_threads(), self.backend or get_backend())
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= PLANS_KEPT:
                self._plans.pop(next(iter(self._plans)))  # the oldest
            plan = self._plans[key] = self._make_plan(B, L)
        return plan

    def _run_plan(self, plan: _Plan, input_ids, attention_mask, token_type_ids, lap) -> torch.Tensor:
        """The logits of checked inputs: copied into the plan's buffers, then every step of the plan in order."""
        np.copyto(plan.ids, input_ids.numpy())
        np.copyto(plan.types, token_type_ids.numpy())
        np.copyto(plan.valid, attention_mask.numpy() != 0)
        np.copyto(plan.mask, self._additive_mask(plan.valid))
        lap("inputs")
        for func, args, where, key in plan.steps:
            n_nan = func(*args)
            if n_nan:
                _check_nan(n_nan, where)
            lap(key)
        return self._classify(plan.y, lap)

    def _make_plan(self, B: int, L: int) -> _Plan:
        """Every kernel call of a forward pass over inputs [B, L], in order, with the buffers they read and write
        (module docstring): the calls :meth:`__call__`'s step-by-step path makes, with the same arguments."""
        c, fp, u64, i32 = self.config, self._np, np.uint64, np.int32
        D, A, I, H, d = c.hidden_size, c.attention_size, c.intermediate_size, self.num_heads, self.head_size
        R, eps, DW, lw = B * L, c.layer_norm_eps, words_for(c.hidden_size), words_for(L)
        plan = _Plan(np.zeros((B, L), np.int64), np.zeros((B, L), np.int64), np.ones((B, L), bool),
                     np.zeros((B, L), fp), [], np.empty((B, D), fp))
        steps, valid, mask = plan.steps, plan.valid, plan.mask

        def add(key, func, *args, where=None):
            steps.append((func, args, where, key))

        def product(key, a3, b, k, out, use_and=False):
            steps.extend((f, args, None, key) for f, args in
                         product_steps(a3, b, k, out, use_and=use_and, backend=self.backend))

        x, h, h2 = np.empty((R, D), fp), np.empty((R, D), fp), np.empty((R, D), fp)  # h: a layer's input and output
        qkv_bits, ffn_bits = np.empty((3, R, DW), u64), np.empty((1, R, DW), u64)
        qkv = np.empty((3, R, A), i32)
        qw, kw = np.empty((B, H, L, words_for(d)), u64), np.empty((B, H, L, words_for(d)), u64)
        vw, pw, ctx = np.empty((B, H, d, lw), u64), np.empty((B, H, L, lw), u64), np.empty((B, H, L, d), i32)
        o_bits, o = np.empty((1, R, words_for(A)), u64), np.empty((1, R, D), i32)
        f1, f1_bits, f2 = np.empty((1, R, I), i32), np.empty((1, R, words_for(I)), u64), np.empty((1, R, D), i32)
        sqrt_d, ln_out = np.array([math.sqrt(d)], fp), "a LayerNorm's output"
        add("embeddings", fused.embed, plan.ids, plan.types, self.word_bits, self.word_scale, self.position,
            self.token_type, x.reshape(B, L, D))
        g, beta = self.emb_ln
        add("embeddings", rows.residual_layer_norm_binarize, self._chunks(R), None, g, g, x, g, beta, eps,
            *self.layers[0]["qkv_in"], h, qkv_bits, where=ln_out)
        for i, layer in enumerate(self.layers):
            p, probs = layer["prefix"], layer["probs"]
            add(p + "qkv.pack", _nothing)  # the LayerNorm before made the bits
            product(p + "qkv.gemm", qkv_bits, layer["qkv_halves"][0][2], D, qkv)
            add(p + "qkv.binarize", rows.qkv_threshold_bits_parallel, self._chunks(R), qkv, *layer["qkv_lohi"],
                L, H, d, qw, kw, vw)
            add(p + "scores", _nothing)  # inside the next kernel
            if probs is None:  # BiBERT
                add(p + "probs", fused.scores_bool_binarize, qw, kw, d, bool(c.quant.bool_zero), valid, pw)
                ctx_value, use_and = layer["qkv_acts"][2].value, True
            else:  # BiT
                args = (qw, kw, d, layer["scores_c"], sqrt_d, mask, probs.code, probs.alpha, pw)
                n_chunks = _chunks(B * H * L * L, B * H)
                if n_chunks > 1:
                    add(p + "probs", fused.scores_softmax_binarize_parallel, n_chunks, *args,
                        where=p + "attention probabilities")
                else:
                    add(p + "probs", fused.scores_softmax_binarize, *args, where=p + "attention probabilities")
                ctx_value, use_and = probs.value * layer["qkv_acts"][2].value, probs.spec.product == "and"
            product(p + "context", pw.reshape(B * H, L, lw), vw.reshape(B * H, d, lw), L, ctx.reshape(B * H, L, d),
                    use_and)
            lin = self.linears[p + "attention_output"]
            add(p + "attn_out.pack", rows.context_binarize_parallel, self._chunks(R), ctx,
                np.ascontiguousarray(ctx_value), lin.act.code, lin.act.alpha, lin.act.thr, o_bits[0],
                where=p + "attention output input")
            product(p + "attn_out.gemm", o_bits, lin.weight, A, o, lin.use_and)
            add(p + "attn_out.ln", rows.residual_layer_norm_binarize, self._chunks(R), o[0], lin.c, lin.bias, h,
                *layer["attention_ln"], eps, *layer["ffn_in"], h2, ffn_bits, where=ln_out)
            inter, lin = self.linears[p + "intermediate"], self.linears[p + "output"]
            add(p + "ffn1.pack", _nothing)  # the LayerNorm before made the bits
            product(p + "ffn1.gemm", ffn_bits, inter.weight, D, f1, inter.use_and)
            add(p + "ffn1.act", rows.threshold_bits_parallel, self._chunks(R), f1[0], *layer["ffn1_lohi"], f1_bits[0])
            product(p + "ffn2.gemm", f1_bits, lin.weight, I, f2, lin.use_and)
            last = i + 1 == len(self.layers)
            add(p + "ffn2.ln", rows.residual_layer_norm_binarize, self._chunks(R), f2[0], lin.c, lin.bias, h2,
                *layer["ffn_ln"], eps, *(self.no_bits if last else self.layers[i + 1]["qkv_in"]), h,
                qkv_bits[:0] if last else qkv_bits, where=ln_out)
        pooler = self.linears["pooler"]
        cls, cls_bits, prod = np.empty((B, D), fp), np.empty((1, B, DW), u64), np.empty((1, B, D), i32)
        add("pooler", np.copyto, cls, h.reshape(B, L, D)[:, 0])
        add("pooler", rows.binarize_rows_parallel, self._chunks(B), cls, pooler.act.code, pooler.act.alpha,
            pooler.act.thr, cls_bits[0], where="pooler input")
        product("pooler", cls_bits, pooler.weight, D, prod, pooler.use_and)
        add("pooler", fused.affine, prod[0], pooler.c, pooler.bias, plan.y)
        return plan


def gelu_thresholds(k: int, step: int, c: np.ndarray, b: np.ndarray, kind: int, alpha: np.ndarray,
                    thr: np.ndarray):
    """(lo, hi [N], chans, w0, wm [C]) for :func:`rows.threshold_bits_parallel`: the bits of ``GELU(c P + b) + thr``
    (``kind``, ``alpha``) for every product ``P = -k + step i`` in [-k, k], or None (a value not finite, or bits
    that the thresholds cannot express); the C channels with a window listed in ``chans``. c, b, thr [N] in the
    compute dtype.

    GELU falls, then rises, so its bits are mostly ``P <= lo or P >= hi``; but in float32, where torch's GELU
    rounds ``1 + erf(y / sqrt 2)`` to 0 (y near -5.5), it returns -0.0, whose sign bit is +1, at some y and a tiny
    negative value at their neighbours: a few ones between lo and hi, which the window holds. So the table is what
    the float path computes: :func:`fused.affine` for y, torch's own GELU, :func:`fused.binarize_rows` for the
    bits, one row per P. torch's GELU has a vectorized path and a scalar one (for a tail shorter than a vector, or
    strided input) that disagree in the last bits and, in float32, on the sign of some values near y = -5.5; the
    table takes the vectorized path everywhere (contiguous pieces of 16384 values, below torch's parallel grain,
    so one piece is one loop), which is what torch runs on a contiguous layer."""
    N = c.shape[0]
    grid = np.ascontiguousarray(np.repeat(np.arange(-k, k + 1, step, dtype=np.int32)[:, None], N, axis=1))
    y = np.empty(grid.shape, c.dtype)
    fused.affine(grid, c, b, y)
    flat = torch.from_numpy(y.reshape(-1))
    g = torch.cat([F.gelu(piece) for piece in flat.split(16384)]).numpy().reshape(y.shape)
    words = np.empty((grid.shape[0], words_for(N)), np.uint64)
    if fused.binarize_rows(g, kind, alpha, thr, words) or not np.isfinite(g).all():
        return None
    bits = unpack_bits01(words, N).numpy().astype(np.uint8)
    lo, hi = np.empty(N, np.int32), np.empty(N, np.int32)
    w0, wm = np.empty(N, np.int64), np.empty(N, np.uint64)
    if not fused.table_thresholds(bits, k, step, lo, hi, w0, wm):
        return None
    chans = np.flatnonzero(wm).astype(np.int64)
    return lo, hi, chans, w0[chans], wm[chans]


def load_engine(folder: str | os.PathLike, dtype: torch.dtype = torch.float32, backend: str | None = None) -> PackedBert:
    """``PackedBert(load_packed(folder), dtype, backend)``."""
    return PackedBert(load_packed(folder), dtype=dtype, backend=backend)
