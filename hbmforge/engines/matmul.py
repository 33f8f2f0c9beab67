"""The low-bit matmul family: its MATMUL descriptor, checks, widths and memory layouts.

docs/architecture.md §3-§5 and docs/engines/matmul.md are the prose version. Everything the
matmul RTL, its golden model (:mod:`hbmforge.numerics.matmul`,
:func:`hbmforge.numerics.program.execute`) and the host packers agree on is derived here from the
config's ``matmul`` engine and the port word.

Loop nest of one descriptor (the engine's order, which the byte counts below follow)::

    for slice s of K (k_slice elements each, the last one shorter)      K > k_slice: split, exact
      for chunk q of the M rows (chunk_blocks row blocks of `rows`)    activations held on chip
        for tile t of the N columns (tile_n columns)                   weights held on chip
          for row block b of the chunk
            for column n of the tile
              for K chunk c of the slice (lanes elements): one array fire

Each (slice, chunk) *pass* reads the slice's weights and scales once, so GEMM reads every weight
once per chunk; the requant parameters (INT8, last slice) and the bias (first slice) are read once
per tile. Between slices the engine keeps exact int64 partial sums in the ``p_addr`` scratch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from ..encodings import BiasMode, ErrorCode, Opcode, OutMode, WeightFormat
from ..mathutil import ceil_div, round_up
from .base import Channels, Check, EngineFamily

__all__ = ["MATMUL_FIELDS", "MatmulWidths", "MatmulGeometry", "MatmulFamily", "matmul_checks",
           "PARTIAL_BYTES", "next_pow2", "SPARSE24", "is_sparse24", "dense_code", "sparse24_group_bits"]

#: u64 slots of a MATMUL descriptor after ``op``; then one ``w_addr<i>`` per weight port.
MATMUL_FIELDS = ("m", "k", "n", "wbits", "out_mode", "out_shift", "x_addr", "s_addr", "q_addr", "y_addr",
                 "bias", "bias_shift", "b_addr", "p_addr")
#: bytes of one partial sum in the split-K scratch (int64)
PARTIAL_BYTES = 8
_U32 = (1 << 32) - 1
#: ``wbits`` flag of 2:4 structured-sparse weights (``wbits = code | SPARSE24``): every group of 4
#: consecutive elements of a column (in K) holds at most 2 non-zeros, stored as 2 values and two 2-bit
#: indexes (docs/engines/matmul.md, "2:4 sparsity"); engines with ``sparse24: true`` accept it
SPARSE24 = 0x10


def is_sparse24(wbits) -> bool:
    """True for a descriptor code with the :data:`SPARSE24` flag."""
    return isinstance(wbits, int) and not isinstance(wbits, bool) and bool(wbits & SPARSE24)


def dense_code(wbits):
    """The weight format of a (possibly sparse) ``wbits``: the code without :data:`SPARSE24`, or the
    config spelling unchanged."""
    if is_sparse24(wbits):
        return WeightFormat(wbits & ~SPARSE24)
    return wbits


def sparse24_group_bits(lane_bits: int) -> int:
    """Bits of one packed group of 4 elements: two values of ``lane_bits`` and two 2-bit indexes."""
    return 2 * lane_bits + 4


def next_pow2(v: int) -> int:
    """The least power of two >= ``v`` (``v >= 1``)."""
    return 1 << (v - 1).bit_length()


@dataclass(frozen=True)
class MatmulWidths:
    """Integer widths of the matmul datapath, derived so that no input can overflow."""

    act_bits: int
    max_wbits: int
    lanes: int
    group_size: int
    scale_bits: int
    max_k: int                            # the largest K of one descriptor (split_k x k_slice)

    @property
    def product_bits(self) -> int:        # signed a x signed w
        return self.act_bits + self.max_wbits

    @property
    def chunk_bits(self) -> int:          # sum of `lanes` products (one array fire)
        return self.product_bits + math.ceil(math.log2(self.lanes))

    @property
    def group_bits(self) -> int:          # sum of `group_size` products: the int32 partial
        return self.product_bits + math.ceil(math.log2(self.group_size))

    @property
    def scaled_bits(self) -> int:         # group partial x unsigned scale mantissa
        return self.group_bits + self.scale_bits

    @property
    def sum_bits(self) -> int:            # sum over max_k / group_size scaled partials
        return self.scaled_bits + max(0, math.ceil(math.log2(self.max_k // self.group_size)))

    @property
    def bias_bits(self) -> int:           # one bias entry (int32)
        return 32

    @property
    def max_bias_shift(self) -> int:      # bias << shift spans at most half the sum's range
        return max(0, self.sum_bits - self.bias_bits)

    @property
    def acc_bits(self) -> int:            # sum + bias << shift: accumulators, partials, output stage
        return max(self.sum_bits, self.bias_bits + self.max_bias_shift) + 1

    @property
    def partial_bits(self) -> int:        # a split-K partial sum in memory (acc_bits sign-extended)
        return 8 * PARTIAL_BYTES

    @property
    def mult_bits(self) -> int:           # int8-output requant multiplier (signed)
        return 32

    @property
    def requant_bits(self) -> int:        # acc x mult
        return self.acc_bits + self.mult_bits

    @property
    def max_out_shift(self) -> int:       # int32 mode
        return 63

    @property
    def max_requant_shift(self) -> int:   # int8 mode
        return 127

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in (
            "act_bits", "max_wbits", "product_bits", "chunk_bits", "group_bits", "scaled_bits", "sum_bits",
            "bias_bits", "max_bias_shift", "acc_bits", "partial_bits", "mult_bits", "requant_bits",
            "max_out_shift", "max_requant_shift")}


@dataclass(frozen=True)
class MatmulGeometry:
    """Byte counts of the matmul operands in device memory and the on-chip tiling
    (docs/architecture.md §4, docs/engines/matmul.md). ``engine`` is the config's matmul
    engine, ``word_bytes`` the port word.
    """

    engine: object
    word_bytes: int

    @property
    def rows(self) -> int:
        return self.engine.rows

    @property
    def weight_ports(self) -> int:
        return self.engine.weight_ports

    @property
    def k_align(self) -> int:
        """K (in elements) must be a multiple of this; the host zero-pads."""
        return max(self.engine.lanes, self.engine.group_size, self.word_bytes)

    @property
    def addr_align(self) -> int:
        """Every buffer address in a descriptor must be a multiple of this."""
        return self.word_bytes

    @property
    def macs_per_cycle(self) -> int:
        return self.engine.rows * self.engine.lanes

    @property
    def weight_codes(self) -> tuple[int, ...]:
        """Every ``wbits`` code the engine accepts: its formats, and with ``sparse24`` each one's 2:4
        sparse code (``code | SPARSE24``) too."""
        dense = tuple(WeightFormat.from_config(f) for f in self.engine.weight_bits)
        sparse = getattr(self.engine, "sparse24_formats", ())
        return dense + tuple(int(WeightFormat.from_config(f)) | SPARSE24 for f in sparse)

    @property
    def tlmm(self) -> bool:
        return self.engine.arch == "tlmm"

    # -- K slices (split-K) --------------------------------------------------------------
    @property
    def k_slice(self) -> int:
        """K elements one pass accumulates on chip (``max_k`` rounded down to ``k_align``)."""
        return self.engine.max_k // self.k_align * self.k_align

    @property
    def max_k_total(self) -> int:
        """The largest K of one descriptor: ``split_k`` slices."""
        return self.engine.split_k * self.k_slice

    def slices(self, k: int) -> int:
        return ceil_div(k, self.k_slice)

    def slice_k(self, k: int, s: int) -> int:
        """K elements of slice ``s``."""
        return min(self.k_slice, k - s * self.k_slice)

    # -- on-chip tiles -------------------------------------------------------------------
    @property
    def tile_n(self) -> int:
        """Output columns per weight tile (the weight buffer holds two: one computing, one loading)."""
        return self.engine.tile_n if self.engine.tile_n is not None else 16

    @property
    def tile_m(self) -> int:
        """Activation rows the buffer holds at K = max_k."""
        return self.engine.tile_m if self.engine.tile_m is not None else 8 * self.engine.rows

    @property
    def line_stride(self) -> int:
        """Lines (of ``lanes`` elements) reserved per row of a row block, or per weight column:
        the power of two at or above ``k_slice / lanes``."""
        return next_pow2(self.k_slice // self.engine.lanes)

    @property
    def act_depth(self) -> int:
        """Lines per activation bank (one bank per row of a block)."""
        return self.tile_m // self.engine.rows * self.line_stride

    @property
    def weight_depth(self) -> int:
        """Lines of the weight buffer: ``2 x tile_n`` column slots."""
        return 2 * self.tile_n * self.line_stride

    @property
    def weight_line_bits(self) -> int:
        """One weight-buffer line: ``lanes`` decoded weights and the scale mantissas of the groups the
        line ends."""
        lane_w = max(self.lane_bits(f) for f in self.engine.weight_bits)
        groups = max(1, self.engine.lanes // self.engine.group_size)
        return self.engine.lanes * lane_w + groups * self.engine.scale_bits

    def act_slots(self, k: int) -> int:
        """Row blocks the activation buffer holds for reduction length ``k`` (of its first slice)."""
        kc = self.slice_k(k, 0) // self.engine.lanes
        return self.act_depth // next_pow2(kc)

    def chunk_blocks(self, m: int, n: int, k: int, out_mode: int) -> int:
        """Row blocks per chunk (the weights are read once per chunk). One block when the job has
        one (``m <= rows``: a GEMV; Y, or a slice's partial sums, then leave in one command, i.e.
        in the writer's longest bursts instead of one burst per tile), when the array builds tables
        per block (``arch: tlmm``), or when the job has several weight tiles and its output
        segments (one tile of one row block in the blocked Y layout) are not whole words."""
        if self.tlmm or m <= self.rows:
            return 1
        if n > self.tile_n:
            eb = 4 if out_mode == OutMode.INT32 else 1
            if (n * self.rows * eb) % self.word_bytes or (self.tile_n * self.rows * eb) % self.word_bytes:
                return 1
        return self.act_slots(k)

    def chunks(self, m: int, n: int, k: int, out_mode: int) -> int:
        return ceil_div(self.row_blocks(m), self.chunk_blocks(m, n, k, out_mode))

    def tiles(self, n: int) -> int:
        return ceil_div(n, self.tile_n)

    def segmented(self, m: int, n: int, k: int, out_mode: int) -> bool:
        """Y is written in (chunk, tile, row block) segments; otherwise in one command."""
        return self.chunk_blocks(m, n, k, out_mode) > 1 and n > self.tile_n

    # -- widths --------------------------------------------------------------------------
    @cached_property
    def widths(self) -> MatmulWidths:
        mm = self.engine
        return MatmulWidths(act_bits=8, max_wbits=max(self.lane_bits(f) for f in mm.weight_bits),
                            lanes=mm.lanes, group_size=mm.group_size, scale_bits=mm.scale_bits,
                            max_k=self.max_k_total)

    @staticmethod
    def lane_bits(fmt) -> int:
        """Signed width of one decoded weight (``fmt``: config format or descriptor code, sparse or not)."""
        fmt = dense_code(fmt)
        return 2 if fmt in ("ternary", WeightFormat.TERNARY) else int(fmt)

    def pad_k(self, k: int) -> int:
        return round_up(k, self.k_align)

    def round_words(self, nbytes: int) -> int:
        return round_up(nbytes, self.word_bytes)

    # -- buffers in memory ---------------------------------------------------------------
    def weight_stream_bytes(self, n: int, k: int, wbits) -> int:
        """Bytes of the packed [n, k] weight stream of one K slice before striping (``wbits``: code or
        format). Ternary with ``ternary_packing: 5trit`` holds five weights per byte; every other
        format packs ``lane_bits`` per weight. 2:4 sparse codes hold a group of 4 weights in
        ``2 * lane_bits + 4`` bits (ternary as 2-bit codes whatever the packing)."""
        if is_sparse24(wbits):
            return ceil_div(n * k // 4 * sparse24_group_bits(self.lane_bits(wbits)), 8)
        if wbits in ("ternary", WeightFormat.TERNARY) and self.engine.ternary_packing == "5trit":
            return ceil_div(n * k, 5)
        return ceil_div(n * k * self.lane_bits(wbits), 8)

    # -- inline scales (scale_stream: inline) ----------------------------------------------
    @property
    def inline_scales(self) -> bool:
        """The group scales travel in the weight stripes (``scale_stream: inline``), not at ``s_addr``."""
        return getattr(self.engine, "scale_stream", "data") == "inline"

    @property
    def combined_bytes(self) -> int:
        """One combined word: word ``c`` of every stripe (``weight_ports x word_bytes``)."""
        return self.engine.weight_ports * self.word_bytes

    def inline_ratio(self, wbits) -> int:
        """``r``: weight words per scale word in the inline layout, ``group_size x b / 16`` with ``b``
        the stream bits per weight (2 for int2 and 2-bit ternary, 4, 8; 2:4 sparse ``(lane_bits + 2) / 2``).
        A scale word holds ``P*W/16`` groups, i.e. the scales of ``G*b/16`` weight words, whatever
        ``P``, ``W`` and ``lanes`` are. 5-trit ternary (1.6 bits) has no whole ``r``: the config refuses it."""
        g = self.engine.group_size
        if is_sparse24(wbits):
            num = g * sparse24_group_bits(self.lane_bits(wbits))      # G x (2b + 4) / 4 / 16
            den = 64
        elif dense_code(wbits) in ("ternary", WeightFormat.TERNARY) and self.engine.ternary_packing == "5trit":
            num, den = g * 8, 5 * 16
        else:
            num, den = g * self.lane_bits(wbits), 16
        if num % den:
            raise ValueError(f"scale_stream: inline: weight format {wbits!r} has no whole number of weight words "
                             f"per scale word (group_size {g})")
        return num // den

    def slice_stream_words(self, n: int, ks: int, wbits) -> tuple[int, int]:
        """``(weight words, scale words)`` of one K slice, in combined words; scale words are 0 unless
        inline. Inline, the slice's stripes hold ``weight words + scale words`` combined words (see
        :meth:`inline_positions`)."""
        cb = self.combined_bytes
        ww = ceil_div(self.weight_stream_bytes(n, ks, wbits), cb)
        if not self.inline_scales:
            return ww, 0
        sw = ceil_div(n * (ks // self.engine.group_size) * 2, cb)
        r = self.inline_ratio(wbits)
        # every scale word is followed by at least one of its weight words: the slice is ww + sw words
        assert r * (sw - 1) < ww <= r * sw, (ww, sw, r)
        return ww, sw

    def inline_positions(self, n: int, ks: int, wbits) -> tuple[range, list[int]]:
        """Where the combined words of one K slice sit in its inline stream: ``(scale, weight)`` word
        indexes. Scale word ``j`` (the slice's ``[n, ks/G]`` u16 scales, row-major, cut into combined
        words, the last zero-padded) is at ``j * (r + 1)``, followed by weight words ``j*r .. j*r + r - 1``
        (weight word ``i`` at ``i + i // r + 1``); the slice's last scale word is followed by the rest
        of its weight words (at least one)."""
        ww, sw = self.slice_stream_words(n, ks, wbits)
        r = self.inline_ratio(wbits)
        return range(0, sw * (r + 1), r + 1), [i + i // r + 1 for i in range(ww)]

    def slice_weight_port_bytes(self, n: int, ks: int, wbits) -> int:
        """Bytes each weight port holds for one slice's [n, ks] weights (whole combined words); inline,
        the slice's scale words too."""
        return sum(self.slice_stream_words(n, ks, wbits)) * self.word_bytes

    def weight_port_bytes(self, n: int, k: int, wbits) -> int:
        """Bytes each weight port holds for an [n, k] weight matrix (k padded): its K slices one
        after the other (one slice when k <= k_slice)."""
        return sum(self.slice_weight_port_bytes(n, self.slice_k(k, s), wbits) for s in range(self.slices(k)))

    def slice_scale_bytes(self, n: int, ks: int) -> int:
        """Bytes of one K slice's scales at ``s_addr`` (0 inline: they are in the weight stripes)."""
        if self.inline_scales:
            return 0
        return self.round_words(n * (ks // self.engine.group_size) * 2)

    def scale_bytes(self, n: int, k: int) -> int:
        """Group-scale mantissas at ``s_addr``: per K slice ``[n, ks/G]`` u16, each slice whole words
        (0 with ``scale_stream: inline``: the engine ignores ``s_addr``)."""
        return sum(self.slice_scale_bytes(n, self.slice_k(k, s)) for s in range(self.slices(k)))

    def requant_bytes(self, n: int) -> int:
        return self.round_words(n * 8)

    def bias_bytes(self, n: int) -> int:
        return self.round_words(n * 4)

    def act_bytes(self, m: int, k: int) -> int:
        return self.round_words(m * k)

    def row_blocks(self, m: int) -> int:
        return ceil_div(m, self.engine.rows)

    def out_bytes(self, m: int, n: int, out_mode: int) -> int:
        ebytes = 4 if out_mode == OutMode.INT32 else 1
        return self.round_words(self.row_blocks(m) * n * self.engine.rows * ebytes)

    def partial_stride(self, m: int, n: int, k: int, out_mode: int) -> int:
        """Bytes of one chunk's region in the split-K scratch: ``chunk_blocks x rows x n`` int64."""
        return self.round_words(self.chunk_blocks(m, n, k, out_mode) * self.rows * n * PARTIAL_BYTES)

    def partial_bytes(self, m: int, n: int, k: int, out_mode: int) -> int:
        """The split-K scratch at ``p_addr`` (0 when K fits one slice)."""
        if self.slices(k) <= 1:
            return 0
        return self.chunks(m, n, k, out_mode) * self.partial_stride(m, n, k, out_mode)


def matmul_checks(geom: MatmulGeometry) -> tuple[Check, ...]:
    """MATMUL descriptor rules in hardware order: format, K, shape, output mode, bias, alignment.

    Slots added after the first release (``bias``, ``bias_shift``, ``b_addr``, ``p_addr``) read 0
    when a caller leaves them out (no bias, K within one slice).
    """
    mm = geom.engine
    codes = geom.weight_codes
    max_shift = geom.widths.max_out_shift
    max_bias_shift = geom.widths.max_bias_shift
    k_align, align, k_max, k_slice = geom.k_align, geom.addr_align, geom.max_k_total, geom.k_slice
    ports = range(mm.weight_ports)

    def addresses(f):
        yield "x_addr"
        if not geom.inline_scales:              # inline: s_addr is ignored
            yield "s_addr"
        yield "y_addr"
        yield from (f"w_addr{i}" for i in ports)

    def bad_addr(f, ops):
        return ops.any_(*(ops.misaligned(f[a], align) for a in addresses(f)),
                        (f["out_mode"] == OutMode.INT8) & ops.misaligned(f["q_addr"], align),
                        (f.get("bias", 0) == BiasMode.INT32) & ops.misaligned(f.get("b_addr", 0), align),
                        (f["k"] > k_slice) & ops.misaligned(f.get("p_addr", 0), align))

    def why_addr(f):
        names = list(addresses(f)) + (["q_addr"] if f["out_mode"] == OutMode.INT8 else []) \
            + (["b_addr"] if f.get("bias", 0) == BiasMode.INT32 else []) + (["p_addr"] if f["k"] > k_slice else [])
        bad = next(a for a in names if f.get(a, 0) % align)
        return f"{bad} {f.get(bad, 0):#x} not a multiple of {align}"

    def why_bias(f):
        b = f.get("bias", 0)
        if b not in [int(v) for v in BiasMode]:
            return f"bias {b}, allowed {[int(v) for v in BiasMode]} (0 none, 1 int32 per column)"
        return f"bias_shift {f.get('bias_shift', 0)} > {max_bias_shift}"

    return (
        Check(ErrorCode.BAD_WBITS, lambda f, ops: ops.not_(ops.one_of(f["wbits"], codes)),
              lambda f: f"wbits {f['wbits']}, engine accepts codes {[int(c) for c in codes]} "
                        f"({list(mm.weight_bits)}"
                        + (f"; {SPARSE24:#x} marks 2:4 sparse)" if getattr(mm, "sparse24", False)
                           else "; no 2:4 sparse codes: the engine has sparse24 false)")),
        Check(ErrorCode.BAD_K,
              lambda f, ops: ops.any_(f["k"] == 0, f["k"] > k_max, ops.misaligned(f["k"], k_align)),
              lambda f: f"k {f['k']}, must be a multiple of {k_align} in [1, {k_max}] "
                        f"({mm.split_k} slices of {k_slice})"),
        Check(ErrorCode.BAD_SHAPE,
              lambda f, ops: ops.any_(f["m"] == 0, f["n"] == 0, f["m"] > _U32, f["n"] > _U32),
              lambda f: f"m {f['m']}, n {f['n']}, each must be in [1, 2**32 - 1]"),
        Check(ErrorCode.BAD_OUT_MODE,
              lambda f, ops: ops.any_(ops.not_(ops.one_of(f["out_mode"], list(OutMode))),
                                      (f["out_mode"] == OutMode.INT32) & (f["out_shift"] > max_shift)),
              lambda f: (f"out_shift {f['out_shift']} > {max_shift}" if f["out_mode"] == OutMode.INT32
                         else f"out_mode {f['out_mode']}, allowed {[int(v) for v in OutMode]}")),
        Check(ErrorCode.BAD_BIAS,
              lambda f, ops: ops.any_(ops.not_(ops.one_of(f.get("bias", 0), list(BiasMode))),
                                      (f.get("bias", 0) == BiasMode.INT32) & (f.get("bias_shift", 0) > max_bias_shift)),
              why_bias),
        Check(ErrorCode.MISALIGNED, bad_addr, why_addr),
    )


class MatmulFamily(EngineFamily):
    kind = "matmul"
    opcodes = (Opcode.MATMUL,)
    errors = (ErrorCode.BAD_WBITS, ErrorCode.BAD_K, ErrorCode.BAD_SHAPE, ErrorCode.BAD_OUT_MODE,
              ErrorCode.BAD_BIAS, ErrorCode.MISALIGNED)

    def fields(self, layout, opcode):
        return MATMUL_FIELDS + tuple(f"w_addr{i}" for i in range(layout.mm.weight_ports))

    def checks(self, layout, opcode):
        return matmul_checks(layout.matmul)

    def channels(self, layout):
        # act: activations and split-K partials; scale: group scales (idle with scale_stream: inline);
        # rq: requant parameters and bias
        # weight_prefetch: the weights stream during the VECTOR or ATTENTION before a MATMUL
        prefetch = getattr(layout.mm, "weight_prefetch", 0)
        return Channels(data_readers=("act", "scale", "rq"), data_writer=True,
                        stream_readers=layout.mm.weight_ports, prefetch=prefetch,
                        early_during=("vector", "attention") if prefetch else ())

    def max_mac_inc(self, layout):
        return layout.matmul.macs_per_cycle

    def macs_per_cycle(self, layout):
        return layout.matmul.macs_per_cycle

    def manifest(self, layout):
        mm, geom = layout.mm, layout.matmul
        return {
            "rows": mm.rows, "lanes": mm.lanes, "weight_ports": mm.weight_ports,
            "weight_bits": list(mm.weight_bits),
            "weight_codes": [int(c) for c in geom.weight_codes],
            "sparse24": bool(getattr(mm, "sparse24", False)), "sparse24_flag": SPARSE24,
            "sparse24_formats": list(getattr(mm, "sparse24_formats", ())),
            "sparse24_pairs": bool(getattr(mm, "sparse24_pairs", False)),
            "dense_pairs": bool(getattr(mm, "dense_pairs", False)),
            "weight_prefetch": int(getattr(mm, "weight_prefetch", 0)),
            "ternary_packing": mm.ternary_packing, "arch": mm.arch, "tlmm_group": mm.tlmm_group,
            "group_size": mm.group_size, "scale_bits": mm.scale_bits, "max_k": mm.max_k,
            "scale_stream": getattr(mm, "scale_stream", "data"),
            "k_align": geom.k_align, "addr_align": geom.addr_align,
            "k_slice": geom.k_slice, "split_k": mm.split_k, "max_k_total": geom.max_k_total,
            "tile_n": geom.tile_n, "tile_m": geom.tile_m,
            "act_depth": geom.act_depth, "weight_depth": geom.weight_depth,
            "macs_per_cycle": geom.macs_per_cycle, "widths": geom.widths.to_json(),
            "out_modes": {v.name: int(v) for v in OutMode},
            "bias_modes": {v.name: int(v) for v in BiasMode},
        }
