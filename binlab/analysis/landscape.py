"""Loss landscapes and top Hessian eigenvalues of full-precision, ternary and binary BERTs (BinaryBERT §2).

BinaryBERT (Bai et al., ACL 2021; methods.md §2.5) explains why a binary BERT is hard to train directly
with two measurements, both reproduced here on binlab's BERT:
1. **Loss surfaces.** Perturb the *latent* full-precision weights of two matrices (the paper: the value
   layers of Transformer layers 1 and 2) along all-ones directions scaled by their mean absolute value,
   and evaluate the training loss on a grid::

       W1 <- W1 + x * mean|W1| * 1,     W2 <- W2 + y * mean|W2| * 1,     x, y in [-span, span]

   :func:`loss_grid` does it for one model, :func:`landscapes` for the full-precision, ternary (``w2a8``:
   TWN weights) and binary (``w1a8``: BWN weights) versions of the *same* latent weights. Each version is a
   copy made by :func:`with_quant` (same weights, another :class:`~binlab.quant.config.QuantConfig`). The paper
   finds the full-precision surface flat, the ternary one tilted but locally convex, and the binary one
   higher and more irregular. The weights are restored bit for bit afterwards, also when the loss raises.

2. **Top Hessian eigenvalues.** The steepness of the loss around the weights, lambda_max of the Hessian of
   the training loss restricted to one module's weights, by power iteration (:func:`power_iteration`) on
   Hessian-vector products computed by double backward (Pearlmutter's trick, :func:`make_hvp`). As in
   Q-BERT and BinaryBERT it is computed separately per module type (:data:`MODULE_TYPES`: MHA-QK, MHA-V,
   MHA-O, FFN-Mid, FFN-Out) and per layer (:func:`hessian_eigenvalues`). The paper's Taylor argument: near
   a minimum (gradient ~ 0), with epsilon = Q(W) - W the quantization error,

       loss(Q(W)) - loss(W) ~ 1/2 epsilon^T H epsilon <= 1/2 lambda_max ||epsilon||^2

   (the paper drops the 1/2), so a larger lambda_max means a larger loss increase for the same error.

**What the Hessian of a quantized model is.** The quantizers' straight-through estimators (identity for
BWN/TWN weights, clipped identity for the 8-bit activations) are part of the backward pass, and double
backward differentiates *that* backward pass. The result is the Jacobian of the STE gradient field, i.e. the
Hessian of the loss as a function of the *quantized* weights, evaluated at Q(W), with the scales alpha and
the rounding held fixed: the Hessian of the surrogate the optimizer actually follows, not of the piecewise
constant loss (whose true Hessian is 0 almost everywhere). Because the activation STE is not the gradient
of any function, this matrix need not be exactly symmetric; power iteration still finds its dominant
eigenvalue, and the Rayleigh quotient v^T H v only sees its symmetric part.

Conventions: ``losses[i, j]`` is the loss at ``(xs[i], ys[j])`` (matrix indexing; plotly's surfaces want
the transpose, :attr:`LossGrid.surface_z`). Losses are evaluated in ``eval()`` mode (no dropout) under
``torch.no_grad()``, averaged over the examples of the batches given. Power iteration returns the
eigenvalue of largest *magnitude* (the Rayleigh quotient, with its sign).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from binlab.model import BertForSequenceClassification
from binlab.quant import quantizers as Q
from binlab.quant.config import QuantConfig
from binlab.train.trainer import default_loss

__all__ = [
    "LANDSCAPE_MODELS", "MODULE_TYPES", "PERTURBABLE", "layer_param", "value_layers",
    "with_quant", "dataset_loss", "get_parameters", "perturbation_direction",
    "preserved", "LossGrid", "grid_coords", "loss_grid", "landscapes", "ones_alignment",
    "EigenResult", "power_iteration", "make_hvp", "top_hessian_eigenvalue", "module_param_names",
    "hessian_eigenvalues", "eigenvalue_table",
]

#: The three versions of one model the paper compares: label -> QuantConfig preset.
LANDSCAPE_MODELS: dict[str, str] = {"full precision": "fp", "ternary": "w2a8", "binary": "w1a8"}

#: Module types of BinaryBERT's eigenvalue table -> the weights (inside one Transformer layer) they cover.
MODULE_TYPES: dict[str, tuple[str, ...]] = {
    "MHA-QK": ("attention.query.weight", "attention.key.weight"),
    "MHA-V": ("attention.value.weight",),
    "MHA-O": ("attention_output.dense.weight",),
    "FFN-Mid": ("ffn.intermediate.weight",),
    "FFN-Out": ("ffn.output.weight",),
}

#: Single weight matrices of a Transformer layer that a landscape can perturb (the explorer's choices).
PERTURBABLE: dict[str, str] = {
    "value": "attention.value.weight",
    "query": "attention.query.weight",
    "key": "attention.key.weight",
    "attention output": "attention_output.dense.weight",
    "FFN in": "ffn.intermediate.weight",
    "FFN out": "ffn.output.weight",
}



def layer_param(layer: int, module: str = "value") -> str:
    """The parameter name of ``module`` (a key of :data:`PERTURBABLE`) in Transformer layer ``layer`` (0-based).

    ``layer_param(0)`` is ``"bert.encoder.layer.0.attention.value.weight"``.
    """
    if module not in PERTURBABLE:
        raise ValueError(f"unknown module {module!r}; choose one of {list(PERTURBABLE)}")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be a non-negative int (0-based), got {layer!r}")
    return f"bert.encoder.layer.{layer}.{PERTURBABLE[module]}"


def value_layers(first: int = 0, second: int = 1) -> tuple[str, str]:
    """The paper's choice: the value weights of Transformer layers 1 and 2 (0-based ``first``, ``second``)."""
    return layer_param(first, "value"), layer_param(second, "value")


