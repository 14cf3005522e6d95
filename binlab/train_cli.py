"""``binlab train``: fine-tune a (binarized) BERT on a GLUE task.

    binlab train --task sst2 --glue-dir ../shared/data/glue --quant fp --epochs 1 --out runs/sst2-fp
    binlab train --recipe binarybert --task sst2 --act-bits 8 --teacher runs/sst2-fp/best_model --out runs/sst2-bb

Everything a run needs is in ``--out``: ``checkpoints/`` (resume with ``--resume`` after an
interruption), ``best_model/`` (Hugging Face format, the best dev checkpoint), ``results.json`` (best and
final dev numbers, wall time, the exact command).

``--recipe binarybert`` chains several such runs (teacher, ternary student, split, binary student), one per
subfolder of ``--out``: see :mod:`binlab.recipes`.
"""

from __future__ import annotations

import sys

RECIPE_DEFAULTS = {  # methods.md §3.5 / §4.5 style per-task settings are left to the user; these are FP fine-tuning
    "lr": 5e-5, "epochs": 3.0, "batch_size": 32, "max_length": 128,
}


def add_arguments(p) -> None:
    p.add_argument("--task", required=True, help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli")
    p.add_argument("--glue-dir", default=None, help="GLUE folder in the original TSV layout (or env BINLAB_GLUE_DIR)")
    p.add_argument("--source", default="auto", choices=["auto", "local", "hub", "synthetic"],
                   help="where the data comes from (auto: --glue-dir / BINLAB_GLUE_DIR, else synthetic)")
    p.add_argument("--model", default=None,
                   help="HF-format checkpoint dir or hub id (default: the bundled all-MiniLM-L6-v2); "
                        "'tiny' = a small random BERT for tests")
    p.add_argument("--quant", default="fp", help="quantization preset: fp, w2a8, w1a8, w1a4, w1a2, w1a1, bibert, bit")
    p.add_argument("--out", required=True, help="output folder (checkpoints, best model, results.json)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--lr", type=float, default=RECIPE_DEFAULTS["lr"])
    p.add_argument("--epochs", type=float, default=RECIPE_DEFAULTS["epochs"])
    p.add_argument("--batch-size", type=int, default=RECIPE_DEFAULTS["batch_size"])
    p.add_argument("--max-length", type=int, default=RECIPE_DEFAULTS["max_length"])
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "bertadam"],
                   help="bertadam = the papers' Adam (no bias correction, per-tensor clipping), methods.md §1")
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip-lr", type=float, default=1e-4, help="lr of learned quantizer scales")
    p.add_argument("--eval-every", type=int, default=500, help="evaluate on dev every N steps (0: each epoch)")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps")
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--max-eval", type=int, default=None, help="use only the first N dev examples")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--recipe", default=None, choices=["binarybert"],
                   help="a multi-stage recipe instead of one run (binarybert: binlab.recipes)")
    from binlab.recipes import add_arguments as recipe_arguments

    recipe_arguments(p)


def tiny_model(num_labels: int, quant, seed: int):
    """A 2-layer, 64-wide BERT with the bundled vocabulary: trains in seconds, for tests and fast mode."""
    import torch

    from binlab.model import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=512, num_labels=num_labels, quant=quant)
    return BertForSequenceClassification(cfg)


def make_evaluator(task, encode, max_length: int, batch_size: int = 64):
    """``evaluate(model, split) -> (score, metrics)`` over the whole split."""
    import torch

    from binlab.metrics import compute_metrics

    def evaluate(model, split):
        logits = []
        for start in range(0, len(split), batch_size):
            a = split.texts_a[start:start + batch_size]
            b = split.texts_b[start:start + batch_size] if split.texts_b is not None else None
            batch = encode(a, b, max_length)
            logits.append(model(batch["input_ids"], attention_mask=batch["attention_mask"],
                                token_type_ids=batch["token_type_ids"]).logits.float())
        logits = torch.cat(logits)
        preds = logits.squeeze(-1) if task.num_labels == 1 else logits
        metrics = compute_metrics(task, preds, split.labels)
        return metrics["score"], metrics

    return evaluate


def run(args) -> int:
    import json
    import shlex
    import time

    import torch

    from binlab.checkpoint import load_pretrained, resolve_model_dir, save_pretrained
    from binlab.glue import get_task, load_glue
    from binlab.qconfig import QuantConfig
    from binlab.tokenizer import load_tokenizer
    from binlab.trainer import TrainConfig, Trainer, load_tensors

    if getattr(args, "recipe", None) == "binarybert":
        from binlab.recipes import run_from_args

        return run_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    task = get_task(args.task)
    quant = QuantConfig.preset(args.quant)
    train = load_glue(task, "train", glue_dir=args.glue_dir, source=args.source, max_examples=args.max_train)
    dev = load_glue(task, "dev", glue_dir=args.glue_dir, source=args.source, max_examples=args.max_eval)
    print(f"data: {train.describe()}\n      {dev.describe()}", flush=True)

    torch.manual_seed(args.seed)
    if args.model == "tiny":
        model = tiny_model(task.num_labels, quant, args.seed)
        tokenizer = load_tokenizer(None)
    else:
        model = load_pretrained(args.model, num_labels=task.num_labels, quant=quant)
        tokenizer = load_tokenizer(resolve_model_dir(args.model))

    cfg = TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
                      warmup=args.warmup, weight_decay=args.weight_decay, clip_lr=args.clip_lr,
                      optimizer=args.optimizer, eval_every=args.eval_every, save_every=args.save_every,
                      seed=args.seed, max_steps=args.max_steps, progress=not args.no_progress)
    encode = lambda a, b, n: tokenizer.encode_batch(a, b, max_length=n)  # noqa: E731
    run_info = {"command": "binlab train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
                if sys.argv[1:2] == ["train"] else None,
                "task": task.name, "quant": args.quant, "model": args.model or "all-MiniLM-L6-v2 (bundled)",
                "data_source": train.source, "synthetic": train.synthetic,
                "n_train": len(train), "n_dev": len(dev), "torch_threads": torch.get_num_threads()}
    trainer = Trainer(model, train, dev, encode, make_evaluator(task, encode, args.max_length), args.out, cfg,
                      num_labels=task.num_labels, run_info=run_info)
    t0 = time.perf_counter()
    results = trainer.fit(resume=args.resume)
    # the best-dev weights as a self-contained Hugging Face directory (the teacher of later chapters)
    best = trainer.out / "best_model.safetensors"
    if best.is_file():
        model.load_state_dict(load_tensors(best))
        save_pretrained(model, trainer.out / "best_model", tokenizer=tokenizer)
    b, f = results["best"], results["final"]
    print(json.dumps({"task": task.name, "quant": args.quant, "best_dev": {k: v for k, v in b.items()},
                      "final_dev_score": f["score"], "wall_time_s": results["wall_time_s"],
                      "this_session_s": round(time.perf_counter() - t0, 1)}, indent=1))
    return 0
