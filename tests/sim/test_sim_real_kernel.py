"""The harness on the real generated starter kernel (skipped until hbmforge.flows.emit exists)."""
from __future__ import annotations

import time

import pytest

from hbmforge.config import parse_config, starter_config
from hbmforge.layout import KERNEL_ID, LAYOUT_VERSION, DesignLayout

from hbmforge.flows import emit

pytestmark = pytest.mark.rtl


@pytest.fixture(scope="module")
def starter(tmp_path_factory):
    from hbmforge.sim.build import build_library
    cfg = parse_config(starter_config("u280"))
    out = tmp_path_factory.mktemp("starter")
    emit.generate(cfg, out)
    return build_library(out, progress=False), DesignLayout(cfg)


@pytest.fixture
def sim(starter):
    from hbmforge.sim.cosim import CoSim
    build, _ = starter
    with CoSim(build.library, build.manifest) as s:
        yield s


def test_starter_identifies_itself(sim, starter):
    _, layout = starter
    assert sim.reg_read("ID") == KERNEL_ID
    assert sim.reg_read("VERSION") == LAYOUT_VERSION
    assert sim.reg_read("HASH") == layout.hash64
    assert sim.reg_read("CTRL") & 0b100                     # idle out of reset
    assert sim.num_ports() == len(layout.ports)


def _run_program(sim, layout, descriptor: bytes, addr=0x1000) -> None:
    sim.mem_write(addr, descriptor)
    sim.reg_write("program", addr)
    sim.reg_write("count", 1)
    sim.start()
    assert sim.run_until_interrupt(200_000), "no interrupt"
    sim.ack_interrupt()
    sim.reg_read("CTRL")


def test_end_program_finishes_cleanly(sim, starter):
    _, layout = starter
    _run_program(sim, layout, bytes(layout.descriptor_bytes))        # op 0 = END
    assert sim.reg_read("STATUS") == 0
    assert sim.reg_read("DESC_DONE") == 0
    assert sim.port_stats("data").read_bursts >= 1                    # the command fetch
    sim.check_protocol()


def test_bad_opcode_reports_error_status(sim, starter):
    _, layout = starter
    desc = bytearray(layout.descriptor_bytes)
    desc[0] = 7
    _run_program(sim, layout, bytes(desc))
    status = sim.reg_read("STATUS")
    assert status & 1 and (status >> 8) & 0xFF == 1                  # error, BAD_OPCODE
    sim.check_protocol()


def test_report_build_time_and_speed(sim, starter, record_property):
    build, _ = starter
    n = 200_000
    t0 = time.perf_counter()
    sim.step(n)
    rate = n / (time.perf_counter() - t0)
    record_property("build_seconds", round(sum(build.stage_seconds.values()), 1))
    record_property("idle_cycles_per_second", round(rate))
    print(f"starter u280: build {sum(build.stage_seconds.values()):.1f} s, {rate / 1e6:.2f} M cycles/s idle")
    assert rate > 20_000
