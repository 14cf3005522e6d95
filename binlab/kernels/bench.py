"""``binlab bench gemm``: time binlab's bitwise kernels against torch on BERT-base shapes.

Methods, timed in one process, on the same shapes:

* ``torch_fp32``: ``torch.matmul`` in float32 on all cores (the baseline of every ratio).
* ``torch_int8``: torch's dynamic int8 linear (``torch.ops.quantized.linear_dynamic`` with a
  prepacked int8 weight), where this torch build has it; skipped otherwise.
* ``binlab_prepacked``: :func:`binlab.kernels.products.xnor_gemm` on activation words packed beforehand and
  a :class:`~binlab.kernels.products.PackedWeight` (weights packed once, as in deployment).
* ``binlab_linear``: :class:`binlab.kernels.linear.BinaryLinear` on the float input: binarize and pack the
  activations, the GEMM, then ``alpha * . + bias`` in float (activation packing counted).

Linear shapes: tokens M in {1, 8, 128, 512, 2048} x (K, N) in {(768, 768), (768, 3072),
(3072, 768)}. Attention shapes: 128 tokens, head dim 64, 12 and 48 heads, ``Q @ K^T`` (XNOR) and
``P @ V`` (AND, P in {0,1}); for attention "prepacked" means the operands' words exist already and
"packed" counts packing both operands (there are no weights).

Measurement: every method is warmed up; then in each round each method runs once (enough calls to
last about 2 ms, averaged), in an order that rotates between rounds, with a short sleep between
methods so that spinning OpenMP threads of the previous method go idle. A method's time is the
median over rounds; a ratio is the median of the per-round ratios (paired). The CPU time that other
processes used during a shape is read from ``/proc/stat``; when it exceeds ``--max-foreign`` cores
(or the rounds scatter too much) the shape is measured again, up to ``--retries`` times, and the
quietest attempt is kept and flagged. Binary GOPS counts 2 operations per bit pair (multiply, add):
``2 M N K / time``.

The import of this module must stay light: the CLI imports it on every start.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings

# numpy's OpenBLAS threads spin after each call; a low timeout keeps them from stealing the next
# measurement's cores. It only has an effect if set before numpy is imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

import numba  # noqa: E402
import torch  # noqa: E402

from binlab.kernels import _gemm, linear, packing, products  # noqa: E402

LINEAR_TOKENS = (1, 8, 128, 512, 2048)
LINEAR_KN = ((768, 768), (768, 3072), (3072, 768))
ATTENTION_HEADS = (12, 48)
ATTENTION_TOKENS = 128
HEAD_DIM = 64

QUICK_TOKENS = (1, 128)
QUICK_KN = ((768, 768),)
QUICK_HEADS = (12,)

SAMPLE_SECONDS = 0.002  # each timed sample repeats a call until it lasts about this long
PAUSE_SECONDS = 0.002  # sleep between methods (spinning OpenMP workers go back to sleep)
MAX_SPREAD = 0.25  # (p75 - p25) / median of a method above this: the shape is measured again


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["gemm"], help="what to benchmark (gemm: all products)")
    add_options(parser)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``binlab bench gemm`` (also read by ``binlab bench``'s dispatcher, binlab.infer.bench)."""
    parser.add_argument("--quick", action="store_true",
                        help="a short run: M in {1, 128}, (K, N) = (768, 768), 12 heads, 5 rounds")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per shape (default 15, quick 5)")
    parser.add_argument("--retries", type=int, default=None,
                        help="re-measurements of a shape disturbed by other processes "
                             "(default 3, quick 1)")
    parser.add_argument("--max-foreign", type=float, default=0.15,
                        help="CPU (in cores) other processes may use during a shape before it is "
                             "measured again (default 0.15)")
    parser.add_argument("--no-int8", action="store_true", help="skip torch's int8 baseline")


# ----------------------------------------------------------------------------------------------
# machine state


def cpu_info() -> dict:
    """CPU model, core count and the SIMD flags that matter for popcount."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        model = platform.processor() or platform.machine()
    wanted = ["popcnt", "avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_bitalg"]
    return {"model": model, "logical_cpus": os.cpu_count(),
            "flags": {name: name in flags for name in wanted}}


def _busy_jiffies() -> int | None:
    """Total non-idle CPU time of the machine, in clock ticks (None where /proc/stat is missing)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle


