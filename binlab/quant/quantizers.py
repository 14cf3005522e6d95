"""Quantizers with straight-through gradients.

Every quantizer here comes in two layers, the way larq writes them:

* a **function** with a custom gradient (a ``torch.autograd.Function`` underneath), e.g.
  ``ste_sign(x, clip_value=1.0)``; learned quantities (a clip, a step size, an alpha) are passed in as tensors;
* a thin **module** with the same arguments, e.g. ``SteSign(clip_value=1.0)``, which owns the learned
  quantities as parameters (and, for data-initialised ones, an ``initialized`` buffer);
* a **registry**: ``get("ste_sign")`` builds the module from its name, :func:`available` lists the names.

Each docstring states the forward pass and the straight-through backward pass as cases formulas, the
arguments, the paper, and what the authors' code does where code and paper differ (binlab follows the code;
the paper's variant is an option where that is cheap). The sections of ``methods.md`` are cited as §x.y.

=================  ======================================  ==============================================
name               forward                                 used by
=================  ======================================  ==============================================
``ste_sign``       sign(x) in {-1, +1}                     BiBERT activations (§3.2), XNOR-Net, larq
``ste_bool``       1{x > 0} in {0, 1}                      BiBERT's attention (§3.3)
``bwn``            alpha * sign(W [- mu])                  BinaryBERT (§2.2), BiT (§4.1), BiBERT (§3.1)
``twn``            alpha * {-1, 0, +1}                     TernaryBERT / BinaryBERT's ternary stage (§2.2)
``uniform_*``      k-bit uniform, learnable PACT clip      BinaryBERT 8-bit activations (§2.3)
``lsq_*``          k-bit uniform, learned step (LSQ)       BinaryBERT 4-bit activations (§2.3)
``elastic_*``      alpha * sign(x + b), alpha * {0, 1}     BiT activations (§4.2)
=================  ======================================  ==============================================

**The zero convention.** binlab's sign never returns 0: ``sign(0) = +1``, i.e. the bit is 1 iff x >= 0, which is
what the bit-packing kernels store, so a "binary" tensor really has two values. ``torch.sign`` (and so the
BiBERT and BiT code) maps 0 to 0, which makes a third value appear on exact zeros (frequent for ReLU outputs
and for BiBERT's attention scores, which are multiples of 0.25).

**Bad input.** Every quantizer rejects non-tensors and non-floating dtypes with a ``TypeError`` and NaN or
infinite entries with a ``ValueError``, both naming the quantizer. Statistics never divide by zero: an
all-zero tensor quantizes to zeros (sign: to +1), never to NaN.
"""

from __future__ import annotations

import contextlib

import functools
import math
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "ste_sign", "SteSign", "ste_bool", "SteBool", "bwn", "BWN", "twn", "TWN",
    "uniform", "UniformQuantizer", "lsq", "LSQ", "elastic", "Elastic",
    "optimal_alpha", "register", "get", "available", "registered", "knobs", "min_bits", "is_quantizer", "ALPHA_MIN",
    "batch_share",
]

#: Smallest step / alpha the learned-scale quantizers use (BiT's code clamps alpha to 1e-5).
ALPHA_MIN = 1e-5


# ----------------------------------------------------------------------------------------------------------
# input checks shared by every quantizer

_CHECK_FINITE = True


@contextlib.contextmanager
def finite_checks(enabled: bool):
    """Turn the per-call NaN/inf check of every quantizer on or off inside a ``with`` block.

    The check costs one pass over each input (about a quarter of a quantized forward on a CPU). Long
    evaluations whose inputs are known to be finite (loss landscapes, Hessian power iterations) may
    switch it off; training keeps it on, so that a diverging run fails at the layer that diverged.
    """
    global _CHECK_FINITE
    previous, _CHECK_FINITE = _CHECK_FINITE, bool(enabled)
    try:
        yield
    finally:
        _CHECK_FINITE = previous


def _check_input(x, name: str, *, nonempty: bool = False) -> None:
    """TypeError for a non-tensor or a non-floating dtype, ValueError for NaN/inf (or empty where statistics
    are taken). ``name`` is the quantizer's name, so the message says which one complained."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor (float32/float64/float16/bfloat16), "
                        f"got dtype {x.dtype}; convert it first, e.g. x.float()")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name}: got an empty tensor of shape {tuple(x.shape)}; its statistics are undefined")
    if not _CHECK_FINITE:
        return
    if bool(torch.isfinite(x.sum())):  # one cheap reduction: any NaN or inf makes the sum NaN or inf
        return
    finite = torch.isfinite(x)  # the sum overflowed, or something is not finite: look element by element
    if not bool(finite.all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise ValueError(f"{name}: input contains {n_nan} NaN and {n_inf} infinite value(s); "
                         f"quantizing them is undefined (check the layer before this one)")


def _check_bits(num_bits, name: str, low: int) -> int:
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not low <= num_bits <= 16:
        raise ValueError(f"{name}: num_bits must be an integer in [{low}, 16], got {num_bits!r}")
    return num_bits


def _check_scale(t: Tensor, name: str, what: str) -> None:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TypeError(f"{name}: {what} must be a floating-point tensor, got {type(t).__name__}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: {what} is NaN or infinite ({t.detach().cpu().tolist()}); training diverged?")


def _pm1(x: Tensor) -> Tensor:
    """sign with binlab's convention: +1 where x >= 0, -1 where x < 0 (never 0)."""
    # sign(x) is -1, 0 or +1; adding 0.5 moves the zeros to +0.5, so the outer sign is +1 there. Float arithmetic
    # only: torch.where and bool masks are 10-20x slower than one float op per element on CPU (torch 2.13).
    return torch.sign(torch.sign(x) + 0.5)


