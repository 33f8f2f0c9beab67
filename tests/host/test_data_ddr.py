"""data_memory: ddr — the data port's buffers in the U280's DDR4, its weight ports on HBM."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from hbmforge.config import ConfigError, parse_config
from hbmforge.host import Linear, open_device
from hbmforge.layout import DesignLayout
from hbmforge.memory_map import DDR_BASE, HOST_BASE
from hbmforge.package_templates import package_context

from golden_kernel import GoldenDevice
from test_linear_rtl import TINY


def _ddr_config(**over) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg.update({"name": "tiny_ddr", "data_memory": "ddr", **over})
    return cfg


def test_the_config_needs_a_ddr_beside_the_main_memory():
    assert parse_config(_ddr_config()).data_memory == "ddr"
    assert parse_config(TINY).data_memory == "main"
    for board in ("u55c", "kv260"):
        with pytest.raises(ConfigError, match=f"data_memory: {board} has no DDR beside"):
            parse_config(_ddr_config(board=board, **({"axi": {"data_width": 64}} if board == "kv260" else {})))
    with pytest.raises(ConfigError, match="data_memory"):
        parse_config(_ddr_config(data_memory="hbm"))


def test_the_manifest_and_the_link_config_put_the_data_port_on_ddr():
    lay = DesignLayout(parse_config(_ddr_config()))
    ports = {p["name"]: p for p in lay.to_json()["ports"]}
    assert ports["data"]["memory"] == "ddr" and "memory" not in ports["w0"]
    banks = {p["name"]: p["sp_bank"] for p in package_context(lay.to_json())["ports"]}
    assert banks == {"data": "DDR[0]", "w0": "HBM[1]", "w1": "HBM[2]"}


def test_data_buffers_default_to_ddr_and_refuse_hbm():
    with GoldenDevice(DesignLayout(parse_config(_ddr_config()))) as dev:
        data, w0 = dev.alloc(4096), dev.alloc(4096, "w0")
        assert data.memory == "ddr" and data.bank == "DDR[0]" and DDR_BASE <= data.address < HOST_BASE
        assert w0.memory == "hbm" and w0.address < DDR_BASE
        assert dev.alloc(64, "data", memory="ddr").bank == "DDR[0]"
        with pytest.raises(ValueError, match="port data is linked to ddr .config data_memory.; it cannot reach hbm"):
            dev.alloc(64, "data", memory="hbm")
        assert len(dev.live_buffers()) == 3


@pytest.mark.rtl
def test_a_linear_layer_runs_bit_exact_with_its_data_in_ddr(tmp_path):
    rng = np.random.default_rng(7)
    with open_device(parse_config(_ddr_config()), build_dir=tmp_path, progress=False) as dev:
        with Linear.from_float(rng.standard_normal((24, 64)), bits=4, device=dev) as lin:
            xq = rng.integers(-128, 128, (3, 64))
            assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
            assert lin.last_run.counters["mac_ops"] > 0
        assert all(b.memory == "ddr" for b in dev.live_buffers() if b.port == "data")
