"""GLUE metrics, written out so that each one reads like its formula.

Every function takes two 1-D sequences of the same length (lists, NumPy arrays or torch tensors) and
returns a plain ``float``. Scores are fractions (accuracy 0.913, not 91.3); the papers print them
times 100. :func:`glue_average` does not care which scale it is given, as long as it is one scale.

* :func:`accuracy`          fraction of predictions equal to the label.
* :func:`f1`                binary F1 of the positive class 1 (MRPC, QQP).
* :func:`matthews_corrcoef` Matthews correlation (CoLA), any number of classes.
* :func:`pearson`, :func:`spearman`  correlations (STS-B); Spearman is Pearson on the ranks.
* :func:`compute_metrics`   the metrics a GLUE task reports, plus ``"score"``: the one number that
  model selection uses (methods.md §1: accuracy for MNLI/MRPC/SST-2/QQP/QNLI/RTE/WNLI, MCC for CoLA,
  (Pearson + Spearman)/2 for STS-B).
* :func:`glue_average`      the GLUE average, both ways the papers compute it (methods.md §4.6).

Undefined cases are decided on purpose: a correlation or MCC whose denominator is zero (for instance
a model that predicts one constant for every example, which binarized models do) is reported as
0.0, "no correlation", instead of NaN, so that best-dev selection and averages keep working.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from binlab.data.glue import TaskSpec, get_task

__all__ = [
    "accuracy",
    "f1",
    "matthews_corrcoef",
    "pearson",
    "spearman",
    "rankdata",
    "compute_metrics",
    "glue_average",
    "AVERAGE_TASKS",
    "AVERAGE_KEYS",
]


# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """A NumPy array from a list, array or torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name}: cannot convert {type(x).__name__} to an array ({exc})") from exc
    if arr.dtype == object:
        raise TypeError(f"{name}: expected numbers, got an array of Python objects")
    return arr


def _pair(preds: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _to_numpy(preds, "preds")
    y = _to_numpy(labels, "labels")
    if p.ndim != 1 or y.ndim != 1:
        raise ValueError(
            f"preds and labels must be 1-D, got shapes {tuple(p.shape)} and {tuple(y.shape)}"
        )
    if len(p) != len(y):
        raise ValueError(f"preds and labels differ in length: {len(p)} vs {len(y)}")
    if len(p) == 0:
        raise ValueError("preds and labels are empty: a metric needs at least one example")
    return p, y


def _class_ids(arr: np.ndarray, name: str) -> np.ndarray:
    """Integer class ids; floats are accepted only when they are whole numbers (1.0 -> 1)."""
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad = arr[~np.isfinite(arr) | (arr != np.round(arr))][0]
            raise ValueError(
                f"{name} must be class ids (whole numbers), found {bad!r}; "
                "for logits take argmax first, or call compute_metrics, which does"
            )
        return arr.astype(np.int64)
    raise TypeError(f"{name} must be class ids, got dtype {arr.dtype}")


def _real(arr: np.ndarray, name: str) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numbers, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinity")
    return out


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def accuracy(preds: Any, labels: Any) -> float:
    """Fraction of examples with ``pred == label``."""
    p, y = _pair(preds, labels)
    p, y = _class_ids(p, "preds"), _class_ids(y, "labels")
    return float(np.mean(p == y))


def _binary(arr: np.ndarray, name: str) -> np.ndarray:
    ids = _class_ids(arr, name)
    bad = ids[(ids != 0) & (ids != 1)]
    if len(bad):
        raise ValueError(f"f1 is binary: {name} must be 0 or 1, found {int(bad[0])}")
    return ids


def f1(preds: Any, labels: Any) -> float:
    """Binary F1 of the positive class 1 (the GLUE convention for MRPC and QQP).

    precision = TP / (TP + FP),  recall = TP / (TP + FN),
    F1 = 2·precision·recall / (precision + recall) = 2·TP / (2·TP + FP + FN).
    With no positive prediction and no positive label (TP = FP = FN = 0), F1 is 0.0.
    """
    p, y = _pair(preds, labels)
    p, y = _binary(p, "preds"), _binary(y, "labels")
    tp = int(np.sum((p == 1) & (y == 1)))
    fp = int(np.sum((p == 1) & (y == 0)))
    fn = int(np.sum((p == 0) & (y == 1)))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2 * tp / denom


def matthews_corrcoef(preds: Any, labels: Any) -> float:
    """Matthews correlation coefficient (CoLA's metric), for any number of classes.

    From the confusion matrix C (rows: true class, columns: predicted class), with
    t_k = Σ_j C[k, j] (examples of class k), p_k = Σ_i C[i, k] (predictions of class k),
    c = trace(C) (correct), s = Σ C (all):
        MCC = (c·s − Σ_k p_k·t_k) / sqrt((s² − Σ_k p_k²) · (s² − Σ_k t_k²))

    For two classes this is (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), which is the
    Pearson correlation of the two 0/1 vectors. +1 perfect, 0 chance, −1 always wrong.
    A zero denominator (all labels or all predictions one class) gives 0.0.
    """
    p, y = _pair(preds, labels)
    p, y = _class_ids(p, "preds"), _class_ids(y, "labels")
    classes = np.union1d(p, y)
    index = {c: i for i, c in enumerate(classes.tolist())}
    k = len(classes)
    conf = np.zeros((k, k), dtype=np.float64)
    for t, q in zip(y.tolist(), p.tolist()):
        conf[index[t], index[q]] += 1
    t_k = conf.sum(axis=1)
    p_k = conf.sum(axis=0)
    c = np.trace(conf)
    s = conf.sum()
    cov_yp = c * s - np.dot(p_k, t_k)
    cov_pp = s * s - np.dot(p_k, p_k)
    cov_yy = s * s - np.dot(t_k, t_k)
    if cov_pp == 0 or cov_yy == 0:
        return 0.0
    return float(cov_yp / math.sqrt(cov_pp * cov_yy))


# --------------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------------


def pearson(preds: Any, labels: Any) -> float:
    """Pearson correlation r = Σ(x−x̄)(y−ȳ) / sqrt(Σ(x−x̄)² · Σ(y−ȳ)²).

    0.0 when either input is constant (the correlation is undefined there). The deviations are divided by their
    largest magnitude first (r does not change), so that their squares neither underflow nor overflow: values of
    1e-300 still correlate.
    """
    p, y = _pair(preds, labels)
    x, y = _real(p, "preds"), _real(y, "labels")
    dx = x - x.mean()
    dy = y - y.mean()
    mx, my = float(np.abs(dx).max(initial=0.0)), float(np.abs(dy).max(initial=0.0))
    if mx == 0.0 or my == 0.0:
        return 0.0
    dx, dy = dx / mx, dy / my  # each now holds a +-1: the sums of squares are >= 1
    sxx = float(np.dot(dx, dx))
    syy = float(np.dot(dy, dy))
    r = float(np.dot(dx, dy)) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))  # rounding can step a hair outside [-1, 1]


