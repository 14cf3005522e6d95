"""``binlab profile``: every variant timed part by part on the same student, and the table it prints."""

from __future__ import annotations

import warnings

import pytest

from binlab.checkpoint import save_pretrained
from binlab.methods.profile import PARTS, VARIANTS, markdown, profile_kd_step
from binlab.model import tiny_bert
from binlab.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    save_pretrained(tiny_bert(2, seed=0), folder, tokenizer=load_tokenizer(None))
    return folder


def test_profile_times_every_part_of_every_variant(teacher_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic stand-in for SST-2
        result = profile_kd_step(teacher_dir, "sst2", None, rounds=3, warmup=1, max_train=400, progress=None)
    assert [r["variant"] for r in result["rows"]] == [v.name for v in VARIANTS]
    for row in result["rows"]:
        assert all(row["median_s"][p] > 0 for p in PARTS)
        assert row["median_s"]["total"] >= max(row["median_s"][p] for p in PARTS)
        assert row["speedup"] > 0
    assert result["rows"][0]["speedup"] == 1.0
    plain, grouped = result["rows"][0], result["rows"][1]
    # grouping pads less over the epoch (the synthetic sentences vary in length)
    assert grouped["epoch_padding_share"] < plain["epoch_padding_share"]
    table = markdown(result)
    assert table.count("\n| ") == len(VARIANTS) + 1 and "speed-up" in table and "1.00x" in table


def test_profile_refuses_bad_arguments(teacher_dir):
    with pytest.raises(ValueError, match="rounds must be positive"):
        profile_kd_step(teacher_dir, rounds=0)
