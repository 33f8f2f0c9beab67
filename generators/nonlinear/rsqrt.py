"""Integer reciprocal square root: ``1/sqrt(v) ~= M * 2**-(frac_bits + e)`` for unsigned ``v >= 1``.

Golden model: :func:`hbmforge.numerics.nonlinear.rsqrt_int` (:class:`~hbmforge.numerics.nonlinear.RsqrtSpec`).
A small sequential unit (the norms need one result per vector):

* ``e = (bitlen(v) - 1) // 2`` (a priority encoder as a tree, in a cycle of its own), ``u = (v << UF) >> 2e`` in ``[1, 4)`` with
  ``UF = frac_bits + 2`` fraction bits (truncated);
* seed ``y = seeds[top seed_bits fraction bits of u]`` (``3 * 2**seed_bits`` entries,
  ``round(2**MF / sqrt(midpoint))``);
* ``iterations`` Newton steps of ten cycles (a product, the sum of its two halves, then its
  rounding, three times, and the difference; one multiplier or one adder per cycle)::

      y2 = rshift_round(y*y, MF);  uy2 = rshift_round(u*y2, UF)
      y  = rshift_round(y * (3*2**MF - uy2), MF + 1)

Latency ``5 + 10 * iterations`` cycles from accepting ``v`` to ``o.valid``; one value at a time
(``i.ready`` only while idle). ``v = 0`` gives an unspecified result.
"""
from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...numerics.nonlinear import RsqrtSpec

__all__ = ["Rsqrt", "rsqrt_result_layout", "highest_set_bit"]


_CHUNK_LOG = 4
_CHUNK = 1 << _CHUNK_LOG


def highest_set_bit(v) -> tuple[Value, Value]:
    """``(any bit set, index of the highest set bit)`` of ``v`` as a tree of halves: about
    ``log2(len(v))`` mux levels (a chain of ifs over the bits mapped to a ripple of ``len(v)`` LUTs)."""
    v = Value.cast(v)
    if len(v) == 1:
        return v[0], Const(0, 1)
    half = 1 << ((len(v) - 1).bit_length() - 1)          # the low part: the largest power of two < len(v)
    lo_any, lo_idx = highest_set_bit(v[:half])
    hi_any, hi_idx = highest_set_bit(v[half:])
    return lo_any | hi_any, Mux(hi_any, hi_idx | half, lo_idx)     # hi_idx < half: | is +


def rsqrt_result_layout(spec: RsqrtSpec) -> data.StructLayout:
    return data.StructLayout({"mant": unsigned(spec.mant_bits), "exp": range(spec.exp_max + 1)})


