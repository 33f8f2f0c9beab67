"""Weight unpacker: P striped port words -> chunks of L signed weights.

The weight stream (docs/architecture.md §4) is one stream cut into combined
words of ``P * W`` bits, stripe 0 in the low bits. For int2/int4/int8 and
'2bit' ternary a chunk is the next ``L * b`` bits, lane ``l`` at bits
``[l * b, (l + 1) * b)``; for '5trit' ternary each byte holds five weights.
One :class:`WidthAdapter` per stored width (int2 and '2bit' ternary share one)
keeps each path a fixed-ratio split or gather, a :class:`TritGearbox` serves
'5trit' ternary; the job's ``wbits`` code picks the path. Each format of ``sparse24`` (``True``: every
format) also has a 2:4 sparse path (``wbits | SPARSE24``): a chunk of ``L`` lanes is ``L / 4`` packed groups
of ``2b + 4`` bits (a :class:`~.sparse.BitGearbox` when that is not a power-of-two part of the
port word) expanded to ``L`` dense lanes (:func:`~.sparse.expand_sparse24`). With ``pairs``
a 2:4 job of a 2-bit format (int2, '2bit' ternary) can run as pair fires (``pair``): a chunk is
then ``4 L`` bits, two columns' packed groups, passed on as ``L`` slots (:func:`pair_slot_lanes`);
with ``dense_pairs`` a dense job of a 2-bit format too (two columns' weights, two to a slot:
:func:`dense_pair_slot_lanes`).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...engines.matmul import SPARSE24
from ..params import require_positive_ints, require_powers_of_two
from .gearbox import TritGearbox, WidthAdapter, is_pow2_ratio
from .pipe import opaque_const
from .sparse import BitGearbox, expand_sparse24, sparse24_chunk_bits

__all__ = ["WeightUnpacker", "FORMAT_CODES", "pair_slot_lanes", "dense_pair_slot_lanes", "lane_width"]

# descriptor ``wbits`` codes (hbmforge.layout.WeightFormat)
FORMAT_CODES = {2: 2, "ternary": 3, 4: 4, 8: 8}


def _lane_bits(fmt) -> int:
    return 2 if fmt == "ternary" else fmt


def lane_width(weight_bits) -> int:
    """Bits of the unpacker's signed lanes for an engine of ``weight_bits`` (its widest format)."""
    return max(_lane_bits(b) for b in weight_bits)


def _field_mask(n: int, pitch: int, width: int) -> int:
    """``n`` fields of ``width`` ones every ``pitch`` bits."""
    return sum(((1 << width) - 1) << (i * pitch) for i in range(n))


