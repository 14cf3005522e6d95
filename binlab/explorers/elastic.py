"""Chapter 5 (BiT's elastic binary activations): real activations, their optimal scales, interactive figures.

Everything the chapter computes goes through the library's own binarizer, :func:`binlab.quant.quantizers.elastic`
(at one bit), and its optimal scale :func:`binlab.quant.quantizers.optimal_alpha`; nothing here re-implements the
forward or the straight-through gradients::

    capture_activations(...)              a LayerNorm output, softmax probabilities and a ReLU FFN output of the
                                          bundled MiniLM on a few sentences (a random BERT if it is not installed)
    binarize(x, alpha, beta, signed)      x through elastic at one bit, shifted by the threshold beta
    reconstruction_error(x, alpha, ...)   mean (x - x_b)^2 for one alpha or a sweep of them
    activation_histograms_figure(...)     the three activations and what sign() keeps of them
    alpha_sweep(...), alpha_sweep_figure  the error against alpha, alpha* and the code's 2 / 4 mean|x| marked
    make_elastic_explorer(...)            sliders for alpha and beta, a dropdown for the activation
    ste_gradients(...), ste_gradient_figure   d q / dx and d q / d alpha of both sets, by autograd
    uniform_attention_rows(...)           BiT's all-zero attention: 4 mean(p) puts the threshold above 1/L
    all_zero_attention_rows(...)          the same counted by calibrate() on the real backbone, W1A1
    compare_activation_scales(...)        a tiny BERT with binary activations: no scale, fixed alpha*, learned alpha
    learning_curves_figure(path)          the recorded GLUE runs' dev curves (docs/curves/, binlab.methods.curves)

Interactive figures follow the book's pattern: ``make_xxx_explorer(...) -> (ui, fig, controls)``, with ``fig`` a
plotly ``FigureWidget`` updated inside ``fig.batch_update()`` by the ``.observe`` callbacks of ``controls``, and
``ui`` the ``VBox`` a notebook displays. The static figures are FigureWidgets too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots
from torch import Tensor

from binlab.checkpoint import load_pretrained
from binlab.data.glue import batches as glue_batches, load_glue
from binlab.explorers.figure import Figure
from binlab.methods.curves import load_curves
from binlab.model import BertConfig, BertForSequenceClassification, tiny_bert
from binlab.quant import quantizers as Q
from binlab.quant.config import QuantConfig
from binlab.settings import torch_threads
from binlab.tokenizer import load_tokenizer
from binlab.train.calibration import calibrate

__all__ = [
    "SENTENCES", "ACTIVATIONS", "ActivationSample", "capture_activations", "binarize", "reconstruction_error",
    "relative_error", "code_alpha", "activation_histograms_figure", "alpha_sweep", "alpha_sweep_figure",
    "make_elastic_explorer", "ste_gradients", "ste_gradient_figure", "uniform_attention_rows",
    "uniform_attention_figure", "all_zero_attention_rows", "SCALE_VARIANTS", "ScaleComparison",
    "compare_activation_scales", "scale_comparison_figure",
]

#: The sentences the activations are captured on (short, varied, as SST-2's).
SENTENCES = (
    "a gripping, beautifully acted film",
    "the plot is thin and the jokes fall flat",
    "not bad at all",
    "it is neither funny nor moving, just long",
    "one of the most charming comedies of the year",
    "the director never finds a reason for the story to exist",
    "warm, funny and surprisingly sad",
    "i wanted to leave after twenty minutes",
)

#: key -> (label, signed): the three activations BiT binarizes, and the set each one goes to (methods.md §4.3).
ACTIVATIONS = {
    "layernorm": ("LayerNorm output (input of the query projection)", True),
    "softmax": ("attention probabilities (softmax output)", False),
    "relu": ("FFN ReLU output (input of the FFN output layer)", False),
}

# ----------------------------------------------------------------------------------------------------------
# real activations


@dataclass
class ActivationSample:
    """One captured activation, flattened: ``values`` (float32, 1-D), the set BiT binarizes it to (``signed``),
    and where it came from (``pretrained``; ``source`` says it in words)."""

    key: str
    label: str
    values: Tensor
    signed: bool
    pretrained: bool
    source: str

    @property
    def alpha_star(self) -> float:
        """The optimal one-bit scale of these values (:func:`binlab.quant.quantizers.optimal_alpha`)."""
        return Q.optimal_alpha(self.values, self.signed)

    @property
    def alpha_code(self) -> float:
        """The scale BiT's code starts from: 2 mean|x| (signed) or 4 mean|x| ({0, alpha})."""
        return code_alpha(self.values, self.signed)


