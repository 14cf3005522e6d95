"""Chapter 6 (BiBERT's Bi-Attention): the entropy of binarized attention on real sentences, bool(0), attention with
chapter 1's bitwise kernels, direction-matching distillation, interactive figures.

Every entropy here is :mod:`binlab.analysis.entropy`'s (``attention_entropy`` and its ``BINARIZATIONS``), every
binarizer :mod:`binlab.quant.quantizers`', every DMD term :mod:`binlab.methods.distill`'s; nothing is
re-implemented::

    setup_attention(...)                  the chapter's models and sentences: the fine-tuned MiniLM teacher of
                                          runs/sst2-fp on SST-2 dev sentences when they are there, else the bundled
                                          MiniLM, else a tiny random BERT; and a BiBERT student of that teacher
    measure_entropy(setup)                attention_entropy of the teacher and of the student (bool(0) = 0 and 1)
    entropy_heatmap_figure(rows)          the entropy per layer and head, one heatmap per binarization
    tau_sweep_figure(rows)                the entropy and the share of ones of softmax > tau against tau
    entropy_by_layer_figure(results)      the entropy per layer of each binarization, one panel per model
    make_attention_explorer(setup)        a sentence (or your own), a model, a layer, a head, tau, bool(0): four maps
    exact_zero_rows(...), score_histogram_figure(...)   how often a binary attention score is exactly 0
    bitwise_bi_attention(...)             Bi-Attention through XNOR-popcount and AND-popcount (binlab.kernels)
    dmd_rows(...), dmd_similarity_figure(...)   the DMD terms and the similarity matrices of teacher and student
    compare_attention_distillation(...)   a tiny BiBERT student distilled from logits only, element-wise, with DMD
    recorded_results()                    the BiBERT section of docs/results.md, when there is one

Interactive figures follow the book's pattern: ``make_xxx_explorer(...) -> (ui, fig, controls)``, with ``fig`` a
:class:`~binlab.explorers.figure.Figure` updated inside ``fig.batch_update()`` by the ``.observe`` callbacks of
``controls``, and ``ui`` the ``VBox`` a notebook displays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
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

from binlab.analysis import entropy as H
from binlab.checkpoint import load_pretrained
from binlab.data.glue import GLUE_DIR_ENV, load_glue
from binlab.data.glue import batches as glue_batches
from binlab.explorers.elastic import SENTENCES as ELASTIC_SENTENCES
from binlab.explorers.figure import Figure
from binlab.explorers.landscape import DEFAULT_SST2_RUN, SST2_TRAIN_COMMAND
from binlab.explorers.viz import markdown_section
from binlab.kernels.packing import pack_bits01, pack_signs
from binlab.kernels.products import and_bmm, xnor_bmm
from binlab.methods import distill as D
from binlab.methods.bibert import student_quant
from binlab.model import BertForSequenceClassification, tiny_bert
from binlab.quant import quantizers as Q
from binlab.settings import pick, project_root, torch_threads
from binlab.tokenizer import BertTokenizer, load_tokenizer

__all__ = [
    "TEACHER_RUN", "BIBERT_RUN", "TRAIN_TEACHER_COMMAND", "SENTENCES", "SWEEP_TAUS", "METHODS", "AttentionSetup",
    "find_glue_dir", "bibert_student", "setup_attention", "measure_entropy", "best_tau", "entropy_heatmap_figure",
    "tau_sweep_figure", "entropy_by_layer_figure", "attention_maps", "binarized_map", "make_attention_explorer",
    "exact_zero_rows", "score_histogram_figure", "bitwise_bi_attention", "dmd_rows", "dmd_similarity_figure",
    "KD_VARIANTS", "DistillComparison", "compare_attention_distillation", "distillation_figure", "recorded_results",
]

#: The fine-tuned SST-2 teacher the chapter looks for (what docs/results.md's teacher command writes).
TEACHER_RUN = DEFAULT_SST2_RUN
#: A trained BiBERT run (``binlab train --recipe bibert ... --out runs/sst2-bibert``): its student, when there.
BIBERT_RUN = "runs/sst2-bibert"
TRAIN_TEACHER_COMMAND = SST2_TRAIN_COMMAND

#: The sentences used when no local SST-2 dev set is found (short, varied, as SST-2's).
SENTENCES = ELASTIC_SENTENCES + (  # chapter 5's eight, then four more
    "the cast is better than the script deserves",
    "a clever premise buried under a clumsy, tedious second half",
    "this is the kind of movie that makes you forgive its flaws",
    "dull, dull, dull",
)

#: The thresholds on the probabilities that the chapter sweeps (a row of n keys averages 1 / n).
SWEEP_TAUS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)

#: The four binarizations of the chapter (keys of :data:`binlab.analysis.entropy.BINARIZATIONS`), in its order.
METHODS = ("sign_softmax", "threshold", "bit", "bool")
_COLORS = {"sign_softmax": "gray", "threshold": "royalblue", "bit": "darkorange", "bool": "firebrick"}
_LAYER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf", "#393b79", "#637939")
_BINARY = [[0.0, "#f4f4f4"], [1.0, "#08306b"]]


# ----------------------------------------------------------------------------------------------------------
# the chapter's models and sentences


@dataclass
class AttentionSetup:
    """What the chapter measures on: a full-precision ``teacher``, a BiBERT ``student`` of the same shape (the
    ``bibert`` preset, Bi-Attention), their ``tokenizer``, the ``sentences`` and their ``batches`` (no labels
    needed), and where each came from in words. ``kind``: ``"checkpoint"`` (the fine-tuned teacher),
    ``"pretrained"`` (the bundled MiniLM, not fine-tuned) or ``"tiny"`` (a random tiny BERT)."""

    teacher: BertForSequenceClassification
    student: BertForSequenceClassification
    tokenizer: BertTokenizer
    sentences: list[str]
    batches: list[dict]
    kind: str
    teacher_source: str
    student_source: str
    data_source: str
    student_trained: bool = False

    @property
    def description(self) -> str:
        return (f"teacher: {self.teacher_source}\nstudent: {self.student_source}\n"
                f"sentences: {self.data_source}")


def find_glue_dir(glue_dir: str | os.PathLike | None = None) -> Path | None:
    """The local GLUE folder holding ``SST-2/dev.tsv``: ``glue_dir``, else ``$BINLAB_GLUE_DIR``, else
    ``../shared/data/glue`` next to the checkout (:func:`binlab.settings.project_root`); None when none has it."""
    shared = project_root().parent / "shared" / "data" / "glue"
    for candidate in (glue_dir, os.environ.get(GLUE_DIR_ENV) or None, shared):
        if candidate is not None and (Path(candidate) / "SST-2" / "dev.tsv").is_file():
            return Path(candidate)
    return None


def _run_model(run: str | os.PathLike) -> Path | None:
    """A checkpoint directory: ``run`` itself, or its ``best_model/`` (the output folder of ``binlab train``)."""
    run = Path(run).expanduser()
    for folder in (run, run / "best_model"):
        if (folder / "config.json").is_file():
            return folder
    return None


def bibert_student(teacher: BertForSequenceClassification, bool_zero: int = 0) -> BertForSequenceClassification:
    """A BiBERT student of ``teacher`` before any training: the same architecture with the ``bibert`` preset
    (:func:`binlab.methods.bibert.student_quant`: W1A1, Bi-Attention with ``bool_zero``) and the teacher's weights,
    as the recipe initialises it. In eval mode."""
    cfg = dataclasses.replace(teacher.config, quant=student_quant(bool_zero))
    student = BertForSequenceClassification(cfg)
    student.load_state_dict(teacher.state_dict())
    return student.eval()


def _tiny_teacher(seed: int = 0) -> BertForSequenceClassification:
    with torch.random.fork_rng(devices=[]):
        model = tiny_bert(2, seed=seed, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, dropout=0.0, initializer_range=0.1)
    return model.eval()


def _encode(tokenizer, sentences, batch_size: int, max_length: int) -> list[dict]:
    return [tokenizer.encode_batch(list(sentences[i:i + batch_size]), max_length=max_length)
            for i in range(0, len(sentences), batch_size)]


def setup_attention(model_dir: str | os.PathLike | None = None, examples: int | None = None, *,
                    student_dir: str | os.PathLike | None = None, glue_dir: str | os.PathLike | None = None,
                    tiny: bool = False, batch_size: int = 32, max_length: int = 64) -> AttentionSetup:
    """The chapter's teacher, student and sentences (:class:`AttentionSetup`; its ``description`` says which).

    * Teacher: ``model_dir``, else the fine-tuned MiniLM of ``runs/sst2-fp`` in the checkout (``best_model/``),
      loaded full precision; else the bundled pretrained MiniLM (all-MiniLM-L6-v2, not fine-tuned on SST-2); else,
      or with ``tiny=True``, a random tiny BERT (hidden 32, 2 layers, 2 heads).
    * Student: ``student_dir``, else the student of a BiBERT run in ``runs/sst2-bibert`` (``student_w1a1/``) when it
      has the teacher's shape; else :func:`bibert_student` of the teacher (its weights under the ``bibert`` preset,
      before any distillation).
    * Sentences: the first ``examples`` SST-2 dev sentences (default 500, 48 in fast mode) of the local GLUE folder
      (:func:`find_glue_dir`); without one, :data:`SENTENCES`. ``tiny=True`` always uses :data:`SENTENCES`.
    """
    examples = pick(500, 48) if examples is None else int(examples)
    root = project_root()
    kind, teacher, tokenizer = "tiny", None, None
    if tiny:
        why = "tiny=True was asked for"
    else:
        chosen = Path(model_dir) if model_dir is not None else root / TEACHER_RUN
        path = _run_model(chosen)
        if path is not None:
            teacher = load_pretrained(path, quant="fp", verbose=False).eval()
            tokenizer = load_tokenizer(path) if (path / "vocab.txt").is_file() else load_tokenizer(None)
            kind = "checkpoint"
            teacher_source = (f"the fine-tuned MiniLM teacher {path} ({teacher.config.num_hidden_layers} layers, "
                              f"{teacher.config.num_attention_heads} heads, full precision)")
        elif model_dir is not None:
            raise FileNotFoundError(f"setup_attention: no checkpoint (config.json) in {chosen} or its best_model/")
        else:
            try:
                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    teacher = load_pretrained(None, quant="fp", verbose=False).eval()
                tokenizer = load_tokenizer(None)
                kind = "pretrained"
                teacher_source = (f"the bundled pretrained all-MiniLM-L6-v2, NOT fine-tuned on SST-2 (no "
                                  f"{TEACHER_RUN}/best_model in the checkout; `{TRAIN_TEACHER_COMMAND}` makes it)")
            except (FileNotFoundError, ImportError, OSError, KeyError) as e:
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
    if teacher is None:
        teacher, tokenizer = _tiny_teacher(), load_tokenizer(None)
        teacher_source = f"a RANDOM tiny BERT (hidden 32, 2 layers, 2 heads, seed 0): {why}"

    student, student_trained = None, False
    if kind != "tiny":
        folder = _run_model(student_dir) if student_dir is not None else _run_model(root / BIBERT_RUN / "student_w1a1")
        if folder is not None:
            candidate = load_pretrained(folder, verbose=False).eval()
            c, t = candidate.config, teacher.config
            if c.quant.attention == "bool" and (c.num_hidden_layers, c.num_attention_heads, c.hidden_size) == (
                    t.num_hidden_layers, t.num_attention_heads, t.hidden_size):
                student, student_trained = candidate, True
                student_source = f"the trained BiBERT student {folder} ({c.quant.label}, bool(0) = {c.quant.bool_zero})"
    if student is None:
        student = bibert_student(teacher)
        student_source = ("the teacher's weights under the bibert preset (W1A1, Bi-Attention, bool(0) = 0), BEFORE any "
                          "distillation" + ("" if kind == "tiny" else f" (no trained student in {BIBERT_RUN}/)"))

    glue = None if kind == "tiny" else find_glue_dir(glue_dir)
    if glue is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dev = load_glue("sst2", "dev", glue_dir=glue, source="local", max_examples=examples)
        sentences = list(dev.texts_a)
        data_source = f"the first {len(sentences)} SST-2 dev sentences ({glue / 'SST-2' / 'dev.tsv'})"
        batches = list(glue_batches(dev, tokenizer, batch_size, max_length=max_length))
    else:
        sentences = list(SENTENCES)
        data_source = (f"the {len(sentences)} sentences of binlab.explorers.attention.SENTENCES"
                       + ("" if kind == "tiny" else " (no local SST-2 dev set: set $BINLAB_GLUE_DIR)"))
        batches = _encode(tokenizer, sentences, batch_size, max_length)
    return AttentionSetup(teacher, student, tokenizer, sentences, batches, kind, teacher_source, student_source,
                          data_source, student_trained)


# ----------------------------------------------------------------------------------------------------------
# the entropy, measured


def measure_entropy(setup: AttentionSetup, taus=SWEEP_TAUS, alpha_init: str = "code") -> dict[str, list[dict]]:
    """:func:`binlab.analysis.entropy.attention_entropy` on ``setup.batches``: ``{"FP teacher": rows,
    "BiBERT student": rows, "BiBERT student, bool(0) = 1": rows}`` (the student's own bool(0) first, then the other
    one; rows per layer, head, binarization and tau)."""
    own = setup.student.config.quant.bool_zero
    return {"FP teacher": H.attention_entropy(setup.teacher, setup.batches, taus, alpha_init),
            "BiBERT student": H.attention_entropy(setup.student, setup.batches, taus, alpha_init, bool_zero=own),
            f"BiBERT student, bool(0) = {1 - own}": H.attention_entropy(setup.student, setup.batches, taus, alpha_init,
                                                                       bool_zero=1 - own)}


def _layered(rows: list[dict]) -> dict[tuple[str, float | None], dict[int, dict]]:
    out: dict[tuple[str, float | None], dict[int, dict]] = {}
    for r in H.by_layer(rows):
        out.setdefault((r["method"], r["tau"]), {})[r["layer"]] = r
    return out


def best_tau(rows: list[dict]) -> float:
    """The threshold of ``softmax > tau`` among ``rows`` whose entropy, averaged over the layers, is highest."""
    means = {tau: np.mean([r["entropy"] for r in per.values()])
             for (method, tau), per in _layered(rows).items() if method == "threshold"}
    if not means:
        raise ValueError("best_tau: the rows have no 'threshold' binarization")
    return max(means, key=means.get)


def _pick(rows: list[dict], method: str, tau: float | None = None) -> list[dict]:
    return [r for r in rows if r["method"] == method and (method != "threshold" or r["tau"] == tau)]


def _label(method: str, tau: float | None = None) -> str:
    return f"softmax > {tau:g}" if method == "threshold" else H.BINARIZATIONS[method][0]


def entropy_heatmap_figure(rows: list[dict], tau: float | None = None, title: str | None = None):
    """One heatmap per binarization (sign(softmax), softmax > tau, BiT's {0, alpha}, bool(scores)): the mean row
    entropy (bits per entry) of every layer (rows) and head (columns), on one colour scale from 0 to 1 bit.
    ``tau``: the threshold shown (default :func:`best_tau`)."""
    tau = best_tau(rows) if tau is None else tau
    n_layers = 1 + max(r["layer"] for r in rows)
    n_heads = 1 + max(r["head"] for r in rows)
    panels = []
    for method in METHODS:
        picked = _pick(rows, method, tau)
        if not picked:
            raise ValueError(f"entropy_heatmap_figure: no rows for {_label(method, tau)}")
        z = np.full((n_layers, n_heads), np.nan)
        for r in picked:
            z[r["layer"], r["head"]] = r["entropy"]
        panels.append((method, z))
    fig = Figure(make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.06, subplot_titles=[
        f"{_label(m, tau)}<br>mean {np.nanmean(z):.3f} bits" for m, z in panels]))
    for i, (method, z) in enumerate(panels, start=1):
        fig.add_trace(go.Heatmap(z=z, x=list(range(1, n_heads + 1)), y=list(range(1, n_layers + 1)),
                                 coloraxis="coloraxis", name=_label(method, tau),
                                 hovertemplate="layer %{y}, head %{x}: %{z:.3f} bits<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="head", dtick=1 if n_heads <= 12 else None, row=1, col=i)
        fig.update_yaxes(title_text="layer", dtick=1, autorange="reversed", row=1, col=i)
    fig.update_layout(title=title or "Entropy of the binarized attention, per layer and head (bits per entry)",
                      coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1, colorbar=dict(title="bits")),
                      height=400, margin=dict(t=130))
    return fig


def tau_sweep_figure(rows: list[dict], title: str | None = None):
    """``softmax > tau`` against tau, one line per layer: left the entropy, right the share of ones kept.
    bool(scores) (mean over the layers) and sign(softmax) are horizontal lines; BiT's {0, alpha} is a star at its
    own threshold on the probabilities, alpha / 2 (mean over the layers)."""
    layered = _layered(rows)
    taus = sorted(tau for method, tau in layered if method == "threshold")
    if not taus:
        raise ValueError("tau_sweep_figure: the rows have no 'threshold' binarization")
    layers = sorted(layered[("threshold", taus[0])])
    fig = Figure(make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=(
        "entropy of softmax > τ", "share of ones kept by softmax > τ")))
    for col, key in ((1, "entropy"), (2, "ones")):
        for layer in layers:
            fig.add_trace(go.Scatter(x=taus, y=[layered[("threshold", t)][layer][key] for t in taus],
                                     mode="lines+markers", name=f"layer {layer + 1}", legendgroup=f"L{layer}",
                                     showlegend=col == 1, line=dict(color=_LAYER_COLORS[layer % len(_LAYER_COLORS)])),
                          row=1, col=col)
        for method, dash in (("bool", "dash"), ("sign_softmax", "dot")):
            v = float(np.mean([r[key] for r in layered[(method, None)].values()]))
            fig.add_trace(go.Scatter(x=[taus[0], taus[-1]], y=[v, v], mode="lines", legendgroup=method,
                                     name=f"{_label(method)} (mean of the layers)", showlegend=col == 1,
                                     line=dict(color=_COLORS[method], dash=dash, width=3)), row=1, col=col)
        bit = layered.get(("bit", None))
        if bit:
            x = float(np.mean([r["alpha"] / 2 for r in bit.values()]))
            fig.add_trace(go.Scatter(x=[x], y=[float(np.mean([r[key] for r in bit.values()]))], mode="markers",
                                     name="BiT {0, α}: softmax > α/2", legendgroup="bit", showlegend=col == 1,
                                     marker=dict(size=16, symbol="star", color="black")), row=1, col=col)
        fig.update_xaxes(title_text="threshold τ on the probabilities", type="log", row=1, col=col)
    fig.update_yaxes(title_text="mean row entropy (bits per entry)", range=[-0.03, 1.03], row=1, col=1)
    fig.update_yaxes(title_text="share of ones over the real keys", range=[-0.03, 1.03], row=1, col=2)
    fig.update_layout(title=title or "A fixed threshold on the probabilities against bool(scores)", height=500,
                      margin=dict(t=100, b=150), legend=dict(orientation="h", y=-0.3, yanchor="top"))
    return fig


def entropy_by_layer_figure(results: dict[str, list[dict]], tau: float | None = None, title: str | None = None):
    """Bars: the mean row entropy of each layer for sign(softmax), softmax > tau (default: :func:`best_tau` of the
    first model), BiT's {0, alpha} and bool(scores); one panel per model of ``results`` (name -> rows of
    :func:`binlab.analysis.entropy.attention_entropy`)."""
    names = list(results)
    tau = best_tau(results[names[0]]) if tau is None else tau
    fig = Figure(make_subplots(rows=1, cols=len(names), horizontal_spacing=0.07, subplot_titles=names,
                               shared_yaxes=True))
    for col, name in enumerate(names, start=1):
        layered = _layered(results[name])
        for method in METHODS:
            per = layered.get((method, tau if method == "threshold" else None))
            if not per:
                continue
            layers = sorted(per)
            fig.add_trace(go.Bar(x=[f"layer {l + 1}" for l in layers], y=[per[l]["entropy"] for l in layers],
                                 name=_label(method, tau), legendgroup=method, showlegend=col == 1,
                                 marker_color=_COLORS[method]), row=1, col=col)
        fig.update_xaxes(title_text="encoder layer", row=1, col=col)
        fig.update_yaxes(title_text="mean row entropy (bits per entry)" if col == 1 else "bits", range=[0, 1.02],
                         row=1, col=col)
    fig.update_layout(title=title or ("Entropy of the binarized attention per layer: how much each binarization "
                                      "keeps<br><sup>sign(softmax) is 0 everywhere: its bars have no height</sup>"),
                      barmode="group", height=430, margin=dict(t=100), legend=dict(orientation="h", y=-0.25))
    return fig


# ----------------------------------------------------------------------------------------------------------
# one sentence's attention maps, and the explorer


def attention_maps(model: BertForSequenceClassification, tokenizer, sentence: str, max_length: int = 64) -> dict:
    """One sentence through ``model``: ``{"tokens", "scores", "mask"}``, with ``scores`` the list over the layers
    of the (1, H, L, L) attention scores the model computes (``QK^T/sqrt(d) + mask``; sign(Q) sign(K)^T / sqrt(d)
    for a BiBERT student) and ``mask`` the (1, L) attention mask."""
    batch = tokenizer.encode_batch([sentence], max_length=max_length)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], output_attentions=True)
    finally:
        model.train(was_training)
    tokens = [tokenizer.decode([i], skip_special_tokens=False) for i in batch["input_ids"][0].tolist()]
    return {"tokens": tokens, "scores": [s.detach() for s in out.attention_scores], "mask": batch["attention_mask"]}


def binarized_map(scores: Tensor, method: str, tau: float | None = None, bool_zero: int = 0) -> Tensor:
    """The {0, 1} map (bool tensor) of :data:`binlab.analysis.entropy.BINARIZATIONS` ``[method]`` for the attention
    ``scores`` (B, H, L, L): ``sign_softmax``, ``threshold`` (softmax > ``tau``) or ``bool`` (with ``bool_zero``)."""
    if method not in ("sign_softmax", "threshold", "bool"):
        raise ValueError(f"binarized_map: method must be sign_softmax, threshold or bool, got {method!r} (BiT's "
                         "{0, alpha} needs a calibrated alpha: binlab.analysis.entropy.attention_entropy)")
    if method == "threshold" and tau is None:
        raise ValueError("binarized_map: the threshold method needs tau")
    maps = H.LayerMaps(scores, torch.softmax(scores.float(), dim=-1), tau, None, int(bool_zero))
    return H.BINARIZATIONS[method][1](maps).bool()


def _head_entropy(ones: Tensor, mask: Tensor, head: int) -> tuple[float, float]:
    """(mean row entropy, mean share of ones) of one head of a one-sentence map."""
    h = H.mean_over_rows(H.row_entropy(ones, mask), mask)[head]
    p = H.mean_over_rows(H.row_share(ones, mask), mask)[head]
    return float(h), float(p)


def make_attention_explorer(setup: AttentionSetup, num_sentences: int = 12, max_tokens: int = 24):
    """Pick a sentence (or type one), a model, a layer and a head; see four attention maps side by side.

    Panels: the softmax probabilities (full precision), sign(softmax) (all ones), softmax > tau (the slider), and
    bool(scores) with bool(0) = 0 or 1. The titles give each binary map's mean row entropy (bits per entry, over the
    query rows; :mod:`binlab.analysis.entropy`) and its share of ones. With the BiBERT student the scores are
    sign(Q) sign(K)^T / sqrt(d), and the exact zeros are where the two bool(0) choices differ.

    Returns ``(ui, fig, controls)``; controls: ``sentence`` (Dropdown), ``text`` (Text: a sentence of your own,
    taken when you press Enter), ``model`` (ToggleButtons "teacher" / "student"), ``layer``, ``head`` (IntSliders,
    1-based), ``tau`` (FloatLogSlider), ``bool_zero`` (ToggleButtons 0 / 1). ``fig.data``: the four heatmaps.
    """
    models = {"teacher": setup.teacher, "student": setup.student}
    n_layers, n_heads = setup.teacher.config.num_hidden_layers, setup.teacher.config.num_attention_heads
    short = [s for s in setup.sentences if len(setup.tokenizer.tokenize(s)) + 2 <= max_tokens][:num_sentences]
    options = short or list(setup.sentences[:num_sentences])
    controls = {
        "sentence": W.Dropdown(options=options, value=options[0], description="sentence",
                               layout=W.Layout(width="95%")),
        "text": W.Text(value="", placeholder="type a sentence and press Enter", description="or your own",
                       continuous_update=False, layout=W.Layout(width="95%")),
        "model": W.ToggleButtons(options=[("FP teacher", "teacher"), ("BiBERT student", "student")],
                                 value="teacher", description="model"),
        "layer": W.IntSlider(value=1, min=1, max=n_layers, description="layer"),
        "head": W.IntSlider(value=1, min=1, max=n_heads, description="head"),
        "tau": W.FloatLogSlider(value=0.05, base=10, min=-3, max=-0.3, step=0.05, readout_format=".3f",
                                description="threshold τ"),
        "bool_zero": W.ToggleButtons(options=[("bool(0) = 0 (code)", 0), ("bool(0) = 1 (paper)", 1)], value=0,
                                     description="bool(0)"),
    }
    names = ("softmax(S): probabilities", "sign(softmax)", "softmax > τ", "bool(S)")
    fig = Figure(make_subplots(rows=1, cols=4, horizontal_spacing=0.06, subplot_titles=names))
    for i, name in enumerate(names, start=1):
        binary = i > 1
        fig.add_trace(go.Heatmap(name=name, zmin=0, zmax=1 if binary else None, colorscale=_BINARY if binary else
                                 "Viridis", showscale=not binary, colorbar=dict(title="p") if not binary else None,
                                 hovertemplate="query %{y}, key %{x}: %{z:.3f}<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="key token", tickangle=-60, row=1, col=i)
        fig.update_yaxes(title_text="query token", autorange="reversed", row=1, col=i)
    fig.update_layout(height=560, margin=dict(t=150, l=110))
    cache: dict[tuple[str, str], dict] = {}

    def maps(key: str, sentence: str) -> dict:
        if (key, sentence) not in cache:
            cache[(key, sentence)] = attention_maps(models[key], setup.tokenizer, sentence)
        return cache[(key, sentence)]

    def update(_=None):
        key, sentence = controls["model"].value, controls["sentence"].value
        layer, head = controls["layer"].value - 1, controls["head"].value - 1
        tau, bool_zero = float(controls["tau"].value), int(controls["bool_zero"].value)
        m = maps(key, sentence)
        scores, mask, tokens = m["scores"][layer], m["mask"], m["tokens"]
        probs = torch.softmax(scores.float(), dim=-1)
        panels = [(None, probs[0, head])]
        for method in ("sign_softmax", "threshold", "bool"):
            ones = binarized_map(scores, method, tau, bool_zero)
            panels.append((_head_entropy(ones, mask, head), ones[0, head].float()))
        zeros = float((scores[0, head] == 0).float().mean())
        ticks = dict(tickmode="array", tickvals=list(range(len(tokens))), ticktext=tokens)
        titles = ["softmax(S)<br>probabilities",
                  "sign(softmax)<br>H = {:.3f}, ones {:.0%}".format(*panels[1][0]),
                  f"softmax > {tau:.2g}<br>" + "H = {:.3f}, ones {:.0%}".format(*panels[2][0]),
                  f"bool(S), bool(0) = {bool_zero}<br>" + "H = {:.3f}, ones {:.0%}".format(*panels[3][0])]
        with fig.batch_update():
            for i, (trace, (_, z)) in enumerate(zip(fig.data, panels)):
                trace.z = z.numpy()
                trace.x = list(range(len(tokens)))
                trace.y = list(range(len(tokens)))
                trace.name = names[i]
                fig.layout.annotations[i].text = titles[i]
            for i in range(1, 5):
                suffix = "" if i == 1 else str(i)
                fig.layout[f"xaxis{suffix}"].update(**ticks)
                fig.layout[f"yaxis{suffix}"].update(**ticks, showticklabels=i == 1)
            label = "FP teacher" if key == "teacher" else "BiBERT student"
            text = sentence.strip()[:70]
            fig.layout.title.text = (f"{label}, layer {layer + 1}, head {head + 1}: “{text}”<br><sup>"
                                     f"scores exactly 0 in this head: {zeros:.1%} of the entries; H = mean row "
                                     "entropy of the binary map, bits per entry</sup>")

    def on_text(change):
        text = change["new"].strip()
        if not text:
            return
        if text not in controls["sentence"].options:
            controls["sentence"].options = (text, *controls["sentence"].options)
        controls["sentence"].value = text  # fires update

    controls["text"].observe(on_text, names="value")
    for k in ("sentence", "model", "layer", "head", "tau", "bool_zero"):
        controls[k].observe(update, names="value")
    for c in controls.values():
        c.style.description_width = "initial"
    update()
    ui = W.VBox([controls["sentence"], controls["text"], W.HBox([controls["model"], controls["bool_zero"]]),
                 W.HBox([controls["layer"], controls["head"], controls["tau"]]), fig])
    return ui, fig, controls


# ----------------------------------------------------------------------------------------------------------
# bool(0): exact zeros


def _real_pairs(mask: Tensor) -> Tensor:
    real = mask.bool()
    return real[:, None, :, None] & real[:, None, None, :]  # (B, 1, L, L): real query and real key


def exact_zero_rows(model: BertForSequenceClassification, batches) -> list[dict]:
    """Per layer, over the real (query, key) pairs of ``batches``: how many attention scores are exactly 0, and
    the share of ones of bool(scores) with bool(0) = 0 (``score > 0``) and with bool(0) = 1 (``score >= 0``)."""
    counts: dict[int, list[int]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in batches:
                out = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), output_attentions=True)
                keep = _real_pairs(b["attention_mask"])
                for layer, s in enumerate(out.attention_scores):
                    k = keep.expand_as(s)
                    c = counts.setdefault(layer, [0, 0, 0])
                    c[0] += int(k.sum())
                    c[1] += int(((s == 0) & k).sum())
                    c[2] += int(((s > 0) & k).sum())
    finally:
        model.train(was_training)
    return [{"layer": layer + 1, "pairs": n, "exact zeros": z, "share of zeros": z / n, "ones, bool(0) = 0": pos / n,
             "ones, bool(0) = 1": (pos + z) / n} for layer, (n, z, pos) in sorted(counts.items())]


def score_histogram_figure(model: BertForSequenceClassification, batches, layer: int = 0, title: str | None = None):
    """How the attention scores of layer ``layer`` (0-based) are distributed over the real (query, key) pairs of
    ``batches``: a bar per distinct value (a BiBERT student's sign(Q) sign(K)^T / sqrt(d) takes d + 1 of them),
    coloured by what bool() makes of it; the exact zeros are the red bar."""
    values = []
    with torch.no_grad():
        for b in batches:
            out = model.eval()(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), output_attentions=True)
            s = out.attention_scores[layer]
            values.append(s[_real_pairs(b["attention_mask"]).expand_as(s)].double())
    v = torch.cat(values).numpy().round(6)
    uniq, counts = np.unique(v, return_counts=True)
    if len(uniq) > 200:  # full-precision scores: a histogram instead of one bar per value
        counts, edges = np.histogram(v, bins=120)
        uniq = 0.5 * (edges[1:] + edges[:-1])
    share = counts / counts.sum()
    zero = float((v == 0).mean())
    fig = Figure()
    for name, sel, color in (("score < 0 → 0", uniq < 0, "lightgray"), ("score = 0 → 0 (code) or 1 (paper)",
                                                                        uniq == 0, "red"),
                             ("score > 0 → 1", uniq > 0, "#08306b")):
        fig.add_trace(go.Bar(x=uniq[sel], y=share[sel], name=name, marker_color=color))
    d = model.config.head_size
    fig.update_layout(title=title or (f"Attention scores of layer {layer + 1}, {len(v):,} real pairs: "
                                      f"{zero:.1%} are exactly 0<br><sup>sign(Q)·sign(K)ᵀ/√d is an even integer "
                                      f"/ √{d} for d = {d}</sup>"),
                      xaxis_title="attention score", yaxis_title="share of the (query, key) pairs", bargap=0.1,
                      height=420, margin=dict(t=100), legend=dict(orientation="h", y=-0.25))
    return fig


# ----------------------------------------------------------------------------------------------------------
# Bi-Attention with chapter 1's kernels


def bitwise_bi_attention(student: BertForSequenceClassification, tokenizer, sentence: str, layer: int = 0) -> dict:
    """Layer ``layer`` (0-based) of a BiBERT student on one sentence, twice: in float as the model computes it,
    ``ctx = bool(sign(Q) sign(K)^T / sqrt(d)) @ sign(V)`` (:func:`binlab.quant.quantizers.ste_sign`,
    :func:`~binlab.quant.quantizers.ste_bool`), and with chapter 1's bitwise products: the scores by XNOR-popcount
    (:func:`binlab.kernels.products.xnor_bmm` on :func:`~binlab.kernels.packing.pack_signs`), the context by
    AND-popcount (:func:`~binlab.kernels.products.and_bmm` on :func:`~binlab.kernels.packing.pack_bits01`).

    Returns ``{"tokens", "heads", "head_size", "scores_match_model", "context_equal", "float_macs",
    "word_ops"}``: whether the integer scores / sqrt(d) equal the model's own attention scores, whether both
    contexts are equal, and the multiply-adds of the float products against the 64-bit word operations (AND or XOR,
    then popcount) of the bitwise ones.
    """
    if student.config.quant.attention != "bool":
        raise ValueError("bitwise_bi_attention: the model has no Bi-Attention (its quant.attention is "
                         f"{student.config.quant.attention!r}); use a bibert student")
    batch = tokenizer.encode_batch([sentence], max_length=128)
    with torch.no_grad():
        out = student.eval()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                             output_attentions=True, output_qkv=True)
    q, k, v = (x.detach().float() for x in out.qkv[layer])  # (1, H, L, d), before sign()
    _, n_heads, L, d = q.shape
    zero_to_one = bool(student.config.quant.bool_zero)
    sq, sk, sv = (Q.ste_sign(x, None) for x in (q, k, v))
    ctx_float = Q.ste_bool(sq @ sk.transpose(-1, -2) / math.sqrt(d), zero_to_one=zero_to_one) @ sv
    scores_int = xnor_bmm(pack_signs(q), pack_signs(k), d)  # (1, H, L, L) int32: sum of d products of +-1
    ones = scores_int >= 0 if zero_to_one else scores_int > 0
    ctx_bits = and_bmm(pack_bits01(ones), pack_signs(v.transpose(-1, -2)), L)  # (1, H, L, d) int32
    words = math.ceil(d / 64) * L * L + math.ceil(L / 64) * L * d
    return {"tokens": L, "heads": n_heads, "head_size": d,
            "scores_match_model": bool(torch.allclose(scores_int.float() / math.sqrt(d), out.attention_scores[layer],
                                                      atol=1e-5)),
            "context_equal": bool(torch.equal(ctx_bits.float(), ctx_float)),
            "float_macs": n_heads * 2 * L * L * d, "word_ops": n_heads * words}


# ----------------------------------------------------------------------------------------------------------
# direction-matching distillation


def _both(student, teacher, batch):
    with torch.no_grad():
        kw = dict(output_hidden_states=True, output_qkv=True)
        s = student.eval()(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), **kw)
        t = teacher.eval()(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), **kw)
    return s, t


def dmd_rows(student, teacher, batch: dict, mask_padding: bool = False) -> list[dict]:
    """The terms of BiBERT's DMD (:func:`binlab.methods.distill.direction_matching_loss`) on one batch, one row per
    layer: ``D(Q)``, ``D(K)``, ``D(V)`` (the similarity matrices F F^T / sqrt(d) of the full-precision projections)
    and ``D(H)`` (the layer's output; row 0 is the embedding output, without Q, K, V). ``mask_padding``: leave the
    padded tokens out first (binlab's variant). The terms add up to the library's loss."""
    s, t = _both(student, teacher, batch)
    m = batch["attention_mask"] if mask_padding else None
    rows = [{"layer": "embeddings", "D(Q)": None, "D(K)": None, "D(V)": None,
             "D(H)": float(D.direction_distance(D.drop_padding(s.hidden_states[0], m),
                                                D.drop_padding(t.hidden_states[0], m)))}]
    for layer, (fs, ft) in enumerate(zip(s.qkv, t.qkv)):
        row = {"layer": f"layer {layer + 1}"}
        for name, a, b in zip("QKV", fs, ft):
            row[f"D({name})"] = float(D.direction_distance(D.similarity_matrix(D.drop_padding(a, m)),
                                                           D.similarity_matrix(D.drop_padding(b, m))))
        row["D(H)"] = float(D.direction_distance(D.drop_padding(s.hidden_states[layer + 1], m),
                                                 D.drop_padding(t.hidden_states[layer + 1], m)))
        rows.append(row)
    return rows


def dmd_similarity_figure(student, teacher, tokenizer, sentence: str, layer: int = 0, head: int = 0,
                          which: str = "Q", title: str | None = None):
    """The similarity matrices of one sentence that DMD compares, for ``which`` (Q, K or V) of layer ``layer`` and
    head ``head`` (0-based): the teacher's F_t F_t^T / sqrt(d) and the student's F_s F_s^T / sqrt(d), each divided by
    its Frobenius norm over the whole tensor (all heads of the layer), and their difference. The title gives the
    layer's DMD term D = || S / ||S|| - T / ||T|| || and, for contrast, the element-wise MSE of the raw matrices."""
    idx = "QKV".index(which)
    batch = tokenizer.encode_batch([sentence], max_length=128)
    s, t = _both(student, teacher, batch)
    S, T = D.similarity_matrix(s.qkv[layer][idx]), D.similarity_matrix(t.qkv[layer][idx])
    dist = float(D.direction_distance(S, T))
    mse = float(F.mse_loss(S, T))
    Sn, Tn = S / torch.linalg.vector_norm(S), T / torch.linalg.vector_norm(T)
    tokens = [tokenizer.decode([i], skip_special_tokens=False) for i in batch["input_ids"][0].tolist()]
    panels = [("teacher: T / ‖T‖", Tn[0, head]), ("student: S / ‖S‖", Sn[0, head]),
              ("difference S/‖S‖ − T/‖T‖", (Sn - Tn)[0, head])]
    top = float(max(Tn[0, head].abs().max(), Sn[0, head].abs().max()))
    fig = Figure(make_subplots(rows=1, cols=3, horizontal_spacing=0.06, subplot_titles=[p[0] for p in panels]))
    ticks = dict(tickmode="array", tickvals=list(range(len(tokens))), ticktext=tokens)
    for i, (name, z) in enumerate(panels, start=1):
        fig.add_trace(go.Heatmap(z=z.numpy(), zmin=-top, zmax=top, colorscale="RdBu", reversescale=True,
                                 showscale=i == 3, name=name, colorbar=dict(title="normalised<br>similarity"),
                                 hovertemplate="%{y} · %{x}: %{z:.4f}<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="token", tickangle=-60, **ticks, row=1, col=i)
        fig.update_yaxes(title_text="token", autorange="reversed", **ticks, showticklabels=i == 1,
                         row=1, col=i)
    fig.update_layout(title=title or (f"DMD on {which} of layer {layer + 1} (head {head + 1} shown): "
                                      f"D = {dist:.3f}<br><sup>“{sentence.strip()[:70]}”; element-wise MSE of the "
                                      f"raw "
                                      f"matrices {mse:.3g}, which changes with their scale while D does not</sup>"),
                      height=480, margin=dict(t=110, l=110))
    return fig


# ----------------------------------------------------------------------------------------------------------
# a tiny distillation: element-wise against DMD


def _pred(s, t, batch):
    return D.soft_cross_entropy(s.logits, t.logits) + 0.5 * F.cross_entropy(s.logits, batch["labels"])


#: variant -> (description, loss(student_out, teacher_out, batch)): the three losses the comparison trains with.
KD_VARIANTS = {
    "logits only": ("SCE(z_s, z_t) + 0.5 CE(z_s, y)", _pred),
    "element-wise": ("the logits + sum_l MSE(A_s, A_t) of the scores + sum_l MSE(H_s, H_t) (BinaryBERT/TinyBERT)",
                     lambda s, t, b: _pred(s, t, b) + D.attention_score_mse(s.attention_scores, t.attention_scores)
                     + D.hidden_state_mse(s.hidden_states, t.hidden_states)),
    "DMD": ("BiBERT: the logits + DMD of Q, K, V and the hidden states (bibert_loss)",
            lambda s, t, b: D.bibert_loss(s, t, b["labels"])),
}


@dataclass
class DistillComparison:
    """What :func:`compare_attention_distillation` measured: a row per variant, each one's loss curve, settings."""

    rows: list[dict] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def _compact(batch_lists):
    """Renumber the token ids of all batches to 0..V-1 (V = the word pieces they use): the tiny models then carry a
    V-row embedding table instead of 30,522 rows. Returns (V, the renumbered batch lists)."""
    ids = torch.unique(torch.cat([b["input_ids"].flatten() for bl in batch_lists for b in bl]))
    lut = torch.zeros(int(ids.max()) + 1, dtype=torch.long)
    lut[ids] = torch.arange(len(ids))
    return len(ids), [[{**b, "input_ids": lut[b["input_ids"]]} for b in bl] for bl in batch_lists]


def _accuracy(model, batches) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for b in batches:
            logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
            right += int((logits.argmax(-1) == b["labels"]).sum())
            total += int(b["labels"].numel())
    return right / max(total, 1)


def compare_attention_distillation(steps: int = 150, teacher_steps: int = 200, seed: int = 0, lr: float = 5e-3,
                                   teacher_lr: float = 2e-3, hidden_size: int = 64, num_layers: int = 2,
                                   num_heads: int = 2, train_examples: int = 1024, dev_examples: int = 256,
                                   batch_size: int = 32, max_length: int = 20) -> DistillComparison:
    """A tiny full-precision teacher, trained on synthetic SST-2 for ``teacher_steps`` AdamW steps, then the same
    tiny BiBERT student (the ``bibert`` preset, initialised from the teacher, :func:`bibert_student`) distilled
    three times for ``steps`` steps with each loss of :data:`KD_VARIANTS`: the logits only, the logits plus the
    element-wise MSE of the attention scores and hidden states, and BiBERT's DMD. The teacher in eval mode, as in
    BiBERT's code.

    Same seed, data order, optimizer (AdamW, ``lr``, no weight decay) for the three. The sentences are SYNTHETIC
    (binlab's generator), their word pieces renumbered so the tiny models have a small embedding table. Returns a
    :class:`DistillComparison`: ``rows`` (variant, loss, dev accuracy, seconds, and the teacher's accuracy) and
    ``losses`` per variant.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = load_glue("sst2", "train", source="synthetic", max_examples=train_examples, seed=seed)
        dev = load_glue("sst2", "dev", source="synthetic", max_examples=dev_examples, seed=seed + 1)
    tokenizer = load_tokenizer(None)
    n_epochs = math.ceil(max(steps, teacher_steps) * batch_size / len(train))
    epochs = [list(glue_batches(train, tokenizer, batch_size, shuffle=True, seed=seed + e, max_length=max_length,
                                drop_last=True)) for e in range(n_epochs)]
    vocab, (dev_batches, *epochs) = _compact([list(glue_batches(dev, tokenizer, 128, max_length=max_length)), *epochs])
    order = [b for e in epochs for b in e]
    out = DistillComparison(settings=dict(steps=steps, teacher_steps=teacher_steps, lr=lr, batch_size=batch_size,
                                          hidden_size=hidden_size, layers=num_layers, heads=num_heads, vocab=vocab,
                                          train_examples=len(train), dev_examples=len(dev), seed=seed,
                                          data="SYNTHETIC sst2"))
    kw = dict(output_hidden_states=True, output_attentions=True, output_qkv=True)
    with torch_threads(1), torch.random.fork_rng(devices=[]):
        t0 = time.perf_counter()
        teacher = tiny_bert(2, seed=seed, vocab_size=vocab, hidden_size=hidden_size, num_hidden_layers=num_layers,
                            num_attention_heads=num_heads, intermediate_size=2 * hidden_size,
                            max_position_embeddings=max(64, max_length), dropout=0.0, initializer_range=0.1)
        opt = torch.optim.AdamW(teacher.parameters(), lr=teacher_lr, weight_decay=0.0)
        teacher.train()
        for b in order[:teacher_steps]:
            loss = F.cross_entropy(teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits,
                                   b["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        teacher_acc = _accuracy(teacher, dev_batches)
        out.settings.update(teacher_accuracy=teacher_acc, teacher_seconds=time.perf_counter() - t0)
        for variant, (description, loss_fn) in KD_VARIANTS.items():
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            student = bibert_student(teacher).train()
            start_acc = _accuracy(student, dev_batches)
            student.train()
            opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
            losses = []
            for b in order[:steps]:
                with torch.no_grad():
                    t = teacher.eval()(b["input_ids"], b["attention_mask"], b["token_type_ids"], **kw)
                s = student(b["input_ids"], b["attention_mask"], b["token_type_ids"], **kw)
                loss = loss_fn(s, t, b)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            out.losses[variant] = losses
            out.rows.append({"variant": variant, "loss": description, "dev accuracy at the start": start_acc,
                             "dev accuracy": _accuracy(student, dev_batches),
                             "seconds": time.perf_counter() - t0})
    return out


def distillation_figure(comparison: DistillComparison, smooth: int = 5):
    """Each variant's training loss of :func:`compare_attention_distillation`, divided by its first value (the
    three losses have different units), as a running mean over ``smooth`` steps; the legend gives the dev
    accuracy."""
    colors = {"logits only": "gray", "element-wise": "royalblue", "DMD": "firebrick"}
    acc = {r["variant"]: r["dev accuracy"] for r in comparison.rows}
    fig = Figure()
    for variant, losses in comparison.losses.items():
        y = np.asarray(losses, dtype=np.float64)
        y = y / y[0] if len(y) and y[0] else y
        k = max(1, min(int(smooth), len(y)))
        ys = np.convolve(y, np.ones(k) / k, mode="valid")
        fig.add_trace(go.Scatter(x=np.arange(k, len(y) + 1), y=ys, mode="lines", line=dict(color=colors.get(variant)),
                                 name=f"{variant} (dev accuracy {acc.get(variant, float('nan')):.1%})"))
    s = comparison.settings
    fig.update_layout(title=(f"Tiny BiBERT student ({s.get('data')}): three distillation losses<br><sup>teacher "
                             f"dev accuracy {s.get('teacher_accuracy', float('nan')):.1%}; seed {s.get('seed')}</sup>"),
                      xaxis_title="training step",
                      yaxis_title=f"loss / its first value (running mean of {smooth})", height=440,
                      margin=dict(t=100), legend=dict(orientation="h", y=-0.3, yanchor="top"))
    return fig


# ----------------------------------------------------------------------------------------------------------
# docs/results.md


def recorded_results(path: str | os.PathLike | None = None) -> str | None:
    """The BiBERT part of ``docs/results.md`` (default: the checkout's): the first section whose heading starts with
    "BiBERT", under its heading. ``None`` when the file does not exist or has no such section (not measured yet)."""
    path = Path(path) if path is not None else project_root() / "docs" / "results.md"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    for m in re.finditer(r"^(#{1,6})\s+(.*?)\s*#*\s*$", text, flags=re.M):
        heading = m.group(2)
        if heading.lower().startswith("bibert"):
            return f"### {heading}\n\n{markdown_section(text, heading)}"
    return None

