"""Distillation losses (binlab.methods.distill): each against an independent formula, the regression pitfall of the
soft CE, BiBERT's whole-batch normalisation, and make_kd_loss as a Trainer loss_fn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from binlab.methods.distill import (KD_KINDS, attention_score_mse, bibert_loss, binarybert_stage1_loss, bit_loss,
                            bit_normalized_loss, direction_distance, direction_matching_loss, hidden_state_mse,
                            make_kd_loss, prediction_loss, relative_hidden_distance, similarity_matrix,
                            soft_cross_entropy)
from binlab.model import tiny_bert
from binlab.quant.config import QuantConfig


def tiny(quant="fp", num_labels=3, seed=0, **kw):
    sizes = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=24)
    return tiny_bert(num_labels, QuantConfig.preset(quant), seed=seed, **{**sizes, **kw})


def make_batch(B=4, L=9, num_labels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    labels = torch.rand(B, generator=g) * 5 if num_labels == 1 else torch.randint(0, num_labels, (B,), generator=g)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), labels=labels)


# ----------------------------------------------------------------------------------------------------------
# soft cross-entropy and the regression pitfall


def test_soft_ce_is_cross_entropy_with_soft_targets_over_num_classes():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    expected = F.cross_entropy(s, F.softmax(t, -1)) / 3  # batch mean of the soft CE, then / C (mean over classes)
    torch.testing.assert_close(soft_cross_entropy(s, t), expected)
    T = 2.0
    torch.testing.assert_close(soft_cross_entropy(s, t, T), F.cross_entropy(s / T, F.softmax(t / T, -1)) / 3)
    # numpy: -sum p_t log p_s / (B C)
    p_t = np.exp(t.numpy()) / np.exp(t.numpy()).sum(1, keepdims=True)
    log_p_s = s.numpy() - np.log(np.exp(s.numpy()).sum(1, keepdims=True))
    assert float(soft_cross_entropy(s, t)) == pytest.approx(float(-(p_t * log_p_s).sum() / 18), rel=1e-5)


def test_soft_ce_of_one_logit_is_identically_zero_but_mse_is_not():
    """STS-B: log_softmax of one number is 0, so the authors' soft CE gives no signal at all."""
    s = torch.tensor([[0.3], [2.0], [-1.0]], requires_grad=True)
    t = torch.tensor([[4.0], [0.0], [1.0]])
    sce = soft_cross_entropy(s, t)
    assert sce.item() == 0.0
    sce.backward()
    assert float(s.grad.abs().sum()) == 0.0
    s.grad = None
    mse = prediction_loss(s, t, regression=True)
    assert mse.item() == pytest.approx(((0.3 - 4) ** 2 + 4 + 4) / 3)
    mse.backward()
    assert float(s.grad.abs().sum()) > 0
    assert prediction_loss(s, t, regression=True, regression_loss="soft_ce").item() == 0.0
    with pytest.raises(ValueError, match="regression_loss"):
        prediction_loss(s, t, regression=True, regression_loss="huber")


@pytest.mark.parametrize("kind", ["binarybert_stage2", "bit"])
def test_regression_student_gets_a_logit_signal(kind):
    teacher, student = tiny(num_labels=1, seed=0).eval(), tiny("w1a8", num_labels=1, seed=1)
    batch = make_batch(num_labels=1)
    loss = make_kd_loss(kind, teacher)(student, batch)
    assert loss.item() > 0
    loss.backward()
    assert float(student.classifier.weight.grad.abs().sum()) > 0
    # the authors' soft CE: the classifier, which only feeds the logits, gets exactly zero gradient
    authors = make_kd_loss(kind, teacher, regression_loss="soft_ce")(student, batch)
    grad = torch.autograd.grad(authors, student.classifier.weight, allow_unused=True)[0]
    assert grad is None or float(grad.abs().sum()) == 0.0
    if kind == "binarybert_stage2":  # logits only: the whole loss is 0 on STS-B
        assert authors.item() == 0.0


# ----------------------------------------------------------------------------------------------------------
# BinaryBERT stage 1 and BiT


