"""Exercise 4 (``exercises/04_splitting.ipynb``): ternary weight splitting, derived and implemented.

Questions (torch tensors in; one scale per tensor, as BinaryBERT's linear layers):
* q1 ``ternary_sets(W)``: the masks I = {TWN(W) != 0}, J = {TWN(W) = 0, W > 0}, K = {TWN(W) = 0, W <= 0};
  an entry exactly at the threshold (|W| = Delta) is zeroed by TWN, so it is not in I;
* q2 ``tws_coefficients(W)``: a = (S_I + S_K - S_J) / (2 S_I) and b = ((n / |I|) S_I - sum|W|) / (2 (|J| + |K|)),
  the values that make BWN(W1) + BWN(W2) = TWN(W) (methods.md §2.5). The notebook gives the two conditions
  (alpha_1 = alpha_2, alpha_1 + alpha_2 = alpha_t) and the learner solves them; the last hint shows the result.
  The paper prints a with J and K swapped; that answer loses points (the checks use skewed weights, where S_J
  and S_K clearly differ);
* q3 ``tws_split(W)``: the latent halves W1, W2 (W1 + W2 = W and BWN(W1) + BWN(W2) = TWN(W)).

Q2 and Q3 may call the learner's earlier answers (``ternary_sets``, ``tws_coefficients``); when one of those
fails its own check, the grader says so and grades the later answer with the reference version as well
(``uses`` in :class:`~binlab.grader.core.Question`), so a right formula is not blamed for wrong sets.

The library versions are :mod:`binlab.methods.splitting` (``tws_a``, ``tws_b``, ``tws_split``); the checks compare
with them and with the two equivalences themselves.
"""

from __future__ import annotations

import torch

from binlab.grader.checks import randn
from binlab.grader.core import Check, CheckFailed, Exercise, Mistake, Question, call

__all__ = ["q1", "q2", "q3", "EXERCISE", "MISTAKES", "ternary_sets", "tws_coefficients", "tws_split",
           "WORKED_EXAMPLE"]

#: The worked example of the notebook: mean|W| = 0.7, Delta = 0.49, I = {1, -2, 1.5}, J = {0.2, 0.4, 0.1},
#: K = {-0.3, -0.1}; S_I = 4.5, S_J = 0.7, S_K = 0.4; a = 4.2 / 9 = 0.4667, b = 0.64; alpha_1 = alpha_2 = 0.75.
WORKED_EXAMPLE = [[1.0, -2.0, 0.2, 0.4], [-0.3, 1.5, 0.1, -0.1]]


# ------------------------------------------------------------------------ reference solutions
def ternary_sets(W):
    """The three sets of ternary weight splitting, as boolean masks of W's shape: (I, J, K).

        Delta = 0.7 * mean|W|                 (TWN's threshold; TWN(W) != 0 exactly where |W| > Delta)
        I = |W| > Delta                        the entries TWN keeps
        J = not I and W > 0                    zeroed by TWN, positive
        K = not I and W <= 0                   zeroed by TWN, negative (or exactly 0)

    Every entry is in exactly one set. Example: W = [[1, -2, 0.2, 0.4], [-0.3, 1.5, 0.1, -0.1]] has
    Delta = 0.49, I = {1, -2, 1.5}, J = {0.2, 0.4, 0.1}, K = {-0.3, -0.1}.
    """
    delta = 0.7 * W.abs().mean()
    I = W.abs() > delta
    J = ~I & (W > 0)
    K = ~I & ~J
    return I, J, K


