"""``binlab bench model``: a quick run on a tiny shape end to end (JSON, checks, memory, breakdown), ONNX Runtime
skipped with a message when it is absent, the errors a user can make, and ``binlab bench gemm`` parsed as before."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from binlab import cli
from binlab.infer import bench
from binlab.infer.engine import LAYER_STEPS, STEPS, PackedBert
from binlab.infer.export import export_packed

TINY = {"config": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                       vocab_size=300), "workloads": ("1x16", "4xSST")}
BASE = ["bench", "model", "--quick", "--shape", "tiny", "--threads", "1", "--rounds", "3", "--retries", "0"]


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(bench.SHAPES, "tiny", TINY)
    monkeypatch.setitem(bench.WORKLOADS, "4xSST", (20, 9, 12, 5))


def _methods(w: dict) -> set[str]:
    return set(w["times_s"])


def _check_packed(c: dict, names) -> None:
    for name in names:  # the engine computes the fake-quant model it was exported from
        assert c[name]["reference"] == "fake_quant_fp32"
        assert c[name]["labels_agree"] == 1.0 and c[name]["max_abs_diff"] < 1e-3, (name, c[name])
        assert c[name]["float64_labels_agree"] == 1.0 and c[name]["float64_max_abs_diff"] < 1e-6, (name, c[name])


def _check_int8(c: dict, names) -> None:
    for name in names:  # close to torch fp32, not equal
        assert c[name]["reference"] == "torch_fp32"
        assert 0 < c[name]["max_abs_diff"] < 0.3 and c[name]["labels_agree"] >= 0.75, (name, c[name])


def test_quick_run_on_a_tiny_shape(tiny, tmp_path, capsys):
    """Everything but the second preset and torch's int8 model (the next test has them): the peak memory child
    processes are what costs time here."""
    pytest.importorskip("onnxruntime")
    path = tmp_path / "out" / "model.json"
    assert cli.main(BASE + ["--preset", "bit", "--no-int8", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "sentences/s" in printed and "peak RSS MiB" in printed and "idle child processes" in printed
    data = json.loads(path.read_text())
    for key in ("command", "cpu", "torch", "numba", "onnxruntime", "threads", "settings", "load_average",
                "memory_baselines", "skipped", "shapes", "summary"):
        assert key in data, key
    assert data["command"].startswith("binlab bench model --quick --threads 1")
    assert set(data["memory_baselines"]) == {"idle_torch", "idle_engine", "idle_onnxruntime"}
    assert data["memory_baselines"]["idle_torch"]["peak_mib"] > 10
    (shape,) = data["shapes"]
    assert shape["name"] == "tiny" and shape["config"]["hidden_size"] == 64
    everything = {"binlab_bit", "torch_fp32", "onnx_fp32", "onnx_int8"}
    assert set(shape["disk_bytes"]) == everything
    assert shape["disk_bytes"]["binlab_bit"] < shape["disk_bytes"]["torch_fp32"]
    assert [w["name"] for w in shape["workloads"]] == ["1x16", "4xSST"]
    for w in shape["workloads"]:
        assert _methods(w) == everything
        for name in everything:
            assert w["times_s"][name] > 0 and len(w["samples_s"][name]) == 3
            assert w["sentences_per_s"][name] == pytest.approx(w["batch"] / w["times_s"][name])
        assert set(w["ratio_vs_fp32"]) == everything - {"torch_fp32"}
        assert set(w["ratio_vs_onnx_int8"]) == {"binlab_bit"}
        c = w["checks"]
        _check_packed(c, ["binlab_bit"])
        assert c["onnx_fp32"]["reference"] == "torch_fp32" and c["onnx_fp32"]["max_abs_diff"] < 1e-4
        _check_int8(c, ["onnx_int8"])
        for name, b in w["breakdown"].items():
            assert set(b["per_step_s"]) == {s for s, _ in STEPS}
            assert f"layer.1.{LAYER_STEPS[-1]}" in b["steps_s"] and len(b["per_layer_s"]) == 2
            assert b["sum_s"] == pytest.approx(sum(b["steps_s"].values())) and b["sum_s"] > 0
            assert b["back_to_back_s"] > 0 and b["rounds_s"] == w["times_s"][name]
    memory = shape["workloads"][0]["memory"]  # --quick: memory at the first workload only
    assert set(memory) == everything and "memory" not in shape["workloads"][1]
    for name, m in memory.items():
        assert m.get("peak_mib", 0) > 10, (name, m)


def test_onnx_runtime_missing_is_skipped_with_a_message(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    path = tmp_path / "model.json"
    assert cli.main(BASE + ["--no-memory", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "ONNX Runtime methods skipped: onnxruntime is not installed" in printed
    assert "pip install 'binlab[bench]'" in printed
    data = json.loads(path.read_text())
    assert "onnxruntime is not installed" in data["skipped"]["onnx"] and data["onnxruntime"] is None
    for w in data["shapes"][0]["workloads"]:
        assert _methods(w) == {"binlab_bit", "binlab_bibert", "torch_fp32", "torch_int8"}
        assert w["ratio_vs_onnx_int8"] == {} and "memory" not in w
        _check_packed(w["checks"], ["binlab_bit", "binlab_bibert"])
        _check_int8(w["checks"], ["torch_int8"])


def test_onnx_missing_beside_onnx_runtime_names_onnx(monkeypatch):
    # onnxruntime present (a stand-in module) but onnx absent: the message names the missing one.
    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    monkeypatch.setitem(sys.modules, "onnx", None)
    module, why = bench.onnx_runtime()
    assert module is None and why.startswith("ONNX Runtime methods skipped: onnx is not installed")


def test_a_packed_folder_as_the_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(bench.WORKLOADS, "1x128", (10,))  # the folder runs every workload: keep them small
    monkeypatch.setitem(bench.WORKLOADS, "1x16", (6,))
    monkeypatch.setitem(bench.WORKLOADS, "32xSST-2", (7, 3))
    config = bench.BertConfig(**TINY["config"])
    folder = export_packed(bench.random_w1a1(config, "bibert"), tmp_path / "packed")
    path = tmp_path / "model.json"
    assert cli.main(["bench", "model", "--quick", "--model", str(folder), "--threads", "1", "--rounds", "3",
                     "--retries", "0", "--no-onnx", "--no-memory", "--no-int8", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "time per step" in printed and "qkv.gemm" in printed  # the breakdown of the 1x128 workload
    data = json.loads(path.read_text())
    (shape,) = data["shapes"]
    assert shape["source"] == str(folder) and len(shape["workloads"]) == 3
    w = shape["workloads"][0]
    assert _methods(w) == {"binlab_packed", "torch_fp32"} and w["checks"]["binlab_packed"]["reference"] is None
    assert set(data["summary"]) == {"packed/binlab_packed"}
    assert data["summary"]["packed/binlab_packed"]["x_onnx_int8"] is None


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("binlab bench: error: "), err
    return err[0]


def test_errors_name_the_problem(tmp_path, capsys):
    line = _error(capsys, ["bench", "model", "--model", str(tmp_path)])
    assert str(tmp_path) in line and "not a packed model" in line
    line = _error(capsys, ["bench", "model", "--model", str(tmp_path / "missing")])
    assert "not a directory" in line
    line = _error(capsys, ["bench", "model", "--shape", "bert-huge"])
    assert "unknown shape 'bert-huge'" in line and "minilm, bert-base" in line
    assert "unknown preset 'w1a2'" in _error(capsys, ["bench", "model", "--preset", "w1a2"])
    assert "--threads must be at least 1" in _error(capsys, ["bench", "model", "--threads", "0"])
    line = _error(capsys, ["bench", "model", "--model", str(tmp_path), "--shape", "minilm"])
    assert "--shape" in line and "--model" in line
    line = _error(capsys, ["bench", "gemm", "--threads", "2", "--no-onnx"])
    assert "--threads, --no-onnx: options of `binlab bench model`" in line


def test_bench_gemm_is_parsed_as_before():
    parser = cli.build_parser(["bench", "gemm"])
    args = parser.parse_args(["bench", "gemm", "--quick", "--rounds", "3", "--retries", "0", "--max-foreign",
                              "0.5", "--no-int8", "--json", "x.json", "--debug"])
    assert (args.what, args.quick, args.rounds, args.retries, args.max_foreign, args.no_int8, args.json) == \
        ("gemm", True, 3, 0, 0.5, True, "x.json")
    assert args.debug and args.threads is None and args.model is None
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "nothing"])


def test_paired_ratio_is_the_median_of_the_rounds():
    samples = {"torch_fp32": [1.0, 2.0, 4.0, 8.0, 100.0], "binlab_bit": [0.1, 0.2, 0.4, 0.8, 1.0]}
    assert bench.paired_ratio(samples, "torch_fp32", "binlab_bit") == 10.0
    assert bench.paired_ratio(samples, "onnx_int8", "binlab_bit") is None


def test_engine_timings_change_nothing(tmp_path):
    """The engine's optional breakdown: the same logits, every step of every layer timed once per call."""
    config = bench.BertConfig(**TINY["config"])
    engine = PackedBert(export_packed(bench.random_w1a1(config, "bit"), tmp_path / "bit"))
    ids, mask, types = bench._ids((12, 7, 3), config.vocab_size, seed=1)
    timings: dict = {}
    assert torch.equal(engine(ids, mask, types, timings=timings), engine(ids, mask, types))
    expected = ({s for s, _ in STEPS} - set(LAYER_STEPS)) | {f"layer.{i}.{s}" for i in range(2) for s in LAYER_STEPS}
    assert set(timings) == expected and all(t >= 0 for t in timings.values())


