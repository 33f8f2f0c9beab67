"""Packaging scripts: rendered from the manifest, complete, and consistent with the register map.

Vivado/Vitis are not available here, so these tests check the documented
formats (kernel.xml is well-formed XML with the UG1393/UG1702 attributes,
link.cfg has one sp= per port) and run the Tcl in a plain Tcl interpreter
with Vivado's commands stubbed (tests/unit/tcl_stub.py).
"""
from __future__ import annotations

import configparser
import xml.etree.ElementTree as ET

import pytest

from hbmforge.config import parse_config, starter_config
from hbmforge.kernel_interface import kernel_args
from hbmforge.layout import DesignLayout
from hbmforge.flows.package import render_package

from tcl_stub import calls_named, run_tcl


def manifest_for(cfg: dict) -> dict:
    return DesignLayout(parse_config(cfg)).to_json()


def hbm_config(weight_ports=2, ports=None) -> dict:
    cfg = starter_config("u280", name="mm")
    cfg["engines"][0]["weight_ports"] = weight_ports
    if ports is not None:
        cfg["ports"] = ports
    return cfg


def kv260_config(weight_ports=2) -> dict:
    cfg = starter_config("kv260", name="edge")
    cfg["engines"][0]["weight_ports"] = weight_ports
    return cfg


@pytest.fixture
def hbm_manifest():
    return manifest_for(hbm_config(ports={"data": 4, "w0": 17, "w1": 30}))


@pytest.fixture
def alveo_package(tmp_path, hbm_manifest):
    files = render_package(hbm_manifest, tmp_path / "package")
    (tmp_path / "mm.v").write_text("module mm(); endmodule\n")
    return {f.name: f for f in files}


# -- what gets written -------------------------------------------------------------------
def test_alveo_board_gets_the_vitis_flow(alveo_package):
    assert sorted(alveo_package) == ["kernel.xml", "link.cfg", "package_xo.tcl"]


def test_zynq_board_gets_the_block_design(tmp_path):
    files = render_package(manifest_for(kv260_config()), tmp_path)
    assert [f.name for f in files] == ["bd.tcl"]


def test_board_other_than_the_manifests_is_refused(tmp_path, hbm_manifest):
    with pytest.raises(ValueError, match="generated for board 'u280', not 'u55c'"):
        render_package(hbm_manifest, tmp_path, "u55c")


# -- kernel.xml --------------------------------------------------------------------------
def test_kernel_xml_lists_every_argument_at_its_manifest_offset(alveo_package, hbm_manifest):
    root = ET.parse(alveo_package["kernel.xml"]).getroot()
    kernel = root.find("kernel")
    assert kernel.get("name") == "mm"
    assert kernel.get("hwControlProtocol") == "ap_ctrl_hs"
    assert kernel.get("language") == "ip_c"
    args = {a.get("name"): a for a in kernel.find("args")}
    regs = {r["name"]: r for r in hbm_manifest["registers"]}
    assert list(args) == ["program", "count", "w0", "w1"]
    for i, (name, a) in enumerate(args.items()):
        assert int(a.get("offset"), 16) == regs[name]["offset"]
        assert int(a.get("size"), 16) == regs[name]["width"] // 8
        assert int(a.get("id")) == i
    assert args["program"].get("port") == "m_axi_data"
    assert args["program"].get("addressQualifier") == "1"
    assert args["count"].get("port") == "s_axi_control"
    assert args["count"].get("addressQualifier") == "0"
    assert args["w1"].get("port") == "m_axi_w1"


def test_kernel_xml_has_one_master_per_port_with_its_data_width(alveo_package, hbm_manifest):
    ports = {p.get("name"): p for p in ET.parse(alveo_package["kernel.xml"]).getroot().iter("port")}
    assert ports["s_axi_control"].get("mode") == "slave"
    assert int(ports["s_axi_control"].get("range"), 16) == 0x1000
    for p in hbm_manifest["ports"]:
        port = ports[f"m_axi_{p['name']}"]
        assert port.get("mode") == "master"
        assert int(port.get("dataWidth")) == p["data_width"] == 256


# -- link.cfg ----------------------------------------------------------------------------
def read_cfg(path):
    parser = configparser.ConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str
    text = path.read_text()
    # v++ configs repeat sp= keys; number them so configparser keeps every line
    lines, n = [], 0
    for line in text.splitlines():
        if line.startswith("sp="):
            line, n = f"sp{n}={line[3:]}", n + 1
        lines.append(line)
    parser.read_string("[top]\n" + "\n".join(lines))
    return parser


