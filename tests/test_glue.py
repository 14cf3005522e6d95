"""Tests for binlab.data.glue (task specs, local TSV / hub / synthetic loading, batches) and
binlab.data.synthetic. Real GLUE files are read in place from the shared data folder (skipped when it is
absent); error paths use tiny TSV files written to tmp_path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from binlab.data import synthetic
from binlab.data.glue import (
    GLUE_DIR_ENV,
    GLUE_SOURCE_ENV,
    GLUE_TASKS,
    GlueSplit,
    SyntheticDataWarning,
    batches,
    get_task,
    load_glue,
    num_batches,
)

REPO = Path(__file__).resolve().parents[1]


def _real_glue_dir() -> Path | None:
    for candidate in (os.environ.get(GLUE_DIR_ENV), REPO.parent / "shared" / "data" / "glue"):
        if candidate and (Path(candidate) / "SST-2" / "dev.tsv").is_file():
            return Path(candidate)
    return None


REAL = _real_glue_dir()
needs_real = pytest.mark.skipif(REAL is None, reason="real GLUE data folder not found")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Loader behaviour must not depend on the caller's environment."""
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    monkeypatch.delenv(GLUE_SOURCE_ENV, raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_synth(*args, **kwargs) -> GlueSplit:
    with pytest.warns(SyntheticDataWarning):
        return load_glue(*args, source="synthetic", **kwargs)


# ---------------------------------------------------------------- task specs


@pytest.mark.parametrize(
    "alias, name",
    [
        ("sst2", "sst-2"), ("SST-2", "sst-2"), ("sst_2", "sst-2"), (" Sst-2 ", "sst-2"),
        ("CoLA", "cola"), ("stsb", "sts-b"), ("STS-B", "sts-b"),
        ("mnli", "mnli"), ("mnli-m", "mnli"), ("MNLI_matched", "mnli"),
        ("mnli-mm", "mnli-mm"), ("mnli_mismatched", "mnli-mm"), ("MNLI-MM", "mnli-mm"),
        ("qqp", "qqp"), ("QNLI", "qnli"), ("rte", "rte"), ("WNLI", "wnli"), ("Mrpc", "mrpc"),
    ],
)
def test_get_task_aliases(alias, name):
    assert get_task(alias) is get_task(name)
    assert get_task(alias).name == name


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError) as info:
        get_task("imdb")
    for display in ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI-m", "MNLI-mm", "QNLI", "RTE", "WNLI"):
        assert display in str(info.value)
    with pytest.raises(TypeError):
        get_task(3)


def test_label_sets_in_original_glue_order():
    assert get_task("mnli").labels == ("contradiction", "entailment", "neutral")
    assert get_task("mnli-mm").labels == get_task("mnli").labels
    assert get_task("qnli").labels == ("entailment", "not_entailment")
    assert get_task("rte").labels == ("entailment", "not_entailment")
    for name in ("cola", "sst-2", "mrpc", "qqp", "wnli"):
        assert get_task(name).labels == ("0", "1")
    assert get_task("sts-b").labels is None and get_task("sts-b").is_regression
    assert {n: get_task(n).num_labels for n in GLUE_TASKS} == {
        "cola": 2, "sst-2": 2, "mrpc": 2, "sts-b": 1, "qqp": 2,
        "mnli": 3, "mnli-mm": 3, "qnli": 2, "rte": 2, "wnli": 2,
    }
    assert [n for n in GLUE_TASKS if not get_task(n).is_pair] == ["cola", "sst-2"]


