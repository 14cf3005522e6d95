"""binlab.analysis.costs: parameters, memory and FLOPs from a BertConfig, checked against the model itself
and against the papers' numbers (methods.md §0 "Efficiency", §2.9, §3.7)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from binlab.analysis import costs
from binlab.model import BertConfig, BertModel

TINY = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=40, type_vocab_size=3)
BASE = BertConfig()  # BERT-base: 12 layers, 768, 12 heads, 3072, vocab 30522, 512 positions, 2 types


def _group_of(name: str) -> str:
    """The costs.PARAM_GROUPS group of a BertModel parameter name (an independent mapping)."""
    if name.startswith("embeddings."):
        kind = name.split(".")[1]
        return {"word_embeddings": "word_embeddings", "position_embeddings": "position_embeddings",
                "token_type_embeddings": "token_type_embeddings", "LayerNorm": "embedding_layernorm"}[kind]
    if name.startswith("pooler."):
        return "pooler_weight" if name.endswith("weight") else "pooler_bias"
    if "LayerNorm" in name:
        return "encoder_layernorms"
    part = "attention" if ".attention" in name else "ffn"
    return f"{part}_weights" if name.endswith("weight") else f"{part}_biases"


@pytest.mark.parametrize("config", [TINY, dataclasses.replace(TINY, num_hidden_layers=3, intermediate_size=48)])
def test_param_counts_match_the_model_group_by_group(config):
    model = BertModel(config)
    by_group = dict.fromkeys(costs.PARAM_GROUPS, 0)
    for name, p in model.named_parameters():
        by_group[_group_of(name)] += p.numel()
    assert costs.param_counts(config) == by_group
    assert costs.count_params(config) == sum(p.numel() for p in model.parameters())
    assert list(costs.param_counts(config)) == list(costs.PARAM_GROUPS)


@pytest.mark.parametrize("seq_len", [1, 7, 24])
def test_flops_match_torch_flop_counter(seq_len):
    """torch counts 2 FLOPs per multiply-add of every matmul/bmm/addmm the forward pass runs."""
    model = BertModel(TINY).eval()
    ids = torch.randint(0, TINY.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids)
    assert costs.flops(TINY, seq_len) == counter.get_total_flops()


def test_bert_base_matches_the_papers():
    # methods.md §0/§2.9: 109.48 M parameters, 417.6 MiB at FP32, ~22.5 GFLOPs at 128 tokens.
    assert round(costs.count_params(BASE) / 1e6, 2) == 109.48
    summary = costs.cost_summary(BASE, 128)
    assert round(summary["MiB"], 1) == 417.6
    assert summary["bytes"] == 4 * costs.count_params(BASE)
    assert summary["GFLOPs"] == pytest.approx(22.5, rel=0.01)  # 22.35: softmax/GELU/LN not counted
    assert summary["fp32_GFLOPs"] == summary["GFLOPs"]
    # §2.9: 12 layers x 128 x (4 768^2 + 2 768 3072) MACs for the linear layers.
    macs = costs.matmul_macs(BASE, 128)
    assert macs["qkv_projections"] + macs["attention_output"] + macs["ffn"] == 12 * 128 * (4 * 768**2 + 2 * 768 * 3072)


def test_one_bit_size_matches_methods_reconstruction():
    # methods.md §3.7: all 1-bit weights (word embedding + encoder + pooler) = 13.62 MB,
    # plus FP32 for everything else = 15.7 MB.
    summary = costs.cost_summary(dataclasses.replace(BASE, quant="w1a1"))
    assert round(summary["quantized_bytes"] / 1e6, 2) == 13.62
    assert round(summary["MB"], 1) == 15.7
    fp = costs.cost_summary(BASE)
    assert fp["quantized_bytes"] / summary["quantized_bytes"] == 32


def test_binary_flops_follow_the_w_times_a_over_64_rule():
    fp = costs.flops(BASE, 128)
    w1a1 = costs.bitop_flops(dataclasses.replace(BASE, quant="w1a1"), 128)
    assert w1a1 == fp / 64
    assert w1a1 == pytest.approx(22.5e9 * 1 * 1 / 64, rel=0.01)
    # Linear layers count w_bits * a_bits / 64; attention a_bits^2 / 64 (activation x activation).
    macs = costs.matmul_macs(BASE, 128)
    linear = sum(v for k, v in macs.items() if k not in costs.ATTENTION_MAC_GROUPS)
    attention = sum(macs[k] for k in costs.ATTENTION_MAC_GROUPS)
    for preset, (w, a) in {"w1a4": (1, 4), "w1a2": (1, 2)}.items():
        got = costs.bitop_flops(dataclasses.replace(BASE, quant=preset), 128)
        assert got == pytest.approx(2 * linear * w * a / 64 + 2 * attention * min(1, a * a / 64))
    # BinaryBERT's W1A4 is listed at 1.5 G (methods.md §0).
    assert round(costs.bitop_flops(dataclasses.replace(BASE, quant="w1a4"), 128) / 1e9, 1) == 1.5
    # Full precision counts every product as one FLOP.
    assert costs.bitop_flops(BASE, 128) == fp


def test_attention_left_fp_counts_fully():
    quant = dataclasses.replace(BertConfig(quant="w1a1").quant, quantize_attention=False)
    cfg = dataclasses.replace(BASE, quant=quant)
    macs = costs.matmul_macs(BASE, 64)
    attention = sum(macs[k] for k in costs.ATTENTION_MAC_GROUPS)
    linear = sum(macs.values()) - attention
    assert costs.bitop_flops(cfg, 64) == pytest.approx(2 * linear / 64 + 2 * attention)


def test_bitop_factor():
    assert costs.bitop_factor(32, 32) == 1.0
    assert costs.bitop_factor(1, 1) == 1 / 64
    assert costs.bitop_factor(8, 8) == 1.0
    assert costs.bitop_factor(1, 32) == 0.5
    for bad in [(0, 1), (1, 33), (1.0, 1), (True, 1)]:
        with pytest.raises(ValueError):
            costs.bitop_factor(*bad)


def test_memory_groups_use_the_config_bits():
    cfg = dataclasses.replace(TINY, quant="w2a8")  # ternary weights and embedding
    bits = costs.group_bits(cfg)
    assert bits["word_embeddings"] == 2 and bits["ffn_weights"] == 2 and bits["pooler_weight"] == 2
    assert bits["position_embeddings"] == 32 and bits["encoder_layernorms"] == 32
    mem = costs.memory_bytes(cfg)
    counts = costs.param_counts(cfg)
    assert mem["attention_weights"] == counts["attention_weights"] / 4
    assert mem["attention_biases"] == counts["attention_biases"] * 4


def test_flops_scale_with_sequence_length():
    # Linear layers grow linearly in T, attention quadratically.
    a, b = costs.matmul_macs(BASE, 64), costs.matmul_macs(BASE, 128)
    assert b["ffn"] == 2 * a["ffn"]
    assert b["attention_scores"] == 4 * a["attention_scores"]
    assert b["pooler"] == a["pooler"]


@pytest.mark.parametrize("seq_len", [0, -1, 1.5, True, 513])
def test_bad_sequence_length_raises(seq_len):
    with pytest.raises(ValueError):
        costs.matmul_macs(BASE, seq_len)


def test_not_a_config_raises():
    with pytest.raises(TypeError):
        costs.param_counts({"hidden_size": 768})
