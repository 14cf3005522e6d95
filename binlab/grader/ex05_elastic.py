"""Exercise 5 (``exercises/05_elastic.ipynb``): BiT's elastic binary activations.

Questions (torch tensors in; one alpha per tensor, as BiT's activation binarizers):
* q1 ``elastic_binarize(x, alpha, beta, signed)``: the forward of both sets, alpha * sign(x - beta) (sign(0) = +1)
  and alpha * 1{(x - beta) / alpha > 1/2} ({0, alpha}; exactly 1/2 rounds to 0, as ``torch.round`` in the code);
* q2 ``optimal_alpha(x, signed)``: the optimal scale alpha* of each set, mean|x| and the fixed point
  alpha = mean{x_i >= alpha / 2};
* q3 ``ElasticSTE``: a ``torch.autograd.Function`` with BiT's straight-through gradients for x and alpha, the alpha
  gradient scaled by 1 / sqrt(N) (LSQ's gradient scale).

The library versions are :func:`binlab.quant.quantizers.elastic` (at one bit) and
:func:`binlab.quant.quantizers.optimal_alpha`; the checks compare with them.
"""

from __future__ import annotations

import math

import torch

from binlab.grader.checks import generator, one_number, randn, show, tensor_of_shape
from binlab.grader.core import Check, CheckFailed, Exercise, Mistake, NotAttempted, Question, call, describe_error
from binlab.quant import quantizers as Q

__all__ = ["q1", "q2", "q3", "EXERCISE", "MISTAKES", "elastic_binarize", "optimal_alpha", "ElasticSTE"]


# ------------------------------------------------------------------------ reference solutions
def elastic_binarize(x, alpha, beta, signed):
    """BiT's elastic binarization at one bit: shift x by the threshold beta, then keep one of two values.

        signed   {-alpha, +alpha}:  x_b = alpha * sign(x - beta)                 sign(0) = +1
        unsigned {0, alpha}:        x_b = alpha * 1{(x - beta) / alpha > 1/2}    (exactly 1/2 gives 0)

    alpha is a positive number (or a 0-d tensor); beta a number or a tensor that broadcasts against x (one
    threshold per channel of the last dimension). Example: x = [-1, 0, 0.3, 0.5, 2], alpha = 1, beta = 0:
    signed -> [-1, 1, 1, 1, 1]; unsigned -> [0, 0, 0, 0, 1].
    """
    v = (x - beta) / alpha
    if signed:
        return alpha * torch.where(v >= 0, 1.0, -1.0).to(x.dtype)
    return alpha * (v > 0.5).to(x.dtype)


def optimal_alpha(x, signed):
    """The optimal one-bit scale alpha*: the alpha that minimises ||x - x_b||^2 (BiT; docs/methods.md §4.2).

        signed   x_b = alpha * sign(x):          alpha* = mean |x|
        unsigned x_b = alpha * 1{x >= alpha/2}:  alpha* = mean of the x_i with x_i >= alpha*/2, a fixed point:
                 start at alpha = 2 mean|x| and repeat alpha <- mean{x_i : x_i >= alpha/2} until it stops changing
                 (at most 20 times; an empty set gives 0)

    Return a Python float. Example: x = [0, 0.1, 0.2, 0.9, 1]: signed alpha* = 0.44; unsigned: 0.88 ->
    mean{x >= 0.44} = 0.95 -> mean{x >= 0.475} = 0.95, so alpha* = 0.95.
    """
    v = x.detach().double().reshape(-1)
    if signed:
        return float(v.abs().mean())
    alpha = 2 * float(v.abs().mean())
    for _ in range(20):
        keep = v[v >= alpha / 2]
        new = float(keep.mean()) if keep.numel() else 0.0
        if new == alpha:
            break
        alpha = new
    return alpha


