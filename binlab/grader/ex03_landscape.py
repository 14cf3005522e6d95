"""Exercise 3 (``exercises/03_landscape.ipynb``): loss landscapes and the top Hessian eigenvalue.

Questions (torch in, torch out; the models are small ``nn.Module`` s the grader builds):
* q1 ``perturbation_direction(W)``: BinaryBERT's direction, mean|W| * 1 (an all-ones tensor scaled by the
  mean ABSOLUTE value of W; methods.md §2.5);
* q2 ``loss_grid(model, loss_fn, names, coords)``: the loss on a 2-D grid of perturbations of two weights,
  ``losses[i, j]`` with ``W1 + coords[i] * mean|W1| * 1`` and ``W2 + coords[j] * mean|W2| * 1``, the
  weights restored bit for bit afterwards, also when ``loss_fn`` raises;
* q3 ``hessian_vector_product(loss_fn, w, v)``: H v by double backward (Pearlmutter's trick);
* q4 ``power_iteration(hvp, v0, max_iter, tol)``: the dominant eigenvalue of a symmetric operator from
  matrix-vector products only, normalising every step and keeping the eigenvalue's sign.

The library versions are :mod:`binlab.analysis.landscape` (``loss_grid``, ``make_hvp``, ``power_iteration``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from binlab.grader.checks import close, generator, one_number, randn, show, tensor_of_shape
from binlab.grader.core import Check, CheckFailed, Exercise, Mistake, NotAttempted, Question, call, describe_error

__all__ = ["q1", "q2", "q3", "q4", "EXERCISE", "MISTAKES",
           "perturbation_direction", "loss_grid", "hessian_vector_product", "power_iteration"]


# ------------------------------------------------------------------------ reference solutions
def perturbation_direction(W):
    """BinaryBERT's perturbation direction for a weight W: an all-ones tensor times mean|W|.

        d = mean(|W|) * 1        (same shape as W; 1 = all ones)

    Moving x units along d shifts every entry of W by x * mean|W|. Example: W = [[1, -3], [0.5, 0.5]]
    gives mean|W| = 1.25 and d = [[1.25, 1.25], [1.25, 1.25]].
    """
    return W.detach().abs().mean() * torch.ones_like(W)


def loss_grid(model, loss_fn, names, coords):
    """The loss on a 2-D grid of perturbations of two weights of ``model``.

        W1, W2 = the parameters called names[0], names[1]   (dict(model.named_parameters()))
        losses[i, j] = loss_fn(model)  with  W1 + coords[i] * mean|W1| * 1
                                       and   W2 + coords[j] * mean|W2| * 1

    Returns a tensor of shape (len(coords), len(coords)). mean|W| is the mean of the ORIGINAL weights.
    Afterwards every weight is exactly what it was, also if loss_fn raises (its exception is passed
    on): save copies first and copy them back in a ``finally`` block.
    """
    params = dict(model.named_parameters())
    W1, W2 = params[names[0]], params[names[1]]
    saved1, saved2 = W1.detach().clone(), W2.detach().clone()
    d1 = saved1.abs().mean() * torch.ones_like(saved1)
    d2 = saved2.abs().mean() * torch.ones_like(saved2)
    losses = torch.zeros(len(coords), len(coords))
    try:
        with torch.no_grad():
            for i, x in enumerate(coords):
                for j, y in enumerate(coords):
                    W1.copy_(saved1 + x * d1)  # from the saved copy: no drift from step to step
                    W2.copy_(saved2 + y * d2)
                    losses[i, j] = loss_fn(model)
    finally:
        with torch.no_grad():
            W1.copy_(saved1)
            W2.copy_(saved2)
    return losses


def hessian_vector_product(loss_fn, w, v):
    """H v, with H the Hessian of loss_fn at w, without ever building H (Pearlmutter's trick).

        g   = dL/dw                    (keep its graph: create_graph=True)
        H v = d(g . v)/dw              (a second backward pass, through the first one)

    ``loss_fn(w)`` returns a scalar tensor; ``w`` requires grad; ``v`` has w's shape. Returns a tensor of
    w's shape. Example: loss = 1/2 w^T A w with A symmetric has H = A, so the answer is A @ v.
    """
    loss = loss_fn(w)
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    (hv,) = torch.autograd.grad(g, w, grad_outputs=v)  # = d(g . v)/dw
    return hv.detach()


def power_iteration(hvp, v0, max_iter=100, tol=1e-6):
    """The dominant eigenvalue (largest |lambda|) of a symmetric matrix H known only through hvp(v) = H v.

        v = v0 / ||v0||
        repeat at most max_iter times:
            w = hvp(v)
            lam = v . w                       (the Rayleigh quotient; ||v|| = 1)
            stop if |lam - lam_prev| <= tol * |lam|
            v = w / ||w||                     (normalise EVERY step)
        return lam                            (a float, with its sign)

    Example: H = diag(5, 2, 1) gives 5; H = diag(-6, 3, 1) gives -6 (dominant = largest magnitude).
    """
    v = v0 / v0.norm()
    lam_prev = None
    lam = 0.0
    for _ in range(max_iter):
        w = hvp(v)
        lam = float((v * w).sum())
        if lam_prev is not None and abs(lam - lam_prev) <= tol * abs(lam):
            break
        lam_prev = lam
        v = w / w.norm()
    return lam


# ---------------------------------------------------------------------------------------- q1
def _check_direction(fn, W):
    on = f"W of shape {tuple(W.shape)}"
    W_in = W.clone()
    got = tensor_of_shape(call(fn, W_in, on=on), "perturbation_direction", on, W.shape)
    if not torch.equal(W_in, W):
        raise CheckFailed(f"perturbation_direction changed its input W in place (on {on}).")
    expected = W.abs().mean() * torch.ones_like(W)
    if close(got, expected):
        return
    msg = f"on {on}: expected every entry to be mean|W| = {W.abs().mean().item():.5g}, got {show(got)}."
    if close(got, W.mean() * torch.ones_like(W)):
        msg += (" That is mean(W): take the absolute value first, mean(|W|). Positive and negative weights"
                " cancel in mean(W), which can be close to 0 or even negative.")
    elif close(got, torch.ones_like(W)):
        msg += " That is the all-ones tensor without the scale mean|W|."
    elif close(got, W.abs().mean() * torch.sign(W)):
        msg += " The direction is the same for every entry (all ones), not sign(W)."
    raise CheckFailed(msg)


def _q1_values(fn):
    _check_direction(fn, randn(11, 4, 6) * 0.05 + 0.02)  # nonzero mean, BERT-sized entries
    _check_direction(fn, torch.tensor([[1.0, -3.0], [0.5, 0.5]]))  # the docstring example


def _q1_shapes(fn):
    _check_direction(fn, randn(12, 3, 2, 5) - 0.4)
    _check_direction(fn, randn(13, 7))


# ---------------------------------------------------------------------------------------- q2
def _mlp(seed, sizes=(3, 5, 2)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    net = nn.Sequential(*layers[:-1])
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)  # a nonzero mean: mean(W) and mean|W| differ clearly
    return net


def _mlp_loss(seed, n=12, d=3):
    X = randn(seed, n, d)
    Y = torch.randint(0, 2, (n,), generator=generator(seed + 1))

    def loss_fn(model):
        return nn.functional.cross_entropy(model(X), Y)

    return loss_fn


def _grid_with(model, loss_fn, names, coords, direction):
    """The reference grid with another direction (to diagnose a mistake), on a copy of the model."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    W1, W2 = params[names[0]], params[names[1]]
    s1, s2 = W1.detach().clone(), W2.detach().clone()
    d1, d2 = direction(s1), direction(s2)
    out = torch.zeros(len(coords), len(coords), dtype=torch.float64)
    with torch.no_grad():
        for i, x in enumerate(coords):
            for j, y in enumerate(coords):
                W1.copy_(s1 + x * d1)
                W2.copy_(s2 + y * d2)
                out[i, j] = float(loss_fn(model))
    return out


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _restored(model, before):
    """'' if every tensor is bit-identical to ``before``, else a description of the worst difference."""
    worst, where = 0.0, ""
    for k, v in model.state_dict().items():
        if not torch.equal(v, before[k]):
            diff = (v.double() - before[k].double()).abs().max().item()
            if diff >= worst:
                worst, where = diff, k
    return "" if not where else f"{where} differs from its original by up to {worst:.3g}"


def _check_grid_values(fn, model, loss_fn, names, coords):
    on = f"a small network, names={names}, coords={[round(c, 3) for c in coords]}"
    expected = _grid_with(model, loss_fn, names, coords, lambda W: W.abs().mean() * torch.ones_like(W))
    n = len(coords)
    got = tensor_of_shape(call(fn, model, loss_fn, list(names), list(coords), on=on), "loss_grid", on, (n, n))
    if close(got, expected, rtol=1e-4, atol=1e-6):
        return
    c = n // 2 if 0.0 in coords else None
    bad = (~torch.isclose(got, expected, rtol=1e-4, atol=1e-6)).nonzero()[0].tolist()
    i, j = bad
    msg = (f"on {on}: losses[{i}, {j}] (x = {coords[i]:g}, y = {coords[j]:g}) should be {expected[i, j].item():.6g}, "
           f"got {got[i, j].item():.6g}.")
    if close(got, expected.T):
        msg += (" Your grid is transposed: rows (the first index i) go with coords[i] for the FIRST weight "
                "names[0], columns with the second.")
    elif close(got, _grid_with(model, loss_fn, names, coords, lambda W: W.mean() * torch.ones_like(W))):
        msg += " You scaled the direction by mean(W); the paper uses the mean ABSOLUTE value, mean|W|."
    elif close(got, _grid_with(model, loss_fn, names, coords, torch.ones_like)):
        msg += " The direction is all ones TIMES mean|W| (so that x = 1 is a shift of a typical weight's size)."
    elif c is not None and torch.allclose(got[c], got[c, c].expand(n).double(), rtol=1e-6) and \
            not torch.allclose(expected[c], expected[c, c].expand(n), rtol=1e-6):
        msg += " Moving y changes nothing in your grid: is the second weight (names[1]) perturbed?"
    elif torch.allclose(got, got[0, 0].expand(n, n).double()):
        msg += " Your grid is constant: are the weights perturbed in place (W.copy_(...), inside torch.no_grad())?"
    raise CheckFailed(msg)


def _q2_values(fn):
    model, loss_fn = _mlp(21), _mlp_loss(22)
    _check_grid_values(fn, model, loss_fn, ("0.weight", "2.weight"), [-1.0, -0.5, 0.0, 0.5, 1.0])


def _q2_other(fn):
    model, loss_fn = _mlp(23, (3, 4, 4, 2)), _mlp_loss(24)
    _check_grid_values(fn, model, loss_fn, ("4.weight", "0.weight"), [-0.4, 0.0, 0.2])


def _q2_restore(fn):
    model, loss_fn = _mlp(25), _mlp_loss(26)
    before = _state(model)
    coords = [-0.7, 0.0, 0.3, 1.1]
    call(fn, model, loss_fn, ["0.weight", "2.weight"], coords, on="a small network")
    problem = _restored(model, before)
    if not problem:
        return
    worst = float(problem.rsplit(" ", 1)[1])
    msg = f"after loss_grid returned, the weights were not restored exactly: {problem}."
    if worst < 1e-4:
        msg += (" Undoing a perturbation by subtracting it again is not exact in floating point"
                " ((w + d) - d != w): restore from saved copies, W.copy_(saved).")
    else:
        msg += (" The model is left perturbed. Save copies before the loop (W.detach().clone()) and copy them"
                " back at the end (W.copy_(saved) inside torch.no_grad()).")
    raise CheckFailed(msg)


class _GraderStop(Exception):
    """What the grader's loss_fn raises in the middle of the grid."""


def _q2_exception(fn):
    model, inner = _mlp(27), _mlp_loss(28)
    before = _state(model)
    calls = []

    def loss_fn(m):
        calls.append(1)
        if len(calls) == 6:  # grid point [1, 2]: x = 0, y = 1, so W2 is perturbed
            raise _GraderStop("the grader's loss_fn failed on purpose at its 6th call")
        return inner(m)

    on = "a loss_fn that raises at its 6th call (grid point [1, 2] of a 3x3 grid)"
    try:
        fn(model, loss_fn, ["0.weight", "2.weight"], [-1.0, 0.0, 1.0])
    except _GraderStop:
        pass
    except NotImplementedError as e:
        raise NotAttempted(f"loss_grid still raises NotImplementedError: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"loss_grid raised {describe_error(e)} on {on}.") from e
    else:
        raise CheckFailed(f"on {on}: loss_grid returned normally. Let the exception pass on to the caller "
                          "(try/finally restores the weights without catching it).")
    problem = _restored(model, before)
    if problem:
        raise CheckFailed(f"on {on}: after the exception the weights were left perturbed ({problem}). "
                          "Restore them in a finally block: try: <the loops> finally: <copy the saved weights "
                          "back>, so that they come back whatever happens inside.")


# ---------------------------------------------------------------------------------------- q3
def _call_hvp(fn, loss_fn, w, v, on):
    """The learner's H v as a float64 tensor of w's shape; a graph error gets the create_graph hint."""
    try:
        got = call(fn, loss_fn, w, v, on=on)
    except CheckFailed as e:
        text = str(e)
        if "does not require grad" in text or "does not have a grad_fn" in text:
            text += (" The second backward pass differentiates the gradient itself, so the first one must build"
                     " a graph: torch.autograd.grad(loss, w, create_graph=True).")
        raise CheckFailed(text) from None
    return tensor_of_shape(got, "hessian_vector_product", on, w.shape)


def _check_hvp(fn, loss_fn, w0, v, expected, on):
    w = w0.clone().requires_grad_(True)
    got = _call_hvp(fn, loss_fn, w, v.clone(), on)
    if not torch.equal(w.detach(), w0):
        raise CheckFailed(f"hessian_vector_product changed w (on {on}).")
    if close(got, expected, rtol=1e-5, atol=1e-8):
        return
    msg = f"on {on}: expected H v = {show(expected)}, got {show(got)}."
    w2 = w0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(w2), w2)
    if close(got, g.detach()):
        msg += (" That is the gradient dL/dw. Differentiate once more: H v = d(g . v)/dw, e.g. "
                "torch.autograd.grad(g, w, grad_outputs=v).")
    elif close(got, (g.detach() * v)):
        msg += " That is g * v elementwise; H v needs a second backward pass through g."
    raise CheckFailed(msg)


def _quadratic(seed, n=6):
    M = randn(seed, n, n, dtype=torch.float64)
    A = M @ M.T / n + torch.eye(n, dtype=torch.float64)
    b = randn(seed + 1, n, dtype=torch.float64)

    def loss_fn(w):
        return 0.5 * w @ A @ w + b @ w

    return A, loss_fn


def _q3_quadratic(fn):
    A, loss_fn = _quadratic(31)
    w0, v = randn(32, 6, dtype=torch.float64), randn(33, 6, dtype=torch.float64)
    _check_hvp(fn, loss_fn, w0, v, A @ v, "loss = 1/2 w^T A w + b^T w (H = A), w and v of shape (6,)")


def _tanh_loss(seed):
    X = randn(seed, 8, 3, dtype=torch.float64)
    y = randn(seed + 1, 8, 2, dtype=torch.float64)

    def loss_fn(w):  # w: (3, 2)
        return ((torch.tanh(X @ w) - y) ** 2).mean()

    return loss_fn


def _q3_network(fn):
    loss_fn = _tanh_loss(34)
    w0, v = randn(35, 3, 2, dtype=torch.float64), randn(36, 3, 2, dtype=torch.float64)
    H = torch.autograd.functional.hessian(loss_fn, w0).reshape(6, 6)
    expected = (H @ v.reshape(6)).reshape(3, 2)
    _check_hvp(fn, loss_fn, w0, v, expected, "loss = mean((tanh(X w) - y)^2), w and v of shape (3, 2)")


def _q3_twice(fn):
    loss_fn = _tanh_loss(37)
    w = randn(38, 3, 2, dtype=torch.float64).requires_grad_(True)
    v = randn(39, 3, 2, dtype=torch.float64)
    on = "the same w and v twice in a row"
    first = _call_hvp(fn, loss_fn, w, v, on)
    second = _call_hvp(fn, loss_fn, w, v, on)
    if not close(first, second, rtol=1e-9, atol=1e-12):
        raise CheckFailed(f"on {on}: the two answers differ ({show(first)} then {show(second)}). Gradients "
                          "accumulate in w.grad when you call .backward(); use torch.autograd.grad, which "
                          "returns them instead of adding them to w.grad.")


# ---------------------------------------------------------------------------------------- q4
class _Counter:
    """hvp(v) = H v for a fixed matrix H, counting the calls."""

    def __init__(self, H):
        self.H, self.calls = H, 0

    def __call__(self, v):
        self.calls += 1
        return self.H @ v


def _sym(eigenvalues, seed, dtype=torch.float64):
    n = len(eigenvalues)
    Q, _ = torch.linalg.qr(randn(seed, n, n, dtype=torch.float64))
    return ((Q * torch.tensor(eigenvalues, dtype=torch.float64)) @ Q.T).to(dtype)


def _check_power(fn, H, v0, expected, on, max_iter=1000, tol=1e-10, rtol=1e-4):
    hvp = _Counter(H)
    v_in = v0.clone()
    got = one_number(call(fn, hvp, v_in, max_iter=max_iter, tol=tol, on=on), "power_iteration", on,
                     "one number, the eigenvalue")
    if not torch.equal(v_in, v0):
        raise CheckFailed(f"power_iteration changed v0 in place (on {on}); work on a copy (v = v0 / v0.norm()).")
    if abs(got - expected) <= rtol * abs(expected):
        return
    msg = f"on {on}: expected the dominant eigenvalue {expected:.6g}, got {got:.6g}."
    if got != got or abs(got) == float("inf"):
        msg += (" Not a finite number: without normalising v every step, H^k v0 grows like lambda^k and"
                " overflows. Normalise: v = w / w.norm().")
    elif abs(got + expected) <= rtol * abs(expected):
        msg += (" Right size, wrong sign: the eigenvalue is the Rayleigh quotient v . (H v) with ||v|| = 1,"
                " which keeps the sign; ||H v|| is always positive.")
    elif hvp.calls <= 2 and max_iter > 2:
        msg += f" Your function called hvp only {hvp.calls} time(s): does the loop run until convergence?"
    raise CheckFailed(msg)


def _q4_diagonal(fn):
    H = torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    _check_power(fn, H, torch.ones(4, dtype=torch.float64), 5.0, "H = diag(5, 2, 1, 0.5), v0 = all ones")


def _q4_symmetric(fn):
    eig = [3.0, 2.4, 1.7, 1.0, 0.6, 0.3, 0.1, 0.05] + [0.01] * 12
    H = _sym(eig, 41)
    v0 = randn(42, 20, dtype=torch.float64)
    _check_power(fn, H, v0, 3.0, "a random symmetric 20x20 H with eigenvalues 3, 2.4, 1.7, ...")


def _q4_negative(fn):
    H = _sym([-6.0, 3.0, 1.0, 0.5], 43)
    _check_power(fn, H, randn(44, 4, dtype=torch.float64), -6.0,
                 "a symmetric H with eigenvalues -6, 3, 1, 0.5 (the dominant one is negative)")


def _q4_large(fn):
    H = _sym([3e15, 2e15, 1.0], 45, dtype=torch.float32)
    _check_power(fn, H, torch.ones(3), float(torch.linalg.eigvalsh(H.double())[-1]),
                 "a float32 H with eigenvalues 3e15, 2e15, 1 (an unnormalised vector overflows)", rtol=1e-3)


def _q4_stopping(fn):
    H = _sym([2.0, 1.98, 1.0], 46)  # slow: |lambda2 / lambda1| = 0.99
    hvp = _Counter(H)
    on = "eigenvalues 2, 1.98, 1 (slow convergence), max_iter=7, tol=1e-12"
    call(fn, hvp, randn(47, 3, dtype=torch.float64), max_iter=7, tol=1e-12, on=on)
    if hvp.calls > 8:
        raise CheckFailed(f"on {on}: hvp was called {hvp.calls} times; at most max_iter = 7 products are allowed.")
    H = torch.diag(torch.tensor([4.0, 1.0, 0.5], dtype=torch.float64))
    hvp = _Counter(H)
    on = "H = diag(4, 1, 0.5) and v0 = (1, 0, 0), already the top eigenvector, tol=1e-6"
    v0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    got = one_number(call(fn, hvp, v0, max_iter=1000, tol=1e-6, on=on), "power_iteration", on,
                     "one number, the eigenvalue")
    if abs(got - 4.0) > 1e-6:
        raise CheckFailed(f"on {on}: expected 4, got {got:.6g}.")
    if hvp.calls > 3:
        raise CheckFailed(f"on {on}: the estimate is 4 from the first product on, but hvp was called {hvp.calls} "
                          "times. Stop when |lam - lam_prev| <= tol * |lam|.")


# --------------------------------------------------------------------------------- questions
q1 = Question(
    "q1", "perturbation_direction", "The perturbation direction mean|W| * 1",
    checks=[
        Check("mean|W| in every entry (weights with a nonzero mean, and the worked example)", 1, _q1_values),
        Check("any shape, W unchanged", 1, _q1_shapes),
    ],
    hints=["""`W.abs().mean()` is one number; `torch.ones_like(W)` has W's shape. Multiply them."""],
    solution=perturbation_direction,
)

q2 = Question(
    "q2", "loss_grid", "The 2-D loss grid, weights restored",
    checks=[
        Check("the losses on a 5x5 grid (rows: names[0], columns: names[1])", 2, _q2_values),
        Check("another network, names in the other order, a 3x3 grid", 1, _q2_other),
        Check("the weights are restored exactly afterwards", 1, _q2_restore),
        Check("the weights are restored when loss_fn raises (and the exception is passed on)", 1, _q2_exception),
    ],
    hints=[
        """Get the two parameters with `params = dict(model.named_parameters())`. Save
        `saved = W.detach().clone()` for each, and compute both directions from the saved copies.""",
        """Inside `with torch.no_grad():` set each grid point from the saved copy, `W1.copy_(saved1 + x * d1)`,
        never by adding to the current value (that drifts). Put the loops in `try:` and the two
        `W.copy_(saved)` in `finally:`.""",
    ],
    solution=loss_grid,
)

q3 = Question(
    "q3", "hessian_vector_product", "Hessian-vector products by double backward",
    checks=[
        Check("a quadratic: H v = A v", 1, _q3_quadratic),
        Check("a small tanh network, against the full Hessian", 1, _q3_network),
        Check("the same answer when called twice (no gradient accumulation)", 1, _q3_twice),
    ],
    hints=[
        """Two calls of `torch.autograd.grad`. The first, `torch.autograd.grad(loss, w, create_graph=True)`,
        returns a tuple with the gradient g, and keeps the graph that computed it.""",
        """The second differentiates g . v: `torch.autograd.grad(g, w, grad_outputs=v)` (or
        `torch.autograd.grad((g * v).sum(), w)`). Return the result detached.""",
    ],
    solution=hessian_vector_product,
)

q4 = Question(
    "q4", "power_iteration", "Power iteration: the top eigenvalue",
    checks=[
        Check("a diagonal matrix", 1, _q4_diagonal),
        Check("a random symmetric 20x20 matrix", 1, _q4_symmetric),
        Check("a dominant NEGATIVE eigenvalue comes back negative", 1, _q4_negative),
        Check("huge eigenvalues in float32 (normalise every step)", 1, _q4_large),
        Check("stops after max_iter products, and early once converged", 1, _q4_stopping),
    ],
    hints=[
        """Start from `v = v0 / v0.norm()`. Each step: `w = hvp(v)`, `lam = (v * w).sum()`, then
        `v = w / w.norm()`. Return `float(lam)`.""",
        """Keep the previous estimate and `break` when `abs(lam - lam_prev) <= tol * abs(lam)`. The
        Rayleigh quotient keeps the sign of the eigenvalue; `w.norm()` would lose it.""",
    ],
    solution=power_iteration,
)

EXERCISE = Exercise("03_landscape", "Loss landscapes and the top Hessian eigenvalue", [q1, q2, q3, q4])


# ------------------------------------------------------------------------------ known mistakes
def _direction_mean(W):
    return W.mean() * torch.ones_like(W)


def _direction_unscaled(W):
    return torch.ones_like(W)


def _grid_mean_not_abs(model, loss_fn, names, coords):
    params = dict(model.named_parameters())
    W1, W2 = params[names[0]], params[names[1]]
    s1, s2 = W1.detach().clone(), W2.detach().clone()
    losses = torch.zeros(len(coords), len(coords))
    try:
        with torch.no_grad():
            for i, x in enumerate(coords):
                for j, y in enumerate(coords):
                    W1.copy_(s1 + x * s1.mean())  # mean(W), not mean|W|
                    W2.copy_(s2 + y * s2.mean())
                    losses[i, j] = loss_fn(model)
    finally:
        with torch.no_grad():
            W1.copy_(s1)
            W2.copy_(s2)
    return losses


def _grid_no_restore(model, loss_fn, names, coords):
    params = dict(model.named_parameters())
    W1, W2 = params[names[0]], params[names[1]]
    s1, s2 = W1.detach().clone(), W2.detach().clone()
    losses = torch.zeros(len(coords), len(coords))
    with torch.no_grad():
        for i, x in enumerate(coords):
            for j, y in enumerate(coords):
                W1.copy_(s1 + x * s1.abs().mean())
                W2.copy_(s2 + y * s2.abs().mean())
                losses[i, j] = loss_fn(model)
    return losses  # the weights stay at the last grid point


def _grid_subtract(model, loss_fn, names, coords):
    params = dict(model.named_parameters())
    W1, W2 = params[names[0]], params[names[1]]
    d1, d2 = W1.detach().abs().mean(), W2.detach().abs().mean()
    losses = torch.zeros(len(coords), len(coords))
    with torch.no_grad():
        for i, x in enumerate(coords):
            for j, y in enumerate(coords):
                W1 += x * d1
                W2 += y * d2
                losses[i, j] = loss_fn(model)
                W1 -= x * d1  # (w + d) - d is not always w
                W2 -= y * d2
    return losses


def _grid_no_finally(model, loss_fn, names, coords):
    params = dict(model.named_parameters())
    W1, W2 = params[names[0]], params[names[1]]
    s1, s2 = W1.detach().clone(), W2.detach().clone()
    losses = torch.zeros(len(coords), len(coords))
    with torch.no_grad():
        for i, x in enumerate(coords):
            for j, y in enumerate(coords):
                W1.copy_(s1 + x * s1.abs().mean())
                W2.copy_(s2 + y * s2.abs().mean())
                losses[i, j] = loss_fn(model)
        W1.copy_(s1)  # skipped when loss_fn raises
        W2.copy_(s2)
    return losses


def _grid_transposed(model, loss_fn, names, coords):
    return loss_grid(model, loss_fn, names, coords).T


def _hvp_no_create_graph(loss_fn, w, v):
    (g,) = torch.autograd.grad(loss_fn(w), w)  # no graph: g cannot be differentiated again
    (hv,) = torch.autograd.grad(g, w, grad_outputs=v)
    return hv


def _hvp_gradient(loss_fn, w, v):
    (g,) = torch.autograd.grad(loss_fn(w), w)
    return g


def _hvp_backward_accumulates(loss_fn, w, v):
    loss_fn(w).backward(create_graph=True)
    (w.grad * v).sum().backward()  # w.grad now holds g + H v, and keeps growing
    return w.grad.detach().clone()


def _power_no_normalise(hvp, v0, max_iter=100, tol=1e-6):
    v = v0.clone()
    lam_prev = None
    lam = 0.0
    for _ in range(max_iter):
        w = hvp(v)
        lam = float((v * w).sum() / (v * v).sum())  # right formula, but v grows like lambda^k
        if lam_prev is not None and abs(lam - lam_prev) <= tol * abs(lam):
            break
        lam_prev = lam
        v = w
    return lam


def _power_norm(hvp, v0, max_iter=100, tol=1e-6):
    v = v0 / v0.norm()
    lam_prev = None
    lam = 0.0
    for _ in range(max_iter):
        w = hvp(v)
        lam = float(w.norm())  # ||H v||: always positive
        if lam_prev is not None and abs(lam - lam_prev) <= tol * abs(lam):
            break
        lam_prev = lam
        v = w / w.norm()
    return lam


def _power_negated(hvp, v0, max_iter=100, tol=1e-6):
    return -power_iteration(hvp, v0, max_iter, tol)


def _power_ignores_tol(hvp, v0, max_iter=100, tol=1e-6):
    v = v0 / v0.norm()
    lam = 0.0
    for _ in range(max_iter):  # always max_iter products
        w = hvp(v)
        lam = float((v * w).sum())
        v = w / w.norm()
    return lam


MISTAKES = [
    Mistake("q1", "mean_not_abs", "mean(W) * 1 instead of mean|W| * 1", _direction_mean, "absolute value"),
    Mistake("q1", "unscaled", "all ones, no scale", _direction_unscaled, "without the scale"),
    Mistake("q2", "mean_not_abs", "scales the direction by mean(W)", _grid_mean_not_abs, "mean absolute value"),
    Mistake("q2", "no_restore", "leaves the weights at the last grid point", _grid_no_restore, "save copies"),
    Mistake("q2", "subtract_to_restore", "undoes each perturbation by subtracting it", _grid_subtract,
            "not exact in floating point"),
    Mistake("q2", "no_finally", "restores only when nothing raises", _grid_no_finally, "finally block"),
    Mistake("q2", "transposed", "losses[j, i] instead of losses[i, j]", _grid_transposed, "transposed"),
    Mistake("q3", "no_create_graph", "first backward without create_graph=True", _hvp_no_create_graph,
            "create_graph=True"),
    Mistake("q3", "returns_gradient", "returns the gradient, not H v", _hvp_gradient, "that is the gradient"),
    Mistake("q3", "backward_accumulates", ".backward() accumulates into w.grad", _hvp_backward_accumulates,
            "accumulate"),
    Mistake("q4", "no_normalisation", "never normalises v", _power_no_normalise, "normalise"),
    Mistake("q4", "norm_not_rayleigh", "returns ||H v||: loses the sign", _power_norm, "wrong sign"),
    Mistake("q4", "negated", "returns -lambda", _power_negated, "wrong sign"),
    Mistake("q4", "ignores_tol", "always runs max_iter products", _power_ignores_tol, "stop when"),
]
