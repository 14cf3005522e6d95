"""The few machine operations the bitwise kernels need, exposed to numba.

numba has no popcount builtin, and its loop vectorizer does not pick the loop we want to vectorize
(see ``docs/benchmarks.md``), so this module teaches numba two things:

* ``popcount(x)``: a 64-bit word's number of set bits (an int64), emitted as LLVM's ``ctpop``.
  On x86 with POPCNT that is a single ``popcnt`` instruction.
* ``Words8``: eight ``uint64`` words held in one SIMD register (LLVM's ``<8 x i64>``). With AVX-512
  that is one ``zmm`` register, with AVX2 two ``ymm`` registers, elsewhere whatever the target has.
  The operations are the ones an XNOR/AND-popcount GEMM needs: ``zeros8()``, ``splat8(w)`` (one word
  in every lane), ``load8(a, i)`` (``a.flat[i:i + 8]``), ``v ^ u``, ``v & u``, ``v | u``,
  ``v + u``, ``v - u``, ``popcount8(v)`` (lane-wise ``ctpop``: ``vpopcntq`` with
  AVX512-VPOPCNTDQ, a ``vpshufb`` nibble table plus ``vpsadbw`` with AVX2), ``lane8(v, j)``,
  ``shl8(v, s)``, and
  the GEMM epilogue ``finish16`` (two registers of counts -> 16 int32 results, optionally scaled
  to float32 in the same step) with its scalar companion ``affine``.

Plus packing helpers that compare floats with 0 in one vector instruction:
``sign_bits64(x, i)`` (64 floats -> one word, bit j = ``x.flat[i + j] >= 0``),
``positive_bits64(x, i)`` (``> 0``), ``nan_bits64(x, i)`` (bit j set for a NaN), and their
eight-lane forms ``sign_lanes8`` / ``positive_lanes8`` / ``nan_lanes8`` (a ``Words8`` of 0/1, for
packing along a non-contiguous axis), with ``v | u`` to merge them.

With ``NUMBA_DISABLE_JIT=1`` every name here is a plain numpy/Python function with the same
meaning (a ``Words8`` is then a numpy array of 8 ``uint64``), so the kernels run, slowly, in the
Python debugger. The flat-index helpers do no bounds checks when compiled: callers check.
"""

from __future__ import annotations

import operator

import numpy as np
from numba.core import config

__all__ = [
    "popcount",
    "zeros8",
    "splat8",
    "load8",
    "popcount8",
    "lane8",
    "shl8",
    "finish16",
    "affine",
    "sign_bits64",
    "positive_bits64",
    "nan_bits64",
    "sign_lanes8",
    "positive_lanes8",
    "nan_lanes8",
]

if config.DISABLE_JIT:  # pragma: no cover - exercised in a subprocess by the tests

    def popcount(x):
        return int(x).bit_count()

    def zeros8():
        return np.zeros(8, np.uint64)

    def splat8(w):
        return np.full(8, w, np.uint64)

    def load8(a, i):
        return a.reshape(-1)[i : i + 8].copy()

    def popcount8(v):
        return np.array([int(w).bit_count() for w in v], np.uint64)

    def lane8(v, j):
        return v[j]

    def shl8(v, s):
        return v << np.uint64(s)

    def finish16(out, i, lo, hi, c0, j, shift, scale, bias, n):
        counts = np.concatenate([lo, hi]).astype(np.int64)
        values = c0.reshape(-1)[j : j + 16].astype(np.int64) - (counts << shift)
        if scale is not None:
            values = values.astype(np.float32) * scale[n : n + 16] + bias[n : n + 16]
        out.reshape(-1)[i : i + 16] = values

    def affine(value, scale, bias, n):
        return value if scale is None else value * scale[n] + bias[n]

    def _bits64(mask):
        word = 0
        for j, bit in enumerate(mask):
            word |= int(bit) << j
        return np.uint64(word)

    def sign_bits64(x, i):
        return _bits64(x.reshape(-1)[i : i + 64] >= 0)

    def sign_lanes8(x, i):
        return (x.reshape(-1)[i : i + 8] >= 0).astype(np.uint64)

    def positive_lanes8(x, i):
        return (x.reshape(-1)[i : i + 8] > 0).astype(np.uint64)

    def nan_lanes8(x, i):
        return np.isnan(x.reshape(-1)[i : i + 8]).astype(np.uint64)

    def positive_bits64(x, i):
        return _bits64(x.reshape(-1)[i : i + 64] > 0)

    def nan_bits64(x, i):
        return _bits64(np.isnan(x.reshape(-1)[i : i + 64]))

else:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic, models, overload, register_model

    _I64 = ir.IntType(64)
    _I32 = ir.IntType(32)
    _VEC = ir.VectorType(_I64, 8)

    class Words8Type(types.Type):
        """numba type of eight uint64 lanes in one SIMD value (LLVM ``<8 x i64>``)."""

        def __init__(self):
            super().__init__(name="Words8")

    words8 = Words8Type()

    @register_model(Words8Type)
    class _Words8Model(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, _VEC)

    def _ctpop(builder, value):
        """Call ``llvm.ctpop`` on an integer or a vector of integers."""
        fnty = ir.FunctionType(value.type, [value.type])
        if isinstance(value.type, ir.VectorType):
            name = f"llvm.ctpop.v{value.type.count}i{value.type.element.width}"
        else:
            name = f"llvm.ctpop.i{value.type.width}"
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), [value])

    def _element_pointer(context, builder, arr_type, arr, index, index_type):
        """Address of ``arr.flat[index]`` (the array is C-contiguous; no bounds check)."""
        ary = context.make_array(arr_type)(context, builder, arr)
        idx = context.cast(builder, index, index_type, types.intp)
        return builder.gep(ary.data, [idx], inbounds=True)

    def _is_word_array(a):
        return isinstance(a, types.Array) and a.dtype == types.uint64 and a.layout == "C"

    @intrinsic
    def popcount(typingctx, x):
        """Number of set bits of a 64-bit word (LLVM ``ctpop``), as an int64."""
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            word = context.cast(builder, args[0], sig.args[0], types.uint64)
            return _ctpop(builder, word)

        return types.int64(x), codegen

    @intrinsic
    def zeros8(typingctx):
        def codegen(context, builder, sig, args):
            return ir.Constant(_VEC, [0] * 8)

        return words8(), codegen

    @intrinsic
    def splat8(typingctx, w):
        """The word ``w`` in all eight lanes."""
        if not isinstance(w, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            word = context.cast(builder, args[0], sig.args[0], types.uint64)
            one = builder.insert_element(ir.Constant(_VEC, None), word, ir.Constant(_I32, 0))
            return builder.shuffle_vector(one, ir.Constant(_VEC, None),
                                          ir.Constant(ir.VectorType(_I32, 8), [0] * 8))

        return words8(w), codegen

    @intrinsic
    def load8(typingctx, a, i):
        """Lanes ``a.flat[i : i + 8]`` of a C-contiguous uint64 array (unaligned load)."""
        if not (_is_word_array(a) and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
            return builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=8)

        return words8(a, i), codegen

    @intrinsic
    def popcount8(typingctx, v):
        """Lane-wise number of set bits."""
        if v is not words8:
            return None

        def codegen(context, builder, sig, args):
            return _ctpop(builder, args[0])

        return words8(v), codegen

    @intrinsic
    def lane8(typingctx, v, j):
        """Lane ``j`` (0..7) as a uint64."""
        if v is not words8 or not isinstance(j, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            return builder.extract_element(args[0], args[1])

        return types.uint64(v, j), codegen

    def _lanewise(name):
        @intrinsic
        def op(typingctx, v, u):
            if v is not words8 or u is not words8:
                return None

            def codegen(context, builder, sig, args):
                return getattr(builder, name)(args[0], args[1])

            return words8(v, u), codegen

        return op

    _xor8, _and8, _or8 = _lanewise("xor"), _lanewise("and_"), _lanewise("or_")
    _add8, _sub8 = _lanewise("add"), _lanewise("sub")

    for _op, _impl in [(operator.xor, _xor8), (operator.and_, _and8), (operator.or_, _or8),
                       (operator.ior, _or8), (operator.add, _add8),
                       (operator.iadd, _add8), (operator.sub, _sub8), (operator.isub, _sub8)]:

        def _register(op=_op, impl=_impl):
            @overload(op)
            def _words8_op(v, u):
                if v is words8 and u is words8:
                    return lambda v, u: impl(v, u)

        _register()

    @intrinsic
    def shl8(typingctx, v, s):
        """Every lane shifted left by ``s`` bits (``s`` < 64)."""
        if v is not words8 or not isinstance(s, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            count = context.cast(builder, args[1], sig.args[1], types.uint64)
            count = builder.insert_element(ir.Constant(_VEC, None), count, ir.Constant(_I32, 0))
            count = builder.shuffle_vector(count, ir.Constant(_VEC, None),
                                           ir.Constant(ir.VectorType(_I32, 8), [0] * 8))
            return builder.shl(args[0], count)

        return words8(v, s), codegen

    _V16I32 = ir.VectorType(_I32, 16)

    def _finish16_values(builder, context, sig, args):
        """``c0.flat[j:j+16] - ((lo ++ hi) << shift)`` as a <16 x i32> vector."""
        # the low 32 bits of each 64-bit lane of lo, then of hi (one vpermt2d with AVX-512)
        lo, hi = builder.bitcast(args[2], _V16I32), builder.bitcast(args[3], _V16I32)
        counts = builder.shuffle_vector(lo, hi, ir.Constant(_V16I32, list(range(0, 32, 2))))
        shift = context.cast(builder, args[6], sig.args[6], types.int32)
        shift = builder.insert_element(ir.Constant(_V16I32, None), shift, ir.Constant(_I32, 0))
        shift = builder.shuffle_vector(shift, ir.Constant(_V16I32, None),
                                       ir.Constant(_V16I32, [0] * 16))
        c_ptr = _element_pointer(context, builder, sig.args[4], args[4], args[5], sig.args[5])
        c = builder.load(builder.bitcast(c_ptr, _V16I32.as_pointer()), align=4)
        return builder.sub(c, builder.shl(counts, shift))

    @intrinsic
    def finish16(typingctx, out, i, lo, hi, c0, j, shift, scale, bias, n):
        """Epilogue of 16 columns: ``v = c0.flat[j:j+16] - ((lo ++ hi) << shift)``, then

        * ``scale`` and ``bias`` None: ``out.flat[i:i+16] = v`` (``out`` int32);
        * else ``out.flat[i:i+16] = v * scale[n:n+16] + bias[n:n+16]`` (all float32).

        The counts are narrowed to int32 first (they are at most K), so a row of 16 results is
        one 512-bit store. ``c0`` is int32.
        """
        scaled = isinstance(scale, types.Array)
        if not (isinstance(out, types.Array) and out.layout == "C"
                and out.dtype == (types.float32 if scaled else types.int32)
                and isinstance(i, types.Integer) and lo is words8 and hi is words8
                and isinstance(c0, types.Array) and c0.dtype == types.int32 and c0.layout == "C"
                and isinstance(j, types.Integer) and isinstance(shift, types.Integer)
                and isinstance(n, types.Integer)):
            return None
        if scaled:
            if not all(isinstance(t, types.Array) and t.dtype == types.float32 and t.layout == "C"
                       for t in (scale, bias)):
                return None
        elif not (isinstance(scale, types.NoneType) and isinstance(bias, types.NoneType)):
            return None

        def codegen(context, builder, sig, args):
            values = _finish16_values(builder, context, sig, args)
            vtype = _V16I32
            if scaled:
                vtype = ir.VectorType(ir.FloatType(), 16)
                values = builder.sitofp(values, vtype)
                n_type = sig.args[9]
                s_ptr = _element_pointer(context, builder, sig.args[7], args[7], args[9], n_type)
                b_ptr = _element_pointer(context, builder, sig.args[8], args[8], args[9], n_type)
                factor = builder.load(builder.bitcast(s_ptr, vtype.as_pointer()), align=4)
                offset = builder.load(builder.bitcast(b_ptr, vtype.as_pointer()), align=4)
                values = builder.fadd(builder.fmul(values, factor), offset)
            ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
            builder.store(values, builder.bitcast(ptr, vtype.as_pointer()), align=4)
            return context.get_dummy_value()

        return types.void(out, i, lo, hi, c0, j, shift, scale, bias, n), codegen

    def affine(value, scale, bias, n):
        """``value`` if ``scale`` is None, else ``value * scale[n] + bias[n]`` (chosen by type)."""
        raise NotImplementedError("affine is only callable from numba-compiled code")

    @overload(affine)
    def _affine(value, scale, bias, n):
        if isinstance(scale, types.NoneType):
            return lambda value, scale, bias, n: value
        return lambda value, scale, bias, n: value * scale[n] + bias[n]

    def _float_bits64(predicate):
        """An intrinsic: 64 consecutive floats -> one word, bit j set iff ``x[i+j] <pred> 0``."""

        @intrinsic
        def bits64(typingctx, x, i):
            if not (isinstance(x, types.Array) and x.dtype in (types.float32, types.float64)
                    and x.layout == "C" and isinstance(i, types.Integer)):
                return None

            def codegen(context, builder, sig, args):
                ftype = context.get_data_type(sig.args[0].dtype)
                vtype = ir.VectorType(ftype, 64)
                ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
                values = builder.load(builder.bitcast(ptr, vtype.as_pointer()), align=4)
                if predicate == "uno":  # NaN test: unordered compare of x with itself
                    mask = builder.fcmp_unordered("uno", values, values)
                else:
                    mask = builder.fcmp_ordered(predicate, values, ir.Constant(vtype, [0.0] * 64))
                return builder.bitcast(mask, _I64)

            return types.uint64(x, i), codegen

        return bits64

    def _float_lanes8(predicate):
        """An intrinsic: 8 consecutive floats -> Words8, lane j = 1 iff ``x[i+j] <pred> 0``."""

        @intrinsic
        def lanes8(typingctx, x, i):
            if not (isinstance(x, types.Array) and x.dtype in (types.float32, types.float64)
                    and x.layout == "C" and isinstance(i, types.Integer)):
                return None

            def codegen(context, builder, sig, args):
                vtype = ir.VectorType(context.get_data_type(sig.args[0].dtype), 8)
                ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
                values = builder.load(builder.bitcast(ptr, vtype.as_pointer()), align=4)
                if predicate == "uno":
                    mask = builder.fcmp_unordered("uno", values, values)
                else:
                    mask = builder.fcmp_ordered(predicate, values, ir.Constant(vtype, [0.0] * 8))
                return builder.zext(mask, _VEC)

            return words8(x, i), codegen

        return lanes8

    sign_lanes8 = _float_lanes8(">=")
    positive_lanes8 = _float_lanes8(">")
    nan_lanes8 = _float_lanes8("uno")

    sign_bits64 = _float_bits64(">=")
    positive_bits64 = _float_bits64(">")
    nan_bits64 = _float_bits64("uno")
