"""The vector engine: element-wise and row-wise ops between layers, one block of rows at a time.

Dataflow (docs/engines/vector.md)::

    job -> issuer:   src_cmd  column tables (once per job), then per row block: row scales, A, B,
                              RoPE rows, block-table words
    src_data -> receiver -> param memories | row-scale registers | tile A / tile B (R row memories:
                            blocked words scatter over the rows, row-major words fill one row) |
                            RoPE rows | page registers
    per block:  SWEEP1  tile A, B -> ElementPipe (dequantize, bias, GELU/SiLU, add/mul, RoPE) -> tile A
                        + row sums (norm) or group absmax (quantized outputs)
                SCALAR  V -> Rsqrt (per row)          SWEEP2  tile A -> NormApply -> tile A + group absmax
                QPARAM  group absmax -> QuantParams -> qp memory (multiplier, shift, scale/mantissa record)
                STORE   micro-ops (tile words, trailers, records, mantissa words) -> ChunkQuantizer ->
                        chunk FIFO -> packer -> out_* (RES32, ACT8, QREC) or sw_*[port] (KV values and
                        mantissa words; the mantissa word is read first through w_*[port] and merged)

The issuer runs ahead of the receiver (the shell's reader buffers what it fetched), so the reads of
block ``b+1`` overlap the sweeps and the store of block ``b``; the receiver writes block ``b+1``
into the tiles only after block ``b`` is stored. Every DMA stream tolerates back-pressure at any
cycle; the sweeps and the quantizer have fixed latencies and are issued only with room downstream.
"""
from __future__ import annotations

import operator
from functools import reduce
from types import SimpleNamespace
from typing import NamedTuple

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory

from hbmforge.encodings import VectorIn, VectorNorm, VectorOut
from hbmforge.engines.attention import attention_geometry
from hbmforge.engines.vector import RSQRT_FRAC, vector_geometry
from hbmforge.layout import DesignLayout
from hbmforge.mathutil import exact_log2
from hbmforge.numerics.vector import rsqrt_in_bits

from ..nonlinear.rsqrt import Rsqrt
from ..counters import step_count
from ..onehot import OneHotFSM
from ..skid import SkidBuffer, slice_stream
from ..products import pipelined_product, pipelined_sum
from .arith import delayed, lanes_of, registered, valid_chain, word_of
from .elementwise import ElementPipe
from .normapply import NormApply
from .qparams import QuantParams
from .quantize import ChunkQuantizer
from .signature import vector_signature
from .tilemem import InterleavedTileMemory

__all__ = ["VectorEngine"]

# load items, in the order the issuer and the receiver walk them (per job, then per row block);
# the operands come last so that SWEEP1 can follow the receiver through the last one
_ACOL, _BCOL, _BIAS, _GAMMA, _BETA, _CONSTS, _POOLS, _SCALE, _ROPE, _BT, _A, _B = range(12)
_FIRST_BLOCK_ITEM, _LAST_ITEM = _SCALE, _B
_PARAMS = (_ACOL, _BCOL, _BIAS, _GAMMA, _BETA)

# store micro-ops
_VAL, _BLK, _TRL, _ZERO, _SCL, _MNT = range(6)
# well above ElementPipe.LATENCY + 3: a direct sweep streams at full rate with its room signal
# two cycles old (at 32 entries, LATENCY 26, the direct residual add lost 16 cycles a row)
_CHUNK_FIFO = 1 << (ElementPipe.LATENCY + 6).bit_length()


def _walk_rows(m: Module, active, row, rows, item, items, step=1) -> None:
    """While ``active`` (and ``step``): step ``item`` through ``items``, then ``row`` through ``rows``;
    clear ``active`` after the last (both counters back at 0). The bounds minus one are registered
    every cycle (they settle before a walk starts: job constants and the block's row count), so
    the loop ends are equalities of flip-flops, not an add and compare."""
    items_m1, rows_m1 = Signal.like(item), Signal.like(row)
    m.d.sync += [items_m1.eq(items - 1), rows_m1.eq(rows - 1)]
    with m.If(active & step):
        with m.If(item == items_m1):
            m.d.sync += item.eq(0)
            with m.If(row == rows_m1):
                m.d.sync += [row.eq(0), active.eq(0)]
            with m.Else():
                m.d.sync += row.eq(row + 1)
        with m.Else():
            m.d.sync += item.eq(item + 1)


def _counter_times(m: Module, k, start, step, *, name: str) -> Signal:
    """``count * k`` mod 2^64 of a counter that ``start`` clears and ``step`` advances, kept by
    addition (no product on the path that reads it)."""
    out = Signal(64, name=name)
    with m.If(start):
        m.d.sync += out.eq(0)
    with m.Elif(step):
        m.d.sync += out.eq(out + k)
    return out


class _Walker(NamedTuple):
    """A load-item walker's registers and step pulses (see ``VectorEngine.elaborate``)."""
    item: Signal
    blk: Signal
    r: Signal
    done: Signal
    inc: Signal
    nv: Signal
    r_step: Signal
    r_clear: Signal
    en: Signal
    row: Signal
    last: Signal
    block_item: Signal
    after: Signal


class _KVRowAddresses(NamedTuple):
    """What :func:`_kv_row_addresses` gives the store: ``ok`` (the registers hold the present
    (bank, row)'s addresses), the token's ``slot`` in its page, the row's first head's ``vaddr``
    / ``maddr``, and the row's offsets in a pool ``v_off`` / ``m_off``."""
    ok: Signal
    slot: Signal
    vaddr: Signal
    maddr: Signal
    v_off: Signal
    m_off: Signal


def _kv_row_addresses(m: Module, att, j, pages, pools, cbank, st_r, r0, multi, hg, int4, *, LOGR: int,
                      LOGW8: int, event) -> _KVRowAddresses:
    """A KV append row's addresses, from a free-running register pipeline on (bank, row).

    ``page x (heads per group x head area)`` is a :func:`pipelined_product`; the slot offsets
    (value bytes, mantissa word) and the pool are registered beside it, then added in two
    registered steps. ``ok`` is low from any change of (bank, row) or an ``event`` (a job start,
    a block-table or pool word) until the pipeline has caught up: nothing reads a stale address.
    """
    P, ng = att.page_tokens, att.head_dim // att.group_size
    ha4 = att.head_area(4) if 4 in att.kv_bits else att.head_area(8)
    ha8 = att.head_area(8)
    vb4 = att.value_bytes(4) if 4 in att.kv_bits else att.value_bytes(8)
    vb8 = att.value_bytes(8)
    max_heads = (1 << len(hg)) - 1
    lp = exact_log2(P)
    hg_ha = Signal(range(max_heads * max(ha4, ha8) + 1), name="kvr_hg_ha")
    # the head area and the heads per group registered before their product (the format's
    # decode and the group count's shift stay out of the DSP's inputs): one more register after
    # a job start, counted in ``depth`` below
    ha = registered(m, range(max(ha4, ha8) + 1), Mux(int4, ha4, ha8), name="kvr_ha")
    hg_r = registered(m, range(max_heads + 1), hg, name="kvr_hg")
    m.d.sync += hg_ha.eq(hg_r * ha)
    page = registered(m, 32, pages[(cbank << LOGR) + st_r], name="kvr_page")
    slot = registered(m, range(P), (j.pos0[:lp] + r0[:lp] + st_r)[:lp] if lp else 0, name="kvr_slot")
    pool0 = registered(m, 64, Mux(multi, pools[0], j.pool), name="kvr_pool0")
    page_off, lat = pipelined_product(m, page, hg_ha, name="kvr_page_off")
    v_slot = registered(m, 32, att.scale_area + Mux(int4, slot * vb4, slot * vb8), name="kvr_v_slot")
    m_slot = registered(m, 32, ((slot * (ng * 2)) >> LOGW8) << LOGW8, name="kvr_m_slot")
    v_off = registered(m, 64, page_off + delayed(m, v_slot, lat - 1, name="kvr_v_slot"), name="kvr_v_off")
    m_off = registered(m, 64, page_off + delayed(m, m_slot, lat - 1, name="kvr_m_slot"), name="kvr_m_off")
    pool0_d = delayed(m, pool0, lat + 1, name="kvr_pool0")
    vaddr = registered(m, 64, pool0_d + v_off, name="kvr_vaddr")
    maddr = registered(m, 64, pool0_d + m_off, name="kvr_maddr")
    # an input changed at the edge that began this cycle (key) or the one before it (event,
    # registered: a receiver's handshake stays off the store's state): vaddr shows it at most
    # lat + 3 registers later (lat + 4 for the format's head area after a job start)
    depth = lat + 4
    key = Cat(cbank, st_r)
    key_prev = registered(m, len(key), key, name="kvr_key_prev")
    changed = (key != key_prev) | registered(m, 1, event, name="kvr_event")
    wait = Signal(range(depth + 1), name="kvr_wait")
    settled = Signal(init=1, name="kvr_settled")     # wait == 0, as a register beside it
    with m.If(changed):
        m.d.sync += [wait.eq(depth), settled.eq(0)]
    with m.Elif(~settled):
        m.d.sync += [wait.eq(wait - 1), settled.eq(wait == 1)]
    ok = Signal(name="kvr_ok")
    m.d.comb += ok.eq(settled & ~changed)
    return _KVRowAddresses(ok, slot, vaddr, maddr, v_off, m_off)


def _block_rows(m: Module, name: str, R: int, m_rows, start, step) -> tuple[Signal, Signal]:
    """Registered ``(rows, last)`` of a block counter that ``start`` resets (``m_rows``: the job's
    row count at that moment) and ``step`` advances: the valid rows of the current block,
    ``min(m - blk*R, R)``, and whether it is the job's last block (``m >= 1``). Kept beside the
    counter from ``m - blk*R`` so that no 33-bit subtraction and compare sits on the walkers'
    and the sweep's paths."""
    left = Signal(33, name=f"{name}_left")          # m - blk*R
    rows = Signal(range(R + 1), name=f"{name}_nv")
    last = Signal(name=f"{name}_last")
    with m.If(start):
        m.d.sync += [left.eq(m_rows), rows.eq(Mux(m_rows > R, R, m_rows)), last.eq(m_rows <= R)]
    with m.Elif(step):
        m.d.sync += [left.eq(left - R), rows.eq(Mux(left > 2 * R, R, left - R)), last.eq(left <= 2 * R)]
    return rows, last


