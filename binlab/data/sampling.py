"""The order in which a training run sees its examples: plain shuffling, or length-grouped batches.

A batch is padded to its longest sequence, so a random batch of SST-2 (mostly short phrases: 13.4 tokens on
average, 40.6 for the longest of 32) is two thirds padding. Length grouping (as in Hugging Face's
``LengthGroupedSampler``) keeps the batches random but similar in length:

    1. shuffle all examples (the same permutation as without grouping);
    2. cut the permutation into groups of ``group_batches * batch_size`` examples;
    3. sort each group by length (longest first; ties keep their shuffled order);
    4. cut the groups into batches and shuffle the order of the full batches (the few examples left over at
       the end of the epoch stay last, so that every batch but the last is full).

Every example is still seen once per epoch and the order is a pure function of the generator's seed, so a resumed
run sees the same batches. What changes is which examples share a batch: the gradient of one batch averages
sentences of one length, and the step time falls with the padding.
"""

from __future__ import annotations

from typing import Sequence

import torch

from binlab.data.glue import select_texts

__all__ = ["shuffled_order", "encoded_lengths", "length_grouped_order", "padding_share"]


def shuffled_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of ``range(n)`` (int64)."""
    return torch.randperm(n, generator=generator)


def encoded_lengths(split, encode, max_length: int, chunk: int = 1024) -> torch.Tensor:
    """The encoded length of every example of ``split`` (tokens, at most ``max_length``), what grouping sorts by.
    ``encode(texts_a, texts_b, max_length)`` is the tokenizer's ``encode_batch``; ``chunk`` examples at a time."""
    return torch.cat([encode(*select_texts(split, range(start, min(start + chunk, len(split)))), max_length)
                      ["attention_mask"].sum(dim=1) for start in range(0, len(split), chunk)])


def length_grouped_order(lengths: Sequence[int] | torch.Tensor, batch_size: int, generator: torch.Generator,
                         group_batches: int = 50) -> torch.Tensor:
    """A permutation of ``range(len(lengths))`` whose consecutive ``batch_size`` chunks hold similar lengths.

    Args:
        lengths: the encoded length of every example (tokens, padding excluded).
        batch_size: the training batch size the order will be cut into.
        generator: draws the shuffles (its first draw is the permutation :func:`shuffled_order` would give).
        group_batches: batches per sorted group: larger groups pad less and mix lengths less.
    """
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be one length per example (1-d), got shape {tuple(lengths.shape)}")
    if batch_size < 1 or group_batches < 1:
        raise ValueError(f"batch_size and group_batches must be positive, got {batch_size} and {group_batches}")
    n = len(lengths)
    order = shuffled_order(n, generator)
    group = batch_size * group_batches
    sorted_groups = []
    for start in range(0, n, group):
        chunk = order[start:start + group]
        keys = lengths[chunk]
        sorted_groups.append(chunk[torch.sort(keys, descending=True, stable=True).indices])
    order = torch.cat(sorted_groups) if sorted_groups else order
    n_full = n // batch_size
    full = order[:n_full * batch_size].reshape(n_full, batch_size)
    full = full[torch.randperm(n_full, generator=generator)]
    return torch.cat([full.reshape(-1), order[n_full * batch_size:]])


def padding_share(order: torch.Tensor, lengths: Sequence[int] | torch.Tensor, batch_size: int) -> float:
    """The share of padding tokens when ``order`` is cut into batches of ``batch_size`` padded to their longest."""
    lengths = torch.as_tensor(lengths)
    real = padded = 0
    for start in range(0, len(order), batch_size):
        chunk = lengths[order[start:start + batch_size]]
        real += int(chunk.sum())
        padded += int(chunk.max()) * len(chunk)
    return 1.0 - real / padded if padded else 0.0