def tws_coefficients(W):
    """The coefficients (a, b) of ternary weight splitting, one pair for the whole tensor.

    With I, J, K from ternary_sets, the halves W1, W2 of tws_split, alpha_1 = mean|W1| and alpha_2 = mean|W2|:

        a makes  alpha_1 = alpha_2                        (so the halves cancel on J and K, where TWN is 0)
        b makes  alpha_1 + alpha_2 = alpha_t = S_I / |I|   (so they add up to TWN's scale on I)

    where S_X = sum of |W_i| over the set X and n = W.numel(). Solve the two conditions for a and b (the
    markdown above shows how to start), then compute them from W.
    Return two Python floats (or 0-d tensors). Example: W = [[1, -2, 0.2, 0.4], [-0.3, 1.5, 0.1, -0.1]] has
    S_I = 4.5, S_J = 0.7, S_K = 0.4, sum|W| = 5.6, n = 8, |I| = 3, |J| + |K| = 5, and a = 0.4667, b = 0.64.
    """
    I, J, K = ternary_sets(W)
    absW = W.abs()
    S_I, S_J, S_K = absW[I].sum(), absW[J].sum(), absW[K].sum()
    n, n_I, n_zero = W.numel(), int(I.sum()), int(J.sum() + K.sum())
    a = (S_I + S_K - S_J) / (2 * S_I)
    b = (n / n_I * S_I - absW.sum()) / (2 * n_zero)
    return float(a), float(b)


def tws_split(W):
    """Split a latent ternary weight W into (W1, W2) with W1 + W2 = W and BWN(W1) + BWN(W2) = TWN(W).

        W1 = a * W       on I           W2 = (1 - a) * W    on I
             b + W       on J                -b              on J
             b           on K                W - b           on K

    with I, J, K from ternary_sets and a, b from tws_coefficients. Example: W = [[1, -2, 0.2, 0.4],
    [-0.3, 1.5, 0.1, -0.1]] gives W1 = [[0.4667, -0.9333, 0.84, 1.04], [0.64, 0.7, 0.74, 0.64]] and
    W2 = [[0.5333, -1.0667, -0.64, -0.64], [-0.94, 0.8, -0.64, -0.74]]; mean|W1| = mean|W2| = 0.75.
    """
    I, J, K = ternary_sets(W)
    a, b = tws_coefficients(W)
    W1 = torch.where(I, a * W, torch.where(J, b + W, torch.full_like(W, b)))
    W2 = torch.where(I, (1 - a) * W, torch.where(J, torch.full_like(W, -b), W - b))
    return W1, W2


# ------------------------------------------------------------------------------ check helpers
def _skewed(seed, *shape):
    """Weights whose distribution is shifted by 0.4 sigma: more of the zeroed entries are positive than
    negative, so S_J - S_K is clearly non-zero (in symmetric weights S_J ~ S_K hides a swap of J and K)."""
    return randn(seed, *shape, dtype=torch.float64) * 0.05 + 0.02


def _inputs():
    """(description, W) pairs used by the checks: the worked example, skewed and symmetric weights."""
    return [("the worked example W = [[1, -2, 0.2, 0.4], [-0.3, 1.5, 0.1, -0.1]]",
             torch.tensor(WORKED_EXAMPLE, dtype=torch.float64)),
            ("skewed weights of shape (12, 20) (S_J > S_K)", _skewed(41, 12, 20)),
            ("skewed weights of shape (16, 8), negative shift (S_K > S_J)", -_skewed(42, 16, 8)),
            ("Gaussian weights of shape (10, 30)", randn(43, 10, 30, dtype=torch.float64))]


def _tie():
    """W with two entries exactly at TWN's threshold: mean|W| = 0.625 and Delta = 0.7 * 0.625 = 0.4375 exactly
    (in float64, whatever the order of the operations: 0.7 * mean, mean * 0.7, 0.7 * sum / n), and W = +-0.4375
    there. TWN zeroes them (|W| > Delta is false), so they are in J and K, not in I."""
    return torch.tensor([[7.0, -7.0, 20.0, -18.0], [12.0, 3.0, -2.0, 11.0]], dtype=torch.float64) / 16


def _sums(W):
    I, J, K = ternary_sets(W)
    a = W.abs()
    return {"S_I": float(a[I].sum()), "S_J": float(a[J].sum()), "S_K": float(a[K].sum()), "S_all": float(a.sum()),
            "n": W.numel(), "|I|": int(I.sum()), "|J|": int(J.sum()), "|K|": int(K.sum())}


def _bwn(W):
    return W.abs().mean() * torch.where(W >= 0, 1.0, -1.0).to(W.dtype)


def _twn(W):
    I = W.abs() > 0.7 * W.abs().mean()
    return W.abs()[I].mean() * (I & (W > 0)).to(W.dtype) - W.abs()[I].mean() * (I & (W < 0)).to(W.dtype)


