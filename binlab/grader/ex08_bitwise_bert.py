"""Exercise 8 (``exercises/08_bitwise_bert.ipynb``): a W1A1 BERT's products from packed bits, as the engine does.

Questions (packed words are ``np.uint64`` arrays in binlab's layout, floats are torch tensors):

* q1 ``binary_linear(x_words, w_words, k, alpha, bias)``: a binary linear layer from packed sign bits,
  y = alpha[n] * (K - 2 popcount(x XOR w)) + bias[n], one scale per output feature, float32 out
  (:class:`binlab.kernels.linear.BinaryLinear`'s formula);
* q2 ``bit_linear(x, w_words, act_alpha, w_alpha, bias)``: the same layer on a float input, binarized (sign(0) = +1)
  and packed in binlab's layout, each input bit worth act_alpha: y = (act_alpha * w_alpha[n]) * P + bias[n]
  (the engine's c = a_in * alpha_W of :class:`binlab.infer.engine.PackedBert`);
* q3 ``and_product(p_words, v_words, k)``: the {0, 1} x {-1, +1} product of binarized attention,
  2 popcount(p AND v) - popcount(p) (:func:`binlab.kernels.products.and_gemm`);
* q4 ``bit_attention(probs, v, alpha_p, alpha_v)``: BiT's attention context from bits: the {0, alpha_p}
  probabilities times the {-alpha_v, +alpha_v} values, V packed along the tokens, through the AND product.

The bit convention is exercise 1's and binlab.kernels': element k is bit ``k % 64`` of word ``k // 64`` (least
significant bit first), a sign bit is 1 iff the value is >= 0, a {0, 1} bit is 1 iff the value is 1, and the padding
bits of the last word are 0. The checks compare with plain float arithmetic (and, for q4, with the model's
:func:`binlab.quant.quantizers.elastic`); tests/test_grader.py checks that the reference solutions agree with
``BinaryLinear``, ``and_gemm`` and ``and_bmm`` themselves. The checks run no numba kernel, so that they take
milliseconds.
"""

from __future__ import annotations

import numpy as np
import torch

from binlab.grader.checks import generator, randn, show
from binlab.grader.core import Check, CheckFailed, Exercise, Mistake, Question, call
from binlab.quant import quantizers as Q

__all__ = ["q1", "q2", "q3", "q4", "EXERCISE", "MISTAKES", "binary_linear", "bit_linear", "and_product",
           "bit_attention"]


# ------------------------------------------------------------------------ reference solutions
def binary_linear(x_words, w_words, k, alpha, bias):
    """A W1A1 linear layer from packed sign bits: y = alpha * (sign(x) @ sign(W).T) + bias, as BinaryLinear.

    x_words: (M, W) np.uint64, the packed signs of M input rows (M, K); w_words: (N, W) np.uint64, the packed signs
    of the weight (N, K), one row per output feature; k: K, the number of elements per row (W = ceil(K / 64));
    alpha: (N,) float32 tensor, one scale per output feature (row of the weight); bias: (N,) float32 tensor.

        P[m, n] = K - 2 * popcount(x_words[m] XOR w_words[n])       summed over the W words: an integer
        y[m, n] = alpha[n] * P[m, n] + bias[n]                      the scale first, then the bias

    Return y, a float32 torch tensor of shape (M, N). The padding bits of the last word are 0 in both operands.
    Keep the counts in signed integers: K - 2 * d computed in np.uint64 wraps around below 0.
    Example: K = 3, x = [+1, -1, +1] (word 0b101), weight rows [+1, +1, -1] and [-1, -1, -1] (words 0b011, 0b000),
    alpha = [0.5, 2], bias = [1, 0]: P = [[-1, -1]], y = [[0.5, -2]].
    """
    d = np.bitwise_count(x_words[:, None, :] ^ w_words[None, :, :]).sum(axis=-1, dtype=np.int64)  # (M, N)
    P = torch.from_numpy(k - 2 * d).float()
    return alpha * P + bias


def bit_linear(x, w_words, act_alpha, w_alpha, bias):
    """The engine's binary linear layer on a float input: binarize x, pack it, XNOR-popcount, scale, add the bias.

    x: (M, K) float32 tensor, the layer's full-precision input; w_words: (N, ceil(K / 64)) np.uint64, the packed
    signs of the weight (N, K); act_alpha: a number, the value of one input bit (BiT's elastic binarizer maps x to
    {-act_alpha, +act_alpha}; 1 for a plain sign); w_alpha: (N,) float32 tensor, the weight scale of each output
    feature; bias: (N,) float32 tensor.

        bits of x = 1 where x >= 0 (sign(0) = +1), packed as binlab packs: bit k % 64 of word k // 64, padding 0
        P[m, n]   = K - 2 * popcount(bits(x)[m] XOR w_words[n])         the integers of Q1
        y[m, n]   = (act_alpha * w_alpha[n]) * P[m, n] + bias[n]         one scale per output, then the bias

    Return y, a float32 tensor (M, N): the fake-quant layer elastic(x, act_alpha) @ (w_alpha[:, None] * sign(W)).T
    + bias, computed from bits. Example: K = 3, x = [0.5, -1.0, 0.0] (bits 1, 0, 1: word 0b101), weight rows
    [+1, +1, -1] and [-1, -1, -1], act_alpha = 2, w_alpha = [0.5, 0.25], bias = [1, 0]: P = [[-1, -1]],
    y = [[0, -0.5]].
    """
    K = x.shape[-1]
    W = (K + 63) // 64
    bits = np.zeros((x.shape[0], W * 64), dtype=np.uint64)
    bits[:, :K] = (x >= 0).numpy()  # sign(0) = +1; the padding bits stay 0
    words = np.bitwise_or.reduce(bits.reshape(-1, W, 64) << np.arange(64, dtype=np.uint64), axis=-1)
    return binary_linear(words, w_words, K, act_alpha * w_alpha, bias)  # Q1 with c = a_in * alpha_W


def and_product(p_words, v_words, k):
    """The {0, 1} x {-1, +1} product of binarized attention from packed bits: C = p @ v.T, as and_gemm.

    p_words: (M, W) np.uint64, the bits of M rows p (M, K) with values in {0, 1} (bit 1 where p = 1); v_words:
    (N, W) np.uint64, the sign bits of N rows v (N, K) with values in {-1, +1} (bit 1 where v = +1); k: K.

        C[m, n] = sum over k of p[m, k] * v[n, k]
                = (number of k with p = 1 and v = +1) - (number of k with p = 1 and v = -1)
                = 2 * popcount(p AND v) - popcount(p)                   each popcount summed over the words

    Where p = 0 the product is 0 whatever v is. Return the (M, N) integers (np.int64, signed).
    Example: K = 4, p = [1, 0, 1, 1] (word 0b1101), v = [+1, +1, -1, +1] (word 0b1011): p AND v = 0b1001,
    C = 2 * 2 - 3 = 1 (check: 1 + 0 - 1 + 1 = 1).
    """
    both = np.bitwise_count(p_words[:, None, :] & v_words[None, :, :]).sum(axis=-1, dtype=np.int64)  # (M, N)
    ones = np.bitwise_count(p_words).sum(axis=-1, dtype=np.int64)  # (M,): the ones of each row of p
    return 2 * both - ones[:, None]


