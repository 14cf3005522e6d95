"""``binlab train``: fine-tune a (binarized) BERT on a GLUE task, or run one of the recipes of :data:`RECIPES`.

    binlab train --task sst2 --glue-dir ../shared/data/glue --quant fp --epochs 1 --out runs/sst2-fp
    binlab train --recipe binarybert --task sst2 --act-bits 8 --teacher runs/sst2-fp/best_model --out runs/sst2-bb

Plain fine-tuning (``--recipe finetune``, the default) is one Trainer run, and everything it needs is in ``--out``:
``checkpoints/`` (resume with ``--resume`` after an interruption), ``best_model/`` (Hugging Face format, the best
dev checkpoint), ``results.json`` (best and final dev numbers, wall time, the exact command).

A recipe chains several such runs, one per subfolder of ``--out`` (:mod:`binlab.methods.pipeline`). Adding one is
a module in ``binlab/methods/`` with a :class:`~binlab.methods.pipeline.Recipe` entry, and one line in
:data:`RECIPES`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from binlab.checkpoint import load_pretrained, resolve_model_dir, save_pretrained
from binlab.data.glue import get_task, load_glue
from binlab.files import load_tensors
from binlab.methods import bibert, binarybert, bit
from binlab.methods.pipeline import Recipe, add_train_arguments, command_line, train_config_from_args
from binlab.model import tiny_bert
from binlab.quant.config import PRESETS, QuantConfig
from binlab.tokenizer import load_tokenizer
from binlab.train import distributed
from binlab.train.evaluation import make_evaluator
from binlab.train.trainer import Trainer

__all__ = ["RECIPES", "FINETUNE", "add_arguments", "run", "run_finetune"]


def _finetune_arguments(p) -> None:
    p.add_argument("--quant", default="fp", help=f"quantization preset of plain fine-tuning: {', '.join(PRESETS)}")


def run_finetune(args: argparse.Namespace) -> int:
    """Plain fine-tuning: one Trainer run of ``--model`` at ``--quant`` on ``--task`` (module docstring)."""
    task = get_task(args.task)
    quant = QuantConfig.preset(args.quant)
    data = dict(glue_dir=args.glue_dir, source=args.source, on_bad_row=args.on_bad_row)
    train = load_glue(task, "train", max_examples=args.max_train, **data)
    dev = load_glue(task, "dev", max_examples=args.max_eval, **data)
    print(f"data: {train.describe()}\n      {dev.describe()}", flush=True)

    torch.manual_seed(args.seed)
    if args.model == "tiny":
        model = tiny_bert(task.num_labels, quant, seed=args.seed)
        tokenizer = load_tokenizer(None)
    else:
        model = load_pretrained(args.model, num_labels=task.num_labels, quant=quant)
        tokenizer = load_tokenizer(resolve_model_dir(args.model))

    cfg = train_config_from_args(args)
    encode = lambda a, b, n: tokenizer.encode_batch(a, b, max_length=n)  # noqa: E731
    run_info = {"command": command_line(), "task": task.name, "quant": args.quant,
                "model": args.model or "all-MiniLM-L6-v2 (bundled)",
                "data_source": train.source, "synthetic": train.synthetic,
                "n_train": len(train), "n_dev": len(dev), "torch_threads": torch.get_num_threads()}
    trainer = Trainer(model, train, dev, encode, make_evaluator(task, encode, cfg.max_length), args.out, cfg,
                      num_labels=task.num_labels, run_info=run_info)
    t0 = time.perf_counter()
    results = trainer.fit(resume=args.resume)
    # the best-dev weights as a self-contained Hugging Face directory (the teacher of later chapters)
    best = trainer.out / "best_model.safetensors"
    if best.is_file() and distributed.is_main():
        model.load_state_dict(load_tensors(best))
        save_pretrained(model, trainer.out / "best_model", tokenizer=tokenizer)
    b, f = results["best"], results["final"]
    print(json.dumps({"task": task.name, "quant": args.quant, "best_dev": dict(b),
                      "final_dev_score": f["score"], "wall_time_s": results["wall_time_s"],
                      "this_session_s": round(time.perf_counter() - t0, 1)}, indent=1))
    return 0


FINETUNE = Recipe("finetune", "plain fine-tuning of --model at --quant (one Trainer run)", _finetune_arguments,
                  run_finetune)

#: ``binlab train --recipe NAME`` -> its :class:`~binlab.methods.pipeline.Recipe`. One line per recipe.
RECIPES: dict[str, Recipe] = {
    "finetune": FINETUNE,
    "binarybert": binarybert.RECIPE,
    "bit": bit.RECIPE,
    "bibert": bibert.RECIPE,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``binlab train``: the shared ones, then each recipe's group."""
    add_train_arguments(p)
    p.add_argument("--recipe", default="finetune", choices=list(RECIPES),
                   help="; ".join(f"{r.name}: {r.help}" for r in RECIPES.values()))
    for recipe in RECIPES.values():
        recipe.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    """``binlab train``: in one process, or in each of torchrun's (README, "Bigger runs";
    :mod:`binlab.train.distributed`), where rank 0 alone prints and writes."""
    if args.threads:
        torch.set_num_threads(args.threads)
    started = distributed.init_from_env()
    try:
        with distributed.main_prints_only():
            return RECIPES[args.recipe].run_from_args(args)
    finally:
        if started:
            distributed.shutdown()
