"""BiT (binlab.methods.bit, ``binlab train --recipe bit``): the Q/K/V thresholds, the calibration pass, a 2-hop
chain on a tiny model end to end, resume, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from binlab.checkpoint import load_pretrained, save_pretrained
from binlab.methods.bit import BitConfig, hop_names, hop_quant, parse_chain, run_bit
from binlab.methods.distill import make_kd_loss
from binlab.methods.pipeline import read_summary
from binlab.model import tiny_bert
from binlab.quant.quantizers import Elastic, optimal_alpha
from binlab.train.calibration import calibrate, data_initialised
from conftest import ROOT, recipe_config
from conftest import run_quietly as quietly


def model(quant, seed=0):
    return tiny_bert(2, quant, seed=seed, vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=24)


def batch(B=6, L=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 6:] = 0
    mask[4, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(B, L, dtype=torch.long)}


# ----------------------------------------------------------------------------------------------------------
# the chain and the hops' QuantConfig


def test_parse_chain():
    assert parse_chain("2,1") == (2, 1) and parse_chain([4, 2, 1]) == (4, 2, 1) and parse_chain(1) == (1,)
    for bad in ("1,2", "2", "3,1", "2,2,1", "", "two,one", [8, 4]):
        with pytest.raises(ValueError, match="--chain"):
            parse_chain(bad)
    assert hop_names("2,1") == ["hop1_w1a2", "hop2_w1a1"]


def test_hop_quant_and_qkv_thresholds():
    q = hop_quant(2)
    assert (q.weight_method, q.act_method, q.act_bits, q.attention, q.qkv_threshold) == ("bit", "elastic", 2,
                                                                                          "softmax01", True)
    att = model(hop_quant(1)).bert.encoder.layer[0].attention
    for quant in (att.query_quant, att.key_quant, att.value_quant):
        assert isinstance(quant, Elastic) and quant.bias.shape == (32,)  # one threshold per channel
    assert att.probs_quant.bias is None  # the probabilities have none, in the paper and the code
    code = model(hop_quant(1, qkv_threshold=False)).bert.encoder.layer[0].attention
    assert code.query_quant.bias is None  # the authors' code: move_q/k/v never reach the output
    # a threshold shifts the signs of Q: with it moved, the logits change (without, it cannot be)
    m = model(hop_quant(1))
    calibrate(m, batch())
    b = batch()
    before = m(b["input_ids"], attention_mask=b["attention_mask"]).logits
    with torch.no_grad():
        m.bert.encoder.layer[0].attention.query_quant.bias.fill_(0.05)
    after = m(b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert not torch.allclose(before, after)


def test_a_threshold_on_qkv_is_a_trained_parameter():
    m = model(hop_quant(1))
    calibrate(m, batch())
    b = batch()
    m(b["input_ids"], attention_mask=b["attention_mask"]).logits.sum().backward()
    grad = m.bert.encoder.layer[0].attention.key_quant.bias.grad
    assert grad is not None and grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------
# calibration


def _inputs_seen(m, b) -> dict[str, torch.Tensor]:
    """What each data-initialised quantizer quantizes (its input plus its threshold), on one eval forward."""
    seen = {}
    hooks = [q.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(
        name, inp[0].detach() + (mod.bias.detach() if mod.bias is not None else 0)))
        for name, q in data_initialised(m).items()]
    m.eval()
    with torch.no_grad():
        m(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("alpha_init", ["code", "optimal"])
def test_calibration_sets_each_alpha_from_the_calibration_batch(alpha_init):
    m = model(hop_quant(1, alpha_init=alpha_init))
    b = batch()
    report = calibrate(m, b)
    quantizers = data_initialised(m)
    assert len(report.scales) == len(quantizers) > 10 and all(bool(q.initialized) for q in quantizers.values())
    seen = _inputs_seen(m, b)  # with the calibrated scales: each quantizer's input is what calibration saw
    assert set(seen) == set(quantizers)
    for name, q in quantizers.items():
        x = seen[name].double()
        if alpha_init == "code":
            expected = (2.0 if q.signed else 4.0) * float(x.abs().mean())
        else:
            expected = float(x.abs().mean()) if q.signed else optimal_alpha(x, signed=False)
        assert q.alpha.item() == pytest.approx(max(expected, 1e-5), rel=1e-5), name


def test_optimal_alpha_minimises_the_error():
    x = torch.rand(2000, generator=torch.Generator().manual_seed(0)) ** 3  # skewed, non-negative
    best = optimal_alpha(x, signed=False)
    err = lambda a: float(((x - a * (x >= a / 2)) ** 2).sum())  # noqa: E731
    assert err(best) <= min(err(best * f) for f in (0.9, 0.97, 1.03, 1.1))
    s = torch.randn(500, generator=torch.Generator().manual_seed(1))
    assert optimal_alpha(s, signed=True) == pytest.approx(float(s.abs().mean()))


def test_calibration_is_deterministic_and_survives_save_and_load(tmp_path):
    a, b = model(hop_quant(1), seed=3), model(hop_quant(1), seed=3)
    b.train()  # calibration runs in eval mode whatever the caller's mode is, and restores it
    ra, rb = calibrate(a, batch()), calibrate(b, batch())
    assert ra.scales == rb.scales and b.training
    save_pretrained(a, tmp_path / "m")
    c = load_pretrained(tmp_path / "m", verbose=False)
    assert c.config.quant == hop_quant(1)
    for name, q in data_initialised(c).items():
        assert bool(q.initialized) and q.alpha.item() == ra.scales[name], name
    x = batch(seed=5)  # a forward on other data does not re-initialise a loaded scale
    c(x["input_ids"], attention_mask=x["attention_mask"])
    assert {n: q.alpha.item() for n, q in data_initialised(c).items()} == ra.scales


def test_calibration_reports_attention_rows_that_binarize_to_zero():
    m = model(hop_quant(1, qkv_threshold=False))
    b = batch()
    report = calibrate(m, b)
    real_rows = int(b["attention_mask"].sum()) * 4  # real query rows x heads
    assert report.attention_rows == [real_rows, real_rows]
    assert all(0 <= z < real_rows for z in report.all_zero_attention_rows)  # a random model attends somewhere
    with torch.no_grad():  # Q = K = 0: uniform attention 1/L, below its {0, alpha} threshold everywhere
        for layer in m.bert.encoder.layer:
            layer.attention.query.weight.zero_()
            layer.attention.key.weight.zero_()
            layer.attention.query.bias.zero_()
            layer.attention.key.bias.zero_()
    flat = calibrate(m, b)
    # alpha = 4 mean(p) = 4 / L over the whole map, so the threshold alpha / 2 = 0.2 lies above a uniform row of
    # 6 or 10 real keys (1/6, 1/10); only example 4, with 3 real keys (1/3 each), keeps its attention
    assert flat.attention_rows == [real_rows, real_rows]
    assert flat.all_zero_attention_rows == [real_rows - 3 * 4, real_rows - 3 * 4]
    assert "all zeros" in flat.describe()


# ----------------------------------------------------------------------------------------------------------
# the recipe


def tiny_cfg(out, **kw) -> BitConfig:
    base = dict(task="sst2", out=str(out), model="tiny", source="synthetic", max_train=32, max_eval=32,
                lr=1e-3, epochs=1, batch_size=16, max_length=32, kd_lr=1e-3, kd_epochs=1, eval_every=0, save_every=0,
                progress=False, calibration_examples=16)
    return recipe_config(BitConfig, **{**base, **kw})


def run_quietly(cfg, resume=False):
    return quietly(run_bit, cfg, resume)


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bit") / "chain"
    summary, log = run_quietly(tiny_cfg(out))
    return out, summary, log


def results(out, stage) -> dict:
    return json.loads((Path(out) / stage / "results.json").read_text())


def test_a_two_hop_chain_runs_end_to_end(chain_run):
    out, summary, log = chain_run
    assert [r["stage"] for r in summary["stages"]] == ["teacher", "hop1_w1a2", "hop2_w1a1"]
    assert {r["stage"]: r["model"] for r in summary["stages"]} == {"teacher": "W32E32A32", "hop1_w1a2": "W1E1A2",
                                                                   "hop2_w1a1": "W1E1A1"}
    hop1, hop2 = results(out, "hop1_w1a2"), results(out, "hop2_w1a1")
    assert hop1["steps"] == hop2["steps"] == 2 and hop1["config"]["lr"] == pytest.approx(1e-3)
    assert hop1["teacher"] == "the FP teacher" and hop2["teacher"] == "best hop1_w1a2"
    assert hop2["teacher_dir"] == str(out / "hop1_w1a2" / "best_model") and hop2["teacher_mode"] == "eval"
    assert hop2["calibration"]["n_examples"] == 16 and len(hop2["calibration"]["all_zero_attention_rows"]) == 2
    assert "calibrated" in log and read_summary(out)["chain"] == [2, 1]
    md = (out / "summary.md").read_text()
    assert "FP -> W1A2 -> W1A1" in md and "| hop2_w1a1 |" in md
    hop2_model = load_pretrained(out / "hop2_w1a1" / "best_model", verbose=False)
    assert hop2_model.config.quant == hop_quant(1)
    # the second hop starts from the first hop's thresholds, with its scales calibrated again for 1 bit
    first = load_pretrained(out / "hop1_w1a2" / "best_model", verbose=False)
    key = "bert.encoder.layer.0.attention.query.input_quantizer.alpha"
    assert dict(first.named_parameters())[key].item() != hop2["calibration"]["scales"][key.removesuffix(".alpha")]


def test_the_hops_teacher_is_in_eval_mode_by_default():
    teacher = model(hop_quant(2))
    loss = make_kd_loss("bit", teacher, 2, tiny_cfg("x").teacher_mode)
    teacher.train()
    loss(model(hop_quant(1)), batch())
    assert loss.teacher_mode == "eval" and not teacher.training


def test_resume_skips_finished_hops_and_refuses_other_settings(chain_run):
    out, summary, _ = chain_run
    before = results(out, "hop2_w1a1")
    (out / "hop2_w1a1" / "results.json").unlink()  # as if killed in the last hop
    again, log = run_quietly(tiny_cfg(out), resume=True)
    assert "[teacher] finished earlier" in log and "[hop1_w1a2] finished earlier" in log
    assert "resumed from step 2" in log
    assert results(out, "hop2_w1a1")["best"]["score"] == before["best"]["score"]
    with pytest.raises(ValueError, match="other settings.*chain"):
        run_quietly(tiny_cfg(out, chain=(1,)), resume=True)


def test_bit_star_is_one_hop(tmp_path):
    summary, _ = run_quietly(tiny_cfg(tmp_path / "star", chain="1", qkv_threshold=False, alpha_init="optimal",
                                      hidden_loss="normalized", max_steps=1))
    assert [r["stage"] for r in summary["stages"]] == ["teacher", "hop1_w1a1"]
    assert summary["hidden_loss"] == "normalized" and "relative error" in summary["stages"][1]["loss"]
    with pytest.raises(ValueError, match="hidden_loss must be one of"):
        tiny_cfg(tmp_path / "bad", hidden_loss="cosine")
    assert load_pretrained(tmp_path / "star" / "hop1_w1a1" / "best_model", verbose=False).config.quant == \
        hop_quant(1, qkv_threshold=False, alpha_init="optimal")


def _cli(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "binlab", "train", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_cli_runs_the_chain_from_a_given_teacher(chain_run, tmp_path):
    out, _, _ = chain_run
    proc = _cli("--recipe", "bit", "--task", "sst2", "--source", "synthetic", "--teacher", str(out / "teacher"),
                "--out", str(tmp_path / "cli"), "--max-train", "32", "--max-eval", "32", "--batch-size", "16",
                "--kd-epochs", "1", "--max-steps", "1", "--kd-lr", "1e-3", "--eval-every", "0", "--threads", "1",
                "--calibration-examples", "8", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(tmp_path / "cli")
    assert summary["recipe"] == "bit" and summary["teacher"] == str(out / "teacher" / "best_model")
    assert "binlab train --recipe bit" in results(tmp_path / "cli", "hop2_w1a1")["command"]
    bad = _cli("--recipe", "bit", "--task", "sst2", "--chain", "1,2", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--chain must step down" in bad.stderr and "Traceback" not in bad.stderr