def bit_attention(probs, v, alpha_p, alpha_v):
    """BiT's attention context from bits: {0, alpha_p} probabilities times {-alpha_v, +alpha_v} values, by AND-popcount.

    probs: (B, H, L, L) float tensor, the attention probabilities (query rows, key columns); v: (B, H, L, d) float
    tensor, the full-precision values; alpha_p, alpha_v: numbers, the scales of the two elastic binarizers.

        bits of probs = 1 where probs / alpha_p > 1/2, else 0     BiT's {0, alpha_p}: exactly 1/2 gives 0
        bits of v     = 1 where v >= 0, else 0 (-1)                BiT's {-alpha_v, +alpha_v}: sign(0) = +1
        context[b, h] = alpha_p * alpha_v * and_product(bits of probs[b, h], one row per query, along the keys,
                                                        bits of v[b, h].T, one row per channel, along the TOKENS, L)

    The product sums over the keys, so V is packed along its token axis (d rows of L bits). Return the (B, H, L, d)
    float32 context: elastic(probs, alpha_p, unsigned) @ elastic(v, alpha_v, signed), computed from bits.
    Example (B = H = 1, L = d = 2): probs = [[0.7, 0.3], [0.45, 0.55]], alpha_p = 0.8 (bits [[1, 0], [1, 1]]),
    v = [[0.5, 1.0], [-2.0, 0.0]], alpha_v = 1.5 (signs [[+1, +1], [-1, +1]]): context = [[1.2, 1.2], [0, 2.4]].
    """
    B, H, L, d = v.shape
    W = (L + 63) // 64
    shifts = np.arange(64, dtype=np.uint64)

    def pack(bits):  # (..., L) booleans -> (..., W) np.uint64: bit k % 64 of word k // 64, padding 0
        padded = np.zeros(bits.shape[:-1] + (W * 64,), dtype=np.uint64)
        padded[..., :L] = bits
        return np.bitwise_or.reduce(padded.reshape(bits.shape[:-1] + (W, 64)) << shifts, axis=-1)

    p_words = pack((probs / alpha_p > 0.5).numpy())  # (B, H, L, W): each query row, along the keys
    v_words = pack((v >= 0).transpose(-1, -2).numpy())  # (B, H, d, W): each channel of V, along the tokens
    out = torch.empty(B, H, L, d)
    for b in range(B):
        for h in range(H):
            out[b, h] = torch.from_numpy(and_product(p_words[b, h], v_words[b, h], L)).float()
    return alpha_p * alpha_v * out


