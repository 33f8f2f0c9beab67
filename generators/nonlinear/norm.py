"""The shared RMSNorm/LayerNorm datapath: two passes over a double-buffered vector memory.

Golden model: :func:`hbmforge.numerics.nonlinear.norm_int` (formulas in its module docstring)::

    S1 = sum(x) (RMSNorm: 0),  S2 = sum(x*x)
    V  = ((D*S2 - S1*S1) << 2E) + eps_q;   (M, e) = rsqrt(V)
    y[i] = sat(rshift_round((D*x[i] - S1) * M * gamma[i] << L, sh + L) + beta[i]),  sh = base + e

Blocks, in dataflow order:

* **fill** (pass 1): takes ``lanes`` elements per beat into bank ``b`` of the vector memory
  and accumulates ``S1``/``S2``; after the vector's last beat it hands ``(S1, S2, b)`` on
  and switches to the other bank (it waits while that bank still drains);
* **scalar**: ``V`` (one cycle), then the :class:`~.rsqrt.Rsqrt` unit, then the drain
  descriptor ``(S1, M, sh, b)``;
* **drain** (pass 2): reads bank ``b`` with gamma (and beta) one beat per cycle through a
  4-stage pipeline (memory read; ``num * M``; ``* gamma``; round, ``+ beta``, saturate into
  the output register); the bank is free as soon as its last beat is read.

Pass 1 of vector ``n+1`` overlaps pass 2 of vector ``n`` (two banks). With ``B = dim / lanes``
beats per vector and ``SL = scalar_latency`` (29 cycles with the default two Newton steps), a
lone vector's first output beat leaves ``B - 1 + SL + 4`` cycles after its first input beat;
a back-to-back stream of vectors (``B >= SL``) takes two vectors per ``2B + SL - 1`` cycles:
the third vector waits for the first one's bank. Flow control of the drain pipeline is a
global stall on the output register (``adv = ~o.valid | o.ready``).

``params`` writes gamma (and beta) one beat (``lanes`` elements, address ``addr``) at a time;
it is ready only while no vector is in the unit (between vectors).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...numerics.nonlinear import NormSpec
from ..params import require_positive_ints
from .rsqrt import Rsqrt

__all__ = ["NormUnit", "norm_params_layout"]


def norm_params_layout(spec: NormSpec, lanes: int) -> data.StructLayout:
    """One ``params`` beat: gamma (and, for LayerNorm, beta) of elements ``addr*lanes ..``."""
    fields = {"addr": range(max(spec.dim // lanes, 2)),
              "gamma": data.ArrayLayout(signed(spec.gamma_width), lanes)}
    if spec.center:
        fields["beta"] = data.ArrayLayout(signed(spec.out_width), lanes)
    return data.StructLayout(fields)


def _clamp(v, lo: int, hi: int):
    return Mux(v > hi, hi, Mux(v < lo, lo, v))


class NormUnit(wiring.Component):
    """RMSNorm (``center=False``) or LayerNorm (``center=True``) over vectors of ``dim`` elements,
    ``lanes`` per beat. Ports ``i`` / ``o`` (``ArrayLayout(signed(width|out_width), lanes)``
    streams, ``dim / lanes`` beats per vector, no framing signal) and ``params``."""

    CENTER = None                   # set by the subclasses

    def __init__(self, *, dim: int, lanes: int = 1, eps: float = 1e-5, width: int = 16, frac_bits: int = 10,
                 gamma_width: int = 16, gamma_frac_bits: int = 12, out_width: int = 16,
                 out_frac_bits: int = 10, rsqrt_bits: int = 18, center: bool | None = None):
        require_positive_ints(dim=dim, lanes=lanes)
        if lanes > 64:
            raise ValueError(f"lanes must be at most 64, got {lanes}")
        if dim % lanes:
            raise ValueError(f"dim {dim} must be a multiple of lanes {lanes}")
        center = self.CENTER if center is None else center
        self._spec = NormSpec(dim, eps, center, width, frac_bits, gamma_width, gamma_frac_bits,
                              out_width, out_frac_bits, rsqrt_bits)        # validates the formats
        self._lanes = lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(width), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(out_width), lanes))),
            "params": In(stream.Signature(norm_params_layout(self._spec, lanes))),
        })

    # -- parameters --------------------------------------------------------------------------------
    @property
    def spec(self) -> NormSpec:
        return self._spec

    @property
    def dim(self) -> int:
        return self._spec.dim

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def beats(self) -> int:
        """Beats per vector: ``dim / lanes``."""
        return self._spec.dim // self._lanes

    @property
    def eps(self) -> float:
        return self._spec.eps

    @property
    def width(self) -> int:
        return self._spec.width

    @property
    def frac_bits(self) -> int:
        return self._spec.frac_bits

    @property
    def gamma_width(self) -> int:
        return self._spec.gamma_width

    @property
    def gamma_frac_bits(self) -> int:
        return self._spec.gamma_frac_bits

    @property
    def out_width(self) -> int:
        return self._spec.out_width

    @property
    def out_frac_bits(self) -> int:
        return self._spec.out_frac_bits

    @property
    def rsqrt_bits(self) -> int:
        return self._spec.rsqrt_bits

    @property
    def scalar_latency(self) -> int:
        """Cycles from a vector's last input beat to its first drain read (``V``: 1, to Rsqrt: 1,
        Rsqrt: ``5 + 10 * iterations``, descriptor: 2)."""
        return 4 + self._rsqrt_latency()

    @property
    def rsqrt_busy_cycles(self) -> int:
        """Cycles the Rsqrt unit is taken per vector (it holds one value at a time): vectors of
        fewer beats queue behind it."""
        return self._rsqrt_latency() + 2

    def _rsqrt_latency(self) -> int:
        return Rsqrt.latency_of(self._spec.rsqrt.iterations)

    @property
    def latency(self) -> int:
        """Cycles from a lone vector's first input beat to its first output beat (no back-pressure)."""
        return self.beats - 1 + self.scalar_latency + 4

    # -- datapath ----------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        sp, L = self._spec, self._lanes
        D, B = sp.dim, self.beats
        abits = (B - 1).bit_length()
        center = sp.center
        m.submodules.rsqrt = rsqrt = Rsqrt(in_bits=sp.var_bits, frac_bits=sp.rsqrt_bits,
                                           iterations=sp.rsqrt.iterations, seed_bits=sp.rsqrt.seed_bits)

        xlay = data.ArrayLayout(signed(sp.width), L)
        xmem = Memory(shape=xlay, depth=2 << abits, init=[])
        gmem = Memory(shape=data.ArrayLayout(signed(sp.gamma_width), L), depth=1 << abits, init=[])
        m.submodules.xmem, m.submodules.gmem = xmem, gmem
        x_wr, x_rd = xmem.write_port(), xmem.read_port(domain="sync")
        g_wr, g_rd = gmem.write_port(), gmem.read_port(domain="sync")
        if center:
            bmem = Memory(shape=data.ArrayLayout(signed(sp.out_width), L), depth=1 << abits, init=[])
            m.submodules.bmem = bmem
            b_wr, b_rd = bmem.write_port(), bmem.read_port(domain="sync")

        def addr(idx, bank):
            return Cat(idx[:abits], bank) if abits else bank

        busy = Signal(2)            # bank holds a whole vector that is not fully read yet

        # -- params --------------------------------------------------------------------------------
        fill_idx = Signal(range(B + 1))
        m.d.comb += self.params.ready.eq((busy == 0) & (fill_idx == 0))
        prm = self.params.payload
        wr_params = self.params.valid & self.params.ready
        m.d.comb += [g_wr.addr.eq(prm.addr), g_wr.data.eq(prm.gamma), g_wr.en.eq(wr_params)]
        if center:
            m.d.comb += [b_wr.addr.eq(prm.addr), b_wr.data.eq(prm.beta), b_wr.en.eq(wr_params)]

        # -- fill (pass 1) -------------------------------------------------------------------------
        fill_bank = Signal()
        s1 = Signal(signed(sp.sum_bits))
        s2 = Signal(unsigned(sp.sumsq_bits))
        h_valid = Signal()
        h_s1 = Signal(signed(sp.sum_bits))
        h_s2 = Signal(unsigned(sp.sumsq_bits))
        h_bank = Signal()
        last_in = fill_idx == B - 1
        m.d.comb += self.i.ready.eq(~busy.bit_select(fill_bank, 1) & ~(last_in & h_valid))
        take = self.i.valid & self.i.ready
        m.d.comb += [x_wr.addr.eq(addr(fill_idx, fill_bank)), x_wr.data.eq(self.i.payload), x_wr.en.eq(take)]

        lane_sum = sum(self.i.payload[k] for k in range(L)) if center else Const(0)
        lane_sq = sum(self.i.payload[k] * self.i.payload[k] for k in range(L))
        s1_next = Signal(signed(sp.sum_bits))
        s2_next = Signal(unsigned(sp.sumsq_bits))
        m.d.comb += [s1_next.eq(s1 + lane_sum), s2_next.eq(s2 + lane_sq)]

        set_busy = Signal(2)
        clr_busy = Signal(2)
        m.d.sync += busy.eq((busy | set_busy) & ~clr_busy)
        take_h = Signal()
        with m.If(take):
            with m.If(last_in):
                m.d.sync += [h_s1.eq(s1_next), h_s2.eq(s2_next), h_bank.eq(fill_bank),
                             fill_bank.eq(~fill_bank), fill_idx.eq(0), s1.eq(0), s2.eq(0)]
                m.d.comb += set_busy.bit_select(fill_bank, 1).eq(1)
            with m.Else():
                m.d.sync += [fill_idx.eq(fill_idx + 1), s1.eq(s1_next), s2.eq(s2_next)]
        with m.If(take & last_in):
            m.d.sync += h_valid.eq(1)
        with m.Elif(take_h):
            m.d.sync += h_valid.eq(0)

        # -- scalar: V, rsqrt, drain descriptor ----------------------------------------------------
        v = Signal(unsigned(sp.var_bits))
        sc_s1 = Signal(signed(sp.sum_bits))
        sc_bank = Signal()
        q_valid = Signal()
        q_s1 = Signal(signed(sp.sum_bits))
        q_m = Signal(unsigned(sp.rsqrt.mant_bits))
        sh_max = sp.shift_base + sp.pre_shift + sp.rsqrt.exp_max
        q_sh = Signal(range(sh_max))                    # the rounding shift minus 1 (it is >= 1)
        q_bank = Signal()
        take_q = Signal()
        var_num = Signal(unsigned(sp.var_bits))
        m.d.comb += var_num.eq(D * h_s2 - h_s1 * h_s1)
        m.d.comb += [rsqrt.i.payload.eq(v)]
        with m.FSM(name="scalar"):
            with m.State("IDLE"):
                with m.If(h_valid):
                    m.d.comb += take_h.eq(1)
                    m.d.sync += [v.eq((var_num << (2 * sp.eps_bits)) + sp.eps_q), sc_s1.eq(h_s1), sc_bank.eq(h_bank)]
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += rsqrt.i.valid.eq(1)
                with m.If(rsqrt.i.ready):
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += rsqrt.o.ready.eq(~q_valid)
                with m.If(rsqrt.o.valid & ~q_valid):
                    m.d.sync += [q_s1.eq(sc_s1), q_bank.eq(sc_bank), q_m.eq(rsqrt.o.payload.mant),
                                 q_sh.eq(rsqrt.o.payload.exp + (sp.shift_base + sp.pre_shift - 1))]
                    m.next = "IDLE"
        with m.If(rsqrt.o.valid & rsqrt.o.ready):
            m.d.sync += q_valid.eq(1)
        with m.Elif(take_q):
            m.d.sync += q_valid.eq(0)

        # -- drain (pass 2) ------------------------------------------------------------------------
        d_active = Signal()
        d_idx = Signal(range(B + 1))
        d_bank = Signal()
        d_s1 = Signal(signed(sp.sum_bits))
        d_m = Signal(unsigned(sp.rsqrt.mant_bits))
        d_sh = Signal.like(q_sh)
        adv = Signal()
        m.d.comb += adv.eq(~self.o.valid | self.o.ready)
        issue = adv & d_active
        last_rd = d_idx == B - 1
        m.d.comb += [take_q.eq(q_valid & (~d_active | (issue & last_rd)))]
        with m.If(take_q):
            m.d.sync += [d_active.eq(1), d_idx.eq(0), d_bank.eq(q_bank), d_s1.eq(q_s1), d_m.eq(q_m),
                         d_sh.eq(q_sh)]
        with m.Elif(issue & last_rd):
            m.d.sync += d_active.eq(0)
        with m.If(issue & ~last_rd):
            m.d.sync += d_idx.eq(d_idx + 1)
        with m.If(issue & last_rd):
            m.d.comb += clr_busy.bit_select(d_bank, 1).eq(1)

        m.d.comb += [x_rd.addr.eq(addr(d_idx, d_bank)), x_rd.en.eq(adv),
                     g_rd.addr.eq(d_idx[:abits] if abits else 0), g_rd.en.eq(adv)]
        if center:
            m.d.comb += [b_rd.addr.eq(d_idx[:abits] if abits else 0), b_rd.en.eq(adv)]

        # stage 1: memory data; per-vector constants travel with the data
        v1, v2, v3 = Signal(), Signal(), Signal()
        s1_1 = Signal.like(d_s1)
        m_1 = Signal.like(d_m)
        sh_1, sh_2, sh_3 = Signal.like(d_sh), Signal.like(d_sh), Signal.like(d_sh)
        with m.If(adv):
            m.d.sync += [v1.eq(issue), v2.eq(v1), v3.eq(v2), self.o.valid.eq(v3),
                         s1_1.eq(d_s1), m_1.eq(d_m), sh_1.eq(d_sh), sh_2.eq(sh_1), sh_3.eq(sh_2)]

        lo, hi = -(1 << (sp.out_width - 1)), (1 << (sp.out_width - 1)) - 1
        pb1 = sp.num_bits + sp.rsqrt.mant_bits + 1
        for k in range(L):
            num = Signal(signed(sp.num_bits), name=f"num{k}")
            m.d.comb += num.eq(D * x_rd.data[k] - s1_1)
            p1 = Signal(signed(pb1), name=f"p1_{k}")
            g2 = Signal(signed(sp.gamma_width), name=f"g2_{k}")
            p2 = Signal(signed(sp.product_bits + sp.pre_shift), name=f"p2_{k}")
            with m.If(adv):
                m.d.sync += [p1.eq(num * m_1), g2.eq(g_rd.data[k]), p2.eq((p1 * g2) << sp.pre_shift)]
            r = Signal(signed(sp.product_bits + sp.pre_shift), name=f"r{k}")
            m.d.comb += r.eq(((p2 >> sh_3) + 1) >> 1)
            if center:
                b2 = Signal(signed(sp.out_width), name=f"b2_{k}")
                b3 = Signal(signed(sp.out_width), name=f"b3_{k}")
                with m.If(adv):
                    m.d.sync += [b2.eq(b_rd.data[k]), b3.eq(b2)]
                y = r + b3
            else:
                y = r
            with m.If(adv):
                m.d.sync += self.o.payload[k].eq(_clamp(y, lo, hi))
        return m