# ----------------------------------------------------------------------------------------------------------
# one set of latent weights, several quantization configs


def with_quant(model: BertForSequenceClassification, quant: QuantConfig | str) -> BertForSequenceClassification:
    """A copy of ``model`` that quantizes with ``quant`` (a QuantConfig or a preset name such as ``"w1a8"``).

    Every tensor the two models both have (the latent weights, biases, LayerNorms, classifier; activation
    quantizer state such as PACT clips when both configs have it) is copied; quantizer state that only the
    new config has keeps its initial value. ``model`` is not changed, and the global RNG is left as it was
    (the copy's throwaway random initialisation draws from a forked RNG).
    """
    if not isinstance(model, BertForSequenceClassification):
        raise TypeError(f"with_quant expects a binlab BertForSequenceClassification, got {type(model).__name__}")
    if isinstance(quant, str):
        quant = QuantConfig.preset(quant)
    if not isinstance(quant, QuantConfig):
        raise TypeError(f"quant must be a QuantConfig or a preset name, got {type(quant).__name__}")
    config = dataclasses.replace(model.config, quant=quant)
    with torch.random.fork_rng(devices=[]):
        clone = BertForSequenceClassification(config)
    ref = next(model.parameters())
    clone.to(device=ref.device, dtype=ref.dtype)
    src = model.state_dict()
    with torch.no_grad():
        for key, t in clone.state_dict().items():
            if key in src and src[key].shape == t.shape:
                t.copy_(src[key])
    clone.train(model.training)
    return clone


# ----------------------------------------------------------------------------------------------------------
# losses


def _as_batches(batches) -> list:
    if batches is None:
        raise ValueError("no batches given: pass a batch (a dict of tensors) or a list of batches")
    if isinstance(batches, Mapping):
        return [batches]
    out = list(batches)
    if not out:
        raise ValueError("the list of batches is empty")
    return out


def _batch_size(batch) -> int:
    if isinstance(batch, Mapping) and isinstance(batch.get("input_ids"), Tensor):
        return int(batch["input_ids"].shape[0])
    return 1


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def dataset_loss(model: nn.Module, batches, loss_fn: Callable | None = None) -> float:
    """The mean loss over the examples of ``batches`` (one batch or a list), in eval mode, without gradients.

    ``loss_fn(model, batch) -> scalar tensor`` (the batch mean) defaults to :func:`~binlab.train.trainer.default_loss`; each
    batch counts with its number of examples (``batch["input_ids"].shape[0]``, or 1 for other batches).
    """
    loss_fn = loss_fn or default_loss
    batches = _as_batches(batches)
    total, count = 0.0, 0
    # the grid evaluates the same finite batches many times: skip the quantizers' per-call NaN check
    with _eval_mode(model), torch.no_grad(), Q.finite_checks(False):
        for b in batches:
            n = _batch_size(b)
            total += float(loss_fn(model, b)) * n
            count += n
    return total / count


# ----------------------------------------------------------------------------------------------------------
# the perturbation


