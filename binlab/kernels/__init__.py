"""binlab.kernels: bit packing and XNOR/AND-popcount matrix products, the arithmetic of a binarized network.

A binarized layer multiplies matrices whose entries are -1 or +1. Store each entry as one bit
(1 for +1, 0 for -1) and a dot product of length K becomes

    dot(a, b) = sum_k a_k b_k = (#agreements) - (#disagreements) = K - 2 * popcount(a XOR b)

so 64 multiply-adds cost one XOR and one popcount. Binarized attention also needs a {0,1} operand
(probabilities binarized to "attend or not", BiBERT's bool(A)) times a +-1 operand; with p the
{0,1} bits and v the sign bits,

    dot(p, v) = sum_{k: p_k = 1} v_k = 2 * popcount(p AND v) - popcount(p).

Conventions (shared by the whole book; exercise 1 uses the same):

* ``sign(0) = +1`` (larq's choice): the bit is 1 iff ``x >= 0``, so a binarized tensor really has
  two values. ``-0.0`` counts as 0, hence +1. NaN has no sign: packing a NaN raises ``ValueError``.
* Signs are packed along the **last axis** (the reduction axis K) into little-endian ``uint64``
  words: element k goes to bit ``k % 64`` of word ``k // 64``. The padding bits of the last word are
  0 in every operand, so they XOR to 0 and AND to 0 and K need not be a multiple of 64.
* A {0,1} tensor packs with bit 1 iff the value is ``> 0`` (:func:`pack_bits01`).
* **Packed words are numpy ``uint64`` arrays** (C-contiguous, shape ``[..., ceil(K / 64)]``).
  Float tensors go in as torch tensors; products come out as torch ``int32`` (exact) or, for
  :class:`BinaryLinear`, ``float32`` tensors.

The modules, one per idea::

    binlab.kernels.packing    pack_signs(x) -> words, unpack_signs(words, k); pack_bits01 / unpack_bits01;
                              words_for(k); pack_signs_reference (plain Python, to read and test against)
    binlab.kernels.products   xnor_gemm(a_words, b_words, k)  C[m, n] = sum_k a[m, k] b[n, k]   (+-1 x +-1)
                              and_gemm(p_words, v_words, k)   C[m, n] = sum_k p[m, k] v[n, k]   ({0,1} x +-1)
                              xnor_bmm / and_bmm (per batch item), PackedWeight (right operand prepacked once),
                              popcount_product (either product as a numpy array, for callers in numpy),
                              product_steps (one product's kernel calls on fixed buffers, checked once),
                              get_backend() / set_backend(name), and the *_reference versions in numpy
    binlab.kernels.linear     BinaryLinear.from_float(weight, bias=None, alpha=None | 'tensor' | 'row')
    binlab.kernels.bench      ``binlab bench gemm``: these kernels against torch fp32 / int8
    binlab.kernels._gemm      the numba kernels; binlab.kernels._simd: the popcount and vector intrinsics

Attention: ``scores = sign(Q) sign(K)^T`` is ``xnor_bmm(pack_signs(q), pack_signs(k), head_dim)``.
For ``probs01 @ sign(V)`` the reduction runs over the *key* axis, so V is packed along tokens:
``and_bmm(pack_bits01(p), pack_signs(v.transpose(-1, -2)), n_keys)``.

How it runs. The kernels are numba functions (``binlab.kernels._gemm``) compiled once and cached on disk
(``cache=True``). numba has no popcount builtin; ``binlab.kernels._simd`` emits LLVM's ``ctpop`` through
``numba.extending.intrinsic``, which is a ``popcnt`` instruction, a ``vpopcntq`` (AVX512-VPOPCNTDQ)
or a ``vpshufb`` nibble-table popcount (AVX2) once vectorized. Three backends:

* ``"simd8"``: a register-tiled outer-product micro-kernel, 8 rows x 16 columns (16 accumulators
  of eight 64-bit lanes: one ``zmm`` each with AVX-512), over a column-blocked copy of the right
  operand (:class:`PackedWeight`). Rows left over (M % 8) go through the one-row kernel.
* ``"simd1"``: the same layout, one row x 32 columns at a time (4 accumulators), for CPUs with
  16 vector registers (AVX2), where the 8-row tile would spill.
* ``"scalar"``: plain loops, one output at a time, scalar popcount. Portable and easy to read.

The default is ``"simd8"`` with AVX-512, ``"simd1"`` with AVX2 or off x86, else ``"scalar"``;
the environment variable ``BINLAB_KERNEL_BACKEND`` or :func:`set_backend` overrides it, and every
product takes ``backend=``. All use every core (``numba.set_num_threads`` limits them); problems
too small to pay for a thread launch run on one core.

Debugging: run with ``NUMBA_DISABLE_JIT=1`` and every kernel, intrinsics included, runs as plain
Python/numpy (slowly), so ``pdb`` and ``print`` work inside it. Use small shapes.
"""