class ForeignLoad:
    """Measures the CPU that *other* processes use between :meth:`start` and :meth:`stop`."""

    def __init__(self):
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._busy = _busy_jiffies()
        self._own = sum(os.times()[:2])

    def stop(self) -> float | None:
        """Average number of cores used by other processes, or None when unknown."""

        busy = _busy_jiffies()
        if busy is None or self._busy is None:
            return None
        wall = time.perf_counter() - self._wall
        total = (busy - self._busy) / self._tick
        own = sum(os.times()[:2]) - self._own
        return max(0.0, (total - own) / max(wall, 1e-9))


# ----------------------------------------------------------------------------------------------
# timing


def _calls_per_sample(fn, sample_seconds: float = SAMPLE_SECONDS) -> int:
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, min(1000, int(sample_seconds / max(once, 1e-7))))


def time_methods(methods: dict, rounds: int, *, warmup: int = 3, pause: float = PAUSE_SECONDS,
                 sample_seconds: float = SAMPLE_SECONDS) -> dict[str, list[float]]:
    """Seconds per call of each method, one sample per round, methods interleaved in a rotating order.

    ``warmup`` calls each first (compile, fill caches, start thread pools); a sample repeats a call until it lasts
    about ``sample_seconds``, after a ``pause`` that lets the previous method's spinning workers go idle.
    (``binlab bench model`` uses it with its own, longer settings.)"""
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    calls = {name: _calls_per_sample(fn, sample_seconds) for name, fn in methods.items()}
    names = list(methods)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn, n = methods[name], calls[name]
            time.sleep(pause)
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return samples


