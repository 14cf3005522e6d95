"""What every multi-stage recipe shares: its config, its run folder, the teacher, one Trainer stage, the summary.

A recipe (BinaryBERT's, and the ones to come) is a chain of stages, each in its own subfolder of ``out``::

    out/recipe.json        the settings; a resumed run must use the same ones
    out/teacher/           the full-precision teacher: given (and scored on dev), or fine-tuned here
    out/<stage>/           one Trainer run per stage: checkpoints/, best_model.safetensors, best_model/, results.json
    out/summary.json, .md  one row per finished stage, rewritten after each one

A recipe module defines its config (a :class:`RecipeConfig` subclass with the method's own fields), the function
that runs its stages on a :class:`Run`, and a :class:`Recipe` entry for ``binlab train --recipe``'s table
(:data:`binlab.methods.finetune.RECIPES`).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from binlab.checkpoint import load_pretrained, resolve_model_dir, save_pretrained
from binlab.data.glue import get_task, load_glue
from binlab.files import atomic_write_text, load_tensors
from binlab.methods.distill import REGRESSION_LOSSES, TEACHER_MODES
from binlab.model import tiny_bert
from binlab.quant.config import FFN_ACTS
from binlab.tokenizer import load_tokenizer
from binlab.train import distributed
from binlab.train.evaluation import make_evaluator, predict
from binlab.train.optim import OPTIMIZERS
from binlab.train.trainer import TrainConfig, Trainer

__all__ = ["RecipeConfig", "Recipe", "Run", "check_settings", "teacher_stage", "frozen", "stage_table", "read_summary",
           "add_train_arguments", "train_config_from_args", "recipe_kwargs_from_args", "command_line"]


@dataclass
class RecipeConfig:
    """What every recipe needs; a recipe's config subclasses it with the method's own fields.

    Attributes:
        task: GLUE task name (``sst2``, ``stsb``, ...).
        out: the run's folder; one subfolder per stage.
        train: the :class:`~binlab.train.trainer.TrainConfig` of every stage: batch size, lengths, schedule,
            evaluation and checkpoint intervals, seed, step cap. Its ``lr`` and ``epochs`` are the teacher's
            (when one is fine-tuned here); each distillation stage replaces them with its own.
        teacher: a full-precision HF-format directory (what ``binlab train`` writes as ``best_model/``, or the run
            folder around it); None fine-tunes one first from ``model``.
        model: where a teacher fine-tuned here starts: an HF directory or hub id, None for the bundled MiniLM,
            ``"tiny"`` for a 2-layer random BERT (tests, fast mode). Ignored when ``teacher`` is given.
        glue_dir, source, max_train, max_eval, on_bad_row: the data (:func:`binlab.data.glue.load_glue`).
    """

    task: str
    out: str
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: str | None = None
    model: str | None = None
    glue_dir: str | None = None
    source: str = "auto"
    max_train: int | None = None
    max_eval: int | None = None
    on_bad_row: str = "error"

    def __post_init__(self):
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"{type(self).__name__}.train must be a TrainConfig, got {type(self.train).__name__}")

    def settings(self) -> dict:
        """What must stay the same for ``resume`` to continue a run (everything but the progress bar)."""
        d = asdict(self)
        d["train"].pop("progress")
        return d


@dataclass(frozen=True)
class Recipe:
    """One line of ``binlab train --recipe``'s table: how to add its options and how to run it from them."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run_from_args: Callable[[argparse.Namespace], int]


