"""Job sequencer: takes a MATMUL job, sizes its passes and buffers, issues every DMA command.

A job is a sequence of *passes* (K slice outer, chunk of row blocks inner; see
:mod:`hbmforge.engines.matmul`). The sequencer computes the job's sizes once in a few
registered setup cycles (``DesignLayout.matmul`` is the integer twin of each formula), then
runs independent command generators, so every reader gets its next command as soon as it
took the previous one and the shell can prefetch across passes:

* ``pass_*``: one record per pass for each consumer (activation fill, weight loader, column
  parameter loader, fire scheduler), offered to all four at once;
* ``act``: per pass the chunk's activation rows (one command per row block when K is one
  slice, one per row of the slice otherwise), then, from the second slice on, the pass's
  partial sums, once the writer acknowledged the previous slice's (they are rewritten in
  place); ``act_route`` tells the demultiplexer whose words each command brings;
* ``w[i]`` / ``scale``: the slice's weight stripe / scale mantissas, once per pass (with inline
  scales the stripe holds the slice's scale words too and ``scale`` stays idle);
* ``rq``: per tile of the passes that need them, the tile's requant parameters (INT8, last
  slice) and bias (first slice);
* ``out``: per pass of a non-last slice its partial-sum region; in the last slice Y, as one
  command, or in (chunk, tile, row block) segments when row blocks share weight tiles.

``done`` follows the writer's last acknowledgement.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...encodings import BiasMode, OutMode
from ...mathutil import ceil_div, exact_log2
from ..counters import CountDown
from ..streams import JobDone, dma_command_stream
from .geometry import EngineGeometry, pass_layout
from .pipe import tiled_product
from .signature import matmul_job_layout

__all__ = ["JobSequencer", "ceil_div_const", "act_route_layout", "SETUP_CYCLES"]

SETUP_CYCLES = 24          # the setup's longest register chain + margin (tests/gateware/test_matmul_setup.py)


def ceil_div_const(m: Module, value, divisor: int, value_bits: int, *, name: str) -> tuple:
    """``ceil(value / divisor)`` for an unsigned ``value_bits``-bit value and a constant divisor;
    returns ``(quotient, latency in cycles)``.

    Powers of two are a shift (latency 0); other divisors multiply ``value + divisor - 1``
    (registered) by ``ceil(2^s / d)``, ``s = value_bits + 1 + ceil(log2 d)``, as registered
    DSP-sized tiles (:func:`~.pipe.tiled_product`): exact for every input of that width.
    """
    if divisor & (divisor - 1) == 0:
        return (value + divisor - 1) >> exact_log2(divisor), 0
    s = value_bits + 1 + (divisor - 1).bit_length()      # (d - 1).bit_length() = ceil(log2 d), any d
    biased = Signal(value_bits + 1, name=f"{name}_biased")
    m.d.sync += biased.eq(value + divisor - 1)
    prod, latency = tiled_product(m, biased, Const(ceil_div(1 << s, divisor)), name=name)
    return prod >> s, 1 + latency


def act_route_layout() -> data.StructLayout:
    """Where the words of one ``act`` command go: the activation fill or the partial-sum collector."""
    return data.StructLayout({"partial": 1, "words": 32})


class _JobRegs:
    """One register per descriptor field (see :func:`matmul_job_layout`)."""

    def __init__(self, weight_ports: int):
        layout = matmul_job_layout(weight_ports)
        self._names = []
        for name, field in layout:
            if name == "w_addr":
                continue
            setattr(self, name, Signal(Shape.cast(field.shape), name=f"job_{name}"))
            self._names.append(name)
        self.w_addr = [Signal(64, name=f"job_w_addr{i}") for i in range(weight_ports)]

    def load(self, payload):
        return ([getattr(self, n).eq(getattr(payload, n)) for n in self._names]
                + [w.eq(payload.w_addr[i]) for i, w in enumerate(self.w_addr)])


class JobSequencer(wiring.Component):
    """One job at a time: IDLE -> SETUP -> RUN (commands, then wait) -> DONE.

    ``start`` pulses once the job's sizes (the outputs below) are valid; they hold until the
    next job. ``out_done`` is always taken; the job ends when every output command has been
    acknowledged.
    """

    def __init__(self, geometry: EngineGeometry, *, ternary_packing: str = "2bit", sparse24: bool = False,
                 inline_scales: bool = False):
        if not isinstance(geometry, EngineGeometry):
            raise TypeError(f"geometry must be an EngineGeometry, got {type(geometry).__name__}")
        if geometry.group_size < 16 or geometry.data_width < 64:
            raise ValueError(f"group_size must be >= 16 and data_width >= 64, got {geometry.group_size}, "
                             f"{geometry.data_width}")
        if ternary_packing not in ("2bit", "5trit"):
            raise ValueError(f"ternary_packing must be '2bit' or '5trit', got {ternary_packing!r}")
        if not isinstance(sparse24, bool):
            raise TypeError(f"sparse24 must be True or False, got {sparse24!r}")
        if not isinstance(inline_scales, bool):
            raise TypeError(f"inline_scales must be True or False, got {inline_scales!r}")
        if inline_scales and ternary_packing == "5trit":
            raise ValueError("inline_scales needs ternary_packing '2bit' (5-trit ternary has no whole number "
                             "of weight words per scale word)")
        self._geom = geometry
        self._packing = ternary_packing
        self._sparse24 = sparse24
        self._inline = inline_scales
        P = geometry.weight_ports
        rec = pass_layout(geometry)
        super().__init__({
            "job": In(stream.Signature(matmul_job_layout(P))),
            "done": Out(stream.Signature(JobDone)),
            "act_cmd": Out(dma_command_stream()),
            "act_route": Out(stream.Signature(act_route_layout())),
            "partial_entries": Out(stream.Signature(32)),      # columns x blocks of each partial command
            "scale_cmd": Out(dma_command_stream()),
            "rq_cmd": Out(dma_command_stream()),
            "w_cmd": Out(dma_command_stream()).array(P),
            "out_cmd": Out(dma_command_stream()),
            "out_done": In(stream.Signature(JobDone)),
            "pass_fill": Out(stream.Signature(rec)),
            "pass_load": Out(stream.Signature(rec)),
            "pass_param": Out(stream.Signature(rec)),
            "pass_fire": Out(stream.Signature(rec)),
            # job constants, valid from ``start``
            "start": Out(1),
            "m": Out(32),
            "n": Out(32),
            "tiles": Out(32),
            "last_cols": Out(range(geometry.tile_n + 1)),
            "stride_log": Out(range(geometry.line_bits + 1)),
            "slots_log": Out(range(exact_log2(geometry.act_depth) + 1)),
            "wbits": Out(5),
            "int8": Out(1),
            "bias": Out(1),
            "bias_shift": Out(6),
            "out_shift": Out(6),
            "busy": Out(1),
            # a job of pair fires (geometry.pairs: a 2:4 job of a 2-bit format with N even, or with
            # dense_pairs a dense one): ``n``, ``tiles`` and ``last_cols`` count pair lines (two
            # columns each); ``dense``: the job is dense (a pair lane holds two weights, not a value
            # and its index)
            "pair": Out(1),
            "dense": Out(1),
        })

    def _pair_job(self, wbits):
        """Whether a job of descriptor code ``wbits`` runs as pair fires (when its N is even)."""
        g = self._geom
        two = (wbits[:4] == 2) | (wbits[:4] == 3)
        hit = g.sparse_pairs & wbits[4] & two
        for code in g.dense_pair_codes:
            hit = hit | (~wbits[4] & (wbits[:4] == code))
        return hit

    def _weight_bytes(self, m: Module, code, nk, cw: int, B: int, trit_words=None, *, name: str):
        """Bytes per weight stripe of one slice (``MatmulGeometry.slice_weight_port_bytes``): the
        stream of ``nk`` weights (b bits each by descriptor code 2/3/4/8, or ceil(nk/5) bytes for
        5-trit ternary; 2:4 sparse: ``(b + 2) / 2`` bits each) in whole combined words of ``cw``
        bits, one ``B``-byte word per stripe. ``trit_words``: the 5-trit word count
        ``ceil(nk / (5 cw / 8))``, computed by the caller (a registered, tiled division).

        Returns ``(bytes, registers)``: the count comes through SETUP registers of its own (2:4's
        5 nk and 3 nk, the stream's bits, then its words and the inline scale words, then their
        sum), each an add or a mux (the whole as one expression was a 5.2 ns path, 6.5 CARRY8, on u280_llm512's
        matmul); the caller assigns ``registers`` in SETUP with its other registers."""
        base = code[:4]
        bits_r = Signal(len(nk) + 4, name=f"{name}_bits")
        words_r = Signal(len(nk) + 4, name=f"{name}_words")
        scale_r = Signal(len(nk) + 4, name=f"{name}_scale_words")
        out = Signal(40, name=name)
        regs = []
        bits = Mux(base == 8, nk << 3, Mux(base == 4, nk << 2, nk << 1))
        if self._sparse24:                 # a group of 4 in 2b + 4 bits: 5, 3 or 2 bits per weight
            # 5 nk and 3 nk registers of their own (the add, then the format's mux: 3.6 ns as one)
            nk5, nk3 = Signal(len(nk) + 3, name=f"{name}_nk5"), Signal(len(nk) + 2, name=f"{name}_nk3")
            regs += [nk5.eq((nk << 2) + nk), nk3.eq((nk << 1) + nk)]
            sparse_bits = Mux(base == 8, nk5, Mux(base == 4, nk3, nk << 1))
            bits = Mux(code[4], sparse_bits, bits)
        words = (bits_r + cw - 1) >> exact_log2(cw)
        if self._packing == "5trit":       # ceil(ceil(nk / 5) / (cw / 8)) = ceil(nk / (5 cw / 8))
            words = Mux(code == 3, trit_words, words)
        regs += [bits_r.eq(bits), words_r.eq(words)]
        if self._inline:                   # + the slice's scale words: nk / G u16 in combined words
            sbits = nk >> (exact_log2(self._geom.group_size) - 4)
            regs.append(scale_r.eq((sbits + cw - 1) >> exact_log2(cw)))
        regs.append(out.eq((words_r + scale_r) << exact_log2(B)))
        return out, regs

    def elaborate(self, platform):
        m = Module()
        geom = self._geom
        R, L, P, T = geom.rows, geom.lanes, geom.weight_ports, geom.tile_n
        B = geom.word_bytes
        cw = P * geom.data_width
        ks_full = geom.k_slice
        word_shift, t_shift = exact_log2(B), exact_log2(T)
        depth_log = exact_log2(geom.act_depth)

        job = _JobRegs(P)
        int8 = Signal()
        bias_on = Signal()
        pair = Signal()
        dense = Signal()
        ncols = Signal(32)                   # weight-ring lines per K slice: N, or N / 2 pair lines
        ent_full, ent_last = Signal(32), Signal(32)  # partial-sum entries of a full chunk, of the last
        m.d.comb += [self.m.eq(job.m), self.n.eq(ncols), self.pair.eq(pair), self.dense.eq(dense),
                     self.wbits.eq(job.wbits), self.int8.eq(int8),
                     self.bias.eq(bias_on), self.bias_shift.eq(job.bias_shift), self.out_shift.eq(job.out_shift)]

        def round_words(v):
            return ((v + B - 1) >> word_shift) << word_shift

        # -- setup: sizes (registered; settled after SETUP_CYCLES) ------------------------------
        slices = Signal(8)
        k_last = Signal(32)
        kc_full = ks_full // L
        kc_last = Signal(range(geom.kc_max + 1))
        kc0 = Signal(range(geom.kc_max + 1))
        stride_log = Signal(range(geom.line_bits + 1))
        slots_log = Signal(range(depth_log + 1))
        blocks = Signal(33)
        tiles = Signal(32)
        last_cols = Signal(range(T + 1))
        nR = Signal(40)
        nReb = Signal(42)
        seg_ok = Signal()
        c_log = Signal(range(depth_log + 1))
        chunks = Signal(33)
        blk_sum = Signal(34)                 # blocks + 2^c_log - 1
        one_chunk = Signal()                 # chunks == 1
        two_chunks = Signal()                # chunks == 2
        two_slices = Signal()                # slices == 2
        one_tile = Signal()                  # tiles == 1
        two_tiles = Signal()                 # tiles == 2
        c_last_one = Signal()                # the last chunk has one row block
        blk_one = Signal()                   # a full chunk has one row block
        nreb_chunk = Signal(64)              # a chunk's output bytes per column: nReb << c_log
        c_last_off = Signal(33)              # the last chunk's first block: (chunks - 1) << c_log
        c_last = Signal(range(geom.act_depth + 1))
        # the loop bounds minus one (registered with the bounds): the loop ends are equalities
        # against registers, not a subtraction feeding a 33-bit compare
        slices_m1 = Signal(8)
        slices_m2 = Signal(8)                # slices - 2 (mod 256): the last slice's compare without an adder
        tiles_m1 = Signal(32)
        chunks_m1 = Signal(33)
        c_last_m1 = Signal(range(geom.act_depth))
        blk_m1 = Signal(range(geom.act_depth))       # (1 << c_log) - 1: a full chunk's blocks minus one
        c_rows = Signal(32)
        # products of the job's sizes used on the command paths, registered in SETUP: k x R, a
        # chunk's rows x k, and i x k for a short row block (i < R)
        k_r = Signal(64)
        k_chunk = Signal(64)
        k_rows = [Signal(32 + max(1, (R - 1).bit_length()), name=f"k_rows{i}") for i in range(R)]
        pstride = Signal(48)
        plast = Signal(48)
        nk_full = Signal(64)
        nk_last = Signal(64)
        sb_full = Signal(40)
        sb_last = Signal(40)
        o_total = Signal(64)
        seg = Signal()
        last_seg_bytes = Signal(32)
        rq_b_last = Signal(32)               # the last tile's bias / requant parameter bytes
        rq_q_last = Signal(32)
        setup = Signal()
        m.d.comb += [self.tiles.eq(tiles), self.last_cols.eq(last_cols), self.stride_log.eq(stride_log),
                     self.slots_log.eq(slots_log)]
        # the wide products as registered DSP-sized tiles and adder trees (free-running; the setup
        # registers below take their results once the inputs have settled)
        slices_q = ceil_div_const(m, job.k, ks_full, 32, name="slices_q")[0]
        blocks_q = ceil_div_const(m, job.m, R, 32, name="blocks_q")[0]
        # (k_last is at most a slice, 1..ks_full: its product by n from that many bits, not 32; the
        # 32-bit operand's high tile came out of LUTs, a 3.6 ns path in u280_llm512's matmul)
        nk_last_q, _ = tiled_product(m, job.n, k_last[:ks_full.bit_length()], name="nk_last_q")
        plast_q, _ = tiled_product(m, nR << 3, c_last, name="plast_q")
        ent_last_q, _ = tiled_product(m, c_last, ncols, name="ent_last_q")
        o_blocks_q, _ = tiled_product(m, blocks, nR, name="o_blocks_q")
        trit_full = trit_last = None
        if self._packing == "5trit":
            # the 5-trit word counts as registered tiled divisions of the settled products (one
            # combinational multiply by the reciprocal was a 7.9 ns path, 11.5 CARRY8)
            nk_bits = 33 + geom.k_slice.bit_length()
            trit_full = ceil_div_const(m, nk_full[:nk_bits], 5 * cw // 8, nk_bits, name="trit_full")[0]
            trit_last = ceil_div_const(m, nk_last[:nk_bits], 5 * cw // 8, nk_bits, name="trit_last")[0]
        wb_full, wb_full_regs = self._weight_bytes(m, job.wbits, nk_full, cw, B, trit_full, name="wb_full")
        wb_last, wb_last_regs = self._weight_bytes(m, job.wbits, nk_last, cw, B, trit_last, name="wb_last")
        with m.If(setup):
            sl = geom.line_bits
            for e in reversed(range(geom.line_bits)):
                sl = Mux(kc0 <= (1 << e), e, sl)
            # a tile's columns: T lines, two columns each in a pair job (``tile_cols``), the last tile's
            # ``last_cols`` lines likewise (``last_true``)
            ok_tile = Mux(pair, Mux(int8, (2 * T * R) % B == 0, (2 * T * R * 4) % B == 0),
                          Mux(int8, (T * R) % B == 0, (T * R * 4) % B == 0))
            last_true = Mux(pair, last_cols << 1, last_cols)
            setup_regs = [
                slices.eq(slices_q),
                slices_m1.eq(slices_q - 1),
                slices_m2.eq(slices_q - 2),
                k_last.eq(job.k - (slices - 1) * ks_full),
                kc_last.eq(k_last >> exact_log2(L)),
                kc0.eq(Mux(slices == 1, kc_last, kc_full)),
                stride_log.eq(sl),
                slots_log.eq(depth_log - stride_log),
                blocks.eq(blocks_q),
                ncols.eq(Mux(pair, job.n >> 1, job.n)),
                tiles.eq((ncols + T - 1) >> t_shift),
                tiles_m1.eq(((ncols + T - 1) >> t_shift) - 1),
                last_cols.eq(ncols - ((tiles - 1) << t_shift)),
                nR.eq(job.n * R),
                nReb.eq(Mux(int8, nR, nR << 2)),
                seg_ok.eq(((nReb & (B - 1)) == 0) & ok_tile),
                c_log.eq(Mux(((tiles > 1) & ~seg_ok) | (blocks == 1) if not geom.tlmm else 1, 0, slots_log)),
                # chunks = ceil(blocks / 2^c_log) and the last chunk's blocks, one operation a register
                blk_m1.eq((1 << c_log) - 1),
                blk_sum.eq(blocks + blk_m1),
                chunks.eq(blk_sum >> c_log),
                chunks_m1.eq(chunks - 1),
                c_last_off.eq(chunks_m1 << c_log),
                c_last.eq(blocks - c_last_off),
                c_last_m1.eq(c_last - 1),
                one_chunk.eq(chunks_m1 == 0),
                two_chunks.eq(chunks_m1 == 1),
                two_slices.eq(slices_m1 == 1),
                one_tile.eq(tiles_m1 == 0),
                two_tiles.eq(tiles_m1 == 1),
                c_last_one.eq(c_last_m1 == 0),
                blk_one.eq(blk_m1 == 0),
                nreb_chunk.eq(nReb << c_log),
                c_rows.eq(R << c_log),
                k_r.eq(job.k * R),
                k_chunk.eq((job.k * R) << c_log),
                # i x k as a chain of adds over SETUP's cycles (a product by a small constant
                # mapped to cascaded DSPs and a carry was one path of 4.1 ns)
                k_rows[0].eq(0), *(k_rows[i].eq(k_rows[i - 1] + job.k) for i in range(1, R)),
                pstride.eq(round_words((nR << 3) << c_log)),
                plast.eq(round_words(plast_q)),
                ent_full.eq((ncols << c_log)[:32]),
                ent_last.eq(ent_last_q[:32]),
                nk_full.eq(job.n * ks_full),
                nk_last.eq(nk_last_q),
                *wb_full_regs, *wb_last_regs,
                sb_full.eq(round_words(nk_full >> (exact_log2(geom.group_size) - 1))),
                sb_last.eq(round_words(nk_last >> (exact_log2(geom.group_size) - 1))),
                o_total.eq(round_words(Mux(int8, o_blocks_q[:64], o_blocks_q[:64] << 2))),
                seg.eq((c_log != 0) & (tiles > 1)),
                last_seg_bytes.eq(Mux(int8, last_true * R, (last_true * R) << 2)),
                rq_b_last.eq(round_words(last_true << 2)),
                rq_q_last.eq(round_words(last_true << 3)),
            ]
            m.d.sync += setup_regs
        # what SETUP computes, for the test that SETUP_CYCLES lets every register settle
        self.setup_registers = tuple(st.lhs for st in setup_regs)
        tile_cols = Mux(pair, 2 * T, T)
        seg_full = Mux(int8, tile_cols * R, tile_cols * R * 4)

        running = Signal()                   # in RUN: a flip-flop set and cleared with the state (every
                                             # command's valid starts here, not at the state's decode)

        # -- pass records ---------------------------------------------------------------------
        ps = Signal(8)
        p_first = Signal()                   # ps == 0
        p_last_slice = Signal()              # ps == slices - 1
        p_q_left = Signal(33)                # chunks after this one
        p_last_chunk = Signal()
        p_rows_left = Signal(33)
        p_active = Signal()
        outs = (self.pass_fill, self.pass_load, self.pass_param, self.pass_fire)
        all_ready = Signal()
        m.d.comb += all_ready.eq(self.pass_fill.ready & self.pass_load.ready & self.pass_param.ready
                                 & self.pass_fire.ready)
        for o in outs:
            rec = o.payload
            m.d.comb += [o.valid.eq(running & p_active & all_ready),
                         rec.kc.eq(Mux(p_last_slice, kc_last, kc_full)),
                         rec.nblk.eq(Mux(p_last_chunk, c_last, 1 << c_log)),
                         rec.rows.eq(Mux(p_rows_left < c_rows, p_rows_left, c_rows)),
                         rec.first.eq(p_first), rec.last.eq(p_last_slice), rec.final.eq(p_last_slice & p_last_chunk)]
        with m.If(self.pass_fire.valid & all_ready):
            with m.If(p_last_chunk):
                m.d.sync += [p_q_left.eq(chunks_m1), p_last_chunk.eq(one_chunk), ps.eq(ps + 1), p_first.eq(0),
                             p_last_slice.eq(ps == slices_m2), p_rows_left.eq(job.m)]
                with m.If(p_last_slice):
                    m.d.sync += p_active.eq(0)
            with m.Else():
                m.d.sync += [p_q_left.eq(p_q_left - 1), p_last_chunk.eq(p_q_left == 1),
                             p_rows_left.eq(p_rows_left - c_rows)]

        # -- activations and partial sums ----------------------------------------------------
        a_s = Signal(8)
        a_last_s = Signal()                  # a_s == slices_m1, a flag kept beside a_s
        a_q = Signal(33)
        a_active = Signal()
        a_partial = Signal()                 # phase: the pass's partial sums
        a_rows_left = Signal(33)             # rows of this pass not issued yet
        # the chunk loop's end as a registered flag (a down-counter of the chunks after this one)
        # and the rows after this chunk, kept by subtraction (no a_q x c_rows product)
        a_q_left = Signal(33)
        a_last_q = Signal()
        a_m_after = Signal(33)
        a_p_addr = Signal(64)                # p_addr + a_q x pstride, kept by addition (no product)
        a_chunk_row = Signal(64)             # x_addr + first row of the chunk x k
        a_addr = Signal(64)
        a_koff = Signal(32)                  # slice offset within a row
        pidx = Signal(16)                    # partial-sum commands issued (== P writes they follow)
        dones = Signal(32)
        # the compares of the rows left as registers, taken the cycle after every change of
        # a_rows_left (a command transfer or the job's start), during which no command goes: one
        # idle cycle per activation command keeps a 33-bit compare off its subtraction
        one_slice = Signal()
        a_wait = Signal()
        a_short = Signal()                   # a_rows_left < R
        a_last_cmd = Signal()                # the pass's last command: unit_rows == a_rows_left
        # a_rows_left < R: for a power-of-two R a test of the high bits (no carry chain); the
        # registered a_short lags a change of the rows left by the cycle the command register
        # below is taken in, so that register reads the test itself
        short_now = ~a_rows_left[exact_log2(R):].any() if R & (R - 1) == 0 else a_rows_left < R
        m.d.sync += [one_slice.eq(slices == 1), a_wait.eq(self.act_cmd.valid & self.act_cmd.ready),
                     a_short.eq(short_now),
                     a_last_cmd.eq(Mux(one_slice, a_rows_left <= R, a_rows_left == 1))]
        rows_here = a_rows_left
        unit_rows = Mux(one_slice, Mux(a_short, rows_here, R), 1)
        short_bytes = Cat(*k_rows).word_select(rows_here[:max(1, (R - 1).bit_length())], len(k_rows[0])) \
            if R > 1 else k_rows[0]
        # the command, its route record and entry count are registers too, from the same state (the
        # idle cycle after each change lets them settle): the data port's arbiter sees flip-flops
        a_bytes = Mux(one_slice, Mux(short_now, short_bytes, k_r), Mux(a_last_s, k_last, ks_full))
        p_bytes = Mux(a_last_q, plast, pstride)
        cmd_addr, cmd_bytes, entries = Signal(64), Signal(32), Signal(32)
        m.d.sync += [cmd_addr.eq(Mux(a_partial, a_p_addr, a_addr)), cmd_bytes.eq(Mux(a_partial, p_bytes, a_bytes)),
                     entries.eq(Mux(a_last_q, ent_last, ent_full))]
        route = self.act_route.payload
        m.d.comb += [route.partial.eq(a_partial),
                     route.words.eq(cmd_bytes >> word_shift),
                     self.partial_entries.payload.eq(entries),
                     self.act_cmd.payload.addr.eq(cmd_addr),
                     self.act_cmd.payload.bytes.eq(cmd_bytes)]
        # a partial-sum read waits for the writes it follows: dones > pidx as a register (a write
        # answer counts a cycle later; pidx moves with a command, after which a_wait idles a cycle)
        p_written = Signal()
        m.d.sync += p_written.eq(dones > pidx)
        # the route and entry queues' room as registers of their ready: a cycle late, which is exact
        # here (a push is followed by a_wait's idle cycle; pops only add room)
        route_room, entries_room = Signal(), Signal()
        m.d.sync += [route_room.eq(self.act_route.ready), entries_room.eq(self.partial_entries.ready)]
        a_go = running & a_active & ~a_wait & route_room & (~a_partial | (p_written & entries_room))
        m.d.comb += [self.act_cmd.valid.eq(a_go), self.act_route.valid.eq(a_go & self.act_cmd.ready),
                     self.partial_entries.valid.eq(a_go & a_partial & self.act_cmd.ready)]
        a_next_pass = Signal()
        with m.If(self.act_cmd.valid & self.act_cmd.ready):
            with m.If(a_partial):
                m.d.sync += [pidx.eq(pidx + 1), a_partial.eq(0)]
                m.d.comb += a_next_pass.eq(1)
            with m.Else():
                m.d.sync += [a_rows_left.eq(a_rows_left - unit_rows),
                             a_addr.eq(a_addr + Mux(one_slice, k_r, job.k))]
                with m.If(a_last_cmd):
                    with m.If(a_s != 0):
                        m.d.sync += a_partial.eq(1)
                    with m.Else():
                        m.d.comb += a_next_pass.eq(1)
        # the next pass's row address, slice offset and rows, registered ahead (they change only
        # at a pass change, and after one no command goes for a cycle, so these are current at the
        # next): one adder per path
        a_row_next, a_koff_next = Signal(64), Signal(32)
        a_after_rows, m_rows = Signal(33), Signal(33)
        m.d.sync += [a_row_next.eq(a_chunk_row + k_chunk), a_koff_next.eq(a_koff + ks_full),
                     a_after_rows.eq(Mux(a_m_after < c_rows, a_m_after, c_rows)),
                     m_rows.eq(Mux(job.m < c_rows, job.m, c_rows))]
        with m.If(a_next_pass):
            # next pass: the next chunk of this slice, or the first chunk of the next slice
            last_q = a_last_q
            nxt_row = Mux(last_q, job.x_addr, a_row_next)
            nxt_koff = Mux(last_q, a_koff_next, a_koff)
            m.d.sync += [a_q.eq(Mux(last_q, 0, a_q + 1)), a_s.eq(Mux(last_q, a_s + 1, a_s)),
                         a_q_left.eq(Mux(last_q, chunks_m1, a_q_left - 1)),
                         a_last_q.eq(Mux(last_q, one_chunk, a_q_left == 1)),
                         a_m_after.eq(Mux(last_q, job.m, a_m_after) - c_rows),
                         a_p_addr.eq(Mux(last_q, job.p_addr, a_p_addr + pstride)),
                         a_chunk_row.eq(nxt_row), a_koff.eq(nxt_koff), a_addr.eq(nxt_row + nxt_koff),
                         a_rows_left.eq(Mux(last_q, m_rows, a_after_rows))]
            with m.If(last_q):
                m.d.sync += a_last_s.eq(a_s == slices_m2)
                with m.If(a_last_s):
                    m.d.sync += a_active.eq(0)

        # -- weights and scales: the slice's stream once per pass --------------------------------
        def slice_stream(port, base, full_bytes, last_bytes, name):
            # the slice and chunk loops as down-counters with registered end flags
            # (:class:`CountDown`): the handshake selects between flip-flops
            sl, ch = CountDown(8, f"{name}_s"), CountDown(33, f"{name}_q")
            off = Signal(64, name=f"{name}_off")
            act = Signal(name=f"{name}_active")
            m.d.comb += [port.valid.eq(running & act), port.payload.addr.eq(base + off),
                         port.payload.bytes.eq(Mux(sl.last, last_bytes, full_bytes))]
            with m.If(port.valid & port.ready):
                with m.If(ch.last):
                    m.d.sync += [*ch.load(chunks_m1, one_chunk, two_chunks), *sl.step(), off.eq(off + full_bytes)]
                    with m.If(sl.last):
                        m.d.sync += act.eq(0)
                with m.Else():
                    m.d.sync += ch.step()
            return [*sl.load(slices_m1, one_slice, two_slices), *ch.load(chunks_m1, one_chunk, two_chunks),
                    off.eq(0), act.eq(1)]

        resets = []
        for i in range(P):
            resets += slice_stream(self.w_cmd[i], job.w_addr[i], wb_full, wb_last, f"w{i}")
        if not self._inline:               # inline: the scales come with the weights (no scale_cmd)
            resets += slice_stream(self.scale_cmd, job.s_addr, sb_full, sb_last, "scale")

        # -- requant parameters (INT8, last slice) and bias (first slice), per tile ----------------
        # the slice and chunk loop ends as registered flags (a slice counter and a down-counter of
        # the chunks after this one), so the step's conditions are flip-flops, not 8/33-bit compares
        r_sl, r_ch, r_t = CountDown(8, "r_s"), CountDown(33, "r_q"), CountDown(32, "r_t")
        r_first_s = Signal()                 # the job's first slice
        r_bias = Signal()                    # phase: the tile's bias (after its requant parameters)
        r_active = Signal()
        need_q = int8 & r_sl.last
        need_b = bias_on & r_first_s
        # two decisions of the step kept as flags for the cycle they are read, so the port's ready
        # meets flip-flops only: ``r_here`` (this phase's command is needed: the bias on the first
        # slice, the requant parameters on the last) and ``r_end`` (the pass ends after this
        # tile: its last tile, or a pass that needs no parameters, skipped in one step per phase)
        r_here, r_end = Signal(), Signal()
        def pass_flags(last_s, first_s, last_t):
            nq, nb = int8 & last_s, bias_on & first_s
            return [r_here.eq(nq), r_end.eq(last_t | ~(nq | nb))]
        # the command from registers only (it goes straight to the data port's arbiter): the tile's
        # two addresses kept by additions, its last-tile flag from a down-counter, the byte counts
        # of a full and of the last tile (the latter set in SETUP)
        r_b_addr, r_q_addr = Signal(64), Signal(64)
        m.d.comb += [self.rq_cmd.payload.addr.eq(Mux(r_bias, r_b_addr, r_q_addr)),
                     self.rq_cmd.payload.bytes.eq(Mux(r_bias, Mux(r_t.last, rq_b_last, round_words(tile_cols << 2)),
                                                      Mux(r_t.last, rq_q_last, round_words(tile_cols << 3))))]
        r_first_tile = [*r_t.load(tiles_m1, one_tile, two_tiles), r_b_addr.eq(job.b_addr), r_q_addr.eq(job.q_addr)]
        m.d.comb += self.rq_cmd.valid.eq(running & r_active & r_here)
        r_step = running & r_active & (~r_here | self.rq_cmd.ready)
        with m.If(r_step):
            with m.If(~r_bias):
                m.d.sync += [r_bias.eq(1), r_here.eq(need_b)]
            with m.Else():
                m.d.sync += r_bias.eq(0)
                with m.If(r_end):
                    # the next pass: the next chunk of this slice, or the next slice's first
                    m.d.sync += r_first_tile
                    with m.If(r_ch.last):
                        m.d.sync += [*r_ch.load(chunks_m1, one_chunk, two_chunks), *r_sl.step(), r_first_s.eq(0),
                                     *pass_flags(r_sl.next_last, 0, one_tile)]
                        with m.If(r_sl.last):
                            m.d.sync += r_active.eq(0)
                    with m.Else():
                        m.d.sync += [*r_ch.step(), *pass_flags(r_sl.last, r_first_s, one_tile)]
                with m.Else():
                    m.d.sync += [*r_t.step(), *pass_flags(r_sl.last, r_first_s, r_t.next_last),
                                 r_b_addr.eq(r_b_addr + (tile_cols << 2)), r_q_addr.eq(r_q_addr + (tile_cols << 3))]

        # -- outputs: partial-sum regions, then Y -------------------------------------------------
        o_s = Signal(8)
        o_q = Signal(33)
        # the chunk and tile loop ends as registered flags (down-counters of what follows)
        o_q_left = Signal(33)
        o_last_q = Signal()
        o_q_is1 = Signal()                   # o_q_left == 1: the chunk after this one is the last
        o_t_left = Signal(32)
        o_last_t = Signal()
        o_p_addr = Signal(64)                # p_addr + o_q x pstride, kept by addition (no product)
        o_b_left = Signal(range(geom.act_depth + 1))     # row blocks of the chunk after this one
        o_last_b = Signal()
        o_active = Signal()
        o_chunk = Signal(64)                 # y + first block of the chunk x nReb
        o_toff = Signal(64)
        o_boff = Signal(64)
        issued = Signal(32)
        o_last_slice = Signal()              # o_s == slices - 1
        # the output command is a register formed from the loop state of the cycle before (the
        # segment address is a three-term 64-bit sum): valid only when that state was current
        # (``o_fresh``: no command taken in that cycle or the one before, and not the first cycle of
        # the job). The loop steps a cycle after the take, from its register ``o_took`` (not from
        # the port's ready): two idle cycles after each command.
        o_cmd = Signal.like(self.out_cmd.payload)
        o_fresh = Signal()
        o_took = Signal()
        m.d.sync += [o_took.eq(self.out_cmd.valid & self.out_cmd.ready),
                     o_fresh.eq(~(self.out_cmd.valid & self.out_cmd.ready) & ~o_took)]
        m.d.comb += [self.out_cmd.valid.eq(running & o_active & o_fresh), self.out_cmd.payload.eq(o_cmd)]
        with m.If(~o_last_slice):
            m.d.sync += [o_cmd.addr.eq(o_p_addr), o_cmd.bytes.eq(Mux(o_last_q, plast, pstride))]
        with m.Elif(seg):
            m.d.sync += [o_cmd.addr.eq(job.y_addr + o_chunk + o_toff + o_boff),
                         o_cmd.bytes.eq(Mux(o_last_t, last_seg_bytes, seg_full))]
        with m.Else():
            m.d.sync += [o_cmd.addr.eq(job.y_addr), o_cmd.bytes.eq(o_total)]
        def blocks_of(last_q):
            """The row-block loop's start for a chunk (the job's last chunk when ``last_q``)."""
            return [o_b_left.eq(Mux(last_q, c_last_m1, blk_m1)), o_last_b.eq(Mux(last_q, c_last_one, blk_one))]

        with m.If(o_took):
            m.d.sync += issued.eq(issued + 1)

            def next_pass():
                new_last_q = Mux(o_last_q, one_chunk, o_q_is1)
                m.d.sync += blocks_of(new_last_q)
                with m.If(o_last_q):
                    m.d.sync += [o_q.eq(0), o_s.eq(o_s + 1), o_last_slice.eq(o_s == slices_m2),
                                 o_q_left.eq(chunks_m1), o_last_q.eq(one_chunk), o_q_is1.eq(two_chunks),
                                 o_p_addr.eq(job.p_addr)]
                    with m.If(o_last_slice):
                        m.d.sync += o_active.eq(0)
                with m.Else():
                    m.d.sync += [o_q.eq(o_q + 1), o_q_left.eq(o_q_left - 1), o_last_q.eq(o_q_is1),
                                 o_q_is1.eq(o_q_left == 2), o_p_addr.eq(o_p_addr + pstride)]

            with m.If(~o_last_slice):
                next_pass()
            with m.Elif(seg):
                m.d.sync += o_boff.eq(o_boff + nReb)
                with m.If(o_last_b):
                    m.d.sync += [*blocks_of(o_last_q), o_boff.eq(0), o_t_left.eq(o_t_left - 1),
                                 o_last_t.eq(o_t_left == 1), o_toff.eq(o_toff + seg_full)]
                    with m.If(o_last_t):
                        m.d.sync += [o_t_left.eq(tiles_m1), o_last_t.eq(one_tile), o_toff.eq(0),
                                     o_chunk.eq(o_chunk + nreb_chunk)]
                        next_pass()
                with m.Else():
                    m.d.sync += [o_b_left.eq(o_b_left - 1), o_last_b.eq(o_b_left == 1)]
            with m.Else():
                m.d.sync += o_active.eq(0)        # Y in one command: the job's last

        # -- job state -----------------------------------------------------------------------
        count = Signal(range(SETUP_CYCLES + 1))
        error = Signal()
        # job.ready from a flip-flop kept with the IDLE state (not a decode of the binary state):
        # the command processor's dispatch decision reads it
        idle_ff = Signal(init=1)
        m.d.comb += self.job.ready.eq(idle_ff)
        # the job's start and end decisions from flip-flops: SETUP's last cycle flagged a cycle
        # ahead; every output acknowledged (no output left to issue, and dones == issued) a cycle
        # late (the flag is clear in RUN's first cycle: o_active is set then)
        start_next = Signal()
        all_acked = Signal()
        m.d.sync += [start_next.eq(setup & (count == SETUP_CYCLES - 2)),
                     all_acked.eq(~o_active & (dones == issued))]
        m.d.comb += self.out_done.ready.eq(1)
        with m.If(self.out_done.valid):
            m.d.sync += [dones.eq(dones + 1), error.eq(error | self.out_done.payload.error)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.job.valid):
                    m.d.sync += idle_ff.eq(0)
                    jp = self.job.payload
                    m.d.sync += [job.load(jp), count.eq(0),
                                 pair.eq(self._pair_job(jp.wbits) & ~jp.n[0]),
                                 dense.eq(~jp.wbits[4]),
                                 int8.eq(self.job.payload.out_mode == OutMode.INT8),
                                 bias_on.eq(self.job.payload.bias == BiasMode.INT32)]
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.comb += [setup.eq(1), self.busy.eq(1)]
                m.d.sync += count.eq(count + 1)
                with m.If(start_next):
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(~o_active & all_acked):
                    m.d.sync += running.eq(0)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.done.valid.eq(1), self.done.payload.error.eq(error), self.busy.eq(1)]
                with m.If(self.done.ready):
                    m.d.sync += idle_ff.eq(1)
                    m.next = "IDLE"
        # the job's start: every loop's first state, outside the state machine (``start_next`` is
        # only set in SETUP's last cycle) so the loads need no decode of the state register; the
        # start pulse the other units reset with is that flip-flop too
        m.d.comb += self.start.eq(start_next)
        with m.If(start_next):
            m.d.sync += [ps.eq(0), p_first.eq(1), p_last_slice.eq(one_slice), p_q_left.eq(chunks_m1),
                         p_last_chunk.eq(one_chunk), p_rows_left.eq(job.m), p_active.eq(1),
                         a_s.eq(0), a_last_s.eq(one_slice), a_q.eq(0), a_active.eq(1), a_partial.eq(0),
                         a_q_left.eq(chunks_m1), a_last_q.eq(one_chunk), a_m_after.eq(job.m - c_rows),
                         a_p_addr.eq(job.p_addr), o_p_addr.eq(job.p_addr),
                         a_rows_left.eq(m_rows), a_chunk_row.eq(job.x_addr),
                         a_addr.eq(job.x_addr), a_koff.eq(0), pidx.eq(0), a_wait.eq(1),
                         *r_sl.load(slices_m1, one_slice, two_slices), r_first_s.eq(1),
                         *r_ch.load(chunks_m1, one_chunk, two_chunks), *r_first_tile,
                         *pass_flags(one_slice, 1, one_tile), r_bias.eq(0), r_active.eq(1),
                         o_s.eq(0), o_last_slice.eq(one_slice), o_q.eq(0), o_q_left.eq(chunks_m1),
                         o_last_q.eq(one_chunk), o_q_is1.eq(two_chunks),
                         o_t_left.eq(tiles_m1), o_last_t.eq(one_tile), *blocks_of(one_chunk), o_active.eq(1),
                         o_chunk.eq(0),
                         o_toff.eq(0), o_boff.eq(0), issued.eq(0), dones.eq(0), error.eq(0),
                         o_fresh.eq(0)]
            m.d.sync += resets
            m.d.sync += running.eq(1)
        return m
