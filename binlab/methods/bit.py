"""BiT's recipe: elastic binary activations and multi-step distillation, FP -> W1A2 -> W1A1 (chapter 5).

``binlab train --recipe bit --task sst2 --teacher runs/sst2-fp/best_model --out runs/sst2-bit`` runs BiT (Liu et al.,
NeurIPS 2022; methods.md §4) as a chain of hops, each one joint distillation stage in its own subfolder of ``--out``::

    teacher/      the full-precision teacher: given (and scored on dev), or fine-tuned here from --model
    hop1_w1a2/    W1 weights, 2-bit elastic activations; initialised from and taught by the teacher
    hop2_w1a1/    W1A1; initialised from and taught by the best hop1_w1a2 model

``--chain 2,1`` is the default (the path the paper used, per the authors' issue #2), ``--chain 1`` is BiT* (FP ->
W1A1 directly) and ``--chain 4,2,1`` adds a 4-bit step. Every hop's loss is BiT's (:func:`binlab.methods.distill.
bit_loss`)::

    L = SCE(z_s, z_t) + sum_{l=0..N} MSE(H_s^l, H_t^l)          (regression: MSE(z_s, z_t) on the logit)

with the teacher in eval mode by default (``--teacher-mode train`` is the authors' dropout-on teacher). A hop's
student keeps the previous hop's weights and learned thresholds; its scales (alpha) are calibrated again for the
new bit-width on the first ``calibration_examples`` training sentences before its first step
(:func:`binlab.train.calibration.calibrate`), and the report (scales, all-zero attention rows) goes into the hop's
``results.json``.

Two places where BiT's code and paper differ are options here (methods.md §5):

* ``qkv_threshold`` (default True, the paper): Q, K and V get a learned per-channel threshold like every linear
  input; False (``--no-qkv-threshold``) is the code, whose ``move_q/k/v`` never reach the output.
* ``alpha_init``: ``"code"`` (default: 2 mean|x|, 4 mean|x| for {0, alpha}; it produced the published numbers) or
  ``"optimal"`` (the paper's alpha*).

Like the BinaryBERT recipe: each hop keeps ``checkpoints/``, ``best_model.safetensors``, ``best_model/`` and
``results.json``; ``resume`` skips finished hops and continues an interrupted one; ``summary.json`` / ``summary.md``
list every stage; ``recipe.json`` holds the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from binlab.checkpoint import load_pretrained
from binlab.methods.distill import REGRESSION_LOSSES, TEACHER_MODES, make_kd_loss
from binlab.methods.pipeline import (Recipe, RecipeConfig, Run, check_settings, command_line, frozen,
                                     recipe_kwargs_from_args, stage_table, teacher_stage)
from binlab.quant.config import ALPHA_INITS, FFN_ACTS, QuantConfig
from binlab.train.calibration import calibrate, calibration_batch

__all__ = ["CHAIN_BITS", "HIDDEN_LOSSES", "BitConfig", "hop_quant", "hop_names", "parse_chain", "run_bit", "summary_markdown",
           "add_arguments", "run_from_args", "RECIPE"]

#: Activation bit-widths a hop can have; a chain steps down through some of them and ends at 1.
CHAIN_BITS = (8, 4, 2, 1)
#: ``--hidden-loss`` -> the distillation kind of :data:`binlab.methods.distill.KD_KINDS` every hop uses.
HIDDEN_LOSSES = {"mse": "bit", "normalized": "bit_normalized"}


@dataclass
class BitConfig(RecipeConfig):
    """A BiT run: the shared :class:`~binlab.methods.pipeline.RecipeConfig` (task, out, the TrainConfig of every
    stage, teacher, data) and the method's own fields (module docstring).

    Attributes:
        chain: the hops' activation bits, strictly decreasing, ending at 1: ``(2, 1)``, ``(1,)`` (BiT*), ``(4, 2, 1)``.
        kd_lr, kd_epochs: learning rate and epochs of every hop. ``train.lr`` / ``train.epochs`` fine-tune the
            teacher, when none is given.
        teacher_mode: ``"eval"`` (default) or ``"train"`` (the authors' code: dropout on while producing targets).
        regression_loss: on one logit (STS-B): ``"mse"`` or the authors' ``"soft_ce"`` (identically 0).
        qkv_threshold: learned thresholds on Q, K, V (the paper) or not (the code).
        alpha_init: ``"code"`` or ``"optimal"`` (:data:`binlab.quant.config.ALPHA_INITS`).
        ffn_act: the students' FFN activation; None keeps BiT's ReLU.
        calibration_examples: training sentences the scales of each hop are calibrated on.
        hidden_loss: ``"mse"`` (BiT: the sum of the hidden-state MSEs) or ``"normalized"`` (binlab's variant: their
            errors relative to the teacher's, averaged; :data:`HIDDEN_LOSSES`).
    """

    chain: tuple[int, ...] = (2, 1)
    kd_lr: float = 1e-4
    kd_epochs: float = 2.0
    teacher_mode: str = "eval"
    regression_loss: str = "mse"
    qkv_threshold: bool = True
    alpha_init: str = "code"
    ffn_act: str | None = None
    calibration_examples: int = 128
    hidden_loss: str = "mse"

    def __post_init__(self):
        super().__post_init__()
        self.chain = parse_chain(self.chain)
        for name in ("kd_lr", "kd_epochs", "calibration_examples"):
            if not getattr(self, name) > 0:
                raise ValueError(f"BitConfig.{name} must be positive, got {getattr(self, name)!r}")
        choices = {"teacher_mode": TEACHER_MODES, "regression_loss": REGRESSION_LOSSES, "alpha_init": ALPHA_INITS,
                   "hidden_loss": tuple(HIDDEN_LOSSES)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"BitConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.ffn_act is not None and self.ffn_act not in FFN_ACTS:
            raise ValueError(f"BitConfig.ffn_act must be None or one of {FFN_ACTS}, got {self.ffn_act!r}")


def parse_chain(chain) -> tuple[int, ...]:
    """``"2,1"``, ``[2, 1]`` or ``1`` -> ``(2, 1)`` / ``(1,)``, checked: bits from :data:`CHAIN_BITS`, strictly
    decreasing, ending at 1."""
    try:
        bits = tuple(int(b) for b in (chain.split(",") if isinstance(chain, str) else
                                      (chain if isinstance(chain, (list, tuple)) else [chain])))
    except (TypeError, ValueError):
        raise ValueError(f"--chain must be activation bits separated by commas, e.g. 2,1; got {chain!r}") from None
    if not bits or any(b not in CHAIN_BITS for b in bits) or list(bits) != sorted(set(bits), reverse=True) \
            or bits[-1] != 1:
        raise ValueError(f"--chain must step down through {CHAIN_BITS} and end at 1 (e.g. 2,1 or 4,2,1 or 1); "
                         f"got {chain!r}")
    return bits


def hop_quant(bits: int, qkv_threshold: bool = True, alpha_init: str = "code", ffn_act: str | None = None) \
        -> QuantConfig:
    """The QuantConfig of a hop: BiT's W1A1 preset (BiT weights, elastic activations, {0, alpha} probabilities)
    at ``bits`` activation bits, with the recipe's threshold, alpha and FFN choices."""
    quant = replace(QuantConfig.preset("bit"), act_bits=bits, qkv_threshold=qkv_threshold, alpha_init=alpha_init)
    return quant if ffn_act is None else replace(quant, ffn_act=ffn_act)


def hop_names(chain) -> list[str]:
    """The stage (subfolder) names of a chain's hops: ``hop1_w1a2``, ``hop2_w1a1``, ..."""
    return [f"hop{i}_w1a{b}" for i, b in enumerate(parse_chain(chain), start=1)]


def run_bit(cfg: BitConfig, resume: bool = False, command: str | None = None) -> dict:
    """Run the teacher stage and every hop of ``cfg.chain`` (module docstring); returns the summary dict."""
    check_settings(Path(cfg.out), cfg, resume)
    run = Run("bit", cfg, resume, command)
    run.summary_fields = {"chain": list(cfg.chain), "qkv_threshold": cfg.qkv_threshold, "alpha_init": cfg.alpha_init,
                          "hidden_loss": cfg.hidden_loss}
    run.markdown = summary_markdown
    print(f"data: {run.train.describe()}\n      {run.dev.describe()}", flush=True)

    teacher: nn.Module = frozen(teacher_stage(run))
    label = teacher.config.quant.label  # a chain may start from a quantized teacher (hop 2 alone: --chain 1)
    source, source_name = run.teacher_dir, "the FP teacher" if label == "W32E32A32" else f"the {label} teacher"
    calib = calibration_batch(run.train, run.encode, cfg.train.max_length, cfg.calibration_examples)
    for name, bits in zip(hop_names(cfg.chain), cfg.chain):
        quant = hop_quant(bits, cfg.qkv_threshold, cfg.alpha_init, cfg.ffn_act)
        student = load_pretrained(source, quant=quant, verbose=False)
        report = calibrate(student, calib)
        print(f"[{name}] {report.describe()}", flush=True)
        loss = make_kd_loss(HIDDEN_LOSSES[cfg.hidden_loss], teacher, run.num_labels, cfg.teacher_mode,
                            regression_loss=cfg.regression_loss)
        pred = "soft CE(logits)" if run.num_labels > 1 or cfg.regression_loss == "soft_ce" else "MSE(logits)"
        hidden = "MSE(hidden states)" if cfg.hidden_loss == "mse" else "mean relative error(hidden states)"
        info = {"init": f"{source_name}'s weights, {quant.label}", "loss": f"BiT: {pred} + {hidden}",
                "teacher": source_name, "teacher_dir": str(source), "teacher_mode": cfg.teacher_mode,
                "calibration": report.to_dict()}
        results = run.train_stage(name, student, loss, cfg.kd_lr, cfg.kd_epochs, info)
        run.add_row(name, {**results, **info}, student)
        teacher, source, source_name = frozen(student), run.out / name / "best_model", f"best {name}"
    summary = run.write_summary()
    print(summary_markdown(summary), flush=True)
    return summary


def summary_markdown(summary: dict) -> str:
    """The summary as a markdown table, one row per stage."""
    chain = " -> ".join(["FP", *(f"W1A{b}" for b in summary["chain"])])
    head = (f"BiT recipe on {summary['task']} ({chain}; Q/K/V thresholds "
            f"{'on' if summary['qkv_threshold'] else 'off (as the code)'}, alpha init {summary['alpha_init']}"
            f"{', normalized hidden loss' if summary.get('hidden_loss') == 'normalized' else ''}; "
            f"{summary['n_train']} train / {summary['n_dev']} dev examples"
            f"{', SYNTHETIC data' if summary.get('synthetic') else ''})")
    return head + "\n\n" + stage_table(summary)


# ----------------------------------------------------------------------------------------------------------
# the command line (binlab train --recipe bit)


def add_arguments(p) -> None:
    """The recipe's own options of ``binlab train`` (the shared and distillation ones are the pipeline's)."""
    g = p.add_argument_group("--recipe bit (elastic binarization, multi-step distillation)")
    g.add_argument("--chain", default="2,1", help="activation bits of the hops, ending at 1: 2,1 (default: "
                   "FP -> W1A2 -> W1A1), 1 (BiT*: FP -> W1A1), 4,2,1")
    g.add_argument("--no-qkv-threshold", action="store_true",
                   help="no learned thresholds on Q, K, V (BiT's code; default: the paper's thresholds)")
    g.add_argument("--alpha-init", default="code", choices=ALPHA_INITS,
                   help="start of the scales: code (2 / 4 mean|x|, the published runs) or optimal (the paper's alpha*)")
    g.add_argument("--hidden-loss", default="mse", choices=list(HIDDEN_LOSSES),
                   help="mse (BiT: sum of the hidden-state MSEs) or normalized (their errors relative to the "
                        "teacher's, averaged over the states: the logits keep their weight)")
    g.add_argument("--calibration-examples", type=int, default=128,
                   help="training sentences each hop's scales are calibrated on (default: 128)")


def run_from_args(args) -> int:
    """``binlab train --recipe bit ...``: ``--lr`` and ``--epochs`` are the teacher's (when none is given)."""
    cfg = BitConfig(**recipe_kwargs_from_args(args, "--chain"), chain=args.chain, kd_lr=args.kd_lr,
                    kd_epochs=args.kd_epochs,
                    teacher_mode=args.teacher_mode or "eval", regression_loss=args.regression_loss,
                    qkv_threshold=not args.no_qkv_threshold, alpha_init=args.alpha_init, ffn_act=args.ffn_act,
                    calibration_examples=args.calibration_examples, hidden_loss=args.hidden_loss)
    run_bit(cfg, resume=args.resume, command=command_line())
    return 0


RECIPE = Recipe("bit", "FP -> W1A2 -> W1A1 multi-step distillation with elastic activations (BiT)", add_arguments,
                run_from_args)
