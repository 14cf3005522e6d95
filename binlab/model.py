"""A readable BERT that binarizes.

One file, one class per concept of the BERT paper, read top to bottom like its figure::

    BertEmbeddings      word (quantized) + position + token type (FP), LayerNorm
    BertSelfAttention   Q, K, V projections, the attention matrix, the context
    BertAttentionOutput output projection, residual, LayerNorm
    BertFFN             intermediate (GELU or ReLU), output projection, residual, LayerNorm
    BertLayer           attention + attention output + FFN
    BertEncoder         a stack of layers
    BertPooler          the [CLS] vector through a (quantized) dense layer and tanh
    BertModel           embeddings + encoder + pooler
    BertForSequenceClassification   BertModel + an FP classifier (num_labels = 1: regression)

How much of it is binarized is set in ONE place, ``config.quant`` (a :class:`binlab.quant.config.QuantConfig`).
With ``QuantConfig()`` (32 bits everywhere) this is exactly Hugging Face's ``BertModel``; the tests check that
to 1e-5. The binarization points are written out in the forward passes below, marked ``# [Q]``:

* every ``QuantLinear`` quantizes its weight AND its input activation inside its own forward
  (``input_signed=False`` for the FFN output layer, whose input is the non-negative GELU/ReLU output);
* the word embedding is a ``QuantEmbedding`` (its table is quantized; position and token-type tables are FP);
* in attention, Q, K and V are quantized after their projection, and the attention matrix according to
  ``config.quant.attention``:

  ``"softmax"``   probs = softmax(QK^T/sqrt(d) + mask), then probs quantized (unsigned) when act_bits < 32 (BinaryBERT);
  ``"softmax01"`` the same code path; with BiT's elastic activations the unsigned quantizer maps probs -> {0, alpha};
  ``"bool"``      no softmax: A = bool(QK^T/sqrt(d) + mask) in {0, 1}, ctx = A @ V, with Q, K, V = sign(.) (BiBERT).
                  bool(0) = 0 and dropout on the scores before bool() (the code); ``quant.bool_zero = 1``: bool(0) = 1
                  (the paper), dropout on the map after bool() (see BertSelfAttention).

  ``config.quant.quantize_attention = False`` leaves Q, K, V and the probabilities full precision.

What stays full precision (methods.md §1): LayerNorms, biases, residual additions, position and token-type
embeddings, softmax / GELU / ReLU / tanh, and the classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from binlab.quant.config import FFN_ACTS, QuantConfig
from binlab.quant.layers import QuantEmbedding, QuantLinear, make_act_quantizer
from binlab.quant.quantizers import ste_bool

MASK_VALUE = -10000.0  # added to the scores of padded keys, as in BERT and all three papers' code


# ----------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class BertConfig:
    """The shape of the network, plus ``quant``: which tensors are quantized and how.

    The defaults are BERT-base. ``num_labels = 1`` makes the head a regressor (STS-B).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    num_labels: int = 2
    initializer_range: float = 0.02
    attention_head_size: int | None = None  # None: hidden_size // num_attention_heads; set by width pruning
    quant: QuantConfig = field(default_factory=QuantConfig)

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.attention_head_size is not None:
            if isinstance(self.attention_head_size, bool) or not isinstance(self.attention_head_size, int) \
                    or self.attention_head_size < 1:
                raise ValueError(f"BertConfig.attention_head_size must be a positive int or None, "
                                 f"got {self.attention_head_size!r}")
        elif self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads})")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if isinstance(self.quant, str):  # BertConfig(quant="w1a1") is allowed as a shorthand
            self.quant = QuantConfig.preset(self.quant)
        if not isinstance(self.quant, QuantConfig):
            raise TypeError(f"BertConfig.quant must be a QuantConfig or a preset name, got {type(self.quant)}")

    @property
    def head_size(self) -> int:
        return self.attention_head_size or self.hidden_size // self.num_attention_heads

    @property
    def attention_size(self) -> int:
        """Width of Q, K, V and the context: num_heads * head_size (hidden_size unless heads were pruned)."""
        return self.num_attention_heads * self.head_size

    # Hugging Face config.json <-> BertConfig. binlab adds two keys that transformers ignores:
    # "num_labels" and "binlab_quant" (the QuantConfig as a dict).

    @classmethod
    def from_hf_dict(cls, d: dict, **overrides) -> BertConfig:
        """Read a Hugging Face ``config.json`` dict; ``overrides`` replace fields (e.g. ``num_labels=3``)."""
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"expected a BERT checkpoint (model_type 'bert'), got model_type {model_type!r}")
        pos_type = d.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"only absolute position embeddings are supported, got {pos_type!r}")
        act = d.get("hidden_act", "gelu")
        if act not in FFN_ACTS:
            raise ValueError(f"hidden_act {act!r} is not supported (binlab's BERT uses 'gelu' or 'relu')")
        if "binlab_quant" in d:
            quant = QuantConfig.from_dict(d["binlab_quant"])
        else:
            quant = QuantConfig() if act == "gelu" else replace(QuantConfig(), ffn_act=act)
        if "num_labels" in d:
            num_labels = d["num_labels"]
        elif "id2label" in d:
            num_labels = len(d["id2label"])
        else:
            num_labels = cls.num_labels
        known = {f.name for f in fields(cls)} - {"quant", "num_labels"}
        kwargs = {k: d[k] for k in known if k in d}
        kwargs.update(num_labels=num_labels, quant=quant)
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown BertConfig field(s): {sorted(unknown)}")
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict:
        """A ``config.json`` dict that transformers' ``BertConfig`` also reads (quantization is ignored there)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "quant"}
        if self.attention_head_size is None:  # the default: transformers derives it from hidden_size
            del d["attention_head_size"]
        d.update(model_type="bert", architectures=["BertForSequenceClassification"], hidden_act=self.quant.ffn_act,
                 position_embedding_type="absolute", pad_token_id=0,
                 id2label={str(i): f"LABEL_{i}" for i in range(self.num_labels)},
                 label2id={f"LABEL_{i}": i for i in range(self.num_labels)},
                 binlab_quant=self.quant.to_dict())
        if self.num_labels == 1:
            d["problem_type"] = "regression"
        return d


# ----------------------------------------------------------------------------------------------------------
# the network


@dataclass
class ModelOutput:
    """What a forward pass returns. The optional fields are None unless asked for."""

    logits: torch.Tensor | None  # (B, num_labels); None from the bare BertModel
    pooled_output: torch.Tensor  # (B, D) tanh(W_p h_[CLS] + b)
    last_hidden_state: torch.Tensor  # (B, L, D)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # num_layers + 1 of (B, L, D): embeddings, then each layer
    attention_scores: tuple[torch.Tensor, ...] | None = None  # per layer (B, H, L, L): QK^T/sqrt(d) + mask
    qkv: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...] | None = None  # per layer FP (Q, K, V), (B, H, L, d)


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings, LayerNorm, dropout. Only the word table is quantized."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = QuantEmbedding(config.vocab_size, config.hidden_size, config.quant)  # [Q]
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)  # FP
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)  # FP
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        L = input_ids.shape[1]
        positions = torch.arange(L, device=input_ids.device)  # (L,)
        x = (self.word_embeddings(input_ids)  # [Q] rows of the quantized word table, (B, L, D)
             + self.position_embeddings(positions)  # (L, D), broadcast over the batch
             + self.token_type_embeddings(token_type_ids))  # (B, L, D)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head attention up to the context vectors (the output projection is BertAttentionOutput).

    BiBERT's Bi-Attention (``quant.attention == "bool"``, methods.md §3.3) replaces softmax(scores) by a {0, 1} map::

        scores = sign(Q) sign(K)^T / sqrt(d) + mask       an integer times 1/sqrt(d): exact zeros are common
        A      = bool(scores),  ctx = A @ sign(V)         no softmax, no 1/k normalisation

    ``quant.bool_zero`` says what a score of exactly 0 becomes, and so where the attention dropout goes:

        bool_zero = 0   bool(x) = 1{x > 0}    A = bool(dropout(scores))   BiBERT's code (its published numbers)
        bool_zero = 1   bool(x) = 1{x >= 0}   A = dropout(bool(scores))   the paper's bool; dropout before it
                                                                          would turn dropped scores into 1s

    In both a dropped entry of A is 0. The straight-through gradient of bool is 1{|x| <= 1} (:func:`ste_bool`).
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        q = config.quant
        D, A = config.hidden_size, config.attention_size  # A = D unless heads were pruned
        self.num_heads, self.head_size = config.num_attention_heads, config.head_size
        self.mode, self.bool_zero = q.attention, q.bool_zero
        self.query = QuantLinear(D, A, config=q)  # [Q] weight and input quantized inside
        self.key = QuantLinear(D, A, config=q)
        self.value = QuantLinear(D, A, config=q)
        # Activation quantizers for what the attention multiplies: Identity at 32 bits, or when
        # quant.quantize_attention is False (BiT's --not_quantize_attention).
        # q.qkv_threshold: a learned per-channel threshold on each of them (BiT's paper; its code's are dead).
        aq = q if q.quantize_attention else QuantConfig()
        channels = A if q.qkv_threshold else None
        self.query_quant = make_act_quantizer(aq, signed=True, num_features=channels)
        self.key_quant = make_act_quantizer(aq, signed=True, num_features=channels)
        self.value_quant = make_act_quantizer(aq, signed=True, num_features=channels)
        # softmax probabilities are non-negative: the unsigned quantizer ({0, alpha} for BiT at 1 bit).
        # "bool" attention has no probabilities: its binarizer is the fixed ste_bool in forward().
        self.probs_quant = None if self.mode == "bool" else make_act_quantizer(aq, signed=False)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_size).transpose(1, 2)  # (B, L, D) -> (B, H, L, d)

    def forward(self, h: torch.Tensor, mask: torch.Tensor):
        """h (B, L, D), mask (B, 1, 1, L) additive. Returns context (B, L, D), scores (B, H, L, L), FP (Q, K, V)."""
        B, L, D = h.shape
        q, k, v = self.query(h), self.key(h), self.value(h)  # [Q] binarized linears, FP outputs (B, L, A)
        qkv = tuple(map(self.split_heads, (q, k, v)))  # (B, H, L, d) before binarization: what BiBERT's DMD compares
        # [Q] signed, e.g. sign(.) or alpha*sign(. + threshold); one scale per tensor, a threshold per channel of A
        q, k, v = (self.split_heads(quant(x)) for quant, x in ((self.query_quant, q), (self.key_quant, k),
                                                                (self.value_quant, v)))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + mask  # (B, H, L, L)
        if self.mode == "bool" and not self.bool_zero:  # BiBERT: no softmax; the positive scores -> 1, the rest -> 0
            probs = ste_bool(self.dropout(scores))  # [Q] 1{x > 0}; dropout on the scores, as in BiBERT's code
        elif self.mode == "bool":  # the paper's 1{x >= 0}: a dropped score (0) would become 1, so drop after bool
            probs = self.dropout(ste_bool(scores, zero_to_one=True))  # [Q]
        else:  # "softmax" (BinaryBERT) and "softmax01" (BiT): quantize the probabilities themselves
            probs = self.dropout(F.softmax(scores, dim=-1))
            probs = self.probs_quant(probs)  # [Q] unsigned: uniform/LSQ levels, or {0, alpha} for BiT
        ctx = probs @ v  # (B, H, L, d)   for "bool": {0,1} @ {-1,+1}, an integer per entry, no 1/k normalization
        ctx = ctx.transpose(1, 2).reshape(B, L, self.num_heads * self.head_size)  # concatenate the heads
        return ctx, scores, qkv


class BertAttentionOutput(nn.Module):
    """Output projection of the attention, dropout, residual, LayerNorm (post-LN, as in BERT)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = QuantLinear(config.attention_size, config.hidden_size, config=config.quant)  # [Q]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, ctx: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(ctx)) + residual)  # residual add and LayerNorm in FP


