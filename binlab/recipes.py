"""Training recipes that chain several runs: BinaryBERT's ternary -> split -> binary pipeline.

``binlab train --recipe binarybert --task sst2 --act-bits 8 --teacher runs/sst2-fp/best_model --out runs/sst2-bb``
runs BinaryBERT (Bai et al., ACL 2021; methods.md §2.1, §2.6, §2.7) as a chain of stages, each in its own
subfolder of ``--out``::

    teacher/         the full-precision teacher: the given HF-format directory (evaluated on dev), or one
                     fine-tuned here from --model (plain cross-entropy / MSE)
    ternary_stage1/  ternary student (TWN weights; activations per --act-bits) initialised from the teacher's
                     weights, KD stage 1: sum_l MSE(attention scores) + sum_l MSE(hidden states), lr 2.5 x
    ternary_stage2/  the best stage-1 checkpoint, KD stage 2: soft CE on the logits (MSE for regression), lr 1 x
    split/           ternary weight splitting of the best stage-2 model (binlab.splitting.split_ternary_model):
                     evaluated right away, it scores what the ternary model scored
    binary_stage1/   the split binary model (BWN halves), KD stage 1 again, at the binary learning rate x 2.5
    binary_stage2/   its best stage-1 checkpoint, KD stage 2

With ``split=False`` (``--no-split``) the baseline spends the same distillation budget on a binary model
trained directly from the teacher's weights: ``direct_stage1`` and ``direct_stage2`` take the place of the two
ternary stages (same epochs, same learning rates, same losses, but BWN weights instead of TWN), there is no
split, and ``binary_stage1`` / ``binary_stage2`` follow as above. The only difference between the two runs is
ternary-then-split versus binary from the start.

The student has the teacher's architecture (the attention-score MSE needs equal head counts); BinaryBERT's
half-width start (DynaBERT width 0.5, :func:`binlab.splitting.prune_width`) is not part of this recipe.

Activations (``act_bits``), per methods.md §2.3::

    8   8-bit uniform (dynamic max-abs, learned PACT clip), GELU         ternary "w2a8" -> binary = "w1a8"
    4   4-bit LSQ, ReLU in the FFN                                        binary = "w1a4"
    1   1-bit elastic (BiT's alpha * sign / {0, alpha}), ReLU, softmax01  (BinaryBERT has no 1-bit setting of
        its own; BiBERT's re-run of it at 1 bit is not described: binlab uses BiT's activation binarizer)

``ffn_act`` (``--ffn-act``) overrides the FFN activation of the setting, e.g. GELU at 4 bits for a backbone
that does not survive the switch to ReLU.

Every Trainer stage keeps its ``checkpoints/`` (``resume=True`` continues an interrupted stage and skips the
finished ones, whose ``results.json`` exists), its ``best_model.safetensors`` and a Hugging Face format
``best_model/``, and its ``results.json``. ``summary.json`` and ``summary.md`` at the top of ``--out`` list
every stage (rewritten after each one); ``recipe.json`` holds the settings, and a resumed run must use the
same ones. A split model's directory reloads with :func:`load_stage_model` (it needs
:func:`binlab.splitting.build_split_model`, not ``load_pretrained``).
"""

from __future__ import annotations

import copy
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from binlab.qconfig import FFN_ACTS, QuantConfig

if TYPE_CHECKING:  # torch is imported where it is used: `binlab grade` builds this parser without it
    import torch
    from torch import nn

__all__ = [
    "ACT_BITS", "STAGE1_LR_FACTOR", "BinaryBertConfig", "ternary_quant", "binary_quant", "stage_names",
    "run_binarybert", "load_stage_model", "read_summary", "summary_markdown", "run_from_args",
]

#: Activation bit-widths the recipe knows (methods.md §2.3); see the module docstring.
ACT_BITS = (8, 4, 1)
#: BinaryBERT's stage 1 runs at 2.5 x the learning rate (``kd_learner_glue.py``, methods.md §2.6).
STAGE1_LR_FACTOR = 2.5
REGRESSION_LOSSES = ("mse", "soft_ce")


