"""BiBERT's recipe: a full-precision teacher distils a fully binarized W1A1 student with Bi-Attention (chapter 6).

``binlab train --recipe bibert --task sst2 --teacher runs/sst2-fp/best_model --out runs/sst2-bibert`` runs BiBERT
(Qin et al., ICLR 2022; methods.md §3) as one distillation stage, in its own subfolder of ``--out``::

    teacher/        the full-precision teacher: given (and scored on dev), or fine-tuned here from --model
    student_w1a1/   the ``bibert`` preset (methods.md §3.1-§3.3), initialised from the teacher's weights, all layers
                    binarized at once, taught by the teacher

The student's quantization is the ``bibert`` preset: weights alpha_row * sign(W - rowmean(W)) with the clamp
straight-through estimator, every activation sign() without a scale, and Bi-Attention::

    A = bool(sign(Q) sign(K)^T / sqrt(d) + mask),   ctx = A @ sign(V)            (no softmax)

Its loss is BiBERT's (:func:`binlab.methods.distill.bibert_loss`, methods.md §3.4)::

    L = SCE(z_s, z_t) + 0.5 CE(z_s, y)   (regression: MSE(z_s, z_t))
        + sum_l sum_{F in Q, K, V} D(F_s F_s^T / sqrt(d), F_t F_t^T / sqrt(d)) + sum_{l=0..N} D(H_s^l, H_t^l),
    D(S, T) = || S / ||S||_F - T / ||T||_F ||_F      (one norm over the whole batch tensor, not squared)

with the teacher in eval mode, as in BiBERT's code (``--teacher-mode train`` turns its dropout on). Two places where
the code and the paper (or good sense) differ are options; the defaults are the code's, which produced the
published numbers (methods.md §5 (d)):

* ``bool_zero`` (``--bool-zero``): 0 maps a score of exactly 0 to 0 with the attention dropout on the scores
  before bool() (the code); 1 is the paper's bool(0) = 1, with the dropout on the {0, 1} map
  (:class:`binlab.model.BertSelfAttention`).
* ``dmd_mask_padding`` (``--dmd-mask-padding``): the code's DMD compares every position, padding included; with it
  the padded tokens are left out of the similarity matrices and the hidden states (``bibert_masked``).

Like the other recipes: the stage keeps ``checkpoints/``, ``best_model.safetensors``, ``best_model/`` and
``results.json``; ``resume`` skips finished stages and continues an interrupted one; ``summary.json`` /
``summary.md`` list every stage; ``recipe.json`` holds the settings. ``--max-steps`` caps every stage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from binlab.checkpoint import load_pretrained
from binlab.methods.distill import TEACHER_MODES, make_kd_loss
from binlab.methods.pipeline import (Recipe, RecipeConfig, Run, check_settings, command_line, frozen,
                                     recipe_kwargs_from_args, stage_table, teacher_stage)
from binlab.quant.config import BOOL_ZEROS, FFN_ACTS, QuantConfig

__all__ = ["STAGE", "DMD_KINDS", "BibertConfig", "student_quant", "run_bibert", "summary_markdown", "add_arguments",
           "run_from_args", "RECIPE"]

#: The student's stage (its subfolder of ``out``).
STAGE = "student_w1a1"
#: ``dmd_mask_padding`` -> the distillation kind of :data:`binlab.methods.distill.KD_KINDS`.
DMD_KINDS = {False: "bibert", True: "bibert_masked"}


@dataclass
class BibertConfig(RecipeConfig):
    """A BiBERT run: the shared :class:`~binlab.methods.pipeline.RecipeConfig` (task, out, the TrainConfig of every
    stage, teacher, data) and the method's own fields (module docstring).

    Attributes:
        kd_lr, kd_epochs: learning rate and epochs of the student's stage. ``train.lr`` / ``train.epochs`` fine-tune
            the teacher, when none is given.
        teacher_mode: ``"eval"`` (default, BiBERT's code) or ``"train"`` (dropout on while producing targets).
        bool_zero: bool(0) of the student's attention: 0 (the code) or 1 (the paper); ``QuantConfig.bool_zero``.
        dmd_mask_padding: leave the padded tokens out of DMD (binlab's variant) instead of the code's unmasked DMD.
        ffn_act: the student's FFN activation; None keeps BiBERT's GELU.
    """

    kd_lr: float = 1e-4
    kd_epochs: float = 2.0
    teacher_mode: str = "eval"
    bool_zero: int = 0
    dmd_mask_padding: bool = False
    ffn_act: str | None = None

    def __post_init__(self):
        super().__post_init__()
        for name in ("kd_lr", "kd_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"BibertConfig.{name} must be positive, got {getattr(self, name)!r}")
        choices = {"teacher_mode": TEACHER_MODES, "bool_zero": BOOL_ZEROS, "dmd_mask_padding": (False, True)}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed or type(value) is not type(allowed[0]):
                raise ValueError(f"BibertConfig.{name} must be one of {allowed}, got {value!r}")
        if self.ffn_act is not None and self.ffn_act not in FFN_ACTS:
            raise ValueError(f"BibertConfig.ffn_act must be None or one of {FFN_ACTS}, got {self.ffn_act!r}")


def student_quant(bool_zero: int = 0, ffn_act: str | None = None) -> QuantConfig:
    """The student's QuantConfig: the ``bibert`` preset with the recipe's bool(0) and FFN choices."""
    quant = replace(QuantConfig.preset("bibert"), bool_zero=bool_zero)
    return quant if ffn_act is None else replace(quant, ffn_act=ffn_act)


def _check_full_precision(teacher: nn.Module, run: Run) -> None:
    label = teacher.config.quant.label
    if label != QuantConfig().label:
        raise ValueError(f"the teacher {run.teacher_dir} is {label}; BiBERT distils a full-precision teacher "
                         "(W32E32A32) into its W1A1 student: pass an FP model as --teacher")


def run_bibert(cfg: BibertConfig, resume: bool = False, command: str | None = None) -> dict:
    """Run the teacher stage and the W1A1 student's stage (module docstring); returns the summary dict."""
    check_settings(Path(cfg.out), cfg, resume)
    run = Run("bibert", cfg, resume, command)
    run.summary_fields = {"bool_zero": cfg.bool_zero, "dmd_mask_padding": cfg.dmd_mask_padding,
                          "teacher_mode": cfg.teacher_mode}
    run.markdown = summary_markdown
    print(f"data: {run.train.describe()}\n      {run.dev.describe()}", flush=True)

    teacher = frozen(teacher_stage(run))
    _check_full_precision(teacher, run)
    quant = student_quant(cfg.bool_zero, cfg.ffn_act)
    student = load_pretrained(run.teacher_dir, quant=quant, verbose=False)
    loss = make_kd_loss(DMD_KINDS[cfg.dmd_mask_padding], teacher, run.num_labels, cfg.teacher_mode)
    pred = "SCE(logits) + 0.5 CE(labels)" if run.num_labels > 1 else "MSE(logits)"
    dmd = "DMD(Q, K, V, hidden states" + (", padding masked)" if cfg.dmd_mask_padding else ")")
    info = {"init": f"the FP teacher's weights, {quant.label} (bibert)", "loss": f"BiBERT: {pred} + {dmd}",
            "teacher": "the FP teacher", "teacher_dir": str(run.teacher_dir), "teacher_mode": cfg.teacher_mode,
            "bool_zero": cfg.bool_zero, "dmd_mask_padding": cfg.dmd_mask_padding}
    results = run.train_stage(STAGE, student, loss, cfg.kd_lr, cfg.kd_epochs, info)
    run.add_row(STAGE, {**results, **info}, student)
    summary = run.write_summary()
    print(summary_markdown(summary), flush=True)
    return summary


def summary_markdown(summary: dict) -> str:
    """The summary as a markdown table, one row per stage."""
    zero = "bool(0) = 0, as the code" if summary["bool_zero"] == 0 else "bool(0) = 1, as the paper"
    dmd = "padding masked in DMD" if summary["dmd_mask_padding"] else "DMD over padding too, as the code"
    head = (f"BiBERT recipe on {summary['task']} (FP -> W1A1 with Bi-Attention and direction-matching distillation; "
            f"{zero}; {dmd}; teacher in {summary['teacher_mode']} mode; {summary['n_train']} train / "
            f"{summary['n_dev']} dev examples{', SYNTHETIC data' if summary.get('synthetic') else ''})")
    return head + "\n\n" + stage_table(summary)


# ----------------------------------------------------------------------------------------------------------
# the command line (binlab train --recipe bibert)


def add_arguments(p) -> None:
    """The recipe's own options of ``binlab train`` (--kd-lr, --kd-epochs, --teacher-mode and --ffn-act are the
    pipeline's shared distillation options)."""
    g = p.add_argument_group("--recipe bibert (W1A1 with Bi-Attention, direction-matching distillation)")
    g.add_argument("--bool-zero", type=int, default=0, choices=BOOL_ZEROS,
                   help="bool(0) of the attention: 0 (BiBERT's code, dropout on the scores; default) or 1 (the paper, "
                        "dropout on the {0, 1} map)")
    g.add_argument("--dmd-mask-padding", action="store_true",
                   help="leave the padded tokens out of DMD's similarity matrices and hidden states (default: the "
                        "code's DMD over every position)")


def run_from_args(args) -> int:
    """``binlab train --recipe bibert ...``: ``--lr`` and ``--epochs`` are the teacher's (when none is given)."""
    if args.regression_loss != "mse":
        raise ValueError(f"--recipe bibert uses MSE on the logit for regression, as BiBERT's code; "
                         f"--regression-loss {args.regression_loss} is for binarybert and bit")
    cfg = BibertConfig(**recipe_kwargs_from_args(args, "the bibert preset, --bool-zero"), kd_lr=args.kd_lr,
                       kd_epochs=args.kd_epochs, teacher_mode=args.teacher_mode or "eval", bool_zero=args.bool_zero,
                       dmd_mask_padding=args.dmd_mask_padding, ffn_act=args.ffn_act)
    run_bibert(cfg, resume=args.resume, command=command_line())
    return 0


RECIPE = Recipe("bibert", "FP -> W1A1 with Bi-Attention and direction-matching distillation (BiBERT)",
                add_arguments, run_from_args)
