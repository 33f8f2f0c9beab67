"""The attention datapath's geometry: lanes, ring slots, scale blocks and record layouts.

:class:`DatapathGeometry` is the contract's :class:`~hbmforge.engines.attention.AttentionGeometry`
(buffer sizes and widths the golden model and the host share) plus the sizes only the datapath
needs; every sub-block of the engine takes one.

Terms: a value word of the job's format carries ``int8_lanes`` head dims (int8) or
``int4_lanes`` (int4: two per byte). The Q and accumulator rings hold ``slots`` slots of
``int8_lanes`` head dims per row, so an int4 word covers ``slots_per_word`` slots. A word's
``lanes`` (the widest format's) fall into ``blocks`` scale blocks of ``block_lanes`` lanes,
each sharing one K/V group-scale mantissa.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from amaranth.hdl import Mux, signed, unsigned
from amaranth.lib import data

from ...engines.attention import CTX_BITS, AttentionGeometry
from ...mathutil import ceil_div
from ..lutmul import lut_product
from ..params import require_positive_ints, require_powers_of_two

__all__ = ["DatapathGeometry"]


@dataclass(frozen=True)
class DatapathGeometry(AttentionGeometry):
    """An :class:`AttentionGeometry` with the datapath's derived sizes (all powers of two)."""

    def __post_init__(self):
        require_positive_ints(head_dim=self.head_dim, rows=self.rows, group_size=self.group_size,
                              page_tokens=self.page_tokens, word_bytes=self.word_bytes)
        require_powers_of_two(head_dim=self.head_dim, rows=self.rows, group_size=self.group_size,
                              page_tokens=self.page_tokens, word_bytes=self.word_bytes)
        if not self.kv_bits or not set(self.kv_bits) <= {4, 8}:
            raise ValueError(f"kv_bits must be a non-empty subset of (4, 8), got {self.kv_bits!r}")
        if (self.lut_products or self.lut_mant_products) and self.has_int8:
            raise ValueError(f"lut_products needs int4 lanes only, got kv_bits {self.kv_bits!r}")
        if self.lut_mant_products and not self.lut_products:
            raise ValueError("lut_mant_products needs lut_products (int4_products 'lut')")
        if self.group_size > self.head_dim:
            raise ValueError(f"group_size {self.group_size} must not exceed head_dim {self.head_dim}")

    @classmethod
    def of(cls, contract: AttentionGeometry) -> DatapathGeometry:
        """The datapath geometry of a config's contract geometry (``attention_geometry(layout)``)."""
        if not isinstance(contract, AttentionGeometry):
            raise TypeError(f"contract must be an AttentionGeometry, got {type(contract).__name__}")
        return cls(**{f.name: getattr(contract, f.name) for f in fields(AttentionGeometry)})

    # -- formats -------------------------------------------------------------------------
    @property
    def data_width(self) -> int:
        """Port word width in bits: the width of every data stream the engine reads or writes."""
        return 8 * self.word_bytes

    @property
    def has_int4(self) -> bool:
        """The engine accepts ``kv_bits = 4`` jobs: the int4 unpacking and ring steps exist."""
        return 4 in self.kv_bits

    @property
    def has_int8(self) -> bool:
        """The engine accepts ``kv_bits = 8`` jobs: the int8 unpacking and ring steps exist."""
        return 8 in self.kv_bits

    def lane_product(self, x, lane, *, mantissa: bool = False):
        """``x`` times a K/V lane: shift-and-add in LUTs with ``int4_products: lut`` (every format is
        int4: the lane is a sign-extended 4-bit value), else a multiplier (a DSP). ``mantissa``: a
        block mantissa x value product, in LUTs only with 'lut' ('qk_lut' keeps it a DSP)."""
        lut = self.lut_mant_products if mantissa else self.lut_products
        return lut_product(x, lane, 4) if lut else x * lane

    def select_format(self, bits4, *, int4, int8):
        """The int4 or the int8 variant for the job's format: a ``Mux`` on ``bits4`` only when the
        engine has both formats (otherwise the one it has)."""
        if self.has_int4 and self.has_int8:
            return Mux(bits4, int4, int8)
        return int4 if self.has_int4 else int8

    @property
    def addr_rows(self) -> int:
        """K/V address pairs per segment command: ``rows`` on a head-parallel engine (one port group
        per row), else 1."""
        return self.rows if self.head_parallel else 1

    # -- lanes, slots, scale blocks ------------------------------------------------------
    @property
    def int8_lanes(self) -> int:
        """Head dims per int8 value word (the contract's ``slot``): the width of one ring slot."""
        return self.slot

    @property
    def int4_lanes(self) -> int:
        """Head dims per int4 value word (two per byte, at most ``head_dim``)."""
        return min(2 * self.word_bytes, self.head_dim)

    @property
    def slots_per_word(self) -> int:
        """Ring slots one value word of the widest format covers: how far an int4 word rotates the
        Q and accumulator rings (1 without int4, where every word covers one slot)."""
        return self.lanes // self.int8_lanes

    @property
    def block_lanes(self) -> int:
        """Lanes sharing one group-scale mantissa within a word: the width of one QK block sum."""
        return min(self.group_size, self.int8_lanes)

    @property
    def blocks(self) -> int:
        """Scale blocks per value word: the mantissas an item carries next to its lanes."""
        return self.lanes // self.block_lanes

    @property
    def scale_depth(self) -> int:
        """Scale words one segment can need (a page's mantissas after an offset of up to
        ``mants_per_word - 1``): the depth of the feed's scale buffer."""
        return ceil_div(self.mants_per_word - 1 + self.page_tokens * self.groups, self.mants_per_word)

    # -- records between the sub-blocks ----------------------------------------------------
    def seg_layout(self) -> data.StructLayout:
        """What a K/V consumer needs to know about one segment."""
        return data.StructLayout({
            "n": range(self.page_tokens + 1),       # tokens
            "sw": range(self.scale_depth + 1),      # scale words before the values
            "off": range(self.mants_per_word),      # mantissa offset of the first token in word 0
            "j0": CTX_BITS,                         # absolute position of the first token
            "tile_first": 1, "tile_last": 1,
        })

    def row_data_layout(self) -> data.StructLayout:
        """The per-row part of an item on a head-parallel engine: row r's own lanes and mantissas."""
        return data.StructLayout({
            "lanes": data.ArrayLayout(signed(8), self.lanes),
            "mants": data.ArrayLayout(unsigned(16), self.blocks),
        })

    def item_layout(self) -> data.StructLayout:
        """One value word, unpacked: ``lanes`` signed lanes and the ``blocks`` block mantissas."""
        return data.StructLayout({
            "lanes": data.ArrayLayout(signed(8), self.lanes),
            "mants": data.ArrayLayout(unsigned(16), self.blocks),
            "first": 1, "last": 1, "seg_last": 1,
            "t": range(max(2, self.page_tokens)),
        })
