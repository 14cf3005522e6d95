"""``binlab export``: a trained fake-quant W1A1 checkpoint -> a packed model in real bits.

``binlab export RUN_OR_MODEL_DIR --out DIR [--fp16] [--stage NAME]`` (or :func:`export_packed` on a model) writes
the folder :mod:`binlab.infer.packed` describes. The source is a checkpoint directory (``config.json`` and
weights), the output folder of ``binlab train`` (its ``best_model/``), or a recipe run (``summary.json``: the last
stage with a ``best_model/``, or ``--stage``).

What is stored is read from the model's own quantizers, in float64, so that the bits are those of the exact
fake-quant model (a float32 forward differs from it only where a value lies within rounding of a threshold):

* each binarized weight ``Q(W) = alpha * (+-1)``, from the layer's weight quantizer applied to ``W`` in float64
  (BiT's global mean-centring, BiBERT's row centring, BWN: whatever the method does): the bits of ``Q(W) > 0`` and
  alpha, one per tensor or one per row (an error if ``|Q(W)|`` is not one value per tensor / row);
* the word embedding the same way, row by row (its QuantEmbedding over every id);
* each activation binarizer's learned alpha and threshold as trained (an error if a data-initialised alpha never
  saw data: calibrate or train first);
* everything that stays full precision as it is, in float32, or float16 with ``fp16=True``;
* BinaryBERT's split model (every binarized layer two halves, ``dense_1 + dense_2``) half by half, the second half
  under ``NAME.half2.*``, with ``"split": true`` in config.json. The engine runs it when its activations are 1-bit
  (the recipe's ``--act-bits 1``); 8- and 4-bit activations would need bit-serial products, which it does not have.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save as save_safetensors
from torch import nn

from binlab.checkpoint import load_config, load_state_dict, load_weights
from binlab.files import atomic_write_bytes
from binlab.infer.packed import (CONFIG_FILE, FORMAT, FORMAT_VERSION, FP_DTYPES, HALF2, WEIGHTS_FILE, Binarizer,
                                 check_supported, check_tensors, input_binarizer, probs_binarizer, qkv_binarizer,
                                 schema, size_report)
from binlab.kernels.packing import pack_bits01
from binlab.methods.split_model import SplitEmbedding, SplitQuantLinear, is_split_state, split_model_from_state
from binlab.model import BertForSequenceClassification
from binlab.quant.layers import QuantEmbedding, QuantLinear
from binlab.quant.quantizers import Elastic, SteSign
from binlab.tokenizer import BertTokenizer

__all__ = ["resolve_source", "load_source_model", "is_split", "packed_tensors", "export_packed", "add_arguments",
           "run"]


# ----------------------------------------------------------------------------------------------------------
# where the model is


def resolve_source(path: str | os.PathLike, stage: str | None = None) -> Path:
    """The checkpoint directory of a model directory, a ``binlab train`` output, or a recipe run (module doc)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"no such directory: {path}")
    if stage is not None:
        folder = path / stage / "best_model"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no model at {folder}: has stage {stage!r} of the run in {path} finished?")
        return folder
    if (path / "config.json").is_file():
        return path
    if (path / "best_model" / "config.json").is_file():
        return path / "best_model"
    summary = path / "summary.json"
    if summary.is_file():
        rows = json.loads(summary.read_text()).get("stages", [])
        for row in reversed(rows):
            folder = path / row.get("stage", "") / "best_model"
            if row.get("stage") and (folder / "config.json").is_file():
                return folder
        raise FileNotFoundError(f"the run in {path} has no finished stage with a best_model/ yet")
    raise FileNotFoundError(f"{path} is neither a checkpoint directory (config.json), nor a `binlab train` output "
                            f"(best_model/), nor a recipe run (summary.json)")


def load_source_model(model_dir: str | os.PathLike) -> BertForSequenceClassification:
    """The fake-quant model of a checkpoint directory (a split model too), every tensor from the file (else
    ValueError)."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    check_supported(config.quant)
    state = load_state_dict(model_dir)
    if is_split_state(state):  # BinaryBERT's split model
        try:
            return split_model_from_state(config, state).eval()
        except RuntimeError as e:
            raise ValueError(f"{model_dir} does not hold the whole split model: {e}") from e
    model = BertForSequenceClassification(config)
    report = load_weights(model, state)
    problems = report.missing + report.new_quantizer_state + report.new_classifier + report.unexpected
    if problems:
        raise ValueError(f"{model_dir} does not hold the whole model: {report}")
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# reading the model's quantizers


def _binary(q: torch.Tensor, per_row: bool, name: str) -> tuple[np.ndarray, torch.Tensor]:
    """The sign bits and the scale(s) of a quantized weight ``q = alpha * (+-1)`` (``[N, K]``)."""
    mag = q.abs().reshape(q.shape[0], -1)
    alpha = mag[:, :1] if per_row else mag.reshape(-1)[:1].reshape(1, 1)
    if not torch.equal(mag, alpha.expand_as(mag)):
        what = "per row" if per_row else "per tensor"
        raise ValueError(f"{name}: its quantized weight is not one scale {what} times signs; is it binary?")
    return pack_bits01(q > 0), alpha.reshape(-1)


def _halves(module: nn.Module, name: str, split: bool) -> list[tuple[nn.Module, str]]:
    """``[(QuantLinear, its packed name)]``: the layer, or a split layer's two halves (``NAME``, ``NAME.half2``)."""
    want = SplitQuantLinear if split else QuantLinear
    if type(module) is not want:
        raise ValueError(f"{name} is a {type(module).__name__}, expected a {want.__name__}: "
                         + ("a split model has two halves in every binarized layer" if split else
                            "a model that is not split has one QuantLinear per binarized layer"))
    return [(module.dense_1, name), (module.dense_2, f"{name}.{HALF2}")] if split else [(module, name)]


