"""What a BERT costs: parameters, memory and multiply-adds, computed from a :class:`BertConfig`.

Chapter 1 asks *why binarize?* and answers with numbers computed here, never typed in::

    param_counts(config)            parameters of BertModel (embeddings, encoder, pooler), by group
    memory_bytes(config)            bytes of each group when stored at the config's bit widths
    matmul_macs(config, seq_len)    multiply-accumulates of the matrix products of one sequence
    flops(config, seq_len)          2 x the MACs: the "22.5 GFLOPs" of BERT-base at 128 tokens
    bitop_flops(config, seq_len)    the papers' count for quantized products: (w_bits a_bits / 64) each
    cost_summary(config, seq_len)   all of it in one dict (params, MiB, MB, GFLOPs)

Conventions (methods.md §0 "Efficiency", §2.9, §3.7):

* **Parameters** are those of ``BertModel`` (no classifier): BERT-base has 109.48 M. The tests check
  :func:`param_counts` against ``BertModel(config).parameters()``.
* **Memory**: each parameter costs its group's bits / 8 bytes. The groups that the papers quantize
  are the word embedding (``quant.embedding_bits``) and the weight matrices of the encoder's linear
  layers and of the pooler (``quant.weight_bits``); everything else (biases, LayerNorms, position
  and token-type embeddings) stays FP32. At FP32 BERT-base is 417.6 MiB (the papers' "418 MB" is
  bytes / 2**20). The 1-bit scales (one float per matrix or row) are left out.
* **FLOPs** count the matrix products of the 12 layers and the pooler at one sequence of
  ``seq_len`` tokens, 2 FLOPs per multiply-accumulate: Q, K, V and output projections, the two FFN
  matrices, ``Q K^T`` and ``P V`` in every head. Softmax, GELU, LayerNorm and the embedding look-ups
  are not counted (they are a fraction of a percent).
* **Quantized FLOPs** follow the papers' accounting: a product of a ``w``-bit by an ``a``-bit operand
  counts ``w a / 64`` of a FLOP (64 one-bit products fit one 64-bit word, so one XOR + popcount does
  64 of them), at most 1. The linear layers multiply weights (``weight_bits``) by activations
  (``act_bits``); the attention products multiply two activations (``act_bits`` by ``act_bits``, FP
  when ``quantize_attention`` is False). With everything at 1 bit this is FLOPs / 64.
"""

from __future__ import annotations

from binlab.model import BertConfig

FP_BITS = 32
WORD_BITS = 64  # one uint64 word holds 64 one-bit operands: a 1-bit x 1-bit product costs 1/64 FLOP

# Groups of parameters, in reading order, and which bit width each one is stored at.
PARAM_GROUPS = (
    "word_embeddings",
    "position_embeddings",
    "token_type_embeddings",
    "embedding_layernorm",
    "attention_weights",
    "attention_biases",
    "ffn_weights",
    "ffn_biases",
    "encoder_layernorms",
    "pooler_weight",
    "pooler_bias",
)
EMBEDDING_GROUPS = ("word_embeddings",)
WEIGHT_GROUPS = ("attention_weights", "ffn_weights", "pooler_weight")

MAC_GROUPS = ("qkv_projections", "attention_output", "ffn", "attention_scores", "attention_context",
              "pooler")
ATTENTION_MAC_GROUPS = ("attention_scores", "attention_context")  # activation x activation


def _check_config(config) -> BertConfig:
    if not isinstance(config, BertConfig):
        raise TypeError(f"expected a binlab.model.BertConfig, got {type(config).__name__}")
    return config


def param_counts(config: BertConfig) -> dict[str, int]:
    """Parameters of ``BertModel(config)`` by group (:data:`PARAM_GROUPS`, in that order).

    ``sum(param_counts(BertConfig()).values())`` is BERT-base's 109,482,240.
    """
    c = _check_config(config)
    D, F, L = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    return {
        "word_embeddings": c.vocab_size * D,
        "position_embeddings": c.max_position_embeddings * D,
        "token_type_embeddings": c.type_vocab_size * D,
        "embedding_layernorm": 2 * D,  # gain and bias
        "attention_weights": L * 4 * D * D,  # Q, K, V and the output projection
        "attention_biases": L * 4 * D,
        "ffn_weights": L * 2 * D * F,  # D -> F and F -> D
        "ffn_biases": L * (F + D),
        "encoder_layernorms": L * 2 * 2 * D,  # after attention and after the FFN, gain and bias each
        "pooler_weight": D * D,
        "pooler_bias": D,
    }


def count_params(config: BertConfig) -> int:
    """Total parameters of ``BertModel(config)``."""
    return sum(param_counts(config).values())