@functools.lru_cache(maxsize=256)  # called by every STE backward with the same few interval ends
def _next_float(v: float, toward: float, dtype: torch.dtype) -> float:
    """The neighbour of ``v`` in ``dtype`` (float32 or float64) in the direction of ``toward``."""
    t = torch.tensor(v, dtype=dtype)
    return float(torch.nextafter(t, torch.tensor(toward, dtype=dtype)))


def _keep_inside(t: Tensor, x: Tensor, lo: float, hi: float, closed: bool = True) -> Tensor:
    """``t`` where lo <= x <= hi (``closed``) or lo < x < hi (open), 0 elsewhere: the masks of every STE.

    Written as ``t * (mask).to(dtype)`` this costs ~7 passes of bool tensors, which are 10-20x slower than
    float arithmetic on CPU (torch 2.13). ATen's ``hardtanh_backward(t, x, lo, hi)`` computes exactly "t where
    lo < x < hi, else 0" in one float pass; a closed interval moves its ends one float outward (for float
    values x, x >= lo  <=>  x > nextafter(lo, -inf)). Half precision takes the plain mask.
    """
    lo, hi = float(lo), float(hi)
    if x.dtype in (torch.float32, torch.float64) and t.dtype == x.dtype and t.shape == x.shape:
        if closed:
            lo, hi = _next_float(lo, -math.inf, x.dtype), _next_float(hi, math.inf, x.dtype)
        return torch.ops.aten.hardtanh_backward(t, x, lo, hi)
    mask = ((x >= lo) & (x <= hi)) if closed else ((x > lo) & (x < hi))
    return t * mask.to(t.dtype)


# ----------------------------------------------------------------------------------------------------------
# the registry: each quantizer registers its names where it is defined (larq's register_alias)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_KNOBS: dict[str, tuple[str, ...]] = {}
_MIN_BITS: dict[str, int] = {}


def register(name: str, knobs: tuple[str, ...] = (), min_bits: int | None = None, **defaults):
    """Class decorator: :func:`get` ``(name, **kwargs)`` builds ``cls(**defaults, **kwargs)``.

    ``knobs``: what a reader can turn on it in the chapter-2 explorer (``bits``: k; ``clip``: the PACT clip or the
    STE window; ``scale``: LSQ's step or BiT's alpha; ``zero_to_one`` / ``strict_window``: ste_bool's switches).
    ``min_bits``: the smallest k a multi-bit quantizer accepts. One class may register several names; stacked
    decorators register bottom-up, and :func:`registered` keeps that order."""
    def decorate(cls):
        if name in _REGISTRY:
            raise ValueError(f"quantizer name {name!r} is registered twice")
        _REGISTRY[name] = functools.partial(cls, **defaults) if defaults else cls
        _KNOBS[name] = tuple(knobs)
        if min_bits is not None:
            _MIN_BITS[name] = min_bits
        return cls
    return decorate


# ----------------------------------------------------------------------------------------------------------
# sign


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, clip_value):
        ctx.save_for_backward(x)
        ctx.clip_value = clip_value
        return _pm1(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.clip_value is None:
            return g, None
        return _keep_inside(g, x, -ctx.clip_value, ctx.clip_value), None  # g * 1{|x| <= clip}


def ste_sign(x: Tensor, clip_value: float | None = 1.0) -> Tensor:
    r"""Sign with a straight-through gradient.

    Forward::

        q(x) = +1   if x >= 0
               -1   if x <  0

    Backward (straight-through estimator)::

        dq/dx = 1   if |x| <= clip_value          (clipped STE, the default with clip_value = 1)
                0   otherwise
        dq/dx = 1   everywhere                    (identity STE, clip_value = None)

    Args:
        x: floating-point tensor, any shape.
        clip_value: half-width of the window where the gradient passes; ``None`` passes it everywhere.

    Papers: Courbariaux et al. 2016 (BinaryNet, the clipped STE); BiBERT (Qin et al. 2022) binarizes every
    activation this way with no scale (§3.2). BiBERT's code computes the gradient of ``clamp(x, -1, 1)``,
    i.e. ``1{|x| <= 1}`` as here, for the inputs of its linear layers, and ``1{-1 < x < 1}`` for Q, K, V
    (``BinaryQuantizer``); the two differ only on |x| = 1 exactly. Its forward is ``torch.sign`` with
    sign(0) = 0; binlab's sign(0) = +1 (see the module docstring).
    """
    _check_input(x, "ste_sign")
    if clip_value is not None and not (isinstance(clip_value, (int, float)) and clip_value > 0):
        raise ValueError(f"ste_sign: clip_value must be a positive number or None, got {clip_value!r}")
    return _SignSTE.apply(x, None if clip_value is None else float(clip_value))


@register("ste_sign_identity", clip_value=None)
@register("ste_sign", knobs=("clip",))
class SteSign(nn.Module):
    """Module form of :func:`ste_sign` (same arguments)."""

    def __init__(self, clip_value: float | None = 1.0):
        super().__init__()
        if clip_value is not None and not (isinstance(clip_value, (int, float)) and clip_value > 0):
            raise ValueError(f"ste_sign: clip_value must be a positive number or None, got {clip_value!r}")
        self.clip_value = clip_value

    def forward(self, x: Tensor) -> Tensor:
        return ste_sign(x, self.clip_value)

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


# ----------------------------------------------------------------------------------------------------------
# bool (BiBERT's attention)


class _BoolSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, zero_to_one, strict_window):
        ctx.save_for_backward(x)
        ctx.strict_window = strict_window
        return ((x >= 0) if zero_to_one else (x > 0)).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _keep_inside(g, x, -1.0, 1.0, closed=not ctx.strict_window), None, None  # g * 1{|x| <= 1}


