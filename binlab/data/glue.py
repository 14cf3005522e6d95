"""GLUE tasks: what each one is, and loading it from a local copy, the hub, or a synthetic stand-in.

:data:`TASKS` holds one :class:`TaskSpec` per task: the columns of its TSV files in the original
GLUE layout, its labels *in the order of the original GLUE processors* (the order the papers'
checkpoints use: MNLI is contradiction, entailment, neutral), its metrics and the metric that model
selection uses (methods.md §1). :func:`get_task` finds a spec by name, case-insensitively and with
aliases (``sst2``, ``SST-2``, ``mnli-m``, ``stsb``...).

:func:`load_glue` returns a :class:`GlueSplit` from one of three sources:

``"local"``
    A GLUE directory in the original layout (``<glue_dir>/SST-2/train.tsv``, ``dev.tsv``; MNLI
    ``dev_matched.tsv`` and ``dev_mismatched.tsv``), given as ``glue_dir=`` or by the environment
    variable ``BINLAB_GLUE_DIR``. Read with quoting disabled (``csv.QUOTE_NONE``): a quote inside a
    sentence is a character, not a delimiter. CoLA has no header row. A missing file or a malformed
    row is an error naming the file and line (``on_bad_row="skip"`` skips bad rows with a warning).
``"hub"``
    The Hugging Face hub through ``datasets.load_dataset("nyu-mll/glue", config)`` (needs the
    network; ``datasets`` is imported only here). Hub label ids are mapped by name to the GLUE
    order above (the hub's MNLI order is entailment, neutral, contradiction).
``"synthetic"``
    A task that binlab generates itself (:mod:`binlab.data.synthetic`), deterministic in ``seed``.
    It is never silent: every load issues a :class:`~binlab.data.synthetic.SyntheticDataWarning`, and the
    split has ``synthetic=True``.

``"auto"`` (the default) reads ``BINLAB_GLUE_SOURCE`` if set; otherwise it is ``"local"`` when a
GLUE directory is given (argument or environment) and ``"synthetic"`` when none is. It never goes to
the network on its own: ask for ``source="hub"`` (or set ``BINLAB_GLUE_SOURCE=hub``).

:func:`batches` turns a split into tokenized mini-batches with a tokenizer's ``encode_batch``.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch

from binlab.data import synthetic as _synthetic
from binlab.data.synthetic import SyntheticDataWarning

__all__ = [
    "TaskSpec",
    "TASKS",
    "GLUE_TASKS",
    "SPLITS",
    "SOURCES",
    "GLUE_DIR_ENV",
    "GLUE_SOURCE_ENV",
    "HUB_DATASET",
    "SYNTHETIC_SIZES",
    "SyntheticDataWarning",
    "GlueExample",
    "GlueSplit",
    "get_task",
    "load_glue",
    "batches",
    "num_batches",
    "select_texts",
]

GLUE_DIR_ENV = "BINLAB_GLUE_DIR"
GLUE_SOURCE_ENV = "BINLAB_GLUE_SOURCE"
HUB_DATASET = "nyu-mll/glue"  # the hub's current home of the dataset formerly called "glue"
SPLITS = ("train", "dev", "dev_mm")
SOURCES = ("auto", "local", "hub", "synthetic")
#: examples per split when synthetic data stands in and ``max_examples`` is not given
SYNTHETIC_SIZES = {"train": 2000, "dev": 500, "dev_mm": 500}


# --------------------------------------------------------------------------------------------
# Task specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """Everything binlab knows about one GLUE task.

    Columns (``text_a``, ``text_b``, ``label_column``) are header names, or 0-based indices for
    CoLA, whose files have no header. ``labels`` are the label strings as written in the TSV, in
    the order of the original GLUE processors (class id = position); None for STS-B (regression).
    ``metrics`` are the keys :func:`binlab.data.metrics.compute_metrics` returns for the task;
    ``selection_metric`` is the one used to pick the best dev checkpoint.
    """

    name: str  # canonical key, lower case: "sst-2"
    display_name: str  # "SST-2"
    description: str
    directory: str  # folder in the GLUE layout
    files: tuple[tuple[str, str], ...]  # (split, file name)
    has_header: bool
    text_a: str | int
    text_b: str | int | None
    label_column: str | int
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    selection_metric: str
    hub_config: str
    hub_splits: tuple[tuple[str, str], ...]  # (split, hub split)
    hub_text: tuple[str, str | None]
    hub_labels: tuple[str, ...] | None  # hub class names, in the order of ``labels``
    synthetic_kind: str
    synthetic_labels: tuple[tuple[str, str], ...] = ()  # pair relation -> label string
    n_columns: int | None = None  # fixed field count for header-less files

    def __post_init__(self) -> None:
        if self.selection_metric not in self.metrics:
            raise ValueError(f"{self.name}: selection metric not among {self.metrics}")
        if (self.labels is None) != (self.hub_labels is None):
            raise ValueError(f"{self.name}: labels and hub_labels must both be given or both None")

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def is_pair(self) -> bool:
        """True for sentence-pair tasks (everything but CoLA and SST-2)."""
        return self.text_b is not None

    @property
    def num_labels(self) -> int:
        """Outputs of the classifier head: number of classes, 1 for STS-B (regression)."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.files)

    def file_name(self, split: str) -> str:
        split = _normalize_split(split, self)
        return dict(self.files)[split]

    def hub_split(self, split: str) -> str:
        split = _normalize_split(split, self)
        return dict(self.hub_splits)[split]

    def label_name(self, label: int | float) -> str:
        """The label string of a class id (a regression target prints as itself)."""
        if self.labels is None:
            return f"{float(label):g}"
        return self.labels[int(label)]


