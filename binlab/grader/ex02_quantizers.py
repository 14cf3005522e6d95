"""Exercise 2 (``exercises/02_quantizers.ipynb``): weight quantizers and a straight-through sign.

Questions (torch tensors in, torch tensors out):

* q1 ``bwn(W, per_row=False)``: BWN, alpha * sign(W) with the optimal scale alpha = mean|W|, one per
  tensor or one per output row (BinaryBERT per tensor for linear layers, per row for the embedding;
  BiBERT per row; methods.md §2.2, §3.1);
* q2 ``twn_threshold(W)``: TWN's threshold Delta = 0.7 * mean|W|;
* q3 ``twn(W)``: TWN, alpha * (1{W > Delta} - 1{W < -Delta}) with alpha the mean of |W| over the weights
  above the threshold (methods.md §2.2);
* q4 ``ClippedSignSTE``: a ``torch.autograd.Function``, forward sign (sign(0) = +1), backward
  grad * 1{|x| <= 1} (the clipped STE of BiBERT's activations, methods.md §3.2).

The grader checks forward values and, for the STE, the gradient that reaches x. binlab's sign maps 0
to +1 (larq's convention), so a binary tensor really has two values.
"""

from __future__ import annotations

import torch

from binlab.grader.checks import close, generator, one_number, randn, show
from binlab.grader.core import Check, CheckFailed, Exercise, Mistake, NotAttempted, Question, call, describe_error

__all__ = ["q1", "q2", "q3", "q4", "EXERCISE", "MISTAKES",
           "bwn", "twn_threshold", "twn", "ClippedSignSTE"]


# ------------------------------------------------------------------------ reference solutions
def bwn(W, per_row=False):
    """BWN: binary weights with the optimal scale, W_hat = alpha * sign(W).

        sign(w) = +1 if w >= 0 else -1                    (binlab: sign(0) = +1)
        per_row=False:  alpha = mean |W|                  (one number for the whole tensor)
        per_row=True:   alpha_r = mean_j |W[r, j]|        (one per output row of W [out, in])

    alpha minimises ||W - alpha * sign(W)||^2. Example: W = [[1, -3], [0.5, 0.5]] gives
    alpha = 1.25 per tensor, W_hat = [[1.25, -1.25], [1.25, 1.25]]; per row alpha = (2, 0.5),
    W_hat = [[2, -2], [0.5, 0.5]].
    """
    sign = torch.where(W >= 0, torch.ones_like(W), -torch.ones_like(W))
    if per_row:
        alpha = W.abs().mean(dim=1, keepdim=True)  # shape (out, 1): broadcasts over each row
    else:
        alpha = W.abs().mean()
    return alpha * sign


def twn_threshold(W):
    """TWN's threshold: Delta = 0.7 * mean |W| (one number for the whole tensor).

    Weights with |w| <= Delta become 0. Example: W = [[1, -3], [0.5, 0.5]]: mean|W| = 1.25,
    Delta = 0.875.
    """
    return 0.7 * W.abs().mean()


def twn(W):
    """TWN: ternary weights W_hat = alpha * (1{W > Delta} - 1{W < -Delta}), per tensor.

        Delta = 0.7 * mean |W|                             (Q2)
        M     = 1{|W| > Delta}                             (the weights that survive)
        alpha = sum |W * M| / sum M                        (mean of |W| over the survivors only)

    Example: W = [[1, -3], [0.5, 0.5]]: Delta = 0.875, survivors 1 and -3, alpha = 2,
    W_hat = [[2, -2], [0, 0]].
    """
    delta = 0.7 * W.abs().mean()  # = twn_threshold(W)
    mask = W.abs() > delta
    alpha = W.abs()[mask].mean()
    return alpha * (W > delta).to(W.dtype) - alpha * (W < -delta).to(W.dtype)