def get_parameters(model: nn.Module, names: str | Sequence[str]) -> list[nn.Parameter]:
    """The parameters of ``model`` called ``names`` (as in ``model.named_parameters()``), in that order.

    Unknown names raise ``ValueError`` with the closest existing names; repeated names too.
    """
    if isinstance(names, str):
        names = (names,)
    names = list(names)
    if not names:
        raise ValueError("no parameter names given")
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"parameter names must be strings, got {n!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"parameter names must be distinct, got {names}")
    params = dict(model.named_parameters())
    unknown = [n for n in names if n not in params]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, list(params), n=3, cutoff=0.6)
            hints.append(f"{n!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        example = next((k for k in params if k.endswith("value.weight")), next(iter(params), "?"))
        raise ValueError(f"unknown parameter name(s): {', '.join(hints)}. Names look like {example!r}; "
                         "list(dict(model.named_parameters())) lists them all.")
    return [params[n] for n in names]


def perturbation_direction(W: Tensor) -> Tensor:
    """The paper's direction for W: an all-ones tensor scaled by the mean ABSOLUTE value, mean|W| * 1.

    Moving x units along it shifts every entry by x * mean|W|, so x = 1 is a shift as large as a typical
    weight, whatever the layer's scale.
    """
    W = W.detach()
    return W.abs().mean() * torch.ones_like(W)


@contextlib.contextmanager
def preserved(params: Iterable[Tensor]):
    """Save copies of ``params``; on exit (normal or by an exception) copy them back, bit for bit.

    Yields the saved copies. Restoring from a copy, not by subtracting the perturbation again, is what makes
    it exact: (w + d) - d is not always w in floating point.
    """
    params = list(params)
    saved = [p.detach().clone() for p in params]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


@dataclass
class LossGrid:
    """A loss surface: ``losses[i, j]`` is the loss at ``(xs[i], ys[j])``."""

    xs: np.ndarray  # (n,) multiples of mean|W1|
    ys: np.ndarray  # (n,) multiples of mean|W2|
    losses: np.ndarray  # (n, n)
    names: tuple[str, str]  # the two perturbed parameters
    center_loss: float  # the unperturbed loss, evaluated before any perturbation
    label: str = ""

    @property
    def center(self) -> float:
        """The grid's loss at (0, 0): equal to :attr:`center_loss` (the tests check it)."""
        i = int(np.argmin(np.abs(self.xs)))
        j = int(np.argmin(np.abs(self.ys)))
        return float(self.losses[i, j])

    @property
    def surface_z(self) -> np.ndarray:
        """``losses.T``: plotly's ``Surface(x=xs, y=ys, z=...)`` wants ``z[row of y][column of x]``."""
        return self.losses.T


def grid_coords(steps: int, span: float = 1.0) -> np.ndarray:
    """``steps`` evenly spaced points in [-span, span] whose middle one is exactly 0.

    ``steps`` must be an odd int >= 3 (odd, so that the unperturbed model is a grid point).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps (the grid size) must be an int, got {steps!r}")
    steps = int(steps)
    if steps < 3 or steps % 2 == 0:
        raise ValueError(f"steps (the grid size) must be an odd number >= 3, so that (0, 0), the unperturbed "
                         f"model, is on the grid; got {steps}")
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not math.isfinite(span) or span <= 0:
        raise ValueError(f"span must be a positive finite number, got {span!r}")
    xs = np.linspace(-float(span), float(span), steps)
    xs[steps // 2] = 0.0
    return xs


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def loss_grid(model: nn.Module, batches, names: Sequence[str] | None = None, steps: int = 11, span: float = 1.0,
              loss_fn: Callable | None = None, progress: bool = True, label: str = "") -> LossGrid:
    """The training loss on a ``steps`` x ``steps`` grid of perturbations of two weight matrices.

    ``losses[i, j]`` is the loss with ``W1 + xs[i] * mean|W1| * 1`` and ``W2 + ys[j] * mean|W2| * 1``, where
    W1, W2 are the parameters called ``names`` (default: the value weights of layers 1 and 2,
    :func:`value_layers`) and ``xs = ys =`` :func:`grid_coords` ``(steps, span)``. The latent weights are
    perturbed, so a quantized model quantizes the perturbed weights in its forward pass. ``batches``: one
    batch or a list; ``loss_fn(model, batch)`` as in :func:`dataset_loss`. A tqdm bar shows the progress.

    The weights are restored exactly afterwards, also if the loss raises; the model is left in the training
    mode it was in.
    """
    names = tuple(value_layers() if names is None else ([names] if isinstance(names, str) else names))
    if len(names) != 2:
        raise ValueError(f"a loss surface perturbs exactly 2 parameters (x and y), got {len(names)}: {names}")
    coords = grid_coords(steps, span)
    params = get_parameters(model, names)
    batches = _as_batches(batches)
    n = len(coords)
    losses = np.empty((n, n), dtype=np.float64)
    with _eval_mode(model), preserved(params) as saved:
        center = dataset_loss(model, batches, loss_fn)  # first: also initialises data-dependent quantizers
        d1, d2 = (perturbation_direction(s) for s in saved)
        bar = _progress(n * n, f"loss grid {label}".strip(), progress)
        try:
            for i, x in enumerate(coords):
                with torch.no_grad():
                    params[0].copy_(torch.add(saved[0], d1, alpha=float(x)))
                for j, y in enumerate(coords):
                    with torch.no_grad():
                        params[1].copy_(torch.add(saved[1], d2, alpha=float(y)))
                    losses[i, j] = dataset_loss(model, batches, loss_fn)
                    bar.update(1)
        finally:
            bar.close()
    return LossGrid(coords.copy(), coords.copy(), losses, names, center, label)


def landscapes(model: BertForSequenceClassification, batches, names: Sequence[str] | None = None, steps: int = 11,
               span: float = 1.0, models: Mapping[str, QuantConfig | str] | None = None,
               loss_fn: Callable | None = None, progress: bool = True) -> dict[str, LossGrid]:
    """:func:`loss_grid` for several quantized versions of ``model``'s latent weights.

    ``models`` maps a label to a QuantConfig or preset; default :data:`LANDSCAPE_MODELS` (full precision,
    ternary ``w2a8``, binary ``w1a8``). Each version is a :func:`with_quant` copy; ``model`` is untouched.
    """
    models = LANDSCAPE_MODELS if models is None else models
    return {label: loss_grid(with_quant(model, quant), batches, names, steps, span, loss_fn, progress, label)
            for label, quant in models.items()}


def ones_alignment(model: BertForSequenceClassification, batches, layers: Sequence[int] = (0, 1)) -> dict[int, float]:
    """How much the tokens entering each layer of ``layers`` point along the all-ones vector: mean |cos(x, 1)|.

    Why it matters for the landscape: adding c * 1 1^T to a full-precision weight changes its output by
    ``(W + c 1 1^T) x - W x = c (1^T x) 1``, which vanishes when the entries of x sum to zero. The input of
    a layer is a LayerNorm output, gamma * x_hat + beta with sum(x_hat) = 0; with gamma ~ 1 and beta ~ 0 its
    entries sum to almost nothing, and the all-ones direction barely moves a full-precision model. A
    random direction in D dimensions has E|cos| ~ sqrt(2 / (pi D)) for comparison. Averaged over the
    non-padding tokens of ``batches``, in eval mode.
    """
    batches = _as_batches(batches)
    n_layers = model.config.num_hidden_layers
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise ValueError(f"layers must be ints in [0, {n_layers}), got {layer!r}")
    sums = {layer: 0.0 for layer in layers}
    count = 0
    with _eval_mode(model), torch.no_grad():
        for b in batches:
            out = model(b["input_ids"], attention_mask=b.get("attention_mask"),
                        token_type_ids=b.get("token_type_ids"), output_hidden_states=True)
            mask = b.get("attention_mask")
            keep = torch.ones_like(b["input_ids"], dtype=torch.bool) if mask is None else mask.bool()
            for layer in layers:
                x = out.hidden_states[layer][keep]  # (tokens, D): what enters layer `layer`
                cos = x.sum(-1) / (x.norm(dim=-1) * math.sqrt(x.shape[-1])).clamp_min(1e-12)
                sums[layer] += float(cos.abs().sum())
            count += int(keep.sum())
    return {layer: s / count for layer, s in sums.items()}


# ----------------------------------------------------------------------------------------------------------
# power iteration on Hessian-vector products


@dataclass
class EigenResult:
    """What :func:`power_iteration` found."""

    eigenvalue: float  # the Rayleigh quotient v^T H v at the last iterate (||v|| = 1), with its sign
    iterations: int  # matrix-vector products used
    converged: bool  # relative change of the eigenvalue <= tol before max_iter ran out
    history: list[float] = field(default_factory=list)  # the eigenvalue estimate after each product


def _listify(v) -> tuple[list[Tensor], bool]:
    if isinstance(v, Tensor):
        return [v], True
    v = list(v)
    if not v or not all(isinstance(t, Tensor) for t in v):
        raise TypeError("the vector must be a tensor or a non-empty list of tensors")
    return v, False


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def power_iteration(matvec: Callable, v0, max_iter: int = 100, tol: float = 1e-3) -> tuple[EigenResult, object]:
    """The dominant eigenvalue (largest in magnitude) of a symmetric operator, from matrix-vector products only.

    ``matvec(v) -> H v``; ``v`` (and ``v0``) is a tensor or a list of tensors (one per parameter)::

        v <- v0 / ||v0||
        repeat:  w = H v
                 lambda = v . w            (the Rayleigh quotient, ||v|| = 1)
                 stop if |lambda - lambda_prev| <= tol |lambda|
                 v <- w / ||w||            (normalise every step, or the vector over/underflows)

    Returns ``(EigenResult, v)`` with the last unit vector ``v`` (same structure as ``v0``). The eigenvalue
    keeps its sign: a dominant negative eigenvalue comes back negative. Convergence is geometric with ratio
    |lambda_2 / lambda_1|; ``converged`` says whether ``tol`` was met within ``max_iter`` products.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    v, single = _listify(v0)
    norm = math.sqrt(_dot(v, v))
    if not math.isfinite(norm) or norm == 0:
        raise ValueError("the start vector v0 must be finite and nonzero")
    v = [t.detach() / norm for t in v]
    history: list[float] = []
    converged = False
    for _ in range(max_iter):
        w, _ = _listify(matvec(v[0] if single else v))
        if len(w) != len(v) or any(a.shape != b.shape for a, b in zip(w, v)):
            raise ValueError("matvec(v) must return tensors of the same shapes as v")
        w = [t.detach() for t in w]
        lam = _dot(v, w)
        if not math.isfinite(lam):
            raise FloatingPointError(f"the Rayleigh quotient became {lam} after {len(history)} products")
        history.append(lam)
        if len(history) > 1 and abs(lam - history[-2]) <= tol * abs(lam):
            converged = True
            break
        wnorm = math.sqrt(_dot(w, w))
        if wnorm == 0:  # H v = 0: v is in the null space, the eigenvalue estimate is 0
            converged = True
            break
        v = [t / wnorm for t in w]
    result = EigenResult(history[-1], len(history), converged, history)
    return result, (v[0] if single else v)


def make_hvp(model: nn.Module, batches, params: Sequence[Tensor], loss_fn: Callable | None = None) -> Callable:
    """``matvec(v) -> H v`` for the Hessian of the mean loss over ``batches`` w.r.t. ``params``.

    Pearlmutter's trick with double backward: g = dL/dp is computed once per batch with
    ``create_graph=True`` (the graph of the gradient is kept), then each product is H v = d(g . v)/dp, one
    more backward pass through that graph. For a quantized model the gradient is the STE gradient, so H is the
    Hessian of the straight-through surrogate (module docstring). The model's mode is not changed here:
    call it in ``eval()`` mode for a deterministic H.
    """
    loss_fn = loss_fn or default_loss
    batches = _as_batches(batches)
    params = list(params)
    sizes = [_batch_size(b) for b in batches]
    total = sum(sizes)
    grads = []
    with torch.enable_grad():
        for b, n in zip(batches, sizes):
            loss = loss_fn(model, b) * (n / total)
            g = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            grads.append(g)

    def matvec(v):
        vs, single = _listify(v)
        out = [torch.zeros_like(p) for p in params]
        for g in grads:
            pairs = [(gi, vi) for gi, vi in zip(g, vs) if gi is not None and gi.requires_grad]
            if not pairs:  # the loss is linear in these parameters: no curvature
                continue
            hv = torch.autograd.grad([gi for gi, _ in pairs], params, grad_outputs=[vi for _, vi in pairs],
                                     retain_graph=True, allow_unused=True)
            for k, h in enumerate(hv):
                if h is not None:
                    out[k] += h.detach()
        return out[0] if single else out

    return matvec


@contextlib.contextmanager
def _grad_only_for(model: nn.Module, params: Sequence[Tensor]):
    """requires_grad only on ``params`` (less graph to keep), restored on exit."""
    keep = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def top_hessian_eigenvalue(model: nn.Module, batches, names: str | Sequence[str], loss_fn: Callable | None = None,
                           max_iter: int = 50, tol: float = 1e-3, seed: int = 0) -> EigenResult:
    """The dominant eigenvalue of the Hessian of the training loss w.r.t. the parameters called ``names``.

    Power iteration (:func:`power_iteration`) on :func:`make_hvp` products, from a random start drawn with
    ``torch.Generator().manual_seed(seed)`` (same seed, same answer), in eval mode (no dropout), stopping at
    relative change ``tol`` or after ``max_iter`` products. The model's weights, mode and ``requires_grad``
    flags are left as they were. Several names give the Hessian of the joint block (MHA-QK: query and key).
    """
    params = get_parameters(model, names)
    gen = torch.Generator().manual_seed(int(seed))
    v0 = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype) for p in params]
    with _eval_mode(model), _grad_only_for(model, params):
        matvec = make_hvp(model, batches, params, loss_fn)
        result, _ = power_iteration(matvec, v0, max_iter=max_iter, tol=tol)
    return result


