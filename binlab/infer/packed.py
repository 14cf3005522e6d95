"""The packed model on disk: what its two files hold, how to read them back, and what it should weigh.

A packed model is a folder::

    config.json                 {"format": "binlab-packed-bert", "format_version": 1, "fp_dtype": "float32",
                                 "bert": the BertConfig as a Hugging Face dict (binlab_quant included), ...}
    model.packed.safetensors    every tensor below, no pickle (read with safetensors.numpy)
    tokenizer.json, vocab.txt   the tokenizer, when the source had one (``binlab predict`` needs it)

Every binarized matrix ``W [N, K]`` (Q, K, V, attention output, FFN in and out, pooler) is stored as

    NAME.bits    uint64 [N, ceil(K / 64)]   the signs of its quantized weight, packed along K (bit 1 = +alpha;
                                            binlab.kernels' convention, padding bits 0)
    NAME.scale   FP [1] or [N]              alpha: one per tensor, or one per output row (``weight_per_row``)
    NAME.bias    FP [N]

so that the layer computes ``y = s_in * scale * (bits(x) . bits(W)) + bias``, the product an XNOR- or an
AND-popcount (:class:`Binarizer` says which). The input binarizer of the layer, when it has learned state:

    NAME.input.alpha       FP [1]   BiT's elastic alpha (the value of an input bit; clamped to >= 1e-5 when used)
    NAME.input.threshold   FP [K]   BiT's learned per-channel shift t: the bit of x_k is the bit of x_k + t_k

and the attention's own binarizers ``layer.i.{q,k,v,probs}_act.{alpha,threshold}`` likewise. The word embedding is
packed per row, ``embeddings.word.bits [V, ceil(D / 64)]`` with ``embeddings.word.scale [V]``.

BinaryBERT's split model (``"split": true`` in config.json) has two binary halves in every binarized layer,
``y = dense_1(x) + dense_2(x)`` and ``E_1[ids] + E_2[ids]``: the first half under the names above, the second under
the same names with ``half2`` after the layer's (``layer.0.query.half2.bits``, ``...half2.input.alpha``,
``embeddings.word.half2.scale``); each half keeps its own input binarizer, as the fake-quant model does. Full precision,
as every method keeps it: the position and token-type tables, the LayerNorms, the biases, the learned alphas and
thresholds, the classifier. ``fp_dtype`` is float32 (the trained values exactly) or float16 (``--fp16``);
the weight scales, which the fake-quant model derives in its own dtype, are stored at ``fp_dtype`` too.

:func:`schema` lists every tensor with its dtype and shape from the config alone; :func:`load_packed` reads a
folder and checks the marker, the version, the names, dtypes and shapes, the padding bits and the finiteness of
every FP tensor, with an error naming what is wrong. :func:`ideal_bytes` is the size the format is measured
against: 1 bit per binarized weight plus the FP tensors at ``fp_dtype``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors

from binlab.kernels.packing import words_for
from binlab.model import BertConfig
from binlab.quant.config import QuantConfig

__all__ = ["FORMAT", "FORMAT_VERSION", "CONFIG_FILE", "WEIGHTS_FILE", "FP_DTYPES", "HALF2", "Binarizer", "Entry",
           "check_supported", "input_binarizer", "qkv_binarizer", "probs_binarizer", "linear_shapes", "schema",
           "check_tensors", "PackedModel", "load_packed", "ideal_bytes", "file_bytes", "size_report"]

FORMAT = "binlab-packed-bert"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.packed.safetensors"
FP_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
BITS_DTYPE = np.dtype(np.uint64)
#: the second half of a split model's layer: ``NAME.half2.bits`` beside ``NAME.bits``
HALF2 = "half2"

#: The linear layers of one encoder layer, in the order of the forward pass.
LAYER_LINEARS = ("query", "key", "value", "attention_output", "intermediate", "output")


# ----------------------------------------------------------------------------------------------------------
# what the configuration says


@dataclass(frozen=True)
class Binarizer:
    """How an activation x becomes one bit per entry, and what value a bit stands for.

    ``kind``::

        "sign"   bit = 1{x >= 0}                 value  +-1             BiBERT (SteSign, no scale)
        "pm1"    bit = 1{x + t >= 0}             value  +-alpha         BiT's elastic, signed
        "01"     bit = 1{(x + t) / alpha > 1/2}  value  {0, alpha}      BiT's elastic, unsigned (ReLU, softmax)

    (``round((x + t) / alpha)`` clamped to [0, 1], half to even, is 1 exactly when ``(x + t) / alpha > 1/2``.)
    ``threshold``: a learned per-channel t is stored (else t = 0). A ``"sign"`` or ``"pm1"`` operand meets a
    +-1 weight in an XNOR-popcount product, a ``"01"`` operand in an AND-popcount one.
    """

    kind: str
    threshold: bool = False

    @property
    def has_alpha(self) -> bool:
        return self.kind != "sign"

    @property
    def product(self) -> str:
        return "and" if self.kind == "01" else "xnor"


def check_supported(q: QuantConfig) -> None:
    """ValueError unless the bitwise engine runs this quantization (every product 1 bit x 1 bit)."""
    problems = []
    if q.weight_bits != 1:
        problems.append(f"weight_bits={q.weight_bits}")
    if q.embedding_bits != 1:
        problems.append(f"embedding_bits={q.embedding_bits}")
    if q.act_bits != 1 or q.act_method not in ("sign", "elastic"):
        problems.append(f"act_bits={q.act_bits} with act_method={q.act_method!r}")
    if not q.quantize_attention:
        problems.append("quantize_attention=False (full-precision Q, K, V and attention)")
    if problems:
        raise ValueError(
            f"the bitwise engine runs fully binarized W1A1 models (weight_bits=1, embedding_bits=1, act_bits=1 "
            f"with act_method 'sign' or 'elastic', quantize_attention=True: the 'bit' and 'bibert' presets); this "
            f"model ({q.label}) has {', '.join(problems)}")


def input_binarizer(q: QuantConfig, signed: bool) -> Binarizer:
    """The binarizer of a QuantLinear's input: signed after LayerNorm / attention, unsigned after GELU / ReLU."""
    if q.act_method == "sign":
        return Binarizer("sign")
    return Binarizer("pm1" if signed else "01", threshold=True)  # every linear input has BiT's threshold


