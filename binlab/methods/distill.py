"""Knowledge-distillation losses of BinaryBERT, BiT and BiBERT, and an adapter for the Trainer.

Notation: z the logits (B, C), A^l the pre-softmax attention scores of layer l (B, H, L, L, the mask added),
H^l the hidden states (l = 0 is the embedding output, so 13 of them for BERT-base), Q^l, K^l, V^l the full-
precision projections (B, H, L, d). Subscripts s (student) and t (teacher). Formulas follow the authors' code
(methods.md §1, §2.6, §3.4, §4.4)::

    soft CE           SCE(z_s, z_t) = mean_{b, c} ( -softmax(z_t / T)_bc * log_softmax(z_s / T)_bc )
    BinaryBERT 1      L = sum_l MSE(A_s^l, A_t^l)  +  sum_{l=0..N} MSE(H_s^l, H_t^l)    (masked scores set to 0)
    BinaryBERT 2      L = SCE(z_s, z_t)                        (regression: MSE(z_s, z_t))
    BiT               L = SCE(z_s, z_t) + sum_{l=0..N} MSE(H_s^l, H_t^l)               (one joint stage)
    BiT, normalised   L = SCE(z_s, z_t) + mean_{l=0..N} ||H_s^l - H_t^l||^2 / ||H_t^l||^2   (binlab's variant)
    BiBERT (DMD)      L = L_pred + sum_l sum_{F in Q,K,V} D(F_s F_s^T / sqrt d, F_t F_t^T / sqrt d)
                             + sum_{l=0..N} D(H_s^l, H_t^l),
                      D(S, T) = || S / ||S||_F - T / ||T||_F ||_F,
                      L_pred = SCE(z_s, z_t) + 0.5 CE(z_s, y)  (regression: MSE(z_s, z_t))
    BiBERT, masked    the same with the padded tokens zeroed in F and H first (binlab's variant, ``bibert_masked``)

**Regression (STS-B, one logit).** The soft CE of a single logit is identically 0 (log_softmax of one number is
0), so BinaryBERT's stage 2 and BiT give STS-B no logit signal at all (methods.md §1, §5). binlab uses MSE on
the logits for ``num_labels == 1`` by default, as BiBERT (and TernaryBERT) do; ``regression_loss="soft_ce"``
reproduces the authors' zero.

:func:`make_kd_loss` wraps any of them as ``loss_fn(model, batch)`` for :class:`binlab.train.trainer.Trainer`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binlab.model import MASK_VALUE

__all__ = [
    "soft_cross_entropy", "prediction_loss", "attention_score_mse", "hidden_state_mse",
    "similarity_matrix", "direction_distance", "direction_matching_loss",
    "relative_hidden_distance", "binarybert_stage1_loss", "binarybert_stage2_loss", "bit_loss",
    "bit_normalized_loss", "bibert_loss",
    "KDKind", "KD_KINDS", "make_kd_loss", "MASKED_SCORE", "REGRESSION_LOSSES", "TEACHER_MODES",
    "drop_padding",
]

#: Scores at or below this are masked positions, which BinaryBERT's code zeroes: the mask adds MASK_VALUE
#: (-10000) to them, and a real score never comes near a hundredth of it.
MASKED_SCORE = MASK_VALUE / 100
REGRESSION_LOSSES = ("mse", "soft_ce")
TEACHER_MODES = ("train", "eval")


# ----------------------------------------------------------------------------------------------------------
# the pieces


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Soft cross-entropy, exactly as the authors' ``soft_cross_entropy``::

        SCE(z_s, z_t) = mean over batch AND classes of  -softmax(z_t / T) * log_softmax(z_s / T)

    The mean over the C classes makes it CE / C (the usual soft CE averaged over the batch, divided by C).
    With one logit (regression) it is exactly 0 for any input: log_softmax of one number is 0.
    """
    t = F.softmax(teacher_logits / temperature, dim=-1)
    return (-t * F.log_softmax(student_logits / temperature, dim=-1)).mean()


def prediction_loss(student_logits: Tensor, teacher_logits: Tensor, regression: bool,
                    regression_loss: str = "mse", temperature: float = 1.0) -> Tensor:
    """Logit distillation: :func:`soft_cross_entropy` for classification; for regression MSE(z_s, z_t)
    (``regression_loss="mse"``) or the authors' soft CE, identically 0 (``"soft_ce"``)."""
    if regression_loss not in REGRESSION_LOSSES:
        raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES}, got {regression_loss!r}")
    if regression and regression_loss == "mse":
        return F.mse_loss(student_logits, teacher_logits)
    return soft_cross_entropy(student_logits, teacher_logits, temperature)


