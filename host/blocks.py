"""Whole transformer blocks and models as ONE descriptor program per step (issue 9, parts 4 and 6).

API contract (engineer C builds ``Model.from_pretrained`` on it; keep it stable)::

    from hbmforge.host.blocks import BlockConfig, BlockWeights, TransformerBlock, ModelProgram

    cfg = BlockConfig(arch="llama", hidden=1024, heads=16, kv_heads=4, head_dim=64,
                      intermediate=2816, norm_eps=1e-5, rope_theta=10000.0, qkv_bias=False)
    layer = BlockWeights.from_float(cfg, {"q_proj": wq, "k_proj": wk, ...}, bits=8)   # or build it
    #   from EncodedWeights (hbmforge.numerics.encoded.quantize_weights_encoded) per projection

    model = ModelProgram(dev, cfg, [layer0, layer1, ...], final_norm=(gamma, None),
                         lm_head=EncodedWeights | None, kv_bits=8, max_context=2048)
    seq = model.sequence()                         # KV pages of every layer for one sequence
    logits = model.prefill(x, seq)                 # x float [T, hidden] (embeddings) -> float [T, vocab]
    logits = model.decode_step(x1, seq)            # x1 float [hidden] -> float [vocab]
    model.last_step                                # StepStats: cycles, host_round_trips (= 1), bytes, ...
    model.golden_prefill(x, seq) / golden_decode_step(...)   # the same integer program on the CPU

    block = TransformerBlock(dev, cfg, layer)      # one layer alone (a ModelProgram of one block,
    h = block.prefill(x, seq)                      # no final norm, no LM head): float [T, hidden]

Weights use the Hugging Face layout: every projection is ``[out_features, in_features]``; q_proj and
k_proj rows are in HF's rotate-half RoPE order (the block permutes them once to the interleaved
order the vector engine rotates; attention scores are invariant to that permutation).

Projection names (``BlockWeights``):

=====================  ===========================================  =======================================
name                   LLaMA / Qwen2 (``arch="llama"``)             BERT (``arch="bert"``)
=====================  ===========================================  =======================================
q_proj k_proj v_proj   self_attn.{q,k,v}_proj (bias: Qwen2)         attention.self.{query,key,value}
o_proj                 self_attn.o_proj                             attention.output.dense
gate_proj up_proj      mlp.gate_proj, mlp.up_proj                   -
down_proj              mlp.down_proj                                -
fc_in fc_out           -                                            intermediate.dense, output.dense
attn_norm              input_layernorm (gamma)                      attention.output.LayerNorm (gamma, beta)
mlp_norm               post_attention_layernorm (gamma)             output.LayerNorm (gamma, beta)
=====================  ===========================================  =======================================

Biases are float arrays ``<name>_bias`` (``q_proj_bias`` ...) or None. LLaMA blocks are pre-norm
(``h += attn(norm(h)); h += mlp(norm(h))``), BERT blocks post-norm
(``h = norm(h + attn(h)); h = norm(h + mlp(h))``) with GELU (exact erf) and bidirectional attention.

Device dataflow (docs/architecture.md §9): the residual stream stays in device memory as int32
fixed point in the matmul's blocked layout; every matmul input is int8 rows with a per-token
scale written by the vector engine; attention reads Q records the vector engine writes and a paged
KV cache the vector engine appends to. A step writes the input and the program, starts once, waits
once and reads the output: ``StepStats.host_round_trips == 1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from hbmforge.numerics.encoded import EncodedWeights

__all__ = ["BlockConfig", "BlockWeights", "StepStats", "TransformerBlock", "ModelProgram",
           "LLAMA_PROJECTIONS", "BERT_PROJECTIONS"]

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BERT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out")


@dataclass(frozen=True)
class BlockConfig:
    """The shape of one transformer layer (every layer of a model shares it).

    ``arch``: "llama" (pre-RMSNorm, RoPE, GQA, SwiGLU; Qwen2 with ``qkv_bias``) or "bert"
    (post-LayerNorm, GELU MLP, bidirectional attention, learned positions added by the caller).
    ``head_dim`` must equal the attention engine's. ``rope_theta``: RoPE base (llama).
    ``residual_frac_bits``: fraction bits of the int32 fixed-point residual stream on the device
    (default 16: range +-32768, resolution 1.5e-5).
    """

    arch: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    residual_frac_bits: int = 16


@dataclass
class BlockWeights:
    """Quantized weights of one layer: an :class:`EncodedWeights` per projection (HF ``[out, in]``
    layout, K padded to the matmul's ``k_align``), float biases, float norm parameters.

    ``attn_norm``/``mlp_norm``: ``(gamma, beta)`` float arrays ``[hidden]`` (beta None for RMSNorm).
    """

    projections: Mapping[str, EncodedWeights]
    attn_norm: tuple
    mlp_norm: tuple
    biases: Mapping[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_float(cls, config: BlockConfig, tensors: Mapping[str, np.ndarray], *, bits=8,
                   group_size: int | None = None) -> "BlockWeights":
        """Quantize float tensors named as in the module table (``<proj>``, ``<proj>_bias``,
        ``attn_norm``/``mlp_norm`` gamma and ``attn_norm_bias``/``mlp_norm_bias`` beta); ``bits``
        one format for all projections or a dict projection -> format (2, 4, 8, "ternary")."""
        raise NotImplementedError("landing with the block programs (issue 9 part 4)")


@dataclass
class StepStats:
    """What one prefill chunk or decode step cost on the device."""

    tokens: int = 0
    descriptors: int = 0
    host_round_trips: int = 0          # starts (= waits) of the step: 1
    cycles: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    mac_ops: int = 0
    elapsed_s: float = 0.0
    counters: dict = field(default_factory=dict)


class ModelProgram:
    """N blocks (+ optional final norm and LM head) compiled to one descriptor program per step.

    ``blocks``: one :class:`BlockWeights` per layer; ``final_norm``: ``(gamma, beta|None)`` or None;
    ``lm_head``: :class:`EncodedWeights` ``[vocab, hidden]`` or None (then steps return the final
    hidden states). ``kv_bits``: 8 or 4; ``max_context``: tokens per sequence (default: the
    attention engine's); ``kv_ranges``: per layer the largest |K| and |V| expected (float or one
    per KV head) to fix the cache's head scales (default: a bound from the weights).
    """

    def __init__(self, device, config: BlockConfig, blocks: Sequence[BlockWeights], *, final_norm=None,
                 lm_head: EncodedWeights | None = None, kv_bits: int = 8, max_context: int | None = None,
                 kv_ranges=None, timeout: float = 600.0):
        raise NotImplementedError("landing with the block programs (issue 9 part 4)")

    def sequence(self):
        """A new sequence: KV pages of every layer, positions from 0."""
        raise NotImplementedError

    def prefill(self, x, seq, *, valid_len: int | None = None) -> np.ndarray:
        """Run a chunk of ``T`` tokens (float embeddings ``[T, hidden]``) through every block in one
        device run; float ``[T, vocab]`` logits (or ``[T, hidden]`` hidden states). Encoders:
        ``valid_len`` real tokens (the rest is padding no key attends to)."""
        raise NotImplementedError

    def decode_step(self, x, seq) -> np.ndarray:
        """One token (float ``[hidden]``) through every block in one device run; float ``[vocab]``."""
        raise NotImplementedError

    def golden_prefill(self, x, seq, *, valid_len: int | None = None) -> np.ndarray:
        """:meth:`prefill` computed by :func:`hbmforge.numerics.program.execute` on a copy of the
        device memory: equal to the device result bit for bit (nothing on the device changes)."""
        raise NotImplementedError

    def golden_decode_step(self, x, seq) -> np.ndarray:
        raise NotImplementedError

    @property
    def last_step(self) -> StepStats | None:
        raise NotImplementedError


class TransformerBlock(ModelProgram):
    """One layer on the device: a :class:`ModelProgram` of one block, no final norm, no LM head."""

    def __init__(self, device, config: BlockConfig, weights: BlockWeights, **options):
        super().__init__(device, config, [weights], **options)
