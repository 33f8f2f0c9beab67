"""The xrt backend without XRT: what can be checked on a machine with no pyxrt and no card.

Opening a real device (buffers in HBM banks, register access, runs) needs an
Alveo card with XRT and is not exercised here; pyxrt is not faked.
"""
from __future__ import annotations

import sys

import pytest

from hbmforge.config import parse_config, starter_config
from hbmforge.host import read_manifest
from hbmforge.kernel_interface import compute_unit, kernel_args, pointer_arg_of_port
from hbmforge.layout import DesignLayout


@pytest.fixture
def no_pyxrt(monkeypatch):
    """Make ``import pyxrt`` fail even on a machine that has XRT installed."""
    monkeypatch.setitem(sys.modules, "pyxrt", None)


@pytest.fixture
def manifest():
    cfg = starter_config("u280", name="mm")
    cfg["engines"][0]["weight_ports"] = 2
    cfg["ports"] = {"data": 3, "w0": 8, "w1": 9}
    return read_manifest(DesignLayout(parse_config(cfg)).to_json())


@pytest.fixture
def xclbin(tmp_path):
    path = tmp_path / "mm.xclbin"
    path.write_bytes(b"xclbin2\0")
    return path


def test_module_imports_without_pyxrt(no_pyxrt):
    from hbmforge.host.backends import xrt

    assert xrt.XrtDevice.backend == "xrt"


def test_missing_pyxrt_says_where_it_comes_from(no_pyxrt, manifest, xclbin):
    from hbmforge.host.backends.xrt import XrtDevice

    with pytest.raises(ImportError) as info:
        XrtDevice(manifest, xclbin)
    text = str(info.value)
    assert "pyxrt ships with XRT (source /opt/xilinx/xrt/setup.sh); it is not on PyPI" in text


def test_open_device_by_name_reaches_the_same_error(no_pyxrt, tmp_path, manifest):
    import json

    from hbmforge.host import open_device

    (tmp_path / "manifest.json").write_text(json.dumps(manifest.data))
    (tmp_path / "mm.xclbin").write_bytes(b"xclbin2\0")
    with pytest.raises(ImportError, match="not on PyPI"):
        open_device(tmp_path, backend="xrt")


def test_missing_xclbin_names_the_vitis_flow(no_pyxrt, manifest, tmp_path):
    from hbmforge.host.backends.xrt import XrtDevice

    with pytest.raises(FileNotFoundError, match=r"mm.xclbin not found.*link.cfg"):
        XrtDevice(manifest, tmp_path / "mm.xclbin")


@pytest.mark.parametrize("device, error, text", [
    ("65:00", ValueError, "not a PCIe BDF"),
    (-1, ValueError, "index must be >= 0"),
    (1.0, TypeError, "index or a PCIe BDF"),
])
def test_bad_device_spec_is_refused(no_pyxrt, manifest, xclbin, device, error, text):
    from hbmforge.host.backends.xrt import XrtDevice

    with pytest.raises(error, match=text):
        XrtDevice(manifest, xclbin, device=device)


def test_open_device_needs_a_generated_design(no_pyxrt, tmp_path):
    from hbmforge.host.backends.xrt import open_device

    with pytest.raises(ValueError, match="directory of a generated design"):
        open_device(tmp_path)


def test_bank_of_each_port_comes_from_the_kernel_xml_argument_index(manifest):
    """group_id(arg) must use the argument numbering of kernel.xml; both come from kernel_args."""
    ids = {p.name: pointer_arg_of_port(manifest.data, p.name).index for p in manifest.layout.ports}
    assert ids == {"data": 0, "w0": 2, "w1": 3}
    assert [a.name for a in kernel_args(manifest.data)] == ["program", "count", "w0", "w1"]
    assert compute_unit(manifest.data) == "mm_1"
