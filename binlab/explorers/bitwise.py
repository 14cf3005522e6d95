"""Chapter 8's explorer: the whole path to a W1A1 BERT that runs in bits, and what it costs and gains.

:func:`w1a1_path` gets a trained W1A1 model and its teacher (a finished run under ``runs/``, a short BiT run, or a
tiny model on synthetic data in fast mode), exports it to real bits (:func:`binlab.infer.export.export_packed`) and
loads the bitwise engine (:class:`binlab.infer.engine.PackedBert`). The rest draws what the chapter shows: sizes on
disk, the engine against the fake-quant model on the dev set (:func:`binlab.infer.agreement.compare`), the accuracy
table of docs/results.md, the latency table of docs/benchmarks.md, and a sentence explorer with one layer's bits.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from binlab.checkpoint import load_pretrained
from binlab.data.glue import batches as glue_batches
from binlab.data.glue import load_glue
from binlab.explorers.attention import TEACHER_RUN, TRAIN_TEACHER_COMMAND, find_glue_dir
from binlab.explorers.figure import Figure
from binlab.explorers.viz import markdown_section, parse_markdown_table, parse_number
from binlab.infer.agreement import Agreement, compare, record_decisions
from binlab.infer.engine import PackedBert
from binlab.infer.export import export_packed, load_source_model
from binlab.infer.packed import file_bytes, ideal_bytes, load_packed
from binlab.methods.bit import BitConfig, run_bit
from binlab.model import BertForSequenceClassification
from binlab.settings import fast_mode, project_root, torch_threads
from binlab.tokenizer import BertTokenizer, load_tokenizer
from binlab.train.trainer import TrainConfig

__all__ = ["W1A1_RUNS", "SHORT_RUN", "SENTENCES", "W1A1Path", "finished_w1a1_runs", "w1a1_path", "size_rows",
           "size_breakdown", "size_figure", "check_agreement", "recorded_table", "accuracy_rows", "accuracy_figure",
           "latency_rows",
           "latency_figure", "layer_bits", "bit_image_figure", "make_sentence_explorer"]

#: Finished W1A1 SST-2 runs the chapter can use in full mode: (run folder under the checkout, stage). The one with
#: the best dev score is taken.
W1A1_RUNS = (("runs/sst2-bit", "hop2_w1a1"), ("runs/sst2-bitstar", "hop1_w1a1"), ("runs/sst2-bibert", "student_w1a1"),
             ("runs/sst2-bibert-masked", "student_w1a1"), ("runs/ch8-bitstar", "hop1_w1a1"))
#: Full mode without a finished run: BiT* (FP -> W1A1) from the SST-2 teacher for this many steps, into this folder
#: (resumable: a second run of the chapter continues or reuses it).
SHORT_RUN = {"out": "runs/ch8-bitstar", "steps": 300}

SENTENCES = ("a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés .",
             "it 's a charming and often affecting journey .", "an hour and a half of tedium .")

_BITS = [[0.0, "#f4f4f4"], [1.0, "#08306b"]]


@dataclass
class W1A1Path:
    """A teacher, its W1A1 student, the student's packed export and the bitwise engine, with the dev batches."""

    teacher: BertForSequenceClassification
    student: BertForSequenceClassification
    tokenizer: BertTokenizer
    packed: Path
    engine: PackedBert
    dev_batches: list[dict]
    max_length: int
    kind: str  # "run" (a finished W1A1 run), "short" (BiT* trained here), "tiny" (synthetic data)
    description: str
    student_dir: Path | None = None
    rows: list[dict] = field(default_factory=list)  # the recipe's stages, when it was trained here
    _student64: BertForSequenceClassification | None = field(default=None, repr=False)

    def student64(self) -> BertForSequenceClassification:
        """A float64 copy of the student, made once (the bit image reads its decisions on every widget move)."""
        if self._student64 is None:
            self._student64 = copy.deepcopy(self.student).double().eval()
        return self._student64


def _best(folder: Path) -> float | None:
    """The best dev score a finished stage recorded (its ``results.json``), None if it has not finished."""
    f = folder / "results.json"
    if not f.is_file():
        return None
    best = (json.loads(f.read_text()).get("best") or {}).get("score")
    return best if isinstance(best, (int, float)) else None