# ------------------------------------------------------------------------------ shared helpers
def _pack(bits, order="lsb", pad=False):
    """Pack booleans (..., K) into np.uint64 words along the last axis: binlab's layout ("lsb": element k to bit
    k % 64), or a wrong one ("msb": bit 63 - k % 64; "bytes": np.packbits' big-endian bytes read as a little-endian
    word), with the padding bits 0 (or 1 with ``pad``)."""
    bits = np.asarray(bits, dtype=bool)
    K = bits.shape[-1]
    W = (K + 63) // 64
    full = np.full(bits.shape[:-1] + (W * 64,), bool(pad))
    full[..., :K] = bits
    j = np.arange(64)
    shifts = {"lsb": j, "msb": 63 - j, "bytes": 8 * (j // 8) + 7 - j % 8}[order].astype(np.uint64)
    return np.bitwise_or.reduce(full.reshape(bits.shape[:-1] + (W, 64)).astype(np.uint64) << shifts, axis=-1)


def _signs(x):
    """+-1 float64 with sign(0) = +1."""
    return torch.where(torch.as_tensor(x) >= 0, 1.0, -1.0).double()


def _pc(words):
    return np.bitwise_count(words).astype(np.int64)


def _xor_counts(a, b):
    """(M, N) int64: popcount(a[m] XOR b[n]) summed over the words."""
    return _pc(a[:, None, :] ^ b[None, :, :]).sum(-1)


def _and_counts(a, b):
    return _pc(a[:, None, :] & b[None, :, :]).sum(-1)


def _words(K):
    return "one whole word" if K == 64 else f"{K // 64} whole words"


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _values(got, what, on, shape):
    """``got`` (a tensor or an array) as a float64 tensor of ``shape``, or CheckFailed saying why not."""
    if got is None:
        raise CheckFailed(f"{what} returned None on {on}: did you forget the return statement?")
    try:
        if isinstance(got, torch.Tensor):
            t = got.detach().cpu().double()
        else:
            t = torch.from_numpy(np.asarray(got, dtype=np.float64))
    except Exception:  # noqa: BLE001
        raise CheckFailed(f"{what} returned a {type(got).__name__} on {on}; expected an array of numbers.") from None
    if tuple(t.shape) != tuple(shape):
        msg = f"{what} returned shape {tuple(t.shape)} on {on}; expected {tuple(shape)}."
        if len(shape) == 2 and tuple(t.shape) == (shape[1], shape[0]):
            msg += (" That is transposed: entry [m, n] pairs input row m (a token, a query) with row n of the "
                    "second operand (an output feature, a value channel).")
        raise CheckFailed(msg)
    return t


def _same(a, b, rtol=1e-5, atol=1e-4):
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


def _first_difference(got, want):
    i = int((got - want).abs().flatten().argmax())
    idx = tuple(int(v) for v in np.unravel_index(i, tuple(got.shape)))
    return idx, float(want[idx]) + 0.0, float(got[idx]) + 0.0  # + 0.0: no -0 in a message


def _explain(msg, got, candidates):
    """``msg`` and the explanation of each candidate (a wrong answer's values, or a test) that ``got`` matches: one when
    the input tells the wrong answers apart, all of them (joined by "Or:") when it does not."""
    found = []
    for cand, why in candidates:
        value = cand() if callable(cand) else cand
        if value is None or why in found:
            continue
        if (value is True) or (isinstance(value, torch.Tensor) and _same(got, value)):
            found.append(why)
    return " ".join([msg, " Or: ".join(found)]) if found else msg


_WRAP = ("Some values are about 2**64 = 1.8e19: a count went below 0 in np.uint64 arithmetic, which wraps around "
         "(np.bitwise_count(...).sum() is an unsigned np.uint64, and so is every difference computed from it). Sum "
         "with dtype=np.int64 (or .astype(np.int64)) before subtracting.")


# ------------------------------------------------------------------------------- q1 helpers
def _rand_words(seed, M, N, K):
    g = generator(seed)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    return _pack(x.numpy() >= 0), _pack(w.numpy() >= 0)


def _check_linear(fn, x_words, w_words, k, alpha, bias, on):
    M, N, W = x_words.shape[0], w_words.shape[0], x_words.shape[1]
    try:
        got = call(fn, x_words.copy(), w_words.copy(), k, alpha.clone(), bias.clone(), on=on)
    except CheckFailed as e:
        if "size of tensor" in str(e) or "broadcast" in str(e):
            raise CheckFailed(f"{e} The output is (M, N) = ({M}, {N}) and alpha, bias have one entry per output "
                              "feature n, so they broadcast along its last axis: alpha * P + bias, no [:, None] "
                              "(one scale per output feature, a row of W).") from None
        raise
    got = _values(got, "binary_linear", on, (M, N))
    d = _xor_counts(x_words, w_words)
    P = k - 2 * d
    A, Bv = alpha.double(), bias.double()

    def lin(p):
        return A * _t(p) + Bv

    want = lin(P)
    if _same(got, want):
        return
    (m, n), e, g = _first_difference(got, want)
    msg = (f"binary_linear on {on}: y[{m}, {n}] should be {e:.6g} (= alpha[{n}] * P + bias[{n}] with "
           f"P = sign(x[{m}]) . sign(W[{n}]) = {int(P[m, n])}), got {g:.6g}.")
    ones = _pc(x_words).sum(-1)[:, None]
    both = _and_counts(x_words, w_words)
    agree = _pc(~(x_words[:, None, :] ^ w_words[None, :, :])).sum(-1)  # every bit of the words, padding too
    square = M == N
    raise CheckFailed(_explain(msg, got, [
        (lambda: bool((got.abs() > 1e15).any()), _WRAP),
        (lambda: lin(d), f"That is alpha * popcount + bias: popcount(x XOR w) = {int(d[m, n])} is the number of "
                         "different signs; the dot product is K - 2 * popcount."),
        (lambda: lin(k - d), "That uses K - popcount, the number of equal signs; each different sign costs 2 (a +1 "
                             "fewer and a -1 more): K - 2 * popcount."),
        (lambda: lin(-P), "The sign is flipped: XOR marks the positions where the signs differ (product -1), so "
                          "P = K - 2 * popcount(x XOR w), not 2 * popcount - K."),
        (lambda: lin(64 * W - 2 * d), f"That uses 64 * W = {64 * W} instead of K = {k}: the padding bits of the last "
                                      "word are not elements; P = K - 2 * popcount."),
        (lambda: lin(2 * agree - k), "Counting equal bits with ~(x ^ w) (XNOR) also counts the padding bits of the "
                                     "last word, which are equal (0 and 0) in both: use K - 2 * popcount(x ^ w), or "
                                     "mask the padding bits."),
        (lambda: lin(2 * agree - 64 * W), "Counting equal bits with ~(x ^ w) (XNOR) also counts the padding bits of "
                                          "the last word, which are equal (0 and 0) in both: use "
                                          "K - 2 * popcount(x ^ w)."),
        (lambda: lin(2 * both - ones), "You used AND: 2 * popcount(x & w) - popcount(x) is the product of a {0, 1} "
                                       "operand with signs (Q3). Two sign operands need XOR, where the signs differ: "
                                       "K - 2 * popcount(x ^ w)."),
        (lambda: lin(k - 2 * both), "You used AND where XOR is needed: x & w marks where both signs are +1, not "
                                    "where they differ; P = K - 2 * popcount(x ^ w)."),
        (lambda: lin(k - 2 * (d % 256)), "The popcount total wrapped at 256: np.bitwise_count returns np.uint8 and "
                                         "the sum stayed in 8 bits (dtype=np.uint8, or a cast to uint8 / int8). "
                                         "Accumulate in np.int64: .sum(axis=-1, dtype=np.int64)."),
        (lambda: lin(((k - 2 * d + 128) % 256) - 128), "P wrapped around in an 8-bit integer (int8 holds -128..127): "
                                                       "accumulate and subtract in np.int64."),
        (lambda: A[:, None] * _t(P) + Bv[:, None] if square else None,
         "alpha[m] and bias[m] scale row m of y: there is one scale per output feature n (a row of W, a column of "
         "y), y[m, n] = alpha[n] * P[m, n] + bias[n]; torch broadcasting does it as alpha * P + bias."),
        (lambda: A[:, None] * _t(P) + Bv if square else None,
         "alpha[m] scales row m of y: there is one scale per output feature n (a row of W, a column of y), "
         "y[m, n] = alpha[n] * P[m, n]; torch broadcasting does it as alpha * P."),
        (lambda: A * (_t(P) + Bv), "The bias is scaled too, alpha * (P + bias): the bias is added after the scale, "
                                   "alpha * P + bias."),
        (lambda: _t(P) + Bv, "alpha is missing: y = alpha[n] * P + bias[n]."),
        (lambda: A * _t(P), "The bias is missing: y = alpha[n] * P + bias[n]."),
        (lambda: _t(P), "alpha and the bias are missing: y = alpha[n] * P + bias[n]."),
    ]))


def _q1_whole_words(fn):
    N = 5
    for K, seed in ((64, 1), (192, 2)):
        xw, ww = _rand_words(seed, 3, N, K)
        _check_linear(fn, xw, ww, K, torch.ones(N), torch.zeros(N),
                      f"K = {K} ({_words(K)}), 3 inputs, {N} outputs, alpha = 1, bias = 0")


def _q1_padding(fn):
    xw = _pack(np.array([[True, False, True]]))
    ww = _pack(np.array([[True, True, False], [False, False, False]]))
    _check_linear(fn, xw, ww, 3, torch.tensor([0.5, 2.0]), torch.tensor([1.0, 0.0]),
                  "the docstring's example (K = 3: one word, 61 padding bits)")
    for K, seed in ((1, 3), (70, 4), (100, 5), (130, 6)):
        xw, ww = _rand_words(seed, 4, 3, K)
        _check_linear(fn, xw, ww, K, torch.ones(3), torch.zeros(3),
                      f"K = {K} (not a multiple of 64: {xw.shape[1]} words, the last one padded), alpha = 1, bias = 0")


def _layer(seed, N):
    g = generator(seed)
    alpha = (torch.rand(N, generator=g) * 1.5 + 0.1)  # one scale per output, all different
    bias = torch.randn(N, generator=g)
    return alpha, bias


def _q1_scales(fn):
    xw, ww = _rand_words(7, 4, 4, 70)
    alpha, bias = _layer(8, 4)
    _check_linear(fn, xw, ww, 70, alpha, bias, f"4 inputs, 4 outputs, K = 70, alpha = {show(alpha, 4)}, "
                                             f"bias = {show(bias, 4)}")
    xw, ww = _rand_words(9, 3, 6, 130)
    alpha, bias = _layer(10, 6)
    _check_linear(fn, xw, ww, 130, alpha, bias, "3 inputs, 6 outputs, K = 130, one alpha and one bias per output")


def _q1_dtype(fn):
    xw, ww = _rand_words(11, 2, 3, 100)
    alpha, bias = _layer(12, 3)
    on = "2 inputs, 3 outputs, K = 100, float32 alpha and bias"
    got = call(fn, xw, ww, 100, alpha, bias, on=on)
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"binary_linear returned a {type(got).__name__} on {on}; return a torch tensor, as "
                          "BinaryLinear does (torch.from_numpy(...), then .float()).")
    if got.dtype != torch.float32:
        raise CheckFailed(f"binary_linear returned a {got.dtype} tensor on {on}; BinaryLinear and the engine return "
                          "float32. (NumPy's float32 times int64 is float64: turn P into float32 first, "
                          "torch.from_numpy(P).float(), then alpha * P + bias stays float32.)")


def _q1_bert(fn):
    for K, M, N, seed in ((768, 8, 64, 13), (3072, 4, 24, 14)):
        g = generator(seed)
        x, Wt = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
        alpha = Wt.abs().mean(dim=1)  # BinaryLinear.from_float(W, bias, alpha="row")
        bias = 0.1 * torch.randn(N, generator=g)
        _check_linear(fn, _pack(x.numpy() >= 0), _pack(Wt.numpy() >= 0), K, alpha, bias,
                      f"a BERT-sized layer, K = {K}, {N} outputs, alpha = mean |W| per row (BinaryLinear's 'row')")


# ------------------------------------------------------------------------------- q2 helpers
def _check_bit_linear(fn, x, Wt, act, w_alpha, bias, on):
    M, N = x.shape[0], Wt.shape[0]
    K = x.shape[1]
    w_words = _pack(Wt.numpy() >= 0)
    got = _values(call(fn, x.clone(), w_words.copy(), act, w_alpha.clone(), bias.clone(), on=on),
                  "bit_linear", on, (M, N))
    sw = _signs(Wt)
    P = _signs(x) @ sw.T
    A, Bv = w_alpha.double(), bias.double()
    c = act * A
    want = c * P + Bv
    if _same(got, want):
        return
    (m, n), e, g = _first_difference(got, want)
    msg = (f"bit_linear on {on}: y[{m}, {n}] should be {e:.6g} (= act_alpha * w_alpha[{n}] * P + bias[{n}] with "
           f"P = {int(P[m, n])}), got {g:.6g}.")

    def packed(order="lsb", pad=False):
        return _t(K - 2 * _xor_counts(_pack(x.numpy() >= 0, order, pad), w_words))

    has_zero = bool((x == 0).any())
    raise CheckFailed(_explain(msg, got, [
        (lambda: bool((got.abs() > 1e15).any()), _WRAP),
        (lambda: A * P + Bv if act != 1 else None,
         f"act_alpha = {act:g} is missing: each input bit is worth +-act_alpha (BiT's elastic binarizer), so the "
         "scale of P is act_alpha * w_alpha[n] (the engine's c = a_in * alpha_W)."),
        (lambda: act * P + Bv, "w_alpha is missing: the scale of P is act_alpha * w_alpha[n], one per output feature."),
        (lambda: c * act * P + Bv if act != 1 else None,
         "act_alpha is applied twice: the scale of P is act_alpha * w_alpha[n], once."),
        (lambda: c * A * P + Bv, "w_alpha is applied twice (once in the scale you pass on, once more after it): the "
                                 "scale of P is act_alpha * w_alpha[n], once."),
        (lambda: c * (P + Bv), "The bias is scaled too, c * (P + bias): the bias is added after the scale, "
                               "act_alpha * w_alpha[n] * P + bias[n]."),
        (lambda: c * (torch.where(x > 0, 1.0, -1.0).double() @ sw.T) + Bv if has_zero else None,
         "The difference is at the elements of x equal to 0: sign(0) = +1 in binlab, so their bit is 1 "
         "(test x >= 0, not x > 0)."),
        (lambda: c * packed("msb") + Bv,
         "The bits of x are in the reverse order: element k goes to bit k % 64, counted from the least significant "
         "bit, as in the weight's words (the bit order must be the same in both operands)."),
        (lambda: c * packed("bytes") + Bv, "The bits inside each byte of x's words are reversed: np.packbits puts the "
                                           "first element in the most significant bit unless you pass "
                                           "bitorder='little'; the weight's words are packed least significant bit "
                                           "first."),
        (lambda: c * packed(pad=True) + Bv if K % 64 else None,
         f"The padding bits of x's last word are 1: with K = {K} bits {K % 64}..63 hold no element and must be 0 "
         "(padding x with zeros sets them, since sign(0) = +1); otherwise they differ from the weight's 0 padding "
         "bits and count in the popcount."),
    ]))


def _xw(seed, M, N, K, zeros=False):
    g = generator(seed)
    x = torch.randn(M, K, generator=g)
    if zeros:
        x[:, ::5] = 0.0
    return x, torch.randn(N, K, generator=g)


def _q2_layout(fn):
    for K, seed in ((64, 21), (128, 22)):
        x, Wt = _xw(seed, 3, 5, K)
        _check_bit_linear(fn, x, Wt, 1.0, torch.ones(5), torch.zeros(5),
                          f"x of shape (3, {K}), 5 outputs, act_alpha = 1, w_alpha = 1, bias = 0")


def _q2_zeros_padding(fn):
    x = torch.tensor([[0.5, -1.0, 0.0]])
    Wt = torch.tensor([[1.0, 1.0, -1.0], [-1.0, -1.0, -1.0]])
    _check_bit_linear(fn, x, Wt, 2.0, torch.tensor([0.5, 0.25]), torch.tensor([1.0, 0.0]),
                      "the docstring's example (K = 3, x = [0.5, -1, 0])")
    for K, seed in ((70, 23), (100, 24), (1, 25)):
        x, Wt = _xw(seed, 4, 3, K, zeros=True)
        _check_bit_linear(fn, x, Wt, 1.0, torch.ones(3), torch.zeros(3),
                          f"x of shape (4, {K}) with exact zeros (every 5th element), K not a multiple of 64, "
                          "scales 1, bias 0")


def _q2_scales(fn):
    x, Wt = _xw(26, 4, 6, 130, zeros=True)
    w_alpha, bias = _layer(27, 6)
    _check_bit_linear(fn, x, Wt, 0.37, w_alpha, bias, f"x of shape (4, 130), 6 outputs, act_alpha = 0.37, "
                                                      f"w_alpha = {show(w_alpha, 3)}, bias = {show(bias, 3)}")


def _q2_bert(fn):
    x, Wt = _xw(28, 8, 64, 768)
    _check_bit_linear(fn, x, Wt, 0.8, Wt.abs().mean(dim=1), 0.1 * randn(29, 64),
                      "a BERT-sized layer: x of shape (8, 768), 64 outputs, act_alpha = 0.8, "
                      "w_alpha = mean |W| per row")


# ------------------------------------------------------------------------------- q3 helpers
def _check_and(fn, p, v, on):
    """p: (M, K) booleans (the {0, 1} rows), v: (N, K) floats (their signs are the +-1 rows)."""
    p = np.asarray(p, dtype=bool)
    M, K = p.shape
    N = v.shape[0]
    pw, vw = _pack(p), _pack(np.asarray(v) >= 0)
    W = pw.shape[1]
    got = _values(call(fn, pw.copy(), vw.copy(), K, on=on), "and_product", on, (M, N))
    P01, sv = _t(p), _signs(v)
    want = P01 @ sv.T
    if _same(got, want, 0, 0):
        return
    (m, n), e, g = _first_difference(got, want)
    both, ones = _and_counts(pw, vw), _pc(pw).sum(-1)[:, None]
    msg = (f"and_product on {on}: C[{m}, {n}] should be {e:.0f} (= sum of v[{n}] over the {int(ones[m, 0])} keys where "
           f"p[{m}] = 1), got {g:.6g}.")
    xnor = "The {0, 1} operand is treated as signs (XNOR): "
    raise CheckFailed(_explain(msg, got, [
        (lambda: bool((got.abs() > 1e15).any()), _WRAP),
        (lambda: _t(K - 2 * _xor_counts(pw, vw)),
         xnor + "K - 2 * popcount(p ^ v) counts every 0 of p as -1. In p @ v a 0 in p contributes 0 whatever v is: "
                "C = 2 * popcount(p & v) - popcount(p)."),
        (lambda: _t(64 * W - 2 * _xor_counts(pw, vw)),
         xnor + "counting agreeing bits with ~(p ^ v) takes p = 0 with v = -1 (bits 0 and 0) as an agreement, and the "
                "padding bits too. A 0 in p contributes nothing: C = 2 * popcount(p & v) - popcount(p)."),
        (lambda: _t(2 * both), f"The popcount(p) term is missing: 2 * popcount(p & v) = {int(2 * both[m, n])} adds 2 "
                               "for each v = +1 where p = 1; each p = 1 with v = -1 must give -1, so subtract the "
                               "number of ones of p: 2 * popcount(p & v) - popcount(p)."),
        (lambda: _t(both), "That counts only the +1s, popcount(p & v): the -1s where p = 1 count too, "
                           "C = 2 * popcount(p & v) - popcount(p)."),
        (lambda: _t(2 * both - K), f"You subtract K = {K}; subtract popcount(p), the number of ones of row m of p (the "
                                   "keys it attends to): a 0 in p contributes nothing."),
        (lambda: _t(2 * both - _pc(vw).sum(-1)[None, :]),
         "You subtract popcount(v), the +1s of v; subtract popcount(p), the ones of row m of p: "
         "C = 2 * popcount(p & v) - popcount(p)."),
        (lambda: -want, "The sign is flipped: C = 2 * popcount(p & v) - popcount(p) (+1 where v = +1)."),
    ]))


def _pv(seed, M, N, K, density=0.4):
    g = generator(seed)
    return (torch.rand(M, K, generator=g) < density).numpy(), torch.randn(N, K, generator=g).numpy()


def _q3_whole_words(fn):
    _check_and(fn, np.array([[1, 0, 1, 1]]), np.array([[1.0, 1.0, -1.0, 1.0]]),
               "the docstring's example p = [1, 0, 1, 1], v = [+1, +1, -1, +1]")
    for K, seed in ((64, 31), (128, 32)):
        p, v = _pv(seed, 4, 5, K)
        _check_and(fn, p, v, f"K = {K} ({_words(K)}), p of shape (4, {K}) 40% ones, v of shape (5, {K})")


def _q3_padding(fn):
    for K, seed in ((1, 33), (70, 34), (100, 35), (130, 36)):
        p, v = _pv(seed, 3, 4, K, 0.6)
        _check_and(fn, p, v, f"K = {K} (not a multiple of 64: the last word padded), p 60% ones")


def _q3_rows(fn):
    p, v = _pv(37, 4, 3, 70)
    p[0] = False  # a query that attends to no key
    p[1] = True  # one that attends to every key
    _check_and(fn, p, v, "K = 70 with a row of p all 0 (C = 0) and a row all 1 (C = the sum of v)")
    _check_and(fn, np.zeros((2, 130), bool), v[:, :1].repeat(130, 1), "p all 0, K = 130")


def _q3_attention(fn):
    g = generator(38)
    probs = torch.softmax(2 * torch.randn(16, 70, generator=g), -1)
    p = (probs / 0.1 > 0.5).numpy()  # BiT's {0, alpha_p} bits of real attention rows
    v = torch.randn(32, 70, generator=g).numpy()  # V^T: one row per value channel, along the 70 tokens
    _check_and(fn, p, v, "attention-sized operands: 16 query rows of softmax bits over 70 keys, 32 channels of V")
    _check_and(fn, np.ones((1, 1), bool), -np.ones((1, 1)), "K = 1, p = [1], v = [-1] (C = -1)")


# ------------------------------------------------------------------------------- q4 helpers
def _fake_quant_context(probs, v, alpha_p, alpha_v):
    """The model's own formula: elastic(probs, alpha_p, unsigned) @ elastic(v, alpha_v, signed), in float64."""
    a = Q.elastic(probs, torch.tensor(alpha_p), 1, signed=False).double()
    b = Q.elastic(v, torch.tensor(alpha_v), 1, signed=True).double()
    return a @ b


def _check_attention(fn, probs, v, alpha_p, alpha_v, on):
    B, H, L, d = v.shape
    try:
        got = call(fn, probs.clone(), v.clone(), alpha_p, alpha_v, on=on)
    except CheckFailed as e:
        if L != d:
            raise CheckFailed(f"{e} Mind the two layouts: the probabilities are packed along the keys (L rows of L "
                              f"bits per head) and V along the tokens, v[b, h].transpose(-1, -2) (d = {d} rows of "
                              f"L = {L} bits), so that the AND product sums over the keys.") from None
        raise
    got = _values(got, "bit_attention", on, (B, H, L, d))
    want = _fake_quant_context(probs, v, alpha_p, alpha_v)
    if _same(got, want):
        return
    idx, e, g = _first_difference(got, want)
    msg = f"bit_attention on {on}: context{list(idx)} should be {e:.6g}, got {g:.6g}."
    a = alpha_p * alpha_v
    A = (probs / alpha_p > 0.5).double()
    S = _signs(v)
    raise CheckFailed(_explain(msg, got, [
        (lambda: bool((got.abs() > 1e15).any()), _WRAP),
        (lambda: a * (A @ S.transpose(-1, -2)) if L == d else None,
         "V is packed along d (one word row per token): the product sums over the keys, so V is packed along the "
         "tokens, the rows of v[b, h].transpose(-1, -2), one row of L bits per channel."),
        (lambda: a * ((2 * A - 1) @ S), "That is the XNOR product, K - 2 * popcount(p ^ v): it takes the 0 bits of "
                                        "the probabilities as -1. A {0, alpha_p} operand needs the AND product, "
                                        "and_product (Q3)."),
        (lambda: a * (probs > 0.5).double() @ S if alpha_p != 1 else None,
         f"The probabilities' bits are 1{{probs > 1/2}}: the threshold ignores alpha_p = {alpha_p:g}. BiT's bit is 1 "
         "where probs / alpha_p > 1/2 (the nearer of 0 and alpha_p)."),
        (lambda: a * (probs / alpha_p >= 0.5).double() @ S,
         "Where probs / alpha_p is exactly 1/2 your bit is 1: BiT rounds 1/2 down to 0 (torch.round), so the bit is "
         "1 where probs / alpha_p > 1/2, strict."),
        (lambda: a * torch.ones_like(A) @ S, "Every probability got bit 1: the sign of a probability is always +1 "
                                             "(pack_signs). BiT's {0, alpha_p} bit is 1 where probs / alpha_p > 1/2 "
                                             "(pack_bits01 of that)."),
        (lambda: a * A @ torch.where(v > 0, 1.0, -1.0).double(),
         "The difference is at the values equal to 0: sign(0) = +1, so their bit is 1 (v >= 0, not v > 0)."),
        (lambda: A @ S, "The scales are missing: each bit of the probabilities is worth alpha_p and each of V "
                        "+-alpha_v, so the context is alpha_p * alpha_v * and_product(...)."),
        (lambda: alpha_v * A @ S, "alpha_p is missing: the context is alpha_p * alpha_v * and_product(...)."),
        (lambda: alpha_p * A @ S, "alpha_v is missing: the context is alpha_p * alpha_v * and_product(...)."),
        (lambda: a * a * A @ S,
         "The scale is applied twice: the context is alpha_p * alpha_v * and_product(...), once."),
    ]))


def _attention_inputs(seed, B, H, L, d, lengths=None, temperature=2.0):
    g = generator(seed)
    scores = temperature * torch.randn(B, H, L, L, generator=g)
    if lengths is not None:
        pad = torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]  # (B, L): padded keys
        scores = scores.masked_fill(pad[:, None, None, :], -10000.0)
    return torch.softmax(scores, -1), torch.randn(B, H, L, d, generator=g)