def module_param_names(layer: int, module_type: str) -> tuple[str, ...]:
    """The weights of a :data:`MODULE_TYPES` entry in Transformer layer ``layer`` (0-based)."""
    if module_type not in MODULE_TYPES:
        raise ValueError(f"unknown module type {module_type!r}; choose from {list(MODULE_TYPES)}")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be a non-negative int (0-based), got {layer!r}")
    return tuple(f"bert.encoder.layer.{layer}.{suffix}" for suffix in MODULE_TYPES[module_type])


def hessian_eigenvalues(model: BertForSequenceClassification, batches, layers: Sequence[int] | None = None,
                        module_types: Sequence[str] | None = None, loss_fn: Callable | None = None,
                        max_iter: int = 50, tol: float = 1e-3, seed: int = 0, progress: bool = True,
                        label: str = "") -> dict[str, list[EigenResult]]:
    """:func:`top_hessian_eigenvalue` for every module type (default all of :data:`MODULE_TYPES`) in every
    layer of ``layers`` (default all): ``{module_type: [result for each layer]}``."""
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers)) if layers is None else list(layers)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise ValueError(f"layers must be ints in [0, {n_layers}), got {layer!r}")
    module_types = list(MODULE_TYPES) if module_types is None else list(module_types)
    for t in module_types:
        if t not in MODULE_TYPES:
            raise ValueError(f"unknown module type {t!r}; choose from {list(MODULE_TYPES)}")
    out: dict[str, list[EigenResult]] = {t: [] for t in module_types}
    bar = _progress(len(layers) * len(module_types), f"Hessian {label}".strip(), progress)
    try:
        for layer in layers:
            for t in module_types:
                out[t].append(top_hessian_eigenvalue(model, batches, module_param_names(layer, t), loss_fn,
                                                     max_iter=max_iter, tol=tol, seed=seed))
                bar.update(1)
    finally:
        bar.close()
    return out


