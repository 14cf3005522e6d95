"""binlab.model: shapes, masks, which tensors are quantized, the attention modes, trainability per preset."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from binlab.model import BertConfig, BertForSequenceClassification, BertModel
from binlab.quant.config import QuantConfig
from binlab.quant.layers import QuantEmbedding, QuantLinear

PRESETS = ["fp", "w2a8", "w1a8", "w1a4", "w1a2", "w1a1", "bibert", "bit"]


def tiny_config(quant="fp", **kw) -> BertConfig:
    args = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=24, num_labels=3,
                quant=QuantConfig.preset(quant) if isinstance(quant, str) else quant)
    args.update(kw)
    return BertConfig(**args)


def batch(B=3, L=7, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 5:] = 0  # row 1: two padded positions
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = torch.zeros(B, L, dtype=torch.long)
    types[:, 2:] = 1
    types[mask == 0] = 0
    return ids, mask, types


def test_outputs_have_the_documented_shapes():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = BertForSequenceClassification(cfg).eval()
    ids, mask, types = batch()
    out = model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True,
                output_attentions=True, output_qkv=True)
    assert out.logits.shape == (3, 3)
    assert out.pooled_output.shape == (3, 32)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1  # embeddings + each layer (13 for BERT-base)
    assert all(h.shape == (3, 7, 32) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert len(out.attention_scores) == 2 and out.attention_scores[0].shape == (3, 4, 7, 7)
    assert len(out.qkv) == 2 and all(t.shape == (3, 4, 7, 8) for t in out.qkv[1])
    plain = model(ids, attention_mask=mask, token_type_ids=types)
    assert plain.hidden_states is None and plain.attention_scores is None and plain.qkv is None
    assert torch.equal(plain.logits, out.logits)


def test_regression_head_has_one_output():
    model = BertForSequenceClassification(tiny_config(num_labels=1)).eval()
    ids, mask, types = batch()
    assert model(ids, mask, types).logits.shape == (3, 1)


def test_default_config_is_bert_base():
    c = BertConfig()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (768, 12, 12, 3072)
    assert c.quant == QuantConfig()


def test_fp_scores_are_qk_over_sqrt_d_plus_mask():
    torch.manual_seed(1)
    model = BertModel(tiny_config()).eval()
    ids, mask, types = batch()
    out = model(ids, mask, types, output_attentions=True, output_qkv=True)
    for scores, (q, k, _) in zip(out.attention_scores, out.qkv):
        expected = q @ k.transpose(-1, -2) / math.sqrt(8) + (1 - mask[:, None, None, :].float()) * -10000.0
        torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4)


def test_padding_does_not_change_real_tokens():
    """The attention mask must hide padded keys: appending [PAD]s changes nothing at the real positions."""
    torch.manual_seed(2)
    for preset in ("fp", "bibert"):
        model = BertForSequenceClassification(tiny_config(preset)).eval()
        ids = torch.tensor([[5, 9, 13, 2, 7]])
        short = model(ids, output_hidden_states=True)
        padded_ids = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
        padded_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
        long = model(padded_ids, attention_mask=padded_mask, output_hidden_states=True)
        for a, b in zip(short.hidden_states, long.hidden_states):
            torch.testing.assert_close(a, b[:, :5], rtol=0, atol=1e-5)
        torch.testing.assert_close(short.logits, long.logits, rtol=0, atol=1e-5)


def test_token_type_ids_matter_and_default_to_zero():
    torch.manual_seed(3)
    model = BertModel(tiny_config()).eval()
    ids, _, types = batch()
    none = model(ids).last_hidden_state
    zeros = model(ids, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    ones = model(ids, token_type_ids=types).last_hidden_state
    assert torch.equal(none, zeros)
    assert not torch.allclose(none, ones)


def test_which_layers_stay_full_precision():
    """methods.md §1: quantize the word embedding, Q/K/V/O, FFN1, FFN2, pooler; keep the classifier,
    position/type embeddings and LayerNorms FP."""
    model = BertForSequenceClassification(tiny_config("w1a1"))
    quant_linear = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    fp_linear = [n for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear)]
    assert fp_linear == ["classifier"]
    assert model.bert.encoder.layer[0].ffn.output.input_signed is False  # GELU/ReLU output: unsigned
    assert model.bert.encoder.layer[0].ffn.intermediate.input_signed is True
    assert len(quant_linear) == 2 * 6 + 1  # 6 per layer + pooler
    assert "bert.pooler.dense" in quant_linear
    assert isinstance(model.bert.embeddings.word_embeddings, QuantEmbedding)
    assert type(model.bert.embeddings.position_embeddings) is nn.Embedding
    assert type(model.bert.embeddings.token_type_embeddings) is nn.Embedding


def test_ffn_activation_follows_quant_config():
    gelu = BertForSequenceClassification(tiny_config("fp"))
    assert isinstance(gelu.bert.encoder.layer[0].ffn.act, nn.GELU)
    relu = BertForSequenceClassification(tiny_config(QuantConfig(ffn_act="relu")))
    assert isinstance(relu.bert.encoder.layer[0].ffn.act, nn.ReLU)


def pm1(x):
    """sign with binlab's convention sign(0) = +1."""
    return torch.where(x >= 0, 1.0, -1.0)