class BertFFN(nn.Module):
    """The feed-forward block: D -> intermediate -> D with GELU (or ReLU for BiT), residual, LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        q = config.quant
        self.intermediate = QuantLinear(config.hidden_size, config.intermediate_size, config=q)  # [Q]
        self.act = nn.GELU() if q.ffn_act == "gelu" else nn.ReLU()  # FP non-linearity
        # [Q] the input of the output layer is the (non-negative) activation: quantize it unsigned
        self.output = QuantLinear(config.intermediate_size, config.hidden_size, config=q, input_signed=False)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.act(self.intermediate(h))  # (B, L, intermediate)
        return self.LayerNorm(self.dropout(self.output(x)) + h)  # (B, L, D)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertSelfAttention(config)
        self.attention_output = BertAttentionOutput(config)
        self.ffn = BertFFN(config)

    def forward(self, h: torch.Tensor, mask: torch.Tensor):
        ctx, scores, qkv = self.attention(h, mask)
        h = self.attention_output(ctx, h)
        return self.ffn(h), scores, qkv


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, h: torch.Tensor, mask: torch.Tensor):
        hidden_states, all_scores, all_qkv = [h], [], []
        for layer in self.layer:
            h, scores, qkv = layer(h, mask)
            hidden_states.append(h)
            all_scores.append(scores)
            all_qkv.append(qkv)
        return hidden_states, all_scores, all_qkv


class BertPooler(nn.Module):
    """tanh(dense(h_[CLS])). The dense layer IS quantized in all three papers (methods.md §1)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = QuantLinear(config.hidden_size, config.hidden_size, config=config.quant)  # [Q]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))  # (B, L, D) -> (B, D)


