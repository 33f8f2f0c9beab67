"""cocotb bench for a generated kernel: bus models, random timing and an AXI rule monitor.

Used by the cocotb regression (:mod:`hbmforge.flows.tb_kernel`). Every AXI master
port gets a cocotbext-axi ``AxiRam`` over one shared sparse memory (the bank of
channel ``c`` starts at ``c * channel_size``, as in the co-simulation), with
random back-pressure on all five channels and random extra read latency; the
control port is driven by ``AxiLiteMaster``. A monitor checks the AXI rules the
kernel promises (INCR, full-width beats, aligned, at most ``max_burst_beats``,
never across 4 KiB, ``wlast`` on the last beat) on every handshake.
"""
from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster
from cocotbext.axi.axi_ram import AxiRamRead, AxiRamWrite
from cocotbext.axi.sparse_memory import SparseMemory

__all__ = ["KernelBench", "load_bench_manifest"]


def load_bench_manifest() -> dict:
    path = os.environ.get("HBMFORGE_MANIFEST")
    if not path:
        raise RuntimeError("HBMFORGE_MANIFEST is not set: run this bench through hbmforge.flows.regression")
    return json.loads(Path(path).read_text())


def _pauses(rng: random.Random, busy: float):
    """A pause generator: True (stall) with probability ``busy``, in short random runs."""
    while True:
        if rng.random() < busy:
            for _ in range(rng.randint(1, 6)):
                yield True
        else:
            yield False


class _SlowReadRam(AxiRamRead):
    """AxiRam read side that now and then delays a beat by a random number of cycles."""

    def __init__(self, *args, rng: random.Random, clock, extra_latency: tuple[int, int], **kw):
        super().__init__(*args, **kw)
        self._rng, self._clock, self._extra = rng, clock, extra_latency

    async def _read(self, address, length):
        lo, hi = self._extra
        if hi and self._rng.random() < 0.08:
            await ClockCycles(self._clock, self._rng.randint(lo, hi))
        return await super()._read(address, length)


