"""cocotb tests of the fixture kernel (run by test_sim_cocotb_runner.py through run_cocotb).

cocotbext-axi bus models with random back-pressure on every channel; the
deliberately failing test exists only to check that failures are reported.
"""
from __future__ import annotations

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam, AxiReadBus
from cocotbext.axi.axi_ram import AxiRamRead

WORD = 32


def _random_pause(seed: int, p: float = 0.3):
    rng = random.Random(seed)
    while True:
        yield rng.random() < p


async def _bench(dut):
    cocotb.start_soon(Clock(dut.ap_clk, 10, unit="ns").start())
    lite = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk, dut.ap_rst_n,
                         reset_active_level=False)
    data = AxiRam(AxiBus.from_prefix(dut, "m_axi_data"), dut.ap_clk, dut.ap_rst_n, reset_active_level=False,
                  size=1 << 20)
    w0 = AxiRamRead(AxiReadBus.from_prefix(dut, "m_axi_w0"), dut.ap_clk, dut.ap_rst_n, reset_active_level=False,
                    size=1 << 20)
    for i, ch in enumerate([data.write_if.aw_channel, data.write_if.w_channel, data.write_if.b_channel,
                            data.read_if.ar_channel, data.read_if.r_channel, w0.ar_channel]):
        ch.set_pause_generator(_random_pause(i))
    dut.m_axi_w0_awready.value = 0
    dut.m_axi_w0_wready.value = 0
    dut.m_axi_w0_bvalid.value = 0
    dut.ap_rst_n.value = 0
    await ClockCycles(dut.ap_clk, 16)
    dut.ap_rst_n.value = 1
    await ClockCycles(dut.ap_clk, 2)
    return lite, data, w0


async def _reg_read(lite, addr: int) -> int:
    return int.from_bytes(await lite.read(addr, 4), "little")


async def _reg_write(lite, addr: int, value: int) -> None:
    await lite.write(addr, value.to_bytes(4, "little"))


@cocotb.test()
async def reads_identity_registers(dut):
    lite, _, _ = await _bench(dut)
    assert await _reg_read(lite, 0x100) == 0x48424D46
    hash64 = await _reg_read(lite, 0x108) | (await _reg_read(lite, 0x10C) << 32)
    assert hash64 == int(os.environ["FIXTURE_HASH64"], 16)


@cocotb.test()
async def copies_under_backpressure(dut):
    lite, data, w0 = await _bench(dut)
    rng = random.Random(7)
    src = bytes(rng.randrange(256) for _ in range(40 * WORD))
    weights = bytes(rng.randrange(256) for _ in range(24 * WORD))
    data.write(0xF00, src)                       # crosses 4 KiB: the kernel must split the burst
    w0.write(0x2000, weights)
    for addr, value in ((0x10, 0xF00), (0x30, 0x8000), (0x18, 40), (0x20, 0x2000), (0x38, 24),
                        (0x04, 1), (0x08, 1), (0x00, 1)):
        await _reg_write(lite, addr, value)
    for _ in range(20000):
        await RisingEdge(dut.ap_clk)
        if dut.interrupt.value:
            break
    assert dut.interrupt.value, "no interrupt"
    assert data.read(0x8000, len(src)) == src
    lanes = 0
    for i in range(0, len(weights), 4):
        lanes ^= int.from_bytes(weights[i:i + 4], "little")
    assert await _reg_read(lite, 0x40) == lanes


@cocotb.test(skip=os.environ.get("FIXTURE_EXPECT_FAILURE") != "1")
async def fails_on_purpose(dut):
    lite, _, _ = await _bench(dut)
    assert await _reg_read(lite, 0x100) == 0, "this test fails on purpose"
