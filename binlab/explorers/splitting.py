"""Chapter 4 (ternary weight splitting): the split walked through on a small matrix, the paper's printed
coefficient measured on real weights, landscapes before and after splitting, and a tiny split-vs-direct run.

Everything is computed by the library: the split by :func:`binlab.methods.splitting.tws_split`, the quantizers by
:mod:`binlab.quant.quantizers`, the landscapes by :mod:`binlab.analysis.landscape`, the training by :mod:`binlab.methods.binarybert`::

    example_weight(seed, skew, shape)       a small Gaussian matrix, shifted by ``skew`` (then S_J != S_K)
    tws_walkthrough(w, a_formula)            the sets I, J, K, the sums, a, b, the halves and both equivalences
    make_split_explorer(...)                 heatmaps of W, W1, W2 and their quantizations, step by step
    split_error_rows(model), ..._figure      the printed coefficient's error per tensor type (e.g. MiniLM)
    split_landscapes(ternary, batches)       loss surfaces of the ternary model, its split, its plain binarization
    compare_split_vs_direct(workdir, seeds)  BinaryBERT vs the direct-binary baseline on a tiny BERT
    tiny_batches(tokenizer, split)           the synthetic sentences those tiny runs learn from, as batches
    recorded_results(path)                   what docs/results.md says about BinaryBERT, if it exists
    find_recipe_runs(root)                   the summaries of the BinaryBERT recipe runs under runs/
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import ipywidgets as W
import numpy as np
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from binlab.analysis import landscape as L
from binlab.checkpoint import load_pretrained, save_pretrained
from binlab.data.glue import batches as glue_batches, load_glue
from binlab.data.synthetic import SyntheticDataWarning
from binlab.explorers.figure import Figure
from binlab.explorers.viz import markdown_section
from binlab.methods.binarybert import BinaryBertConfig, load_stage_model, run_binarybert
from binlab.methods.split_model import binary_quant_config, split_ternary_model
from binlab.methods.splitting import tws_a, tws_a_as_printed, tws_b, tws_split
from binlab.model import BertConfig, BertForSequenceClassification, tiny_bert
from binlab.quant.layers import QuantLinear
from binlab.quant.quantizers import bwn, twn
from binlab.settings import fast_mode, project_root
from binlab.tokenizer import load_tokenizer
from binlab.train.trainer import TrainConfig

__all__ = [
    "TWS_STEPS", "A_FORMULA_LABELS", "example_weight", "Walkthrough", "tws_walkthrough", "make_split_explorer",
    "TENSOR_TYPES", "load_backbone", "split_error_rows", "split_error_figure",
    "LANDSCAPE_LABELS", "split_landscapes",
    "TINY_SETTINGS", "TINY_DATA", "tiny_batches", "tiny_teacher_init", "Comparison", "compare_split_vs_direct",
    "comparison_figure",
    "results_md", "recorded_results", "find_recipe_runs",
]


# ----------------------------------------------------------------------------------------------------------
# the split of one small matrix, step by step

#: The explorer's steps: (key, label). Each step reveals a little more of the split.
TWS_STEPS: tuple[tuple[str, str], ...] = (
    ("W", "1. W and TWN(W)"),
    ("I", "2. set I"),
    ("J", "3. set J"),
    ("K", "4. set K"),
    ("a", "5. coefficient a"),
    ("b", "6. coefficient b"),
    ("check", "7. the check"),
)
A_FORMULA_LABELS = {"code": "code: a = (S_I + S_K − S_J) / 2S_I",
                    "printed": "paper as printed: a = (S_I + S_J − S_K) / 2S_I"}


def example_weight(seed: int = 0, skew: float = 0.0, shape: tuple[int, int] = (6, 10)) -> Tensor:
    """A ``shape`` matrix of N(skew, 1) entries (seeded, float64). ``skew != 0`` puts more of the entries that
    TWN sets to 0 on one side of 0, so S_J != S_K: what exposes the printed coefficient."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float64) + float(skew)


