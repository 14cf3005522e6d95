"""A synthetic GLUE-style task that binlab writes itself, for working with no data and no network.

The sentences are about films: a *clause* is ``<det> <noun> <verb> [not] [intensifier] <adjective>``,
e.g. "the plot is not very good". Each clause carries a sentiment value:

* adjective polarity: +1 (good, great, ...) or −1 (bad, dull, ...);
* strength: plain adjective 2, "very"/"really" 3, "extremely"/"truly" 4;
* negation flips the sign and weakens it to 1: "not good" = −1, "not extremely bad" = +1.

So value ∈ {±1, ±2, ±3, ±4}. Four variants, one per kind of GLUE task:

``sentiment`` (SST-2-like; label 1 = positive)
    One clause, or two joined by "but" with opposite signs; the clause after "but" decides
    ("the plot is good but the acting is dull" is negative). Swapping the clauses flips the label
    while keeping the same bag of words, and "not" only negates the adjective that follows it, so a
    model must use word order: a bag-of-words classifier cannot solve it.
``acceptability`` (CoLA-like; label 1 = acceptable)
    A sentiment sentence, or (label 0) the same sentence with two different adjacent words swapped
    ("the plot good is"), which breaks the grammar above.
``pair`` (MNLI/RTE/QNLI/MRPC/QQP/WNLI-like; label a relation name)
    Sentence A has one or two clauses about different nouns; sentence B is one clause.
    "entailment": B is about a noun of A with the same sign ("the plot is very good" /
    "the plot is not bad"); "contradiction": same noun, opposite sign; "neutral": a noun A does
    not mention. With ``num_classes=2`` half the pairs are entailment.
``similarity`` (STS-B-like; label a float in [0, 5])
    score = 3·[same noun] + 2·(1 − |value_A − value_B| / 8): intensifiers and negation move it.

Everything is deterministic: the same ``(kind, n, seed)`` gives the same examples on every machine
(Python's ``random.Random`` seeded with a string). Data from here is never real GLUE: the loader in
:mod:`binlab.data.glue` always announces it with a :class:`SyntheticDataWarning` and ``synthetic=True``.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

__all__ = [
    "KINDS",
    "PAIR_RELATIONS",
    "SyntheticDataWarning",
    "Clause",
    "SyntheticData",
    "generate",
    "clause_value",
    "similarity_score",
]

POSITIVE = ("good", "great", "fine", "charming", "brilliant", "funny", "moving", "clever")
NEGATIVE = ("bad", "awful", "dull", "boring", "clumsy", "weak", "silly", "tedious")
#: intensifier -> strength of the adjective it modifies (a plain adjective has strength 2)
INTENSIFIERS = {"very": 3, "really": 3, "extremely": 4, "truly": 4}
PLAIN_STRENGTH = 2
NEGATED_STRENGTH = 1
NOUNS = ("movie", "film", "plot", "story", "acting", "cast", "script", "ending", "music", "dialogue")
DETERMINERS = ("the", "this", "that")
VERBS = ("is", "was", "seems", "feels")
NEGATION = "not"
CONTRAST = "but"

KINDS = ("sentiment", "acceptability", "pair", "similarity")
#: relation names used by the ``pair`` kind (binlab.data.glue maps them to each task's labels)
PAIR_RELATIONS = ("entailment", "contradiction", "neutral")


class SyntheticDataWarning(UserWarning):
    """Issued every time synthetic data stands in for a real GLUE task."""


# Shown every time, not once per call site: a learner must not mistake these numbers for GLUE.
warnings.filterwarnings("always", category=SyntheticDataWarning)


@dataclass(frozen=True)
class Clause:
    """One clause: ``<det> <noun> <verb> [not] [intensifier] <adjective>``."""

    det: str
    noun: str
    verb: str
    negated: bool
    intensifier: str | None
    adjective: str

    @property
    def words(self) -> list[str]:
        w = [self.det, self.noun, self.verb]
        if self.negated:
            w.append(NEGATION)
        if self.intensifier:
            w.append(self.intensifier)
        w.append(self.adjective)
        return w

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def value(self) -> int:
        return clause_value(self.negated, self.intensifier, self.adjective)


def clause_value(negated: bool, intensifier: str | None, adjective: str) -> int:
    """Sentiment value of a clause (see the module docstring): in {±1, ±2, ±3, ±4}."""
    if adjective in POSITIVE:
        polarity = 1
    elif adjective in NEGATIVE:
        polarity = -1
    else:
        raise ValueError(f"unknown adjective {adjective!r}")
    if intensifier is not None and intensifier not in INTENSIFIERS:
        raise ValueError(f"unknown intensifier {intensifier!r}")
    if negated:
        return -polarity * NEGATED_STRENGTH
    strength = INTENSIFIERS[intensifier] if intensifier else PLAIN_STRENGTH
    return polarity * strength


def similarity_score(a: Clause, b: Clause) -> float:
    """STS-like score in [0, 5]: 3·[same noun] + 2·(1 − |value_a − value_b| / 8), 3 decimals."""
    same = 3.0 if a.noun == b.noun else 0.0
    return round(same + 2.0 * (1.0 - abs(a.value - b.value) / 8.0), 3)


@dataclass
class SyntheticData:
    """Generated examples: ``texts_b`` is None for single-sentence kinds.

    ``labels``: int for sentiment/acceptability (0/1), a relation name from
    :data:`PAIR_RELATIONS` for ``pair``, a float for ``similarity``.
    """

    kind: str
    seed: int
    split: str
    texts_a: list[str]
    texts_b: list[str] | None
    labels: list


def _clause(rng: random.Random, sign: int | None = None, noun: str | None = None) -> Clause:
    """A random clause; ``sign`` (+1/−1) fixes the sign of its value, ``noun`` its noun."""
    negated = rng.random() < 0.35
    intensifier = rng.choice(tuple(INTENSIFIERS)) if rng.random() < 0.4 else None
    if sign is None:
        sign = rng.choice((1, -1))
    # negation flips the sign, so a negated positive clause needs a negative adjective
    polarity = -sign if negated else sign
    adjective = rng.choice(POSITIVE if polarity > 0 else NEGATIVE)
    return Clause(
        det=rng.choice(DETERMINERS),
        noun=noun if noun is not None else rng.choice(NOUNS),
        verb=rng.choice(VERBS),
        negated=negated,
        intensifier=intensifier,
        adjective=adjective,
    )


def _sentiment(rng: random.Random) -> tuple[list[Clause], int]:
    label = rng.randrange(2)
    sign = 1 if label == 1 else -1
    if rng.random() < 0.5:
        return [_clause(rng, sign)], label
    last = _clause(rng, sign)
    nouns = [n for n in NOUNS if n != last.noun]
    first = _clause(rng, -sign, rng.choice(nouns))
    return [first, last], label


def _join(clauses: list[Clause]) -> list[str]:
    words: list[str] = []
    for i, c in enumerate(clauses):
        if i:
            words.append(CONTRAST)
        words.extend(c.words)
    return words


def _swap_adjacent(rng: random.Random, words: list[str]) -> list[str]:
    spots = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
    i = rng.choice(spots)
    out = list(words)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


def _pair(rng: random.Random, num_classes: int) -> tuple[str, str, str]:
    if num_classes == 3:
        relation = rng.choice(PAIR_RELATIONS)
    else:
        relation = "entailment" if rng.random() < 0.5 else rng.choice(PAIR_RELATIONS[1:])
    n_a = rng.choice((1, 2))
    nouns_a = rng.sample(NOUNS, n_a)
    clauses_a = [_clause(rng, noun=n) for n in nouns_a]
    if relation == "neutral":
        b = _clause(rng, noun=rng.choice([n for n in NOUNS if n not in nouns_a]))
    else:
        target = rng.choice(clauses_a)
        sign = 1 if target.value > 0 else -1
        b = _clause(rng, sign if relation == "entailment" else -sign, target.noun)
    return " ".join(_join(clauses_a)), b.text, relation


def generate(
    kind: str, n: int, seed: int = 0, *, split: str = "train", num_classes: int = 3
) -> SyntheticData:
    """``n`` examples of ``kind`` (one of :data:`KINDS`), deterministic in ``(seed, split)``.

    ``split`` only names an independent stream (train and dev of one seed differ); the first
    ``m`` examples of ``generate(kind, n)`` are ``generate(kind, m)`` for m < n.
    ``num_classes`` (2 or 3) only matters for ``kind="pair"``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not isinstance(split, str):
        raise TypeError(f"split must be a string, got {split!r}")
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes!r}")
    rng = random.Random(f"binlab-synthetic/{kind}/{num_classes}/{split}/{seed}")
    texts_a: list[str] = []
    texts_b: list[str] | None = [] if kind in ("pair", "similarity") else None
    labels: list = []
    for _ in range(n):
        if kind == "sentiment":
            clauses, label = _sentiment(rng)
            texts_a.append(" ".join(_join(clauses)))
            labels.append(label)
        elif kind == "acceptability":
            clauses, _ = _sentiment(rng)
            words = _join(clauses)
            label = rng.randrange(2)
            if label == 0:
                words = _swap_adjacent(rng, words)
            texts_a.append(" ".join(words))
            labels.append(label)
        elif kind == "pair":
            a, b, relation = _pair(rng, num_classes)
            texts_a.append(a)
            texts_b.append(b)  # type: ignore[union-attr]
            labels.append(relation)
        else:  # similarity
            ca = _clause(rng)
            cb = _clause(rng, noun=ca.noun if rng.random() < 0.6 else None)
            texts_a.append(ca.text)
            texts_b.append(cb.text)  # type: ignore[union-attr]
            labels.append(similarity_score(ca, cb))
    return SyntheticData(kind=kind, seed=seed, split=split, texts_a=texts_a, texts_b=texts_b, labels=labels)
