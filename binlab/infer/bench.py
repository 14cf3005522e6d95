"""``binlab bench model``: the whole packed W1A1 BERT against torch and ONNX Runtime; ``binlab bench``'s dispatcher.

``binlab bench gemm`` (:mod:`binlab.kernels.bench`, unchanged) times the products alone; this module times whole
forward passes, and dispatches ``binlab bench WHAT`` to the one or the other (``gemm`` options as they were).

Methods, timed in one process, on the same token ids:

* ``binlab_bit``, ``binlab_bibert``: :class:`binlab.infer.engine.PackedBert` in float32 on the packed export
  (:func:`~binlab.infer.export.export_packed`) of a W1A1 model of the ``bit`` (BiT) or ``bibert`` (BiBERT) preset
  with random weights, calibrated on a random batch; or ``binlab_packed``: the folder of ``--model`` (``binlab
  export``'s output).
* ``torch_fp32``: the same network in full precision: binlab's BERT of the same shape with ``QuantConfig()``
  (quantization off: plain BERT, GELU), its QuantLinear / QuantEmbedding swapped for ``nn.Linear`` /
  ``nn.Embedding``, random weights, ``eval()`` under ``torch.no_grad()``. The baseline of every ratio.
* ``torch_int8``: ``torch.ao.quantization.quantize_dynamic`` of it (every ``nn.Linear``, qint8 weights).
* ``onnx_fp32``: it exported by ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``, opset 17,
  dynamic batch and length), run by ONNX Runtime's CPU provider (all graph optimisations, sequential, ``--threads``
  intra-op threads, ``session.force_spinning_stop``: :data:`ORT_SPIN_STOP`). ``onnx_int8``:
  ``onnxruntime.quantization.quantize_dynamic`` of that file (QInt8 weights).
  onnxruntime and onnx are an optional dependency (``pip install 'binlab[bench]'``); without them both methods are
  skipped with a message.

Shapes: ``minilm`` (6 layers, hidden 384, 12 heads, FFN 1536, vocabulary 30,522: all-MiniLM-L6-v2's) and
``bert-base`` (12, 768, 12, 3072), to set against BiBERT's "56.3x fewer FLOPs". Workloads: batch 1 x 128 tokens,
batch 1 x 16 tokens, and 32 SST-2 sentences: the lengths (in tokens, [CLS] and [SEP] included) of 32 SST-2 dev
sentences drawn at random, padded to the longest (46; mean 24.8). BERT-base runs the two batch-1 workloads.

Measurement, as ``binlab bench gemm``'s: ``--threads`` threads for torch, numba and ONNX Runtime; every method is
warmed up; then in each round each method runs once (enough calls to last about 20 ms, averaged) in an order that
rotates between rounds, with a 10 ms sleep before each method so that the spinning threads of the previous one go
idle. A method's time is its median over rounds; a ratio is the median of the per-round ratios (paired). The CPU
time other processes used during a workload is read from ``/proc/stat`` (``foreign_cores``); above
``--max-foreign`` cores, or when the rounds scatter by more than 25 %, the workload is measured again (``--retries``
times) and the quietest attempt is kept and flagged.

Also measured: peak resident memory (``VmHWM``) of a fresh child process per method that loads the method's model
from disk and runs the workload twice, next to idle children that only import torch, binlab's engine (torch and
numba), or numpy and onnxruntime (what a child pays before any model); bytes on disk (the packed folder, the fp32
safetensors checkpoint, torch's int8 state dict, the two ONNX files); the packed engine's time per step and layer
(``PackedBert(..., timings={})``, :data:`binlab.infer.engine.STEPS`); and whether each method computes what it
should (:func:`checks`): the packed engine the fake-quant model it was exported from (logits and labels, in float32
and in float64), the int8 and ONNX methods the torch fp32 model.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numba
import numpy as np
import torch
from torch import nn

from binlab.checkpoint import save_pretrained
from binlab.infer.engine import LAYER_STEPS, STEPS, PackedBert
from binlab.infer.export import export_packed
from binlab.infer.packed import file_bytes, load_packed
from binlab.kernels import bench as gemm_bench
from binlab.model import BertConfig, BertForSequenceClassification
from binlab.quant.config import QuantConfig
from binlab.quant.layers import QuantEmbedding, QuantLinear
from binlab.train.calibration import calibrate

__all__ = ["SHAPES", "WORKLOADS", "PRESETS", "add_arguments", "run", "run_model", "plain_fp32", "random_w1a1"]

#: name -> the BertConfig fields of the shape, and the workloads it runs
SHAPES = {
    "minilm": {"config": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536,
                              vocab_size=30522),
               "workloads": ("1x128", "1x16", "32xSST-2")},
    "bert-base": {"config": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                                 intermediate_size=3072, vocab_size=30522),
                  "workloads": ("1x128", "1x16")},
}
#: The token lengths of 32 SST-2 dev sentences (``random.Random(0).sample`` of the 872, bundled tokenizer).
SST2_LENGTHS = (46, 40, 40, 36, 33, 33, 32, 31, 31, 31, 30, 30, 29, 26, 25, 25, 24, 24, 23, 21, 20, 20, 19, 19, 18,
                16, 14, 14, 12, 11, 11, 9)
#: name -> the real length of each sentence of the batch (padded to the longest)
WORKLOADS = {"1x128": (128,), "1x16": (16,), "32xSST-2": SST2_LENGTHS}
PRESETS = ("bit", "bibert")
BASELINE = "torch_fp32"
GOALS = {"torch_fp32": 5.0, "onnx_int8": 2.0}  # the goals at 1 x 128: packed at least this much faster
GOAL_SHAPES = ("minilm", "packed")  # the goals are the packed MiniLM's (or a packed folder's); BERT-base: ratios only
FLOPS_CLAIM = 56.3  # BiBERT (ICLR 2022): "56.3 times ... saving on FLOPs" of a fully binarized BERT-base
SIZE_CLAIM = 31.2  # ... "and 31.2 times" on model size

SAMPLE_SECONDS = 0.02  # a timed sample repeats a call until it lasts about this long
PAUSE_SECONDS = 0.01  # sleep before each method (spinning OpenMP / ONNX Runtime workers go idle)
# ONNX Runtime's workers spin on after a run for longer than PAUSE_SECONDS (at 2 threads they slowed the next method
# 2-3x: docs/benchmarks.md); its "session.force_spinning_stop" ends the spinning when a run returns (it still spins
# during a run). False measures ONNX Runtime's default.
ORT_SPIN_STOP = True
WARMUP_CALLS = 2
ONNX_INSTALL = "pip install 'binlab[bench]' (onnxruntime, onnx)"
MODEL_OPTIONS = ("threads", "model", "shape", "preset", "no_onnx", "no_memory")


# ----------------------------------------------------------------------------------------------------------
# the command line: `binlab bench gemm` and `binlab bench model`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["gemm", "model"],
                        help="gemm: binlab's products against torch on BERT-base shapes (binlab.kernels.bench); "
                             "model: whole W1A1 BERTs against torch fp32/int8 and ONNX Runtime fp32/int8")
    gemm_bench.add_options(parser)  # --quick, --json, --rounds, --retries, --max-foreign, --no-int8: both
    g = parser.add_argument_group(
        "bench model", "whole forward passes; --quick: MiniLM only, 5 rounds, memory at the first workload only; "
        "--no-int8 skips torch's int8 model")
    g.add_argument("--threads", type=int, default=None, help="threads of torch, numba and ONNX Runtime (default 2)")
    g.add_argument("--model", metavar="PACKED_DIR", default=None,
                   help="a packed model folder (`binlab export`) instead of random W1A1 models")
    g.add_argument("--shape", action="append", default=None, metavar="NAME",
                   help=f"the shape of the random models: {', '.join(SHAPES)} (repeatable; default both, "
                        "quick minilm)")
    g.add_argument("--preset", action="append", default=None, metavar="NAME",
                   help=f"the W1A1 presets to run packed: {', '.join(PRESETS)} (repeatable; default both)")
    g.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime methods")
    g.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")


def run(args) -> int:
    if args.what == "gemm":
        given = [name for name in MODEL_OPTIONS if getattr(args, name, None) not in (None, False)]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{flags}: options of `binlab bench model`, not of `binlab bench gemm`")
        return gemm_bench.run(args)
    return run_model(args)


# ----------------------------------------------------------------------------------------------------------
# the models


def _randomize(model: nn.Module, seed: int) -> None:
    """Random LayerNorms, biases (and BiT's thresholds) and classifier, so the logits differ between inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("LayerNorm.weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.startswith("classifier"):
                p.copy_(noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)


def _ids(lengths, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random token ids for sentences of ``lengths``, padded to the longest: ids, attention mask, token types."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    L = int(lengths.max())
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    ids = torch.randint(1, vocab, (len(lengths), L), generator=gen) * mask
    return ids, mask, torch.zeros_like(ids)


def random_w1a1(config: BertConfig, preset: str, seed: int = 0) -> BertForSequenceClassification:
    """A fake-quant W1A1 model of ``preset`` with random weights in the shape of ``config``, calibrated, eval."""
    cfg = replace(config, quant=QuantConfig.preset(preset), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    _randomize(model, seed + 1)
    ids, mask, types = _ids((64, 48, 32, 20), cfg.vocab_size, seed + 2)
    calibrate(model, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    return model.eval()


def _plain(model: nn.Module) -> nn.Module:
    """``model`` with every full-precision QuantLinear / QuantEmbedding replaced by nn.Linear / nn.Embedding on the
    same parameters (what torch's dynamic quantization and a plain deployment expect)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is QuantLinear:
                new = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                new.weight, new.bias = child.weight, child.bias
            elif type(child) is QuantEmbedding:
                new = nn.Embedding(child.num_embeddings, child.embedding_dim, padding_idx=child.padding_idx)
                new.weight = child.weight
            else:
                continue
            setattr(parent, name, new)
    return model


def plain_fp32(config: BertConfig, seed: int = 0) -> BertForSequenceClassification:
    """The full-precision BERT of ``config``'s shape (``QuantConfig()``: GELU, no quantizer), random weights, eval."""
    cfg = replace(config, quant=QuantConfig(), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    _randomize(model, seed + 1)
    return _plain(model).eval()


class _Logits(nn.Module):
    """The logits alone (what ONNX exports)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids, attention_mask, token_type_ids).logits


def _torch_int8(model: nn.Module):
    """torch's dynamic int8 model of ``model`` (a copy), or the reason it cannot be built."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8), None
    except Exception as e:  # noqa: BLE001 - a torch build without a quantized engine
        return None, f"torch dynamic int8 is not available in this torch build ({type(e).__name__}: {e})"


def onnx_runtime():
    """``(onnxruntime, None)``, or ``(None, why)`` when onnxruntime or onnx is not installed."""
    try:
        import onnxruntime

        importlib.import_module("onnx")  # torch.onnx.export and the quantizer need it
    except ImportError as e:
        return None, f"ONNX Runtime methods skipped: {e.name or 'onnxruntime'} is not installed ({ONNX_INSTALL})"
    return onnxruntime, None


def _export_onnx(model: nn.Module, ids, mask, types, path: Path) -> None:
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about the input checks' Python ints
        torch.onnx.export(_Logits(model), (ids, mask, types), str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=["logits"], dynamic_axes=axes)


def _quantize_onnx(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process the model first goes to the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


def _session(ort, path: Path, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if ORT_SPIN_STOP:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


class Setup:
    """Every model of one shape, built once: the packed engines, the fp32 / int8 / ONNX models, their files."""

    def __init__(self, config: BertConfig, work: Path, presets, packed_dir: Path | None, threads: int, ort,
                 int8: bool, skipped: dict):
        self.config, self.work, self.threads, self.ort = config, work, threads, ort
        self.engines, self.fake_quant, self.paths, self.disk, self._float64 = {}, {}, {}, {}, {}
        if packed_dir is not None:
            self._add_engine("binlab_packed", packed_dir, None)
        else:
            for preset in presets:
                model = random_w1a1(config, preset)
                folder = export_packed(model, work / f"packed_{preset}")
                self._add_engine(f"binlab_{preset}", folder, model)
        self.fp32 = plain_fp32(config)
        save_pretrained(self.fp32, work / "fp32")
        self.disk[BASELINE] = _folder_bytes(work / "fp32")
        self.paths[BASELINE] = ("torch", work / "torch_fp32.pt")
        torch.save(self.fp32, self.paths[BASELINE][1])
        self.int8 = None
        if int8:
            self.int8, why = _torch_int8(self.fp32)
            if self.int8 is None:
                skipped["torch_int8"] = why
            else:
                self.disk["torch_int8"] = _state_bytes(self.int8)
                self.paths["torch_int8"] = ("torch", work / "torch_int8.pt")
                torch.save(self.int8, self.paths["torch_int8"][1])
        self.sessions = {}
        if ort is not None:
            ids, mask, types = _ids((16, 9), config.vocab_size, 5)
            _export_onnx(self.fp32, ids, mask, types, work / "model.onnx")
            _quantize_onnx(work / "model.onnx", work / "model.int8.onnx")
            for name, file in (("onnx_fp32", "model.onnx"), ("onnx_int8", "model.int8.onnx")):
                self.sessions[name] = _session(ort, work / file, threads)
                self.disk[name] = (work / file).stat().st_size
                self.paths[name] = ("onnx", work / file)

    def float64(self, name: str) -> tuple[nn.Module, PackedBert]:
        """The float64 fake-quant model and float64 engine of packed method ``name`` (built on first use)."""
        if name not in self._float64:
            self._float64[name] = (copy.deepcopy(self.fake_quant[name]).double().eval(),
                                   PackedBert(self.engines[name].packed, dtype=torch.float64))
        return self._float64[name]

    def _add_engine(self, name: str, folder: Path, model):
        self.engines[name] = PackedBert(load_packed(folder))
        self.disk[name] = file_bytes(folder)
        self.paths[name] = ("packed", Path(folder))
        if model is not None:
            self.fake_quant[name] = model

    def methods(self, ids, mask, types) -> dict:
        """name -> a call that returns the logits (a tensor or an array) of this workload."""
        out = {}
        for name, engine in self.engines.items():
            out[name] = lambda e=engine: e(ids, mask, types)
        for name, model in ((BASELINE, self.fp32), ("torch_int8", self.int8)):
            if model is not None:
                def call(m=model):
                    with torch.no_grad():
                        return m(ids, mask, types).logits
                out[name] = call
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
        for name, session in self.sessions.items():
            out[name] = lambda s=session: s.run(None, feeds)[0]
        return out


# ----------------------------------------------------------------------------------------------------------
# timing


def time_methods(methods: dict, rounds: int) -> dict[str, list[float]]:
    """:func:`binlab.kernels.bench.time_methods` with this benchmark's warm-up, pause and sample length."""
    return gemm_bench.time_methods(methods, rounds, warmup=WARMUP_CALLS, pause=PAUSE_SECONDS,
                                   sample_seconds=SAMPLE_SECONDS)


def measure(methods: dict, rounds: int, retries: int, max_foreign: float) -> dict:
    """Time ``methods`` until a quiet attempt (or the retries run out); keep the quietest (as bench gemm)."""
    best = None
    for attempt in range(retries + 1):
        load = gemm_bench.ForeignLoad()
        load.start()
        samples = time_methods(methods, rounds)
        foreign = load.stop()
        spread = max(gemm_bench._spread(s) for s in samples.values())
        quiet = (foreign is None or foreign <= max_foreign) and spread <= gemm_bench.MAX_SPREAD
        result = {"samples": samples, "foreign_cores": foreign, "spread": spread, "quiet": quiet}
        score = (foreign or 0.0) + spread
        if best is None or score < best[0]:
            best = (score, result)
        if quiet:
            break
    return dict(best[1], attempts=attempt + 1)


def paired_ratio(samples: dict, num: str, den: str) -> float | None:
    """The median over rounds of ``time(num) / time(den)`` (how many times faster ``den`` is)."""
    if num not in samples or den not in samples:
        return None
    return gemm_bench._median([a / b for a, b in zip(samples[num], samples[den])])


def breakdown(engine: PackedBert, ids, mask, types, reps: int) -> dict:
    """The median seconds of every step of ``reps`` forward passes (``timings``), their sum, per step summed over the
    layers, per layer; and ``back_to_back_s``: the median of ``reps`` untimed calls made in between (no pause)."""
    runs, plain = [], []
    for _ in range(reps):
        start = time.perf_counter()
        engine(ids, mask, types)
        plain.append(time.perf_counter() - start)
        timings: dict = {}
        engine(ids, mask, types, timings=timings)
        runs.append(timings)
    keys = list(runs[0])
    steps = {k: gemm_bench._median([r[k] for r in runs]) for k in keys}
    per_step = {name: 0.0 for name, _ in STEPS}
    per_layer = [0.0] * len(engine.layers)
    for key, t in steps.items():
        if key.startswith("layer."):
            _, i, step = key.split(".", 2)
            per_step[step] += t
            per_layer[int(i)] += t
        else:
            per_step[key] += t
    return {"steps_s": steps, "per_step_s": per_step, "per_layer_s": per_layer, "sum_s": sum(steps.values()),
            "back_to_back_s": gemm_bench._median(plain)}


# ----------------------------------------------------------------------------------------------------------
# memory: a child process per method


_CHILD = r"""
import json, resource, sys
spec = json.loads(sys.argv[1])
kind = spec["kind"]
if kind == "idle_torch":
    import torch
elif kind == "idle_engine":
    import binlab.infer.engine
elif kind == "idle_onnxruntime":
    import numpy, onnxruntime
else:
    import numpy as np
    data = np.load(spec["inputs"])
    feeds = {k: data[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    if kind == "onnx":  # the session options of binlab.infer.bench._session
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = spec["threads"], 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        session = ort.InferenceSession(spec["path"], so, providers=["CPUExecutionProvider"])
        call = lambda: session.run(None, feeds)
    else:
        import torch
        torch.set_num_threads(spec["threads"])
        args = [torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
        if kind == "packed":
            import numba
            numba.set_num_threads(min(spec["threads"], numba.config.NUMBA_NUM_THREADS))
            from binlab.infer.engine import load_engine
            engine = load_engine(spec["path"])
            call = lambda: engine(*args)
        else:
            import warnings
            warnings.simplefilter("ignore")
            model = torch.load(spec["path"], weights_only=False).eval()
            def call():
                with torch.no_grad():
                    return model(*args).logits
    for _ in range(spec["calls"]):
        call()
status = {}
with open("/proc/self/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        status[key] = value.split()
hwm = int(status["VmHWM"][0]) if "VmHWM" in status else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss = int(status["VmRSS"][0]) if "VmRSS" in status else None
print(json.dumps({"peak_kib": hwm, "rss_kib": rss}))
"""


def peak_memory(specs: dict, parallel: int = 4) -> dict:
    """name -> {"peak_mib", "rss_mib"} (or {"error"}) of a fresh child process per spec (:data:`_CHILD`); up to
    ``parallel`` children at once (each measures only itself)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out, pending, running = {}, list(specs.items()), []

    def finish(name, proc):
        stdout, stderr = proc.communicate()
        lines = stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = " ".join(stderr.strip().splitlines()[-1:]) or f"exit status {proc.returncode}"
            out[name] = {"error": tail}
            return
        d = json.loads(lines[-1])
        out[name] = {"peak_mib": d["peak_kib"] / 1024,
                     "rss_mib": None if d["rss_kib"] is None else d["rss_kib"] / 1024}

    while pending or running:
        while pending and len(running) < parallel:
            name, spec = pending.pop(0)
            proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(spec)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
            running.append((name, proc))
        name, proc = running.pop(0)
        finish(name, proc)
    return out


# ----------------------------------------------------------------------------------------------------------
# checks: does each method compute what it should?


def _compare(got, ref) -> tuple[float, float]:
    got, ref = torch.as_tensor(np.asarray(got)).double(), torch.as_tensor(np.asarray(ref)).double()
    return float((got - ref).abs().max()), float((got.argmax(-1) == ref.argmax(-1)).double().mean())


def checks(setup: Setup, outputs: dict, ids, mask, types) -> dict:
    """Per method: the max |logit difference| and the share of equal labels against its reference.

    A packed engine is compared with the fake-quant model it was exported from, in float32 (the timed engine) and in
    float64 (an engine and a model in float64: equal up to the order of the float operations). In float32 a value
    within rounding of a binarizer's threshold may take the other bit, and a deep random W1A1 network can amplify
    that: ``fake_quant_fp32_vs_fp64`` says how far the fake-quant model is from its own float64 self.
    """
    out = {}
    for name, logits in outputs.items():
        if name in setup.engines:
            model = setup.fake_quant.get(name)
            if model is None:
                out[name] = {"reference": None, "note": "a packed folder: no fake-quant model to compare with"}
                continue
            model64, engine64 = setup.float64(name)
            with torch.no_grad():
                ref, ref64 = model(ids, mask, types).logits, model64(ids, mask, types).logits
            diff, agree = _compare(logits, ref)
            diff64, agree64 = _compare(engine64(ids, mask, types), ref64)
            out[name] = {"reference": "fake_quant_fp32", "max_abs_diff": diff, "labels_agree": agree,
                         "float64_max_abs_diff": diff64, "float64_labels_agree": agree64,
                         "fake_quant_fp32_vs_fp64": _compare(ref, ref64)[0]}
        elif name != BASELINE:
            diff, agree = _compare(logits, outputs[BASELINE])
            out[name] = {"reference": BASELINE, "max_abs_diff": diff, "labels_agree": agree}
    return out


# ----------------------------------------------------------------------------------------------------------
# printing


def _mib(value) -> str:
    return f"{value:12.0f}" if isinstance(value, (int, float)) else f"{'-':>12s}"


HEADER = (f"{'method':16s}{'latency ms':>12s}{'sentences/s':>13s}{'x fp32':>9s}{'x ort-int8':>11s}"
          f"{'peak RSS MiB':>13s}{'disk bytes':>15s}")


def _ratio(r, width: int) -> str:
    return f"{r:{width - 1}.2f}x" if r is not None else f"{'-':>{width}s}"


def format_rows(w: dict, disk: dict) -> list[str]:
    """One line per method: latency, sentences/s, paired ratios, peak RSS of its child process, bytes on disk."""
    rows = []
    for name, t in w["times_s"].items():
        r = 1.0 if name == BASELINE else w["ratio_vs_fp32"].get(name)
        mem = w.get("memory", {}).get(name, {}).get("peak_mib")
        size = f"{disk[name]:15,d}" if name in disk else f"{'-':>15s}"
        rows.append(f"{name:16s}{t * 1e3:12.2f}{w['sentences_per_s'][name]:13.1f}{_ratio(r, 9)}"
                    f"{_ratio(w['ratio_vs_onnx_int8'].get(name), 11)}{_mib(mem):>13s}{size}")
    return rows


def format_breakdown(found: dict, layers: int) -> list[str]:
    """The steps of every packed engine side by side: ms summed over the layers, and % of their sum; then the
    untimed calls made between the timed ones, and the method's median in the interleaved rounds."""
    names = list(found)
    lines = [f"{'step':16s}" + "".join(f"{n:>22s}" for n in names) + "   what"]
    what = dict(STEPS)
    for step, _ in STEPS:
        per = f"(x{layers}) " if step in LAYER_STEPS else ""
        cells = ""
        for n in names:
            t = found[n]["per_step_s"][step]
            cells += f"{t * 1e3:12.3f} ms {100 * t / found[n]['sum_s']:4.1f}%"
        lines.append(f"{step:16s}{cells}   {per}{what[step]}")
    lines.append(f"{'sum of steps':16s}" + "".join(f"{found[n]['sum_s'] * 1e3:12.3f} ms {'':5s}" for n in names))
    for label, key in (("untimed calls", "back_to_back_s"), ("in the rounds", "rounds_s")):
        lines.append(f"{label:16s}" + "".join(f"{found[n][key] * 1e3:12.3f} ms {'':5s}" for n in names))
    for n in names:
        lines.append(f"  {n} per layer (ms): " + ", ".join(f"{t * 1e3:.2f}" for t in found[n]["per_layer_s"]))
    return lines


def format_checks(found: dict) -> list[str]:
    """A line per method whose labels differ from its reference anywhere (silence: every label agreed)."""
    lines = []
    for n, c in found.items():
        if c.get("labels_agree", 1.0) < 1.0 or c.get("float64_labels_agree", 1.0) < 1.0:
            line = (f"  check {n}: labels agree with {c['reference']} on {100 * c['labels_agree']:.0f}% "
                    f"(max |diff| {c['max_abs_diff']:.2g})")
            if "float64_max_abs_diff" in c:
                line += (f"; in float64 on {100 * c['float64_labels_agree']:.0f}% (max |diff| "
                         f"{c['float64_max_abs_diff']:.2g}); the float32 fake-quant model is "
                         f"{c['fake_quant_fp32_vs_fp64']:.2g} from its float64 self")
            lines.append(line)
    return lines


def _describe(c: BertConfig) -> str:
    return (f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, "
            f"FFN {c.intermediate_size}, vocabulary {c.vocab_size}")


# ----------------------------------------------------------------------------------------------------------
# the run


def _settings(args) -> dict:
    quick = args.quick
    s = {"quick": quick, "rounds": args.rounds or (5 if quick else 15),
         "retries": args.retries if args.retries is not None else (1 if quick else 3),
         "threads": 2 if args.threads is None else args.threads, "max_foreign": args.max_foreign,
         "breakdown_reps": 3 if quick else 7}
    if s["rounds"] < 3:
        raise ValueError(f"--rounds must be at least 3, got {s['rounds']}")
    if s["retries"] < 0:
        raise ValueError(f"--retries must be >= 0, got {s['retries']}")
    if s["threads"] < 1:
        raise ValueError(f"--threads must be at least 1, got {s['threads']}")
    presets = args.preset or list(PRESETS)
    bad = [p for p in presets if p not in PRESETS]
    if bad:
        raise ValueError(f"unknown preset {bad[0]!r} for --preset; the packed engine runs: {', '.join(PRESETS)}")
    s["presets"] = list(dict.fromkeys(presets))
    if args.model is not None:
        if args.shape:
            raise ValueError("--shape chooses the shape of random models; --model brings its own")
        packed = load_packed(args.model)  # FileNotFoundError / ValueError: not a packed model
        s["shapes"] = [("packed", packed.config, Path(args.model), tuple(WORKLOADS))]
    else:
        names = args.shape or (["minilm"] if quick else list(SHAPES))
        for name in names:
            if name not in SHAPES:
                raise ValueError(f"unknown shape {name!r} for --shape; known shapes: {', '.join(SHAPES)}")
        s["shapes"] = [(name, BertConfig(**SHAPES[name]["config"]), None, SHAPES[name]["workloads"])
                       for name in dict.fromkeys(names)]
    return s


def _machine(threads: int) -> dict:
    return {"cpu": gemm_bench.cpu_info(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numba": numba.__version__,
            "threads": {"requested": threads, "torch": torch.get_num_threads(), "numba": numba.get_num_threads()}}


def run_model(args) -> int:
    s = _settings(args)
    threads = s["threads"]
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    skipped = {}
    ort = None
    if args.no_onnx:
        skipped["onnx"] = "ONNX Runtime methods skipped (--no-onnx)"
    else:
        ort, why = onnx_runtime()
        if ort is None:
            skipped["onnx"] = why
            print(why)
    machine = _machine(threads)
    machine["onnxruntime"] = None if ort is None else ort.__version__
    load_before = os.getloadavg()
    print(f"CPU: {machine['cpu']['model']} ({machine['cpu']['logical_cpus']} logical CPUs); torch {torch.__version__}, "
          f"numba {numba.__version__}, onnxruntime {machine['onnxruntime'] or 'absent'}; {threads} thread(s); "
          f"load average {load_before[0]:.2f}")
    start = time.perf_counter()
    shapes_out = []
    with tempfile.TemporaryDirectory(prefix="binlab-bench-model-") as tmp:
        tmp = Path(tmp)
        baselines = {}
        if not args.no_memory:
            specs = {"idle_torch": {"kind": "idle_torch"}, "idle_engine": {"kind": "idle_engine"}}
            if ort is not None:
                specs["idle_onnxruntime"] = {"kind": "idle_onnxruntime"}
            baselines = peak_memory(specs)
            print("idle child processes (peak RSS): " + ", ".join(
                f"{k} {v.get('peak_mib', float('nan')):.0f} MiB" for k, v in baselines.items()))
        for shape_name, config, packed_dir, workloads in s["shapes"]:
            work = tmp / shape_name
            work.mkdir()
            built = time.perf_counter()
            setup = Setup(config, work, s["presets"], packed_dir, threads, ort, not args.no_int8, skipped)
            print(f"\nshape {shape_name}: {_describe(config)} (models built in {time.perf_counter() - built:.0f} s)")
            shape_out = {"name": shape_name, "config": {k: getattr(config, k) for k in (
                "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")},
                "source": str(packed_dir) if packed_dir else "random weights", "disk_bytes": dict(setup.disk),
                "workloads": []}
            for wi, wname in enumerate(workloads):
                lengths = WORKLOADS[wname]
                if max(lengths) > config.max_position_embeddings:
                    skipped[f"{shape_name}/{wname}"] = (f"{max(lengths)} tokens exceed the model's "
                                                        f"max_position_embeddings={config.max_position_embeddings}")
                    continue
                ids, mask, types = _ids(lengths, config.vocab_size, seed=10 + wi)
                methods = setup.methods(ids, mask, types)
                outputs = {name: fn() for name, fn in methods.items()}
                measured = measure(methods, s["rounds"], s["retries"], s["max_foreign"])
                samples = measured["samples"]
                B = len(lengths)
                times = {name: gemm_bench._median(v) for name, v in samples.items()}
                w = {"name": wname, "batch": B, "tokens": max(lengths), "real_tokens": int(sum(lengths)),
                     "times_s": times, "sentences_per_s": {n: B / t for n, t in times.items()},
                     "ratio_vs_fp32": {n: paired_ratio(samples, BASELINE, n) for n in samples if n != BASELINE},
                     "ratio_vs_onnx_int8": {n: paired_ratio(samples, "onnx_int8", n) for n in setup.engines
                                            if "onnx_int8" in samples},
                     "samples_s": samples, "foreign_cores": measured["foreign_cores"],
                     "spread": measured["spread"], "quiet": measured["quiet"], "attempts": measured["attempts"],
                     "checks": checks(setup, outputs, ids, mask, types)}
                w["ratio_vs_fp32"] = {k: v for k, v in w["ratio_vs_fp32"].items() if v is not None}
                w["breakdown"] = {}
                for name, engine in setup.engines.items():
                    b = breakdown(engine, ids, mask, types, s["breakdown_reps"])
                    b["rounds_s"] = times[name]
                    w["breakdown"][name] = b
                if not args.no_memory and (wi == 0 or not s["quick"]):
                    np.savez(work / "inputs.npz", input_ids=ids.numpy(), attention_mask=mask.numpy(),
                             token_type_ids=types.numpy())
                    specs = {name: {"kind": kind, "path": str(path), "inputs": str(work / "inputs.npz"),
                                    "threads": threads, "calls": 2}
                             for name, (kind, path) in setup.paths.items() if name in samples}
                    w["memory"] = peak_memory(specs)
                foreign = measured["foreign_cores"]
                flag = "" if measured["quiet"] else "  (shared CPU: measured on a loaded machine)"
                print(f"\n{shape_name} {wname}: batch {B} x {max(lengths)} tokens ({sum(lengths)} real); "
                      f"other processes used {'?' if foreign is None else f'{foreign:.2f}'} cores, "
                      f"spread {measured['spread']:.2f}, {measured['attempts']} attempt(s){flag}")
                print(HEADER)
                for row in format_rows(w, setup.disk):
                    print(row)
                for name, err in w.get("memory", {}).items():
                    if "error" in err:
                        print(f"  peak memory of {name}: the child process failed: {err['error']}")
                for line in format_checks(w["checks"]):
                    print(line)
                if wname == "1x128" and w["breakdown"]:
                    print(f"\npacked engine, time per step ({shape_name} {wname}, median of "
                          f"{s['breakdown_reps']} timed calls):")
                    for line in format_breakdown(w["breakdown"], config.num_hidden_layers):
                        print(line)
                shape_out["workloads"].append(w)
            shapes_out.append(shape_out)
            del setup
    summary = _summary(shapes_out)
    print()
    for line in _summary_lines(summary):
        print(line)
    for why in skipped.values():
        print(f"skipped: {why}")
    elapsed = time.perf_counter() - start
    print(f"{elapsed:.0f} s")
    if args.json:
        payload = {"command": _command(args), **machine, "settings": {k: v for k, v in s.items() if k != "shapes"},
                   "load_average": {"before": load_before, "after": os.getloadavg()}, "seconds": elapsed,
                   "memory_baselines": baselines, "skipped": skipped, "shapes": shapes_out, "summary": summary}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1, default=_jsonable))
        print(f"wrote {args.json}")
    return 0


def _command(args) -> str:
    """The command line of this run, rebuilt from ``args``."""
    parts = ["binlab bench model"]
    if args.quick:
        parts.append("--quick")
    for flag, value in (("--model", args.model), ("--threads", args.threads), ("--rounds", args.rounds),
                        ("--retries", args.retries)):
        if value is not None:
            parts.append(f"{flag} {value}")
    if args.max_foreign != 0.15:
        parts.append(f"--max-foreign {args.max_foreign}")
    parts += [f"--shape {v}" for v in args.shape or ()] + [f"--preset {v}" for v in args.preset or ()]
    parts += [flag for flag, on in (("--no-int8", args.no_int8), ("--no-onnx", args.no_onnx),
                                    ("--no-memory", args.no_memory)) if on]
    if args.json:
        parts.append(f"--json {args.json}")
    return " ".join(parts)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _summary(shapes: list[dict]) -> dict:
    """At batch 1 x 128: each packed engine's paired ratios against the goals' baselines, and for the shapes the goals
    are set for (:data:`GOAL_SHAPES`) whether they are met."""
    out = {}
    for shape in shapes:
        for w in shape["workloads"]:
            if w["name"] != "1x128":
                continue
            for name in w["breakdown"]:
                row = {"x_torch_fp32": w["ratio_vs_fp32"].get(name), "x_onnx_int8": w["ratio_vs_onnx_int8"].get(name),
                       "quiet": w["quiet"], "foreign_cores": w["foreign_cores"]}
                for base, goal in GOALS.items():
                    r = row[f"x_{base}"]
                    row[f"goal_{base}"] = goal
                    row[f"met_{base}"] = None if r is None or shape["name"] not in GOAL_SHAPES else bool(r >= goal)
                d = shape["disk_bytes"]
                row["smaller_than_fp32"] = d[BASELINE] / d[name] if name in d and BASELINE in d else None
                out[f"{shape['name']}/{name}"] = row
    return out


def _summary_lines(summary: dict) -> list[str]:
    lines = []
    for key, row in summary.items():
        parts = []
        for base, goal in GOALS.items():
            r = row[f"x_{base}"]
            if r is None:
                parts.append(f"vs {base}: not measured")
            else:
                met = row[f"met_{base}"]
                verdict = "" if met is None else f" (goal {goal:g}x: {'met' if met else 'not met'})"
                parts.append(f"{r:.2f}x {base}{verdict}")
        size = row["smaller_than_fp32"]
        note = "" if row["quiet"] else " [loaded machine]"
        lines.append(f"1x128 {key}: " + "; ".join(parts) + (f"; {size:.1f}x smaller on disk" if size else "") + note)
        if key.startswith("bert-base/") and row["x_torch_fp32"] is not None:
            lines.append(f"  BERT-base: BiBERT counts {FLOPS_CLAIM}x fewer FLOPs and {SIZE_CLAIM}x less storage; "
                         f"measured here {row['x_torch_fp32']:.2f}x less time than torch fp32"
                         + (f", {size:.1f}x fewer bytes" if size else ""))
    return lines