_TRAIN_DEV = (("train", "train.tsv"), ("dev", "dev.tsv"))
_HUB_TRAIN_DEV = (("train", "train"), ("dev", "validation"))
_BINARY_METRICS = ("accuracy",)
_NLI2 = (("entailment", "entailment"), ("contradiction", "not_entailment"), ("neutral", "not_entailment"))
_NLI3 = (("entailment", "entailment"), ("contradiction", "contradiction"), ("neutral", "neutral"))
_PARA2 = (("entailment", "1"), ("contradiction", "0"), ("neutral", "0"))


def _mnli(name: str, display: str, dev_file: str, hub_dev: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        display_name=display,
        description="premise/hypothesis: entailment, contradiction or neutral"
        + (" (matched dev: same genres as train)" if name == "mnli" else " (mismatched dev: other genres)"),
        directory="MNLI",
        files=(("train", "train.tsv"), ("dev", dev_file), ("dev_mm", "dev_mismatched.tsv")),
        has_header=True,
        text_a="sentence1",
        text_b="sentence2",
        label_column="gold_label",
        labels=("contradiction", "entailment", "neutral"),
        metrics=("accuracy",),
        selection_metric="accuracy",
        hub_config="mnli",
        hub_splits=(("train", "train"), ("dev", hub_dev), ("dev_mm", "validation_mismatched")),
        hub_text=("premise", "hypothesis"),
        hub_labels=("contradiction", "entailment", "neutral"),
        synthetic_kind="pair",
        synthetic_labels=_NLI3,
    )