def qkv_binarizer(q: QuantConfig) -> Binarizer:
    """The binarizer of Q, K and V after their projections."""
    if q.act_method == "sign":
        return Binarizer("sign")
    return Binarizer("pm1", threshold=q.qkv_threshold)


def probs_binarizer(q: QuantConfig) -> Binarizer | None:
    """The binarizer of the softmax probabilities; None for BiBERT's bool attention (no probabilities)."""
    if q.attention == "bool":
        return None
    if q.act_method == "sign":
        return Binarizer("sign")  # sign(p) = +1 for every p >= 0: a degenerate but well-defined model
    return Binarizer("01")


def linear_shapes(config: BertConfig) -> dict[str, tuple[int, int, bool]]:
    """``{name: (K, N, input_signed)}`` of every binarized linear layer, pooler included."""
    D, A, inter = config.hidden_size, config.attention_size, config.intermediate_size
    per_layer = {"query": (D, A, True), "key": (D, A, True), "value": (D, A, True),
                 "attention_output": (A, D, True), "intermediate": (D, inter, True), "output": (inter, D, False)}
    shapes = {f"layer.{i}.{n}": s for i in range(config.num_hidden_layers) for n, s in per_layer.items()}
    shapes["pooler"] = (D, D, True)
    return shapes


@dataclass(frozen=True)
class Entry:
    """One stored tensor: dtype, shape and, for packed bits, the number of bits per row that count."""

    dtype: np.dtype
    shape: tuple[int, ...]
    bits_per_row: int | None = None


def _binarizer_entries(name: str, b: Binarizer | None, k: int, fp: np.dtype) -> dict[str, Entry]:
    out = {}
    if b is not None and b.has_alpha:
        out[f"{name}.alpha"] = Entry(fp, (1,))
    if b is not None and b.threshold:
        out[f"{name}.threshold"] = Entry(fp, (k,))
    return out