# ----------------------------------------------------------------------------------------------------------
# settings


@dataclass
class BinaryBertConfig:
    """Everything a BinaryBERT run needs. The defaults are the released scripts' (methods.md §2.7), except the
    optimizer (``"adamw"``; ``"bertadam"`` is the papers') and the evaluation interval.

    Attributes:
        task: GLUE task name (``sst2``, ``stsb``, ...).
        out: the run's folder; one subfolder per stage.
        act_bits: 8, 4 or 1 (:data:`ACT_BITS`).
        split: True for BinaryBERT (ternary -> split -> binary), False for the direct-binary baseline.
        teacher: a full-precision HF-format directory (what ``binlab train`` writes as ``best_model/``); None
            fine-tunes one first from ``model``.
        model: where a teacher fine-tuned here starts: an HF directory or hub id, None for the bundled MiniLM,
            ``"tiny"`` for a 2-layer random BERT (tests, fast mode). Ignored when ``teacher`` is given.
        ternary_lr, binary_lr: the learning rate of stage 2 of each phase; stage 1 uses
            :data:`STAGE1_LR_FACTOR` times it. In the no-split baseline, the first phase (direct_*) uses
            ``ternary_lr``.
        kd_epochs: epochs of each distillation stage (the scripts: 2 per stage, so 2 + 2 per phase).
        teacher_lr, teacher_epochs: fine-tuning the teacher, when none is given.
        regression_loss: stage 2 on one logit (STS-B): ``"mse"`` (binlab's default) or ``"soft_ce"`` (the
            authors' loss, identically zero for one logit; methods.md §1).
        teacher_mode: ``"train"`` (dropout on in the teacher, as BinaryBERT's code) or ``"eval"``; None = the
            method's default.
        max_steps: cap on the steps of each stage (0: none).
        ffn_act: the student's FFN activation, ``"gelu"`` or ``"relu"``; None = the paper's for ``act_bits``
            (GELU at 8 bits, ReLU at 4 and 1). A backbone pre-trained with GELU can lose most of its accuracy
            when ReLU replaces it (docs/results.md: the MiniLM STS-B teacher, 86.4 -> 15.8 before any training).
    """

    task: str
    out: str
    act_bits: int = 8
    split: bool = True
    teacher: str | None = None
    model: str | None = None
    glue_dir: str | None = None
    source: str = "auto"
    max_train: int | None = None
    max_eval: int | None = None
    ternary_lr: float = 1e-5
    binary_lr: float = 5e-5
    kd_epochs: float = 2.0
    teacher_lr: float = 5e-5
    teacher_epochs: float = 3.0
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 128
    optimizer: str = "adamw"
    warmup: float = 0.1
    weight_decay: float = 0.01
    clip_lr: float = 1e-4
    eval_every: int = 100
    save_every: int = 200
    max_steps: int = 0
    seed: int = 42
    regression_loss: str = "mse"
    teacher_mode: str | None = None
    ffn_act: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.act_bits not in ACT_BITS:
            raise ValueError(f"BinaryBERT recipe: act_bits must be one of {ACT_BITS}, got {self.act_bits!r}")
        if self.ffn_act is not None and self.ffn_act not in FFN_ACTS:
            raise ValueError(f"BinaryBertConfig.ffn_act must be None or one of {FFN_ACTS}, got {self.ffn_act!r}")
        if self.regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES}, got {self.regression_loss!r}")
        for name in ("ternary_lr", "binary_lr", "kd_epochs", "teacher_lr", "teacher_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"BinaryBertConfig.{name} must be positive, got {getattr(self, name)!r}")

    def settings(self) -> dict:
        """What must stay the same for ``resume`` to continue a run (everything but ``progress``)."""
        d = asdict(self)
        d.pop("progress")
        return d


def ternary_quant(act_bits: int, ffn_act: str | None = None) -> QuantConfig:
    """The ternary student's QuantConfig: TWN weights (per tensor; word embedding per row) and the activation
    setting of ``act_bits`` (module docstring). 8 bits is the ``"w2a8"`` preset. ``ffn_act`` replaces the
    setting's FFN activation (None keeps it)."""
    w2a8 = QuantConfig.preset("w2a8")
    if act_bits == 8:
        quant = w2a8
    elif act_bits == 4:
        quant = replace(w2a8, act_bits=4, act_method="lsq", ffn_act="relu")
    elif act_bits == 1:
        quant = replace(w2a8, act_bits=1, act_method="elastic", attention="softmax01", ffn_act="relu")
    else:
        raise ValueError(f"BinaryBERT recipe: act_bits must be one of {ACT_BITS}, got {act_bits!r}")
    return quant if ffn_act is None else replace(quant, ffn_act=ffn_act)


def binary_quant(act_bits: int, ffn_act: str | None = None) -> QuantConfig:
    """The binary model's QuantConfig: BWN weights, the same activations as :func:`ternary_quant` (what
    :func:`binlab.splitting.binary_quant_config` makes of the ternary one). 8 bits: ``"w1a8"``; 4: ``"w1a4"``."""
    from binlab.splitting import binary_quant_config

    return binary_quant_config(ternary_quant(act_bits, ffn_act))


def stage_names(split: bool = True) -> list[str]:
    """The stages of a run in order (each one a subfolder of ``out``)."""
    phase1 = ["ternary_stage1", "ternary_stage2", "split"] if split else ["direct_stage1", "direct_stage2"]
    return ["teacher", *phase1, "binary_stage1", "binary_stage2"]


# ----------------------------------------------------------------------------------------------------------
# the run


class _Run:
    """What every stage shares: data, tokenizer, evaluator, the output folder and the summary."""

    def __init__(self, cfg: BinaryBertConfig, resume: bool, command: str | None):
        from binlab.glue import get_task, load_glue
        from binlab.train_cli import make_evaluator

        self.cfg, self.resume, self.command = cfg, resume, command
        self.out = Path(cfg.out)
        self.task = get_task(cfg.task)
        self.num_labels = self.task.num_labels
        self.train = load_glue(self.task, "train", glue_dir=cfg.glue_dir, source=cfg.source, max_examples=cfg.max_train)
        self.dev = load_glue(self.task, "dev", glue_dir=cfg.glue_dir, source=cfg.source, max_examples=cfg.max_eval)
        self.tokenizer = None  # set once the teacher's directory is known
        self.encode: Callable | None = None
        self.evaluate: Callable | None = None
        self._make_evaluator = make_evaluator
        self.rows: list[dict] = []
        self.teacher_dir: Path | None = None

    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.encode = lambda a, b, n: tokenizer.encode_batch(a, b, max_length=n)  # noqa: E731
        self.evaluate = self._make_evaluator(self.task, self.encode, self.cfg.max_length, self.cfg.eval_batch_size)

    def train_config(self, lr: float, epochs: float):
        from binlab.trainer import TrainConfig

        c = self.cfg
        return TrainConfig(lr=lr, epochs=epochs, batch_size=c.batch_size, eval_batch_size=c.eval_batch_size,
                           max_length=c.max_length, warmup=c.warmup, weight_decay=c.weight_decay, clip_lr=c.clip_lr,
                           optimizer=c.optimizer, eval_every=c.eval_every, save_every=c.save_every, seed=c.seed,
                           max_steps=c.max_steps, progress=c.progress)

    # -- one Trainer stage
    def train_stage(self, name: str, model: nn.Module, loss_fn: Callable | None, lr: float, epochs: float,
                    info: dict) -> dict:
        """Train ``model`` in ``out/name`` (or reuse a finished stage); leave the best dev weights in ``model``."""
        from binlab.checkpoint import save_pretrained
        from binlab.trainer import Trainer, load_tensors

        folder = self.out / name
        done = folder / "results.json"
        if self.resume and done.is_file() and (folder / "best_model.safetensors").is_file():
            print(f"[{name}] finished earlier: reusing {folder}", flush=True)
            model.load_state_dict(load_tensors(folder / "best_model.safetensors"))
            return json.loads(done.read_text())
        print(f"[{name}] {info.get('init', '')}; lr {lr:g}, {epochs:g} epochs", flush=True)
        run_info = {"recipe": "binarybert", "stage": name, "command": self.command, "task": self.task.name,
                    "quant": model.config.quant.label, "quant_config": model.config.quant.to_dict(),
                    "data_source": self.train.source, "synthetic": self.train.synthetic,
                    "n_train": len(self.train), "n_dev": len(self.dev), **info}
        trainer = Trainer(model, self.train, self.dev, self.encode, self.evaluate, folder,
                          self.train_config(lr, epochs), loss_fn=loss_fn, num_labels=self.num_labels,
                          run_info=run_info)
        results = trainer.fit(resume=self.resume)
        model.load_state_dict(load_tensors(folder / "best_model.safetensors"))  # the best dev checkpoint
        model.eval()
        save_pretrained(model, folder / "best_model", tokenizer=self.tokenizer)
        return results

    # -- the summary
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
        from binlab.trainer import atomic_write_text

        summary = {"recipe": "binarybert", "task": self.task.name, "act_bits": self.cfg.act_bits,
                   "split": self.cfg.split, "teacher": str(self.teacher_dir) if self.teacher_dir else None,
                   "data_source": self.train.source, "synthetic": self.train.synthetic,
                   "n_train": len(self.train), "n_dev": len(self.dev), "command": self.command,
                   "stages": self.rows}
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1))
        atomic_write_text(self.out / "summary.md", summary_markdown(summary) + "\n")
        return summary