_SPECS = (
    TaskSpec(
        name="cola",
        display_name="CoLA",
        description="single sentence: is it grammatically acceptable? (1 = acceptable)",
        directory="CoLA",
        files=_TRAIN_DEV,
        has_header=False,
        n_columns=4,  # source, label, original label, sentence
        text_a=3,
        text_b=None,
        label_column=1,
        labels=("0", "1"),
        metrics=("mcc",),
        selection_metric="mcc",
        hub_config="cola",
        hub_splits=_HUB_TRAIN_DEV,
        hub_text=("sentence", None),
        hub_labels=("unacceptable", "acceptable"),
        synthetic_kind="acceptability",
    ),
    TaskSpec(
        name="sst-2",
        display_name="SST-2",
        description="single sentence: movie-review sentiment (1 = positive)",
        directory="SST-2",
        files=_TRAIN_DEV,
        has_header=True,
        text_a="sentence",
        text_b=None,
        label_column="label",
        labels=("0", "1"),
        metrics=_BINARY_METRICS,
        selection_metric="accuracy",
        hub_config="sst2",
        hub_splits=_HUB_TRAIN_DEV,
        hub_text=("sentence", None),
        hub_labels=("negative", "positive"),
        synthetic_kind="sentiment",
    ),
    TaskSpec(
        name="mrpc",
        display_name="MRPC",
        description="sentence pair: paraphrase? (1 = equivalent)",
        directory="MRPC",
        files=_TRAIN_DEV,
        has_header=True,
        text_a="#1 String",
        text_b="#2 String",
        label_column="Quality",
        labels=("0", "1"),
        metrics=("accuracy", "f1", "acc_and_f1"),
        selection_metric="accuracy",
        hub_config="mrpc",
        hub_splits=_HUB_TRAIN_DEV,
        hub_text=("sentence1", "sentence2"),
        hub_labels=("not_equivalent", "equivalent"),
        synthetic_kind="pair",
        synthetic_labels=_PARA2,
    ),
    TaskSpec(
        name="sts-b",
        display_name="STS-B",
        description="sentence pair: similarity score 0-5 (regression, one output)",
        directory="STS-B",
        files=_TRAIN_DEV,
        has_header=True,
        text_a="sentence1",
        text_b="sentence2",
        label_column="score",
        labels=None,
        metrics=("pearson", "spearman", "corr"),
        selection_metric="corr",
        hub_config="stsb",
        hub_splits=_HUB_TRAIN_DEV,
        hub_text=("sentence1", "sentence2"),
        hub_labels=None,
        synthetic_kind="similarity",
    ),
    TaskSpec(
        name="qqp",
        display_name="QQP",
        description="question pair: duplicate? (1 = duplicate)",
        directory="QQP",
        files=_TRAIN_DEV,
        has_header=True,
        text_a="question1",
        text_b="question2",
        label_column="is_duplicate",
        labels=("0", "1"),
        metrics=("accuracy", "f1", "acc_and_f1"),
        selection_metric="accuracy",
        hub_config="qqp",
        hub_splits=_HUB_TRAIN_DEV,
        hub_text=("question1", "question2"),
        hub_labels=("not_duplicate", "duplicate"),
        synthetic_kind="pair",
        synthetic_labels=_PARA2,
    ),
    _mnli("mnli", "MNLI-m", "dev_matched.tsv", "validation_matched"),
    _mnli("mnli-mm", "MNLI-mm", "dev_mismatched.tsv", "validation_mismatched"),
    TaskSpec(
        name="qnli",
        display_name="QNLI",
        description="question/sentence: does the sentence answer the question?",
        directory="QNLI",
        files=_TRAIN_DEV,
        has_header=True,
        text_a="question",
        text_b="sentence",
        label_column="label",
        labels=("entailment", "not_entailment"),
        metrics=_BINARY_METRICS,
        selection_metric="accuracy",
        hub_config="qnli",
        hub_splits=_HUB_TRAIN_DEV,
        hub_text=("question", "sentence"),
        hub_labels=("entailment", "not_entailment"),
        synthetic_kind="pair",
        synthetic_labels=_NLI2,
    ),
    TaskSpec(
        name="rte",
        display_name="RTE",
        description="sentence pair: entailment or not",
        directory="RTE",
        files=_TRAIN_DEV,
        has_header=True,
        text_a="sentence1",
        text_b="sentence2",
        label_column="label",
        labels=("entailment", "not_entailment"),
        metrics=_BINARY_METRICS,
        selection_metric="accuracy",
        hub_config="rte",
        hub_splits=_HUB_TRAIN_DEV,
        hub_text=("sentence1", "sentence2"),
        hub_labels=("entailment", "not_entailment"),
        synthetic_kind="pair",
        synthetic_labels=_NLI2,
    ),
    TaskSpec(
        name="wnli",
        display_name="WNLI",
        description="sentence pair (Winograd): entailment? (1 = entailment)",
        directory="WNLI",
        files=_TRAIN_DEV,
        has_header=True,
        text_a="sentence1",
        text_b="sentence2",
        label_column="label",
        labels=("0", "1"),
        metrics=_BINARY_METRICS,
        selection_metric="accuracy",
        hub_config="wnli",
        hub_splits=_HUB_TRAIN_DEV,
        hub_text=("sentence1", "sentence2"),
        hub_labels=("not_entailment", "entailment"),
        synthetic_kind="pair",
        synthetic_labels=_PARA2,
    ),
)