def _linear(module: nn.Module, name: str, per_row: bool) -> dict[str, torch.Tensor]:
    if type(module) is not QuantLinear:
        raise ValueError(f"{name} is a {type(module).__name__}, not a QuantLinear")
    if module.bias is None:
        raise ValueError(f"{name} has no bias; the packed format expects one")
    with torch.no_grad():
        bits, alpha = _binary(module.weight_quantizer(module.weight.detach().double()), per_row, name)
    return {f"{name}.bits": bits, f"{name}.scale": alpha, f"{name}.bias": module.bias}


def _binarizer(module: nn.Module | None, spec: Binarizer | None, name: str) -> dict[str, torch.Tensor]:
    """The learned state of an activation binarizer, after checking it is the one ``spec`` describes."""
    if spec is None:
        return {}
    if spec.kind == "sign":
        if not isinstance(module, SteSign):
            raise ValueError(f"{name}: expected a sign binarizer (SteSign), found {type(module).__name__}")
        return {}
    signed = spec.kind == "pm1"
    if not isinstance(module, Elastic) or module.num_bits != 1 or module.signed != signed:
        raise ValueError(f"{name}: expected a 1-bit {'signed' if signed else 'unsigned'} elastic binarizer, found "
                         f"{module!r}")
    if not bool(module.initialized):
        raise ValueError(f"{name}: its alpha never saw data (initialized is False), so the fake-quant model would set "
                         "it on its next forward pass; calibrate (binlab.train.calibration.calibrate) or train first")
    if spec.threshold != (module.bias is not None):
        raise ValueError(f"{name}: {'a' if spec.threshold else 'no'} learned threshold expected from the config")
    out = {f"{name}.alpha": module.alpha.detach().reshape(1)}
    if spec.threshold:
        out[f"{name}.threshold"] = module.bias.detach()
    return out