def test_file_layout_and_splits():
    mnli, mm = get_task("mnli"), get_task("mnli-mm")
    assert mnli.file_name("dev") == "dev_matched.tsv"
    assert mnli.file_name("dev_mm") == "dev_mismatched.tsv"
    assert mnli.file_name("validation_mismatched") == "dev_mismatched.tsv"
    assert mm.file_name("dev") == "dev_mismatched.tsv"
    assert get_task("sst2").file_name("validation") == "dev.tsv"
    assert mnli.hub_split("dev") == "validation_matched" and mm.hub_split("dev") == "validation_mismatched"
    with pytest.raises(ValueError, match="only for MNLI"):
        get_task("sst2").file_name("dev_mm")
    with pytest.raises(ValueError, match="no public labels"):
        load_glue("sst2", "test")
    with pytest.raises(ValueError, match="unknown split"):
        load_glue("sst2", "holdout")
    with pytest.raises(ValueError, match="mismatched one"):
        mm.file_name("dev_matched")


# ---------------------------------------------------------------- real data (read in place)


@needs_real
@pytest.mark.parametrize(
    "task, split, n", [("sst2", "train", 67349), ("sst2", "dev", 872), ("cola", "train", 8551),
                       ("cola", "dev", 1043), ("stsb", "train", 5749), ("stsb", "dev", 1500)],
)
def test_real_row_counts(task, split, n):
    data = load_glue(task, split, glue_dir=REAL)
    assert len(data) == n
    assert data.source == "local" and not data.synthetic
    assert len(data.labels) == n and all(isinstance(t, str) and t for t in data.texts_a)