#: canonical name -> spec, in the order of the GLUE tables
TASKS: dict[str, TaskSpec] = {s.name: s for s in _SPECS}
GLUE_TASKS: tuple[str, ...] = tuple(TASKS)


def _squash(name: str) -> str:
    """'SST-2', 'sst_2', 'Sst2' -> 'sst2'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIASES: dict[str, str] = {_squash(s.name): s.name for s in _SPECS}
_ALIASES.update(
    {
        "mnlim": "mnli",
        "mnlimatched": "mnli",
        "mnlimismatched": "mnli-mm",
        "stsbenchmark": "sts-b",
    }
)


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The :class:`TaskSpec` for ``name``: case-insensitive, ``-``/``_``/spaces ignored.

    ``get_task("sst2") is get_task("SST-2")``; ``"mnli"``, ``"mnli-m"``, ``"mnli_matched"`` are MNLI
    with the matched dev set, ``"mnli-mm"``/``"mnli_mismatched"`` the same task with the mismatched
    one. Unknown names raise ``ValueError`` listing the known tasks.
    """
    if isinstance(name, TaskSpec):
        return name
    if not isinstance(name, str):
        raise TypeError(f"task must be a name (str) or a TaskSpec, got {type(name).__name__}")
    key = _ALIASES.get(_squash(name))
    if key is None:
        known = ", ".join(s.display_name for s in _SPECS)
        raise ValueError(
            f"unknown GLUE task {name!r}; known tasks: {known} "
            "(case-insensitive; aliases such as sst2, stsb, mnli-m, mnli_mismatched work)"
        )
    return TASKS[key]


_SPLIT_ALIASES = {
    "train": "train",
    "dev": "dev",
    "validation": "dev",
    "val": "dev",
    "devmatched": "dev",
    "validationmatched": "dev",
    "devmm": "dev_mm",
    "devmismatched": "dev_mm",
    "validationmismatched": "dev_mm",
}


def _normalize_split(split: str, spec: TaskSpec) -> str:
    if not isinstance(split, str):
        raise TypeError(f"split must be a string, got {split!r}")
    key = _squash(split)
    if key == "test":
        raise ValueError("GLUE test sets have no public labels; use split='dev' to measure")
    norm = _SPLIT_ALIASES.get(key)
    if norm is None:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if norm == "dev_mm" and spec.directory != "MNLI":
        raise ValueError(f"split 'dev_mm' (mismatched) exists only for MNLI, not {spec.display_name}")
    if key in ("devmatched", "validationmatched") and spec.name != "mnli":
        if spec.name == "mnli-mm":
            raise ValueError("MNLI-mm's dev split is the mismatched one; use task 'mnli' for matched")
        raise ValueError(f"split {split!r} exists only for MNLI; use 'dev' for {spec.display_name}")
    return norm


# --------------------------------------------------------------------------------------------
# The loaded split
# --------------------------------------------------------------------------------------------


class GlueExample(NamedTuple):
    text_a: str
    text_b: str | None
    label: int | float


