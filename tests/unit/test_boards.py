"""Board files: every board loads, figures are self-consistent, sources are cited."""
from __future__ import annotations

from importlib import resources

import pytest

from hbmforge.boards import UnknownBoardError, board_names, load_board


def test_the_four_boards_exist():
    assert board_names() == ["kv260", "u280", "u55c", "zcu102"]


@pytest.mark.parametrize("name", ["u280", "u55c"])
def test_hbm_boards_have_32_pseudo_channels(name):
    b = load_board(name)
    assert b.memory.kind == "hbm" and b.memory.channels == 32
    assert b.host_stack == "xrt"
    assert abs(b.memory.channels * b.memory.channel_peak_gbps - 460) < 1


@pytest.mark.parametrize("name", ["kv260", "zcu102"])
def test_edge_boards_use_ddr_and_pynq(name):
    b = load_board(name)
    assert b.memory.kind == "ddr" and b.host_stack == "pynq"


@pytest.mark.parametrize("name", ["kv260", "u280", "u55c", "zcu102"])
def test_every_board_file_cites_sources(name):
    text = resources.files("hbmforge.board_files").joinpath(f"{name}.yaml").read_text()
    assert "Sources:" in text or "Source:" in text


def test_unknown_board_error_lists_names():
    with pytest.raises(UnknownBoardError, match="known boards: kv260, u280, u55c, zcu102"):
        load_board("nope")


def test_latency_in_cycles_rounds_up():
    b = load_board("u280")
    assert b.latency_cycles(300) == 33          # 107 ns at 300 MHz
    assert b.channel_bytes_per_cycle(300) == pytest.approx(47.9, rel=1e-2)