class Run:
    """What every stage of one recipe run shares: data, tokenizer, evaluator, the output folder and the summary."""

    def __init__(self, recipe: str, cfg: RecipeConfig, resume: bool, command: str | None):
        self.recipe, self.cfg, self.resume, self.command = recipe, cfg, resume, command
        self.out = Path(cfg.out)
        self.task = get_task(cfg.task)
        self.num_labels = self.task.num_labels
        data = dict(glue_dir=cfg.glue_dir, source=cfg.source, on_bad_row=cfg.on_bad_row)
        self.train = load_glue(self.task, "train", max_examples=cfg.max_train, **data)
        self.dev = load_glue(self.task, "dev", max_examples=cfg.max_eval, **data)
        self.tokenizer = None  # set once the teacher's directory is known
        self.encode: Callable | None = None
        self.evaluate: Callable | None = None
        self.rows: list[dict] = []
        self.teacher_dir: Path | None = None
        self.summary_fields: dict = {}  # the recipe's own entries of summary.json
        self.markdown: Callable[[dict], str] = stage_table  # the recipe's summary.md

    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.encode = lambda a, b, n: tokenizer.encode_batch(a, b, max_length=n)  # noqa: E731
        self.evaluate = make_evaluator(self.task, self.encode, self.cfg.train.max_length,
                                       self.cfg.train.eval_batch_size)

    def dev_logits(self, model: nn.Module, limit: int | None = None) -> torch.Tensor:
        """The model's logits on the dev set (its first ``limit`` examples), in eval mode, in the model's dtype."""
        model.eval()
        return predict(model, self.dev, self.encode, self.cfg.train.max_length, self.cfg.train.eval_batch_size,
                       limit)

    def train_stage(self, name: str, model: nn.Module, loss_fn: Callable | None, lr: float, epochs: float,
                    info: dict) -> dict:
        """Train ``model`` in ``out/name`` (or reuse a finished stage); leave the best dev weights in ``model``."""
        folder = self.out / name
        done = folder / "results.json"
        if self.resume and done.is_file() and (folder / "best_model.safetensors").is_file():
            print(f"[{name}] finished earlier: reusing {folder}", flush=True)
            model.load_state_dict(load_tensors(folder / "best_model.safetensors"))
            return json.loads(done.read_text())
        print(f"[{name}] {info.get('init', '')}; lr {lr:g}, {epochs:g} epochs", flush=True)
        run_info = {"recipe": self.recipe, "stage": name, "command": self.command, "task": self.task.name,
                    "quant": model.config.quant.label, "quant_config": model.config.quant.to_dict(),
                    "data_source": self.train.source, "synthetic": self.train.synthetic,
                    "n_train": len(self.train), "n_dev": len(self.dev), **info}
        trainer = Trainer(model, self.train, self.dev, self.encode, self.evaluate, folder,
                          replace(self.cfg.train, lr=lr, epochs=epochs), loss_fn=loss_fn,
                          num_labels=self.num_labels, run_info=run_info)
        results = trainer.fit(resume=self.resume)
        model.load_state_dict(load_tensors(folder / "best_model.safetensors"))  # the best dev checkpoint
        model.eval()
        if distributed.is_main():
            save_pretrained(model, folder / "best_model", tokenizer=self.tokenizer)
        distributed.barrier()  # the next stage loads it in every process
        return results

    def add_row(self, stage: str, results: dict, model: nn.Module | None, **extra) -> None:
        best = results.get("best", {})
        final = results.get("final", {})
        row = {"stage": stage, "model": model.config.quant.label if model is not None else results.get("quant", ""),
               "init": results.get("init", ""), "loss": results.get("loss", ""),
               "lr": results.get("config", {}).get("lr"), "steps": results.get("steps", 0),
               "dev": best.get("score"), "final_dev": final.get("score"),
               "metric": self.task.selection_metric,
               "final_train_loss": results.get("final_train_loss"), "wall_time_s": results.get("wall_time_s", 0.0),
               "folder": str(self.out / stage), **extra}
        self.rows = [r for r in self.rows if r["stage"] != stage] + [row]
        self.write_summary()

    def write_summary(self) -> dict:
        summary = {"recipe": self.recipe, "task": self.task.name, **self.summary_fields,
                   "teacher": str(self.teacher_dir) if self.teacher_dir else None,
                   "data_source": self.train.source, "synthetic": self.train.synthetic,
                   "n_train": len(self.train), "n_dev": len(self.dev), "command": self.command,
                   "stages": self.rows}
        if distributed.is_main():
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1))
            atomic_write_text(self.out / "summary.md", self.markdown(summary) + "\n")
        return summary


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_settings(out: Path, cfg: RecipeConfig, resume: bool) -> None:
    """Refuse to resume ``out`` with other settings than it was started with; record them in ``recipe.json``.

    A setting that binlab gained after the run started (absent from its ``recipe.json``) is no difference as long
    as it keeps its default."""
    path = out / "recipe.json"
    if resume and path.is_file():
        old = _flat(json.loads(path.read_text()))
        new = _flat(json.loads(json.dumps(cfg.settings())))  # same JSON types as the file (tuples -> lists)
        default = _flat(json.loads(json.dumps(_default_settings(cfg))))
        added = {k for k in set(new) - set(old) if k in default and new[k] == default[k]}
        diff = sorted(k for k in (set(old) | set(new)) - added if old.get(k) != new.get(k))
        if diff:
            raise ValueError(f"{out} was started with other settings ({', '.join(diff)}: "
                             f"{ {k: old.get(k) for k in diff} } vs { {k: new.get(k) for k in diff} }); resume with "
                             "the same settings or use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        atomic_write_text(path, json.dumps(cfg.settings(), indent=1))


def _default_settings(cfg: RecipeConfig) -> dict:
    """The settings of ``cfg``'s class with every field that has a default at it (task and out kept)."""
    kw = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.default is MISSING and f.default_factory is MISSING}
    return type(cfg)(**kw).settings()


