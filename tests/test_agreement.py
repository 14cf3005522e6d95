"""layer_agreement: a model agrees with itself exactly, a binarized copy less, and the numbers match their formulas."""

from __future__ import annotations

import pytest
import torch

from binlab.analysis.agreement import agreement_table, layer_agreement
from binlab.model import tiny_bert


def _batch(seed=0, B=3, L=7):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 4:] = 0  # a padded sentence
    return {"input_ids": torch.randint(1000, 2000, (B, L), generator=g), "attention_mask": mask,
            "token_type_ids": torch.zeros(B, L, dtype=torch.long)}


def test_a_model_agrees_with_itself_and_a_binarized_copy_less():
    teacher = tiny_bert(2, seed=0)
    student = tiny_bert(2, "bit", seed=0)
    student.load_state_dict(teacher.state_dict(), strict=False)
    teacher.train()
    same = layer_agreement(teacher, teacher, [_batch()])
    assert teacher.training  # the mode is given back
    assert len(same) == teacher.config.num_hidden_layers + 1
    for r in same:
        assert r["cosine"] == pytest.approx(1.0) and r["mse"] == 0 and r["rel_mse"] == 0
    bin_rows = layer_agreement(student, teacher, [_batch(), _batch(1)])
    assert all(r["cosine"] < 0.999 and r["mse"] > 0 for r in bin_rows[1:])
    assert "| embeddings |" in agreement_table(bin_rows) and "| layer 2 |" in agreement_table(bin_rows)


def test_the_numbers_follow_their_formulas_on_real_tokens_only():
    teacher, other = tiny_bert(2, seed=0), tiny_bert(2, seed=1)
    batch = _batch()
    row = layer_agreement(other, teacher, [batch], top=3)[-1]
    with torch.no_grad():
        kw = dict(attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"],
                  output_hidden_states=True)
        s = other.eval()(batch["input_ids"], **kw).hidden_states[-1][batch["attention_mask"].bool()].double()
        t = teacher.eval()(batch["input_ids"], **kw).hidden_states[-1][batch["attention_mask"].bool()].double()
    assert len(t) == 3 * 7 - 3
    assert row["cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(s, t, dim=-1).mean()))
    assert row["mse"] == pytest.approx(float(((s - t) ** 2).mean()))
    assert row["rel_mse"] == pytest.approx(float(((s - t) ** 2).mean() / (t ** 2).mean()))
    per_dim = (t ** 2).mean(dim=0)
    assert row["top_dims"] == pytest.approx(float(per_dim.topk(3).values.sum() / per_dim.sum()))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no real tokens"):
        layer_agreement(tiny_bert(2, seed=0), tiny_bert(2, seed=0), [])
    with pytest.raises(ValueError, match="1 layers and the teacher 2"):
        layer_agreement(tiny_bert(2, seed=0, num_hidden_layers=1), tiny_bert(2, seed=0), [_batch()])
