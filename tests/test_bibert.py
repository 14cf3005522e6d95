"""BiBERT (binlab.methods.bibert, ``binlab train --recipe bibert``): FP teacher -> W1A1 student on a tiny model end to
end, the student initialised from the teacher, the code's and the paper's options, resume, and the refusals."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, recipe_config
from conftest import run_quietly as quietly

from binlab.checkpoint import load_pretrained
from binlab.methods import finetune
from binlab.methods.bibert import STAGE, BibertConfig, run_bibert, student_quant
from binlab.methods.pipeline import read_summary
from binlab.quant.config import QuantConfig

KD_LR = 1e-3


def tiny_cfg(out, **kw) -> BibertConfig:
    base = dict(task="sst2", out=str(out), model="tiny", source="synthetic", max_train=32, max_eval=32,
                lr=1e-3, epochs=1, batch_size=16, max_length=32, kd_lr=KD_LR, kd_epochs=1, eval_every=0, save_every=0,
                progress=False)
    return recipe_config(BibertConfig, **{**base, **kw})


def run_quietly(cfg, resume=False):
    return quietly(run_bibert, cfg, resume)


@pytest.fixture(scope="module")
def bibert_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bibert") / "run"
    summary, log = run_quietly(tiny_cfg(out))
    return out, summary, log


def results(out, stage) -> dict:
    return json.loads((Path(out) / stage / "results.json").read_text())


def test_student_quant_is_the_bibert_preset():
    assert student_quant() == QuantConfig.preset("bibert")
    paper = student_quant(bool_zero=1)
    assert (paper.attention, paper.bool_zero, paper.act_method, paper.weight_method) == ("bool", 1, "sign", "bibert")
    assert student_quant(ffn_act="relu").ffn_act == "relu"


def test_teacher_then_one_w1a1_stage_end_to_end(bibert_run):
    out, summary, log = bibert_run
    assert [r["stage"] for r in summary["stages"]] == ["teacher", STAGE]
    assert {r["stage"]: r["model"] for r in summary["stages"]} == {"teacher": "W32E32A32", STAGE: "W1E1A1"}
    student = results(out, STAGE)
    assert student["steps"] == 2 and student["config"]["lr"] == pytest.approx(KD_LR)  # 32 examples / 16, 1 epoch
    assert student["teacher_mode"] == "eval" and student["teacher_dir"] == str(out / "teacher" / "best_model")
    assert student["loss"] == "BiBERT: SCE(logits) + 0.5 CE(labels) + DMD(Q, K, V, hidden states)"
    assert student["bool_zero"] == 0 and student["dmd_mask_padding"] is False
    assert "fine-tuned from a tiny random BERT" in results(out, "teacher")["init"]  # no --teacher: one is trained
    s = read_summary(out)
    assert (s["recipe"], s["bool_zero"], s["dmd_mask_padding"], s["teacher_mode"]) == ("bibert", 0, False, "eval")
    md = (out / "summary.md").read_text()
    assert "BiBERT recipe on sst-2" in md and "bool(0) = 0, as the code" in md and f"| {STAGE} |" in md
    assert json.loads((out / "recipe.json").read_text())["dmd_mask_padding"] is False
    assert load_pretrained(out / STAGE / "best_model", verbose=False).config.quant == QuantConfig.preset("bibert")


def test_the_student_starts_from_the_teachers_weights(bibert_run):
    """Two Adam steps of lr 1e-3 move a weight by at most ~2e-3; a fresh N(0, 0.02) init would be ~0.03 away."""
    out, _, _ = bibert_run
    teacher = dict(load_pretrained(out / "teacher" / "best_model", verbose=False).named_parameters())
    student = dict(load_pretrained(out / STAGE / "best_model", verbose=False).named_parameters())
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.query.weight",
                 "bert.encoder.layer.1.ffn.output.weight", "classifier.weight"):
        moved = float((student[name] - teacher[name]).detach().abs().max())
        assert 0 < moved <= 2.5 * KD_LR, name


def test_resume_skips_the_teacher_and_refuses_other_settings(bibert_run):
    out, _, _ = bibert_run
    before = results(out, STAGE)
    (out / STAGE / "results.json").unlink()  # as if killed in the student's stage
    _, log = run_quietly(tiny_cfg(out), resume=True)
    assert "[teacher] finished earlier" in log and "resumed from step 2" in log
    assert results(out, STAGE)["best"]["score"] == before["best"]["score"]
    with pytest.raises(ValueError, match="other settings.*dmd_mask_padding"):
        run_quietly(tiny_cfg(out, dmd_mask_padding=True), resume=True)
    with pytest.raises(ValueError, match="other settings.*bool_zero"):
        run_quietly(tiny_cfg(out, bool_zero=1), resume=True)


def test_regression_with_the_paper_bool_and_masked_dmd(bibert_run, tmp_path):
    """STS-B (one logit): MSE on the logit; bool(0) = 1 and DMD without padding reach the student and the summary;
    --max-steps caps the stage; the teacher can be the run folder of an earlier fine-tuning."""
    summary, _ = run_quietly(tiny_cfg(tmp_path / "stsb", task="stsb", bool_zero=1, dmd_mask_padding=True,
                                      teacher_mode="train", max_steps=1))
    assert [r["stage"] for r in summary["stages"]] == ["teacher", STAGE]
    student = results(tmp_path / "stsb", STAGE)
    assert student["steps"] == 1 and student["teacher_mode"] == "train"
    assert student["loss"] == "BiBERT: MSE(logits) + DMD(Q, K, V, hidden states, padding masked)"
    assert "padding masked in DMD" in (tmp_path / "stsb" / "summary.md").read_text()
    assert load_pretrained(tmp_path / "stsb" / STAGE / "best_model", verbose=False).config.quant == \
        student_quant(bool_zero=1)


@pytest.mark.parametrize("kw, message", [
    (dict(kd_lr=0), "kd_lr must be positive"),
    (dict(kd_epochs=-1), "kd_epochs must be positive"),
    (dict(bool_zero=2), "bool_zero must be one of"),
    (dict(bool_zero=True), "bool_zero must be one of"),
    (dict(dmd_mask_padding=1), "dmd_mask_padding must be one of"),
    (dict(teacher_mode="dropout"), "teacher_mode must be one of"),
    (dict(ffn_act="tanh"), "ffn_act must be None or one of"),
])
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny_cfg("x", **kw)


def test_a_quantized_or_mismatched_teacher_is_refused(bibert_run, tmp_path):
    out, _, _ = bibert_run
    with pytest.raises(ValueError, match="is W1E1A1; BiBERT distils a full-precision teacher"):
        run_quietly(tiny_cfg(tmp_path / "q", teacher=str(out / STAGE / "best_model")))
    with pytest.raises(ValueError, match="has 2 outputs, but sts-b needs 1"):
        run_quietly(tiny_cfg(tmp_path / "m", task="stsb", teacher=str(out / "teacher")))


def parse(*argv):
    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    return parser.parse_args(["--task", "sst2", "--out", "x", *argv])


def test_the_distillation_options_are_shared_with_bit():
    """--kd-lr, --kd-epochs and --teacher-mode are one option each, read by both recipes."""
    args = parse("--recipe", "bibert", "--kd-lr", "3e-4", "--kd-epochs", "0.5", "--teacher-mode", "train",
                 "--bool-zero", "1", "--dmd-mask-padding")
    assert (args.kd_lr, args.kd_epochs, args.teacher_mode, args.bool_zero, args.dmd_mask_padding) == \
        (3e-4, 0.5, "train", 1, True)
    assert parse("--recipe", "bit", "--kd-lr", "3e-4").kd_lr == 3e-4
    default = parse("--recipe", "bibert")
    assert (default.kd_lr, default.bool_zero, default.dmd_mask_padding, default.teacher_mode) == (1e-4, 0, False, None)
    assert "bibert" in finetune.RECIPES


def _cli(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "binlab", "train", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_cli_runs_bibert_from_a_given_teacher_and_refuses_what_it_cannot_do(bibert_run, tmp_path):
    out, _, _ = bibert_run
    common = ("--recipe", "bibert", "--task", "sst2", "--source", "synthetic", "--teacher", str(out / "teacher"),
              "--max-train", "32", "--max-eval", "32", "--batch-size", "16", "--threads", "1", "--no-progress")
    proc = _cli(*common, "--out", str(tmp_path / "cli"), "--kd-epochs", "1", "--max-steps", "1", "--kd-lr", "1e-3",
                "--eval-every", "0", "--dmd-mask-padding")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(tmp_path / "cli")
    assert summary["recipe"] == "bibert" and summary["teacher"] == str(out / "teacher" / "best_model")
    assert summary["dmd_mask_padding"] is True and results(tmp_path / "cli", STAGE)["steps"] == 1
    assert "binlab train --recipe bibert" in results(tmp_path / "cli", STAGE)["command"]
    for extra, message in ((("--quant", "w1a1"), "chooses its own quantization"),
                           (("--regression-loss", "soft_ce"), "uses MSE on the logit")):
        bad = _cli(*common, "--out", str(tmp_path / "bad"), *extra)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    bad = _cli(*common, "--out", str(tmp_path / "bad"), "--bool-zero", "2")
    assert bad.returncode == 2 and "--bool-zero" in bad.stderr
