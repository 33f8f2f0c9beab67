"""The low-bit matmul family: its MATMUL descriptor, checks, widths and memory layouts.

docs/architecture.md §3-§5 is the prose version. Everything the matmul RTL, its golden
model (:mod:`hbmforge.numerics.matmul`, :func:`hbmforge.numerics.program.execute`) and the
host packers agree on is derived here from the config's ``matmul`` engine and the port word.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from ..encodings import ErrorCode, Opcode, OutMode, WeightFormat
from ..mathutil import ceil_div, round_up
from .base import Channels, Check, EngineFamily

__all__ = ["MATMUL_FIELDS", "MatmulWidths", "MatmulGeometry", "MatmulFamily", "matmul_checks"]

#: u64 slots of a MATMUL descriptor after ``op``; then one ``w_addr<i>`` per weight port.
MATMUL_FIELDS = ("m", "k", "n", "wbits", "out_mode", "out_shift", "x_addr", "s_addr", "q_addr", "y_addr")
_U32 = (1 << 32) - 1


@dataclass(frozen=True)
class MatmulWidths:
    """Integer widths of the matmul datapath, derived so that no input can overflow."""

    act_bits: int
    max_wbits: int
    lanes: int
    group_size: int
    scale_bits: int
    max_k: int

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
    def acc_bits(self) -> int:            # sum over max_k / group_size scaled partials
        return self.scaled_bits + max(0, math.ceil(math.log2(self.max_k // self.group_size)))

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
            "act_bits", "max_wbits", "product_bits", "chunk_bits", "group_bits", "scaled_bits",
            "acc_bits", "mult_bits", "requant_bits", "max_out_shift", "max_requant_shift")}


@dataclass(frozen=True)
class MatmulGeometry:
    """Byte counts of the matmul operands in device memory (docs/architecture.md §4).

    ``engine`` is the config's matmul engine, ``word_bytes`` the port word.
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
    def weight_codes(self) -> tuple[WeightFormat, ...]:
        return tuple(WeightFormat.from_config(f) for f in self.engine.weight_bits)

    @cached_property
    def widths(self) -> MatmulWidths:
        mm = self.engine
        return MatmulWidths(act_bits=8, max_wbits=max(self.lane_bits(f) for f in mm.weight_bits),
                            lanes=mm.lanes, group_size=mm.group_size, scale_bits=mm.scale_bits,
                            max_k=mm.max_k)

    @staticmethod
    def lane_bits(fmt) -> int:
        """Signed width of one decoded weight (``fmt``: config format or descriptor code)."""
        return 2 if fmt in ("ternary", WeightFormat.TERNARY) else int(fmt)

    def pad_k(self, k: int) -> int:
        return round_up(k, self.k_align)

    def round_words(self, nbytes: int) -> int:
        return round_up(nbytes, self.word_bytes)

    def weight_stream_bytes(self, n: int, k: int, wbits) -> int:
        """Bytes of the packed [n, k] weight stream before striping (``wbits``: code or format).

        Ternary with ``ternary_packing: 5trit`` holds five weights per byte; every other
        format packs ``lane_bits`` per weight.
        """
        if wbits in ("ternary", WeightFormat.TERNARY) and self.engine.ternary_packing == "5trit":
            return ceil_div(n * k, 5)
        return ceil_div(n * k * self.lane_bits(wbits), 8)

    def weight_port_bytes(self, n: int, k: int, wbits) -> int:
        """Bytes each weight port reads for an [n, k] weight matrix (k padded)."""
        combined_bytes = self.engine.weight_ports * self.word_bytes
        return ceil_div(self.weight_stream_bytes(n, k, wbits), combined_bytes) * self.word_bytes

    def scale_bytes(self, n: int, k: int) -> int:
        return self.round_words(n * (k // self.engine.group_size) * 2)

    def requant_bytes(self, n: int) -> int:
        return self.round_words(n * 8)

    def act_bytes(self, m: int, k: int) -> int:
        return self.round_words(m * k)

    def row_blocks(self, m: int) -> int:
        return ceil_div(m, self.engine.rows)

    def out_bytes(self, m: int, n: int, out_mode: int) -> int:
        ebytes = 4 if out_mode == OutMode.INT32 else 1
        return self.round_words(self.row_blocks(m) * n * self.engine.rows * ebytes)


def matmul_checks(geom: MatmulGeometry) -> tuple[Check, ...]:
    """MATMUL descriptor rules in hardware order: format, K, shape, output mode, alignment."""
    mm = geom.engine
    codes = geom.weight_codes
    max_shift = geom.widths.max_out_shift
    k_align, align = geom.k_align, geom.addr_align
    ports = range(mm.weight_ports)

    def addresses(f):
        yield "x_addr"
        yield "s_addr"
        yield "y_addr"
        yield from (f"w_addr{i}" for i in ports)

    def bad_addr(f, ops):
        return ops.any_(*(ops.misaligned(f[a], align) for a in addresses(f)),
                        (f["out_mode"] == OutMode.INT8) & ops.misaligned(f["q_addr"], align))

    def why_addr(f):
        names = list(addresses(f)) + (["q_addr"] if f["out_mode"] == OutMode.INT8 else [])
        bad = next(a for a in names if f[a] % align)
        return f"{bad} {f[bad]:#x} not a multiple of {align}"

    return (
        Check(ErrorCode.BAD_WBITS, lambda f, ops: ops.not_(ops.one_of(f["wbits"], codes)),
              lambda f: f"wbits {f['wbits']}, engine accepts codes {[int(c) for c in codes]} "
                        f"({list(mm.weight_bits)})"),
        Check(ErrorCode.BAD_K,
              lambda f, ops: ops.any_(f["k"] == 0, f["k"] > mm.max_k, ops.misaligned(f["k"], k_align)),
              lambda f: f"k {f['k']}, must be a multiple of {k_align} in [1, {mm.max_k}]"),
        Check(ErrorCode.BAD_SHAPE,
              lambda f, ops: ops.any_(f["m"] == 0, f["n"] == 0, f["m"] > _U32, f["n"] > _U32),
              lambda f: f"m {f['m']}, n {f['n']}, each must be in [1, 2**32 - 1]"),
        Check(ErrorCode.BAD_OUT_MODE,
              lambda f, ops: ops.any_(ops.not_(ops.one_of(f["out_mode"], list(OutMode))),
                                      (f["out_mode"] == OutMode.INT32) & (f["out_shift"] > max_shift)),
              lambda f: (f"out_shift {f['out_shift']} > {max_shift}" if f["out_mode"] == OutMode.INT32
                         else f"out_mode {f['out_mode']}, allowed {[int(v) for v in OutMode]}")),
        Check(ErrorCode.MISALIGNED, bad_addr, why_addr),
    )


class MatmulFamily(EngineFamily):
    kind = "matmul"
    opcodes = (Opcode.MATMUL,)
    errors = (ErrorCode.BAD_WBITS, ErrorCode.BAD_K, ErrorCode.BAD_SHAPE, ErrorCode.BAD_OUT_MODE,
              ErrorCode.MISALIGNED)

    def fields(self, layout, opcode):
        return MATMUL_FIELDS + tuple(f"w_addr{i}" for i in range(layout.mm.weight_ports))

    def checks(self, layout, opcode):
        return matmul_checks(layout.matmul)

    def channels(self, layout):
        return Channels(data_readers=("act", "scale", "rq"), data_writer=True,
                        stream_readers=layout.mm.weight_ports)

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
            "ternary_packing": mm.ternary_packing, "arch": mm.arch, "tlmm_group": mm.tlmm_group,
            "group_size": mm.group_size, "scale_bits": mm.scale_bits, "max_k": mm.max_k,
            "k_align": geom.k_align, "addr_align": geom.addr_align,
            "macs_per_cycle": geom.macs_per_cycle, "widths": geom.widths.to_json(),
            "out_modes": {v.name: int(v) for v in OutMode},
        }