def test_bool_attention_is_binary_and_has_no_softmax():
    """BiBERT: scores = sign(Q) sign(K)^T / sqrt(d) + mask, context = bool(scores) @ sign(V)."""
    torch.manual_seed(4)
    cfg = tiny_config("bibert")
    assert cfg.quant.attention == "bool"
    model = BertModel(cfg).eval()
    ids, mask, types = batch()
    out = model(ids, mask, types, output_hidden_states=True, output_attentions=True, output_qkv=True)
    add = (1 - mask[:, None, None, :].float()) * -10000.0
    for scores, (q, k, v) in zip(out.attention_scores, out.qkv):
        expected = pm1(q) @ pm1(k).transpose(-1, -2) / math.sqrt(8) + add
        torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
        real = scores[mask[:, None, None, :].expand_as(scores).bool()]
        dots = real * math.sqrt(8)  # dot products of +-1 vectors of length 8: even integers in [-8, 8]
        assert torch.allclose(dots, dots.round(), atol=1e-4) and dots.abs().max() <= 8 + 1e-4
        assert torch.all(dots.round().remainder(2) == 0)
    # the context of layer 0, rebuilt by hand: {0, 1} attention times sign(V), no softmax, no normalisation
    attention = model.encoder.layer[0].attention
    ctx, scores, (q, k, v) = attention(out.hidden_states[0], add)
    expected = ((scores > 0).float() @ pm1(v)).transpose(1, 2).reshape(3, 7, 32)
    torch.testing.assert_close(ctx, expected, rtol=0, atol=1e-5)
    assert attention.probs_quant is None


def bool_zero(z: int) -> QuantConfig:
    return QuantConfig(**{**QuantConfig.preset("bibert").to_dict(), "bool_zero": z})


def test_bool_zero_decides_what_an_exact_zero_score_becomes():
    """bool_zero=0 (the code): a score of exactly 0 -> 0; bool_zero=1 (the paper): -> 1. Same weights otherwise."""
    torch.manual_seed(7)
    code = BertModel(tiny_config(bool_zero(0))).eval()
    paper = BertModel(tiny_config(bool_zero(1))).eval()
    paper.load_state_dict(code.state_dict())
    ids, mask, types = batch()
    h = code.embeddings(ids, types)
    add = (1 - mask[:, None, None, :].float()) * -10000.0
    ctx0, scores, (q, k, v) = code.encoder.layer[0].attention(h, add)
    ctx1, scores1, _ = paper.encoder.layer[0].attention(h, add)
    torch.testing.assert_close(scores, scores1, rtol=0, atol=0)
    real = mask[:, None, None, :].expand_as(scores).bool()
    assert (scores[real] == 0).float().mean() > 0.1  # +-1 dot products over d = 8: exact zeros are common
    by_hand = lambda a: (a.float() @ pm1(v)).transpose(1, 2).reshape(3, 7, 32)  # noqa: E731
    torch.testing.assert_close(ctx0, by_hand(scores > 0), rtol=0, atol=1e-5)
    torch.testing.assert_close(ctx1, by_hand(scores >= 0), rtol=0, atol=1e-5)
    assert not torch.allclose(ctx0, ctx1)


@pytest.mark.parametrize("zero", [0, 1])
def test_bool_attention_dropout_never_attends_to_padding(zero):
    """Q = K = 0 and V = +1: every real score is sqrt(d) > 0, so ctx counts the kept real keys of each row.

    bool_zero=0 drops scores before bool (a dropped score is 0 -> 0): ctx is an integer <= the real keys.
    bool_zero=1 drops entries of the map after bool (kept ones scaled by 1/(1-p)): ctx (1-p) is such an integer.
    Dropout before a bool with bool(0) = 1 would count dropped real AND padded keys as ones instead."""
    torch.manual_seed(8)
    cfg = tiny_config(bool_zero(zero), attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0)
    attention = BertModel(cfg).encoder.layer[0].attention.train()
    with torch.no_grad():
        for lin in (attention.query, attention.key, attention.value):
            lin.weight.zero_()
        attention.query.bias.zero_()
        attention.key.bias.zero_()
        attention.value.bias.fill_(1.0)
    B, L = 64, 10
    mask = torch.ones(B, L)
    mask[:, 3:] = 0  # 3 real keys, 7 padded ones in every row
    add = (1 - mask[:, None, None, :]) * -10000.0
    ctx, scores, _ = attention(torch.randn(B, L, 32), add)
    counts = ctx * (0.5 if zero else 1.0)  # kept real keys per query row and channel
    assert torch.equal(counts, counts.round()) and counts.min() >= 0 and counts.max() <= 3
    assert counts.min() < 3  # dropout did act
    attention.eval()
    ctx, _, _ = attention(torch.randn(B, L, 32), add)
    assert torch.equal(ctx, torch.full_like(ctx, 3.0))  # no dropout: all 3 real keys, never a padded one