class KernelBench:
    """Clock, reset, control master, one memory model per port and the rule monitor."""

    def __init__(self, dut, manifest: dict, *, seed: int, busy: float = 0.3,
                 extra_latency: tuple[int, int] = (4, 40), channel_size: int = 256 << 20):
        self.dut = dut
        self.manifest = manifest
        self.rng = random.Random(seed)
        self.busy = busy
        self.channel_size = channel_size
        self.regs = {r["name"]: r for r in manifest["registers"]}
        self.violations: list[str] = []
        self.mem = SparseMemory(2 ** 40)
        cocotb.start_soon(Clock(dut.ap_clk, 4, unit="ns").start())
        self.ctrl = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk, dut.ap_rst_n,
                                  reset_active_level=False)
        self._set_pauses(self.ctrl.write_if.aw_channel, self.ctrl.write_if.w_channel,
                         self.ctrl.write_if.b_channel, self.ctrl.read_if.ar_channel,
                         self.ctrl.read_if.r_channel)
        self.rams = {}
        for port in manifest["ports"]:
            bus = AxiBus.from_prefix(dut, port["prefix"])
            write_if = AxiRamWrite(bus.write, dut.ap_clk, dut.ap_rst_n, reset_active_level=False, mem=self.mem)
            read_if = _SlowReadRam(bus.read, dut.ap_clk, dut.ap_rst_n, reset_active_level=False,
                                   mem=self.mem, rng=random.Random(self.rng.random()),
                                   clock=dut.ap_clk, extra_latency=extra_latency)
            self._set_pauses(write_if.aw_channel, write_if.w_channel, write_if.b_channel,
                             read_if.ar_channel, read_if.r_channel)
            ram = (read_if, write_if)
            self.rams[port["name"]] = ram
            cocotb.start_soon(self._monitor(port))
        self._next_free = {p["name"]: p["channel"] * channel_size + 0x1000 for p in manifest["ports"]}

    def _set_pauses(self, *channels):
        for ch in channels:
            if self.busy > 0:
                ch.set_pause_generator(_pauses(random.Random(self.rng.random()), self.busy))

    # -- reset and registers -----------------------------------------------------------
    async def reset(self):
        self.dut.ap_rst_n.value = 0
        await ClockCycles(self.dut.ap_clk, 16)
        self.dut.ap_rst_n.value = 1
        await ClockCycles(self.dut.ap_clk, 4)

    async def reg_read(self, name: str) -> int:
        r = self.regs[name]
        lo = await self.ctrl.read_dword(r["offset"])
        if r["width"] == 64:
            hi = await self.ctrl.read_dword(r["offset"] + 4)
            return lo | (hi << 32)
        return lo

    async def reg_write(self, name: str, value: int):
        r = self.regs[name]
        await self.ctrl.write_dword(r["offset"], value & 0xFFFFFFFF)
        if r["width"] == 64:
            await self.ctrl.write_dword(r["offset"] + 4, (value >> 32) & 0xFFFFFFFF)

    # -- memory ------------------------------------------------------------------------
    def alloc(self, nbytes: int, port: str = "data") -> int:
        """A 4 KiB-aligned address in the bank bound to ``port`` (bump allocator)."""
        addr = self._next_free[port]
        self._next_free[port] = addr + ((max(nbytes, 1) + 0xFFF) & ~0xFFF)
        return addr

    def write(self, addr: int, data: bytes):
        self.mem[addr:addr + len(data)] = bytes(data)

    def read(self, addr: int, nbytes: int) -> bytes:
        return bytes(self.mem[addr:addr + nbytes])

    # -- runs --------------------------------------------------------------------------
    async def run(self, program_addr: int, count: int, *, timeout_cycles: int = 2_000_000) -> int:
        """Start the kernel, wait for ap_done (polling CTRL), return STATUS."""
        await self.reg_write("program", program_addr)
        await self.reg_write("count", count)
        await self.reg_write("CTRL", 1)
        for polls in itertools.count():
            ctrl = await self.reg_read("CTRL")
            if ctrl & 0b10:
                break
            if polls * 8 > timeout_cycles:
                raise AssertionError(f"kernel did not raise ap_done within {timeout_cycles} cycles "
                                     f"(CTRL={ctrl:#x})")
            await ClockCycles(self.dut.ap_clk, 8)
        self.assert_rules()
        return await self.reg_read("STATUS")

    def assert_rules(self):
        assert not self.violations, "AXI rule violations:\n  " + "\n  ".join(self.violations[:20])

    # -- AXI rule monitor --------------------------------------------------------------
    async def _monitor(self, port: dict):
        dut, p = self.dut, port["prefix"]
        beat = port["data_width"] // 8
        size = beat.bit_length() - 1
        max_beats = self.manifest["axi"]["max_burst_beats"]
        sig = lambda name: getattr(dut, f"{p}_{name}")  # noqa: E731
        aw_beats: list[int] = []        # burst lengths of accepted AWs not yet matched
        w_bursts: list[int] = []        # beat counts of finished W bursts not yet matched
        w_seen = 0
        while True:
            await RisingEdge(dut.ap_clk)
            await ReadOnly()
            if not int(dut.ap_rst_n.value):
                continue
            for ch in ("ar", "aw"):
                if int(sig(f"{ch}valid").value) and int(sig(f"{ch}ready").value):
                    addr = int(sig(f"{ch}addr").value)
                    beats = int(sig(f"{ch}len").value) + 1
                    where = f"{p} {ch.upper()} addr={addr:#x} len={beats}"
                    if int(sig(f"{ch}burst").value) != 1:
                        self.violations.append(f"{where}: burst type is not INCR")
                    if int(sig(f"{ch}size").value) != size:
                        self.violations.append(f"{where}: size {int(sig(f'{ch}size').value)} != {size}")
                    if addr % beat:
                        self.violations.append(f"{where}: address not aligned to {beat} bytes")
                    if beats > max_beats:
                        self.violations.append(f"{where}: more than {max_beats} beats")
                    if (addr & 0xFFF) + beats * beat > 0x1000:
                        self.violations.append(f"{where}: burst crosses a 4 KiB boundary")
                    if ch == "aw":
                        aw_beats.append(beats)
            if int(sig("wvalid").value) and int(sig("wready").value):
                w_seen += 1
                if int(sig("wlast").value):
                    w_bursts.append(w_seen)
                    w_seen = 0
            # W bursts and AWs pair up in order, whichever of the two came first
            while aw_beats and w_bursts:
                want, got = aw_beats.pop(0), w_bursts.pop(0)
                if want != got:
                    self.violations.append(f"{p} W: wlast after {got} beats, the AW asked for {want}")
            if aw_beats and w_seen > aw_beats[0]:
                self.violations.append(f"{p} W: {w_seen} beats without wlast, the AW asked for {aw_beats[0]}")
                w_seen = 0