class BertModel(nn.Module):
    """Embeddings, encoder and pooler: Hugging Face's BertModel when ``config.quant`` is full precision."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def check_inputs(self, input_ids, attention_mask, token_type_ids):
        """Clear errors instead of an index error deep inside an embedding."""
        c = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a 2-D tensor (batch, seq_len) of token ids, got "
                             f"{type(input_ids).__name__} {tuple(getattr(input_ids, 'shape', ()))}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        B, L = input_ids.shape
        if B == 0 or L == 0:
            raise ValueError(f"input_ids is empty: shape {(B, L)}")
        if L > c.max_position_embeddings:
            raise ValueError(f"sequence length {L} exceeds max_position_embeddings={c.max_position_embeddings}")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= c.vocab_size:
            raise ValueError(f"token ids must be in [0, {c.vocab_size}), got range [{lo}, {hi}]")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != (B, L):
                raise ValueError(f"{name} must have the shape of input_ids {(B, L)}, got {tuple(t.shape)}")
        if token_type_ids is not None and token_type_ids.numel():
            lo, hi = int(token_type_ids.min()), int(token_type_ids.max())
            if lo < 0 or hi >= c.type_vocab_size:
                raise ValueError(f"token_type_ids must be in [0, {c.type_vocab_size}), got range [{lo}, {hi}]")

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
                output_attentions=False, output_qkv=False) -> ModelOutput:
        self.check_inputs(input_ids, attention_mask, token_type_ids)
        input_ids = input_ids.long()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = self.embeddings(input_ids, token_type_ids.long())  # (B, L, D)
        # 1 = real token, 0 = padding  ->  additive mask (B, 1, 1, L): 0 or -10000 on every query row
        mask = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * MASK_VALUE
        hidden_states, scores, qkv = self.encoder(h, mask)
        last = hidden_states[-1]
        return ModelOutput(
            logits=None,
            pooled_output=self.pooler(last),
            last_hidden_state=last,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attention_scores=tuple(scores) if output_attentions else None,
            qkv=tuple(qkv) if output_qkv else None,
        )


class BertForSequenceClassification(nn.Module):
    """BERT + dropout + a full-precision linear classifier on the pooled output.

    ``num_labels = 1`` is regression (STS-B): one output, to be trained with MSE.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)  # FP in all three papers
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module):
        """BERT's initialisation: N(0, 0.02) for weights and embeddings, zero biases, LayerNorm = identity."""
        std = self.config.initializer_range
        if isinstance(m, (nn.Linear, QuantLinear, nn.Embedding, QuantEmbedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
                output_attentions=False, output_qkv=False) -> ModelOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states,
                        output_attentions=output_attentions, output_qkv=output_qkv)
        out.logits = self.classifier(self.dropout(out.pooled_output))  # (B, num_labels), FP
        return out


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (the latent FP weights of a binarized model included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def tiny_bert(num_labels: int = 2, quant: QuantConfig | str | None = None, *, seed: int | None = None,
              vocab_size: int = 30522, hidden_size: int = 64, num_hidden_layers: int = 2, num_attention_heads: int = 2,
              intermediate_size: int = 128, max_position_embeddings: int = 512, dropout: float | None = None,
              **config) -> BertForSequenceClassification:
    """A small random BERT that trains in seconds on a CPU: tests, fast mode and the chapters' toy runs.

    The defaults (2 layers, hidden 64, 2 heads, FFN 128, BERT's 30,522-word vocabulary, which the bundled
    MiniLM tokenizer uses) are ``binlab train --model tiny``'s; the chapters pass their own sizes. ``seed``:
    ``torch.manual_seed(seed)`` right before the weights are drawn (None: the global generator as it is).
    ``dropout`` sets both dropout probabilities (None: BERT's 0.1); other ``config`` keys are
    :class:`BertConfig` fields (e.g. ``initializer_range``).
    """
    if dropout is not None:
        config.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                     num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                     max_position_embeddings=max_position_embeddings, num_labels=num_labels,
                     quant=QuantConfig() if quant is None else quant, **config)
    if seed is not None:
        torch.manual_seed(seed)
    return BertForSequenceClassification(cfg)


__all__ = ["BertConfig", "ModelOutput", "BertEmbeddings", "BertSelfAttention", "BertAttentionOutput",
           "BertFFN", "BertLayer", "BertEncoder", "BertPooler", "BertModel", "BertForSequenceClassification",
           "count_parameters", "tiny_bert"]