def _check_pairs(what: str, student: Sequence[Tensor] | None, teacher: Sequence[Tensor] | None) -> None:
    if student is None or teacher is None:
        raise ValueError(f"{what}: the model outputs have no {what}; call the model with the matching output_* flag")
    if len(student) != len(teacher):
        raise ValueError(f"{what}: the student has {len(student)} and the teacher {len(teacher)}; "
                         "distillation pairs layer l with layer l, so both need the same number of layers")
    for l, (s, t) in enumerate(zip(student, teacher)):
        if s.shape != t.shape:
            raise ValueError(f"{what}: layer {l} has shape {tuple(s.shape)} in the student and {tuple(t.shape)} in "
                             "the teacher (BinaryBERT needs equal head counts: a half-width student needs a "
                             "half-width teacher, methods.md §2.1)")


def attention_score_mse(student_scores: Sequence[Tensor], teacher_scores: Sequence[Tensor]) -> Tensor:
    """sum_l MSE(A_s^l, A_t^l) over the pre-softmax scores, entries <= -100 (masked keys) set to 0 in each.

    Without the zeroing the -10000 of the mask would dominate whenever student and teacher differ there.
    """
    _check_pairs("attention_scores", student_scores, teacher_scores)
    loss = 0.0
    for s, t in zip(student_scores, teacher_scores):
        s = torch.where(s <= MASKED_SCORE, torch.zeros_like(s), s)
        t = torch.where(t <= MASKED_SCORE, torch.zeros_like(t), t)
        loss = loss + F.mse_loss(s, t)
    return loss


def hidden_state_mse(student_hidden: Sequence[Tensor], teacher_hidden: Sequence[Tensor]) -> Tensor:
    """sum_{l=0..N} MSE(H_s^l, H_t^l): the embedding output and every layer's output, unweighted."""
    _check_pairs("hidden_states", student_hidden, teacher_hidden)
    return sum(F.mse_loss(s, t) for s, t in zip(student_hidden, teacher_hidden))


def relative_hidden_distance(student_hidden: Sequence[Tensor], teacher_hidden: Sequence[Tensor]) -> Tensor:
    """mean_{l=0..N} ||H_s^l - H_t^l||^2 / ||H_t^l||^2: each hidden state's error relative to the teacher's energy
    (0 = exact, 1 = as far as predicting zeros), averaged over the states. Unlike the sum of MSEs it does not
    grow with the depth or with the size of a layer's activations, so the logit term keeps its weight."""
    _check_pairs("hidden_states", student_hidden, teacher_hidden)
    terms = [((s - t) ** 2).sum() / (t ** 2).sum().clamp_min(torch.finfo(t.dtype).tiny)
             for s, t in zip(student_hidden, teacher_hidden)]
    return sum(terms) / len(terms)


def similarity_matrix(f: Tensor) -> Tensor:
    """F F^T / sqrt(d) for F of shape (B, H, L, d): the (B, H, L, L) token-similarity matrix of BiBERT's DMD."""
    return f @ f.transpose(-1, -2) / math.sqrt(f.shape[-1])


def direction_distance(s: Tensor, t: Tensor) -> Tensor:
    """D(S, T) = || S / ||S||_F - T / ||T||_F ||_F, each norm over the WHOLE tensor (the batch included).

    Not squared, and one normalisation for the batch, as BiBERT's ``att_loss_r2b``. Scale-free: D(cS, T) =
    D(S, T) for c > 0, so only the direction of S is matched.
    """
    if s.shape != t.shape:
        raise ValueError(f"direction_distance: shapes differ, {tuple(s.shape)} vs {tuple(t.shape)}")
    return torch.linalg.vector_norm(s / torch.linalg.vector_norm(s) - t / torch.linalg.vector_norm(t))


def drop_padding(x: Tensor, attention_mask: Tensor | None) -> Tensor:
    """``x`` with the padded tokens' vectors set to 0: (B, L, D) hidden states or (B, H, L, d) projections, the
    token axis second to last; ``attention_mask`` (B, L), 1 = real token. None returns ``x`` unchanged.

    Zeroing the padded rows of F zeroes their rows and columns of F F^T, so a similarity matrix then holds only
    pairs of real tokens."""
    if attention_mask is None:
        return x
    B, L = x.shape[0], x.shape[-2]
    if tuple(attention_mask.shape) != (B, L):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, but the tensor it masks has "
                         f"{B} examples of {L} tokens (shape {tuple(x.shape)})")
    keep = attention_mask.to(x.dtype)
    return x * (keep[:, None, :, None] if x.dim() == 4 else keep[:, :, None])