def code_alpha(x: Tensor, signed: bool) -> float:
    """BiT's code initialisation of alpha (:class:`binlab.quant.quantizers.Elastic`, ``init="code"``):
    2 mean|x| for {-alpha, +alpha}, 4 mean|x| for {0, alpha}."""
    return (2.0 if signed else 4.0) * float(x.detach().double().abs().mean())


@functools.lru_cache(maxsize=2)
def _backbone(pretrained: bool = True) -> tuple[BertForSequenceClassification, bool, str]:
    if pretrained:
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = load_pretrained(None, quant="fp", verbose=False)
            return model.eval(), True, "pretrained all-MiniLM-L6-v2"
        except (FileNotFoundError, ImportError, OSError, KeyError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        reason = "pretrained=False was asked for"
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                                                     intermediate_size=1536))
    return model.eval(), False, f"RANDOM INIT BERT (6 x 384, seed 0); {reason}"


def capture_activations(sentences=SENTENCES, layer: int = 1, max_length: int = 32,
                        pretrained: bool = True) -> dict[str, ActivationSample]:
    """The three activations of :data:`ACTIVATIONS` in encoder layer ``layer`` of the bundled MiniLM (full
    precision), on ``sentences``, captured with forward hooks:

    * ``layernorm``: the input of ``attention.query``, the LayerNorm output of the layer below (BiT's
      {-alpha, +alpha} set; every linear layer's input and Q, K, V are of this kind);
    * ``softmax``: the input of ``attention.probs_quant``, the attention probabilities, real query rows and real
      keys only (BiT's {0, alpha} set);
    * ``relu``: ReLU of the output of ``ffn.intermediate`` (MiniLM uses GELU; the BiT model replaces it with
      ReLU, so this is what its FFN output layer binarizes at the start of training; {0, alpha}).

    Returns ``{key: ActivationSample}``. Without the pretrained checkpoint (or with ``pretrained=False``) a
    randomly initialised BERT of the same size is used, and every sample's ``source`` says so.
    """
    model, is_pretrained, source = _backbone(bool(pretrained))
    n_layers = len(model.bert.encoder.layer)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer must be in 0..{n_layers - 1}, got {layer}")
    tokenizer = load_tokenizer(None)
    batch = tokenizer.encode_batch(list(sentences), max_length=max_length)
    real = batch["attention_mask"].bool()  # (B, L)
    block = model.bert.encoder.layer[layer]
    got: dict[str, Tensor] = {}
    hooks = [
        block.attention.query.register_forward_pre_hook(lambda m, inp: got.__setitem__("layernorm", inp[0])),
        block.attention.probs_quant.register_forward_pre_hook(lambda m, inp: got.__setitem__("softmax", inp[0])),
        block.ffn.intermediate.register_forward_hook(lambda m, inp, out: got.__setitem__("relu", out)),
    ]
    try:
        with torch.no_grad():
            model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    finally:
        for h in hooks:
            h.remove()
    probs = got["softmax"]  # (B, H, L, L)
    keep = real[:, None, :, None] & real[:, None, None, :]
    values = {
        "layernorm": got["layernorm"][real],
        "softmax": probs[keep.expand_as(probs)],
        "relu": F.relu(got["relu"][real]),
    }
    where = f"{source}, layer {layer}, {len(sentences)} sentences"
    return {k: ActivationSample(k, ACTIVATIONS[k][0], v.detach().float().reshape(-1).contiguous(),
                                ACTIVATIONS[k][1], is_pretrained, where) for k, v in values.items()}


# ----------------------------------------------------------------------------------------------------------
# binarizing and the reconstruction error


def binarize(x: Tensor, alpha: float, beta: float = 0.0, signed: bool = True) -> Tensor:
    """``x`` through BiT's one-bit elastic binarizer, :func:`binlab.quant.quantizers.elastic`, after the threshold
    shift: ``elastic(x - beta, alpha)`` (detached)::

        signed:    alpha * sign(x - beta)                        (sign(0) = +1)
        unsigned:  alpha * 1{(x - beta) / alpha > 1/2}           ({0, alpha}; exactly 1/2 rounds to 0)
    """
    with torch.no_grad():
        return Q.elastic(x.float() - float(beta), torch.tensor(float(alpha)), 1, bool(signed))


