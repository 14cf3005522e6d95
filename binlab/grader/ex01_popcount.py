"""Exercise 1 (``exercises/01_popcount.ipynb``): bits, popcount and the XNOR dot product.

Questions (NumPy arrays in, NumPy arrays out; ``np.uint64`` words):

* q1 ``pack_signs(x)``: the signs of ``x`` packed along the last axis into 64-bit words;
* q2 ``popcount64(words)``: the number of 1-bits of each word;
* q3 ``xnor_dot(a_words, b_words, K)``: the dot product of two ±1 vectors from their words;
* q4 ``xnor_matmul(A_words, B_words, K)``: a packed matrix product, ``sign(A) @ sign(B).T``.

The bit-packing convention is binlab's (shared with its kernels): element k of the last axis goes to
bit ``k % 64`` of word ``k // 64`` (least significant bit first), the bit is 1 iff ``x >= 0`` (so
sign(0) = +1), and the padding bits of the last word are 0. Every check compares with a plain
NumPy/torch computation on floats (``np.where(x >= 0, 1, -1)``, a float matrix product).

The functions below named like the questions are the reference solutions that ``q1.solution()``
prints; ``MISTAKES`` lists typical wrong answers, used by the tests. Q3 and Q4 may call the learner's
earlier answers (``popcount64``, ``xnor_dot``): when one of those fails its own check, the grader says
so and grades the later answer with the reference version as well (``uses`` in
:class:`~binlab.grader.core.Question`).
"""

from __future__ import annotations

import numpy as np

from binlab.grader.core import Check, CheckFailed, Exercise, Mistake, Question, call

__all__ = ["q1", "q2", "q3", "q4", "EXERCISE", "MISTAKES",
           "pack_signs", "popcount64", "xnor_dot", "xnor_matmul"]


# ------------------------------------------------------------------------ reference solutions
def pack_signs(x):
    """Pack the signs of ``x`` (shape (K,) or (M, K)) along the last axis into np.uint64 words.

    The result has shape (W,) or (M, W) with W = ceil(K / 64) words per row, and

        bit (k % 64) of word (k // 64)  =  1 if x[..., k] >= 0 else 0      (so sign(0) = +1)

    Bit 0 is the least significant bit. The padding bits of the last word (bits K % 64 to 63,
    when 64 does not divide K) must be 0.
    Example: x = [0.5, -1.0, 0.0, -2.0] has bits 1, 0, 1, 0, so the word is 0b0101 = 5.
    """
    x = np.asarray(x)
    K = x.shape[-1]
    W = (K + 63) // 64
    bits = np.zeros(x.shape[:-1] + (W * 64,), dtype=np.uint64)
    bits[..., :K] = x >= 0  # the padding bits stay 0
    bits = bits.reshape(x.shape[:-1] + (W, 64))
    shifts = np.arange(64, dtype=np.uint64)  # element k -> bit k % 64
    return np.bitwise_or.reduce(bits << shifts, axis=-1)


def popcount64(words):
    """The number of 1-bits of each np.uint64 word, for an array of any shape.

        popcount(w) = sum over i = 0..63 of  (w >> i) & 1

    Example: popcount64(np.array([0, 1, 0b1011, 2**64 - 1], dtype=np.uint64)) -> [0, 1, 3, 64].
    """
    w = np.asarray(words, dtype=np.uint64)
    count = np.zeros(w.shape, dtype=np.int64)
    for i in range(64):
        count += ((w >> np.uint64(i)) & np.uint64(1)).astype(np.int64)
    return count


def xnor_dot(a_words, b_words, K):
    """The dot product of two ±1 vectors of length K, from their packed signs (1-D word arrays).

    Equal signs multiply to +1 and different signs to -1, and a XOR b marks the different ones:

        a . b  =  (K - d) - d  =  K - 2 d,     d = sum over words of popcount(a_words XOR b_words)

    The padding bits are 0 in both vectors, so they never count as different.
    Example: a = [+1, -1, +1], b = [+1, +1, -1]: words 0b101 and 0b011, XOR 0b110, d = 2,
    a . b = 3 - 2*2 = -1.
    """
    d = np.bitwise_count(np.bitwise_xor(a_words, b_words)).sum()  # or popcount64(...) from Q2
    return int(K - 2 * int(d))


