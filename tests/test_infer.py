"""The packed export and the bitwise engine (binlab.infer), checked against the fake-quant model on tiny models.

The models are random (weights, biases, LayerNorms, BiT's thresholds) and calibrated on a random batch. Most are
"dyadic": every parameter rounded to a multiple of 2^-12 and every reduction length a power of two, so that the
scales the export derives (alpha = mean |W| per tensor or per row) are exact in float32, and a float64 engine
must then reproduce the float64 fake-quant model up to the order of its float operations (~1e-15).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

from binlab.checkpoint import save_pretrained
from binlab.infer import packed as packed_format
from binlab.infer.engine import PackedBert
from binlab.infer.export import export_packed, packed_tensors, resolve_source
from binlab.infer.packed import CONFIG_FILE, WEIGHTS_FILE, file_bytes, load_packed, size_report
from binlab.kernels.packing import unpack_signs
from binlab.methods.binarybert import binary_quant
from binlab.methods.split_model import build_split_model, split_ternary_model
from binlab.model import BertForSequenceClassification, tiny_bert
from binlab.quant.config import QuantConfig
from binlab.quant.layers import QuantEmbedding, QuantLinear
from binlab.train.calibration import calibrate
from conftest import ROOT

_W1A1 = dict(weight_bits=1, embedding_bits=1, act_bits=1)
#: name -> QuantConfig: both presets, and the other W1A1 combinations of their parts.
CONFIGS = {
    "bit": QuantConfig.preset("bit"),  # attention softmax01: softmax, then {0, alpha}; ReLU -> {0, alpha}
    "bibert": QuantConfig.preset("bibert"),  # attention bool; sign everywhere; GELU
    "bibert-bool-zero-1": replace(QuantConfig.preset("bibert"), bool_zero=1),
    "bit-qkv-threshold-per-row": replace(QuantConfig.preset("bit"), qkv_threshold=True, weight_per_row=True),
    "softmax-elastic-gelu": QuantConfig(**_W1A1, weight_method="bwn", act_method="elastic", attention="softmax",
                                        ffn_act="gelu"),  # GELU -> {0, alpha} -> AND product
    "softmax-sign-relu": QuantConfig(**_W1A1, weight_method="bibert", act_method="sign", attention="softmax",
                                     ffn_act="relu"),  # sign(p) = +1: the context is an XNOR product
}
#: one per attention mode
MODES = {"softmax": "softmax-elastic-gelu", "softmax01": "bit", "bool": "bibert"}
#: BinaryBERT's split model at W1A1 (two BWN halves per layer; BiT's elastic activations, softmax01, ReLU) and a
#: GELU variant: the name -> QuantConfig of the configs built with ``split=True``
SPLIT = {"split": binary_quant(1), "split-gelu": binary_quant(1, ffn_act="gelu")}
NAMES = [*CONFIGS, *SPLIT]

VOCAB = 300
GRID = 2.0 ** -12


def make_model(quant, *, hidden=64, layers=2, heads=2, inter=128, vocab=VOCAB, max_pos=128, labels=3,
               dyadic=True, seed=0, split=False) -> BertForSequenceClassification:
    """A random calibrated W1A1 model in eval mode (see the module docstring for ``dyadic``); ``split``: BinaryBERT's
    split model of that shape, its two halves random and calibrated apart (their thresholds differ)."""
    model = tiny_bert(num_labels=labels, quant=quant, seed=seed, vocab_size=vocab, hidden_size=hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
                      max_position_embeddings=max_pos, dropout=0.0)
    if split:
        torch.manual_seed(seed)
        model = build_split_model(model.config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("LayerNorm.weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.startswith("classifier"):
                p.copy_(noise)
            elif name.endswith("bias"):  # linear biases, LayerNorm biases, BiT's learned thresholds
                p.copy_(0.1 * noise)
            if dyadic:
                p.copy_(torch.round(p / GRID) * GRID)
    ids, mask, types = batch(8, 40, seed=seed + 2)
    calibrate(model, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    return model.eval()


def batch(B, L, seed=0, vocab=VOCAB, pad=True):
    """Random ids, a mask with rows of different lengths (row 0 full), and token types (a second segment)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, L), generator=gen)
    lengths = torch.randint(max(1, L // 4), L + 1, (B,), generator=gen) if pad else torch.full((B,), L)
    lengths[0] = L
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    types = ((torch.arange(L)[None] >= lengths[:, None] // 2) & mask.bool()).long()
    return ids, mask, types


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (fake-quant model, packed folder) for every config, built once."""
    root = tmp_path_factory.mktemp("packed")
    out = {}
    for name, quant in CONFIGS.items():
        model = make_model(quant)
        out[name] = (model, export_packed(model, root / name))
    for name, quant in SPLIT.items():
        model = make_model(quant, split=True)
        out[name] = (model, export_packed(model, root / name))
    return out


# ----------------------------------------------------------------------------------------------------------
# the reference products, from the fake-quant model itself


def engine_name(module_name: str) -> str | None:
    """``bert.encoder.layer.0.attention.query`` -> ``layer.0.query``; the pooler -> ``pooler``; a split layer's
    halves ``....query.dense_1`` / ``.dense_2`` -> ``layer.0.query`` / ``layer.0.query.half2``."""
    if module_name.endswith((".dense_1", ".dense_2")):
        base = engine_name(module_name[: -len(".dense_1")])
        return None if base is None else base + ("" if module_name.endswith("1") else ".half2")
    parts = module_name.split(".")
    if module_name == "bert.pooler.dense":
        return "pooler"
    if parts[:3] != ["bert", "encoder", "layer"]:
        return None
    rest = ".".join(parts[4:])
    table = {"attention.query": "query", "attention.key": "key", "attention.value": "value",
             "attention_output.dense": "attention_output", "ffn.intermediate": "intermediate",
             "ffn.output": "output"}
    return f"layer.{parts[3]}.{table[rest]}" if rest in table else None


def as_bits(q: torch.Tensor) -> torch.Tensor:
    """A binarized tensor as the operand of its popcount product: {0, 1} if it has zeros ({0, alpha}), else +-1."""
    return (q > 0).double() if bool((q == 0).any()) else torch.sign(q).double()


def reference_products(model64, ids, mask, types) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The float64 fake-quant model's logits and every binarized product, computed in float64 from what its
    quantizers output (hooks), named as the engine's trace names them."""
    seen, hooks = {}, []

    def keep(key):
        def hook(module, inputs, output):
            seen[key] = output.detach()
        return hook

    for name, m in model64.named_modules():
        if isinstance(m, QuantLinear) and engine_name(name):
            hooks.append(m.input_quantizer.register_forward_hook(keep((engine_name(name), "x"))))
            hooks.append(m.weight_quantizer.register_forward_hook(keep((engine_name(name), "w"))))
        if name.endswith(("query_quant", "key_quant", "value_quant", "probs_quant")):
            layer = name.split(".")[3]
            hooks.append(m.register_forward_hook(keep((f"layer.{layer}", name.rsplit(".", 1)[1]))))
    try:
        with torch.no_grad():
            out = model64(ids, mask, types, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    products = {}
    for (name, part), x in list(seen.items()):
        if part == "x":
            products[name] = F.linear(as_bits(x), as_bits(seen[(name, "w")]))
    c = model64.config
    H, d = c.num_attention_heads, c.head_size
    for i in range(c.num_hidden_layers):
        p = f"layer.{i}"

        def heads(t):
            return t.view(t.shape[0], t.shape[1], H, d).transpose(1, 2)

        q, k, v = (as_bits(heads(seen[(p, n)])) for n in ("query_quant", "key_quant", "value_quant"))
        products[p + ".scores"] = q @ k.transpose(-1, -2)
        if c.quant.attention == "bool":
            s = out.attention_scores[i]
            probs = ((s >= 0) if c.quant.bool_zero else (s > 0)).double()
        else:
            probs = as_bits(seen[(p, "probs_quant")])
        products[p + ".context"] = probs @ v
    return out.logits, products


def float64(model):
    return copy.deepcopy(model).double().eval()


# ----------------------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("L", [37, 70])
def test_integer_products_equal_the_float64_fake_quant_products(exported, name, L):
    model, folder = exported[name]
    ids, mask, types = batch(3, L, seed=L)
    _, expected = reference_products(float64(model), ids, mask, types)
    trace = {}
    PackedBert(folder, dtype=torch.float64)(ids, mask, types, trace=trace)
    assert set(trace) == set(expected), set(trace) ^ set(expected)
    for key, ref in expected.items():
        got = trace[key]
        assert got.dtype == torch.int32, key
        assert torch.equal(got.reshape(ref.shape).double(), ref), f"{name}: product {key} differs"
    # the products are not trivial: some of each sign, and attention that selects
    assert (trace["layer.1.query"] > 0).any() and (trace["layer.1.query"] < 0).any()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("L", [37, 70])
def test_logits_match_the_float64_fake_quant_model(exported, name, L):
    model, folder = exported[name]
    ids, mask, types = batch(4, L, seed=100 + L)
    with torch.no_grad():
        ref = float64(model)(ids, mask, types).logits
    got = PackedBert(folder, dtype=torch.float64)(ids, mask, types)
    assert got.dtype == torch.float64 and got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-9
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert float(ref.std()) > 0.1  # logits that differ between examples: the comparison has something to see


@pytest.mark.parametrize("mode", list(MODES))
def test_each_attention_mode_in_float32(exported, mode):
    """The float32 engine against the float32 fake-quant model: equal up to float32 rounding and the rare bit that
    rounding moves across a threshold (the float64 comparisons above are exact)."""
    model, folder = exported[MODES[mode]]
    assert model.config.quant.attention == mode
    ids, mask, types = batch(6, 45, seed=7)
    with torch.no_grad():
        ref = model(ids, mask, types).logits
    got = PackedBert(folder)(ids, mask, types)
    assert got.dtype == torch.float32
    assert float((got - ref).abs().median()) < 1e-4
    assert float((got.argmax(-1) == ref.argmax(-1)).float().mean()) >= 5 / 6


@pytest.mark.parametrize("name", ["bit", "bibert", "split"])
def test_padding_changes_nothing(exported, name):
    """Each row of a padded batch gives the logits of the same sentence alone, unpadded."""
    _, folder = exported[name]
    engine = PackedBert(folder, dtype=torch.float64)
    ids, mask, types = batch(4, 70, seed=3)
    together = engine(ids, mask, types)
    for i in range(4):
        n = int(mask[i].sum())
        alone = engine(ids[i:i + 1, :n], mask[i:i + 1, :n], types[i:i + 1, :n])
        assert float((together[i] - alone[0]).abs().max()) < 1e-9, i
    assert int(mask.sum(1).min()) < 64 < 70  # one row crosses a word boundary of the keys, one does not


def test_hidden_sizes_that_are_not_multiples_of_64(tmp_path):
    """K = 80, 40 (head) and 144 (FFN): the last word of every packed row is partial. The derived scales are not
    exact in float32 here, so the float64 comparison holds to their rounding (~1e-8 relative)."""
    for name in ("bit", "bibert", "split"):
        model = make_model({**CONFIGS, **SPLIT}[name], hidden=80, heads=2, inter=144, dyadic=False,
                           split=name in SPLIT)
        engine = PackedBert(export_packed(model, tmp_path / name), dtype=torch.float64)
        ids, mask, types = batch(3, 29, seed=5)
        _, expected = reference_products(float64(model), ids, mask, types)
        trace = {}
        got = engine(ids, mask, types, trace=trace)
        for key, ref in expected.items():
            assert torch.equal(trace[key].reshape(ref.shape).double(), ref), f"{name}: {key}"
        with torch.no_grad():
            ref = float64(model)(ids, mask, types).logits
        assert float((got - ref).abs().max()) < 1e-6
        assert torch.equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_bits_equal_the_direct_softmax(dtype):
    """fused.softmax_binarize's table path (few exps, a threshold on P) gives exactly the bits of one exp per score
    (fused._softmax_reference), with and without padding, at thresholds that cut through the rows, and falls back
    to the direct path for a mask of many values or a scale that is not positive."""
    from binlab.infer import fused
    rng = np.random.default_rng(0)
    for trial in range(12):
        B, H, L, d = 2, 3, (5, 64, 65, 128)[trial % 4], (8, 32, 70)[trial % 3]
        scores = (2 * rng.binomial(d, 0.5, (B, H, L, L)) - d).astype(np.int32)
        real = np.arange(L)[None] < rng.integers(1, L + 1, (B, 1))
        mask = np.where(real, 0.0, -10000.0).astype(dtype)
        if trial == 5:
            mask = rng.normal(size=(B, L)).astype(dtype)  # many mask values: the direct path
        c = np.array([rng.uniform(0.05, 2.0) if trial != 7 else -0.5], dtype)  # c < 0: the direct path
        sqrt_d = np.array([np.sqrt(d)], dtype)
        for alpha in (2.0 / L, 0.3 / L, 1e-3):
            for kind in (2, 0):
                a = np.array([alpha], dtype)
                got, want = (np.full((B, H, L, (L + 63) // 64), 7, np.uint64) for _ in range(2))
                assert fused.softmax_binarize(scores, c, sqrt_d, mask, kind, a, got) == 0
                assert fused._softmax_reference(scores, c, sqrt_d, mask, kind, a, want) == 0
                assert np.array_equal(got, want), (trial, alpha, kind)


@pytest.mark.parametrize("n_chunks", [1, 2, 5, 7])
def test_parallel_softmax_bits_equal_the_serial_kernel(n_chunks):
    """fused.softmax_binarize_parallel cuts the (batch row, head) pairs into chunks, each with its own table; its bits
    and NaN count are the serial kernel's, for chunks that split a batch row's heads and for more chunks than
    pairs, on the table path and on the direct one (many mask values)."""
    from binlab.infer import fused
    rng = np.random.default_rng(1)
    for trial, (B, H, L) in enumerate([(3, 4, 70), (1, 12, 128), (2, 3, 9), (1, 1, 5)]):
        d = 32
        scores = (2 * rng.binomial(d, 0.5, (B, H, L, L)) - d).astype(np.int32)
        real = np.arange(L)[None] < rng.integers(1, L + 1, (B, 1))
        mask = np.where(real, 0.0, -10000.0).astype(np.float32)
        if trial == 2:
            mask = rng.normal(size=(B, L)).astype(np.float32)
        c, sqrt_d, a = (np.array([v], np.float32) for v in (rng.uniform(0.2, 1.0), np.sqrt(d), 1.0 / L))
        for kind in (2, 0):
            got, want = (np.full((B, H, L, (L + 63) // 64), 7, np.uint64) for _ in range(2))
            assert fused.softmax_binarize_parallel(n_chunks, scores, c, sqrt_d, mask, kind, a, got) == \
                fused.softmax_binarize(scores, c, sqrt_d, mask, kind, a, want) == 0
            assert np.array_equal(got, want), (trial, kind)


@pytest.mark.parametrize("n_chunks", [0, 1, 2, 7])
def test_fused_scores_and_softmax_give_the_bits_of_the_two_steps(n_chunks):
    """fused.scores_softmax_binarize (n_chunks 0: the serial kernel) computes each head's Q K^T into a scratch block
    and runs the softmax on it: the bits and NaN count of xnor_bmm then softmax_binarize, for head sizes of one
    word, a full word and two words, lengths below, at and above 64, padding, and a many-valued mask (the direct
    path)."""
    from binlab.infer import fused
    from binlab.kernels.packing import pack_signs
    from binlab.kernels.products import xnor_bmm
    rng = np.random.default_rng(5)
    for trial, (B, H, L, d) in enumerate([(2, 3, 70, 32), (1, 12, 128, 64), (2, 5, 9, 8), (1, 2, 65, 70),
                                          (3, 1, 5, 32)]):
        q = pack_signs(torch.from_numpy(rng.normal(size=(B, H, L, d)).astype(np.float32)))
        k = pack_signs(torch.from_numpy(rng.normal(size=(B, H, L, d)).astype(np.float32)))
        real = np.arange(L)[None] < rng.integers(L // 2 + 1, L + 1, (B, 1))
        mask = np.where(real, 0.0, -10000.0).astype(np.float32)
        if trial == 2:
            mask = rng.normal(size=(B, L)).astype(np.float32)
        # a threshold of p > 1 / L: about half of a row's real keys
        c, sqrt_d, a = (np.array([v], np.float32) for v in (rng.uniform(1.0, 2.0), np.sqrt(d), 2.0 / L))
        scores = xnor_bmm(q, k, d).numpy()
        for kind in (2, 0):
            got, want = (np.full((B, H, L, (L + 63) // 64), 7, np.uint64) for _ in range(2))
            args = (q, k, d, c, sqrt_d, mask, kind, a, got)
            n = (fused.scores_softmax_binarize_parallel(n_chunks, *args) if n_chunks
                 else fused.scores_softmax_binarize(*args))
            assert n == fused.softmax_binarize(scores, c, sqrt_d, mask, kind, a, want) == 0
            assert np.array_equal(got, want), (trial, kind)
            if kind == 2:  # the bits depend on the scores: neither all 0 nor all 1 on the real keys
                ones = unpack_signs(want, L).numpy() > 0
                assert 0.1 < ones[np.broadcast_to(real[:, None, None], ones.shape)].mean() < 0.9, trial


@pytest.mark.parametrize("zero_to_one", [False, True])
def test_fused_bool_attention_gives_the_bits_of_the_two_steps(zero_to_one):
    """fused.scores_bool_binarize = bool_binarize(xnor_bmm(q, k, d)): P > 0 (P >= 0) on real keys, for head sizes of
    one word (even and odd d: P = 0 only occurs for even d) and two words, lengths below and above 64, padding."""
    from binlab.infer import fused
    from binlab.kernels.packing import pack_signs
    from binlab.kernels.products import xnor_bmm
    rng = np.random.default_rng(6)
    for B, H, L, d in [(2, 3, 70, 32), (1, 4, 128, 64), (2, 5, 9, 8), (1, 2, 65, 70), (2, 2, 33, 7)]:
        q, k = (pack_signs(torch.from_numpy(rng.normal(size=(B, H, L, d)).astype(np.float32))) for _ in range(2))
        valid = np.arange(L)[None] < rng.integers(L // 2 + 1, L + 1, (B, 1))
        got, want = (np.full((B, H, L, (L + 63) // 64), 7, np.uint64) for _ in range(2))
        fused.scores_bool_binarize(q, k, d, zero_to_one, valid, got)
        fused.bool_binarize(xnor_bmm(q, k, d).numpy(), zero_to_one, valid, want)
        assert np.array_equal(got, want), (B, H, L, d)


@pytest.mark.parametrize("name", NAMES)
def test_the_fused_scores_change_no_logit(exported, name):
    """The engine's fused Q K^T + softmax (the default where there is a softmax) gives the logits of the two
    separate steps (fused_scores=False), padded, below and above 64 tokens."""
    folder = exported[name][1]
    fast, slow = PackedBert(folder), PackedBert(folder, fused_scores=False)
    for B, L in ((3, 37), (2, 70)):
        ids, mask, types = batch(B, L, seed=L + 1)
        assert torch.equal(fast(ids, mask, types), slow(ids, mask, types))


@pytest.mark.parametrize("setting, names", [("PARALLEL_MIN_WORK", ("bit",)),
                                            ("ROWS_PARALLEL_MIN", ("bit", "bibert"))])
def test_the_engine_gives_the_same_logits_on_numbas_threads(exported, monkeypatch, setting, names):
    """Above engine.PARALLEL_MIN_WORK scores BiT's softmax, and above engine.ROWS_PARALLEL_MIN rows the row-wise
    steps (binlab.infer.rows), run on numba's threads; the logits do not change."""
    import numba
    from binlab.infer import engine as engine_module
    for name in names:
        ids, mask, types = batch(3, 70, seed=4)
        monkeypatch.setattr(engine_module, setting, 1 << 62)
        serial = PackedBert(exported[name][1])(ids, mask, types)
        monkeypatch.setattr(engine_module, setting, 0)
        threads = numba.get_num_threads()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        try:  # a new engine: a plan keeps the chunks of its shape
            for plans in (True, False):
                assert torch.equal(PackedBert(exported[name][1], plans=plans)(ids, mask, types), serial), name
        finally:
            numba.set_num_threads(threads)


def _threshold_case(rng, N, dtype, k):
    """c (positive, negative and zero channels), b, thr on a grid of 1/8 (so that y + thr hits 0 and alpha / 2
    exactly at some P), and every integer P in [-k, k] as the rows of a product."""
    c = (rng.integers(-8, 9, N) / 8).astype(dtype)
    c[:3] = (0.0, 0.125, -0.125)
    b = (rng.integers(-40, 41, N) / 8).astype(dtype)
    thr = (rng.integers(-8, 9, N) / 8).astype(dtype)
    prod = np.repeat(np.arange(-k, k + 1, dtype=np.int32)[:, None], N, axis=1)
    return c, b, thr, np.ascontiguousarray(prod)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_integer_thresholds_give_the_float_kernels_bits(dtype):
    """fused.product_thresholds + threshold_bits / qkv_threshold_bits (integer compares) give exactly the bits of
    affine_binarize / qkv_binarize (the float ops) for every P in [-k, k], for c > 0, < 0 and = 0, values that
    land exactly on the threshold, ReLU or not, and both kinds of bit; a non-finite value refuses the thresholds."""
    from binlab.infer import fused
    rng = np.random.default_rng(3)
    k, N = 40, 70
    for relu in (False, True):
        for kind, alpha in ((0, 1.0), (2, 1.0), (2, 0.75)):
            c, b, thr, prod = _threshold_case(rng, N, dtype, k)
            a = np.array([alpha], dtype)
            lo, hi = np.empty(N, np.int32), np.empty(N, np.int32)
            assert fused.product_thresholds(k, c, b, relu, kind, a, thr, lo, hi)
            got, want = (np.full((prod.shape[0], 2), 7, np.uint64) for _ in range(2))
            fused.threshold_bits(prod, lo, hi, got)
            assert fused.affine_binarize(prod, c, b, relu, kind, a, thr, want) == 0
            assert np.array_equal(got, want), (relu, kind, alpha)
            assert 0 < int((unpack_signs(want, N) > 0).sum()) < prod.size  # the bits are not all equal
    # Q, K, V: [3, B * L, A] with A = H * d, L = 2 * k + 1 tokens (more than 64, not a multiple)
    H, d, A = 5, 14, 70
    cs, bs, ts, prods = zip(*(_threshold_case(rng, A, dtype, k) for _ in range(3)))
    c, b, thr, prod = (np.ascontiguousarray(np.stack(x)) for x in (cs, bs, ts, prods))
    kinds, alphas = np.array([0, 0, 2], np.int64), np.array([1.0, 1.0, 0.5], dtype)
    lo, hi = np.empty((3, A), np.int32), np.empty((3, A), np.int32)
    for j in range(3):
        assert fused.product_thresholds(k, c[j], b[j], False, kinds[j], alphas[j:j + 1], thr[j], lo[j], hi[j])
    L = prod.shape[1]
    got = [np.full(s, 7, np.uint64) for s in ((1, H, L, 1), (1, H, L, 1), (1, H, d, 2))]
    want = [np.full(s, 7, np.uint64) for s in ((1, H, L, 1), (1, H, L, 1), (1, H, d, 2))]
    fused.qkv_threshold_bits(prod, lo, hi, L, H, d, *got)
    assert fused.qkv_binarize(prod, c, b, kinds, alphas, thr, L, H, d, *want) == 0
    for g, w in zip(got, want):
        assert np.array_equal(g, w)
    c, b, thr, _ = _threshold_case(rng, N, dtype, k)
    lo, hi = np.empty(N, np.int32), np.empty(N, np.int32)
    for bad in (c, b, thr):
        saved = bad[5]
        bad[5] = np.nan
        assert not fused.product_thresholds(k, c, b, False, 0, np.ones(1, dtype), thr, lo, hi)
        bad[5] = saved
    c[7] = np.inf  # inf * P: -inf, NaN (P = 0), inf
    assert not fused.product_thresholds(k, c, b, True, 2, np.ones(1, dtype), thr, lo, hi)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_thresholds_give_torchs_gelu_bits(dtype):
    """engine.gelu_thresholds + threshold_bits give, for every P of a BERT-sized product (k = 384), the bits of
    fused.affine -> torch's GELU (on contiguous rows) -> binarize_rows, for signs with and without thresholds and
    {0, alpha} bits; y sweeps through float32's -0.0 flicker near -5.5, which the window must hold."""
    from binlab.infer import fused
    from binlab.infer.engine import gelu_thresholds
    from binlab.kernels.packing import words_for
    rng = np.random.default_rng(5)
    k, N = 384, 96
    c = rng.uniform(0.004, 0.05, N).astype(dtype)
    b = rng.uniform(-3, 3, N).astype(dtype)
    c[::2], b[::2] = rng.uniform(0.0015, 0.003, N // 2), rng.uniform(-5, -4.5, N // 2)  # fine steps through -5.5
    windows = 0
    for kind, alpha, thr in ((0, 1.0, np.zeros(N, dtype)), (1, 1.0, rng.uniform(-0.2, 0.2, N).astype(dtype)),
                             (2, 0.3, rng.uniform(-0.1, 0.1, N).astype(dtype))):
        a = np.array([alpha], dtype)
        got_t = gelu_thresholds(k, 2, c, b, kind, a, thr)
        assert got_t is not None
        windows += len(got_t[2])
        grid = np.ascontiguousarray(np.repeat(np.arange(-k, k + 1, 2, dtype=np.int32)[:, None], N, axis=1))
        y = np.empty(grid.shape, dtype)
        fused.affine(grid, c, b, y)
        g = np.stack([F.gelu(torch.from_numpy(row)).numpy() for row in y])  # 96 values a row: vectorized
        want, got = (np.full((grid.shape[0], words_for(N)), 7, np.uint64) for _ in range(2))
        assert fused.binarize_rows(g, kind, a, thr, want) == 0
        lo, hi, chans, w0, wm = got_t
        fused.threshold_bits(grid, lo, hi, got)
        fused.window_bits(grid, chans, w0, wm, got)
        assert np.array_equal(got, want), kind
    assert (windows > 0) == (dtype == np.float32)  # float64's GELU has no flicker in this range
    b[3] = np.nan
    assert gelu_thresholds(k, 2, c, b, 0, np.ones(1, dtype), np.zeros(N, dtype)) is None


def test_table_thresholds_refuse_what_they_cannot_express():
    """Ones between lo and hi that span 64 values of P or more: no thresholds; 62 apart (step 2): a window."""
    from binlab.infer import fused
    k, N = 100, 2
    bits = np.zeros((k + 1, N), np.uint8)  # P = -k + 2 i
    bits[:3] = 1  # lo = -96
    bits[-2:] = 1  # hi = 98
    bits[[20, 51], 0] = 1  # P = -60 and P = 2: 62 apart
    bits[[20, 52], 1] = 1  # 64 apart
    lo, hi = np.empty(N, np.int32), np.empty(N, np.int32)
    w0, wm = np.empty(N, np.int64), np.empty(N, np.uint64)
    assert not fused.table_thresholds(bits, k, 2, lo, hi, w0, wm)
    assert fused.table_thresholds(bits[:, :1].copy(), k, 2, lo[:1], hi[:1], w0[:1], wm[:1])
    assert (lo[0], hi[0], w0[0], wm[0]) == (-96, 98, -60, np.uint64(1 | (1 << 62)))


@pytest.mark.parametrize("name", NAMES)
def test_the_integer_thresholds_change_no_logit(exported, name):
    """The engine with integer thresholds (the default) gives the logits of the float kernels (thresholds=False),
    on padded batches of lengths below and above 64; the thresholds are in use where they apply."""
    folder = exported[name][1]
    fast, slow = PackedBert(folder), PackedBert(folder, thresholds=False)
    for layer in fast.layers:
        assert (layer.get("qkv_lohi") is not None) == (not fast.split)
        assert (layer.get("ffn1_lohi") is not None) == (not fast.split)
    for B, L in ((3, 37), (2, 70)):
        ids, mask, types = batch(B, L, seed=L)
        assert torch.equal(fast(ids, mask, types), slow(ids, mask, types))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_plans_change_no_logit(exported, name, dtype):
    """The plan of an input shape (the default where the model allows it) gives the step-by-step path's logits
    (plans=False), on padded batches below and above 64 tokens and above engine.ROWS_PARALLEL_MIN rows; a plan
    reused with new inputs of its shape gives theirs; an engine keeps at most engine.PLANS_KEPT plans."""
    from binlab.infer import engine as engine_module
    folder = exported[name][1]
    fast, slow = PackedBert(folder, dtype=dtype), PackedBert(folder, dtype=dtype, plans=False)
    assert fast.plannable == (name not in SPLIT) and not slow.plannable
    shapes = [(3, 37), (2, 70), (1, 5), (9, 16)]
    for seed in (1, 2):  # the second round reuses every plan, with other ids and other padding
        for B, L in shapes:
            ids, mask, types = batch(B, L, seed=seed * 100 + L)
            assert torch.equal(fast(ids, mask, types), slow(ids, mask, types)), (B, L, seed)
    assert len(fast._plans) == (len(shapes) if fast.plannable else 0)
    for L in range(1, engine_module.PLANS_KEPT + 3):
        fast(*batch(1, L, seed=L))
    assert len(fast._plans) == (engine_module.PLANS_KEPT if fast.plannable else 0)
    if fast.plannable:  # a plan per backend: set_backend after a plan was made still takes effect
        from binlab.kernels import products
        ids, mask, types = batch(3, 37, seed=9)
        before, default = fast(ids, mask, types), products.get_backend()
        try:
            products.set_backend("scalar")
            assert torch.equal(fast(ids, mask, types), before)
            assert any(key[3] == "scalar" for key in fast._plans)
        finally:
            products.set_backend(default)


@pytest.mark.parametrize("plans", [True, False])
def test_a_nan_stops_the_forward_pass_with_a_clear_error(exported, plans):
    """A NaN in the position table (the engine's own copy) reaches the embeddings' LayerNorm in every row: both
    paths stop there, naming it, and a plan made before the NaN stops as well."""
    engine = PackedBert(exported["bit"][1], plans=plans)
    ids, mask, types = batch(2, 9, seed=1)
    engine(ids, mask, types)
    engine.position[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"\d+ NaN value\(s\) reached the binarizer of a LayerNorm's output"):
        engine(ids, mask, types)


FLOAT_PRODUCTS = [(torch, "matmul"), (torch, "mm"), (torch, "bmm"), (torch, "addmm"), (torch, "einsum"),
                  (F, "linear"), (torch.Tensor, "__matmul__"), (torch.Tensor, "matmul"), (torch.Tensor, "mm"),
                  (torch.Tensor, "bmm")]


@pytest.mark.parametrize("name", ["bit", "bibert", "split", "split-gelu"])
def test_no_float_matrix_product_runs_in_the_forward_pass(exported, name, monkeypatch):
    model, folder = exported[name]
    engine = PackedBert(folder)
    ids, mask, types = batch(2, 37, seed=1)
    expected = engine(ids, mask, types)

    def refuse(*args, **kwargs):
        raise AssertionError("a float matrix product ran")

    for owner, attr in FLOAT_PRODUCTS:
        monkeypatch.setattr(owner, attr, refuse)
    with pytest.raises(AssertionError, match="a float matrix product ran"):  # the patch bites the fake-quant model
        model(ids, mask, types)
    assert torch.equal(engine(ids, mask, types), expected)


def test_the_engine_refuses_bad_inputs(exported):
    engine = PackedBert(exported["bit"][1])
    ids = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 300\)"):
        engine(ids + VOCAB)
    with pytest.raises(ValueError, match="attention_mask must hold only 0"):
        engine(ids, torch.full_like(ids, 2))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=128"):
        engine(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="2-D tensor"):
        engine(ids[0])
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        PackedBert(exported["bit"][1], dtype=torch.float16)


# ----------------------------------------------------------------------------------------------------------
# export and load


def test_export_load_round_trip(exported, tmp_path):
    model, folder = exported["bit"]
    loaded = load_packed(folder)
    again = packed_tensors(model)
    assert set(loaded.tensors) == set(again)
    for name, t in again.items():
        assert loaded.tensors[name].dtype == t.dtype and np.array_equal(loaded.tensors[name], t), name
    assert loaded.config == model.config and loaded.fp_dtype == "float32"
    bits = loaded.tensors["layer.0.query.bits"]
    assert bits.dtype == np.uint64 and bits.shape == (64, 1)
    # the stored bits are the signs of the quantized weight, the scale its magnitude
    q = model.bert.encoder.layer[0].attention.query
    with torch.no_grad():
        wq = q.weight_quantizer(q.weight.double())
    assert torch.equal(unpack_signs(bits, 64).double() * float(loaded.tensors["layer.0.query.scale"][0]), wq)
    # a checkpoint directory and a recipe run export to the same tensors as the model itself
    ckpt = save_pretrained(model, tmp_path / "run" / "student_w1a1" / "best_model")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"stages": [{"stage": "teacher"},
                                                                         {"stage": "student_w1a1"}]}))
    assert resolve_source(tmp_path / "run") == ckpt
    from_dir = load_packed(export_packed(tmp_path / "run", tmp_path / "from_dir")).tensors
    assert all(np.array_equal(from_dir[k], again[k]) for k in again)
    ids, mask, types = batch(2, 20)
    assert torch.equal(PackedBert(tmp_path / "from_dir")(ids, mask, types), PackedBert(folder)(ids, mask, types))


def test_fp16_export(exported, tmp_path):
    model, _ = exported["bit"]
    folder = export_packed(model, tmp_path / "fp16", fp16=True)
    loaded = load_packed(folder)
    assert loaded.fp_dtype == "float16"
    assert loaded.tensors["embeddings.position"].dtype == np.float16
    assert loaded.tensors["layer.0.query.bits"].dtype == np.uint64
    ids, mask, types = batch(6, 30, seed=9)
    with torch.no_grad():
        ref = model(ids, mask, types).logits
    got = PackedBert(folder)(ids, mask, types)
    assert float((got - ref).abs().max()) < 0.5 * float(ref.abs().max())  # lossy, but the same model
    assert file_bytes(folder) < 0.8 * file_bytes(exported["bit"][1])


def _rewrite_config(folder, **changes):
    path = folder / CONFIG_FILE
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


def _rewrite_tensors(folder, change):
    path = folder / WEIGHTS_FILE
    tensors = {k: v.copy() for k, v in load_file(str(path)).items()}
    change(tensors)
    save_file(tensors, str(path))


BAD_FILES = {
    "wrong marker": (lambda f: _rewrite_config(f, format="something-else"), ValueError, "format marker is"),
    "no marker": (lambda f: _rewrite_config(f, format=None), ValueError, "format marker is None"),
    "newer version": (lambda f: _rewrite_config(f, format_version=99), ValueError, "newer binlab"),
    "version not an int": (lambda f: _rewrite_config(f, format_version="1"), ValueError, "must be an integer"),
    "bad fp dtype": (lambda f: _rewrite_config(f, fp_dtype="bfloat16"), ValueError, "fp_dtype must be one of"),
    "not json": (lambda f: (f / CONFIG_FILE).write_text("{nope"), ValueError, "not valid JSON"),
    "no config": (lambda f: (f / CONFIG_FILE).unlink(), FileNotFoundError, "holds no config.json"),
    "no weights": (lambda f: (f / WEIGHTS_FILE).unlink(), FileNotFoundError, "holds no model.packed.safetensors"),
    "truncated": (lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:-100]), ValueError,
                  "truncated or corrupt"),
    "garbage": (lambda f: (f / WEIGHTS_FILE).write_bytes(b"\x07" * 64), ValueError, "truncated or corrupt"),
    "missing tensor": (lambda f: _rewrite_tensors(f, lambda t: t.pop("layer.1.key.bias")), ValueError,
                       "missing 1: layer.1.key.bias"),
    "extra tensor": (lambda f: _rewrite_tensors(f, lambda t: t.update(extra=np.zeros(2, np.float32))), ValueError,
                     "unexpected 1: extra"),
    "wrong dtype": (lambda f: _rewrite_tensors(f, lambda t: t.update({"layer.0.query.bits": t[
        "layer.0.query.bits"].view(np.int64)})), ValueError, "layer.0.query.bits has dtype int64, expected uint64"),
    "wrong shape": (lambda f: _rewrite_tensors(f, lambda t: t.update({"layer.0.ffn_ln.weight": np.ones(65, np.float32)})),
                    ValueError, r"layer.0.ffn_ln.weight has shape \(65,\), the config says \(64,\)"),
    "config disagrees": (lambda f: _rewrite_config(f, bert=dict(json.loads((f / CONFIG_FILE).read_text())["bert"],
                                                                intermediate_size=256)),
                         ValueError, "layer.0.intermediate.bits has shape"),
    "not finite": (lambda f: _rewrite_tensors(f, lambda t: t["pooler.bias"].__setitem__(0, np.nan)), ValueError,
                   "pooler.bias holds NaN"),
    "unsupported quant": (lambda f: _rewrite_config(f, bert=dict(json.loads((f / CONFIG_FILE).read_text())["bert"],
                                                                 binlab_quant=QuantConfig.preset("w1a8").to_dict())),
                          ValueError, "fully binarized W1A1"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_load_refuses_bad_files(exported, tmp_path, case):
    folder = tmp_path / "model"
    shutil.copytree(exported["bit"][1], folder)
    load_packed(folder)  # fine before the damage
    damage, error, message = BAD_FILES[case]
    damage(folder)
    with pytest.raises(error, match=message):
        load_packed(folder)


def test_load_refuses_padding_bits(tmp_path):
    model = make_model(CONFIGS["bit"], hidden=80, inter=144, dyadic=False)
    folder = export_packed(model, tmp_path / "m")
    load_packed(folder)
    _rewrite_tensors(folder, lambda t: t["layer.0.output.bits"].__setitem__((0, -1), np.uint64(1) << np.uint64(40)))
    with pytest.raises(ValueError, match="layer.0.output.bits has padding bits set past bit 144"):
        load_packed(folder)


def test_export_refuses_what_the_engine_cannot_run(tmp_path):
    with pytest.raises(ValueError, match=r"fully binarized W1A1.*W1E1A8"):
        export_packed(tiny_bert(quant="w1a8", vocab_size=VOCAB, hidden_size=64), tmp_path / "a")
    with pytest.raises(ValueError, match="W32E32A32"):
        export_packed(tiny_bert(vocab_size=VOCAB), tmp_path / "b")
    fresh = tiny_bert(quant="bit", vocab_size=VOCAB, max_position_embeddings=64)  # never calibrated
    with pytest.raises(ValueError, match="alpha never saw data"):
        export_packed(fresh, tmp_path / "c")
    odd = make_model(CONFIGS["bit"])
    odd.bert.encoder.layer[0].attention.query = torch.nn.Linear(64, 64)
    with pytest.raises(ValueError, match="layer.0.query is a Linear, expected a QuantLinear"):
        export_packed(odd, tmp_path / "d")
    half = make_model(SPLIT["split"], split=True)  # one layer of a split model not split
    half.bert.encoder.layer[1].ffn.output = half.bert.encoder.layer[1].ffn.output.dense_1
    with pytest.raises(ValueError, match="layer.1.output is a QuantLinear, expected a SplitQuantLinear"):
        export_packed(half, tmp_path / "f")
    with pytest.raises(ValueError, match=r"fully binarized W1A1.*A8"):  # BinaryBERT's W1A8: 8-bit activations
        export_packed(build_split_model(tiny_bert(quant="w1a8", vocab_size=VOCAB, hidden_size=64).config),
                      tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory"):
        export_packed(tmp_path, tmp_path / "e")


def test_a_saved_split_model_made_by_ternary_weight_splitting(tmp_path):
    """BinaryBERT's path: a calibrated ternary W2A1 model, split (binlab.methods.split_model), saved as the recipe
    saves it, exported from its folder: the engine reproduces the float64 split model and its own float64
    products, and the packed folder says it is split."""
    ternary = make_model(replace(SPLIT["split"], weight_bits=2, weight_method="twn", embedding_bits=2))
    model = split_ternary_model(ternary).eval()
    ckpt = save_pretrained(model, tmp_path / "run" / "binary_stage2" / "best_model")
    folder = export_packed(ckpt, tmp_path / "packed")
    assert json.loads((folder / CONFIG_FILE).read_text())["split"] is True and load_packed(folder).split
    ids, mask, types = batch(3, 45, seed=11)
    _, expected = reference_products(float64(model), ids, mask, types)
    trace = {}
    got = PackedBert(folder, dtype=torch.float64)(ids, mask, types, trace=trace)
    assert "layer.1.output.half2" in trace and set(trace) == set(expected)
    for key, ref in expected.items():
        assert torch.equal(trace[key].reshape(ref.shape).double(), ref), key
    with torch.no_grad():
        ref = float64(model)(ids, mask, types).logits
    assert float((got - ref).abs().max()) < 1e-6 and torch.equal(got.argmax(-1), ref.argmax(-1))


def test_load_refuses_a_split_flag_that_does_not_match_the_tensors(exported, tmp_path):
    for name, flag in (("bit", True), ("split", False)):
        folder = shutil.copytree(exported[name][1], tmp_path / name)
        _rewrite_config(folder, split=flag)
        with pytest.raises(ValueError, match="half2"):
            load_packed(folder)
    _rewrite_config(folder, split="yes")
    with pytest.raises(ValueError, match="'split' must be true or false"):
        load_packed(folder)


# ----------------------------------------------------------------------------------------------------------
# size on disk


def independent_ideal(model, fp_bytes: int) -> int:
    """1 bit per binarized weight plus every FP number at ``fp_bytes``, counted from the fake-quant model itself:
    its parameters other than the latent binarized weights, plus the derived weight scales (one per tensor or per
    row, and one per word-embedding row)."""
    q = model.config.quant
    bits = fp = 0
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            bits += m.weight.numel()
            fp += m.out_features if q.weight_per_row else 1
        elif isinstance(m, QuantEmbedding):
            bits += m.weight.numel()
            fp += m.num_embeddings
    latent = {id(m.weight) for m in model.modules() if isinstance(m, (QuantLinear, QuantEmbedding))}
    fp += sum(p.numel() for p in model.parameters() if id(p) not in latent)
    return bits // 8 + fp * fp_bytes


SHAPES = {"tiny": dict(), "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                          intermediate_size=1536)}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("preset", ["bit", "bibert", "split"])
def test_size_on_disk_is_within_5_percent_of_the_ideal(tmp_path, shape, preset):
    if preset == "split":  # two binary halves per layer: twice the bits, the same FP parts but the biases
        torch.manual_seed(0)
        model = build_split_model(tiny_bert(quant=SPLIT["split"], seed=0, **SHAPES[shape]).config).eval()
    else:
        model = tiny_bert(quant=preset, seed=0, **SHAPES[shape]).eval()  # BERT's vocabulary, 512 positions
    ids, mask, types = batch(2, 16, vocab=model.config.vocab_size)
    calibrate(model, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    fp32_file = save_pretrained(model, tmp_path / "fp32") / "model.safetensors"
    for fp16, fp_bytes in ((False, 4), (True, 2)):
        folder = export_packed(model, tmp_path / f"packed{fp_bytes}", fp16=fp16)
        ideal = independent_ideal(model, fp_bytes)
        assert packed_format.ideal_bytes(model.config, "float16" if fp16 else "float32", preset == "split") == ideal
        size = file_bytes(folder)
        assert ideal <= size <= 1.05 * ideal, (size, ideal)
        assert size_report(folder, fp32_file)["smaller_than_fp32"] > 10


# ----------------------------------------------------------------------------------------------------------
# the command line


def binlab(*args, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("BINLAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "binlab", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def test_export_and_predict_from_the_command_line(tmp_path):
    from binlab.tokenizer import load_tokenizer

    model = make_model(CONFIGS["bibert"], vocab=30522, max_pos=64, labels=2)  # BERT's vocabulary
    tok = load_tokenizer()
    ckpt = save_pretrained(model, tmp_path / "ckpt", tokenizer=tok)
    proc = binlab("export", str(ckpt), "--out", str(tmp_path / "packed"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bytes on disk" in proc.stdout and "ideal" in proc.stdout and "fp32 checkpoint" in proc.stdout
    proc = binlab("predict", str(tmp_path / "packed"), "a fine film", "and a second sentence", "--repeat", "3",
                  "--json", str(tmp_path / "p.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["label"] in ("LABEL_0", "LABEL_1") and f"label: {result['label']}" in proc.stdout
    assert "scores: LABEL_0" in proc.stdout and "latency:" in proc.stdout and " ms per forward pass" in proc.stdout
    assert abs(sum(result["scores"]) - 1) < 1e-5
    enc = tok(["a fine film"], ["and a second sentence"])
    with torch.no_grad():
        expected = float64(model)(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).logits[0]
    assert np.allclose(result["logits"], expected.numpy(), atol=1e-4)  # the float32 engine


def test_command_line_errors_are_one_line(tmp_path):
    ckpt = save_pretrained(tiny_bert(vocab_size=VOCAB, max_position_embeddings=32), tmp_path / "fp")
    for args, words in ((["export", str(ckpt), "--out", str(tmp_path / "x")], "fully binarized W1A1"),
                        (["predict", str(ckpt), "hello"], "format marker is None"),
                        (["predict", str(tmp_path / "nothing"), "hello"], "not a directory")):
        proc = binlab(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert words in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------------------------------------
# the row-wise steps on parts of the rows at once (binlab.infer.rows)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("R, N", [(128, 384), (37, 70), (5, 1)])
def test_the_layer_norm_and_its_bits_in_parts_of_rows(dtype, R, N):
    """LayerNorm(c P + b + residual) and its bits for three binarizers: the same whatever the number of parts,
    the LayerNorm within float64 rounding of torch's (float64) or float32 rounding of it, each binarizer's bits
    those of fused.binarize_rows on the normalized rows."""
    from binlab.infer import fused, rows
    rng = np.random.default_rng(R + N)
    P = rng.integers(-50, 50, (R, N)).astype(np.int32)
    c, b, gamma, beta = (rng.normal(size=N).astype(dtype) for _ in range(4))
    res = rng.normal(size=(R, N)).astype(dtype)
    kinds, alphas = np.array([0, 2, 1], np.int64), np.array([1, 0.7, 1], dtype)
    thrs = (0.1 * rng.normal(size=(3, N))).astype(dtype)
    got = []
    for n_chunks in (1, 2, 3):
        out, words = np.full((R, N), 7, dtype), np.full((3, R, (N + 63) // 64), 7, np.uint64)
        assert rows.residual_layer_norm_binarize(n_chunks, P, c, b, res, gamma, beta, 1e-12, kinds, alphas, thrs,
                                                 out, words) == 0
        got.append((out, words))
    for out, words in got[1:]:
        assert np.array_equal(out, got[0][0]) and np.array_equal(words, got[0][1])
    out, words = got[0]
    y = np.empty((R, N), dtype)
    fused.affine_residual(P, c, b, res, y)
    ref = F.layer_norm(*(torch.from_numpy(a).double() for a in (y,)), (N,), torch.from_numpy(gamma).double(),
                       torch.from_numpy(beta).double(), 1e-12).numpy()
    tol = 1e-13 if dtype == np.float64 else 1e-5
    assert np.abs(out - ref).max() <= tol * max(1.0, np.abs(ref).max())
    for j in range(3):
        want = np.empty((R, (N + 63) // 64), np.uint64)
        fused.binarize_rows(out, int(kinds[j]), alphas[j:j + 1], thrs[j], want)
        assert np.array_equal(words[j], want), j
    out2, none = np.empty((R, N), dtype), np.empty((0, R, (N + 63) // 64), np.uint64)
    rows.layer_norm_binarize(2, y, gamma, beta, 1e-12, kinds[:0], alphas[:0], thrs[:0], out2, none)
    assert np.array_equal(out2, out)
    y[R // 2, N // 2] = np.nan  # a NaN row: every binarizer counts its NaNs
    assert rows.layer_norm_binarize(2, y, gamma, beta, 1e-12, kinds, alphas, thrs, out2, words) == 3 * N


@pytest.mark.parametrize("B, L", [(1, 128), (3, 37), (2, 70), (1, 16), (2, 200)])
def test_the_threshold_bits_in_parts_of_rows_are_the_serial_kernels(B, L):
    """Q, K, V bits from integer thresholds (V packed along tokens: parts of whole 64-token words) and the FFN1
    bits, on 1-4 parts: the serial kernels' words exactly."""
    from binlab.infer import fused, rows
    from binlab.kernels.packing import words_for
    rng = np.random.default_rng(L)
    H, d = 3, 40
    A, R = H * d, B * L
    P = rng.integers(-20, 20, (3, R, A)).astype(np.int32)
    lo, hi = rng.integers(-25, 0, (3, A)).astype(np.int32), rng.integers(0, 25, (3, A)).astype(np.int32)
    lo[0, :5], hi[0, :5] = -41, 41  # channels that are always 0
    chans = np.flatnonzero(rng.random(A) < 0.3)  # FFN1: a window of ones between lo and hi on some channels
    w0 = rng.integers(-30, 0, len(chans)).astype(np.int64)
    wm = rng.integers(0, 1 << 62, len(chans), dtype=np.int64).astype(np.uint64)
    results = []
    for n_chunks in (0, 1, 2, 3, 4):
        q, k = (np.full((B, H, L, 1), 7, np.uint64) for _ in range(2))
        v = np.full((B, H, d, words_for(L)), 7, np.uint64)
        ffn = np.full((R, words_for(A)), 7, np.uint64)
        if n_chunks == 0:
            fused.qkv_threshold_bits(P, lo, hi, L, H, d, q, k, v)
            fused.threshold_bits(P[1], lo[1], hi[1], ffn)
            fused.window_bits(P[1], chans, w0, wm, ffn)
        else:
            rows.qkv_threshold_bits_parallel(n_chunks, P, lo, hi, L, H, d, q, k, v)
            rows.threshold_bits_parallel(n_chunks, P[1], lo[1], hi[1], chans, w0, wm, ffn)
        results.append((q, k, v, ffn))
    for n_chunks, got in enumerate(results[1:], 1):
        assert all(np.array_equal(a, b) for a, b in zip(got, results[0])), n_chunks
    assert (results[0][2] != 0).any() and (results[0][0] != 0).any()



@pytest.mark.parametrize("B, H, L, d", [(1, 4, 128, 32), (3, 2, 37, 8), (1, 3, 5, 70)])
def test_the_context_and_row_bits_in_parts_are_the_serial_kernels(B, H, L, d):
    from binlab.infer import fused, rows
    rng = np.random.default_rng(L + d)
    ctx = rng.integers(-L, L + 1, (B, H, L, d)).astype(np.int32)
    thr = (0.1 * rng.normal(size=H * d)).astype(np.float32)
    c, alpha = np.array([0.3], np.float32), np.array([0.5], np.float32)
    x = rng.normal(size=(B * L, H * d)).astype(np.float32)
    for kind in (0, 2):
        want = np.empty((B * L, (H * d + 63) // 64), np.uint64)
        fused.context_binarize(ctx, c, kind, alpha, thr, want)
        want_x = np.empty_like(want)
        fused.binarize_rows(x, kind, alpha, thr, want_x)
        for n_chunks in (1, 2, 3):
            got = np.full_like(want, 7)
            assert rows.context_binarize_parallel(n_chunks, ctx, c, kind, alpha, thr, got) == 0
            assert np.array_equal(got, want), (kind, n_chunks)
            assert rows.binarize_rows_parallel(n_chunks, x, kind, alpha, thr, got) == 0
            assert np.array_equal(got, want_x), (kind, n_chunks)
