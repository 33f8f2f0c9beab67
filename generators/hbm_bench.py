"""A memory traffic engine for HBM/DDR microbenchmarks (benchmarks/hbm.py), in the matmul's slot.

It has the matmul engine's signature, so a design generated with it is the config's own kernel
(shell, port map, manifest, hash) with this engine instead of the real matmul
(``flows.emit.generate(config, dir, engines=stream_read_engines(layout))``). Each MATMUL
descriptor it receives is read as a traffic job, on every weight port ``w<p>`` at once::

    job ──► per port p: n read commands of m words ──► shell DMA reader w<p> ──► AXI bursts
                 sequential (x_addr = 0): w_addr<p> + j * block
                 random     (x_addr = span, a power of two >= block, block a power of two):
                            w_addr<p> + (lfsr_p(j) * word) mod span, aligned down to the block
    words of every port ──► counted and dropped ──► done when every command's words are in

The descriptor still passes the matmul's checks (``m``, ``n`` >= 1, ``k`` a valid K, aligned
addresses), which the benchmark's program builder respects. Nothing is written.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring

from hbmforge.layout import DesignLayout

from .matmul.signature import matmul_signature

__all__ = ["StreamReadEngine", "stream_read_engines", "LFSR_TAPS", "lfsr_seed"]

#: a maximal-length 32-bit Galois LFSR (x^32 + x^22 + x^2 + x + 1)
LFSR_TAPS = 0x80200003


def lfsr_seed(port: int) -> int:
    """The LFSR's start value on port ``w<port>`` (distinct, non-zero)."""
    return (0x9E3779B9 * (port + 1)) & 0xFFFF_FFFF or 1


class StreamReadEngine(wiring.Component):
    """Reads ``n`` commands of ``m`` words on every weight port per job (see the module doc)."""

    def __init__(self, layout: DesignLayout):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {layout!r}")
        self._layout = layout
        super().__init__(matmul_signature(layout))

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        ports = lay.mm.weight_ports
        shift = lay.word_bytes.bit_length() - 1
        job = self.job.payload

        busy = Signal()
        random = Signal()
        block = Signal(32)            # bytes per command
        mask = Signal(64)             # random: offset bits kept (span - 1, block-aligned)
        total = Signal(64)
        m.d.comb += total.eq(job.m * job.n)
        m.d.comb += self.job.ready.eq(~busy)

        all_done = busy
        got_word = 0
        with m.If(self.job.valid & ~busy):
            m.d.sync += [busy.eq(1), random.eq(job.x_addr != 0), block.eq(job.m << shift),
                         mask.eq((job.x_addr - 1) & ~((job.m << shift) - 1))]
        for p in range(ports):
            cmd, data = self.w_cmd[p], self.w_data[p]
            cmds = Signal(32, name=f"w{p}_cmds")
            words = Signal(64, name=f"w{p}_words")
            base = Signal(64, name=f"w{p}_base")
            addr = Signal(64, name=f"w{p}_addr")
            lfsr = Signal(32, name=f"w{p}_lfsr", init=lfsr_seed(p))
            step = Mux(lfsr[0], (lfsr >> 1) ^ LFSR_TAPS, lfsr >> 1)
            with m.If(self.job.valid & ~busy):
                m.d.sync += [cmds.eq(job.n), words.eq(total), base.eq(job.w_addr[p]),
                             addr.eq(Mux(job.x_addr != 0,
                                         job.w_addr[p] + ((lfsr << shift) & (job.x_addr - 1)
                                                          & ~((job.m << shift) - 1)),
                                         job.w_addr[p]))]
            m.d.comb += [cmd.valid.eq(busy & (cmds != 0)), cmd.payload.addr.eq(addr),
                         cmd.payload.bytes.eq(block), data.ready.eq(1)]
            with m.If(cmd.valid & cmd.ready):
                m.d.sync += [cmds.eq(cmds - 1), lfsr.eq(step),
                             addr.eq(Mux(random, base + ((step << shift) & mask), addr + block))]
            with m.If(data.valid):
                m.d.sync += words.eq(words - 1)
            all_done = all_done & (cmds == 0) & (words == 0)
            got_word = got_word | data.valid

        done_valid = Signal()
        m.d.comb += [self.done.valid.eq(done_valid), self.stall.eq(busy & ~got_word & ~done_valid)]
        with m.If(all_done & ~done_valid):
            m.d.sync += done_valid.eq(1)
        with m.If(done_valid & self.done.ready):
            m.d.sync += [done_valid.eq(0), busy.eq(0)]
        return m


def stream_read_engines(layout: DesignLayout) -> dict:
    """The kernel's engine map with the traffic engine in the matmul's slot."""
    from hbmforge.encodings import Opcode

    return {Opcode.MATMUL: StreamReadEngine(layout)}
