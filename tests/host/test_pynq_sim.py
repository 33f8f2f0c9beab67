"""Ordinary PYNQ code against the simulation: Overlay, allocate, register_map, MMIO, sync.

``pynq_user_matmul`` is what a PYNQ user writes for one matmul layer. It runs
here on the sim backend over the golden-model test double (FakeCoSim, no
Verilator) and, in the test marked ``rtl``, on the Verilator co-simulation of
the generated kernel.
"""
from __future__ import annotations

import numpy as np
import pytest

pynq = pytest.importorskip("pynq", reason="needs PYNQ (pip install 'hbmforge[pynq]')")

from hbmforge.config import parse_config, starter_config  # noqa: E402
from hbmforge.host import DesignMismatchError, ProgramBuilder, ProtocolViolationError  # noqa: E402
from hbmforge.host.backends.sim import SimDevice  # noqa: E402
from hbmforge.host.packing import pack_activations, pack_scales, pack_weights, unpack_output  # noqa: E402
from hbmforge.host.pynq_sim import SimPynqDevice, write_sim_overlay  # noqa: E402
from hbmforge.kernel_interface import CONTROL_RANGE  # noqa: E402
from hbmforge.encodings import OutMode
from hbmforge.layout import KERNEL_ID, DesignLayout  # noqa: E402
from hbmforge.numerics.matmul import matmul_int32  # noqa: E402

from golden_kernel import FakeCoSim  # noqa: E402


@pytest.fixture
def tiny_layout(tiny_config) -> DesignLayout:
    return DesignLayout(tiny_config)


def sim_device(layout: DesignLayout) -> SimDevice:
    return SimDevice(layout, FakeCoSim(layout))


@pytest.fixture
def pynq_dev(tiny_layout):
    sim = sim_device(tiny_layout)
    yield SimPynqDevice(sim)
    sim.close()


@pytest.fixture
def overlay(pynq_dev, tmp_path):
    bit = pynq_dev.write_overlay(tmp_path)
    return pynq.Overlay(str(bit), device=pynq_dev)