class ClippedSignSTE(torch.autograd.Function):
    """sign with the clipped straight-through estimator. Use it as ``ClippedSignSTE.apply(x)``.

        forward:   y = sign(x) = +1 if x >= 0 else -1      (sign(0) = +1)
        backward:  dL/dx = dL/dy * 1{|x| <= 1}            (pass the gradient where |x| <= 1)

    The true derivative of sign is 0 almost everywhere; the STE pretends the forward was
    clamp(x, -1, 1), whose derivative is 1 inside [-1, 1] and 0 outside.
    Example: x = [-2, -0.5, 0, 1, 3] -> y = [-1, -1, 1, 1, 1], and with dL/dy = 1 everywhere,
    dL/dx = [0, 1, 1, 1, 0].
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)  # the input: backward needs |x|, not the output (always 1)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


# ------------------------------------------------------------------------------ check helpers
def _as_tensor(got, what, on, like):
    if got is None:
        raise CheckFailed(f"{what} returned None on {on}: did you forget the return statement?")
    if not isinstance(got, torch.Tensor):
        try:
            got = torch.as_tensor(got)
        except Exception:  # noqa: BLE001
            raise CheckFailed(f"{what} returned a {type(got).__name__} on {on}; expected a torch tensor.") from None
    got = got.detach()
    if got.shape != like.shape:
        raise CheckFailed(f"wrong shape on {on}: expected {tuple(like.shape)} (the shape of W), "
                          f"got {tuple(got.shape)}.")
    if not got.is_floating_point():
        raise CheckFailed(f"{what} returned a {got.dtype} tensor on {on}; expected floats like W.")
    return got.to(like.dtype)


def _sign(W):
    return torch.where(W >= 0, torch.ones_like(W), -torch.ones_like(W))


def _check_bwn(fn, W, per_row):
    on = f"W of shape {tuple(W.shape)} with per_row={per_row}"
    W_in = W.clone()
    got = _as_tensor(call(fn, W_in, per_row=per_row, on=on), "bwn", on, W)
    if not torch.equal(W_in, W):
        raise CheckFailed(f"bwn changed its input W in place (on {on}); compute on W.abs(), not W.abs_().")
    expected = bwn(W, per_row)
    if close(got, expected):
        return
    i = int((~torch.isclose(got, expected, rtol=1e-4, atol=1e-6)).flatten().nonzero()[0])
    idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), W.shape))
    msg = (f"on {on}: W_hat{list(idx)} should be {expected[idx].item():.5g} (W{list(idx)} = {W[idx].item():.4g}), "
           f"got {got[idx].item():.5g}.")
    absW = W.abs()
    has_zeros = bool((W == 0).any())
    if has_zeros and (close(got, absW.mean() * torch.sign(W))
                      or close(got, absW.mean(dim=-1, keepdim=True) * torch.sign(W))):
        msg += (" Your zeros stay 0: torch.sign(0) = 0, but binlab's sign(0) = +1 (a binary tensor has two"
                " values). Use torch.where(W >= 0, 1.0, -1.0).")
    elif per_row and close(got, absW.mean() * _sign(W)):
        msg += (" You used one scale for the whole tensor; per_row=True asks for one alpha per output row:"
                " W.abs().mean(dim=1, keepdim=True).")
    elif W.dim() == 2 and close(got, absW.mean(dim=0, keepdim=True) * _sign(W)):
        msg += (" You averaged over dim=0 (one scale per column); a weight is [out_features, in_features],"
                " and an output row is W[r, :]: average over dim=1.")
    elif close(got, _sign(W)):
        msg += " This is sign(W) without the scale alpha = mean|W|."
    elif not per_row and close(got, W.mean().abs() * _sign(W)):
        msg += " alpha is the mean of |W|, not |mean(W)|: take the absolute value first."
    else:
        scale = got.abs().flatten()[i].item()
        want = expected.abs().flatten()[i].item()
        msg += f" Your scale there is {scale:.5g}, the expected alpha is {want:.5g}."
    raise CheckFailed(msg)


def _check_threshold(fn, W):
    on = f"W of shape {tuple(W.shape)}"
    W_in = W.clone()
    got = one_number(call(fn, W_in, on=on), "twn_threshold", on, "one number for the whole tensor")
    if not torch.equal(W_in, W):
        raise CheckFailed(f"twn_threshold changed its input W in place (on {on}).")
    mean_abs = W.abs().mean().item()
    expected = 0.7 * mean_abs
    if abs(got - expected) <= 1e-4 * abs(expected) + 1e-7:
        return
    msg = f"on {on}: expected Delta = 0.7 * mean|W| = 0.7 * {mean_abs:.5g} = {expected:.5g}, got {got:.5g}."
    if abs(got - 0.7 * W.mean().item()) <= 1e-6 + 1e-4 * abs(got):
        msg += " That is 0.7 * mean(W): take the absolute value first (mean|W|)."
    elif abs(got - 0.7 * W.abs().max().item()) <= 1e-6 + 1e-4 * abs(got):
        msg += " That is 0.7 * max|W|; TWN uses the mean of |W|."
    elif mean_abs > 0:
        msg += f" Your Delta is {got / mean_abs:.4g} * mean|W|; TWN's constant is 0.7."
    raise CheckFailed(msg)


def _check_twn(fn, W, values: bool):
    on = f"W of shape {tuple(W.shape)}"
    W_in = W.clone()
    got = _as_tensor(call(fn, W_in, on=on), "twn", on, W)
    if not torch.equal(W_in, W):
        raise CheckFailed(f"twn changed its input W in place (on {on}).")
    delta = 0.7 * W.abs().mean()
    expected = twn(W)
    if not values:
        want = torch.sign(expected)
        have = torch.sign(got)
        if torch.equal(want, have):
            return
        i = int((want != have).flatten().nonzero()[0])
        w = W.flatten()[i].item()
        msg = (f"on {on} (Delta = 0.7 * mean|W| = {delta.item():.4g}): W = {w:.4g} should become "
               f"{['-alpha', '0', '+alpha'][int(want.flatten()[i]) + 1]}, yours is {got.flatten()[i].item():.4g}.")
        kept = (have != 0).float().mean().item()
        msg += (f" Weights with |W| <= Delta become 0, the others alpha * sign(W); you keep {kept:.0%}"
                f" of the weights nonzero, TWN keeps {(want != 0).float().mean().item():.0%}"
                " (is the threshold right?).")
        raise CheckFailed(msg)
    if close(got, expected):
        return
    nz = expected != 0
    alpha = expected[nz].abs()[0].item()
    yours = got[nz].abs()
    msg = f"on {on}: expected alpha = {alpha:.5g} (the mean of |W| over the {int(nz.sum())} weights with |W| > Delta)"
    if torch.allclose(yours, yours[0].expand_as(yours)):
        msg += f", your scale is {yours[0].item():.5g}."
        if abs(yours[0].item() - W.abs().mean().item()) <= 1e-5 + 1e-4 * alpha:
            msg += (" That is the mean of all |W|; alpha averages only the weights above the threshold"
                    " (the ones that stay nonzero): W.abs()[mask].mean().")
    else:
        msg += f", your nonzero values have different sizes: {show(got[nz])}; one alpha for the whole tensor."
    raise CheckFailed(msg)


def _is_function_class(obj):
    return isinstance(obj, type) and issubclass(obj, torch.autograd.Function)


def _apply(obj, x, on):
    if not _is_function_class(obj):
        what = "a function" if callable(obj) else type(obj).__name__
        raise CheckFailed(f"ClippedSignSTE should be a class deriving from torch.autograd.Function, used as "
                          f"ClippedSignSTE.apply(x); got {what}.")
    try:
        return obj.apply(x)
    except NotImplementedError as e:
        raise NotAttempted(f"ClippedSignSTE still raises NotImplementedError: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"ClippedSignSTE.apply(x) raised {describe_error(e)} on {on}.") from e


def _ste_grad(obj, x, g, on):
    x = x.clone().requires_grad_(True)
    y = _apply(obj, x, on)
    if not isinstance(y, torch.Tensor):
        raise CheckFailed(f"ClippedSignSTE.apply returned a {type(y).__name__} on {on}; expected a tensor.")
    if not y.requires_grad:
        raise CheckFailed(f"the output of ClippedSignSTE.apply(x) is not connected to x on {on} "
                          "(did forward return a detached tensor or a Python number?).")
    try:
        y.backward(g)
    except NotImplementedError as e:
        raise NotAttempted(f"ClippedSignSTE.backward raised NotImplementedError: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"the backward pass raised {describe_error(e)} on {on}.") from e
    if x.grad is None:
        raise CheckFailed(f"no gradient reached x on {on}: backward must return dL/dx.")
    return x.grad


def _ste_forward(obj):
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0, -0.0])
    x = torch.cat([x, randn(41, 30) * 2])
    x[10:20:3] = 0.0
    on = f"x = {show(x)} (with zeros)"
    y = _apply(obj, x.clone(), on)
    if not isinstance(y, torch.Tensor):
        raise CheckFailed(f"ClippedSignSTE.apply returned a {type(y).__name__} on {on}; expected a tensor.")
    y = y.detach()
    if y.shape != x.shape:
        raise CheckFailed(f"forward changed the shape on {on}: expected {tuple(x.shape)}, got {tuple(y.shape)}.")
    if not y.is_floating_point():
        raise CheckFailed(f"forward returned a {y.dtype} tensor; return floats like x (gradients need floats).")
    expected = _sign(x)
    if torch.equal(y.to(expected.dtype), expected):
        return
    i = int((y != expected).nonzero()[0])
    msg = f"forward: sign({x[i].item():g}) should be {expected[i].item():g}, got {y[i].item():g} (on {on})."
    if torch.equal(y.to(expected.dtype), torch.sign(x)):
        msg += " torch.sign(0) = 0, but binlab's sign(0) = +1: use torch.where(x >= 0, 1.0, -1.0)."
    raise CheckFailed(msg)


def _ste_gradient(obj):
    x = torch.rand(6, 7, generator=generator(42)) * 6 - 3  # in [-3, 3): about two thirds clipped
    g = randn(43, 6, 7)
    on = "x of shape (6, 7) with values in [-3, 3] and a random dL/dy"
    grad = _ste_grad(obj, x, g, on)
    expected = g * (x.abs() <= 1).to(g.dtype) + 0.0
    if close(grad, expected):
        return
    i = int((~torch.isclose(grad, expected)).flatten().nonzero()[0])
    xi, gi = x.flatten()[i].item(), g.flatten()[i].item()
    msg = (f"backward: at x = {xi:.4g} with dL/dy = {gi:.4g}, dL/dx should be {expected.flatten()[i].item():.4g}, "
           f"got {grad.flatten()[i].item():.4g} (on {on}).")
    if close(grad, g):
        msg += (" The gradient passes everywhere: the clip 1{|x| <= 1} is missing (or it was applied to the"
                " output y, whose |y| is always 1: save the input x with ctx.save_for_backward(x)).")
    elif close(grad, torch.zeros_like(g)):
        msg += (" The gradient is 0 everywhere (the true derivative of sign); the STE passes dL/dy"
                " straight through where |x| <= 1.")
    elif close(grad, (x.abs() <= 1).to(g.dtype)):
        msg += " That is the mask 1{|x| <= 1} alone: multiply it by grad_output."
    raise CheckFailed(msg)


def _ste_boundary(obj):
    x = torch.tensor([-1.0, 1.0, 0.0, -1.5, 1.5, 0.999, -1.001, 1.0001])
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    on = f"x = {show(x, 8, 6)}, dL/dy = {show(g, 8)}"
    grad = _ste_grad(obj, x, g, on)
    expected = g * (x.abs() <= 1).to(g.dtype)
    if close(grad, expected):
        return
    msg = f"backward on {on}: expected dL/dx = {show(expected, 8)}, got {show(grad, 8)}."
    if close(grad, g * (x.abs() < 1).to(g.dtype)):
        msg += (" At x = -1 and x = +1 the gradient must pass: the mask is 1{|x| <= 1}, inclusive"
                " (you used |x| < 1).")
    raise CheckFailed(msg)


# ------------------------------------------------------------------------------------ checks
def _q1_tensor(fn):
    _check_bwn(fn, randn(11, 4, 6), per_row=False)
    _check_bwn(fn, torch.tensor([[1.0, -3.0], [0.5, 0.5]]), per_row=False)  # the docstring example
    _check_bwn(fn, randn(12, 3, 5) * 0.02, per_row=False)  # the size of BERT's weights


def _q1_rows(fn):
    scales = torch.tensor([0.1, 1.0, 3.0, 0.5, 2.0]).unsqueeze(1)
    _check_bwn(fn, randn(13, 5, 8) * scales, per_row=True)
    _check_bwn(fn, torch.tensor([[1.0, -3.0], [0.5, 0.5]]), per_row=True)


def _q1_zero(fn):
    W = randn(14, 4, 6)
    W[0, 0] = W[1, 3] = W[3, 5] = 0.0
    _check_bwn(fn, W, per_row=False)
    _check_bwn(fn, W, per_row=True)


def _q2(fn):
    _check_threshold(fn, randn(21, 6, 9))
    _check_threshold(fn, randn(22, 30, 20) * 0.05 + 0.01)
    _check_threshold(fn, torch.tensor([[1.0, -3.0], [0.5, 0.5]]))


def _q3_mask(fn):
    _check_twn(fn, randn(31, 8, 10), values=False)
    _check_twn(fn, randn(32, 20, 16) * 0.03, values=False)


def _q3_values(fn):
    _check_twn(fn, torch.tensor([[1.0, -3.0], [0.5, 0.5]]), values=True)
    _check_twn(fn, randn(33, 8, 10), values=True)
    _check_twn(fn, randn(34, 20, 16) * 0.03, values=True)


# --------------------------------------------------------------------------------- questions
q1 = Question(
    "q1", "bwn", "BWN with its optimal scale",
    checks=[
        Check("one scale for the whole tensor (per_row=False)", 1, _q1_tensor),
        Check("one scale per output row (per_row=True), rows of different sizes", 2, _q1_rows),
        Check("sign(0) = +1: a zero weight becomes +alpha", 1, _q1_zero),
    ],
    hints=[
        """Two pieces: the signs, `torch.where(W >= 0, 1.0, -1.0)` (not torch.sign, which maps 0 to 0),
        and the scale, `W.abs().mean()`. Multiply them.""",
        """Per row: `W.abs().mean(dim=1, keepdim=True)` has shape (out_features, 1), so it broadcasts
        over each row of the (out_features, in_features) weight.""",
    ],
    solution=bwn,
)

q2 = Question(
    "q2", "twn_threshold", "TWN's threshold",
    checks=[Check("Delta = 0.7 * mean|W| on three weights", 1, _q2)],
    hints=["""One line: 0.7 times the mean of the absolute values. `W.abs().mean()`."""],
    solution=twn_threshold,
)

q3 = Question(
    "q3", "twn", "TWN: ternary weights",
    checks=[
        Check("which weights become 0 (|W| <= Delta) and the signs of the others", 1, _q3_mask),
        Check("the scale alpha = mean of |W| over the weights above the threshold", 2, _q3_values),
    ],
    hints=[
        """Build the mask of survivors, `mask = W.abs() > delta`. The ternary pattern is
        `(W > delta).float() - (W < -delta).float()`: +1, 0 or -1.""",
        """alpha is a mean over the survivors only: `W.abs()[mask].mean()` (or
        `(W.abs() * mask).sum() / mask.sum()`), not `W.abs().mean()`.""",
    ],
    solution=twn,
)

q4 = Question(
    "q4", "ClippedSignSTE", "A clipped straight-through sign",
    checks=[
        Check("a torch.autograd.Function whose forward is sign with sign(0) = +1", 1, _ste_forward),
        Check("the gradient: dL/dx = dL/dy * 1{|x| <= 1}", 2, _ste_gradient),
        Check("the boundary: at |x| = 1 the gradient still passes", 1, _ste_boundary),
    ],
    hints=[
        """In forward, `ctx.save_for_backward(x)` keeps the input for later, then return
        `torch.where(x >= 0, 1.0, -1.0)` built with torch.ones_like(x) (so the dtype is x's).""",
        """In backward, `(x,) = ctx.saved_tensors`, then return `grad_output * (x.abs() <= 1)` as
        floats. Save the input, not the output: |sign(x)| is always 1.""",
    ],
    solution=ClippedSignSTE,
    congrats="This is larq's ste_sign(x, clip_value=1.0), and the activation binarizer of BiBERT.",
)

