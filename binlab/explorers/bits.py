"""Chapter 1's figures: what binarizing saves, the XNOR-popcount dot product, packing, and speed.

    cost_figure(configs, seq_len)          memory (MiB) and FLOPs of BERT configs, from binlab.analysis.costs
    cost_rows(configs, seq_len)            the same numbers as table rows
    xnor_state(a, b)                       every quantity of the +-1 dot product of a and b
    make_xnor_explorer(n_bits, seed)       toggle the bits of a and b, watch XOR, popcount, a.b
    packing_figure(x)                      how pack_signs lays a vector's signs into uint64 words
    word_rows(words, k)                    the words as table rows (hex, ones, padding)
    measure_speedups(shapes, rounds)       binlab's GEMM against torch fp32, timed by binlab.kernels.bench
                                           (a shape other processes disturbed is timed again, then flagged)
    speedup_table(measured)                those timings as a markdown table, disturbed rows greyed with the reason
    speedup_summary(measured)              the sentence the chapter prints: quiet rows only
    recorded_speedups(path)                the same ratios from the table in docs/benchmarks.md
    speedup_figure(measured, recorded)     both as grouped bars, disturbed shapes greyed

Everything is computed by the library (binlab.analysis.costs, binlab.kernels, binlab.kernels.bench); the figures
only draw it. Colours: a sign of +1 (bit 1) is blue, -1 (bit 0) orange, a differing bit red (the
toggle buttons use ipywidgets' "primary" and "warning" styles, JupyterLab's blue and orange).
"""

from __future__ import annotations

from pathlib import Path

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from binlab.analysis import costs
from binlab.explorers.figure import Figure
from binlab.explorers.viz import markdown_section, markdown_table, parse_markdown_table, parse_number
from binlab.kernels import bench, packing, products
from binlab.settings import project_root

PLUS, MINUS, DIFFER, SAME, PADDING = "#1976d2", "#f57c00", "#d32f2f", "#eceff1", "#b0bec5"
MINUS_SIGN = "\u2212"


def _signed(v: float) -> str:
    return f"+{v:g}" if v > 0 else f"{MINUS_SIGN}{-v:g}"


# ----------------------------------------------------------------------------------------------
# why binarize: memory and operations


def cost_rows(configs, seq_len: int = 128) -> list[dict]:
    """One row per config: label, params, MiB, MB, GFLOPs (bit-op count) and the savings vs the first."""
    rows = [costs.cost_summary(c, seq_len) for c in configs]
    base = rows[0]
    for r in rows:
        r["smaller"] = base["bytes"] / r["bytes"]
        r["fewer FLOPs"] = base["flops"] / r["flops"]
    return rows


def _mib(v: float) -> str:
    """A bar label: whole MiB from 100 up (three digits side by side fit a bar), one decimal below."""
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def cost_figure(configs, seq_len: int = 128):
    """Two bar charts side by side: model size (MiB, log scale: the quantized groups and the groups
    kept in FP32 side by side, the total on top) and GFLOPs at ``seq_len`` tokens, for each config
    (labelled by its ``quant.label``)."""

    rows = cost_rows(configs, seq_len)
    labels = [r["label"] for r in rows]
    quantized = [r["quantized_bytes"] / 2**20 for r in rows]
    fp = [r["MiB"] - q for r, q in zip(rows, quantized)]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "model size (MiB, log scale)", f"matrix-product GFLOPs, {seq_len} tokens"))
    fig.add_bar(x=labels, y=[r["MiB"] for r in rows], name="total", marker_color="#90a4ae",
                text=[_mib(r["MiB"]) for r in rows], textposition="outside", row=1, col=1,
                hovertemplate="%{x}: %{y:.2f} MiB in all<extra></extra>")
    fig.add_bar(x=labels, y=quantized, name="word embedding + weight matrices", marker_color=PLUS,
                text=[_mib(v) for v in quantized], textposition="outside", row=1, col=1,
                hovertemplate="%{x}: %{y:.2f} MiB<extra>weight matrices</extra>")
    fig.add_bar(x=labels, y=fp, name="kept FP32 (LayerNorms, biases, position tables)",
                marker_color=MINUS, text=[_mib(v) for v in fp], textposition="outside",
                row=1, col=1, hovertemplate="%{x}: %{y:.2f} MiB<extra>kept FP32</extra>")
    fig.add_bar(x=labels, y=[r["GFLOPs"] for r in rows], name="GFLOPs (bit-ops count w·a/64)",
                marker_color="#264653", row=1, col=2, text=[f"{r['GFLOPs']:.2f}" for r in rows],
                textposition="outside", hovertemplate="%{x}: %{y:.3f} GFLOPs<extra></extra>")
    fig.update_layout(barmode="group", height=460, margin=dict(t=90),
                      title=f"What binarizing saves: BERT-base size and compute "
                            f"({rows[0]['params']:,} parameters)",
                      legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title_text="bits: weights, embedding, activations (W-E-A)")
    low = min(v for v in fp + quantized if v > 0)
    top = max(r["MiB"] for r in rows)
    fig.update_yaxes(title_text="MiB (2^20 bytes)", type="log", row=1, col=1,
                     range=[np.log10(low) - 0.3, np.log10(top) + 0.4])
    fig.update_yaxes(title_text="GFLOPs", range=[0, 1.15 * max(r["GFLOPs"] for r in rows)], row=1, col=2)
    return fig


