"""The ATTENTION descriptor, its error codes, memory layouts and datapath widths.

Everything the attention engine, its golden model (:mod:`hbmforge.numerics.attention`)
and the host agree on is derived here from the config's ``AttentionEngine`` (see
docs/engines/attention.md for the prose version).

Descriptor (u64 slots; slot 0 is ``op`` = ``Opcode.ATTENTION``), :data:`ATTENTION_FIELDS`:

=========  =================================================================
head_dim   must equal the engine's ``head_dim``
kv_heads   KV heads of the layer (1 .. MAX_HEADS)
q_per_kv   query heads per KV head (GQA group; 1 = MHA); q_heads = kv_heads * q_per_kv
n_q        query positions (1 in decode; the prefill chunk length)
ctx_len    tokens in the cache, including the n_q new ones; query i sits at
           position ctx_len - n_q + i
window     sliding window: a query at p sees tokens p - window < j <= p (0: unlimited)
sink       attention sinks: tokens j < sink are also visible (needs window > 0)
kv_bits    4 or 8 (one of the engine's ``kv_bits``)
mode       ``AttentionMode``: 0 causal (the mask above), 1 bidirectional (encoders: every query
           sees every key j < valid_len; window and sink must be 0)
valid_len  bidirectional: keys j >= valid_len are padding, masked and never read (0: ctx_len);
           causal: must be 0
q_addr     Q records (data port)
bt_addr    block table: u32 physical page per logical page (data port)
k_pool     base of the K page pool (port w0); head-parallel: the pool table (data port)
v_pool     base of the V page pool (port w<kv_ports-1>); head-parallel: must be 0
o_addr     output rows (data port)
kv_layout  ``KV_SHARED`` 0: the rows of a tile share one KV head (the layout above);
           ``KV_HEAD_PARALLEL`` 1 (engines with ``head_parallel``): decode of an MHA layer, the
           ``rows`` rows of a tile are ``rows`` different heads, row r streaming K from ``w<2r>``
           and V from ``w<2r+1>``. Head h lives in port group ``r = h // (kv_heads / rows)`` at
           index ``h % (kv_heads / rows)`` of that group's own K and V pools (ordinary pools of
           ``kv_heads / rows`` heads sharing the block table); ``k_pool`` points to a table of
           ``2 * rows`` u64: the K pool of group r at entry r, its V pool at entry ``rows + r``.
           Needs ``q_per_kv = 1``, ``n_q = 1`` and ``kv_heads`` a multiple of ``rows``.
=========  =================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..encodings import AttentionMode, ErrorCode, Opcode
from ..mathutil import exact_log2, round_up
from .base import Channels, Check, EngineFamily, IntOps, first_error

__all__ = [
    "ATTENTION_FIELDS", "JOB_WIDTHS", "MAX_HEADS", "AttentionFamily", "attention_checks",
    "SCORE_FRAC", "Z_BITS", "P_FRAC", "MULT_BITS", "MAX_SHIFT", "MANT_BITS", "OUT_FRAC",
    "RECIP_X_BITS", "RECIP_TABLE_BITS", "AttentionGeometry", "attention_geometry", "validate_attention",
    "tile_rows", "token_ranges", "segments", "key_limit", "job_ranges", "visible", "KV_SHARED", "KV_HEAD_PARALLEL",
]

ATTENTION_FIELDS = ("head_dim", "kv_heads", "q_per_kv", "n_q", "ctx_len", "window", "sink", "kv_bits",
                    "mode", "valid_len", "q_addr", "bt_addr", "k_pool", "v_pool", "o_addr", "kv_layout")

KV_SHARED = 0              # kv_layout: the rows of a tile share one KV head
KV_HEAD_PARALLEL = 1       # kv_layout: the rows of a tile are different heads, each on its own ports

MAX_HEADS = 1024           # q_heads = kv_heads * q_per_kv at most this
CTX_BITS = 21              # positions/lengths up to 2**20 (config max_context <= 2**20)

# Job record widths (the command processor copies the low bits of each validated u64 slot).
JOB_WIDTHS = {"head_dim": 9, "kv_heads": 11, "q_per_kv": 11, "n_q": CTX_BITS, "ctx_len": CTX_BITS,
              "window": CTX_BITS, "sink": CTX_BITS, "kv_bits": 4, "mode": AttentionMode, "valid_len": CTX_BITS,
              "q_addr": 64, "bt_addr": 64, "k_pool": 64, "v_pool": 64, "o_addr": 64, "kv_layout": 1}

# -- numerics ----------------------------------------------------------------------------
SCORE_FRAC = 8             # z: log2-domain score, signed fixed point with 8 fraction bits
Z_BITS = 24                # z saturates to a signed 24-bit value (|z| < 2**15 in log2 units)
P_FRAC = 15                # probabilities / rescale factors: unsigned, 2**15 == 1.0 (16 bits)
MULT_BITS = 16             # per-row score multiplier: unsigned 16 bits
MAX_SHIFT = 63             # per-row score shift 0..63
MANT_BITS = 16             # K/V group-scale mantissas: unsigned 16 bits
OUT_FRAC = 8               # output: int32 with 8 fraction bits, in units of the V head scale
RECIP_X_BITS = 17          # reciprocal: l normalized to 17 bits
RECIP_TABLE_BITS = 7       # reciprocal seed table index bits (then one Newton step)


@dataclass(frozen=True)
class AttentionGeometry:
    """Sizes of one config's attention buffers (``B`` = port word bytes)."""

    head_dim: int
    rows: int
    group_size: int
    page_tokens: int
    max_context: int
    kv_ports: int
    kv_bits: tuple
    word_bytes: int
    head_parallel: bool = False
    lut_products: bool = False       # int4_products 'lut' or 'qk_lut': q x k in LUTs
    lut_mant_products: bool = False  # int4_products 'lut': mantissa x value in LUTs too

    # -- head-parallel port map --------------------------------------------------------------
    def k_port(self, row: int = 0) -> int:
        """Stream port index (``w<i>``) row ``row``'s K words come from: ``w0`` in the shared layout
        (every row), ``w<2·row>`` in a head-parallel job."""
        return 2 * row if self.head_parallel else 0

    def v_port(self, row: int | None = None) -> int:
        """Stream port index of the V words: ``w<kv_ports-1>`` in the shared layout (``row`` None),
        ``w<2·row+1>`` for row ``row`` of a head-parallel job."""
        return self.kv_ports - 1 if row is None else 2 * row + 1

    @property
    def pool_table_bytes(self) -> int:
        """A head-parallel job's pool table: ``2 * rows`` u64 (K pools, then V pools), padded to words."""
        return round_up(16 * self.rows, self.word_bytes)

    # -- per-bits sizes ----------------------------------------------------------------
    @property
    def groups(self) -> int:
        """K/V scale groups per token and head: ``head_dim / kv_group_size``."""
        return self.head_dim // self.group_size

    def value_bytes(self, bits: int) -> int:
        """Bytes of one token's values (one KV head), padded to whole words."""
        return round_up(self.head_dim * bits // 8, self.word_bytes)

    def value_words(self, bits: int) -> int:
        return self.value_bytes(bits) // self.word_bytes

    @property
    def scale_area(self) -> int:
        """Bytes of a page's scale mantissas for one KV head: ``page_tokens * groups`` u16, padded."""
        return round_up(self.page_tokens * self.groups * 2, self.word_bytes)

    def head_area(self, bits: int) -> int:
        """Bytes of one KV head in one page: scale area, then ``page_tokens`` value records."""
        return self.scale_area + self.page_tokens * self.value_bytes(bits)

    def page_bytes(self, bits: int, kv_heads: int) -> int:
        return kv_heads * self.head_area(bits)

    @property
    def mants_per_word(self) -> int:
        return self.word_bytes // 2

    def scale_span(self, a: int, n: int) -> tuple[int, int, int]:
        """Tokens ``[a, a+n)`` of a page -> (first scale word, words, mantissa offset in it)."""
        mpw = self.mants_per_word
        first = a * self.groups // mpw
        off = a * self.groups - first * mpw
        words = -(-(off + n * self.groups) // mpw)
        return first, words, off

    # -- Q and outputs -----------------------------------------------------------------
    @property
    def q_record_bytes(self) -> int:
        """One query row: ``head_dim`` int8, u16 mult, u8 shift, zero pad to a word."""
        return round_up(self.head_dim + 8, self.word_bytes)

    @property
    def out_row_bytes(self) -> int:
        """One output row: ``head_dim`` int32 (a word multiple: head_dim >= 16)."""
        return self.head_dim * 4

    # -- widths ------------------------------------------------------------------------
    @property
    def ctx_log2(self) -> int:
        return max(1, math.ceil(math.log2(self.max_context)))

    @property
    def score_bits(self) -> int:
        """Signed integer score S = sum_g km * sum_d q*k: |S| < 2**14 * 2**16 * head_dim."""
        return 31 + exact_log2(self.head_dim)

    @property
    def l_bits(self) -> int:
        """Unsigned softmax denominator: l <= 2**15 * max_context."""
        return P_FRAC + 1 + self.ctx_log2

    @property
    def acc_bits(self) -> int:
        """Signed PV accumulator: |acc| < 2**15 * max_context * 2**16 * 2**7."""
        return 39 + self.ctx_log2

    @property
    def out_cuts(self) -> tuple[int, ...]:
        """Where the output stage cuts the accumulator for ``acc x y``: 17-bit pieces, the top one
        signed and at most 18 bits, so that each piece times the 18-bit reciprocal is one DSP48E2
        tile (a wider operand made Yosys sum two tiles in LUTs behind unregistered DSPs)."""
        cuts = [0]
        while self.acc_bits - cuts[-1] > 18:
            cuts.append(cuts[-1] + 17)
        return (*cuts, self.acc_bits)

    @property
    def slot(self) -> int:
        """Head dims per int8 word (the unit the accumulator ring rotates by)."""
        return min(self.word_bytes, self.head_dim)

    @property
    def lanes(self) -> int:
        """Head dims one value word carries in the widest format (int4 packs two per byte)."""
        return min(2 * self.word_bytes, self.head_dim) if 4 in self.kv_bits else self.slot

    @property
    def slots(self) -> int:
        return self.head_dim // self.slot

    def to_json(self) -> dict:
        return {"head_dim": self.head_dim, "rows": self.rows, "kv_group_size": self.group_size,
                "page_tokens": self.page_tokens, "max_context": self.max_context, "kv_ports": self.kv_ports,
                "head_parallel": self.head_parallel, "kv_bits": list(self.kv_bits), "q_record_bytes": self.q_record_bytes,
                "scale_area": self.scale_area,
                "head_area": {str(b): self.head_area(b) for b in self.kv_bits},
                "score_bits": self.score_bits, "l_bits": self.l_bits, "acc_bits": self.acc_bits,
                "score_frac": SCORE_FRAC, "z_bits": Z_BITS, "p_frac": P_FRAC, "out_frac": OUT_FRAC}


def attention_geometry(layout) -> AttentionGeometry:
    att = layout.config.attention
    if att is None:
        raise ValueError(f"config {layout.config.name!r} has no attention engine")
    return AttentionGeometry(head_dim=att.head_dim, rows=att.rows, group_size=att.kv_group_size,
                             page_tokens=att.page_tokens, max_context=att.max_context, kv_ports=att.kv_ports,
                             kv_bits=tuple(att.kv_bits), word_bytes=layout.word_bytes,
                             head_parallel=att.head_parallel, lut_products=att.int4_products != "dsp",
                             lut_mant_products=att.int4_products == "lut")


def attention_checks(layout) -> tuple[Check, ...]:
    """ATTENTION descriptor rules in hardware order (the first failing one wins)."""
    att = layout.config.attention
    align = layout.word_bytes
    ctx_max = att.max_context
    addrs = ("q_addr", "bt_addr", "k_pool", "v_pool", "o_addr")

    def bad_heads(f, ops):
        kvh, grp = f["kv_heads"], f["q_per_kv"]
        # the product is only looked at when both factors are <= MAX_HEADS (11 bits)
        return ops.any_(kvh == 0, grp == 0, kvh > MAX_HEADS, grp > MAX_HEADS,
                        ops.low(kvh, 11) * ops.low(grp, 11) > MAX_HEADS)

    def why_addr(f):
        bad = next(a for a in addrs if f[a] % align)
        return f"{bad} {f[bad]:#x} not a multiple of {align}"

    # slots added after the first release (mode, valid_len) read 0 when a caller leaves them out
    def bad_mode(f, ops):
        mode, valid = f.get("mode", 0), f.get("valid_len", 0)
        bidir = mode == AttentionMode.BIDIRECTIONAL
        return ops.any_(ops.not_(ops.one_of(mode, list(AttentionMode))), valid > f["ctx_len"],
                        (mode == AttentionMode.CAUSAL) & (valid != 0),
                        bidir & ((f["window"] != 0) | (f["sink"] != 0)), bad_layout(f, ops))

    rows = att.rows
    layouts = [KV_SHARED, KV_HEAD_PARALLEL] if att.head_parallel else [KV_SHARED]

    def bad_layout(f, ops):
        kvl = f.get("kv_layout", 0)
        hp = kvl == KV_HEAD_PARALLEL
        return ops.any_(ops.not_(ops.one_of(kvl, layouts)),
                        hp & ops.any_(f["q_per_kv"] != 1, f["n_q"] != 1, ops.misaligned(f["kv_heads"], rows),
                                      f["v_pool"] != 0))

    def why_layout(f):
        kvl = f.get("kv_layout", 0)
        if kvl not in layouts:
            return (f"kv_layout {kvl}, allowed {layouts} (0 shared" +
                    (", 1 head-parallel)" if att.head_parallel else "; head-parallel needs head_parallel: true)"))
        return (f"kv_layout 1 (head-parallel) with q_per_kv {f['q_per_kv']}, n_q {f['n_q']}, kv_heads "
                f"{f['kv_heads']}, v_pool {f['v_pool']:#x}: needs q_per_kv 1, n_q 1, kv_heads a multiple of "
                f"rows {rows} and v_pool 0 (k_pool is the pool table)")

    def why_mode(f):
        mode, valid = f.get("mode", 0), f.get("valid_len", 0)
        if bad_layout(f, IntOps):
            return why_layout(f)
        if mode not in [int(m) for m in AttentionMode]:
            return f"mode {mode}, allowed {[int(m) for m in AttentionMode]} (0 causal, 1 bidirectional)"
        if valid > f["ctx_len"]:
            return f"valid_len {valid} above ctx_len {f['ctx_len']}"
        if mode == AttentionMode.CAUSAL:
            return f"valid_len {valid} in causal mode (must be 0; padding applies to bidirectional jobs)"
        return f"window {f['window']}, sink {f['sink']}: bidirectional attention takes no window or sink"

    return (
        Check(ErrorCode.BAD_HEAD_DIM, lambda f, ops: f["head_dim"] != att.head_dim,
              lambda f: f"head_dim {f['head_dim']}, engine has {att.head_dim}"),
        Check(ErrorCode.BAD_HEADS, bad_heads,
              lambda f: f"kv_heads {f['kv_heads']}, q_per_kv {f['q_per_kv']}: need >= 1 and "
                        f"q heads <= {MAX_HEADS}"),
        Check(ErrorCode.BAD_KV_BITS, lambda f, ops: ops.not_(ops.one_of(f["kv_bits"], att.kv_bits)),
              lambda f: f"kv_bits {f['kv_bits']}, engine accepts {list(att.kv_bits)}"),
        Check(ErrorCode.BAD_CONTEXT,
              lambda f, ops: ops.any_(f["n_q"] == 0, f["ctx_len"] == 0, f["ctx_len"] > ctx_max,
                                      f["n_q"] > f["ctx_len"]),
              lambda f: f"n_q {f['n_q']}, ctx_len {f['ctx_len']}: need 1 <= n_q <= ctx_len <= {ctx_max}"),
        Check(ErrorCode.BAD_MASK,
              lambda f, ops: ops.any_(f["window"] > ctx_max, f["sink"] > ctx_max,
                                      (f["sink"] != 0) & (f["window"] == 0)),
              lambda f: f"window {f['window']}, sink {f['sink']}: at most {ctx_max}, sink needs a window"),
        Check(ErrorCode.BAD_ATTN_MODE, bad_mode, why_mode),
        Check(ErrorCode.MISALIGNED, lambda f, ops: ops.any_(*(ops.misaligned(f[a], align) for a in addrs)),
              why_addr),
    )


def validate_attention(d: dict, layout) -> tuple[int, str]:
    """``(code, why)`` for an ATTENTION descriptor's fields; code 0 when it may run."""
    return first_error(attention_checks(layout), d)


class AttentionFamily(EngineFamily):
    kind = "attention"
    opcodes = (Opcode.ATTENTION,)
    errors = (ErrorCode.BAD_HEAD_DIM, ErrorCode.BAD_HEADS, ErrorCode.BAD_KV_BITS, ErrorCode.BAD_CONTEXT,
              ErrorCode.BAD_MASK, ErrorCode.BAD_ATTN_MODE, ErrorCode.MISALIGNED)

    def fields(self, layout, opcode):
        return ATTENTION_FIELDS

    def checks(self, layout, opcode):
        return attention_checks(layout)

    def channels(self, layout):
        # Q records and block-table words on the data port; K on w0, V on w<kv_ports-1>
        return Channels(data_readers=("act", "scale"), data_writer=True,
                        stream_readers=layout.config.attention.kv_ports)

    def max_mac_inc(self, layout):
        geom = attention_geometry(layout)
        return 2 * geom.rows * geom.lanes

    def manifest(self, layout):
        att = layout.config.attention
        entry = att.model_dump(mode="json")
        for key in ("kind", "name"):
            entry.pop(key)
        return {**entry, "geometry": attention_geometry(layout).to_json()}


# -- the engine's loop nest (shared by the golden model and the tests) --------------------

def tile_rows(d: dict, rows: int):
    """Tiles in engine order: for each KV head, the ``n_q * q_per_kv`` query rows (position-major,
    then head) cut into tiles of ``rows``. Yields ``(kv_head, [(pos_idx, q_head), ...])``."""
    grp, n_q = d["q_per_kv"], d["n_q"]
    total = n_q * grp
    for h in range(d["kv_heads"]):
        for start in range(0, total, rows):
            yield h, [(i // grp, h * grp + i % grp) for i in range(start, min(start + rows, total))]


def key_limit(d) -> int | None:
    """Keys a bidirectional job reads, ``[0, key_limit)`` (``valid_len``, 0 = ``ctx_len``); None when
    the job is causal (each row's position bounds its keys)."""
    if d.get("mode", 0) != AttentionMode.BIDIRECTIONAL:
        return None
    return d.get("valid_len", 0) or d["ctx_len"]


def job_ranges(d, p_min: int, p_max: int) -> list[tuple[int, int]]:
    """:func:`token_ranges` of a tile of job ``d`` (descriptor fields) whose rows sit at p_min..p_max."""
    return token_ranges(p_min, p_max, d["window"], d["sink"], keys=key_limit(d))


def token_ranges(p_min: int, p_max: int, window: int, sink: int, *,
                 keys: int | None = None) -> list[tuple[int, int]]:
    """Token ranges ``[lo, hi)`` a tile whose rows sit at positions p_min..p_max must read
    (``keys``: a bidirectional job's key limit, then every row reads ``[0, keys)``)."""
    if keys is not None:
        return [(0, keys)]
    hi = p_max + 1
    if window == 0:
        return [(0, hi)]
    lo = max(0, p_min - window + 1)
    if lo <= sink:
        return [(0, hi)]
    return ([(0, sink)] if sink else []) + [(lo, hi)]


def segments(ranges, page_tokens: int) -> list[tuple[int, int]]:
    """Ranges cut at page boundaries: ``(first token, count)`` per segment, in engine order."""
    out = []
    for lo, hi in ranges:
        j = lo
        while j < hi:
            end = min(hi, (j // page_tokens + 1) * page_tokens)
            out.append((j, end - j))
            j = end
    return out


def visible(p: int, j: int, window: int, sink: int, *, keys: int | None = None) -> bool:
    """Does the query at position ``p`` attend to token ``j``? (``keys``: bidirectional, see
    :func:`key_limit`: every row sees exactly the keys ``j < keys``)."""
    if keys is not None:
        return j < keys
    return j <= p and (window == 0 or j > p - window or j < sink)
