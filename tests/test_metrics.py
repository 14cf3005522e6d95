"""Tests for binlab.data.metrics: each metric against an independent formula or scipy, the per-task
metric sets of methods.md §1, and the two GLUE averages against published table rows (§4.6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings, strategies as st

from binlab.data.glue import GLUE_TASKS, get_task
from binlab.data.metrics import (
    AVERAGE_KEYS,
    AVERAGE_TASKS,
    accuracy,
    compute_metrics,
    f1,
    glue_average,
    matthews_corrcoef,
    pearson,
    rankdata,
    spearman,
)

binary_pairs = st.integers(min_value=1, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
    )
)


def multiclass_pairs(k: int):
    return st.integers(min_value=1, max_value=60).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, k - 1), min_size=n, max_size=n),
            st.lists(st.integers(0, k - 1), min_size=n, max_size=n),
        )
    )


real_pairs = st.integers(min_value=3, max_value=50).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-5, 5).map(float), min_size=n, max_size=n),  # small ints: many ties
        st.lists(st.floats(-100, 100, allow_nan=False, allow_infinity=False), min_size=n, max_size=n),
    )
)


# ---------------------------------------------------------------- accuracy, F1, MCC


def test_accuracy_small_example():
    assert accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
    assert accuracy(np.array([2, 2]), torch.tensor([2, 0])) == 0.5


@settings(deadline=None, max_examples=80)
@given(binary_pairs)
def test_f1_matches_precision_recall_definition(pair):
    p, y = pair
    tp = sum(1 for a, b in zip(p, y) if a == 1 and b == 1)
    pred_pos = sum(p)
    true_pos = sum(y)
    precision = tp / pred_pos if pred_pos else 0.0
    recall = tp / true_pos if true_pos else 0.0
    expected = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    assert f1(p, y) == pytest.approx(expected, abs=1e-12)


def test_f1_edge_cases_and_errors():
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0  # no positives anywhere
    assert f1([1, 1], [1, 1]) == 1.0
    with pytest.raises(ValueError, match="binary"):
        f1([0, 2], [0, 1])


@settings(deadline=None, max_examples=80)
@given(binary_pairs)
def test_mcc_binary_is_phi_correlation(pair):
    p, y = pair
    pa, ya = np.array(p, float), np.array(y, float)
    if pa.std() == 0 or ya.std() == 0:
        assert matthews_corrcoef(p, y) == 0.0
    else:
        assert matthews_corrcoef(p, y) == pytest.approx(np.corrcoef(pa, ya)[0, 1], abs=1e-9)


def _mcc_from_one_hot_covariance(p, y, k):
    """Gorodkin's definition: MCC = cov(X, Y) / sqrt(cov(X, X)·cov(Y, Y)) with one-hot X, Y."""
    x = np.eye(k)[np.array(p)]
    t = np.eye(k)[np.array(y)]

    def cov(a, b):
        return float(np.sum((a - a.mean(0)) * (b - b.mean(0))))

    d = cov(x, x) * cov(t, t)
    return 0.0 if d == 0 else cov(x, t) / math.sqrt(d)


@settings(deadline=None, max_examples=80)
@given(multiclass_pairs(3))
def test_mcc_multiclass_matches_one_hot_covariance(pair):
    p, y = pair
    assert matthews_corrcoef(p, y) == pytest.approx(_mcc_from_one_hot_covariance(p, y, 3), abs=1e-9)


def test_mcc_known_values():
    assert matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    # a constant predictor (what a collapsed binary model does) scores 0, not NaN
    assert matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0


# ---------------------------------------------------------------- correlations


def test_pearson_of_tiny_and_huge_values():
    """The deviations are rescaled before they are squared: 1e-300 and 1e300 correlate like 1 (hypothesis found
    [0, 0, 1] against [0, 0, 5e-300], whose squared deviations underflowed to 0: r was reported 0, not 1)."""
    assert pearson([0.0, 0.0, 1.0], [0.0, 0.0, 5e-300]) == pytest.approx(1.0)
    assert pearson([1.0, 2.0, 3.0], [3e300, 2e300, 1e300]) == pytest.approx(-1.0)
    assert pearson([1.0, 1.0, 1.0], [0.0, 0.0, 5e-300]) == 0.0


@settings(deadline=None, max_examples=80)
@given(real_pairs)
def test_pearson_and_spearman_match_scipy(pair):
    x, y = np.array(pair[0]), np.array(pair[1])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert pearson(x, y) == 0.0
        return
    assert pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-9)
    rx, ry = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-9)


@settings(deadline=None, max_examples=80)
@given(st.lists(st.integers(-4, 4), min_size=1, max_size=40))
def test_rankdata_matches_scipy_average_ties(values):
    np.testing.assert_allclose(rankdata(values), scipy.stats.rankdata(values, method="average"))


def test_rankdata_example_and_constant_correlation():
    assert rankdata([10, 30, 20, 20]).tolist() == [1.0, 4.0, 2.5, 2.5]
    assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0


def test_metrics_accept_tensors():
    p = torch.tensor([0.1, 0.4, 0.35, 0.8])
    y = torch.tensor([0.0, 0.5, 0.3, 0.9])
    assert pearson(p, y) == pytest.approx(scipy.stats.pearsonr(p.numpy(), y.numpy())[0], abs=1e-6)


@pytest.mark.parametrize(
    "preds, labels, error, match",
    [
        ([0, 1], [0, 1, 1], ValueError, "differ in length"),
        ([], [], ValueError, "empty"),
        ([[0, 1]], [[0, 1]], ValueError, "1-D"),
        ([0.5, 1.0], [0, 1], ValueError, "whole numbers"),
        (["a", "b"], [0, 1], TypeError, "class ids"),
    ],
)
def test_classification_input_errors(preds, labels, error, match):
    with pytest.raises(error, match=match):
        accuracy(preds, labels)


