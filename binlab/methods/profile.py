"""``binlab profile``: where the time of one distillation step goes, and what the speed-ups buy.

    binlab profile --task sst2 --glue-dir ../shared/data/glue --teacher runs/sst2-fp/best_model --threads 1

One KD step of a recipe (BiT's loss by default) is four parts, timed one by one:

    teacher     the teacher's forward under ``torch.no_grad()`` (the targets)
    forward     the student's forward and the loss
    backward    ``loss.backward()`` through the quantizers' straight-through gradients
    optimizer   gradient clipping, ``optimizer.step()`` and ``zero_grad``

for each :data:`VARIANTS` entry: the batches the Trainer would draw (shuffled, or length-grouped as
``--group-by-length``) and the optimizer it would build (``--optimizer``). The variants run interleaved on one
student, one step each per round in an order that rotates every round; times are medians over rounds, and the
speed-up is the median of the per-round ratios to the first variant (paired, so load on the machine cancels
out). The batches are real training sentences: the padded length is what grouping changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from binlab.checkpoint import load_pretrained, resolve_model_dir
from binlab.data.glue import get_task, load_glue, select_texts
from binlab.data.sampling import encoded_lengths, length_grouped_order, padding_share, shuffled_order
from binlab.methods.distill import KD_KINDS
from binlab.methods.pipeline import frozen
from binlab.quant.config import PRESETS, QuantConfig
from binlab.tokenizer import load_tokenizer
from binlab.train.calibration import calibrate, calibration_batch
from binlab.train.optim import OPTIMIZERS, clip_gradients, make_optimizer

__all__ = ["Variant", "VARIANTS", "PARTS", "profile_kd_step", "markdown", "add_arguments", "run"]

PARTS = ("teacher", "forward", "backward", "optimizer")


@dataclass(frozen=True)
class Variant:
    """One way of running the step: the Trainer's ``group_by_length`` and ``optimizer``."""

    name: str
    group_by_length: bool
    optimizer: str


#: What is compared, the first being the reference of the speed-ups.
VARIANTS = (
    Variant("before: shuffled batches, adamw", False, "adamw"),
    Variant("length-grouped batches, adamw", True, "adamw"),
    Variant("length-grouped batches, adamw_fused", True, "adamw_fused"),
)