def _q4_small(fn):
    probs = torch.tensor([[[[0.7, 0.3], [0.45, 0.55]]]])
    v = torch.tensor([[[[0.5, 1.0], [-2.0, 0.0]]]])
    _check_attention(fn, probs, v, 0.8, 1.5, "the docstring's example (L = d = 2, alpha_p = 0.8, alpha_v = 1.5)")
    probs, v = _attention_inputs(41, 1, 1, 6, 6)
    _check_attention(fn, probs, v, 0.3, 0.7, "one head, L = d = 6, alpha_p = 0.3, alpha_v = 0.7")


def _q4_layout(fn):
    probs, v = _attention_inputs(42, 1, 2, 20, 16)
    _check_attention(fn, probs, v, 0.15, 1.2, "2 heads, L = 20 tokens, d = 16, alpha_p = 0.15, alpha_v = 1.2")
    probs, v = _attention_inputs(43, 1, 1, 70, 8)
    _check_attention(fn, probs, v, 0.05, 0.9, "one head, L = 70 tokens (two words per row), d = 8, alpha_p = 0.05")


def _q4_boundaries(fn):
    probs, v = _attention_inputs(44, 1, 2, 8, 8)
    probs[..., ::3] = 0.125  # probs / alpha_p = 1/2 exactly
    v[..., ::4, :] = 0.0
    _check_attention(fn, probs, v, 0.25, 1.0, "L = d = 8 with probs = 0.125 = alpha_p / 2 exactly (alpha_p = 0.25) "
                                              "and rows of V equal to 0")