class ElasticSTE(torch.autograd.Function):
    """BiT's one-bit elastic binarizer with straight-through gradients. Use it as ``ElasticSTE.apply(x, alpha, signed)``.

        forward:   x_b = alpha * sign(x) (signed, sign(0) = +1)   or   alpha * 1{x / alpha > 1/2} (unsigned)
        backward, with v = x / alpha and N = x.numel():
            dL/dx     = dL/dx_b * 1{-1 <= v <= 1}   (signed)         dL/dx_b * 1{0 <= v <= 1}   (unsigned)
            dL/dalpha = sum(dL/dx_b * d) / sqrt(N), where
                signed:    d = sign(x)
                unsigned:  d = 1 if v > 1;   1{v > 1/2} - v if 0 <= v <= 1;   0 if v < 0

    alpha is a 0-d tensor (learned: it requires grad); return its gradient with alpha's shape, and None for signed.
    Example: x = [-2, -0.5, 0.25, 0.75, 3], alpha = 1, dL/dx_b = 1: signed dL/dx = [0, 1, 1, 1, 0] and
    dL/dalpha = (-1 - 1 + 1 + 1 + 1) / sqrt(5) = 0.4472; unsigned dL/dx = [0, 0, 1, 1, 0] and
    dL/dalpha = (0 + 0 - 0.25 + 0.25 + 1) / sqrt(5) = 0.4472.
    """

    @staticmethod
    def forward(ctx, x, alpha, signed):
        ctx.save_for_backward(x, alpha)
        ctx.signed = signed
        a = alpha.to(x.dtype)
        if signed:
            return a * torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
        return a * (x / a > 0.5).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        x, alpha = ctx.saved_tensors
        v = x / alpha.to(x.dtype)
        if ctx.signed:
            inside = (v >= -1) & (v <= 1)
            d = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
        else:
            inside = (v >= 0) & (v <= 1)
            d = torch.where(v > 1, torch.ones_like(v),
                            torch.where(inside, (v > 0.5).to(v.dtype) - v, torch.zeros_like(v)))
        grad_x = grad_output * inside.to(grad_output.dtype)
        grad_alpha = (grad_output * d).sum() / x.numel() ** 0.5
        return grad_x, grad_alpha.reshape(alpha.shape).to(alpha.dtype), None


# ------------------------------------------------------------------------------ check helpers
def _library(x, alpha, beta, signed):
    """The library's forward: binlab.quant.quantizers.elastic at one bit, after the shift."""
    with torch.no_grad():
        return Q.elastic(x - beta, torch.as_tensor(float(alpha), dtype=x.dtype), 1, signed)


def _set(signed):
    return "{-alpha, +alpha}" if signed else "{0, alpha}"


def _probabilities(seed, rows=6, cols=10):
    """Softmax rows (non-negative, each row sums to 1), some peaked, some nearly uniform."""
    scores = randn(seed, rows, cols, dtype=torch.float64) * torch.linspace(0.2, 3.0, rows, dtype=torch.float64)[:, None]
    return torch.softmax(scores, dim=-1)


def _relu(seed, *shape):
    return torch.relu(randn(seed, *shape, dtype=torch.float64))


def _same(a, b):
    """Equal up to float32 rounding of alpha (a wrong entry is off by alpha or more)."""
    return bool(torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-9))