@dataclass
class Walkthrough:
    """Every quantity of one ternary weight split (per tensor), as the chapter shows them."""

    w: Tensor  # the latent ternary weight W
    w_t: Tensor  # TWN(W)
    on_I: Tensor  # bool masks of the sets
    on_J: Tensor
    on_K: Tensor
    S_I: float
    S_J: float
    S_K: float
    S_all: float  # sum_i |W_i|
    n: int
    n_I: int
    n_J: int
    n_K: int
    a: float
    b: float
    a_formula: str
    w1: Tensor  # the latent halves (binlab.methods.splitting.tws_split)
    w2: Tensor
    q1: Tensor  # BWN(W1), BWN(W2)
    q2: Tensor
    alpha_t: float  # the scales: TWN's, and BWN's of each half
    alpha1: float
    alpha2: float
    latent_error: float  # max |W1 + W2 - W|
    error: float  # max |BWN(W1) + BWN(W2) - TWN(W)|

    @property
    def predicted_error(self) -> float:
        """What the algebra says the quantized error is: |alpha_1 - alpha_2| = 2 |S_J - S_K| / n for the printed
        a, 0 for the code's."""
        return 2 * abs(self.S_J - self.S_K) / self.n if self.a_formula == "printed" else 0.0


def tws_walkthrough(w: Tensor, a_formula: str = "code") -> Walkthrough:
    """The split of ``w`` (per tensor) by :func:`binlab.methods.splitting.tws_split`, with the sets, sums and scales that
    explain it. Raises ``ValueError`` when the split cannot be exact (see ``check_tws_conditions``)."""
    w = w.detach().double()
    w1, w2 = tws_split(w, per_row=False, a_formula=a_formula)
    w_t = twn(w)
    on_I = w_t != 0
    on_J = ~on_I & (w > 0)
    on_K = ~on_I & ~on_J
    absw = w.abs()
    S_I, S_J, S_K = (absw[m].sum() for m in (on_I, on_J, on_K))
    n, n_I = w.numel(), int(on_I.sum())
    a = (tws_a if a_formula == "code" else tws_a_as_printed)(S_I, S_J, S_K)
    b = tws_b(S_I, absw.sum(), n, torch.tensor(float(n_I)), torch.tensor(float(n - n_I)))
    q1, q2 = bwn(w1), bwn(w2)
    return Walkthrough(
        w=w, w_t=w_t, on_I=on_I, on_J=on_J, on_K=on_K, S_I=float(S_I), S_J=float(S_J), S_K=float(S_K),
        S_all=float(absw.sum()), n=n, n_I=n_I, n_J=int(on_J.sum()), n_K=int(on_K.sum()), a=float(a), b=float(b),
        a_formula=a_formula, w1=w1, w2=w2, q1=q1, q2=q2, alpha_t=float(w_t.abs().max()),
        alpha1=float(w1.abs().mean()), alpha2=float(w2.abs().mean()),
        latent_error=float((w1 + w2 - w).abs().max()), error=float((q1 + q2 - w_t).abs().max()))


#: The explorer's eight panels: (title, row, col).
_PANELS = (("W (latent)", 1, 1), ("W₁ (latent)", 1, 2), ("W₂ (latent)", 1, 3), ("W₁ + W₂ − W", 1, 4),
           ("TWN(W)", 2, 1), ("BWN(W₁)", 2, 2), ("BWN(W₂)", 2, 3), ("BWN sum − TWN(W)", 2, 4))
#: The panels that carry a colour bar, with its title and where it sits right of the plot (paper x): per row, one
#: for the values (the row's first three panels, one scale) and one for the difference (its last panel; both rows'
#: differences share a much finer scale).
_COLORBARS = {0: ("values: W, W₁, W₂", 1.13), 3: ("W₁ + W₂ − W", 1.01),
              4: ("values: TWN, BWN", 1.13), 7: ("BWN sum − TWN", 1.01)}
_DIFFERENCES = (3, 7)


def _colorbar(fig, k: int, row: int) -> dict:
    """Panel ``k``'s colour bar (:data:`_COLORBARS`), beside its own row: as tall as the row, centred on it."""
    title, x = _COLORBARS[k]
    lo, hi = fig.get_subplot(row, 1).yaxis.domain
    bar = dict(x=x, xanchor="left", y=(lo + hi) / 2, yanchor="middle", len=hi - lo, lenmode="fraction",
               thickness=12, title=dict(text=title, side="right", font=dict(size=11)))
    return bar | (dict(exponentformat="e") if k in _DIFFERENCES else {})


