"""``binlab predict MODEL "sentence" ["second sentence"]``: one prediction of a packed model, run bitwise.

MODEL is a folder written by ``binlab export`` with the tokenizer saved alongside. Prints the label, the scores
(softmax probabilities, or the value of a regression head) and the latency: the median over ``--repeat`` forward
passes after one warm-up (the first call in a fresh install also compiles the numba kernels, cached on disk).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numba
import torch

from binlab.infer.engine import PackedBert
from binlab.infer.packed import load_packed
from binlab.tokenizer import BertTokenizer

__all__ = ["load_tokenizer_of", "predict", "add_arguments", "run"]


def load_tokenizer_of(folder: str | os.PathLike) -> BertTokenizer:
    """The tokenizer saved in a packed model's folder (FileNotFoundError naming the folder if there is none)."""
    folder = Path(folder)
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()):
        raise FileNotFoundError(f"{folder} holds no tokenizer (tokenizer.json or vocab.txt): export from a checkpoint "
                                "directory that has one, or pass tokenizer= to export_packed")
    return BertTokenizer.from_dir(folder)


def predict(engine: PackedBert, tokenizer: BertTokenizer, text: str, text_pair: str | None = None,
            max_length: int = 128, repeat: int = 20) -> dict:
    """Label, scores and latency of one sentence (or pair): a dict (see :func:`run` for what is printed)."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    t0 = time.perf_counter()
    batch = tokenizer.encode_batch([text], None if text_pair is None else [text_pair], max_length=max_length)
    tokenize_ms = 1e3 * (time.perf_counter() - t0)
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    logits = engine(*args)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        logits = engine(*args)
        times.append(1e3 * (time.perf_counter() - t0))
    row = logits[0].double()
    id2label = (engine.packed.meta or {}).get("bert", {}).get("id2label", {})
    if row.numel() == 1:
        label, scores = None, [float(row[0])]
    else:
        label_id = int(row.argmax())
        label = id2label.get(str(label_id), str(label_id))
        scores = torch.softmax(row, 0).tolist()
    return {"label": label, "scores": scores, "logits": row.tolist(), "tokens": int(batch["input_ids"].shape[1]),
            "latency_ms": statistics.median(times), "tokenize_ms": tokenize_ms, "repeat": repeat,
            "labels": [id2label.get(str(i), str(i)) for i in range(row.numel())]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a packed model folder (written by `binlab export`)")
    p.add_argument("text", metavar="SENTENCE", help="the sentence to classify")
    p.add_argument("text_pair", metavar="SECOND_SENTENCE", nargs="?", default=None,
                   help="the second sentence of a pair task (MRPC, RTE, ...)")
    p.add_argument("--max-length", type=int, default=128, help="truncate to this many tokens (default: 128)")
    p.add_argument("--repeat", type=int, default=20, help="timed forward passes after a warm-up; the latency printed "
                   "is their median (default: 20)")
    p.add_argument("--threads", type=int, default=1, help="threads of the kernels and of torch (default: 1)")
    p.add_argument("--json", default=None, help="also write the result as JSON to this file")


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    engine = PackedBert(load_packed(args.model))
    result = predict(engine, load_tokenizer_of(args.model), args.text, args.text_pair, args.max_length, args.repeat)
    if result["label"] is None:
        print(f"value: {result['scores'][0]:.4f}")
    else:
        print(f"label: {result['label']}")
        print("scores: " + ", ".join(f"{n} {s:.4f}" for n, s in zip(result["labels"], result["scores"])))
    print(f"latency: {result['latency_ms']:.2f} ms per forward pass ({result['tokens']} tokens, median of "
          f"{result['repeat']}, {args.threads} thread{'s' if args.threads > 1 else ''}); tokenizing "
          f"{result['tokenize_ms']:.2f} ms")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