def _fmt(v):
    return f"{v:.6g}"


def _masks(got, W, on):
    if got is None:
        raise CheckFailed(f"ternary_sets returned None on {on}: did you forget the return statement?")
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise CheckFailed(f"ternary_sets should return three masks (I, J, K); got {type(got).__name__} on {on}.")
    out = []
    for name, m in zip("IJK", got):
        if not isinstance(m, torch.Tensor):
            raise CheckFailed(f"mask {name} is a {type(m).__name__} on {on}; expected a boolean torch tensor.")
        if m.shape != W.shape:
            raise CheckFailed(f"mask {name} has shape {tuple(m.shape)} on {on}; expected W's shape {tuple(W.shape)}.")
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise CheckFailed(f"mask {name} holds values other than 0/1 on {on}; return booleans (W > x).")
            m = m.bool()
        out.append(m)
    return out


def _sets(fn, W, on):
    """The learner's masks (I, J, K) on W, as booleans; CheckFailed if they are not three masks of W's shape."""
    W_in = W.clone()
    I, J, K = _masks(call(fn, W_in, on=on), W, on)
    if not torch.equal(W_in, W):
        raise CheckFailed(f"ternary_sets changed its input W in place (on {on}).")
    return I, J, K


_WRONG_I = [  # (a wrong I from W and Delta, what to tell the learner), the first that matches is told
    (lambda W, delta: W.abs() >= delta,
     " Your I also holds the entries with |W| exactly equal to Delta: TWN zeroes them, so use |W| > Delta, "
     "not >=."),
    (lambda W, delta: W != 0, " Check the threshold: TWN's is 0.7 * mean|W|."),
    (lambda W, delta: W.abs() > 0.7 * W.abs().max(), " Check the threshold: TWN's is 0.7 * mean|W|."),
]


def _check_kept(fn, W, on):
    """I: exactly the entries TWN keeps."""
    I, _, _ = _sets(fn, W, on)
    delta = 0.7 * W.abs().mean()
    want = W.abs() > delta
    if torch.equal(I, want):
        return
    idx = tuple(int(v) for v in (I != want).nonzero()[0])
    msg = (f"on {on}: I should be the entries TWN keeps, |W| > Delta = 0.7 * mean|W| = {float(delta):.4g}; "
           f"W{list(idx)} = {W[idx].item():.4g} is {'in' if I[idx] else 'not in'} your I.")
    msg += next((tell for wrong, tell in _WRONG_I if torch.equal(I, wrong(W, delta))), "")
    raise CheckFailed(msg)


def _check_split_by_sign(fn, W, on):
    """J and K: the entries not in (the learner's own) I, split by sign; every entry in exactly one set."""
    I, J, K = _sets(fn, W, on)
    count = I.long() + J.long() + K.long()
    if not bool((count == 1).all()):
        idx = tuple(int(v) for v in (count != 1).nonzero()[0])
        raise CheckFailed(f"on {on}: every entry must be in exactly one set; W{list(idx)} = {W[idx].item():.4g} is "
                          f"in {int(count[idx])}. J takes the zeroed entries with W > 0, K all the other zeroed "
                          "ones (W <= 0, zeros included).")
    want_J, want_K = ~I & (W > 0), ~I & (W <= 0)
    if torch.equal(J, want_J) and torch.equal(K, want_K):
        return
    if torch.equal(J, want_K) and torch.equal(K, want_J):
        raise CheckFailed(f"on {on}: J and K are swapped: J holds the positive zeroed entries (W > 0), K the "
                          "negative ones.")
    bad = "J" if not torch.equal(J, want_J) else "K"
    raise CheckFailed(f"on {on}: your {bad} differs from the expected one: J = not in I and W > 0, "
                      "K = not in I and W <= 0.")


def _numbers(got, on):
    if got is None:
        raise CheckFailed(f"tws_coefficients returned None on {on}: did you forget the return statement?")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise CheckFailed(f"tws_coefficients should return the pair (a, b); got {type(got).__name__} on {on}.")
    out = []
    for name, v in zip("ab", got):
        try:
            t = torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else v, dtype=torch.float64)
        except Exception:  # noqa: BLE001
            raise CheckFailed(f"{name} is a {type(v).__name__} on {on}; expected a number.") from None
        if t.numel() != 1:
            raise CheckFailed(f"{name} has {t.numel()} values on {on}; expected one number for the whole tensor.")
        out.append(float(t.reshape(())))
    return out