def _q4_batch(fn):
    probs, v = _attention_inputs(45, 2, 3, 70, 32, lengths=[70, 41])
    _check_attention(fn, probs, v, 0.04, 0.8, "a batch of 2 sentences (70 and 41 real tokens, padded keys), 3 heads, "
                                              "d = 32, alpha_p = 0.04, alpha_v = 0.8")


# --------------------------------------------------------------------------------- questions
q1 = Question(
    "q1", "binary_linear", "A binary linear layer from packed sign bits: alpha * (K - 2 popcount) + bias",
    checks=[
        Check("whole words, alpha = 1, bias = 0: the popcount identity", 1, _q1_whole_words),
        Check("K not a multiple of 64 (the padding bits of the last word)", 1, _q1_padding),
        Check("one alpha and one bias per output feature, bias after the scale", 1, _q1_scales),
        Check("a float32 torch tensor, as BinaryLinear returns", 1, _q1_dtype),
        Check("BERT-sized layers, K = 768 and K = 3072 (no integer overflow)", 1, _q1_bert),
    ],
    hints=[
        """Broadcasting pairs every input row with every weight row: `x_words[:, None, :] ^ w_words[None, :, :]` has
        shape (M, N, W). `np.bitwise_count` of it, summed over the words (the last axis), is d, the number of
        different signs, and P = K - 2 * d. Sum with `dtype=np.int64`: in np.uint64, K - 2 * d wraps around below 0.""",
        """Turn P into a float32 tensor, `torch.from_numpy(P).float()`, then `alpha * P + bias`: torch broadcasts the
        (N,) scale and bias along the last axis, so output feature n gets alpha[n] and bias[n].""",
    ],
    solution=binary_linear,
    congrats="This is binlab.kernels.linear.BinaryLinear's arithmetic: the engine runs every binarized linear layer "
             "this way, with one fused numba kernel instead of the (M, N, W) array.",
)

