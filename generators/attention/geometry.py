"""Constants of one attention engine, derived from the config (shared by its submodules)."""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.lib import data
from amaranth.hdl import signed, unsigned

from ...engines.attention import CTX_BITS, AttentionGeometry

__all__ = ["EngineParams"]


def _log2(v: int) -> int:
    return v.bit_length() - 1


@dataclass(frozen=True)
class EngineParams:
    """Lanes, slots and record layouts of the datapath for one :class:`AttentionGeometry`.

    A *slot* is ``Es = min(B, head_dim)`` head dims (one int8 value word); an int4 word holds
    ``k4 = E4 / Es`` slots. ``L`` lanes per word (the widest format), scale blocks of
    ``c = min(G, Es)`` lanes, ``nb = L / c`` of them.
    """

    geom: AttentionGeometry
    data_width: int

    @property
    def B(self): return self.geom.word_bytes
    @property
    def R(self): return self.geom.rows
    @property
    def hd(self): return self.geom.head_dim
    @property
    def G(self): return self.geom.group_size
    @property
    def P(self): return self.geom.page_tokens
    @property
    def ng(self): return self.geom.groups
    @property
    def Es(self): return min(self.B, self.hd)
    @property
    def D(self): return self.hd // self.Es
    @property
    def E4(self): return min(2 * self.B, self.hd)
    @property
    def k4(self): return self.E4 // self.Es
    @property
    def has4(self): return 4 in self.geom.kv_bits
    @property
    def has8(self): return 8 in self.geom.kv_bits
    @property
    def L(self): return self.E4 if self.has4 else self.Es
    @property
    def c(self): return min(self.G, self.Es)
    @property
    def nb(self): return self.L // self.c
    @property
    def mpw(self): return self.B // 2
    @property
    def scale_depth(self):
        """Scale words one segment can need: (mpw - 1 + P * ng) / mpw, rounded up."""
        return -(-(self.mpw - 1 + self.P * self.ng) // self.mpw)
    @property
    def vw8(self): return self.hd // self.Es
    @property
    def vw4(self): return self.hd // self.E4

    def seg_layout(self) -> data.StructLayout:
        """What a K/V consumer needs to know about one segment."""
        return data.StructLayout({
            "n": range(self.P + 1),                 # tokens
            "sw": range(self.scale_depth + 1),      # scale words before the values
            "off": range(self.mpw),                 # mantissa offset of the first token in word 0
            "j0": CTX_BITS,                         # absolute position of the first token
            "tile_first": 1, "tile_last": 1,
        })

    def item_layout(self) -> data.StructLayout:
        """One value word, unpacked: ``L`` signed lanes and the ``nb`` block mantissas."""
        return data.StructLayout({
            "lanes": data.ArrayLayout(signed(8), self.L),
            "mants": data.ArrayLayout(unsigned(16), self.nb),
            "first": 1, "last": 1, "seg_last": 1,
            "t": range(max(2, self.P)),
        })