def _check_settings(out: Path, cfg: BinaryBertConfig, resume: bool) -> None:
    from binlab.trainer import atomic_write_text

    path = out / "recipe.json"
    if resume and path.is_file():
        old = json.loads(path.read_text())
        new = json.loads(json.dumps(cfg.settings()))  # same JSON types as the file (tuples -> lists)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise ValueError(f"{out} was started with other settings ({', '.join(diff)}: "
                             f"{ {k: old.get(k) for k in diff} } vs { {k: new.get(k) for k in diff} }); resume with "
                             "the same settings or use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cfg.settings(), indent=1))


def _dev_logits(run: _Run, model: nn.Module, limit: int | None = None) -> torch.Tensor:
    """The model's logits on the dev set (its first ``limit`` examples), in the model's dtype."""
    import torch

    out = []
    n = len(run.dev) if limit is None else min(limit, len(run.dev))
    model.eval()
    with torch.no_grad():
        for start in range(0, n, run.cfg.eval_batch_size):
            stop = min(start + run.cfg.eval_batch_size, n)
            a = run.dev.texts_a[start:stop]
            b = run.dev.texts_b[start:stop] if run.dev.texts_b is not None else None
            batch = run.encode(a, b, run.cfg.max_length)
            out.append(model(batch["input_ids"], attention_mask=batch["attention_mask"],
                             token_type_ids=batch["token_type_ids"]).logits)
    return torch.cat(out)