def teacher_stage(run: Run) -> nn.Module:
    """Load the given teacher (and score it on dev), or fine-tune one. Returns the teacher model."""
    cfg = run.cfg
    folder = run.out / "teacher"
    if cfg.teacher is not None:
        given = Path(cfg.teacher).expanduser()
        if not (given / "config.json").is_file() and (given / "best_model" / "config.json").is_file():
            given = given / "best_model"  # the output folder of `binlab train`: its best dev checkpoint
        teacher_dir = resolve_model_dir(given if given.is_dir() else cfg.teacher)
        teacher = load_pretrained(teacher_dir, verbose=False)
        if teacher.config.num_labels != run.num_labels:
            raise ValueError(f"the teacher {teacher_dir} has {teacher.config.num_labels} outputs, but "
                             f"{run.task.name} needs {run.num_labels}: was it fine-tuned on another task?")
        run.teacher_dir = teacher_dir
        run.set_tokenizer(load_tokenizer(teacher_dir))
        t0 = time.perf_counter()
        teacher.eval()
        with torch.no_grad():
            score, metrics = run.evaluate(teacher, run.dev)
        results = {"recipe": run.recipe, "stage": "teacher", "init": f"given: {teacher_dir}", "loss": "-",
                   "quant": teacher.config.quant.label, "steps": 0, "best": {"score": score, **metrics},
                   "final": {"score": score, **metrics}, "wall_time_s": round(time.perf_counter() - t0, 1)}
        folder.mkdir(parents=True, exist_ok=True)
        if distributed.is_main():
            atomic_write_text(folder / "results.json", json.dumps(results, indent=1))
        run.add_row("teacher", results, teacher)
        return teacher

    if cfg.model == "tiny":
        teacher = tiny_bert(run.num_labels, seed=cfg.train.seed)
        run.set_tokenizer(load_tokenizer(None))
        start = "a tiny random BERT (2 layers, hidden 64)"
    else:
        teacher = load_pretrained(cfg.model, num_labels=run.num_labels, quant="fp", verbose=False)
        run.set_tokenizer(load_tokenizer(resolve_model_dir(cfg.model)))
        start = cfg.model or "all-MiniLM-L6-v2 (bundled)"
    info = {"init": f"fine-tuned from {start}", "loss": "CE" if run.num_labels > 1 else "MSE"}
    results = run.train_stage("teacher", teacher, None, cfg.train.lr, cfg.train.epochs, info)
    run.teacher_dir = folder / "best_model"
    if not (run.teacher_dir / "config.json").is_file():  # resumed from an older layout: write it now
        if distributed.is_main():
            save_pretrained(teacher, run.teacher_dir, tokenizer=run.tokenizer)
        distributed.barrier()
    run.add_row("teacher", {**results, **info}, teacher)
    return teacher


def frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter's ``requires_grad`` off (a teacher)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------------------
# reading a run back


