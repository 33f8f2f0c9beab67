"""hbmforge.flows.emit: flat top-level ports, manifest, determinism, Verilator lint."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hbmforge import __version__
from hbmforge.config import parse_config, starter_config
from hbmforge.flows.emit import KernelTop, LintError, generate, lint, top_ports, waiver_file
from hbmforge.layout import DesignLayout

GATEWARE = Path(__file__).resolve().parents[1] / "gateware"
sys.path.insert(0, str(GATEWARE))
from shell_fixture_engine import passthrough_engines  # noqa: E402  (test-only engine, lives with the gateware tests)

AXI4_MEMBERS = ("awid awaddr awlen awsize awburst awlock awcache awprot awqos awregion awvalid awready "
                "wdata wstrb wlast wvalid wready bid bresp bvalid bready arid araddr arlen arsize arburst "
                "arlock arcache arprot arqos arregion arvalid arready rid rdata rresp rlast rvalid "
                "rready").split()
AXI4_INPUTS = {"awready", "wready", "bid", "bresp", "bvalid", "arready", "rid", "rdata", "rresp",
               "rlast", "rvalid"}
LITE_MEMBERS = ("awaddr awprot awvalid awready wdata wstrb wvalid wready bresp bvalid bready araddr "
                "arprot arvalid arready rdata rresp rvalid rready").split()
LITE_OUTPUTS = {"awready", "wready", "bresp", "bvalid", "arready", "rdata", "rresp", "rvalid"}


def small_config(name="emittest"):
    return parse_config({
        "version": 1, "name": name, "board": "u280",
        "axi": {"data_width": 64, "id_width": 2, "max_burst_beats": 8, "max_outstanding": 4},
        "engines": [{"kind": "matmul", "rows": 2, "lanes": 16, "weight_ports": 2,
                     "weight_bits": [4, 8], "group_size": 16, "max_k": 256}],
    })


@pytest.fixture(scope="module")
def design(tmp_path_factory):
    cfg = small_config()
    return generate(cfg, tmp_path_factory.mktemp("emit"), engines=passthrough_engines(DesignLayout(cfg)))


def _top_ports(text, top):
    """{name: direction} of the top module's port declarations."""
    body = text[text.index(f"module {top}("):]
    body = body[:body.index("endmodule")]
    return {m[1]: m[0] for m in re.findall(r"^\s*(input|output)\s+(?:\[[^\]]+\]\s*)?(\w+);", body, re.M)}


def test_top_ports_are_flat_and_exact(design):
    ports = _top_ports(design.verilog_path.read_text(), "emittest")
    expected = {"ap_clk": "input", "ap_rst_n": "input", "interrupt": "output"}
    for m in LITE_MEMBERS:
        expected[f"s_axi_control_{m}"] = "output" if m in LITE_OUTPUTS else "input"
    for p in ("data", "w0", "w1"):
        for m in AXI4_MEMBERS:
            expected[f"m_axi_{p}_{m}"] = "input" if m in AXI4_INPUTS else "output"
    assert ports == expected


def test_port_widths_follow_the_layout(design):
    text = design.verilog_path.read_text()
    lay = design.layout
    assert re.search(r"output \[63:0\] m_axi_data_araddr;", text)
    assert re.search(rf"input \[{lay.config.data_width - 1}:0\] m_axi_w1_rdata;", text)
    assert re.search(rf"output \[{lay.config.axi.id_width - 1}:0\] m_axi_data_arid;", text)
    assert re.search(r"input \[11:0\] s_axi_control_awaddr;", text)


def test_reset_is_synchronous_and_active_low(design):
    text = design.verilog_path.read_text()
    assert "negedge" not in text
    assert not re.search(r"posedge\s+\\?(rst|ap_rst_n)", text)
    assert re.search(r"assign\s+\S*rst\S*\s*=\s*~\s*ap_rst_n;", text)


