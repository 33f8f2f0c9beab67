"""The fixture kernel (tests/fixtures/fixture.v) as a design: its RTL, its manifest, scenario helpers.

The fixture is a hand-written stand-in for a generated kernel with the ports, identity and
counter registers of a real design: its manifest is the ``DesignLayout`` manifest of
:data:`FIXTURE_CONFIG` (so the harness reads it through the one contract reader), and its
VERSION/HASH constants are filled in from that layout. Its job registers (``dst``,
``w0_words``, ``OPTIONS``, ``CHECKSUM``) sit at offsets the layout leaves free and are
reached by offset (:data:`FIXTURE_REGS`).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hbmforge.config import parse_config, starter_config
from hbmforge.layout import DesignLayout

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
_TEMPLATE = FIXTURES / "fixture.v"


def _fixture_config() -> dict:
    data = starter_config("u280", name="fixture")
    data["axi"] = {"max_burst_beats": 16, "max_outstanding": 8, "id_width": 4}
    data["ports"] = {"data": 0, "w0": 1}
    return data


FIXTURE_CONFIG = _fixture_config()
FIXTURE_LAYOUT = DesignLayout(parse_config(FIXTURE_CONFIG))

#: fixture job registers (offset, bits) beside the layout's own
FIXTURE_REGS = {"dst": (0x30, 64), "w0_words": (0x38, 32), "OPTIONS": (0x3C, 32), "CHECKSUM": (0x40, 32)}


def _write_once(path: Path, text: str) -> None:
    """Write ``text`` atomically unless ``path`` already holds it (xdist workers share the dir)."""
    if path.exists() and path.read_text() == text:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _render() -> tuple[Path, Path]:
    rtl = (_TEMPLATE.read_text().replace("@VERSION@", f"{FIXTURE_LAYOUT.layout_version:08x}")
           .replace("@HASH64@", f"{FIXTURE_LAYOUT.hash64:016x}"))
    manifest = json.dumps(FIXTURE_LAYOUT.to_json(), indent=2)
    out = Path(tempfile.gettempdir()) / f"hbmforge-fixture-{FIXTURE_LAYOUT.hash64:016x}"
    out.mkdir(parents=True, exist_ok=True)
    _write_once(out / "fixture.v", rtl)
    _write_once(out / "manifest.json", manifest)
    return out / "fixture.v", out / "manifest.json"


FIXTURE_RTL, FIXTURE_MANIFEST = _render()

WORD = 32                       # fixture port width in bytes
OPT_IGNORE_4K = 1 << 8          # fixture OPTIONS bits (see tests/fixtures/fixture.v)
OPT_WRONG_SIZE = 1 << 9
OPT_NO_WLAST = 1 << 10
OPT_FATAL = 1 << 11


def fixture_reg_write(sim, name: str, value: int) -> None:
    """Write a fixture job register (64-bit ones as two words, low first)."""
    offset, bits = FIXTURE_REGS[name]
    sim.reg_write(offset, value & 0xFFFF_FFFF)
    if bits == 64:
        sim.reg_write(offset + 4, value >> 32)


def fixture_reg_read(sim, name: str) -> int:
    offset, bits = FIXTURE_REGS[name]
    value = sim.reg_read(offset)
    return value | (sim.reg_read(offset + 4) << 32) if bits == 64 else value


def run_job(sim, *, src=0, dst=0, words=0, w0=0, w0_words=0, options=None, max_cycles=1_000_000) -> int:
    """Program the fixture's copy and w0 read, start, wait for the interrupt; cycles the run took."""
    sim.reg_write("program", src)
    fixture_reg_write(sim, "dst", dst)
    sim.reg_write("count", words)
    sim.reg_write("w0", w0)
    fixture_reg_write(sim, "w0_words", w0_words)
    if options is not None:
        fixture_reg_write(sim, "OPTIONS", options)
    sim.start()
    assert sim.run_until_interrupt(max_cycles), f"no interrupt within {max_cycles} cycles"
    sim.ack_interrupt()
    return sim.reg_read("CYCLES")
