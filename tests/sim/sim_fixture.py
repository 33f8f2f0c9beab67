"""Paths and scenario helpers for the fixture kernel (tests/fixtures/fixture.v)."""
from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIXTURE_RTL = FIXTURES / "fixture.v"
FIXTURE_MANIFEST = FIXTURES / "fixture_manifest.json"

WORD = 32                       # fixture port width in bytes
OPT_IGNORE_4K = 1 << 8          # fixture OPTIONS bits (see tests/fixtures/fixture.v)
OPT_WRONG_SIZE = 1 << 9
OPT_NO_WLAST = 1 << 10
OPT_FATAL = 1 << 11


def run_job(sim, *, src=0, dst=0, words=0, w0=0, w0_words=0, options=None, max_cycles=1_000_000) -> int:
    """Program the fixture's copy and w0 read, start, wait for the interrupt; cycles the run took."""
    sim.reg_write("program", src)
    sim.reg_write("dst", dst)
    sim.reg_write("count", words)
    sim.reg_write("w0", w0)
    sim.reg_write("w0_words", w0_words)
    if options is not None:
        sim.reg_write("OPTIONS", options)
    sim.start()
    assert sim.run_until_interrupt(max_cycles), f"no interrupt within {max_cycles} cycles"
    sim.ack_interrupt()
    return sim.reg_read("CYCLES")
