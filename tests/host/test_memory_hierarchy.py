"""dev.alloc(n, memory="host" | "ddr" | "hbm"): buffers beside HBM, on every backend."""
from __future__ import annotations

import types

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.layout import DesignLayout
from hbmforge.memory_map import DDR_BASE, HOST_BASE
from hbmforge.host.backends.xrt import XrtDevice

from designs import tiny_config_dict
from golden_kernel import GoldenDevice


def _layout(board: str) -> DesignLayout:
    cfg = tiny_config_dict()
    cfg["board"] = board
    if board in ("kv260", "zcu102"):
        cfg["axi"]["data_width"] = 64
    return DesignLayout(parse_config(cfg))


def test_host_and_ddr_buffers_live_in_their_regions_and_keep_their_bytes():
    with GoldenDevice(_layout("u280")) as dev:
        host = dev.alloc(10_000, "w0", memory="host")
        ddr = dev.alloc(4096, memory="ddr")
        hbm = dev.alloc(4096, "w0", memory="hbm")
        plain = dev.alloc(4096, "w0")
        assert (host.memory, ddr.memory, hbm.memory, plain.memory) == ("host", "ddr", "hbm", "hbm")
        assert host.address >= HOST_BASE and host.bank == "HOST" and host.address % 4096 == 0
        assert DDR_BASE <= ddr.address < HOST_BASE and ddr.bank == "DDR[0]"
        assert hbm.address < DDR_BASE and hbm.bank == plain.bank == "HBM[1]"
        data = np.arange(10_000, dtype=np.uint8)
        dev.write(host, data)
        assert dev.read(host) == data.tobytes()
        second = dev.alloc(4096, "data", memory="host")
        assert second.address >= host.address + 12288            # one host bank, page-rounded first fit
        first = host.address
        dev.free(host)
        assert dev.alloc(4096, memory="host").address == first


def test_a_memory_the_board_lacks_is_refused_before_anything_is_allocated():
    with GoldenDevice(_layout("u55c")) as dev:
        with pytest.raises(ValueError, match="u55c has no ddr memory; it has hbm, host"):
            dev.alloc(64, memory="ddr")
        with pytest.raises(ValueError, match="memory must be one of hbm, ddr, host, got 'flash'"):
            dev.alloc(64, memory="flash")
        with pytest.raises(TypeError, match="memory must be one of"):
            dev.alloc(64, memory=1)
        assert dev.live_buffers() == []
    with GoldenDevice(_layout("kv260")) as dev:
        with pytest.raises(ValueError, match="kv260 has no hbm memory; it has ddr, host"):
            dev.alloc(64, memory="hbm")
        host = dev.alloc(64, memory="host")                       # the PS DDR: the board's own memory
        assert host.memory == "host" and host.address < HOST_BASE and host.bank == "DDR"


def test_a_host_buffer_larger_than_the_modelled_host_memory_is_refused():
    with GoldenDevice(_layout("u280")) as dev:
        with pytest.raises(Exception, match="bank HOST: cannot allocate"):
            dev.alloc((64 << 30) + 1, memory="host")


class _FakeBo:
    class flags:
        normal, host_only = "normal", "host_only"

    made: list = []

    def __init__(self, device, nbytes, flags, group):
        self.args = (nbytes, flags, group)
        _FakeBo.made.append(self.args)

    def address(self):
        return 0x1000 * len(_FakeBo.made)


def test_xrt_host_buffers_are_host_only_and_ddr_buffers_go_to_the_ddr_bank():
    dev = object.__new__(XrtDevice)           # the allocation path alone, without an XRT device
    dev._layout = _layout("u280")
    dev._xrt = types.SimpleNamespace(bo=_FakeBo)
    dev._device = None
    dev._groups = {"w0": 7}
    mem = types.SimpleNamespace(get_tag=lambda: "DDR[0]", get_index=lambda: 33)
    dev._xclbin_obj = types.SimpleNamespace(get_mems=lambda: [types.SimpleNamespace(get_tag=lambda: "HBM[0]"), mem])
    dev._xclbin_path = "k.xclbin"
    port = dev._layout.port("w0")
    assert dev._allocate(port, 64, "host")[0] == "HOST" and _FakeBo.made[-1] == (64, "host_only", 7)
    assert dev._allocate(port, 64, "ddr")[0] == "DDR[0]" and _FakeBo.made[-1] == (64, "normal", 33)
    assert dev._allocate(port, 64)[0] == "HBM[1]" and _FakeBo.made[-1] == (64, "normal", 7)
    dev._xclbin_obj = types.SimpleNamespace(get_mems=lambda: [])
    with pytest.raises(Exception, match="has no memory bank DDR\\[0\\]"):
        dev._allocate(port, 64, "ddr")
