"""More than 16 stream ports end to end through generation: the real matmul engine with 32 weight
ports (one per U280 pseudo-channel, the data port sharing channel 0) generates, lints clean and
states the wide register map and the port map in its manifest."""
from __future__ import annotations

import pytest

from hbmforge.flows.emit import generate, lint

from designs import tiny_config_dict

pytestmark = pytest.mark.rtl


def test_a_matmul_with_32_weight_ports_generates_and_lints(tmp_path):
    data = tiny_config_dict(weight_ports=32, lanes=256, group_size=256, max_k=256)
    data["name"] = "tiny32"
    d = generate(data, tmp_path)
    lint(d.verilog_path)
    text = d.verilog_path.read_text()
    assert "m_axi_w31_arvalid" in text and "m_axi_w32_arvalid" not in text
    man = d.manifest
    ports = {p["name"]: p for p in man["ports"]}
    assert len(ports) == 33 and ports["data"]["channel"] == 0 == ports["w0"]["channel"]
    assert sorted(ports[f"w{i}"]["channel"] for i in range(32)) == list(range(32))
    regs = {r["name"]: r["offset"] for r in man["registers"]}
    assert regs["w31"] == 0x8F8 and regs["W31_BYTES_READ"] == 0x900 + 32 * 16
