"""The attention engine: decode and prefill attention over a paged int8/int4 KV cache.

Dataflow (docs/engines/attention.md)::

    job -> Sequencer -> act_cmd (Q records) ........... act_data -> QLoader --\\
                     -> scale_cmd (block table words) . scale_data -> Sequencer (page join)
                     -> K/V commands (w_cmd[0], w_cmd[kv_ports-1]) and segment records
    w_data[0] -> KVFeed(K) -> ScoreUnit (QK, z, bank, max; exp2 probabilities) --p--\\
    w_data[.] -> KVFeed(V) ------------------------------------------------> ValueUnit -> out_cmd/out_data

With one KV port, K and V commands share ``w_cmd[0]`` in the order K(0) K(1) V(0) K(2) V(1) ...
(K leads by one segment, so the softmax of segment s overlaps the K reads of s+1); a route FIFO
steers the words. With two ports K and V stream in parallel.
"""
from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring

from ...engines.attention import attention_geometry
from ...layout import DesignLayout
from ..skid import SkidBuffer, slice_stream
from ..streams import DmaCommand
from .feed import KVFeed
from .fifo import StreamFIFO
from .geometry import DatapathGeometry
from .qload import QLoader, q_tile_layout
from .score import ScoreUnit
from .sequencer import Sequencer, kv_cmd_layout
from .signature import attention_signature
from .value import ValueUnit, out_tile_layout

__all__ = ["AttentionEngine"]


