"""WordPiece tokenization for BERT, with the ``tokenizers`` library.

The tokenizer comes from the checkpoint's own files: ``tokenizer.json`` when it ships one, otherwise a
BERT WordPiece tokenizer built from ``vocab.txt`` (lower-casing as ``tokenizer_config.json`` says). Padding
and truncation settings stored in tokenizer.json are switched off (all-MiniLM-L6-v2's pads everything to
128): :meth:`BertTokenizer.encode_batch` truncates to ``max_length`` and pads each batch only to its longest
sequence (dynamic padding), which is much faster for short GLUE sentences.

A single sentence becomes ``[CLS] a [SEP]``; a pair ``[CLS] a [SEP] b [SEP]`` with token_type_ids 0 for the
first part and 1 for the second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from binlab.checkpoint import atomic_write_bytes
from binlab.checkpoint import resolve_model_dir

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class BertTokenizer:
    """Text -> (input_ids, attention_mask, token_type_ids) for a BERT checkpoint."""

    def __init__(self, tokenizer: Tokenizer):
        tokenizer.no_padding()  # we pad ourselves, per batch
        tokenizer.no_truncation()  # set per call from max_length
        self.tokenizer = tokenizer
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None and t != "[MASK]"]
        if missing:
            raise ValueError(f"the vocabulary has no {missing}: not a BERT WordPiece vocabulary")
        self.pad_token_id = tokenizer.token_to_id("[PAD]")
        self.cls_token_id = tokenizer.token_to_id("[CLS]")
        self.sep_token_id = tokenizer.token_to_id("[SEP]")
        self.unk_token_id = tokenizer.token_to_id("[UNK]")

    @classmethod
    def from_vocab(cls, vocab_file: str | os.PathLike, lowercase: bool = True) -> BertTokenizer:
        """BERT's tokenizer from a ``vocab.txt`` (one token per line, the line number is the id)."""
        lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        vocab = {token: i for i, token in enumerate(lines)}
        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                  max_input_chars_per_word=100))
        # clean control characters, space out CJK characters, lower-case (and strip accents) if uncased
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # split on whitespace and punctuation
        if "[CLS]" not in vocab or "[SEP]" not in vocab:
            raise ValueError(f"{vocab_file} has no [CLS] / [SEP]: not a BERT vocabulary")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        tok.decoder = decoders.WordPiece(prefix="##")
        return cls(tok)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> BertTokenizer:
        """From a checkpoint directory: its ``tokenizer.json``, else its ``vocab.txt``."""
        model_dir = Path(model_dir)
        if (model_dir / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(model_dir / "tokenizer.json")))
        if (model_dir / "vocab.txt").is_file():
            lowercase = True
            config_file = model_dir / "tokenizer_config.json"
            if config_file.is_file():
                lowercase = bool(json.loads(config_file.read_text()).get("do_lower_case", True))
            return cls.from_vocab(model_dir / "vocab.txt", lowercase=lowercase)
        raise FileNotFoundError(f"{model_dir} has neither tokenizer.json nor vocab.txt")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode_batch(self, texts_a, texts_b=None, max_length: int | None = 128) -> dict[str, torch.Tensor]:
        """Tokenize a batch of sentences (or sentence pairs) into padded tensors of shape (B, L).

        L is the longest encoded sequence in the batch, at most ``max_length`` (pairs are truncated
        longest-first, as in BERT). Returns ``input_ids`` (padding = [PAD]), ``attention_mask`` (1 = real
        token) and ``token_type_ids`` (0 = first sentence, 1 = second), all int64.
        """
        texts_a = [texts_a] if isinstance(texts_a, str) else list(texts_a)
        if texts_b is not None:
            texts_b = [texts_b] if isinstance(texts_b, str) else list(texts_b)
        if not texts_a:
            raise ValueError("encode_batch got no texts")
        for name, texts in (("texts_a", texts_a), ("texts_b", texts_b or [])):
            bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
            if bad:
                raise TypeError(f"{name}[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str")
        if texts_b is not None and len(texts_b) != len(texts_a):
            raise ValueError(f"texts_a has {len(texts_a)} texts but texts_b has {len(texts_b)}")
        if max_length is None:
            self.tokenizer.no_truncation()
        else:
            n_special = 2 if texts_b is None else 3
            if max_length <= n_special:
                raise ValueError(f"max_length={max_length} leaves no room for text next to the "
                                 f"{n_special} special tokens")
            self.tokenizer.enable_truncation(max_length, strategy="longest_first")
        inputs = texts_a if texts_b is None else list(zip(texts_a, texts_b))
        encodings = self.tokenizer.encode_batch(inputs)

        B, L = len(encodings), max(len(e.ids) for e in encodings)
        input_ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((B, L), dtype=torch.long)
        token_type_ids = torch.zeros((B, L), dtype=torch.long)
        for i, e in enumerate(encodings):  # right padding: the real tokens first
            n = len(e.ids)
            input_ids[i, :n] = torch.tensor(e.ids)
            attention_mask[i, :n] = 1
            token_type_ids[i, :n] = torch.tensor(e.type_ids)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    def __call__(self, texts_a, texts_b=None, max_length: int | None = 128) -> dict[str, torch.Tensor]:
        return self.encode_batch(texts_a, texts_b, max_length)

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of one text, without [CLS]/[SEP]: ``"unbelievable"`` -> ``['un', '##bel', ...]``."""
        self.tokenizer.no_truncation()
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, save_dir: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``vocab.txt`` into ``save_dir`` (atomically, like the weights)."""

        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(save_dir / "tokenizer.json", self.tokenizer.to_str(pretty=True).encode())
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        if [i for _, i in vocab] != list(range(len(vocab))):
            return  # ids with gaps cannot be written as line numbers; tokenizer.json has everything
        atomic_write_bytes(save_dir / "vocab.txt", "".join(f"{t}\n" for t, _ in vocab).encode("utf-8"))


def load_tokenizer(name_or_path: str | os.PathLike | None = None) -> BertTokenizer:
    """The tokenizer of a checkpoint (default: the bundled all-MiniLM-L6-v2), see :func:`resolve_model_dir`."""

    return BertTokenizer.from_dir(resolve_model_dir(name_or_path))


__all__ = ["BertTokenizer", "load_tokenizer"]
