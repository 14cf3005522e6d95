"""The entropy of binarized attention (binlab.analysis.entropy): the row statistics by hand, padding left out,
sign(softmax) at exactly 0 bits, bool on random scores near 1 bit, all-equal scores at 0 bits in every binarization,
BiT's alpha (the model's own or calibrated as BiT does), and one model's numbers against a loop over the rows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import ROOT

from binlab.analysis.entropy import (attention_entropy, binary_entropy, by_layer, dev_batches, entropy_table,
                                     mean_over_rows, row_entropy, row_share)
from binlab.model import tiny_bert
from binlab.quant.config import QuantConfig
from binlab.train.calibration import calibrate

GLUE = ROOT.parent / "shared" / "data" / "glue"
FP_TEACHER = ROOT / "runs" / "sst2-fp" / "best_model"


def tiny(quant="fp", seed=0, **kw):
    sizes = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=24)
    return tiny_bert(2, QuantConfig.preset(quant) if isinstance(quant, str) else quant, seed=seed,
                     **{**sizes, **kw}).eval()


def make_batch(B=5, L=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 2:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def H(p):
    return 0.0 if p in (0, 1) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def pick(rows, method, tau=None, layer=None):
    return [r for r in rows if r["method"] == method and r["tau"] == tau and (layer is None or r["layer"] == layer)]


# ----------------------------------------------------------------------------------------------------------
# the row statistics


def test_binary_entropy_values():
    got = binary_entropy(torch.tensor([0.0, 1.0, 0.5, 0.25, 0.75]))
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 1.0, H(0.25), H(0.25)], dtype=torch.float64))


def test_rows_count_only_real_keys_and_padded_rows_are_left_out():
    """Example 0: 4 real tokens; example 1: 2 real tokens, whose padded keys and query rows hold ones and garbage."""
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    ones = torch.tensor([[[[1, 1, 0, 0],     # p = 1/2 -> 1 bit
                           [1, 1, 1, 1],     # p = 1 -> 0
                           [1, 0, 0, 0],     # p = 1/4
                           [0, 0, 0, 0]]],   # p = 0 -> 0
                         [[[1, 0, 1, 1],     # 1 of 2 real keys: p = 1/2 (the padded ones do not count)
                           [1, 1, 0, 1],     # p = 1
                           [0, 1, 1, 1],     # a padded query row: left out
                           [1, 0, 1, 0]]]])
    share = row_share(ones, mask)
    torch.testing.assert_close(share[0, 0], torch.tensor([0.5, 1.0, 0.25, 0.0], dtype=torch.float64))
    assert share[1, 0, :2].tolist() == [0.5, 1.0] and share[1, 0, 2:].isnan().all()
    h = row_entropy(ones, mask)
    assert h[1, 0, 2:].isnan().all()
    expected = (1 + 0 + H(0.25) + 0 + 1 + 0) / 6
    assert float(mean_over_rows(h, mask)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs \\(B, H, L, L\\)"):
        row_entropy(ones[:, :, :3], mask)
    with pytest.raises(ValueError, match="no real token"):
        row_entropy(ones, torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]))


def test_bool_of_random_scores_is_close_to_one_bit():
    """Symmetric random scores: bool keeps about half of every row, H(p) ~ 1 - 1/(2 n ln 2) for n = 64 keys."""
    scores = torch.randn(8, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(8, 64, dtype=torch.long)
    h = float(mean_over_rows(row_entropy(scores > 0, mask), mask).mean())
    assert 0.97 < h < 1.0
    assert float(mean_over_rows(row_entropy(torch.softmax(scores, -1) >= 0, mask), mask).mean()) == 0.0


# ----------------------------------------------------------------------------------------------------------
# on a model


def test_one_model_against_a_loop_over_the_rows():
    model = tiny(seed=1)
    b = make_batch()
    rows = attention_entropy(model, [b], taus=(0.1,))
    with torch.no_grad():
        scores = model(b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True).attention_scores
    mask = b["attention_mask"]
    L = mask.shape[1]
    for layer, s in enumerate(scores):
        p = torch.softmax(s, -1)
        alpha = 4 * float(p.mean())  # BiT's code init on the (first) batch: 4 mean(P) = 4 / L
        assert alpha == pytest.approx(4 / L)
        rules = {("threshold", 0.1): lambda b_, h_, i: p[b_, h_, i] > 0.1,
                 ("bit", None): lambda b_, h_, i: p[b_, h_, i] > alpha / 2,
                 ("bool", None): lambda b_, h_, i: s[b_, h_, i] > 0}
        for (method, tau), rule in rules.items():
            for head in range(4):
                hs = []
                for ex in range(mask.shape[0]):
                    n = int(mask[ex].sum())
                    for i in range(n):  # real query rows; real keys are the first n
                        hs.append(H(int(rule(ex, head, i)[:n].sum()) / n))
                (r,) = [r for r in pick(rows, method, tau, layer) if r["head"] == head]
                assert r["entropy"] == pytest.approx(sum(hs) / len(hs), abs=1e-9), (layer, method, head)
                assert r["rows"] == len(hs)
        (bit_row, *_) = pick(rows, "bit", None, layer)
        assert bit_row["alpha"] == pytest.approx(4 / L)
    assert all(r["entropy"] == 0.0 for r in pick(rows, "sign_softmax"))


def test_padding_content_and_batching_do_not_change_the_numbers():
    model = tiny("bibert", seed=2)
    b = make_batch()
    other = dict(b, input_ids=b["input_ids"].clone())
    pad = b["attention_mask"] == 0
    other["input_ids"][pad] = torch.randint(1, 60, (int(pad.sum()),), generator=torch.Generator().manual_seed(3))
    key = lambda rows: [(r["layer"], r["head"], r["method"], r["tau"], round(r["entropy"], 12)) for r in rows]  # noqa
    exclude_bit = lambda rows: [r for r in rows if r["method"] != "bit"]  # noqa: E731  (alpha = 4 / L changes)
    assert key(attention_entropy(model, [b])) == key(attention_entropy(model, [other]))
    split = [{k: v[:2] for k, v in b.items()}, {k: v[2:] for k, v in b.items()}]  # same padded length L
    whole, halves = attention_entropy(model, [b]), attention_entropy(model, split)
    assert key(exclude_bit(whole)) == key(exclude_bit(halves))


def test_all_equal_scores_carry_no_information_in_any_binarization():
    """Q = K = 0: every real score is 0, so softmax is uniform (1/n) and every binarization gives all-ones or
    all-zeros rows: 0 bits. bool(0) decides which: no ones (the code) or all ones (the paper)."""
    model = tiny(seed=4)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            for lin in (layer.attention.query, layer.attention.key):
                lin.weight.zero_()
                lin.bias.zero_()
    b = make_batch()
    rows = attention_entropy(model, [b], taus=(0.05, 0.15, 0.3))
    assert all(r["entropy"] == 0.0 for r in rows)
    n = b["attention_mask"].sum(-1).double()  # real keys per example: 10, 6, 10, 2, 10
    per_row = lambda keep: float((n * keep.double()).sum() / n.sum())  # noqa: E731  share of ones over real rows
    ones = {(r["method"], r["tau"]): r["ones"] for r in by_layer(rows) if r["layer"] == 0}
    assert ones[("sign_softmax", None)] == 1.0 and ones[("bool", None)] == 0.0
    assert ones[("threshold", 0.05)] == 1.0 and ones[("threshold", 0.3)] == pytest.approx(per_row(1 / n > 0.3))
    assert ones[("threshold", 0.15)] == pytest.approx(per_row(1 / n > 0.15))
    assert ones[("bit", None)] == pytest.approx(per_row(1 / n > 2 / 10))  # alpha / 2 = 2 / L, L = 10
    paper = by_layer(attention_entropy(model, [b], bool_zero=1))
    assert [r["ones"] for r in paper if r["method"] == "bool"] == [1.0, 1.0]


def test_bit_uses_the_models_own_calibrated_alpha():
    model = tiny("bit", seed=5)
    b = make_batch()
    calibrate(model, b)  # on 10 tokens: alpha = 4 / 10
    rows = attention_entropy(model, [make_batch(L=8, seed=6)])  # calibrating here would give 4 / 8
    for layer in range(2):
        own = float(model.bert.encoder.layer[layer].attention.probs_quant.alpha.detach())
        assert own == pytest.approx(0.4)
        assert all(r["alpha"] == pytest.approx(own) for r in pick(rows, "bit", None, layer))
    optimal = attention_entropy(tiny(seed=5), [b], alpha_init="optimal")  # an FP model: calibrated here
    assert pick(optimal, "bit")[0]["alpha"] != pytest.approx(4 / 10)


def test_bibert_student_uses_its_own_bool_zero_and_the_table_reads():
    paper = tiny(replace(QuantConfig.preset("bibert"), bool_zero=1), seed=7)
    b = make_batch()
    own = attention_entropy(paper, [b])
    assert [r["ones"] for r in pick(own, "bool")] == [r["ones"] for r in pick(attention_entropy(paper, [b],
                                                                                                bool_zero=1), "bool")]
    assert [r["ones"] for r in pick(own, "bool")] != [r["ones"] for r in pick(attention_entropy(paper, [b],
                                                                                                bool_zero=0), "bool")]
    table = entropy_table(own)
    lines = table.splitlines()
    assert lines[0].startswith("| binarization | layer 1 | layer 2 | mean | ones |")
    assert any(line.startswith("| sign(softmax) | 0.000 | 0.000 | 0.000 | 1.000 |") for line in lines)
    assert any(line.startswith("| softmax > 0.05 |") for line in lines)
    assert any(line.startswith("| BiT {0, alpha} (alpha ") for line in lines)
    with pytest.raises(ValueError, match="alpha_init must be one of"):
        attention_entropy(paper, [b], alpha_init="mean")
    with pytest.raises(ValueError, match="no batches"):
        attention_entropy(paper, [])


# ----------------------------------------------------------------------------------------------------------
# real sentences


def test_dev_batches_reads_the_local_glue_and_refuses_a_missing_folder(tmp_path):
    from binlab.tokenizer import load_tokenizer

    with pytest.raises(FileNotFoundError):
        dev_batches("sst2", tmp_path / "nowhere", load_tokenizer(None), examples=4)
    if not (GLUE / "SST-2" / "dev.tsv").is_file():
        pytest.skip("the real GLUE is not next to the checkout")
    data = dev_batches("sst2", GLUE, load_tokenizer(None), examples=10, batch_size=4, max_length=32)
    assert [len(b["input_ids"]) for b in data] == [4, 4, 2]


@pytest.mark.skipif(not FP_TEACHER.is_dir() or not (GLUE / "SST-2").is_dir(),
                    reason="needs runs/sst2-fp/best_model and the real GLUE")
def test_cli_on_a_real_teacher(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "binlab", "entropy", "--model", str(FP_TEACHER), "--task", "sst2",
                           "--glue-dir", str(GLUE), "--examples", "16", "--max-length", "32", "--taus", "0.05,0.2",
                           "--json", str(tmp_path / "e.json")], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| sign(softmax) | 0.000 |" in proc.stdout and "| bool(scores) |" in proc.stdout
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["examples"] == 16 and result["quant"] == "W32E32A32"
    bad = subprocess.run([sys.executable, "-m", "binlab", "entropy", "--model", str(FP_TEACHER), "--task", "sst2",
                          "--glue-dir", str(GLUE), "--taus", "0.05,2"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "must lie in (0, 1)" in bad.stderr