q2 = Question(
    "q2", "bit_linear", "The engine's binary linear layer on a float input: sign bits, then (a_in alpha_W) P + b",
    checks=[
        Check("sign bits packed in binlab's layout (K = 64 and 128, scales 1)", 1, _q2_layout),
        Check("sign(0) = +1 and K not a multiple of 64 (padding bits 0)", 1, _q2_zeros_padding),
        Check("the scale act_alpha * w_alpha[n], then the bias", 1, _q2_scales),
        Check("a BERT-sized layer (8 x 768 -> 64) equals the fake-quant float layer", 1, _q2_bert),
    ],
    hints=[
        """Binarize and pack x as binlab does: `binlab.kernels.packing.pack_signs(x)` (imported at the top), or your
        pack_signs from exercise 1 on `x.numpy()`. Bit 1 where x >= 0; element k in bit k % 64 of word k // 64; the
        padding bits 0.""",
        """Then it is Q1 with a different scale: `binary_linear(words, w_words, K, act_alpha * w_alpha, bias)`. Each
        input bit is worth +-act_alpha and each weight bit +-w_alpha[n], so one product of two bits is worth their
        product.""",
    ],
    solution=bit_linear,
    uses=[q1],  # a learner's bit_linear may call their binary_linear
    congrats="This is a layer of binlab.infer.engine.PackedBert: c = a_in * alpha_W per output, y = c * P + b "
             "(binlab.infer.fused.affine).",
)

q3 = Question(
    "q3", "and_product", "The {0, 1} x {-1, +1} product: 2 popcount(p AND v) - popcount(p)",
    checks=[
        Check("the worked example and whole words", 1, _q3_whole_words),
        Check("K not a multiple of 64", 1, _q3_padding),
        Check("rows of p all 0 (C = 0) and all 1 (C = the sum of v)", 1, _q3_rows),
        Check("attention-sized operands: softmax bits over 70 keys against 32 channels of V", 1, _q3_attention),
    ],
    hints=[
        """Only the keys where p = 1 count, each +1 or -1 by v: with n_plus = popcount(p & v) (p = 1 and v = +1) and
        popcount(p) keys in all, the sum is n_plus - (popcount(p) - n_plus).""",
        """`np.bitwise_count(p_words[:, None, :] & v_words[None, :, :]).sum(axis=-1, dtype=np.int64)` is n_plus
        (M, N); `np.bitwise_count(p_words).sum(axis=-1, dtype=np.int64)[:, None]` is popcount(p) for each row.""",
    ],
    solution=and_product,
    congrats="This is binlab.kernels.products.and_gemm (its SIMD backend computes the equal "
             "popcount(v) - popcount(p ^ v)).",
)

