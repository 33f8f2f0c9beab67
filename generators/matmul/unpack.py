"""Weight unpacker: P striped port words -> chunks of L signed weights.

The weight stream (docs/architecture.md §4) is one bit stream cut into
combined words of ``P * W`` bits, stripe 0 in the low bits; a chunk is the
next ``L * wbits`` bits, lane ``l`` at bits ``[l * wbits, (l + 1) * wbits)``.
One :class:`WidthAdapter` per supported weight width keeps each path a
fixed-ratio split or gather; the job's ``wbits`` picks the path.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints, require_powers_of_two
from .gearbox import WidthAdapter
from .pipe import opaque_const

__all__ = ["WeightUnpacker"]


def _widen_nibbles(m: Module, chunk, lanes: int):
    """``lanes`` signed 4-bit lanes -> signed 8-bit lanes, as whole-word operations.

    Each 64-bit output word takes 8 nibbles: spread them to bytes with three
    shift/mask steps, then copy each nibble's sign bit into its byte's high
    half (disjoint ORs: plain wiring in hardware, a handful of 64-bit ops in a
    simulator instead of one operation per bit).
    """
    masks = [(sh, opaque_const(m, mask, 64, name=f"spread_mask{sh}"))
             for sh, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F))]
    sign_mask = opaque_const(m, 0x0808080808080808, 64, name="sign_mask")
    out = []
    for j in range(-(-lanes // 8)):
        n = min(8, lanes - 8 * j)
        x = chunk[32 * j:32 * j + 4 * n].as_unsigned()
        for step, (sh, mask) in enumerate(masks):
            nxt = Signal(64, name=f"spread{j}_{step}")
            m.d.comb += nxt.eq((x | (x << sh)) & mask)
            x = nxt
        sign = Signal(64, name=f"sign{j}")
        m.d.comb += sign.eq(x & sign_mask)
        wide = Signal(64, name=f"wide{j}")
        m.d.comb += wide.eq(x | (sign << 1) | (sign << 2) | (sign << 3) | (sign << 4))
        out.append(wide[:8 * n])
    return Cat(*out)


class WeightUnpacker(wiring.Component):
    """Zip the ``P`` weight streams and emit one ``L``-lane chunk per cycle.

    Lanes are signed ``max(weight_bits)``-bit values (narrower weights are sign
    extended). ``o_last`` marks the chunk that ends a row block's stream: the
    padding in the rest of that combined word is dropped.
    """

    def __init__(self, *, lanes: int, weight_ports: int, data_width: int, weight_bits=(4, 8)):
        require_positive_ints(lanes=lanes, weight_ports=weight_ports, data_width=data_width)
        require_powers_of_two(lanes=lanes, weight_ports=weight_ports, data_width=data_width)
        weight_bits = tuple(sorted(weight_bits))
        if not weight_bits or any(b not in (4, 8) for b in weight_bits) or len(set(weight_bits)) != len(weight_bits):
            raise ValueError(f"weight_bits must be a non-empty subset of (4, 8), got {weight_bits!r}")
        self._lanes, self._ports, self._width, self._wbits = lanes, weight_ports, data_width, weight_bits
        self._lane_shape = signed(max(weight_bits))
        super().__init__({
            "w_data": In(stream.Signature(data_width)).array(weight_ports),
            "wbits": In(4),
            "o": Out(stream.Signature(data.ArrayLayout(self._lane_shape, lanes))),
            "o_last": In(1),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def weight_bits(self) -> tuple:
        return self._wbits

    @property
    def lane_shape(self):
        return self._lane_shape

    def elaborate(self, platform):
        m = Module()
        L, P = self._lanes, self._ports
        combined = Cat(*(s.payload for s in self.w_data))
        all_valid = Signal()
        m.d.comb += all_valid.eq(Cat(*(s.valid for s in self.w_data)).all())
        in_ready = Signal()
        for s in self.w_data:
            m.d.comb += s.ready.eq(in_ready & all_valid)

        lw = self._lane_shape.width
        paths = []
        for bits in self._wbits:
            m.submodules[f"adapt{bits}"] = adapt = WidthAdapter(P * self._width, L * bits)
            sel = Signal(name=f"sel{bits}")
            m.d.comb += sel.eq(self.wbits == bits if len(self._wbits) > 1 else 1)
            m.d.comb += [adapt.i.payload.eq(combined), adapt.i.valid.eq(all_valid & sel),
                         adapt.o.ready.eq(self.o.ready & sel), adapt.o_last.eq(self.o_last)]
            vec = adapt.o.payload if bits == lw else _widen_nibbles(m, adapt.o.payload, L)
            paths.append((sel, adapt, vec))

        sel0, adapt0, vec = paths[0]
        valid, ready = adapt0.o.valid, adapt0.i.ready
        for sel, adapt, v in paths[1:]:
            valid = Mux(sel, adapt.o.valid, valid)
            ready = Mux(sel, adapt.i.ready, ready)
            vec = Mux(sel, v, vec)
        m.d.comb += [self.o.valid.eq(valid), in_ready.eq(ready), self.o.payload.eq(vec)]
        return m
