"""Chapter 8's explorer (binlab.explorers.bitwise) on a tiny random W1A1 model: sizes, agreement, the sentence
explorer, and the tables it reads from docs/."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from binlab.explorers import bitwise as W
from binlab.infer.engine import PackedBert
from binlab.infer.export import export_packed
from binlab.infer.packed import load_packed
from test_infer_agreement import SENTENCES, trained_like


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    model, tok = trained_like("bit")
    folder = export_packed(model, tmp_path_factory.mktemp("ch8") / "packed", tokenizer=tok)
    batches = [dict(tok(SENTENCES[i:i + 4], max_length=32), labels=torch.tensor([1, 0, 1, 0]))
               for i in range(0, len(SENTENCES), 4)]  # 12 sentences: three full batches
    return W.W1A1Path(None, model, tok, folder, PackedBert(load_packed(folder)), batches, 32, "tiny", "a test model")


def test_sizes_are_near_the_ideal_and_far_below_fp32(path):
    rows = W.size_rows(path)
    assert [r["model"].split(",")[0] for r in rows] == ["fp32 checkpoint (the fake-quant model's file)", "packed", "packed"]
    for r in rows[1:]:
        assert 0 <= r["over the ideal"] < 0.05 and r["smaller than fp32"] > 5
    assert rows[2]["bytes"] < rows[1]["bytes"]  # float16 FP parts
    fig = W.size_figure(rows)
    assert fig.layout.title.text and fig.layout.yaxis.title.text and fig.layout.xaxis.title.text


def test_agreement_and_predictions(path):
    result = W.check_agreement(path)
    assert result.counts["engine vs float64"] == len(SENTENCES)
    rows = W.predictions(path, "a fine film", repeat=2)
    assert [r["model"] for r in rows] == ["bitwise W1A1 engine"]  # no teacher in this path
    assert rows[0]["label"] in ("positive", "negative") and 0.5 <= rows[0]["confidence"] <= 1 and rows[0]["ms"] > 0


def test_layer_bits_are_the_signs_of_the_binarizer(path):
    tokens, bits = W.layer_bits(path, "a fine film", 1)
    assert tokens == ["[CLS]", "a", "fine", "film", "[SEP]"]
    assert bits.shape == (5, 64) and set(np.unique(bits)) <= {0, 1} and 0 < bits.mean() < 1
    assert next(path.student.parameters()).dtype == torch.float32  # the student itself stays float32
    copy64 = path.student64()
    assert next(copy64.parameters()).dtype == torch.float64 and W.layer_bits(path, "a fine film", 0)
    assert path.student64() is copy64  # made once, not on every widget move


def test_moving_the_layer_slider_redraws_the_bit_image(path):
    ui, fig, controls = W.make_sentence_explorer(path)
    before = (fig.layout.title.text, np.array(fig.data[0].z).copy())
    controls["layer"].value = 1
    assert fig.layout.title.text != before[0] and fig.layout.title.text.startswith("layer.1:")
    assert not np.array_equal(np.array(fig.data[0].z), before[1])
    controls["sentence"].value = "nothing happens for two hours"
    assert len(fig.data[0].y) == 7  # [CLS] + 5 words + [SEP]


def test_finished_runs_are_ranked_by_their_best_dev_score(tmp_path):
    for run, stage, score in (("runs/sst2-bit", "hop2_w1a1", 0.80), ("runs/sst2-bibert", "student_w1a1", 0.83),
                              ("runs/sst2-bitstar", "hop1_w1a1", None)):
        folder = tmp_path / run / stage
        (folder / "best_model").mkdir(parents=True)
        (folder / "best_model" / "config.json").write_text("{}")
        if score is not None:  # a run without results.json has not finished
            (folder / "results.json").write_text(json.dumps({"best": {"step": 10, "score": score}}))
    rows = W.finished_w1a1_runs(tmp_path)
    assert [r["run"] for r in rows] == ["runs/sst2-bibert", "runs/sst2-bit"]


def test_the_recorded_tables_of_docs():
    text, rows = W.recorded_table("results.md", "W1A1 on GLUE: every recipe")
    acc = {r["task"]: r for r in W.accuracy_rows(rows)}
    assert set(acc) >= {"SST-2", "STS-B", "CoLA"}
    assert acc["SST-2"]["FP teacher"] == 89.8 and acc["SST-2"]["BiT W1A1"] == 81.8
    fig = W.accuracy_figure(list(acc.values()))
    assert len(fig.data) >= 4 and fig.layout.title.text and fig.layout.yaxis.title.text
    assert W.recorded_table("results.md", "no such heading") is None
    assert W.recorded_table("no-such-file.md", "x") is None
    lat = W.latency_rows([{"shape, workload": "MiniLM 1 × 128", "method": "torch_fp32", "latency (ms)": "15.2"},
                          {"shape, workload": "", "method": "binlab_bit", "latency (ms)": "3.1"},
                          {"shape, workload": "", "method": "onnx_int8", "latency (ms)": "–"}])
    assert lat == [{"shape": "MiniLM 1 × 128", "method": "torch_fp32", "ms": 15.2},
                   {"shape": "MiniLM 1 × 128", "method": "binlab_bit", "ms": 3.1}]
    text, rows = W.recorded_table("benchmarks.md", "A plan per input shape (session 2026-12-07, third)")
    measured = W.latency_rows(rows)
    assert {r["method"] for r in measured} >= {"binlab_bit", "torch_fp32"} and all(r["shape"] for r in measured)
    fig = W.latency_figure(lat, "docs/benchmarks.md, 2 threads")
    assert fig.layout.yaxis.type == "log" and "2 threads" in fig.layout.title.text


def test_the_size_breakdown_adds_up_to_the_tensors(path):
    from binlab.infer.packed import load_packed as load

    parts = {r["part"]: r for r in W.size_breakdown(path.packed)}
    total = sum(int(t.nbytes) for t in load(path.packed).tensors.values())
    assert sum(r["bytes"] for r in parts.values()) == total and abs(sum(r["share"] for r in parts.values()) - 1) < 1e-9
    assert parts["word embedding: sign bits"]["bytes"] == 30522 * 1 * 8  # hidden 64: one word per row
    assert parts["encoder and pooler weights: sign bits"]["bytes"] == 8 * (2 * (4 * 64 + 2 * 128) + 64)