q4 = Question(
    "q4", "bit_attention", "BiT's attention context from bits: alpha_p alpha_v AND-popcount, V packed along the tokens",
    checks=[
        Check("the worked example and one head with L = d = 6", 1, _q4_small),
        Check("V packed along the tokens (L = 20 and L = 70 keys, d != L)", 2, _q4_layout),
        Check("probs / alpha_p = 1/2 exactly gives 0, v = 0 gives +alpha_v", 1, _q4_boundaries),
        Check("a padded batch, 3 heads, as the model's elastic(probs) @ elastic(v)", 1, _q4_batch),
    ],
    hints=[
        """The bits: `(probs / alpha_p > 0.5)` for the probabilities, packed along the last axis (the keys), and
        `(v >= 0).transpose(-1, -2)` for V, so that V is packed along the tokens: per head, L rows of L bits against
        d rows of L bits (binlab's `pack_bits01` and `pack_signs` do the packing:
        `pack_signs(v.transpose(-1, -2))`).""",
        """Per batch item and head, `and_product(p_words[b, h], v_words[b, h], L)` is the (L, d) integer context;
        multiply by alpha_p * alpha_v and return a float32 tensor.""",
    ],
    solution=bit_attention,
    uses=[q3],  # a learner's bit_attention may call their and_product
    congrats="This is the engine's context: and_bmm(pack_bits01(p), pack_signs(v.transpose(-1, -2)), L), times "
             "a_p * a_v (binlab.infer.engine.PackedBert._attention).",
)

EXERCISE = Exercise("08_bitwise_bert",
                    "A W1A1 BERT from bits: the binary linear layer and BiT's AND-popcount attention",
                    [q1, q2, q3, q4])


# ---------------------------------------------------------------------------------- mistakes
def _lin(x_words, w_words, k, alpha, bias, P):
    return alpha * torch.from_numpy(np.asarray(P, dtype=np.int64)).float() + bias


def _bl_popcount_only(x_words, w_words, k, alpha, bias):
    return _lin(x_words, w_words, k, alpha, bias, _xor_counts(x_words, w_words))


def _bl_k_minus_popcount(x_words, w_words, k, alpha, bias):
    return _lin(x_words, w_words, k, alpha, bias, k - _xor_counts(x_words, w_words))


def _bl_padded_length(x_words, w_words, k, alpha, bias):
    return _lin(x_words, w_words, k, alpha, bias, 64 * x_words.shape[1] - 2 * _xor_counts(x_words, w_words))


def _bl_xnor_agreements(x_words, w_words, k, alpha, bias):
    agree = np.bitwise_count(~(x_words[:, None, :] ^ w_words[None, :, :])).sum(axis=-1, dtype=np.int64)
    return _lin(x_words, w_words, k, alpha, bias, 2 * agree - k)  # agreements - disagreements, padding counted


def _bl_and(x_words, w_words, k, alpha, bias):
    return _lin(x_words, w_words, k, alpha, bias,
                2 * _and_counts(x_words, w_words) - _pc(x_words).sum(-1)[:, None])


def _bl_uint64(x_words, w_words, k, alpha, bias):
    d = np.bitwise_count(x_words[:, None, :] ^ w_words[None, :, :]).sum(axis=-1)  # np.uint64
    P = k - 2 * d  # wraps around below 0
    return alpha * torch.from_numpy(P.astype(np.float32)) + bias


def _bl_uint8(x_words, w_words, k, alpha, bias):
    d = np.bitwise_count(x_words[:, None, :] ^ w_words[None, :, :]).sum(axis=-1, dtype=np.uint8)  # wraps at 256
    return _lin(x_words, w_words, k, alpha, bias, k - 2 * d.astype(np.int64))


def _bl_per_column(x_words, w_words, k, alpha, bias):
    P = torch.from_numpy(k - 2 * _xor_counts(x_words, w_words)).float()
    return alpha[:, None] * P + bias[:, None]  # scale of output row m: only runs when M == N


def _bl_bias_before(x_words, w_words, k, alpha, bias):
    P = torch.from_numpy(k - 2 * _xor_counts(x_words, w_words)).float()
    return alpha * (P + bias)


def _bl_float64(x_words, w_words, k, alpha, bias):
    P = k - 2 * _xor_counts(x_words, w_words)  # int64
    return torch.from_numpy(alpha.numpy() * P + bias.numpy())  # float32 * int64 -> float64


def _bl_transposed(x_words, w_words, k, alpha, bias):
    P = torch.from_numpy(k - 2 * _xor_counts(w_words, x_words)).float()  # (N, M)
    return alpha[:, None] * P + bias[:, None]


def _bl_flipped(x_words, w_words, k, alpha, bias):
    return _lin(x_words, w_words, k, alpha, bias, 2 * _xor_counts(x_words, w_words) - k)


def _bit_words(x, order="lsb", pad=False, strict=False):
    return _pack((x > 0 if strict else x >= 0).numpy(), order, pad)


def _bil(x, w_words, c, bias, words=None):
    return binary_linear(_bit_words(x) if words is None else words, w_words, x.shape[-1], c, bias)


def _bil_no_act(x, w_words, act_alpha, w_alpha, bias):
    return _bil(x, w_words, w_alpha, bias)


def _bil_act_twice(x, w_words, act_alpha, w_alpha, bias):
    return _bil(x, w_words, act_alpha * act_alpha * w_alpha, bias)  # the value of an input bit squared


def _bil_w_twice(x, w_words, act_alpha, w_alpha, bias):
    return binary_linear(_bit_words(x), w_words, x.shape[-1], act_alpha * w_alpha, 0 * bias) * w_alpha + bias


def _bil_bias_before(x, w_words, act_alpha, w_alpha, bias):
    return (act_alpha * w_alpha) * binary_linear(_bit_words(x), w_words, x.shape[-1], torch.ones_like(w_alpha), bias)


def _bil_sign_zero(x, w_words, act_alpha, w_alpha, bias):
    return _bil(x, w_words, act_alpha * w_alpha, bias, _bit_words(x, strict=True))


def _bil_msb(x, w_words, act_alpha, w_alpha, bias):
    return _bil(x, w_words, act_alpha * w_alpha, bias, _bit_words(x, "msb"))


def _bil_packbits(x, w_words, act_alpha, w_alpha, bias):
    K = x.shape[-1]
    pad = (-K) % 64
    bits = np.concatenate([(x >= 0).numpy(), np.zeros((x.shape[0], pad), bool)], axis=-1)
    words = np.ascontiguousarray(np.packbits(bits, axis=-1)).view("<u8")  # bitorder='big' by default
    return _bil(x, w_words, act_alpha * w_alpha, bias, words)


def _bil_padded_zeros(x, w_words, act_alpha, w_alpha, bias):
    pad = (-x.shape[-1]) % 64
    xp = torch.cat([x, torch.zeros(x.shape[0], pad)], dim=-1)  # zeros are >= 0: the padding bits become 1
    return _bil(x, w_words, act_alpha * w_alpha, bias, _bit_words(xp))


def _and_xnor(p_words, v_words, k):
    return k - 2 * _xor_counts(p_words, v_words)


def _and_zeros_agree(p_words, v_words, k):
    agree = np.bitwise_count(~(p_words[:, None, :] ^ v_words[None, :, :])).sum(axis=-1, dtype=np.int64)
    differ = _xor_counts(p_words, v_words)
    return agree - differ  # every agreeing bit +1, zeros and padding included