def _diagnose_forward(got, x, alpha, beta, signed, want, on, what="elastic_binarize"):
    """Raise CheckFailed with what is wrong in a forward pass ``got`` (float64) vs the library's ``want``."""
    xd = x.double()
    bd = beta.double() if torch.is_tensor(beta) else float(beta)
    bad = ~torch.isclose(got, want.double(), rtol=1e-5, atol=1e-9)
    i = int(bad.flatten().nonzero()[0])
    bi = float((torch.zeros_like(xd) + bd).flatten()[i])
    msg = (f"{what} on {on} ({_set(signed)}, alpha = {alpha:g}): at x = {float(xd.flatten()[i]):.6g} "
           f"(beta = {bi:.4g}) expected {float(want.flatten()[i]):.6g}, got {float(got.flatten()[i]):.6g}.")
    v = (xd - bd) / alpha
    ones = torch.ones_like(v)
    if signed:
        if _same(got, alpha * torch.sign(xd - bd)):
            msg += (" Where x - beta = 0 you return 0: torch.sign(0) = 0, but binlab's sign(0) = +1 "
                    "(torch.where(v >= 0, 1.0, -1.0)).")
        elif _same(got, torch.where(v >= 0, ones, -ones)):
            msg += " Your values are +-1: multiply by the scale alpha."
        elif _same(got, alpha * torch.where(xd + bd >= 0, ones, -ones)):
            msg += " You added beta: the threshold is subtracted, sign(x - beta)."
    else:
        if bool((got < 0).any()):
            msg += (" You return negative values: that is the signed set {-alpha, +alpha}. Probabilities and ReLU "
                    "outputs go to {0, alpha}: alpha * 1{(x - beta) / alpha > 1/2}.")
        elif _same(got, alpha * (v > 1).double()) or _same(got, alpha * (v >= 1).double()):
            msg += (" You keep only x - beta >= alpha: the threshold is alpha/2 (round((x - beta) / alpha) clamped to "
                    "{0, 1}), the midpoint between the two values 0 and alpha.")
        elif _same(got, alpha * (v >= 0.5).double()):
            msg += (" Exactly at (x - beta) / alpha = 1/2 you return alpha; the code rounds half to even "
                    "(torch.round(0.5) = 0), so the test is strict: > 1/2.")
        elif _same(got, alpha * (v > 0).double()) or _same(got, alpha * (v >= 0).double()):
            msg += " You threshold at 0: the threshold of {0, alpha} is alpha/2 (plus beta)."
        elif _same(got, (v > 0.5).double()):
            msg += " Your values are 0 and 1: multiply by the scale alpha."
        elif _same(got, alpha * ((xd + bd) / alpha > 0.5).double()):
            msg += " You added beta: the threshold is subtracted, x - beta."
    raise CheckFailed(msg)


def _check_forward(fn, x, alpha, beta, signed, on):
    want = _library(x, alpha, beta, signed).double()
    beta_in = beta.clone() if torch.is_tensor(beta) else beta
    x_in = x.clone()
    got = tensor_of_shape(call(fn, x_in, alpha, beta_in, signed, on=on), "elastic_binarize", on, x.shape)
    if not torch.equal(x_in, x):
        raise CheckFailed(f"elastic_binarize changed its input x in place (on {on}).")
    if _same(got, want):
        return
    _diagnose_forward(got, x, alpha, beta, signed, want, on)


def _q1_signed(fn):
    x = torch.tensor([-1.0, 0.0, 0.3, 0.5, 2.0, -0.0, -3.0])
    _check_forward(fn, x, 1.0, 0.0, True, f"x = {show(x, 7)}")
    x = randn(51, 5, 8)
    x[1, ::2] = 0.0
    _check_forward(fn, x, 0.7, 0.0, True, "a LayerNorm-like x of shape (5, 8) with zeros")


def _q1_unsigned(fn):
    x = torch.tensor([0.0, 0.1, 0.25, 0.2500001, 0.3, 0.5, 0.75, 2.0])
    _check_forward(fn, x, 0.5, 0.0, False, f"x = {show(x, 8, 8)} (0.25 is exactly alpha/2)")
    x = _probabilities(52).float()
    _check_forward(fn, x, 0.3, 0.0, False, "softmax probabilities of shape (6, 10)")
    x = _relu(53, 4, 12).float()
    _check_forward(fn, x, 1.25, 0.0, False, "ReLU outputs of shape (4, 12)")


def _q1_threshold(fn):
    x = randn(54, 6, 5)
    beta = torch.tensor([0.5, -0.25, 0.0, 1.0, -1.0])
    x[0] = beta  # exactly at the threshold: sign(0) = +1
    _check_forward(fn, x, 0.8, beta, True, "x of shape (6, 5), one threshold beta per channel")
    _check_forward(fn, x, 0.8, 0.3, True, "x of shape (6, 5), beta = 0.3")
    p = _relu(55, 6, 5).float()
    _check_forward(fn, p, 0.8, beta, False, "ReLU outputs of shape (6, 5), one threshold beta per channel")