def schema(config: BertConfig, fp_dtype: str = "float32", split: bool = False) -> dict[str, Entry]:
    """Every tensor of the packed model of ``config``, by name (see the module docstring); ``split``: BinaryBERT's
    split model, two halves per binarized layer."""
    check_supported(config.quant)
    fp = FP_DTYPES[fp_dtype]
    q = config.quant
    D, V, A = config.hidden_size, config.vocab_size, config.attention_size
    halves = ("", f".{HALF2}") if split else ("",)
    out = {}
    for h in halves:
        out[f"embeddings.word{h}.bits"] = Entry(BITS_DTYPE, (V, words_for(D)), D)
        out[f"embeddings.word{h}.scale"] = Entry(fp, (V,))
    out |= {
        "embeddings.position": Entry(fp, (config.max_position_embeddings, D)),
        "embeddings.token_type": Entry(fp, (config.type_vocab_size, D)),
        "embeddings.ln.weight": Entry(fp, (D,)),
        "embeddings.ln.bias": Entry(fp, (D,)),
    }
    for base, (k, n, signed) in linear_shapes(config).items():
        for h in halves:
            name = base + h
            out[f"{name}.bits"] = Entry(BITS_DTYPE, (n, words_for(k)), k)
            out[f"{name}.scale"] = Entry(fp, (n,) if q.weight_per_row else (1,))
            out[f"{name}.bias"] = Entry(fp, (n,))
            out.update(_binarizer_entries(f"{name}.input", input_binarizer(q, signed), k, fp))
    for i in range(config.num_hidden_layers):
        p = f"layer.{i}."
        for act in ("q_act", "k_act", "v_act"):
            out.update(_binarizer_entries(p + act, qkv_binarizer(q), A, fp))
        out.update(_binarizer_entries(p + "probs_act", probs_binarizer(q), 0, fp))
        for ln in ("attention_ln", "ffn_ln"):
            out[f"{p}{ln}.weight"] = Entry(fp, (D,))
            out[f"{p}{ln}.bias"] = Entry(fp, (D,))
    out["classifier.weight"] = Entry(fp, (config.num_labels, D))
    out["classifier.bias"] = Entry(fp, (config.num_labels,))
    return out


def ideal_bytes(config: BertConfig, fp_dtype: str = "float32", split: bool = False) -> int:
    """1 bit per binarized weight (no padding, no header) plus every FP tensor at ``fp_dtype``, in bytes."""
    bits = total = 0
    for e in schema(config, fp_dtype, split).values():
        if e.bits_per_row is not None:
            bits += e.shape[0] * e.bits_per_row
        else:
            total += int(np.prod(e.shape)) * e.dtype.itemsize
    return total + (bits + 7) // 8


