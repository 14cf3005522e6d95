"""BinaryBERT's recipe: teacher -> ternary student -> ternary weight splitting -> binary student.

``binlab train --recipe binarybert --task sst2 --act-bits 8 --teacher runs/sst2-fp/best_model --out runs/sst2-bb``
runs BinaryBERT (Bai et al., ACL 2021; methods.md §2.1, §2.6, §2.7) as a chain of stages, each in its own
subfolder of ``--out``::

    teacher/         the full-precision teacher: the given HF-format directory (evaluated on dev), or one
                     fine-tuned here from --model (plain cross-entropy / MSE)
    ternary_stage1/  ternary student (TWN weights; activations per --act-bits) initialised from the teacher's
                     weights, KD stage 1: sum_l MSE(attention scores) + sum_l MSE(hidden states), lr 2.5 x
    ternary_stage2/  the best stage-1 checkpoint, KD stage 2: soft CE on the logits (MSE for regression), lr 1 x
    split/           ternary weight splitting of the best stage-2 model (binlab.methods.split_model.split_ternary_model):
                     evaluated right away, it scores what the ternary model scored
    binary_stage1/   the split binary model (BWN halves), KD stage 1 again, at the binary learning rate x 2.5
    binary_stage2/   its best stage-1 checkpoint, KD stage 2

With ``split=False`` (``--no-split``) the baseline spends the same distillation budget on a binary model
trained directly from the teacher's weights: ``direct_stage1`` and ``direct_stage2`` take the place of the two
ternary stages (same epochs, same learning rates, same losses, but BWN weights instead of TWN), there is no
split, and ``binary_stage1`` / ``binary_stage2`` follow as above. The only difference between the two runs is
ternary-then-split versus binary from the start.

The student has the teacher's architecture (the attention-score MSE needs equal head counts); BinaryBERT's
half-width start (DynaBERT width 0.5, :func:`binlab.methods.width.prune_width`) is not part of this recipe.

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
same ones (:mod:`binlab.methods.pipeline` does what every recipe shares). A split model's directory reloads with :func:`load_stage_model` (it needs
:func:`binlab.methods.split_model.build_split_model`, not ``load_pretrained``).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from binlab.checkpoint import load_config, load_pretrained, save_pretrained
from binlab.checkpoint import load_state_dict as read_state
from binlab.files import atomic_write_text
from binlab.methods.distill import REGRESSION_LOSSES, make_kd_loss
from binlab.methods.pipeline import (Recipe, RecipeConfig, Run, check_settings, command_line, frozen,
                                     recipe_kwargs_from_args, stage_table, teacher_stage)
from binlab.methods.split_model import binary_quant_config, is_split_state, split_model_from_state, split_ternary_model
from binlab.quant.config import FFN_ACTS, QuantConfig
from binlab.train import distributed

__all__ = [
    "ACT_BITS", "STAGE1_LR_FACTOR", "BinaryBertConfig", "ternary_quant", "binary_quant", "stage_names",
    "run_binarybert", "load_stage_model", "summary_markdown", "add_arguments", "run_from_args",
    "RECIPE",
]

#: Activation bit-widths the recipe knows (methods.md §2.3); see the module docstring.
ACT_BITS = (8, 4, 1)
#: BinaryBERT's stage 1 runs at 2.5 x the learning rate (``kd_learner_glue.py``, methods.md §2.6).
STAGE1_LR_FACTOR = 2.5

#: act_bits -> how the ternary student's activations differ from the "w2a8" preset (the module docstring)
_ACTIVATIONS = {
    8: {},
    4: dict(act_bits=4, act_method="lsq", ffn_act="relu"),
    1: dict(act_bits=1, act_method="elastic", attention="softmax01", ffn_act="relu"),
}


# ----------------------------------------------------------------------------------------------------------
# settings


@dataclass
class BinaryBertConfig(RecipeConfig):
    """Everything a BinaryBERT run needs: the shared :class:`~binlab.methods.pipeline.RecipeConfig` (task, out, the
    :class:`~binlab.train.trainer.TrainConfig` of every stage, teacher, data) and the method's own fields. The
    defaults are the released scripts' (methods.md §2.7), except the optimizer (``"adamw"``; ``"bertadam"`` is the
    papers') and the batch size and evaluation interval, which are ``binlab train``'s (``TrainConfig``'s).

    Attributes:
        act_bits: 8, 4 or 1 (:data:`ACT_BITS`).
        split: True for BinaryBERT (ternary -> split -> binary), False for the direct-binary baseline.
        ternary_lr, binary_lr: the learning rate of stage 2 of each phase; stage 1 uses
            :data:`STAGE1_LR_FACTOR` times it. In the no-split baseline, the first phase (direct_*) uses
            ``ternary_lr``. ``train.lr`` and ``train.epochs`` fine-tune the teacher, when none is given.
        kd_epochs: epochs of each distillation stage (the scripts: 2 per stage, so 2 + 2 per phase).
        regression_loss: stage 2 on one logit (STS-B): ``"mse"`` (binlab's default) or ``"soft_ce"`` (the
            authors' loss, identically zero for one logit; methods.md §1).
        teacher_mode: ``"train"`` (dropout on in the teacher, as BinaryBERT's code) or ``"eval"``; None = the
            method's default.
        ffn_act: the student's FFN activation, ``"gelu"`` or ``"relu"``; None = the paper's for ``act_bits``
            (GELU at 8 bits, ReLU at 4 and 1). A backbone pre-trained with GELU can lose most of its accuracy
            when ReLU replaces it (docs/results.md: the MiniLM STS-B teacher, 86.4 -> 15.8 before any training).
    """

    act_bits: int = 8
    split: bool = True
    ternary_lr: float = 1e-5
    binary_lr: float = 5e-5
    kd_epochs: float = 2.0
    regression_loss: str = "mse"
    teacher_mode: str | None = None
    ffn_act: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.act_bits not in ACT_BITS:
            raise ValueError(f"BinaryBERT recipe: act_bits must be one of {ACT_BITS}, got {self.act_bits!r}")
        if self.ffn_act is not None and self.ffn_act not in FFN_ACTS:
            raise ValueError(f"BinaryBertConfig.ffn_act must be None or one of {FFN_ACTS}, got {self.ffn_act!r}")
        if self.regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES}, got {self.regression_loss!r}")
        for name in ("ternary_lr", "binary_lr", "kd_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"BinaryBertConfig.{name} must be positive, got {getattr(self, name)!r}")


def ternary_quant(act_bits: int, ffn_act: str | None = None) -> QuantConfig:
    """The ternary student's QuantConfig: TWN weights (per tensor; word embedding per row) and the activation
    setting of ``act_bits`` (module docstring). 8 bits is the ``"w2a8"`` preset. ``ffn_act`` replaces the
    setting's FFN activation (None keeps it)."""
    if act_bits not in _ACTIVATIONS:
        raise ValueError(f"BinaryBERT recipe: act_bits must be one of {ACT_BITS}, got {act_bits!r}")
    quant = replace(QuantConfig.preset("w2a8"), **_ACTIVATIONS[act_bits])
    return quant if ffn_act is None else replace(quant, ffn_act=ffn_act)


def binary_quant(act_bits: int, ffn_act: str | None = None) -> QuantConfig:
    """The binary model's QuantConfig: BWN weights, the same activations as :func:`ternary_quant` (what
    :func:`binlab.methods.split_model.binary_quant_config` makes of the ternary one). 8 bits: ``"w1a8"``; 4: ``"w1a4"``."""
    return binary_quant_config(ternary_quant(act_bits, ffn_act))


def stage_names(split: bool = True) -> list[str]:
    """The stages of a run in order (each one a subfolder of ``out``)."""
    phase1 = ["ternary_stage1", "ternary_stage2", "split"] if split else ["direct_stage1", "direct_stage2"]
    return ["teacher", *phase1, "binary_stage1", "binary_stage2"]


# ----------------------------------------------------------------------------------------------------------
# the run


def _kd_pair(run: Run, teacher: nn.Module, model: nn.Module, prefix: str, lr: float, init: str) -> dict:
    """KD stage 1 (attention + hidden MSE, lr x 2.5) then stage 2 from its best checkpoint (logits, lr)."""
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


def _split_stage(run: Run, ternary: nn.Module, ternary_results: dict) -> nn.Module:
    """Split the best ternary model, score it on dev at once, save it. Returns the split binary model."""
    t0 = time.perf_counter()
    ternary.eval()
    split = split_ternary_model(ternary).eval()
    with torch.no_grad():
        score, metrics = run.evaluate(split, run.dev)
        t_score, t_metrics = run.evaluate(ternary, run.dev)
        lt, ls = run.dev_logits(ternary), run.dev_logits(split)
        # the same split done in float64, on the first dev examples: exact to ~1e-15. In float32 the two halves'
        # sum rounds differently from the one product, and once in a while that moves an activation of the next
        # layer across a rounding boundary of its quantizer (binlab.methods.splitting's docstring).
        n64 = min(256, len(run.dev))
        ternary64 = copy.deepcopy(ternary).double()
        d64 = float((run.dev_logits(ternary64, n64) - run.dev_logits(split_ternary_model(ternary64), n64)).abs().max())
    diff = float((lt - ls).abs().max())
    same_preds = bool(torch.equal(lt.argmax(-1), ls.argmax(-1))) if run.num_labels > 1 else None
    results = {"recipe": run.recipe, "stage": "split", "init": "ternary weight splitting of best ternary_stage2",
               "loss": "-", "quant": split.config.quant.label, "steps": 0,
               "best": {"score": score, **metrics}, "final": {"score": score, **metrics},
               "ternary_dev": {"score": t_score, **t_metrics},
               "ternary_stage2_best_score": ternary_results.get("best", {}).get("score"),
               "max_abs_logit_diff": diff, "same_predictions": same_preds,
               "max_abs_logit_diff_float64": d64, "float64_examples": n64,
               "wall_time_s": round(time.perf_counter() - t0, 1)}
    folder = run.out / "split"
    if distributed.is_main():  # every process split the same ternary model; one writes it
        save_pretrained(split, folder / "best_model", tokenizer=run.tokenizer)
        atomic_write_text(folder / "results.json", json.dumps(results, indent=1))
    distributed.barrier()
    run.add_row("split", results, split, max_abs_logit_diff=diff)
    print(f"[split] dev {score:.4f} (ternary {t_score:.4f}); max |logit difference| {diff:.2e} "
          f"({d64:.1e} in float64)", flush=True)
    return split


def run_binarybert(cfg: BinaryBertConfig, resume: bool = False, command: str | None = None) -> dict:
    """Run every stage of :class:`BinaryBertConfig` (module docstring); returns the summary dict.

    ``resume``: skip the stages that finished (their ``results.json`` exists), continue an interrupted one
    from its newest checkpoint. ``command``: recorded in the results (the CLI passes its command line).
    """
    check_settings(Path(cfg.out), cfg, resume)
    run = Run("binarybert", cfg, resume, command)
    run.summary_fields = {"act_bits": cfg.act_bits, "split": cfg.split}
    run.markdown = summary_markdown
    print(f"data: {run.train.describe()}\n      {run.dev.describe()}", flush=True)

    teacher = frozen(teacher_stage(run))
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
    folder = Path(out) / stage / "best_model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no model at {folder}: has stage {stage!r} of the run in {out} finished?")
    state = read_state(folder)
    if not is_split_state(state):
        return load_pretrained(folder, verbose=False).eval()
    return split_model_from_state(load_config(folder), state).eval()


def summary_markdown(summary: dict) -> str:
    """The summary as a markdown table, one row per stage."""
    head = (f"BinaryBERT recipe on {summary['task']} ({'split' if summary['split'] else 'no split: direct binary'}, "
            f"{summary['act_bits']}-bit activations; {summary['n_train']} train / {summary['n_dev']} dev examples"
            f"{', SYNTHETIC data' if summary.get('synthetic') else ''})")
    return head + "\n\n" + stage_table(summary)


# ----------------------------------------------------------------------------------------------------------
# the command line (binlab train --recipe binarybert)


def add_arguments(p) -> None:
    """The recipe's options of ``binlab train`` (the shared ones are :mod:`binlab.methods.finetune`'s)."""
    g = p.add_argument_group("--recipe binarybert (ternary -> split -> binary, two-stage distillation)")
    g.add_argument("--act-bits", type=int, default=8, choices=ACT_BITS, help="activation bits of the student")
    g.add_argument("--no-split", action="store_true", help="baseline: a binary model distilled directly "
                   "from the teacher with the same budget, no ternary phase")
    g.add_argument("--ternary-lr", type=float, default=1e-5, help="stage-2 lr of the ternary phase (stage 1: x2.5)")
    g.add_argument("--binary-lr", type=float, default=5e-5, help="stage-2 lr of the binary phase (stage 1: x2.5)")
    # --kd-epochs, --regression-loss, --teacher-mode and --ffn-act (default: GELU at 8 activation bits, ReLU at 4
    # and 1, the paper's) are the shared distillation options of binlab.methods.pipeline


def run_from_args(args) -> int:
    """``binlab train --recipe binarybert ...``: the shared arguments of :mod:`binlab.methods.finetune` plus
    :func:`add_arguments`'s. ``--lr`` and ``--epochs`` are the teacher's (when none is given)."""
    cfg = BinaryBertConfig(**recipe_kwargs_from_args(args, "--act-bits"), act_bits=args.act_bits,
                           split=not args.no_split,
                           ternary_lr=args.ternary_lr, binary_lr=args.binary_lr, kd_epochs=args.kd_epochs,
                           regression_loss=args.regression_loss, teacher_mode=args.teacher_mode,
                           ffn_act=args.ffn_act)
    run_binarybert(cfg, resume=args.resume, command=command_line())
    return 0


RECIPE = Recipe("binarybert", "ternary -> split -> binary, two-stage distillation (BinaryBERT)", add_arguments,
                run_from_args)