def test_link_cfg_binds_every_port_to_its_hbm_channel(alveo_package):
    cfg = read_cfg(alveo_package["link.cfg"])
    sps = [v for k, v in cfg["connectivity"].items() if k.startswith("sp")]
    assert sps == ["mm_1.m_axi_data:HBM[4]", "mm_1.m_axi_w0:HBM[17]", "mm_1.m_axi_w1:HBM[30]"]
    assert cfg["connectivity"]["nk"] == "mm:1:mm_1"
    assert cfg["top"]["platform"] == "xilinx_u280_gen3x16_xdma_1_202211_1"
    assert cfg["clock"]["freqHz"] == "300000000:mm_1.ap_clk"


def test_default_port_map_uses_channels_in_port_order(tmp_path):
    files = render_package(manifest_for(hbm_config(weight_ports=4)), tmp_path)
    sps = [v for k, v in read_cfg(tmp_path / "link.cfg")["connectivity"].items() if k.startswith("sp")]
    assert sps == [f"mm_1.m_axi_{p}:HBM[{i}]" for i, p in enumerate(["data", "w0", "w1", "w2", "w3"])]
    assert len(files) == 3


# -- package_xo.tcl ----------------------------------------------------------------------
def test_package_xo_registers_every_manifest_register(alveo_package, hbm_manifest):
    calls = run_tcl(alveo_package["package_xo.tcl"])
    added = [c[-2] for c in calls_named(calls, "ipx::add_register")]
    assert added == [r["name"] for r in sorted(hbm_manifest["registers"], key=lambda r: r["offset"])]
    offsets = [int(c[2], 16) for c in calls_named(calls, "set_property") if c[1] == "address_offset"]
    assert offsets == sorted(r["offset"] for r in hbm_manifest["registers"])


def test_package_xo_associates_every_interface_and_binds_pointers(alveo_package):
    calls = run_tcl(alveo_package["package_xo.tcl"])
    busifs = [c[2] for c in calls_named(calls, "ipx::associate_bus_interfaces") if c[1] == "-busif"]
    assert busifs == ["s_axi_control", "m_axi_data", "m_axi_w0", "m_axi_w1"]
    bound = [c[2] for c in calls_named(calls, "set_property")
             if c[1] == "value" and c[2].startswith("m_axi_")]
    assert bound == ["m_axi_data", "m_axi_w0", "m_axi_w1"]


def test_package_xo_packages_with_kernel_xml(alveo_package, tmp_path):
    calls = run_tcl(alveo_package["package_xo.tcl"])
    (pkg,) = calls_named(calls, "package_xo")
    assert "-force" in pkg
    assert pkg[pkg.index("-kernel_name") + 1] == "mm"
    assert pkg[pkg.index("-kernel_xml") + 1] == str(tmp_path / "package" / "kernel.xml")
    assert pkg[pkg.index("-xo_path") + 1] == str(tmp_path / "package" / "mm.xo")
    (added,) = calls_named(calls, "add_files")
    assert added[-1] == str(tmp_path / "mm.v")


def test_package_xo_names_missing_sources(alveo_package):
    tkinter = pytest.importorskip("tkinter")
    (alveo_package["package_xo.tcl"].parent.parent / "mm.v").unlink()
    with pytest.raises(tkinter.TclError, match="RTL source .*mm.v not found"):
        run_tcl(alveo_package["package_xo.tcl"])


# -- bd.tcl ------------------------------------------------------------------------------
@pytest.fixture
def kv260_bd(tmp_path):
    manifest = manifest_for(kv260_config(weight_ports=2))
    (bd,) = render_package(manifest, tmp_path / "package")
    (tmp_path / "edge.v").write_text("module edge(); endmodule\n")
    return bd, manifest


def test_bd_instantiates_the_kernel_as_a_module_reference(kv260_bd):
    bd, _ = kv260_bd
    calls = run_tcl(bd)
    assert ["create_bd_cell", "-type", "module", "-reference", "edge", "edge_0"] in calls
    assert calls_named(calls, "create_project")[0][-1] == "xck26-sfvc784-2LV-c"