def xnor_matmul(A_words, B_words, K):
    """C = A @ B.T for ±1 matrices A (M x K) and B (N x K), from their packed rows.

    A_words has shape (M, W), B_words (N, W); the result is the (M, N) integer matrix

        C[m, n]  =  K - 2 * sum over w of popcount(A_words[m, w] XOR B_words[n, w])

    (a linear layer y = x W^T with binary x and W is exactly this, one row of W per output).
    """
    A_words, B_words = np.asarray(A_words), np.asarray(B_words)
    x = np.bitwise_xor(A_words[:, None, :], B_words[None, :, :])  # (M, N, W)
    return K - 2 * np.bitwise_count(x).sum(axis=-1, dtype=np.int64)


# ------------------------------------------------------------------------------ check helpers
def _signs(x):
    """±1 floats with sign(0) = +1: the plain reference the packed code must agree with."""
    return np.where(np.asarray(x) >= 0, 1.0, -1.0)


def _rand(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def _word_mask(K):
    """Mask of the bits of the last word that hold elements (the others are padding)."""
    r = K % 64
    return (1 << r) - 1 if r else (1 << 64) - 1


def _reverse_bits(w: int) -> int:
    return int(f"{w:064b}"[::-1], 2)


def _reverse_bits_in_bytes(w: int) -> int:
    return int.from_bytes(bytes(int(f"{b:08b}"[::-1], 2) for b in w.to_bytes(8, "little")), "little")


def _as_array(got, what, on):
    if got is None:
        raise CheckFailed(f"{what} returned None on {on}: did you forget the return statement?")
    if hasattr(got, "detach"):  # a torch tensor
        got = got.detach().cpu().numpy()
    try:
        arr = np.asarray(got)
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"{what} returned a {type(got).__name__}, which is not an array ({e}), on {on}.") from None
    if arr.dtype == object:
        raise CheckFailed(f"{what} returned an array of Python objects on {on}; expected numbers.")
    return arr


def _describe(x):
    x = np.asarray(x)
    return f"x of shape {x.shape}"


def _check_pack(fn, x):
    """Compare fn(x) with the reference words; explain the first difference to the learner."""
    on = _describe(x)
    x_in = x.copy()
    got = _as_array(call(fn, x_in, on=on), "pack_signs", on)
    if not np.array_equal(x_in, x):
        raise CheckFailed(f"pack_signs changed its input x in place (on {on}); work on a copy.")
    expected = pack_signs(x)
    if got.shape != expected.shape:
        K = x.shape[-1]
        raise CheckFailed(
            f"wrong shape on {on}: expected {expected.shape} (K = {K} elements need ceil({K}/64) = "
            f"{expected.shape[-1]} word(s) per row), got {got.shape}.")
    if got.dtype != np.uint64:
        raise CheckFailed(f"wrong dtype on {on}: expected np.uint64 words, got {got.dtype}. "
                          "Build the words as np.uint64 (e.g. bits.astype(np.uint64) << shifts).")
    if np.array_equal(got, expected):
        return
    K = x.shape[-1]
    flat_x = x.reshape(-1, K)
    g, e = got.reshape(-1, expected.shape[-1]), expected.reshape(-1, expected.shape[-1])
    row, word = (int(i) for i in np.argwhere(g != e)[0])
    gw, ew = int(g[row, word]), int(e[row, word])
    where = f"row {row}, word {word}" if x.ndim > 1 else f"word {word}"
    msg = (f"on {on}, {where} (elements {64 * word}..{min(64 * word + 63, K - 1)}): "
           f"expected {ew:#018x}, got {gw:#018x}.")
    ge, ee = [int(v) for v in g.ravel()], [int(v) for v in e.ravel()]
    last = word == expected.shape[-1] - 1
    mask = _word_mask(K) if last else (1 << 64) - 1
    if all(_reverse_bits(a) == b for a, b in zip(ee, ge)):
        msg += (" Your bits are in the reverse order: element k goes to bit k % 64, counting from the"
                " least significant bit (bit 0 = the value 1), not to bit 63 - k % 64.")
    elif all(_reverse_bits_in_bytes(a) == b for a, b in zip(ee, ge)):
        msg += (" The bits inside each byte are reversed: np.packbits puts the first element in the"
                " most significant bit unless you pass bitorder='little'.")
    elif last and (gw & mask) == (ew & mask):
        msg += (f" The elements are right but the padding bits are not 0: with K = {K}, bits "
                f"{K % 64}..63 of the last word hold no element and must stay 0 (padding x with"
                " zeros sets them to 1, because sign(0) = +1).")
    else:
        zero_bits = 0
        for k in range(64 * word, min(64 * word + 64, K)):
            if flat_x[row, k] == 0:
                zero_bits |= 1 << (k - 64 * word)
        if zero_bits and (gw ^ ew) & ~zero_bits == 0:
            msg += (" The difference is exactly at the elements equal to 0: sign(0) = +1 in binlab,"
                    " so 0 gets bit 1 (test x >= 0, not x > 0).")
        else:
            diff = gw ^ ew
            first = (diff & -diff).bit_length() - 1
            k = 64 * word + first
            msg += (f" The first wrong bit is bit {first}, which holds element k = {k} "
                    f"(x[..., {k}] = {float(flat_x[row, k]):.3g}, so the bit should be "
                    f"{(ew >> first) & 1}).")
    raise CheckFailed(msg)