# ------------------------------------------------------------------------------- q2 helpers
def _iterate(v, start, threshold, steps=20):
    a = start
    for _ in range(steps):
        keep = v[v >= threshold(a)]
        new = float(keep.mean()) if keep.numel() else 0.0
        if new == a:
            break
        a = new
    return a


def _close(a, b):
    return abs(a - b) <= 1e-6 * max(abs(b), 1e-12)


def _check_alpha(fn, x, signed, on):
    a = one_number(call(fn, x.clone(), signed, on=on), "optimal_alpha", on, "one alpha for the tensor")
    want = Q.optimal_alpha(x, signed)
    if _close(a, want):
        return
    v = x.detach().double().reshape(-1)
    m = float(v.abs().mean())
    msg = f"on {on} ({_set(signed)}): expected alpha* = {want:.6g}, got {a:.6g}."
    if _close(a, 2 * m) or _close(a, 4 * m):
        msg += (f" That is the code's initialisation ({'2' if _close(a, 2 * m) else '4'} mean|x|), not the optimal "
                "scale: alpha* minimises ||x - x_b||^2.")
    elif signed and _close(a, abs(float(v.mean()))):
        msg += " That is |mean(x)|: take the absolute value first, mean(|x|)."
    elif signed and _close(a, float(v.pow(2).mean().sqrt())):
        msg += " That is the root mean square; for x_b = alpha sign(x) the optimum is mean(|x|)."
    elif not signed and _close(a, m):
        msg += (" That is mean|x|, the optimum of the signed set {-alpha, +alpha}; for probabilities and ReLU outputs "
                "({0, alpha}) alpha* is the mean of the entries that are kept, x_i >= alpha*/2.")
    elif not signed and _close(a, _iterate(v, 2 * m, lambda al: al)):
        msg += (" You keep the x_i >= alpha: the threshold of {0, alpha} is alpha/2, the midpoint between 0 and "
                "alpha.")
    elif not signed and _close(a, float(v[v >= m].mean())):
        msg += (" That is one step of the fixed point (mean{x >= alpha/2} from alpha = 2 mean|x|): repeat it until "
                "alpha stops changing.")
    elif not signed and _close(a, float(v[v >= m].sum()) / v.numel()):
        msg += " You divided by all n entries: alpha* is the mean over the kept entries only."
    raise CheckFailed(msg)


def _q2_signed(fn):
    _check_alpha(fn, torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0]), True, "x = [0, 0.1, 0.2, 0.9, 1]")
    _check_alpha(fn, randn(61, 7, 9) + 0.3, True, "a shifted Gaussian x of shape (7, 9)")


def _q2_unsigned(fn):
    _check_alpha(fn, torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0]), False, "x = [0, 0.1, 0.2, 0.9, 1]")
    _check_alpha(fn, _probabilities(62, 8, 16), False, "softmax probabilities of shape (8, 16)")
    _check_alpha(fn, _relu(63, 10, 20), False, "ReLU outputs of shape (10, 20)")


# ------------------------------------------------------------------------------- q3 helpers
def _is_function_class(obj):
    return isinstance(obj, type) and issubclass(obj, torch.autograd.Function)