def ste_bool(x: Tensor, zero_to_one: bool = False, strict_window: bool = False) -> Tensor:
    r"""BiBERT's ``bool``: binarize attention scores to {0, 1} (no softmax).

    Forward::

        q(x) = 1   if x > 0        (BiBERT's code; x >= 0 with zero_to_one=True, the paper's Eq.)
               0   otherwise

    Backward (straight-through)::

        dq/dx = 1   if |x| <= 1    (the paper; strict_window=True gives the code's -1 < x < 1)
                0   otherwise

    Args:
        x: the attention scores ``sign(Q) sign(K)^T / sqrt(d) + mask``, any shape.
        zero_to_one: map x = 0 to 1 (the paper's x >= 0). The code maps 0 to 0 (``torch.sign`` then -1 -> 0).
        strict_window: the code's open window ``1{-1 < x < 1}`` (``ZMeanBinaryQuantizer`` zeroes the gradient
            where x >= 1 or x <= -1). The scores are multiples of 0.25, so |x| = 1 happens and the two differ.

    Paper: Qin et al., BiBERT, ICLR 2022, Eqs. for bool and its gradient (§3.3). Unlike :func:`ste_sign`, the
    zero convention here is BiBERT's, because {0, 1} is what the attention needs (bool keeps the larger half
    of the scores): 0 -> 0 by default.
    """
    _check_input(x, "ste_bool")
    return _BoolSTE.apply(x, bool(zero_to_one), bool(strict_window))


@register("ste_bool", knobs=("zero_to_one", "strict_window"))
class SteBool(nn.Module):
    """Module form of :func:`ste_bool` (same arguments)."""

    def __init__(self, zero_to_one: bool = False, strict_window: bool = False):
        super().__init__()
        self.zero_to_one = bool(zero_to_one)
        self.strict_window = bool(strict_window)

    def forward(self, x: Tensor) -> Tensor:
        return ste_bool(x, self.zero_to_one, self.strict_window)

    def extra_repr(self) -> str:
        return f"zero_to_one={self.zero_to_one}, strict_window={self.strict_window}"


# ----------------------------------------------------------------------------------------------------------
# weights: BWN (binary) and TWN (ternary)

_CENTERINGS = (None, "bit", "bibert")


def _rows(w: Tensor) -> Tensor:
    """The weight as (rows, everything else): row i is output unit i of an nn.Linear / one embedding vector."""
    return w.reshape(w.shape[0], -1)


class _BwnSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, per_row, centering, mean):
        w2 = _rows(w)
        alpha = w2.abs().mean(dim=1, keepdim=True) if per_row else w2.abs().mean()  # of the UN-centred W
        if centering is None:
            mu = torch.zeros((), dtype=w.dtype, device=w.device)
        elif mean is not None:  # BiT's global mean, computed by the caller over the whole table
            mu = mean.to(w.dtype)
        elif centering == "bibert" and per_row:
            mu = w2.mean(dim=1, keepdim=True)
        else:  # "bit" (always a global mean, also with per-row alpha), or "bibert" per tensor
            mu = w2.mean()
        wc = w2 - mu
        ctx.centering, ctx.per_row = centering, per_row
        if centering == "bibert":
            ctx.save_for_backward(wc)
        return (alpha * _pm1(wc)).reshape(w.shape)

    @staticmethod
    def backward(ctx, g):
        if ctx.centering != "bibert":
            return g, None, None, None  # identity STE (BinaryBERT, BiT)
        (wc,) = ctx.saved_tensors
        gm = _keep_inside(_rows(g), wc, -1.0, 1.0)  # M * g, M = 1{|W - mu| <= 1}: the gradient of clamp
        gm = gm - (gm.mean(dim=1, keepdim=True) if ctx.per_row else gm.mean())  # C(.): the centring's Jacobian
        return gm.reshape(g.shape), None, None, None