def _words(rng, shape):
    return rng.integers(0, 2**64, size=shape, dtype=np.uint64)


def _ref_popcount(w):
    return np.bitwise_count(np.asarray(w, dtype=np.uint64)).astype(np.int64)


def _check_counts(fn, words):
    on = f"words of shape {words.shape}"
    w_in = words.copy()
    got = _as_array(call(fn, w_in, on=on), "popcount64", on)
    expected = _ref_popcount(words)
    if got.shape != expected.shape:
        raise CheckFailed(f"wrong shape on {on}: expected one count per word, shape {expected.shape}, "
                          f"got {got.shape}.")
    if not np.issubdtype(got.dtype, np.number):
        raise CheckFailed(f"popcount64 returned {got.dtype} values on {on}; expected integer counts.")
    if np.array_equal(got.astype(np.float64), expected.astype(np.float64)):
        return
    i = tuple(int(v) for v in np.argwhere(got.astype(np.float64) != expected)[0])
    w = int(words[i])
    msg = f"popcount64 of {w:#018x} (= {w}) should be {int(expected[i])}, yours gave {got[i]}."
    low = _ref_popcount(words & np.uint64(0xFFFFFFFF))
    if np.array_equal(got.astype(np.float64), low.astype(np.float64)):
        msg += " Only the low 32 bits are counted: a word has 64 bits."
    elif w >= 2**63:
        msg += (" The top bit is set in this word: if you converted to a signed int64 it became"
                " negative; keep np.uint64 (or Python int) arithmetic.")
    raise CheckFailed(msg)


def _check_dot(fn, K, rng, a=None, b=None, on=""):
    if a is None:
        a, b = _rand(rng, K), _rand(rng, K)
    aw, bw = pack_signs(a), pack_signs(b)
    on = on or f"K = {K} (a_words and b_words of {aw.shape[0]} word(s))"
    got = call(fn, aw.copy(), bw.copy(), K, on=on)
    expected = int(_signs(a) @ _signs(b))
    try:
        value = float(np.asarray(got.detach() if hasattr(got, "detach") else got))
    except Exception:  # noqa: BLE001
        raise CheckFailed(f"xnor_dot returned {type(got).__name__} on {on}; expected one number.") from None
    if value == expected:
        return
    d = int(_ref_popcount(aw ^ bw).sum())
    W = aw.shape[0]
    msg = f"on {on}: expected a . b = {expected} (the float dot product of the signs), got {value:g}."
    if value == d:
        msg += f" {d} is the number of different signs, popcount(a XOR b); the dot product is K - 2*popcount."
    elif value == K - d:
        msg += f" {K - d} is K - popcount: the number of equal signs. Each different sign costs 2: K - 2*popcount."
    elif value == 64 * W - 2 * d:
        msg += (f" That is 64*W - 2*popcount with W = {W} words: use K = {K}, the padding bits are not"
                " elements of the vector.")
    elif value == 2 * (64 * W - d) - K:
        msg += (" Counting equal bits with ~(a ^ b) (XNOR) also counts the padding bits, which are equal"
                " (0 and 0) in both words: use K - 2*popcount(a ^ b).")
    elif value == -expected:
        msg += " The sign is flipped: XOR marks the positions where the signs differ (product -1)."
    raise CheckFailed(msg)