def _panel_values(wt: Walkthrough, step: str) -> list[np.ndarray]:
    """The z of the eight panels at ``step``; NaN = not revealed yet (drawn as a gap)."""
    nan = np.full(tuple(wt.w.shape), np.nan)
    show = lambda t, mask=None: (t.numpy() if mask is None else np.where(mask.numpy(), t.numpy(), np.nan))  # noqa: E731
    order = [k for k, _ in TWS_STEPS]
    k = order.index(step)
    masks = {"I": wt.on_I, "J": wt.on_J, "K": wt.on_K, "a": wt.on_I, "b": ~wt.on_I}
    z = [show(wt.w, masks.get(step)), nan, nan, nan, show(wt.w_t), nan, nan, nan]
    if step == "a":
        z[1], z[2] = show(wt.w1, wt.on_I), show(wt.w2, wt.on_I)
    if k >= order.index("b"):
        z[1], z[2] = show(wt.w1), show(wt.w2)
    if step == "check":
        z[3] = show(wt.w1 + wt.w2 - wt.w)
        z[5], z[6] = show(wt.q1), show(wt.q2)
        z[7] = show(wt.q1 + wt.q2 - wt.w_t)
    return z


def _gaps(z: np.ndarray) -> list:
    """``z`` as nested lists with None for NaN: a heatmap gap that the widget's JSON can carry (NaN is not JSON)."""
    return [[None if np.isnan(v) else float(v) for v in row] for row in np.asarray(z, dtype=float)]


def _explanation(wt: Walkthrough, step: str) -> str:
    """The HTML text beside the figure: what this step is, with the numbers of this matrix."""
    f = lambda v: f"{v:.4g}"  # noqa: E731
    a_code = (wt.S_I + wt.S_K - wt.S_J) / (2 * wt.S_I)
    a_printed = (wt.S_I + wt.S_J - wt.S_K) / (2 * wt.S_I)
    texts = {
        "W": (f"A latent weight W ({wt.n} entries) and its ternarization "
              f"TWN(W) = α_t·(1{{W &gt; Δ}} − 1{{W &lt; −Δ}}), "
              f"Δ = 0.7·mean|W|, α_t = {f(wt.alpha_t)}. The goal: two latent halves W₁ + W₂ = W whose "
              "binarizations BWN(·) = mean|·|·sign(·) add up to TWN(W)."),
        "I": (f"I = {{i : TWN(W)_i ≠ 0}}: the {wt.n_I} entries TWN keeps. S_I = Σ_I |W_i| = {f(wt.S_I)}, "
              f"so α_t = S_I / |I| = {f(wt.S_I / wt.n_I)}. On I both halves keep the sign of W: "
              "W₁ = a·W, W₂ = (1 − a)·W."),
        "J": (f"J = {{i : TWN(W)_i = 0, W_i &gt; 0}}: {wt.n_J} entries, S_J = {f(wt.S_J)}. On J the halves "
              "get opposite signs, W₁ = b + W, W₂ = −b, so their binarizations cancel if α₁ = α₂."),
        "K": (f"K = {{i : TWN(W)_i = 0, W_i ≤ 0}}: {wt.n_K} entries, S_K = {f(wt.S_K)}. Here W₁ = b, "
              f"W₂ = −b + W. S_J − S_K = {f(wt.S_J - wt.S_K)}: the skew slider moves it away from 0."),
        "a": ("α₁ = mean|W₁| = (a·S_I + S_J + (|J|+|K|)·b) / n and "
              "α₂ = ((1−a)·S_I + S_K + (|J|+|K|)·b) / n. "
              f"α₁ = α₂ ⇔ a = (S_I + S_K − S_J) / (2 S_I) = ({f(wt.S_I)} + {f(wt.S_K)} − {f(wt.S_J)}) / "
              f"(2·{f(wt.S_I)}) = {f(a_code)}. The paper prints (S_I + S_J − S_K) / (2 S_I) = {f(a_printed)}. "
              f"Using: <b>{A_FORMULA_LABELS[wt.a_formula]}</b> "
              f"= {f(wt.a)}."),
        "b": ("On I the two signs agree, so BWN(W₁) + BWN(W₂) = α₁ + α₂ = (S_all + 2(|J|+|K|)·b) / n there; "
              f"= α_t ⇔ b = ((n / |I|)·S_I − S_all) / (2(|J|+|K|)) = {f(wt.b)} (S_all = {f(wt.S_all)}). "
              "b does not depend on a."),
        "check": (f"α₁ = {f(wt.alpha1)}, α₂ = {f(wt.alpha2)} (α₁ + α₂ = {f(wt.alpha1 + wt.alpha2)}, α_t = "
                  f"{f(wt.alpha_t)}). Latent: max|W₁ + W₂ − W| = {wt.latent_error:.2e} for any a. Quantized: "
                  f"max|BWN(W₁) + BWN(W₂) − TWN(W)| = <b>{wt.error:.2e}</b>"
                  + (f" = |α₁ − α₂| = 2|S_J − S_K|/n = {wt.predicted_error:.2e} on the zero entries: "
                     "the printed a is not exact." if wt.a_formula == "printed"
                     else ": exact, up to float rounding.")),
    }
    return f"<div style='max-width:900px'>{texts[step]}</div>"