def _teacher_stage(run: _Run):
    """Load the given teacher (and score it on dev), or fine-tune one. Returns the teacher model."""
    from binlab.checkpoint import load_pretrained, resolve_model_dir, save_pretrained
    from binlab.tokenizer import load_tokenizer
    import torch

    from binlab.trainer import atomic_write_text

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
        results = {"recipe": "binarybert", "stage": "teacher", "init": f"given: {teacher_dir}", "loss": "-",
                   "quant": teacher.config.quant.label, "steps": 0, "best": {"score": score, **metrics},
                   "final": {"score": score, **metrics}, "wall_time_s": round(time.perf_counter() - t0, 1)}
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "results.json", json.dumps(results, indent=1))
        run.add_row("teacher", results, teacher)
        return teacher

    from binlab.train_cli import tiny_model

    if cfg.model == "tiny":
        teacher = tiny_model(run.num_labels, QuantConfig(), cfg.seed)
        run.set_tokenizer(load_tokenizer(None))
        start = "a tiny random BERT (2 layers, hidden 64)"
    else:
        teacher = load_pretrained(cfg.model, num_labels=run.num_labels, quant="fp", verbose=False)
        run.set_tokenizer(load_tokenizer(resolve_model_dir(cfg.model)))
        start = cfg.model or "all-MiniLM-L6-v2 (bundled)"
    info = {"init": f"fine-tuned from {start}", "loss": "CE" if run.num_labels > 1 else "MSE"}
    results = run.train_stage("teacher", teacher, None, cfg.teacher_lr, cfg.teacher_epochs, info)
    run.teacher_dir = folder / "best_model"
    if not (run.teacher_dir / "config.json").is_file():  # resumed from an older layout: write it now
        save_pretrained(teacher, run.teacher_dir, tokenizer=run.tokenizer)
    run.add_row("teacher", {**results, **info}, teacher)
    return teacher