def reconstruction_error(x: Tensor, alpha, signed: bool, beta: float = 0.0):
    """The mean squared error ``mean((x - x_b)^2)`` of :func:`binarize` at ``alpha`` (one number, or an array of
    one error per entry of an array / list of alphas).

    Computed directly, binarizing ``x`` for every alpha: the minimum found on a grid is an independent check of
    the paper's alpha* (:func:`binlab.quant.quantizers.optimal_alpha`).
    """
    xd = x.detach().reshape(-1).double()
    alphas = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    out = np.array([float(((xd - binarize(x.reshape(-1), a, beta, signed).double()) ** 2).mean()) for a in alphas])
    return float(out[0]) if np.ndim(alpha) == 0 else out


def relative_error(x: Tensor, q: Tensor) -> float:
    """``||x - q||^2 / ||x||^2`` (0 = exact, 1 = as bad as all zeros)."""
    x, q = x.detach().double(), q.detach().double()
    return float(((x - q) ** 2).sum() / (x * x).sum())


def _sign_no_scale(x: Tensor) -> Tensor:
    return Q.ste_sign(x.detach(), None)


def _histogram(values: np.ndarray, num_bins: int, lo: float | None = None, hi: float | None = None):
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, num_bins + 1)
    counts, _ = np.histogram(np.clip(values, lo, hi), bins=edges)
    return edges, counts


def activation_histograms_figure(samples: dict[str, ActivationSample], num_bins: int = 80):
    """One histogram per activation (log count axis), with the two values alpha* binarizes it to.

    The subplot titles give the relative error ``||x - x_b||^2 / ||x||^2`` of plain ``sign(x)`` (no scale, BiBERT's
    activations) and of the optimal set and scale (BiT with alpha*).
    """
    keys = list(samples)
    titles = []
    for k in keys:
        s = samples[k]
        e_sign = relative_error(s.values, _sign_no_scale(s.values))
        e_opt = relative_error(s.values, binarize(s.values, s.alpha_star, 0.0, s.signed))
        titles.append(f"{s.key}: sign(x) error {e_sign:.2f}, alpha* error {e_opt:.2f}")
    fig = Figure(make_subplots(rows=1, cols=len(keys), subplot_titles=titles, horizontal_spacing=0.07))
    for i, k in enumerate(keys, start=1):
        s = samples[k]
        v = s.values.numpy()
        edges, counts = _histogram(v, num_bins)
        centres = 0.5 * (edges[1:] + edges[:-1])
        fig.add_trace(go.Bar(x=centres, y=counts, width=edges[1] - edges[0], marker_color="lightgray",
                             name="x (full precision)", showlegend=i == 1), row=1, col=i)
        a = s.alpha_star
        levels = [-a, a] if s.signed else [0.0, a]
        fig.add_trace(go.Scatter(x=levels, y=[max(counts.max(), 1)] * 2, mode="markers", name="the two values at alpha*",
                                 marker=dict(size=12, symbol="triangle-down", color="royalblue"),
                                 showlegend=i == 1), row=1, col=i)
        fig.update_xaxes(title_text=s.label.split(" (")[0] + " value", row=1, col=i)
        fig.update_yaxes(title_text="number of entries", type="log", row=1, col=i)
    src = next(iter(samples.values())).source
    fig.update_layout(title=f"Real activations and what binarization keeps of them<br><sup>{src}</sup>",
                      height=440, margin=dict(t=110), legend=dict(orientation="h", y=-0.25))
    return fig