def make_split_explorer(shape: tuple[int, int] = (6, 10), seed: int = 0, skew: float = 0.3):
    """Ternary weight splitting on a small matrix, one step at a time: ``(ui, fig, controls)``.

    Eight heatmaps (a ``FigureWidget``): top row the latent W (with the current set highlighted), W₁, W₂ and
    W₁ + W₂ − W; bottom row TWN(W), BWN(W₁), BWN(W₂) and BWN(W₁) + BWN(W₂) − TWN(W). Beside each row, two titled
    colour bars: the values of its first three panels (one scale for all six value panels) and its difference
    (both differences on one much finer scale). Controls: ``step`` (the
    walk through I, J, K, a, b and the check, :data:`TWS_STEPS`), ``formula`` (the code's a or the paper's
    printed one), ``seed`` and ``skew`` (the matrix, :func:`example_weight`); ``info`` is the HTML text with
    this matrix's numbers. Entries not yet defined at a step are left blank (gaps: None in the widget).
    """

    controls = {
        "step": W.ToggleButtons(options=[(label, key) for key, label in TWS_STEPS], value="W", description="step",
                                style={"button_width": "130px"}),
        "formula": W.ToggleButtons(options=[(v, k) for k, v in A_FORMULA_LABELS.items()], value="code",
                                   description="a", style={"button_width": "320px"}),
        "seed": W.IntSlider(value=seed, min=0, max=30, description="seed"),
        "skew": W.FloatSlider(value=skew, min=-0.6, max=0.6, step=0.05, description="skew", readout_format=".2f"),
        "info": W.HTML(),
    }
    base = make_subplots(rows=2, cols=4, subplot_titles=[t for t, _, _ in _PANELS], horizontal_spacing=0.08,
                         vertical_spacing=0.2)
    rows, cols = shape
    for k, (title, r, c) in enumerate(_PANELS):
        base.add_heatmap(z=np.zeros(shape), x=list(range(cols)), y=list(range(rows)), name=title,
                         colorscale="RdBu", zmid=0.0, showscale=k in _COLORBARS, xgap=1, ygap=1,
                         colorbar=_colorbar(base, k, r) if k in _COLORBARS else None,
                         hovertemplate=f"{title}<br>row %{{y}}, column %{{x}}: %{{z:.4g}}<extra></extra>",
                         row=r, col=c)
        # fixed ranges: a panel that is still blank (all gaps) keeps the matrix's frame; row 0 at the top
        base.update_xaxes(title_text="column j", range=[-0.5, cols - 0.5], row=r, col=c)
        base.update_yaxes(title_text="row i", range=[rows - 0.5, -0.5], row=r, col=c)
    base.update_layout(height=600, margin=dict(l=60, r=170, t=110, b=50), title=dict(text="", x=0.5))
    fig = Figure(base)

    def update(*_):
        c = {k: w.value for k, w in controls.items() if k != "info"}
        w = example_weight(c["seed"], c["skew"], shape)
        try:
            wt = tws_walkthrough(w, c["formula"])
        except ValueError as e:  # the conditions of an exact split fail for this matrix
            controls["info"].value = f"<b>This matrix cannot be split exactly:</b> {e}"
            with fig.batch_update():
                for tr in fig.data:
                    tr.z = _gaps(np.full(shape, np.nan))
                fig.layout.title.text = "no exact split for this matrix: change the seed or the skew"
            return
        z = _panel_values(wt, c["step"])
        lim = float(max(w.abs().max(), wt.w1.abs().max(), wt.w2.abs().max(), wt.w_t.abs().max())) * 1.05
        err_lim = max(wt.error, wt.latent_error, 1e-12)
        with fig.batch_update():
            for k, tr in enumerate(fig.data):
                tr.z = _gaps(z[k])
                if k in _DIFFERENCES:  # the two differences: their own (tiny) scale
                    tr.zmin, tr.zmax = -err_lim, err_lim
                else:
                    tr.zmin, tr.zmax = -lim, lim
            label = dict(TWS_STEPS)[c["step"]]
            fig.layout.title.text = (f"Ternary weight splitting, {label}<br><sub>{c['formula']} a = {wt.a:.4f}, "
                                     f"b = {wt.b:.4f}: max|BWN(W₁) + BWN(W₂) − TWN(W)| = {wt.error:.1e}</sub>")
        controls["info"].value = _explanation(wt, c["step"])

    for k, w in controls.items():
        if k != "info":
            w.observe(update, names="value")
    update()
    ui = W.VBox([controls["step"], controls["formula"], W.HBox([controls["seed"], controls["skew"]]),
                 controls["info"], fig])
    return ui, fig, controls