@dataclass(repr=False)
class GlueSplit:
    """One split of one task, as parallel lists.

    ``labels`` are class ids (positions in ``task.labels``) for classification and floats for
    STS-B. ``source`` is ``"local"``, ``"hub"`` or ``"synthetic"``; ``origin`` says exactly where
    the data came from (file path, hub id, or generator and seed). ``synthetic`` is True when
    binlab generated the data: such numbers are not GLUE results. ``len(split)``, ``split[i]``
    (a :class:`GlueExample`) and ``split[a:b]`` (a smaller GlueSplit) work as expected.
    """

    task: TaskSpec
    split: str
    texts_a: list[str]
    texts_b: list[str] | None
    labels: list
    source: str
    synthetic: bool
    origin: str = ""

    def __post_init__(self) -> None:
        n = len(self.texts_a)
        if len(self.labels) != n:
            raise ValueError(f"texts_a has {n} entries but labels has {len(self.labels)}")
        if self.task.is_pair and self.texts_b is None:
            raise ValueError(f"{self.task.display_name} is a sentence-pair task: texts_b is required")
        if not self.task.is_pair and self.texts_b is not None:
            raise ValueError(f"{self.task.display_name} is a single-sentence task: texts_b must be None")
        if self.texts_b is not None and len(self.texts_b) != n:
            raise ValueError(f"texts_a has {n} entries but texts_b has {len(self.texts_b)}")
        if self.source not in ("local", "hub", "synthetic"):
            raise ValueError(f"source must be 'local', 'hub' or 'synthetic', got {self.source!r}")

    def __len__(self) -> int:
        return len(self.texts_a)

    def __getitem__(self, index: int | slice) -> GlueExample | GlueSplit:
        if isinstance(index, slice):
            return GlueSplit(
                task=self.task,
                split=self.split,
                texts_a=self.texts_a[index],
                texts_b=None if self.texts_b is None else self.texts_b[index],
                labels=self.labels[index],
                source=self.source,
                synthetic=self.synthetic,
                origin=self.origin,
            )
        b = None if self.texts_b is None else self.texts_b[index]
        return GlueExample(self.texts_a[index], b, self.labels[index])

    @property
    def num_labels(self) -> int:
        return self.task.num_labels

    def label_tensor(self) -> torch.Tensor:
        """Labels as a tensor: int64 class ids, or float32 for STS-B."""
        dtype = torch.float32 if self.task.is_regression else torch.long
        return torch.tensor(self.labels, dtype=dtype)

    def label_counts(self) -> dict[str, int]:
        """Examples per label string (classification only)."""
        if self.task.is_regression:
            raise ValueError(f"{self.task.display_name} is a regression task: it has no label counts")
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.task.labels)}

    def describe(self) -> str:
        """One line: task, split, size, where from, label balance; starts with SYNTHETIC if so."""
        head = "SYNTHETIC stand-in for " if self.synthetic else ""
        text = f"{head}{self.task.display_name} {self.split}: {len(self)} examples from {self.source}"
        if self.origin:
            text += f" ({self.origin})"
        if len(self) and not self.task.is_regression:
            text += "; labels " + ", ".join(f"{k}: {v}" for k, v in self.label_counts().items())
        elif len(self):
            text += f"; scores {min(self.labels):g}..{max(self.labels):g}"
        return text

    def __repr__(self) -> str:
        return (
            f"GlueSplit(task={self.task.display_name!r}, split={self.split!r}, n={len(self)}, "
            f"source={self.source!r}, synthetic={self.synthetic})"
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_glue(
    task: str | TaskSpec,
    split: str = "train",
    glue_dir: str | os.PathLike | None = None,
    source: str = "auto",
    max_examples: int | None = None,
    *,
    seed: int = 0,
    on_bad_row: str = "error",
) -> GlueSplit:
    """Load ``split`` ("train", "dev" or, for MNLI, "dev_mm") of a GLUE task.

    ``source``: "auto", "local", "hub" or "synthetic" (see the module docstring).
    ``glue_dir``: a GLUE directory in the original layout; default ``$BINLAB_GLUE_DIR``.
    ``max_examples``: keep only the first n examples (for synthetic data: generate n,
    default :data:`SYNTHETIC_SIZES`). ``seed``: the synthetic generator's seed.
    ``on_bad_row``: "error" (default) or "skip" malformed rows of local files (with a warning).
    """
    spec = get_task(task)
    split = _normalize_split(split, spec)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if max_examples is not None and (
        isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1
    ):
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")

    env_dir = os.environ.get(GLUE_DIR_ENV) or None
    root, root_from = (glue_dir, "glue_dir") if glue_dir is not None else (env_dir, GLUE_DIR_ENV)
    fallback_note = ""

    if source == "auto":
        env_source = (os.environ.get(GLUE_SOURCE_ENV) or "").strip().lower()
        if env_source and env_source not in SOURCES:
            raise ValueError(f"{GLUE_SOURCE_ENV}={env_source!r} is not one of {', '.join(SOURCES)}")
        if env_source and env_source != "auto":
            source = env_source
        elif root is not None:
            source = "local"
            # a directory from the environment may hold only some tasks (e.g. SST-2, CoLA, STS-B):
            # for the others, auto falls back to synthetic data -- loudly. An explicit glue_dir
            # argument never falls back.
            if glue_dir is None and _find_task_dir(Path(root), spec) is None:
                source = "synthetic"
                fallback_note = f" ({GLUE_DIR_ENV}={root} has no {spec.directory} folder)"
        else:
            source = "synthetic"

    if source == "local":
        if root is None:
            raise ValueError(
                f"source='local' needs a GLUE directory: pass glue_dir=... (binlab train --glue-dir DIR) or set "
                f"{GLUE_DIR_ENV}"
            )
        return _load_local(spec, split, Path(root), root_from, max_examples, on_bad_row)
    if source == "hub":
        return _load_hub(spec, split, max_examples)
    return _load_synthetic(spec, split, max_examples, seed, fallback_note)


def _find_task_dir(root: Path, spec: TaskSpec) -> Path | None:
    exact = root / spec.directory
    if exact.is_dir():
        return exact
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and _squash(child.name) == _squash(spec.directory):
                return child
    return None


def _load_local(
    spec: TaskSpec, split: str, root: Path, root_from: str, max_examples: int | None, on_bad_row: str
) -> GlueSplit:
    if not root.is_dir():
        raise FileNotFoundError(f"GLUE directory {str(root)!r} (from {root_from}) does not exist: point glue_dir "
                                f"(binlab train --glue-dir) or {GLUE_DIR_ENV} at the folder that holds the task folders")
    task_dir = _find_task_dir(root, spec)
    file_name = spec.file_name(split)
    if task_dir is None:
        raise FileNotFoundError(
            f"no {spec.display_name} folder in the GLUE directory {str(root)!r} (from {root_from}): "
            f"expected the original GLUE layout {root / spec.directory / file_name}"
        )
    path = task_dir / file_name
    if not path.is_file():
        present = ", ".join(sorted(p.name for p in task_dir.iterdir())) or "nothing"
        raise FileNotFoundError(
            f"{path}: file not found; {spec.display_name} {split} is read from "
            f"<glue_dir>/{spec.directory}/{file_name} (the folder holds: {present})"
        )
    texts_a, texts_b, labels = _read_tsv(path, spec, max_examples, on_bad_row)
    return GlueSplit(spec, split, texts_a, texts_b, labels, "local", False, str(path))


class _BadRow(ValueError):
    pass


def _read_tsv(
    path: Path, spec: TaskSpec, max_examples: int | None, on_bad_row: str
) -> tuple[list[str], list[str] | None, list]:
    """Parse one GLUE TSV file: quoting off, header (unless CoLA), every row checked."""
    texts_a: list[str] = []
    texts_b: list[str] | None = [] if spec.is_pair else None
    labels: list = []
    skipped: list[str] = []
    columns: tuple[int, int | None, int] | None = None
    n_fields = spec.n_columns
    if not spec.has_header:
        b_index = None if spec.text_b is None else int(spec.text_b)
        columns = (int(spec.text_a), b_index, int(spec.label_column))
    try:
        # utf-8-sig: drop a byte-order mark if the file starts with one (MRPC's sometimes does)
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    raise ValueError(f"{path}:{reader.line_num}: unreadable row ({exc})") from None
                line = reader.line_num
                if not row or row == [""]:
                    continue  # blank line (e.g. a trailing one)
                if columns is None:  # header row
                    columns, n_fields = _header_columns(path, line, row, spec), len(row)
                    continue
                try:
                    a, b, label = _parse_row(row, columns, n_fields, spec)
                except _BadRow as exc:
                    message = f"{path}:{line}: {exc}"
                    if on_bad_row == "error":
                        raise ValueError(
                            message + " (skip malformed rows with on_bad_row='skip', or binlab train --on-bad-row skip)"
                        ) from None
                    skipped.append(message)
                    continue
                texts_a.append(a)
                if texts_b is not None:
                    texts_b.append(b)  # type: ignore[arg-type]
                labels.append(label)
                if max_examples is not None and len(labels) >= max_examples:
                    break
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    if columns is None:
        raise ValueError(f"{path}: the file is empty (expected a GLUE {spec.display_name} TSV)")
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} malformed row(s); first: {skipped[0]}", stacklevel=4
        )
    if not labels:
        raise ValueError(f"{path}: no examples in the file")
    return texts_a, texts_b, labels