def _timed_step(student, teacher_fn, student_loss, optimizer, batch) -> dict[str, float]:
    t = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        targets = teacher_fn(batch)
    t1 = time.perf_counter()
    loss = student_loss(student, batch, targets)
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    clip_gradients(student, optimizer, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t4 = time.perf_counter()
    t.update(teacher=t1 - t0, forward=t2 - t1, backward=t3 - t2, optimizer=t4 - t3)
    t["total"] = t4 - t0
    return t


def profile_kd_step(teacher_dir, task: str = "sst2", glue_dir=None, quant: str = "bit", kd: str = "bit",
                    batch_size: int = 32, max_length: int = 64, rounds: int = 12, warmup: int = 2,
                    variants=VARIANTS, max_train: int | None = None, seed: int = 42, progress=print) -> dict:
    """Time ``rounds`` KD steps of every variant (module docstring); returns the per-variant medians and ratios."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be positive and warmup non-negative, got {rounds} and {warmup}")
    if kd not in KD_KINDS:
        raise ValueError(f"unknown distillation kind {kd!r}; choose one of {', '.join(KD_KINDS)}")
    spec = get_task(task)
    train = load_glue(spec, "train", glue_dir=glue_dir, max_examples=max_train)
    tokenizer = load_tokenizer(resolve_model_dir(teacher_dir))
    encode = lambda a, b, n: tokenizer.encode_batch(a, b, max_length=n)  # noqa: E731
    teacher = frozen(load_pretrained(teacher_dir, num_labels=spec.num_labels, verbose=False))
    student = load_pretrained(teacher_dir, num_labels=spec.num_labels, quant=QuantConfig.preset(quant),
                              verbose=False)
    calibrate(student, calibration_batch(train, encode, max_length, 128))
    student.train()
    outputs, teacher_mode, loss_of = KD_KINDS[kd]  # the teacher in the mode of the method's code
    regression = spec.num_labels == 1

    def run(model, batch):
        return model(batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"], **outputs)

    def teacher_fn(batch):
        teacher.train(teacher_mode == "train")
        return run(teacher, batch)

    def student_loss(model, batch, targets):
        return loss_of(run(model, batch), targets, batch, regression, "mse", 1.0)

    lengths = encoded_lengths(train, encode, max_length)
    state = []
    for v in variants:
        if v.optimizer not in OPTIMIZERS:
            raise ValueError(f"variant {v.name!r}: unknown optimizer {v.optimizer!r}")
        g = torch.Generator().manual_seed(seed * 1000003)
        order = (length_grouped_order(lengths, batch_size, g) if v.group_by_length else
                 shuffled_order(len(train), g))
        state.append(dict(order=order, opt=make_optimizer(student, v.optimizer, 1e-4), times=[], tokens=[],
                          padding=padding_share(order, lengths, batch_size)))

    for r in range(warmup + rounds):
        for k in range(len(variants)):
            i = (k + r) % len(variants)  # rotate who goes first
            st = state[i]
            idx = st["order"][r * batch_size:(r + 1) * batch_size].tolist()
            batch = dict(encode(*select_texts(train, idx), max_length))
            t = _timed_step(student, teacher_fn, student_loss, st["opt"], batch)
            if r >= warmup:
                st["times"].append(t)
                st["tokens"].append(batch["input_ids"].shape[1])
        if progress and r >= warmup:
            progress(f"round {r - warmup + 1}/{rounds}: " + ", ".join(
                f"{s['times'][-1]['total']:.2f} s" for s in state))
    ref = state[0]["times"]
    rows = []
    for v, st in zip(variants, state):
        med = {p: statistics.median(t[p] for t in st["times"]) for p in (*PARTS, "total")}
        speedup = statistics.median(a["total"] / b["total"] for a, b in zip(ref, st["times"]))
        rows.append({"variant": v.name, "group_by_length": v.group_by_length, "optimizer": v.optimizer,
                     "padded_length": statistics.mean(st["tokens"]), "epoch_padding_share": st["padding"],
                     "median_s": med, "speedup": speedup})
    return {"task": spec.name, "quant": quant, "kd": kd, "batch_size": batch_size, "max_length": max_length,
            "rounds": rounds, "threads": torch.get_num_threads(), "teacher": str(teacher_dir),
            "n_train": len(train), "mean_length": float(lengths.float().mean()), "rows": rows}


def markdown(result: dict) -> str:
    """The result as a markdown table (milliseconds per part)."""
    head = (f"One KD step ({result['kd']} loss, {result['quant']} student, {result['task']}, batch "
            f"{result['batch_size']}, max length {result['max_length']}, {result['threads']} thread(s), "
            f"median of {result['rounds']} interleaved rounds; mean example length {result['mean_length']:.1f})")
    lines = [head, "", "| variant | padded length | padding (epoch) | " + " | ".join(PARTS) +
             " | total | speed-up |", "|---|---:|---:|" + "---:|" * len(PARTS) + "---:|---:|"]
    for row in result["rows"]:
        ms = " | ".join(f"{1000 * row['median_s'][p]:.0f}" for p in PARTS)
        lines.append(f"| {row['variant']} | {row['padded_length']:.1f} | {100 * row['epoch_padding_share']:.0f}% | "
                     f"{ms} | {1000 * row['median_s']['total']:.0f} ms | {row['speedup']:.2f}x |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="a fine-tuned FP model dir (e.g. runs/sst2-fp/best_model)")
    p.add_argument("--task", default="sst2", help="GLUE task (default: sst2)")
    p.add_argument("--glue-dir", default=None, help="GLUE folder in the original TSV layout (or env BINLAB_GLUE_DIR)")
    p.add_argument("--quant", default="bit", help=f"the student's preset (default: bit): {', '.join(PRESETS)}")
    p.add_argument("--kd", default="bit", choices=list(KD_KINDS), help="the distillation loss (default: bit)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--rounds", type=int, default=12, help="timed steps per variant (default: 12)")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as the training runs)")
    p.add_argument("--json", default=None, help="also write the result as JSON to this file")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    result = profile_kd_step(args.teacher, args.task, args.glue_dir, args.quant, args.kd, args.batch_size,
                             args.max_length, args.rounds, max_train=args.max_train)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0
