"""Chapter 3's figures and explorer: loss surfaces and Hessian eigenvalues drawn, and the model they look at.

The numbers come from :mod:`binlab.analysis.landscape`; this module draws them (plotly), makes them
interactive (ipywidgets) and sets up what the chapter measures: a fine-tuned SST-2 checkpoint, or a tiny BERT
trained in seconds (:func:`setup_sst2`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as W
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from binlab.analysis.landscape import (PERTURBABLE, LossGrid, _as_batches, _eval_mode, _progress,
                                       grid_coords, layer_param, loss_grid)
from binlab.checkpoint import load_pretrained, resolve_model_dir
from binlab.data.glue import batches as glue_batches, load_glue
from binlab.data.synthetic import SyntheticDataWarning
from binlab.explorers.figure import Figure
from binlab.model import BertForSequenceClassification, tiny_bert
from binlab.settings import fast_mode, project_root, torch_threads
from binlab.tokenizer import BertTokenizer
from binlab.train.trainer import default_loss

__all__ = [
    "SST2_MODEL_ENV", "DEFAULT_SST2_RUN", "SST2_TRAIN_COMMAND", "landscape_figure", "eigenvalue_figure", "make_landscape_explorer", "explorer_grid",
    "train_briefly", "LandscapeSetup", "setup_sst2", "surface_range",
]

#: Environment variable naming a fine-tuned SST-2 checkpoint directory (what ``binlab train`` writes).
SST2_MODEL_ENV = "BINLAB_SST2_MODEL"
#: Where the chapter looks for a fine-tuned SST-2 model when none is given: the run docs/results.md's command makes.
DEFAULT_SST2_RUN = "runs/sst2-fp"
SST2_TRAIN_COMMAND = ("binlab train --task sst2 --glue-dir ../shared/data/glue --threads 1 --lr 5e-5 --epochs 1 "
                      "--batch-size 32 --max-length 64 --out runs/sst2-fp")


# ----------------------------------------------------------------------------------------------------------
# figures


def _short(name: str) -> str:
    """``bert.encoder.layer.0.attention.value.weight`` -> ``L1 value`` (layers 1-based, as in the paper)."""
    parts = name.split(".")
    if len(parts) > 4 and parts[:3] == ["bert", "encoder", "layer"] and parts[3].isdigit():
        rest = ".".join(parts[4:])
        label = next((k for k, v in PERTURBABLE.items() if v == rest), rest.removesuffix(".weight"))
        return f"L{int(parts[3]) + 1} {label}"
    return name


def _axis_titles(grid: LossGrid) -> dict:
    return dict(xaxis_title=f"x: {_short(grid.names[0])}", yaxis_title=f"y: {_short(grid.names[1])}",
                zaxis_title="training loss")


def landscape_figure(grids: Mapping[str, LossGrid], shared_z: bool = True, title: str | None = None):
    """Side-by-side 3D surfaces (one plotly subplot per grid), labelled axes, one colour scale.

    ``shared_z``: the same z range (and colours) for every surface, so heights compare across models.
    """
    if not grids:
        raise ValueError("landscape_figure: no grids")
    labels = list(grids)
    n = len(labels)
    lo = min(float(g.losses.min()) for g in grids.values())
    hi = max(float(g.losses.max()) for g in grids.values())
    fig = make_subplots(rows=1, cols=n, specs=[[{"type": "surface"}] * n],
                        subplot_titles=[f"{lab}<br>(centre loss {grids[lab].center_loss:.3f})" for lab in labels],
                        horizontal_spacing=0.02)
    for k, lab in enumerate(labels):
        g = grids[lab]
        surf = go.Surface(x=g.xs, y=g.ys, z=g.surface_z, name=lab, colorscale="Viridis",
                          showscale=(k == n - 1), colorbar=dict(title="loss"),
                          hovertemplate="x=%{x:.2f}<br>y=%{y:.2f}<br>loss=%{z:.4f}<extra>" + lab + "</extra>")
        if shared_z:
            surf.update(cmin=lo, cmax=hi)
        fig.add_trace(surf, row=1, col=k + 1)
        scene = dict(**_axis_titles(g), camera=dict(eye=dict(x=1.6, y=1.6, z=1.0)))
        if shared_z:
            pad = 0.02 * (hi - lo) + 1e-9
            scene["zaxis"] = dict(range=[lo - pad, hi + pad], title="training loss")
            del scene["zaxis_title"]
        fig.update_layout({f"scene{'' if k == 0 else k + 1}": scene})
    first = next(iter(grids.values()))
    fig.update_layout(
        title=title or (f"Training loss with W + x·mean|W|·1 ({_short(first.names[0])}) and "
                        f"W + y·mean|W|·1 ({_short(first.names[1])})"),
        height=500, margin=dict(l=10, r=10, t=110, b=10))
    return fig


def eigenvalue_figure(rows: Sequence[Mapping], magnitude: bool = True, title: str | None = None):
    """Grouped bars per module type and model of the mean over layers of |lambda_max| (``magnitude``, the
    spectral norm of the block's Hessian) or of lambda_max with its sign; error bars = std over layers."""
    if not rows:
        raise ValueError("eigenvalue_figure: no rows")
    mean, std = ("mean_abs", "std_abs") if magnitude else ("mean", "std")
    fig = Figure()
    for label in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == label]
        fig.add_trace(go.Bar(name=label, x=[r["module"] for r in sub], y=[r[mean] for r in sub],
                             error_y=dict(type="data", array=[r[std] for r in sub])))
    what = "|λ_max| (spectral norm of the block's Hessian)" if magnitude else "λ_max (dominant eigenvalue, signed)"
    fig.update_layout(barmode="group",
                      title=title or f"Top Hessian eigenvalue per module type: {what}, mean ± std over layers",
                      xaxis_title="module type", yaxis_title=what, legend_title="model")
    return fig