def _header_columns(
    path: Path, line: int, header: list[str], spec: TaskSpec
) -> tuple[int, int | None, int]:
    names = [h.strip() for h in header]

    def find(col: str | int | None) -> int | None:
        if col is None:
            return None
        if col not in names:
            raise ValueError(
                f"{path}:{line}: the header has no column {col!r} (found {names}); "
                f"is this the {spec.display_name} file?"
            )
        return names.index(col)

    a, b, label = find(spec.text_a), find(spec.text_b), find(spec.label_column)
    return a, b, label  # type: ignore[return-value]


def _parse_row(
    row: list[str], columns: tuple[int, int | None, int], n_fields: int | None, spec: TaskSpec
) -> tuple[str, str | None, int | float]:
    if n_fields is not None and len(row) != n_fields:
        what = "as in the header" if spec.has_header else f"in {spec.display_name} files"
        raise _BadRow(f"expected {n_fields} tab-separated fields ({what}), found {len(row)}")
    a_col, b_col, label_col = columns
    raw = row[label_col].strip()
    if spec.labels is None:
        try:
            label: int | float = float(raw)
        except ValueError:
            raise _BadRow(f"score {raw!r} is not a number") from None
        if not 0.0 <= label <= 5.0:  # also rejects NaN
            raise _BadRow(f"score {raw!r} is outside 0..5")
    else:
        if raw not in spec.labels:
            hint = " (a header row? CoLA files have none)" if not spec.has_header else ""
            raise _BadRow(f"label {raw!r} is not one of {spec.labels}{hint}")
        label = spec.labels.index(raw)
    return row[a_col], (None if b_col is None else row[b_col]), label