def bwn(w: Tensor, per_row: bool = False, centering: str | None = None, *, mean: Tensor | None = None) -> Tensor:
    r"""Binary weights: a scale times a sign (BWN, XNOR-Net).

    Forward, with alpha = mean |W| (of the UN-centred W, over the tensor or over each output row) and mu the
    centring (0 unless ``centering`` is set)::

        q(W) = +alpha   if W - mu >= 0
               -alpha   if W - mu <  0

    Backward::

        dL/dW = dL/dq                                   centering None or "bit": identity STE, alpha constant
        dL/dW = C(M * dL/dq),  M = 1{|W - mu| <= 1}     centering "bibert": the gradient of clamp(W - mu, -1, 1)
                                                        C(G) = G - rowmean(G)  (the centring's Jacobian)

    Args:
        w: the latent full-precision weight, ``(out, in)`` for nn.Linear, ``(vocab, dim)`` for an embedding
            (any shape per tensor; per row uses the first dimension).
        per_row: one alpha per output row (row i = output unit i, ``mean_j |W_ij|``) instead of one per tensor.
        centering: None (BinaryBERT, §2.2), ``"bit"`` (BiT, §4.1: subtract the GLOBAL mean of W, also when
            alpha is per row, as BiT does for the word embedding), or ``"bibert"`` (BiBERT, §3.1: subtract the
            mean of each row when ``per_row`` -- BiBERT's code is always per row -- and backpropagate through
            ``clamp(W - mu, -1, 1)``; with ``per_row=False`` the mean and the centring are per tensor).
        mean: only with ``centering="bit"`` and ``per_row``: the global mean to subtract, when ``w`` holds only
            some rows of a table (:class:`~binlab.quant.layers.QuantEmbedding` quantizes just the rows a batch
            looks up, which gives exactly the rows of the whole quantized table).

    Papers: Rastegari et al. 2016 (XNOR-Net/BWN, alpha* = ||W||_1 / n); BinaryBERT (Bai et al. 2021) per tensor
    for linear layers, per row for the word embedding; BiT (Liu et al. 2022) eq. 5.38; BiBERT (Qin et al.
    2022). Alpha never receives a gradient (analytic, recomputed every forward). In all three codes
    ``torch.sign`` maps W - mu = 0 to 0; binlab maps it to +alpha. An all-zero W gives alpha = 0, so zeros.
    """
    _check_input(w, "bwn", nonempty=True)
    if centering not in _CENTERINGS:
        raise ValueError(f"bwn: centering must be one of {_CENTERINGS}, got {centering!r}")
    if per_row and w.dim() < 2:
        raise ValueError(f"bwn: per_row needs a weight with at least 2 dimensions, got shape {tuple(w.shape)}")
    if mean is not None:
        if centering != "bit" or not per_row:
            raise ValueError("bwn: mean= is BiT's global mean for a subset of rows; it needs centering='bit' "
                             f"and per_row=True, got centering={centering!r}, per_row={per_row}")
        if not isinstance(mean, Tensor) or mean.numel() != 1:
            raise ValueError(f"bwn: mean must be a one-element tensor, got {mean!r}")
        _check_scale(mean, "bwn", "mean")
        mean = mean.detach().reshape(())
    return _BwnSTE.apply(w, bool(per_row), centering, mean)


@register("bwn_bibert", per_row=True, centering="bibert")
@register("bwn_bit", centering="bit")
@register("bwn")
class BWN(nn.Module):
    """Module form of :func:`bwn` (same arguments). Stateless: alpha is recomputed on every forward."""

    def __init__(self, per_row: bool = False, centering: str | None = None):
        super().__init__()
        if centering not in _CENTERINGS:
            raise ValueError(f"bwn: centering must be one of {_CENTERINGS}, got {centering!r}")
        self.per_row, self.centering = bool(per_row), centering

    def forward(self, w: Tensor) -> Tensor:
        return bwn(w, self.per_row, self.centering)

    def extra_repr(self) -> str:
        return f"per_row={self.per_row}, centering={self.centering!r}"


class _TwnSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, per_row):
        w2 = _rows(w)
        a = w2.abs()
        if per_row:
            delta = 0.7 * a.mean(dim=1, keepdim=True)
            mask = (a > delta).to(w.dtype)
            alpha = (a * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp_min(1)
        else:
            delta = 0.7 * a.mean()
            mask = (a > delta).to(w.dtype)
            alpha = (a * mask).sum() / mask.sum().clamp_min(1)  # an all-zero W has no entry above delta = 0
        out = alpha * ((w2 > delta).to(w.dtype) - (w2 < -delta).to(w.dtype))
        return out.reshape(w.shape)

    @staticmethod
    def backward(ctx, g):
        return g, None  # identity STE


def twn(w: Tensor, per_row: bool = False) -> Tensor:
    r"""Ternary weights (TWN): alpha times {-1, 0, +1}.

    Forward, with Delta = 0.7 * mean |W| and alpha = mean of |W| over the entries with |W| > Delta (both over the
    tensor, or over each output row)::

        q(W) = +alpha   if W >  Delta
                0       if |W| <= Delta
               -alpha   if W < -Delta

    Backward (identity STE, no clipping)::

        dL/dW = dL/dq

    Args:
        w: latent full-precision weight; per row uses the first dimension.
        per_row: Delta and alpha per output row (BinaryBERT's word embedding, ``--embed_layerwise 0``) instead of
            per tensor (its linear layers).

    Paper: Li & Liu 2016 (Ternary Weight Networks, the 0.7 rule); TernaryBERT / BinaryBERT ``TwnQuantizer``
    (§2.2). The code divides by the mask count, which is 0 for an all-zero tensor or row (NaN); binlab divides
    by max(count, 1), so an all-zero W ternarizes to zeros.
    """
    _check_input(w, "twn", nonempty=True)
    if per_row and w.dim() < 2:
        raise ValueError(f"twn: per_row needs a weight with at least 2 dimensions, got shape {tuple(w.shape)}")
    return _TwnSTE.apply(w, bool(per_row))


@register("twn")
class TWN(nn.Module):
    """Module form of :func:`twn` (same arguments). Stateless."""

    def __init__(self, per_row: bool = False):
        super().__init__()
        self.per_row = bool(per_row)

    def forward(self, w: Tensor) -> Tensor:
        return twn(w, self.per_row)

    def extra_repr(self) -> str:
        return f"per_row={self.per_row}"


# ----------------------------------------------------------------------------------------------------------
# k-bit uniform activations with a learnable (PACT) clip: BinaryBERT's SymQuantizer / AsymQuantizer


class _UniformSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi, num_bits, symmetric):
        ctx.save_for_backward(x, lo, hi)
        xc = torch.minimum(torch.maximum(x, lo), hi)  # clip to [c-, c+]
        if symmetric:
            n = 2 ** (num_bits - 1) - 1
            m = xc.abs().max()  # dynamic, per tensor
            m = torch.where(m > 0, m, torch.ones_like(m))  # all-zero input: any m gives zeros
            return torch.round(xc / m * n) * (m / n)  # = round(x * s) / s with s = n / max|x|
        n = 2 ** num_bits - 1
        beta = xc.min()
        rng = xc.max() - beta
        rng = torch.where(rng > 0, rng, torch.ones_like(rng))  # constant input: output = the constant
        return torch.round((xc - beta) / rng * n) / n * rng + beta

    @staticmethod
    def backward(ctx, g):
        x, lo, hi = ctx.saved_tensors
        c_lo, c_hi = float(lo.detach()), float(hi.detach())
        gx = _keep_inside(g, x, c_lo, c_hi, closed=False)  # straight through inside the clip, 0 outside
        glo = ghi = None
        if ctx.needs_input_grad[1]:  # sum of g where x <= c-
            glo = _keep_inside(g, x, -math.inf, c_lo).sum().to(lo.dtype).reshape(lo.shape)
        if ctx.needs_input_grad[2]:  # sum of g where x >= c+
            ghi = _keep_inside(g, x, c_hi, math.inf).sum().to(hi.dtype).reshape(hi.shape)
        return gx, glo, ghi, None, None