def explorer_grid(models: Mapping[str, nn.Module], batches, model_label: str, module: str, layers: tuple[int, int],
                  steps: int, span: float = 1.0, loss_fn: Callable | None = None,
                  cache: dict | None = None) -> LossGrid:
    """The grid :func:`make_landscape_explorer` shows for one setting of its controls (memoised in ``cache``)."""
    if model_label not in models:
        raise ValueError(f"unknown model {model_label!r}; choose from {list(models)}")
    key = (model_label, module, tuple(layers), int(steps), float(span))
    if cache is not None and key in cache:
        return cache[key]
    names = (layer_param(layers[0], module), layer_param(layers[1], module))
    grid = loss_grid(models[model_label], batches, names, steps, span, loss_fn, progress=False, label=model_label)
    if cache is not None:
        cache[key] = grid
    return grid


def surface_range(grid: LossGrid, pad: float = 0.05) -> tuple[float, float]:
    """The z range :func:`make_landscape_explorer` draws ``grid`` in: its own min to max, widened by ``pad`` of the
    difference on each side (``pad=0``: the colour range). A perfectly flat grid gets a sliver around its value, so
    the range is never empty."""
    lo, hi = float(grid.losses.min()), float(grid.losses.max())
    margin = pad * (hi - lo) if hi > lo else 1e-6 * max(1.0, abs(hi))
    return lo - margin, hi + margin


def _range_note(grid: LossGrid) -> str:
    """The explorer's subtitle: how much the surface varies, and that its z axis and colours are fitted to it."""
    return (f"this surface varies by {float(grid.losses.max() - grid.losses.min()):.2g} (max − min): its z axis "
            "and colours span that range alone;</sup><br><sup>compare heights across models in the numbers, not by eye")