def _load_hub(spec: TaskSpec, split: str, max_examples: int | None) -> GlueSplit:
    try:
        import datasets  # imported lazily: only this path needs it
    except ImportError as exc:
        raise ImportError("source='hub' needs the 'datasets' package: pip install datasets") from exc
    hub_split = spec.hub_split(split)
    if max_examples is not None:
        hub_split += f"[:{max_examples}]"
    origin = f"{HUB_DATASET}/{spec.hub_config} {hub_split}"
    try:
        ds = datasets.load_dataset(HUB_DATASET, spec.hub_config, split=hub_split)
    except Exception as exc:
        raise RuntimeError(
            f"could not load {origin} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Offline? Pass glue_dir=... (original GLUE layout), set {GLUE_DIR_ENV}, "
            "or use source='synthetic'"
        ) from exc
    col_a, col_b = spec.hub_text
    for col in (col_a, col_b, "label"):
        if col is not None and col not in ds.column_names:
            raise ValueError(f"{origin}: no column {col!r} (found {ds.column_names})")
    texts_a = [str(t) for t in ds[col_a]]
    texts_b = None if col_b is None else [str(t) for t in ds[col_b]]
    raw = list(ds["label"])
    if spec.is_regression:
        labels: list = [float(x) for x in raw]
    else:
        names = getattr(ds.features["label"], "names", None)
        if names is None or sorted(names) != sorted(spec.hub_labels):  # type: ignore[arg-type]
            raise ValueError(
                f"{origin}: label classes {names} do not match the expected {spec.hub_labels}"
            )
        # hub id -> our id, by class name (the hub's MNLI order differs from GLUE's)
        remap = {i: spec.hub_labels.index(n) for i, n in enumerate(names)}  # type: ignore[union-attr]
        bad = [x for x in raw if x not in remap]
        if bad:
            raise ValueError(f"{origin}: label {bad[0]!r} is not a class id (test split?)")
        labels = [remap[x] for x in raw]
    return GlueSplit(spec, split, texts_a, texts_b, labels, "hub", False, origin)