def _close(x, y):
    return abs(x - y) <= 1e-6 * max(1.0, abs(y))


def _a(s):
    """The right a from the sums of :func:`_sums`."""
    return (s["S_I"] + s["S_K"] - s["S_J"]) / (2 * s["S_I"])


def _b(s):
    """The right b from the sums of :func:`_sums`."""
    return (s["n"] / s["|I|"] * s["S_I"] - s["S_all"]) / (2 * (s["|J|"] + s["|K|"]))


def _a_printed(s):
    """The paper's printed a, J and K swapped (also 1 - a)."""
    return (s["S_I"] + s["S_J"] - s["S_K"]) / (2 * s["S_I"])


def _halves_with(W, a, b):
    """The split of the table (W1 = a W, b + W, b on I, J, K; W2 = W - W1) with the coefficients a and b."""
    I, J, _ = ternary_sets(W)
    W1 = torch.where(I, a * W, torch.where(J, b + W, torch.full_like(W, b)))
    return W1, W - W1


def _alphas(W, a, b):
    """(alpha_1, alpha_2) = (mean|W1|, mean|W2|) of the split with the coefficients a and b."""
    return tuple(float(h.abs().mean()) for h in _halves_with(W, a, b))


def _given(s):
    return (f"S_I = {_fmt(s['S_I'])}, S_J = {_fmt(s['S_J'])}, S_K = {_fmt(s['S_K'])}, sum|W| = {_fmt(s['S_all'])}, "
            f"n = {s['n']}, |I| = {s['|I|']}, |J| + |K| = {s['|J|'] + s['|K|']}")


_WRONG_A = [  # (a wrong a from the sums s, what to tell the learner), the first that matches is told
    (_a_printed,
     " That is the paper's printed a, with J and K swapped: alpha_1 = mean|W1| picks up S_J (W1 = b + W on J) "
     "and alpha_2 picks up S_K, so alpha_1 = alpha_2 needs a * S_I + S_J = (1 - a) * S_I + S_K."),
    (lambda s: 2 * _a(s),
     " Yours is twice the a that balances the halves: the factor 2 is missing (a S_I is in alpha_1 and "
     "(1 - a) S_I in alpha_2, so solving alpha_1 = alpha_2 for a gives 2 a S_I on one side)."),
    (lambda s: (s["|I|"] + s["|K|"] - s["|J|"]) / (2 * s["|I|"]),
     " You used the sizes |I|, |J|, |K|; a needs the sums of |W| over the sets."),
]

_WRONG_B = [  # (a wrong b from the sums s, what to tell the learner), the first that matches is told
    (lambda s: 2 * _b(s),
     " Yours is twice that: the factor 2 in the denominator (b enters both halves) is missing."),
    (lambda s: _b(s) * (s["|J|"] + s["|K|"]) / s["n"],
     " You divided by 2n (that is (alpha_t - mean|W|) / 2); the denominator counts only the zeroed entries: "
     "2 (|J| + |K|)."),
]


def _check_a(fn, W, on):
    a, _ = _numbers(call(fn, W.clone(), on=on), on)
    s = _sums(W)
    if _close(a, _a(s)):
        return
    alpha_1, alpha_2 = _alphas(W, a, _b(s))
    msg = (f"on {on}: expected a = {_fmt(_a(s))}, got {_fmt(a)} ({_given(s)}). With your a (and the right b) "
           f"the halves have alpha_1 = mean|W1| = {_fmt(alpha_1)} and alpha_2 = mean|W2| = {_fmt(alpha_2)}; "
           "a must make them equal.")
    msg += next((tell for wrong, tell in _WRONG_A if _close(a, wrong(s))), "")
    raise CheckFailed(msg)