def widen_lanes(m: Module, chunk, lanes: int, src: int, dst: int, *, name: str):
    """``lanes`` signed ``src``-bit lanes -> signed ``dst``-bit lanes, as whole-word operations.

    Each 64-bit output word takes ``64 / dst`` fields: spread them apart with
    log2(fields) shift/mask steps (each step moves the upper half of every block
    up), then copy each field's sign bit into its high bits (disjoint ORs: plain
    wiring in hardware, a handful of 64-bit ops in a simulator instead of one
    operation per bit).
    """
    if src == dst:
        return chunk
    per = 64 // dst
    steps = []
    block = per
    while block > 1:
        half = block // 2
        mask = sum(((1 << (half * src)) - 1) << (j * half * dst) for j in range(per // half))
        steps.append((half * (dst - src), opaque_const(m, mask & ((1 << 64) - 1), 64,
                                                       name=f"{name}_spread{half}")))
        block = half
    sign_mask = opaque_const(m, _field_mask(per, dst, 1) << (src - 1), 64, name=f"{name}_sign")
    out = []
    for j in range(-(-lanes // per)):
        n = min(per, lanes - per * j)
        x = chunk[per * src * j:per * src * j + src * n].as_unsigned()
        for step, (sh, mask) in enumerate(steps):
            nxt = Signal(64, name=f"{name}_w{j}_s{step}")
            m.d.comb += nxt.eq((x | (x << sh)) & mask)
            x = nxt
        sign = Signal(64, name=f"{name}_w{j}_sign")
        m.d.comb += sign.eq(x & sign_mask)
        fill = sign
        for b in range(1, dst - src + 1):
            fill = fill | (sign << b)
        wide = Signal(64, name=f"{name}_w{j}_wide")
        m.d.comb += wide.eq(x | fill)
        out.append(wide[:dst * n])
    return Cat(*out)


def _widen_nibbles(m: Module, chunk, lanes: int):
    """``lanes`` signed 4-bit lanes -> signed 8-bit lanes (kept for the unit tests)."""
    return widen_lanes(m, chunk, lanes, 4, 8, name="nib")


def ternary_codes(m: Module, chunk, lanes: int, *, name: str):
    """2-bit ternary codes -> 2-bit two's complement lanes: 00 0, 01 +1, 11 -1, and the
    reserved 10 -> 00 (keep the high bit only where the low bit is set)."""
    low = opaque_const(m, _field_mask(lanes, 2, 1), 2 * lanes, name=f"{name}_low")
    fixed = Signal(2 * lanes, name=f"{name}_fixed")
    m.d.comb += fixed.eq(chunk & (low | ((chunk & low) << 1)))
    return fixed


def pair_slot_lanes(m: Module, chunk, lanes: int, lane_width: int, *, ternary: bool):
    """A pair line (two columns' ``lanes / 4`` packed 2:4 groups each, of 2-bit values: ``v0 v1 i0
    i1``, 8 bits) -> ``lanes`` slots of ``lane_width`` bits: slots ``4q + 2h`` and ``4q + 2h + 1``
    are column ``h``'s group ``q``, ``v0 | i0 << 2`` and ``v1 | i1 << 2`` (the pair fire's
    :class:`~.array.MacArray` lanes). Ternary codes ``10`` read as 0, and ``v1`` reads as 0 when
    ``i1 == i0`` (the dense decode keeps ``v0`` only), as :func:`hbmforge.numerics.sparse.pair_slots`
    does."""
    groups = lanes // 2
    half = groups // 2
    pad = [Const(0, lane_width - 4)] if lane_width > 4 else []
    # built in blocks of 8 groups of 4 slots, each a wire XORed with an opaque zero (a plain
    # concatenation would be merged into one Verilog line of every slot, too long for Verilator's
    # preprocessor at 4096 lanes; synthesis drops the XOR)
    block = 8
    zero = opaque_const(m, 0, block * 4 * lane_width, name="pair_zero")
    words = []
    for b in range(0, half, block):
        qs = range(b, min(b + block, half))
        src = [h * half + q for q in qs for h in range(2)]          # packed groups, in slot order
        vals = Signal(4 * len(src), name=f"pair_vals{b}")
        m.d.comb += vals.eq(Cat(*(chunk[8 * g:8 * g + 4] for g in src)))
        if ternary:
            vals = ternary_codes(m, vals, 2 * len(src), name=f"tern_pair{b}")
        parts = []
        for n, g in enumerate(src):
            i0, i1 = chunk[8 * g + 4:8 * g + 6], chunk[8 * g + 6:8 * g + 8]
            v0, v1 = vals[4 * n:4 * n + 2], vals[4 * n + 2:4 * n + 4]
            v1k = Signal(2, name=f"pair_v1_{g}")
            m.d.comb += v1k.eq(Mux(i1 == i0, 0, v1))
            parts += [v0, i0, *pad, v1k, i1, *pad]
        word = Signal(len(src) * 2 * lane_width, name=f"pair_slots{b}")
        m.d.comb += word.eq(Cat(*parts) ^ zero[:len(word)])
        words.append(word)
    return Cat(*words)


def dense_pair_slot_lanes(m: Module, chunk, lanes: int, lane_width: int, *, ternary: bool):
    """A dense pair line (two columns' ``lanes`` 2-bit weights each, back to back) -> ``lanes``
    slots of ``lane_width`` bits: slot ``4q + 2h + e`` holds column ``h``'s weights ``4q + 2e`` (bits
    0-1) and ``4q + 2e + 1`` (bits 2-3), which the dense pair fire's :class:`~.array.MacArray` lane
    multiplies with ``x[4q + 2e]`` and ``x[4q + 2e + 1]`` (plain wiring: the slot's four bits are
    contiguous in its column). Ternary codes ``10`` read as 0, as
    :func:`hbmforge.numerics.sparse.dense_pair_slots` does."""
    if ternary:
        chunk = ternary_codes(m, chunk, 2 * lanes, name="tern_dpair")
    pad = [Const(0, lane_width - 4)] if lane_width > 4 else []
    block = 32                 # slots a wire (see pair_slot_lanes: Verilator's line length)
    zero = opaque_const(m, 0, block * lane_width, name="dpair_zero")
    words = []
    for b in range(0, lanes, block):
        parts = []
        for l in range(b, min(b + block, lanes)):
            q, h, e = l // 4, (l % 4) // 2, l % 2
            lo = h * 2 * lanes + 8 * q + 4 * e
            parts += [chunk[lo:lo + 4], *pad]
        word = Signal(len(parts) // (2 if pad else 1) * lane_width, name=f"dpair_slots{b}")
        m.d.comb += word.eq(Cat(*parts) ^ zero[:len(word)])
        words.append(word)
    return Cat(*words)


class WeightUnpacker(wiring.Component):
    """Zip the ``P`` weight streams and emit one ``L``-lane chunk per cycle.

    ``weight_bits``: the formats the engine accepts (2, 4, 8, ``"ternary"``);
    ``ternary_packing``: ``"2bit"`` or ``"5trit"``. Lanes are signed
    ``max(lane_bits)``-bit values (ternary decodes to a 2-bit -1/0/+1; narrower
    weights are sign extended). ``wbits`` is the job's descriptor code (ternary = 3).
    ``o_last`` marks the chunk that ends a row block's stream: the padding (or the
    leftover trits) in the rest of that combined word is dropped.
    """

    def __init__(self, *, lanes: int, weight_ports: int, data_width: int, weight_bits=(4, 8),
                 ternary_packing: str = "2bit", sparse24: bool = False, pairs: bool = False,
                 dense_pairs: tuple = ()):
        require_positive_ints(lanes=lanes, weight_ports=weight_ports, data_width=data_width)
        require_powers_of_two(lanes=lanes, weight_ports=weight_ports, data_width=data_width)
        fmts = tuple(weight_bits)
        if (not fmts or any(isinstance(b, bool) or b not in FORMAT_CODES for b in fmts)
                or len(set(fmts)) != len(fmts)):
            raise ValueError(f"weight_bits must be a non-empty subset of (2, 4, 8, 'ternary'), got {weight_bits!r}")
        if ternary_packing not in ("2bit", "5trit"):
            raise ValueError(f"ternary_packing must be '2bit' or '5trit', got {ternary_packing!r}")
        if isinstance(sparse24, bool):
            sparse24 = fmts if sparse24 else ()
        elif not isinstance(sparse24, (tuple, list)) or any(f not in fmts for f in sparse24):
            raise TypeError(f"sparse24 must be True, False or formats of weight_bits {fmts}, got {sparse24!r}")
        if sparse24 and lanes < 4:
            raise ValueError(f"sparse24 needs lanes >= 4 (whole groups of 4), got {lanes}")
        self._fmts = tuple(sorted(fmts, key=lambda b: FORMAT_CODES[b]))
        self._sparse_fmts = tuple(f for f in self._fmts if f in sparse24)
        self._pair_fmts = tuple(f for f in self._sparse_fmts if _lane_bits(f) == 2) if pairs else ()
        if pairs and (not self._pair_fmts or max(_lane_bits(f) for f in fmts) < 4):
            raise ValueError("pairs needs sparse24, a 2-bit format (2 or 'ternary') and a 4- or 8-bit one "
                             f"(lanes wide enough for a value and an index), got {weight_bits!r}")
        # the dense formats whose N-even jobs run as dense pair fires (MatmulEngine.dense_pair_formats)
        self._dense_pair_fmts = tuple(f for f in self._fmts if f in dense_pairs)
        two_bit = all(f == 2 or (f == "ternary" and ternary_packing == "2bit") for f in dense_pairs)
        if dense_pairs and (len(self._dense_pair_fmts) != len(dense_pairs) or not two_bit
                            or max(_lane_bits(f) for f in fmts) < 4):
            raise ValueError("dense_pairs must be 2-bit formats of weight_bits (2, or 'ternary' in 2-bit codes) "
                             f"beside a 4- or 8-bit one (lanes wide enough for two weights), got {dense_pairs!r} "
                             f"of {weight_bits!r}, {ternary_packing!r}")
        self._lanes, self._ports, self._width = lanes, weight_ports, data_width
        self._packing = ternary_packing
        self._lane_shape = signed(lane_width(self._fmts))
        super().__init__({
            "w_data": In(stream.Signature(data_width)).array(weight_ports),
            "wbits": In(5),
            "pair": In(1),
            "o": Out(stream.Signature(data.ArrayLayout(self._lane_shape, lanes))),
            "o_last": In(1),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def weight_bits(self) -> tuple:
        return self._fmts

    @property
    def ternary_packing(self) -> str:
        return self._packing

    @property
    def lane_shape(self):
        return self._lane_shape

    @staticmethod
    def _sparse_widen(m: Module, fmt, lw: int):
        """The packed values of 2:4 groups (``fmt``'s bits each) -> signed ``lw``-bit lanes."""
        def widen(vals, count):
            if fmt == "ternary":
                vals = ternary_codes(m, vals, count, name="tern_s24")
            return widen_lanes(m, vals, count, _lane_bits(fmt), lw, name=f"widen_s24_{fmt}")
        return widen

    def _stored(self, fmt):
        """How a format sits in memory: its bit width, or '5trit'."""
        if fmt == "ternary" and self._packing == "5trit":
            return "5trit"
        return _lane_bits(fmt)

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
        variants = [(f, False) for f in self._fmts] + [(f, True) for f in self._sparse_fmts]
        variants += [(f, "pair") for f in self._pair_fmts]
        variants += [(f, "dpair") for f in self._dense_pair_fmts]
        single = len(variants) == 1
        fsel = {}
        for fmt, sp in variants:
            sel = Signal(name=f"sel_{fmt}" + {False: "", True: "_s24", "pair": "_pair", "dpair": "_dpair"}[sp])
            # registered: wbits is set when a job starts, long before its first weight word
            sparse = sp is True or sp == "pair"
            hit = self.wbits == FORMAT_CODES[fmt] | (SPARSE24 if sparse else 0)
            if (fmt in self._pair_fmts and sparse) or (fmt in self._dense_pair_fmts and not sparse):
                hit = hit & (self.pair if sp in ("pair", "dpair") else ~self.pair)
            m.d.sync += sel.eq(1 if single else hit)
            fsel[fmt, sp] = sel

        # one adapter per stored width; int2 and '2bit' ternary share theirs (sparse ones too)
        paths = []        # (select, adapter, lanes vector)
        stores = {}
        for fmt, sp in variants:
            # the pair lines (2:4 or dense) share one adapter of 4L bits
            key = ("pair" if sp in ("pair", "dpair") else ("s24", _lane_bits(fmt)) if sp
                   else self._stored(fmt))
            stores.setdefault(key, []).append((fmt, sp))
        for key, members in stores.items():
            sp = isinstance(key, tuple)
            if key == "pair":
                adapt = WidthAdapter(P * self._width, 4 * L)
            elif key == "5trit":
                adapt = TritGearbox(P * self._width, L)
            elif sp:
                chunk = sparse24_chunk_bits(L, key[1])
                adapt = (WidthAdapter(P * self._width, chunk) if is_pow2_ratio(P * self._width, chunk)
                         else BitGearbox(P * self._width, chunk))
            else:
                adapt = WidthAdapter(P * self._width, L * key)
            tag = f"s24_{key[1]}" if sp else f"{key}"
            m.submodules[f"adapt{tag}"] = adapt
            sel = Signal(name=f"sel_store{tag}")
            m.d.comb += sel.eq(Cat(*(fsel[f, v] for f, v in members)).any())
            m.d.comb += [adapt.i.payload.eq(combined), adapt.i.valid.eq(all_valid & sel),
                         adapt.o.ready.eq(self.o.ready & sel), adapt.o_last.eq(self.o_last)]
            vec = None
            for fmt, variant in members:
                raw = adapt.o.payload
                if key == "pair":
                    slots = pair_slot_lanes if variant == "pair" else dense_pair_slot_lanes
                    v = slots(m, raw, L, lw, ternary=fmt == "ternary")
                    vec = v if vec is None else Mux(fsel[fmt, variant], v, vec)
                    continue
                if sp:
                    v = expand_sparse24(m, raw, L, key[1], self._sparse_widen(m, fmt, lw), name=f"s24_{fmt}")
                else:
                    if fmt == "ternary" and key == 2:
                        raw = ternary_codes(m, raw, L, name="tern")
                    v = widen_lanes(m, raw, L, _lane_bits(fmt), lw, name=f"widen_{fmt}")
                vec = v if vec is None else Mux(fsel[fmt, variant], v, vec)
            paths.append((sel, adapt, vec))

        _, adapt0, vec = paths[0]
        valid, ready = adapt0.o.valid, adapt0.i.ready
        for sel, adapt, v in paths[1:]:
            valid = Mux(sel, adapt.o.valid, valid)
            ready = Mux(sel, adapt.i.ready, ready)
            vec = Mux(sel, v, vec)
        m.d.comb += [self.o.valid.eq(valid), in_ready.eq(ready), self.o.payload.eq(vec)]
        return m