def read_summary(out: str | Path) -> dict:
    """``out/summary.json`` of a recipe run."""
    path = Path(out) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no summary.json in {out}: not a recipe run (or not started)")
    return json.loads(path.read_text())


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def stage_table(summary: dict) -> str:
    """The stages of a summary as a markdown table, one row per stage."""
    lines = ["| stage | model | initialised from | loss | lr | steps | best dev | final dev | wall s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in summary["stages"]:
        lines.append(f"| {r['stage']} | {r['model']} | {r['init']} | {r['loss']} | {_fmt(r['lr'], 'g')} | "
                     f"{r['steps']} | {_fmt(r['dev'], '.4f')} | {_fmt(r['final_dev'], '.4f')} | "
                     f"{_fmt(r['wall_time_s'], '.1f')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# the command line every recipe shares (``binlab train``; the table of recipes is binlab.methods.finetune's)

#: TrainConfig fields that ``binlab train`` sets, with their help; the defaults are TrainConfig's own.
TRAIN_FLAGS = {
    "lr": "learning rate (a recipe: the teacher's, when it fine-tunes one)",
    "epochs": "epochs (a recipe: the teacher's, when it fine-tunes one)",
    "batch_size": "training batch size",
    "max_length": "tokens per example (longer ones are truncated)",
    "optimizer": "adamw; adamw_fused (the same update in one fused kernel: faster, equal to rounding); or bertadam: "
                 "the papers' Adam (no bias correction, per-tensor clipping), methods.md §1",
    "warmup": "share of the steps with a linear warm-up",
    "weight_decay": "decoupled weight decay",
    "clip_lr": "learning rate of learned quantizer scales",
    "eval_every": "evaluate on dev every N steps (0: each epoch)",
    "save_every": "checkpoint every N steps",
    "max_steps": "stop every stage after N steps (0: no cap)",
    "seed": "random seed (data order, initialisation, dropout)",
    "group_by_length": "batches of similar length (less padding, faster steps; another data order)",
    "dropout": "both dropout probabilities of every model trained (0: none, for equality checks; unset: the "
               "model's own)",
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``binlab train`` that plain fine-tuning and every recipe share."""
    p.add_argument("--task", required=True, help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli")
    p.add_argument("--glue-dir", default=None, help="GLUE folder in the original TSV layout (or env BINLAB_GLUE_DIR)")
    p.add_argument("--source", default="auto", choices=["auto", "local", "hub", "synthetic"],
                   help="where the data comes from (auto: --glue-dir / BINLAB_GLUE_DIR, else synthetic)")
    p.add_argument("--on-bad-row", default="error", choices=["error", "skip"],
                   help="a malformed row of a local TSV file: stop with its line number, or skip it with a warning")
    p.add_argument("--model", default=None,
                   help="HF-format checkpoint dir or hub id (default: the bundled all-MiniLM-L6-v2); "
                        "'tiny' = a small random BERT for tests")
    p.add_argument("--teacher", default=None, help="a recipe's full-precision HF-format teacher dir (e.g. "
                   "runs/sst2-fp/best_model); default: fine-tune one from --model with --lr / --epochs")
    p.add_argument("--out", required=True, help="output folder (checkpoints, best model, results.json)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in TRAIN_FLAGS:
            default = getattr(defaults, f.name)
            kw = (dict(choices=list(OPTIMIZERS)) if f.name == "optimizer" else
                  dict(action="store_true") if isinstance(default, bool) else
                  dict(type=float) if default is None else dict(type=type(default)))
            p.add_argument("--" + f.name.replace("_", "-"), default=default, help=f"{TRAIN_FLAGS[f.name]} "
                           f"(default: {default})", **kw)
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--max-eval", type=int, default=None, help="use only the first N dev examples")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("distillation (the recipes that distil a student from a teacher)")
    g.add_argument("--kd-epochs", type=float, default=2.0, help="epochs of each distillation stage (default: 2)")
    g.add_argument("--kd-lr", type=float, default=1e-4, help="learning rate of each distillation stage of bit and "
                   "bibert (binarybert has --ternary-lr / --binary-lr) (default: 1e-4)")
    g.add_argument("--regression-loss", default="mse", choices=REGRESSION_LOSSES,
                   help="the logit loss on one logit (STS-B): mse, or the authors' soft_ce (identically 0)")
    g.add_argument("--teacher-mode", default=None, choices=TEACHER_MODES,
                   help="the teacher's dropout while it produces targets: train (the authors' BinaryBERT and BiT "
                        "code) or eval (default: the recipe's)")
    g.add_argument("--ffn-act", default=None, choices=FFN_ACTS, help="the student's FFN activation "
                   "(default: the method's; ReLU in place of a backbone's GELU can cost most of its accuracy)")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that ``binlab train``'s options describe."""
    return TrainConfig(**{name: getattr(args, name) for name in TRAIN_FLAGS}, progress=not args.no_progress)


def recipe_kwargs_from_args(args: argparse.Namespace, quant_flag: str | None = None) -> dict:
    """The :class:`RecipeConfig` fields that ``binlab train``'s shared options describe. ``quant_flag``: the
    recipe's own option for its quantization (``"--chain"``): then a ``--quant`` other than fp is refused."""
    if quant_flag and getattr(args, "quant", "fp") != "fp":
        raise ValueError(f"--recipe {args.recipe} chooses its own quantization ({quant_flag}); drop --quant")
    return dict(task=args.task, out=args.out, train=train_config_from_args(args), teacher=args.teacher,
                model=args.model, glue_dir=args.glue_dir, source=args.source, max_train=args.max_train,
                max_eval=args.max_eval, on_bad_row=args.on_bad_row)


def command_line() -> str | None:
    """``binlab train ...`` as typed (recorded in every result), or None outside the command line."""
    if sys.argv[1:2] != ["train"]:
        return None
    return "binlab train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