def alpha_sweep(x: Tensor, signed: bool, num_alphas: int = 201, max_factor: float | None = None,
                beta: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, errors)``: :func:`reconstruction_error` on a grid from 0 (excluded) to the larger of
    ``max_factor`` mean|x| (default 3 for the signed set, 6 for {0, alpha}, so the code's 2 / 4 mean|x| is on it)
    and 1.5 alpha* (for softmax probabilities alpha* is far above 4 mean|x|)."""
    m = float(x.detach().double().abs().mean())
    max_factor = (3.0 if signed else 6.0) if max_factor is None else float(max_factor)
    top = max(max_factor * m, 1.5 * Q.optimal_alpha(x, signed))
    alphas = np.linspace(0.0, top, int(num_alphas) + 1)[1:]
    return alphas, reconstruction_error(x, alphas, signed, beta)


def alpha_sweep_figure(samples: dict[str, ActivationSample], num_alphas: int = 201):
    """The error ``mean((x - x_b)^2)`` against alpha for each activation, computed by binarizing; markers at the
    paper's alpha* (:func:`binlab.quant.quantizers.optimal_alpha`) and at the code's 2 / 4 mean|x|."""
    keys = list(samples)
    fig = Figure(make_subplots(rows=1, cols=len(keys), horizontal_spacing=0.08,
                                        subplot_titles=[f"{k}: {'{-α, +α}' if samples[k].signed else '{0, α}'}"
                                                        for k in keys]))
    for i, k in enumerate(keys, start=1):
        s = samples[k]
        alphas, errors = alpha_sweep(s.values, s.signed, num_alphas)
        a_opt, a_code = s.alpha_star, s.alpha_code
        fig.add_trace(go.Scatter(x=alphas, y=errors, mode="lines", name="mean (x - x_b)²", line=dict(color="gray"),
                                 showlegend=i == 1), row=1, col=i)
        fig.add_trace(go.Scatter(x=[a_opt], y=[reconstruction_error(s.values, a_opt, s.signed)], mode="markers",
                                 name="alpha* (paper, optimal_alpha)", showlegend=i == 1,
                                 marker=dict(size=15, symbol="star", color="green")), row=1, col=i)
        fig.add_trace(go.Scatter(x=[a_code], y=[reconstruction_error(s.values, a_code, s.signed)], mode="markers",
                                 name="code's init: 2 mean|x| / 4 mean|x|", showlegend=i == 1,
                                 marker=dict(size=12, symbol="x", color="firebrick")), row=1, col=i)
        fig.update_xaxes(title_text="scale alpha", row=1, col=i)
        fig.update_yaxes(title_text="mean squared error", row=1, col=i)
    fig.update_layout(title="Reconstruction error against the scale: the minimum is at alpha*", height=430,
                      margin=dict(t=100), legend=dict(orientation="h", y=-0.25))
    return fig


# ----------------------------------------------------------------------------------------------------------
# the explorer


def make_elastic_explorer(samples: dict[str, ActivationSample] | None = None, num_bins: int = 70,
                          num_alphas: int = 121):
    """Pick an activation, move alpha and the threshold beta; see what the binarizer keeps.

    Left: the histogram of ``x``, coloured by the value each bin is binarized to (``elastic(x - beta, alpha)``),
    with the threshold (beta, or beta + alpha / 2 for {0, alpha}) as a dashed line. Right: the error against alpha
    at this beta, the current alpha and alpha* marked. The title gives the relative error and the share of ones
    (entries at the upper value). Choosing another activation resets alpha to its alpha* and beta to 0.

    Returns ``(ui, fig, controls)``; controls: ``activation`` (Dropdown of the keys of ``samples``), ``alpha``,
    ``beta`` (FloatSliders). ``fig.data``: 0 / 1 the histogram's lower / upper bins, 2 the threshold, 3 the error
    curve, 4 the current alpha, 5 alpha*.
    """
    samples = samples if samples is not None else capture_activations()
    first = next(iter(samples))
    controls = {
        "activation": W.Dropdown(options=[(samples[k].label, k) for k in samples], value=first,
                                 description="activation"),
        "alpha": W.FloatSlider(value=1.0, min=0.01, max=2.0, step=0.01, readout_format=".4f", description="alpha"),
        "beta": W.FloatSlider(value=0.0, min=-1.0, max=1.0, step=0.01, readout_format=".4f",
                              description="threshold beta"),
    }
    fig = Figure(make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=(
        "x, coloured by its binary value", "error against alpha at this beta")))
    fig.add_trace(go.Bar(name="→ lower value (−α or 0)", marker_color="lightsteelblue"), row=1, col=1)
    fig.add_trace(go.Bar(name="→ upper value (+α)", marker_color="darkorange"), row=1, col=1)
    fig.add_trace(go.Scatter(name="threshold", mode="lines", line=dict(color="black", dash="dash")), row=1, col=1)
    fig.add_trace(go.Scatter(name="mean (x - x_b)²", mode="lines", line=dict(color="gray")), row=1, col=2)
    fig.add_trace(go.Scatter(name="current alpha", mode="markers", marker=dict(size=13, color="darkorange")),
                  row=1, col=2)
    fig.add_trace(go.Scatter(name="alpha*", mode="markers", marker=dict(size=15, symbol="star", color="green")),
                  row=1, col=2)
    fig.update_xaxes(title_text="activation value x", row=1, col=1)
    fig.update_yaxes(title_text="number of entries", type="log", row=1, col=1)
    fig.update_xaxes(title_text="scale alpha", row=1, col=2)
    fig.update_yaxes(title_text="mean squared error", row=1, col=2)
    fig.update_layout(barmode="stack", bargap=0, height=450, margin=dict(t=100), legend=dict(orientation="h", y=-0.22))
    state = {"busy": False}

    def reset_sliders(key):
        s = samples[key]
        a_opt, m = s.alpha_star, float(s.values.abs().mean())
        state["busy"] = True
        try:
            hi = max((3.0 if s.signed else 6.0) * m, 2 * a_opt)
            controls["alpha"].min, controls["alpha"].max = 0.0, hi  # order: min below any old value first
            controls["alpha"].step = hi / 400
            controls["alpha"].min = hi / 400
            controls["alpha"].value = a_opt
            spread = float(s.values.abs().max())
            controls["beta"].min, controls["beta"].max = -spread, spread
            controls["beta"].step = spread / 200
            controls["beta"].value = 0.0
        finally:
            state["busy"] = False

    def update(_=None):
        if state["busy"]:
            return
        s = samples[controls["activation"].value]
        a, b = float(controls["alpha"].value), float(controls["beta"].value)
        x = s.values
        q = binarize(x, a, b, s.signed)
        upper = (q > 0).numpy()
        v = x.numpy()
        edges, _ = _histogram(v, num_bins)
        low_counts, _ = np.histogram(np.clip(v[~upper], edges[0], edges[-1]), bins=edges)
        up_counts, _ = np.histogram(np.clip(v[upper], edges[0], edges[-1]), bins=edges)
        centres, width = 0.5 * (edges[1:] + edges[:-1]), edges[1] - edges[0]
        thr = b if s.signed else b + a / 2
        alphas, errors = alpha_sweep(x, s.signed, num_alphas, beta=b)
        err = reconstruction_error(x, a, s.signed, b)
        a_opt = s.alpha_star
        with fig.batch_update():
            fig.data[0].x, fig.data[0].y, fig.data[0].width = centres, low_counts, width
            fig.data[1].x, fig.data[1].y, fig.data[1].width = centres, up_counts, width
            top = float(max(low_counts.max(), up_counts.max(), 1)) * 2
            fig.data[2].x, fig.data[2].y = [thr, thr], [0.8, top]
            fig.data[3].x, fig.data[3].y = alphas, errors
            fig.data[4].x, fig.data[4].y = [a], [err]
            fig.data[5].x, fig.data[5].y = [a_opt], [reconstruction_error(x, a_opt, s.signed, b)]
            # every trace's name set here: plotly.js labels a trace that was empty when drawn "trace N"
            names = ("→ −α" if s.signed else "→ 0", "→ +α" if s.signed else "→ α", "threshold",
                     "mean (x - x_b)²", "current alpha", "alpha*")
            for trace, name in zip(fig.data, names):
                trace.name = name
            fig.layout.title.text = (f"{s.label}, {'{-α, +α}' if s.signed else '{0, α}'}: alpha = {a:.4g}, "
                                     f"beta = {b:.4g}<br>relative error ||x - x_b||²/||x||² = "
                                     f"{relative_error(x, q):.3f}, share of ones {upper.mean():.1%};  "
                                     f"alpha* = {a_opt:.4g}")

    def on_activation(_=None):
        reset_sliders(controls["activation"].value)
        update()

    controls["activation"].observe(on_activation, names="value")
    for k in ("alpha", "beta"):
        controls[k].observe(update, names="value")
    for c in controls.values():
        c.style.description_width = "initial"
    on_activation()
    ui = W.VBox([controls["activation"], W.HBox([controls["alpha"], controls["beta"]]), fig])
    return ui, fig, controls


# ----------------------------------------------------------------------------------------------------------
# straight-through gradients


def ste_gradients(x: Tensor, alpha: float, signed: bool) -> dict[str, np.ndarray]:
    """Forward ``q(x)``, ``dq/dx`` and ``dq/dalpha`` of :func:`binlab.quant.quantizers.elastic` at one bit, per
    entry of the 1-D grid ``x``, by autograd.

    Each entry goes through ``elastic`` on its own (N = 1), so ``dq/dalpha`` is the per-entry derivative; in a
    layer the alpha gradient is the sum of these over the N entries of the tensor, times 1 / sqrt(N).
    """
    if not isinstance(x, Tensor) or x.dim() != 1:
        raise ValueError("ste_gradients: x must be a 1-D tensor (a grid of inputs)")
    q, gx, ga = [], [], []
    for xi in x.detach().double():
        xv = xi.reshape(1).clone().requires_grad_(True)
        a = torch.tensor(float(alpha), dtype=torch.float64, requires_grad=True)
        y = Q.elastic(xv, a, 1, signed)
        dx, da = torch.autograd.grad(y.sum(), (xv, a))
        q.append(float(y.detach()))
        gx.append(float(dx))
        ga.append(float(da))
    return {"q": np.array(q), "dx": np.array(gx), "dalpha": np.array(ga)}


def ste_gradient_figure(alpha: float = 1.0, x_range: float = 2.5, num_points: int = 401):
    """Three panels, both sets: the forward ``q(x)``, the straight-through ``dq/dx`` and ``dq/dalpha`` (one entry,
    N = 1), computed by :func:`ste_gradients` at the given alpha."""
    x = torch.linspace(-x_range, x_range, num_points, dtype=torch.float64)
    xs = x.numpy()
    fig = Figure(make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=(
        "forward q(x)", "dq/dx (straight-through)", "dq/dα (one entry, N = 1)")))
    styles = {True: ("{-α, +α}", "royalblue"), False: ("{0, α}", "firebrick")}
    for signed, (name, color) in styles.items():
        g = ste_gradients(x, alpha, signed)
        for col, key in enumerate(("q", "dx", "dalpha"), start=1):
            fig.add_trace(go.Scatter(x=xs, y=g[key], mode="lines", name=name, legendgroup=name, showlegend=col == 1,
                                     line=dict(color=color, width=3, dash=None if signed else "dot")), row=1, col=col)
    for col, label in enumerate(("q(x)", "gradient to x", "gradient to alpha"), start=1):
        fig.update_xaxes(title_text="input x", row=1, col=col)
        fig.update_yaxes(title_text=label, row=1, col=col)
    fig.update_layout(title=f"Elastic binarization at alpha = {alpha:g}: forward and straight-through gradients "
                            "(autograd through binlab's elastic)", height=430, margin=dict(t=100),
                      legend=dict(orientation="h", y=-0.25))
    return fig


# ----------------------------------------------------------------------------------------------------------
# all-zero attention


def uniform_attention_rows(lengths=(2, 4, 8, 16, 32, 64, 128)) -> list[dict]:
    """A uniform attention row of each length L (``softmax`` of zeros, p = 1/L) binarized to {0, alpha} with the
    code's alpha = 4 mean(p) = 4 / L and with the paper's alpha* (:func:`binlab.quant.quantizers.optimal_alpha`).

    With the code's scale the threshold alpha / 2 = 2 / L is above every probability 1 / L: the row attends to
    nothing. alpha* = 1 / L keeps every entry, and reconstructs the row exactly. Rows: ``L``, ``p``, ``alpha code``,
    ``threshold code``, ``ones code``, ``alpha*``, ``ones alpha*`` (the number of entries binarized to alpha).
    """
    rows = []
    for L in lengths:
        p = F.softmax(torch.zeros(int(L)), dim=-1)
        a_code, a_opt = code_alpha(p, signed=False), Q.optimal_alpha(p, signed=False)
        rows.append({"L": int(L), "p": float(p[0]), "alpha code": a_code, "threshold code": a_code / 2,
                     "ones code": int((binarize(p, a_code, 0.0, False) > 0).sum()), "alpha*": a_opt,
                     "ones alpha*": int((binarize(p, a_opt, 0.0, False) > 0).sum())})
    return rows


def uniform_attention_figure(rows: list[dict]):
    """The share of a uniform row's probabilities kept (binarized to alpha), against the row length, with the
    code's 4 mean(p) and with alpha*."""
    L = [r["L"] for r in rows]
    fig = Figure()
    fig.add_trace(go.Scatter(x=L, y=[r["ones code"] / r["L"] for r in rows], mode="lines+markers",
                             name="alpha = 4 mean(p) (BiT's code)", line=dict(color="firebrick")))
    fig.add_trace(go.Scatter(x=L, y=[r["ones alpha*"] / r["L"] for r in rows], mode="lines+markers",
                             name="alpha* (the paper)", line=dict(color="green", dash="dot")))
    fig.update_layout(title="A uniform attention row (p = 1/L) binarized to {0, alpha}", height=400,
                      xaxis=dict(title="row length L (real keys)", type="log", tickvals=L),
                      yaxis=dict(title="share of probabilities kept", range=[-0.05, 1.05]),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def all_zero_attention_rows(sentences=SENTENCES, max_length: int = 32, alpha_init: str = "code",
                            quant: str | QuantConfig = "bit") -> dict:
    """:func:`binlab.train.calibration.calibrate` on the bundled MiniLM as a BiT student (``quant``, W1A1 by
    default, ``alpha_init`` "code" or "optimal"), on ``sentences``: per layer, how many real attention rows
    binarize to all zeros. Returns ``{"alpha_init", "rows", "all_zero", "source"}`` (lists per layer)."""
    cfg = QuantConfig.preset(quant) if isinstance(quant, str) else quant
    cfg = dataclasses.replace(cfg, alpha_init=alpha_init)
    _, pretrained, source = _backbone(True)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = load_pretrained(None, quant=cfg, verbose=False) if pretrained else None
        except (FileNotFoundError, ImportError, OSError, KeyError):
            model = None
    if model is None:
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                                                         intermediate_size=1536, quant=cfg))
    batch = load_tokenizer(None).encode_batch(list(sentences), max_length=max_length)
    report = calibrate(model, batch)
    return {"alpha_init": alpha_init, "rows": report.attention_rows, "all_zero": report.all_zero_attention_rows,
            "source": f"{source} as {cfg.label} ({quant if isinstance(quant, str) else 'custom'}), "
                      f"{len(sentences)} sentences"}