def _and_no_ones(p_words, v_words, k):
    return 2 * _and_counts(p_words, v_words)


def _and_only(p_words, v_words, k):
    return _and_counts(p_words, v_words)


def _and_minus_k(p_words, v_words, k):
    return 2 * _and_counts(p_words, v_words) - k


def _and_ones_of_v(p_words, v_words, k):
    return 2 * _and_counts(p_words, v_words) - _pc(v_words).sum(-1)[None, :]


def _and_uint64(p_words, v_words, k):
    both = np.bitwise_count(p_words[:, None, :] & v_words[None, :, :]).sum(axis=-1)  # np.uint64
    ones = np.bitwise_count(p_words).sum(axis=-1)
    return 2 * both - ones[:, None]  # wraps around below 0


def _att(probs, v, alpha_p, alpha_v, *, p_bits=None, v_bits=None, along_d=False, product=and_product, scale=None):
    B, H, L, d = v.shape
    pb = (probs / alpha_p > 0.5) if p_bits is None else p_bits
    vb = (v >= 0) if v_bits is None else v_bits
    p_words = _pack(pb.numpy())
    v_words = _pack(vb.numpy() if along_d else vb.transpose(-1, -2).numpy())
    out = torch.empty(B, H, L, d)
    for b in range(B):
        for h in range(H):
            out[b, h] = torch.from_numpy(np.asarray(product(p_words[b, h], v_words[b, h], L))).float()
    return (alpha_p * alpha_v if scale is None else scale) * out


MISTAKES = [
    Mistake("q1", "popcount_only", "alpha * popcount + bias: the popcount is taken for the dot product",
            _bl_popcount_only, "K - 2 * popcount"),
    Mistake("q1", "k_minus_popcount", "K - popcount: each different sign counted once", _bl_k_minus_popcount,
            "each different sign costs 2"),
    Mistake("q1", "padded_length", "64 * W - 2 * popcount: the padding bits counted as elements", _bl_padded_length,
            "padding bits of the last word are not elements"),
    Mistake("q1", "xnor_agreements", "2 * popcount(~(x ^ w)) - K: XNOR counts the padding bits as agreements",
            _bl_xnor_agreements, "also counts the padding bits"),
    Mistake("q1", "and_for_xnor", "2 * popcount(x & w) - popcount(x): AND where XOR is needed", _bl_and,
            "you used and"),
    Mistake("q1", "uint64_wrap", "K - 2 * d in np.uint64: wraps around below 0", _bl_uint64, "wraps around"),
    Mistake("q1", "uint8_accumulator", "the popcounts summed in np.uint8: wraps at 256", _bl_uint8,
            "wrapped at 256"),
    Mistake("q1", "alpha_per_column", "alpha[:, None] * P: the scale of output row m instead of feature n",
            _bl_per_column, "one scale per output feature"),
    Mistake("q1", "bias_before_scale", "alpha * (P + bias)", _bl_bias_before, "added after the scale"),
    Mistake("q1", "float64", "float32 alpha times int64 P in numpy: a float64 result", _bl_float64,
            "the engine return float32"),
    Mistake("q1", "transposed", "(N, M): the weight rows first", _bl_transposed, "transposed"),
    Mistake("q1", "sign_flipped", "2 * popcount - K", _bl_flipped, "sign is flipped"),
    Mistake("q2", "act_alpha_missing", "alpha_W * P + b: the value of an input bit forgotten", _bil_no_act,
            "act_alpha = 0.37 is missing"),
    Mistake("q2", "act_alpha_twice", "act_alpha ** 2 * alpha_W * P + b", _bil_act_twice, "applied twice"),
    Mistake("q2", "w_alpha_twice", "binary_linear with the whole scale, then times alpha_W again", _bil_w_twice,
            "applied twice"),
    Mistake("q2", "bias_before_scale", "c * (P + b)", _bil_bias_before, "added after the scale"),
    Mistake("q2", "sign_zero_negative", "bits of x > 0: sign(0) = -1", _bil_sign_zero, "sign(0) = +1"),
    Mistake("q2", "msb_first", "element k in bit 63 - k % 64", _bil_msb, "reverse order"),
    Mistake("q2", "packbits_big_endian", "np.packbits without bitorder='little'", _bil_packbits,
            "bitorder='little'"),
    Mistake("q2", "padding_set", "x padded with zeros before packing: the padding bits become 1", _bil_padded_zeros,
            "padding bits of x's last word are 1"),
    Mistake("q3", "xnor_for_and", "K - 2 * popcount(p ^ v): the {0, 1} operand taken as signs", _and_xnor,
            "treated as signs (xnor)"),
    Mistake("q3", "zeros_agree", "popcount(~(p ^ v)) - popcount(p ^ v): p = 0 and v = -1 counted as agreeing",
            _and_zeros_agree, "takes p = 0 with v = -1"),
    Mistake("q3", "ones_term_missing", "2 * popcount(p & v)", _and_no_ones, "popcount(p) term is missing"),
    Mistake("q3", "and_only", "popcount(p & v): the -1s not counted", _and_only, "counts only the +1s"),
    Mistake("q3", "minus_k", "2 * popcount(p & v) - K", _and_minus_k, "you subtract k"),
    Mistake("q3", "ones_of_v", "2 * popcount(p & v) - popcount(v)", _and_ones_of_v, "you subtract popcount(v)"),
    Mistake("q3", "uint64_wrap", "2 * both - ones in np.uint64: wraps around below 0", _and_uint64, "wraps around"),
    Mistake("q4", "v_along_d", "V packed along d instead of along the tokens", lambda p, v, ap, av: _att(
        p, v, ap, av, along_d=True), "packed along the tokens"),
    Mistake("q4", "xnor_product", "the XNOR product for {0, 1} x {-1, +1}", lambda p, v, ap, av: _att(
        p, v, ap, av, product=_and_xnor), "xnor product"),
    Mistake("q4", "threshold_ignores_alpha", "bits of probs > 1/2", lambda p, v, ap, av: _att(
        p, v, ap, av, p_bits=p > 0.5), "ignores alpha_p"),
    Mistake("q4", "half_rounds_up", "bits of probs / alpha_p >= 1/2", lambda p, v, ap, av: _att(
        p, v, ap, av, p_bits=p / ap >= 0.5), "exactly 1/2"),
    Mistake("q4", "probs_sign_bits", "pack_signs(probs): every bit 1", lambda p, v, ap, av: _att(
        p, v, ap, av, p_bits=p >= 0), "sign of a probability is always +1"),
    Mistake("q4", "v_sign_zero", "bits of v > 0: sign(0) = -1", lambda p, v, ap, av: _att(
        p, v, ap, av, v_bits=v > 0), "sign(0) = +1"),
    Mistake("q4", "no_scales", "the integer product without alpha_p * alpha_v", lambda p, v, ap, av: _att(
        p, v, ap, av, scale=1.0), "scales are missing"),
    Mistake("q4", "alpha_p_missing", "alpha_v * P", lambda p, v, ap, av: _att(p, v, ap, av, scale=av),
            "alpha_p is missing"),
]