def test_attention_mse_zeroes_masked_scores_in_both():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    masked = torch.zeros(2, 1, 1, 4, dtype=torch.bool)
    masked[1, ..., 2:] = True
    s_m = torch.where(masked, s - 10000.0, s)  # the model adds -10000 at padded keys
    t_m = torch.where(masked, t * 30 - 10000.0, t)  # very different there: must not count
    expected = ((torch.where(masked, 0.0, s) - torch.where(masked, 0.0, t)) ** 2).mean()
    torch.testing.assert_close(attention_score_mse([s_m], [t_m]), expected)
    torch.testing.assert_close(attention_score_mse([s_m, s], [t_m, t]), expected + ((s - t) ** 2).mean())
    # a student that failed to mask (scores > -100 there) IS penalised
    assert float(attention_score_mse([s], [t_m])) > float(expected)


def test_hidden_mse_sums_unweighted_layer_means():
    g = torch.Generator().manual_seed(3)
    hs = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]
    ht = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]
    expected = sum(float(((a - b) ** 2).mean()) for a, b in zip(hs, ht))
    assert float(hidden_state_mse(hs, ht)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="same number of layers"):
        hidden_state_mse(hs, ht[:2])


def test_relative_hidden_distance_averages_each_states_error_over_its_energy():
    g = torch.Generator().manual_seed(4)
    ht = [torch.randn(2, 5, 8, generator=g) * scale for scale in (1.0, 10.0, 0.1)]
    hs = [t + 0.5 * torch.randn(t.shape, generator=g) * t.abs().mean() for t in ht]
    expected = sum(float(((a - b) ** 2).sum() / (b ** 2).sum()) for a, b in zip(hs, ht)) / 3
    assert float(relative_hidden_distance(hs, ht)) == pytest.approx(expected, rel=1e-6)
    # scale-free: multiplying a state of both models by 100 changes nothing (the MSE grows 10,000 times)
    big = [100 * h for h in hs[:1]] + hs[1:], [100 * h for h in ht[:1]] + ht[1:]
    assert float(relative_hidden_distance(*big)) == pytest.approx(expected, rel=1e-5)
    assert float(relative_hidden_distance(ht, ht)) == 0.0
    assert float(relative_hidden_distance([torch.zeros(2, 3)], [torch.ones(2, 3)])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same number of layers"):
        relative_hidden_distance(hs, ht[:2])


def test_stage1_and_bit_on_model_outputs():
    teacher, student = tiny().eval(), tiny("w2a8", seed=1).eval()
    b = make_batch()
    kw = dict(attention_mask=b["attention_mask"], output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        t, s = teacher(b["input_ids"], **kw), student(b["input_ids"], **kw)
    assert len(s.hidden_states) == 3  # embeddings + 2 layers, all in the loss
    expected1 = float(attention_score_mse(s.attention_scores, t.attention_scores)
                      + hidden_state_mse(s.hidden_states, t.hidden_states))
    assert float(binarybert_stage1_loss(s, t)) == pytest.approx(expected1)
    expected_bit = float(soft_cross_entropy(s.logits, t.logits) + hidden_state_mse(s.hidden_states, t.hidden_states))
    assert float(bit_loss(s, t)) == pytest.approx(expected_bit)
    expected_norm = float(soft_cross_entropy(s.logits, t.logits)
                          + relative_hidden_distance(s.hidden_states, t.hidden_states))
    assert float(bit_normalized_loss(s, t)) == pytest.approx(expected_norm)
    assert float(binarybert_stage1_loss(t, t)) == 0.0
    wide = tiny(num_attention_heads=8).eval()  # different head count: the scores do not pair up
    with pytest.raises(ValueError, match="equal head counts"):
        with torch.no_grad():
            binarybert_stage1_loss(wide(b["input_ids"], **kw), t)


# ----------------------------------------------------------------------------------------------------------
# BiBERT's direction-matching distillation


def test_direction_distance_formula_and_scale_invariance():
    g = torch.Generator().manual_seed(4)
    S, T = torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 3, 5, 5, generator=g)
    s, t = S.double().numpy(), T.double().numpy()
    expected = np.sqrt(((s / np.sqrt((s ** 2).sum()) - t / np.sqrt((t ** 2).sum())) ** 2).sum())  # not squared
    assert float(direction_distance(S, T)) == pytest.approx(expected, rel=1e-5)
    assert float(direction_distance(7.5 * S, T)) == pytest.approx(expected, rel=1e-5)
    assert float(direction_distance(S, 3 * S)) == pytest.approx(0.0, abs=1e-6)
    assert 0 <= float(direction_distance(S, T)) <= 2


def test_direction_distance_normalises_over_the_whole_batch():
    """One Frobenius norm for the whole tensor: samples at different scales are NOT each normalised."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(1, 4, 6, generator=g), torch.randn(1, 4, 6, generator=g)
    S = torch.cat([a, 10 * b])
    T = torch.cat([a, b])  # each sample has the same direction as in S
    per_sample = sum(float(direction_distance(S[i], T[i])) for i in range(2))
    assert per_sample == pytest.approx(0.0, abs=1e-6)
    assert float(direction_distance(S, T)) > 0.1


def test_similarity_matrix_is_f_ft_over_sqrt_d():
    f = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(similarity_matrix(f), torch.einsum("bhid,bhjd->bhij", f, f) / math.sqrt(8))


def test_bibert_loss_is_dmd_plus_soft_ce_plus_half_hard_ce():
    teacher, student = tiny().eval(), tiny("bibert", seed=1).eval()
    b = make_batch()
    kw = dict(attention_mask=b["attention_mask"], output_hidden_states=True, output_qkv=True)
    with torch.no_grad():
        t, s = teacher(b["input_ids"], **kw), student(b["input_ids"], **kw)
    dmd = sum(float(direction_distance(similarity_matrix(fs), similarity_matrix(ft)))
              for ls, lt in zip(s.qkv, t.qkv) for fs, ft in zip(ls, lt))
    dmd += sum(float(direction_distance(hs, ht)) for hs, ht in zip(s.hidden_states, t.hidden_states))
    got = float(direction_matching_loss(s.qkv, t.qkv, s.hidden_states, t.hidden_states))
    assert got == pytest.approx(dmd, rel=1e-5)
    pred = float(soft_cross_entropy(s.logits, t.logits)) + 0.5 * float(F.cross_entropy(s.logits, b["labels"]))
    assert float(bibert_loss(s, t, b["labels"])) == pytest.approx(dmd + pred, rel=1e-5)
    assert float(bibert_loss(s, t, regression=True)) == pytest.approx(dmd + float(F.mse_loss(s.logits, t.logits)),
                                                                      rel=1e-5)
    assert float(direction_matching_loss(t.qkv, t.qkv, t.hidden_states, t.hidden_states)) == pytest.approx(0, abs=1e-5)
    with pytest.raises(ValueError, match="needs the labels"):
        bibert_loss(s, t)


def test_masked_dmd_ignores_what_padded_positions_hold():
    """--dmd-mask-padding: other token ids at the padded positions (and garbage in the padded rows of Q, K, V
    and H) leave the masked loss as it is; the code's unmasked loss moves. Real tokens never see the padding."""
    teacher, student = tiny().eval(), tiny("bibert", seed=1).eval()
    b = make_batch()
    pad = b["attention_mask"] == 0
    assert pad.any()
    other = b["input_ids"].clone()
    other[pad] = torch.randint(1, 50, (int(pad.sum()),), generator=torch.Generator().manual_seed(9))
    kw = dict(attention_mask=b["attention_mask"], output_hidden_states=True, output_qkv=True)
    with torch.no_grad():
        t, s = teacher(b["input_ids"], **kw), student(b["input_ids"], **kw)
        t2, s2 = teacher(other, **kw), student(other, **kw)
    assert not torch.allclose(s.hidden_states[-1], s2.hidden_states[-1])  # the padded positions did change
    masked = lambda s, t: float(bibert_loss(s, t, b["labels"], attention_mask=b["attention_mask"]))  # noqa: E731
    assert masked(s2, t2) == pytest.approx(masked(s, t), rel=1e-6)
    assert float(bibert_loss(s2, t2, b["labels"])) != pytest.approx(float(bibert_loss(s, t, b["labels"])), rel=1e-3)
    # the same on the tensors: garbage in the student's padded rows
    g = torch.Generator().manual_seed(10)
    noisy = lambda x: torch.where(pad[:, None, :, None] if x.dim() == 4 else pad[:, :, None],  # noqa: E731
                                  100 * torch.randn(x.shape, generator=g), x)
    qkv = [tuple(map(noisy, layer)) for layer in s.qkv]
    hidden = [noisy(h) for h in s.hidden_states]
    m = b["attention_mask"]
    assert float(direction_matching_loss(qkv, t.qkv, hidden, t.hidden_states, m)) == pytest.approx(
        float(direction_matching_loss(s.qkv, t.qkv, s.hidden_states, t.hidden_states, m)), rel=1e-6)
    assert float(direction_matching_loss(qkv, t.qkv, hidden, t.hidden_states)) > \
        float(direction_matching_loss(s.qkv, t.qkv, s.hidden_states, t.hidden_states)) + 0.1
    # with no padding the two variants agree
    full = torch.ones_like(m)
    assert float(direction_matching_loss(s.qkv, t.qkv, s.hidden_states, t.hidden_states, full)) == pytest.approx(
        float(direction_matching_loss(s.qkv, t.qkv, s.hidden_states, t.hidden_states)), rel=1e-6)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        direction_matching_loss(s.qkv, t.qkv, s.hidden_states, t.hidden_states, m[:, :3])


def test_masked_dmd_kind_reads_the_batch_mask():
    teacher, student = tiny(), tiny("bibert", seed=1).eval()
    b = make_batch()
    masked, plain = make_kd_loss("bibert_masked", teacher), make_kd_loss("bibert", teacher)
    kw = dict(attention_mask=b["attention_mask"], output_hidden_states=True, output_qkv=True)
    with torch.no_grad():
        t, s = teacher.eval()(b["input_ids"], **kw), student(b["input_ids"], **kw)
        expected = float(bibert_loss(s, t, b["labels"], attention_mask=b["attention_mask"]))
        assert float(masked(student, b)) == pytest.approx(expected, rel=1e-6)
        assert float(plain(student, b)) != pytest.approx(expected, rel=1e-4)
        with pytest.raises(ValueError, match="no attention_mask"):
            masked(student, {k: v for k, v in b.items() if k != "attention_mask"})


# ----------------------------------------------------------------------------------------------------------
# make_kd_loss


@pytest.mark.parametrize("kind", sorted(KD_KINDS))
def test_kd_loss_trains_the_student_only(kind):
    bibert = kind.startswith("bibert")
    teacher, student = tiny(), tiny("bibert" if bibert else "w1a8", seed=1)
    loss_fn = make_kd_loss(kind, teacher)
    loss = loss_fn(student, make_batch())
    assert loss.dim() == 0 and bool(torch.isfinite(loss)) and loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())
    # the authors' teacher modes: dropout on for BinaryBERT and BiT, off for BiBERT
    assert teacher.training is (not bibert) and loss_fn.teacher_mode == KD_KINDS[kind][1]