def test_regression_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        pearson([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1.0, 2.0], [1.0])


# ---------------------------------------------------------------- per task


def test_selection_metric_follows_methods_section_1():
    acc_tasks = {"mnli", "mnli-mm", "mrpc", "sst-2", "qqp", "qnli", "rte", "wnli"}
    for name in GLUE_TASKS:
        spec = get_task(name)
        expected = "mcc" if name == "cola" else "corr" if name == "sts-b" else "accuracy"
        assert spec.selection_metric == expected, name
        assert (name in acc_tasks) == (expected == "accuracy")


def test_compute_metrics_keys_per_task():
    rng = np.random.default_rng(0)
    for name in GLUE_TASKS:
        spec = get_task(name)
        if spec.is_regression:
            labels = rng.uniform(0, 5, 40)
            preds = labels + rng.normal(0, 1, 40)
        else:
            labels = rng.integers(0, spec.num_labels, 40)
            preds = rng.integers(0, spec.num_labels, 40)
        m = compute_metrics(name, preds, labels)
        assert set(m) == set(spec.metrics) | {"score"}, name
        assert m["score"] == m[spec.selection_metric]
    m = compute_metrics("mrpc", [1, 1, 0, 0], [1, 0, 0, 0])
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(2 / 3)
    assert m["acc_and_f1"] == pytest.approx((0.75 + 2 / 3) / 2)


def test_compute_metrics_stsb_corr_is_mean_of_pearson_and_spearman():
    p = [0.5, 2.0, 1.0, 4.5, 3.0]
    y = [0.0, 2.5, 1.5, 5.0, 2.0]
    m = compute_metrics("STS-B", np.array(p)[:, None], y)  # (N, 1) head output is accepted
    assert m["pearson"] == pytest.approx(scipy.stats.pearsonr(p, y)[0])
    assert m["spearman"] == pytest.approx(scipy.stats.spearmanr(p, y)[0])
    assert m["score"] == m["corr"] == pytest.approx((m["pearson"] + m["spearman"]) / 2)


def test_compute_metrics_takes_argmax_of_logits():
    logits = torch.tensor([[2.0, 0.1, 0.3], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    m = compute_metrics("mnli", logits, [0, 1, 2, 2])
    assert m["accuracy"] == 0.75
    with pytest.raises(ValueError, match="3 labels"):
        compute_metrics("mnli", logits[:, :2], [0, 1, 1, 0])


def test_compute_metrics_errors():
    with pytest.raises(ValueError, match="0..1"):
        compute_metrics("sst-2", [0, 1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="0..2"):
        compute_metrics("mnli", [0, 1, 2], [0, 3, 1])
    with pytest.raises(ValueError, match="unknown GLUE task"):
        compute_metrics("imdb", [0], [0])


# ---------------------------------------------------------------- GLUE average

# Published rows, methods.md §4.6 (no DA): MNLI-m, MNLI-mm, QQP, QNLI, SST-2, CoLA, STS-B, MRPC, RTE.
BIT_W1A1 = dict(zip(AVERAGE_TASKS, (79.5, 79.4, 85.4, 86.4, 89.9, 32.9, 72.0, 79.9, 62.1)))
BIBERT_W1A1 = dict(zip(AVERAGE_TASKS, (66.1, 67.5, 84.8, 72.6, 88.7, 25.4, 33.6, 72.5, 57.4)))
BERT_FP = dict(zip(AVERAGE_TASKS, (84.9, 85.5, 91.4, 92.1, 93.2, 59.7, 90.1, 86.3, 72.2)))


def test_glue_average_bit_row_both_conventions():
    avg = glue_average(BIT_W1A1)
    assert set(avg) == set(AVERAGE_KEYS)
    assert round(avg["avg_8_tasks"], 1) == 73.5  # as printed in the BiT table
    assert round(avg["avg_9_numbers"], 1) == 74.2  # the 9-number basis of the BiBERT table


def test_glue_average_bibert_and_bert_rows():
    assert round(glue_average(BIBERT_W1A1)["avg_9_numbers"], 1) == 63.2  # as printed
    assert glue_average(BIBERT_W1A1)["avg_8_tasks"] == pytest.approx(62.725)
    assert round(glue_average(BERT_FP)["avg_9_numbers"], 1) == 83.9  # as printed


def test_glue_average_accepts_aliases_metric_dicts_and_ignores_wnli():
    scores = {"MNLI-m": 0.8, "mnli_mismatched": 0.6, "QQP": {"accuracy": 0.9, "score": 0.9}}
    scores.update({"qnli": 0.5, "sst2": 0.5, "CoLA": 0.5, "stsb": 0.5, "MRPC": 0.5, "rte": 0.5})
    scores["wnli"] = 99.0
    avg = glue_average(scores)
    assert avg["avg_9_numbers"] == pytest.approx((0.8 + 0.6 + 0.9 + 6 * 0.5) / 9)
    assert avg["avg_8_tasks"] == pytest.approx((0.7 + 0.9 + 6 * 0.5) / 8)


def test_glue_average_errors():
    partial = dict(BIT_W1A1)
    del partial["mnli-mm"]
    with pytest.raises(ValueError, match="missing \\['mnli-mm'\\]"):
        glue_average(partial)
    with pytest.raises(ValueError, match="given twice"):
        glue_average({**BIT_W1A1, "sst2": 1.0})
    with pytest.raises(TypeError, match="number"):
        glue_average({**BIT_W1A1, "rte": "high"})
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_average({**BIT_W1A1, "imdb": 1.0})