# ----------------------------------------------------------------------------------------------
# the +-1 dot product as XOR and popcount


def _as_signs(name: str, v) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of +1/-1, got shape {arr.shape}")
    if not np.all(np.abs(arr) == 1):
        raise ValueError(f"{name} must contain only +1 and -1, got {sorted(set(arr.tolist()))}")
    return arr


def xnor_state(a, b) -> dict:
    """Every quantity of the dot product of two +-1 vectors, computed the way the kernels do.

    Returns a dict with ``k``, the words (``a_words``, ``b_words``, ``xor_words``, from
    :func:`binlab.kernels.packing.pack_signs`), the bits (``a_bits``, ``b_bits``, ``xor_bits``: 0/1 arrays),
    ``products`` (a_k b_k), ``popcount`` (d = 1-bits of a XOR b), ``agree`` (K - d), ``dot``
    (K - 2 d), ``dot_float`` (sum a_k b_k in floating point) and ``dot_kernel``
    (:func:`binlab.kernels.products.xnor_gemm` on the packed words). All three dots are equal.
    """
    a, b = _as_signs("a", a), _as_signs("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length, got {a.size} and {b.size}")
    k = a.size
    a_words = packing.pack_signs(torch.from_numpy(a))
    b_words = packing.pack_signs(torch.from_numpy(b))
    xor_words = a_words ^ b_words  # padding bits: 0 ^ 0 = 0
    d = int(np.bitwise_count(xor_words).sum())
    return {
        "k": k,
        "a": a, "b": b,
        "a_words": a_words, "b_words": b_words, "xor_words": xor_words,
        "a_bits": packing.unpack_bits01(a_words, k).numpy().astype(int),
        "b_bits": packing.unpack_bits01(b_words, k).numpy().astype(int),
        "xor_bits": packing.unpack_bits01(xor_words, k).numpy().astype(int),
        "products": a * b,
        "popcount": d,
        "agree": k - d,
        "dot": k - 2 * d,
        "dot_float": int(np.dot(a, b)),
        "dot_kernel": int(products.xnor_gemm(a_words[None], b_words[None], k)[0, 0]),
    }


ROWS = ("a", "b", "a XOR b", "a·b")


