"""Whole transformer blocks and models as ONE descriptor program per step (issue 9, parts 4 and 6).

API (engineer C builds ``Model.from_pretrained`` on it)::

    from hbmforge.host.blocks import BlockConfig, BlockWeights, TransformerBlock, ModelProgram

    cfg = BlockConfig(arch="llama", hidden=1024, heads=16, kv_heads=4, head_dim=64,
                      intermediate=2816, norm_eps=1e-5, rope_theta=10000.0, qkv_bias=False)
    layer = BlockWeights.from_float(cfg, {"q_proj": wq, "k_proj": wk, ...}, bits=8)   # or build it
    #   from EncodedWeights (hbmforge.numerics.encoded.quantize_weights_encoded) per projection

    model = ModelProgram(dev, cfg, [layer0, layer1, ...], final_norm=(gamma, None),
                         lm_head=EncodedWeights | None, kv_bits=8, max_context=2048)
    seq = model.sequence()                         # KV pages of every layer for one sequence
    logits = model.prefill(x, seq)                 # x float [T, hidden] (embeddings) -> float [1, vocab]
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

Biases are float arrays ``<name>`` in ``BlockWeights.biases`` or absent. LLaMA blocks are pre-norm
(``h += attn(norm(h)); h += mlp(norm(h))``), BERT blocks post-norm
(``h = norm(h + attn(h)); h = norm(h + mlp(h))``) with GELU (exact erf) and bidirectional attention.

Device dataflow (docs/architecture.md §9): the residual stream stays in device memory as int32
fixed point (``residual_frac_bits``) in the matmul's blocked layout; every matmul input is int8
rows with a per-token scale record written by the vector engine; attention reads Q records the
vector engine writes and a paged KV cache the vector engine appends to. A step writes the input,
the block table and the program, starts once, waits once and reads the output:
``StepStats.host_round_trips == 1``.

Decoder prefill returns the logits of the chunk's last token (``[1, vocab]``; ``all_logits=True``
for every row); the LM head then runs on that row only.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from hbmforge.encodings import (AttentionMode, OutMode, VectorAct, VectorCombine, VectorIn, VectorNorm,
                                VectorOut)
from hbmforge.engines.attention import KV_HEAD_PARALLEL, attention_geometry
from hbmforge.engines.vector import ACT_FRAC, vector_geometry
from hbmforge.memory_map import golden_scratch
from hbmforge.numerics import vector as V
from hbmforge.numerics.attention import dequantize_kv, kv_head_scale, pack_block_table, quantize_kv
from hbmforge.numerics.encoded import EncodedWeights, quantize_weights_encoded, scale_product
from hbmforge.numerics.program import SparseMemory, execute
from hbmforge.numerics.sparse import is_2_4

from .checks import check_bool, check_choice, check_int, check_real, check_timeout, real_array
from .device import Buffer, Device, check_device
from .errors import DeviceRunError
from .linear import choose_out_shift
from .packing import engine_format, pack_scales, pack_weights, weight_code
from .program import ProgramBuilder
from .workspace import Workspace

__all__ = ["BlockConfig", "BlockWeights", "StepStats", "TransformerBlock", "ModelProgram", "ModelSequence",
           "BlockProgramError", "LLAMA_PROJECTIONS", "BERT_PROJECTIONS"]

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BERT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out")

F_ACT = ACT_FRAC            # fraction bits of every int32 value that is not the residual stream


class BlockProgramError(ValueError):
    """A model the design cannot run as block programs (the message names what does not fit)."""


# -- configuration and weights ------------------------------------------------------------------

@dataclass(frozen=True)
class BlockConfig:
    """The shape of one transformer layer (every layer of a model shares it).

    ``arch``: "llama" (pre-RMSNorm, RoPE, GQA, SwiGLU; Qwen2 with ``qkv_bias``) or "bert"
    (post-LayerNorm, GELU MLP, bidirectional attention, learned positions added by the caller).
    ``head_dim`` must equal the attention engine's. ``rope_theta``: RoPE base (llama);
    ``rope_inv_freq``: ``head_dim / 2`` inverse frequencies for scaled RoPE variants (overrides theta).
    ``softmax_scale``: the scores' factor (default ``1 / sqrt(head_dim)``; a model whose heads are
    zero-padded to the engine's keeps its own, :mod:`hbmforge.host.models.heads`).
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
    rope_inv_freq: tuple | None = None
    softmax_scale: float | None = None

    def checked(self) -> "BlockConfig":
        """This config with every field checked (ValueError/TypeError naming the field)."""
        arch = check_choice("arch", self.arch, ("llama", "bert"))
        hidden = check_int("hidden", self.hidden, 1)
        heads = check_int("heads", self.heads, 1)
        kv = check_int("kv_heads", self.kv_heads, 1)
        if heads % kv:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv})")
        hd = check_int("head_dim", self.head_dim, 2)
        if hd % 2:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs), got {hd}")
        inter = check_int("intermediate", self.intermediate, 1)
        eps = check_real("norm_eps", self.norm_eps, 0.0, 1.0, lo_open=True)
        theta = check_real("rope_theta", self.rope_theta, 1.0, lo_open=True)
        frac = check_int("residual_frac_bits", self.residual_frac_bits, 0, 24)
        inv = self.rope_inv_freq
        if inv is not None:
            inv = real_array("rope_inv_freq", inv, ndim=(1,), what=f"[{hd // 2}] floats")
            if inv.shape != (hd // 2,):
                raise ValueError(f"rope_inv_freq must hold head_dim / 2 = {hd // 2} values, got {inv.shape}")
            inv = tuple(float(v) for v in inv)
        sm = self.softmax_scale
        if sm is not None:
            sm = check_real("softmax_scale", sm, 0.0, lo_open=True)
        return replace(self, arch=arch, hidden=hidden, heads=heads, kv_heads=kv, head_dim=hd, intermediate=inter,
                       norm_eps=eps, rope_theta=theta, qkv_bias=check_bool("qkv_bias", self.qkv_bias),
                       residual_frac_bits=frac, rope_inv_freq=inv, softmax_scale=sm)

    @property
    def projections(self) -> tuple[str, ...]:
        return LLAMA_PROJECTIONS if self.arch == "llama" else BERT_PROJECTIONS

    def projection_shape(self, name: str) -> tuple[int, int]:
        """``(out_features, in_features)`` of a projection."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (q, self.hidden), "k_proj": (kv, self.hidden), "v_proj": (kv, self.hidden),
                "o_proj": (self.hidden, q), "gate_proj": (self.intermediate, self.hidden),
                "up_proj": (self.intermediate, self.hidden), "down_proj": (self.hidden, self.intermediate),
                "fc_in": (self.intermediate, self.hidden), "fc_out": (self.hidden, self.intermediate)}[name]


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
                   group_size: int = 128, scale_bits: int = 16, k_align: int | None = None) -> "BlockWeights":
        """Quantize float tensors: ``<proj>`` weights and optional ``<proj>_bias``, ``attn_norm``/
        ``mlp_norm`` gammas and ``attn_norm_bias``/``mlp_norm_bias`` betas (BERT). ``bits``: one
        format for all projections or a dict projection -> format (2, 4, 8, "ternary");
        ``group_size``/``scale_bits`` the matmul engine's; ``k_align`` pads K (default: none)."""
        cfg = config.checked()
        if not isinstance(tensors, Mapping):
            raise TypeError(f"tensors must be a mapping of names to arrays, got {type(tensors).__name__}")
        enc, biases = {}, {}
        for name in cfg.projections:
            if name not in tensors:
                raise ValueError(f"tensors has no {name!r} (a {cfg.arch} block needs {list(cfg.projections)})")
            w = real_array(name, tensors[name], ndim=(2,), what=f"{cfg.projection_shape(name)}")
            if w.shape != cfg.projection_shape(name):
                raise ValueError(f"{name} must have shape {cfg.projection_shape(name)}, got {w.shape}")
            fmt = bits.get(name, 8) if isinstance(bits, Mapping) else bits
            kp = w.shape[1] if k_align is None else -(-w.shape[1] // k_align) * k_align
            enc[name] = quantize_weights_encoded(w, fmt, group_size, scale_bits, k_padded=kp)
            if f"{name}_bias" in tensors:
                biases[name] = real_array(f"{name}_bias", tensors[f"{name}_bias"], ndim=(1,))
        norms = []
        for name in ("attn_norm", "mlp_norm"):
            if name not in tensors:
                raise ValueError(f"tensors has no {name!r} (the norm's gamma)")
            beta = tensors.get(f"{name}_bias")
            norms.append((real_array(name, tensors[name], ndim=(1,)),
                          None if beta is None else real_array(f"{name}_bias", beta, ndim=(1,))))
        return cls(projections=enc, attn_norm=norms[0], mlp_norm=norms[1], biases=biases)


#: the counters a profiled step records per descriptor (and sums into its totals)
_PROFILE_COUNTERS = ("cycles", "stall_cycles", "bytes_read", "bytes_written", "mac_ops")


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
    #: with ``profile=True``: one entry per descriptor (opcode, cycles, bytes, mac_ops), each
    #: descriptor run on its own (``host_round_trips`` = descriptors), so cycles add up to slightly
    #: more than a one-run step (the per-run start/done handshake); empty otherwise
    profile: list = field(default_factory=list)


# -- what lives on the device ---------------------------------------------------------------------

@dataclass
class _Matmul:
    """One matmul's weights on the device and the constants its consumers need."""

    n: int
    k: int
    bits: object
    w: list
    s: Buffer | None                 # None with scale_stream inline (the scales are in the stripes)
    out_shift: int
    row_scale: np.ndarray

    def columns(self, src_frac: int, out_frac: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Column records that turn this matmul's INT32 output (for int8 inputs whose scale record
        is in units of ``2**-src_frac``) into fixed point with ``out_frac`` fraction bits."""
        rs = self.row_scale[lo:hi]
        real = scale_product(rs, exp=self.out_shift - src_frac + out_frac) / 127.0
        try:
            return V.column_multipliers(real)
        except ValueError as err:
            raise BlockProgramError(f"{err}: the weights' scales are too large for {out_frac} output "
                                    "fraction bits") from None


@dataclass
class _Layer:
    qkv: _Matmul
    o: _Matmul
    up: _Matmul                 # gate|up (llama) or fc_in (bert)
    down: _Matmul               # down_proj or fc_out
    tables: dict                # name -> Buffer (column tables, biases, norms, constants)
    consts: dict                # name -> descriptor constants (norms)
    k_pool: Buffer              # head-parallel: the pool table (data port)
    v_pool: Buffer | None       # head-parallel: None
    k_scale: np.ndarray         # float head scales [kv_heads]
    v_scale: np.ndarray
    k_pools: list = None        # port group r's K pool (w<2r>; [k_pool] in the shared layout)
    v_pools: list = None        # port group r's V pool (w<2r+1>; [v_pool] in the shared layout)


class ModelSequence:
    """One sequence's KV pages (the same page numbers in every layer's pools) and block table."""

    def __init__(self, program: "ModelProgram", ident: int, block_table: Buffer):
        self._prog = program
        self.id = ident
        self._bt = block_table
        self._pages: list[int] = []
        self._length = 0
        self._freed = False

    @property
    def length(self) -> int:
        """Tokens in the cache (the next token's position)."""
        return self._length

    def __len__(self) -> int:
        return self._length

    @property
    def pages(self) -> tuple[int, ...]:
        return tuple(self._pages)

    @property
    def freed(self) -> bool:
        return self._freed

    def free(self) -> None:
        """Give the pages back (a second free is a no-op)."""
        self._prog._free_sequence(self)

    def truncate(self, length: int) -> None:
        """Forget tokens from ``length`` on (their pages go back to the pool)."""
        self._prog._truncate(self, length)

    def load_kv(self, k=None, v=None, *, state=None) -> None:
        """Start this empty sequence at ``length`` tokens with a given KV cache written straight into
        new pages of every layer (restoring a saved cache; long contexts without a prefill).

        ``k``/``v``: float ``[layers, length, kv_heads, head_dim]``, K after RoPE in Hugging Face's
        rotate-half order (``past_key_values``), quantized with each layer's fixed head scales (a
        group beyond the cache's range is refused); or ``state``: a :meth:`save_kv` dict (exact).
        The next step runs at position ``length``."""
        self._prog._load_kv(self, k, v, state)

    def save_kv(self) -> dict:
        """The cache as stored: ``{"k", "v"}`` int8 ``[layers, length, kv_heads, head_dim]`` (device
        element order), ``{"k_mant", "v_mant"}`` u16 ``[layers, length, kv_heads, groups]`` group
        mantissas and ``kv_bits``; :meth:`load_kv` ``(state=...)`` restores it bit for bit."""
        return self._prog._save_kv(self)

    def read_kv(self) -> tuple:
        """The cache dequantized: float ``(k, v)`` ``[layers, length, kv_heads, head_dim]`` (K in
        rotate-half order, as :meth:`load_kv` takes it)."""
        return self._prog._read_kv(self)

    def __repr__(self) -> str:
        return f"ModelSequence({self.id}, {'freed' if self._freed else f'{self._length} tokens'})"


def _int32(name: str, values: np.ndarray, frac: int) -> np.ndarray:
    q = np.rint(np.asarray(values, dtype=np.float64) * 2.0 ** frac)
    if q.size and np.abs(q).max() > V.I32_MAX:
        raise BlockProgramError(f"{name} reaches {float(np.abs(values).max()):.4g}, beyond int32 with {frac} "
                                "fraction bits")
    return q.astype(np.int64)


def _interleave_rows(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order that turns HF rotate-half pairs (i, i + hd/2) into adjacent pairs (2i, 2i + 1)."""
    half = head_dim // 2
    one = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)
    return (np.arange(n_heads)[:, None] * head_dim + one[None, :]).reshape(-1)


def _take_rows(enc: EncodedWeights, order: np.ndarray) -> EncodedWeights:
    return EncodedWeights(q=enc.q[order], mantissas=enc.mantissas[order], row_scale=enc.row_scale[order],
                          bits=enc.bits, group_size=enc.group_size)


def _pad_rows(enc: EncodedWeights, n: int) -> EncodedWeights:
    """``enc`` with zero rows (zero weights and scales, row scale 1 as the encoder gives a zero row)
    appended up to ``n`` output features: their outputs are exactly 0."""
    extra = n - enc.q.shape[0]
    if extra <= 0:
        return enc
    return EncodedWeights(q=np.concatenate([enc.q, np.zeros((extra, enc.q.shape[1]), enc.q.dtype)]),
                          mantissas=np.concatenate([enc.mantissas, np.zeros((extra, enc.mantissas.shape[1]),
                                                                            enc.mantissas.dtype)]),
                          row_scale=np.concatenate([enc.row_scale, np.ones(extra)]), bits=enc.bits,
                          group_size=enc.group_size)


def _stack(*encs: EncodedWeights) -> EncodedWeights:
    return EncodedWeights(q=np.concatenate([e.q for e in encs]), mantissas=np.concatenate([e.mantissas for e in encs]),
                          row_scale=np.concatenate([e.row_scale for e in encs]), bits=encs[0].bits,
                          group_size=encs[0].group_size)


# -- the program ------------------------------------------------------------------------------------

class ModelProgram:
    """N blocks (+ optional final norm and LM head) compiled to one descriptor program per step.

    ``blocks``: one :class:`BlockWeights` per layer; ``final_norm``: ``(gamma, beta|None)`` or None;
    ``lm_head``: :class:`EncodedWeights` ``[vocab, hidden]`` or None (then steps return the final
    hidden states). ``kv_bits``: 8 or 4; ``max_context``: tokens per sequence (default: the
    attention engine's); ``kv_pages``: pages in each layer's pools (default: one full sequence);
    ``kv_ranges``: per layer ``(k_range, v_range)`` (a float or one per KV head: the largest |K|
    and |V| expected) to fix the cache's head scales; default a bound from the weights and norms
    (no group can clip; BERT layer 0 takes its own attention LayerNorm as the proxy of the
    embedding LayerNorm).
    ``window``/``sink``: decoder attention over the ``sink`` first tokens and the ``window`` most
    recent ones only (StreamingLLM / AccLLM's Lambda-shaped attention; 0: the whole context).
    """

    def __init__(self, device, config: BlockConfig, blocks: Sequence[BlockWeights], *, final_norm=None,
                 lm_head: EncodedWeights | None = None, kv_bits: int = 8, max_context: int | None = None,
                 kv_pages: int | None = None, kv_ranges=None, timeout: float = 600.0, window: int = 0,
                 sink: int = 0, kv_layout: str = "auto", sparse24: bool = False):
        dev = check_device(device)
        lay = dev.layout
        cfg = config.checked() if isinstance(config, BlockConfig) else None
        if cfg is None:
            raise TypeError(f"config must be a BlockConfig, got {type(config).__name__}")
        self.timeout = check_timeout(timeout)
        for kind, what in (("vector", "a vector engine"), ("attention", "an attention engine")):
            if not lay.has(kind):
                raise BlockProgramError(f"design {lay.kernel!r} has no {kind} engine: block programs need {what}")
        att, vg = attention_geometry(lay), vector_geometry(lay)
        if cfg.head_dim != att.head_dim:
            raise BlockProgramError(f"head_dim {cfg.head_dim} differs from the attention engine's {att.head_dim}")
        need_act = "silu" if cfg.arch == "llama" else "gelu"
        if need_act not in vg.activations:
            raise BlockProgramError(f"a {cfg.arch} block needs the vector engine's {need_act!r} table; the design "
                                    f"has {list(vg.activations)}")
        kv_bits = check_choice("kv_bits", kv_bits, tuple(att.kv_bits), "the attention engine's kv_bits")
        ctx = att.max_context if max_context is None else check_int("max_context", max_context, 1, att.max_context)
        window = check_int("window", window, 0, ctx)
        sink = check_int("sink", sink, 0, ctx)
        if sink and not window:
            raise ValueError(f"sink ({sink}) needs a window > 0 (sink tokens are kept beside a sliding window)")
        if (window or sink) and cfg.arch != "llama":
            raise ValueError("window and sink apply to decoders (arch 'llama'); bidirectional attention has none")
        kv_layout = check_choice("kv_layout", kv_layout, ("auto", "shared", "head_parallel"))
        # head-parallel: one KV append per side writes every port group (kv_groups = rows)
        hp_ok = att.head_parallel and cfg.arch == "llama" and cfg.heads == cfg.kv_heads and \
            cfg.kv_heads % att.rows == 0 and att.rows in vg.kv_group_choices() and \
            cfg.kv_heads * cfg.head_dim <= vg.max_dim
        if kv_layout == "head_parallel" and not hp_ok:
            raise BlockProgramError(
                f"kv_layout 'head_parallel' needs an attention engine with head_parallel: true (this one: "
                f"{att.head_parallel}), a decoder (arch 'llama', got {cfg.arch!r}) with heads == kv_heads (MHA, got "
                f"{cfg.heads} and {cfg.kv_heads}), kv_heads a multiple of the engine's rows {att.rows} and "
                f"kv_heads x head_dim ({cfg.kv_heads * cfg.head_dim}) within the vector engine's max_dim "
                f"{vg.max_dim}")
        self._hp = hp_ok if kv_layout == "auto" else kv_layout == "head_parallel"
        self._groups = att.rows if self._hp else 1
        P = att.page_tokens
        max_pages = -(-ctx // P)
        pages = max_pages if kv_pages is None else check_int("kv_pages", kv_pages, 1, 1 << 24)
        blocks = list(blocks) if isinstance(blocks, Sequence) and not isinstance(blocks, (str, bytes)) else None
        if not blocks:
            raise ValueError("blocks must be a non-empty sequence of BlockWeights (one per layer)")
        for i, b in enumerate(blocks):
            if not isinstance(b, BlockWeights):
                raise TypeError(f"blocks[{i}] must be a BlockWeights, got {type(b).__name__}")
        W8, k_align = lay.word_bytes, lay.matmul.k_align
        # the FFN's intermediate width I on the device: gate/up (fc_in) compute I columns, rounded up
        # to a port word of columns; the activation pass runs over I padded to k_align, the padded
        # columns read with column multiplier 0 (exactly 0 after SiLU/GELU: the row scale and the
        # math are unchanged), and down (fc_out) takes K padded with zero weights. hidden and heads x
        # head_dim are normalized or attended over and must be aligned as they are.
        ip = lay.matmul.pad_k(cfg.intermediate)
        i_dev = -(-cfg.intermediate // W8) * W8
        dims = {"hidden": cfg.hidden, "intermediate (padded to k_align)": ip,
                "heads * head_dim": cfg.heads * cfg.head_dim, "kv_heads * head_dim": cfg.kv_heads * cfg.head_dim}
        for name, d in dims.items():
            if name in ("hidden", "heads * head_dim") and d % k_align:            # a matmul's K
                raise BlockProgramError(f"{name} = {d} must be a multiple of the matmul's k_align {k_align}")
            if d % W8:
                raise BlockProgramError(f"{name} = {d} must be a multiple of the {W8}-byte port word")
            if d > vg.max_dim:
                raise BlockProgramError(f"{name} = {d} exceeds the vector engine's max_dim {vg.max_dim}")
        gu = 2 * ip if cfg.arch == "llama" else ip
        k_top = getattr(lay.matmul, "max_k_total", lay.mm.max_k)
        for name, k in (("hidden", cfg.hidden), ("intermediate (padded to k_align)", ip),
                        ("heads * head_dim", dims["heads * head_dim"])):
            if k > k_top:
                raise BlockProgramError(f"{name} = {k} exceeds the largest K of one matmul descriptor ({k_top}: "
                                        f"split_k x max_k)")
        layers_in = [self._check_layer(i, b, cfg, lay) for i, b in enumerate(blocks)]
        self._sparse24 = check_bool("sparse24", sparse24)
        if sparse24:
            if not lay.mm.sparse24:
                raise BlockProgramError(f"sparse24: design {lay.kernel!r}'s matmul engine has sparse24 false (no 2:4 "
                                        "weights); set sparse24: true in its config")
            for i, b in enumerate(blocks):
                for name, e in b.projections.items():
                    if engine_format(e.bits, lay, "bits") not in lay.mm.sparse24_formats:
                        raise BlockProgramError(f"sparse24: blocks[{i}].projections[{name!r}] is {e.bits!r}; the "
                                                f"engine takes 2:4 weights of {list(lay.mm.sparse24_formats)} only")
                    if not is_2_4(e.q):
                        raise BlockProgramError(f"sparse24: blocks[{i}].projections[{name!r}] is not 2:4 sparse (a "
                                                "group of 4 weights along K holds more than 2 non-zeros); prune it "
                                                "before quantizing (hbmforge.numerics.sparse.prune_2_4)")
        if final_norm is not None:
            final_norm = self._check_norm("final_norm", final_norm, cfg)
        if lm_head is not None:
            if not isinstance(lm_head, EncodedWeights):
                raise TypeError(f"lm_head must be an EncodedWeights, got {type(lm_head).__name__}")
            if lm_head.q.shape[1] != cfg.hidden:
                raise ValueError(f"lm_head must have {cfg.hidden} input columns, got {lm_head.q.shape[1]}")
            engine_format(lm_head.bits, lay, "lm_head bits")
        ranges = self._kv_ranges(kv_ranges, cfg, layers_in, len(blocks))
        self._dev, self._lay, self._cfg = dev, lay, cfg
        self._att, self._vg = att, vg
        self.kv_bits, self.max_context, self.num_pages = kv_bits, ctx, pages
        self.window, self.sink = window, sink
        self._max_pages = max_pages
        self._final_norm, self._gu, self._ip, self._in = final_norm, gu, ip, i_dev
        self.last_step: StepStats | None = None
        self._static: list[Buffer] = []                     # every upload (weights, tables): never rewritten
        self._static_pages: dict | None = None                # their bytes, read back on the first golden step
        self._owned: list[Buffer] = []
        self._seqs: dict[int, ModelSequence] = {}
        self._next_id = 0
        self._free_pages = list(range(pages))
        self._work = Workspace(dev)
        self.layers: list[_Layer] = []
        self._head = None
        try:
            self._rope = self._upload(V.pack_rope_table(V.rope_table(ctx, cfg.head_dim, cfg.rope_theta,
                                                                      inv_freq=cfg.rope_inv_freq), W8))
            for i, (enc, norms, biases) in enumerate(layers_in):
                self.layers.append(self._build_layer(i, enc, norms, biases, ranges[i]))
            if final_norm is not None:
                self._final = self._norm_tables(final_norm, VectorNorm.RMS if cfg.arch == "llama" else VectorNorm.LAYER,
                                                out_frac=F_ACT)
            if lm_head is not None:
                self._head = self._matmul(lm_head)
                self._head_cols = lm_head.row_scale
        except BaseException:
            self.close()
            raise

    # -- checks (before anything is allocated) ---------------------------------------------------
    @staticmethod
    def _check_norm(name, norm, cfg):
        if not isinstance(norm, (tuple, list)) or len(norm) != 2:
            raise TypeError(f"{name} must be a pair (gamma, beta or None)")
        gamma = real_array(f"{name} gamma", norm[0], ndim=(1,))
        if gamma.shape != (cfg.hidden,):
            raise ValueError(f"{name} gamma must have {cfg.hidden} values, got {gamma.shape}")
        beta = None
        if norm[1] is not None:
            beta = real_array(f"{name} beta", norm[1], ndim=(1,))
            if beta.shape != (cfg.hidden,):
                raise ValueError(f"{name} beta must have {cfg.hidden} values, got {beta.shape}")
        if (beta is None) != (cfg.arch == "llama"):
            raise ValueError(f"{name}: a {cfg.arch} block's norm is {'RMSNorm (beta None)' if cfg.arch == 'llama' else 'LayerNorm (gamma and beta)'}")
        return gamma, beta

    def _check_layer(self, i, b: BlockWeights, cfg: BlockConfig, lay):
        enc = {}
        for name in cfg.projections:
            e = b.projections.get(name) if isinstance(b.projections, Mapping) else None
            if not isinstance(e, EncodedWeights):
                raise ValueError(f"blocks[{i}].projections[{name!r}] must be an EncodedWeights, got {type(e).__name__}")
            n, k = cfg.projection_shape(name)
            if e.q.shape != (n, lay.matmul.pad_k(k)):
                raise ValueError(f"blocks[{i}].{name} must be [{n}, {lay.matmul.pad_k(k)}] (K padded to k_align), "
                                 f"got {e.q.shape}")
            if e.group_size != lay.mm.group_size:
                raise ValueError(f"blocks[{i}].{name} was quantized with group_size {e.group_size}; the engine "
                                 f"uses {lay.mm.group_size}")
            engine_format(e.bits, lay, f"blocks[{i}].{name} bits")
            enc[name] = e
        extra = [n for n in b.projections if n not in cfg.projections]
        if extra:
            raise ValueError(f"blocks[{i}] has projections {extra} a {cfg.arch} block does not use")
        biases = {}
        for name, v in dict(b.biases or {}).items():
            if name not in cfg.projections:
                raise ValueError(f"blocks[{i}] has a bias for unknown projection {name!r}")
            arr = real_array(f"blocks[{i}] {name} bias", v, ndim=(1,))
            if arr.shape != (cfg.projection_shape(name)[0],):
                raise ValueError(f"blocks[{i}] {name} bias must have {cfg.projection_shape(name)[0]} values, "
                                 f"got {arr.shape}")
            if cfg.arch == "llama" and name in ("q_proj", "k_proj", "v_proj") and not cfg.qkv_bias:
                raise ValueError(f"blocks[{i}] has a {name} bias but the config says qkv_bias=False")
            biases[name] = arr
        norms = (self._check_norm(f"blocks[{i}].attn_norm", b.attn_norm, cfg),
                 self._check_norm(f"blocks[{i}].mlp_norm", b.mlp_norm, cfg))
        return enc, norms, biases

    def _kv_ranges(self, kv_ranges, cfg, layers_in, n):
        if kv_ranges is not None:
            if not isinstance(kv_ranges, Sequence) or len(kv_ranges) != n:
                raise ValueError(f"kv_ranges must give (k_range, v_range) for each of the {n} layers")
            out = []
            for i, pair in enumerate(kv_ranges):
                if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                    raise TypeError(f"kv_ranges[{i}] must be a pair (k_range, v_range)")
                rng = []
                for which, r in zip("kv", pair):
                    arr = np.broadcast_to(real_array(f"kv_ranges[{i}] {which}", r, ndim=(0, 1)), (cfg.kv_heads,))
                    if np.any(arr <= 0):
                        raise ValueError(f"kv_ranges[{i}] {which} must be > 0, got {arr.tolist()}")
                    rng.append(np.array(arr, dtype=np.float64))
                out.append(tuple(rng))
            return out
        out = []
        for i, (enc, norms, biases) in enumerate(layers_in):
            if cfg.arch == "llama":
                g, b = norms[0]
            else:
                g, b = layers_in[i - 1][1][1] if i else norms[0]
            xb = math.sqrt(cfg.hidden) * float(np.abs(g).max()) + (float(np.linalg.norm(b)) if b is not None else 0.0)
            pair = []
            for name in ("k_proj", "v_proj"):
                w = enc[name].dequantize()
                rows = np.linalg.norm(w, axis=1) * xb + np.abs(biases.get(name, np.zeros(w.shape[0])))
                per_head = rows.reshape(cfg.kv_heads, cfg.head_dim)
                if name == "k_proj":                 # a rotated pair reaches the norm of both entries
                    half = cfg.head_dim // 2
                    per_head = np.hypot(per_head[:, :half], per_head[:, half:])
                pair.append(np.maximum(per_head.max(axis=1), 1e-6))
            out.append(tuple(pair))
        return out

    # -- uploads -------------------------------------------------------------------------------------
    def _upload(self, data, port: str = "data") -> Buffer:
        raw = bytes(data) if not isinstance(data, np.ndarray) else data.tobytes()
        buf = self._dev.alloc(max(len(raw), 1), port)
        self._owned.append(buf)
        self._dev.write(buf, raw)
        self._static.append(buf)
        return buf

    def _matmul(self, enc: EncodedWeights, sparse24: bool = False) -> _Matmul:
        """The projection's stripes and scales uploaded; ``sparse24``: 2:4 packed (2-bit formats then
        run as pair fires on an engine with ``sparse24_pairs`` when N is even; dense 2-bit ones on an
        engine with ``dense_pairs``)."""
        lay = self._lay
        bits = engine_format(enc.bits, lay, "bits")
        q = enc.q.astype(np.int8)
        n, kp = q.shape
        g = lay.mm.group_size
        group_l1 = np.abs(q.reshape(n, kp // g, g).astype(np.int64)).sum(axis=2)
        col_l1 = int((group_l1 * enc.mantissas.astype(np.int64)).sum(axis=1).max())
        shift = choose_out_shift(127 * col_l1, lay.matmul.widths.max_out_shift)
        mant = enc.mantissas.astype(np.uint16)
        inline = lay.matmul.inline_scales              # scale_stream inline: the scales go in the stripes
        w = [self._upload(stripe, f"w{i}")
             for i, stripe in enumerate(pack_weights(q, bits, lay, sparse24=sparse24, scales=mant if inline else None))]
        s = None if inline else self._upload(pack_scales(mant, lay))
        code = weight_code(bits, lay, sparse24=True) if sparse24 else bits
        return _Matmul(n=n, k=kp, bits=code, w=w, s=s, out_shift=shift, row_scale=np.asarray(enc.row_scale, float))

    def _table(self, values) -> Buffer:
        """A per-column table (multipliers, a bias, a gamma or beta), in its port's memory."""
        return self._upload(V.pack_u32(np.asarray(values, dtype=np.int64) & 0xFFFFFFFF, self._lay.word_bytes),
                            self._vg.table_port_name)

    def _norm_tables(self, norm, kind, *, out_frac: int) -> dict:
        gamma, beta = norm
        cfg = self._cfg
        top = float(np.abs(gamma).max()) or 1.0
        gf = min(30, 30 - max(0, math.ceil(math.log2(top + 1e-300))))
        c = V.norm_constants(cfg.hidden, cfg.norm_eps, in_frac=cfg.residual_frac_bits, gamma_frac=gf,
                             out_frac=out_frac, center=kind == VectorNorm.LAYER)
        t = {"norm": kind, "gamma_addr": self._table(_int32("gamma", gamma, gf)), "eps_q": c["eps_q"],
             "eps_shift": c["eps_shift"], "norm_shift": c["norm_shift"]}
        if beta is not None:
            t["beta_addr"] = self._table(_int32("beta", beta, out_frac))
        return t

    def _build_layer(self, i, enc, norms, biases, ranges) -> _Layer:
        cfg, att, lay = self._cfg, self._att, self._lay
        hd, qh, kvh = cfg.head_dim, cfg.heads, cfg.kv_heads
        Fh = cfg.residual_frac_bits
        llama = cfg.arch == "llama"
        q_enc, k_enc = enc["q_proj"], enc["k_proj"]
        qb, kb = biases.get("q_proj"), biases.get("k_proj")
        if llama:
            oq, ok = _interleave_rows(qh, hd), _interleave_rows(kvh, hd)
            q_enc, k_enc = _take_rows(q_enc, oq), _take_rows(k_enc, ok)
            qb = None if qb is None else qb[oq]
            kb = None if kb is None else kb[ok]
        sp = self._sparse24
        qkv = self._matmul(_stack(q_enc, k_enc, enc["v_proj"]), sp)
        o = self._matmul(enc["o_proj"], sp)
        ip, i_dev = self._ip, self._in                     # FFN width: activation pass, gate/up columns
        if llama:
            up = self._matmul(_stack(_pad_rows(enc["gate_proj"], i_dev), _pad_rows(enc["up_proj"], i_dev)), sp)
            down = self._matmul(enc["down_proj"], sp)
        else:
            up, down = self._matmul(_pad_rows(enc["fc_in"], i_dev), sp), self._matmul(enc["fc_out"], sp)
        k_scale = kv_head_scale(ranges[0], self.kv_bits)
        v_scale = kv_head_scale(ranges[1], self.kv_bits)
        src = F_ACT if llama else Fh                       # units of the scale records of X1 / X3
        nq, nk = qh * hd, kvh * hd
        t = {}
        t["q_cols"] = self._table(qkv.columns(src, F_ACT, 0, nq))
        t["k_cols"] = self._table(qkv.columns(src, F_ACT, nq, nq + nk))
        t["v_cols"] = self._table(qkv.columns(src, F_ACT, nq + nk, nq + 2 * nk))
        for name, b in (("q_bias", qb), ("k_bias", kb), ("v_bias", biases.get("v_proj"))):
            if b is not None:
                t[name] = self._table(_int32(name, b, F_ACT))
        t["q_consts"] = self._upload(np.asarray(V.qrec_constants(k_scale, qh // kvh, head_dim=hd, frac_bits=F_ACT,
                                                                  softmax_scale=cfg.softmax_scale),
                                                "<u8").tobytes() + bytes(-qh * 8 % lay.word_bytes))
        for name, hs in (("k_consts", k_scale), ("v_consts", v_scale)):
            consts = [int(c) for c in V.kv_constants(hs, self.kv_bits, frac_bits=F_ACT)]
            t[name] = self._upload(np.asarray(consts, "<u8").tobytes() + bytes(-kvh * 8 % lay.word_bytes))
        t["att_cols"] = self._table(V.column_multipliers(np.repeat(v_scale, qh // kvh * hd) * 2.0 ** (F_ACT - 8)))
        t["o_cols"] = self._table(o.columns(F_ACT, Fh))
        if "o_proj" in biases:
            t["o_bias"] = self._table(_int32("o_proj bias", biases["o_proj"], Fh))
        pad = np.zeros(ip - i_dev, dtype=np.int64)        # the activation pass's columns past gate/up: x 0
        if llama:
            t["gate_cols"] = self._table(np.concatenate([up.columns(src, F_ACT, 0, i_dev), pad]))
            t["up_cols"] = self._table(np.concatenate([up.columns(src, F_ACT, i_dev, 2 * i_dev), pad]))
        else:
            t["in_cols"] = self._table(np.concatenate([up.columns(src, F_ACT), pad]))
            if "fc_in" in biases:
                b = np.zeros(ip)
                b[:cfg.intermediate] = biases["fc_in"]
                t["in_bias"] = self._table(_int32("fc_in bias", b, F_ACT))
        t["down_cols"] = self._table(down.columns(F_ACT, Fh))
        name = "down_proj" if llama else "fc_out"
        if name in biases:
            t["down_bias"] = self._table(_int32(f"{name} bias", biases[name], Fh))
        kind = VectorNorm.RMS if llama else VectorNorm.LAYER
        consts = {"norm1": self._norm_tables(norms[0], kind, out_frac=F_ACT if llama else Fh),
                  "norm2": self._norm_tables(norms[1], kind, out_frac=F_ACT if llama else Fh)}
        if self._hp:
            return self._head_parallel_layer(qkv, o, up, down, t, consts, k_scale, v_scale)
        pool = self.num_pages * att.page_bytes(self.kv_bits, kvh)
        k_pool = self._dev.alloc(pool, "w0")
        self._owned.append(k_pool)
        v_pool = self._dev.alloc(pool, f"w{att.kv_ports - 1}")
        self._owned.append(v_pool)
        return _Layer(qkv=qkv, o=o, up=up, down=down, tables=t, consts=consts, k_pool=k_pool, v_pool=v_pool,
                      k_scale=k_scale, v_scale=v_scale, k_pools=[k_pool], v_pools=[v_pool])

    def _head_parallel_layer(self, qkv, o, up, down, t, consts, k_scale, v_scale) -> _Layer:
        """The head-parallel KV layout (docs/engines/attention.md): KV heads split into ``rows`` port
        groups of ``hg`` consecutive heads; group r's K pool on ``w<2r>``, V pool on ``w<2r+1>``. Uploads
        the attention's pool table (K pools, then V pools) and, for the one KV append per side over
        every group (``kv_groups``), the K and the V pool tables."""
        att, lay = self._att, self._lay
        G = self._groups
        hg = self._cfg.kv_heads // G
        pool = self.num_pages * att.page_bytes(self.kv_bits, hg)
        k_pools, v_pools = [], []
        for r in range(G):
            for pools, port in ((k_pools, att.k_port(r)), (v_pools, att.v_port(r))):
                buf = self._dev.alloc(pool, f"w{port}")
                self._owned.append(buf)
                pools.append(buf)
        table = b"".join(b.address.to_bytes(8, "little") for b in k_pools + v_pools)
        k_pool = self._upload(table + bytes(att.pool_table_bytes - len(table)))
        for name, pools in (("k_pools", k_pools), ("v_pools", v_pools)):
            raw = b"".join(b.address.to_bytes(8, "little") for b in pools)
            t[name] = self._upload(raw + bytes(-len(raw) % lay.word_bytes))
        return _Layer(qkv=qkv, o=o, up=up, down=down, tables=t, consts=consts, k_pool=k_pool, v_pool=None,
                      k_scale=k_scale, v_scale=v_scale, k_pools=k_pools, v_pools=v_pools)

    # -- the KV pools of a layer, page by page (both layouts) ----------------------------------------
    def _group_page_bytes(self) -> int:
        return self._att.page_bytes(self.kv_bits, self._cfg.kv_heads // self._groups)

    def _pool_write(self, L: _Layer, which: str, pg: int, image: bytes) -> None:
        """Write the bytes of physical page ``pg`` (all KV heads, the shared layout's page image)."""
        gb = self._group_page_bytes()
        for r, pool in enumerate(L.k_pools if which == "k" else L.v_pools):
            self._dev.write(pool, image[r * gb:(r + 1) * gb], offset=pg * gb)

    def _pool_read(self, L: _Layer, which: str, pg: int) -> bytes:
        gb = self._group_page_bytes()
        return b"".join(self._dev.read(pool, gb, pg * gb) for pool in (L.k_pools if which == "k" else L.v_pools))

    # -- properties ------------------------------------------------------------------------------
    @property
    def device(self) -> Device:
        return self._dev

    @property
    def config(self) -> BlockConfig:
        return self._cfg

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def vocab(self) -> int | None:
        return None if self._head is None else self._head.n

    @property
    def free_pages(self) -> int:
        return len(self._free_pages)

    # -- sequences ---------------------------------------------------------------------------------
    def sequence(self) -> ModelSequence:
        """A new sequence: KV pages of every layer, positions from 0."""
        self._check_open()
        nbytes = len(pack_block_table(np.zeros(self._max_pages, np.uint32), self._lay.word_bytes))
        bt = self._dev.alloc(nbytes, "data")
        try:
            self._dev.write(bt, bytes(nbytes))
        except BaseException:
            self._dev.free(bt)
            raise
        seq = ModelSequence(self, self._next_id, bt)
        self._next_id += 1
        self._seqs[seq.id] = seq
        return seq

    def _check_seq(self, seq) -> ModelSequence:
        if not isinstance(seq, ModelSequence):
            raise TypeError(f"seq must be a ModelSequence from program.sequence(), got {type(seq).__name__}")
        if seq._prog is not self:
            raise ValueError(f"sequence {seq.id} belongs to another program")
        if seq._freed:
            raise ValueError(f"sequence {seq.id} was freed; make a new one with program.sequence()")
        self._check_open()
        return seq

    def _free_sequence(self, seq: ModelSequence) -> None:
        if seq._freed:
            return
        self._free_pages.extend(seq._pages)
        self._free_pages.sort()
        seq._pages, seq._length, seq._freed = [], 0, True
        self._seqs.pop(seq.id, None)
        if not self._dev.closed and not seq._bt.freed:
            self._dev.free(seq._bt)

    def _truncate(self, seq: ModelSequence, length: int) -> None:
        seq = self._check_seq(seq)
        length = check_int("length", length, 0, seq._length)
        keep = -(-length // self._att.page_tokens)
        self._free_pages.extend(seq._pages[keep:])
        self._free_pages.sort()
        seq._pages = seq._pages[:keep]
        seq._length = length

    # -- KV cache load / save (ModelSequence.load_kv, save_kv, read_kv) -----------------------------
    def _kv_order(self) -> np.ndarray:
        """Device element order of one K head: HF rotate-half index per device index (llama)."""
        hd = self._cfg.head_dim
        return _interleave_rows(1, hd) if self._cfg.arch == "llama" else np.arange(hd)

    def _kv_shape(self, length: int) -> tuple:
        return (len(self.layers), length, self._cfg.kv_heads, self._cfg.head_dim)

    def _load_kv(self, seq: ModelSequence, k, v, state) -> None:
        seq = self._check_seq(seq)
        if seq._length or seq._pages:
            raise ValueError(f"sequence {seq.id} already holds {seq._length} tokens; load_kv starts an empty "
                             "sequence (truncate(0) or a new program.sequence() first)")
        cfg, att = self._cfg, self._att
        kvh, hd, g = cfg.kv_heads, cfg.head_dim, att.group_size
        qmax = (1 << (self.kv_bits - 1)) - 1
        if state is not None:
            if k is not None or v is not None:
                raise ValueError("give either k and v (floats) or state (a save_kv dict), not both")
            if not isinstance(state, Mapping):
                raise TypeError(f"state must be a dict from save_kv(), got {type(state).__name__}")
            missing = [n for n in ("k", "v", "k_mant", "v_mant", "kv_bits") if n not in state]
            if missing:
                raise ValueError(f"state lacks {missing} (a save_kv() dict has k, v, k_mant, v_mant, kv_bits)")
            if state["kv_bits"] != self.kv_bits:
                raise ValueError(f"state holds a kv_bits {state['kv_bits']!r} cache; this program's is {self.kv_bits}")
            vals, mants = {}, {}
            for which in "kv":
                q, m = np.asarray(state[which]), np.asarray(state[f"{which}_mant"])
                if q.ndim != 4 or q.shape[0] != len(self.layers) or q.shape[2:] != (kvh, hd) or \
                        not np.issubdtype(q.dtype, np.integer):
                    raise ValueError(f"state[{which!r}] must be integers [{len(self.layers)}, length, {kvh}, {hd}], "
                                     f"got {q.dtype} {q.shape}")
                if m.shape != q.shape[:3] + (hd // g,) or not np.issubdtype(m.dtype, np.integer):
                    raise ValueError(f"state[{which + '_mant'!r}] must be integers {q.shape[:3] + (hd // g,)}, "
                                     f"got {m.dtype} {m.shape}")
                if q.size and (q.min() < -qmax or q.max() > qmax):
                    raise ValueError(f"state[{which!r}] values must be in [-{qmax}, {qmax}] (kv_bits {self.kv_bits})")
                if m.size and (m.min() < 1 or m.max() > 0xFFFF):
                    raise ValueError(f"state[{which + '_mant'!r}] mantissas must be in [1, 65535]")
                vals[which], mants[which] = q.astype(np.int64), m.astype(np.int64)
            if vals["k"].shape != vals["v"].shape:
                raise ValueError(f"state k and v differ in shape: {vals['k'].shape} vs {vals['v'].shape}")
            length = vals["k"].shape[1]
        else:
            if k is None or v is None:
                raise ValueError("load_kv needs k and v (float [layers, length, kv_heads, head_dim]) or state")
            k = real_array("k", k, ndim=(4,), what=f"[{len(self.layers)}, length, {kvh}, {hd}]")
            v = real_array("v", v, ndim=(4,), what=f"[{len(self.layers)}, length, {kvh}, {hd}]")
            if k.shape != v.shape or k.shape[0] != len(self.layers) or k.shape[2:] != (kvh, hd):
                raise ValueError(f"k and v must both be [{len(self.layers)}, length, {kvh}, {hd}], got {k.shape} "
                                 f"and {v.shape}")
            length = k.shape[1]
            vals, mants = {}, {}
            for which, x in (("k", k[..., self._kv_order()]), ("v", v)):
                qs, ms = [], []
                for i, L in enumerate(self.layers):
                    hs = L.k_scale if which == "k" else L.v_scale
                    xi = x[i].reshape(length * kvh, hd)
                    need = np.abs(xi.reshape(length, kvh, hd // g, g)).max(axis=3) / qmax / hs[None, :, None]
                    if need.size and np.rint(need).max() > 0xFFFF:
                        raise ValueError(f"{which} of layer {i} reaches {float(np.abs(xi).max()):.4g}, beyond the "
                                         f"cache's range (about {float(2 * qmax * hs.max() * (1 << 15)):.4g} per head; "
                                         "kv_ranges of the program sets it)")
                    q, m = quantize_kv(xi, self.kv_bits, g, np.tile(hs, length))
                    qs.append(q.reshape(length, kvh, hd))
                    ms.append(m.astype(np.int64).reshape(length, kvh, hd // g))
                vals[which], mants[which] = np.stack(qs), np.stack(ms)
        length = check_int("length (tokens in k/v)", length, 1, self.max_context)
        P = att.page_tokens
        n_pages = -(-length // P)
        if n_pages > len(self._free_pages):
            raise BlockProgramError(f"the KV pools have {len(self._free_pages)} free pages, {length} tokens need "
                                    f"{n_pages} ({P} tokens per page)")
        # every page's bytes before the first write: [layer][which] -> bytes of all pages
        page_bytes = att.page_bytes(self.kv_bits, kvh)
        vb, sa, ha = att.value_bytes(self.kv_bits), att.scale_area, att.head_area(self.kv_bits)
        images = []
        for i in range(len(self.layers)):
            per = {}
            for which in "kv":
                img = np.zeros((n_pages, kvh, ha), np.uint8)
                q = np.zeros((n_pages * P, kvh, hd), np.int64)
                q[:length] = vals[which][i]
                m = np.zeros((n_pages * P, kvh, hd // g), "<u2")
                m[:length] = mants[which][i]
                if self.kv_bits == 8:
                    rec = (q & 0xFF).astype(np.uint8)
                else:
                    nib = (q & 0xF).astype(np.uint8)
                    rec = nib[..., 0::2] | (nib[..., 1::2] << 4)
                rec = rec.reshape(n_pages, P, kvh, -1).transpose(0, 2, 1, 3)        # [page, head, slot, bytes]
                recs = np.zeros((n_pages, kvh, P, vb), np.uint8)
                recs[..., :rec.shape[-1]] = rec
                img[:, :, sa:] = recs.reshape(n_pages, kvh, P * vb)
                ms = m.reshape(n_pages, P, kvh, hd // g).transpose(0, 2, 1, 3).reshape(n_pages, kvh, -1)
                img[:, :, :ms.shape[-1] * 2] = ms.view(np.uint8).reshape(n_pages, kvh, -1)
                per[which] = img.reshape(n_pages, page_bytes)
            images.append(per)
        pages = self._free_pages[:n_pages]
        dev = self._dev
        try:
            for L, per in zip(self.layers, images):
                for which in "kv":
                    for j, pg in enumerate(pages):
                        self._pool_write(L, which, pg, per[which][j].tobytes())
            dev.write(seq._bt, pack_block_table(np.asarray(pages, np.uint32), self._lay.word_bytes))
        except BaseException:
            if not dev.closed:
                try:
                    dev.write(seq._bt, bytes(self._lay.word_bytes))
                except Exception:
                    pass
            raise
        del self._free_pages[:n_pages]
        seq._pages, seq._length = list(pages), length

    def _save_kv(self, seq: ModelSequence) -> dict:
        seq = self._check_seq(seq)
        cfg, att = self._cfg, self._att
        kvh, hd, g, P, n = cfg.kv_heads, cfg.head_dim, att.group_size, att.page_tokens, seq._length
        page_bytes = att.page_bytes(self.kv_bits, kvh)
        vb, sa, ha = att.value_bytes(self.kv_bits), att.scale_area, att.head_area(self.kv_bits)
        out = {"k": [], "v": [], "k_mant": [], "v_mant": [], "kv_bits": self.kv_bits}
        for L in self.layers:
            for which in "kv":
                raw = b"".join(self._pool_read(L, which, pg) for pg in seq._pages)
                img = np.frombuffer(raw, np.uint8).reshape(len(seq._pages), kvh, ha)
                m = img[:, :, :P * (hd // g) * 2].copy().view("<u2").reshape(-1, kvh, P, hd // g)
                rec = img[:, :, sa:].reshape(-1, kvh, P, vb)
                if self.kv_bits == 8:
                    q = rec[..., :hd].astype(np.int8).astype(np.int64)
                else:
                    b = rec[..., :hd // 2].astype(np.int64)
                    q = np.stack([b & 15, b >> 4], axis=-1).reshape(b.shape[:-1] + (hd,))
                    q = np.where(q >= 8, q - 16, q)
                out[which].append(q.transpose(0, 2, 1, 3).reshape(-1, kvh, hd)[:n].astype(np.int8))
                out[f"{which}_mant"].append(m.transpose(0, 2, 1, 3).reshape(-1, kvh, hd // g)[:n].astype(np.uint16))
        for name in ("k", "v", "k_mant", "v_mant"):
            out[name] = np.stack(out[name]) if out[name] else np.zeros(self._kv_shape(0))
        return out

    def _read_kv(self, seq: ModelSequence) -> tuple:
        st = self._save_kv(seq)
        g = self._att.group_size
        k = np.stack([dequantize_kv(st["k"][i], st["k_mant"][i], L.k_scale[None, :], g)
                      for i, L in enumerate(self.layers)])
        v = np.stack([dequantize_kv(st["v"][i], st["v_mant"][i], L.v_scale[None, :], g)
                      for i, L in enumerate(self.layers)])
        inv = np.argsort(self._kv_order())
        return k[..., inv], v

    # -- steps -------------------------------------------------------------------------------------
    def prefill(self, x, seq, *, valid_len: int | None = None, all_logits: bool = False,
                profile: bool = False) -> np.ndarray:
        """Run a chunk of ``T`` tokens (float embeddings ``[T, hidden]``) through every block in one
        device run. With an LM head: float logits of the last token ``[1, vocab]`` (``all_logits``:
        ``[T, vocab]``); without one: the hidden states ``[T, hidden]``. Encoders: ``valid_len`` real
        tokens (the rest is padding no key attends to). ``profile``: run the descriptors one per run
        and record each one's cycles in ``last_step.profile`` (same result; where the cycles go)."""
        return self._step(x, seq, valid_len, all_logits, golden=False, one=False, profile=profile)

    def decode_step(self, x, seq, *, profile: bool = False) -> np.ndarray:
        """One token (float ``[hidden]``) through every block in one device run; float ``[vocab]``
        (or ``[hidden]`` without an LM head). ``profile``: as for :meth:`prefill`."""
        return self._step(x, seq, None, False, golden=False, one=True, profile=profile)

    def golden_prefill(self, x, seq, *, valid_len: int | None = None, all_logits: bool = False) -> np.ndarray:
        """:meth:`prefill` computed by :func:`hbmforge.numerics.program.execute` on a copy of the
        device memory: equal to the device result bit for bit (nothing on the device changes)."""
        return self._step(x, seq, valid_len, all_logits, golden=True, one=False)

    def golden_decode_step(self, x, seq) -> np.ndarray:
        return self._step(x, seq, None, False, golden=True, one=True)

    def _inputs(self, x, one: bool) -> np.ndarray:
        H = self._cfg.hidden
        want = f"[{H}]" if one else f"[T >= 1, {H}]"
        x = real_array("x", x, ndim=(1,) if one else (2,), what=want)
        x2 = x[None] if one else x
        if x2.shape[1] != H or x2.shape[0] == 0:
            raise ValueError(f"x must be {want}, got shape {x.shape}")
        return x2

    def _step(self, x, seq, valid_len, all_logits, *, golden: bool, one: bool, profile: bool = False) -> np.ndarray:
        x = self._inputs(x, one)
        seq = self._check_seq(seq)
        all_logits = check_bool("all_logits", all_logits)
        profile = check_bool("profile", profile)
        T = x.shape[0]
        pos0 = seq._length
        if pos0 + T > self.max_context:
            raise BlockProgramError(f"sequence {seq.id} would hold {pos0 + T} tokens ({pos0} + {T}); this program's "
                                    f"max_context is {self.max_context}")
        bert = self._cfg.arch == "bert"
        if valid_len is not None:
            if not bert:
                raise ValueError("valid_len applies to encoders (arch 'bert') only")
            valid_len = check_int("valid_len", valid_len, 1, T)
        h = _int32("x", x, self._cfg.residual_frac_bits)
        P = self._att.page_tokens
        new_pages = -(-(pos0 + T) // P) - len(seq._pages)
        if new_pages > len(self._free_pages):
            raise BlockProgramError(f"the KV pools have {len(self._free_pages)} free pages, sequence {seq.id} needs "
                                    f"{new_pages} more ({pos0} + {T} tokens, {P} tokens per page)")
        pages = list(seq._pages) + self._free_pages[:new_pages]
        sizes = self._sizes(T)
        if golden:
            mem = self._snapshot(seq, pages)
            addrs = golden_scratch(sizes)
        else:
            bufs = self._work.reserve(sizes)
            addrs = {name: b.address for name, b in bufs.items()}
        prog = self._program(T, pos0, valid_len if bert else None, seq, addrs, all_logits)
        raw_prog = prog.to_bytes()
        x_raw = V.pack_blocked(h, self._vg.rows)
        bt_raw = pack_block_table(np.asarray(pages, np.uint32), self._lay.word_bytes)
        if golden:
            mem.write(seq._bt.address, bt_raw)
            mem.write(addrs["h"], x_raw)
            mem.write(addrs["program"], raw_prog)
            res = execute(mem, addrs["program"], len(prog), self._lay)
            if not res.ok:
                raise DeviceRunError(f"golden program failed at descriptor {res.error_index}: {res.detail}")
            return self._outputs(lambda name, off, n: mem.read(addrs[name] + off, n), T, all_logits, one)
        dev = self._dev
        taken = self._free_pages[:new_pages]
        del self._free_pages[:new_pages]
        old_pages, old_len = list(seq._pages), seq._length
        seq._pages = pages
        started = time.monotonic()
        try:
            dev.write(seq._bt, bt_raw)
            dev.write(bufs["h"], x_raw)
            if self._short_ffn(T):
                dev.write(bufs["xg"], bytes(self._ip - self._in), offset=self._in)
            if profile:
                status, steps = self._run_profiled(prog, raw_prog, bufs["program"])
            else:
                dev.write(bufs["program"], raw_prog)
                status = dev.run(bufs["program"], len(prog), timeout=self.timeout)
                steps = []
            out = self._outputs(lambda name, off, n: dev.read(bufs[name], n, off), T, all_logits, one)
        except BaseException:
            seq._pages, seq._length = old_pages, old_len
            self._free_pages = sorted(self._free_pages + taken)
            if not dev.closed:
                try:
                    dev.write(seq._bt, pack_block_table(np.asarray(old_pages, np.uint32), self._lay.word_bytes)
                              if old_pages else bytes(self._lay.word_bytes))
                except Exception:
                    pass
            raise
        seq._length = pos0 + T
        if steps:
            c = {k: sum(s[k] for s in steps) for k in _PROFILE_COUNTERS}
        else:
            c = dev.counters()
        self.last_step = StepStats(tokens=T, descriptors=len(prog), host_round_trips=len(steps) or 1,
                                   cycles=c["cycles"] if steps else status.cycles,
                                   bytes_read=c.get("bytes_read", 0), bytes_written=c.get("bytes_written", 0),
                                   mac_ops=c.get("mac_ops", 0), elapsed_s=time.monotonic() - started, counters=c,
                                   profile=steps)
        return out

    def _run_profiled(self, prog, raw_prog: bytes, program_buf):
        """Run ``prog`` one descriptor per device run, in order (the same memory effects as one
        run: descriptors run one after the other and share nothing but memory); a row per descriptor."""
        dev, size = self._dev, self._lay.descriptor_bytes
        names = {int(v): k for k, v in self._lay.opcodes.items()}
        steps, status = [], None
        for i, rec in enumerate(prog.descriptors):
            dev.write(program_buf, raw_prog[i * size:(i + 1) * size])
            status = dev.run(program_buf, 1, timeout=self.timeout)
            c = dev.counters()
            steps.append({"index": i, "opcode": names.get(int(rec["op"]), str(rec["op"])),
                          **{k: c[k] for k in _PROFILE_COUNTERS}})
        return status, steps

    def _outputs(self, read, T, all_logits, one) -> np.ndarray:
        cfg, R, W8 = self._cfg, self._vg.rows, self._lay.word_bytes
        if self._head is None:
            h = V.unpack_blocked(read("h", 0, self._vg.blocked_bytes(T, cfg.hidden)), T, cfg.hidden, R)
            out = (h * 2.0 ** -cfg.residual_frac_bits).astype(np.float32)
            return out[0] if one else out
        rows = T if all_logits else 1
        head = self._head
        a, e = V.unpack_scale_records(read("xs_a", 0, self._vg.scale_bytes(T)), T, R, W8)
        y = V.unpack_blocked(read("logits", 0, self._vg.blocked_bytes(rows, head.n)), rows, head.n, R)
        sel = np.arange(T)[-rows:]
        scale = (a[sel] * 2.0 ** e[sel]) / 127.0
        logits = scale_product(y, scale[:, None], self._head_cols[None, :], exp=head.out_shift - F_ACT)
        logits = logits.astype(np.float32)
        return logits[0] if one else logits

    # -- the program of one step -----------------------------------------------------------------
    def _sizes(self, T: int) -> dict:
        cfg, vg, att, lay = self._cfg, self._vg, self._att, self._lay
        R = vg.rows
        blocked = lambda n: vg.blocks(T) * R * n * 4          # noqa: E731
        nqkv = (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim
        widest = max(cfg.hidden, self._ip, cfg.heads * cfg.head_dim)
        sizes = {"h": blocked(cfg.hidden), "xa": T * widest, "xs_a": vg.scale_bytes(T), "xb": T * widest,
                 "xs_b": vg.scale_bytes(T), "yqkv": blocked(nqkv), "qrec": T * cfg.heads * att.q_record_bytes,
                 "o": T * cfg.heads * cfg.head_dim * 4, "y": blocked(max(cfg.hidden, self._gu)),
                 "program": lay.descriptor_bytes * ((14 + self._extra_descriptors(T)) * len(self.layers) + 2)}
        if self._head is not None:
            sizes["logits"] = R * self._head.n * 4 * -(-T // R)
        if self._short_ffn(T):
            sizes["xg"] = self._ip                            # the FFN's int8 row, zero past i_dev
        mms = [mm for L in self.layers for mm in (L.qkv, L.o, L.up, L.down)] + \
            ([self._head] if self._head is not None else [])
        scratch = max(self._partial_bytes(T, mm) for mm in mms)
        if scratch:
            sizes["partial"] = scratch                      # split-K scratch of the matmuls with K > k_slice
        return sizes

    def _short_ffn(self, T: int) -> bool:
        """A decode step's activation pass covers the FFN's i_dev columns only, into ``xg``, not the
        width padded to k_align (on a 4096-lane design 11008 of LLaMA-2-7B's 12288): down's padded K
        rows are zero weights, and the host zeroes xg's padding each step besides, so what the padding
        holds never reaches the result even with weights given padded otherwise."""
        return T == 1 and self._ip > self._in

    def _partial_bytes(self, m: int, mm: _Matmul) -> int:
        geom = self._lay.matmul
        return geom.partial_bytes(m, mm.n, mm.k, OutMode.INT32) if hasattr(geom, "partial_bytes") else 0

    def _program(self, T, pos0, valid_len, seq, a, all_logits) -> ProgramBuilder:
        cfg, vg, att = self._cfg, self._vg, self._att
        R = vg.rows
        hd, qh, kvh, H = cfg.head_dim, cfg.heads, cfg.kv_heads, cfg.hidden
        nq, nk = qh * hd, kvh * hd
        nqkv = nq + 2 * nk
        llama = cfg.arch == "llama"
        p = ProgramBuilder(self._lay)
        blk = lambda n: R * n * 4                               # noqa: E731  (row block stride)
        res = dict(a_fmt=VectorIn.RES32, a_addr=a["h"], a_stride=blk(H))

        def matmul(mm: _Matmul, x, y, m=T):
            split = {"p": a["partial"]} if self._partial_bytes(m, mm) else {}
            p.matmul(m=m, k=mm.k, n=mm.n, wbits=mm.bits, x=x, s=mm.s, y=y, w=mm.w, out_shift=mm.out_shift, **split)

        def t(layer, name):
            return layer.tables[name].address

        def rows_of_h(norm):
            """int8 rows (and scale records) of norm(h), or of h itself, into xa."""
            fields = self._norm_fields(norm) if norm is not None else {}
            p.vector(m=T, dim=H, **res, **fields, out_fmt=VectorOut.ACT8, y_addr=a["xa"], y_scale=a["xs_a"])

        # pre-norm decoders on a design of one row per block: each residual add also writes the next
        # norm's int8 rows (res_out), one pass instead of two
        fuse = llama and R == 1
        in_xa = False                                            # xa holds the next norm's rows already
        for i, L in enumerate(self.layers):
            if not in_xa:
                rows_of_h(L.consts["norm1"] if llama else None)      # the attention's input
            matmul(L.qkv, a["xa"], a["yqkv"])
            acc = dict(a_fmt=VectorIn.ACC32, a_stride=blk(nqkv), a_scale=a["xs_a"])
            rope = dict(rope=1, rope_addr=self._rope.address) if llama else {}
            p.vector(m=T, dim=nq, **acc, a_addr=a["yqkv"], a_cols=t(L, "q_cols"), **self._bias(L, "q_bias"),
                     **rope, pos0=pos0, out_fmt=VectorOut.QREC, y_addr=a["qrec"], consts_addr=t(L, "q_consts"))
            self._kv_appends(p, L, T, pos0, seq, a["yqkv"], acc, rope, blk)
            if self._hp:
                self._head_parallel_attention(p, L, T, pos0, seq, a)
            else:
                mode = {"mode": AttentionMode.CAUSAL, "valid_len": 0}
                if not llama:
                    mode = {"mode": AttentionMode.BIDIRECTIONAL, "valid_len": pos0 + (valid_len or T)}
                p.attention(head_dim=hd, kv_heads=kvh, q_per_kv=qh // kvh, n_q=T, ctx_len=pos0 + T,
                            window=self.window, sink=self.sink,
                            kv_bits=self.kv_bits, q_addr=a["qrec"], bt_addr=seq._bt.address, k_pool=L.k_pool.address,
                            v_pool=L.v_pool.address, o_addr=a["o"], **mode)
            p.vector(m=T, dim=nq, a_fmt=VectorIn.ROWS32, a_addr=a["o"], a_stride=nq * 4, a_cols=t(L, "att_cols"),
                     out_fmt=VectorOut.ACT8, y_addr=a["xb"], y_scale=a["xs_b"])
            matmul(L.o, a["xb"], a["y"])
            self._residual(p, T, L, "o_cols", "o_bias", a, a["xs_b"], H, None if llama else L.consts["norm1"],
                           then_norm=L.consts["norm2"] if fuse else None)
            if not fuse:
                rows_of_h(L.consts["norm2"] if llama else None)      # the MLP's input
            matmul(L.up, a["xa"], a["y"])
            # over I padded to k_align (down's K): gate/up hold i_dev columns, the rest read x 0; a
            # decode step over the i_dev columns only, into xg (its padding zeroed by the host)
            short = self._short_ffn(T)
            I, ni = self._in if short else self._ip, self._in
            xg = a["xg"] if short else a["xb"]
            if llama:
                p.vector(m=T, dim=I, a_fmt=VectorIn.ACC32, a_addr=a["y"], a_stride=blk(2 * ni), a_scale=a["xs_a"],
                         a_cols=t(L, "gate_cols"), act=VectorAct.SILU, b_fmt=VectorIn.ACC32, b_addr=a["y"] + blk(ni),
                         b_stride=blk(2 * ni), b_cols=t(L, "up_cols"), combine=VectorCombine.MUL,
                         out_fmt=VectorOut.ACT8, y_addr=xg, y_scale=a["xs_b"])
            else:
                p.vector(m=T, dim=I, a_fmt=VectorIn.ACC32, a_addr=a["y"], a_stride=blk(ni), a_scale=a["xs_a"],
                         a_cols=t(L, "in_cols"), **self._bias(L, "in_bias"), act=VectorAct.GELU,
                         out_fmt=VectorOut.ACT8, y_addr=xg, y_scale=a["xs_b"])
            matmul(L.down, xg, a["y"])
            nxt = (self.layers[i + 1].consts["norm1"] if i + 1 < len(self.layers) else
                   self._final if self._head is not None and self._final_norm is not None else None)
            in_xa = fuse and nxt is not None
            self._residual(p, T, L, "down_cols", "down_bias", a, a["xs_b"], H, None if llama else L.consts["norm2"],
                           then_norm=nxt if in_xa else None)
        if self._head is not None:
            if not in_xa:
                rows_of_h(self._final if self._final_norm is not None else None)
            rows = T if all_logits else 1
            first = T - rows
            head = self._head
            matmul(head, a["xa"] + first * H, a["logits"], m=rows)
        return p

    def _residual(self, p, T, L, cols, bias, a, scales, H, norm, then_norm=None):
        """h = h + deq(y) (+ bias) [LayerNorm'ed for BERT], in place; ``then_norm``: the next pre-norm
        in the same pass too, its int8 rows into xa (``res_out``: h written beside them)."""
        R = self._vg.rows
        fields = dict(m=T, dim=H, a_fmt=VectorIn.ACC32, a_addr=a["y"], a_stride=R * H * 4, a_scale=scales,
                      a_cols=L.tables[cols].address, **self._bias(L, bias), b_fmt=VectorIn.RES32, b_addr=a["h"],
                      b_stride=R * H * 4, combine=VectorCombine.ADD, out_fmt=VectorOut.RES32, y_addr=a["h"],
                      y_stride=R * H * 4)
        if norm is not None:
            fields.update(self._norm_fields(norm))
        if then_norm is not None:
            fields.update(self._norm_fields(then_norm), out_fmt=VectorOut.ACT8, y_addr=a["xa"], y_scale=a["xs_a"],
                          res_out=1, res_addr=a["h"])
        p.vector(**fields)

    def _kv_appends(self, p, L, T, pos0, seq, yqkv, acc, rope, blk) -> None:
        """K (RoPE'd) and V of the ``T`` new tokens into the layer's pools: one VECTOR KV descriptor per
        side; head-parallel: over every port group (``kv_groups``), each group's heads on its port."""
        cfg, att = self._cfg, self._att
        nq, nk = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        if self._hp:                  # the pools' tables; group r on port 1 + k_port(r) / 1 + v_port(r)
            sides = ((nq, "k", L.tables["k_pools"], att.k_port(0) + 1),
                     (nq + nk, "v", L.tables["v_pools"], att.v_port(0) + 1))
        else:
            sides = ((nq, "k", L.k_pool, 1), (nq + nk, "v", L.v_pool, att.kv_ports))
        for col0, which, pool, port in sides:
            p.vector(m=T, dim=nk, **acc, a_addr=yqkv + blk(col0), a_cols=L.tables[f"{which}_cols"].address,
                     **self._bias(L, f"{which}_bias"), **(rope if which == "k" else {}), pos0=pos0,
                     out_fmt=VectorOut.KV, consts_addr=L.tables[f"{which}_consts"].address, kv_bits=self.kv_bits,
                     bt_addr=seq._bt.address, pool=pool.address, port=port,
                     kv_groups=self._groups if self._hp else 0)

    def _head_parallel_attention(self, p, L, T, pos0, seq, a) -> None:
        """The head-parallel attention: one descriptor per query position (n_q = 1 each; a decode step
        is one), every port group's KV heads at once (kv_layout 1)."""
        cfg, att = self._cfg, self._att
        hd, qh, kvh = cfg.head_dim, cfg.heads, cfg.kv_heads
        nq = qh * hd
        qrec = att.q_record_bytes
        for i in range(T):
            p.attention(head_dim=hd, kv_heads=kvh, q_per_kv=1, n_q=1, ctx_len=pos0 + i + 1, window=self.window,
                        sink=self.sink, kv_bits=self.kv_bits, q_addr=a["qrec"] + i * qh * qrec,
                        bt_addr=seq._bt.address, k_pool=L.k_pool.address, v_pool=0, o_addr=a["o"] + i * nq * 4,
                        mode=AttentionMode.CAUSAL, valid_len=0, kv_layout=KV_HEAD_PARALLEL)

    def _extra_descriptors(self, T: int) -> int:
        """Descriptors per layer beyond the shared layout's: head-parallel, T attention descriptors
        instead of 1."""
        return T - 1 if self._hp else 0

    @property
    def kv_layout(self) -> str:
        """The layers' KV layout: "shared" or "head_parallel" (docs/engines/attention.md)."""
        return "head_parallel" if self._hp else "shared"

    @staticmethod
    def _bias(L, name) -> dict:
        b = L.tables.get(name)
        return {"bias": 1, "bias_addr": b.address} if b is not None else {}

    @staticmethod
    def _norm_fields(c: dict) -> dict:
        out = {k: (v.address if isinstance(v, Buffer) else v) for k, v in c.items()}
        return out

    # -- the golden model's memory ------------------------------------------------------------------
    def _snapshot(self, seq: ModelSequence, pages) -> SparseMemory:
        """A copy of the device memory the step reads: uploads, KV pools (read back), block table."""
        dev = self._dev
        if self._static_pages is None:                      # uploads never change: read them back once
            base = SparseMemory()
            for buf in self._static:
                base.write(buf.address, dev.read(buf))
            self._static_pages = base.pages
        # the program never writes an upload's pages (buffers start on 4 KiB pages): share them
        mem = SparseMemory(dict(self._static_pages))
        page_bytes = self._group_page_bytes()
        for L in self.layers:
            for pool in L.k_pools + L.v_pools:
                for pg in pages:                            # the pages of the sequence (and the new ones)
                    mem.write(pool.address + pg * page_bytes, dev.read(pool, page_bytes, pg * page_bytes))
        return mem

    # -- lifetime ----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if getattr(self, "_closed", False):
            raise ValueError("this program was closed; its weights are no longer on the device")
        self._dev._check_open()

    def close(self) -> None:
        """Free the weights, tables, KV pools, workspace and every sequence."""
        for seq in list(getattr(self, "_seqs", {}).values()):
            self._free_sequence(seq)
        if not self._dev.closed:
            for buf in getattr(self, "_owned", []):
                if not buf.freed:
                    self._dev.free(buf)
        if hasattr(self, "_work"):
            self._work.close()
        self._owned = []
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"ModelProgram({self._cfg.arch}, {len(self.layers)} layers, hidden {self._cfg.hidden}, "
                f"kv_bits {self.kv_bits}, device={self._dev.backend})")


class TransformerBlock(ModelProgram):
    """One layer on the device: a :class:`ModelProgram` of one block, no final norm, no LM head."""

    def __init__(self, device, config: BlockConfig, weights: BlockWeights, **options):
        super().__init__(device, config, [weights], **options)