def _check_matmul(fn, M, N, K, rng, use_torch=False):
    A, B = _rand(rng, (M, K)), _rand(rng, (N, K))
    Aw, Bw = pack_signs(A), pack_signs(B)
    on = f"A of shape ({M}, {K}) and B of shape ({N}, {K}) (A_words {Aw.shape}, B_words {Bw.shape})"
    got = _as_array(call(fn, Aw.copy(), Bw.copy(), K, on=on), "xnor_matmul", on)
    if use_torch:
        import torch  # exercise 1 runs on numpy alone; torch only for this cross-check

        expected = (torch.from_numpy(_signs(A)) @ torch.from_numpy(_signs(B)).T).numpy()
    else:
        expected = _signs(A) @ _signs(B).T
    if got.shape != expected.shape:
        hint = " That is (N, M): the result is A @ B.T, one row per row of A." if got.shape == (N, M) else ""
        raise CheckFailed(f"wrong shape on {on}: expected (M, N) = {expected.shape}, got {got.shape}.{hint}")
    if not np.issubdtype(got.dtype, np.number):
        raise CheckFailed(f"xnor_matmul returned {got.dtype} values on {on}; expected integers.")
    if np.array_equal(got.astype(np.float64), expected):
        return
    m, n = (int(i) for i in np.argwhere(got.astype(np.float64) != expected)[0])
    msg = (f"on {on}: C[{m}, {n}] should be {int(expected[m, n])} "
           f"(= sign(A[{m}]) . sign(B[{n}])), got {got[m, n]}.")
    d = _ref_popcount(Aw[:, None, :] ^ Bw[None, :, :]).sum(-1)
    W = Aw.shape[1]
    if np.array_equal(got, d):
        msg += " That is the popcount itself; the dot product is K - 2*popcount."
    elif np.array_equal(got, 64 * W - 2 * d):
        msg += f" That is 64*W - 2*popcount: use K = {K}, the padding bits are not elements."
    elif M == N and np.array_equal(got, expected.T):
        msg += " Your result is transposed: C[m, n] pairs row m of A with row n of B."
    raise CheckFailed(msg)


# ------------------------------------------------------------------------------------ checks
def _q1_vectors(fn):
    rng = np.random.default_rng(101)
    for K in (64, 128):
        _check_pack(fn, _rand(rng, K))


def _q1_padding(fn):
    rng = np.random.default_rng(102)
    for shape in [(3, 70), (2, 1), (4, 63), (2, 65), (1, 200)]:
        _check_pack(fn, _rand(rng, shape))
    _check_pack(fn, -np.abs(_rand(rng, (2, 100))) - 0.1)  # all negative: every bit 0, padding too


def _q1_zero(fn):
    rng = np.random.default_rng(103)
    _check_pack(fn, np.array([0.5, -1.0, 0.0, -2.0], dtype=np.float32))  # the docstring's example
    _check_pack(fn, np.zeros(5, dtype=np.float32))
    x = _rand(rng, (2, 70))
    x[:, ::7] = 0.0
    _check_pack(fn, x)


def _q2_special(fn):
    special = np.array([0, 1, 0b1011, 2**63, 2**64 - 1, 0x5555555555555555, 0xF0F0F0F0F0F0F0F0,
                        2**32, 2**32 - 1, 0x8000000100000001], dtype=np.uint64)
    _check_counts(fn, special)


def _q2_random(fn):
    rng = np.random.default_rng(202)
    _check_counts(fn, _words(rng, (4, 5)))
    _check_counts(fn, _words(rng, (300,)))


def _q3_full_words(fn):
    rng = np.random.default_rng(301)
    for K in (64, 192):
        _check_dot(fn, K, rng)


def _q3_padding(fn):
    a = np.array([1.0, -1.0, 1.0], dtype=np.float32)
    b = np.array([1.0, 1.0, -1.0], dtype=np.float32)
    _check_dot(fn, 3, None, a, b, on="the example a = [+1, -1, +1], b = [+1, +1, -1], K = 3 "
                                      "(words 0b101 and 0b011, XOR 0b110, popcount 2)")
    rng = np.random.default_rng(302)
    for K in (1, 70, 100, 130):
        _check_dot(fn, K, rng)


def _q4_small(fn):
    _check_matmul(fn, 3, 5, 128, np.random.default_rng(401))


def _q4_padding(fn):
    rng = np.random.default_rng(402)
    for M, N, K in [(4, 3, 70), (2, 2, 1), (3, 6, 200)]:
        _check_matmul(fn, M, N, K, rng)