@needs_real
def test_real_formats_parse_exactly():
    # CoLA: no header, and its dev file ends without a newline: the last row must still be there.
    raw_last = (REAL / "CoLA" / "dev.tsv").read_text(encoding="utf-8").rstrip("\n").split("\n")[-1]
    cola = load_glue("cola", "dev", glue_dir=REAL)
    assert cola[-1].text_a == raw_last.split("\t")[3]
    assert cola[-1].label == int(raw_last.split("\t")[1])
    assert set(cola.labels) == {0, 1}

    # STS-B: quotes are characters (QUOTE_NONE): every raw line with a quote is one example with it.
    path = REAL / "STS-B" / "dev.tsv"
    quoted_lines = sum('"' in line for line in path.read_text(encoding="utf-8").splitlines()[1:])
    stsb = load_glue("sts-b", "dev", glue_dir=REAL)
    assert quoted_lines > 0
    assert sum('"' in a or '"' in b for a, b in zip(stsb.texts_a, stsb.texts_b)) == quoted_lines
    assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in stsb.labels)
    assert stsb.label_tensor().dtype == torch.float32

    sst = load_glue("SST-2", "dev", glue_dir=REAL)
    first = (REAL / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")
    assert (sst[0].text_a, sst[0].label) == (first[0], int(first[1]))
    assert sst.texts_b is None


@needs_real
def test_real_max_examples_and_env_var(monkeypatch):
    monkeypatch.setenv(GLUE_DIR_ENV, str(REAL))
    head = load_glue("sst2", "train", max_examples=50)
    assert head.source == "local" and len(head) == 50
    full = load_glue("sst2", "dev")
    assert full.texts_a[:10] == load_glue("sst2", "dev", max_examples=10).texts_a


# ---------------------------------------------------------------- local files: tiny fixtures


@pytest.fixture
def tiny_glue(tmp_path) -> Path:
    root = tmp_path / "glue"
    # a quote that default CSV quoting would treat as the start of a multi-line field
    write(root / "SST-2" / "train.tsv",
          'sentence\tlabel\nhe said "great\t1\nawful movie\t0\n"dull" , really\t0\n')
    write(root / "SST-2" / "dev.tsv", "sentence\tlabel\nfine\t1\n\n")  # trailing blank line
    write(root / "CoLA" / "dev.tsv", "gj04\t1\t\tThe dog barked.\ngj04\t0\t*\tDog the barked.")
    header = "index\tpromptID\tpairID\tgenre\tb1\tb2\tp1\tp2\tsentence1\tsentence2\tlabel1\tgold_label\n"
    rows = ["0\t1\t2\tfiction\t(\t(\t(\t(\tA man sleeps.\tA man is awake.\tcontradiction\tcontradiction",
            "1\t1\t2\tfiction\t(\t(\t(\t(\tA man sleeps.\tA person sleeps.\tentailment\tentailment",
            "2\t1\t2\tfiction\t(\t(\t(\t(\tA man sleeps.\tHe dreams.\tneutral\tneutral"]
    write(root / "MNLI" / "dev_matched.tsv", header + "\n".join(rows) + "\n")
    write(root / "MNLI" / "dev_mismatched.tsv", header + rows[2] + "\n")
    # MRPC: byte-order mark before the header, as some copies have
    write(root / "MRPC" / "dev.tsv",
          "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b.\tA b!\n")
    write(root / "STS-B" / "dev.tsv", "index\tsentence1\tsentence2\tscore\n0\ta\tb\t3.800\n1\tc\td\t0\n")
    return root


def test_local_quotes_blank_lines_and_no_header(tiny_glue):
    sst = load_glue("sst2", "train", glue_dir=tiny_glue)
    assert sst.texts_a == ['he said "great', "awful movie", '"dull" , really']
    assert sst.labels == [1, 0, 0]
    assert len(load_glue("sst2", "dev", glue_dir=tiny_glue)) == 1
    cola = load_glue("cola", "dev", glue_dir=str(tiny_glue))
    assert cola.texts_a == ["The dog barked.", "Dog the barked."] and cola.labels == [1, 0]


def test_local_mnli_label_ids_and_mismatched(tiny_glue):
    m = load_glue("mnli", "dev", glue_dir=tiny_glue)
    assert [m.task.labels[i] for i in m.labels] == ["contradiction", "entailment", "neutral"]
    assert m.labels == [0, 1, 2]
    assert m.texts_b == ["A man is awake.", "A person sleeps.", "He dreams."]
    mm1 = load_glue("mnli", "dev_mm", glue_dir=tiny_glue)
    mm2 = load_glue("mnli-mm", "dev", glue_dir=tiny_glue)
    assert mm1.texts_b == mm2.texts_b == ["He dreams."]


def test_local_bom_and_regression(tiny_glue):
    mrpc = load_glue("mrpc", "dev", glue_dir=tiny_glue)
    assert (mrpc[0].text_a, mrpc[0].text_b, mrpc[0].label) == ("A b.", "A b!", 1)
    stsb = load_glue("stsb", "dev", glue_dir=tiny_glue)
    assert stsb.labels == [3.8, 0.0]
    assert "scores 0..3.8" in stsb.describe()


def test_local_missing_paths(tiny_glue, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_glue("sst2", glue_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no QQP folder.*QQP[/\\]train\.tsv"):
        load_glue("qqp", glue_dir=tiny_glue)
    with pytest.raises(FileNotFoundError, match=r"CoLA[/\\]train\.tsv: file not found.*dev\.tsv"):
        load_glue("cola", "train", glue_dir=tiny_glue)
    with pytest.raises(ValueError, match="needs a GLUE directory"):
        load_glue("sst2", source="local")


def test_local_directory_name_is_case_insensitive(tmp_path):
    write(tmp_path / "sst2" / "dev.tsv", "sentence\tlabel\nok\t1\n")
    assert load_glue("SST-2", "dev", glue_dir=tmp_path).labels == [1]


STSB_HEADER = "index\tsentence1\tsentence2\tscore\n"


@pytest.mark.parametrize(
    "task, text, match",
    [
        ("sst2", "sentence\tlabel\ngood\t1\nbad\t0\tx\n", r"dev\.tsv:3: expected 2 tab-separated fields"),
        ("sst2", "sentence\tlabel\ngood\t1\nbad\tpos\n", r"dev\.tsv:3: label 'pos' is not one of"),
        ("sst2", "text\tlabel\ngood\t1\n", r"dev\.tsv:1: the header has no column 'sentence'"),
        ("sst2", "", "empty"),
        ("sst2", "sentence\tlabel\n", "no examples"),
        ("cola", "source\tlabel\tx\tsentence\ngj04\t1\t\tA b.\n", r"dev\.tsv:1: label 'label'.*header row"),
        ("cola", "gj04\t1\tA b.\n", r"dev\.tsv:1: expected 4 tab-separated fields"),
        ("stsb", STSB_HEADER + "0\ta\tb\thigh\n", r"dev\.tsv:2: score 'high' is not a number"),
        ("stsb", STSB_HEADER + "0\ta\tb\t7.5\n", r"dev\.tsv:2: score '7.5' is outside 0..5"),
    ],
)
def test_local_malformed_files_name_file_and_line(tmp_path, task, text, match):
    write(tmp_path / get_task(task).directory / "dev.tsv", text)
    with pytest.raises(ValueError, match=match):
        load_glue(task, "dev", glue_dir=tmp_path)


def test_local_skip_bad_rows_warns(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood\t1\nbroken row\nbad\t0\n")
    with pytest.raises(ValueError, match="on_bad_row='skip'"):
        load_glue("sst2", "dev", glue_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 malformed row.*dev\.tsv:3"):
        data = load_glue("sst2", "dev", glue_dir=tmp_path, on_bad_row="skip")
    assert data.labels == [1, 0]
    with pytest.raises(ValueError, match="on_bad_row"):
        load_glue("sst2", "dev", glue_dir=tmp_path, on_bad_row="ignore")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown source"):
        load_glue("sst2", source="web")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_examples"):
            load_glue("sst2", source="synthetic", max_examples=bad)


# ---------------------------------------------------------------- source selection


def test_auto_without_data_is_synthetic_and_announced():
    with pytest.warns(SyntheticDataWarning, match="NOT GLUE results"):
        data = load_glue("sst2", "dev")
    assert data.synthetic and data.source == "synthetic"
    assert data.describe().startswith("SYNTHETIC")


def test_auto_uses_env_dir_and_falls_back_only_when_task_missing(tiny_glue, monkeypatch):
    monkeypatch.setenv(GLUE_DIR_ENV, str(tiny_glue))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # real data: no warning at all
        assert load_glue("sst2", "dev").source == "local"
    with pytest.warns(SyntheticDataWarning, match="has no QQP folder"):
        assert load_glue("qqp", "dev").synthetic
    with pytest.raises(FileNotFoundError):  # an explicit glue_dir never falls back
        load_glue("qqp", "dev", glue_dir=tiny_glue)
    with pytest.raises(FileNotFoundError):  # the folder exists: a missing file is an error
        load_glue("cola", "train")


def test_source_env_var(monkeypatch):
    monkeypatch.setenv(GLUE_SOURCE_ENV, "synthetic")
    with pytest.warns(SyntheticDataWarning):
        assert load_glue("rte", "dev").synthetic
    monkeypatch.setenv(GLUE_SOURCE_ENV, "cloud")
    with pytest.raises(ValueError, match=GLUE_SOURCE_ENV):
        load_glue("rte", "dev")


# ---------------------------------------------------------------- hub (a fake `datasets`, no network)


class _FakeLabel:
    def __init__(self, names):
        self.names = names


class _FakeDataset:
    def __init__(self, columns, label_names):
        self._columns = columns
        self.column_names = list(columns)
        self.features = {"label": _FakeLabel(label_names) if label_names else object()}

    def __getitem__(self, column):
        return self._columns[column]


def _fake_datasets(monkeypatch, dataset=None, error=None):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        if error:
            raise error
        return dataset

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_maps_label_ids_by_name(monkeypatch):
    # the hub's MNLI ids: 0 entailment, 1 neutral, 2 contradiction
    ds = _FakeDataset(
        {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"], "label": [0, 1, 2]},
        ["entailment", "neutral", "contradiction"],
    )
    calls = _fake_datasets(monkeypatch, ds)
    data = load_glue("mnli-mm", "dev", source="hub", max_examples=3)
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched[:3]")]
    assert [data.task.labels[i] for i in data.labels] == ["entailment", "neutral", "contradiction"]
    assert data.texts_b == ["h0", "h1", "h2"] and data.source == "hub" and not data.synthetic


def test_hub_regression_and_single_sentence(monkeypatch):
    ds = _FakeDataset({"sentence1": ["a"], "sentence2": ["b"], "label": [3.5]}, None)
    _fake_datasets(monkeypatch, ds)
    stsb = load_glue("stsb", "train", source="hub")
    assert stsb.labels == [3.5] and stsb.texts_b == ["b"]
    ds = _FakeDataset({"sentence": ["x", "y"], "label": [1, 0]}, ["negative", "positive"])
    _fake_datasets(monkeypatch, ds)
    sst = load_glue("sst2", "dev", source="hub")
    assert sst.labels == [1, 0] and sst.texts_b is None


def test_hub_errors(monkeypatch):
    _fake_datasets(monkeypatch, error=ConnectionError("no route"))
    with pytest.raises(RuntimeError, match="Offline.*glue_dir"):
        load_glue("sst2", source="hub")
    _fake_datasets(monkeypatch, _FakeDataset({"sentence": ["x"], "label": [0]}, ["bad", "good"]))
    with pytest.raises(ValueError, match="label classes"):
        load_glue("sst2", source="hub")
    _fake_datasets(monkeypatch, _FakeDataset({"sentence": ["x"], "label": [-1]}, ["negative", "positive"]))
    with pytest.raises(ValueError, match="not a class id"):
        load_glue("sst2", source="hub")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(ImportError, match="pip install datasets"):
        load_glue("sst2", source="hub")


# ---------------------------------------------------------------- synthetic data

_DET = "(?:the|this|that)"
_NOUN = "(?:" + "|".join(synthetic.NOUNS) + ")"
_VERB = "(?:is|was|seems|feels)"
_INT = "(?:" + "|".join(synthetic.INTENSIFIERS) + ")"
_ADJ = "(?:" + "|".join(synthetic.POSITIVE + synthetic.NEGATIVE) + ")"
_CLAUSE = rf"{_DET} ({_NOUN}) {_VERB} (not )?(?:({_INT}) )?({_ADJ})"
_CLAUSE_RE = re.compile(_CLAUSE)
_SENTENCE_RE = re.compile(rf"{_CLAUSE}(?: but {_CLAUSE})?")


def _values(text: str) -> list[tuple[str, int]]:
    """(noun, value) per clause, read back from the text with the documented rule."""
    out = []
    for noun, neg, intens, adj in _CLAUSE_RE.findall(text):
        polarity = 1 if adj in synthetic.POSITIVE else -1
        if neg:
            value = -polarity
        else:
            value = polarity * {"": 2, "very": 3, "really": 3, "extremely": 4, "truly": 4}[intens]
        out.append((noun, value))
    return out


def test_synthetic_sentiment_follows_rule_and_needs_word_order():
    data = load_synth("sst2", "train", max_examples=600)
    assert data.synthetic and data.texts_b is None
    for text, label in zip(data.texts_a, data.labels):
        assert _SENTENCE_RE.fullmatch(text), text
        values = _values(text)
        assert label == int(values[-1][1] > 0), text  # the clause after "but" decides
        if len(values) == 2:
            assert (values[0][1] > 0) != (values[1][1] > 0)
            # the same words in the other order carry the other label: bag-of-words cannot tell
            first, second = text.split(" but ")
            assert int(_values(f"{second} but {first}")[-1][1] > 0) != label
    counts = Counter(data.labels)
    assert 0.4 < counts[1] / len(data) < 0.6
    words = Counter(w for t in data.texts_a for w in t.split())
    assert words["not"] > 50 and words["but"] > 100 and words["very"] + words["extremely"] > 50


def test_synthetic_acceptability_labels_match_grammar():
    data = load_synth("cola", "dev", max_examples=400)
    assert {bool(_SENTENCE_RE.fullmatch(t)) for t in data.texts_a} == {True, False}
    for text, label in zip(data.texts_a, data.labels):
        assert label == int(bool(_SENTENCE_RE.fullmatch(text))), text


@pytest.mark.parametrize("task", ["mnli", "rte", "qnli", "mrpc", "qqp", "wnli"])
def test_synthetic_pairs_follow_rule_and_task_labels(task):
    data = load_synth(task, "dev", max_examples=300)
    spec = data.task
    relations = []
    for a, b, label in zip(data.texts_a, data.texts_b, data.labels):
        facts = dict(_values(a))
        (noun_b, value_b), = _values(b)
        if noun_b not in facts:
            relation = "neutral"
        else:
            relation = "entailment" if (facts[noun_b] > 0) == (value_b > 0) else "contradiction"
        relations.append(relation)
        name = spec.labels[label]
        if spec.num_labels == 3:
            assert name == relation
        elif spec.labels == ("0", "1"):
            assert name == ("1" if relation == "entailment" else "0")
        else:
            assert name == ("entailment" if relation == "entailment" else "not_entailment")
    share = Counter(relations)["entailment"] / len(relations)
    assert (0.25 < share < 0.42) if spec.num_labels == 3 else (0.4 < share < 0.6)


def test_synthetic_similarity_scores():
    data = load_synth("stsb", "train", max_examples=300)
    for a, b, score in zip(data.texts_a, data.texts_b, data.labels):
        (na, va), = _values(a)
        (nb, vb), = _values(b)
        expected = 3.0 * (na == nb) + 2.0 * (1 - abs(va - vb) / 8)
        assert score == pytest.approx(expected, abs=1e-3)
    assert min(data.labels) < 1.5 and max(data.labels) > 4.5
    assert isinstance(data.labels[0], float)


def test_synthetic_is_deterministic_and_splits_differ():
    a = load_synth("sst2", "train", max_examples=200, seed=3)
    b = load_synth("sst2", "train", max_examples=200, seed=3)
    assert (a.texts_a, a.labels) == (b.texts_a, b.labels)
    assert a.texts_a != load_synth("sst2", "train", max_examples=200, seed=4).texts_a
    assert a.texts_a != load_synth("sst2", "dev", max_examples=200, seed=3).texts_a
    assert load_synth("sst2", "train", max_examples=50, seed=3).texts_a == a.texts_a[:50]
    assert len(load_synth("sst2", "dev")) == 500  # default size
    mm1 = load_synth("mnli", "dev_mm", max_examples=20)
    assert mm1.texts_a == load_synth("mnli-mm", "dev", max_examples=20).texts_a
    assert mm1.texts_a != load_synth("mnli", "dev", max_examples=20).texts_a


def test_synthetic_warning_is_shown_every_time():
    # a fresh interpreter with Python's default filters, which show a warning once per call site
    code = (
        "from binlab.data.glue import load_glue\n"
        "for _ in range(3):\n"
        "    load_glue('sst2', 'dev', max_examples=5)\n"
    )
    drop = (GLUE_DIR_ENV, GLUE_SOURCE_ENV, "PYTHONWARNINGS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("SyntheticDataWarning: SYNTHETIC data") == 3


def test_synthetic_generate_errors():
    with pytest.raises(ValueError, match="known kinds"):
        synthetic.generate("translation", 5)
    with pytest.raises(ValueError, match="positive integer"):
        synthetic.generate("pair", 0)
    with pytest.raises(ValueError, match="num_classes"):
        synthetic.generate("pair", 5, num_classes=4)
    with pytest.raises(ValueError, match="unknown adjective"):
        synthetic.clause_value(False, None, "purple")


# ---------------------------------------------------------------- GlueSplit and batches


class FakeTokenizer:
    """Stands in for binlab.tokenizer: one id per word, padded; records its calls."""

    def __init__(self):
        self.calls = []

    def encode_batch(self, texts_a, texts_b=None, max_length=128):
        self.calls.append((list(texts_a), None if texts_b is None else list(texts_b), max_length))
        texts = texts_a if texts_b is None else [f"{a} | {b}" for a, b in zip(texts_a, texts_b)]
        ids = [[len(w) for w in t.split()][:max_length] for t in texts]
        width = max(len(x) for x in ids)
        return {"input_ids": torch.tensor([x + [0] * (width - len(x)) for x in ids])}


def test_split_indexing_slicing_and_checks():
    data = load_synth("mrpc", "dev", max_examples=10)
    assert len(data) == 10
    ex = data[3]
    assert (ex.text_a, ex.text_b, ex.label) == (data.texts_a[3], data.texts_b[3], data.labels[3])
    part = data[2:5]
    assert isinstance(part, GlueSplit) and len(part) == 3 and part.texts_b == data.texts_b[2:5]
    assert part.synthetic and "n=3" in repr(part) and data.texts_a[0] not in repr(data)
    assert sum(data.label_counts().values()) == 10
    spec = get_task("sst2")
    with pytest.raises(ValueError, match="labels has 1"):
        GlueSplit(spec, "dev", ["a", "b"], None, [1], "local", False)
    with pytest.raises(ValueError, match="single-sentence"):
        GlueSplit(spec, "dev", ["a"], ["b"], [1], "local", False)
    with pytest.raises(ValueError, match="texts_b is required"):
        GlueSplit(get_task("rte"), "dev", ["a"], None, [1], "local", False)


def test_batches_cover_split_with_labels():
    data = load_synth("sst2", "dev", max_examples=10)
    tok = FakeTokenizer()
    out = list(batches(data, tok, batch_size=4, max_length=16))
    assert [len(b["labels"]) for b in out] == [4, 4, 2] and num_batches(data, 4) == 3
    assert torch.cat([b["labels"] for b in out]).tolist() == data.labels
    assert out[0]["labels"].dtype == torch.long
    assert [c[0] for c in tok.calls] == [data.texts_a[0:4], data.texts_a[4:8], data.texts_a[8:10]]
    assert all(c[1] is None and c[2] == 16 for c in tok.calls)
    assert len(list(batches(data, tok, batch_size=4, drop_last=True))) == 2 == num_batches(data, 4, True)


def test_batches_shuffle_is_a_seeded_permutation():
    data = load_synth("rte", "dev", max_examples=12)
    order = {}
    for seed in (0, 0, 1):
        tok = FakeTokenizer()
        labels = torch.cat([b["labels"] for b in batches(data, tok, 5, shuffle=True, seed=seed)])
        texts = [t for call in tok.calls for t in call[0]]
        index = [data.texts_a.index(t) for t in texts]  # texts may repeat; labels still must match
        assert sorted(texts) == sorted(data.texts_a)
        assert labels.tolist() == [data.labels[i] for i in index]
        pairs_b = [t for call in tok.calls for t in call[1]]
        assert sorted(zip(texts, pairs_b)) == sorted(zip(data.texts_a, data.texts_b))
        order.setdefault(seed, []).append(texts)
    assert order[0][0] == order[0][1] and order[0][0] != order[1][0]


def test_batches_regression_and_errors():
    data = load_synth("stsb", "dev", max_examples=6)
    batch = next(batches(data, FakeTokenizer(), batch_size=6))
    assert batch["labels"].dtype == torch.float32 and batch["input_ids"].shape[0] == 6
    with pytest.raises(TypeError, match="encode_batch"):
        next(batches(data, object(), 2))
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(data, FakeTokenizer(), 0))
    with pytest.raises(TypeError, match="GlueSplit"):
        next(batches(data.texts_a, FakeTokenizer(), 2))

    class LabelledTokenizer(FakeTokenizer):
        def encode_batch(self, texts_a, texts_b=None, max_length=128):
            return {"labels": torch.zeros(len(texts_a))}

    with pytest.raises(ValueError, match="'labels'"):
        next(batches(data, LabelledTokenizer(), 2))