def _check_b(fn, W, on):
    _, b = _numbers(call(fn, W.clone(), on=on), on)
    s = _sums(W)
    if _close(b, _b(s)):
        return
    alpha_1, alpha_2 = _alphas(W, _a(s), b)
    msg = (f"on {on}: expected b = {_fmt(_b(s))}, got {_fmt(b)} ({_given(s)}). With the right a and your b "
           f"alpha_1 + alpha_2 = {_fmt(alpha_1 + alpha_2)}, not alpha_t = S_I / |I| = "
           f"{_fmt(s['S_I'] / s['|I|'])}; b must make them equal.")
    msg += next((tell for wrong, tell in _WRONG_B if _close(b, wrong(s))), "")
    raise CheckFailed(msg)


def _halves(got, W, on):
    if got is None:
        raise CheckFailed(f"tws_split returned None on {on}: did you forget the return statement?")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise CheckFailed(f"tws_split should return the pair (W1, W2); got {type(got).__name__} on {on}.")
    out = []
    for name, t in zip(("W1", "W2"), got):
        if not isinstance(t, torch.Tensor):
            raise CheckFailed(f"{name} is a {type(t).__name__} on {on}; expected a tensor of W's shape.")
        if t.shape != W.shape:
            raise CheckFailed(f"{name} has shape {tuple(t.shape)} on {on}; expected {tuple(W.shape)}.")
        out.append(t.detach().to(torch.float64))
    return out


def _where(W, idx):
    I, J, K = ternary_sets(W)
    return "I" if I[idx] else ("J" if J[idx] else "K")


def _check_latent(fn, W, on):
    W1, W2 = _halves(call(fn, W.clone(), on=on), W, on)
    err = (W1 + W2 - W).abs()
    if float(err.max()) <= 1e-9 * max(1.0, float(W.abs().max())):
        return
    idx = tuple(int(v) for v in torch.unravel_index(err.argmax(), W.shape))
    raise CheckFailed(f"on {on}: W1 + W2 must equal W (the latent equivalence); at W{list(idx)} = "
                      f"{W[idx].item():.4g} (set {_where(W, idx)}) W1 + W2 = {(W1 + W2)[idx].item():.4g}.")


def _check_quantized(fn, W, on):
    W1, W2 = _halves(call(fn, W.clone(), on=on), W, on)
    got, want = _bwn(W1) + _bwn(W2), _twn(W)
    err = (got - want).abs()
    alpha_t = float(want.abs().max())
    if float(err.max()) <= 1e-6 * alpha_t:
        return
    idx = tuple(int(v) for v in torch.unravel_index(err.argmax(), W.shape))
    msg = (f"on {on}: BWN(W1) + BWN(W2) must equal TWN(W). At W{list(idx)} = {W[idx].item():.4g} (set "
           f"{_where(W, idx)}) it is {got[idx].item():.6g} instead of {want[idx].item():.6g}; "
           f"mean|W1| = {_fmt(float(W1.abs().mean()))}, mean|W2| = {_fmt(float(W2.abs().mean()))} "
           f"(they must be equal, and add up to alpha_t = {_fmt(alpha_t)}).")
    _, J, K = ternary_sets(W)
    s = _sums(W)
    printed1, _ = _halves_with(W, _a_printed(s), _b(s))
    if torch.allclose(W1, printed1, atol=1e-9):
        msg += (" Your halves use the paper's printed a = (S_I + S_J - S_K) / (2 S_I), J and K swapped: the two "
                "scales differ by 2 (S_J - S_K) / n and the zeroed entries do not cancel.")
    zero = J | K
    if bool(((torch.sign(W1) == torch.sign(W2)) & zero).any()):
        msg += (" On some entries TWN sets to 0 your halves have the SAME sign, so they cannot cancel: on the "
                "zero set one half is positive and the other negative (on J: W1 = b + W, W2 = -b; on K: W1 = b, "
                "W2 = W - b).")
    raise CheckFailed(msg)