def _load_synthetic(
    spec: TaskSpec, split: str, max_examples: int | None, seed: int, note: str = ""
) -> GlueSplit:
    n = max_examples if max_examples is not None else SYNTHETIC_SIZES[split]
    num_classes = 3 if spec.num_labels == 3 else 2
    # the stream is named after the file it stands in for: MNLI-mm "dev" is MNLI "dev_mm", and
    # MRPC and QQP (same kind of data) still get different examples
    stream = f"{spec.directory}/{spec.file_name(split)}"
    data = _synthetic.generate(spec.synthetic_kind, n, seed, split=stream, num_classes=num_classes)
    if spec.synthetic_kind == "pair":
        mapping = dict(spec.synthetic_labels)
        labels: list = [spec.labels.index(mapping[r]) for r in data.labels]  # type: ignore[union-attr]
    else:
        labels = list(data.labels)
    origin = f"binlab.data.synthetic {spec.synthetic_kind!r} seed={seed} stream={stream}"
    warnings.warn(
        f"SYNTHETIC data: binlab generated {n} {spec.synthetic_kind!r} examples as a stand-in "
        f"for {spec.display_name} {split} (seed={seed}){note}. These are NOT GLUE results. For "
        f"real data pass glue_dir=... (original GLUE TSV layout), set {GLUE_DIR_ENV}, or use "
        "source='hub' when online.",
        SyntheticDataWarning,
        stacklevel=3,
    )
    texts_b = data.texts_b if spec.is_pair else None
    return GlueSplit(spec, split, data.texts_a, texts_b, labels, "synthetic", True, origin)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def num_batches(split: GlueSplit, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields."""
    _check_batch_size(batch_size)
    return len(split) // batch_size if drop_last else -(-len(split) // batch_size)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def select_texts(split, rows) -> tuple[list[str], list[str] | None]:
    """The texts of ``rows`` (indices, in that order): ``(texts_a, texts_b)``, ``texts_b`` None for one-sentence
    tasks. What every batch of the library is made from: :func:`batches`, the Trainer, evaluation."""
    rows = [int(i) for i in rows]
    texts_a = [split.texts_a[i] for i in rows]
    texts_b = None if split.texts_b is None else [split.texts_b[i] for i in rows]
    return texts_a, texts_b


def batches(
    split: GlueSplit,
    tokenizer: Any,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    *,
    max_length: int = 128,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Mini-batches of ``split``: ``tokenizer.encode_batch(texts_a, texts_b, max_length=...)``
    plus ``"labels"`` (int64 class ids, float32 for STS-B).

    ``shuffle=True`` permutes the examples with ``torch.Generator().manual_seed(seed)``: the same
    seed gives the same order (pass the epoch number as seed for a new order each epoch).
    """
    if not isinstance(split, GlueSplit):
        raise TypeError(f"split must be a GlueSplit (from load_glue), got {type(split).__name__}")
    if not callable(getattr(tokenizer, "encode_batch", None)):
        raise TypeError(
            f"tokenizer must have an encode_batch(texts_a, texts_b=None, max_length=128) method; "
            f"got {type(tokenizer).__name__}"
        )
    _check_batch_size(batch_size)
    n = len(split)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    else:
        order = list(range(n))
    labels = split.label_tensor()
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        texts_a, texts_b = select_texts(split, idx)
        encoded = tokenizer.encode_batch(texts_a, texts_b, max_length=max_length)
        if not isinstance(encoded, dict):
            raise TypeError(f"tokenizer.encode_batch must return a dict, got {type(encoded).__name__}")
        if "labels" in encoded:
            raise ValueError("tokenizer.encode_batch returned a 'labels' entry; batches adds its own")
        batch = dict(encoded)
        batch["labels"] = labels[idx]
        yield batch