def _clip_pair(clip_val, name: str, like: Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(clip_val, (int, float)) and not isinstance(clip_val, bool):
        c = like.new_tensor([-float(clip_val), float(clip_val)])
    elif isinstance(clip_val, Tensor) and clip_val.numel() == 2:
        _check_scale(clip_val, name, "clip_val")
        c = clip_val.reshape(2).to(like.dtype)
    else:
        raise ValueError(f"{name}: clip_val must be a positive number c (clip to [-c, c]) or a tensor "
                         f"[c_minus, c_plus] of 2 values, got {clip_val!r}")
    if not bool(c[0] < c[1]):
        raise ValueError(f"{name}: the clip range must satisfy c_minus < c_plus, got {c.detach().cpu().tolist()}")
    return c[0], c[1]


def uniform(x: Tensor, clip_val: Tensor | float = 2.5, num_bits: int = 8, symmetric: bool = True) -> Tensor:
    r"""k-bit uniform quantization with a (learnable) clip, dynamic per-tensor scale.

    Forward, with x_c = clip(x, c-, c+)::
        symmetric:   s = (2^(k-1) - 1) / max|x_c|,      q(x) = round(x_c * s) / s
        asymmetric:  b = min x_c, a = max x_c - b,      q(x) = round((x_c - b) / a * (2^k - 1)) / (2^k - 1) * a + b

    (the scale s, a and the offset b are recomputed from each tensor and get no gradient). Backward, the
    straight-through estimator with PACT's gradients for the clip values::
        dq/dx   = 1   if c- < x < c+          dL/dc+ = sum of dL/dq over {x >= c+}
                  0   otherwise               dL/dc- = sum of dL/dq over {x <= c-}

    Args:
        x: activation tensor.
        clip_val: a tensor ``[c-, c+]`` (a parameter, to learn it) or a number c meaning ``[-c, c]`` (fixed).
        num_bits: k >= 2. Symmetric gives 2^k - 1 levels (0 is exact), asymmetric 2^k levels.
        symmetric: ``SymQuantizer`` (inputs of the linear layers, Q, K, V) or ``AsymQuantizer`` (the input of
            the FFN output layer and the softmax probabilities), as BinaryBERT assigns them (§2.3).

    Paper: BinaryBERT (Bai et al. 2021) / TernaryBERT, 8-bit activations, clip initialised to +-2.5 and trained
    with its own learning rate; the clip gradient follows PACT (Choi et al. 2018). The code guards the
    asymmetric range with ``a + 1e-8``; binlab replaces a zero range (constant input) by 1, which returns the
    constant, and a zero max by 1 in the symmetric case (all-zero input gives zeros).
    """
    name = "uniform_sym" if symmetric else "uniform_asym"
    _check_input(x, name, nonempty=True)
    _check_bits(num_bits, name, 2)
    lo, hi = _clip_pair(clip_val, name, x)
    return _UniformSTE.apply(x, lo, hi, num_bits, bool(symmetric))


@register("uniform_asym", knobs=("bits", "clip"), min_bits=2, symmetric=False)
@register("uniform_sym", knobs=("bits", "clip"), min_bits=2, symmetric=True)
class UniformQuantizer(nn.Module):
    """Module form of :func:`uniform`: owns ``clip_val = [c-, c+]`` (a parameter, or a buffer if not learnable).

    Args: ``num_bits``, ``symmetric`` as in :func:`uniform`; ``clip_init`` c gives ``clip_val = [-c, c]``
    (BinaryBERT's ``--clip_init_val 2.5``); ``learnable`` makes it an ``nn.Parameter``.
    """

    def __init__(self, num_bits: int = 8, symmetric: bool = True, clip_init: float = 2.5, learnable: bool = True):
        super().__init__()
        name = "uniform_sym" if symmetric else "uniform_asym"
        self.num_bits = _check_bits(num_bits, name, 2)
        self.symmetric = bool(symmetric)
        if not (isinstance(clip_init, (int, float)) and clip_init > 0 and math.isfinite(clip_init)):
            raise ValueError(f"{name}: clip_init must be a positive number, got {clip_init!r}")
        clip = torch.tensor([-float(clip_init), float(clip_init)])
        if learnable:
            self.clip_val = nn.Parameter(clip)
        else:
            self.register_buffer("clip_val", clip)

    def forward(self, x: Tensor) -> Tensor:
        return uniform(x, self.clip_val, self.num_bits, self.symmetric)

    def extra_repr(self) -> str:
        return f"num_bits={self.num_bits}, symmetric={self.symmetric}"


# ----------------------------------------------------------------------------------------------------------
# the share of the global batch this process holds (data-parallel training)

_BATCH_SHARE = 1.0


@contextlib.contextmanager
def batch_share(share: float):
    """Inside the block, this process holds ``share`` of the global batch (data-parallel training,
    :mod:`binlab.train.distributed`): the learned-step quantizers (LSQ, elastic) count N in their gradient scale
    1 / sqrt(N * Qp) as ``x.numel() / share``, the N of the whole global batch.

    Without it each of W processes would scale its alpha / step gradient by sqrt(W) more than one process does on
    the full batch (the gradient averaging of the processes cancels the 1/W of the mean, not the 1/sqrt). The scale
    is fixed in the forward pass, so the block needs to hold only the forward. ``share == 1`` (the default) changes
    nothing, bit for bit.
    """
    global _BATCH_SHARE
    share = float(share)
    if not 0.0 < share <= 1.0:
        raise ValueError(f"batch_share: the share of the global batch must be in (0, 1], got {share}")
    previous, _BATCH_SHARE = _BATCH_SHARE, share
    try:
        yield
    finally:
        _BATCH_SHARE = previous


# ----------------------------------------------------------------------------------------------------------
# learned step size: LSQ (BinaryBERT) and BiT's elastic binarization share one autograd function


class _LearnedStepSTE(torch.autograd.Function):
    """round(x'/s).clamp(Qn, Qp) * s (+ min), x' = x - min or x; with ``binary_sign`` the forward is s * sign(x)."""

    @staticmethod
    def forward(ctx, x, step, qn, qp, subtract_min, binary_sign):
        s = step.to(x.dtype).clamp_min(ALPHA_MIN)
        if subtract_min:
            x_min = x.min().detach()  # the code's ``.item()``: no gradient through the minimum
            x_ = x - x_min
        else:
            x_ = x
        ctx.save_for_backward(x_, s)
        ctx.qn, ctx.qp, ctx.binary_sign = qn, qp, binary_sign
        ctx.grad_scale = 1.0 / math.sqrt(x.numel() / _BATCH_SHARE * qp)  # global N: batch_share()
        ctx.step_dtype = step.dtype
        if binary_sign:
            out = _pm1(x_) * s
        else:
            out = torch.round(x_ / s).clamp(qn, qp) * s
        return out + x_min if subtract_min else out

    @staticmethod
    def backward(ctx, g):
        x_, s = ctx.saved_tensors
        qn, qp = ctx.qn, ctx.qp
        v = x_ / s
        gx = _keep_inside(g, v, qn, qp)  # g * 1{Qn <= v <= Qp}
        if ctx.binary_sign:
            ds = _pm1(x_)
        else:  # Qn below, Qp above, round(v) - v between: round(clamp(v)) is Qn / Qp / round(v)
            ds = torch.round(v.clamp(qn, qp)) - _keep_inside(v, v, qn, qp)
        gs = (ds * g).sum() * ctx.grad_scale
        return gx, gs.to(ctx.step_dtype).reshape(()), None, None, None, None


def _levels(num_bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        return -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1
    return 0, 2 ** num_bits - 1


def _check_step(step, name: str, what: str) -> Tensor:
    if not isinstance(step, Tensor) or step.numel() != 1:
        raise ValueError(f"{name}: {what} must be a tensor holding one number, got {step!r}")
    _check_scale(step, name, what)
    return step.reshape(())


def lsq(x: Tensor, step: Tensor, num_bits: int = 4, symmetric: bool = True) -> Tensor:
    r"""LSQ: k-bit uniform quantization with a learned step size s.

    Forward, with (Qn, Qp) = (-2^(k-1), 2^(k-1) - 1) symmetric or (0, 2^k - 1) asymmetric, and x' = x
    (symmetric) or x' = x - min(x) (asymmetric; the minimum is added back and gets no gradient)::

        v = x' / s,    q(x) = s * clamp(round(v), Qn, Qp)   (+ min(x))

    Backward, with the gradient scale g_s = 1 / sqrt(N * Qp), N = x.numel()::
        dq/dx = 1                  if Qn <= v <= Qp           dq/ds = Qn                  if v < Qn
                0                  otherwise                          Qp                  if v > Qp
                                                                      round(v) - v        otherwise
        dL/ds = g_s * sum(dL/dq * dq/ds)

    Args:
        x: activation tensor.
        step: the step size s, a one-element tensor (an ``nn.Parameter`` to learn it). Values below
            :data:`ALPHA_MIN` are clamped to it in the forward pass; the gradient goes to ``step`` unchanged.
        num_bits: k (>= 2 symmetric, >= 1 asymmetric).
        symmetric: ``SymLsqQuantizer`` or ``AsymLsqQuantizer`` (BinaryBERT's 4-bit activations, §2.3).

    Papers: Esser et al. 2020 (LSQ); BinaryBERT's code (which asserts s > 0 instead of clamping). The module
    :class:`LSQ` initialises s on first use to 2 mean|x| / sqrt(Qp) (symmetric) or 4 mean|x| / sqrt(Qp)
    (asymmetric, of x itself, not of x - min). ``torch.round`` rounds half to even, as in the code.
    """
    name = "lsq_sym" if symmetric else "lsq_asym"
    _check_input(x, name, nonempty=True)
    _check_bits(num_bits, name, 2 if symmetric else 1)
    step = _check_step(step, name, "step")
    qn, qp = _levels(num_bits, symmetric)
    return _LearnedStepSTE.apply(x, step, qn, qp, not symmetric, False)


class DataInitialised(nn.Module):
    """A scale that is set from the first batch it sees, then learned.

    ``initialized`` is a buffer, so it travels in the state dict: a module loaded from a checkpoint of a
    trained quantizer never re-initialises. (The authors' code re-initialises whenever the loaded value is
    exactly 1.0, its placeholder.) A state dict without the buffer (a plain nn.Linear's) leaves it False.
    """

    scale_name = "step"

    def __init__(self):
        super().__init__()
        self.register_parameter(self.scale_name, nn.Parameter(torch.tensor(1.0)))
        self.register_buffer("initialized", torch.tensor(False))

    def _init_value(self, x: Tensor) -> float:
        raise NotImplementedError

    def _maybe_initialize(self, x: Tensor) -> None:
        if bool(self.initialized):
            return
        with torch.no_grad():
            value = max(float(self._init_value(x.detach())), ALPHA_MIN)  # all-zero first batch: ALPHA_MIN
            getattr(self, self.scale_name).fill_(value)
            self.initialized.fill_(True)


@register("lsq_asym", knobs=("bits", "scale"), min_bits=1, symmetric=False)
@register("lsq_sym", knobs=("bits", "scale"), min_bits=2, symmetric=True)
class LSQ(DataInitialised):
    """Module form of :func:`lsq`: owns the learned ``step`` (init on first forward) and ``initialized``.

    Args: ``num_bits``, ``symmetric`` as in :func:`lsq`.
    """

    scale_name = "step"

    def __init__(self, num_bits: int = 4, symmetric: bool = True):
        super().__init__()
        name = "lsq_sym" if symmetric else "lsq_asym"
        self.num_bits = _check_bits(num_bits, name, 2 if symmetric else 1)
        self.symmetric = bool(symmetric)

    def _init_value(self, x: Tensor) -> float:
        qp = _levels(self.num_bits, self.symmetric)[1]
        return (2.0 if self.symmetric else 4.0) * float(x.abs().mean()) / math.sqrt(qp)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, "lsq_sym" if self.symmetric else "lsq_asym", nonempty=True)
        self._maybe_initialize(x)
        return lsq(x, self.step, self.num_bits, self.symmetric)

    def extra_repr(self) -> str:
        return f"num_bits={self.num_bits}, symmetric={self.symmetric}"


def elastic(x: Tensor, alpha: Tensor, num_bits: int = 1, signed: bool = True) -> Tensor:
    r"""BiT's elastic binarization: a learned scale alpha (and, in the module, a learned threshold).

    Forward at 1 bit::

        signed:    q(x) = +alpha   if x >= 0            unsigned:  q(x) = alpha   if x / alpha > 1/2
                          -alpha   if x <  0                              0       otherwise
                                                        (= alpha * clamp(round(x / alpha), 0, 1))

    Backward at 1 bit, v = x / alpha, N = x.numel()::

        signed:    dq/dx = 1{-1 <= v <= 1}              dL/dalpha = sum(dL/dq * sign(x)) / sqrt(N)
        unsigned:  dq/dx = 1{0 <= v <= 1}               dL/dalpha = sum(dL/dq * dq/dalpha) / sqrt(N),
                                                        dq/dalpha = 1 if v > 1, round(v) - v if 0 <= v <= 1, 0 if v < 0

    At k >= 2 bits it is :func:`lsq` (signed = symmetric; unsigned subtracts the minimum, as BiT's code does),
    with the gradient scale 1 / sqrt(N * Qp).

    Args:
        x: activation tensor (already shifted by the learned threshold, see :class:`Elastic`).
        alpha: the scale, a one-element tensor; clamped to >= :data:`ALPHA_MIN` (1e-5) in the forward pass as
            in BiT's code, the gradient going to ``alpha`` unchanged.
        num_bits: 1 for {-alpha, +alpha} / {0, alpha}; 2..8 for the multi-bit students (W1A2, W1A4).
        signed: {-alpha, +alpha} (after LayerNorm / matmul: inputs of Q/K/V/O/FFN1/pooler, Q, K, V) or
            {0, alpha} (after softmax and ReLU: attention probabilities, FFN2 input), §4.3.

    Paper: Liu et al., BiT, NeurIPS 2022, eq. 5.41 (§4.2). Code vs paper: the paper initialises alpha with the
    optimal alpha*; the code (and the :class:`Elastic` module) with 2 mean|x| (signed) or 4 mean|x| (unsigned)
    on the first forward. ``torch.sign`` in the code maps 0 to 0; here x = 0 gives +alpha, and the alpha
    gradient uses the same sign(0) = +1.
    """
    name = "elastic_signed" if signed else "elastic_unsigned"
    _check_input(x, name, nonempty=True)
    _check_bits(num_bits, name, 1)
    alpha = _check_step(alpha, name, "alpha")
    if num_bits == 1:
        if signed:
            return _LearnedStepSTE.apply(x, alpha, -1, 1, False, True)
        return _LearnedStepSTE.apply(x, alpha, 0, 1, False, False)
    qn, qp = _levels(num_bits, signed)
    return _LearnedStepSTE.apply(x, alpha, qn, qp, not signed, False)


@register("elastic_unsigned", knobs=("bits", "scale"), min_bits=1, signed=False)
@register("elastic_signed", knobs=("bits", "scale"), min_bits=1, signed=True)
class Elastic(DataInitialised):
    r"""Module form of :func:`elastic`, with BiT's learned alpha and (optionally) learned threshold.

    Args:
        num_bits, signed: as in :func:`elastic`.
        num_features: if given, a learned per-channel shift ``bias`` (size of the last dimension, init 0) is
            added first: the module computes ``elastic(x + bias, alpha)``. This is BiT's ``LearnableBias``
            (``self.move``), so the paper's threshold beta (``sign(x - beta)``) is ``-bias``. None: no shift
            (BiT's Q, K, V and attention probabilities, where its ``move_q/k/v`` are dead code, issue #1).

        init: how ``alpha`` starts, on the first forward (or in a calibration pass over a few batches,
            :func:`binlab.train.calibration.calibrate`). ``"code"`` (BiT's code, the default): 2 mean|x| / sqrt(Qp)
            (signed; Qp = 1 at one bit) or 4 mean|x| / sqrt(Qp) (unsigned). ``"optimal"`` (the paper's alpha*, at
            one bit; more bits start as ``"code"``): the alpha that minimises ||x - x_b||^2, mean|x| for
            alpha * sign(x), and for {0, alpha} the fixed point of alpha = mean{x : x >= alpha / 2}
            (:func:`optimal_alpha`).

    ``initialized`` is a buffer (see :class:`LSQ`).
    """

    scale_name = "alpha"

    def __init__(self, num_bits: int = 1, signed: bool = True, num_features: int | None = None, init: str = "code"):
        super().__init__()
        name = "elastic_signed" if signed else "elastic_unsigned"
        self.num_bits = _check_bits(num_bits, name, 1)
        self.signed = bool(signed)
        if init not in ("code", "optimal"):
            raise ValueError(f"{name}: init must be 'code' or 'optimal', got {init!r}")
        self.init = init
        if num_features is not None:
            if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
                raise ValueError(f"{name}: num_features must be a positive integer or None, got {num_features!r}")
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("bias", None)

    def _init_value(self, x: Tensor) -> float:
        if self.init == "optimal" and self.num_bits == 1:
            return optimal_alpha(x, self.signed)
        qp = max(_levels(self.num_bits, self.signed)[1], 1)
        return (2.0 if self.signed else 4.0) * float(x.abs().mean()) / math.sqrt(qp)

    def forward(self, x: Tensor) -> Tensor:
        name = "elastic_signed" if self.signed else "elastic_unsigned"
        _check_input(x, name, nonempty=True)
        if self.bias is not None:
            if x.shape[-1] != self.bias.shape[0]:
                raise ValueError(f"{name}: the last dimension of the input is {x.shape[-1]}, "
                                 f"but the learned threshold has num_features={self.bias.shape[0]}")
            x = x + self.bias.to(x.dtype)
        self._maybe_initialize(x)
        return elastic(x, self.alpha, self.num_bits, self.signed)

    def extra_repr(self) -> str:
        nf = None if self.bias is None else self.bias.shape[0]
        return f"num_bits={self.num_bits}, signed={self.signed}, num_features={nf}, init={self.init!r}"


def optimal_alpha(x: Tensor, signed: bool, steps: int = 20) -> float:
    r"""BiT's optimal one-bit scale alpha* of ``x`` (the paper's eqs.; methods.md §4.2), in float64:

    .. code-block:: text

        signed    x_b = alpha * sign(x):          alpha* = ||x||_1 / n = mean |x|
        unsigned  x_b = alpha * 1{x >= alpha/2}:  alpha* = mean{ x_i : x_i >= alpha*/2 }

    The unsigned one is a fixed point (setting d/dalpha ||x - x_b||^2 = 0 with the set held fixed), found by
    iterating from alpha = 2 mean|x| until it stops moving (at most ``steps`` times). All-zero input: 0 (the module
    clamps it to ALPHA_MIN).
    """
    v = x.detach().double().reshape(-1)
    if signed:
        return float(v.abs().mean())
    alpha = 2.0 * float(v.abs().mean())
    for _ in range(steps):
        keep = v[v >= alpha / 2]
        new = float(keep.mean()) if keep.numel() else 0.0
        if new == alpha:
            break
        alpha = new
    return alpha


# ----------------------------------------------------------------------------------------------------------
# looking a quantizer up by name

def available() -> list[str]:
    """The names :func:`get` knows, sorted."""
    return sorted(_REGISTRY)


def registered() -> list[str]:
    """The names :func:`get` knows, in the order this module defines them."""
    return list(_REGISTRY)


def knobs(name: str) -> tuple[str, ...]:
    """What a reader can turn on quantizer ``name`` (see :func:`register`)."""
    _check_registered(name)
    return _KNOBS[name]


def min_bits(name: str) -> int | None:
    """The smallest k the multi-bit quantizer ``name`` accepts; None for 1-bit and ternary ones."""
    _check_registered(name)
    return _MIN_BITS.get(name)


def is_quantizer(module: nn.Module) -> bool:
    """True for a module of a registered quantizer class (the optimizer gives their scales their own lr)."""
    return any(isinstance(module, getattr(f, "func", f)) for f in _REGISTRY.values())


def _check_registered(name) -> None:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown quantizer {name!r}; known quantizers: {', '.join(available())}")


def get(name: str, **kwargs) -> nn.Module:
    """Build a quantizer module from its name, e.g. ``get("ste_sign")``, ``get("lsq_asym", num_bits=4)``.

    Keyword arguments go to the module's constructor. An unknown name raises ``ValueError`` listing the names.
    """
    _check_registered(name)
    return _REGISTRY[name](**kwargs)