def _explorer_traces(st: dict) -> dict:
    """The data of the explorer's traces for state ``st`` (what the callback writes)."""
    k = st["k"]
    eq = f"a·b = K {MINUS_SIGN} 2·popcount(a XOR b) = {k} {MINUS_SIGN} 2·{st['popcount']} = {st['dot']}"
    return {
        "signs_z": [st["a"].tolist(), st["b"].tolist()],
        "signs_text": [[_signed(v) for v in st["a"]], [_signed(v) for v in st["b"]]],
        "signs_custom": [st["a_bits"].tolist(), st["b_bits"].tolist()],
        "xor_z": [st["xor_bits"].tolist()],
        "xor_text": [[str(v) for v in st["xor_bits"]]],
        "prod_z": [st["products"].tolist()],
        "prod_text": [[_signed(v) for v in st["products"]]],
        "bars_y": [st["agree"], st["popcount"], st["dot"]],
        "bars_text": [str(st["agree"]), str(st["popcount"]), str(st["dot"])],
        "title": eq,
        "readout": (f"<b>{eq}</b><br>check: Σ a<sub>k</sub>b<sub>k</sub> in floating point "
                    f"= {st['dot_float']}; products.xnor_gemm = {st['dot_kernel']} &nbsp;·&nbsp; "
                    f"words: a = 0x{int(st['a_words'][0]):x}, b = 0x{int(st['b_words'][0]):x}, "
                    f"a XOR b = 0x{int(st['xor_words'][0]):x}"),
    }


def make_xnor_explorer(n_bits: int = 12, seed: int = 0, a=None, b=None):
    """Two rows of toggle buttons (the signs of a and b) above a figure of a, b, a XOR b, a_k b_k and
    the counts; every toggle updates the figure and a text line.

    Args:
        n_bits: length K of the vectors (1..64: one word, so the words fit the text line).
        seed: the random starting signs (when ``a``/``b`` are not given).
        a, b: optional starting vectors of +1/-1.

    Returns:
        ``(ui, fig, controls)``: ``ui`` the VBox to display; ``fig`` the ``go.FigureWidget``
        (traces: 0 signs of a and b, 1 a XOR b, 2 products, 3 count bars); ``controls`` a dict with
        ``"a"`` and ``"b"`` (lists of ``ipywidgets.ToggleButton``, value True = +1) and
        ``"readout"`` (the ``ipywidgets.HTML`` text line).
    """

    if a is None or b is None:
        if isinstance(n_bits, bool) or not isinstance(n_bits, int) or not 1 <= n_bits <= 64:
            raise ValueError(f"n_bits must be an int in 1..64, got {n_bits!r}")
        rng = np.random.default_rng(seed)
        a = rng.choice([-1.0, 1.0], n_bits) if a is None else a
        b = rng.choice([-1.0, 1.0], n_bits) if b is None else b
    st = xnor_state(a, b)
    if st["k"] > 64:
        raise ValueError(f"the explorer shows one word: at most 64 bits, got {st['k']}")
    k = st["k"]

    def toggle(value: float, name: str):
        t = widgets.ToggleButton(value=bool(value > 0), tooltip=f"{name}: click to flip its sign",
                                 layout=widgets.Layout(width="46px", padding="0px"))
        _style_toggle(t)
        return t

    tog_a = [toggle(v, f"a[{i}]") for i, v in enumerate(st["a"])]
    tog_b = [toggle(v, f"b[{i}]") for i, v in enumerate(st["b"])]

    cols = list(range(k))
    tr = _explorer_traces(st)
    base = make_subplots(rows=2, cols=1, row_heights=[0.58, 0.42], vertical_spacing=0.2,
                         subplot_titles=("the signs, their XOR and their products, bit by bit",
                                         "counting instead of multiplying"))
    common = dict(x=cols, xgap=3, ygap=3, showscale=False, texttemplate="%{text}",
                  textfont=dict(size=14))
    # Rows on a numeric axis labelled with ROWS (a categorical axis with a category order breaks
    # the heatmap in the FigureWidget's plotly.js).
    base.add_heatmap(y=[0, 1], z=tr["signs_z"], text=tr["signs_text"], customdata=tr["signs_custom"],
                    zmin=-1, zmax=1, colorscale=[[0, MINUS], [1, PLUS]], name="signs",
                    hovertemplate="bit %{x}: %{text}, stored as bit %{customdata}<extra></extra>",
                    row=1, col=1, **common)
    base.add_heatmap(y=[2], z=tr["xor_z"], text=tr["xor_text"], zmin=0, zmax=1,
                    colorscale=[[0, SAME], [1, DIFFER]], name="a XOR b",
                    hovertemplate="bit %{x}: a XOR b = %{text} (1: the signs differ)<extra></extra>",
                    row=1, col=1, **common)
    base.add_heatmap(y=[3], z=tr["prod_z"], text=tr["prod_text"], zmin=-1, zmax=1,
                    colorscale=[[0, MINUS], [1, PLUS]], name="a_k b_k",
                    hovertemplate="a[%{x}]·b[%{x}] = %{text}<extra></extra>", row=1, col=1, **common)
    base.add_bar(x=[f"agree: K {MINUS_SIGN} popcount", "differ: popcount(a XOR b)",
                   f"a·b = agree {MINUS_SIGN} differ"],
                y=tr["bars_y"], text=tr["bars_text"], textposition="outside",
                marker_color=[PLUS, DIFFER, "#264653"], name="counts",
                hovertemplate="%{x}: %{y}<extra></extra>", row=2, col=1)
    base.update_layout(title=dict(text=tr["title"], x=0.5), height=560, showlegend=False,
                       margin=dict(l=70, r=20, t=90, b=60))
    base.update_xaxes(title_text="bit position k (bit k of the word)", dtick=1, row=1, col=1)
    base.update_yaxes(title_text="row", tickvals=list(range(len(ROWS))), ticktext=list(ROWS),
                      autorange="reversed", row=1, col=1)
    base.update_xaxes(title_text="quantity", row=2, col=1)
    base.update_yaxes(title_text="count / value", range=[-k - 2, k + 4], zeroline=True, row=2, col=1)
    # Build the whole figure first, then wrap it: the widget starts from its complete state.
    fig = Figure(base)

    readout = widgets.HTML(tr["readout"])

    def update(change=None):
        a_now = [1.0 if t.value else -1.0 for t in tog_a]
        b_now = [1.0 if t.value else -1.0 for t in tog_b]
        new = _explorer_traces(xnor_state(a_now, b_now))
        with fig.batch_update():
            fig.data[0].z, fig.data[0].text = new["signs_z"], new["signs_text"]
            fig.data[0].customdata = new["signs_custom"]
            fig.data[1].z, fig.data[1].text = new["xor_z"], new["xor_text"]
            fig.data[2].z, fig.data[2].text = new["prod_z"], new["prod_text"]
            fig.data[3].y, fig.data[3].text = new["bars_y"], new["bars_text"]
            fig.layout.title.text = new["title"]
        readout.value = new["readout"]
        if change is not None:
            _style_toggle(change["owner"])

    for t in tog_a + tog_b:
        t.observe(update, names="value")

    def row(name, toggles):
        label = widgets.HTML(f"<b>{name}</b>", layout=widgets.Layout(width="24px"))
        return widgets.HBox([label, *toggles])

    ui = widgets.VBox([
        widgets.HTML("Click a sign to flip it (blue = +1, stored as bit 1; orange = "
                     f"{MINUS_SIGN}1, stored as bit 0):"),
        row("a", tog_a), row("b", tog_b), readout, fig])
    return ui, fig, {"a": tog_a, "b": tog_b, "readout": readout}