def make_landscape_explorer(models: Mapping[str, BertForSequenceClassification], batches,
                            steps_options: Sequence[int] = (5, 7, 9, 11, 15, 21), steps: int | None = None,
                            span: float = 1.0, loss_fn: Callable | None = None):
    """An interactive loss surface: ``(ui, fig, controls)``.

    ``models``: label -> model (e.g. the three :func:`with_quant` versions). Controls (ipywidgets):
    ``"model"`` (which version), ``"module"`` (which weight of a layer, :data:`PERTURBABLE`), ``"layers"``
    (the two Transformer layers whose weights are x and y), ``"steps"`` (grid resolution). Each change
    recomputes the grid (memoised) and redraws ``fig`` (a plotly FigureWidget) in one batch update.

    The z axis and the colours span the shown surface's own range (:func:`surface_range`), and the title gives
    that range: a full-precision surface that varies by 1e-5 shows its shape instead of a flat sheet, and the
    title says how small it is (heights across models compare in the numbers, not by eye).
    """
    if not models:
        raise ValueError("make_landscape_explorer: no models")
    n_layers = min(m.config.num_hidden_layers for m in models.values())
    if n_layers < 2:
        raise ValueError("the explorer perturbs one weight in each of two layers: the models need >= 2 layers")
    steps_options = [int(s) for s in steps_options]
    for s in steps_options:
        grid_coords(s)  # validates
    steps = steps_options[len(steps_options) // 2] if steps is None else steps
    if steps not in steps_options:
        raise ValueError(f"steps={steps} is not one of steps_options {steps_options}")
    batches = _as_batches(batches)
    pairs = [(f"layers {i + 1} & {j + 1}", (i, j)) for i in range(n_layers) for j in range(i + 1, n_layers)]
    controls = {
        "model": W.ToggleButtons(options=list(models), value=next(iter(models)), description="model"),
        "module": W.Dropdown(options=list(PERTURBABLE), value="value", description="weight"),
        "layers": W.Dropdown(options=pairs, value=pairs[0][1], description="layers"),
        "steps": W.SelectionSlider(options=steps_options, value=steps, description="grid"),
    }
    fig = Figure(data=[go.Surface(x=[0.0, 1.0], y=[0.0, 1.0], z=[[0.0, 0.0], [0.0, 0.0]],
                                           colorscale="Viridis", colorbar=dict(title="loss"))])
    # a fixed box: plotly's default ("auto" -> "data") draws z to scale with x and y in [-1, 1], so a loss that
    # varies by 1e-5 would be a flat sheet whatever the z range
    fig.update_layout(height=560, margin=dict(l=10, r=10, t=80, b=10),
                      scene=dict(aspectmode="manual", aspectratio=dict(x=1, y=1, z=0.8)))
    cache: dict = {}

    def update(*_):
        c = {k: w.value for k, w in controls.items()}
        grid = explorer_grid(models, batches, c["model"], c["module"], c["layers"], c["steps"], span, loss_fn, cache)
        lo, hi = surface_range(grid)
        with fig.batch_update():
            fig.data[0].x = grid.xs
            fig.data[0].y = grid.ys
            fig.data[0].z = grid.surface_z
            fig.data[0].name = c["model"]
            fig.data[0].cmin, fig.data[0].cmax = surface_range(grid, pad=0.0)
            fig.layout.scene.zaxis.update(range=[lo, hi], autorange=False)
            fig.layout.title = (f"{c['model']}: loss at W + x·mean|W|·1 ({_short(grid.names[0])}), "
                                f"W + y·mean|W|·1 ({_short(grid.names[1])}); centre {grid.center_loss:.4f}"
                                f"<br><sup>{_range_note(grid)}</sup>")
            titles = _axis_titles(grid)  # only the titles: a camera the reader has rotated stays as it is
            fig.layout.scene.xaxis.title.text = titles["xaxis_title"]
            fig.layout.scene.yaxis.title.text = titles["yaxis_title"]
            fig.layout.scene.zaxis.title.text = titles["zaxis_title"]

    for w in controls.values():
        w.observe(update, names="value")
    update()
    ui = W.VBox([W.HBox([controls["model"]]), W.HBox([controls["module"], controls["layers"], controls["steps"]]),
                 fig])
    return ui, fig, controls


# ----------------------------------------------------------------------------------------------------------
# a model to look at: the fine-tuned SST-2 checkpoint, or a tiny BERT trained in seconds


def train_briefly(model: nn.Module, batches, steps: int, lr: float = 2e-3, weight_decay: float = 0.0,
                  loss_fn: Callable | None = None, seed: int = 0, progress: bool = False) -> list[float]:
    """A few AdamW steps over ``batches`` in order (cycling), gradient norm clipped at 1. Returns the losses.

    For the chapter's tiny model only (seconds, no checkpoints): real fine-tuning is ``binlab train``.
    The model is left in eval mode.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    loss_fn = loss_fn or default_loss
    batches = _as_batches(batches)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    bar = _progress(steps, "train", progress)
    try:
        for step in range(steps):
            loss = loss_fn(model, batches[step % len(batches)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            bar.update(1)
    finally:
        bar.close()
        model.eval()
    return losses


@dataclass
class LandscapeSetup:
    """What the chapter looks at: a full-precision model, training batches, and where they came from."""

    model: BertForSequenceClassification
    batches: list  # training batches for the landscapes and the Hessians
    tokenizer: object
    description: str  # printed by the chapter: which model, which data, and why
    source: str  # "checkpoint" or "tiny"


def _accuracy(model: nn.Module, batches) -> float:
    right = total = 0
    with _eval_mode(model), torch.no_grad():
        for b in batches:
            logits = model(b["input_ids"], attention_mask=b.get("attention_mask"),
                           token_type_ids=b.get("token_type_ids")).logits
            right += int((logits.argmax(-1) == b["labels"]).sum())
            total += int(b["labels"].numel())
    return right / max(total, 1)


def _encode(tokenizer, split, batch_size: int, max_length: int) -> list[dict]:
    return list(glue_batches(split, tokenizer, batch_size=batch_size, max_length=max_length))


def setup_sst2(model_dir: str | os.PathLike | None = None, fast: bool | None = None, *, num_eval: int = 64,
               batch_size: int = 32, max_length: int = 64, num_train: int = 512, train_steps: int = 150,
               lr: float = 1e-3, seed: int = 0) -> LandscapeSetup:
    """The chapter's model and data.

    * Full mode with a checkpoint (``model_dir``, else ``$BINLAB_SST2_MODEL``: an HF-format directory, or the
      output folder of ``binlab train``, whose ``best_model/`` is used): that fine-tuned model, loaded full
      precision (its latent weights; a quantized checkpoint's QuantConfig is replaced by ``fp``), its
      tokenizer, and ``num_eval`` SST-2 training examples (``load_glue("sst2")``: local GLUE if
      ``$BINLAB_GLUE_DIR`` has it, else synthetic -- the description says which).
    * Otherwise (fast mode, or no checkpoint): a tiny BERT (hidden 32, 3 layers, MiniLM's tokenizer) trained
      for ``train_steps`` AdamW steps (learning rate ``lr``) on ``num_train`` synthetic SST-2 sentences, a
      few seconds on a CPU;
      the description says why this path was taken.

    ``fast`` defaults to :func:`binlab.settings.fast_mode`.
    """
    fast = fast_mode() if fast is None else bool(fast)
    env_dir = os.environ.get(SST2_MODEL_ENV) or None
    chosen = model_dir if model_dir is not None else env_dir
    where = "model_dir" if model_dir is not None else f"${SST2_MODEL_ENV}"
    if chosen is None and (project_root() / DEFAULT_SST2_RUN / "best_model" / "config.json").is_file():
        chosen, where = project_root() / DEFAULT_SST2_RUN, f"found {DEFAULT_SST2_RUN}/ in the checkout"

    if chosen is not None and not fast:
        run_dir = Path(chosen).expanduser()
        if not (run_dir / "config.json").is_file() and (run_dir / "best_model" / "config.json").is_file():
            run_dir = run_dir / "best_model"  # the output folder of `binlab train`: its best dev checkpoint
        path = resolve_model_dir(run_dir)
        model = load_pretrained(path, quant="fp", verbose=False)
        tokenizer = BertTokenizer.from_dir(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntheticDataWarning)
            split = load_glue("sst2", "train", max_examples=num_eval)
        batches = _encode(tokenizer, split, batch_size, max_length)
        c = model.config
        description = (f"Fine-tuned checkpoint {path} ({where}): {c.num_hidden_layers} layers, hidden "
                       f"{c.hidden_size}, loaded full precision. Loss on {split.describe()}. "
                       f"Accuracy on these examples: {_accuracy(model, batches):.1%}.")
        return LandscapeSetup(model, batches, tokenizer, description, "checkpoint")

    if fast:
        why = "Fast mode (BINLAB_FAST=1)" + (f": {where} is set but ignored" if chosen is not None else "")
    else:
        why = (f"No fine-tuned SST-2 checkpoint: none given (model_dir= or ${SST2_MODEL_ENV}) and no "
               f"{DEFAULT_SST2_RUN}/ in the checkout (`{SST2_TRAIN_COMMAND}` makes it). Falling back to the "
               "fast-mode model")
    tokenizer = BertTokenizer.from_dir(resolve_model_dir(None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntheticDataWarning)
        split = load_glue("sst2", "train", source="synthetic", max_examples=max(num_train, num_eval), seed=seed)
    # tiny tensors: one thread beats several (80 s against 3 s on two busy cores)
    with torch_threads(1), torch.random.fork_rng(devices=[]):
        model = tiny_bert(2, vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3,
                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=max_length,
                          dropout=0.0, seed=seed)
        train = _encode(tokenizer, split, batch_size, max_length)
        losses = train_briefly(model, train, train_steps, lr=lr, seed=seed)
    batches = _encode(tokenizer, split[:num_eval], batch_size, max_length)
    description = (f"{why}. A tiny BERT (hidden 32, 3 layers, 4 heads, MiniLM's WordPiece vocabulary) trained "
                   f"for {train_steps} AdamW steps on {len(split)} SYNTHETIC SST-2 sentences (binlab's generator, "
                   f"not GLUE data): final training loss {losses[-1]:.3f}, accuracy on the {num_eval} examples "
                   f"used below {_accuracy(model, batches):.1%}.")
    return LandscapeSetup(model, batches, tokenizer, description, "tiny")