def finished_w1a1_runs(root: str | os.PathLike | None = None) -> list[dict]:
    """The finished runs of :data:`W1A1_RUNS` under ``root`` (default: the checkout), best dev score first."""
    root = Path(root) if root is not None else project_root()
    rows = []
    for run, stage in W1A1_RUNS:
        folder = root / run / stage
        best = _best(folder)
        if best is not None and (folder / "best_model" / "config.json").is_file():
            rows.append({"run": run, "stage": stage, "best": best, "folder": folder / "best_model"})
    return sorted(rows, key=lambda r: -r["best"])


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _tiny_run(out: Path, epochs: float, seed: int) -> tuple[Path, Path, list[dict]]:
    """BiT (FP -> W1A2 -> W1A1) on a tiny random BERT and synthetic SST-2: (teacher dir, student dir, rows).

    The settings were tried on seeds 0, 1, 42 (teacher / W1A1 dev: 96.1 / 91.8, 78.1 / 78.9, 77.7 / 77.7 %, about
    55 s each on one thread); at lr 5e-3, 4 epochs, or with weight decay, the tiny teacher often stays at chance."""
    cfg = BitConfig(task="sst2", out=str(out), model="tiny", source="synthetic", max_train=1024, max_eval=256,
                    chain=(2, 1), kd_lr=3e-3, kd_epochs=epochs,
                    train=TrainConfig(lr=3e-3, epochs=epochs, batch_size=32, max_length=20, warmup=0.0,
                                      weight_decay=0.0, eval_every=64, save_every=1000, seed=seed, progress=True))
    summary = _quiet(run_bit, cfg, resume=out.exists())
    return out / "teacher" / "best_model", out / "hop2_w1a1" / "best_model", summary["stages"]


def _short_run(teacher: Path, glue: Path, steps: int) -> tuple[Path, list[dict]]:
    out = project_root() / SHORT_RUN["out"]
    cfg = BitConfig(task="sst2", out=str(out), teacher=str(teacher), glue_dir=str(glue), chain=(1,), kd_epochs=1,
                    kd_lr=1e-4, train=TrainConfig(batch_size=32, max_length=64, max_steps=steps, eval_every=100,
                                                  save_every=100, group_by_length=True, optimizer="adamw_fused",
                                                  progress=True))
    summary = _quiet(run_bit, cfg, resume=out.exists())
    return out / "hop1_w1a1" / "best_model", summary["stages"]


def w1a1_path(fast: bool | None = None, *, student_dir: str | os.PathLike | None = None,
              out: str | os.PathLike | None = None, glue_dir: str | os.PathLike | None = None,
              tiny_epochs: float = 8, seed: int = 0) -> W1A1Path:
    """The chapter's models (:class:`W1A1Path`; its ``description`` says which were used and why).

    * ``student_dir``, else in full mode the best finished run of :data:`W1A1_RUNS`, else in full mode with the
      SST-2 teacher and a local GLUE folder a short BiT* run (:data:`SHORT_RUN`, with a progress bar), else (fast
      mode, or nothing to start from) BiT's chain on a tiny random BERT and SYNTHETIC SST-2 (about a minute).
    * The packed export goes to ``out`` (default: a temporary folder that lives as long as the process).
    """
    fast = fast_mode() if fast is None else fast
    root = project_root()
    glue = find_glue_dir(glue_dir)
    teacher_dir = root / TEACHER_RUN / "best_model"
    kind, rows, why = "tiny", [], "fast mode"
    folder = Path(student_dir) if student_dir is not None else None
    if folder is not None:
        kind, how = "run", f"the W1A1 model {folder}"
    elif not fast:
        runs = finished_w1a1_runs(root)
        if runs:
            folder, kind = runs[0]["folder"], "run"
            others = ", ".join(f"{r['run']} {100 * r['best']:.1f}" for r in runs[1:])
            how = (f"the finished W1A1 run {runs[0]['run']}/{runs[0]['stage']} (best SST-2 dev "
                   f"{100 * runs[0]['best']:.1f} %, the best of {len(runs)} found"
                   + (f"; the others: {others})" if others else ")"))
        elif (teacher_dir / "config.json").is_file() and glue is not None:
            print(f"no finished W1A1 run under runs/: BiT* from {teacher_dir} for {SHORT_RUN['steps']} steps "
                  f"into {SHORT_RUN['out']} (about {SHORT_RUN['steps'] * 1.5 / 60:.0f} min here)", flush=True)
            folder, rows = _short_run(teacher_dir, glue, SHORT_RUN["steps"])
            kind = "short"
            how = (f"a short BiT* run trained here ({SHORT_RUN['steps']} steps of batch 32 from the SST-2 teacher; "
                   f"{SHORT_RUN['out']}): far from a full epoch")
        else:
            why = (f"no finished W1A1 run under runs/ and no SST-2 teacher ({TEACHER_RUN}/best_model: "
                   f"`{TRAIN_TEACHER_COMMAND}`) "
                   + ("" if glue is not None else "or local GLUE folder ($BINLAB_GLUE_DIR)"))
    work = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="binlab-ch8-"))
    if kind == "tiny":
        with torch_threads(1):
            teacher_dir, folder, rows = _tiny_run(work / "tiny-bit", tiny_epochs, seed)
        how = (f"BiT's chain FP -> W1A2 -> W1A1 on a tiny random BERT (2 layers, hidden 64) and SYNTHETIC SST-2 "
               f"({why}); not GLUE results")
    student = load_source_model(folder)
    has_teacher = (teacher_dir / "config.json").is_file()
    teacher = _quiet(load_pretrained, teacher_dir, quant="fp", verbose=False) if has_teacher else None
    tokenizer = load_tokenizer(folder) if (folder / "vocab.txt").is_file() else load_tokenizer(None)
    packed = export_packed(student, work / "packed", tokenizer=tokenizer)
    engine = PackedBert(load_packed(packed))
    max_length = 20 if kind == "tiny" else 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "tiny":
            dev = load_glue("sst2", "dev", source="synthetic", max_examples=256)
            data = "256 SYNTHETIC SST-2 dev sentences"
        else:
            dev = load_glue("sst2", "dev", glue_dir=glue, source="local")
            data = f"the {len(dev)} SST-2 dev sentences of {glue}"
    batches = list(glue_batches(dev, tokenizer, 32, max_length=max_length))
    description = (f"W1A1 model: {how}.\nTeacher: {teacher_dir if teacher is not None else 'not found'}.\n"
                   f"Packed into {packed}.\nDev data: {data}, {max_length} tokens at most.")
    return W1A1Path(teacher, student, tokenizer, packed, engine, batches, max_length, kind, description,
                    folder, rows)


