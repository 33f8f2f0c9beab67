"""A whole Kernel in amaranth.sim: one AXI memory model per port over one memory, and a host.

Shared by the shell tests (pass-through engine) and the engine-in-kernel tests (default
engines): every AXI channel gets random latency and back-pressure and the AXI rule checks of
``shell_axi_model``; the host drives ``s_axi_control`` with random stalls.
"""
from __future__ import annotations

import random

from amaranth.sim import Simulator

from hbmforge.generators.shell.kernel import PREFETCH_READ_ID, STREAM_READ_ID, Kernel, data_read_ids
from hbmforge.layout import DesignLayout
from hbmforge.numerics import program as golden
from shell_axi_model import AxiLiteHost, AxiMemoryPort, SparseMemory
from sim_helpers import watchdog

__all__ = ["KernelBench"]


class KernelBench:
    """``engines``: the kernel's opcode -> engine map (default: the design's own engines)."""

    def __init__(self, layout: DesignLayout, *, engines=None, seed: int = 0, stall: float = 0.2,
                 latency: tuple[int, int] = (2, 15), error_ranges=()):
        self.layout = layout
        self.dut = Kernel(layout, engines=engines)
        self.mem = SparseMemory()
        self.rng = random.Random(seed)
        self.models = {}
        arids = set(data_read_ids(layout).values())
        for p in layout.ports:
            self.models[p.name] = AxiMemoryPort(
                getattr(self.dut, p.verilog_prefix), self.mem, data_width=p.data_width,
                max_burst_beats=layout.config.axi.max_burst_beats, rng=random.Random(seed + 7 * p.index),
                read_latency=latency, write_latency=latency, stall=stall,
                arids=arids if p.role == "data" else {STREAM_READ_ID, PREFETCH_READ_ID}, awids={0},
                error_ranges=error_ranges, name=p.name)
        self.host = AxiLiteHost(self.dut.s_axi_control, rng=random.Random(seed + 99), stall=0.2)

    # -- memory ---------------------------------------------------------------------------
    def write_program(self, addr: int, descs) -> None:
        self.mem.write(addr, b"".join(self.layout.encode_descriptor(d) for d in descs))

    def snapshot(self) -> golden.SparseMemory:
        """A copy of the memory for the golden model."""
        return golden.SparseMemory({k: bytearray(v) for k, v in self.mem._pages.items()})

    def differences(self, expected: golden.SparseMemory) -> list[int]:
        """Addresses of the 8-byte words where the kernel's memory and ``expected`` differ."""
        diff = []
        for page in sorted(set(self.mem._pages) | set(expected.pages)):
            base = page * 4096
            got, want = self.mem.read(base, 4096), expected.read(base, 4096)
            if got != want:
                diff += [base + i for i in range(0, 4096, 8) if got[i:i + 8] != want[i:i + 8]]
        return diff

    # -- host -----------------------------------------------------------------------------
    def reg(self, name):
        return self.layout.reg(name)

    async def read_reg(self, ctx, name):
        r = self.reg(name)
        return await (self.host.read64(ctx, r.offset) if r.width == 64 else self.host.read(ctx, r.offset))

    async def run(self, ctx, program: int, count: int, max_cycles: int = 40_000) -> dict:
        """Start a run, wait for the interrupt, acknowledge it; the registers of interest
        (and ``interrupt_after_ack``)."""
        reg = self.reg
        await self.host.write64(ctx, reg("program").offset, program)
        await self.host.write(ctx, reg("count").offset, count)
        await self.host.write(ctx, reg("GIE").offset, 1)
        await self.host.write(ctx, reg("IER").offset, 1)
        await self.host.write(ctx, reg("CTRL").offset, 1)
        for _ in range(max_cycles):
            await ctx.tick()
            if ctx.get(self.dut.interrupt):
                break
        else:
            raise AssertionError(f"no interrupt within {max_cycles} cycles")
        regs = {"CTRL": await self.read_reg(ctx, "CTRL")}
        await self.host.write(ctx, reg("ISR").offset, 1)          # acknowledge
        regs["interrupt_after_ack"] = ctx.get(self.dut.interrupt)
        names = ["STATUS", "DESC_DONE", "CYCLES", "STALL_CYCLES", "MAC_OPS"]
        names += [f"{p.name.upper()}_BYTES_{kind}" for p in self.layout.ports for kind in ("READ", "WRITTEN")]
        for name in names:
            regs[name] = await self.read_reg(ctx, name)
        return regs

    def simulate(self, bench, cycles: int = 200_000, extra=()) -> None:
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)
        for process in extra:
            sim.add_testbench(process, background=True)
        for model in self.models.values():
            sim.add_testbench(model.run, background=True)
        sim.add_testbench(watchdog(cycles), background=True)
        sim.add_testbench(bench)
        sim.run()
        violations = [v for model in self.models.values() for v in model.violations]
        assert violations == []