def file_bytes(folder: str | os.PathLike) -> int:
    """Bytes on disk of a packed model: its config.json and its safetensors file (the tokenizer not counted)."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).stat().st_size + (folder / WEIGHTS_FILE).stat().st_size


def size_report(folder: str | os.PathLike, fp32_checkpoint: str | os.PathLike | None = None) -> dict:
    """Bytes on disk of a packed model against :func:`ideal_bytes` (and an fp32 checkpoint file, if one is given).

    ``over_ideal`` is ``file_bytes / ideal_bytes - 1``; ``smaller_than_fp32`` is ``fp32_bytes / file_bytes``.
    """
    folder = Path(folder)
    d = _read_config(folder)
    ideal = ideal_bytes(BertConfig.from_hf_dict(d["bert"]), d["fp_dtype"], d.get("split", False))
    size = file_bytes(folder)
    out = {"file_bytes": size, "ideal_bytes": ideal, "over_ideal": size / ideal - 1.0, "fp_dtype": d["fp_dtype"]}
    if fp32_checkpoint is not None and Path(fp32_checkpoint).is_file():
        fp32 = Path(fp32_checkpoint).stat().st_size
        out.update(fp32_bytes=fp32, smaller_than_fp32=fp32 / size)
    return out


# ----------------------------------------------------------------------------------------------------------
# reading


@dataclass
class PackedModel:
    """A packed model read back by :func:`load_packed`: its config, FP dtype and tensors (numpy, by name)."""

    config: BertConfig
    fp_dtype: str
    tensors: dict[str, np.ndarray]
    path: Path | None = None
    meta: dict | None = None  # config.json as read (format, source, the Hugging Face dict with id2label, ...)
    split: bool = False  # BinaryBERT's split model: two halves per binarized layer (module docstring)


def _read_config(folder: Path) -> dict:
    file = folder / CONFIG_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"no packed model at {folder}: not a directory")
    if not file.is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE}: not a packed model (make one with `binlab export`)")
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(d).__name__}")
    marker = d.get("format")
    if marker != FORMAT:
        hint = (" (it looks like a fake-quant checkpoint: pack it with `binlab export`)"
                if (folder / "model.safetensors").is_file() or "model_type" in d else "")
        raise ValueError(f"{file}: format marker is {marker!r}, expected {FORMAT!r}: not a binlab packed model{hint}")
    version = d.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{file}: format_version must be an integer, got {version!r}")
    if version != FORMAT_VERSION:
        newer = "a newer binlab wrote it; upgrade binlab" if version > FORMAT_VERSION else "export it again"
        raise ValueError(f"{file}: packed format version {version}, this binlab reads version {FORMAT_VERSION} "
                         f"({newer})")
    if d.get("fp_dtype") not in FP_DTYPES:
        raise ValueError(f"{file}: fp_dtype must be one of {sorted(FP_DTYPES)}, got {d.get('fp_dtype')!r}")
    if not isinstance(d.get("bert"), dict):
        raise ValueError(f"{file}: no 'bert' object (the model's configuration)")
    if not isinstance(d.get("split", False), bool):
        raise ValueError(f"{file}: 'split' must be true or false, got {d['split']!r}")
    return d


def check_tensors(file: Path | str, tensors: dict[str, np.ndarray], expected: dict[str, Entry]) -> None:
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = ([f"missing {len(missing)}: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"]
                 if missing else []) + ([f"unexpected {len(extra)}: {', '.join(extra[:6])}"] if extra else [])
        raise ValueError(f"{file} does not match its config.json: tensors {'; '.join(parts)}")
    for name, e in expected.items():
        t = tensors[name]
        if t.dtype != e.dtype:
            raise ValueError(f"{file}: tensor {name} has dtype {t.dtype}, expected {e.dtype}")
        if tuple(t.shape) != e.shape:
            raise ValueError(f"{file}: tensor {name} has shape {tuple(t.shape)}, the config says {e.shape}")
        if e.bits_per_row is not None:
            tail = e.bits_per_row % 64
            if tail and np.any(t[:, -1] >> np.uint64(tail)):
                raise ValueError(f"{file}: tensor {name} has padding bits set past bit {e.bits_per_row} of its rows")
        elif not np.isfinite(t).all():
            raise ValueError(f"{file}: tensor {name} holds NaN or infinite values")


def load_packed(folder: str | os.PathLike) -> PackedModel:
    """Read and check a packed model folder (no pickle: JSON and safetensors only).

    Raises FileNotFoundError for a missing folder or file, ValueError for a wrong format marker or version, a
    config the engine cannot run, an unreadable (e.g. truncated) safetensors file, or a tensor that is missing,
    unexpected, of the wrong dtype or shape, with padding bits set or non-finite values.
    """
    folder = Path(folder)
    d = _read_config(folder)
    try:
        config = BertConfig.from_hf_dict(d["bert"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{folder / CONFIG_FILE}: the 'bert' configuration is invalid: {e}") from e
    split = d.get("split", False)
    expected = schema(config, d["fp_dtype"], split)
    file = folder / WEIGHTS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{folder} holds no {WEIGHTS_FILE}")
    try:
        tensors = load_safetensors(file.read_bytes())
    except (SafetensorError, ValueError) as e:
        raise ValueError(f"{file} cannot be read as safetensors (truncated or corrupt?): {e}") from e
    check_tensors(file, tensors, expected)
    return PackedModel(config, d["fp_dtype"], tensors, folder, d, split)
