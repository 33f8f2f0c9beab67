"""The element-wise pipeline of the vector engine: dequantize, bias, activation, combine, RoPE.

Golden model: :mod:`hbmforge.numerics.vector` (``dequant``, ``activate``, ``combine``, ``rope``).
One port word of ``lanes`` int32 elements of one row per cycle, fixed latency :attr:`LATENCY`,
no back-pressure (the caller issues only when the result has a place to go)::

    1..8    x_a * (a * c_a), x_b * (a * c_b) per lane (DSP-sized partial products), shifted
            (by 8s, then the rest), rounded, saturated
    9       + bias -> A, B
    10..12  GELU / SiLU (hbmforge.generators.nonlinear tail units) or a 3-stage delay
    13..18  A + B, or A * B (partial products), rsr(A * B, 16), saturated
    19..23  RoPE products  x0*cos - x1*sin, x0*sin + x1*cos, rsr(., 14), saturated   -> ``o``
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hbmforge.encodings import VectorAct, VectorCombine, VectorIn

from ...engines.vector import ACT_FRAC, ACT_SEG_BITS, ACT_WIDTH, ROPE_FRAC
from ..nonlinear.activation import TailActivation
from ..products import pipelined_product
from .arith import (RSR_STAGES, as_signed_field, delayed, lanes_of, registered, rsr, rsr_var_staged, sat32,
                    valid_chain, word_of)

__all__ = ["ElementPipe", "element_config_layout"]


def element_config_layout() -> data.StructLayout:
    """What the pipeline needs of the job (held constant while it runs)."""
    return data.StructLayout({"a_fmt": VectorIn, "b_fmt": VectorIn, "bias": 1, "act": VectorAct,
                              "combine": VectorCombine, "rope": 1})


class ElementPipe(wiring.Component):
    """``lanes`` int32 lanes; ``activations``: the tail units to build ("gelu", "silu")."""

    #: stages: the operands in registers (1: they come from LUT RAMs), column multiplier (1),
    #: x * multiplier (3), shift by 8s, shift by the rest, round,
    #: saturate, bias (1 each) | activation (5) | its mux (1), A * B (3), combine, round, saturate
    #: (1 each)
    #: | RoPE products (2), rotate, round, saturate (1 each); each a few LUT levels, one carry chain
    #: or one DSP tile
    LATENCY = 1 + 9 + TailActivation.LATENCY + 7 + 5

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

        valid = valid_chain(m, self.i_valid, self.LATENCY)
        m.d.comb += self.o_valid.eq(valid[self.LATENCY])

        def delay(v, stages, name):
            return delayed(m, v, stages, name=name)

        def reg(shape, name, value):
            return registered(m, shape, value, name=name)

        # -- dequantize: x * (row_a * c) >> (c_shift - row_e), saturated (RES32: x) -------------
        # 0: the operands in registers (a memory's clock-to-out before the column multiplier's
        # unregistered DSP input does not fit a cycle)
        xa, xb = lanes_of(delay(self.xa, 1, "xa_in"), L), lanes_of(delay(self.xb, 1, "xb_in"), L)
        ac = lanes_of(delay(self.acol, 1, "acol_in"), L, signed_=False)
        bc = lanes_of(delay(self.bcol, 1, "bcol_in"), L, signed_=False)
        row_a_v = Mux(cfg.a_fmt == VectorIn.ACC32, self.row_a, 1)
        row_e = delay(Mux(cfg.a_fmt == VectorIn.ACC32, self.row_e, 0), 1, "row_e_in")
        deq = {}
        for side, xs, cs, fmt in (("a", xa, ac, cfg.a_fmt), ("b", xb, bc, cfg.b_fmt)):
            raw = fmt == VectorIn.RES32
            # the multiplier's factors registered with the RES32 case in them (1 x 1): the product
            # goes straight into its register, no mux after the DSP
            row_a = delay(Mux(raw, 1, row_a_v), 1, f"row_a_{side}")
            cm = [delay(Mux(raw, 1, c[:15]), 1, f"c{side}{i}_in")
                  for i, c in enumerate(lanes_of(self.acol if side == "a" else self.bcol, L, signed_=False))]
            out = []
            for i in range(L):
                # 1: the lane's multiplier (1 for RES32: the product is then x itself) and shift
                mul = reg(unsigned(31), f"m{side}{i}", row_a * cm[i])
                x1 = reg(signed(32), f"x{side}{i}", xs[i])
                s1 = reg(signed(8), f"s{side}{i}", Mux(raw, 0, as_signed_field(cs[i][16:22]) - row_e))
                # 2..4: the product
                prod, lat = pipelined_product(m, x1, mul, name=f"p{side}{i}")
                # shift_sat(p, s) = sat32(rsr(p << 31, s + 31)); rsr(v, t) = ((v >> (t-1)) + 1) >> 1, v if t == 0
                t_m1 = delay(reg(signed(8), f"tm{side}{i}", s1 + 30), lat - 1, f"tm{side}{i}")
                tz = delay(reg(1, f"tz{side}{i}", s1 == -31), lat - 1, f"tz{side}{i}")
                wide = Signal(signed(32 + 31 + 31), name=f"w{side}{i}")
                m.d.comb += wide.eq(prod << 31)
                # 5..7: shift by the multiple of 8, by the rest, round; 8: saturate
                rounded = rsr_var_staged(m, wide, t_m1[:7], tz, name=f"w{side}{i}")
                out.append(reg(signed(32), f"d{side}{i}", sat32(rounded)))
            deq[side] = out
        pre = 1 + 1 + 3 + RSR_STAGES + 1      # the dequantized values are in registers now
        # 9: the bias
        bias_l = lanes_of(delay(self.bias, pre, "bias"), L)
        va = [reg(signed(32), f"va{i}", Mux(cfg.bias, sat32(deq["a"][i] + bias_l[i]), deq["a"][i]))
              for i in range(L)]
        vb = [delay(deq["b"][i], 1, f"vb{i}") for i in range(L)]
        t_ab = pre + 1
        assert lat == 3

        # -- activation (4 stages) -----------------------------------------------------------
        a_word = word_of(va)
        act_out = delay(a_word, TailActivation.LATENCY, "aplain")
        for name, code in (("gelu", VectorAct.GELU), ("silu", VectorAct.SILU)):
            if name not in self._acts:
                continue
            unit = TailActivation(width=ACT_WIDTH, frac_bits=ACT_FRAC, seg_bits=ACT_SEG_BITS, lanes=L,
                                  function=name)
            assert unit.latency == TailActivation.LATENCY
            m.submodules[name] = unit
            m.d.comb += [unit.i.valid.eq(valid[t_ab]), unit.o.ready.eq(1)]
            for i in range(L):
                m.d.comb += unit.i.payload[i].eq(va[i])
            act_out = Mux(cfg.act == code, word_of([unit.o.payload[i] for i in range(L)]), act_out)
        a_act = [reg(signed(32), f"aa{i}", v) for i, v in enumerate(lanes_of(act_out, L))]   # the mux registered
        b_act = [delay(delay(v, TailActivation.LATENCY, f"b{i}"), 1, f"bb{i}") for i, v in enumerate(vb)]

        # -- combine: A + B, A * B (rsr 16), or A -------------------------------------------------
        v_comb = []
        for i in range(L):
            prod, plat = pipelined_product(m, a_act[i], b_act[i], name=f"ab{i}")
            a_d, b_d = delay(a_act[i], plat, f"ca{i}"), delay(b_act[i], plat, f"cb{i}")
            c = Signal(signed(64), name=f"c{i}")
            with m.Switch(cfg.combine):
                with m.Case(VectorCombine.ADD):
                    m.d.sync += c.eq(a_d + b_d)
                with m.Case(VectorCombine.MUL):
                    m.d.sync += c.eq(prod)
                with m.Default():
                    m.d.sync += c.eq(a_d)
            # the rounding and the saturation a register each (two carry chains)
            rounded = reg(signed(64), f"vr{i}", Mux(cfg.combine == VectorCombine.MUL, rsr(c, ACT_FRAC), c))
            v_comb.append(reg(signed(32), f"v{i}", sat32(rounded)))
        assert plat == 3
        rope_c = delay(self.rope, t_ab + TailActivation.LATENCY + 1 + plat + 3, "rope")

        # -- RoPE on pairs (2p, 2p+1): x0*cos - x1*sin, x0*sin + x1*cos, rsr 14, saturated ------
        o = [None] * L
        for p in range(L // 2):
            entry = rope_c[32 * p:32 * p + 32]
            cos, sin = entry[:16].as_signed(), entry[16:].as_signed()
            x0, x1 = v_comb[2 * p], v_comb[2 * p + 1]
            c0, rlat = pipelined_product(m, x0, cos, name=f"x0c{p}")
            s1_, _ = pipelined_product(m, x1, sin, name=f"x1s{p}")
            s0, _ = pipelined_product(m, x0, sin, name=f"x0s{p}")
            c1, _ = pipelined_product(m, x1, cos, name=f"x1c{p}")
            x0_d, x1_d = delay(x0, rlat, f"x0_{p}"), delay(x1, rlat, f"x1_{p}")
            r0 = reg(signed(48), f"r{2 * p}", Mux(cfg.rope, c0 - s1_, x0_d << ROPE_FRAC))
            r1 = reg(signed(48), f"r{2 * p + 1}", Mux(cfg.rope, s0 + c1, x1_d << ROPE_FRAC))
            for k, r in ((2 * p, r0), (2 * p + 1, r1)):
                # the rounding and the saturation a register each (a 48-bit carry chain, then the
                # compare: 3.39 ns in one cycle in u280_llm512's vector engine)
                rounded = reg(signed(48 - ROPE_FRAC), f"rr{k}", rsr(r, ROPE_FRAC))
                o[k] = reg(signed(32), f"o{k}", sat32(rounded))
        assert rlat == 2
        m.d.comb += self.o.eq(word_of(o))
        return m