class VectorEngine(wiring.Component):
    """The vector engine of a :class:`~hbmforge.layout.DesignLayout` with a ``vector`` engine."""

    def __init__(self, layout: DesignLayout):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {type(layout).__name__}")
        if layout.config.engine("vector") is None:
            raise ValueError(f"config {layout.config.name!r} has no vector engine")
        g = vector_geometry(layout)
        if g.lanes < 2:
            raise ValueError(f"the vector engine needs ports of at least 64 bits, got {layout.config.data_width}")
        if g.max_dim < 4 * g.lanes:
            raise ValueError(f"max_dim {g.max_dim} must hold at least one int8 port word ({4 * g.lanes} elements)")
        if g.has_attention and g.kv_group_size < g.lanes:
            raise ValueError(f"kv_group_size {g.kv_group_size} is below the vector engine's {g.lanes} lanes "
                             f"({layout.config.data_width}-bit ports): a KV group must fill a port word of int32")
        self._layout = layout
        self._geom = g
        super().__init__(vector_signature(layout))

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    @property
    def geometry(self):
        return self._geom

    # ------------------------------------------------------------------------------------------
    def _table_loader(self, m: Module, j, start, enabled, mems, *, LOGL: int, DW: int):
        """The per-column tables through the table port (config ``table_port``): each table the job
        uses (a_cols, b_cols, bias, gamma, beta, in that order) one command of ``dim x 4`` bytes into
        its memory, while the operands come through the data port.

        Returns ``(take, tables_in, avail)``: the word handshake (the stall counter's), every table
        in (the norm's second sweep waits for it), and the words of the element tables (a_cols,
        b_cols, bias) the first sweep may use (``DW``: all; it follows them word by word, as it
        follows the operands)."""
        T = self._geom.table_port
        # the table words through a register slice: the receiver's word-end flags start at its
        # flip-flops, not at the port's valid as the shell selects it
        cmd, dat = self.w_cmd[T], stream.Signature(len(self.w_data[T].payload)).create()
        slice_stream(m, "tbl_data_slice", self.w_data[T], dat)
        n = len(mems)
        n_elem = 3                                   # a_cols, b_cols, bias: read by the first sweep
        en = [Signal(name=f"tbl_en{i}") for i in range(n)]
        bases = [j.a_cols, j.b_cols, j.bias_addr, j.gamma_addr, j.beta_addr]
        assert len(bases) == n

        # issuer: the command is registered from (item, job) and offered a cycle after either changes
        ii = Signal(range(n), name="tbl_iss")
        i_run, stale, adv = Signal(name="tbl_iss_run"), Signal(name="tbl_stale"), Signal(name="tbl_adv")
        c_addr, c_bytes = Signal(64, name="tbl_addr"), Signal(32, name="tbl_bytes")
        m.d.sync += [c_addr.eq(Array(bases)[ii]), c_bytes.eq(j.dim << 2), stale.eq(start | adv)]
        m.submodules.tbl_cmd_slice = sl = SkidBuffer(96)
        cur = Array(en)[ii]
        m.d.comb += [sl.i.payload.eq(Cat(c_addr, c_bytes)), sl.i.valid.eq(i_run & ~stale & cur),
                     adv.eq(i_run & ~stale & (~cur | sl.i.ready)),
                     cmd.payload.addr.eq(sl.o.payload[:64]), cmd.payload.bytes.eq(sl.o.payload[64:]),
                     cmd.valid.eq(sl.o.valid), sl.o.ready.eq(cmd.ready)]
        with m.If(start):
            m.d.sync += [e.eq(v) for e, v in zip(en, enabled)] + [ii.eq(0), i_run.eq(1)]
        with m.Elif(adv):
            m.d.sync += ii.eq(ii + 1)
            with m.If(ii == n - 1):
                m.d.sync += [ii.eq(0), i_run.eq(0)]

        # receiver: the words of each enabled table in order, into its memory
        ri = Signal(range(n), name="tbl_rx")
        rw = Signal(range(DW + 1), name="tbl_word")
        r_run = Signal(name="tbl_rx_run")
        tables_in = Signal(name="tbl_in")
        words_m1 = Signal(range(DW + 1), name="tbl_words_m1")
        words_m2 = Signal(range(DW + 1), name="tbl_words_m2")
        one_word = Signal(name="tbl_one_word")
        m.d.sync += [words_m1.eq((j.dim >> LOGL) - 1), words_m2.eq((j.dim >> LOGL) - 2),
                     one_word.eq((j.dim >> LOGL) == 1)]
        # the current table's enable as a flip-flop, r_ready (the port's FIFO level follows this
        # ready): the enables not yet reached shift down at each advance, so the next one is a
        # register too; the table's last word (rw == words_m1) a flag kept beside rw, recomputed
        # every cycle (the job's sizes settle two cycles after its start, long before its first
        # table word returns). The advance is then one LUT.
        r_ready = Signal(name="tbl_rx_ready")
        pending = Signal(n, name="tbl_pending")
        rw_last = Signal(name="tbl_word_last")
        take = Signal(name="tbl_take")
        r_adv = Signal(name="tbl_rx_adv")
        m.d.comb += [dat.ready.eq(r_ready), take.eq(dat.valid & dat.ready),
                     r_adv.eq(r_run & (~r_ready | (dat.valid & rw_last)))]
        for k, (_, wp, _) in enumerate(mems):
            m.d.comb += [wp.addr.eq(rw), wp.data.eq(dat.payload), wp.en.eq(take & (ri == k))]
        # the element tables: in once the receiver is past the last one the job uses; while in that
        # one, its first rw words are (registered: a word is swept a cycle after it could be)
        last_elem = Signal(range(n_elem + 1), name="tbl_last_elem")     # n_elem: the job uses none
        elem_in = Signal(name="tbl_elem_in")
        avail = Signal(range(DW + 1), name="tbl_avail")
        m.d.sync += avail.eq(Mux(elem_in, DW, Mux(ri == last_elem, rw, 0)))
        with m.If(start):
            last = n_elem
            for i in range(n_elem):
                last = Mux(enabled[i], i, last)
            m.d.sync += [ri.eq(0), rw.eq(0), r_run.eq(1), tables_in.eq(0), last_elem.eq(last),
                         elem_in.eq(~Cat(*enabled[:n_elem]).any()), avail.eq(0), r_ready.eq(enabled[0]),
                         pending.eq(Cat(*enabled[1:]))]
        with m.Else():
            m.d.sync += rw_last.eq(rw == words_m1)
            with m.If(take):
                m.d.sync += [rw.eq(rw + 1), rw_last.eq(rw == words_m2)]
            with m.If(r_adv):
                m.d.sync += [rw.eq(0), ri.eq(ri + 1), r_ready.eq(pending[0]), pending.eq(pending >> 1),
                             rw_last.eq(one_word)]
                with m.If(ri == last_elem):
                    m.d.sync += elem_in.eq(1)
                with m.If(ri == n - 1):
                    m.d.sync += [ri.eq(0), r_run.eq(0), tables_in.eq(1)]
        return take, tables_in, avail

    def elaborate(self, platform):  # noqa: C901 - one sequencer, its parts in order
        m = Module()
        lay, g = self._layout, self._geom
        W, W8, L, R = lay.config.data_width, lay.word_bytes, g.lanes, g.rows
        LOGL, LOGR, LOGW8 = exact_log2(L), exact_log2(R), exact_log2(W8)
        DW = g.max_dim // L                         # tile words per row
        # tile words one store micro-op quantizes (ACT8 rows, Q records, KV values; config
        # store_words): four make a whole port word of int8, a word a cycle (one every four with one)
        ways = g.store_words
        SB = g.scale_block_bytes
        SBW = SB // W8
        att = attention_geometry(lay) if g.has_attention else None
        if att is not None:
            hd, G, P = att.head_dim, att.group_size, att.page_tokens
            ng = hd // G
            RB = g.rope_row_bytes
            RW = RB // W8
            QRB = att.q_record_bytes
            GPR = g.max_dim // min(G, hd)           # groups per row (KV groups are the smallest)
            max_heads = g.max_dim // hd
            CW = -(-max_heads * 8 // W8)
            span_words = max(1, ng * 2 // W8)
        else:
            hd = G = P = ng = RB = RW = QRB = 0
            GPR, max_heads, CW, span_words = 1, 1, 1, 1
        # a KV head's value words in ops of `ways` words too when they fill whole ops; such an op spans
        # kv_span scale groups of G >= L elements (each its own multiplier: a qp read port per group)
        if att is not None and ways > 1 and (hd // L) % ways == 0:
            kv_ways, kv_span = ways, max(1, ways * L // G)
        else:
            kv_ways, kv_span = 1, 1
        NG = g.max_kv_groups if att is not None else 1      # port groups of one KV append
        group_choices = [n for n in g.kv_group_choices() if n >= 2] if att is not None else []

        j = Signal(self.job.payload.shape())      # the job being run
        busy = Signal()
        kv_mode = j.out_fmt == VectorOut.KV
        quant_out = j.out_fmt != VectorOut.RES32
        dw = Signal(range(DW + 1))
        m.d.comb += dw.eq(j.dim >> LOGL)
        blk_inc = Signal()                   # the block pipeline's blk steps this cycle
        heads = Signal(range(max_heads + 1))
        m.d.comb += heads.eq(j.dim >> exact_log2(hd) if hd else 0)
        int4 = Signal()
        multi = Signal()                     # a KV append over kv_groups >= 2 port groups
        m.d.comb += multi.eq(kv_mode & (j.kv_groups > 1))
        hg = Signal(range(max_heads + 1))    # heads per port group
        m.d.comb += hg.eq(heads)
        for n in group_choices:
            with m.If(multi & (j.kv_groups == n)):
                m.d.comb += hg.eq(heads >> exact_log2(n))
        m.d.comb += int4.eq(kv_mode & (j.kv_bits == 4))

        # -- memories ------------------------------------------------------------------------
        def mem(name, depth, shape=W, granular=False):
            mm = Memory(shape=shape, depth=max(depth, 2), init=[])
            m.submodules[name] = mm
            wp = mm.write_port(granularity=32) if granular else mm.write_port()
            return mm, wp, mm.read_port(domain="sync")

        # two banks per row, each its own memory: the receiver fills block b+1 into one while
        # block b is computed (read and written back) and stored from the other
        class _Port:
            def __init__(self, name):
                self.addr = Signal(range(DW), name=f"{name}_addr")
                self.data = Signal(W, name=f"{name}_data")
                self.en = Signal(L, name=f"{name}_en")
                self.we = Signal(name=f"{name}_we")      # the port writes (en is its lane pattern)

        def interleaved(name):
            """Tile A's bank: ``ways`` words a read for the wide store (``.wide``)."""
            tm = InterleavedTileMemory(width=W, depth=DW, ways=ways, granularity=32)
            m.submodules[name] = tm
            return (tm, SimpleNamespace(addr=tm.w_addr, data=tm.w_data, en=tm.w_en),
                    SimpleNamespace(addr=tm.r_addr, data=tm.r_data))

        def tile(name, make):
            rows = []
            for r in range(R):
                banks = [make(f"{name}{r}_bank{k}") for k in range(2)]
                rows.append((banks, _Port(f"{name}{r}_rx"), _Port(f"{name}{r}_sw")))
            return rows

        tile_a = tile("tile_a", interleaved)
        tile_b = tile("tile_b", lambda name: mem(name, DW, granular=True))
        pms = {item: mem(f"pm{item}", DW) for item in _PARAMS}
        rope_mem = mem("rope", 2 * R * RW) if att else None
        consts_mem = mem("consts", CW) if att else None
        gmax_mem = mem("gmax", R * GPR, shape=32)
        qp_mem = mem("qp", R * GPR, shape=64)

        row_a = Array(Signal(16, name=f"row_a{r}") for r in range(2 * R))       # [bank * R + row]
        row_e = Array(Signal(5, name=f"row_e{r}") for r in range(2 * R))
        pages = Array(Signal(32, name=f"page{r}") for r in range(2 * R))
        pools = Array(Signal(64, name=f"pool{i}") for i in range(NG))          # kv_groups: the pool table
        blk = Signal(32)                     # the block being computed / stored
        blk_zero = Signal()                  # blk == 0, a flag set beside it (no 32-bit compare)
        cbank = Signal()                     # its bank
        m.d.comb += cbank.eq(blk[0])
        row_rec = Array(Signal(32, name=f"row_rec{r}") for r in range(R))   # ACT8 scale records out

        # -- the job ---------------------------------------------------------------------------
        all_done = Signal()
        err = Signal()
        m.d.comb += [self.job.ready.eq(~busy), self.busy.eq(busy)]
        start = Signal()
        m.d.comb += start.eq(self.job.valid & ~busy)
        with m.If(start):
            m.d.sync += [j.eq(self.job.payload), busy.eq(1), err.eq(0)]
        m.d.comb += [self.done.valid.eq(busy & all_done), self.done.payload.error.eq(err)]
        with m.If(self.done.valid & self.done.ready):
            m.d.sync += busy.eq(0)

        # -- load walkers ----------------------------------------------------------------------
        has_b = Signal()
        m.d.comb += has_b.eq(j.b_fmt != VectorIn.NONE)
        def item_tables(jj):
            """Per load item of the job record ``jj``: enabled, walked per row, its words."""
            kv = jj.out_fmt == VectorOut.KV
            words_dw = jj.dim >> LOGL
            enabled_ = {
                _ACOL: jj.a_fmt != VectorIn.RES32,
                _BCOL: (jj.b_fmt == VectorIn.ACC32) | (jj.b_fmt == VectorIn.ROWS32),
                _BIAS: jj.bias,
                _GAMMA: jj.norm != VectorNorm.NONE,
                _BETA: jj.norm == VectorNorm.LAYER,
                _CONSTS: (jj.out_fmt == VectorOut.QREC) | kv,
                _POOLS: kv & (jj.kv_groups > 1),
                _SCALE: jj.a_fmt == VectorIn.ACC32,
                _ROPE: jj.rope,
                _BT: kv,
                _A: Const(1),
                _B: jj.b_fmt != VectorIn.NONE,
            }
            per_row_ = {_ROPE: Const(1), _BT: Const(1), _A: jj.a_fmt == VectorIn.ROWS32,
                        _B: jj.b_fmt == VectorIn.ROWS32}
            heads_ = jj.dim >> exact_log2(hd) if hd else Const(0, 1)
            words = {item: words_dw for item in _PARAMS}
            words.update({
                _CONSTS: (heads_ * 8 + (W8 - 1)) >> LOGW8,
                _POOLS: (jj.kv_groups * 8 + (W8 - 1)) >> LOGW8,
                _SCALE: Const(SBW, 32),
                _A: Mux(jj.a_fmt == VectorIn.ROWS32, words_dw, words_dw * R),
                _B: Mux(jj.b_fmt == VectorIn.ROWS32, words_dw, words_dw * R),
                _ROPE: Const(RW, 32),
                _BT: Const(1, 32),
            })
            return enabled_, per_row_, words

        # the tables as registers, loaded from the job as it starts (j is constant while busy): the
        # walkers' and the receiver's handshakes read a flip-flop through a small mux instead of
        # the job's fields through their compares
        t_en, t_row, t_words = item_tables(self.job.payload)
        # with a table port the per-column tables come through it (the table loader below), not in
        # the data port's item sequence
        main_en = {i: (Const(0) if g.table_port is not None and i in _PARAMS else v) for i, v in t_en.items()}
        items = range(_LAST_ITEM + 1)
        en_r = [Signal(name=f"item_en{i}") for i in items]
        row_r = [Signal(name=f"item_per_row{i}") for i in items]
        words_m1 = [Signal(32, name=f"item_words_m1_{i}") for i in items]
        one_word = [Signal(name=f"item_one_word{i}") for i in items]
        with m.If(start):
            m.d.sync += [en_r[i].eq(main_en[i]) for i in items]
            m.d.sync += [row_r[i].eq(t_row.get(i, Const(0))) for i in items]
            m.d.sync += [words_m1[i].eq(t_words.get(i, Const(1, 32)) - 1) for i in items]
            m.d.sync += [one_word[i].eq(t_words.get(i, Const(1, 32)) == 1) for i in items]

        def walker(name, advance):
            """An item walker: (item, blk, r) over the job's load items, block by block. The
            current item's table flags (enabled, walked per row, a block item, the last item) are
            registers loaded as the item changes, so a handshake reads a flip-flop, not a mux of
            the tables."""
            item = Signal(range(_LAST_ITEM + 1), name=f"{name}_item")
            blk = Signal(32, name=f"{name}_blk")
            r = Signal(range(R), name=f"{name}_r")
            done = Signal(name=f"{name}_done")
            inc = Signal(name=f"{name}_blk_inc")     # blk steps this cycle
            r_step = Signal(name=f"{name}_r_step")   # r steps this cycle
            r_clear = Signal(name=f"{name}_r_clear") # r returns to 0 for the next item of the block
            en, row, last = Signal(name=f"{name}_en"), Signal(name=f"{name}_per_row"), Signal(name=f"{name}_last")
            block_item = Signal(name=f"{name}_block_item")
            # the item after this one (the block's first after its last), a register loaded with
            # the item: the tables it selects (e.g. the receiver's words) start at a flip-flop
            after = Signal.like(item, name=f"{name}_after")
            nv, last_blk = _block_rows(m, name, R, self.job.payload.m, start, inc)

            def load_flags(i, en_of, row_of):
                m.d.sync += [item.eq(i), en.eq(en_of(i)), row.eq(row_of(i)), last.eq(i == _LAST_ITEM),
                             block_item.eq(i >= _FIRST_BLOCK_ITEM),
                             after.eq(Mux(i == _LAST_ITEM, _FIRST_BLOCK_ITEM, i + 1))]

            with m.If(start):
                m.d.sync += [blk.eq(0), r.eq(0), done.eq(0)]
                load_flags(_ACOL, lambda i: main_en[i], lambda i: t_row.get(i, Const(0)))
            with m.Elif(advance & ~done):
                with m.If(row & (r + 1 < nv)):
                    m.d.comb += r_step.eq(1)
                    m.d.sync += r.eq(r + 1)
                with m.Else():
                    m.d.sync += r.eq(0)
                    load_flags(after, lambda i: Array(en_r)[i], lambda i: Array(row_r)[i])
                    with m.If(last):
                        m.d.comb += inc.eq(1)
                        m.d.sync += blk.eq(blk + 1)
                        with m.If(last_blk):
                            m.d.sync += done.eq(1)
                    with m.Else():
                        m.d.comb += r_clear.eq(1)
            return _Walker(item, blk, r, done, inc, nv, r_step, r_clear, en, row, last, block_item, after)

        # issuer
        iss_adv = Signal()
        iw = walker("iss", iss_adv)
        i_item, i_done, i_inc, i_step, i_clear = iw.item, iw.done, iw.inc, iw.r_step, iw.r_clear

        # the issuer's addresses, kept by additions as the walker steps: i_row * stride,
        # i_blk * stride and the RoPE / block-table positions (a 33 x 64-bit product on the
        # command path was 127 MHz by Yosys)
        def rows_times(k, name):
            """``i_row * k`` (``i_row = i_blk * R + i_r``), mod 2^64."""
            blk_part, row = Signal(64, name=f"{name}_blk"), Signal(64, name=f"{name}_row")
            with m.If(start):
                m.d.sync += [blk_part.eq(0), row.eq(0)]
            with m.Elif(i_inc):
                m.d.sync += [blk_part.eq(blk_part + (k << LOGR)), row.eq(blk_part + (k << LOGR))]
            with m.Elif(i_clear):
                m.d.sync += row.eq(blk_part)
            with m.Elif(i_step):
                m.d.sync += row.eq(row + k)
            return row

        def blocks_times(k, name):
            """``i_blk * k``, mod 2^64."""
            return _counter_times(m, k, start, i_inc, name=name)

        scale_off = blocks_times(SB, "iss_scale_off")
        offsets = {item: (rows_times(stride, f"iss_{x}_row_off"), blocks_times(stride, f"iss_{x}_blk_off"))
                   for item, x, stride in ((_A, "a", j.a_stride), (_B, "b", j.b_stride))}
        if att is not None:
            # i_pos = pos0 + i_row; the RoPE row address rope_addr + i_pos * RB
            rope_base = Signal(64)
            m.d.sync += rope_base.eq(j.rope_addr + j.pos0 * RB)   # settles long before the first block item
            rope_off = rows_times(Const(RB, 64), "iss_rope_off")
            i_pos = Signal(34)
            m.d.comb += i_pos.eq(rows_times(Const(1, 64), "iss_row") + j.pos0)
        # the base + offset sums registered first (one 64-bit carry chain each, side by side), then
        # the item mux into the command register
        scale_addr = registered(m, 64, j.a_scale + scale_off, name="iss_scale_addr")
        item_addr = {item: registered(m, 64, Mux(fmt == VectorIn.ROWS32, base + offsets[item][0],
                                                 base + offsets[item][1]), name=f"iss_{x}_addr")
                     for item, x, fmt, base in ((_A, "a", j.a_fmt, j.a_addr), (_B, "b", j.b_fmt, j.b_addr))}
        if att is not None:
            rope_addr = registered(m, 64, rope_base + rope_off, name="iss_rope_addr")
            bt_addr = registered(m, 64, j.bt_addr + ((((i_pos >> exact_log2(P)) << 2) >> LOGW8) << LOGW8),
                                 name="iss_bt_addr")
        addr = Signal(64)
        nbytes = Signal(32)
        with m.Switch(i_item):
            for item, base in ((_ACOL, j.a_cols), (_BCOL, j.b_cols), (_BIAS, j.bias_addr), (_GAMMA, j.gamma_addr),
                               (_BETA, j.beta_addr)):
                with m.Case(item):
                    m.d.comb += [addr.eq(base), nbytes.eq(j.dim << 2)]
            with m.Case(_CONSTS):
                m.d.comb += [addr.eq(j.consts_addr),
                             nbytes.eq(((heads * 8 + (W8 - 1)) >> LOGW8) << LOGW8)]
            with m.Case(_POOLS):
                m.d.comb += [addr.eq(j.pool), nbytes.eq(((j.kv_groups * 8 + (W8 - 1)) >> LOGW8) << LOGW8)]
            with m.Case(_SCALE):
                m.d.comb += [addr.eq(scale_addr), nbytes.eq(SB)]
            for item, fmt in ((_A, j.a_fmt), (_B, j.b_fmt)):
                with m.Case(item):
                    m.d.comb += [addr.eq(item_addr[item]),
                                 nbytes.eq(Mux(fmt == VectorIn.ROWS32, j.dim << 2, (j.dim << 2) * R))]
            if att is not None:
                with m.Case(_ROPE):
                    m.d.comb += [addr.eq(rope_addr), nbytes.eq(RB)]
                with m.Case(_BT):
                    m.d.comb += [addr.eq(bt_addr), nbytes.eq(W8)]
        # the command is registered before its slice (the item mux ends at a flip-flop): it is
        # computed from the walker's state, which only an advance (or the start) changes, through
        # the registered sums, so a command waits two cycles after each of them
        cmd = Signal(len(self.src_cmd.payload.as_value()))
        cmd_stale, sums_stale = Signal(), Signal()
        m.d.sync += [cmd.eq(Cat(addr, nbytes)), sums_stale.eq(iss_adv | start), cmd_stale.eq(sums_stale)]
        # the command leaves through a register slice: the port never sees the issuer's logic
        m.submodules.src_cmd_slice = cmd_slice = SkidBuffer(len(cmd))
        m.d.comb += [cmd_slice.i.payload.eq(cmd),
                     self.src_cmd.payload.as_value().eq(cmd_slice.o.payload), self.src_cmd.valid.eq(cmd_slice.o.valid),
                     cmd_slice.o.ready.eq(self.src_cmd.ready)]
        i_en = Signal()
        waiting = sums_stale | cmd_stale
        m.d.comb += i_en.eq(busy & ~i_done & iw.en & ~waiting)
        m.d.comb += cmd_slice.i.valid.eq(i_en)
        m.d.comb += iss_adv.eq(busy & ~i_done & (~iw.en | (cmd_slice.i.ready & ~waiting)))

        # receiver
        rx_adv = Signal()
        rx = walker("rx", rx_adv)
        r_item, r_blk, r_r, r_done, r_inc = rx.item, rx.blk, rx.r, rx.done, rx.inc
        rbank = Signal()
        m.d.comb += rbank.eq(r_blk[0])
        # r_blk - blk, kept in a register beside the two counters: comparing r_blk with blk + 1 put
        # a 32-bit add and compare on the receiver's ready (24 LUT levels, 86 MHz by Yosys)
        r_lead = Signal(range(3))
        with m.If(start):
            m.d.sync += r_lead.eq(0)
        with m.Else():
            m.d.sync += r_lead.eq(r_lead + r_inc - blk_inc)
        r_allowed = Signal()                 # a block's bank is free once the block two before is stored
        m.d.comb += r_allowed.eq(busy & ~r_done & (~rx.block_item | (r_lead != 2)))
        rw = Signal(32)                      # word within the item
        take = Signal()
        # the data port's words through a register slice: the kernel's routing (by the active
        # engine) and the receiver's write decisions are separate register stages, and the
        # port's FIFO never sees the receiver's ready logic (one cycle of latency)
        m.submodules.src_slice = src = SkidBuffer(W)
        m.d.comb += [src.i.valid.eq(self.src_data.valid), src.i.payload.eq(self.src_data.payload),
                     self.src_data.ready.eq(src.i.ready)]
        m.d.comb += [src.o.ready.eq(r_allowed & rx.en), take.eq(src.o.valid & src.o.ready)]
        # words left after this one, and whether it is the item's last: registers, as the flags
        rw_left = Signal(32)
        rw_last = Signal()
        last_word = take & rw_last
        m.d.comb += rx_adv.eq(r_allowed & (~rx.en | last_word))
        # the current item's and the next item's word counts as registers, stepped as the walker
        # loads its next item (the next one's looked up from the walker's ``after``): the advance
        # only selects a flip-flop, no item-indexed table sits behind it
        cur_m1, nxt_m1 = Signal(32, name="rx_cur_words_m1"), Signal(32, name="rx_nxt_words_m1")
        cur_one, nxt_one = Signal(name="rx_cur_one_word"), Signal(name="rx_nxt_one_word")
        first_after = _ACOL + 1
        with m.If(start):
            m.d.sync += [cur_m1.eq(t_words[_ACOL] - 1), cur_one.eq(t_words[_ACOL] == 1),
                         nxt_m1.eq(t_words.get(first_after, Const(1, 32)) - 1),
                         nxt_one.eq(t_words.get(first_after, Const(1, 32)) == 1)]
        with m.Elif(rx_adv & ~rx.done & ~rx.r_step):
            # indexed by ``after`` itself: entry i holds the counts of the item after item i
            def after_of(i):
                return _FIRST_BLOCK_ITEM if i == _LAST_ITEM else i + 1
            m.d.sync += [cur_m1.eq(nxt_m1), cur_one.eq(nxt_one),
                         nxt_m1.eq(Array(words_m1[after_of(i)] for i in items)[rx.after]),
                         nxt_one.eq(Array(one_word[after_of(i)] for i in items)[rx.after])]
        with m.If(start):
            m.d.sync += [rw_left.eq(t_words[_ACOL] - 1), rw_last.eq(t_words[_ACOL] == 1)]
        with m.Elif(rx_adv & rx.r_step):     # the item again, for the next row
            m.d.sync += [rw_left.eq(cur_m1), rw_last.eq(cur_one)]
        with m.Elif(rx_adv):
            m.d.sync += [rw_left.eq(nxt_m1), rw_last.eq(nxt_one)]
        with m.Elif(take):
            m.d.sync += [rw_left.eq(rw_left - 1), rw_last.eq(rw_left == 1)]
        with m.If(start | rx_adv):
            m.d.sync += rw.eq(0)
        with m.Elif(take):
            m.d.sync += rw.eq(rw + 1)
        block_loaded = Signal()              # pulse: the receiver finished the current block
        # (a cycle late: the block's last tile word is written a cycle after its take)
        m.d.sync += block_loaded.eq(rx_adv & rx.last & (~rx.row | (r_r + 1 >= rx.nv)))
        word = src.o.payload

        # -- state of the block pipeline -------------------------------------------------------
        # blocks the receiver has completed beyond blk (0..2): kept beside the two counters, as
        # r_lead is, instead of a 33-bit compare of the two
        loaded_ahead = Signal(range(4))
        with m.If(start):
            m.d.sync += loaded_ahead.eq(0)
        with m.Else():
            m.d.sync += loaded_ahead.eq(loaded_ahead + block_loaded - blk_inc)
        nv, last_blk = _block_rows(m, "blk", R, self.job.payload.m, start, blk_inc)
        r0 = Signal(33)
        m.d.comb += r0.eq(blk << LOGR)

        # tile write ports: receiver (LOAD) or sweep write-back
        sweep_we = Signal()
        sweep_wr = Signal(range(R))
        sweep_wa = Signal(range(DW))
        sweep_wd = Signal(W)
        full = (1 << L) - 1
        for r, (_, _, wp) in enumerate(tile_a):
            m.d.comb += [wp.addr.eq(sweep_wa), wp.data.eq(sweep_wd), wp.en.eq(Mux(sweep_we & (sweep_wr == r), full, 0))]
        # the operand tiles are written a cycle after the take, from registers (the receiver's ready
        # logic and the LUTRAM write enables are separate stages); SWEEP1's follow and the block
        # count (below) look at the receiver a cycle late to match
        take_d, rbank_d = Signal(), Signal()
        rw_d, rr_d, word_d = Signal.like(rw), Signal.like(r_r), Signal(W)
        m.d.sync += [take_d.eq(take), rbank_d.eq(rbank), rw_d.eq(rw), rr_d.eq(r_r),
                     word_d.eq(word)]
        # ... and each less one beside them (signed: -1 at 0), for SWEEP1's follow flag (below)
        rr_d_m1 = Signal(signed(len(r_r) + 1))
        m.d.sync += rr_d_m1.eq(r_r - 1)      # (rw's: narrowed, with SWEEP1's follow flag)
        lanes = lanes_of(word_d, L, signed_=False)
        # A goes to tile B when the job has no B operand: SWEEP1 then reads tile B and writes tile A,
        # so it can follow the receiver through the last operand without sharing a write port
        # which tile the word goes to and in which layout: flags registered with the take (from the
        # item and the job's formats), so the LUTRAM write addresses are a mux or two of registers
        hits = []
        for hit, fmt in ((take & (r_item == _A) & has_b, j.a_fmt),
                         (take & ((r_item == _B) | ((r_item == _A) & ~has_b)), Mux(r_item == _A, j.a_fmt, j.b_fmt))):
            h_rows, h_blk = Signal(), Signal()
            m.d.sync += [h_rows.eq(hit & (fmt == VectorIn.ROWS32)), h_blk.eq(hit & (fmt != VectorIn.ROWS32))]
            hits.append((h_rows, h_blk))
        for tile, (h_rows, h_blk) in zip((tile_a, tile_b), hits):
            with m.If(h_rows):
                for r, (_, wp, _) in enumerate(tile):
                    m.d.comb += [wp.addr.eq(rw_d), wp.data.eq(word_d), wp.en.eq(full), wp.we.eq(rr_d == r)]
            with m.Elif(h_blk):
                # blocked: element i = k*L + l of word k is row i % R, column i // R
                k = rw_d
                for r, (_, wp, _) in enumerate(tile):
                    if R <= L:                     # L/R columns of every row: lanes [q*L/R, (q+1)*L/R) of row r
                        per = L // R
                        q = k[:LOGR] if LOGR else Const(0, 1)
                        m.d.comb += [wp.addr.eq(k >> LOGR),
                                     wp.data.eq(word_of([lanes[(p % per) * R + r] for p in range(L)])),
                                     wp.en.eq(Const((1 << per) - 1, L) << (q * per)), wp.we.eq(1)]
                    else:                          # one column of L rows
                        rl = R // L
                        col = k >> exact_log2(rl)
                        m.d.comb += [wp.addr.eq(col >> LOGL), wp.data.eq(Cat(*([lanes[r % L]] * L))),
                                     wp.en.eq(Const(1, L) << col[:LOGL]), wp.we.eq(k[:exact_log2(rl)] == r // L)]
        # route the receiver (bank rbank) and the write-back (bank cbank) to the bank memories (by
        # the receiver's one-bit write flag, not an OR over its lane enables)
        for rows in (tile_a, tile_b):
            for banks, rx, sw in rows:
                for k, (_, wp, _) in enumerate(banks):
                    with m.If(rx.we & (rbank_d == k)):
                        m.d.comb += [wp.addr.eq(rx.addr), wp.data.eq(rx.data), wp.en.eq(rx.en)]
                    with m.Elif(cbank == k):
                        m.d.comb += [wp.addr.eq(sw.addr), wp.data.eq(sw.data), wp.en.eq(sw.en)]
        tables_in = tables_avail = None      # with a table port: its tables in, and the words sweep 1 may use
        if g.table_port is None:
            for item, (_, wp, _) in pms.items():
                m.d.comb += [wp.addr.eq(rw), wp.data.eq(word), wp.en.eq(take & (r_item == item))]
        else:
            t_take, tables_in, tables_avail = self._table_loader(m, j, start, [t_en[i] for i in _PARAMS],
                                                                 list(pms.values()), LOGL=LOGL, DW=DW)
        if att is not None:
            _, cwp, _ = consts_mem
            m.d.comb += [cwp.addr.eq(rw), cwp.data.eq(word), cwp.en.eq(take & (r_item == _CONSTS))]
            _, rwp, _ = rope_mem
            m.d.comb += [rwp.addr.eq(((rbank << LOGR) + r_r) * RW + rw), rwp.data.eq(word),
                         rwp.en.eq(take & (r_item == _ROPE))]
            rx_pos = Signal(34)
            m.d.comb += rx_pos.eq(j.pos0 + (r_blk << LOGR) + r_r)
            lp = rx_pos >> exact_log2(P)
            # the page entry, its slot and the write registered, written a cycle after the take (as
            # the tiles are): the receiver's ready logic stays off the page registers' enables
            entry = Signal(32, name="bt_entry")
            bt_we = Signal(name="bt_we")
            bt_slot = Signal(range(2 * R), name="bt_slot")
            m.d.sync += [entry.eq(Array(lanes_of(word, L, signed_=False))[lp[:LOGL] if LOGL else 0]),
                         bt_we.eq(take & (r_item == _BT)), bt_slot.eq((rbank << LOGR) + r_r)]
            with m.If(bt_we):
                m.d.sync += pages[bt_slot].eq(entry)
            per_word = W8 // 8
            for i in range(NG):
                with m.If(take & (r_item == _POOLS) & (rw == i // per_word)):
                    m.d.sync += pools[i].eq(word[64 * (i % per_word):64 * (i % per_word) + 64])
        recs = lanes_of(word, L, signed_=False)
        with m.If(take & (r_item == _SCALE)):
            for r in range(R):
                with m.If(rw == r // L):
                    with m.If(rbank):
                        m.d.sync += [row_a[R + r].eq(recs[r % L][:16]), row_e[R + r].eq(recs[r % L][16:21])]
                    with m.Else():
                        m.d.sync += [row_a[r].eq(recs[r % L][:16]), row_e[r].eq(recs[r % L][16:21])]

        # -- phases of the block pipeline (main FSM below) --------------------------------------
        in_store = Signal()                  # STORE phase: the store FSM owns the tile read address
        sw1_ended = Signal()                 # direct store: SWEEP1 of the block has ended
        st_res = Signal()                    # res_out: the store is in its direct RES32 part
        store_start = Signal()
        store_done = Signal()
        # early store (Q records, KV appends: one operand, quantized per head or group, no norm): the
        # store starts with SWEEP1 and takes head h once its groups' parameters are in the qp memory
        # (the sweep reads tile B only, so the store owns tile A's read address from the start)
        early_store = Signal()
        in_storing = Signal()                # the main FSM waits in STORING for the store's end

        # -- sweeps ------------------------------------------------------------------------------
        m.submodules.elem = elem = ElementPipe(lanes=L, activations=g.activations)
        mant_bits = RSQRT_FRAC + 1
        m.submodules.napply = napply = NormApply(lanes=L, max_dim=g.max_dim, mant_bits=mant_bits, shift_bits=8)
        for name in ("a_fmt", "b_fmt", "bias", "act", "combine", "rope"):
            m.d.comb += getattr(elem.cfg, name).eq(getattr(j, name))

        sw_r = Signal(range(R))
        sw_j = Signal(range(DW))
        sw_active = Signal()                 # issuing (row sw_r, word sw_j) this cycle
        sw_second = Signal()                 # SWEEP2 (norm apply) rather than SWEEP1
        # SWEEP1 may follow the receiver through the block's last operand (A, or B when there is
        # one): word (sw_r, sw_j) is issued once it is in the tile (written in an earlier cycle)
        last_fmt = Signal.like(j.a_fmt)
        m.d.comb += last_fmt.eq(Mux(has_b, j.b_fmt, j.a_fmt))
        # the receiver was in the current block's last operand in the cycle before (r_blk == blk),
        # and word (sw_r, sw_j) lies before where it was then: taken two cycles ago or earlier, so
        # in the tile (its write comes a cycle after its take)
        in_last = Signal()
        m.d.sync += in_last.eq(busy & ~r_done & (r_lead == 0) & (r_item == Mux(has_b, _B, _A)))
        # ... as one flip-flop for the next cycle, from this cycle's registers (so the compares'
        # carry chains stay off sw_go): in_last with the receiver's position of the same cycle,
        # and the word after (sw_r, sw_j) (the sweep moves at most one word a cycle; the position
        # only grows within the operand, and one word further is enough for where it stays)
        # (compares of registers: sw_j + 1 < rw_d as sw_j < rw_d - 1, the latter a register)
        last_j = Signal(name="sw_j_last")
        dw_m1 = Signal.like(dw, name="sw_dw_m1")
        m.d.sync += dw_m1.eq(dw - 1)
        m.d.comb += last_j.eq(sw_j == dw_m1)
        # (unsigned against signed: Amaranth widens both, so the compares are exact)
        # the 33-bit word positions narrowed to sw_j's width beside their registers (set with them,
        # from rw): (above sw_j's range, negative, low bits), so sw_j < v is a compare of len(sw_j)
        # bits and two flags, and rw_d != 0 a flag
        nb = len(sw_j)

        def narrow_gt(v, name):
            big, neg, low = Signal(name=f"{name}_big"), Signal(name=f"{name}_neg"), Signal(nb, name=f"{name}_lo")
            m.d.sync += [big.eq(v >= (1 << nb)), neg.eq(v < 0), low.eq(v[:nb])]
            return lambda a: big | (~neg & (a < low))       # a < v, for 0 <= a < 2^nb
        sw_lt_rw_m1 = narrow_gt(rw - 1, "rw_d_m1n")
        sw_lt_rwr_m1 = narrow_gt((rw >> LOGR) - 1, "rwr_d_m1n")
        rw_d_nz = Signal(name="rw_d_nz")
        m.d.sync += rw_d_nz.eq(rw != 0)
        rows32_has = Mux(last_j, (sw_r < rr_d_m1) | ((sw_r == rr_d_m1) & rw_d_nz),
                         (sw_r < rr_d) | ((sw_r == rr_d) & sw_lt_rw_m1(sw_j)))
        rx_has = Signal(name="sw_rx_has")
        m.d.sync += rx_has.eq(in_last & Mux(last_fmt == VectorIn.ROWS32, rows32_has, sw_lt_rwr_m1(sw_j) & ~last_j))
        # direct store (one row per block, RES32, no norm): SWEEP1's results go straight to the chunk
        # FIFO (the block's write command is issued as the sweep starts); the sweep issues a word
        # only with room for it in the FIFO
        direct = Signal()
        # res_out (one row per block, a norm, ACT8): SWEEP1's results go to the chunk FIFO as a direct
        # RES32 store (the value before the norm, to res_addr) and into the tile for the norm as
        # before; the ACT8 store follows the norm's passes (``st_res``: the store is in the direct part)
        dual = Signal()
        feed = Signal()                      # SWEEP1 feeds the chunk FIFO (direct or dual)
        if R == 1:
            m.d.comb += [direct.eq((j.out_fmt == VectorOut.RES32) & (j.norm == VectorNorm.NONE)),
                         dual.eq(j.res_out)]
        m.d.comb += feed.eq(direct | dual)
        chunk_level = Signal(range(_CHUNK_FIFO + 1))
        inflight = Signal(range(max(_CHUNK_FIFO, ElementPipe.LATENCY, napply.latency) + 2))
        # room for one more word: registered from a registered count (two cycles old: the count
        # grows by at most one in a cycle, and it leaves out the word read this cycle (rd_v:
        # inflight counts from the read on, off the issue decision), so three slots of margin);
        # keeps the FIFO's level logic off sw_go, and its add off the compare (the level, the add
        # and the compare in one cycle were 3.4 ns in u280_llm512's vector engine)
        sw_room = Signal()
        sw_occ = Signal(range(2 * _CHUNK_FIFO + 8), name="sw_occ")
        m.d.sync += [sw_occ.eq(chunk_level + inflight), sw_room.eq(sw_occ + 4 < _CHUNK_FIFO)]
        sw_go = Signal()
        first_ok = ((loaded_ahead != 0) | rx_has) & (~feed | sw_room)
        if g.table_port is not None:         # the element tables word by word, like the operands
            # sw_j < tables_avail as a flip-flop, for the next cycle from this one's registers: sw_j
            # grows by at most one, and tables_avail never falls within a job (all of them in, or
            # one word more than sw_j, is enough); the tables' counter stays off sw_go
            tables_ok = Signal()
            m.d.sync += tables_ok.eq((tables_avail == DW) | (sw_j + 1 < tables_avail))
            first_ok = first_ok & tables_ok
        m.d.comb += sw_go.eq(sw_second | first_ok)
        sw_issue = Signal()
        m.d.comb += sw_issue.eq(sw_active & sw_go)
        _walk_rows(m, sw_active, sw_r, nv, sw_j, dw, step=sw_go)
        rd_r, rd_j, rd_v = Signal(range(R)), Signal(range(DW)), Signal()
        m.d.sync += [rd_r.eq(sw_r), rd_j.eq(sw_j), rd_v.eq(sw_issue)]
        # the word's row end, group end and group index, registered beside rd_j from sw_j (the job
        # holds still over the sweep) and carried with (row, word) to the write-back: no add or
        # variable shift of the pipelines' word index there (out_j + 1 == dw and its group mask
        # were 6 LUT levels and a carry into g_end)
        if att is not None:
            kv_sel = Signal()
            m.d.comb += kv_sel.eq(kv_mode)
            gmask = Mux(kv_sel, G // L - 1, hd // L - 1)
            gidx_sw = Mux(kv_sel, sw_j >> exact_log2(G // L), sw_j >> exact_log2(hd // L))
        else:
            gmask, gidx_sw = Const(0, 1), sw_j
        rd_rend, rd_gend = Signal(name="rd_rend"), Signal(name="rd_gend")
        rd_gidx = Signal(range(GPR), name="rd_gidx")
        m.d.sync += [rd_rend.eq(sw_j == dw_m1),
                     rd_gend.eq(Mux(j.out_fmt == VectorOut.ACT8, sw_j == dw_m1, (sw_j & gmask) == gmask)),
                     rd_gidx.eq(Mux(j.out_fmt == VectorOut.ACT8, 0, gidx_sw))]
        tile_addr = Signal(range(DW))
        store_addr = Signal(range(DW))
        m.d.comb += tile_addr.eq(Mux(in_store, store_addr, sw_j))
        for rows, addr in ((tile_a, tile_addr), (tile_b, sw_j)):
            for banks, _, _ in rows:
                for _, _, rp in banks:
                    m.d.comb += rp.addr.eq(addr)

        def bank_data(banks):
            return Mux(cbank, banks[1][2].data, banks[0][2].data)
        for _, _, rp in pms.values():
            m.d.comb += rp.addr.eq(sw_j)
        a_rows = [bank_data(banks) for banks, _, _ in tile_a]
        a_data = Array(a_rows)
        a_wide = Array(Mux(cbank, banks[1][0].wide, banks[0][0].wide) for banks, _, _ in tile_a)
        b_data = Array(bank_data(banks) for banks, _, _ in tile_b)
        if att is not None:
            _, _, rrp = rope_mem
            col0 = Signal(range(hd))
            m.d.comb += col0.eq((sw_j << LOGL) & (hd - 1))         # first column of the word in its head
            m.d.comb += rrp.addr.eq(((cbank << LOGR) + sw_r) * RW + (col0 >> (LOGL + 1)))
            rope_sel = Signal()
            m.d.sync += rope_sel.eq((col0 >> LOGL)[0])              # which half of the RoPE word
            rope_word = Mux(rope_sel, rrp.data[W // 2:], rrp.data[:W // 2])
        else:
            rope_word = Const(0, W // 2)
        m.d.comb += [elem.i_valid.eq(rd_v & ~sw_second), elem.xa.eq(Mux(has_b, a_data[rd_r], b_data[rd_r])),
                     elem.xb.eq(b_data[rd_r]),
                     elem.acol.eq(pms[_ACOL][2].data), elem.bcol.eq(pms[_BCOL][2].data),
                     elem.bias.eq(pms[_BIAS][2].data), elem.row_a.eq(row_a[(cbank << LOGR) + rd_r]),
                     elem.row_e.eq(row_e[(cbank << LOGR) + rd_r]),
                     elem.rope.eq(rope_word)]

        sb = napply.sum_bits
        s2_bits = 63 + g.max_dim.bit_length()
        S1 = Array(Signal(signed(sb), name=f"S1_{r}") for r in range(R))
        S2 = Array(Signal(s2_bits, name=f"S2_{r}") for r in range(R))
        MM = Array(Signal(mant_bits, name=f"M_{r}") for r in range(R))
        EE = Array(Signal(range(64), name=f"E_{r}") for r in range(R))
        m.d.comb += [napply.i_valid.eq(rd_v & sw_second), napply.x.eq(a_data[rd_r]),
                     napply.gamma.eq(pms[_GAMMA][2].data),
                     napply.beta.eq(Mux(j.norm == VectorNorm.LAYER, pms[_BETA][2].data, 0)),
                     napply.dim.eq(j.dim), napply.s1.eq(S1[rd_r]), napply.mant.eq(MM[rd_r]),
                     napply.shift.eq(j.norm_shift + EE[rd_r])]

        # write-back and statistics: (row, word) travel with the data
        e_r = delayed(m, rd_r, ElementPipe.LATENCY, name="e_r")
        e_j = delayed(m, rd_j, ElementPipe.LATENCY, name="e_j")
        n_r, n_j = delayed(m, rd_r, napply.latency, name="n_r"), delayed(m, rd_j, napply.latency, name="n_j")
        e_flags = delayed(m, Cat(rd_rend, rd_gend, rd_gidx), ElementPipe.LATENCY, name="e_fl")
        n_flags = delayed(m, Cat(rd_rend, rd_gend, rd_gidx), napply.latency, name="n_fl")
        out_v = Signal()
        out_r = Signal(range(R))
        out_j = Signal(range(DW))
        out_w = Signal(W)
        out_fl = Signal(len(e_flags))
        with m.If(elem.o_valid):
            m.d.comb += [out_v.eq(1), out_r.eq(e_r), out_j.eq(e_j), out_w.eq(elem.o), out_fl.eq(e_flags)]
        with m.Elif(napply.o_valid):
            m.d.comb += [out_v.eq(1), out_r.eq(n_r), out_j.eq(n_j), out_w.eq(napply.o), out_fl.eq(n_flags)]
        m.d.comb += [sweep_we.eq(out_v), sweep_wr.eq(out_r), sweep_wa.eq(out_j), sweep_wd.eq(out_w)]
        step_count(m, inflight, rd_v, out_v)
        sweeping = Signal()
        absmax_busy = Signal()               # the group absmax pipeline (below) still holds values
        stats_busy = Signal()                # so does the norm statistics pipeline
        m.d.comb += sweeping.eq(sw_active | rd_v | (inflight != 0) | absmax_busy | stats_busy)

        vals = lanes_of(out_w, L)
        # a norm's row statistics: each value and its square (DSP-sized partial products), each
        # summed over the lanes by a registered adder tree, then accumulated per row; (valid, row
        # end, row) travel beside them, and the sweep is not over until they are in
        # (the values registered first: the write-back's mux stays off the squares' DSP inputs)
        lane_v = [Signal(signed(32), name=f"st_v{i}") for i in range(L)]
        m.d.sync += [lane_v[i].eq(v) for i, v in enumerate(vals)]
        squares = [pipelined_product(m, v, v, name=f"st_sq{i}") for i, v in enumerate(lane_v)]
        sq_lat = squares[0][1]
        wsq, tree_lat = pipelined_sum(m, [p for p, _ in squares], name="st_wsq")
        wsum, _ = pipelined_sum(m, [delayed(m, v, sq_lat, name=f"st_v{i}") for i, v in enumerate(lane_v)],
                                name="st_wsum")
        st_lat = 1 + sq_lat + tree_lat
        st_valid = valid_chain(m, elem.o_valid & (j.norm != VectorNorm.NONE), st_lat)
        m.d.comb += stats_busy.eq(Cat(*st_valid[1:]) != 0)
        row_end = Signal()                   # the word ends its row
        m.d.comb += row_end.eq(out_fl[0])
        st_end, st_r = delayed(m, row_end, st_lat, name="st_end"), delayed(m, out_r, st_lat, name="st_r")
        acc1 = Signal(signed(sb))
        acc2 = Signal(s2_bits)
        with m.If(st_valid[st_lat]):
            with m.If(st_end):
                m.d.sync += [S1[st_r].eq(Mux(j.norm == VectorNorm.LAYER, acc1 + wsum, 0)),
                             S2[st_r].eq(acc2 + wsq), acc1.eq(0), acc2.eq(0)]
            with m.Else():
                m.d.sync += [acc1.eq(acc1 + wsum), acc2.eq(acc2 + wsq)]
        # group absmax of the values the store quantizes: |v| registered, then a max tree over the L
        # lanes with every level registered (one 32-bit compare and its mux a stage), the last stage
        # the group's running max into gmax (a chain over 16 lanes was 51 LUT levels, 31.8 MHz by
        # Yosys; two tree levels a stage 233 MHz); (row, group, end) travel along
        absv = [Signal(32, name=f"abs{i}") for i in range(L)]
        for i, v in enumerate(vals):
            m.d.sync += absv[i].eq(Mux(v < 0, -v, v))
        xs = absv
        for lv in range(LOGL):
            nxt = []
            for i in range(0, len(xs), 2):
                mx = Signal(32, name=f"amax{lv}_{i // 2}")
                m.d.sync += mx.eq(Mux(xs[i + 1] > xs[i], xs[i + 1], xs[i]))
                nxt.append(mx)
            xs = nxt
        wmax, = xs
        amax_stages = 1 + LOGL
        run = Signal(32)
        # a group is G/L words (KV) or hd/L (QREC), an ACT8 row one group: the flags come with the word
        group_end = Signal()
        gidx = Signal(range(GPR))
        m.d.comb += [group_end.eq(out_fl[1]), gidx.eq(out_fl[2:])]
        final = Signal()
        m.d.comb += final.eq(quant_out & Mux(j.norm == VectorNorm.NONE, elem.o_valid, napply.o_valid))
        finals = valid_chain(m, final, amax_stages)[1:]
        final_n = finals[-1]
        g_end_n = delayed(m, group_end, amax_stages, name="g_end")
        g_idx_n = delayed(m, gidx, amax_stages, name="g_idx")
        g_row_n = delayed(m, out_r, amax_stages, name="g_row")
        m.d.comb += absmax_busy.eq(Cat(*finals).any())
        gm = Signal(32)
        m.d.comb += gm.eq(Mux(wmax > run, wmax, run))
        _, gwp, grp = gmax_mem
        m.d.comb += [gwp.addr.eq(g_row_n * GPR + g_idx_n), gwp.data.eq(gm), gwp.en.eq(final_n & g_end_n)]
        with m.If(final_n):
            m.d.sync += run.eq(Mux(g_end_n, 0, gm))

        # -- scalar: V -> rsqrt per row (norm) ---------------------------------------------------
        m.submodules.rsqrt = rsqrt = Rsqrt(in_bits=rsqrt_in_bits(g.max_dim), frac_bits=RSQRT_FRAC)
        sc_r = Signal(range(R + 1))
        sc_active = Signal()                 # var of row sc_r is being formed / offered
        sc_sent = Signal()
        sc_wait = Signal()
        var = Signal(rsqrt.in_bits)
        vnum = Signal(s2_bits + 17)
        sc_idx = Signal(range(R))
        m.d.comb += sc_idx.eq(sc_r)
        # var = (dim * S2 - S1^2) << eps_shift + eps_q over registered stages (row sc_r's sums and the
        # job hold still in SCALAR): in one cycle the two wide products were 92 MHz by Yosys
        s1_abs, s2_row, dim_r = Signal(sb), Signal(s2_bits), Signal.like(j.dim)
        m.d.sync += [s1_abs.eq(Mux(S1[sc_idx] < 0, -S1[sc_idx], S1[sc_idx])), s2_row.eq(S2[sc_idx]), dim_r.eq(j.dim)]
        p_ds, lat_ds = pipelined_product(m, dim_r, s2_row, name="var_ds")
        p_ss, lat_ss = pipelined_product(m, s1_abs, s1_abs, name="var_ss")
        lat_p = max(lat_ds, lat_ss)
        p_ds, p_ss = delayed(m, p_ds, lat_p - lat_ds, name="var_dsd"), delayed(m, p_ss, lat_p - lat_ss, name="var_ssd")
        m.d.sync += vnum.eq(p_ds - p_ss)
        shifted = Signal(rsqrt.in_bits)
        m.d.sync += shifted.eq(vnum << j.eps_shift)
        m.d.sync += var.eq(shifted + j.eps_q)
        var_latency = 1 + lat_p + 3          # operands, products, difference, shift, + eps
        sc_count = Signal(range(var_latency))
        m.d.comb += [rsqrt.i.payload.eq(var), rsqrt.i.valid.eq(sc_active & sc_sent), rsqrt.o.ready.eq(1)]
        with m.If(sc_active & ~sc_sent):     # offer var once the pipeline holds this row's
            m.d.sync += sc_count.eq(sc_count + 1)
            with m.If(sc_count == var_latency - 1):
                m.d.sync += [sc_sent.eq(1), sc_count.eq(0)]
        with m.If(rsqrt.i.valid & rsqrt.i.ready):
            m.d.sync += [sc_sent.eq(0), sc_active.eq(0), sc_wait.eq(1)]
        with m.If(rsqrt.o.valid & sc_wait):
            m.d.sync += [MM[sc_idx].eq(rsqrt.o.payload.mant), EE[sc_idx].eq(rsqrt.o.payload.exp),
                         sc_wait.eq(0), sc_r.eq(sc_r + 1)]
            with m.If(sc_r + 1 < nv):
                m.d.sync += sc_active.eq(1)

        # -- QPARAM: group absmax -> quantization parameters -------------------------------------
        m.submodules.qpar = qpar = QuantParams()
        groups = Signal(range(GPR + 1))
        with m.Switch(j.out_fmt):
            with m.Case(VectorOut.QREC):
                m.d.comb += groups.eq(heads)
            with m.Case(VectorOut.KV):
                m.d.comb += groups.eq(j.dim >> exact_log2(G) if att else 1)
            with m.Default():
                m.d.comb += groups.eq(1)
        qp_r = Signal(range(R))
        qp_g = Signal(range(GPR))
        qp_active = Signal()
        # a SWEEP1 without a norm streams its groups' absmax into QPARAM: the walk starts with the
        # sweep and takes group n once n groups are final (written to gmax a cycle before)
        g_final = Signal(range(R * GPR + 1))  # groups of this pass written to gmax
        qp_n = Signal(range(R * GPR + 1))     # groups the walk has taken
        qp_stream = Signal()                  # the walk follows SWEEP1
        qp_step = Signal()
        m.d.comb += qp_step.eq(~qp_stream | (qp_n < g_final))
        _walk_rows(m, qp_active, qp_r, nv, qp_g, groups, step=qp_step)
        with m.If(qp_active & qp_step):
            m.d.sync += qp_n.eq(qp_n + 1)
        with m.If(gwp.en):
            m.d.sync += g_final.eq(g_final + 1)
        m.d.comb += grp.addr.eq(qp_r * GPR + qp_g)
        qv1 = Signal()
        qr1, qg1 = Signal.like(qp_r), Signal.like(qp_g)
        m.d.sync += [qv1.eq(qp_active & qp_step), qr1.eq(qp_r), qg1.eq(qp_g)]
        const_word = Const(0, 64)
        if att is not None:
            _, _, crp = consts_mem
            head_of = Signal(range(max_heads + 1))
            m.d.comb += head_of.eq(Mux(kv_mode, qp_g >> exact_log2(ng), qp_g))
            per_word = W8 // 8
            if per_word > 1:
                m.d.comb += crp.addr.eq(head_of >> exact_log2(per_word))
                hsel1 = Signal(range(per_word))
                m.d.sync += hsel1.eq(head_of[:exact_log2(per_word)])
                const_word = Array(crp.data[64 * i:64 * i + 64] for i in range(per_word))[hsel1]
            else:
                m.d.comb += crp.addr.eq(head_of)
                const_word = crp.data[:64]
        m.d.comb += [qpar.i_valid.eq(qv1), qpar.mode.eq(j.out_fmt), qpar.absmax.eq(grp.data),
                     qpar.const.eq(const_word)]
        q_r, q_g = delayed(m, qr1, QuantParams.LATENCY, name="q_r"), delayed(m, qg1, QuantParams.LATENCY, name="q_g")
        _, qwp, qrp = qp_mem
        m.d.comb += [qwp.addr.eq(q_r * GPR + q_g), qwp.data.eq(Cat(qpar.mult, qpar.shift, qpar.meta)),
                     qwp.en.eq(qpar.o_valid)]
        with m.If(qpar.o_valid):
            m.d.sync += row_rec[q_r].eq(qpar.meta)
        qp_pipe = Signal(range(QuantParams.LATENCY + 2))
        m.d.sync += qp_pipe.eq(qp_pipe + qv1 - qpar.o_valid)
        q_done = Signal(range(R * GPR + 1))  # groups of this block whose parameters are written
        with m.If(qpar.o_valid):
            m.d.sync += q_done.eq(q_done + 1)
        qp_busy = Signal()
        m.d.comb += qp_busy.eq(qp_active | qv1 | (qp_pipe != 0))

        # -- STORE: micro-ops -> quantizer -> chunk FIFO -> packer -> writer ----------------------
        # the quantizer takes `ways` tile words (a wide op: a whole word of int8, half a word of int4)
        # or one (its low lanes: a chunk of int8 or int4 for the packer); a multiplier per word
        m.submodules.cq = cq = ChunkQuantizer(lanes=ways * L, segments=ways)
        m.submodules.chunks = chunks = SyncFIFOBuffered(width=W + 2, depth=_CHUNK_FIFO)   # + whole, half bits
        m.d.comb += chunk_level.eq(chunks.level)
        ppw = Signal(range(9))               # chunks per output word
        with m.If(j.out_fmt == VectorOut.RES32):
            m.d.comb += ppw.eq(1)
        with m.Elif(int4):
            m.d.comb += ppw.eq(8)
        with m.Else():
            m.d.comb += ppw.eq(4)

        op_valid = Signal()
        op_wide = Signal()                   # a VAL op over `ways` words: a word of int8 (KV4: half)
        op_kind = Signal(range(6))
        op_r = Signal(range(R))
        op_j = Signal(range(DW))
        op_k = Signal(32)                    # BLK word / chunk index
        op_g = Signal(range(GPR))
        st_inflight = Signal(range(_CHUNK_FIFO + 8))
        # registered from a registered sum (two cycles old: two slots of margin, the sum grows by at
        # most one a cycle, op_valid's); the FIFO's level logic and the add stay off the compare
        room = Signal()
        st_occ = Signal(range(2 * _CHUNK_FIFO + 8), name="st_occ")
        m.d.sync += [st_occ.eq(chunks.level + st_inflight), room.eq(st_occ + 3 < _CHUNK_FIFO)]
        step_count(m, st_inflight, op_valid, cq.o_valid)

        # t0: reads (the tile read address: below, with the store FSM)
        m.d.comb += qrp.addr.eq(op_r * GPR + op_g)
        qrps = [qrp]                         # a wide KV op's later groups: their own read ports
        for k in range(1, kv_span):
            rp = qp_mem[0].read_port(domain="sync")
            m.d.comb += rp.addr.eq(op_r * GPR + op_g + k)
            qrps.append(rp)
        t1_v, t1_kind, t1_wide = Signal(), Signal.like(op_kind), Signal()
        t1_r, t1_k = Signal.like(op_r), Signal.like(op_k)
        m.d.sync += [t1_v.eq(op_valid), t1_kind.eq(op_kind), t1_r.eq(op_r), t1_k.eq(op_k), t1_wide.eq(op_wide)]
        qrec = qrp.data
        t1_span = Signal()                   # a wide KV op: word k takes group k // (G / L)'s record
        m.d.comb += t1_span.eq(t1_wide & kv_mode)
        seg_recs = [qrec if kv_span == 1 else Mux(t1_span, qrps[k * kv_span // ways].data, qrec)
                    for k in range(ways)]
        m.d.comb += [cq.i_valid.eq(t1_v), cq.x.eq(Mux(t1_wide, a_wide[t1_r], a_data[t1_r])),
                     cq.mult.eq(Cat(*(r[:25] for r in seg_recs))), cq.shift.eq(Cat(*(r[25:32] for r in seg_recs))),
                     cq.int4.eq(int4)]
        # the other micro-ops' chunks, formed at t1 and delayed to the quantizer's output
        blk_word = Signal(W)
        if R <= L:
            per = L // R
            kq = Signal(range(max(R, 2)))
            m.d.comb += kq.eq(t1_k[:LOGR] if LOGR else 0)
            lanes_out = []
            for lane in range(L):
                r, p = lane % R, lane // R
                src = Array(lanes_of(a_rows[r], L, signed_=False))[kq * per + p]
                lanes_out.append(Mux(r < nv, src, 0))
            m.d.comb += blk_word.eq(word_of(lanes_out))
        else:
            rl = R // L
            col = t1_k >> exact_log2(rl)
            grp_sel = t1_k[:exact_log2(rl)]
            lanes_out = []
            for lane in range(L):
                rowsel = Array(Array(lanes_of(a_rows[q * L + lane], L, signed_=False))[col[:LOGL]]
                               for q in range(rl))[grp_sel]
                lanes_out.append(Mux(grp_sel * L + lane < nv, rowsel, 0))
            m.d.comb += blk_word.eq(word_of(lanes_out))
        scale_vec = Cat(*[Mux(r < nv, row_rec[r], 0) for r in range(R)], Const(0, max(SB * 8 - 32 * R, 1)))
        span = Signal(span_words * W)        # the merged mantissa word(s) of the current (token, head)
        trailer = Cat(qrec[32:48], qrec[48:56], Const(0, max(W - 24, 1)))
        # each kind's chunk registered (t2), then the kind's pick (t3): the selects by t1_k and the
        # kind's mux are separate stages; the line to the quantizer's output is a stage shorter
        o_blk, o_trl, o_scl, o_mnt = (Signal(W, name=f"other_{n}") for n in ("blk", "trl", "scl", "mnt"))
        t2_kind = Signal.like(t1_kind, name="t2_kind")
        m.d.sync += [o_blk.eq(blk_word), o_trl.eq((trailer >> (t1_k * (W // 4)))[:W // 4]),
                     o_scl.eq((scale_vec >> (t1_k * (W // 4)))[:W // 4]),
                     o_mnt.eq((span >> (t1_k * W))[:W]),          # a whole word of the merged span
                     t2_kind.eq(t1_kind)]
        other = Signal(W)
        with m.Switch(t2_kind):
            with m.Case(_BLK):
                m.d.sync += other.eq(o_blk)
            with m.Case(_TRL):
                m.d.sync += other.eq(o_trl)
            with m.Case(_SCL):
                m.d.sync += other.eq(o_scl)
            with m.Case(_MNT):
                m.d.sync += other.eq(o_mnt)
            with m.Default():
                m.d.sync += other.eq(0)
        assert ChunkQuantizer.LATENCY >= 2
        other_d = delayed(m, other, ChunkQuantizer.LATENCY - 2, name="other")
        kind_d = delayed(m, t1_kind, ChunkQuantizer.LATENCY, name="kind")
        wide_d = delayed(m, t1_wide, ChunkQuantizer.LATENCY, name="wide")
        # a wide op's chunk: a whole word of int8, or half a word of int4 (KV4: the packer's `half`)
        m.d.comb += [chunks.w_en.eq(cq.o_valid | (elem.o_valid & feed)),
                     chunks.w_data.eq(Mux(cq.o_valid, Cat(Mux(kind_d == _VAL, cq.o, other_d),
                                                          (kind_d == _MNT) | (wide_d & ~int4), wide_d & int4),
                                          Cat(elem.o, Const(1, 1), Const(0, 1))))]   # a whole word

        # packer: ppw chunks -> one word; a new chunk is taken in the cycle the full word leaves
        pk_word = Signal(W)
        pk_oh = Signal(8, init=1)
        pk_full = Signal()
        # ports: the store's (row st_r, head st_h) is head st_hg of port group st_g, on st_port; the
        # packer's words go to out_port, the port of the last write command (a command to another
        # port waits for the words before it to leave)
        st_g = Signal(range(NG))
        st_hg = Signal(range(max_heads + 1))
        st_port = Signal(range(len(lay.ports)))    # j.port + 2 st_g for a KV append, else 0: a register
        out_port = Signal(range(len(lay.ports)))
        data_sel = Signal(range(len(lay.ports)))
        m.d.comb += data_sel.eq(Mux(kv_mode, out_port, 0))
        # the packer's words leave through a register slice (with their port): the ports' ready
        # never reaches the packer and the chunk FIFO
        m.submodules.out_slice = osl = SkidBuffer(W + len(data_sel))
        m.d.comb += [osl.i.payload.eq(Cat(pk_word, data_sel)), osl.i.valid.eq(pk_full)]
        emit = pk_full & osl.i.ready
        o_word, o_sel = osl.o.payload[:W], osl.o.payload[W:]
        m.d.comb += [self.out_data.payload.eq(o_word), self.out_data.valid.eq(osl.o.valid & (o_sel == 0))]
        o_ready = (o_sel == 0) & self.out_data.ready
        for i in range(g.kv_ports):
            m.d.comb += [self.sw_data[i].payload.eq(o_word), self.sw_data[i].valid.eq(osl.o.valid & (o_sel == i + 1))]
            o_ready = o_ready | ((o_sel == i + 1) & self.sw_data[i].ready)
        m.d.comb += osl.o.ready.eq(o_ready)
        with m.If(emit):
            m.d.sync += pk_full.eq(0)        # (a chunk completing the next word below sets it again)
        m.d.comb += chunks.r_en.eq(~pk_full | emit)
        # the packer's next state when it takes a chunk, formed from registers (the chunk FIFO's
        # output and the packer's own), then loaded by the take alone: the output slice's ready
        # reaches only the registers' enables, not the chunk select
        piece = chunks.r_data[:W]
        whole = chunks.r_data[W]             # a whole word (pk_oh[0] then)
        half = chunks.r_data[W + 1]          # half a word of int4 (four of its eighths)
        # which chunk of the word comes next, one-hot (pk_oh[n]: n chunks are in): the next word
        # is an AND-OR of the candidates, not a decode of a count
        nxt_word = Signal(W)
        adds = []
        for n in range(1, 8):
            add = Mux(ppw == 8, piece[:W // 8] << (n * (W // 8)), piece[:W // 4] << (n * (W // 4)))
            if n == 4:
                add = Mux(half, piece[:W // 2] << (W // 2), add)
            adds.append(Mux(pk_oh[n], add, 0))
        first = Mux(half, piece[:W // 2], Mux(ppw == 1, piece, Mux(ppw == 4, piece[:W // 4], piece[:W // 8])))
        m.d.comb += nxt_word.eq(Mux(pk_oh[0], first, pk_word | reduce(operator.or_, adds)))
        completes = Signal()
        at_last = (pk_oh[0] & (ppw == 1)) | (pk_oh[3] & (ppw == 4)) | (pk_oh[7] & (ppw == 8))
        m.d.comb += completes.eq(whole | Mux(half, pk_oh[4], at_last))
        with m.If(chunks.r_en & chunks.r_rdy):
            m.d.sync += [pk_word.eq(Mux(whole, piece, nxt_word)),
                         pk_oh.eq(Mux(completes, 1, Mux(half, pk_oh.rotate_left(4), pk_oh.rotate_left(1))))]
            with m.If(completes):
                m.d.sync += pk_full.eq(1)
        store_empty = Signal()
        m.d.comb += store_empty.eq((st_inflight == 0) & ~t1_v & (chunks.level == 0) & ~pk_full & pk_oh[0]
                                   & ~osl.o.valid & osl.i.ready)
        # the same, one cycle late, for the store FSM's waits: empty last cycle with no op issued and no
        # chunk written then means empty now (nothing else feeds the store), so the FIFO levels stay
        # off the FSM's next state; a wait ends at most one cycle later
        store_empty_r = Signal()
        m.d.sync += store_empty_r.eq(store_empty & ~op_valid & ~chunks.w_en)

        # write commands and their answers
        wc_valid = Signal()
        wc_addr = Signal(64)
        wc_bytes = Signal(32)
        # write commands leave through a register slice with their port, as the packer's words do
        m.submodules.wcmd_slice = wsl = SkidBuffer(64 + 32 + len(st_port))
        m.d.comb += [wsl.i.payload.eq(Cat(wc_addr, wc_bytes, st_port)), wsl.i.valid.eq(wc_valid)]
        wc_take = wc_valid & wsl.i.ready
        c_addr, c_bytes, c_port = wsl.o.payload[:64], wsl.o.payload[64:96], wsl.o.payload[96:]
        m.d.comb += [self.out_cmd.payload.addr.eq(c_addr), self.out_cmd.payload.bytes.eq(c_bytes),
                     self.out_cmd.valid.eq(wsl.o.valid & (c_port == 0))]
        c_ready = (c_port == 0) & self.out_cmd.ready
        for i in range(g.kv_ports):
            m.d.comb += [self.sw_cmd[i].payload.addr.eq(c_addr), self.sw_cmd[i].payload.bytes.eq(c_bytes),
                         self.sw_cmd[i].valid.eq(wsl.o.valid & (c_port == i + 1))]
            c_ready = c_ready | ((c_port == i + 1) & self.sw_cmd[i].ready)
        m.d.comb += wsl.o.ready.eq(c_ready)
        # the block's output offsets, kept by additions as blk steps (products of a block index
        # and a job size were the command path's slowest logic), and its byte counts registered
        # (nv changes with blk only, long before the block's store)
        # (the job's base address in them, loaded from the job as it starts: the commands'
        # addresses are registers, no 64-bit add before the command slice)
        rec_bytes = Signal(32)               # one row of Q records
        m.d.sync += rec_bytes.eq(heads * QRB)
        def per_block_at(base, k, name):
            out = Signal(64, name=name)
            with m.If(start):
                m.d.sync += out.eq(base)
            with m.Elif(blk_inc):
                m.d.sync += out.eq(out + k)
            return out
        jp = self.job.payload
        # (a res_out job's RES32 blocks: from res_addr; its ACT8 rows use y_row_addr)
        y_blk_addr = per_block_at(Mux(jp.res_out, jp.res_addr, jp.y_addr), j.y_stride, "y_blk_addr")
        y_row_addr = per_block_at(jp.y_addr, j.dim << LOGR, "y_row_addr")
        y_rec_addr = per_block_at(jp.y_addr, rec_bytes << LOGR, "y_rec_addr")
        y_scale_addr = per_block_at(jp.y_scale, Const(SB, 64), "y_scale_addr")
        # (registered DSP products: nv changes with blk only)
        act8_bytes, lat_a8 = pipelined_product(m, nv, j.dim, name="act8_bytes")
        rec_block_bytes, lat_rb = pipelined_product(m, nv, rec_bytes, name="rec_block_bytes")
        # ... current once their pipelines have caught up with a new block's nv (an early store's
        # write command comes two cycles after the block steps): a countdown from the step
        bytes_lat = 1 + max(lat_a8, lat_rb)
        bytes_wait = Signal(range(bytes_lat + 1))
        bytes_ok = Signal(init=1)
        with m.If(start | blk_inc):
            m.d.sync += [bytes_wait.eq(bytes_lat), bytes_ok.eq(0)]
        with m.Elif(~bytes_ok):
            m.d.sync += [bytes_wait.eq(bytes_wait - 1), bytes_ok.eq(bytes_wait == 1)]
        pending = Signal(16)
        m.d.comb += self.out_done.ready.eq(1)
        dones = [self.out_done.valid]          # answers of several ports can arrive in one cycle
        done_err = self.out_done.valid & self.out_done.payload.error
        for i in range(g.kv_ports):
            m.d.comb += self.sw_done[i].ready.eq(1)
            dones.append(self.sw_done[i].valid)
            done_err = done_err | (self.sw_done[i].valid & self.sw_done[i].payload.error)
        # the count of this cycle's answers registered before it is taken off: the popcount of the
        # 17 ports' acknowledgements and the 16-bit update in one cycle were 3.47 ns in
        # u280_llm512's vector engine; ``pending`` reaches 0 a cycle later (a cycle a job)
        done_count = Signal(range(len(dones) + 1))
        m.d.sync += done_count.eq(sum(dones))
        m.d.sync += pending.eq(pending + wc_take - done_count)
        with m.If(done_err):
            m.d.sync += err.eq(1)
        # the mantissa word read (KV read-modify-write)
        rc_valid = Signal()
        rc_addr = Signal(64)
        rd_take = Signal()
        # the store is in RDATA: a flag set and cleared with the state, so the ports' read data
        # sees a flip-flop instead of the store FSM's state decode
        rd_mode = Signal()
        m.d.comb += rd_take.eq(rd_mode & ~rc_valid)
        pf_valid = Signal()                  # read-ahead of the first row's mantissa words (below)
        pf_addr = Signal(64)
        pf_g = Signal(range(NG))             # its head's port group
        pf_port = Signal(range(len(lay.ports)))
        m.d.comb += pf_port.eq(j.port + (pf_g << 1))
        w_valid, w_payload = Const(0), Const(0, W)
        # the read commands (read-ahead first) leave through a register slice with their port, as
        # the write commands do: a port's command valid is a compare of registers, not of the
        # read-ahead's port sum and the store's state
        rc_take = Const(0)
        if g.kv_ports:
            m.submodules.rcmd_slice = rsl = SkidBuffer(64 + len(st_port))
            m.d.comb += [rsl.i.payload.eq(Cat(Mux(pf_valid, pf_addr, rc_addr), Mux(pf_valid, pf_port, st_port))),
                         rsl.i.valid.eq(pf_valid | rc_valid)]
            rc_take = (pf_valid | rc_valid) & rsl.i.ready
            r_addr, r_port, r_ready = rsl.o.payload[:64], rsl.o.payload[64:], Const(0)
        for i in range(g.kv_ports):
            sel = st_port == i + 1
            m.d.comb += [self.w_cmd[i].payload.addr.eq(r_addr),
                         self.w_cmd[i].payload.bytes.eq(span_words * W8),
                         self.w_cmd[i].valid.eq(rsl.o.valid & (r_port == i + 1)),
                         self.w_data[i].ready.eq(rd_take & sel)]
            r_ready = r_ready | ((r_port == i + 1) & self.w_cmd[i].ready)
            w_valid = Mux(sel, self.w_data[i].valid, w_valid)
            w_payload = Mux(sel, self.w_data[i].payload, w_payload)
        if g.kv_ports:
            m.d.comb += rsl.o.ready.eq(r_ready)
        with m.If(rc_take):
            m.d.sync += rc_valid.eq(0)

        # KV addresses of (row st_r, head st_h)
        st_r = Signal(range(R))
        st_h = Signal(range(max_heads + 1))
        st_j = Signal(range(DW + 1))         # word of a row
        st_c = Signal(range(max(DW * R, SBW * 4, 256, span_words) + 1))   # chunk of an item
        # the counters' last values, registered (job constants): an equality, not an add and compare
        dw_last = registered(m, range(DW + 1), dw - ways, name="dw_last")     # an ACT8 row's last op
        # st_j == dw_last as a flip-flop, set wherever an ACT8 row's VAL ops (re)start or step (they
        # start only from the write command's take): the row's end is no compare of st_j
        st_j_last = Signal()
        dwr_m1 = registered(m, range(DW * R + 1), dw * R - 1, name="dwr_m1")
        dwr_m2 = registered(m, signed(len(dwr_m1) + 2), dw * R - 2, name="dwr_m2")
        # BLK's last word (st_c == dwr_m1) as a flag set with st_c: CMD clears st_c, each BLK step
        # advances it, so the flag is dwr_m1 == 0 there and st_c == dwr_m1 - 1 before a step
        blk_last = Signal(name="st_blk_last")
        rd_words = Signal(range(span_words + 1))
        mants = Array(Signal(16, name=f"mant{i}") for i in range(max(ng, 1)))
        if att is not None and ng > 1:
            # the head's group mantissas, caught as its value words are quantized (a KV VAL op reads
            # its group's qp record: op_k is the word of the head, G >= L words per group; a wide op
            # catches each of its kv_span groups' mantissas)
            with m.If(t1_v & (t1_kind == _VAL) & kv_mode):
                first = ((t1_k << LOGL) >> exact_log2(G))[:exact_log2(ng)]
                m.d.sync += mants[first].eq(qrec[32:48])
                for k in range(1, kv_span):
                    with m.If(t1_span):
                        m.d.sync += mants[first + k].eq(qrps[k].data[32:48])
        elif att is not None:
            with m.If(t1_v & (t1_kind == _VAL) & kv_mode):
                m.d.sync += mants[0].eq(qrec[32:48])
        # The KV addresses of (row st_r, head st_hg of group st_g) are registers: st_vaddr (the
        # head's value bytes of the token) and st_maddr (its mantissa word). A row's part,
        # pool + page x (heads per group x head area) + the slot's offsets, comes from a
        # free-running pipeline on (bank, row) (kv_row below; the store waits for it in KROW, once
        # per row); the heads of a row step from it by additions, a group's first head from the
        # next pool registered ahead. No product or 64-bit sum of sums sits on a command's path.
        st_vaddr, st_maddr = Signal(64), Signal(64)
        row_ok = Signal()                    # the row pipeline holds (cbank, st_r)'s addresses
        if att is not None:
            ha8 = att.head_area(8)
            ha4 = att.head_area(4) if 4 in att.kv_bits else ha8
            vb8, vb4 = att.value_bytes(8), att.value_bytes(4)
            ha = Signal(range(max(ha4, ha8) + 1))
            vbytes = Signal(32)
            m.d.comb += [ha.eq(Mux(int4, ha4, ha8)), vbytes.eq(Mux(int4, vb4, vb8))]
            kv_rows = _kv_row_addresses(m, att, j, pages, pools, cbank, st_r, r0, multi, hg, int4, LOGR=LOGR,
                                     LOGW8=LOGW8, event=start | bt_we | (take & (r_item == _POOLS)))
            m.d.comb += row_ok.eq(kv_rows.ok)
            slot = kv_rows.slot
            pool_next = Signal(64)           # the next group's pool, registered ahead of its first head
            m.d.sync += pool_next.eq(pools[st_g + 1] if NG > 1 else pools[0])
            tok_per_word = max(W8 // (ng * 2), 1)
            tok_in_word = slot[:exact_log2(tok_per_word)] if tok_per_word > 1 else Const(0, 1)
            val_chunks = hd // L
            # registered job constants (int4 is one): the store FSM's next state compares flip-flops
            zero_chunks, zero_chunks_m1 = Signal(8), Signal(8)
            m.d.sync += [zero_chunks.eq(Mux(int4, (vb4 // W8) * 8 - val_chunks, (vb8 // W8) * 4 - val_chunks)),
                         zero_chunks_m1.eq(Mux(int4, (vb4 // W8) * 8 - val_chunks - 1,
                                               (vb8 // W8) * 4 - val_chunks - 1))]
            g_of_j = Signal(range(GPR))
            m.d.comb += g_of_j.eq(((st_h << exact_log2(hd)) + (st_j << LOGL)) >> exact_log2(G))
            # u16 position p of the span takes the head's mantissa p % ng when p // ng is the token's slot
            merged = []
            for p in range(span_words * W8 // 2):
                old = span[16 * p:16 * p + 16]
                if tok_per_word > 1:
                    merged.append(Mux((p // ng) == tok_in_word, mants[p % ng], old))
                else:
                    merged.append(mants[p % ng] if p < ng else old)
            merged_word = Cat(*merged)
            head_words = exact_log2(max(hd // L, 1))
            trl_chunks = (QRB - hd) // L
            qrec_ways = ways if val_chunks % ways == 0 else 1    # a head's words in whole words
        else:
            kv_rows = None
            ha = Const(0, 1)
            zero_chunks = Const(0, 8)
            zero_chunks_m1 = Const(0, 8)
            g_of_j = Const(0, 1)
            val_chunks = 1
            merged_word = Const(0, W)
            vbytes = Const(0, 32)
            head_words = 0
            trl_chunks = 1
            qrec_ways = 1
        m.d.comb += rc_addr.eq(st_maddr)
        st_last_row = st_r + 1 == nv
        first_row = Signal()                 # the store is at the job's first row
        m.d.comb += first_row.eq(blk_zero & (st_r == 0))
        # early store: head h (of the block's rows, in the walk's order) needs (h + 1) x gph groups'
        # parameters; need / need2 are that count for this head and the next, q_ok whether they are
        # in (registered: q_done only grows, and next_head below loads it for the next head from
        # need2, so the flag is never ahead of the memory and costs no cycle a head)
        gph = (hd // G) if att is not None else 1
        gpk = Mux(kv_mode, gph, 1)           # groups per head of this job's format
        q_need = Signal(range(R * GPR + 2 * gph + 1))
        q_need2 = Signal.like(q_need)
        q_ok = Signal()
        m.d.sync += q_ok.eq(q_done >= q_need)
        val_ok = Signal()
        m.d.comb += val_ok.eq(~early_store | q_ok)

        # read-ahead: the mantissa words of the job's first row (every head) are read as soon as its
        # block-table word is in, in head order; the store FSM takes them in RDATA. No write of this
        # job reaches them before (its value writes go elsewhere), so only later rows wait (WAITW).
        # Starts while the store FSM is idle at (row 0, head 0) of block 0: maddr is head 0's word.
        # With port groups the words of group g are read from pool g at the same offset (pf_off).
        pf_h = Signal(range(max_heads + 1))
        # the head loops' last values, registered job constants (equalities, not an add and compare,
        # on the store FSM's next state)
        heads_m1, hg_m1 = Signal(range(max_heads + 1)), Signal(range(max_heads + 1))
        m.d.sync += [heads_m1.eq(heads - 1), hg_m1.eq(hg - 1)]
        pf_hg = Signal(range(max_heads + 1))
        pf_off = Signal(64)
        pf_run = Signal()
        pf_started = Signal()
        if att is not None:
            with m.If(start):
                m.d.sync += [pf_h.eq(0), pf_hg.eq(0), pf_g.eq(0), pf_run.eq(0), pf_started.eq(0), st_r.eq(0),
                             st_h.eq(0), st_hg.eq(0), st_g.eq(0), st_port.eq(0)]
            # (the block-table words come before A: in A, row_ok is this block's, as with the whole
            # block loaded; an early store reaches head 0's RDATA while A still loads)
            with m.Elif(kv_mode & ~pf_started & blk_zero & ((loaded_ahead != 0) | in_last) & row_ok):
                m.d.sync += [pf_addr.eq(kv_rows.maddr), pf_off.eq(kv_rows.m_off), pf_run.eq(1), pf_started.eq(1)]
            # the next group's pool is registered from pf_g: a group's first word waits a cycle
            pf_pool = Signal(64)
            pf_hold = Signal()
            m.d.sync += [pf_pool.eq(pools[pf_g + 1] if NG > 1 else pools[0]), pf_hold.eq(0)]
            with m.If(pf_valid & rc_take):
                m.d.sync += [pf_addr.eq(pf_addr + ha), pf_h.eq(pf_h + 1), pf_hg.eq(pf_hg + 1)]
                with m.If(pf_hg == hg_m1):
                    m.d.sync += [pf_g.eq(pf_g + 1), pf_hg.eq(0), pf_hold.eq(1)]
                with m.If(pf_h == heads_m1):
                    m.d.sync += pf_run.eq(0)
            with m.If(pf_hold):
                m.d.sync += pf_addr.eq(pf_pool + pf_off)
            m.d.comb += pf_valid.eq(pf_run & ~pf_hold)

        # the head loop's ends as registers of the counters: a head's ops take two cycles or more
        # after the previous next_head (a VAL, then a TRL or MNT op), so these are current there
        hg_last_r, h_last_r, last_row_r = Signal(), Signal(), Signal()
        m.d.sync += [hg_last_r.eq(st_hg == hg_m1), h_last_r.eq(st_h == heads_m1), last_row_r.eq(st_last_row)]

        def next_head(again: str, new_row: str) -> None:
            """After head st_h of row st_r: the next head (state ``again``), the next row (state
            ``new_row``), or FLUSH. The KV addresses step with the head. (st_j is 0 here already:
            the head's VAL ops ended by clearing it; st_c is cleared by the next CMD or VAL end
            before an op reads it. Not clearing them keeps the TRL / MNT end off those counters.)"""
            m.d.sync += [st_h.eq(st_h + 1), st_hg.eq(st_hg + 1),
                         st_vaddr.eq(st_vaddr + ha), st_maddr.eq(st_maddr + ha)]
            m.d.sync += [q_need.eq(q_need + gpk), q_need2.eq(q_need2 + gpk), q_ok.eq(q_done >= q_need2)]
            with m.If(hg_last_r):
                m.d.sync += [st_hg.eq(0), st_g.eq(st_g + 1), st_port.eq(st_port + 2)]
                if kv_rows is not None:
                    m.d.sync += [st_vaddr.eq(pool_next + kv_rows.v_off), st_maddr.eq(pool_next + kv_rows.m_off)]
            with m.If(h_last_r):
                m.d.sync += [st_h.eq(0), st_hg.eq(0), st_g.eq(0), st_r.eq(st_r + 1),
                             st_port.eq(Mux(kv_mode, j.port, 0))]
                with m.If(last_row_r):
                    m.d.sync += st_r.eq(0)
                    store.next = "FLUSH"
                with m.Else():
                    store.next = new_row
            with m.Else():
                store.next = again

        # the TRL and MNT loops' end (st_c at its last value) as a flag set with st_c: next_head's
        # many updates wait on a flip-flop, not on a compare of st_c
        c_end = Signal()

        # one-hot: the store's state flags gate the micro-ops, the write commands and the ports'
        # handshakes (a binary state's decode was 4 of the 10 LUT levels into its next state)
        store = OneHotFSM(m, ["IDLE", "KROW", "CMD", "DRAIN", "BLK", "VAL", "TRL", "SCMD", "SCL", "ZERO",
                              "WAITW", "RDATA", "MERGE", "MCMD", "MNT", "FLUSH"], name="store")
        # the tile read address from the state's own flip-flop (not a decode of op_kind): BLK reads
        # word st_c (op_k), every other op word op_j (st_j < the head's words, so op_j is an OR)
        # a head's last value op (st_j at val_chunks - its step) as flags, one per format's step,
        # predicted from st_j and the step this cycle: VAL's next state waits on a flip-flop, not on a
        # compare of st_j (st_j is 0 outside VAL: every VAL ends by clearing it)
        val_end = {}
        for fmt, w in ((VectorOut.QREC, qrec_ways), (VectorOut.KV, kv_ways)):
            flag = Signal(name=f"st_val_end_{fmt.name.lower()}")
            stepping = store.ongoing("VAL") & room & val_ok & (j.out_fmt == fmt)

            def at(v):
                return st_j == v if v >= 0 else Const(0, 1)
            m.d.sync += flag.eq(Mux(stepping, Mux(flag, val_chunks == w, at(val_chunks - 2 * w)), at(val_chunks - w)))
            val_end[fmt] = flag
        with m.If(store.ongoing("BLK")):
            if R <= L:
                m.d.comb += store_addr.eq(st_c >> LOGR)
            else:
                m.d.comb += store_addr.eq((st_c >> exact_log2(R // L)) >> LOGL)
        with m.Else():
            m.d.comb += store_addr.eq(op_j)
        with store.State("IDLE"):
            m.d.sync += [st_j.eq(0), st_c.eq(0)]    # (unread here: cleared without the start's decode)
            with m.If(store_start):
                m.d.sync += [st_r.eq(0), st_h.eq(0), st_hg.eq(0), st_g.eq(0),
                             st_port.eq(Mux(kv_mode, j.port, 0)),
                             q_need.eq(gpk), q_need2.eq(gpk << 1), q_ok.eq(0)]
                with m.If(kv_mode):
                    store.next = "KROW"
                with m.Else():
                    store.next = "CMD"
        with store.State("KROW"):
            # a KV row's first head: its addresses from the row pipeline, once it holds this row
            with m.If(row_ok):
                if kv_rows is not None:
                    m.d.sync += [st_vaddr.eq(kv_rows.vaddr), st_maddr.eq(kv_rows.maddr)]
                store.next = "CMD"
        with store.State("CMD"):
            # a write to another port than the packer's waits until its words have left
            m.d.comb += wc_valid.eq(((st_port == out_port) | store_empty_r) & bytes_ok)
            with m.If(wc_take):
                m.d.sync += out_port.eq(st_port)
            with m.Switch(j.out_fmt):
                with m.Case(VectorOut.RES32):
                    m.d.comb += [wc_addr.eq(y_blk_addr), wc_bytes.eq((j.dim << 2) * R)]
                with m.Case(VectorOut.ACT8):
                    m.d.comb += [wc_addr.eq(y_row_addr), wc_bytes.eq(act8_bytes)]
                with m.Case(VectorOut.QREC):
                    m.d.comb += [wc_addr.eq(y_rec_addr), wc_bytes.eq(rec_block_bytes)]
                with m.Case(VectorOut.KV):
                    m.d.comb += [wc_addr.eq(st_vaddr), wc_bytes.eq(vbytes)]
            with m.If(st_res):
                m.d.comb += [wc_addr.eq(y_blk_addr), wc_bytes.eq((j.dim << 2) * R)]
            # the counters cleared while the command waits (none is read in CMD): not on its take
            m.d.sync += [st_j.eq(0), st_c.eq(0), st_j_last.eq(dw_last == 0), blk_last.eq(dwr_m1 == 0)]
            with m.If(wc_take):
                with m.If(direct | st_res):
                    store.next = "DRAIN"
                with m.Elif(j.out_fmt == VectorOut.RES32):
                    store.next = "BLK"
                with m.Else():
                    store.next = "VAL"
        with store.State("DRAIN"):
            # direct store: the sweep feeds the chunk FIFO; done when it has ended
            with m.If(sw1_ended):
                store.next = "FLUSH"
        with store.State("BLK"):
            with m.If(room):
                m.d.comb += [op_valid.eq(1), op_kind.eq(_BLK), op_k.eq(st_c)]
                m.d.sync += [st_c.eq(st_c + 1), blk_last.eq(st_c == dwr_m2)]
                with m.If(blk_last):
                    store.next = "FLUSH"
        with store.State("VAL"):
            with m.If(room & val_ok):
                m.d.comb += [op_valid.eq(1), op_kind.eq(_VAL), op_r.eq(st_r)]
                m.d.sync += st_j.eq(st_j + 1)
                with m.Switch(j.out_fmt):
                    with m.Case(VectorOut.ACT8):   # every word of every row, then the scale records
                        m.d.comb += [op_j.eq(st_j), op_g.eq(0), op_wide.eq(ways > 1)]
                        m.d.sync += [st_j.eq(st_j + ways), st_j_last.eq(st_j + ways == dw_last)]
                        with m.If(st_j_last):
                            m.d.sync += [st_j.eq(0), st_r.eq(st_r + 1), st_j_last.eq(dw_last == 0)]
                            with m.If(st_last_row):
                                m.d.sync += st_r.eq(0)
                                store.next = "SCMD"
                    with m.Case(VectorOut.QREC):   # the head's words, then its trailer
                        m.d.comb += [op_j.eq((st_h << head_words) | st_j), op_g.eq(st_h), op_wide.eq(qrec_ways > 1)]
                        m.d.sync += st_j.eq(st_j + qrec_ways)
                        with m.If(val_end[VectorOut.QREC]):
                            m.d.sync += [st_j.eq(0), st_c.eq(0), c_end.eq(int(trl_chunks == 1))]
                            store.next = "TRL"
                    with m.Default():              # KV: the head's words, padding, mantissas
                        m.d.comb += [op_j.eq((st_h << head_words) | st_j), op_g.eq(g_of_j), op_k.eq(st_j),
                                     op_wide.eq(kv_ways > 1)]
                        m.d.sync += st_j.eq(st_j + kv_ways)
                        with m.If(val_end[VectorOut.KV]):
                            m.d.sync += [st_j.eq(0), st_c.eq(0)]
                            with m.If(zero_chunks != 0):
                                store.next = "ZERO"
                            with m.Else():
                                store.next = "WAITW"
        with store.State("TRL"):
            with m.If(room):
                m.d.comb += [op_valid.eq(1), op_kind.eq(_TRL), op_r.eq(st_r), op_g.eq(st_h), op_k.eq(st_c)]
                m.d.sync += [st_c.eq(st_c + 1), c_end.eq(st_c + 1 == trl_chunks - 1)]
                with m.If(c_end):
                    next_head("VAL", "VAL")
        with store.State("SCMD"):
            m.d.comb += [wc_valid.eq(1), wc_addr.eq(y_scale_addr), wc_bytes.eq(SB)]
            m.d.sync += st_c.eq(0)           # (as in CMD: not on the take)
            with m.If(wc_take):
                store.next = "SCL"
        with store.State("SCL"):
            with m.If(room):
                m.d.comb += [op_valid.eq(1), op_kind.eq(_SCL), op_k.eq(st_c)]
                m.d.sync += st_c.eq(st_c + 1)
                with m.If(st_c == SBW * 4 - 1):
                    store.next = "FLUSH"
        with store.State("ZERO"):
            with m.If(room):
                m.d.comb += [op_valid.eq(1), op_kind.eq(_ZERO)]
                m.d.sync += st_c.eq(st_c + 1)
                with m.If(st_c == zero_chunks_m1):
                    store.next = "WAITW"
        with store.State("WAITW"):
            with m.If(first_row):
                # the job's first row: its mantissa words were read ahead (no earlier write of
                # this job can touch them; earlier jobs are done)
                m.d.sync += [rd_words.eq(0), rd_mode.eq(1)]
                store.next = "RDATA"
            with m.Elif((pending == 0) & store_empty_r):
                # every earlier KV write acknowledged: the mantissa word holds what they wrote
                m.d.sync += [rc_valid.eq(1), rd_words.eq(0), rd_mode.eq(1)]
                store.next = "RDATA"
        with store.State("RDATA"):
            with m.If(rd_take & w_valid):
                for w in range(span_words):
                    with m.If(rd_words == w):
                        m.d.sync += span[w * W:(w + 1) * W].eq(w_payload)
                m.d.sync += rd_words.eq(rd_words + 1)
                with m.If(rd_words + 1 == span_words):
                    m.d.sync += [st_c.eq(0), rd_mode.eq(0)]
                    store.next = "MERGE"
        with store.State("MERGE"):
            # the head's mantissas were caught during its VAL ops (two or more cycles ago)
            m.d.sync += span.eq(merged_word)
            store.next = "MCMD"
        with store.State("MCMD"):
            m.d.comb += [wc_valid.eq(1), wc_addr.eq(st_maddr), wc_bytes.eq(span_words * W8)]
            m.d.sync += [st_c.eq(0), c_end.eq(int(span_words == 1))]     # (as in CMD)
            with m.If(wc_take):
                store.next = "MNT"
        with store.State("MNT"):
            with m.If(room):
                m.d.comb += [op_valid.eq(1), op_kind.eq(_MNT), op_k.eq(st_c)]
                m.d.sync += [st_c.eq(st_c + 1), c_end.eq(st_c + 1 == span_words - 1)]
                with m.If(c_end):
                    next_head("CMD", "KROW")
        with store.State("FLUSH"):
            # no micro-op reads the tiles any more: the next block may be loaded (an early store
            # may get here before the main FSM waits for it: it waits too); a res_out job's direct
            # part ends here without store_done: its ACT8 store starts after the norm
            with m.If(st_res):
                m.d.sync += [st_res.eq(0), sw1_ended.eq(0)]
                store.next = "IDLE"
            with m.Elif((st_inflight == 0) & ~t1_v & in_storing):
                m.d.comb += store_done.eq(1)
                m.d.sync += sw1_ended.eq(0)
                store.next = "IDLE"

        # -- the block sequence ------------------------------------------------------------------
        # everything written and acknowledged, one cycle late: in FINISH nothing enters the store any
        # more, so the registered flag (taken in FINISH only) is safe and keeps the FIFO levels and
        # the answer count off the state register
        drained = Signal()
        with m.FSM(name="main") as main_fsm:
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [blk.eq(0), blk_zero.eq(1)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                with m.If((loaded_ahead != 0) | in_last):
                    m.d.sync += [sw_active.eq(1), sw_second.eq(0), sw_r.eq(0), sw_j.eq(0),
                                 g_final.eq(0), qp_n.eq(0), qp_r.eq(0), qp_g.eq(0)]
                    # quantized output without a norm: QPARAM follows the sweep's groups
                    stream = quant_out & (j.norm == VectorNorm.NONE) & ~direct
                    early = stream & ~has_b & ((j.out_fmt == VectorOut.QREC) | kv_mode)
                    # the direct store's write command, or the early store's start
                    m.d.comb += store_start.eq(feed | early)
                    m.d.sync += st_res.eq(dual)
                    m.d.sync += [qp_stream.eq(stream), qp_active.eq(stream), early_store.eq(early),
                                 q_done.eq(0)]
                    m.next = "SWEEP1"
            with m.State("SWEEP1"):
                m.d.comb += in_store.eq(early_store)
                with m.If(~sweeping & ~rd_v):
                    with m.If(direct):
                        m.d.sync += sw1_ended.eq(1)
                        m.next = "STORING"
                    with m.Elif(j.norm != VectorNorm.NONE):
                        m.d.sync += [sc_r.eq(0), sc_active.eq(1), sc_sent.eq(0), sw1_ended.eq(dual)]
                        m.next = "SCALAR"
                    with m.Elif(quant_out):
                        m.next = "QPARAM"          # its walk started with the sweep
                    with m.Else():
                        m.next = "STORE"
            with m.State("SCALAR"):
                scalar_done = ~sc_active & ~sc_wait & (sc_r == nv)
                with m.If(scalar_done if tables_in is None else scalar_done & tables_in):   # gamma, beta in
                    m.d.sync += [sw_active.eq(1), sw_second.eq(1), sw_r.eq(0), sw_j.eq(0)]
                    m.next = "SWEEP2"
            with m.State("SWEEP2"):
                with m.If(~sweeping & ~rd_v):
                    m.d.sync += sw_second.eq(0)
                    with m.If(quant_out):
                        m.d.sync += [qp_active.eq(1), qp_r.eq(0), qp_g.eq(0), qp_stream.eq(0)]
                        m.next = "QPARAM"
                    with m.Else():
                        m.next = "STORE"
            with m.State("QPARAM"):
                m.d.comb += in_store.eq(early_store)
                with m.If(~qp_busy):
                    m.next = "STORE"
            with m.State("STORE"):
                # (a res_out job's direct part may still be draining: the store starts once it is idle)
                m.d.comb += in_store.eq(1)
                with m.If(~st_res):
                    m.d.comb += store_start.eq(~early_store)
                    m.next = "STORING"
            with m.State("STORING"):
                m.d.comb += [in_store.eq(1), in_storing.eq(1)]
                with m.If(store_done):
                    m.d.comb += blk_inc.eq(1)
                    m.d.sync += [blk.eq(blk + 1), blk_zero.eq(0)]
                    with m.If(last_blk):
                        m.next = "FINISH"
                    with m.Else():
                        m.next = "LOAD"
            with m.State("FINISH"):
                # every word written and acknowledged
                with m.If(drained):
                    m.next = "DONE"
            with m.State("DONE"):
                # the done record from the state register alone, not from the store's drain logic
                m.d.comb += all_done.eq(1)
                with m.If(self.done.ready):
                    m.next = "IDLE"

        m.d.sync += drained.eq(main_fsm.ongoing("FINISH") & store_empty & (pending == 0) & ~wc_valid)

        # -- counters: busy but moving nothing ---------------------------------------------------
        progress = take | self.src_cmd.ready & self.src_cmd.valid | sw_issue | op_valid | emit | qp_active | rc_take
        if tables_in is not None:
            progress = progress | t_take
        # stall registered (one cycle late, the same count): the progress terms are handshakes deep in
        # the engine, and the kernel's counter glue registers it once more
        m.d.sync += self.stall.eq(busy & ~progress)
        m.d.comb += self.mac_inc.eq(0)
        return m