def _check_pieces(fn, W, on):
    W1, W2 = _halves(call(fn, W.clone(), on=on), W, on)
    R1, R2 = tws_split(W)
    if torch.allclose(W1, R1, atol=1e-9) and torch.allclose(W2, R2, atol=1e-9):
        return
    if torch.allclose(W1, R2, atol=1e-9) and torch.allclose(W2, R1, atol=1e-9):
        raise CheckFailed(f"on {on}: your W1 is the expected W2 and vice versa; return (W1, W2) with W1 = a * W on I.")
    bad = (~torch.isclose(W1, R1, atol=1e-9)) | (~torch.isclose(W2, R2, atol=1e-9))
    idx = tuple(int(v) for v in bad.nonzero()[0])
    raise CheckFailed(f"on {on}: at W{list(idx)} = {W[idx].item():.4g} (set {_where(W, idx)}) expected "
                      f"W1 = {R1[idx].item():.6g}, W2 = {R2[idx].item():.6g}; got {W1[idx].item():.6g}, "
                      f"{W2[idx].item():.6g}.")


def _each(check):
    def run(fn):
        for on, W in _inputs():
            check(fn, W, on)
    return run


def _q1_kept(fn):
    for on, W in _inputs() + [("weights with two entries exactly at the threshold, |W| = Delta = 0.4375", _tie())]:
        _check_kept(fn, W, on)


def _q1_zeros(fn):
    W = _skewed(44, 6, 9)
    W[0, 0] = W[2, 3] = 0.0  # exact zeros belong to K
    _check_split_by_sign(fn, W, "skewed weights with exact zeros")


# --------------------------------------------------------------------------------- questions
q1 = Question(
    "q1", "ternary_sets", "The sets I, J and K",
    checks=[
        Check("I: the entries TWN keeps, |W| > 0.7 mean|W| (an entry exactly at the threshold is zeroed)", 1,
              _q1_kept),
        Check("J and K: the entries not in I, split by sign (J: W > 0, K: W <= 0)", 1,
              _each(lambda f, W, on: _check_split_by_sign(f, W, on))),
        Check("exact zeros are in K: the three sets cover every entry once", 1, _q1_zeros),
    ],
    hints=[
        """TWN keeps an entry when |W| > Delta with Delta = 0.7 * W.abs().mean(): that mask is I.""",
        """J and K split the rest by sign: `J = ~I & (W > 0)`, `K = ~I & (W <= 0)` (the zeros go to K).""",
    ],
    solution=ternary_sets,
)

q2 = Question(
    "q2", "tws_coefficients", "The coefficients a and b",
    checks=[
        Check("a: alpha_1 = alpha_2 (the halves cancel on J and K), on skewed weights where S_J != S_K", 3,
              _each(lambda f, W, on: _check_a(f, W, on))),
        Check("b: alpha_1 + alpha_2 = alpha_t = S_I / |I| (TWN's scale on I)", 2,
              _each(lambda f, W, on: _check_b(f, W, on))),
    ],
    hints=[
        """Write n alpha_1 = sum|W1| set by set: on I, |a W| sums to a S_I; on J, |b + W| = b + |W| sums to
        |J| b + S_J; on K, |b| sums to |K| b. Do the same for n alpha_2 and set them equal: b cancels.""",
        """On I both halves have the sign of W, so BWN(W1) + BWN(W2) = alpha_1 + alpha_2 there. Add the two
        expressions and set the sum equal to alpha_t = S_I / |I|; solve for b.""",
        """The result (check your derivation against it):
        a = (S_I + S_K - S_J) / (2 S_I)   and   b = ((n / |I|) S_I - sum|W|) / (2 (|J| + |K|)).
        On the worked example: a = (4.5 + 0.4 - 0.7) / 9 = 0.4667 and b = (8/3 * 4.5 - 5.6) / 10 = 0.64.""",
    ],
    solution=tws_coefficients,
    uses=[q1],  # a learner's tws_coefficients finds the sets with their ternary_sets
)

