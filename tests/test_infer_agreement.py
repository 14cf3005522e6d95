"""binlab.infer.agreement: the engine against the fake-quant model on a dev set, and the trace of a float32 flip."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from binlab.checkpoint import save_pretrained
from binlab.infer.agreement import Decision, binarization_sites, dev_agreement, record_decisions, trace_flip
from binlab.methods.binarybert import binary_quant
from binlab.methods.split_model import build_split_model
from binlab.model import tiny_bert
from binlab.quant.config import QuantConfig
from binlab.tokenizer import load_tokenizer
from binlab.train.calibration import calibrate

SENTENCES = ["a fine film", "dull and long", "the best thing this year", "i hated every minute of it", "charming",
             "not good", "a sad , slow mess", "warm and funny", "it works", "nothing happens for two hours",
             "great acting", "bad"]


def trained_like(preset: str, seed: int = 0):
    """A random calibrated W1A1 model with BERT's vocabulary (the bundled tokenizer encodes real sentences);
    ``"split"``: BinaryBERT's W1A1 split model (two halves per binarized layer)."""
    tok = load_tokenizer()
    quant = binary_quant(1) if preset == "split" else QuantConfig.preset(preset)
    model = tiny_bert(num_labels=2, quant=quant, seed=seed, vocab_size=30522, hidden_size=64,
                      num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, max_position_embeddings=64,
                      dropout=0.0)
    if preset == "split":
        torch.manual_seed(seed)
        model = build_split_model(model.config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + len(name))))
    calibrate(model, dict(tok(SENTENCES[:8], max_length=32)))
    return model.eval(), tok


def glue_dir(tmp_path, sentences=SENTENCES):
    d = tmp_path / "glue" / "SST-2"
    d.mkdir(parents=True)
    rows = [f"{s}\t{i % 2}" for i, s in enumerate(sentences)]
    (d / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return tmp_path / "glue"


def test_sites_are_every_activation_binarizer():
    model, _ = trained_like("bit")
    names = list(binarization_sites(model))
    # per layer: Q, K, V inputs, Q, K, V, probabilities, attention output input, FFN1 and FFN2 inputs; the pooler's
    assert len(names) == 2 * 10 + 1 and names[-1] == "bert.pooler.dense.input_quantizer"
    bibert, _ = trained_like("bibert")
    assert len(binarization_sites(bibert)) == 2 * 9 + 1  # no probabilities: bool(scores) is exact


def test_decision_values_decide_the_bits():
    """Every recorded bit is 1 exactly where the decision value is >= 0 (> 0 for the {0, alpha} sites)."""
    model, tok = trained_like("bit")
    batch = dict(tok(SENTENCES[:4], max_length=32))
    _, calls = record_decisions(model, batch)
    assert len(calls) == len(binarization_sites(model))
    for c in calls:
        unsigned = c.site.endswith(("probs_quant", "ffn.output.input_quantizer"))
        expected = c.value > 0 if unsigned else c.value >= 0
        assert torch.equal(c.bits, expected), c.site


def test_trace_finds_the_first_real_flip_and_says_whether_rounding_explains_it():
    mask = torch.tensor([1, 1, 1, 0])
    same = torch.zeros(1, 4, 3, dtype=torch.bool)
    v = torch.full((1, 4, 3), 0.3, dtype=torch.float64)
    v32 = (v + 3e-8 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0))).float()  # rounding noise
    padded = same.clone()
    padded[0, 3, 1] = True  # a flip at a padded token: harmless, skipped
    real = same.clone()
    real[0, 1, 2] = True
    tiny = v.clone()
    tiny[0, 1, 2] = 1e-9
    calls64 = [Decision("a", same, v), Decision("b", same, v), Decision("c", same, tiny)]
    noisy = v32.clone()
    noisy[0, 1, 2] = -1e-8
    calls32 = [Decision("a", same, v32), Decision("b", padded, v32), Decision("c", real, noisy)]
    flip = trace_flip(calls32, calls64, 0, mask)
    assert flip["site"] == "c" and flip["position"] == [1, 2] and flip["flipped"] == 1
    assert flip["explained_by_rounding"] and flip["distance_to_threshold"] == pytest.approx(1e-9)
    assert 1e-8 < flip["rounding_noise"] < 2e-7 and flip["noise_relative"] < 1e-6
    far = tiny.clone()
    far[0, 1, 2] = 0.01  # 0.01 from the threshold: the 3e-8 noise of the other entries cannot have moved it
    far32 = noisy.clone()
    far32[0, 1, 2] = -0.01
    flip = trace_flip(calls32[:2] + [Decision("c", real, far32)], calls64[:2] + [Decision("c", same, far)], 0, mask)
    assert flip["site"] == "c" and not flip["explained_by_rounding"]
    assert trace_flip(calls64, calls64, 0, mask) is None