def test_bd_puts_every_master_on_its_ps_port(kv260_bd):
    bd, manifest = kv260_bd
    calls = run_tcl(bd)
    nets = [c[1:] for c in calls_named(calls, "connect_bd_intf_net")]
    flat = " ".join(" ".join(n) for n in nets)
    for p, hp in zip(manifest["ports"], ["S_AXI_HP0_FPD", "S_AXI_HP1_FPD", "S_AXI_HP2_FPD"]):
        assert f"edge_0/m_axi_{p['name']}" in flat
        assert f"zynq_ultra_ps_e_0/{hp}" in flat
    assert "zynq_ultra_ps_e_0/M_AXI_HPM0_FPD" in flat and "edge_0/s_axi_control" in flat
    ps_cfg = [c for c in calls_named(calls, "set_property") if c[1] == "-dict"][0][2]
    for gp in (2, 3, 4):
        assert f"CONFIG.PSU__USE__S_AXI_GP{gp} 1" in ps_cfg
        assert f"CONFIG.PSU__SAXIGP{gp}__DATA_WIDTH 128" in ps_cfg
    assert "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ 250" in ps_cfg


def test_bd_assigns_the_control_window_and_writes_pynq_files(kv260_bd):
    bd, _ = kv260_bd
    calls = run_tcl(bd)
    fixed = [c for c in calls_named(calls, "assign_bd_address") if "-offset" in c][0]
    assert fixed[fixed.index("-offset") + 1] == "0xA0000000"
    assert fixed[fixed.index("-range") + 1] == "0x1000"
    assert calls_named(calls, "make_wrapper")
    copies = [c[-1] for c in calls_named(calls, "file")]
    assert [p.rsplit("/", 1)[-1] for p in copies] == ["edge.bit", "edge.hwh"]
    (hw,) = calls_named(calls, "write_hw_platform")
    assert hw[-1].endswith("edge.xsa")


def test_bd_shares_one_ps_port_between_masters_on_the_same_channel(tmp_path):
    cfg = kv260_config(weight_ports=2)
    cfg["ports"] = {"data": 0, "w0": 1, "w1": 1}
    (bd,) = render_package(manifest_for(cfg), tmp_path / "package")
    (tmp_path / "edge.v").write_text("")
    calls = run_tcl(bd)
    nets = [" ".join(c[1:]) for c in calls_named(calls, "connect_bd_intf_net")]
    assert any("edge_0/m_axi_w0" in n and "mem1_smc/S00_AXI" in n for n in nets)
    assert any("edge_0/m_axi_w1" in n and "mem1_smc/S01_AXI" in n for n in nets)
    assert sum("zynq_ultra_ps_e_0/S_AXI_HP1_FPD" in n for n in nets) == 1


# -- kernel arguments --------------------------------------------------------------------
def test_kernel_args_bind_program_to_data_and_wi_to_their_ports(hbm_manifest):
    args = kernel_args(hbm_manifest)
    assert [(a.index, a.name, a.port) for a in args] == [
        (0, "program", "data"), (1, "count", None), (2, "w0", "w0"), (3, "w1", "w1")]


def test_a_32_port_design_binds_every_port_and_lists_its_wide_pointers_in_kernel_xml(tmp_path):
    # more than CLASSIC_MAX_PORTS ports: the w<i> pointers sit at WIDE_ARGS_BASE + 8i, above the
    # status block; each is still a kernel argument at its manifest offset
    cfg = hbm_config(weight_ports=32, ports={"data": 0, **{f"w{i}": i for i in range(32)}})
    cfg["axi"]["data_width"] = 512
    cfg["engines"][0].update(rows=1, lanes=4096, weight_bits=[2, "ternary"], max_k=4096)
    manifest = manifest_for(cfg)
    args = kernel_args(manifest)
    assert [a.port for a in args if a.is_pointer] == ["data"] + [f"w{i}" for i in range(32)]
    regs = {r["name"]: r["offset"] for r in manifest["registers"]}
    assert regs["w0"] == 0x800 and regs["w31"] == 0x8F8
    files = {f.name: f for f in render_package(manifest, tmp_path / "package")}
    xml_args = {a.get("name"): a for a in ET.parse(files["kernel.xml"]).getroot().find("kernel").find("args")}
    assert int(xml_args["w31"].get("offset"), 16) == 0x8F8 and xml_args["w31"].get("port") == "m_axi_w31"
    sps = [v for k, v in read_cfg(files["link.cfg"])["connectivity"].items() if k.startswith("sp")]
    assert len(sps) == 33 and sps[-1] == "mm_1.m_axi_w31:HBM[31]"


def test_kernel_args_refuse_a_port_without_a_pointer(hbm_manifest):
    broken = dict(hbm_manifest, registers=[r for r in hbm_manifest["registers"] if r["name"] != "w1"])
    with pytest.raises(ValueError, match=r"unbound: \['w1'\]"):
        kernel_args(broken)