class Rsqrt(wiring.Component):
    """``i``: ``stream.Signature(unsigned(in_bits))``; ``o``: ``stream.Signature({mant, exp})`` with
    ``1/sqrt(v) ~= mant * 2**-(frac_bits + exp)``."""

    def __init__(self, *, in_bits: int, frac_bits: int = 18, iterations: int = 2, seed_bits: int = 5):
        self._spec = RsqrtSpec(in_bits, frac_bits, iterations, seed_bits)      # validates
        super().__init__({"i": In(stream.Signature(unsigned(in_bits))),
                          "o": Out(stream.Signature(rsqrt_result_layout(self._spec)))})

    @property
    def spec(self) -> RsqrtSpec:
        return self._spec

    @property
    def in_bits(self) -> int:
        return self._spec.in_bits

    @property
    def frac_bits(self) -> int:
        return self._spec.frac_bits

    @property
    def iterations(self) -> int:
        return self._spec.iterations

    @property
    def seed_bits(self) -> int:
        return self._spec.seed_bits

    #: cycles of one Newton step: three products, each summed and then rounded in the next two
    #: cycles, and the difference
    STEP_CYCLES = 10

    @classmethod
    def latency_of(cls, iterations: int) -> int:
        """Cycles from accepting ``v`` to ``o.valid`` with ``iterations`` Newton steps."""
        return 5 + cls.STEP_CYCLES * iterations

    @property
    def latency(self) -> int:
        """Cycles from accepting ``v`` to ``o.valid``."""
        return self.latency_of(self._spec.iterations)

    def elaborate(self, platform):
        m = Module()
        sp = self._spec
        VB, MF, UF, SB = sp.in_bits, sp.frac_bits, sp.u_frac_bits, sp.seed_bits
        seeds = list(sp.seeds) + [sp.seeds[-1]] * (1 << SB)       # 4 * 2**SB entries: no bad address
        m.submodules.seeds = rom = Memory(shape=unsigned(MF + 1), depth=len(seeds), init=seeds)
        rp = rom.read_port(domain="comb")

        v_r = Signal(unsigned(VB))
        # the priority encoder in two cycles: each 16-bit chunk's highest bit, then the chunks'
        chunks = [v_r[i:i + _CHUNK] for i in range(0, VB, _CHUNK)]
        c_any = Signal(len(chunks))
        c_idx = [Signal(range(max(len(c), 2)), name=f"c_idx{i}") for i, c in enumerate(chunks)]
        c_top = highest_set_bit(c_any)[1]
        top = Signal(range(max(VB, 2)))
        m.d.comb += top.eq((c_top << _CHUNK_LOG) | Array(c_idx)[c_top])
        e = Signal(range(sp.exp_max + 1))
        u = Signal(unsigned(UF + 2))
        y = Signal(unsigned(MF + 2))
        y2 = Signal(unsigned(MF + 2))
        uy2 = Signal(unsigned(MF + 3))
        it = Signal(range(max(sp.iterations, 1) + 1))
        m.d.comb += [rp.addr.eq((u >> (UF - SB)) - (1 << SB)),
                     self.o.payload.mant.eq(y), self.o.payload.exp.eq(e)]

        diff = Signal(signed(MF + 4))
        # the step's product in two halves (each one DSP48E2: the second factor split at bit 17 or
        # below), summed in the next cycle and rounded in the one after (two carry chains, two
        # register stages)
        width = 2 * (MF + 3) + UF + 6
        p_lo = Signal(unsigned(width))
        p_hi = Signal(signed(width))
        prod = Signal(signed(width + 1))
        m.d.sync += prod.eq(p_hi + p_lo)

        # the step's factors in registers, set by the state before each product state (SEED,
        # SQUARE_ROUND, DIFF, UPDATE_ROUND) to what the product state multiplies; the products are
        # formed every cycle (read only in the *_ROUND states), so no state mux sits between the
        # DSPs and p_lo / p_hi: the second factor (y, y2 or diff; signed) split at bit ``lo``.
        # The setting states as flags registered in the state before them (every transition into
        # them is unconditional), the roundings (the latest values) the last selects
        fa = Signal(unsigned(max(UF + 2, MF + 2)), name="rs_fa")
        fb = Signal(signed(MF + 4), name="rs_fb")
        lo = min(17, len(fb) - 1)
        m.d.sync += [p_lo.eq(fa * fb[:lo]), p_hi.eq((fa * fb[lo:].as_signed()) << lo)]
        in_seed, in_sr, in_diff, in_ur = (Signal(name=f"rs_in_{n}") for n in ("seed", "sr", "diff", "ur"))
        m.d.sync += [in_seed.eq(0), in_sr.eq(0), in_diff.eq(0), in_ur.eq(0)]
        y2_next = ((prod + (1 << (MF - 1))) >> MF)[:len(y2)]
        diff_next = ((3 << MF) - uy2)[:len(diff)].as_signed()
        y_next = ((prod + (1 << MF)) >> (MF + 1))[:len(y)]
        with m.If(in_ur):
            m.d.sync += [fa.eq(y_next), fb.eq(y_next)]
        with m.Elif(in_sr):
            m.d.sync += [fa.eq(u), fb.eq(y2_next)]
        with m.Elif(in_diff):
            m.d.sync += [fa.eq(y), fb.eq(diff_next)]
        with m.Elif(in_seed):
            m.d.sync += [fa.eq(rp.data), fb.eq(rp.data)]
        top_r = Signal(range(max(VB, 2)))

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += v_r.eq(self.i.payload)
                    m.next = "TOP"
            with m.State("TOP"):                     # the priority encoder gets two cycles of its own
                for i, c in enumerate(chunks):
                    any_, idx = highest_set_bit(c)
                    m.d.sync += [c_any[i].eq(any_), c_idx[i].eq(idx)]
                m.next = "TOP2"
            with m.State("TOP2"):
                m.d.sync += top_r.eq(top)
                m.next = "NORM"
            with m.State("NORM"):
                m.d.sync += [e.eq(top_r >> 1), u.eq((v_r << UF) >> ((top_r >> 1) << 1))]
                m.d.sync += in_seed.eq(1)
                m.next = "SEED"
            with m.State("SEED"):
                m.d.sync += [y.eq(rp.data), it.eq(0)]
                m.next = "SQUARE" if sp.iterations else "DONE"
            with m.State("SQUARE"):
                m.next = "SQUARE_SUM"
            with m.State("SQUARE_SUM"):
                m.d.sync += in_sr.eq(1)
                m.next = "SQUARE_ROUND"
            with m.State("SQUARE_ROUND"):
                m.d.sync += y2.eq(y2_next)
                m.next = "SCALE"
            with m.State("SCALE"):
                m.next = "SCALE_SUM"
            with m.State("SCALE_SUM"):
                m.next = "SCALE_ROUND"
            with m.State("SCALE_ROUND"):
                m.d.sync += [uy2.eq((prod + (1 << (UF - 1))) >> UF), in_diff.eq(1)]
                m.next = "DIFF"
            with m.State("DIFF"):
                m.d.sync += diff.eq(diff_next)
                m.next = "UPDATE"
            with m.State("UPDATE"):
                m.next = "UPDATE_SUM"
            with m.State("UPDATE_SUM"):
                m.d.sync += in_ur.eq(1)
                m.next = "UPDATE_ROUND"
            with m.State("UPDATE_ROUND"):
                m.d.sync += [y.eq(y_next), it.eq(it + 1)]
                with m.If(it == sp.iterations - 1):
                    m.next = "DONE"
                with m.Else():
                    m.next = "SQUARE"
            with m.State("DONE"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.next = "IDLE"
        return m
