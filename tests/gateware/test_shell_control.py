"""ControlSlave: the ap_ctrl_hs register block over AXI4-Lite (amaranth.sim)."""
from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hbmforge.config import parse_config, starter_config
from hbmforge.generators.shell.control import CTRL_BITS, ControlSlave
from hbmforge.layout import KERNEL_ID, LAYOUT_VERSION, DesignLayout
from shell_axi_model import AxiLiteHost, assert_rejects
from sim_helpers import watchdog

AP_START, AP_DONE, AP_IDLE, AP_READY = (1 << CTRL_BITS[k] for k in ("ap_start", "ap_done", "ap_idle", "ap_ready"))


def _layout(weight_ports=2) -> DesignLayout:
    cfg = starter_config("u280", name="ctl")
    cfg["engines"][0]["weight_ports"] = weight_ports
    return DesignLayout(parse_config(cfg))


def _sim(dut, bench, seed=0):
    host = AxiLiteHost(dut.bus, rng=random.Random(seed))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(watchdog(5000), background=True)

    async def main(ctx):
        await bench(ctx, host)

    sim.add_testbench(main)
    sim.run()


@pytest.fixture(scope="module")
def layout():
    return _layout()


def test_ap_start_is_accepted_once_and_clears(layout):
    dut = ControlSlave(layout)
    seen = {}

    async def bench(ctx, host):
        assert await host.read(ctx, 0x00) == AP_IDLE
        await host.write(ctx, 0x00, 1)
        await ctx.tick().repeat(4)
        seen["ctrl"] = await host.read(ctx, 0x00)
        seen["busy"] = ctx.get(dut.busy)

    async def count_starts(ctx):
        n = 0
        async for _, _, start in ctx.tick().sample(dut.start):
            n += start
            seen["pulses"] = n

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(count_starts, background=True)
    host = AxiLiteHost(dut.bus, rng=random.Random(1))

    async def main(ctx):
        await bench(ctx, host)

    sim.add_testbench(main)
    sim.run()
    assert seen["pulses"] == 1
    assert seen["ctrl"] & (AP_START | AP_IDLE) == 0      # accepted: ap_start cleared, busy
    assert seen["busy"] == 1


def test_ap_done_and_ap_ready_clear_on_read(layout):
    dut = ControlSlave(layout)
    seen = {}

    async def bench(ctx, host):
        await host.write(ctx, 0x00, 1)
        await ctx.tick().repeat(3)
        ctx.set(dut.done, 1)
        await ctx.tick()
        ctx.set(dut.done, 0)
        seen["first"] = await host.read(ctx, 0x00)
        seen["second"] = await host.read(ctx, 0x00)

    _sim(dut, bench)
    assert seen["first"] == AP_DONE | AP_READY | AP_IDLE
    assert seen["second"] == AP_IDLE


def test_ap_start_written_while_busy_starts_the_next_run_after_done(layout):
    dut = ControlSlave(layout)
    seen = {"pulses": 0}

    async def count_starts(ctx):
        async for _, _, start in ctx.tick().sample(dut.start):
            seen["pulses"] += start

    async def bench(ctx, host):
        await host.write(ctx, 0x00, 1)
        await ctx.tick().repeat(2)
        await host.write(ctx, 0x00, 1)             # while busy: held, not accepted
        seen["held"] = await host.read(ctx, 0x00)
        seen["pulses_before_done"] = seen["pulses"]
        ctx.set(dut.done, 1)
        await ctx.tick()
        ctx.set(dut.done, 0)
        await ctx.tick().repeat(2)
        seen["after"] = await host.read(ctx, 0x00)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(count_starts, background=True)
    host = AxiLiteHost(dut.bus, rng=random.Random(7))

    async def main(ctx):
        await bench(ctx, host)

    sim.add_testbench(main)
    sim.run()
    assert seen["held"] & (AP_START | AP_IDLE) == AP_START
    assert seen["pulses_before_done"] == 1
    assert seen["pulses"] == 2
    assert seen["after"] & (AP_START | AP_IDLE | AP_DONE) == AP_DONE   # second run going, first done