def _apply(obj, x, alpha, signed, on):
    if not _is_function_class(obj):
        what = "a function" if callable(obj) else type(obj).__name__
        raise CheckFailed("ElasticSTE should be a class deriving from torch.autograd.Function, used as "
                          f"ElasticSTE.apply(x, alpha, signed); got {what}.")
    try:
        return obj.apply(x, alpha, signed)
    except NotImplementedError as e:
        raise NotAttempted(f"ElasticSTE still raises NotImplementedError: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"ElasticSTE.apply(x, alpha, signed) raised {describe_error(e)} on {on}.") from e


def _grads(obj, x, alpha, signed, g, on):
    """(forward, dL/dx, dL/dalpha) of the learner's ElasticSTE for upstream gradient g."""
    xv = x.clone().requires_grad_(True)
    av = torch.tensor(float(alpha), dtype=x.dtype, requires_grad=True)
    y = _apply(obj, xv, av, signed, on)
    if not isinstance(y, torch.Tensor):
        raise CheckFailed(f"ElasticSTE.apply returned a {type(y).__name__} on {on}; expected a tensor.")
    if y.shape != x.shape:
        raise CheckFailed(f"ElasticSTE.apply returned shape {tuple(y.shape)} on {on}; expected {tuple(x.shape)}.")
    if not y.requires_grad:
        raise CheckFailed(f"the output of ElasticSTE.apply is not connected to x and alpha on {on} "
                          "(did forward return a detached tensor?).")
    try:
        y.backward(g)
    except NotImplementedError as e:
        raise NotAttempted(f"ElasticSTE.backward raised NotImplementedError: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"the backward pass raised {describe_error(e)} on {on} (backward returns three values: "
                          "dL/dx, dL/dalpha with alpha's shape, and None for signed).") from e
    if xv.grad is None:
        raise CheckFailed(f"no gradient reached x on {on}: backward must return dL/dx first.")
    if av.grad is None:
        raise CheckFailed(f"no gradient reached alpha on {on}: backward must return dL/dalpha second.")
    return y.detach(), xv.grad.detach(), float(av.grad)


def _library_grads(x, alpha, signed, g):
    xv = x.clone().requires_grad_(True)
    av = torch.tensor(float(alpha), dtype=x.dtype, requires_grad=True)
    y = Q.elastic(xv, av, 1, signed)
    y.backward(g)
    return y.detach(), xv.grad.detach(), float(av.grad)


def _q3_cases():
    x1 = torch.tensor([-2.0, -0.5, 0.25, 0.75, 3.0, 0.0, 1.0, -1.0, 0.5], dtype=torch.float64)
    return [
        (x1, 1.0, True, "x = [-2, -0.5, 0.25, 0.75, 3, 0, 1, -1, 0.5], alpha = 1"),
        (x1, 1.0, False, "x = [-2, -0.5, 0.25, 0.75, 3, 0, 1, -1, 0.5], alpha = 1"),
        (randn(71, 6, 9, dtype=torch.float64) * 1.5, 0.8, True, "a Gaussian x of shape (6, 9), alpha = 0.8"),
        (_probabilities(72, 6, 9), 0.3, False, "softmax probabilities of shape (6, 9), alpha = 0.3"),
        (_relu(73, 5, 8) * 2, 1.5, False, "ReLU outputs of shape (5, 8), alpha = 1.5"),
    ]


def _upstream(x, seed):
    return torch.randn(x.shape, generator=generator(seed), dtype=x.dtype)


def _q3_forward(obj):
    for x, alpha, signed, on in _q3_cases():
        xv = x.clone()
        y = _apply(obj, xv, torch.tensor(alpha, dtype=x.dtype), signed, on)
        if not isinstance(y, torch.Tensor):
            raise CheckFailed(f"ElasticSTE.apply returned a {type(y).__name__} on {on}; expected a tensor.")
        got = tensor_of_shape(y, "ElasticSTE.apply", on, x.shape)
        want = _library(x, alpha, 0.0, signed).double()
        if not _same(got, want):
            _diagnose_forward(got, x, alpha, 0.0, signed, want, on, "ElasticSTE")


def _q3_grad_x(obj):
    for k, (x, alpha, signed, on) in enumerate(_q3_cases()):
        g = _upstream(x, 80 + k)
        _, gx, _ = _grads(obj, x, alpha, signed, g, on)
        _, want, _ = _library_grads(x, alpha, signed, g)
        if torch.allclose(gx, want, rtol=1e-9, atol=1e-12):
            continue
        i = int((~torch.isclose(gx, want, rtol=1e-9, atol=1e-12)).flatten().nonzero()[0])
        xi = float(x.flatten()[i])
        msg = (f"dL/dx on {on} ({_set(signed)}): at x = {xi:.4g} (v = x / alpha = {xi / alpha:.4g}) with dL/dx_b = "
               f"{float(g.flatten()[i]):.4g} expected {float(want.flatten()[i]):.4g}, got {float(gx.flatten()[i]):.4g}.")
        v = x / alpha
        if torch.allclose(gx, g):
            msg += " The gradient passes everywhere: the straight-through window 1{...} on v = x / alpha is missing."
        elif signed and torch.allclose(gx, g * (x.abs() <= 1).to(g.dtype)):
            msg += " You clip at |x| <= 1; the window is on v = x / alpha: |x| <= alpha."
        elif not signed and torch.allclose(gx, g * (v.abs() <= 1).to(g.dtype)):
            msg += (" You use the window of the signed set, -1 <= v <= 1; for {0, alpha} it is 0 <= v <= 1 "
                    "(nothing passes below 0).")
        elif not signed and torch.allclose(gx, g * ((x >= 0) & (x <= 1)).to(g.dtype)):
            msg += " You clip x to [0, 1]; the window is on v = x / alpha: 0 <= x <= alpha."
        raise CheckFailed(msg)


def _q3_grad_alpha(obj):
    for k, (x, alpha, signed, on) in enumerate(_q3_cases()):
        g = _upstream(x, 90 + k)
        _, _, ga = _grads(obj, x, alpha, signed, g, on)
        _, _, want = _library_grads(x, alpha, signed, g)
        if abs(ga - want) <= 1e-9 * max(1.0, abs(want)):
            continue
        n = x.numel()
        msg = f"dL/dalpha on {on} ({_set(signed)}, N = {n}): expected {want:.6g}, got {ga:.6g}."
        v = x / alpha
        sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
        d_unsigned = torch.where(v > 1, torch.ones_like(v), torch.where((v >= 0) & (v <= 1), (v > 0.5).to(v.dtype) - v,
                                                                         torch.zeros_like(v)))
        raw = float((g * (sign if signed else d_unsigned)).sum())

        def near(value):
            return abs(ga - value) <= 1e-9 * max(1.0, abs(value))

        if near(raw):
            msg += (f" Yours is sqrt(N) = {math.sqrt(n):.4g} times too large: the gradient scale 1/sqrt(N) is missing "
                    "(LSQ's scale, which keeps alpha's step independent of the tensor's size).")
        elif near(raw / n):
            msg += " You divided by N; the gradient scale is 1/sqrt(N)."
        elif not signed and near(float((g * sign).sum()) / math.sqrt(n)):
            msg += (" You used the signed set's d = sign(x); for {0, alpha}: d = 1 above v = 1, 1{v > 1/2} - v "
                    "inside [0, 1], 0 below 0.")
        elif not signed and near(float((g * torch.where(v > 1, torch.ones_like(v), (v > 0.5).to(v.dtype) *
                                                         ((v >= 0) & (v <= 1)).to(v.dtype))).sum()) / math.sqrt(n)):
            msg += " Inside [0, 1] d is 1{v > 1/2} - v: the - v term (the rounding error) is missing."
        raise CheckFailed(msg)


# --------------------------------------------------------------------------------- questions
q1 = Question(
    "q1", "elastic_binarize", "The two sets: {-alpha, +alpha} and {0, alpha}",
    checks=[
        Check("signed: alpha * sign(x - beta), sign(0) = +1", 1, _q1_signed),
        Check("unsigned: alpha * 1{(x - beta) / alpha > 1/2}, on probabilities and ReLU outputs", 2, _q1_unsigned),
        Check("the threshold beta, a number or one per channel, in both sets", 1, _q1_threshold),
    ],
    hints=[
        """Compute v = (x - beta) / alpha once. Signed: `alpha * torch.where(v >= 0, 1.0, -1.0)` (torch.sign
        would send 0 to 0). Unsigned: `alpha * (v > 0.5)` as floats.""",
        """The threshold of {0, alpha} is alpha/2, the midpoint between its two values (round(v) clamped to
        {0, 1}); exactly 1/2 rounds to 0, so use a strict >.""",
    ],
    solution=elastic_binarize,
)

q2 = Question(
    "q2", "optimal_alpha", "The optimal scale of each set",
    checks=[
        Check("signed: alpha* = mean|x|", 1, _q2_signed),
        Check("unsigned: the fixed point alpha* = mean{x_i >= alpha*/2}", 3, _q2_unsigned),
    ],
    hints=[
        """Signed: ||x - alpha sign(x)||^2 = sum x^2 - 2 alpha sum|x| + n alpha^2, a parabola in alpha with its
        minimum at mean|x|.""",
        """Unsigned: with the kept set S = {x_i >= alpha/2} held fixed, the error is sum over S of (x_i - alpha)^2
        plus the rest, minimised at alpha = mean over S. Iterate: `alpha = 2 * x.abs().mean()`, then
        `alpha = x[x >= alpha / 2].mean()` until it stops changing.""",
    ],
    solution=optimal_alpha,
)

q3 = Question(
    "q3", "ElasticSTE", "Straight-through gradients for x and alpha",
    checks=[
        Check("a torch.autograd.Function whose forward is Q1's (beta = 0)", 1, _q3_forward),
        Check("dL/dx: the window 1{-1 <= v <= 1} (signed) or 1{0 <= v <= 1} (unsigned), v = x / alpha", 2,
              _q3_grad_x),
        Check("dL/dalpha, scaled by 1/sqrt(N)", 3, _q3_grad_alpha),
    ],
    hints=[
        """In forward save both inputs, `ctx.save_for_backward(x, alpha)`, and the flag, `ctx.signed = signed`
        (a bool is not a tensor). backward returns three things: dL/dx, dL/dalpha, None.""",
        """dL/dalpha is one number: `(grad_output * d).sum() / x.numel() ** 0.5`, reshaped to alpha's shape. For
        {0, alpha}, d is `torch.where(v > 1, 1, torch.where(inside, (v > 0.5) - v, 0))` as floats.""",
    ],
    solution=ElasticSTE,
    congrats="This is binlab.quant.quantizers.elastic at one bit, and BiT's ElasticBinarizer (LSQ's gradient scale).",
)

EXERCISE = Exercise("05_elastic", "Elastic binary activations: the two sets, alpha*, straight-through gradients",
                    [q1, q2, q3])


# ---------------------------------------------------------------------------------- mistakes
def _bin_threshold_alpha(x, alpha, beta, signed):
    v = (x - beta) / alpha
    if signed:
        return alpha * torch.where(v >= 0, 1.0, -1.0).to(x.dtype)
    return alpha * (v >= 1).to(x.dtype)


def _bin_torch_sign(x, alpha, beta, signed):
    if signed:
        return alpha * torch.sign(x - beta)
    return elastic_binarize(x, alpha, beta, signed)


def _bin_signed_everywhere(x, alpha, beta, signed):
    return elastic_binarize(x, alpha, beta, True)


def _bin_inclusive(x, alpha, beta, signed):
    v = (x - beta) / alpha
    if signed:
        return alpha * torch.where(v >= 0, 1.0, -1.0).to(x.dtype)
    return alpha * (v >= 0.5).to(x.dtype)


def _bin_beta_added(x, alpha, beta, signed):
    return elastic_binarize(x, alpha, -beta, signed)


def _alpha_mean_abs_everywhere(x, signed):
    return float(x.detach().double().abs().mean())


def _alpha_code_init(x, signed):
    return (2.0 if signed else 4.0) * float(x.detach().double().abs().mean())


def _alpha_threshold_alpha(x, signed):
    v = x.detach().double().reshape(-1)
    if signed:
        return float(v.abs().mean())
    return _iterate(v, 2 * float(v.abs().mean()), lambda a: a)


def _alpha_one_step(x, signed):
    v = x.detach().double().reshape(-1)
    if signed:
        return float(v.abs().mean())
    return float(v[v >= v.abs().mean()].mean())


# The typical mistakes of Q3: ElasticSTE with one part wrong (its backward, or for sign_zero its forward).
class _SteNoScale(ElasticSTE):
    @staticmethod
    def backward(ctx, grad_output):
        gx, ga, _ = ElasticSTE.backward(ctx, grad_output)
        return gx, ga * ctx.saved_tensors[0].numel() ** 0.5, None  # undo the 1/sqrt(N)


class _SteSignedAlphaGrad(ElasticSTE):
    @staticmethod
    def backward(ctx, grad_output):
        x, alpha = ctx.saved_tensors
        gx, _, _ = ElasticSTE.backward(ctx, grad_output)
        d = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
        return gx, ((grad_output * d).sum() / x.numel() ** 0.5).reshape(alpha.shape), None


class _SteSignedWindow(ElasticSTE):
    @staticmethod
    def backward(ctx, grad_output):
        x, alpha = ctx.saved_tensors
        _, ga, _ = ElasticSTE.backward(ctx, grad_output)
        return grad_output * ((x / alpha).abs() <= 1).to(grad_output.dtype), ga, None


class _SteNoMinusV(ElasticSTE):
    @staticmethod
    def backward(ctx, grad_output):
        x, alpha = ctx.saved_tensors
        gx, ga, _ = ElasticSTE.backward(ctx, grad_output)
        if ctx.signed:
            return gx, ga, None
        v = x / alpha
        d = torch.where(v > 1, torch.ones_like(v), (v > 0.5).to(v.dtype) * ((v >= 0) & (v <= 1)).to(v.dtype))
        return gx, ((grad_output * d).sum() / x.numel() ** 0.5).reshape(alpha.shape), None


class _SteTorchSign(ElasticSTE):
    @staticmethod
    def forward(ctx, x, alpha, signed):
        out = ElasticSTE.forward(ctx, x, alpha, signed)
        return alpha * torch.sign(x) if signed else out


MISTAKES = [
    Mistake("q1", "threshold_alpha", "{0, alpha} thresholded at alpha instead of alpha/2", _bin_threshold_alpha,
            "threshold is alpha/2"),
    Mistake("q1", "sign_zero", "torch.sign: sign(0) = 0", _bin_torch_sign, "sign(0) = +1"),
    Mistake("q1", "signed_for_probabilities", "the signed set used for probabilities and ReLU outputs",
            _bin_signed_everywhere, "signed set"),
    Mistake("q1", "inclusive_half", ">= 1/2: exactly alpha/2 gives alpha", _bin_inclusive, "strict"),
    Mistake("q1", "beta_added", "x + beta instead of x - beta", _bin_beta_added, "subtracted"),
    Mistake("q2", "signed_for_probabilities", "mean|x| for {0, alpha} too", _alpha_mean_abs_everywhere,
            "signed set"),
    Mistake("q2", "code_init", "the code's 2 / 4 mean|x| instead of alpha*", _alpha_code_init, "initialisation"),
    Mistake("q2", "threshold_alpha", "the fixed point keeps x >= alpha instead of alpha/2", _alpha_threshold_alpha,
            "threshold of {0, alpha} is alpha/2"),
    Mistake("q2", "one_step", "one step of the fixed point, not iterated", _alpha_one_step, "repeat it"),
    Mistake("q3", "no_grad_scale", "dL/dalpha without the 1/sqrt(N) gradient scale", _SteNoScale,
            "gradient scale 1/sqrt(N) is missing"),
    Mistake("q3", "signed_alpha_grad", "sign(x) as the alpha gradient of {0, alpha}", _SteSignedAlphaGrad,
            "signed set"),
    Mistake("q3", "signed_window", "the window -1 <= v <= 1 for {0, alpha}", _SteSignedWindow, "signed set"),
    Mistake("q3", "no_minus_v", "1{v > 1/2} without - v inside the window", _SteNoMinusV, "- v term"),
    Mistake("q3", "sign_zero", "forward torch.sign: sign(0) = 0", _SteTorchSign, "sign(0) = +1"),
]