def direction_matching_loss(student_qkv, teacher_qkv, student_hidden, teacher_hidden,
                            attention_mask: Tensor | None = None) -> Tensor:
    """BiBERT's DMD: sum_l sum_{F in Q,K,V} D(sim(F_s^l), sim(F_t^l)) + sum_{l=0..N} D(H_s^l, H_t^l).

    ``*_qkv``: per layer the FP (Q, K, V), as the model returns with ``output_qkv=True``.
    ``attention_mask`` (B, L), 1 = real token: None compares every position, padding included (BiBERT's code);
    given, the padded tokens are zeroed in Q, K, V and in the hidden states first (:func:`drop_padding`), so
    nothing a padded position holds reaches the loss or its norms (binlab's variant, ``--dmd-mask-padding``).
    """
    if student_qkv is None or teacher_qkv is None:
        raise ValueError("qkv: the model outputs have no qkv; call the model with output_qkv=True")
    _check_pairs("qkv", [torch.stack(x) for x in student_qkv], [torch.stack(x) for x in teacher_qkv])
    m = attention_mask
    loss = 0.0
    for fs_layer, ft_layer in zip(student_qkv, teacher_qkv):
        for f_s, f_t in zip(fs_layer, ft_layer):  # Q, K, V
            loss = loss + direction_distance(similarity_matrix(drop_padding(f_s, m)),
                                             similarity_matrix(drop_padding(f_t, m)))
    _check_pairs("hidden_states", student_hidden, teacher_hidden)
    for h_s, h_t in zip(student_hidden, teacher_hidden):
        loss = loss + direction_distance(drop_padding(h_s, m), drop_padding(h_t, m))
    return loss


# ----------------------------------------------------------------------------------------------------------
# the three methods' losses (student / teacher are binlab ModelOutputs)


def binarybert_stage1_loss(student, teacher) -> Tensor:
    """BinaryBERT stage 1: sum_l MSE(A_s^l, A_t^l) + sum_{l=0..N} MSE(H_s^l, H_t^l)."""
    return (attention_score_mse(student.attention_scores, teacher.attention_scores)
            + hidden_state_mse(student.hidden_states, teacher.hidden_states))


def binarybert_stage2_loss(student, teacher, regression: bool = False, regression_loss: str = "mse",
                           temperature: float = 1.0) -> Tensor:
    """BinaryBERT stage 2: SCE(z_s, z_t); MSE(z_s, z_t) for regression (see the module docstring)."""
    return prediction_loss(student.logits, teacher.logits, regression, regression_loss, temperature)


def bit_loss(student, teacher, regression: bool = False, regression_loss: str = "mse",
             temperature: float = 1.0) -> Tensor:
    """BiT: SCE(z_s, z_t) + sum_{l=0..N} MSE(H_s^l, H_t^l), one joint stage, no attention term."""
    return (prediction_loss(student.logits, teacher.logits, regression, regression_loss, temperature)
            + hidden_state_mse(student.hidden_states, teacher.hidden_states))


def bit_normalized_loss(student, teacher, regression: bool = False, regression_loss: str = "mse",
                        temperature: float = 1.0) -> Tensor:
    """BiT's loss with :func:`relative_hidden_distance` in place of the sum of hidden-state MSEs (binlab's variant,
    ``--hidden-loss normalized``): SCE(z_s, z_t) + mean_l ||H_s^l - H_t^l||^2 / ||H_t^l||^2."""
    return (prediction_loss(student.logits, teacher.logits, regression, regression_loss, temperature)
            + relative_hidden_distance(student.hidden_states, teacher.hidden_states))


def bibert_loss(student, teacher, labels: Tensor | None = None, regression: bool = False,
                temperature: float = 1.0, attention_mask: Tensor | None = None) -> Tensor:
    """BiBERT: L_pred + DMD, L_pred = SCE(z_s, z_t) + 0.5 CE(z_s, y) (classification) or MSE(z_s, z_t).

    ``attention_mask``: None (the code) or the batch's mask, for DMD without the padded tokens
    (:func:`direction_matching_loss`)."""
    dmd = direction_matching_loss(student.qkv, teacher.qkv, student.hidden_states, teacher.hidden_states,
                                  attention_mask)
    if regression:
        return F.mse_loss(student.logits, teacher.logits) + dmd
    if labels is None:
        raise ValueError("bibert_loss: classification needs the labels (its loss has 0.5 * CE(z_s, y))")
    pred = soft_cross_entropy(student.logits, teacher.logits, temperature) \
        + 0.5 * F.cross_entropy(student.logits, labels.long())
    return pred + dmd