def test_interrupt_follows_gie_ier_and_isr_toggles_on_write(layout):
    dut = ControlSlave(layout)
    seen = {}

    async def run_once(ctx, host):
        await host.write(ctx, 0x00, 1)
        await ctx.tick().repeat(2)
        ctx.set(dut.done, 1)
        await ctx.tick()
        ctx.set(dut.done, 0)
        await ctx.tick()

    async def bench(ctx, host):
        await run_once(ctx, host)                  # IER = 0: no ISR bit, no interrupt
        seen["isr_disabled"] = await host.read(ctx, 0x0C)
        seen["irq_disabled"] = ctx.get(dut.interrupt)
        await host.write(ctx, 0x04, 1)             # GIE
        await host.write(ctx, 0x08, 0b11)          # IER: done, ready
        await run_once(ctx, host)
        seen["isr"] = await host.read(ctx, 0x0C)
        seen["irq"] = ctx.get(dut.interrupt)
        await host.write(ctx, 0x0C, 0b01)          # toggle done bit off
        seen["isr_after"] = await host.read(ctx, 0x0C)
        seen["irq_after"] = ctx.get(dut.interrupt)
        await host.write(ctx, 0x0C, 0b10)
        seen["irq_cleared"] = ctx.get(dut.interrupt)
        await host.write(ctx, 0x0C, 0b10)          # toggles back on
        seen["irq_toggled"] = ctx.get(dut.interrupt)
        await host.write(ctx, 0x04, 0)             # GIE off masks it
        seen["irq_gie_off"] = ctx.get(dut.interrupt)

    _sim(dut, bench)
    assert seen["isr_disabled"] == 0 and seen["irq_disabled"] == 0
    assert seen["isr"] == 0b11 and seen["irq"] == 1
    assert seen["isr_after"] == 0b10 and seen["irq_after"] == 1
    assert seen["irq_cleared"] == 0
    assert seen["irq_toggled"] == 1
    assert seen["irq_gie_off"] == 0


def test_arguments_read_back_and_honour_byte_strobes(layout):
    dut = ControlSlave(layout)
    seen = {}
    prog, count, w1 = layout.reg("program").offset, layout.reg("count").offset, layout.reg("w1").offset

    async def bench(ctx, host):
        await host.write64(ctx, prog, 0x1234_5678_9ABC_DEF0)
        await host.write(ctx, count, 0xAABBCCDD)
        await host.write(ctx, count, 0x00000011, strb=0b0001)
        await host.write64(ctx, w1, 0xFEDC_BA98_7654_3210)
        await host.write(ctx, 0x00, 1 << CTRL_BITS["auto_restart"])
        seen["program"] = await host.read64(ctx, prog)
        seen["count"] = await host.read(ctx, count)
        seen["w1"] = await host.read64(ctx, w1)
        seen["ports"] = (ctx.get(dut.program), ctx.get(dut.count), ctx.get(dut.w1))
        seen["ctrl"] = await host.read(ctx, 0x00)

    _sim(dut, bench, seed=3)
    assert seen["program"] == 0x1234_5678_9ABC_DEF0
    assert seen["count"] == 0xAABBCC11
    assert seen["w1"] == 0xFEDC_BA98_7654_3210
    assert seen["ports"] == (0x1234_5678_9ABC_DEF0, 0xAABBCC11, 0xFEDC_BA98_7654_3210)
    assert seen["ctrl"] == AP_IDLE | 1 << CTRL_BITS["auto_restart"]     # stored, not started


def test_identity_status_and_counters_read_from_layout(layout):
    dut = ControlSlave(layout)
    seen = {}
    inputs = {r.name: (r, random.Random(r.offset).getrandbits(r.width)) for r in dut.input_registers}

    async def bench(ctx, host):
        for name, (r, value) in inputs.items():
            ctx.set(getattr(dut, name.lower()), value)
        seen["ID"] = await host.read(ctx, layout.reg("ID").offset)
        seen["VERSION"] = await host.read(ctx, layout.reg("VERSION").offset)
        seen["HASH"] = await host.read64(ctx, layout.reg("HASH").offset)
        for name, (r, _) in inputs.items():
            seen[name] = await (host.read64(ctx, r.offset) if r.width == 64 else host.read(ctx, r.offset))

    _sim(dut, bench, seed=4)
    assert seen.pop("ID") == KERNEL_ID
    assert seen.pop("VERSION") == LAYOUT_VERSION
    assert seen.pop("HASH") == layout.hash64
    assert seen == {name: value for name, (_, value) in inputs.items()}
    assert {"STATUS", "DESC_DONE", "CYCLES", "W1_BYTES_WRITTEN"} <= set(inputs)


def test_unmapped_addresses_read_zero_and_ignore_writes(layout):
    dut = ControlSlave(layout)
    seen = {}
    used = {r.offset + 4 * i for r in layout.registers for i in range(r.width // 32)}
    holes = [a for a in (0x1C, 0x0F0, 0x118, 0x138, 0xFFC) if a not in used]

    async def bench(ctx, host):
        for a in holes:
            await host.write(ctx, a, 0xFFFF_FFFF)
        seen["holes"] = [await host.read(ctx, a) for a in holes]
        seen["ctrl"] = await host.read(ctx, 0x00)

    _sim(dut, bench, seed=5)
    assert holes and seen["holes"] == [0] * len(holes)
    assert seen["ctrl"] == AP_IDLE


def test_back_to_back_writes_survive_heavy_backpressure(layout):
    dut = ControlSlave(layout)
    seen = {}
    count = layout.reg("count").offset

    async def bench(ctx, host):
        host.stall = 0.7
        for v in range(20):
            await host.write(ctx, count, v * 0x01010101)
            seen.setdefault("values", []).append(await host.read(ctx, count))

    _sim(dut, bench, seed=6)
    assert seen["values"] == [v * 0x01010101 for v in range(20)]


def test_control_rejects_non_layout():
    assert_rejects(ControlSlave, dict(layout="nope"), TypeError, "DesignLayout")