class AttentionEngine(wiring.Component):
    """The attention engine for one :class:`~hbmforge.layout.DesignLayout` with an attention engine."""

    def __init__(self, layout: DesignLayout):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {type(layout).__name__}")
        if layout.config.attention is None:
            raise ValueError(f"config {layout.config.name!r} has no attention engine")
        self._layout = layout
        self._geometry = geom = DatapathGeometry.of(attention_geometry(layout))
        signature = attention_signature(layout)
        # mac_inc below: K and V words of the widest format for all rows in one cycle
        assert signature.max_mac_inc == 2 * geom.rows * geom.lanes
        super().__init__(signature)

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    @property
    def geometry(self) -> DatapathGeometry:
        """The datapath geometry every sub-block is built from."""
        return self._geometry

    def _core(self, m, *, cmd_rows):
        """The parts both layouts share: sequencer, Q loader, score and value units, the tile and
        K/V command queues (``cmd_rows`` address pairs per command), wired to the engine's ports."""
        geom = self._geometry
        m.submodules.seq = seq = Sequencer(geom)
        m.submodules.qload = ql = QLoader(geom)
        m.submodules.score = sc = ScoreUnit(geom)
        m.submodules.value = vu = ValueUnit(geom)
        m.submodules.qtile_q = qtq = StreamFIFO(q_tile_layout(geom.rows), 2)
        m.submodules.otile_q = otq = StreamFIFO(out_tile_layout(geom.rows), 4)
        m.submodules.kcmd_q = kcq = StreamFIFO(kv_cmd_layout(cmd_rows), 2)
        m.submodules.vcmd_q = vcq = StreamFIFO(kv_cmd_layout(cmd_rows), 4)
        wiring.connect(m, wiring.flipped(self.job), seq.job)
        # the data port's read commands through register slices: the sequencer's state decode and
        # the kernel's routing into the port's command slice are separate register stages
        slice_stream(m, "act_cmd_slice", seq.act_cmd, self.act_cmd)
        slice_stream(m, "scale_cmd_slice", seq.scale_cmd, self.scale_cmd)
        # block-table words through a register slice too: the port's FIFO never sees the page
        # join's ready logic (one cycle of latency per block-table word)
        slice_stream(m, "bt_data_slice", self.scale_data, seq.bt_data)
        wiring.connect(m, wiring.flipped(self.act_data), ql.data)
        wiring.connect(m, seq.qtile, qtq.i)
        wiring.connect(m, qtq.o, ql.tile)
        wiring.connect(m, seq.otile, otq.i)
        wiring.connect(m, otq.o, vu.tile)
        wiring.connect(m, seq.kcmd, kcq.i)
        wiring.connect(m, seq.vcmd, vcq.i)
        return seq, ql, sc, vu, otq, kcq, vcq

    def elaborate(self, platform):
        if self._geometry.head_parallel:
            return self._elaborate_head_parallel()
        m = Module()
        geom = self._geometry
        kvp = geom.kv_ports

        seq, ql, sc, vu, otq, kcq, vcq = self._core(m, cmd_rows=1)
        m.submodules.kfeed = kf = KVFeed(geom)
        m.submodules.vfeed = vf = KVFeed(geom)
        m.submodules.kseg_q = ksq = StreamFIFO(geom.seg_layout(), 8)
        m.submodules.vseg_q = vsq = StreamFIFO(geom.seg_layout(), 8)
        wiring.connect(m, seq.kseg, ksq.i)
        wiring.connect(m, seq.vseg, vsq.i)
        wiring.connect(m, ksq.o, kf.seg)
        wiring.connect(m, vsq.o, vf.seg)

        # -- K/V command issue and data routing -----------------------------------------------
        def issue(port, q, phase):
            rec = q.o.payload
            m.d.comb += [port.payload.addr.eq(Mux(phase, rec.v_addr, rec.s_addr)),
                         port.payload.bytes.eq(Mux(phase, rec.v_bytes, rec.s_bytes))]

        if kvp == 2:
            for port, q, name in ((self.w_cmd[0], kcq, "k"), (self.w_cmd[1], vcq, "v")):
                phase = Signal(name=f"{name}_phase")
                issue(port, q, phase)
                m.d.comb += port.valid.eq(q.o.valid)
                with m.If(port.valid & port.ready):
                    m.d.sync += phase.eq(~phase)
                    with m.If(phase):
                        m.d.comb += q.o.ready.eq(1)
            wiring.connect(m, wiring.flipped(self.w_data[0]), kf.data)
            wiring.connect(m, wiring.flipped(self.w_data[1]), vf.data)
        else:
            m.submodules.route = route = StreamFIFO(1, 16)
            port = self.w_cmd[0]
            phase = Signal()
            sel_v = Signal()                # segment being issued is a V segment
            lead = Signal(range(4))         # K segments issued minus V segments issued
            pick_k = kcq.o.valid & (lead < 2)
            cur_v = Signal()
            m.d.comb += cur_v.eq(Mux(phase, sel_v, ~pick_k))
            rec_k, rec_v = kcq.o.payload, vcq.o.payload
            m.d.comb += [port.payload.addr.eq(Mux(cur_v, Mux(phase, rec_v.v_addr, rec_v.s_addr),
                                                  Mux(phase, rec_k.v_addr, rec_k.s_addr))),
                         port.payload.bytes.eq(Mux(cur_v, Mux(phase, rec_v.v_bytes, rec_v.s_bytes),
                                                   Mux(phase, rec_k.v_bytes, rec_k.s_bytes)))]
            have = Mux(cur_v, vcq.o.valid, kcq.o.valid)
            m.d.comb += [port.valid.eq(have & (phase | route.i.ready)), route.i.payload.eq(cur_v)]
            with m.If(port.valid & port.ready):
                m.d.sync += phase.eq(~phase)
                with m.If(~phase):
                    m.d.comb += route.i.valid.eq(1)
                    m.d.sync += sel_v.eq(cur_v)
                with m.Else():
                    with m.If(cur_v):
                        m.d.comb += vcq.o.ready.eq(1)
                        m.d.sync += lead.eq(lead - 1)
                    with m.Else():
                        m.d.comb += kcq.o.ready.eq(1)
                        m.d.sync += lead.eq(lead + 1)
            wd = self.w_data[0]
            to_v = route.o.payload[0]
            m.d.comb += [kf.data.payload.eq(wd.payload), vf.data.payload.eq(wd.payload),
                         kf.data.valid.eq(wd.valid & route.o.valid & ~to_v),
                         vf.data.valid.eq(wd.valid & route.o.valid & to_v),
                         wd.ready.eq(route.o.valid & Mux(to_v, vf.data.ready, kf.data.ready)),
                         route.o.ready.eq(Mux(to_v, vf.seg_done, kf.seg_done))]
            for i in range(1, len(self.w_cmd)):
                m.d.comb += [self.w_cmd[i].valid.eq(0), self.w_data[i].ready.eq(0)]
        if kvp == 2:
            for i in range(2, len(self.w_cmd)):
                m.d.comb += [self.w_cmd[i].valid.eq(0), self.w_data[i].ready.eq(0)]

        wiring.connect(m, kf.item, sc.item)
        wiring.connect(m, vf.item, vu.item)
        m.d.comb += [kf.bits4.eq(seq.bits4), vf.bits4.eq(seq.bits4)]
        self._datapath(m, seq, ql, sc, vu, otq, kf, vf)
        return m

    def _datapath(self, m, seq, ql, sc, vu, otq, kf, vf):
        """The units behind the feeds and the completion logic (``kf``/``vf``: the K and V feeds
        whose segment records the units follow). The caller connects the units' items."""
        geom = self._geometry
        # -- datapath -------------------------------------------------------------------------
        m.d.comb += [sc.bits4.eq(seq.bits4),
                     vu.bits4.eq(seq.bits4), sc.window.eq(seq.window), sc.sink.eq(seq.sink), sc.bidir.eq(seq.bidir),
                     vu.o_addr.eq(seq.o_addr)]
        m.d.comb += sc.seg.eq(kf.seg_out)
        m.d.comb += vu.seg.eq(vf.seg_out)
        m.d.comb += [sc.tq_valid.eq(ql.tq_valid), ql.tq_take.eq(sc.tq_take), sc.tq_q.eq(ql.tq_q),
                     sc.tq_mult.eq(ql.tq_mult), sc.tq_shift.eq(ql.tq_shift), sc.tq_pos.eq(ql.tq_pos),
                     sc.tq_nv.eq(ql.tq_nv)]
        wiring.connect(m, sc.p, vu.p)
        # the rows' write commands through a queue: the value unit sends a row's command while the
        # row before still leaves (the data port's writer takes a command once the one before has
        # its data)
        m.submodules.ocmd_q = ocq = StreamFIFO(DmaCommand, 2)
        wiring.connect(m, vu.out_cmd, ocq.i)
        wiring.connect(m, ocq.o, wiring.flipped(self.out_cmd))
        wiring.connect(m, vu.out_data, wiring.flipped(self.out_data))

        # -- completion -------------------------------------------------------------------------
        tiles_out = Signal(32)
        cmds = Signal(32)
        acks = Signal(32)
        err = Signal()
        with m.If(seq.start):
            m.d.sync += [tiles_out.eq(0), cmds.eq(0), acks.eq(0), err.eq(0)]
        with m.Else():
            with m.If(vu.tile_done):
                m.d.sync += tiles_out.eq(tiles_out + 1)
            with m.If(vu.out_cmd.valid & vu.out_cmd.ready):      # as queued: acks == cmds when all are done
                m.d.sync += cmds.eq(cmds + 1)
            with m.If(self.out_done.valid):
                m.d.sync += [acks.eq(acks + 1), err.eq(err | self.out_done.payload.error)]
        m.d.comb += self.out_done.ready.eq(1)
        # two cycles late: the two 32-bit compares registered apart, then their AND (the three
        # terms from one cycle), so neither compare reaches the done handshake
        finished, gen_end, tiles_all, acks_all = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [gen_end.eq(seq.gen_done & ~seq.start), tiles_all.eq(tiles_out == seq.tiles),
                     acks_all.eq(acks == cmds), finished.eq(gen_end & tiles_all & acks_all)]
        fin_r = Signal()
        with m.If(finished & ~fin_r):
            m.d.comb += self.done.valid.eq(1)
            m.d.comb += self.done.payload.error.eq(err)
            with m.If(self.done.ready):
                m.d.sync += fin_r.eq(1)
        m.d.comb += seq.idle.eq(fin_r)
        with m.If(seq.start):
            m.d.sync += fin_r.eq(0)

        busy = Signal()
        with m.If(self.job.valid & self.job.ready):
            m.d.sync += busy.eq(1)
        with m.If(self.done.valid & self.done.ready):
            m.d.sync += busy.eq(0)
        m.d.comb += self.busy.eq(busy)
        # stall registered (one cycle late, the same count): the fire decisions stay out of the kernel's counter
        m.d.sync += self.stall.eq(busy & ~sc.fire & ~vu.fire)
        e = Signal(range(geom.lanes + 1))       # head dims one value word of the job's format carries
        m.d.comb += e.eq(geom.select_format(seq.bits4, int4=geom.int4_lanes, int8=geom.int8_lanes))
        # the fires and their row counts registered, then the sum registered: two cycles late, the
        # same total; the fire logic stays out of the products and the kernel's sum
        # (the row counts' products by e registered with them: the fires select registers)
        k_fire, v_fire = Signal(), Signal()
        k_macs = Signal(range(geom.rows * geom.lanes + 1))
        v_macs = Signal.like(k_macs)
        m.d.sync += [k_fire.eq(sc.fire), k_macs.eq(sc.rows * e), v_fire.eq(vu.fire & otq.o.valid),
                     v_macs.eq(otq.o.payload.nv * e)]
        inc_k = Mux(k_fire, k_macs, 0)
        inc_v = Mux(v_fire, v_macs, 0)
        m.d.sync += self.mac_inc.eq(inc_k + inc_v)

    # -- head-parallel engine -------------------------------------------------------------------
    def _elaborate_head_parallel(self):
        """``head_parallel``: K of row r on ``w<2r>``, V on ``w<2r+1>`` (kv_ports = 2 x rows).

        A shared-layout job (kv_layout 0) uses row 0's K port ``w0`` and row R-1's V port
        ``w<2R-1>`` = ``w<kv_ports-1>`` exactly as a two-port engine, its word feeding every row.
        A head-parallel job (kv_layout 1) issues each segment's reads on every port (row r at its
        own group's pool) and the QK and PV units take the R words of one token offset together:
        the R feeds are joined (an item goes only when every row's is there), so the rows stay in
        lockstep and share the segment bookkeeping of the lead feed (K: row 0, V: row R-1)."""
        m = Module()
        geom = self._geometry
        R = geom.rows

        seq, ql, sc, vu, otq, kcq, vcq = self._core(m, cmd_rows=R)
        kfs, vfs = [], []
        for r in range(R):
            kfs.append(KVFeed(geom))
            vfs.append(KVFeed(geom))
            m.submodules[f"kfeed{r}"] = kfs[r]
            m.submodules[f"vfeed{r}"] = vfs[r]
        ksqs, vsqs = [], []
        for r in range(R):
            ksqs.append(StreamFIFO(geom.seg_layout(), 8))
            vsqs.append(StreamFIFO(geom.seg_layout(), 8))
            m.submodules[f"kseg_q{r}"] = ksqs[r]
            m.submodules[f"vseg_q{r}"] = vsqs[r]
        hp = seq.hp

        def k_active(r):
            return hp | (r == 0)

        def v_active(r):
            return hp | (r == R - 1)

        # -- segment records: one FIFO per feed, filled together ------------------------------
        # the sequencer's records through a register slice each: the AND of the R queues' room
        # (and the writes it enables) stays off the sequencer's issue and the other stream's queues
        for seq_src, qs, active, name in ((seq.kseg, ksqs, k_active, "kseg"), (seq.vseg, vsqs, v_active, "vseg")):
            src = stream.Signature(geom.seg_layout()).create()
            slice_stream(m, f"{name}_slice", seq_src, src)
            conds = [qs[r].i.ready | ~active(r) for r in range(R)]
            ok = conds[0]
            for c in conds[1:]:
                ok = ok & c
            m.d.comb += src.ready.eq(ok)
            for r in range(R):
                m.d.comb += [qs[r].i.payload.eq(src.payload), qs[r].i.valid.eq(src.valid & ok & active(r))]
        for r in range(R):
            wiring.connect(m, ksqs[r].o, kfs[r].seg)
            wiring.connect(m, vsqs[r].o, vfs[r].seg)

        # -- K/V command issue: every active port issues (scales, values) of the segment ---------
        for q, ports, active, name in ((kcq, [self.w_cmd[2 * r] for r in range(R)], k_active, "k"),
                                       (vcq, [self.w_cmd[2 * r + 1] for r in range(R)], v_active, "v")):
            rec = q.o.payload
            finishing = []
            for r, port in enumerate(ports):
                phase = Signal(name=f"{name}{r}_phase")
                done = Signal(name=f"{name}{r}_done")
                m.d.comb += [port.payload.addr.eq(Mux(phase, rec.v_addr[r], rec.s_addr[r])),
                             port.payload.bytes.eq(Mux(phase, rec.v_bytes, rec.s_bytes)),
                             port.valid.eq(q.o.valid & active(r) & ~done)]
                fin = Signal(name=f"{name}{r}_fin")
                m.d.comb += fin.eq(done | ~active(r) | (port.valid & port.ready & phase))
                with m.If(port.valid & port.ready):
                    m.d.sync += phase.eq(~phase)
                    with m.If(phase):
                        m.d.sync += done.eq(1)
                finishing.append((fin, done))
            pop = Signal(name=f"{name}cmd_pop")
            all_fin = finishing[0][0]
            for fin, _ in finishing[1:]:
                all_fin = all_fin & fin
            m.d.comb += [pop.eq(q.o.valid & all_fin), q.o.ready.eq(pop)]
            with m.If(pop):
                m.d.sync += [done.eq(0) for _, done in finishing]

        # -- words: feed r from its port; joined items into the units ---------------------------
        for r in range(R):
            wiring.connect(m, wiring.flipped(self.w_data[2 * r]), kfs[r].data)
            wiring.connect(m, wiring.flipped(self.w_data[2 * r + 1]), vfs[r].data)
        for i in range(2 * R, len(self.w_cmd)):
            m.d.comb += [self.w_cmd[i].valid.eq(0), self.w_data[i].ready.eq(0)]

        def join(feeds, active, lead, unit, name):
            """The R feeds' items joined into ``unit`` through a register slice (the lead's item and
            segment record, each row's lanes after the layout mux): the join's AND of the feeds'
            valids and the mux stay in front of a register, so neither reaches the unit's take,
            its probability FIFO or the DSP inputs. Returns the segment record beside the item."""
            ok = feeds[0].item.valid | ~active(0)
            for r in range(1, R):
                ok = ok & (feeds[r].item.valid | ~active(r))
            lay = data.StructLayout({"item": geom.item_layout(), "seg": geom.seg_layout(),
                                     "rows": data.ArrayLayout(geom.row_data_layout(), R)})
            m.submodules[f"{name}_join"] = sk = SkidBuffer(lay.size)
            into, out = Signal(lay, name=f"{name}_join_in"), Signal(lay, name=f"{name}_join_out")
            m.d.comb += [into.item.eq(lead.item.payload), into.seg.eq(lead.seg_out)]
            for r in range(R):
                own, shared = feeds[r].item.payload, lead.item.payload
                m.d.comb += [into.rows[r].lanes.eq(Mux(hp, own.lanes, shared.lanes)),
                             into.rows[r].mants.eq(Mux(hp, own.mants, shared.mants)),
                             feeds[r].item.ready.eq(sk.i.ready & ok & active(r))]
            m.d.comb += [sk.i.valid.eq(ok), sk.i.payload.eq(into), out.eq(sk.o.payload),
                         unit.item.valid.eq(sk.o.valid), unit.item.payload.eq(out.item), sk.o.ready.eq(unit.item.ready)]
            m.d.comb += [unit.row_data[r].eq(out.rows[r]) for r in range(R)]
            return SimpleNamespace(seg_out=out.seg)

        k_lead = join(kfs, k_active, kfs[0], sc, "k")
        v_lead = join(vfs, v_active, vfs[R - 1], vu, "v")

        for f in kfs + vfs:
            m.d.comb += f.bits4.eq(seq.bits4)
        self._datapath(m, seq, ql, sc, vu, otq, k_lead, v_lead)
        return m