def _style_toggle(t) -> None:
    t.description = "+1" if t.value else f"{MINUS_SIGN}1"
    t.button_style = "primary" if t.value else "warning"


# ----------------------------------------------------------------------------------------------
# how packing lays bits into words


def word_bits(words: np.ndarray, k: int) -> np.ndarray:
    """``[n_words, 64]`` int array: bit j of word w, or -1 where 64 w + j >= k (padding)."""
    words = np.asarray(words, dtype=np.uint64).reshape(-1)
    bits = ((words[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(int)
    element = np.arange(words.size)[:, None] * 64 + np.arange(64)[None, :]
    bits[element >= k] = -1
    return bits


def word_rows(words: np.ndarray, k: int) -> list[dict]:
    """One row per word of a packed vector: the elements it holds, its value, 1-bits and padding."""
    words = np.asarray(words, dtype=np.uint64).reshape(-1)
    rows = []
    for w, value in enumerate(words.tolist()):
        first, last = 64 * w, min(64 * w + 63, k - 1)
        rows.append({"word": w, "elements": f"{first}..{last}", "hex": f"0x{value:016x}",
                     "1-bits": int(value).bit_count(), "padding bits": 64 - (last - first + 1)})
    return rows


def packing_figure(x: torch.Tensor):
    """A heatmap of ``pack_signs(x)`` for a 1-D ``x``: one row per uint64 word, one column per bit
    (bit 0, the least significant, on the left); padding bits grey."""

    if not isinstance(x, torch.Tensor) or x.ndim != 1:
        raise ValueError("packing_figure expects a 1-D torch tensor")
    k = x.shape[0]
    words = packing.pack_signs(x)
    bits = word_bits(words, k)
    n_words = bits.shape[0]
    element = np.arange(n_words)[:, None] * 64 + np.arange(64)[None, :]
    values = np.full(bits.shape, np.nan)
    values.reshape(-1)[: k] = x.detach().double().numpy()
    hover = [[(f"element {e}: x = {values[w, j]:.3f} → bit {bits[w, j]}" if bits[w, j] >= 0
               else f"padding (element {e} ≥ K = {k}): bit 0")
              for j, e in enumerate(row)] for w, row in enumerate(element)]
    z = np.where(bits < 0, 2, bits)
    fig = Figure(go.Heatmap(
        z=z.tolist(), x=list(range(64)), y=[f"word {w}" for w in range(n_words)],
        text=[[str(v) if v >= 0 else "" for v in row] for row in bits], texttemplate="%{text}",
        customdata=hover, hovertemplate="%{y}, bit %{x}: %{customdata}<extra></extra>",
        zmin=0, zmax=2, showscale=False, xgap=1, ygap=3,
        colorscale=[[0, MINUS], [1 / 3, MINUS], [1 / 3, PLUS], [2 / 3, PLUS], [2 / 3, PADDING], [1, PADDING]]))
    fig.update_layout(title=f"pack_signs: K = {k} signs in {n_words} uint64 words "
                            f"(element k → bit k % 64 of word k // 64; grey = padding, always 0)",
                      height=120 + 60 * n_words, margin=dict(t=70, l=70))
    fig.update_xaxes(title_text="bit position in the word (k % 64), least significant first", dtick=8)
    fig.update_yaxes(title_text="word (k // 64)", autorange="reversed")
    return fig


# ----------------------------------------------------------------------------------------------
# speed: binlab's kernel against torch


def shape_label(m: int, k: int, n: int) -> str:
    """The label ``binlab bench`` and docs/benchmarks.md use for a linear shape."""
    return f"linear M={m} K={k} N={n}"


def measure_speedups(shapes, rounds: int = 5, retries: int = 2, max_foreign: float = 0.15) -> list[dict]:
    """Time ``torch.matmul`` (fp32) against binlab on linear shapes ``(M, K, N)``, with
    :mod:`binlab.kernels.bench`'s machinery (methods interleaved in rounds, medians, paired ratios).

    A shape that other processes disturbed (more than ``max_foreign`` cores of foreign CPU time, or rounds
    scattered by more than :data:`binlab.kernels.bench.MAX_SPREAD`) is timed again, up to ``retries`` times
    (:func:`binlab.kernels.bench.measure_shape`); the quietest attempt is kept.

    Returns one dict per shape: ``label``, ``m``, ``k``, ``n``, median times in microseconds
    (``fp32_us``, ``prepacked_us``: ``xnor_gemm`` on prepacked operands, ``linear_us``:
    ``BinaryLinear`` on the float input, packing included), the ratios ``x_prepacked`` and
    ``x_linear`` (torch time / binlab time), ``quiet`` (False when every attempt was disturbed),
    ``foreign_cores``, ``spread``, ``attempts`` and ``disturbed`` (why the kept attempt is not to be
    trusted; ``""`` for a quiet row).
    """

    rows = []
    for m, k, n in shapes:
        methods = bench.linear_methods(m, k, n, int8=False)
        measured = bench.measure_shape(methods, rounds, retries, max_foreign)
        s = bench.summarize(measured, 2.0 * m * n * k)
        t, r = s["times_s"], s["ratio_vs_fp32"]
        rows.append({"label": shape_label(m, k, n), "m": m, "k": k, "n": n,
                     "fp32_us": t["torch_fp32"] * 1e6, "prepacked_us": t["binlab_prepacked"] * 1e6,
                     "linear_us": t["binlab_linear"] * 1e6, "x_prepacked": r["binlab_prepacked"],
                     "x_linear": r["binlab_linear"], "quiet": s["quiet"], "foreign_cores": s["foreign_cores"],
                     "spread": s["spread"], "attempts": s["attempts"],
                     "disturbed": "" if s["quiet"] else disturbance(s, max_foreign)})
    return rows


def disturbance(s: dict, max_foreign: float = 0.15) -> str:
    """Why a timing (a :func:`binlab.kernels.bench.summarize` result, or a row of :func:`measure_speedups`) is
    not to be trusted: the foreign CPU time and the scatter of the rounds that broke the limits, and the attempts."""
    why = []
    if s["foreign_cores"] is not None and s["foreign_cores"] > max_foreign:
        why.append(f"other processes used {s['foreign_cores']:.2f} cores (limit {max_foreign:g})")
    if s["spread"] > bench.MAX_SPREAD:
        why.append(f"rounds scattered by {s['spread']:.0%} (limit {bench.MAX_SPREAD:.0%})")
    attempts = s["attempts"]
    return (" and ".join(why) or "disturbed") + (f", in all {attempts} attempts" if attempts > 1 else " (timed once)")


def quiet_rows(measured: list[dict]) -> list[dict]:
    """The rows of :func:`measure_speedups` timed on a quiet CPU: the only ones a headline may use."""
    return [r for r in measured if r["quiet"]]


#: How the chapter's table and figure grey out a row that other processes disturbed.
DISTURBED_COLOR = "#9e9e9e"
SPEEDUP_COLUMNS = {"label": "shape", "fp32_us": "torch fp32 (µs)", "prepacked_us": "binlab prepacked (µs)",
                   "linear_us": "BinaryLinear (µs)", "x_prepacked": "× fp32, prepacked",
                   "x_linear": "× fp32, with packing", "timing": "timing"}


def speedup_table(measured: list[dict]) -> str:
    """The rows of :func:`measure_speedups` as a markdown table: times, ratios and a "timing" column that says
    "quiet", or "⚠ disturbed: " and why; a disturbed row is greyed out entirely."""

    def cells(r):
        out = {"label": r["label"], **{k: f"{r[k]:.1f}" for k in ("fp32_us", "prepacked_us", "linear_us")},
               **{k: f"{r[k]:.1f}×" for k in ("x_prepacked", "x_linear")},
               "timing": "quiet" if r["quiet"] else f"⚠ disturbed: {r['disturbed']}"}
        if r["quiet"]:
            return out
        return {k: f'<span style="color:{DISTURBED_COLOR}">{v}</span>' for k, v in out.items()}

    return markdown_table([cells(r) for r in measured], SPEEDUP_COLUMNS)


def _shape(r: dict) -> str:
    return r["label"].replace("linear ", "")


def _ratio_range(rows: list[dict], key: str) -> str:
    """``"3.1× (M=8 ...) to 11.4× (M=128 ...)"``: the smallest and the largest ``key`` of ``rows``, with their shapes."""
    lo, hi = min(rows, key=lambda r: r[key]), max(rows, key=lambda r: r[key])
    ends = [lo] if lo is hi else [lo, hi]
    return " to ".join(f"{r[key]:.1f}× ({_shape(r)})" for r in ends)


def speedup_summary(measured: list[dict]) -> str:
    """The sentence the chapter prints about :func:`measure_speedups`: the range of the ratios over the quiet
    rows only (a disturbed row never enters it), and which rows were left out and why."""
    quiet = quiet_rows(measured)
    left_out = [r for r in measured if not r["quiet"]]
    if quiet:
        text = (f"On this machine, on {len(quiet)} quiet shape{'s' if len(quiet) > 1 else ''}, binlab's "
                f"xnor_gemm (prepacked) ran {_ratio_range(quiet, 'x_prepacked')} as fast as torch fp32; "
                f"BinaryLinear, packing counted, {_ratio_range(quiet, 'x_linear')}.")
    else:
        text = ("No speed-up from this run: other processes disturbed every shape, so its ratios say more about "
                "the load than about the kernels. docs/benchmarks.md (measured on a quiet machine) has the "
                "numbers to go by; time again when the CPU is idle.")
    if left_out:
        text += (f" Left out, disturbed ({len(left_out)} of {len(measured)}): "
                 + "; ".join(f"{_shape(r)}: {r['disturbed']}" for r in left_out) + ".")
    return text


def recorded_speedups(path: str | Path | None = None) -> dict[str, dict]:
    """The ratios of the results table in ``docs/benchmarks.md`` (default: the one of
    :func:`binlab.settings.project_root`), by shape label:
    ``{"linear M=128 K=768 N=768": {"x_prepacked": 11.4, "x_linear": 7.4, ...}}``; empty when there is no such
    file (an installed binlab outside its checkout: the chapter then shows this machine's numbers alone)."""
    path = Path(project_root() / "docs" / "benchmarks.md" if path is None else path)
    if not path.is_file():
        return {}
    table = parse_markdown_table(markdown_section(Path(path), "Results"))
    out = {}
    for row in table:
        out[row["shape"]] = {
            "fp32_us": parse_number(row["torch fp32 (µs)"]),
            "prepacked_us": parse_number(row["binlab prepacked (µs)"]),
            "linear_us": parse_number(row["binlab + packing (µs)"]),
            "x_prepacked": parse_number(row["× fp32, prepacked"]),
            "x_linear": parse_number(row["× fp32, + packing"]),
        }
    return out


def speedup_figure(measured: list[dict], recorded: dict[str, dict] | None = None):
    """Grouped bars per shape: the ratios measured now (prepacked, with packing) and, where the
    shape is in ``recorded``, the prepacked ratio of docs/benchmarks.md. A shape that other
    processes disturbed while it was timed (``quiet`` False) is greyed out (faded, hatched, its ratio in
    parentheses), labelled "(disturbed)", and its hover text gives the reason."""

    labels = [_shape(r) + ("" if r["quiet"] else " (disturbed)") for r in measured]
    hover = ["quiet CPU" if r["quiet"] else f"disturbed: {r['disturbed']}" for r in measured]
    fig = Figure()
    for key, name, color in (("x_prepacked", "here: xnor_gemm, prepacked", PLUS),
                             ("x_linear", "here: BinaryLinear (packing counted)", MINUS)):
        fig.add_bar(x=labels, y=[r[key] for r in measured], name=name, customdata=hover,
                    marker=dict(color=color, opacity=[1.0 if r["quiet"] else 0.35 for r in measured],
                                pattern=dict(shape=["" if r["quiet"] else "x" for r in measured])),
                    text=[f"{r[key]:.1f}×" if r["quiet"] else f"({r[key]:.1f}×)" for r in measured],
                    textposition="outside", hovertemplate="%{x}: %{y:.1f}×, %{customdata}<extra></extra>")
    if recorded:
        ys = [recorded.get(r["label"], {}).get("x_prepacked") for r in measured]
        fig.add_bar(x=labels, y=ys, name="docs/benchmarks.md: prepacked", marker_color="#264653",
                    text=[f"{y:.1f}×" if y is not None else "" for y in ys], textposition="outside")
    fig.add_hline(y=1.0, line_dash="dash", line_color="black")  # 1x: as fast as torch
    values = ([r["x_prepacked"] for r in measured] + [r["x_linear"] for r in measured]
              + [y for y in (ys if recorded else []) if y is not None])
    disturbed = sum(not r["quiet"] for r in measured)
    note = (f"; greyed, hatched: {disturbed} shape{'s' if disturbed > 1 else ''} disturbed by other processes, "
            "not to be trusted" if disturbed else "")
    fig.update_layout(title="binlab's XNOR-popcount GEMM against torch.matmul in fp32<br>"
                            f"<sup>higher is faster; dashed line: 1×, as fast as torch{note}</sup>",
                      barmode="group", height=450, legend=dict(orientation="h", y=-0.3))
    fig.update_xaxes(title_text="shape: M tokens × K inputs → N outputs")
    # Log scale: ratios from below 1 to hundreds (on a shared CPU) stay readable, 1× in the middle.
    fig.update_yaxes(title_text="× faster than torch fp32 (log scale)", type="log",
                     range=[np.log10(min(values + [1.0])) - 0.3, np.log10(max(values + [1.0])) + 0.3])
    return fig