EXERCISE = Exercise("02_quantizers", "Weight quantizers (BWN, TWN) and a straight-through sign", [q1, q2, q3, q4])


# ---------------------------------------------------------------------------------- mistakes
def _bwn_always_per_tensor(W, per_row=False):
    return W.abs().mean() * _sign(W)


def _bwn_torch_sign(W, per_row=False):
    alpha = W.abs().mean(dim=1, keepdim=True) if per_row else W.abs().mean()
    return alpha * torch.sign(W)


def _bwn_per_column(W, per_row=False):
    alpha = W.abs().mean(dim=0, keepdim=True) if per_row else W.abs().mean()
    return alpha * _sign(W)


def _bwn_no_scale(W, per_row=False):
    return _sign(W)


def _threshold_half(W):
    return 0.5 * W.abs().mean()


def _threshold_no_abs(W):
    return 0.7 * W.mean()


def _twn_mean_all(W):
    delta = 0.7 * W.abs().mean()
    alpha = W.abs().mean()  # over all weights: wrong
    return alpha * ((W > delta).float() - (W < -delta).float())


def _twn_wrong_threshold(W):
    delta = 0.5 * W.abs().mean()
    mask = W.abs() > delta
    return W.abs()[mask].mean() * ((W > delta).float() - (W < -delta).float())