def _median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _spread(values) -> float:
    ordered = sorted(values)
    n = len(ordered)
    q1, q3 = ordered[n // 4], ordered[(3 * n) // 4]
    return (q3 - q1) / max(_median(ordered), 1e-12)


def measure_shape(methods: dict, rounds: int, retries: int, max_foreign: float) -> dict:
    """Time ``methods`` until a quiet attempt (or the retries run out); keep the quietest."""
    best = None
    for attempt in range(retries + 1):
        load = ForeignLoad()
        load.start()
        samples = time_methods(methods, rounds)
        foreign = load.stop()
        spread = max(_spread(s) for s in samples.values())
        quiet = (foreign is None or foreign <= max_foreign) and spread <= MAX_SPREAD
        result = {"samples": samples, "foreign_cores": foreign, "spread": spread,
                  "attempts": attempt + 1, "quiet": quiet}
        score = (foreign or 0.0) + spread
        if best is None or score < best[0]:
            best = (score, result)
        if quiet:
            break
    result = dict(best[1])
    result["attempts"] = attempt + 1
    return result


def summarize(result: dict, ops: float, baseline: str = "torch_fp32") -> dict:
    """Median times, binary GOPS and paired ratios baseline / method."""
    samples = result["samples"]
    out = {"times_s": {}, "gops": {}, "ratio_vs_fp32": {}}
    for name, values in samples.items():
        t = _median(values)
        out["times_s"][name] = t
        out["gops"][name] = ops / t / 1e9
        if name != baseline and baseline in samples:
            out["ratio_vs_fp32"][name] = _median(
                [b / v for b, v in zip(samples[baseline], values)])
    out["foreign_cores"] = result["foreign_cores"]
    out["spread"] = result["spread"]
    out["attempts"] = result["attempts"]
    out["quiet"] = result["quiet"]
    return out


# ----------------------------------------------------------------------------------------------
# the methods


def _int8_linear(x, weight):
    """A callable running torch's dynamic int8 linear on ``x``, or None if unavailable."""


    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scale = float(weight.abs().max()) / 127.0
            qweight = torch.quantize_per_tensor(weight, scale, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qweight, None)
            op = torch.ops.quantized.linear_dynamic
            op(x, packed)
    except Exception:  # noqa: BLE001 - any failure means "not available in this build"
        return None
    return lambda: op(x, packed)


def linear_methods(m: int, k: int, n: int, int8: bool, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    weight = torch.randn(n, k, generator=gen)
    weight_t = weight.t()
    a_words = packing.pack_signs(x)
    packed = products.PackedWeight.from_float(weight)
    layer = linear.BinaryLinear.from_float(weight, alpha="row")
    methods = {"torch_fp32": lambda: torch.matmul(x, weight_t)}
    if int8:
        fn = _int8_linear(x, weight)
        if fn is not None:
            methods["torch_int8"] = fn
    methods["binlab_prepacked"] = lambda: products.xnor_gemm(a_words, packed, k)
    methods["binlab_linear"] = lambda: layer(x)
    return methods


def attention_methods(heads: int, product: str, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    t, d = ATTENTION_TOKENS, HEAD_DIM
    if product == "qk":
        q = torch.randn(heads, t, d, generator=gen)
        key = torch.randn(heads, t, d, generator=gen)
        key_t = key.transpose(-1, -2)
        q_words, k_words = packing.pack_signs(q), packing.pack_signs(key)
        return {
            "torch_fp32": lambda: torch.matmul(q, key_t),
            "binlab_prepacked": lambda: products.xnor_bmm(q_words, k_words, d),
            "binlab_packed": lambda: products.xnor_bmm(packing.pack_signs(q),
                                                      packing.pack_signs(key), d),
        }
    probs = (torch.rand(heads, t, t, generator=gen) > 0.5).float()
    v = torch.randn(heads, t, d, generator=gen)
    p_words = packing.pack_bits01(probs)
    v_words = packing.pack_signs(v.transpose(-1, -2))
    return {
        "torch_fp32": lambda: torch.matmul(probs, v),
        "binlab_prepacked": lambda: products.and_bmm(p_words, v_words, t),
        "binlab_packed": lambda: products.and_bmm(packing.pack_bits01(probs),
                                                 packing.pack_signs(v.transpose(-1, -2)), t),
    }


def popcount_limit(seconds: float = 0.2) -> dict:
    """The machine's measured xor+popcount+add throughput on registers (binary GOPS): the best of 3 tries.

    A measurement on a busy machine comes out low, so :func:`run` measures it again after every shape (interleaved
    with the GEMMs) and keeps the maximum (:func:`best_limit`): an upper bound the GEMMs can be held against."""
    threads = numba.get_num_threads()
    _gemm.popcount_peak_range(1000, 1)
    _gemm.popcount_peak_parallel(threads, 1000, 1)
    start = time.perf_counter()
    _gemm.popcount_peak_range(100_000, 1)
    once = time.perf_counter() - start
    n_iter = max(1000, int(100_000 * seconds / max(once, 1e-9)))
    steps = _gemm.PEAK_CHAINS * 512  # bit pairs per iteration
    best_one, best_all = 0.0, 0.0
    for _ in range(3):
        start = time.perf_counter()
        _gemm.popcount_peak_range(n_iter, 1)
        best_one = max(best_one, 2 * steps * n_iter / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        _gemm.popcount_peak_parallel(threads, n_iter, 1)
        best_all = max(best_all, 2 * steps * n_iter * threads / (time.perf_counter() - start) / 1e9)
    return {"gops_one_core": best_one, "gops_all_cores": best_all, "threads": threads}


def best_limit(a: dict, b: dict) -> dict:
    """The larger of two :func:`popcount_limit` measurements, field by field; ``measurements`` counts them."""
    return {"gops_one_core": max(a["gops_one_core"], b["gops_one_core"]),
            "gops_all_cores": max(a["gops_all_cores"], b["gops_all_cores"]), "threads": a["threads"],
            "measurements": a.get("measurements", 1) + b.get("measurements", 1)}


# ----------------------------------------------------------------------------------------------
# the run


def plan(quick: bool) -> list[dict]:
    tokens = QUICK_TOKENS if quick else LINEAR_TOKENS
    kn = QUICK_KN if quick else LINEAR_KN
    heads = QUICK_HEADS if quick else ATTENTION_HEADS
    shapes = [{"kind": "linear", "m": m, "k": k, "n": n} for m in tokens for k, n in kn]
    for h in heads:
        for product in ("qk", "pv"):
            shapes.append({"kind": "attention", "product": product, "heads": h})
    return shapes


def _shape_ops(shape: dict) -> float:
    if shape["kind"] == "linear":
        return 2.0 * shape["m"] * shape["n"] * shape["k"]
    t, d = ATTENTION_TOKENS, HEAD_DIM
    return 2.0 * shape["heads"] * t * t * d  # both products: T x T x d multiply-adds per head


def _label(shape: dict) -> str:
    if shape["kind"] == "linear":
        return f"linear M={shape['m']:<4d} K={shape['k']:<4d} N={shape['n']:<4d}"
    name = "Q@K^T" if shape["product"] == "qk" else "P@V  "
    return f"attn {name} {shape['heads']:>2d} heads x{ATTENTION_TOKENS}x{HEAD_DIM}"


def format_row(shape: dict, s: dict) -> str:
    t = s["times_s"]
    packed_key = "binlab_linear" if shape["kind"] == "linear" else "binlab_packed"

    def us(name):
        return f"{t[name] * 1e6:10.1f}" if name in t else f"{'-':>10s}"

    def ratio(name):
        r = s["ratio_vs_fp32"].get(name)
        return f"{r:7.1f}x" if r is not None else f"{'-':>8s}"

    flag = "" if s["quiet"] else "  (shared CPU)"
    return (f"{_label(shape):34s}{us('torch_fp32')}{us('torch_int8')}{us('binlab_prepacked')}"
            f"{us(packed_key)}{s['gops']['binlab_prepacked']:9.0f}{ratio('binlab_prepacked')}"
            f"{ratio(packed_key)}{flag}")


HEADER = (f"{'shape':34s}{'fp32 us':>10s}{'int8 us':>10s}{'bin us':>10s}{'bin+pack':>10s}"
          f"{'bin GOPS':>9s}{'x fp32':>8s}{'x +pack':>8s}")


def _geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def run(args) -> int:
    quick = args.quick
    rounds = args.rounds or (5 if quick else 15)
    retries = args.retries if args.retries is not None else (1 if quick else 3)
    if rounds < 3:
        raise SystemExit("binlab bench: --rounds must be at least 3")
    info = cpu_info()
    backend = products.get_backend()
    print(f"CPU: {info['model']} ({info['logical_cpus']} logical CPUs); "
          + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["flags"].items()))
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"numba {numba.__version__} "
          f"({numba.get_num_threads()} threads, layer chosen at first parallel call), "
          f"binlab backend {backend}; load average {os.getloadavg()[0]:.2f}")
    limit = popcount_limit(0.05 if quick else 0.2)
    print(f"popcount limit (xor+popcount+add on registers): "
          f"{limit['gops_one_core']:.0f} binary GOPS "
          f"on one core, {limit['gops_all_cores']:.0f} on {limit['threads']} threads")
    print()
    print(HEADER)
    results = []
    start = time.perf_counter()
    for shape in plan(quick):
        if shape["kind"] == "linear":
            methods = linear_methods(shape["m"], shape["k"], shape["n"], int8=not args.no_int8)
        else:
            methods = attention_methods(shape["heads"], shape["product"])
        measured = measure_shape(methods, rounds, retries, args.max_foreign)
        limit = best_limit(limit, popcount_limit(0.02 if quick else 0.05))  # interleaved: the max is the bound
        summary = summarize(measured, _shape_ops(shape))
        results.append({**shape, **summary})
        print(format_row(shape, summary), flush=True)
    print()
    linear = [r for r in results if r["kind"] == "linear"]
    large = [r["ratio_vs_fp32"]["binlab_prepacked"] for r in linear if r["m"] >= 128]
    summary = {
        "geomean_ratio_prepacked_m_ge_128": _geomean(large),
        "min_ratio_prepacked_m_ge_128": min(large) if large else None,
        "min_ratio_linear_m_ge_128": min((r["ratio_vs_fp32"]["binlab_linear"] for r in linear
                                          if r["m"] >= 128), default=None),
        "min_ratio_prepacked_m_le_8": min((r["ratio_vs_fp32"]["binlab_prepacked"] for r in linear
                                           if r["m"] <= 8), default=None),
        "min_ratio_attention_prepacked": min((r["ratio_vs_fp32"]["binlab_prepacked"]
                                              for r in results if r["kind"] == "attention"),
                                             default=None),
        "best_binlab_gops": max(r["gops"]["binlab_prepacked"] for r in results),
    }
    for key, value in summary.items():
        if value is not None:
            print(f"{key}: {value:.2f}")
    print(f"popcount limit, the best of {limit['measurements']} measurements interleaved with the shapes: "
          f"{limit['gops_one_core']:.0f} binary GOPS on one core, {limit['gops_all_cores']:.0f} on "
          f"{limit['threads']} threads")
    print(f"fraction of the measured popcount limit (best shape): "
          f"{summary['best_binlab_gops'] / limit['gops_all_cores']:.0%}; "
          f"{time.perf_counter() - start:.0f} s")
    if args.json:
        payload = {
            "command": "binlab bench gemm" + (" --quick" if quick else ""),
            "cpu": info,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "numba": numba.__version__,
            "numba_threading_layer": numba.threading_layer(),
            "threads": {"torch": torch.get_num_threads(), "numba": numba.get_num_threads()},
            "backend": backend,
            "rounds": rounds,
            "load_average": os.getloadavg(),
            "popcount_limit": limit,
            "results": results,
            "summary": summary,
        }
        directory = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(directory, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {args.json}")
    return 0