# ----------------------------------------------------------------------------------------------------------
# a tiny training comparison

#: The three ways of scaling the binary activations :func:`compare_activation_scales` compares.
SCALE_VARIANTS = {
    "no scale": "alpha = 1, fixed: sign(x - beta) and 1{x - beta > 1/2}",
    "fixed alpha*": "alpha = alpha* from calibration, not learned",
    "elastic": "alpha = alpha* from calibration, then learned (BiT)",
}


@dataclass
class ScaleComparison:
    """What :func:`compare_activation_scales` measured: a table row per variant, each run's loss curve, settings."""

    rows: list[dict] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def _accuracy(model, dev_batches) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for b in dev_batches:
            logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
            right += int((logits.argmax(-1) == b["labels"]).sum())
            total += int(b["labels"].numel())
    model.train()
    return right / max(total, 1)


def compare_activation_scales(steps: int = 200, seed: int = 0, hidden_size: int = 32, num_layers: int = 2,
                              train_examples: int = 1024, dev_examples: int = 256, batch_size: int = 32,
                              max_length: int = 20, lr: float = 5e-3, alpha_lr: float = 1e-4, weight_bits: int = 32,
                              initializer_range: float = 0.1, quantize_attention: bool = False) -> ScaleComparison:
    """Train the same tiny BERT three times on synthetic SST-2, with the activations binarized to one bit in BiT's
    two sets ({-alpha, +alpha} for the inputs of the linear layers, {0, alpha} for the FFN's ReLU output; with
    ``quantize_attention`` also Q, K, V and the {0, alpha} attention probabilities), changing only alpha
    (:data:`SCALE_VARIANTS`): fixed at 1 (no scale), fixed at alpha* (:func:`binlab.train.calibration.calibrate`
    with ``alpha_init="optimal"``), or learned from alpha* (elastic).
    The learned thresholds are on in all three.

    Same seed, initial weights, data order and optimizer (AdamW, ``lr``, cross-entropy, no dropout) for all; a learned
    alpha has a learning rate of its own, ``alpha_lr`` (BiT's ``clip_lr``, 1e-4; ``alpha_lr=lr`` trains it like the
    other parameters). The
    weights start with std ``initializer_range`` = 0.1 instead of BERT's 0.02, as chapter 4's tiny teacher: from 0.02
    this tiny model sits on a loss plateau for hundreds of steps. ``quantize_attention``: False (the default, BiT's
    ``--not_quantize_attention``) keeps Q, K, V and the probabilities in full precision; with them binary too, this
    tiny model did not leave its loss plateau within 200 steps in any of the three variants (measured while writing
    the chapter), so there is nothing to compare.
    ``weight_bits``: 32 keeps the weights in full precision so that only the activations differ; 1 uses BiT's
    binary weights too. Returns a :class:`ScaleComparison`: ``rows`` (variant, description, dev accuracy, final
    training loss, seconds, the mean alpha at the end) and ``losses`` per variant. The data are SYNTHETIC (binlab's
    generator), not GLUE.
    """
    base = QuantConfig(act_bits=1, act_method="elastic", attention="softmax01", ffn_act="relu", alpha_init="optimal",
                       qkv_threshold=True, quantize_attention=quantize_attention)
    if weight_bits == 1:
        base = dataclasses.replace(base, weight_bits=1, weight_method="bit", embedding_bits=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = load_glue("sst2", "train", source="synthetic", max_examples=train_examples, seed=seed)
        dev = load_glue("sst2", "dev", source="synthetic", max_examples=dev_examples, seed=seed + 1)
    tokenizer = load_tokenizer(None)
    dev_batches = list(glue_batches(dev, tokenizer, batch_size=128, max_length=max_length))
    calib = next(iter(glue_batches(train, tokenizer, batch_size=min(128, len(train)), max_length=max_length)))
    epochs = math.ceil(steps * batch_size / len(train))
    train_batches = [b for e in range(epochs)
                     for b in glue_batches(train, tokenizer, batch_size, shuffle=True, seed=seed + e,
                                           max_length=max_length, drop_last=True)][:steps]
    out = ScaleComparison(settings=dict(steps=len(train_batches), batch_size=batch_size, lr=lr, alpha_lr=alpha_lr,
                                        hidden_size=hidden_size,
                                        layers=num_layers, train_examples=len(train), dev_examples=len(dev),
                                        quant=base.label, seed=seed, data="SYNTHETIC sst2"))
    with torch_threads(1):  # tiny matrices: one thread is fastest, and the result does not depend on the machine
        for variant, description in SCALE_VARIANTS.items():
            t0 = time.perf_counter()
            model = tiny_bert(2, base, seed=seed, hidden_size=hidden_size, num_hidden_layers=num_layers,
                              num_attention_heads=2, intermediate_size=2 * hidden_size,
                              max_position_embeddings=max(64, max_length), dropout=0.0,
                              initializer_range=initializer_range)
            calibrate(model, calib)
            alphas = [m.alpha for m in model.modules() if isinstance(m, Q.Elastic)]
            for a in alphas:
                if variant == "no scale":
                    with torch.no_grad():
                        a.fill_(1.0)
                a.requires_grad_(variant == "elastic")
            trained_alphas = {id(a) for a in alphas if a.requires_grad}
            groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in trained_alphas]},
                      {"params": [a for a in alphas if a.requires_grad], "lr": alpha_lr}]
            opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=0.0)
            torch.manual_seed(seed)
            model.train()
            losses = []
            for b in train_batches:
                logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
                loss = F.cross_entropy(logits, b["labels"])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            out.losses[variant] = losses
            tail = losses[-max(1, len(losses) // 10):]
            out.rows.append({"variant": variant, "alpha": description, "dev accuracy": _accuracy(model, dev_batches),
                             "final train loss": float(np.mean(tail)),
                             "mean alpha at the end": float(np.mean([a.item() for a in alphas])),
                             "seconds": time.perf_counter() - t0})
    return out


def scale_comparison_figure(comparison: ScaleComparison, smooth: int = 5):
    """The training loss of each variant of :func:`compare_activation_scales` (a running mean over ``smooth``
    steps), the legend giving each one's dev accuracy."""
    colors = {"no scale": "gray", "fixed alpha*": "royalblue", "elastic": "darkorange"}
    acc = {r["variant"]: r["dev accuracy"] for r in comparison.rows}
    fig = Figure()
    for variant, losses in comparison.losses.items():
        y = np.asarray(losses, dtype=np.float64)
        k = max(1, min(int(smooth), len(y)))
        ys = np.convolve(y, np.ones(k) / k, mode="valid")
        fig.add_trace(go.Scatter(x=np.arange(k, len(y) + 1), y=ys, mode="lines", line=dict(color=colors.get(variant)),
                                 name=f"{variant} (dev accuracy {acc.get(variant, float('nan')):.1%})"))
    s = comparison.settings
    fig.update_layout(title=f"Tiny BERT ({s.get('quant')}, {s.get('data')}): how alpha is set changes training",
                      xaxis_title="training step", yaxis_title=f"cross-entropy loss (running mean of {smooth})",
                      height=420, legend=dict(orientation="h", y=-0.25))
    return fig


def learning_curves_figure(curves: dict | str | Path, title: str | None = None):
    """Dev score against training step for every curve of a :func:`binlab.methods.curves.save_curves` file (or the
    dict it returns); a curve still running is dashed. Steps are per stage: a hop starts at 0 from the previous
    hop's best model, so the curves of one chain share the x axis but not their starting weights."""
    data = load_curves(curves) if isinstance(curves, (str, Path)) else curves
    about = data.get("about", {})
    fig = Figure()
    for c in data["curves"]:
        steps, scores = zip(*c["points"]) if c["points"] else ((), ())
        best = c.get("best")
        label = c["label"] + (f" (best {100 * best:.1f})" if isinstance(best, (int, float)) else "")
        fig.add_trace(go.Scatter(x=list(steps), y=[100 * s for s in scores], mode="lines+markers", name=label,
                                 line=dict(dash="solid" if c.get("finished", True) else "dash")))
    for ref in about.get("references", []):
        fig.add_hline(y=ref["value"], line=dict(color="gray", dash="dot"), annotation_text=ref["label"],
                      annotation_position="bottom right")
    task, metric = about.get("task", "GLUE"), about.get("metric", "dev score")
    fig.update_layout(title=title or f"{task}: dev {metric} while distilling, per stage",
                      xaxis_title="training step of the stage (batch 32)", yaxis_title=f"dev {metric} (%)",
                      height=460, legend=dict(orientation="h", y=-0.25))
    return fig