def rankdata(x: Any) -> np.ndarray:
    """Ranks 1..n of the values of ``x``; tied values share the mean of their ranks.

    rankdata([10, 30, 20, 20]) -> [1.0, 4.0, 2.5, 2.5]
    """
    a = _real(_to_numpy(x, "x"), "x")
    if a.ndim != 1:
        raise ValueError(f"rankdata expects a 1-D input, got shape {tuple(a.shape)}")
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    start = 0
    n = len(a)
    while start < n:
        end = start
        while end + 1 < n and sorted_a[end + 1] == sorted_a[start]:
            end += 1
        # positions start..end (0-based) hold one tied value: ranks start+1..end+1, mean below
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(preds: Any, labels: Any) -> float:
    """Spearman rank correlation: the Pearson correlation of the ranks (ties get mean ranks)."""
    p, y = _pair(preds, labels)
    return pearson(rankdata(p), rankdata(y))


# --------------------------------------------------------------------------------------------
# Per task
# --------------------------------------------------------------------------------------------


def compute_metrics(task: Any, preds: Any, labels: Any) -> dict[str, float]:
    """The metrics GLUE reports for ``task``, plus ``"score"`` (the model-selection metric).

    ``task`` is a task name (any alias :func:`binlab.data.glue.get_task` accepts) or a ``TaskSpec``.
    ``preds`` are class ids, or logits of shape (N, num_labels), which are arg-maxed; for STS-B,
    real numbers of shape (N,) or (N, 1). ``labels`` are class ids (floats for STS-B).

    Keys: ``accuracy``; ``f1`` and ``acc_and_f1`` (MRPC, QQP); ``mcc`` (CoLA); ``pearson``,
    ``spearman`` and ``corr`` = (pearson + spearman)/2 (STS-B); ``score`` = the value of
    ``spec.selection_metric``.

    >>> compute_metrics("sst2", [1, 0, 1, 1], [1, 0, 0, 1])["accuracy"]
    0.75
    """

    spec = task if isinstance(task, TaskSpec) else get_task(task)
    p = _to_numpy(preds, "preds")
    y = _to_numpy(labels, "labels")
    if spec.is_regression:
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
    else:
        if p.ndim == 2:
            if p.shape[1] != spec.num_labels:
                raise ValueError(
                    f"{spec.display_name}: logits have {p.shape[1]} columns, "
                    f"the task has {spec.num_labels} labels {spec.labels}"
                )
            p = np.argmax(p, axis=1)
        p, y = _pair(p, y)
        p_ids, y_ids = _class_ids(p, "preds"), _class_ids(y, "labels")
        for name, ids in (("preds", p_ids), ("labels", y_ids)):
            bad = ids[(ids < 0) | (ids >= spec.num_labels)]
            if len(bad):
                raise ValueError(
                    f"{spec.display_name}: {name} must be class ids in 0..{spec.num_labels - 1} "
                    f"(labels {spec.labels}), found {int(bad[0])}"
                )
        p, y = p_ids, y_ids

    out: dict[str, float] = {}
    for metric in spec.metrics:
        if metric == "accuracy":
            out["accuracy"] = accuracy(p, y)
        elif metric == "f1":
            out["f1"] = f1(p, y)
        elif metric == "acc_and_f1":
            out["acc_and_f1"] = (accuracy(p, y) + f1(p, y)) / 2
        elif metric == "mcc":
            out["mcc"] = matthews_corrcoef(p, y)
        elif metric == "pearson":
            out["pearson"] = pearson(p, y)
        elif metric == "spearman":
            out["spearman"] = spearman(p, y)
        elif metric == "corr":
            out["corr"] = (pearson(p, y) + spearman(p, y)) / 2
        else:  # pragma: no cover - guarded by TaskSpec's own check
            raise ValueError(f"unknown metric {metric!r}")
    out["score"] = out[spec.selection_metric]
    return out


