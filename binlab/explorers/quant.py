"""Chapter 2 (quantizers and the straight-through estimator): analysis functions and interactive figures.

Everything the chapter computes goes through the real quantizers of :mod:`binlab.quant.quantizers` (built by
name with :func:`binlab.quant.quantizers.get`); nothing here redraws a formula by hand::
    transfer_curve(name, x, ...)           q(x) and the straight-through gradient, by autograd
    symmetric_grid(R)                      the inputs -R..R the transfer curves use (0 exactly)
    load_weight_sample()                   a real weight matrix: the pretrained MiniLM's, else a random init
    quantize(name, w, ...)                 a tensor through a registry quantizer, knobs set by name
    relative_error(w, q)                   ||w - q||^2 / ||w||^2
    error_vs_bits(w)                       that error at 1, 2, 4, 8 bits for weight and activation quantizers
    binary_scale_errors(w, alphas)         mean (W - alpha sign W)^2 for each alpha, computed directly
    ste_toy_run(ste=...), compare_ste()    a tiny binarized MLP trained with the clipped or the identity STE

Interactive figures follow the book's pattern: ``make_xxx_explorer(...) -> (ui, fig, controls)``, with
``fig`` a plotly ``FigureWidget``, ``controls`` a dict of ipywidgets whose ``.observe`` callbacks update
``fig`` inside ``fig.batch_update()``, and ``ui`` the ``VBox`` a notebook displays. The static figures
(``error_vs_bits_figure``, ``ste_comparison_figure``) are FigureWidgets too, so the book renders them the
same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots
from torch import Tensor, nn

from binlab.checkpoint import hf_to_binlab_key, load_state_dict, resolve_model_dir
from binlab.explorers.figure import Figure
from binlab.quant import quantizers as Q
from binlab.settings import torch_threads

__all__ = [
    "QUANTIZER_PARAMS", "MIN_BITS", "build_quantizer", "quantize", "transfer_curve", "symmetric_grid",
    "make_transfer_explorer", "DEFAULT_WEIGHT",
    "WeightSample", "load_weight_sample", "relative_error", "HISTOGRAM_QUANTIZERS", "make_histogram_explorer",
    "ERROR_METHODS", "error_vs_bits", "error_vs_bits_figure",
    "binary_scale_errors", "make_alpha_explorer",
    "ToyRun", "STES", "toy_task", "BinaryMLP", "ste_toy_run", "compare_ste", "ste_comparison_figure",
]

# ----------------------------------------------------------------------------------------------------------
# building a quantizer from the registry with the knobs a reader can turn

#: Which knobs each registry quantizer takes (declared where the quantizer registers itself, see
#: :func:`binlab.quant.quantizers.register`): ``bits`` (k), ``clip`` (PACT clip c, or the STE window of ste_sign),
#: ``scale`` (the step s of LSQ / alpha of BiT, learned in training, set by hand here), ``zero_to_one`` /
#: ``strict_window`` (ste_bool's two code-vs-paper switches).
QUANTIZER_PARAMS: dict[str, tuple[str, ...]] = {name: Q.knobs(name) for name in Q.registered()}

#: The smallest k each multi-bit quantizer accepts (the others are 1-bit or ternary by construction).
MIN_BITS: dict[str, int] = {name: Q.min_bits(name) for name in Q.registered() if Q.min_bits(name) is not None}


def _check_name(name: str) -> None:
    if name not in QUANTIZER_PARAMS:
        raise ValueError(f"unknown quantizer {name!r}; choose one of {', '.join(QUANTIZER_PARAMS)}")


def build_quantizer(name: str, bits: int = 2, clip: float = 1.0, scale: float | None = None,
                    zero_to_one: bool = False, strict_window: bool = False) -> nn.Module:
    """The registry module ``Q.get(name, ...)`` with the knobs of :data:`QUANTIZER_PARAMS` applied.

    Knobs a quantizer does not take are ignored. ``scale`` sets the step (LSQ) or alpha (BiT elastic) and marks
    it initialised; ``None`` leaves it to be initialised from the first tensor, as in training.
    """
    _check_name(name)
    takes = QUANTIZER_PARAMS[name]
    kwargs = {}
    if "bits" in takes:
        if bits < MIN_BITS[name]:
            raise ValueError(f"{name} needs at least {MIN_BITS[name]} bits, got {bits}")
        kwargs["num_bits"] = int(bits)
    if name == "ste_sign":
        kwargs["clip_value"] = float(clip)
    elif "clip" in takes:
        kwargs["clip_init"] = float(clip)
    if "zero_to_one" in takes:
        kwargs.update(zero_to_one=bool(zero_to_one), strict_window=bool(strict_window))
    module = Q.get(name, **kwargs)
    if "scale" in takes and scale is not None:
        if not scale > 0:
            raise ValueError(f"{name}: scale must be positive, got {scale!r}")
        with torch.no_grad():
            getattr(module, module.scale_name).fill_(float(scale))
            module.initialized.fill_(True)
    return module


def quantize(name: str, x: Tensor, **knobs) -> Tensor:
    """``x`` through :func:`build_quantizer` (``name``, ``knobs``), detached. A 1-D ``x`` is treated as one
    row (the per-row quantizers need two dimensions)."""
    q = build_quantizer(name, **knobs)
    with torch.no_grad():
        return q(x.reshape(1, -1)).reshape(x.shape) if x.dim() == 1 else q(x)


def transfer_curve(name: str, x: Tensor, **knobs) -> tuple[np.ndarray, np.ndarray]:
    """The transfer curve ``q(x)`` and the gradient ``d(sum q)/dx`` of a registry quantizer, by autograd.

    ``x`` is a 1-D grid; it is quantized as ONE tensor (shape ``(1, N)``), so the data-dependent quantizers
    (BWN's alpha = mean|x|, TWN's threshold, the uniform quantizer's max|x|, the asymmetric ones' min) take
    their statistics from the grid itself. For an element-wise STE the gradient is ``dq_i/dx_i``; for BiBERT's
    centred BWN it also holds the centring's Jacobian (``M - mean(M)``). Returns two float64 numpy arrays.
    """
    if not isinstance(x, Tensor) or x.dim() != 1:
        raise ValueError("transfer_curve: x must be a 1-D tensor (a grid of inputs)")
    q = build_quantizer(name, **knobs)
    xg = x.detach().clone().reshape(1, -1).requires_grad_(True)
    y = q(xg)
    (grad,) = torch.autograd.grad(y.sum(), xg)
    return (y.detach().reshape(-1).double().numpy(), grad.reshape(-1).double().numpy())


def symmetric_grid(x_range: float, num_points: int = 1201) -> Tensor:
    """``num_points`` (odd) inputs from ``-x_range`` to ``x_range`` that hold 0 exactly (so the zero convention
    shows) and are symmetric about it, as float32."""
    n = max(int(num_points) // 2, 1)
    return (torch.arange(-n, n + 1, dtype=torch.float64) / n * float(x_range)).float()


def _transfer_title(name: str, knobs: dict, x_range: float) -> str:
    takes = QUANTIZER_PARAMS[name]
    parts = []
    if "bits" in takes:
        parts.append(f"k = {knobs['bits']}")
    if "clip" in takes:
        parts.append(f"window |x| <= {knobs['clip']:g}" if name == "ste_sign" else f"clip c = {knobs['clip']:g}")
    if "scale" in takes:
        parts.append(("alpha" if name.startswith("elastic") else "step s") + f" = {knobs['scale']:g}")
    if "zero_to_one" in takes:
        parts.append(f"zero_to_one={knobs['zero_to_one']}, strict_window={knobs['strict_window']}")
    if name == "ste_sign_identity":
        parts.append("identity STE, the gradient passes everywhere")
    elif not takes:  # BWN, TWN: the scale is a statistic of the quantized tensor, here the grid
        parts.append(f"scale from the statistics of the grid [-{x_range:g}, {x_range:g}]")
    return f"{name}: " + ", ".join(parts)


def make_transfer_explorer(name: str = "ste_sign", x_range: float = 3.0, num_points: int = 1201):
    """Pick a quantizer and its knobs; see its transfer curve and its straight-through gradient.

    Left: ``q(x)`` on a grid ``[-R, R]`` (with ``y = x`` for reference); right: ``d(sum q)/dx`` computed by
    autograd through the real quantizer (:func:`transfer_curve`). Returns ``(ui, fig, controls)``; controls:
    ``quantizer`` (Dropdown), ``bits``, ``clip``, ``scale``, ``x_range`` (sliders), ``zero_to_one``,
    ``strict_window`` (Checkboxes). Knobs the chosen quantizer does not take are disabled.
    """

    _check_name(name)
    controls = {
        "quantizer": W.Dropdown(options=list(QUANTIZER_PARAMS), value=name, description="quantizer"),
        "bits": W.IntSlider(value=2, min=1, max=8, description="bits k"),
        "clip": W.FloatSlider(value=1.0, min=0.25, max=3.0, step=0.05, description="clip c"),
        "scale": W.FloatSlider(value=0.5, min=0.05, max=2.0, step=0.05, description="step / alpha"),
        "x_range": W.FloatSlider(value=x_range, min=0.5, max=6.0, step=0.25, description="input range R"),
        "zero_to_one": W.Checkbox(value=False, description="zero_to_one"),
        "strict_window": W.Checkbox(value=False, description="strict_window"),
    }
    base = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                         subplot_titles=("forward: q(x)", "backward: straight-through gradient (autograd)"))
    fig = Figure(base)
    fig.add_trace(go.Scatter(name="q(x)", mode="lines", line=dict(width=3)), row=1, col=1)
    fig.add_trace(go.Scatter(name="y = x", mode="lines", line=dict(dash="dot", color="gray")), row=1, col=1)
    fig.add_trace(go.Scatter(name="d(sum q)/dx", mode="lines", line=dict(width=3, color="firebrick")),
                  row=1, col=2)
    fig.update_xaxes(title_text="input x", row=1, col=1)
    fig.update_xaxes(title_text="input x", row=1, col=2)
    fig.update_yaxes(title_text="quantized output q(x)", row=1, col=1)
    fig.update_yaxes(title_text="gradient passed back to x", row=1, col=2)
    fig.update_layout(height=420, margin=dict(t=90), legend=dict(orientation="h", y=-0.2))

    def update(_=None):
        name = controls["quantizer"].value
        takes = QUANTIZER_PARAMS[name]
        for knob in ("bits", "clip", "scale", "zero_to_one", "strict_window"):
            controls[knob].disabled = knob not in takes
        if "bits" in takes and controls["bits"].value < MIN_BITS[name]:
            controls["bits"].value = MIN_BITS[name]  # fires update again, with a valid k
            return
        knobs = {k: controls[k].value for k in ("bits", "clip", "scale", "zero_to_one", "strict_window")}
        r = float(controls["x_range"].value)
        x = symmetric_grid(r, num_points)
        y, g = transfer_curve(name, x, **knobs)
        xs = x.double().numpy()
        with fig.batch_update():
            fig.data[0].x, fig.data[0].y = xs, y
            fig.data[1].x, fig.data[1].y = xs, xs
            fig.data[2].x, fig.data[2].y = xs, g
            fig.layout.title.text = _transfer_title(name, knobs, r)
            lo, hi = float(min(y.min(), -r)), float(max(y.max(), r))
            pad = 0.05 * (hi - lo)
            fig.layout.yaxis.range = [lo - pad, hi + pad]
            glo, ghi = float(min(g.min(), 0.0)), float(max(g.max(), 1.0))
            fig.layout.yaxis2.range = [glo - 0.1, ghi + 0.1]

    for c in controls.values():
        c.style.description_width = "initial"
        c.observe(update, names="value")
    update()
    ui = W.VBox([W.HBox([controls["quantizer"], controls["x_range"]]),
                 W.HBox([controls["bits"], controls["clip"], controls["scale"]]),
                 W.HBox([controls["zero_to_one"], controls["strict_window"]]), fig])
    return ui, fig, controls


# ----------------------------------------------------------------------------------------------------------
# a real weight matrix and its reconstruction error

#: The weight the chapter looks at by default (Hugging Face name in the MiniLM checkpoint).
DEFAULT_WEIGHT = "encoder.layer.0.attention.self.query.weight"


@dataclass
class WeightSample:
    """A weight matrix and where it came from (``pretrained`` tells which; ``source`` says it in words)."""

    weight: Tensor
    name: str
    pretrained: bool
    source: str


def load_weight_sample(key: str = DEFAULT_WEIGHT, pretrained: bool = True, seed: int = 0) -> WeightSample:
    """A weight matrix of the pretrained MiniLM-L6 if it is installed, else a random ``nn.Linear`` init.

    ``key``: the checkpoint's (Hugging Face) name; the sample's ``name`` is binlab's. ``pretrained=False``
    skips the checkpoint. The fallback has the same shape (384 x 384 for the default key) and PyTorch's default
    init (Kaiming-uniform), seeded; ``source`` says why the checkpoint was not used.
    """

    name = hf_to_binlab_key(key)
    shape, reason = (384, 384), "pretrained=False was asked for"
    if pretrained:
        try:
            model_dir = resolve_model_dir(None)
            state = load_state_dict(model_dir)
            if key not in state:
                raise KeyError(f"{key!r} is not in the checkpoint")
            w = state[key].detach().float().clone()
            return WeightSample(w, name, True, f"pretrained all-MiniLM-L6-v2, {name} {tuple(w.shape)}")
        except (FileNotFoundError, KeyError, ImportError, OSError) as e:
            reason = f"the pretrained checkpoint is not available: {str(e).splitlines()[0]}"
    gen = torch.Generator().manual_seed(seed)
    w = torch.empty(shape)
    bound = 1.0 / math.sqrt(shape[1])  # nn.Linear's default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), ..)
    w.uniform_(-bound, bound, generator=gen)
    return WeightSample(w, name, False, f"RANDOM INIT (nn.Linear default, seed {seed}) {tuple(shape)}, "
                                        f"standing in for {name}; {reason}")


def relative_error(w: Tensor, q: Tensor) -> float:
    """The relative squared reconstruction error ``||w - q||^2 / ||w||^2`` (0 = exact, 1 = as bad as zeros)."""
    w, q = w.detach().double(), q.detach().double()
    den = float((w * w).sum())
    if den == 0:
        raise ValueError("relative_error: w is all zeros")
    return float(((w - q) ** 2).sum()) / den


#: Quantizers the histogram explorer offers: the weight quantizers, and the activation quantizers that
#: take k bits applied to the same tensor (their scales initialised from it as in training).
HISTOGRAM_QUANTIZERS = ("bwn", "bwn_bit", "bwn_bibert", "twn", "uniform_sym", "lsq_sym", "elastic_signed")


def _quantize_weight(name: str, w: Tensor, bits: int) -> Tensor:
    if name.startswith("uniform"):
        # clip at max|w|: nothing is clipped, the dynamic min-max scale does the work
        return quantize(name, w, bits=bits, clip=float(w.abs().max()) + 1e-12)
    if "bits" in QUANTIZER_PARAMS[name]:
        return quantize(name, w, bits=bits)  # LSQ / elastic: step initialised from w, as on the first batch
    return quantize(name, w)


def make_histogram_explorer(sample: WeightSample | None = None, num_bins: int = 121):
    """Histogram of a weight matrix before and after quantization, with the reconstruction error.

    Bars: counts of ``W`` (grey) and of ``Q(W)`` (colour) on the same bins (log scale: the quantized values
    pile up on a few levels). The title names the tensor's source (pretrained or random) and the relative
    error ``||W - Q(W)||^2 / ||W||^2``. Returns ``(ui, fig, controls)``; controls: ``quantizer`` (Dropdown of
    :data:`HISTOGRAM_QUANTIZERS`), ``bits`` (IntSlider, for the k-bit ones), ``log_y`` (Checkbox).
    """

    sample = sample if sample is not None else load_weight_sample()
    w = sample.weight
    edges = np.linspace(float(w.min()), float(w.max()), num_bins + 1)
    centres, width = 0.5 * (edges[1:] + edges[:-1]), edges[1] - edges[0]
    counts_w, _ = np.histogram(w.numpy().ravel(), bins=edges)
    controls = {
        "quantizer": W.Dropdown(options=list(HISTOGRAM_QUANTIZERS), value="bwn", description="quantizer"),
        "bits": W.IntSlider(value=2, min=1, max=8, description="bits k"),
        "log_y": W.Checkbox(value=True, description="log count axis"),
    }
    fig = Figure()
    fig.add_trace(go.Bar(x=centres, y=counts_w, width=width, name="W (full precision)",
                         marker_color="lightgray"))
    fig.add_trace(go.Bar(x=centres, y=np.zeros_like(counts_w), width=width, name="Q(W)",
                         marker_color="royalblue", opacity=0.8))
    fig.update_layout(barmode="overlay", height=430, margin=dict(t=90), xaxis_title="weight value",
                      yaxis_title="number of entries", legend=dict(orientation="h", y=-0.2))
    where = "pretrained MiniLM-L6" if sample.pretrained else "RANDOM INIT (no pretrained checkpoint)"

    def update(_=None):
        name = controls["quantizer"].value
        takes_bits = "bits" in QUANTIZER_PARAMS[name]
        controls["bits"].disabled = not takes_bits
        if takes_bits and controls["bits"].value < MIN_BITS[name]:
            controls["bits"].value = MIN_BITS[name]
            return
        bits = controls["bits"].value
        q = _quantize_weight(name, w, bits)
        counts_q, _ = np.histogram(np.clip(q.numpy().ravel(), edges[0], edges[-1]), bins=edges)
        err = relative_error(w, q)
        levels = int(torch.unique(q).numel())
        label = f"{name}, k = {bits}" if takes_bits else name
        with fig.batch_update():
            fig.data[1].y = counts_q
            fig.data[1].name = f"Q(W): {label}, {levels} distinct values"
            fig.layout.yaxis.type = "log" if controls["log_y"].value else "linear"
            fig.layout.title.text = (f"{where}: {sample.name}<br>{label}: relative error "
                                     f"||W - Q(W)||² / ||W||² = {err:.4f}")

    for c in controls.values():
        c.style.description_width = "initial"
        c.observe(update, names="value")
    update()
    ui = W.VBox([W.HBox([controls["quantizer"], controls["bits"], controls["log_y"]]), fig])
    return ui, fig, controls


#: The methods of :func:`error_vs_bits`: label -> (registry name or a bits->name map, bit-widths it supports).
ERROR_METHODS = {
    "weights: BWN (1 bit) / TWN (ternary, '2 bits')": ({1: "bwn", 2: "twn"}, (1, 2)),
    "activations: uniform min-max (BinaryBERT, PACT)": ("uniform_sym", (2, 3, 4, 5, 6, 7, 8)),
    "activations: LSQ at its init step (BinaryBERT)": ("lsq_sym", (2, 3, 4, 5, 6, 7, 8)),
    "activations: BiT elastic at its init alpha": ("elastic_signed", (1, 2, 3, 4, 5, 6, 7, 8)),
}


def error_vs_bits(w: Tensor, bits: tuple[int, ...] = (1, 2, 4, 8)) -> dict[str, list[float | None]]:
    """Relative error ``||W - Q(W)||^2 / ||W||^2`` of each method of :data:`ERROR_METHODS` on the same ``w``,
    at each bit-width (``None`` where a method has no such bit-width). The learned scales (LSQ's step, BiT's
    alpha) are at their data initialisation, as on the first training batch, not trained."""
    out = {}
    for label, (name, supported) in ERROR_METHODS.items():
        row = []
        for b in bits:
            if b not in supported:
                row.append(None)
                continue
            q = _quantize_weight(name[b] if isinstance(name, dict) else name, w, b)
            row.append(relative_error(w, q))
        out[label] = row
    return out


def error_vs_bits_figure(errors: dict[str, list[float | None]], bits: tuple[int, ...] = (1, 2, 4, 8),
                         title: str = "Reconstruction error against bit-width, same tensor"):
    """Lines of :func:`error_vs_bits` (log error axis, bits on a log2 axis)."""

    fig = Figure()
    for label, row in errors.items():
        xs = [b for b, e in zip(bits, row) if e is not None]
        ys = [e for e in row if e is not None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=label))
    fig.update_layout(title=title, height=480, legend=dict(orientation="h", yanchor="top", y=-0.3),
                      margin=dict(b=130),
                      xaxis=dict(title="bits k", type="log", tickvals=list(bits), ticktext=[str(b) for b in bits]),
                      yaxis=dict(title="relative error ||W - Q(W)||² / ||W||²", type="log"))
    return fig


# ----------------------------------------------------------------------------------------------------------
# the optimal binary scale


def binary_scale_errors(w: Tensor, alphas) -> np.ndarray:
    """``mean((W - alpha * sign(W))^2)`` for each alpha, computed directly (binlab's sign, sign(0) = +1).

    No closed form is used: every alpha quantizes ``W`` and measures the error, so the minimum found on the
    grid is an independent check of the derivation ``alpha* = mean|W|``.
    """
    w = w.detach().double().reshape(-1)
    s = Q.ste_sign(w, None).numpy()  # the library's sign, then plain numpy (one thread, fast on 1e5 entries)
    wn = w.numpy()
    return np.array([float(np.mean((wn - a * s) ** 2)) for a in np.asarray(alphas, dtype=np.float64)])


def make_alpha_explorer(sample: WeightSample | None = None, num_alphas: int = 301):
    """A slider over alpha; the error ``mean((W - alpha sign W)^2)`` with markers at alpha and at mean|W|.

    The grid runs from 0 to 3 mean|W|. Returns ``(ui, fig, controls)``; controls: ``alpha`` (FloatSlider).
    ``fig.data``: 0 the error curve, 1 the current alpha, 2 mean|W| (BWN's alpha, from :func:`binlab.quant.quantizers.bwn`).
    """

    sample = sample if sample is not None else load_weight_sample()
    w = sample.weight
    mean_abs = float(w.abs().mean())
    alpha_bwn = float(Q.bwn(w).abs().max())  # the library's alpha: equals mean|W|
    alphas = np.linspace(0.0, 3.0 * mean_abs, num_alphas)
    errors = binary_scale_errors(w, alphas)
    err_opt = float(binary_scale_errors(w, [alpha_bwn])[0])
    controls = {"alpha": W.FloatSlider(value=float(alphas[num_alphas // 6]), min=0.0, max=float(alphas[-1]),
                                       step=float(alphas[1] - alphas[0]), readout_format=".4f",
                                       description="alpha", continuous_update=True)}
    fig = Figure()
    fig.add_trace(go.Scatter(x=alphas, y=errors, mode="lines", name="mean (W - alpha sign W)²"))
    fig.add_trace(go.Scatter(x=[0.0], y=[0.0], mode="markers", name="current alpha",
                             marker=dict(size=13, color="darkorange")))
    fig.add_trace(go.Scatter(x=[alpha_bwn], y=[err_opt], mode="markers", name="mean|W| (BWN's alpha)",
                             marker=dict(size=15, symbol="star", color="green")))
    fig.update_layout(height=420, margin=dict(t=90), xaxis_title="scale alpha",
                      yaxis_title="mean squared error", legend=dict(orientation="h", y=-0.2))

    def update(_=None):
        a = float(controls["alpha"].value)
        e = float(binary_scale_errors(w, [a])[0])
        with fig.batch_update():
            fig.data[1].x, fig.data[1].y = [a], [e]
            fig.layout.title.text = (f"Binary scale on {'pretrained' if sample.pretrained else 'RANDOM INIT'} "
                                     f"{sample.name}<br>alpha = {a:.4f}: error {e:.3e};  "
                                     f"mean|W| = {mean_abs:.4f}: error {err_opt:.3e}")

    controls["alpha"].observe(update, names="value")
    update()
    return W.VBox([controls["alpha"], fig]), fig, controls


# ----------------------------------------------------------------------------------------------------------
# does the STE matter? a tiny binarized MLP


def toy_task(num_points: int = 512, input_scale: float = 4.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A 2-D, two-class toy task: points uniform in a square, label = (inside a circle) XOR (x1 * x2 > 0).

    The square is ``[-2, 2]^2`` times ``input_scale``: at 4 the inputs span +-8, so the first layer's
    pre-activations are mostly far outside the STE window |z| <= 1. Deterministic in ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(num_points, 2, generator=gen) * 4 - 2
    inside = (x ** 2).sum(dim=1) < 1.6
    y = (inside ^ (x[:, 0] * x[:, 1] > 0)).long()
    return x * input_scale, y


class BinaryMLP(nn.Module):
    """2 -> h -> h -> h -> 2 with sign activations (:func:`binlab.quant.quantizers.ste_sign`) after the first three
    layers and BWN-binarized weights in the two hidden ones::

        h0 = sign(W_in x + b)                 full-precision first layer (it sees the raw inputs)
        h1 = sign(bwn(W_1) h0 + b_1)          binary weights, binary activations
        h2 = sign(bwn(W_2) h1 + b_2)
        logits = W_out h2 + b_out

    ``clip_value`` is the STE window of every sign: 1.0 (clipped STE, BinaryNet / larq) or None (identity).
    The first layer's pre-activations are kept in ``self.first_preact`` (detached) after each forward.
    """

    def __init__(self, clip_value: float | None, hidden: int = 32):
        super().__init__()
        self.clip_value = clip_value
        self.inp = nn.Linear(2, hidden)
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)])
        self.out = nn.Linear(hidden, 2)
        self.first_preact: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        z = self.inp(x)
        self.first_preact = z.detach()
        h = Q.ste_sign(z, self.clip_value)
        for layer in self.hidden:
            h = Q.ste_sign(F.linear(h, Q.bwn(layer.weight), layer.bias), self.clip_value)
        return self.out(h)


@dataclass
class ToyRun:
    """One training run of :func:`ste_toy_run`: per-step loss, and the fraction of the first layer's
    pre-activations inside the window |z| <= 1 (where the clipped STE passes a gradient)."""

    ste: str
    losses: list[float] = field(default_factory=list)
    inside_window: list[float] = field(default_factory=list)
    accuracy: float = float("nan")


STES = {"clipped": 1.0, "identity": None}


def ste_toy_run(ste: str = "clipped", num_steps: int = 150, lr: float = 0.01, hidden: int = 32,
                num_points: int = 512, input_scale: float = 4.0, seed: int = 0) -> ToyRun:
    """Train :class:`BinaryMLP` on :func:`toy_task` (full batch, Adam, cross-entropy) with one STE.

    ``ste``: ``"clipped"`` (``ste_sign(z, clip_value=1)``) or ``"identity"`` (``clip_value=None``). Everything
    else (data, initial weights, optimizer) is identical between the two and seeded by ``seed``, so the two
    runs differ only by the STE. Returns a :class:`ToyRun`; ``accuracy`` is on the training points.
    """
    if ste not in STES:
        raise ValueError(f"ste must be one of {list(STES)}, got {ste!r}")
    x, y = toy_task(num_points, input_scale, seed)
    with torch_threads(1):  # tiny matrices: one thread is fastest, and the result does not depend on the machine
        torch.manual_seed(seed)
        net = BinaryMLP(STES[ste], hidden)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        run = ToyRun(ste)
        for _ in range(num_steps):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.losses.append(loss.item())
            run.inside_window.append(float((net.first_preact.abs() <= 1).float().mean()))
        with torch.no_grad():
            run.accuracy = float((net(x).argmax(dim=1) == y).float().mean())
    return run


def compare_ste(num_steps: int = 150, **kwargs) -> dict[str, ToyRun]:
    """:func:`ste_toy_run` with the clipped and with the identity STE, same seed and data."""
    return {ste: ste_toy_run(ste, num_steps=num_steps, **kwargs) for ste in STES}


def ste_comparison_figure(runs: dict[str, ToyRun]):
    """Two panels: the training loss of each run, and the fraction of first-layer pre-activations inside the
    STE window, against the training step."""

    colors = {"clipped": "royalblue", "identity": "firebrick"}
    fig = Figure(make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "training loss", "first layer: pre-activations with |z| <= 1")))
    for ste, run in runs.items():
        steps = np.arange(1, len(run.losses) + 1)
        label = f"{ste} STE (accuracy {run.accuracy:.0%})"
        fig.add_trace(go.Scatter(x=steps, y=run.losses, mode="lines", name=label, legendgroup=ste,
                                 line=dict(color=colors.get(ste))), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=run.inside_window, mode="lines", name=label, legendgroup=ste,
                                 showlegend=False, line=dict(color=colors.get(ste), dash="dot")), row=1, col=2)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="cross-entropy loss", row=1, col=1)
    fig.update_yaxes(title_text="fraction inside the window", range=[0, 1], row=1, col=2)
    fig.update_layout(title="Binarized MLP: clipped vs identity straight-through estimator", height=430,
                      margin=dict(t=90), legend=dict(orientation="h", y=-0.2))
    return fig
