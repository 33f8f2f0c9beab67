"""The element-wise pipeline of the vector engine: dequantize, bias, activation, combine, RoPE.

Golden model: :mod:`hbmforge.numerics.vector` (``dequant``, ``activate``, ``combine``, ``rope``).
One port word of ``lanes`` int32 elements of one row per cycle, fixed latency :attr:`LATENCY`,
no back-pressure (the caller issues only when the result has a place to go)::

    t1  x_a * (a * c_a), x_b * (a * c_b)          per lane, 63-bit products
    t2  shift_sat -> deq(A) + bias, deq(B)
    t3..t5  GELU / SiLU (hbmforge.generators.nonlinear tail units) or a 3-stage delay
    t6  A + B, or A * B (64-bit product)
    t7  rsr(A * B, 16), saturated
    t8  RoPE products  x0*cos - x1*sin, x0*sin + x1*cos
    t9  rsr(., 14), saturated   -> ``o``
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hbmforge.encodings import VectorAct, VectorCombine, VectorIn

from ...engines.vector import ACT_FRAC, ACT_SEG_BITS, ACT_WIDTH, ROPE_FRAC
from ..nonlinear.activation import TailActivation
from .arith import as_signed_field, lanes_of, rsr, sat32, shift_sat, word_of

__all__ = ["ElementPipe", "element_config_layout"]


def element_config_layout() -> data.StructLayout:
    """What the pipeline needs of the job (held constant while it runs)."""
    return data.StructLayout({"a_fmt": VectorIn, "b_fmt": VectorIn, "bias": 1, "act": VectorAct,
                              "combine": VectorCombine, "rope": 1})


class ElementPipe(wiring.Component):
    """``lanes`` int32 lanes; ``activations``: the tail units to build ("gelu", "silu")."""

    LATENCY = 9

    def __init__(self, *, lanes: int, activations=("gelu", "silu")):
        if lanes < 2 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a power of two >= 2, got {lanes}")
        self._lanes = lanes
        self._acts = tuple(activations)
        W = 32 * lanes
        super().__init__({
            "cfg": In(element_config_layout()),
            "i_valid": In(1),
            "xa": In(W), "xb": In(W),                     # raw words of A and B (row r, word j)
            "acol": In(W), "bcol": In(W), "bias": In(W),  # column records / bias of word j
            "row_a": In(16), "row_e": In(5),              # the row's scale record (ACC32)
            "rope": In(W // 2),                           # lanes/2 (cos | sin << 16) entries of word j
            "o_valid": Out(1),
            "o": Out(W),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        L = self._lanes
        cfg = self.cfg

        valid = [Signal(name=f"valid{t}") for t in range(self.LATENCY + 1)]
        m.d.comb += valid[0].eq(self.i_valid)
        for t in range(1, self.LATENCY + 1):
            m.d.sync += valid[t].eq(valid[t - 1])
        m.d.comb += self.o_valid.eq(valid[self.LATENCY])

        def delay(v, stages, name):
            """``v`` delayed by ``stages`` cycles."""
            out = v
            for t in range(stages):
                reg = Signal.like(v, name=f"{name}_d{t}") if isinstance(v, Signal) else Signal(len(v), name=f"{name}_d{t}")
                m.d.sync += reg.eq(out)
                out = reg
            return out

        # -- t1: products ------------------------------------------------------------------
        xa, xb = lanes_of(self.xa, L), lanes_of(self.xb, L)
        ac = lanes_of(self.acol, L, signed_=False)
        bc = lanes_of(self.bcol, L, signed_=False)
        pa = [Signal(signed(64), name=f"pa{i}") for i in range(L)]
        pb = [Signal(signed(64), name=f"pb{i}") for i in range(L)]
        sa = [Signal(signed(8), name=f"sa{i}") for i in range(L)]
        sb = [Signal(signed(8), name=f"sb{i}") for i in range(L)]
        row_a = Mux(cfg.a_fmt == VectorIn.ACC32, self.row_a, 1)
        row_e = Mux(cfg.a_fmt == VectorIn.ACC32, self.row_e, 0)
        for i in range(L):
            ca, cb = ac[i][:15], bc[i][:15]
            m.d.sync += [pa[i].eq(Mux(cfg.a_fmt == VectorIn.RES32, xa[i], xa[i] * (row_a * ca))),
                         sa[i].eq(Mux(cfg.a_fmt == VectorIn.RES32, 0, as_signed_field(ac[i][16:22]) - row_e)),
                         pb[i].eq(Mux(cfg.b_fmt == VectorIn.RES32, xb[i], xb[i] * (row_a * cb))),
                         sb[i].eq(Mux(cfg.b_fmt == VectorIn.RES32, 0, as_signed_field(bc[i][16:22]) - row_e))]
        bias1 = delay(self.bias, 1, "bias")
        rope1 = delay(self.rope, 1, "rope")

        # -- t2: shift, saturate, bias --------------------------------------------------------
        va2 = [Signal(signed(32), name=f"va2_{i}") for i in range(L)]
        vb2 = [Signal(signed(32), name=f"vb2_{i}") for i in range(L)]
        bias_l = lanes_of(bias1, L)
        for i in range(L):
            da = shift_sat(m, pa[i], sa[i], neg_max=31, name=f"deqa{i}")
            db = shift_sat(m, pb[i], sb[i], neg_max=31, name=f"deqb{i}")
            m.d.sync += [va2[i].eq(Mux(cfg.bias, sat32(da + bias_l[i]), da)), vb2[i].eq(db)]
        rope2 = delay(rope1, 1, "rope")

        # -- t3..t5: activation ---------------------------------------------------------------
        a_word = word_of(va2)
        a_plain = delay(a_word, 3, "aplain")
        act_out = a_plain
        for name, code in (("gelu", VectorAct.GELU), ("silu", VectorAct.SILU)):
            if name not in self._acts:
                continue
            unit = TailActivation(width=ACT_WIDTH, frac_bits=ACT_FRAC, seg_bits=ACT_SEG_BITS, lanes=L,
                                  function=name)
            assert unit.latency == 3
            m.submodules[name] = unit
            m.d.comb += [unit.i.valid.eq(valid[2]), unit.o.ready.eq(1)]
            for i in range(L):
                m.d.comb += unit.i.payload[i].eq(va2[i])
            act_out = Mux(cfg.act == code, word_of([unit.o.payload[i] for i in range(L)]), act_out)
        b5 = delay(word_of(vb2), 3, "b")
        rope5 = delay(rope2, 3, "rope")

        # -- t6, t7: combine ------------------------------------------------------------------
        a5, bl5 = lanes_of(act_out, L), lanes_of(b5, L)
        c6 = [Signal(signed(64), name=f"c6_{i}") for i in range(L)]
        for i in range(L):
            with m.Switch(cfg.combine):
                with m.Case(VectorCombine.ADD):
                    m.d.sync += c6[i].eq(a5[i] + bl5[i])
                with m.Case(VectorCombine.MUL):
                    m.d.sync += c6[i].eq(a5[i] * bl5[i])
                with m.Default():
                    m.d.sync += c6[i].eq(a5[i])
        v7 = [Signal(signed(32), name=f"v7_{i}") for i in range(L)]
        for i in range(L):
            m.d.sync += v7[i].eq(sat32(Mux(cfg.combine == VectorCombine.MUL, rsr(c6[i], ACT_FRAC), c6[i])))
        rope7 = delay(rope5, 2, "rope")

        # -- t8, t9: RoPE on pairs (2p, 2p+1) -------------------------------------------------
        r8 = [Signal(signed(48), name=f"r8_{i}") for i in range(L)]
        for p in range(L // 2):
            entry = rope7[32 * p:32 * p + 32]
            cos, sin = entry[:16].as_signed(), entry[16:].as_signed()
            x0, x1 = v7[2 * p], v7[2 * p + 1]
            m.d.sync += [r8[2 * p].eq(Mux(cfg.rope, x0 * cos - x1 * sin, x0 << ROPE_FRAC)),
                         r8[2 * p + 1].eq(Mux(cfg.rope, x0 * sin + x1 * cos, x1 << ROPE_FRAC))]
        o9 = [Signal(signed(32), name=f"o9_{i}") for i in range(L)]
        for i in range(L):
            m.d.sync += o9[i].eq(sat32(rsr(r8[i], ROPE_FRAC)))
        m.d.comb += self.o.eq(word_of(o9))
        return m
