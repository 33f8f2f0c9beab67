"""data_memory: ddr — the data port's buffers in the U280's DDR4, its weight ports on HBM."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from hbmforge.config import ConfigError, parse_config
from hbmforge.host import Linear, open_device
from hbmforge.layout import DesignLayout
from hbmforge.memory_map import DDR_BASE, HOST_BASE, golden_scratch
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


@pytest.mark.rtl
def test_a_decoder_with_its_tables_on_the_table_port_runs_bit_exact(tmp_path):
    """``table_port`` with the data on the DDR: the per-column tables (column multipliers, biases,
    gammas) live in w2's HBM and come through w2 beside the operands on the DDR; prefill and decode
    steps equal the golden program, and so does a single-op Vector layernorm (its gamma and beta too)."""
    from designs import tiny_vector_config_dict
    from hbmforge.host.vector import Vector
    from test_blocks import LLAMA, build_llama
    from test_blocks_rtl import _prefill_then_decode

    cfg = tiny_vector_config_dict("tiny_vec_tables", table_port=True)
    cfg["engines"][0].update(weight_ports=4)
    cfg["data_memory"] = "ddr"
    with open_device(parse_config(cfg), build_dir=tmp_path, progress=False) as dev:
        assert dev.layout.to_json()["engines"][-1]["geometry"]["table_port"] == "w2"
        rng = np.random.default_rng(14)
        prog, *_ = build_llama(dev, rng, layers=2)
        st = _prefill_then_decode(prog, rng.normal(0, 1, (6, LLAMA.hidden)), 4)
        assert st.counters["ports"]["w2"]["bytes_read"] > 0        # the step's tables
        prog.close()
        vec = Vector(dev, frac_bits=12)
        x, gamma, beta = rng.normal(0, 1, (3, 64)), rng.uniform(0.5, 1.5, 64), rng.normal(0, 0.1, 64)
        assert np.array_equal(vec.layernorm(x, gamma, beta), vec.golden("layernorm", x, gamma, beta))
        # a table in the data port's memory is refused before anything runs
        from hbmforge.encodings import VectorIn, VectorNorm, VectorOut
        from hbmforge.host.program import ProgramBuilder
        rows = dev.layout.mm.rows
        with pytest.raises(ValueError, match="gamma_addr must be a buffer on port 'w2', got one on port 'data'"):
            ProgramBuilder(dev.layout).vector(m=1, dim=64, a_fmt=VectorIn.RES32, a_addr=dev.alloc(1024),
                                             a_stride=rows * 256, norm=VectorNorm.RMS, eps_q=1, gamma_addr=dev.alloc(256),
                                             out_fmt=VectorOut.RES32, y_addr=dev.alloc(1024), y_stride=rows * 256)


def test_golden_scratch_lies_beyond_every_memory_of_every_board():
    """A golden replay's scratch buffers must not land on device buffers it copied into its snapshot
    (at 64 GiB they sat on the DDR's first uploads: a DDR-data prefill disagreed with its golden)."""
    from hbmforge.boards import load_board
    from hbmforge.memory_map import memory_regions

    scratch = golden_scratch(["h", "x", "y"])
    low = min(scratch.values())
    for board in ("u280", "u55c", "kv260", "zcu102"):
        b = load_board(board)
        tops = [r.base + r.size for r in memory_regions(b)]
        tops.append(b.memory.channels * (b.memory.channel_size_mib << 20))
        assert low >= max(tops), (board, hex(low), [hex(t) for t in tops])