# ----------------------------------------------------------------------------------------------------------
# size on disk


def size_rows(path: W1A1Path) -> list[dict]:
    """Bytes on disk: the fp32 checkpoint, the packed model with its FP parts in float32 and in float16, and the
    ideal of each (1 bit per binarized weight plus the FP parts)."""
    fp16 = export_packed(path.student, path.packed.parent / "packed-fp16", fp16=True)
    with tempfile.TemporaryDirectory() as tmp:
        from binlab.checkpoint import save_pretrained

        fp32 = file_bytes_of(save_pretrained(path.student, Path(tmp) / "fp32"))
    config = path.student.config
    rows = [{"model": "fp32 checkpoint (the fake-quant model's file)", "bytes": fp32}]
    for label, folder, dtype in (("packed, FP parts in float32", path.packed, "float32"),
                                 ("packed, FP parts in float16", fp16, "float16")):
        size, ideal = file_bytes(folder), ideal_bytes(config, dtype)
        rows.append({"model": label, "bytes": size, "ideal bytes": ideal, "over the ideal": size / ideal - 1,
                     "smaller than fp32": fp32 / size})
    return rows


#: What the bytes of a packed model hold: (label, test on a tensor name), first match wins.
_PARTS = (("word embedding: sign bits", lambda n: n == "embeddings.word.bits"),
          ("word embedding: one scale per row", lambda n: n.startswith("embeddings.word.")),
          ("encoder and pooler weights: sign bits", lambda n: n.endswith(".bits")),
          ("position and token-type embeddings", lambda n: n in ("embeddings.position", "embeddings.token_type")),
          ("LayerNorms", lambda n: "_ln." in n or n.startswith("embeddings.ln.")),
          ("classifier", lambda n: n.startswith("classifier")),
          ("biases, weight scales, activation scales and thresholds", lambda n: True))


def size_breakdown(folder: str | os.PathLike) -> list[dict]:
    """Bytes of each part of a packed model's tensors (not counting the file's header), largest first."""
    parts: dict[str, int] = {}
    for name, t in load_packed(folder).tensors.items():
        label = next(label for label, test in _PARTS if test(name))
        parts[label] = parts.get(label, 0) + int(t.nbytes)
    total = sum(parts.values())
    return [{"part": k, "bytes": v, "share": v / total} for k, v in sorted(parts.items(), key=lambda kv: -kv[1])]