def _kd_pair(run: _Run, teacher: nn.Module, model: nn.Module, prefix: str, lr: float, init: str) -> dict:
    """KD stage 1 (attention + hidden MSE, lr x 2.5) then stage 2 from its best checkpoint (logits, lr)."""
    from binlab.distill import make_kd_loss

    cfg = run.cfg
    stage1 = make_kd_loss("binarybert_stage1", teacher, run.num_labels, cfg.teacher_mode)
    stage2 = make_kd_loss("binarybert_stage2", teacher, run.num_labels, cfg.teacher_mode,
                          regression_loss=cfg.regression_loss)
    pred = "soft CE(logits)" if run.num_labels > 1 or cfg.regression_loss == "soft_ce" else "MSE(logits)"
    info1 = {"init": init, "loss": "KD 1: MSE(attention scores) + MSE(hidden states)",
             "teacher_dir": str(run.teacher_dir)}
    r1 = run.train_stage(f"{prefix}_stage1", model, stage1, STAGE1_LR_FACTOR * lr, cfg.kd_epochs, info1)
    run.add_row(f"{prefix}_stage1", {**r1, **info1}, model)
    info2 = {"init": f"best {prefix}_stage1", "loss": f"KD 2: {pred}", "teacher_dir": str(run.teacher_dir)}
    r2 = run.train_stage(f"{prefix}_stage2", model, stage2, lr, cfg.kd_epochs, info2)
    run.add_row(f"{prefix}_stage2", {**r2, **info2}, model)
    return r2


