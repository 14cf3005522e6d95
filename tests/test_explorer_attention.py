"""Chapter 6's explorer and figures, driven from Python (tiny models only): the entropy of binarized attention,
bool(0), Bi-Attention with the bitwise kernels, direction-matching distillation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_titled

from binlab.analysis import entropy as H
from binlab.explorers import attention as A
from binlab.methods import distill as D


@pytest.fixture(scope="module")
def setup():
    return A.setup_attention(tiny=True)


@pytest.fixture(scope="module")
def results(setup):
    return A.measure_entropy(setup, taus=(0.01, 0.05, 0.2))


def test_tiny_setup_says_what_it_is(setup):
    assert setup.kind == "tiny" and "RANDOM tiny BERT" in setup.description and "SENTENCES" in setup.data_source
    assert setup.sentences == list(A.SENTENCES) and sum(len(b["input_ids"]) for b in setup.batches) == len(A.SENTENCES)
    assert setup.teacher.config.quant.attention == "softmax" and setup.student.config.quant.attention == "bool"
    assert not setup.student_trained and "BEFORE any distillation" in setup.student_source
    # the student starts from the teacher's latent weights
    t, s = setup.teacher.state_dict(), setup.student.state_dict()
    assert all(torch.equal(t[k], s[k]) for k in t)


def test_missing_model_dir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        A.setup_attention(tmp_path / "nothing")


def test_measured_entropy_has_the_papers_shape(results):
    teacher = {(r["method"], r["tau"]): r for r in H.by_layer(results["FP teacher"]) if r["layer"] == 0}
    assert teacher[("sign_softmax", None)]["entropy"] == 0.0 and teacher[("sign_softmax", None)]["ones"] == 1.0
    assert 0 < teacher[("bool", None)]["entropy"] <= 1
    student = {(r["method"], r["tau"]): r for r in H.by_layer(results["BiBERT student"])}
    other = {(r["method"], r["tau"]): r for r in H.by_layer(results["BiBERT student, bool(0) = 1"])}
    # bool(0) = 1 adds the exact zeros to the ones; nothing else changes
    assert other[("bool", None)]["ones"] > student[("bool", None)]["ones"]
    assert other[("threshold", 0.05)]["entropy"] == student[("threshold", 0.05)]["entropy"]
    assert A.best_tau(results["FP teacher"]) in (0.01, 0.05, 0.2)


def test_entropy_figures_are_filled_and_titled(results):
    rows = results["FP teacher"]
    heat = A.entropy_heatmap_figure(rows)
    assert_titled(heat)
    assert len(heat.data) == 4 and np.asarray(heat.data[0].z).shape == (2, 2)
    assert np.all(np.asarray(heat.data[0].z) == 0)  # sign(softmax): zero entropy in every head
    sweep = A.tau_sweep_figure(rows)
    assert_titled(sweep)
    assert list(sweep.data[0].x) == [0.01, 0.05, 0.2] and any("BiT" in t.name for t in sweep.data)
    bars = A.entropy_by_layer_figure({k: results[k] for k in list(results)[:2]})
    assert_titled(bars)
    assert len(bars.data) == 8  # four binarizations, two models


def test_explorer_redraws_when_a_control_moves(setup):
    ui, fig, controls = A.make_attention_explorer(setup)
    assert set(controls) == {"sentence", "text", "model", "layer", "head", "tau", "bool_zero"}
    assert_titled(fig)
    assert len(fig.data) == 4
    assert np.all(np.asarray(fig.data[1].z) == 1)  # sign(softmax) is all ones
    assert "H = 0.000" in fig.layout.annotations[1].text
    title, threshold = fig.layout.title.text, np.asarray(fig.data[2].z).copy()
    controls["tau"].value = 0.3
    assert not np.array_equal(np.asarray(fig.data[2].z), threshold) and "0.3" in fig.layout.annotations[2].text
    controls["layer"].value = 2
    assert fig.layout.title.text != title and "layer 2" in fig.layout.title.text
    controls["model"].value = "student"
    bool0 = np.asarray(fig.data[3].z).copy()
    scores = A.attention_maps(setup.student, setup.tokenizer, controls["sentence"].value)["scores"][1][0, 0]
    assert np.array_equal(bool0, (scores > 0).float().numpy())
    controls["bool_zero"].value = 1
    assert np.array_equal(np.asarray(fig.data[3].z), (scores >= 0).float().numpy())
    controls["text"].value = "an utterly charming film"
    assert controls["sentence"].value == "an utterly charming film" and "utterly" in fig.layout.title.text
    assert len(np.asarray(fig.data[0].z)) == len(setup.tokenizer.tokenize("an utterly charming film")) + 2
    assert_titled(fig)


def test_binarized_map_is_the_entropy_modules():
    scores = torch.tensor([[[[0.5, 0.0, -1.0], [2.0, -0.5, 0.0], [0.0, 0.0, 1.0]]]])
    assert A.binarized_map(scores, "sign_softmax").all()
    assert A.binarized_map(scores, "bool").long().tolist() == [[[[1, 0, 0], [1, 0, 0], [0, 0, 1]]]]
    assert A.binarized_map(scores, "bool", bool_zero=1).long().tolist() == [[[[1, 1, 0], [1, 0, 1], [1, 1, 1]]]]
    probs = torch.softmax(scores, -1)
    assert torch.equal(A.binarized_map(scores, "threshold", 0.3), probs > 0.3)
    with pytest.raises(ValueError, match="calibrated alpha"):
        A.binarized_map(scores, "bit")


def test_exact_zeros_and_their_histogram(setup):
    student = A.exact_zero_rows(setup.student, setup.batches)
    teacher = A.exact_zero_rows(setup.teacher, setup.batches)
    assert len(student) == 2 and all(r["share of zeros"] > 0.05 for r in student)  # integers / sqrt(d): common
    assert all(r["exact zeros"] == 0 for r in teacher)  # full-precision scores: never exactly 0
    for r in student:
        assert r["ones, bool(0) = 1"] - r["ones, bool(0) = 0"] == pytest.approx(r["share of zeros"])
    fig = A.score_histogram_figure(setup.student, setup.batches)
    assert_titled(fig)
    assert len(fig.data) == 3 and len(fig.data[1].x) == 1 and fig.data[1].x[0] == 0


def test_bitwise_bi_attention_equals_the_float_one(setup):
    for layer in (0, 1):
        r = A.bitwise_bi_attention(setup.student, setup.tokenizer, A.SENTENCES[1], layer)
        assert r["scores_match_model"] and r["context_equal"]
        assert r["word_ops"] < r["float_macs"]
    with pytest.raises(ValueError, match="no Bi-Attention"):
        A.bitwise_bi_attention(setup.teacher, setup.tokenizer, A.SENTENCES[1])


def test_dmd_rows_add_up_to_the_library_loss(setup):
    batch = setup.batches[0]
    for mask_padding in (False, True):
        rows = A.dmd_rows(setup.student, setup.teacher, batch, mask_padding)
        s, t = A._both(setup.student, setup.teacher, batch)
        loss = D.direction_matching_loss(s.qkv, t.qkv, s.hidden_states, t.hidden_states,
                                         batch["attention_mask"] if mask_padding else None)
        total = sum(v for r in rows for k, v in r.items() if k != "layer" and v is not None)
        assert total == pytest.approx(float(loss), rel=1e-5)
    assert [r["layer"] for r in rows] == ["embeddings", "layer 1", "layer 2"]


def test_dmd_figure_is_titled_and_normalised(setup):
    fig = A.dmd_similarity_figure(setup.student, setup.teacher, setup.tokenizer, A.SENTENCES[0], layer=1, head=1)
    assert_titled(fig)
    assert len(fig.data) == 3 and "D = " in fig.layout.title.text
    z = [np.asarray(t.z) for t in fig.data]
    assert np.allclose(z[2], z[1] - z[0], atol=1e-6)


def test_tiny_distillation_runs_three_variants():
    c = A.compare_attention_distillation(steps=3, teacher_steps=3, train_examples=64, dev_examples=32, batch_size=16,
                                         hidden_size=32)
    assert [r["variant"] for r in c.rows] == list(A.KD_VARIANTS)
    assert all(len(v) == 3 and np.isfinite(v).all() for v in c.losses.values())
    assert len({r["dev accuracy at the start"] for r in c.rows}) == 1  # the same student at the start
    assert 0 <= c.settings["teacher_accuracy"] <= 1 and c.settings["vocab"] < 200
    fig = A.distillation_figure(c)
    assert_titled(fig)
    assert len(fig.data) == 3


def test_recorded_results(tmp_path):
    assert A.recorded_results(tmp_path / "missing.md") is None
    path = tmp_path / "results.md"
    path.write_text("# Results\n\n## BiT: chains\n\nbit rows\n\n## BiBERT: Bi-Attention\n\n| a |\n|---|\n| 1 |\n\n"
                    "## Later\n\nother\n")
    text = A.recorded_results(path)
    assert text.startswith("### BiBERT: Bi-Attention") and "| 1 |" in text and "bit rows" not in text
    assert "other" not in text
    path.write_text("# Results\n\n## BiT\n\nrows\n")
    assert A.recorded_results(path) is None