def file_bytes_of(folder: Path) -> int:
    """Bytes of a checkpoint directory's weights (its .safetensors files)."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def size_figure(rows: list[dict]):
    fig = Figure()
    names = [r["model"] for r in rows]
    fig.add_trace(go.Bar(x=names, y=[r["bytes"] / 2**20 for r in rows], name="on disk",
                         text=[f"{r['bytes'] / 2**20:.2f} MiB" for r in rows], textposition="outside"))
    ideal = [r.get("ideal bytes") for r in rows]
    fig.add_trace(go.Bar(x=names, y=[None if i is None else i / 2**20 for i in ideal], name="ideal (1 bit per weight)"))
    top = max(r["bytes"] for r in rows) / 2**20
    fig.update_layout(title="Size on disk: the fp32 checkpoint against the packed W1A1 model", barmode="group",
                      xaxis_title="model file", yaxis_title="MiB on disk", yaxis_range=[0, 1.15 * top], height=420,
                      legend=dict(orientation="h", y=-0.3))
    return fig


# ----------------------------------------------------------------------------------------------------------
# the engine against the fake-quant model


def check_agreement(path: W1A1Path, examples: int | None = None) -> Agreement:
    """:func:`binlab.infer.agreement.compare` on the first ``examples`` dev examples (all by default), with a bar."""
    batches = path.dev_batches
    if examples is not None:
        batches, n = [], 0
        for b in path.dev_batches:
            if n >= examples:
                break
            batches.append(b)
            n += len(b["input_ids"])
    bar = tqdm(total=len(batches), desc="engine, float64 and float32 models", leave=False)

    def step(done, total):
        bar.update(done - bar.n)

    try:
        with torch_threads(1):
            return compare(path.student, batches, "sst2", engine=path.engine, progress=step)
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------------------
# the recorded tables (docs/results.md, docs/benchmarks.md)


def recorded_table(doc: str, heading: str) -> tuple[str, list[dict]] | None:
    """The section ``heading`` of ``docs/<doc>`` (its markdown, its first table's rows); None if absent."""
    path = project_root() / "docs" / doc
    if not path.is_file():
        return None
    try:
        text = markdown_section(path, heading)
    except (KeyError, ValueError):
        return None
    return text, parse_markdown_table(text)


#: The columns of the summary table of docs/results.md the accuracy figure draws (as written there).
ACCURACY_COLUMNS = ("FP teacher", "BinaryBERT's recipe W1A1", "BiT W1A1", "BiT* W1A1", "BiBERT W1A1")
#: The papers' numbers in the same table (BERT-base), drawn as markers over the bars.
PAPER_COLUMNS = ("paper FP", "paper BiT", "paper BiBERT")


def accuracy_rows(rows: list[dict]) -> list[dict]:
    """task -> {column: number or None} from the summary table's rows (the best dev score of each)."""
    out = []
    for r in rows:
        task = r.get("task", "").strip()
        if task:
            out.append({"task": task, **{c: parse_number(r.get(c, "")) for c in ACCURACY_COLUMNS + PAPER_COLUMNS}})
    return out


def accuracy_figure(rows: list[dict]):
    fig = Figure()
    tasks = [r["task"] for r in rows]
    for column in ACCURACY_COLUMNS:
        values = [r.get(column) for r in rows]
        if any(v is not None for v in values):
            fig.add_trace(go.Bar(x=tasks, y=values, name=column,
                                 text=[("" if v is None else f"{v:.1f}") for v in values], textposition="outside"))
    for column, symbol in zip(PAPER_COLUMNS, ("diamond-open", "star-open", "circle-open")):
        values = [r.get(column) for r in rows]
        if any(v is not None for v in values):
            fig.add_trace(go.Scatter(x=tasks, y=values, mode="markers", name=f"{column} (BERT-base)",
                                     marker=dict(symbol=symbol, size=13, color="black", line=dict(width=2))))
    fig.update_layout(title="GLUE dev: MiniLM-L6 teacher and W1A1 recipes (bars, best dev, one seed); "
                            "the papers on BERT-base (markers)",
                      barmode="group", xaxis_title="task (SST-2 accuracy, STS-B Pearson/Spearman mean, CoLA MCC)",
                      yaxis_title="dev score (%)", yaxis_range=[0, 105], height=480,
                      legend=dict(orientation="h", y=-0.3))
    return fig


def latency_rows(rows: list[dict]) -> list[dict]:
    """(shape, method, ms) from the rows of docs/benchmarks.md's model table: its columns "shape, workload" (or
    "shape"; a blank cell repeats the row above), "method" and "latency (ms)" (or "latency ms")."""
    out, shape = [], ""
    for r in rows:
        shape = (r.get("shape, workload") or r.get("shape") or "").strip() or shape
        ms = parse_number(r.get("latency (ms)", r.get("latency ms", "")))
        if ms is not None:
            out.append({"shape": shape, "method": r.get("method", "").strip(), "ms": ms})
    return out


def latency_figure(rows: list[dict], source: str = "docs/benchmarks.md"):
    """Grouped bars of :func:`latency_rows`, one group per shape; ``source`` names the table in the title."""
    fig = Figure()
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    for method in dict.fromkeys(r["method"] for r in rows):
        ms = {r["shape"]: r["ms"] for r in rows if r["method"] == method}
        fig.add_trace(go.Bar(x=shapes, y=[ms.get(s) for s in shapes], name=method))
    fig.update_layout(title=f"Latency of one forward pass ({source})",
                      barmode="group",
                      xaxis_title="batch x tokens", yaxis_title="milliseconds (log scale)", yaxis_type="log",
                      height=460, legend=dict(orientation="h", y=-0.3))
    return fig


# ----------------------------------------------------------------------------------------------------------
# one sentence: predictions, latency, one layer's bits


def _latency(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def predictions(path: W1A1Path, sentence: str, repeat: int = 5) -> list[dict]:
    """The FP teacher's and the bitwise engine's label, confidence and latency (median of ``repeat``, one thread)."""
    enc = path.tokenizer([sentence], max_length=path.max_length)
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    out = []
    with torch_threads(1), torch.no_grad():
        models = [("bitwise W1A1 engine", path.engine)]
        if path.teacher is not None:
            models.insert(0, ("FP teacher (torch fp32)", lambda *a: path.teacher.eval()(*a).logits))
        for name, model in models:
            logits = model(*args).double()[0]
            p = torch.softmax(logits, 0)
            ms = _latency(lambda: model(*args), repeat)
            out.append({"model": name, "label": "positive" if int(p.argmax()) == 1 else "negative",
                        "confidence": float(p.max()), "ms": ms})
    return out


def layer_bits(path: W1A1Path, sentence: str, layer: int) -> tuple[list[str], np.ndarray]:
    """The tokens of ``sentence`` and the bits [tokens, hidden] the engine packs at the input of ``layer``'s
    Q/K/V projections (the float64 fake-quant model's, which the engine's equal)."""
    enc = path.tokenizer([sentence], max_length=path.max_length)
    _, calls = record_decisions(path.student64(), dict(enc))
    site = f"bert.encoder.layer.{layer}.attention.query.input_quantizer"
    bits = next(c.bits for c in calls if c.site == site)[0]
    tokens = ["[CLS]"] + path.tokenizer.tokenize(sentence)[: path.max_length - 2] + ["[SEP]"]
    return tokens, bits.numpy().astype(np.uint8)


def bit_image_figure(tokens: list[str], bits: np.ndarray, layer: int):
    fig = Figure(go.Heatmap(z=bits, y=[f"{i}: {t}" for i, t in enumerate(tokens)], colorscale=_BITS, zmin=0, zmax=1,
                            colorbar=dict(title="bit", tickvals=[0, 1], ticktext=["0 (-)", "1 (+)"])))
    # the slider's number and the model's name for the layer (encoder.layer.0 is the first)
    fig.update_layout(title=f"layer.{layer}: the bits of each token entering Q, K, V ({bits.shape[1]} per token)",
                      xaxis_title="hidden dimension", yaxis_title="token", yaxis_autorange="reversed",
                      height=max(300, 28 * len(tokens) + 160))
    return fig


def make_sentence_explorer(path: W1A1Path, sentences=SENTENCES):
    """A text box and a layer slider: both models' predictions and latency, and the chosen layer's bits."""
    text = widgets.Combobox(value=sentences[0], options=list(sentences), description="sentence",
                            layout=widgets.Layout(width="70%"), ensure_option=False)
    layer = widgets.IntSlider(value=0, min=0, max=path.student.config.num_hidden_layers - 1, description="layer",
                              readout_format="d")
    table = widgets.HTML()
    tokens, bits = layer_bits(path, text.value, 0)
    fig = bit_image_figure(tokens, bits, 0)

    def update(*_):
        sentence = text.value.strip() or sentences[0]
        rows = predictions(path, sentence)
        table.value = ("<table><tr><th>model</th><th>label</th><th>confidence</th><th>latency (1 thread)</th></tr>" +
                       "".join(f"<tr><td>{r['model']}</td><td>{r['label']}</td><td>{r['confidence']:.3f}</td>"
                               f"<td>{r['ms']:.2f} ms</td></tr>" for r in rows) + "</table>")
        tok, b = layer_bits(path, sentence, layer.value)
        new = bit_image_figure(tok, b, layer.value)
        with fig.batch_update():
            fig.data[0].z, fig.data[0].y = new.data[0].z, new.data[0].y
            fig.layout.title.text, fig.layout.height = new.layout.title.text, new.layout.height

    text.observe(update, names="value")
    layer.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([text, layer]), table, fig]), fig, {"sentence": text, "layer": layer}
