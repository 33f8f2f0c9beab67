"""The AXI protocol checker catches the rule breaks the fixture can be told to commit."""
from __future__ import annotations

import pytest

from hbmforge.sim.cosim import AxiProtocolError

from sim_fixture import OPT_IGNORE_4K, OPT_NO_WLAST, OPT_WRONG_SIZE, run_job

pytestmark = pytest.mark.rtl

BURST16 = 15


def test_clean_run_reports_nothing(sim):
    run_job(sim, src=0xF80, dst=0x2F80, words=16, w0=0x5F00, w0_words=16)   # split at 4 KiB by the kernel
    assert sim.protocol_errors() == (0, "")
    assert sim.port_stats("data").read_bursts == 2
    sim.check_protocol()


def test_burst_across_4k_is_caught_and_counted(sim):
    run_job(sim, src=0xF80, dst=0x2000, words=16, w0=0x5F00, w0_words=16, options=BURST16 | OPT_IGNORE_4K)
    count, text = sim.protocol_errors()
    assert count == 2                                    # the data read and the w0 read; the write is aligned
    assert sim.port_stats("data").violations_4k == 1
    assert sim.port_stats("w0").violations_4k == 1
    assert "m_axi_data AR: burst 0xf80..0x117f (16 beats) crosses a 4 KiB boundary" in text
    with pytest.raises(AxiProtocolError, match="2 AXI protocol violation"):
        sim.check_protocol()


def test_unaligned_address_is_caught(sim):
    run_job(sim, src=0x1010, dst=0x8000, words=2)
    report = sim.protocol_errors()
    assert report.count == 1
    assert "m_axi_data AR: address 0x1010 is not aligned to the 32-byte word" in report.messages[0]


def test_wrong_size_is_caught(sim):
    run_job(sim, src=0x1000, dst=0x8000, words=4, options=BURST16 | OPT_WRONG_SIZE)
    report = sim.protocol_errors()
    assert report.count == 1
    assert "size 4 (16 B) is not the port width (32 B)" in report.text


def test_missing_wlast_is_caught(sim):
    run_job(sim, src=0x1000, dst=0x8000, words=20, options=BURST16 | OPT_NO_WLAST)
    report = sim.protocol_errors()
    assert report.count == 2                             # one per write burst (16 + 4 beats)
    assert "m_axi_data W: WLAST=0 on beat 16 of a 16-beat burst at 0x8000" in report.text


def test_bursts_longer_than_the_configured_limit_are_caught(tmp_path, fixture_manifest):
    """The limit is the design's ``axi.max_burst_beats`` (AXI4's own 256 cannot be exceeded in 8 bits):
    the fixture RTL run against the manifest of the same design with an 8-beat limit."""
    import copy

    from hbmforge.config import parse_config
    from hbmforge.layout import DesignLayout
    from hbmforge.sim.build import build_library
    from hbmforge.sim.cosim import CoSim

    from sim_fixture import FIXTURE_CONFIG, FIXTURE_RTL

    cfg = copy.deepcopy(FIXTURE_CONFIG)
    cfg["axi"]["max_burst_beats"] = 8
    manifest = DesignLayout(parse_config(cfg)).to_json()
    res = build_library(FIXTURE_RTL, manifest, progress=False)
    with CoSim(res.library, res.manifest) as sim:
        run_job(sim, src=0x1000, dst=0x8000, words=16, options=BURST16)
        report = sim.protocol_errors()
    assert report.count == 2                             # the 16-beat read and the 16-beat write
    assert "m_axi_data AR: 16 beats exceed the limit of 8" in report.text
