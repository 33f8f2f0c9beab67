"""The oblivious map unit: queries over encrypted bins in host memory, trusted state in HBM.

Dataflow of one query (docs/engines/memory.md; golden model :mod:`hbmforge.numerics.omap`,
which makes the same memory operations in the same order)::

    query record (HBM) -> PRF block (ChaCha20, k_prf, query counter): dummy bin, next label
        -> hash block (ChaCha20, k_hash, key) -> two directory buckets (HBM), scanned way by way
        -> bin meta (HBM: stash head, version)
        -> at slot cycle t_read: host read of one bin -> BIN buffer
        -> AEAD pass: Poly1305 over the ciphertext, ChaCha20 keystream XOR -> tag check
        -> take the entry (a bin slot, or its stash node, marked dead) -> GET/PUT/DELETE
        -> evict up to Z stash nodes of the bin into its free slots (directory updated)
        -> push the entry to a fresh stash node labelled with the next label
        -> AEAD pass (encrypt, next version) -> at slot cycle t_write: host write of the bin
        -> result record (HBM) -> next query at slot cycle t_slot

Every host transaction of a query is issued at a fixed cycle offset of its slot and has a fixed
size, so the host-visible trace does not depend on the queries (a slot whose work runs past
an offset is counted in the control block's ``overruns``). HBM operations go through one
reader and one writer, one at a time; the host bin through the backing port's reader and
writer. The control block is read at the start of every job and written back at its end, also
when the job stops on a run-time error (``fault``): a tag mismatch (OMAP_TAMPERED), an empty
node pool (OMAP_STASH_FULL), an entry missing from its bin (OMAP_CORRUPT); a control block
this unit cannot run (OMAP_BAD_STATE) is not written back.
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hbmforge.encodings import ErrorCode, OmapAction, OmapOp, OmapStatus
from hbmforge.engines.memory import (CB_BYTES, MAX_BINS_LOG2, MAX_DIR_LOG2, MAX_NODES, NODE_DEAD, NODE_FREE,
                                     NODE_LIVE, OMAP_MAGIC, STASH_BIT, ControlBlock, OmapGeometry)
from hbmforge.mathutil import exact_log2

from ..streams import JobDone, dma_command_stream, word_stream
from .chacha import ChaCha20Core
from .poly1305 import Poly1305Core

__all__ = ["OmapJob", "ObliviousMapUnit"]


class OmapJob(data.Struct):
    action: OmapAction
    ctrl_addr: 64
    src_addr: 64
    dst_addr: 64
    count: 32


_CB = {name: (off, 32 if fmt == "I" else 64) for name, off, fmt in ControlBlock.FIELDS}
_CB.update({name: (off, 256) for name, off in ControlBlock.KEYS})


class ObliviousMapUnit(wiring.Component):
    """One OMAP job at a time (``job`` -> ``done`` with ``fault``), over four DMA channels."""

    def __init__(self, geometry: OmapGeometry):
        if not isinstance(geometry, OmapGeometry):
            raise TypeError(f"geometry must be an OmapGeometry, got {geometry!r}")
        self._g = geometry
        W = geometry.word_bytes * 8
        super().__init__({
            "job": In(stream.Signature(OmapJob)),
            "done": Out(stream.Signature(JobDone)),
            "fault": Out(ErrorCode),
            "rd_cmd": Out(dma_command_stream()), "rd_data": In(word_stream(W)),
            "wr_cmd": Out(dma_command_stream()), "wr_data": Out(word_stream(W)),
            "wr_done": In(stream.Signature(JobDone)),
            "h_cmd": Out(dma_command_stream()), "h_data": In(word_stream(W)),
            "h_wcmd": Out(dma_command_stream()), "h_wdata": Out(word_stream(W)),
            "h_wdone": In(stream.Signature(JobDone)),
            "busy": Out(1), "stall": Out(1),
        })

    @property
    def geometry(self) -> OmapGeometry:
        return self._g

    def elaborate(self, platform):
        m = Module()
        g = self._g
        WB = g.word_bytes
        W = 8 * WB
        SLOT = 8 * g.slot_bytes
        UNIT = 8 * g.unit
        V = 8 * g.value_bytes
        Z = g.bin_slots
        WAYS = g.dir_ways
        slot_words = g.slot_bytes // WB
        unit_words = g.unit // WB
        plain_words = g.plain_bytes // WB
        bin_words = g.bin_bytes // WB
        reg_bytes = max(CB_BYTES, g.node_bytes, g.bucket_bytes, g.record_bytes, WB)
        reg_words = reg_bytes // WB

        m.submodules.chacha = chacha = ChaCha20Core()
        m.submodules.poly = poly = Poly1305Core()

        # -- the job and the control block ----------------------------------------------------
        job = Signal(OmapJob)
        cb = Signal(8 * CB_BYTES)

        def f(name):
            off, bits = _CB[name]
            return cb[8 * off:8 * off + bits]

        bins_mask = Signal(MAX_BINS_LOG2)
        dir_mask = Signal(MAX_DIR_LOG2)
        m.d.comb += [bins_mask.eq((Const(1, MAX_BINS_LOG2 + 1) << f("bins_log2")[:5]) - 1),
                     dir_mask.eq((Const(1, MAX_DIR_LOG2 + 1) << f("dir_log2")[:5]) - 1)]

        # -- HBM operations: one read into ``rreg`` or one write from ``wreg`` at a time --------
        rreg = Signal(8 * reg_bytes)
        wreg = Signal(8 * reg_bytes)
        op_start = Signal()
        op_write = Signal()
        op_addr = Signal(64)
        # the address as base and offset, chosen by the state, added the cycle after: the add of
        # a control-block field and the mux by state in one cycle were a 3.6 ns path (a cycle per
        # operation, which omap_slot_timing charges)
        op_base = Signal(64)
        op_off = Signal(64)
        op_addr_go = Signal()
        op_bytes = Signal(range(reg_bytes + 1))
        op_done = Signal()
        op_busy = Signal()
        op_words = Signal(range(reg_words + 1))
        op_idx = Signal(range(reg_words + 1))
        op_cmd_pending = Signal()
        op_is_write = Signal()
        m.d.comb += [self.rd_cmd.payload.addr.eq(op_addr), self.rd_cmd.payload.bytes.eq(op_bytes),
                     self.wr_cmd.payload.addr.eq(op_addr), self.wr_cmd.payload.bytes.eq(op_bytes)]
        with m.If(op_start):
            m.d.sync += [op_busy.eq(1), op_addr_go.eq(1), op_is_write.eq(op_write), op_idx.eq(0)]
        with m.If(op_addr_go):
            m.d.sync += [op_addr.eq(op_base + op_off), op_addr_go.eq(0), op_cmd_pending.eq(1)]
        with m.If(op_busy & op_cmd_pending):
            m.d.comb += [self.rd_cmd.valid.eq(~op_is_write), self.wr_cmd.valid.eq(op_is_write)]
            with m.If(Mux(op_is_write, self.wr_cmd.ready, self.rd_cmd.ready)):
                m.d.sync += op_cmd_pending.eq(0)
        with m.If(op_busy & ~op_is_write):
            m.d.comb += self.rd_data.ready.eq(op_idx < op_words)
            with m.If(self.rd_data.valid & self.rd_data.ready):
                with m.Switch(op_idx):
                    for i in range(reg_words):
                        with m.Case(i):
                            m.d.sync += rreg[i * W:(i + 1) * W].eq(self.rd_data.payload)
                m.d.sync += op_idx.eq(op_idx + 1)
                with m.If(op_idx + 1 == op_words):
                    m.d.sync += op_busy.eq(0)
                    m.d.comb += op_done.eq(1)
        wr_sent = Signal()
        with m.If(op_busy & op_is_write):
            m.d.comb += [self.wr_data.valid.eq(op_idx < op_words), self.wr_data.payload.eq(wreg.word_select(op_idx, W))]
            with m.If(self.wr_data.valid & self.wr_data.ready):
                m.d.sync += op_idx.eq(op_idx + 1)
            m.d.comb += [wr_sent.eq((op_idx == op_words) & ~op_cmd_pending & ~op_addr_go), self.wr_done.ready.eq(wr_sent)]
            with m.If(self.wr_done.valid & self.wr_done.ready):
                m.d.sync += op_busy.eq(0)
                m.d.comb += op_done.eq(1)

        # -- the bin buffer and its users -------------------------------------------------------
        m.submodules.bin_mem = bin_mem = Memory(shape=W, depth=bin_words, init=[])
        brd = bin_mem.read_port(domain="sync")
        bwr = bin_mem.write_port()
        bin_raddr = Signal(range(bin_words))
        bin_waddr = Signal(range(bin_words))
        bin_wdata = Signal(W)
        bin_we = Signal()
        m.d.comb += [brd.addr.eq(bin_raddr), brd.en.eq(1), bwr.addr.eq(bin_waddr), bwr.data.eq(bin_wdata),
                     bwr.en.eq(bin_we)]

        # host read of a bin into the buffer / host write of the buffer
        h_start_rd = Signal()
        h_start_wr = Signal()
        h_addr = Signal(64)
        h_busy = Signal()
        h_write = Signal()
        h_pending = Signal()
        h_idx = Signal(range(bin_words + 1))
        h_word = Signal(W)
        h_word_valid = Signal()
        h_done = Signal()
        h_rd_owner = Signal()           # the host write owns the bin read port
        m.d.comb += [self.h_cmd.payload.addr.eq(h_addr), self.h_cmd.payload.bytes.eq(g.bin_bytes),
                     self.h_wcmd.payload.addr.eq(h_addr), self.h_wcmd.payload.bytes.eq(g.bin_bytes)]
        # a host read takes words: h_busy & ~h_write & (h_idx < bin_words) as a flip-flop (the
        # compare was 7 LUT levels into the port's read FIFO)
        h_rx = Signal()
        with m.If(h_start_rd | h_start_wr):
            m.d.sync += [h_busy.eq(1), h_pending.eq(1), h_write.eq(h_start_wr), h_idx.eq(0), h_word_valid.eq(0),
                         h_rx.eq(~h_start_wr)]
        with m.If(h_busy & h_pending):
            m.d.comb += [self.h_cmd.valid.eq(~h_write), self.h_wcmd.valid.eq(h_write)]
            with m.If(Mux(h_write, self.h_wcmd.ready, self.h_cmd.ready)):
                m.d.sync += h_pending.eq(0)
        m.d.comb += self.h_data.ready.eq(h_rx)
        with m.If(h_rx):
            with m.If(self.h_data.valid):
                m.d.comb += [bin_wdata.eq(self.h_data.payload), bin_we.eq(1)]
                m.d.sync += h_idx.eq(h_idx + 1)
                with m.If(h_idx == bin_words - 1):
                    m.d.sync += [h_busy.eq(0), h_rx.eq(0)]
                    m.d.comb += h_done.eq(1)
        h_fetch = Signal()                  # a word was read from the buffer last cycle
        with m.If(h_busy & h_write):
            m.d.comb += h_rd_owner.eq(1)
            m.d.comb += [self.h_wdata.valid.eq(h_word_valid), self.h_wdata.payload.eq(h_word)]
            with m.If(self.h_wdata.valid & self.h_wdata.ready):
                m.d.sync += h_word_valid.eq(0)
            with m.If(h_fetch):
                m.d.sync += [h_word.eq(brd.data), h_word_valid.eq(1)]
            can_fetch = (~h_word_valid | (self.h_wdata.valid & self.h_wdata.ready)) & ~h_fetch & (h_idx < bin_words)
            with m.If(can_fetch):                # the read address: h_idx (below)
                m.d.sync += [h_fetch.eq(1), h_idx.eq(h_idx + 1)]
            with m.Else():
                m.d.sync += h_fetch.eq(0)
            m.d.comb += self.h_wdone.ready.eq((h_idx == bin_words) & ~h_word_valid & ~h_fetch & ~h_pending)
            with m.If(self.h_wdone.valid & self.h_wdone.ready):
                m.d.sync += h_busy.eq(0)
                m.d.comb += h_done.eq(1)

        # -- AEAD pass over the buffer: ChaCha20 keystream XOR, Poly1305 over the ciphertext ----
        a_start = Signal()
        a_encrypt = Signal()
        a_nonce = Signal(96)
        a_done = Signal()
        a_ok = Signal()
        ks = Signal(512)
        a_word = Signal(range(bin_words + 1))
        a_w1 = Signal(range(bin_words + 2))     # a_word + 1, kept beside it (CMP's read address)
        aead_busy = Signal()                    # the pass runs (not IDLE)
        aead_cmp = Signal()                     # ... in CMP
        a_x = Signal(W)                         # the word read
        ct = Signal(W)
        poly_parts = max(1, W // 128)           # 16-byte blocks per word
        half = Signal()                         # W = 64: the first half of a block is held
        held = Signal(64)
        part = Signal(range(poly_parts + 1))
        tag_calc = Signal(128)
        counter = Signal(32)
        m.d.comb += [chacha.req.payload.key.eq(0), chacha.req.payload.words.eq(0)]

        # every block of the pass asked for at once (the core keeps four in flight, in order):
        # block 0 (the Poly1305 key), then one per 64 bytes of the bin
        a_blocks = 1 + -(-g.plain_bytes // 64)
        a_asked = Signal(range(a_blocks + 1))
        with m.If(aead_busy & (a_asked != a_blocks)):
            m.d.comb += [chacha.req.valid.eq(1), chacha.req.payload.key.eq(f("k_enc")),
                         chacha.req.payload.words.eq(Cat(counter, a_nonce))]
            with m.If(chacha.req.ready):
                m.d.sync += [a_asked.eq(a_asked + 1), counter.eq(counter + 1)]

        with m.FSM(name="aead"):
            with m.State("IDLE"):
                with m.If(a_start):
                    m.d.sync += [a_word.eq(0), a_w1.eq(1), half.eq(0), counter.eq(0), a_asked.eq(0),
                                 aead_busy.eq(1)]
                    m.next = "KEYBLK"
            with m.State("KEYBLK"):             # block 0: the Poly1305 key
                with m.If(chacha.block.valid):
                    m.d.comb += [poly.key.valid.eq(1), poly.key.payload.eq(chacha.block.payload[:256])]
                    with m.If(poly.key.ready):
                        m.d.comb += chacha.block.ready.eq(1)
                        m.next = "WORD"
            # the buffer's read address while the pass owns it: word a_word (also where the word is
            # not used: a read has no effect), set below
            with m.State("WORD"):
                with m.If(a_word == plain_words):
                    m.next = "LENGTH"
                with m.Elif(((a_word * WB) % 64 == 0) if WB < 64 else Const(1)):
                    m.next = "KSBLK"
                with m.Else():
                    m.next = "READ"
            with m.State("KSBLK"):
                m.d.comb += chacha.block.ready.eq(1)
                with m.If(chacha.block.valid):
                    m.d.sync += ks.eq(chacha.block.payload)
                    m.next = "READ"
            with m.State("READ"):               # the buffer word is on brd.data
                off = (a_word * WB % 64) // WB if WB < 64 else Const(0)
                m.d.comb += ct.eq(Mux(a_encrypt, brd.data ^ ks.word_select(off, W), brd.data))
                m.d.sync += a_x.eq(ct)
                m.d.comb += [bin_wdata.eq(brd.data ^ ks.word_select(off, W)), bin_we.eq(1)]
                m.d.sync += part.eq(0)
                m.next = "MAC"
            with m.State("MAC"):
                if W == 64:
                    with m.If(~half):
                        m.d.sync += [held.eq(a_x), half.eq(1), a_word.eq(a_word + 1), a_w1.eq(a_w1 + 1)]
                        m.next = "WORD"
                    with m.Else():
                        m.d.comb += [poly.msg.valid.eq(1), poly.msg.payload.data.eq(Cat(held, a_x)),
                                     poly.msg.payload.last.eq(0)]
                        with m.If(poly.msg.ready):
                            m.d.sync += [half.eq(0), a_word.eq(a_word + 1), a_w1.eq(a_w1 + 1)]
                            m.next = "WORD"
                else:
                    m.d.comb += [poly.msg.valid.eq(1), poly.msg.payload.data.eq(a_x.word_select(part, 128)),
                                 poly.msg.payload.last.eq(0)]
                    with m.If(poly.msg.ready):
                        m.d.sync += part.eq(part + 1)
                        with m.If(part == poly_parts - 1):
                            m.d.sync += [a_word.eq(a_word + 1), a_w1.eq(a_w1 + 1)]
                            m.next = "WORD"
            with m.State("LENGTH"):             # RFC 8439: le64(len(aad) = 0) | le64(len(ciphertext))
                m.d.comb += [poly.msg.valid.eq(1), poly.msg.payload.data.eq(Const(g.plain_bytes << 64, 128)),
                             poly.msg.payload.last.eq(1)]
                with m.If(poly.msg.ready):
                    m.next = "TAG"
            with m.State("TAG"):
                m.d.comb += poly.tag.ready.eq(1)
                with m.If(poly.tag.valid):
                    m.d.sync += [tag_calc.eq(poly.tag.payload), a_word.eq(plain_words), a_w1.eq(plain_words + 1)]
                    m.next = "TAGIO"
            with m.State("TAGIO"):              # the tag words: written (encrypt) or compared (decrypt)
                tag_words = max(1, 16 // WB)
                with m.If(a_encrypt):
                    for i in range(bin_words - plain_words):
                        with m.If(a_word == plain_words + i):
                            word = tag_calc[i * W:(i + 1) * W] if i < tag_words else Const(0, W)
                            if W > 128 and i == 0:
                                word = Cat(tag_calc, Const(0, W - 128))
                            m.d.comb += [bin_wdata.eq(word), bin_we.eq(1)]
                    m.d.sync += [a_word.eq(a_word + 1), a_w1.eq(a_w1 + 1)]
                    with m.If(a_word == bin_words - 1):
                        m.d.sync += a_ok.eq(1)
                        m.next = "FIN"
                with m.Else():
                    m.d.sync += [a_ok.eq(1), aead_cmp.eq(1)]
                    m.next = "CMP"
            with m.State("CMP"):
                tag_words = max(1, 16 // WB)
                idx = a_word - plain_words
                for i in range(tag_words):
                    want = tag_calc[i * W:(i + 1) * W] if W <= 128 else tag_calc
                    got = brd.data if W <= 128 else brd.data[:128]
                    with m.If((idx == i) & (got != want)):
                        m.d.sync += a_ok.eq(0)
                with m.If(idx == tag_words - 1):
                    m.d.sync += aead_cmp.eq(0)
                    m.next = "FIN"
                with m.Else():
                    m.d.sync += [a_word.eq(a_word + 1), a_w1.eq(a_w1 + 1)]
            with m.State("FIN"):
                m.d.comb += a_done.eq(1)
                m.d.sync += aead_busy.eq(0)
                m.next = "IDLE"

        # -- the main sequencer -----------------------------------------------------------------
        idx = Signal(32)                    # record (QUERY/BULK) or bin (FORMAT) in the job
        slot_t = Signal(32)                 # cycles since the slot started
        m.d.sync += slot_t.eq(slot_t + (slot_t != 0xFFFF_FFFF))
        qop = Signal(2)
        qkey = Signal(128)
        qval = Signal(V)
        dummy = Signal(MAX_BINS_LOG2)
        label = Signal(MAX_BINS_LOG2)
        h = Signal(MAX_DIR_LOG2 * 2)        # the two directory buckets
        bucket_i = Signal()
        way_i = Signal(range(WAYS + 1))
        way_last = Signal()                 # way_i == WAYS - 1, kept with it (a compare into the state's next value)
        hit = Signal()
        hit_ref = Signal(32)
        hit_loc = Signal(32)
        hit_label = Signal(MAX_BINS_LOG2)   # the bin a query of the key reads (its entry's label)
        free_ok = Signal(2)
        free_ref = Signal(64)
        vcount = Signal(2 * 5)
        target = Signal(MAX_BINS_LOG2)
        head = Signal(32)
        head_zero = Signal(init=1)          # head == 0, set with head (EVICT's loop test, 3.7 ns)
        version = Signal(32)
        l_head = Signal(32)                 # the meta of the entry's next bin (the push)
        l_version = Signal(32)
        meta_word = Signal(W)
        has_ent = Signal()
        ent_ref = Signal(32)
        ent_val = Signal(V)
        status = Signal(OmapStatus)
        outv = Signal(V)
        node = Signal(32)
        nxt = Signal(32)
        lab = Signal(32)
        state_ = Signal(32)
        slot_i = Signal(range(Z + 1))
        taking = Signal()                   # in TAKE/TAKE2 (a flag: the state's decode was 6 LUT levels into the buffer's read address)
        slot_last = Signal()                # slot_i == Z - 1, kept with it (its compare was in the state's next-value logic)
        found = Signal()
        found_at = Signal(range(Z))
        word_i = Signal(range(slot_words + 1))
        it = Signal(range(Z + 1))
        fault = Signal(ErrorCode)
        is_query = Signal()                 # the QUERY path, shared by FORMAT after the bin is read
        zw = Signal(range(bin_words + 1))
        zeroing = Signal()                  # in F_ZERO (a flag: the state's decode was 6 LUT levels into the buffer's write address)

        stride_bits = exact_log2(g.bin_stride)
        meta_shift = exact_log2(WB)
        per_word = WB // 8                  # bin meta records per word

        def meta_addr(b):
            """(base, offset) of the meta word of bin ``b``."""
            return f("meta_base"), (b << 3) & ~(WB - 1)

        def meta_fields(word, b):
            rec = word.word_select(b & (per_word - 1), 64) if per_word > 1 else word[:64]
            return rec[:32], rec[32:64]

        def meta_set(word, b, hd, ver):
            if per_word == 1:
                return Cat(hd, ver, word[64:])
            shift = Cat(Const(0, 6), b[:exact_log2(per_word)])       # 64 * (b mod per_word)
            mask = (Const((1 << 64) - 1, W) << shift)[:W]
            return ((word & ~mask) | (Cat(hd, ver) << shift)[:W])[:W]

        def host_transfer_at(offset, start, nxt):
            """At slot cycle ``offset`` start the target bin's host read or write (later: an overrun)."""
            with m.If(slot_t >= f(offset)):
                with m.If(slot_t > f(offset)):
                    m.d.sync += f("overruns").eq(f("overruns") + 1)
                m.d.comb += start.eq(1)
                m.d.sync += h_addr.eq(f("bins_base") + (target << stride_bits))
                m.next = nxt

        def bin_nonce(ver):
            return Cat(target, Const(0, 32 - MAX_BINS_LOG2), ver, f("epoch"))

        def way_record(key, loc, valid, label):
            return Cat(key, loc, valid, Const(0, 31), label, Const(0, 32 - MAX_BINS_LOG2))

        def slot_record(ref, valid, key, val):
            return Cat(ref, valid, Const(0, 31), key, val)

        def link_record(nx, lb, st):
            return Cat(nx, lb, st)

        def node_addr(n, extra=0):
            """(base, offset) of stash node ``n``, plus ``extra`` bytes."""
            return f("nodes_base"), n * g.node_bytes + extra

        def hbm_read(state, addr, nbytes, next_state, then=()):
            """``addr``: (base, offset), added by the operation a cycle after it starts."""
            with m.State(state):
                m.d.comb += [op_start.eq(1), op_write.eq(0)]
                m.d.sync += [op_base.eq(addr[0]), op_off.eq(addr[1]), op_bytes.eq(nbytes), op_words.eq(nbytes // WB)]
                m.next = state + "_W"
            with m.State(state + "_W"):
                m.d.comb += self.stall.eq(1)
                with m.If(op_done):
                    m.d.sync += list(then)
                    m.next = next_state

        def hbm_write(state, addr, nbytes, value, next_state):
            with m.State(state):
                m.d.comb += [op_start.eq(1), op_write.eq(1)]
                m.d.sync += [op_base.eq(addr[0]), op_off.eq(addr[1]), op_bytes.eq(nbytes), op_words.eq(nbytes // WB),
                             wreg.eq(value)]
                m.next = state + "_W"
            with m.State(state + "_W"):
                m.d.comb += self.stall.eq(1)
                with m.If(op_done):
                    m.next = next_state

        cb_bad = Signal()
        m.d.comb += cb_bad.eq(
            (rreg[:32] != OMAP_MAGIC) | (rreg[32:64] != 1)
            | (rreg[8 * 12:8 * 12 + 32] == 0) | (rreg[8 * 12:8 * 12 + 32] > MAX_BINS_LOG2)
            | (rreg[8 * 144:8 * 144 + 32] > MAX_DIR_LOG2)
            | (rreg[8 * 148:8 * 148 + 32] == 0) | (rreg[8 * 148:8 * 148 + 32] > MAX_NODES)
            | (rreg[8 * 160:8 * 160 + 32] > rreg[8 * 148:8 * 148 + 32])
            | Cat(*(rreg[8 * o:8 * o + exact_log2(WB)] for o in (120, 128, 136))).any()
            | rreg[8 * 112:8 * 112 + stride_bits].any())

        cb_bad_r = Signal()
        m.d.sync += cb_bad_r.eq(cb_bad)
        # the stash's and the map's fullness, registered: the states that read them (PICK, OP,
        # B_DECIDE) never follow one that writes free_head or count
        fh_zero = Signal()
        cnt_full = Signal()
        m.d.sync += [fh_zero.eq(f("free_head") == 0), cnt_full.eq(f("count") >= f("capacity"))]
        with m.FSM(name="omap") as omap_fsm:
            with m.State("IDLE"):
                m.d.comb += self.job.ready.eq(1)
                with m.If(self.job.valid):
                    m.d.sync += [job.eq(self.job.payload), idx.eq(0), fault.eq(ErrorCode.NONE)]
                    m.next = "CB_RD"
            hbm_read("CB_RD", (job.ctrl_addr, 0), CB_BYTES, "CB_BAD")
            with m.State("CB_BAD"):             # cb_bad_r: the checks of rreg, registered
                m.next = "CB_CHK"
            with m.State("CB_CHK"):
                with m.If(cb_bad_r):
                    m.d.sync += fault.eq(ErrorCode.OMAP_BAD_STATE)
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += cb.eq(rreg[:8 * CB_BYTES])
                    with m.Switch(job.action):
                        with m.Case(OmapAction.QUERY):
                            m.next = "Q_BEGIN"
                        with m.Case(OmapAction.BULK):
                            m.next = "B_BEGIN"
                        with m.Default():
                            m.next = "F_BEGIN"

            # ---- QUERY -----------------------------------------------------------------------
            with m.State("Q_BEGIN"):
                with m.If(idx == job.count):
                    m.next = "CB_WR"
                with m.Else():
                    m.d.sync += [slot_t.eq(1), is_query.eq(1)]
                    m.next = "Q_REC"
            hbm_read("Q_REC", (job.src_addr, idx * g.record_bytes), g.record_bytes, "Q_REC2")
            with m.State("Q_REC2"):
                m.d.sync += [qop.eq(rreg[:2]), qkey.eq(rreg[64:192]), qval.eq(rreg[192:192 + V])]
                m.next = "Q_PRF"
            with m.State("Q_PRF"):
                m.d.comb += [chacha.req.valid.eq(1), chacha.req.payload.key.eq(f("k_prf")),
                             chacha.req.payload.words.eq(Cat(f("query_counter"), Const(0, 64)))]
                with m.If(chacha.req.ready):
                    m.d.sync += f("query_counter").eq(f("query_counter") + 1)
                    m.next = "HASH"                 # both blocks in flight at once
            with m.State("Q_PRF_W"):
                m.d.comb += chacha.block.ready.eq(1)
                with m.If(chacha.block.valid):
                    m.d.sync += [dummy.eq(chacha.block.payload[:32] & bins_mask),
                                 label.eq(chacha.block.payload[32:64] & bins_mask)]
                    m.next = "HASH_W"
            with m.State("HASH"):
                m.d.comb += [chacha.req.valid.eq(1), chacha.req.payload.key.eq(f("k_hash")),
                             chacha.req.payload.words.eq(qkey)]
                with m.If(chacha.req.ready):
                    m.next = "Q_PRF_W"
            with m.State("HASH_W"):
                m.d.comb += chacha.block.ready.eq(1)
                with m.If(chacha.block.valid):
                    m.d.sync += [h[:MAX_DIR_LOG2].eq(chacha.block.payload[:32] & dir_mask),
                                 h[MAX_DIR_LOG2:].eq(chacha.block.payload[32:64] & dir_mask),
                                 bucket_i.eq(0), hit.eq(0), free_ok.eq(0), vcount.eq(0)]
                    m.next = "BKT"
            cur_bucket = Mux(bucket_i, h[MAX_DIR_LOG2:], h[:MAX_DIR_LOG2])
            hbm_read("BKT", (f("dir_base"), cur_bucket * g.bucket_bytes), g.bucket_bytes, "BKT_SCAN",
                     then=[way_i.eq(0), way_last.eq(WAYS == 1)])
            with m.State("BKT_SCAN"):
                way = rreg.word_select(way_i, UNIT)
                w_valid = way[160]
                ref = cur_bucket * WAYS + way_i
                cnt = vcount.word_select(bucket_i, 5)
                with m.If(w_valid & (way[:128] == qkey) & ~hit):
                    m.d.sync += [hit.eq(1), hit_ref.eq(ref), hit_loc.eq(way[128:160]),
                                 hit_label.eq(way[192:192 + MAX_BINS_LOG2])]
                with m.If(w_valid):
                    m.d.sync += cnt.eq(cnt + 1)
                with m.Elif(~free_ok.bit_select(bucket_i, 1)):
                    m.d.sync += [free_ok.bit_select(bucket_i, 1).eq(1),
                                 free_ref.word_select(bucket_i, 32).eq(ref)]
                m.d.sync += [way_i.eq(way_i + 1), way_last.eq(way_i == WAYS - 2)]
                with m.If(way_last):
                    with m.If(bucket_i):
                        m.next = "PICK"
                    with m.Else():
                        m.d.sync += bucket_i.eq(1)
                        m.next = "BKT"
            with m.State("PICK"):
                # a new key goes to the bucket with fewer valid ways (the first on a tie)
                second = vcount[5:10] < vcount[:5]
                m.d.sync += [free_ok[0].eq(Mux(second, free_ok[1], free_ok[0])),
                             free_ref[:32].eq(Mux(second, free_ref[32:64], free_ref[:32]))]
                # a key in the map reads its label (in a bin or not), any other a fresh dummy
                m.d.sync += target.eq(Mux(hit, hit_label, dummy))
                with m.If(job.action == OmapAction.BULK):
                    m.next = "B_DECIDE"
                with m.Elif(fh_zero):
                    m.d.sync += [f("stash_full").eq(f("stash_full") + 1), fault.eq(ErrorCode.OMAP_STASH_FULL)]
                    m.next = "CB_WR"
                with m.Else():
                    m.next = "META"
            hbm_read("META", meta_addr(target), WB, "META2")
            with m.State("META2"):
                hd, ver = meta_fields(rreg[:W], target)
                m.d.sync += [meta_word.eq(rreg[:W]), head.eq(hd), head_zero.eq(hd == 0), version.eq(ver)]
                with m.If(is_query):
                    m.next = "T_READ"
                with m.Else():
                    m.d.sync += [zw.eq(0), zeroing.eq(1)]
                    m.next = "F_ZERO"
            with m.State("T_READ"):
                host_transfer_at("t_read", h_start_rd, "T_READ_W")
            with m.State("T_READ_W"):
                m.d.comb += self.stall.eq(1)
                with m.If(h_done):
                    m.d.comb += a_start.eq(1)
                    m.d.sync += [a_encrypt.eq(0), a_nonce.eq(bin_nonce(version))]
                    m.next = "DEC_W"
            with m.State("DEC_W"):
                with m.If(a_done):
                    with m.If(~a_ok):
                        m.d.sync += [f("tampered").eq(f("tampered") + 1), fault.eq(ErrorCode.OMAP_TAMPERED)]
                        m.next = "CB_WR"
                    with m.Elif(hit & ~hit_loc[31]):
                        m.d.sync += [slot_i.eq(0), slot_last.eq(Z == 1), found.eq(0)]
                        m.next = "FIND"
                    with m.Elif(hit):
                        m.d.sync += node.eq(hit_loc[:31])
                        m.next = "TNODE"
                    with m.Else():
                        m.d.sync += has_ent.eq(0)
                        m.next = "OP"
            # the entry in the bin: the slot whose ref matches
            with m.State("FIND"):
                m.next = "FIND2"
            with m.State("FIND2"):
                w0 = brd.data
                with m.If(w0[32] & (w0[:32] == hit_ref)):
                    m.d.sync += [found.eq(1), found_at.eq(slot_i), word_i.eq(0), taking.eq(1)]
                    m.next = "TAKE"
                with m.Elif(slot_last):
                    m.d.sync += fault.eq(ErrorCode.OMAP_CORRUPT)
                    m.next = "CB_WR"
                with m.Else():
                    m.d.sync += [slot_i.eq(slot_i + 1), slot_last.eq(slot_i == Z - 2)]
                    m.next = "FIND"
            with m.State("TAKE"):                   # copy the slot out (its value), then zero it
                m.next = "TAKE2"
            with m.State("TAKE2"):
                with m.Switch(word_i):
                    for i in range(slot_words):
                        with m.Case(i):
                            m.d.sync += rreg[i * W:(i + 1) * W].eq(brd.data)
                m.d.comb += [bin_wdata.eq(0), bin_we.eq(1)]
                m.d.sync += word_i.eq(word_i + 1)
                with m.If(word_i == slot_words - 1):
                    m.d.sync += taking.eq(0)
                    m.next = "TAKE3"
                with m.Else():
                    m.next = "TAKE"
            with m.State("TAKE3"):
                m.d.sync += [has_ent.eq(1), ent_ref.eq(hit_ref), ent_val.eq(rreg[192:192 + V])]
                m.next = "OP"
            # the entry in a stash node: read it, mark the node dead
            hbm_read("TNODE", node_addr(node), g.node_bytes, "TNODE2")
            with m.State("TNODE2"):
                m.d.sync += [has_ent.eq(1), ent_ref.eq(hit_ref), ent_val.eq(rreg[192:192 + V]),
                             nxt.eq(rreg[SLOT:SLOT + 32]), lab.eq(rreg[SLOT + 32:SLOT + 64])]
                m.next = "TNODE3"
            hbm_write("TNODE3", node_addr(node, g.slot_bytes), g.unit, link_record(nxt, lab, Const(NODE_DEAD, 32)),
                      "OP")
            with m.State("OP"):
                m.d.sync += [status.eq(OmapStatus.NOP), outv.eq(0)]
                with m.Switch(qop):
                    with m.Case(OmapOp.GET):
                        m.d.sync += [status.eq(Mux(has_ent, OmapStatus.FOUND, OmapStatus.NOT_FOUND)),
                                     outv.eq(Mux(has_ent, ent_val, 0))]
                        m.next = "EVICT"
                    with m.Case(OmapOp.PUT):
                        with m.If(has_ent):
                            m.d.sync += [ent_val.eq(qval), status.eq(OmapStatus.UPDATED)]
                        with m.Elif(~free_ok[0] | cnt_full):
                            m.d.sync += status.eq(OmapStatus.FULL)
                            with m.If(~free_ok[0]):
                                m.d.sync += f("dir_full").eq(f("dir_full") + 1)
                            with m.Else():
                                m.d.sync += f("map_full").eq(f("map_full") + 1)
                        with m.Else():
                            m.d.sync += [has_ent.eq(1), ent_ref.eq(free_ref[:32]), ent_val.eq(qval),
                                         status.eq(OmapStatus.INSERTED), f("count").eq(f("count") + 1)]
                        m.next = "EVICT"
                    with m.Case(OmapOp.DELETE):
                        with m.If(has_ent):
                            m.d.sync += [has_ent.eq(0), status.eq(OmapStatus.DELETED),
                                         f("count").eq(f("count") - 1)]
                            m.next = "DEL_WAY"
                        with m.Else():
                            m.d.sync += status.eq(OmapStatus.NOT_FOUND)
                            m.next = "EVICT"
                    with m.Default():
                        m.next = "EVICT"
                m.d.sync += it.eq(0)
            hbm_write("DEL_WAY", (f("dir_base"), ent_ref * g.way_bytes), g.unit, Const(0, UNIT), "EVICT")

            # ---- eviction: up to Z nodes of the bin's list into its free slots ----------------
            with m.State("EVICT"):
                with m.If(head_zero | (it == Z)):
                    m.next = "META_WR"
                with m.Else():
                    m.d.sync += node.eq(head - 1)
                    m.next = "EV_RD"
            hbm_read("EV_RD", node_addr(node), g.node_bytes, "EV_CHK")
            with m.State("EV_CHK"):
                m.d.sync += [nxt.eq(rreg[SLOT:SLOT + 32]), state_.eq(rreg[SLOT + 64:SLOT + 96])]
                with m.If(rreg[SLOT + 64:SLOT + 96] == NODE_LIVE):
                    m.d.sync += [slot_i.eq(0), slot_last.eq(Z == 1), found.eq(0)]
                    m.next = "EV_FIND"
                with m.Else():
                    m.next = "EV_FREE"
            with m.State("EV_FIND"):
                m.next = "EV_FIND2"
            with m.State("EV_FIND2"):
                with m.If(~brd.data[32]):
                    m.d.sync += [found_at.eq(slot_i), word_i.eq(0)]
                    m.next = "EV_PUT"
                with m.Elif(slot_last):
                    m.next = "META_WR"                  # the bin is full: the node stays
                with m.Else():
                    m.d.sync += [slot_i.eq(slot_i + 1), slot_last.eq(slot_i == Z - 2)]
                    m.next = "EV_FIND"
            with m.State("EV_PUT"):
                m.d.comb += [bin_wdata.eq(rreg.word_select(word_i, W)), bin_we.eq(1)]
                m.d.sync += word_i.eq(word_i + 1)
                with m.If(word_i == slot_words - 1):
                    m.next = "EV_WAY"
            hbm_write("EV_WAY", (f("dir_base"), rreg[:32] * g.way_bytes), g.unit,
                      way_record(rreg[64:192], Cat(target, Const(0, 32 - MAX_BINS_LOG2)), Const(1, 1), target),
                      "EV_FREE")
            hbm_write("EV_FREE", node_addr(node, g.slot_bytes), g.unit,
                      link_record(f("free_head"), Const(0, 32), Const(NODE_FREE, 32)), "EV_NEXT")
            with m.State("EV_NEXT"):
                m.d.sync += [f("free_head").eq(node + 1), f("nodes_used").eq(f("nodes_used") - 1),
                             head.eq(nxt), head_zero.eq(nxt == 0), it.eq(it + 1)]
                m.next = "EVICT"
            hbm_write("META_WR", meta_addr(target), WB, meta_set(meta_word, target, head, (version + 1)[:32]), "PUSH")

            # ---- the entry to a fresh stash node labelled ``label`` ---------------------------
            with m.State("PUSH"):
                with m.If(has_ent):
                    m.d.sync += node.eq(f("free_head") - 1)
                    m.next = "P_LINK"
                with m.Else():
                    m.next = "ENC"
            hbm_read("P_LINK", node_addr(node, g.slot_bytes), g.unit, "P_LINK2")
            with m.State("P_LINK2"):
                m.d.sync += f("free_head").eq(rreg[:32])
                m.next = "P_META"
            hbm_read("P_META", meta_addr(label), WB, "P_META2")
            with m.State("P_META2"):
                hd, ver = meta_fields(rreg[:W], label)
                m.d.sync += [meta_word.eq(rreg[:W]), l_head.eq(hd), l_version.eq(ver)]
                m.next = "P_NODE"
            hbm_write("P_NODE", node_addr(node), g.node_bytes,
                      Cat(slot_record(ent_ref, Const(1, 1), qkey, ent_val), Const(0, SLOT - 192 - V),
                          link_record(l_head, Cat(label, Const(0, 32 - MAX_BINS_LOG2)), Const(NODE_LIVE, 32))),
                      "P_META_WR")
            hbm_write("P_META_WR", meta_addr(label), WB, meta_set(meta_word, label, (node + 1)[:32], l_version), "P_USED")
            with m.State("P_USED"):
                # used + 1 > peak as used >= peak: the compare beside the add, not after it (3.6 ns)
                used = f("nodes_used") + 1
                m.d.sync += f("nodes_used").eq(used)
                with m.If(f("nodes_used") >= f("nodes_peak")):
                    m.d.sync += f("nodes_peak").eq(used)
                m.next = "P_WAY"
            hbm_write("P_WAY", (f("dir_base"), ent_ref * g.way_bytes), g.unit,
                      way_record(qkey, Cat(node[:31], Const(1, 1)), Const(1, 1), label), "P_RET")
            with m.State("P_RET"):
                with m.If(job.action == OmapAction.BULK):
                    m.d.sync += f("count").eq(f("count") + 1)
                    m.next = "B_RES"
                with m.Else():
                    m.next = "ENC"

            # ---- seal and write the bin at its slot offset ------------------------------------
            with m.State("ENC"):
                m.d.comb += a_start.eq(1)
                m.d.sync += [a_encrypt.eq(1), a_nonce.eq(bin_nonce((version + 1)[:32]))]
                m.next = "ENC_W"
            with m.State("ENC_W"):
                with m.If(a_done):
                    with m.If(slot_t > f("max_work")):          # the slot's work, ready to write
                        m.d.sync += f("max_work").eq(slot_t)
                    m.next = "T_WRITE"
            with m.State("T_WRITE"):
                host_transfer_at("t_write", h_start_wr, "T_WRITE_W")
            with m.State("T_WRITE_W"):
                m.d.comb += self.stall.eq(1)
                with m.If(h_done):
                    with m.If(is_query):
                        m.next = "RES"
                    with m.Else():
                        m.next = "SLOT_END"
            hbm_write("RES", (job.dst_addr, idx * g.record_bytes), g.record_bytes,
                      Cat(status, Const(0, 28), Const(0, 32), qkey, outv), "Q_DONE")
            with m.State("Q_DONE"):
                m.d.sync += f("queries").eq(f("queries") + 1)
                m.next = "SLOT_END"
            with m.State("SLOT_END"):
                with m.If(slot_t >= f("t_slot")):
                    with m.If(slot_t > f("t_slot")):
                        m.d.sync += f("overruns").eq(f("overruns") + 1)
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(is_query):
                        m.next = "Q_BEGIN"
                    with m.Else():
                        m.next = "F_BEGIN"

            # ---- BULK: into the stash, no host traffic ------------------------------------------
            with m.State("B_BEGIN"):
                with m.If(idx == job.count):
                    m.next = "CB_WR"
                with m.Else():
                    m.d.sync += is_query.eq(0)
                    m.next = "B_REC"
            hbm_read("B_REC", (job.src_addr, idx * g.record_bytes), g.record_bytes, "B_REC2")
            with m.State("B_REC2"):
                m.d.sync += [qkey.eq(rreg[64:192]), qval.eq(rreg[192:192 + V])]
                m.next = "Q_PRF"
            with m.State("B_DECIDE"):
                m.d.sync += [has_ent.eq(1), ent_ref.eq(free_ref[:32]), ent_val.eq(qval)]
                with m.If(hit & hit_loc[31]):
                    m.d.sync += [status.eq(OmapStatus.UPDATED), node.eq(hit_loc[:31])]
                    m.next = "B_UPD"
                with m.Elif(hit):
                    m.d.sync += status.eq(OmapStatus.FULL)
                    m.next = "B_RES"
                with m.Elif(~free_ok[0] | cnt_full | fh_zero):
                    m.d.sync += status.eq(OmapStatus.FULL)
                    with m.If(~free_ok[0]):
                        m.d.sync += f("dir_full").eq(f("dir_full") + 1)
                    with m.Elif(fh_zero):
                        m.d.sync += f("stash_full").eq(f("stash_full") + 1)
                    with m.Else():
                        m.d.sync += f("map_full").eq(f("map_full") + 1)
                    m.next = "B_RES"
                with m.Else():
                    m.d.sync += [status.eq(OmapStatus.INSERTED), node.eq(f("free_head") - 1)]
                    m.next = "P_LINK"
            hbm_write("B_UPD", node_addr(node), g.slot_bytes,
                      Cat(slot_record(hit_ref, Const(1, 1), qkey, qval), Const(0, SLOT - 192 - V)), "B_RES")
            hbm_write("B_RES", (job.dst_addr, idx * g.record_bytes), g.record_bytes,
                      Cat(status, Const(0, 28), Const(0, 32), qkey, Const(0, V)), "B_NEXT")
            with m.State("B_NEXT"):
                m.d.sync += idx.eq(idx + 1)
                m.next = "B_BEGIN"

            # ---- FORMAT: every bin once, in order --------------------------------------------
            with m.State("F_BEGIN"):
                with m.If(idx == (Const(1, 32) << f("bins_log2")[:5])):
                    m.next = "CB_WR"
                with m.Else():
                    m.d.sync += [slot_t.eq(1), is_query.eq(0), target.eq(idx), has_ent.eq(0), it.eq(0)]
                    m.next = "META"
            with m.State("F_ZERO"):                     # an empty bin: every slot invalid
                m.d.comb += [bin_wdata.eq(0), bin_we.eq(1)]
                m.d.sync += zw.eq(zw + 1)
                with m.If(zw == plain_words - 1):
                    m.d.sync += zeroing.eq(0)
                    m.next = "EVICT"

            # ---- the end of a job: the control block back to HBM -------------------------------
            hbm_write("CB_WR", (job.ctrl_addr, 0), CB_BYTES, cb, "DONE")
            with m.State("DONE"):
                m.d.comb += [self.done.valid.eq(1), self.done.payload.error.eq(0), self.fault.eq(fault)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.job.ready)
        # the bin buffer's read address, one mux (each user's in a chain of conditions was a 3.9 ns
        # path): the AEAD pass while it runs, the host write while it runs, else the sequencer's
        # slot scans and copies
        # (they take turns: the sequencer waits for the pass and the host transfers); the owner
        # from registered flags
        main_addr = Mux(taking, found_at * slot_words + word_i, slot_i * slot_words)
        m.d.comb += bin_raddr.eq(Mux(aead_busy, Mux(aead_cmp, a_w1, a_word), Mux(h_busy & h_write, h_idx, main_addr)))
        # and its write address likewise (the write enable and data stay with each user's state)
        m.d.comb += bin_waddr.eq(Mux(aead_busy, a_word, Mux(h_busy & ~h_write, h_idx,
                                                            Mux(zeroing, zw,
                                                                found_at * slot_words + word_i))))
        return m

