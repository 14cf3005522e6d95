"""The training loop: learns, checkpoints atomically, and resumes bit-exactly after a kill."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from binlab.files import atomic_write_text, load_tensors
from binlab.train.optim import BertAdam, make_optimizer, param_groups, warmup_linear



def _train_cmd(out, *extra):
    return [sys.executable, "-m", "binlab", "train", "--task", "sst2", "--source", "synthetic", "--model", "tiny",
            "--quant", "fp", "--out", str(out), "--epochs", "2", "--max-train", "640", "--max-eval", "64",
            "--batch-size", "16", "--eval-every", "20", "--save-every", "2", "--lr", "1e-3", "--threads", "1",
            "--no-progress", *extra]


def _env():
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def _latest_step(out: Path) -> int:
    pointer = out / "checkpoints" / "latest"
    try:
        return int(pointer.read_text().strip().split("-")[1])
    except (OSError, ValueError, IndexError):
        return -1


@pytest.mark.parametrize("speedups", [(), ("--group-by-length", "--optimizer", "adamw_fused")],
                         ids=["plain", "grouped-fused"])
def test_kill_mid_epoch_then_resume_gives_the_same_weights(tmp_path, speedups):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(full, *speedups), check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=600)

    proc = subprocess.Popen(_train_cmd(killed, *speedups), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while _latest_step(killed) < 6 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    step_at_kill = _latest_step(killed)
    assert 0 < step_at_kill < 80 and not (killed / "results.json").exists(), "the run was not killed mid-way"
    assert step_at_kill % 40 != 0, "killed exactly at an epoch boundary; mid-epoch was wanted"

    res = subprocess.run(_train_cmd(killed, *speedups, "--resume"), env=_env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from step" in res.stdout

    def final_weights(out):
        name = (out / "checkpoints" / "latest").read_text().strip()
        return load_tensors(out / "checkpoints" / name / "model.safetensors")

    a, b = final_weights(full), final_weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    ra = json.loads((full / "results.json").read_text())
    rb = json.loads((killed / "results.json").read_text())
    assert ra["steps"] == rb["steps"] == 80
    assert ra["config"]["group_by_length"] is bool(speedups)
    assert ra["final"]["score"] == rb["final"]["score"]
    # the run leaves a Hugging Face directory of the best model, loadable without pickle
    assert (full / "best_model" / "model.safetensors").is_file()
    assert (full / "best_model" / "config.json").is_file()


def test_resume_with_another_data_order_is_refused(tmp_path):
    out = tmp_path / "run"
    cmd = _train_cmd(out, "--max-steps", "4")
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=600)
    res = subprocess.run(_train_cmd(out, "--max-steps", "4", "--group-by-length", "--resume"), env=_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "group_by_length=False" in res.stderr, res.stderr[-1000:]


def test_fused_adamw_agrees_with_adamw_to_rounding():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(37, 19), torch.nn.LayerNorm(19), torch.nn.Linear(19, 3))
    weights = {}
    for name in ("adamw", "adamw_fused"):
        model = copy.deepcopy(base)
        opt = make_optimizer(model, name, lr=1e-2)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = (weights["adamw"] - torch.cat([p.detach().flatten() for p in base.parameters()])).abs().max()
    assert moved > 1e-2  # the steps did move the weights
    torch.testing.assert_close(weights["adamw_fused"], weights["adamw"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'.*adamw_fused"):
        make_optimizer(base, "adam")


def test_training_learns_the_synthetic_task(tmp_path):
    out = tmp_path / "learn"
    cmd = _train_cmd(out, "--warmup", "0")
    for flag, value in {"--epochs": "12", "--max-train": "512", "--max-eval": "128", "--batch-size": "32",
                        "--eval-every": "32", "--save-every": "1000", "--lr": "2e-3"}.items():
        cmd[cmd.index(flag) + 1] = value
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=600)
    res = json.loads((out / "results.json").read_text())
    assert res["synthetic"] is True
    assert res["best"]["accuracy"] >= 0.75, res["history"]
    assert math.isfinite(res["final_train_loss"])
    assert res["best"]["score"] >= res["final"]["score"]


def test_bad_task_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "binlab", "train", "--task", "sst3", "--out", str(tmp_path)],
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "sst3" in res.stderr


def test_warmup_linear_schedule():
    assert warmup_linear(0, 100, 0.1) == 0.0
    assert warmup_linear(5, 100, 0.1) == pytest.approx(0.5)
    assert warmup_linear(10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_linear(55, 100, 0.1) == pytest.approx(0.5)
    assert warmup_linear(100, 100, 0.1) == 0.0


def test_bertadam_matches_its_formula():
    """No bias correction, decoupled decay, per-tensor clipping: one step by hand."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    g = torch.randn(5) * 10  # norm > 1: gets clipped
    p0 = p.detach().clone()
    opt = BertAdam([p], lr=0.1, weight_decay=0.01, max_grad_norm=1.0)
    p.grad = g.clone()
    opt.step()
    gc = g / (g.norm() + 1e-6)
    m = 0.1 * gc
    v = 0.001 * gc * gc
    expected = p0 - 0.1 * (m / (v.sqrt() + 1e-6) + 0.01 * p0)
    assert torch.allclose(p.detach(), expected, atol=1e-6)


def test_param_groups_split_decay_and_quantizer_scales():
    from binlab.quant.config import QuantConfig
    from binlab.model import tiny_bert

    model = tiny_bert(2, QuantConfig.preset("w1a4"), seed=0)
    x = torch.randint(0, 30522, (2, 8))
    model(x)  # LSQ steps initialise on first use
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.01, clip_lr=1e-4)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("bias" not in names[id(p)] and "LayerNorm" not in names[id(p)] for p in groups["decay"]["params"])
    assert groups["quantizer"]["lr"] == 1e-4 and groups["quantizer"]["weight_decay"] == 0.0
    assert groups["quantizer"]["params"], "the LSQ step sizes should be in the quantizer group"
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for p in model.parameters() if p.requires_grad)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write_text(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