q3 = Question(
    "q3", "tws_split", "The split",
    checks=[
        Check("W1 + W2 = W", 1, _each(lambda f, W, on: _check_latent(f, W, on))),
        Check("BWN(W1) + BWN(W2) = TWN(W)", 3, _each(lambda f, W, on: _check_quantized(f, W, on))),
        Check("the halves entry by entry", 1, _each(lambda f, W, on: _check_pieces(f, W, on))),
    ],
    hints=[
        """Nest two torch.where: `torch.where(I, a * W, torch.where(J, b + W, b_tensor))` for W1, where
        b_tensor = torch.full_like(W, b). W2 = W - W1 gives the same W2.""",
        """Check yourself: W1 + W2 should be W, and _bwn(W1) + _bwn(W2) should equal twn(W) from
        binlab.quant.quantizers.""",
    ],
    solution=tws_split,
    uses=[q1, q2],  # ... and their tws_split with ternary_sets and tws_coefficients
    congrats="This is binlab.methods.splitting.tws_split, and BinaryBERT's tws_split in float64.",
)

EXERCISE = Exercise("04_splitting", "Ternary weight splitting: the sets, a and b, the split", [q1, q2, q3])


# ---------------------------------------------------------------------------------- mistakes
def _sets_k_strict(W):
    I, J, _ = ternary_sets(W)
    return I, J, ~I & (W < 0)  # exact zeros fall out of every set


def _sets_jk_swapped(W):
    I, J, K = ternary_sets(W)
    return I, K, J


def _sets_nonzero(W):
    I = W != 0
    return I, ~I & (W > 0), ~I & (W <= 0)


def _sets_greater_equal(W):
    I = W.abs() >= 0.7 * W.abs().mean()  # keeps the entries exactly at the threshold, which TWN zeroes
    return I, ~I & (W > 0), ~I & (W <= 0)


def _coef_printed(W):
    _, b = tws_coefficients(W)
    return _a_printed(_sums(W)), b


def _coef_a_no_two(W):
    s = _sums(W)
    _, b = tws_coefficients(W)
    return (s["S_I"] + s["S_K"] - s["S_J"]) / s["S_I"], b


def _coef_counts(W):
    s = _sums(W)
    _, b = tws_coefficients(W)
    return (s["|I|"] + s["|K|"] - s["|J|"]) / (2 * s["|I|"]), b


def _coef_b_no_two(W):
    a, b = tws_coefficients(W)
    return a, 2 * b


def _coef_b_over_n(W):
    s = _sums(W)
    a, _ = tws_coefficients(W)
    return a, (s["n"] / s["|I|"] * s["S_I"] - s["S_all"]) / (2 * s["n"])


def _split_printed(W):
    return _halves_with(W, *_coef_printed(W))


def _split_same_signs(W):
    I, J, K = ternary_sets(W)
    a, b = tws_coefficients(W)
    W1 = torch.where(I, a * W, W / 2)  # halves the zeroed entries: same signs, no cancellation
    return W1, W - W1


def _split_swapped_halves(W):
    W1, W2 = tws_split(W)
    return W2, W1


MISTAKES = [
    Mistake("q1", "k_strict", "K = W < 0 leaves exact zeros in no set", _sets_k_strict, "exactly one set"),
    Mistake("q1", "jk_swapped", "J and K swapped", _sets_jk_swapped, "J and K are swapped"),
    Mistake("q1", "i_nonzero", "I = W != 0 (no threshold)", _sets_nonzero, "threshold"),
    Mistake("q1", "i_greater_equal", "|W| >= Delta: keeps the entries exactly at the threshold",
            _sets_greater_equal, "not >="),
    Mistake("q2", "printed_a", "the paper's printed a, J and K swapped", _coef_printed, "J and K swapped"),
    Mistake("q2", "a_no_factor_two", "a without the 2 of its denominator 2 S_I", _coef_a_no_two, "factor 2 is missing"),
    Mistake("q2", "counts_not_sums", "a from the set sizes instead of the sums of |W|", _coef_counts,
            "sums of |W|"),
    Mistake("q2", "b_no_factor_two", "b without the 2 in the denominator", _coef_b_no_two, "factor 2"),
    Mistake("q2", "b_over_n", "b divided by 2n instead of 2(|J| + |K|)", _coef_b_over_n, "2 (|J| + |K|)"),
    Mistake("q3", "printed_a", "the split with the paper's printed a", _split_printed, "printed a"),
    Mistake("q3", "same_signs", "W/2 on the zero set: both halves keep W's sign", _split_same_signs, "SAME sign"),
    Mistake("q3", "swapped_halves", "returns (W2, W1)", _split_swapped_halves, "vice versa"),
]