def _split_stage(run: _Run, ternary: nn.Module, ternary_results: dict) -> nn.Module:
    """Split the best ternary model, score it on dev at once, save it. Returns the split binary model."""
    import torch

    from binlab.checkpoint import save_pretrained
    from binlab.splitting import split_ternary_model
    from binlab.trainer import atomic_write_text

    t0 = time.perf_counter()
    ternary.eval()
    split = split_ternary_model(ternary).eval()
    with torch.no_grad():
        score, metrics = run.evaluate(split, run.dev)
        t_score, t_metrics = run.evaluate(ternary, run.dev)
        lt, ls = _dev_logits(run, ternary), _dev_logits(run, split)
        # the same split done in float64, on the first dev examples: exact to ~1e-15. In float32 the two halves'
        # sum rounds differently from the one product, and once in a while that moves an activation of the next
        # layer across a rounding boundary of its quantizer (binlab.splitting's docstring).
        n64 = min(256, len(run.dev))
        ternary64 = copy.deepcopy(ternary).double()
        d64 = float((_dev_logits(run, ternary64, n64)
                     - _dev_logits(run, split_ternary_model(ternary64), n64)).abs().max())
    diff = float((lt - ls).abs().max())
    same_preds = bool(torch.equal(lt.argmax(-1), ls.argmax(-1))) if run.num_labels > 1 else None
    results = {"recipe": "binarybert", "stage": "split", "init": "ternary weight splitting of best ternary_stage2",
               "loss": "-", "quant": split.config.quant.label, "steps": 0,
               "best": {"score": score, **metrics}, "final": {"score": score, **metrics},
               "ternary_dev": {"score": t_score, **t_metrics},
               "ternary_stage2_best_score": ternary_results.get("best", {}).get("score"),
               "max_abs_logit_diff": diff, "same_predictions": same_preds,
               "max_abs_logit_diff_float64": d64, "float64_examples": n64,
               "wall_time_s": round(time.perf_counter() - t0, 1)}
    folder = run.out / "split"
    save_pretrained(split, folder / "best_model", tokenizer=run.tokenizer)
    atomic_write_text(folder / "results.json", json.dumps(results, indent=1))
    run.add_row("split", results, split, max_abs_logit_diff=diff)
    print(f"[split] dev {score:.4f} (ternary {t_score:.4f}); max |logit difference| {diff:.2e} "
          f"({d64:.1e} in float64)", flush=True)
    return split


def run_binarybert(cfg: BinaryBertConfig, resume: bool = False, command: str | None = None) -> dict:
    """Run every stage of :class:`BinaryBertConfig` (module docstring); returns the summary dict.

    ``resume``: skip the stages that finished (their ``results.json`` exists), continue an interrupted one
    from its newest checkpoint. ``command``: recorded in the results (the CLI passes its command line).
    """
    from binlab.checkpoint import load_pretrained

    out = Path(cfg.out)
    _check_settings(out, cfg, resume)
    run = _Run(cfg, resume, command)
    print(f"data: {run.train.describe()}\n      {run.dev.describe()}", flush=True)

    teacher = _teacher_stage(run)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    if cfg.split:
        student = load_pretrained(run.teacher_dir, quant=ternary_quant(cfg.act_bits, cfg.ffn_act), verbose=False)
        r2 = _kd_pair(run, teacher, student, "ternary", cfg.ternary_lr, "the teacher's weights, ternary (TWN)")
        binary = _split_stage(run, student, r2)
        init = "the split model"
    else:
        binary = load_pretrained(run.teacher_dir, quant=binary_quant(cfg.act_bits, cfg.ffn_act), verbose=False)
        _kd_pair(run, teacher, binary, "direct", cfg.ternary_lr, "the teacher's weights, binary (BWN)")
        init = "best direct_stage2"
    _kd_pair(run, teacher, binary, "binary", cfg.binary_lr, init)
    summary = run.write_summary()
    print(summary_markdown(summary), flush=True)
    return summary


# ----------------------------------------------------------------------------------------------------------
# reading a run back


def load_stage_model(out: str | Path, stage: str) -> nn.Module:
    """The best model of one stage of a finished run (``out/stage/best_model``), split models included."""
    from binlab.checkpoint import hf_to_binlab_key, load_config, load_pretrained
    from binlab.checkpoint import load_state_dict as read_state
    from binlab.splitting import build_split_model

    folder = Path(out) / stage / "best_model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no model at {folder}: has stage {stage!r} of the run in {out} finished?")
    state = read_state(folder)
    if not any(".dense_1." in k or ".embedding_1." in k for k in state):
        return load_pretrained(folder, verbose=False).eval()
    model = build_split_model(load_config(folder))
    model.load_state_dict({hf_to_binlab_key(k): v for k, v in state.items()}, strict=True)
    return model.eval()


