"""The network family's RTL: the kernel with the ALLREDUCE engine and the switch generate and lint,
the kernel exposes the engine's stream ports and registers, the manifest lists them."""
from __future__ import annotations

import json

import pytest

from hbmforge.config import parse_config
from hbmforge.engines.network import SwitchGeometry
from hbmforge.flows.emit import generate, lint
from hbmforge.flows.network import generate_switch, switch_top_name
from hbmforge.layout import DesignLayout

from designs import tiny_network_config_dict


def test_manifest_lists_the_stream_ports_and_the_counters():
    lay = DesignLayout(parse_config(tiny_network_config_dict()))
    m = lay.to_json()
    assert [(s["prefix"], s["direction"], s["data_width"]) for s in m["streams"]] == \
        [("s_axis_net", "in", 64), ("m_axis_net", "out", 64)]
    net = next(e for e in m["engines"] if e["kind"] == "network")
    assert net["channels"]["streams"] == ["s_axis_net", "m_axis_net"]
    regs = {r["name"]: r["offset"] for r in m["registers"]}
    assert regs["NET_PACKETS"] == 0x300 and regs["NET_HEARD"] == 0x314
    assert DesignLayout.from_manifest(m).streams == lay.streams


@pytest.mark.rtl
def test_kernel_with_the_network_engine_generates_and_lints(tmp_path):
    d = generate(parse_config(tiny_network_config_dict()), tmp_path)
    text = d.verilog_path.read_text()
    for port in ("s_axis_net_tdata", "s_axis_net_tready", "m_axis_net_tvalid", "m_axis_net_tlast"):
        assert port in text
    assert json.loads(d.manifest_path.read_text())["streams"][0]["prefix"] == "s_axis_net"
    lint(d.verilog_path)


@pytest.mark.rtl
def test_switch_generates_and_lints(tmp_path):
    geom = SwitchGeometry(ports=3, data_width=128, packet_words=4, slots=8, jobs=2)
    path = generate_switch(geom, tmp_path)
    text = path.read_text()
    assert f"module {switch_top_name(geom)}" in text
    for port in ("s_axis_p2_tdata", "m_axis_p0_tready", "stat_reduced", "stat_drop_p1"):
        assert port in text
    lint(path, top=switch_top_name(geom))
