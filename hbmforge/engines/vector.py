"""The VECTOR family: row-wise and element-wise ops between layers, in device memory.

One VECTOR descriptor reads up to two operands (A, B), runs a fixed pipeline and writes one
output in the format the next layer reads (docs/engines/vector.md, docs/architecture.md §9)::

    v = deq(A) [+ bias]  ->  act (GELU | SiLU)  ->  combine with deq(B) (+ | *)  ->  RoPE
      ->  norm (RMS | Layer)  ->  out (RES32 | ACT8 + row scales | Q records | KV append)

The engine works on blocks of ``R`` rows (the matmul's ``rows``) held on chip, ``dim`` int32
elements each; the numbers of every stage are in :mod:`hbmforge.numerics.vector`.

Descriptor (u64 slots after ``op`` = ``Opcode.VECTOR``), :data:`VECTOR_FIELDS`:

===========  ==================================================================================
m, dim       rows (tokens) and elements per row (a multiple of the port word, at most max_dim)
a_fmt        ``VectorIn``: RES32, ACC32 or ROWS32
a_addr       operand A; ``a_stride``: bytes between row blocks (blocked) or rows (ROWS32)
a_scale      ACC32: row scale records (one u32 per row, blocked by R; B shares them)
a_cols       ACC32/ROWS32: column multipliers of A (u32 per column: mult | shift << 16)
b_fmt, ...   operand B (``NONE`` or like A; an ACC32 B uses A's row scales); ``b_cols``
bias         1: add ``bias_addr`` (int32 per column, in the units of deq(A)) to A
act          ``VectorAct`` on A;  ``combine``: ``VectorCombine`` of A with B
norm         ``VectorNorm``; ``gamma_addr``/``beta_addr`` (int32 per column), ``eps_q``,
             ``eps_shift`` (2E), ``norm_shift`` (the rounding shift before the rsqrt exponent)
rope         1: rotate pairs (2i, 2i+1) of every head by the table at ``rope_addr`` (one row of
             ``head_dim / 2`` u32 ``cos | sin << 16`` per position); row ``i`` is at ``pos0 + i``
out_fmt      ``VectorOut``; ``y_addr``, ``y_stride`` (RES32: bytes between row blocks),
             ``y_scale`` (ACT8: row scale records out)
consts_addr  QREC: u64 per head (score multiplier ``kc | ks << 16``); KV: u64 per KV head
             (``km | ks << 16 | hm << 32 | hs << 48``)
kv_bits      KV: 8 or 4; ``bt_addr``: the sequence's block table; ``pool``: its K or V pool;
             ``port``: the pool's port index (1 + i for ``w<i>``)
kv_groups    KV: 0 or 1: one pool (above). n >= 2 (a power of two, at most kv_ports / 2): the heads
             split into n port groups of dim / head_dim / n consecutive heads, the head-parallel
             layout in one descriptor; ``pool`` is then a table of n u64 pool addresses (group r's
             pool, its pages of that group's heads) and group r writes port ``port + 2 r``
res_out      1: also write each row's value before its norm as RES32 to ``res_addr`` (row-block
             stride ``y_stride``): a residual add and the next pre-norm in one pass (ACT8 with a
             norm, one row per block only)
===========  ==================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass

from ..encodings import ErrorCode, Opcode, VectorAct, VectorCombine, VectorIn, VectorNorm, VectorOut
from ..mathutil import round_up
from .base import Channels, Check, EngineFamily

__all__ = [
    "VECTOR_FIELDS", "ADDRESS_FIELDS", "TABLE_FIELDS", "JOB_WIDTHS", "VectorFamily", "VectorGeometry", "vector_geometry",
    "vector_checks", "ACT_WIDTH", "ACT_FRAC", "ACT_SEG_BITS", "ROPE_FRAC", "COL_MULT_BITS", "SCALE_MANT_BITS",
    "RSQRT_FRAC", "MAX_EPS_SHIFT", "MAX_NORM_SHIFT", "MAX_COL_SHIFT", "ACT_NAMES",
]

VECTOR_FIELDS = (
    "m", "dim",
    "a_fmt", "a_addr", "a_stride", "a_scale", "a_cols",
    "b_fmt", "b_addr", "b_stride", "b_cols",
    "bias", "bias_addr", "act", "combine",
    "norm", "gamma_addr", "beta_addr", "eps_q", "eps_shift", "norm_shift",
    "rope", "rope_addr", "pos0",
    "out_fmt", "y_addr", "y_stride", "y_scale", "consts_addr",
    "kv_bits", "bt_addr", "pool", "port", "kv_groups",
    "res_out", "res_addr",
)

#: slots holding byte addresses or byte strides: each a multiple of the port word
ADDRESS_FIELDS = ("a_addr", "a_stride", "a_scale", "a_cols", "b_addr", "b_stride", "b_cols", "bias_addr",
                  "gamma_addr", "beta_addr", "rope_addr", "y_addr", "y_stride", "y_scale", "consts_addr",
                  "bt_addr", "pool", "res_addr")

#: the per-column tables a job reads once (through the config's ``table_port`` when it has one)
TABLE_FIELDS = ("a_cols", "b_cols", "bias_addr", "gamma_addr", "beta_addr")

_U32 = (1 << 32) - 1
POS_BITS = 21                    # positions up to 2**20 (attention max_context <= 2**20)

# -- numerics constants (docs/engines/vector.md) -------------------------------------------
ACT_WIDTH = 32                   # GELU/SiLU input and output: int32 ...
ACT_FRAC = 16                    # ... with 16 fraction bits (the ACC32 column multipliers target it)
ACT_SEG_BITS = 4                 # tail-table segments per unit
ROPE_FRAC = 14                   # cos/sin: int16 with 14 fraction bits
COL_MULT_BITS = 15               # column multiplier: unsigned, < 2**15
MAX_COL_SHIFT = 63
SCALE_MANT_BITS = 16             # row scale record: mantissa a < 2**16, exponent e
RSQRT_FRAC = 18                  # MF of the norm's reciprocal square root (NormSpec.rsqrt_bits)
MAX_EPS_SHIFT = 32               # 2E: V carries at most 32 extra fraction bits
MAX_NORM_SHIFT = 127
ACT_NAMES = {"gelu": VectorAct.GELU, "silu": VectorAct.SILU}

# Job record widths (the command processor copies the low bits of each validated u64 slot).
JOB_WIDTHS = {"m": 32, "eps_q": 64, "eps_shift": 6, "norm_shift": 7, "pos0": POS_BITS, "kv_bits": 4, "kv_groups": 6,
              "bias": 1, "rope": 1, "res_out": 1, **{a: 64 for a in ADDRESS_FIELDS}}
for _s in ("a_stride", "b_stride", "y_stride"):
    JOB_WIDTHS[_s] = 32


@dataclass(frozen=True)
class VectorGeometry:
    """Sizes of the vector engine's buffers for one design (``B`` = port word bytes)."""

    rows: int                   # R: rows per block, the matmul's ``rows`` (its blocked output layout)
    max_dim: int
    word_bytes: int
    activations: tuple
    head_dim: int | None        # the attention engine's (None: no Q records, KV appends or RoPE)
    kv_group_size: int | None
    kv_bits: tuple
    kv_ports: int
    max_context: int
    table_port: int | None = None   # the stream port the per-column tables come through (None: data)
    store_words: int = 1            # tile words an ACT8/QREC store op quantizes (config store_words)

    @property
    def lanes(self) -> int:
        """int32 elements per port word: the engine computes one word per cycle."""
        return self.word_bytes // 4

    @property
    def has_attention(self) -> bool:
        return self.head_dim is not None

    @property
    def scale_block_bytes(self) -> int:
        """Row scale records of one row block: ``R`` u32, padded to a word."""
        return round_up(4 * self.rows, self.word_bytes)

    def scale_bytes(self, m: int) -> int:
        """Row scale records of ``m`` rows."""
        return -(-m // self.rows) * self.scale_block_bytes

    def blocks(self, m: int) -> int:
        return -(-m // self.rows)

    def blocked_bytes(self, m: int, dim: int) -> int:
        """An int32 blocked buffer of ``m`` rows of ``dim`` (row block stride ``R * dim * 4``)."""
        return self.blocks(m) * self.rows * dim * 4

    def column_bytes(self, dim: int) -> int:
        """A per-column table (multipliers, bias, gamma, beta): one u32/int32 per column."""
        return round_up(4 * dim, self.word_bytes)

    @property
    def rope_row_bytes(self) -> int:
        """One position of the RoPE table: ``head_dim / 2`` u32, padded to a word."""
        return round_up(self.head_dim * 2, self.word_bytes)

    @property
    def max_kv_groups(self) -> int:
        """Port groups one KV append may write (``kv_groups``): a K and a V port each."""
        return max(self.kv_ports // 2, 1)

    def kv_group_choices(self) -> tuple[int, ...]:
        """The allowed ``kv_groups``: 0 and 1 (one pool), and powers of two up to max_kv_groups."""
        n, out = 2, [0, 1]
        while n <= self.max_kv_groups:
            out.append(n)
            n *= 2
        return tuple(out)

    def pool_table_bytes(self, groups: int) -> int:
        """The pool table of a ``kv_groups`` append: one u64 per group, padded to a word."""
        return round_up(8 * groups, self.word_bytes)

    def consts_bytes(self, dim: int) -> int:
        """QREC/KV constants: one u64 per head of ``dim``."""
        return round_up(dim // self.head_dim * 8, self.word_bytes)

    @property
    def groups_per_head(self) -> int:
        return self.head_dim // self.kv_group_size

    @property
    def table_port_name(self) -> str:
        """The port whose memory holds the per-column tables (``TABLE_FIELDS``): ``data``, or the
        stream port of the config's ``table_port``."""
        return "data" if self.table_port is None else f"w{self.table_port}"

    def to_json(self) -> dict:
        out = {"rows": self.rows, "lanes": self.lanes, "max_dim": self.max_dim,
               "activations": list(self.activations), "scale_block_bytes": self.scale_block_bytes,
               "act_width": ACT_WIDTH, "act_frac": ACT_FRAC, "act_seg_bits": ACT_SEG_BITS,
               "rope_frac": ROPE_FRAC, "col_mult_bits": COL_MULT_BITS, "scale_mant_bits": SCALE_MANT_BITS,
               "rsqrt_frac": RSQRT_FRAC, "formats": {
                   "in": {v.name: int(v) for v in VectorIn}, "out": {v.name: int(v) for v in VectorOut},
                   "act": {v.name: int(v) for v in VectorAct}, "combine": {v.name: int(v) for v in VectorCombine},
                   "norm": {v.name: int(v) for v in VectorNorm}}}
        if self.table_port is not None:
            out["table_port"] = self.table_port_name
        if self.has_attention:
            out.update(head_dim=self.head_dim, kv_group_size=self.kv_group_size, kv_bits=list(self.kv_bits),
                       kv_ports=self.kv_ports, rope_row_bytes=self.rope_row_bytes)
        return out


def vector_geometry(layout) -> VectorGeometry:
    vec = layout.config.engine("vector")
    if vec is None:
        raise ValueError(f"config {layout.config.name!r} has no vector engine")
    att = layout.config.attention
    return VectorGeometry(
        rows=layout.mm.rows, max_dim=vec.max_dim, word_bytes=layout.word_bytes,
        activations=tuple(vec.activations),
        head_dim=att.head_dim if att else None, kv_group_size=att.kv_group_size if att else None,
        kv_bits=tuple(att.kv_bits) if att else (), kv_ports=att.kv_ports if att else 0,
        max_context=att.max_context if att else (1 << (POS_BITS - 1)),
        table_port=(att.kv_ports if att else 0) if vec.table_port else None,
        store_words=vec.store_words if (vec.max_dim // (layout.word_bytes // 4)) % vec.store_words == 0 else 1)


def vector_checks(layout) -> tuple[Check, ...]:
    """VECTOR descriptor rules in hardware order: formats, shape, norm, KV, alignment."""
    g = vector_geometry(layout)
    align = layout.word_bytes
    acts = [VectorAct.NONE] + [ACT_NAMES[a] for a in g.activations]
    attn = g.has_attention
    hd = g.head_dim or 1
    ctx = g.max_context
    choices = g.kv_group_choices() if attn else (0, 1)

    def needs_heads(f):
        return (f["rope"] == 1) | (f["out_fmt"] == VectorOut.QREC) | (f["out_fmt"] == VectorOut.KV)

    def bad_format(f, ops):
        return ops.any_(
            ops.not_(ops.one_of(f["a_fmt"], [VectorIn.RES32, VectorIn.ACC32, VectorIn.ROWS32])),
            ops.not_(ops.one_of(f["b_fmt"], list(VectorIn))),
            ops.not_(ops.one_of(f["out_fmt"], list(VectorOut))),
            ops.not_(ops.one_of(f["act"], acts)),
            ops.not_(ops.one_of(f["combine"], list(VectorCombine))),
            ops.not_(ops.one_of(f["norm"], list(VectorNorm))),
            f["bias"] > 1, f["rope"] > 1,
            (f["combine"] == VectorCombine.NONE) != (f["b_fmt"] == VectorIn.NONE),
            (f["b_fmt"] == VectorIn.ACC32) & (f["a_fmt"] != VectorIn.ACC32),
            needs_heads(f) & (not attn),
            f["res_out"] > 1,
            (f["res_out"] == 1) & (((f["norm"] == VectorNorm.NONE) | (f["out_fmt"] != VectorOut.ACT8))
                                   if g.rows == 1 else True))

    def why_format(f):
        return (f"a_fmt {f['a_fmt']}, b_fmt {f['b_fmt']}, out_fmt {f['out_fmt']}, act {f['act']}, combine "
                f"{f['combine']}, norm {f['norm']}, bias {f['bias']}, rope {f['rope']}: a_fmt one of RES32/ACC32/"
                f"ROWS32, act one of {[int(a) for a in acts]} (this engine's tables), a B operand exactly when "
                f"combine is set, an ACC32 B only with an ACC32 A"
                + ("" if attn else ", RoPE/QREC/KV need an attention engine in the design")
                + f"; res_out {f['res_out']}: 0, or 1 with a norm and out_fmt ACT8 on a design of one row per block "
                  f"(this one has {g.rows})")

    def bad_shape(f, ops):
        return ops.any_(f["m"] == 0, f["m"] > _U32, f["dim"] == 0, f["dim"] > g.max_dim,
                        ops.misaligned(f["dim"], align),
                        needs_heads(f) & ops.misaligned(ops.low(f["dim"], 32), hd) if attn else False,
                        f["a_stride"] > _U32, f["b_stride"] > _U32, f["y_stride"] > _U32)

    def why_shape(f):
        heads = f", a multiple of head_dim {hd} for RoPE/QREC/KV" if attn else ""
        return (f"m {f['m']}, dim {f['dim']}: m in [1, 2**32 - 1], dim a multiple of {align} in "
                f"[{align}, {g.max_dim}]{heads}; strides below 2**32")

    def bad_norm(f, ops):
        return (f["norm"] != VectorNorm.NONE) & ops.any_(
            f["eps_q"] == 0, f["eps_shift"] > MAX_EPS_SHIFT, f["norm_shift"] > MAX_NORM_SHIFT)

    def bad_kv(f, ops):
        if not attn:                     # RoPE and KV are format errors there
            return False
        positions = (f["rope"] == 1) | (f["out_fmt"] == VectorOut.KV)
        beyond = ops.any_(f["pos0"] > ctx, f["m"] > ctx,
                          ops.low(f["pos0"], POS_BITS) + ops.low(f["m"], POS_BITS) > ctx)
        n_ok = ops.one_of(f["kv_groups"], choices)
        # n >= 2 groups: the last group's port exists and the heads split evenly
        # (port + 2 (n - 1) > kv_ports as a compare with a constant: no 64-bit add before it)
        groups_bad = ops.any_(*((f["kv_groups"] == n) & ops.any_(
            (f["port"] > g.kv_ports - 2 * (n - 1)) if g.kv_ports >= 2 * (n - 1) else True,
            ops.misaligned(ops.low(f["dim"], 32), hd * n))
                                for n in choices if n >= 2))
        kv = (f["out_fmt"] == VectorOut.KV) & ops.any_(
            ops.not_(ops.one_of(f["kv_bits"], g.kv_bits)), f["port"] == 0, f["port"] > g.kv_ports,
            ops.not_(n_ok), n_ok & groups_bad)
        return ops.any_(kv, positions & beyond)

    def why_kv(f):
        return (f"kv_bits {f['kv_bits']}, port {f['port']}, kv_groups {f['kv_groups']}, dim {f['dim']}, "
                f"pos0 {f['pos0']}, m {f['m']}: kv_bits one of {list(g.kv_bits)}, port in [1, {g.kv_ports}] "
                f"(w0..w{max(g.kv_ports - 1, 0)}), kv_groups one of {list(choices)} with port + 2 (kv_groups - 1) "
                f"<= {g.kv_ports} and dim a multiple of head_dim {hd} x kv_groups, pos0 + m <= {ctx}")

    def why_addr(f):
        bad = next(a for a in ADDRESS_FIELDS if f[a] % align)
        return f"{bad} {f[bad]:#x} not a multiple of {align}"

    return (
        Check(ErrorCode.VEC_FORMAT, bad_format, why_format),
        Check(ErrorCode.VEC_SHAPE, bad_shape, why_shape),
        Check(ErrorCode.VEC_NORM, bad_norm,
              lambda f: f"eps_q {f['eps_q']}, eps_shift {f['eps_shift']}, norm_shift {f['norm_shift']}: "
                        f"eps_q >= 1, eps_shift <= {MAX_EPS_SHIFT}, norm_shift <= {MAX_NORM_SHIFT}"),
        Check(ErrorCode.VEC_KV, bad_kv, why_kv),
        Check(ErrorCode.MISALIGNED,
              lambda f, ops: ops.any_(*(ops.misaligned(f[a], align) for a in ADDRESS_FIELDS)), why_addr),
    )


class VectorFamily(EngineFamily):
    kind = "vector"
    opcodes = (Opcode.VECTOR,)
    errors = (ErrorCode.VEC_FORMAT, ErrorCode.VEC_SHAPE, ErrorCode.VEC_NORM, ErrorCode.VEC_KV,
              ErrorCode.MISALIGNED)

    def fields(self, layout, opcode):
        return VECTOR_FIELDS

    def checks(self, layout, opcode):
        return vector_checks(layout)

    def channels(self, layout):
        # one data reader for operands, scales, tables and block-table words; the data writer;
        # a reader and a writer on each KV port (value records, scale-word read-modify-write)
        att = layout.config.attention
        kv = att.kv_ports if att is not None else 0
        readers = kv + 1 if layout.config.engine("vector").table_port else kv   # + the table port
        return Channels(data_readers=("src",), data_writer=True, stream_readers=readers, stream_writers=kv)

    def manifest(self, layout):
        return {"geometry": vector_geometry(layout).to_json()}
