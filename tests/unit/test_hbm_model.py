"""All channels and the calibrated memory model's inputs: 32 stream ports in the config, the
boards' port maps, the wide register map, and the board files' DRAM figures in kernel cycles."""
from __future__ import annotations

import pytest

from hbmforge.boards import DramTiming, load_board
from hbmforge.config import ConfigError, parse_config, starter_config
from hbmforge.layout import CLASSIC_MAX_PORTS, CTRL_ADDR_WIDTH, DesignLayout
from hbmforge.sim.timing import DRAM_PARAM_NAMES, check_memory_model, dram_params

from designs import tiny_config_dict


def many_port_config(ports: int, board: str = "u280") -> dict:
    data = tiny_config_dict(weight_ports=ports, lanes=8 * ports, group_size=8 * ports if ports >= 2 else 16,
                            max_k=max(256, 8 * ports))
    data["board"] = board
    return data


def test_weight_ports_go_up_to_32_and_no_further():
    cfg = parse_config(many_port_config(32))
    assert cfg.stream_ports == 32 and len(cfg.port_names()) == 33
    data = many_port_config(32)
    data["engines"][0]["weight_ports"] = 64
    with pytest.raises(ConfigError, match=r"weight_ports must be a power of two in \[1, 32\].*got 64"):
        parse_config(data)


def test_32_stream_ports_get_a_pseudo_channel_each_and_the_data_port_shares_channel_0():
    channels = parse_config(many_port_config(32)).port_channels()
    assert channels["data"] == 0
    assert sorted(channels[f"w{i}"] for i in range(32)) == list(range(32))


def test_fewer_ports_keep_the_classic_map():
    board = load_board("u280")
    assert board.port_map(4) == {"data": 0, "w0": 1, "w1": 2, "w2": 3, "w3": 4}
    assert load_board("kv260").port_map(2) == {"data": 0, "w0": 1, "w1": 2}


@pytest.mark.parametrize("bad, err", [(33, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_port_map_rejects_what_the_board_cannot_hold(bad, err):
    with pytest.raises(err, match="stream_ports"):
        load_board("u280").port_map(bad)


def test_a_32_port_design_moves_its_pointers_and_counters_to_the_wide_map_without_overlaps():
    lay = DesignLayout(parse_config(many_port_config(32)))
    assert len(lay.ports) > CLASSIC_MAX_PORTS
    spans = sorted((r.offset, r.offset + r.width // 8, r.name) for r in lay.registers)
    for (a0, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
        assert a1 <= b0, f"{an} overlaps {bn}"
    assert spans[-1][1] <= 1 << CTRL_ADDR_WIDTH
    regs = {r.name: r.offset for r in lay.registers}
    assert regs["w0"] == 0x800 and regs["w31"] == 0x8F8
    assert regs["DATA_BYTES_READ"] == 0x900 and regs["W31_BYTES_WRITTEN"] == 0x900 + 32 * 16 + 8
    assert regs["ID"] == 0x100 and regs["program"] == 0x10          # the fixed part does not move


def test_a_small_design_keeps_the_classic_register_map():
    regs = {r.name: r.offset for r in DesignLayout(parse_config(many_port_config(2))).registers}
    assert regs["w0"] == 0x20 and regs["w1"] == 0x28 and regs["DATA_BYTES_READ"] == 0x140


def test_512_bit_ports_are_allowed_beside_256():
    data = starter_config("u280")
    data["axi"]["data_width"] = 512
    data["engines"][0].update(lanes=128, weight_ports=1)
    assert parse_config(data).data_width == 512


def test_every_board_states_its_dram_and_the_latency_differences_give_trcd_and_trp():
    for name in ("u280", "u55c", "kv260", "zcu102"):
        d = load_board(name).memory.dram
        assert d is not None
        assert d.t_rcd_ns == pytest.approx(d.closed_latency_ns - d.hit_latency_ns)
        assert 10 < d.t_rcd_ns < 20 and 10 < d.t_rp_ns < 20     # JEDEC-class figures
    u280 = load_board("u280").memory.dram
    assert u280.devices == 32 and u280.peak_gbps == pytest.approx(460.8)
    assert u280.switch.group_channels * 8 == 32
    assert load_board("kv260").memory.dram.switch is None


def test_dram_params_are_the_board_figures_in_kernel_cycles():
    p = dram_params("u280", 300.0)
    assert list(p) == list(DRAM_PARAM_NAMES)
    assert p["burst_cycles"] == pytest.approx(32 / (14.4e9 / 300e6))       # 2/3 of a 300 MHz cycle
    assert p["hit_latency"] == pytest.approx(106.7 * 0.3)
    assert p["t_rcd"] == pytest.approx(15.5 * 0.3)
    assert p["t_refi"] == pytest.approx(3900 * 0.3) and p["t_rfc"] == pytest.approx(260 * 0.3)
    assert p["device_bytes"] == 256 << 20 and p["devices"] == 32
    assert dram_params("kv260", 250.0)["group_channels"] == 0.0            # no switch on a DDR board


def test_memory_model_and_clock_arguments_are_checked():
    assert check_memory_model("ideal") == "ideal"
    with pytest.raises(ValueError, match="memory model must be one of ideal, calibrated"):
        check_memory_model("fast")
    with pytest.raises(ValueError, match="clock_mhz"):
        dram_params("u280", 0)


def test_dram_timing_rejects_inconsistent_figures():
    good = load_board("u280").memory.dram.model_dump()
    with pytest.raises(ValueError, match="hit <= closed <= miss"):
        DramTiming.model_validate({**good, "closed_latency_ns": 100.0})
    with pytest.raises(ValueError, match="t_rfc_ns must be below t_refi_ns"):
        DramTiming.model_validate({**good, "t_rfc_ns": 5000.0})