def test_attention_quantization_can_be_switched_off():
    torch.manual_seed(5)
    on = tiny_config("w1a8")
    off = tiny_config(QuantConfig(**{**on.quant.to_dict(), "quantize_attention": False}))
    for cfg, kind in ((on, nn.Identity), (off, nn.Identity)):
        attention = BertModel(cfg).encoder.layer[0].attention
        is_identity = [isinstance(m, kind) for m in (attention.query_quant, attention.key_quant,
                                                     attention.value_quant, attention.probs_quant)]
        assert is_identity == ([False] * 4 if cfg is on else [True] * 4)
        assert not isinstance(attention.query.input_quantizer, nn.Identity)  # the linear layers stay quantized


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_trains(preset):
    """Gradients reach the latent FP weights through the straight-through estimators."""
    torch.manual_seed(5)
    model = BertForSequenceClassification(tiny_config(preset)).train()
    ids, mask, types = batch()
    out = model(ids, mask, types, output_hidden_states=True, output_attentions=True, output_qkv=True)
    assert torch.isfinite(out.logits).all()
    loss = nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2])) + out.hidden_states[-1].pow(2).mean()
    loss.backward()
    layer = model.bert.encoder.layer[0]
    for name, p in [("word embedding", model.bert.embeddings.word_embeddings.weight),
                    ("query", layer.attention.query.weight), ("key", layer.attention.key.weight),
                    ("value", layer.attention.value.weight), ("attention output", layer.attention_output.dense.weight),
                    ("ffn in", layer.ffn.intermediate.weight), ("ffn out", layer.ffn.output.weight),
                    ("pooler", model.bert.pooler.dense.weight), ("classifier", model.classifier.weight)]:
        assert p.grad is not None, f"{preset}: no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"{preset}: non-finite gradient for {name}"
        assert p.grad.abs().sum() > 0, f"{preset}: zero gradient for {name}"
    before = layer.attention.query.weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, layer.attention.query.weight)


@pytest.mark.parametrize("preset", ["w1a1", "bibert", "bit"])
def test_binarized_model_differs_from_fp_on_the_same_weights(preset):
    torch.manual_seed(6)
    fp = BertForSequenceClassification(tiny_config("fp")).eval()
    q = BertForSequenceClassification(tiny_config(preset)).eval()
    missing, unexpected = q.load_state_dict(fp.state_dict(), strict=False)
    assert not unexpected
    ids, mask, types = batch()
    a = fp(ids, mask, types).last_hidden_state
    b = q(ids, mask, types).last_hidden_state
    assert (a - b).abs().max() > 1e-3


def test_bad_inputs_raise_clear_errors():
    model = BertForSequenceClassification(tiny_config()).eval()
    ids, mask, types = batch()
    with pytest.raises(ValueError, match="2-D"):
        model(ids[0])
    with pytest.raises(ValueError, match="integer"):
        model(ids.float())
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 50\)"):
        model(ids + 50)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=mask[:, :3])
    with pytest.raises(ValueError, match="token_type_ids"):
        model(ids, token_type_ids=types + 2)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(hidden_size=30)
    with pytest.raises(ValueError, match="num_labels"):
        tiny_config(num_labels=0)
    with pytest.raises(ValueError, match="dropout"):
        tiny_config(hidden_dropout_prob=1.5)
    with pytest.raises(TypeError):
        tiny_config(quant=42)


def test_hf_config_round_trip():
    cfg = tiny_config("bibert", num_labels=1, hidden_dropout_prob=0.0)
    d = cfg.to_hf_dict()
    assert d["model_type"] == "bert" and d["problem_type"] == "regression"
    back = BertConfig.from_hf_dict(d)
    assert back == cfg
    assert BertConfig.from_hf_dict(d, num_labels=4).num_labels == 4
    with pytest.raises(TypeError, match="unknown"):
        BertConfig.from_hf_dict(d, not_a_field=1)
    with pytest.raises(ValueError, match="gelu_new"):
        BertConfig.from_hf_dict({**d, "hidden_act": "gelu_new"})
    hf_style = {k: v for k, v in d.items() if k not in ("binlab_quant", "num_labels")}
    assert BertConfig.from_hf_dict(hf_style).num_labels == 1  # from id2label
    assert BertConfig.from_hf_dict(hf_style).quant == QuantConfig()