# ----------------------------------------------------------------------------------------------------------
# the printed coefficient on real weights

#: Tensor types of a BERT -> the suffix of their binlab module name (the word embedding is split per row).
TENSOR_TYPES: dict[str, str] = {
    "query": "attention.query", "key": "attention.key", "value": "attention.value",
    "attention output": "attention_output.dense", "FFN in": "ffn.intermediate", "FFN out": "ffn.output",
    "pooler": "pooler.dense",
}


def load_backbone(pretrained: bool = True):
    """``(model, description)``: the pretrained MiniLM-L6 (full precision) if installed, else a random BERT of
    its shape (6 layers, hidden 384), and a sentence saying which."""

    reason = "pretrained=False was asked for"
    if pretrained:
        try:
            model = load_pretrained(None, quant="fp", verbose=False)
            return model, ("the pretrained all-MiniLM-L6-v2 (6 layers, hidden 384), its latent weights as a "
                           "ternary model would start")
        except (FileNotFoundError, ImportError, OSError) as e:
            reason = f"the pretrained MiniLM is not available ({str(e).splitlines()[0]})"
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                     intermediate_size=1536))
    return model, f"a RANDOM BERT of MiniLM's shape (N(0, 0.02) init), standing in: {reason}"


def _row_sums(w: Tensor, per_row: bool):
    """(S_J - S_K, n) per row (one row for a per-tensor split), in float64."""
    w = w.detach()
    w_t = twn(w, per_row)
    rows = w.shape[0] if per_row else 1
    v = w.double().reshape(rows, -1)
    zero = w_t.reshape(rows, -1) == 0
    s_j = (v.abs() * (zero & (v > 0))).sum(1)
    s_k = (v.abs() * (zero & (v <= 0))).sum(1)
    return s_j - s_k, v.shape[1]


def _one_error(w: Tensor, per_row: bool, a_formula: str) -> float:
    w1, w2 = tws_split(w, per_row, a_formula)
    with torch.no_grad():
        return float((bwn(w1, per_row) + bwn(w2, per_row) - twn(w.detach(), per_row)).abs().max())


def split_error_rows(model, embedding: bool = True, embedding_rows: int | None = None) -> list[dict]:
    """Per tensor type (:data:`TENSOR_TYPES`, plus the word embedding split per row): the worst
    max|BWN(W₁) + BWN(W₂) − TWN(W)| over the model's tensors of that type with the code's a and with the
    printed a, the algebra's prediction for the printed one (max 2|S_J − S_K|/n), and the typical ternary scale
    α_t (mean over tensors, or over the embedding's rows) to compare with.

    ``embedding_rows``: split only the first rows of the word embedding (each row is split on its own, so
    they are a fair sample; the whole 30k-row table takes seconds)."""

    named = dict(model.named_modules())
    rows = []
    groups: dict[str, list[Tensor]] = {t: [] for t in TENSOR_TYPES}
    for name, m in named.items():
        if not isinstance(m, (QuantLinear, torch.nn.Linear)) or name.endswith("classifier"):
            continue
        for t, suffix in TENSOR_TYPES.items():
            if name.endswith(suffix):
                groups[t].append(m.weight.detach().float())
    items = [(t, ws, False) for t, ws in groups.items() if ws]
    if embedding:
        emb = model.bert.embeddings.word_embeddings.weight.detach().float()
        label = "word embedding (per row)" if embedding_rows is None or embedding_rows >= emb.shape[0] \
            else f"word embedding (per row, first {embedding_rows} rows)"
        items.append((label, [emb[:embedding_rows]], True))
    for t, ws, per_row in items:
        code = max(_one_error(w, per_row, "code") for w in ws)
        printed = max(_one_error(w, per_row, "printed") for w in ws)
        predicted = max(float(2 * d.abs().max() / n) for d, n in (_row_sums(w, per_row) for w in ws))
        alpha_t = float(np.mean([float(twn(w, per_row).abs().amax(dim=-1).mean()) for w in ws]))
        rows.append({"tensor type": t, "tensors": len(ws), "shape": "×".join(map(str, ws[0].shape)),
                     "alpha_t": alpha_t, "code a": code, "printed a": printed, "predicted": predicted,
                     "printed / alpha_t": printed / alpha_t})
    return rows