def test_teacher_mode_is_an_option_and_changes_the_targets():
    teacher, student = tiny(), tiny("w1a8", seed=1).eval()  # student in eval: only the teacher can vary
    b = make_batch()
    eval_fn = make_kd_loss("bit", teacher, teacher_mode="eval")
    assert eval_fn(student, b).item() == eval_fn(student, b).item()
    assert not teacher.training
    train_fn = make_kd_loss("bit", teacher, teacher_mode="train")
    assert train_fn(student, b).item() != train_fn(student, b).item()  # teacher dropout: new targets every call
    assert teacher.training
    with pytest.raises(ValueError, match="unknown distillation kind 'tinybert'"):
        make_kd_loss("tinybert", teacher)
    with pytest.raises(ValueError, match="teacher_mode"):
        make_kd_loss("bit", teacher, teacher_mode="frozen")


class Split:
    """The part of a GlueSplit the Trainer reads."""

    def __init__(self, texts, labels):
        self.texts_a, self.texts_b, self.labels = texts, None, labels

    def __len__(self):
        return len(self.texts_a)


def test_kd_loss_drives_the_trainer(tmp_path):
    from binlab.train.trainer import TrainConfig, Trainer

    words = ["good", "bad", "plot", "film", "dull", "great", "very", "not"]
    vocab = {w: i + 5 for i, w in enumerate(words)}

    def encode(a, b, max_length):
        ids = [[2] + [vocab[w] for w in s.split()][: max_length - 1] for s in a]
        L = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [0] * (L - len(x)) for x in ids])
        return dict(input_ids=input_ids, attention_mask=(input_ids > 0).long(),
                    token_type_ids=torch.zeros_like(input_ids))

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 6))) for _ in range(24)]
    data = Split(texts, [int("good" in t) for t in texts])
    teacher, student = tiny(num_labels=2), tiny("w1a8", num_labels=2, seed=1)

    def evaluate(model, dev):
        return 0.0, {}

    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=8, eval_every=0, save_every=0, progress=False)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = Trainer(student, data, data, encode, evaluate, tmp_path, cfg, loss_fn=make_kd_loss("bit", teacher),
                     num_labels=2).fit()
    assert result["steps"] == 3 and math.isfinite(result["final_train_loss"])
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