def _q4_torch(fn):
    rng = np.random.default_rng(403)
    _check_matmul(fn, 16, 24, 300, rng, use_torch=True)
    _check_matmul(fn, 1, 7, 65, rng, use_torch=True)


# --------------------------------------------------------------------------------- questions
q1 = Question(
    "q1", "pack_signs", "Pack signs into 64-bit words",
    checks=[
        Check("vectors with K = 64 and K = 128 (whole words)", 1, _q1_vectors),
        Check("matrices with K not a multiple of 64 (padding bits must be 0)", 1, _q1_padding),
        Check("zeros count as +1 (bit 1)", 1, _q1_zero),
    ],
    hints=[
        """Start from the bits: `bits = (x >= 0)` is a boolean array of shape (..., K). Then pad it
        with False up to W*64 columns, W = (K + 63) // 64, and reshape to (..., W, 64): row w now
        holds the bits of word w, bit i in column i.""",
        """Give each column its place value: `np.arange(64, dtype=np.uint64)` are the shifts, so
        `bits.astype(np.uint64) << shifts` puts bit i at position i. Combine the 64 columns of each
        word with `np.bitwise_or.reduce(..., axis=-1)` (or a sum: the bits do not overlap).""",
    ],
    solution=pack_signs,
    congrats="These words are exactly what binlab's kernels store: 64 weights in 8 bytes instead of 256.",
)

q2 = Question(
    "q2", "popcount64", "Popcount of 64-bit words",
    checks=[
        Check("special words: 0, 1, 2**63, 2**64 - 1, alternating bits", 1, _q2_special),
        Check("random words, a 2-D array keeps its shape", 1, _q2_random),
    ],
    hints=[
        """Loop over the 64 bit positions, not over the words: for i in range(64), `(w >> i) & 1`
        is an array of 0/1 (the bit i of every word). Add them up.""",
        """Keep the arithmetic in np.uint64: `w >> np.uint64(i)` and `& np.uint64(1)`; convert to a
        signed int only for the running count. (NumPy >= 2 also has np.bitwise_count, a one-line
        answer; writing the loop once shows what the CPU's POPCNT instruction does.)""",
    ],
    solution=popcount64,
)

q3 = Question(
    "q3", "xnor_dot", "The XNOR-popcount dot product",
    checks=[
        Check("vectors with K = 64 and K = 192", 1, _q3_full_words),
        Check("the worked example, and K not a multiple of 64", 1, _q3_padding),
    ],
    hints=[
        """`a_words ^ b_words` has a 1 exactly where the two signs differ. Count those 1s over all
        words (your popcount64 from Q2, or np.bitwise_count) and call the total d.""",
        """K - d signs agree (+1 each) and d disagree (-1 each): the dot product is (K - d) - d.
        Use K, not 64 times the number of words: padding bits are not elements.""",
    ],
    solution=xnor_dot,
    uses=[q2],  # a learner's xnor_dot may count with their popcount64
)

q4 = Question(
    "q4", "xnor_matmul", "A packed matrix product",
    checks=[
        Check("A (3 x 128) times B.T (5 x 128): shape (M, N) and values", 1, _q4_small),
        Check("K not a multiple of 64", 1, _q4_padding),
        Check("agrees with torch's sign(A) @ sign(B).T on a (16 x 300) layer", 1, _q4_torch),
    ],
    hints=[
        """Broadcasting does the two loops: `A_words[:, None, :] ^ B_words[None, :, :]` has shape
        (M, N, W), entry [m, n, w] = A_words[m, w] XOR B_words[n, w].""",
        """Popcount that, sum over the last axis (the words) and apply K - 2*d, as in Q3.""",
    ],
    solution=xnor_matmul,
    uses=[q2, q3],  # ... and their xnor_matmul with popcount64 or xnor_dot
    congrats="This is a binary linear layer: M tokens times N output features, with no multiplication.",
)

EXERCISE = Exercise("01_popcount", "Bits, popcount and the XNOR dot product", [q1, q2, q3, q4])


# ---------------------------------------------------------------------------------- mistakes
def _pack_msb_first(x):
    x = np.asarray(x)
    K = x.shape[-1]
    W = (K + 63) // 64
    bits = np.zeros(x.shape[:-1] + (W * 64,), dtype=np.uint64)
    bits[..., :K] = x >= 0
    bits = bits.reshape(x.shape[:-1] + (W, 64))
    return np.bitwise_or.reduce(bits << np.arange(63, -1, -1, dtype=np.uint64), axis=-1)