def split_error_figure(rows: list[dict], title: str | None = None):
    """Bars (log scale) of the worst quantized split error per tensor type, code's a vs printed a, with α_t."""

    x = [r["tensor type"].replace(" (", "<br>(") for r in rows]  # the embedding's long label on two lines
    fig = Figure()
    floor = 1e-12  # a log axis cannot show an exact 0
    fig.add_bar(x=x, y=[max(r["code a"], floor) for r in rows], name="code's a: (S_I + S_K − S_J) / 2S_I")
    fig.add_bar(x=x, y=[max(r["printed a"], floor) for r in rows], name="printed a: (S_I + S_J − S_K) / 2S_I")
    fig.add_scatter(x=x, y=[r["alpha_t"] for r in rows], mode="markers", marker=dict(symbol="line-ew-open", size=28),
                    name="α_t (the ternary scale itself)")
    fig.update_layout(barmode="group", yaxis_type="log", height=420,
                      title=title or "Worst max|BWN(W₁) + BWN(W₂) − TWN(W)| per tensor type",
                      xaxis_title="tensor type", yaxis_title="max abs error (log scale)",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), margin=dict(t=110))
    return fig


# ----------------------------------------------------------------------------------------------------------
# landscapes before and after splitting

#: The three models :func:`split_landscapes` compares.
LANDSCAPE_LABELS = ("ternary (before splitting)", "split binary (after splitting)", "binarized without splitting")


def split_landscapes(ternary, batches, layers: tuple[int, int] = (0, 1), module: str = "value", steps: int = 7,
                     span: float = 1.0, split=None, progress: bool = False) -> dict:
    """Loss surfaces (:func:`binlab.analysis.landscape.loss_grid`) around a trained ternary model, its split and its
    plain binarization.

    * ternary: the latent W of ``module`` in Transformer layers ``layers`` (x, y), moved by x·mean|W|·1;
    * split binary (``split``, default :func:`binlab.methods.split_model.split_ternary_model` of ``ternary``): the first
      latent half W₁ (``dense_1``) of the same two weights, moved by x·mean|W₁|·1;
    * binarized without splitting: BWN of the ternary model's latent weights (same activations), moved like
      the ternary one.

    At the centre the split model's loss is the ternary model's (the split is exact); the plain binarization
    starts elsewhere. Returns ``{label: LossGrid}`` for :func:`binlab.explorers.landscape.landscape_figure`.
    """

    split = split_ternary_model(ternary) if split is None else split
    direct = L.with_quant(ternary, binary_quant_config(ternary.config.quant))
    names = tuple(L.layer_param(i, module) for i in layers)
    half = tuple(n.replace(".weight", ".dense_1.weight") for n in names)
    models = dict(zip(LANDSCAPE_LABELS, ((ternary, names), (split, half), (direct, names))))
    return {label: L.loss_grid(m, batches, ns, steps=steps, span=span, progress=progress, label=label)
            for label, (m, ns) in models.items()}


# ----------------------------------------------------------------------------------------------------------
# split-then-fine-tune vs direct binarization on a tiny BERT

#: The tiny comparison's settings: fast mode, full mode. ``teacher_*`` fine-tune the tiny FP teacher; the
#: distillation stages of both pipelines get ``kd_epochs`` each at ``lr`` (stage 1: 2.5 x). ``lr`` = 1e-4 is a
#: short distillation budget, like the reduced budget of the real-data runs in docs/results.md; at 1e-3 the
#: tiny directly binarized model has steps enough to catch up (chapter 4, §4.6).
TINY_SETTINGS = {
    "fast": dict(max_train=1024, max_eval=200, teacher_epochs=6, teacher_lr=2e-3, kd_epochs=1, lr=1e-4),
    "full": dict(max_train=1024, max_eval=400, teacher_epochs=6, teacher_lr=2e-3, kd_epochs=2, lr=1e-4),
}


#: What the tiny comparison (and the landscapes of its models) runs on, and why: printed by the chapter.
TINY_DATA = ("synthetic SST-2 sentences (binlab's generator, not GLUE), also when $BINLAB_GLUE_DIR is set: a tiny BERT "
             "that goes through four distillation stages per seed in minutes on a CPU needs a task it can learn in "
             "that budget; real-data runs are `binlab train --recipe binarybert` (§4.5, §4.8)")


