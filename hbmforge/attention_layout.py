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
q_addr     Q records (data port)
bt_addr    block table: u32 physical page per logical page (data port)
k_pool     base of the K page pool (port w0)
v_pool     base of the V page pool (port w<kv_ports-1>)
o_addr     output rows (data port)
=========  =================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

__all__ = [
    "ATTENTION_FIELDS", "JOB_WIDTHS", "AttnError", "MAX_HEADS",
    "SCORE_FRAC", "Z_BITS", "P_FRAC", "MULT_BITS", "MAX_SHIFT", "MANT_BITS", "OUT_FRAC",
    "RECIP_X_BITS", "RECIP_TABLE_BITS", "AttentionGeometry", "attention_geometry", "validate_attention",
    "tile_rows", "token_ranges", "segments",
]

ATTENTION_FIELDS = ("head_dim", "kv_heads", "q_per_kv", "n_q", "ctx_len", "window", "sink", "kv_bits",
                    "q_addr", "bt_addr", "k_pool", "v_pool", "o_addr")

MAX_HEADS = 1024           # q_heads = kv_heads * q_per_kv at most this
CTX_BITS = 21              # positions/lengths up to 2**20 (config max_context <= 2**20)

# Job record widths (the command processor copies the low bits of each validated u64 slot).
JOB_WIDTHS = {"head_dim": 9, "kv_heads": 11, "q_per_kv": 11, "n_q": CTX_BITS, "ctx_len": CTX_BITS,
              "window": CTX_BITS, "sink": CTX_BITS, "kv_bits": 4,
              "q_addr": 64, "bt_addr": 64, "k_pool": 64, "v_pool": 64, "o_addr": 64}

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


class AttnError:
    """Error codes of ATTENTION descriptors (``hbmforge.layout.ErrorCode`` continues here)."""

    MISALIGNED = 7          # shared with MATMUL: an address not aligned to the port word
    BAD_HEAD_DIM = 8
    BAD_HEADS = 9
    BAD_KV_BITS = 10
    BAD_CONTEXT = 11
    BAD_MASK = 12

    NAMES = {8: "head_dim differs from the attention engine's",
             9: "kv_heads or q_per_kv zero, or more than 1024 query heads",
             10: "unsupported kv_bits",
             11: "n_q or ctx_len zero, n_q > ctx_len, or ctx_len above max_context",
             12: "window or sink above max_context, or sink without a window"}


def _round_up(v: int, a: int) -> int:
    return -(-v // a) * a


def _log2(v: int) -> int:
    return v.bit_length() - 1


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

    # -- per-bits sizes ----------------------------------------------------------------
    @property
    def groups(self) -> int:
        """K/V scale groups per token and head: ``head_dim / kv_group_size``."""
        return self.head_dim // self.group_size

    def value_bytes(self, bits: int) -> int:
        """Bytes of one token's values (one KV head), padded to whole words."""
        return _round_up(self.head_dim * bits // 8, self.word_bytes)

    def value_words(self, bits: int) -> int:
        return self.value_bytes(bits) // self.word_bytes

    @property
    def scale_area(self) -> int:
        """Bytes of a page's scale mantissas for one KV head: ``page_tokens * groups`` u16, padded."""
        return _round_up(self.page_tokens * self.groups * 2, self.word_bytes)

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
        return _round_up(self.head_dim + 8, self.word_bytes)

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
        return 31 + _log2(self.head_dim)

    @property
    def l_bits(self) -> int:
        """Unsigned softmax denominator: l <= 2**15 * max_context."""
        return P_FRAC + 1 + self.ctx_log2

    @property
    def acc_bits(self) -> int:
        """Signed PV accumulator: |acc| < 2**15 * max_context * 2**16 * 2**7."""
        return 39 + self.ctx_log2

    @property
    def slot(self) -> int:
        """Head dims per int8 word (the unit the accumulator ring rotates by)."""
        return min(self.word_bytes, self.head_dim)

    @property
    def slots(self) -> int:
        return self.head_dim // self.slot

    def to_json(self) -> dict:
        return {"head_dim": self.head_dim, "rows": self.rows, "kv_group_size": self.group_size,
                "page_tokens": self.page_tokens, "max_context": self.max_context, "kv_ports": self.kv_ports,
                "kv_bits": list(self.kv_bits), "q_record_bytes": self.q_record_bytes,
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
                             kv_bits=tuple(att.kv_bits), word_bytes=layout.word_bytes)


def validate_attention(d: dict, layout) -> tuple[int, str]:
    """``(code, why)`` for an ATTENTION descriptor's fields; code 0 when it may run.

    Checks in order (the first failing one wins; generators/attention/checks.py mirrors it).
    """
    att = layout.config.attention
    if d["head_dim"] != att.head_dim:
        return AttnError.BAD_HEAD_DIM, f"head_dim {d['head_dim']}, engine has {att.head_dim}"
    kvh, grp = d["kv_heads"], d["q_per_kv"]
    if kvh == 0 or grp == 0 or kvh > MAX_HEADS or grp > MAX_HEADS or kvh * grp > MAX_HEADS:
        return AttnError.BAD_HEADS, f"kv_heads {kvh}, q_per_kv {grp}: need >= 1 and q heads <= {MAX_HEADS}"
    if d["kv_bits"] not in att.kv_bits:
        return AttnError.BAD_KV_BITS, f"kv_bits {d['kv_bits']}, engine accepts {list(att.kv_bits)}"
    n_q, ctx = d["n_q"], d["ctx_len"]
    if n_q == 0 or ctx == 0 or ctx > att.max_context or n_q > ctx:
        return AttnError.BAD_CONTEXT, f"n_q {n_q}, ctx_len {ctx}: need 1 <= n_q <= ctx_len <= {att.max_context}"
    win, sink = d["window"], d["sink"]
    if win > att.max_context or sink > att.max_context or (sink and not win):
        return AttnError.BAD_MASK, f"window {win}, sink {sink}: at most {att.max_context}, sink needs a window"
    for name in ("q_addr", "bt_addr", "k_pool", "v_pool", "o_addr"):
        if d[name] % layout.word_bytes:
            return AttnError.MISALIGNED, f"{name} {d[name]:#x} not a multiple of {layout.word_bytes}"
    return 0, ""


# -- the engine's loop nest (shared by the golden model and the tests) --------------------

def tile_rows(d: dict, rows: int):
    """Tiles in engine order: for each KV head, the ``n_q * q_per_kv`` query rows (position-major,
    then head) cut into tiles of ``rows``. Yields ``(kv_head, [(pos_idx, q_head), ...])``."""
    grp, n_q = d["q_per_kv"], d["n_q"]
    total = n_q * grp
    for h in range(d["kv_heads"]):
        for start in range(0, total, rows):
            yield h, [(i // grp, h * grp + i % grp) for i in range(start, min(start + rows, total))]


def token_ranges(p_min: int, p_max: int, window: int, sink: int) -> list[tuple[int, int]]:
    """Token ranges ``[lo, hi)`` a tile whose rows sit at positions p_min..p_max must read."""
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


def visible(p: int, j: int, window: int, sink: int) -> bool:
    """Does the query at position ``p`` attend to token ``j``?"""
    return j <= p and (window == 0 or j > p - window or j < sink)