# --------------------------------------------------------------------------------------------
# GLUE average
# --------------------------------------------------------------------------------------------

#: The nine numbers of the published GLUE tables, in table order (WNLI is left out by all three papers).
AVERAGE_TASKS = ("mnli", "mnli-mm", "qqp", "qnli", "sst-2", "cola", "sts-b", "mrpc", "rte")

#: The two averages and what each one means.
AVERAGE_KEYS = {
    "avg_9_numbers": "mean of 9 numbers, MNLI-m and MNLI-mm counted separately "
    "(BERT, BinaryBERT and BiBERT rows of the tables)",
    "avg_8_tasks": "mean of 8 tasks with MNLI = (MNLI-m + MNLI-mm)/2 (BiT and BiT* rows)",
}


def glue_average(scores: Mapping[str, Any]) -> dict[str, float]:
    """The GLUE average, computed both ways the papers use (methods.md §4.6).

    ``scores`` maps task names to numbers (or to :func:`compute_metrics` dicts, whose
    ``"score"`` is used). It needs MNLI matched (``"mnli"``/``"mnli-m"``) and mismatched
    (``"mnli-mm"``), QQP, QNLI, SST-2, CoLA, STS-B, MRPC and RTE. WNLI is allowed and ignored:
    none of the published averages includes it. Returns::

        {"avg_9_numbers": mean of the 9 numbers,
         "avg_8_tasks":   mean of 8 tasks, MNLI = (m + mm)/2}

    The two differ whenever MNLI is far from the other tasks: BiT W1A1 (no DA) is 73.5 in the
    8-task convention the BiT paper uses, but 74.2 on the 9-number basis of the BiBERT table.
    Compare averages only within one convention.
    """

    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a mapping task -> score, got {type(scores).__name__}")
    values: dict[str, float] = {}
    for key, value in scores.items():
        name = get_task(key).name
        if name in values:
            raise ValueError(f"task {name!r} is given twice (as {key!r} and another alias)")
        if isinstance(value, Mapping):
            if "score" not in value:
                raise ValueError(f"{key!r}: a metrics dict needs a 'score' entry, got {sorted(value)}")
            value = value["score"]
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{key!r}: score must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{key!r}: score is {number}")
        values[name] = number
    missing = [t for t in AVERAGE_TASKS if t not in values]
    if missing:
        hint = ""
        if "mnli" in missing or "mnli-mm" in missing:
            hint = " (give MNLI matched and mismatched separately)"
        raise ValueError(f"the GLUE average needs all of {list(AVERAGE_TASKS)}; missing {missing}{hint}")
    nine = [values[t] for t in AVERAGE_TASKS]
    mnli = (values["mnli"] + values["mnli-mm"]) / 2
    eight = [mnli] + [values[t] for t in AVERAGE_TASKS if t not in ("mnli", "mnli-mm")]
    return {"avg_9_numbers": sum(nine) / 9, "avg_8_tasks": sum(eight) / 8}