def pynq_user_matmul(ol, target, layout: DesignLayout, *, m=3, k=64, n=5, wbits=4, seed=0, poll_limit=10_000):
    """One int32 matmul the way a PYNQ user drives the kernel; returns (device result, golden)."""
    rng = np.random.default_rng(seed)
    xq = rng.integers(-128, 128, size=(m, k), dtype=np.int64)
    lo, hi = -(1 << (wbits - 1)), (1 << (wbits - 1)) - 1
    wq = rng.integers(lo, hi + 1, size=(n, k), dtype=np.int64)
    mant = rng.integers(1, 1 << 12, size=(n, k // layout.mm.group_size), dtype=np.int64)

    def upload(data: np.ndarray):
        buf = pynq.allocate(data.shape, np.uint8, target=target)
        buf[:] = data
        buf.sync_to_device()
        return buf

    x = upload(pack_activations(xq, layout))
    s = upload(pack_scales(mant, layout))
    w = [upload(stripe) for stripe in pack_weights(wq, wbits, layout)]
    y = pynq.allocate((layout.matmul.out_bytes(m, n, OutMode.INT32),), np.uint8, target=target)
    prog = ProgramBuilder(layout)
    prog.matmul(m=m, k=k, n=n, wbits=wbits, x=x.device_address, s=s.device_address,
                y=y.device_address, w=[b.device_address for b in w])
    program = upload(np.frombuffer(prog.to_bytes(), dtype=np.uint8))

    ip = getattr(ol, f"{layout.kernel}_0")
    ip.register_map.program = program.device_address
    ip.register_map.count = len(prog)
    ip.register_map.CTRL.AP_START = 1
    for _ in range(poll_limit):
        if ip.register_map.CTRL.AP_DONE:
            break
    else:
        raise AssertionError("ap_done never rose")
    assert ip.register_map.STATUS.ERROR == 0
    y.sync_from_device()
    got = unpack_output(np.asarray(y), m, n, OutMode.INT32, layout)
    return got, matmul_int32(xq, wq, mant, layout.mm.group_size)


# -- the overlay -------------------------------------------------------------------------
def test_overlay_exposes_the_kernel_under_its_block_design_name(overlay):
    assert "tiny_0" in overlay.ip_dict
    ip = overlay.tiny_0
    assert isinstance(ip, pynq.DefaultIP)
    assert overlay.ip_dict["tiny_0"]["phys_addr"] == 0xA000_0000
    assert overlay.ip_dict["tiny_0"]["addr_range"] == CONTROL_RANGE
    assert overlay.is_loaded()


def test_register_map_lists_the_manifest_registers(overlay, tiny_layout):
    rm = overlay.tiny_0.register_map
    for reg in tiny_layout.registers:
        assert getattr(rm, reg.name).address == reg.offset
    assert int(rm.ID) == KERNEL_ID
    assert int(rm.HASH) == tiny_layout.hash64            # a 64-bit register: two AXI reads
    assert rm.CTRL.AP_IDLE == 1


def test_mmio_reads_and_writes_reach_the_kernel(overlay, pynq_dev):
    ip = overlay.tiny_0
    assert ip.mmio.read(0x100) == KERNEL_ID
    ip.mmio.write(0x18, 7)                                # count
    assert ip.read(0x18) == 7
    assert pynq_dev.sim_device.read_reg("count") == 7
    ip.register_map.w1 = 0x1234_5678_9ABC_D000            # a 64-bit argument
    assert pynq_dev.sim_device.read_reg("w1") == 0x1234_5678_9ABC_D000


def test_access_outside_the_control_window_is_refused(overlay):
    with pytest.raises(ValueError, match="outside the kernel's s_axi_control window"):
        pynq.MMIO(0xA000_0000 + CONTROL_RANGE, 4, device=overlay.device).read(0)


# -- buffers -----------------------------------------------------------------------------
def test_allocate_gives_buffers_in_simulated_memory(pynq_dev):
    buf = pynq.allocate((1000,), np.int16, target=pynq_dev)
    assert isinstance(buf, pynq.buffer.PynqBuffer)
    assert buf.device_address % 4096 == 0
    buf[:] = np.arange(1000, dtype=np.int16)
    buf.sync_to_device()
    sim = pynq_dev.sim_device
    raw = sim.sim.mem_read(buf.device_address, 2000)
    assert np.array_equal(np.frombuffer(raw, dtype=np.int16), np.arange(1000))
    sim.sim.mem_write(buf.device_address + 2, np.array([-7], dtype=np.int16).tobytes())
    buf.sync_from_device()
    assert buf[1] == -7 and buf[2] == 2


def test_slices_sync_only_their_range(pynq_dev):
    buf = pynq.allocate((64,), np.uint8, target=pynq_dev)
    buf[:] = 1
    buf.sync_to_device()
    buf[:] = 2
    buf[16:32].sync_to_device()
    raw = pynq_dev.sim_device.sim.mem_read(buf.device_address, 64)
    assert raw == bytes([1] * 16 + [2] * 16 + [1] * 32)
    assert buf[16:32].device_address == buf.device_address + 16


def test_freeing_a_buffer_returns_its_device_memory(pynq_dev):
    sim = pynq_dev.sim_device
    before = len(sim.live_buffers())
    with pynq.allocate((4096,), np.uint8, target=pynq_dev) as buf:
        assert len(sim.live_buffers()) == before + 1
        assert buf.physical_address == buf.device_address
    assert len(sim.live_buffers()) == before


def test_allocate_in_the_bank_of_a_weight_port(pynq_dev, tiny_layout):
    buf = pynq.allocate((64,), np.uint8, target=pynq_dev, port="w1")
    channel = dict((p.name, p.channel) for p in tiny_layout.ports)["w1"]
    assert channel * (256 << 20) <= buf.device_address < (channel + 1) * (256 << 20)


# -- the run -----------------------------------------------------------------------------
def test_pynq_user_runs_a_matmul_on_the_simulated_kernel(overlay, pynq_dev):
    got, want = pynq_user_matmul(overlay, pynq_dev, pynq_dev.design.layout)
    assert np.array_equal(got, want)


def test_active_device_lets_pynq_code_omit_the_device(pynq_dev, tmp_path, monkeypatch):
    monkeypatch.setattr(pynq.Device, "_active_device", pynq_dev, raising=False)
    ol = pynq.Overlay(str(pynq_dev.write_overlay(tmp_path)))
    got, want = pynq_user_matmul(ol, None, pynq_dev.design.layout, m=1, n=2, seed=3)
    assert np.array_equal(got, want)


def test_axi_violations_fail_the_pynq_code_that_ran_the_kernel(overlay, pynq_dev):
    pynq_dev.sim_device.sim.protocol = (1, "m_axi_data: burst crosses a 4 KiB boundary")
    with pytest.raises(ProtocolViolationError, match="1 AXI rule violation.*4 KiB"):
        pynq_user_matmul(overlay, pynq_dev, pynq_dev.design.layout)
    assert pynq_dev.protocol_errors()[0] == 1


# -- refusing the wrong design -------------------------------------------------------------
def test_overlay_of_another_design_is_refused(pynq_dev, tiny_config, tmp_path):
    other = tiny_config.model_dump()
    other["engines"][0]["rows"] = 4
    bit = write_sim_overlay(DesignLayout(parse_config(other)).to_json(), tmp_path)
    with pytest.raises(DesignMismatchError, match=r"describes design .* the simulated kernel is"):
        pynq.Overlay(str(bit), device=pynq_dev)


def test_a_real_bitstream_is_refused(pynq_dev, tmp_path):
    bit = pynq_dev.write_overlay(tmp_path)
    bit.write_bytes(b"\x00\x09\x0f\xf0" + bytes(64))
    with pytest.raises(DesignMismatchError, match="not a co-simulation overlay"):
        pynq.Overlay(str(bit), device=pynq_dev)


def test_hwh_places_each_master_on_its_ps_port_for_zynq_boards(tmp_path):
    from pynqmetadata.frontends import Metadata

    cfg = starter_config("kv260", name="edge")
    cfg["engines"][0]["weight_ports"] = 2
    bit = write_sim_overlay(DesignLayout(parse_config(cfg)).to_json(), tmp_path)
    md = Metadata(input=str(bit.with_suffix(".hwh")))
    kernel = md.blocks["edge_0"]
    ps = md.blocks["zynq_ultra_ps_e_0"]
    for port, hp in (("m_axi_data", "S_AXI_HP0_FPD"), ("m_axi_w0", "S_AXI_HP1_FPD"),
                     ("m_axi_w1", "S_AXI_HP2_FPD")):
        targets = [kernel.ports[port]._addrmap_obj[key] for key in kernel.ports[port].addrmap]
        assert [t.name for t in targets] == [hp]
        assert hp in ps.ports


# -- the same user code on the Verilator co-simulation ------------------------------------------
@pytest.mark.rtl
def test_pynq_user_runs_a_matmul_on_the_verilator_cosim(tiny_config, tmp_path):
    from hbmforge.host import open_device

    with open_device(tiny_config, build_dir=tmp_path / "design") as sim:
        dev = SimPynqDevice(sim)
        ol = pynq.Overlay(str(dev.write_overlay(tmp_path / "overlay")), device=dev)
        assert int(ol.tiny_0.register_map.HASH) == sim.layout.hash64
        got, want = pynq_user_matmul(ol, dev, sim.layout, poll_limit=100_000)
        assert np.array_equal(got, want)
        got, want = pynq_user_matmul(ol, dev, sim.layout, m=5, k=128, n=3, wbits=8, seed=1,
                                     poll_limit=100_000)
        assert np.array_equal(got, want)


# -- PYNQ code on the Verilator co-simulation of the hand-written fixture kernel ------------------
@pytest.mark.rtl
def test_pynq_user_drives_the_fixture_kernel_on_verilator(tmp_path):
    from hbmforge.sim.build import build_library
    from hbmforge.sim.cosim import CoSim

    from fixture_design import FIXTURE_MANIFEST, FIXTURE_REGS, FIXTURE_RTL

    built = build_library(FIXTURE_RTL, FIXTURE_MANIFEST, progress=False)
    with SimDevice(FIXTURE_MANIFEST, CoSim(built.library, FIXTURE_MANIFEST)) as sim:
        dev = SimPynqDevice(sim, poll_cycles=200)
        ol = pynq.Overlay(str(dev.write_overlay(tmp_path)), device=dev)
        ip = ol.fixture_0
        rm = ip.register_map
        assert int(rm.ID) == KERNEL_ID and int(rm.HASH) == sim.layout.hash64

        words = 40                                           # 256-bit words to copy
        src = pynq.allocate((words * 8,), np.uint32, target=dev)
        dst = pynq.allocate((words * 8,), np.uint32, target=dev)
        w0 = pynq.allocate((13 * 8,), np.uint32, target=dev, port="w0")
        src[:] = np.arange(src.size, dtype=np.uint32) * 2654435761
        w0[:] = np.random.default_rng(5).integers(0, 2**32, w0.size, dtype=np.uint32)
        src.sync_to_device()
        w0.sync_to_device()

        rm.program = src.device_address
        rm.count = words
        rm.w0 = w0.device_address
        ip.mmio.write(FIXTURE_REGS["dst"][0], dst.device_address & 0xFFFF_FFFF)     # fixture job registers
        ip.mmio.write(FIXTURE_REGS["dst"][0] + 4, dst.device_address >> 32)
        ip.mmio.write(FIXTURE_REGS["w0_words"][0], 13)
        rm.CTRL.AP_START = 1
        for _ in range(10_000):
            if rm.CTRL.AP_DONE:
                break
        else:
            raise AssertionError("ap_done never rose")

        dst.sync_from_device()
        assert np.array_equal(dst, src)
        assert ip.mmio.read(0x40) == int(np.bitwise_xor.reduce(w0))          # CHECKSUM
        assert int(rm.CYCLES) > 0 and int(rm.DATA_BYTES_WRITTEN) == words * 32