def eigenvalue_table(models: Mapping[str, BertForSequenceClassification], batches, **kwargs) -> list[dict]:
    """BinaryBERT's table: for each model and module type, lambda_max averaged over layers.

    ``models``: label -> model (e.g. ``{label: with_quant(m, preset) for ...}``); ``kwargs`` go to
    :func:`hessian_eigenvalues`. Returns rows with ``"model"``, ``"module"``, ``"mean"`` / ``"std"`` (over
    layers, of the dominant eigenvalue with its sign), ``"mean_abs"`` / ``"std_abs"`` (of its magnitude, the
    spectral norm ||H||_2: the largest curvature in any direction, up or down), ``"per_layer"`` and
    ``"converged"`` (how many layers met the tolerance, as ``"k/n"``).
    """
    rows = []
    for label, model in models.items():
        per_type = hessian_eigenvalues(model, batches, label=label, **kwargs)
        for t, results in per_type.items():
            values = np.array([r.eigenvalue for r in results])
            rows.append({"model": label, "module": t, "mean": float(values.mean()), "std": float(values.std()),
                         "mean_abs": float(np.abs(values).mean()), "std_abs": float(np.abs(values).std()),
                         "per_layer": values.tolist(),
                         "converged": f"{sum(r.converged for r in results)}/{len(results)}"})
    return rows
