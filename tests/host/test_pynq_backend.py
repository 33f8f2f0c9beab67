"""The pynq backend, run against the simulation through SimPynqDevice (no board here).

Everything PynqDevice does goes through PYNQ's own Overlay, DefaultIP/MMIO and
allocate/sync code paths; only the pynq.Device underneath is the simulated one.
On a board that device is PYNQ's EmbeddedDevice, which is not exercised here.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pynq = pytest.importorskip("pynq", reason="needs PYNQ (pip install 'hbmforge[pynq]')")

from hbmforge.config import parse_config  # noqa: E402
from hbmforge.host import DesignMismatchError, ProgramBuilder, open_device  # noqa: E402
from hbmforge.host.backends.pynq import PynqDevice, find_kernel_ip  # noqa: E402
from hbmforge.host.backends.sim import SimDevice  # noqa: E402
from hbmforge.host.packing import pack_activations, pack_scales, pack_weights, unpack_output  # noqa: E402
from hbmforge.host.pynq_sim import SimPynqDevice  # noqa: E402
from hbmforge.encodings import OutMode
from hbmforge.layout import DesignLayout  # noqa: E402
from hbmforge.numerics.matmul import matmul_int32  # noqa: E402

from golden_kernel import FakeCoSim  # noqa: E402


@pytest.fixture
def tiny_layout(tiny_config) -> DesignLayout:
    return DesignLayout(tiny_config)


@pytest.fixture
def sim_pynq(tiny_layout):
    sim = SimDevice(tiny_layout.to_json(), FakeCoSim(tiny_layout))
    yield SimPynqDevice(sim)
    sim.close()


@pytest.fixture
def design_dir(tmp_path, sim_pynq):
    """A generated design as the board sees it: manifest.json and the overlay pair."""
    (tmp_path / "manifest.json").write_text(json.dumps(sim_pynq.design.data))
    sim_pynq.write_overlay(tmp_path)
    return tmp_path


@pytest.fixture
def dev(design_dir, sim_pynq):
    with open_device(design_dir, backend="pynq", pynq_device=sim_pynq) as d:
        yield d


def test_open_device_finds_the_overlay_and_checks_identity(dev):
    assert isinstance(dev, PynqDevice)
    assert dev.backend == "pynq"
    assert dev.read_reg("HASH") == dev.layout.hash64
    assert isinstance(dev.ip, pynq.DefaultIP)


def test_buffers_are_pynq_buffers_at_their_device_address(dev, sim_pynq):
    buf = dev.alloc(100)
    assert isinstance(buf.handle, pynq.buffer.PynqBuffer)
    assert buf.address == buf.handle.device_address and buf.address % 4096 == 0
    dev.write(buf, np.arange(25, dtype="<i4"), offset=0)
    assert sim_pynq.sim_device.sim.mem_read(buf.address, 100) == np.arange(25, dtype="<i4").tobytes()
    sim_pynq.sim_device.sim.mem_write(buf.address + 96, b"\xff\xff\xff\x7f")
    assert dev.read(buf, 4, offset=96) == b"\xff\xff\xff\x7f"
    live = len(sim_pynq.sim_device.live_buffers())
    dev.free(buf)
    assert len(sim_pynq.sim_device.live_buffers()) == live - 1


def test_a_matmul_runs_through_the_device_protocol(dev, tiny_layout):
    rng = np.random.default_rng(7)
    m, k, n = 2, 32, 3
    xq = rng.integers(-128, 128, size=(m, k))
    wq = rng.integers(-128, 128, size=(n, k))
    mant = rng.integers(1, 1000, size=(n, k // tiny_layout.mm.group_size))

    def upload(data, port="data"):
        buf = dev.alloc(data.nbytes, port)
        dev.write(buf, data)
        return buf

    x, s = upload(pack_activations(xq, tiny_layout)), upload(pack_scales(mant, tiny_layout))
    w = [upload(st, f"w{i}") for i, st in enumerate(pack_weights(wq, 8, tiny_layout))]
    y = dev.alloc(tiny_layout.matmul.out_bytes(m, n, OutMode.INT32))
    prog = ProgramBuilder(dev)
    prog.matmul(m=m, k=k, n=n, wbits=8, x=x, s=s, y=y, w=w)
    status = dev.run(upload(np.frombuffer(prog.to_bytes(), np.uint8)), len(prog), timeout=5)
    assert status.descriptors_done == 1
    got = unpack_output(dev.read(y), m, n, OutMode.INT32, tiny_layout)
    assert np.array_equal(got, matmul_int32(xq, wq, mant, tiny_layout.mm.group_size))


def test_register_map_from_the_manifest(dev, tiny_layout):
    rm = dev.register_map
    assert int(rm.ID) == 0x48424D46
    rm.count = 9
    assert dev.read_reg("count") == 9
    assert [getattr(rm, r.name).address for r in tiny_layout.registers] == \
        [r.offset for r in tiny_layout.registers]


def test_a_kernel_built_from_another_config_is_refused(tmp_path, sim_pynq, tiny_config):
    other = tiny_config.model_dump()
    other["engines"][0]["rows"] = 4                    # same kernel name, other design hash
    manifest = DesignLayout(parse_config(other)).to_json()
    bit = sim_pynq.write_overlay(tmp_path)
    with pytest.raises(DesignMismatchError, match="design hash mismatch"):
        PynqDevice(manifest, bit, pynq_device=sim_pynq)


def test_missing_overlay_names_the_block_design(tmp_path, sim_pynq):
    with pytest.raises(FileNotFoundError, match=r"tiny.bit not found.*bd.tcl"):
        PynqDevice(sim_pynq.design, tmp_path / "tiny.bit", pynq_device=sim_pynq)
    (tmp_path / "tiny.bit").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="tiny.hwh is missing"):
        PynqDevice(sim_pynq.design, tmp_path / "tiny.bit", pynq_device=sim_pynq)


def test_kernel_ip_is_found_by_its_type(sim_pynq):
    ip_dict = {"zynq_ultra_ps_e_0": {"type": "xilinx.com:ip:zynq_ultra_ps_e:3.5"},
               "accel/k": {"type": "xilinx.com:module_ref:tiny:1.0"}}
    assert find_kernel_ip(ip_dict, sim_pynq.design) == "accel/k"
    with pytest.raises(DesignMismatchError, match="has no 'tiny' kernel"):
        find_kernel_ip({"x": {"type": "xilinx.com:ip:axi_dma:7.1"}}, sim_pynq.design)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(pynq_device="sim"), TypeError, "pynq_device must be a pynq.Device"),
    (dict(pynq_device=object()), TypeError, "pynq_device must be a pynq.Device"),
    (dict(ip_name="nope_0"), ValueError, r"ip_name 'nope_0' is not a memory-mapped IP of the overlay.*tiny_0"),
    (dict(ip_name="zynq_ultra_ps_e_0"), ValueError, "not a memory-mapped IP"),
    (dict(ip_name=3), TypeError, "ip_name must be a string"),
    (dict(download="yes"), TypeError, "download must be True or False"),
])
def test_bad_backend_arguments_are_named(design_dir, sim_pynq, kwargs, error, match):
    args = dict(pynq_device=sim_pynq)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        PynqDevice(design_dir, design_dir / "tiny.bit", **args)
    with pytest.raises(TypeError, match="bitfile must be the path"):
        PynqDevice(design_dir, None, pynq_device=sim_pynq)
    with pytest.raises(TypeError, match="opens a generated design directory"):
        open_device(None, backend="pynq", pynq_device=sim_pynq)