def test_trace_on_a_model_whose_float32_copy_was_perturbed_in_layer_2():
    """Layer 1 is identical in both runs: the first flip found must be in layer 2 or after."""
    model, tok = trained_like("bit")
    batch = dict(tok(SENTENCES, max_length=32))
    m64 = copy.deepcopy(model).double()
    m32 = copy.deepcopy(model)
    with torch.no_grad():
        m32.bert.encoder.layer[1].attention.query.bias.add_(0.05)
    _, c64 = record_decisions(m64, batch)
    _, c32 = record_decisions(m32, batch)
    flips = [trace_flip(c32, c64, i, batch["attention_mask"][i]) for i in range(len(SENTENCES))]
    found = [f for f in flips if f is not None]
    assert found, "a 0.05 shift of layer 2's query bias flips some bit"
    assert all(".layer.1." in f["site"] or "pooler" in f["site"] for f in found)
    assert all(f["site"].endswith("query_quant") for f in found)  # the first binarizer after the shifted bias
    assert not any(f["explained_by_rounding"] for f in found)  # a changed model, not rounding: the noise is 0.05


@pytest.mark.parametrize("preset", ["bit", "bibert", "split"])
def test_dev_agreement_on_a_small_dev_set(tmp_path, preset):
    model, tok = trained_like(preset)
    ckpt = save_pretrained(model, tmp_path / "ckpt", tokenizer=tok)
    result = dev_agreement(ckpt, "sst2", glue_dir(tmp_path), batch_size=5, max_length=32)
    assert result.examples == len(SENTENCES) and not result.regression
    assert result.counts["engine vs float64"] == len(SENTENCES)  # the engine's products are the float64 model's
    assert set(result.metric) == {"engine", "float64", "float32"}
    assert result.max_abs_logit_diff["engine vs float64"] < 1e-4
    disagree = len(SENTENCES) - result.counts["float32 vs float64"]
    assert len(result.rows) == disagree and all(r["flip"]["explained_by_rounding"] for r in result.rows)
    text = result.markdown()
    assert "| engine vs float64 | 12 / 12 |" in text


def test_the_engine_in_float64_gives_the_float64_labels(tmp_path):
    model, tok = trained_like("bibert", seed=3)
    ckpt = save_pretrained(model, tmp_path / "ckpt", tokenizer=tok)
    result = dev_agreement(ckpt, "sst2", glue_dir(tmp_path), batch_size=6, max_length=32, trace=False,
                           engine_dtype=torch.float64)
    assert result.engine_dtype == "float64" and "the engine in float64" in result.markdown()
    assert result.counts["engine vs float64"] == len(SENTENCES)
    # exact products, float64 around them; the weight scales are stored in float32 (binlab.infer.engine)
    assert result.max_abs_logit_diff["engine vs float64"] < 1e-6
    assert dev_agreement(ckpt, "sst2", glue_dir(tmp_path / "b"), max_length=32, trace=False).engine_dtype == "float32"


def test_the_command_line(tmp_path):
    from test_infer import binlab

    model, tok = trained_like("bibert")
    ckpt = save_pretrained(model, tmp_path / "ckpt", tokenizer=tok)
    proc = binlab("agreement", str(ckpt), "--task", "sst2", "--glue-dir", str(glue_dir(tmp_path)), "--max-length", "32",
                  "--json", str(tmp_path / "a.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "engine vs float64" in proc.stdout and (tmp_path / "a.json").is_file()
    assert json.loads((tmp_path / "a.json").read_text())["engine_dtype"] == "float32"
    proc = binlab("agreement", str(tmp_path / "nothing"), "--task", "sst2", "--glue-dir", str(tmp_path))
    assert proc.returncode == 2 and "no such directory" in proc.stderr and "Traceback" not in proc.stderr