def packed_tensors(model: BertForSequenceClassification, fp_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Every tensor of the packed model of ``model`` (see :mod:`binlab.infer.packed`), as numpy arrays."""
    if not isinstance(model, BertForSequenceClassification):
        raise TypeError(f"export expects a binlab BertForSequenceClassification, got {type(model).__name__}")
    config, q = model.config, model.config.quant
    check_supported(q)
    fp = FP_DTYPES[fp_dtype]
    bert, raw = model.bert, {}
    emb = bert.embeddings
    split = is_split(model)
    if type(emb.word_embeddings) is not QuantEmbedding and not split:
        raise ValueError(f"the word embedding is a {type(emb.word_embeddings).__name__}, not a QuantEmbedding")
    tables = ([(emb.word_embeddings.embedding_1, "embeddings.word"), (emb.word_embeddings.embedding_2,
              f"embeddings.word.{HALF2}")] if split else [(emb.word_embeddings, "embeddings.word")])
    for table_module, name in tables:
        with torch.no_grad():
            table = copy.deepcopy(table_module).double()(torch.arange(config.vocab_size))
        raw[f"{name}.bits"], raw[f"{name}.scale"] = _binary(table, True, f"the word embedding ({name})")
    raw.update({"embeddings.position": emb.position_embeddings.weight,
                "embeddings.token_type": emb.token_type_embeddings.weight,
                "embeddings.ln.weight": emb.LayerNorm.weight, "embeddings.ln.bias": emb.LayerNorm.bias})
    for i, layer in enumerate(bert.encoder.layer):
        p, att = f"layer.{i}.", layer.attention
        modules = {"query": att.query, "key": att.key, "value": att.value,
                   "attention_output": layer.attention_output.dense, "intermediate": layer.ffn.intermediate,
                   "output": layer.ffn.output}
        for n, module in modules.items():
            for m, name in _halves(module, p + n, split):
                raw.update(_linear(m, name, q.weight_per_row))
                raw.update(_binarizer(m.input_quantizer, input_binarizer(q, m.input_signed), name + ".input"))
        for act, m in (("q_act", att.query_quant), ("k_act", att.key_quant), ("v_act", att.value_quant)):
            raw.update(_binarizer(m, qkv_binarizer(q), p + act))
        raw.update(_binarizer(att.probs_quant, probs_binarizer(q), p + "probs_act"))
        for ln, m in (("attention_ln", layer.attention_output.LayerNorm), ("ffn_ln", layer.ffn.LayerNorm)):
            raw[f"{p}{ln}.weight"], raw[f"{p}{ln}.bias"] = m.weight, m.bias
    for m, name in _halves(bert.pooler.dense, "pooler", split):
        raw.update(_linear(m, name, q.weight_per_row))
        raw.update(_binarizer(m.input_quantizer, input_binarizer(q, True), name + ".input"))
    raw["classifier.weight"], raw["classifier.bias"] = model.classifier.weight, model.classifier.bias
    out = {}
    for name, t in raw.items():
        if isinstance(t, np.ndarray):  # packed bits
            out[name] = t
            continue
        a = t.detach().cpu().double().numpy().astype(fp)
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds values that are not finite in {fp_dtype}"
                             + (" (too large for float16: export without --fp16)" if fp_dtype == "float16" else ""))
        out[name] = np.ascontiguousarray(a)
    check_tensors("export_packed", out, schema(config, fp_dtype, split))
    return out


def is_split(model: nn.Module) -> bool:
    """True for BinaryBERT's split model (its word embedding, or else its first linear layer, has two halves)."""
    word = model.bert.embeddings.word_embeddings
    return isinstance(word, SplitEmbedding) or isinstance(model.bert.encoder.layer[0].attention.query,
                                                          SplitQuantLinear)


# ----------------------------------------------------------------------------------------------------------
# writing


def export_packed(model_or_dir: BertForSequenceClassification | str | os.PathLike, out_dir: str | os.PathLike,
                  fp16: bool = False, stage: str | None = None, tokenizer: BertTokenizer | None = None) -> Path:
    """Write the packed model of ``model_or_dir`` (a model, or a folder: :func:`resolve_source`) into ``out_dir``.

    ``fp16``: the full-precision tensors in float16 instead of float32. ``tokenizer``: saved alongside (a folder
    source's own tokenizer is copied when it has one). The weights file is written before ``config.json``, each
    atomically, so an interrupted export leaves no folder that loads. Returns ``out_dir``.
    """
    source = None
    if isinstance(model_or_dir, nn.Module):
        model = model_or_dir
    else:
        source = resolve_source(model_or_dir, stage)
        model = load_source_model(source)
        if tokenizer is None and ((source / "tokenizer.json").is_file() or (source / "vocab.txt").is_file()):
            tokenizer = BertTokenizer.from_dir(source)
    fp_dtype = "float16" if fp16 else "float32"
    was_training = model.training
    model.eval()
    try:
        tensors = packed_tensors(model, fp_dtype)
    finally:
        model.train(was_training)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_FILE, save_safetensors(tensors, metadata={"format": FORMAT}))
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "fp_dtype": fp_dtype,
              "weights": WEIGHTS_FILE, "source": None if source is None else str(source), "split": is_split(model),
              "bert": model.config.to_hf_dict()}
    atomic_write_bytes(out / CONFIG_FILE, (json.dumps(config, indent=1, sort_keys=True) + "\n").encode())
    if tokenizer is not None:
        tokenizer.save(out)
    return out


# ----------------------------------------------------------------------------------------------------------
# the command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_OR_MODEL_DIR", help="a W1A1 checkpoint directory, a `binlab train` output "
                   "or a recipe run (its last finished stage)")
    p.add_argument("--out", required=True, help="the folder to write the packed model into")
    p.add_argument("--fp16", action="store_true", help="store the full-precision parts in float16 (default float32)")
    p.add_argument("--stage", default=None, help="the stage of a recipe run to export (default: its last one)")


def run(args: argparse.Namespace) -> int:
    source = resolve_source(args.source, args.stage)
    out = export_packed(source, args.out, fp16=args.fp16)
    r = size_report(out, source / "model.safetensors")
    line = (f"packed {source} -> {out}\n  {r['file_bytes']:,} bytes on disk ({CONFIG_FILE} + {WEIGHTS_FILE}), "
            f"ideal {r['ideal_bytes']:,} (1 bit per binarized weight + the FP parts in {r['fp_dtype']}): "
            f"{100 * r['over_ideal']:+.2f}%")
    if "fp32_bytes" in r:
        line += f"\n  the fp32 checkpoint: {r['fp32_bytes']:,} bytes, {r['smaller_than_fp32']:.1f}x larger"
    print(line)
    return 0