def read_summary(out: str | Path) -> dict:
    """``out/summary.json`` of a run."""
    path = Path(out) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no summary.json in {out}: not a BinaryBERT recipe run (or not started)")
    return json.loads(path.read_text())


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def summary_markdown(summary: dict) -> str:
    """The summary as a markdown table, one row per stage."""
    head = (f"BinaryBERT recipe on {summary['task']} ({'split' if summary['split'] else 'no split: direct binary'}, "
            f"{summary['act_bits']}-bit activations; {summary['n_train']} train / {summary['n_dev']} dev examples"
            f"{', SYNTHETIC data' if summary.get('synthetic') else ''})")
    lines = [head, "", "| stage | model | initialised from | loss | lr | steps | best dev | final dev | wall s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in summary["stages"]:
        lines.append(f"| {r['stage']} | {r['model']} | {r['init']} | {r['loss']} | {_fmt(r['lr'], 'g')} | "
                     f"{r['steps']} | {_fmt(r['dev'], '.4f')} | {_fmt(r['final_dev'], '.4f')} | "
                     f"{_fmt(r['wall_time_s'], '.1f')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# the command line (binlab train --recipe binarybert)


def add_arguments(p) -> None:
    """The recipe's options of ``binlab train`` (the shared ones are train_cli's)."""
    g = p.add_argument_group("--recipe binarybert (ternary -> split -> binary, two-stage distillation)")
    g.add_argument("--act-bits", type=int, default=8, choices=ACT_BITS, help="activation bits of the student")
    g.add_argument("--teacher", default=None, help="full-precision HF-format teacher dir (e.g. runs/sst2-fp/"
                   "best_model); default: fine-tune one from --model with --lr / --epochs")
    g.add_argument("--no-split", action="store_true", help="baseline: a binary model distilled directly "
                   "from the teacher with the same budget, no ternary phase")
    g.add_argument("--ternary-lr", type=float, default=1e-5, help="stage-2 lr of the ternary phase (stage 1: x2.5)")
    g.add_argument("--binary-lr", type=float, default=5e-5, help="stage-2 lr of the binary phase (stage 1: x2.5)")
    g.add_argument("--kd-epochs", type=float, default=2.0, help="epochs of each distillation stage")
    g.add_argument("--regression-loss", default="mse", choices=REGRESSION_LOSSES,
                   help="stage 2 on one logit (STS-B): mse, or the authors' soft_ce (identically 0)")
    g.add_argument("--ffn-act", default=None, choices=FFN_ACTS, help="the student's FFN activation "
                   "(default: the paper's, GELU at 8 activation bits, ReLU at 4 and 1)")


def run_from_args(args) -> int:
    """``binlab train --recipe binarybert ...``: the arguments of :mod:`binlab.train_cli` plus
    :func:`add_arguments`'s. ``--lr`` and ``--epochs`` are the teacher's (when none is given)."""
    if args.quant != "fp":
        raise SystemExit("--recipe binarybert chooses its own quantization (--act-bits); drop --quant")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = BinaryBertConfig(
        task=args.task, out=args.out, act_bits=args.act_bits, split=not args.no_split, teacher=args.teacher,
        model=args.model, glue_dir=args.glue_dir, source=args.source, max_train=args.max_train,
        max_eval=args.max_eval, ternary_lr=args.ternary_lr, binary_lr=args.binary_lr, kd_epochs=args.kd_epochs,
        teacher_lr=args.lr, teacher_epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
        optimizer=args.optimizer, warmup=args.warmup, weight_decay=args.weight_decay, clip_lr=args.clip_lr,
        eval_every=args.eval_every, save_every=args.save_every, max_steps=args.max_steps, seed=args.seed,
        regression_loss=args.regression_loss, ffn_act=args.ffn_act, progress=not args.no_progress)
    command = ("binlab train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
               if sys.argv[1:2] == ["train"] else None)
    run_binarybert(cfg, resume=args.resume, command=command)
    return 0