def test_the_goals_are_judged_at_minilm_1x128_only():
    def shape(name):
        w = {"name": "1x128", "breakdown": {"binlab_bit": {}}, "ratio_vs_fp32": {"binlab_bit": 6.0},
             "ratio_vs_onnx_int8": {"binlab_bit": 1.5}, "quiet": False, "foreign_cores": 1.2}
        return {"name": name, "workloads": [w, dict(w, name="1x16")],
                "disk_bytes": {"binlab_bit": 10, "torch_fp32": 300}}

    s = bench._summary([shape("minilm"), shape("bert-base")])
    assert set(s) == {"minilm/binlab_bit", "bert-base/binlab_bit"}
    assert s["minilm/binlab_bit"]["met_torch_fp32"] is True and s["minilm/binlab_bit"]["met_onnx_int8"] is False
    assert s["bert-base/binlab_bit"]["met_torch_fp32"] is None and s["bert-base/binlab_bit"]["x_torch_fp32"] == 6.0
    lines = bench._summary_lines(s)
    assert "6.00x torch_fp32 (goal 5x: met); 1.50x onnx_int8 (goal 2x: not met)" in lines[0]
    assert "[loaded machine]" in lines[0] and "30.0x smaller on disk" in lines[0]
    assert "goal" not in lines[1] and "56.3x fewer FLOPs" in lines[2]