def _pack_padded_with_zeros(x):
    x = np.asarray(x)
    pad = (-x.shape[-1]) % 64
    x = np.concatenate([x, np.zeros(x.shape[:-1] + (pad,), dtype=x.dtype)], axis=-1)
    return pack_signs(x)  # the zeros are >= 0: the padding bits become 1


def _pack_zero_negative(x):
    x = np.asarray(x)
    return pack_signs(np.where(x > 0, 1.0, -1.0))  # sign(0) mapped to -1


def _pack_drop_tail(x):
    x = np.asarray(x)
    K = x.shape[-1]
    return pack_signs(x[..., : max(64, (K // 64) * 64)])[..., : max(1, K // 64)]


def _pack_packbits_big(x):
    x = np.asarray(x)
    pad = (-x.shape[-1]) % 64
    bits = np.concatenate([x >= 0, np.zeros(x.shape[:-1] + (pad,), dtype=bool)], axis=-1)
    return np.ascontiguousarray(np.packbits(bits, axis=-1)).view("<u8")  # bitorder='big' by default


def _popcount_low32(words):
    return popcount64(np.asarray(words, dtype=np.uint64) & np.uint64(0xFFFFFFFF))


def _popcount_signed_loop(words):
    w = np.asarray(words, dtype=np.uint64).astype(np.int64).ravel()
    out = []
    for v in w:
        v, c = np.int64(v), 0
        while v != 0:  # arithmetic shift of a negative number never reaches 0
            c += int(v & 1)
            v = v >> np.int64(1)
        out.append(c)
    return np.array(out).reshape(np.shape(words))


def _dot_popcount_only(a_words, b_words, K):
    return int(np.bitwise_count(a_words ^ b_words).sum())


def _dot_padded_length(a_words, b_words, K):
    return int(64 * len(a_words) - 2 * int(np.bitwise_count(a_words ^ b_words).sum()))


def _dot_xnor_agreements(a_words, b_words, K):
    agree = int(np.bitwise_count(~(a_words ^ b_words)).sum())  # counts the padding bits too
    return 2 * agree - K


def _matmul_popcount_only(A_words, B_words, K):
    return np.bitwise_count(A_words[:, None, :] ^ B_words[None, :, :]).sum(-1).astype(np.int64)


def _matmul_padded_length(A_words, B_words, K):
    return xnor_matmul(A_words, B_words, 64 * A_words.shape[1])


def _matmul_transposed(A_words, B_words, K):
    return xnor_matmul(B_words, A_words, K)


MISTAKES = [
    Mistake("q1", "msb_first", "bit 63 - k % 64 instead of bit k % 64", _pack_msb_first, "reverse order"),
    Mistake("q1", "padding_garbage", "pads x with zeros, so the padding bits become 1",
            _pack_padded_with_zeros, "padding bits"),
    Mistake("q1", "sign_zero_negative", "x > 0 instead of x >= 0: sign(0) mapped to -1",
            _pack_zero_negative, "sign(0) = +1"),
    Mistake("q1", "off_by_one_words", "K // 64 words: the last partial word is dropped",
            _pack_drop_tail, "wrong shape"),
    Mistake("q1", "packbits_big_endian", "np.packbits without bitorder='little'",
            _pack_packbits_big, "bitorder='little'"),
    Mistake("q2", "low_32_bits", "only the low 32 bits are counted", _popcount_low32, "low 32 bits"),
    Mistake("q2", "signed_shift_loops", "int64 arithmetic shift: loops forever on a negative word",
            _popcount_signed_loop, "time limit"),
    Mistake("q3", "popcount_only", "returns popcount(a XOR b), forgetting K - 2*popcount",
            _dot_popcount_only, "K - 2*popcount"),
    Mistake("q3", "padded_length", "64 * words instead of K", _dot_padded_length, "padding bits"),
    Mistake("q3", "xnor_counts_padding", "counts agreements with ~(a ^ b), padding included",
            _dot_xnor_agreements, "padding bits"),
    Mistake("q4", "popcount_only", "returns the popcounts, forgetting K - 2*popcount",
            _matmul_popcount_only, "K - 2*popcount"),
    Mistake("q4", "padded_length", "64 * words instead of K", _matmul_padded_length, "padding bits"),
    Mistake("q4", "transposed", "returns B @ A.T", _matmul_transposed, "(N, M)"),
]
