"""Length-grouped batches: still a permutation, one order per seed, batches of similar length, less padding."""

from __future__ import annotations

import pytest
import torch

from binlab.data.sampling import encoded_lengths, length_grouped_order, padding_share, shuffled_order


def _lengths(n=2000, seed=0):
    # SST-2-like: mostly short, a long tail
    g = torch.Generator().manual_seed(seed)
    return (3 + (-12 * torch.rand(n, generator=g).log())).clamp(max=64).long()


@pytest.mark.parametrize("n,batch_size", [(2000, 32), (1001, 32), (37, 8), (5, 16)])
def test_grouped_order_is_a_permutation_with_full_batches_first(n, batch_size):
    lengths = _lengths(n)
    order = length_grouped_order(lengths, batch_size, torch.Generator().manual_seed(3), group_batches=4)
    assert sorted(order.tolist()) == list(range(n))
    # the leftover examples (n mod batch_size) are the last batch; every earlier batch is full and sorted
    n_full = n // batch_size
    for b in range(n_full):
        chunk = lengths[order[b * batch_size:(b + 1) * batch_size]]
        assert torch.all(chunk[:-1] >= chunk[1:]), f"batch {b} is not one sorted run of its group"


def test_grouped_order_is_a_function_of_the_seed():
    lengths = _lengths()
    a = length_grouped_order(lengths, 32, torch.Generator().manual_seed(7))
    b = length_grouped_order(lengths, 32, torch.Generator().manual_seed(7))
    c = length_grouped_order(lengths, 32, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_grouping_removes_most_of_the_padding():
    lengths = _lengths()
    plain = padding_share(shuffled_order(len(lengths), torch.Generator().manual_seed(0)), lengths, 32)
    grouped = padding_share(length_grouped_order(lengths, 32, torch.Generator().manual_seed(0)), lengths, 32)
    assert plain > 0.5 and grouped < 0.1, (plain, grouped)
    # one group of the whole set sorts it completely: padding only where lengths differ inside a batch
    whole = length_grouped_order(lengths, 32, torch.Generator().manual_seed(0), group_batches=10_000)
    assert padding_share(whole, lengths, 32) <= grouped


def test_padding_share_counts_padded_tokens():
    assert padding_share(torch.tensor([0, 1, 2, 3]), torch.tensor([4, 2, 3, 3]), 2) == pytest.approx(1 - 12 / 14)


@pytest.mark.parametrize("lengths,batch_size,group,match", [
    (torch.ones(3, 2), 4, 5, "1-d"), (torch.ones(4), 0, 5, "positive"), (torch.ones(4), 2, 0, "positive")])
def test_bad_arguments_are_named(lengths, batch_size, group, match):
    with pytest.raises(ValueError, match=match):
        length_grouped_order(lengths, batch_size, torch.Generator(), group_batches=group)


def test_encoded_lengths_count_real_tokens_in_chunks():
    import warnings

    from binlab.data.glue import load_glue
    from binlab.tokenizer import load_tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = load_glue("sst2", "train", source="synthetic", max_examples=50)
    tok = load_tokenizer(None)
    encode = lambda a, b, n: tok.encode_batch(a, b, max_length=n)  # noqa: E731
    lengths = encoded_lengths(split, encode, 16, chunk=7)
    expected = [int(tok.encode_batch([t], None, max_length=16)["attention_mask"].sum()) for t in split.texts_a]
    assert lengths.tolist() == expected and max(expected) <= 16