def test_manifest_is_the_layout_plus_top_and_generator(design):
    manifest = json.loads(design.manifest_path.read_text())
    assert manifest == design.manifest
    extra = {k: manifest.pop(k) for k in ("top", "verilog", "generator", "generator_version")}
    assert extra == {"top": "emittest", "verilog": "emittest.v", "generator": "hbmforge",
                     "generator_version": __version__}
    assert manifest == json.loads(json.dumps(design.layout.to_json()))
    assert design.verilog_path.name == "emittest.v"


@pytest.mark.rtl
def test_generated_verilog_passes_verilator_lint(design):
    lint(design.verilog_path)


@pytest.mark.rtl
@pytest.mark.parametrize("board, axi, engine", [
    ("kv260", {"id_width": 8, "max_burst_beats": 256, "max_outstanding": 2},
     {"rows": 1, "lanes": 32, "weight_ports": 2, "weight_bits": [4], "group_size": 32, "max_k": 128}),
    ("u280", {"data_width": 512, "id_width": 2, "max_burst_beats": 4, "max_outstanding": 32},
     {"rows": 3, "lanes": 128, "weight_ports": 4, "weight_bits": [8], "group_size": 128, "max_k": 256}),
    # one row, one activation line (max_k == lanes), one column per output word
    ("u280", {"data_width": 64},
     {"rows": 1, "lanes": 16, "weight_ports": 1, "weight_bits": [4], "group_size": 16, "max_k": 16}),
    ("u280", {"data_width": 64},
     {"rows": 2, "lanes": 16, "weight_ports": 2, "weight_bits": [4, 8], "group_size": 16, "max_k": 256}),
])
def test_other_shell_configurations_pass_lint(tmp_path, board, axi, engine):
    cfg = parse_config({"version": 1, "name": f"lint_{board}", "board": board, "axi": axi,
                        "engines": [{"kind": "matmul", **engine}]})
    d = generate(cfg, tmp_path, engines=passthrough_engines(DesignLayout(cfg)))
    lint(d.verilog_path)


@pytest.mark.rtl
def test_lint_reports_problems(tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input a, output b);\n  wire unused_but_driven = a;\nendmodule\n")
    with pytest.raises(LintError, match="bad.v"):
        lint(bad, top="bad")


def test_waiver_file_explains_each_waiver():
    lines = waiver_file().read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("lint_off")]
    assert rules
    for i in rules:                        # each waiver follows a comment (or another waiver)
        j = i - 1
        while lines[j].startswith("lint_off"):
            j -= 1
        assert lines[j].startswith("//"), lines[i]


_EMIT_SCRIPT = """
import sys
sys.path.insert(0, {gateware!r})
from test_emit_config import small_config
from shell_fixture_engine import passthrough_engines
from hbmforge.flows.emit import generate
from hbmforge.layout import DesignLayout
cfg = small_config()
generate(cfg, sys.argv[1], engines=passthrough_engines(DesignLayout(cfg)))
"""


def test_emission_is_deterministic_across_processes(tmp_path):
    """Same config -> same bytes, whatever the hash seed of the Python process."""
    helper = tmp_path / "test_emit_config.py"
    helper.write_text(
        "from hbmforge.config import parse_config\n"
        "def small_config():\n"
        f"    return parse_config({small_config().model_dump(mode='json')!r}, )\n")
    script = _EMIT_SCRIPT.format(gateware=str(GATEWARE))
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(tmp_path))
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, timeout=300)
        outs.append(out)
    for name in ("emittest.v", "manifest.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_top_ports_reject_name_collisions():
    from amaranth.lib import wiring
    from amaranth.lib.wiring import Out

    class Clash(wiring.Component):
        def __init__(self):
            super().__init__({"a_b": Out(1), "a": Out(wiring.Signature({"b": Out(1)}))})

        def elaborate(self, platform):
            raise NotImplementedError

    import gc
    import warnings

    from amaranth.hdl import UnusedElaboratable

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        top = KernelTop(Clash())
        with pytest.raises(ValueError, match="a_b"):
            top_ports(top)
        del top
        gc.collect()


@pytest.mark.rtl
def test_starter_design_with_the_matmul_engine_passes_lint(tmp_path):
    cfg = parse_config(starter_config("u280", name="starter"))
    d = generate(cfg, tmp_path)
    lint(d.verilog_path)