# ----------------------------------------------------------------------------------------------------------
# adapter for the Trainer

class KDKind(NamedTuple):
    """One distillation loss: the outputs it needs from both models, the teacher mode of the authors' code, and
    ``loss(student_out, teacher_out, batch, regression, regression_loss, temperature) -> Tensor``."""

    outputs: dict
    teacher_mode: str
    loss: Callable


#: kind -> :class:`KDKind`
KD_KINDS = {
    "binarybert_stage1": KDKind(dict(output_hidden_states=True, output_attentions=True), "train",
                                lambda s, t, batch, reg, reg_loss, T: binarybert_stage1_loss(s, t)),
    "binarybert_stage2": KDKind({}, "train",
                                lambda s, t, batch, reg, reg_loss, T: binarybert_stage2_loss(s, t, reg, reg_loss, T)),
    "bit": KDKind(dict(output_hidden_states=True), "train",
                  lambda s, t, batch, reg, reg_loss, T: bit_loss(s, t, reg, reg_loss, T)),
    "bit_normalized": KDKind(dict(output_hidden_states=True), "train",
                             lambda s, t, batch, reg, reg_loss, T: bit_normalized_loss(s, t, reg, reg_loss, T)),
    "bibert": KDKind(dict(output_hidden_states=True, output_qkv=True), "eval",
                     lambda s, t, batch, reg, reg_loss, T: bibert_loss(s, t, batch.get("labels"), reg, T)),
    "bibert_masked": KDKind(dict(output_hidden_states=True, output_qkv=True), "eval",
                            lambda s, t, batch, reg, reg_loss, T: bibert_loss(s, t, batch.get("labels"), reg, T,
                                                                              _padding_mask(batch))),
}


def _padding_mask(batch: dict) -> Tensor:
    if batch.get("attention_mask") is None:
        raise ValueError("bibert_masked: the batch has no attention_mask, so there is no padding to leave out")
    return batch["attention_mask"]


def make_kd_loss(kind: str, teacher: nn.Module, num_labels: int | None = None, teacher_mode: str | None = None,
                 regression_loss: str = "mse", temperature: float = 1.0) -> Callable:
    """A ``loss_fn(model, batch) -> loss`` for :class:`binlab.train.trainer.Trainer` that distils ``teacher``.

    Args:
        kind: ``"binarybert_stage1"``, ``"binarybert_stage2"``, ``"bit"``, ``"bit_normalized"``, ``"bibert"``
            or ``"bibert_masked"`` (DMD without the padded tokens) (:data:`KD_KINDS`).
        teacher: a model returning binlab ``ModelOutput``s; it runs under ``torch.no_grad()`` and is not trained.
        num_labels: 1 means regression; default ``teacher.config.num_labels``.
        teacher_mode: ``"train"`` (dropout on while producing targets: BinaryBERT's and BiT's code) or
            ``"eval"`` (BiBERT's code). Default: what the method's code does (see :data:`KD_KINDS`).
        regression_loss: ``"mse"`` or ``"soft_ce"`` (the authors' identically-zero loss), for
            ``binarybert_stage2`` and ``bit`` when ``num_labels == 1``.
        temperature: T of the soft CE (1 in all three codes).

    ``batch`` holds ``input_ids``, ``attention_mask``, ``token_type_ids`` and (for ``bibert``) ``labels``.
    """
    if kind not in KD_KINDS:
        raise ValueError(f"unknown distillation kind {kind!r}; choose one of {', '.join(KD_KINDS)}")
    outputs, default_mode, loss = KD_KINDS[kind]
    teacher_mode = teacher_mode or default_mode
    if teacher_mode not in TEACHER_MODES:
        raise ValueError(f"teacher_mode must be 'train' or 'eval', got {teacher_mode!r}")
    if regression_loss not in REGRESSION_LOSSES:
        raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES}, got {regression_loss!r}")
    if num_labels is None:
        num_labels = teacher.config.num_labels
    regression = num_labels == 1

    def run(model, batch):
        return model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     token_type_ids=batch.get("token_type_ids"), **outputs)

    def loss_fn(model: nn.Module, batch: dict) -> Tensor:
        teacher.train(teacher_mode == "train")
        with torch.no_grad():
            t = run(teacher, batch)
        return loss(run(model, batch), t, batch, regression, regression_loss, temperature)

    loss_fn.kind, loss_fn.teacher_mode = kind, teacher_mode
    return loss_fn