class _SteNoClip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


class _SteStrict(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() < 1).float()


class _SteClipOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = _sign(x)
        ctx.save_for_backward(y)  # saves the output: |y| <= 1 always, the clip does nothing
        return y

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output * (y.abs() <= 1).float()


class _SteTorchSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).float()


MISTAKES = [
    Mistake("q1", "per_tensor_when_per_row", "ignores per_row: one scale for the whole tensor",
            _bwn_always_per_tensor, "one scale for the whole tensor"),
    Mistake("q1", "torch_sign", "torch.sign maps 0 to 0", _bwn_torch_sign, "torch.sign(0) = 0"),
    Mistake("q1", "per_column", "mean over dim=0", _bwn_per_column, "dim=0"),
    Mistake("q1", "no_scale", "sign(W) without alpha", _bwn_no_scale, "without the scale"),
    Mistake("q2", "wrong_constant", "0.5 * mean|W| instead of 0.7", _threshold_half, "constant is 0.7"),
    Mistake("q2", "no_abs", "0.7 * mean(W)", _threshold_no_abs, "absolute value"),
    Mistake("q3", "mean_of_all", "alpha = mean of all |W|", _twn_mean_all, "above the threshold"),
    Mistake("q3", "wrong_threshold", "threshold 0.5 * mean|W|", _twn_wrong_threshold, "threshold right"),
    Mistake("q4", "no_clip", "identity backward, no clip", _SteNoClip, "clip 1{|x| <= 1} is missing"),
    Mistake("q4", "clip_on_output", "saves the output, so the clip never triggers", _SteClipOutput,
            "save the input x"),
    Mistake("q4", "strict_boundary", "1{|x| < 1} instead of 1{|x| <= 1}", _SteStrict, "inclusive"),
    Mistake("q4", "torch_sign_forward", "forward torch.sign: sign(0) = 0", _SteTorchSign, "sign(0) = +1"),
]