def tiny_batches(tokenizer, split: str = "train", max_examples: int = 128, batch_size: int = 64,
                 max_length: int = 32) -> list[dict]:
    """Batches of the synthetic SST-2 sentences the tiny runs of :func:`compare_split_vs_direct` learn from (the
    first ``max_examples`` of ``split``; :data:`TINY_DATA` says why synthetic). Loaded without a
    SyntheticDataWarning: the chapter prints what they are instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntheticDataWarning)
        data = load_glue("sst2", split, source="synthetic", max_examples=max_examples)
    return list(glue_batches(data, tokenizer, batch_size=batch_size, max_length=max_length))


def tiny_teacher_init(folder: str | Path, seed: int) -> Path:
    """A random tiny BERT (hidden 32, 2 layers, 4 heads, no dropout, MiniLM's vocabulary) saved with its
    tokenizer in ``folder``: the start the recipe fine-tunes its teacher from.

    Its weights are drawn with std 0.1 instead of BERT's 0.02: from 0.02 this tiny model sits on a loss plateau
    for a seed-dependent number of steps (some seeds never leave it in a few hundred steps), and a comparison
    of students needs a teacher that has learned the task."""

    tok = load_tokenizer(None)
    with torch.random.fork_rng(devices=[]):
        model = tiny_bert(2, seed=seed, vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, dropout=0.0,
                          initializer_range=0.1)
    return save_pretrained(model, folder, tokenizer=tok)


@dataclass
class Comparison:
    """What :func:`compare_split_vs_direct` measured: one row per seed, and the run folders."""

    rows: list[dict]
    runs: dict = field(default_factory=dict)  # seed -> {"split": folder, "direct": folder}
    settings: dict = field(default_factory=dict)
    act_bits: int = 8

    @property
    def wins(self) -> int:
        """Seeds where the split model's final dev accuracy is strictly higher than the direct one's."""
        return sum(r["final split"] > r["final direct"] for r in self.rows)

    @property
    def mean_gap(self) -> float:
        """Mean over seeds of final split - final direct (accuracy points, as fractions)."""
        return float(np.mean([r["final split"] - r["final direct"] for r in self.rows]))


def _teacher_agreement(out: Path, stage: str, teacher, batches) -> tuple[float, float]:
    """(fraction of dev predictions equal to the teacher's, mean squared logit distance to the teacher)."""

    model = load_stage_model(out, stage)
    agree = total = 0
    sq = 0.0
    with torch.no_grad():
        for b in batches:
            kw = dict(attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
            zs, zt = model(b["input_ids"], **kw).logits, teacher(b["input_ids"], **kw).logits
            agree += int((zs.argmax(-1) == zt.argmax(-1)).sum())
            sq += float(((zs - zt) ** 2).sum())
            total += zs.shape[0]
    return agree / total, sq / (total * zs.shape[-1])


def compare_split_vs_direct(workdir: str | Path, seeds=(0,), act_bits: int = 8, fast: bool | None = None,
                            quiet: bool = True, **overrides) -> Comparison:
    """BinaryBERT (ternary -> split -> binary) against the direct-binary baseline with the same distillation
    budget, on synthetic SST-2 with a tiny BERT (:data:`TINY_DATA`), once per seed.

    Per seed: a tiny teacher (:func:`tiny_teacher_init`) is fine-tuned by the recipe's teacher stage, then the
    same teacher is distilled by :func:`binlab.methods.binarybert.run_binarybert` with ``split=True`` and with
    ``split=False``. The row holds the dev accuracy of the teacher, of each pipeline after its first phase
    (ternary vs binary), right after the split, and at the end, plus the final models' agreement with the
    teacher's dev predictions and mean squared logit distance to it. ``overrides`` replace entries of
    :data:`TINY_SETTINGS`. ``quiet`` swallows the runs' printing (and the synthetic-data warnings).
    """


    fast = fast_mode() if fast is None else bool(fast)
    s = {**TINY_SETTINGS["fast" if fast else "full"], **overrides}
    workdir = Path(workdir)
    rows, runs = [], {}
    for seed in seeds:
        train = TrainConfig(lr=s["teacher_lr"], epochs=s["teacher_epochs"], batch_size=16, max_length=32,
                            eval_every=0, seed=seed, progress=False)
        base = dict(task="sst2", source="synthetic", max_train=s["max_train"], max_eval=s["max_eval"], train=train,
                    ternary_lr=s["lr"], binary_lr=s["lr"], kd_epochs=s["kd_epochs"], act_bits=act_bits)
        split_dir, direct_dir = workdir / f"seed{seed}" / "split", workdir / f"seed{seed}" / "direct"
        init = tiny_teacher_init(workdir / f"seed{seed}" / "init", seed)
        with contextlib.ExitStack() as stack:
            if quiet:
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("ignore")
            sp = run_binarybert(BinaryBertConfig(out=str(split_dir), model=str(init), **base))
            teacher_dir = split_dir / "teacher" / "best_model"
            di = run_binarybert(BinaryBertConfig(out=str(direct_dir), split=False, teacher=str(teacher_dir), **base))
        dev_batches = tiny_batches(load_tokenizer(teacher_dir), "dev", s["max_eval"])
        teacher = load_pretrained(teacher_dir, verbose=False).eval()
        by_s = {r["stage"]: r for r in sp["stages"]}
        by_d = {r["stage"]: r for r in di["stages"]}
        agree_s, mse_s = _teacher_agreement(split_dir, "binary_stage2", teacher, dev_batches)
        agree_d, mse_d = _teacher_agreement(direct_dir, "binary_stage2", teacher, dev_batches)
        rows.append({"seed": seed, "teacher": by_s["teacher"]["dev"],
                     "phase 1 split (ternary)": by_s["ternary_stage2"]["dev"],
                     "right after split": by_s["split"]["dev"],
                     "phase 1 direct (binary)": by_d["direct_stage2"]["dev"],
                     "final split": by_s["binary_stage2"]["dev"], "final direct": by_d["binary_stage2"]["dev"],
                     "agreement split": agree_s, "agreement direct": agree_d,
                     "logit MSE split": mse_s, "logit MSE direct": mse_d})
        runs[seed] = {"split": split_dir, "direct": direct_dir}
    return Comparison(rows, runs, s, act_bits)


def comparison_figure(comparison: Comparison, title: str | None = None):
    """Grouped bars per seed: teacher, the two pipelines after phase 1, right after the split, and final."""

    keys = ("teacher", "phase 1 direct (binary)", "phase 1 split (ternary)", "right after split", "final direct",
            "final split")
    x = [f"seed {r['seed']}" for r in comparison.rows]
    fig = Figure()
    for k in keys:
        fig.add_bar(x=x, y=[r[k] for r in comparison.rows], name=k)
    lo = min(min(r[k] for k in keys) for r in comparison.rows)
    fig.update_layout(barmode="group", height=420, yaxis_range=[max(0.0, lo - 0.05), 1.0],
                      title=title or (f"Tiny BERT, synthetic SST-2, W1A{comparison.act_bits}: split-then-fine-tune vs "
                                      "direct binarization, same distillation budget"),
                      xaxis_title="run (seed)", yaxis_title="dev accuracy (best checkpoint of the stage)")
    return fig


# ----------------------------------------------------------------------------------------------------------
# recorded real-data results

def results_md() -> Path:
    """``docs/results.md`` of the checkout the book runs in (:func:`binlab.settings.project_root`)."""
    return project_root() / "docs" / "results.md"


def recorded_results(path: str | Path | None = None) -> str | None:
    """The BinaryBERT part of ``docs/results.md`` (default: :func:`results_md`): every section whose heading
    mentions BinaryBERT, each under its heading. ``None`` when the file does not exist or has no such section
    (not measured on real data yet)."""
    path = results_md() if path is None else path
    path = Path(path)
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    headings = [m.group(2) for m in re.finditer(r"^(#{1,6})\s+(.*?)\s*#*\s*$", text, flags=re.M)]
    picked = [h for h in headings if "binarybert" in h.lower().replace(" ", "")]
    if not picked:
        return None
    return "\n\n".join(f"### {h}\n\n{markdown_section(text, h)}" for h in picked)


def find_recipe_runs(root: str | Path | None = None) -> list[dict]:
    """The ``summary.json`` of every ``binlab train --recipe binarybert`` run under ``root`` (default: ``runs/`` of
    :func:`binlab.settings.project_root`; sorted by folder), each with ``"folder"`` added. Unreadable or foreign
    summaries are skipped."""
    root = project_root() / "runs" if root is None else root
    found = []
    root = Path(root)
    if not root.is_dir():
        return found
    for path in sorted(root.rglob("summary.json")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and summary.get("recipe") == "binarybert" and summary.get("stages"):
            found.append({**summary, "folder": str(path.parent)})
    return found
