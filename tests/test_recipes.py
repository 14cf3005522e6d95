"""The BinaryBERT recipe (binlab.methods.binarybert, ``binlab train --recipe binarybert``) on a tiny model and synthetic
data: every stage runs and leaves its results, the split model scores what the ternary one scored, the
baseline gets the same budget, regression gets a logit signal, and runs resume."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, recipe_config
from conftest import run_quietly as quietly

from binlab.methods import finetune
from binlab.methods.binarybert import (BinaryBertConfig, binary_quant, load_stage_model, run_binarybert,
                            stage_names, ternary_quant)
from binlab.methods.pipeline import check_settings, read_summary
from binlab.methods.split_model import SplitQuantLinear
from binlab.quant.config import QuantConfig

TRAINER_STAGES = ("ternary_stage1", "ternary_stage2", "binary_stage1", "binary_stage2")


def tiny_cfg(out, **kw) -> BinaryBertConfig:
    """The recipe on the tiny model; keyword arguments are BinaryBertConfig or TrainConfig fields (teacher_lr and
    teacher_epochs: TrainConfig's lr and epochs, the teacher's)."""
    base = dict(task="sst2", out=str(out), model="tiny", source="synthetic", max_train=32, max_eval=32,
                batch_size=16, max_length=32, teacher_lr=1e-3, teacher_epochs=1, ternary_lr=1e-3, binary_lr=1e-3,
                kd_epochs=1, eval_every=0, save_every=0, progress=False)
    kw = {**base, **kw}
    kw["lr"], kw["epochs"] = kw.pop("teacher_lr"), kw.pop("teacher_epochs")
    return recipe_config(BinaryBertConfig, **kw)


def run_quietly(cfg, resume=False) -> tuple[dict, str]:
    return quietly(run_binarybert, cfg, resume)


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bb") / "split"
    summary, _ = run_quietly(tiny_cfg(out))
    return out, summary


def results(out, stage) -> dict:
    return json.loads((Path(out) / stage / "results.json").read_text())


def test_quantization_per_activation_width():
    assert ternary_quant(8) == QuantConfig.preset("w2a8")
    assert binary_quant(8) == QuantConfig.preset("w1a8")
    assert binary_quant(4) == QuantConfig.preset("w1a4")  # 4-bit LSQ with ReLU, BinaryBERT's 1-1-4
    t1, b1 = ternary_quant(1), binary_quant(1)
    assert (t1.weight_bits, t1.weight_method, t1.act_bits, t1.act_method) == (2, "twn", 1, "elastic")
    assert (b1.weight_bits, b1.weight_method, b1.act_bits, b1.act_method) == (1, "bwn", 1, "elastic")
    for bad in (2, 32):
        with pytest.raises(ValueError, match="act_bits"):
            ternary_quant(bad)
        with pytest.raises(ValueError, match="act_bits"):
            BinaryBertConfig(task="sst2", out="x", act_bits=bad)


def test_ffn_activation_can_be_overridden():
    assert ternary_quant(4).ffn_act == "relu" and ternary_quant(8).ffn_act == "gelu"
    t, b = ternary_quant(4, "gelu"), binary_quant(4, "gelu")
    assert t == replace(ternary_quant(4), ffn_act="gelu") and b == replace(QuantConfig.preset("w1a4"), ffn_act="gelu")
    assert ternary_quant(8, "relu").ffn_act == "relu"
    with pytest.raises(ValueError, match="ffn_act"):
        BinaryBertConfig(task="sst2", out="x", ffn_act="tanh")
    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    assert parser.parse_args(["--task", "stsb", "--out", "x", "--recipe", "binarybert", "--act-bits", "4",
                              "--ffn-act", "gelu"]).ffn_act == "gelu"


def test_every_stage_runs_and_writes_its_results(split_run):
    out, summary = split_run
    assert [r["stage"] for r in summary["stages"]] == stage_names(True)
    for stage in stage_names(True):
        r = results(out, stage)
        assert r["best"]["score"] is not None, stage
        assert (out / stage / "best_model" / "config.json").is_file(), stage
    for stage in ("teacher", *TRAINER_STAGES):
        r = results(out, stage)
        assert r["steps"] == 2 and (out / stage / "checkpoints" / "latest").is_file(), stage
    labels = {r["stage"]: r["model"] for r in summary["stages"]}
    assert labels == {"teacher": "W32E32A32", "ternary_stage1": "W2E2A8", "ternary_stage2": "W2E2A8",
                      "split": "W1E1A8", "binary_stage1": "W1E1A8", "binary_stage2": "W1E1A8"}
    assert results(out, "ternary_stage1")["config"]["lr"] == pytest.approx(2.5e-3)  # stage 1 at 2.5 x lr
    assert results(out, "ternary_stage2")["config"]["lr"] == pytest.approx(1e-3)
    assert "attention" in results(out, "ternary_stage1")["loss"] and "soft CE" in results(out, "ternary_stage2")["loss"]
    # the files of the summary agree with what the run returned
    assert read_summary(out) == json.loads(json.dumps(summary))
    md = (out / "summary.md").read_text()
    for stage in stage_names(True):
        assert f"| {stage} |" in md


def test_right_after_split_the_dev_score_is_the_ternary_one(split_run):
    out, _ = split_run
    split, ternary = results(out, "split"), results(out, "ternary_stage2")
    assert split["best"]["score"] == ternary["best"]["score"]
    assert split["ternary_dev"]["score"] == ternary["best"]["score"]  # the best checkpoint was the one split
    assert split["max_abs_logit_diff"] < 1e-4 and split["same_predictions"] is True
    assert split["max_abs_logit_diff_float64"] < 1e-10 and split["float64_examples"] == 32


def test_saved_stage_models_reload(split_run):
    out, _ = split_run
    split = load_stage_model(out, "split")
    binary = load_stage_model(out, "binary_stage2")
    for m in (split, binary):
        assert isinstance(m.bert.encoder.layer[0].attention.query, SplitQuantLinear)
        assert m.config.quant.weight_bits == 1
    ternary = load_stage_model(out, "ternary_stage2")
    assert ternary.config.quant == ternary_quant(8)
    ids = torch.tensor([[101, 2023, 3185, 2003, 2307, 102]])
    with torch.no_grad():
        assert torch.allclose(split(ids).logits, ternary(ids).logits, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="finished"):
        load_stage_model(out, "nonexistent_stage")


def test_no_split_baseline_gets_the_same_budget_from_the_given_teacher(split_run, tmp_path):
    out, summary = split_run
    teacher_dir = out / "teacher" / "best_model"
    base, _ = run_quietly(tiny_cfg(tmp_path / "direct", split=False, teacher=str(teacher_dir)))
    assert [r["stage"] for r in base["stages"]] == stage_names(False)
    assert results(tmp_path / "direct", "teacher")["best"]["score"] == results(out, "teacher")["best"]["score"]
    assert "given" in results(tmp_path / "direct", "teacher")["init"]
    for ours, theirs in zip(("direct_stage1", "direct_stage2", "binary_stage1", "binary_stage2"), TRAINER_STAGES):
        a, b = results(tmp_path / "direct", ours), results(out, theirs)
        assert a["steps"] == b["steps"] and a["config"]["lr"] == b["config"]["lr"], ours
        assert a["quant"] == "W1E1A8", ours
    model = load_stage_model(tmp_path / "direct", "binary_stage2")
    assert not any(isinstance(m, SplitQuantLinear) for m in model.modules())


@pytest.mark.parametrize("regression_loss, nonzero", [("mse", True), ("soft_ce", False)])
def test_regression_stage2_gets_a_logit_signal_only_with_mse(tmp_path, regression_loss, nonzero):
    summary, _ = run_quietly(tiny_cfg(tmp_path / "stsb", task="stsb", regression_loss=regression_loss,
                                      max_steps=2, teacher_epochs=1))
    losses = {r["stage"]: r["final_train_loss"] for r in summary["stages"]}
    for stage in ("ternary_stage2", "binary_stage2"):
        assert (losses[stage] > 0) == nonzero, (stage, losses[stage])  # soft CE of one logit is identically 0
    # a regression score is a correlation: after 2 steps the outputs hardly vary, and float32 rounding (1e-5)
    # can move it; the logits themselves agree, exactly so in float64
    split = results(tmp_path / "stsb", "split")
    assert split["max_abs_logit_diff"] < 1e-4 and split["max_abs_logit_diff_float64"] < 1e-10


def test_one_bit_activations_split_exactly(tmp_path):
    summary, _ = run_quietly(tiny_cfg(tmp_path / "a1", act_bits=1, max_steps=2))
    labels = {r["stage"]: r["model"] for r in summary["stages"]}
    assert labels["ternary_stage2"] == "W2E2A1" and labels["binary_stage2"] == "W1E1A1"
    split = results(tmp_path / "a1", "split")
    # max_steps=2: one real update (step 0 has lr 0 in the warm-up). Before any update every bias is 0 and the
    # pre-activations are sums of +-alpha * alpha_t that can cancel to ~1e-18, where rounding decides the sign.
    # A 1-bit activation flips at its threshold, so in float32 rounding moves a logit more often than at 8 bits.
    assert split["best"]["score"] == split["ternary_dev"]["score"] and split["max_abs_logit_diff_float64"] < 1e-10


def test_resume_reuses_finished_stages_and_continues_an_interrupted_one(split_run):
    out, summary = split_run
    before = {s: results(out, s) for s in stage_names(True)}
    (out / "binary_stage2" / "results.json").unlink()  # as if the run had been killed in the last stage
    again, log = run_quietly(tiny_cfg(out), resume=True)
    for stage in ("teacher", "ternary_stage1", "ternary_stage2", "binary_stage1"):
        assert f"[{stage}] finished earlier" in log
        assert results(out, stage) == before[stage]
    assert "resumed from step 2" in log  # the Trainer's own checkpoint of the interrupted stage
    assert results(out, "binary_stage2")["best"]["score"] == before["binary_stage2"]["best"]["score"]
    assert [r["dev"] for r in again["stages"]] == [r["dev"] for r in summary["stages"]]
    with pytest.raises(ValueError, match="other settings.*binary_lr"):
        run_quietly(replace(tiny_cfg(out), binary_lr=5e-4), resume=True)


def _cli(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "binlab", "train", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_cli_recipe_with_a_teacher_and_4_bit_activations(split_run, tmp_path):
    out, _ = split_run
    proc = _cli("--recipe", "binarybert", "--task", "sst2", "--source", "synthetic", "--act-bits", "4",
                "--teacher", str(out / "teacher"), "--out", str(tmp_path / "cli"), "--max-train", "32",
                "--max-eval", "32", "--batch-size", "16", "--kd-epochs", "1", "--max-steps", "1",
                "--ternary-lr", "1e-3", "--binary-lr", "1e-3", "--eval-every", "0", "--threads", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(tmp_path / "cli")
    assert summary["act_bits"] == 4 and summary["teacher"] == str(out / "teacher" / "best_model")
    labels = {r["stage"]: r["model"] for r in summary["stages"]}
    assert labels["ternary_stage1"] == "W2E2A4" and labels["binary_stage2"] == "W1E1A4"
    assert "binlab train --recipe binarybert" in results(tmp_path / "cli", "binary_stage2")["command"]
    bad = _cli("--recipe", "binarybert", "--task", "sst2", "--quant", "w1a8", "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "--act-bits" in bad.stderr


def test_resume_tolerates_a_setting_binlab_gained_later_at_its_default(tmp_path):
    """A run started before a setting existed resumes, as long as that setting keeps its default."""
    cfg = tiny_cfg(tmp_path)
    check_settings(tmp_path, cfg, resume=False)
    started = json.loads((tmp_path / "recipe.json").read_text())
    started["train"].pop("grad_clip")  # as if written by an older binlab
    started.pop("ffn_act")
    (tmp_path / "recipe.json").write_text(json.dumps(started))
    check_settings(tmp_path, cfg, resume=True)
    with pytest.raises(ValueError, match="other settings.*ffn_act"):
        check_settings(tmp_path, replace(cfg, ffn_act="gelu"), resume=True)