def group_bits(config: BertConfig) -> dict[str, int]:
    """Bits per parameter of each group at ``config.quant``: the quantized groups at the config's
    widths (:data:`EMBEDDING_GROUPS`, :data:`WEIGHT_GROUPS`), every other group at 32."""
    q = _check_config(config).quant
    bits = {name: FP_BITS for name in PARAM_GROUPS}
    bits.update({name: q.embedding_bits for name in EMBEDDING_GROUPS})
    bits.update({name: q.weight_bits for name in WEIGHT_GROUPS})
    return bits


def memory_bytes(config: BertConfig) -> dict[str, float]:
    """Bytes of each parameter group stored at its bit width (:func:`group_bits`)."""
    counts, bits = param_counts(config), group_bits(config)
    return {name: counts[name] * bits[name] / 8 for name in PARAM_GROUPS}


def matmul_macs(config: BertConfig, seq_len: int = 128) -> dict[str, int]:
    """Multiply-accumulates of the matrix products of one sequence of ``seq_len`` tokens, by group
    (:data:`MAC_GROUPS`). The pooler sees the [CLS] token only."""
    c = _check_config(config)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    if seq_len > c.max_position_embeddings:
        raise ValueError(f"seq_len={seq_len} exceeds max_position_embeddings={c.max_position_embeddings}")
    T, D, F, L = seq_len, c.hidden_size, c.intermediate_size, c.num_hidden_layers
    return {
        "qkv_projections": L * T * 3 * D * D,
        "attention_output": L * T * D * D,
        "ffn": L * T * 2 * D * F,
        "attention_scores": L * T * T * D,  # Q K^T: every head, (T x d) by (d x T); heads x d = D
        "attention_context": L * T * T * D,  # P V: (T x T) by (T x d) per head
        "pooler": D * D,
    }


def flops(config: BertConfig, seq_len: int = 128) -> float:
    """FLOPs of the matrix products at full precision: 2 per multiply-accumulate."""
    return 2.0 * sum(matmul_macs(config, seq_len).values())


def bitop_factor(w_bits: int, a_bits: int) -> float:
    """What one ``w_bits`` x ``a_bits`` product counts as, in FLOPs: ``min(1, w a / 64)``.

    FP32 x FP32 is 1; 1 bit x 1 bit is 1/64 (64 of them are one XOR and one popcount).
    """
    for name, b in (("w_bits", w_bits), ("a_bits", a_bits)):
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= FP_BITS:
            raise ValueError(f"{name} must be an int in 1..{FP_BITS}, got {b!r}")
    if w_bits == FP_BITS and a_bits == FP_BITS:
        return 1.0
    return min(1.0, w_bits * a_bits / WORD_BITS)


def bitop_flops(config: BertConfig, seq_len: int = 128) -> float:
    """FLOPs at the widths of ``config.quant``, counted as the papers do (:func:`bitop_factor`).

    Linear layers: ``weight_bits`` x ``act_bits``; ``Q K^T`` and ``P V``: ``act_bits`` x ``act_bits``
    (32 x 32 when ``quantize_attention`` is False). Equals :func:`flops` at full precision and
    ``flops / 64`` with everything at 1 bit.
    """
    q = _check_config(config).quant
    attn_bits = q.act_bits if q.quantize_attention else FP_BITS
    total = 0.0
    for name, macs in matmul_macs(config, seq_len).items():
        if name in ATTENTION_MAC_GROUPS:
            factor = bitop_factor(attn_bits, attn_bits)
        else:
            factor = bitop_factor(q.weight_bits, q.act_bits)
        total += 2.0 * macs * factor
    return total


def cost_summary(config: BertConfig, seq_len: int = 128) -> dict:
    """Parameters, memory (bytes, MiB = 2**20 bytes, MB = 10**6 bytes) and (bit-op) FLOPs of a config.

    ``quantized_bytes`` is the part stored at the quantized widths (word embedding, weight matrices).
    """
    by_group = memory_bytes(config)
    total_bytes = sum(by_group.values())
    fp_flops = flops(config, seq_len)
    q_flops = bitop_flops(config, seq_len)
    return {
        "label": config.quant.label,
        "params": count_params(config),
        "bytes": total_bytes,
        "MiB": total_bytes / 2**20,
        "MB": total_bytes / 1e6,
        "quantized_bytes": sum(by_group[g] for g in EMBEDDING_GROUPS + WEIGHT_GROUPS),
        "seq_len": seq_len,
        "flops": q_flops,
        "GFLOPs": q_flops / 1e9,
        "fp32_GFLOPs": fp_flops / 1e9,
    }
