"""Config validation: good configs load, bad ones name the field and the allowed values."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hbmforge.design import load_design
from hbmforge.config import (ConfigError, config_hash, json_schema, load_config, parse_config,
                             starter_config)
from hbmforge.boards import board_names

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("board", board_names())
def test_starter_config_is_valid_on_every_board(board):
    cfg = parse_config(starter_config(board))
    assert cfg.board == board
    assert cfg.matmul.lanes * 4 == cfg.data_width * cfg.matmul.weight_ports


def test_unknown_field_is_named():
    data = starter_config("u280")
    data["engines"][0]["lane"] = 3
    with pytest.raises(ConfigError, match=r"engines\.0\.lane: unknown field"):
        parse_config(data)


def test_bad_lanes_lists_allowed_values():
    data = starter_config("u280")
    data["engines"][0]["lanes"] = 48
    with pytest.raises(ConfigError, match=r"engines\.0\.lanes: .*power of two.*got 48"):
        parse_config(data)


@pytest.mark.parametrize("path", sorted(p.name for p in EXAMPLES.glob("*.yaml") if not p.name.startswith("sweep_")),
                         ids=str)
def test_every_example_config_is_valid(path):
    cfg = load_config(EXAMPLES / path)
    assert cfg.name and cfg.board


def test_lanes_go_up_to_4096_for_whole_board_gemv():
    data = yaml.safe_load((EXAMPLES / "u280_llm.yaml").read_text())
    data["engines"][0]["lanes"] = 4096
    assert parse_config(data).engine("matmul").lanes == 4096
    data["engines"][0]["lanes"] = 8192
    with pytest.raises(ConfigError, match=r"engines\.0\.lanes: .*4096.*got 8192"):
        parse_config(data)


def test_bad_weight_bits_names_allowed_values():
    data = starter_config("u280")
    data["engines"][0]["weight_bits"] = [3]
    with pytest.raises(ConfigError, match=r"engines\.0\.weight_bits\.0: Input should be 2, 4, 8 or 'ternary', got 3"):
        parse_config(data)


def test_unknown_board_lists_known_boards():
    data = starter_config("u280")
    data["board"] = "vu9p"
    with pytest.raises(ConfigError, match=r"board: .*u280.*got 'vu9p'"):
        parse_config(data)


def test_wrong_version_is_rejected():
    data = starter_config("u280")
    data["version"] = 2
    with pytest.raises(ConfigError, match=r"version: Input should be 1"):
        parse_config(data)


def test_config_too_large_names_budget_and_excess():
    data = starter_config("kv260")
    data["engines"][0].update(rows=32, lanes=256, weight_ports=2, max_k=16384)
    parse_config(data)                      # the schema is fine; the design does not fit
    with pytest.raises(ConfigError) as err:
        load_design(data)
    text = str(err.value)
    assert "does not fit board kv260" in text
    assert "DSP budget exceeded: needs" in text and "over by" in text


def test_port_budget_is_checked():
    data = starter_config("kv260")
    data["engines"][0].update(weight_ports=8, lanes=256)
    with pytest.raises(ConfigError, match=r"port budget exceeded on kv260: .*stream from 8.*has 4 channels "
                                          r"\(over by 4\)"):
        parse_config(data)


def test_as_many_stream_ports_as_channels_share_channel_0_with_the_data_port():
    data = starter_config("kv260")
    data["engines"][0].update(weight_ports=4, lanes=128)
    cfg = parse_config(data)
    assert cfg.port_channels() == {"data": 0, "w0": 0, "w1": 1, "w2": 2, "w3": 3}


def test_hbm_stream_channels_must_be_distinct_but_the_data_port_may_share():
    data = starter_config("u280")
    data["engines"][0].update(weight_ports=2)
    data["ports"] = {"data": 3, "w0": 3, "w1": 3}
    with pytest.raises(ConfigError, match=r"ports.w1: HBM channel 3 is already bound to port 'w0'"):
        parse_config(data)
    data["ports"] = {"data": 3, "w0": 3, "w1": 4}
    assert parse_config(data).port_channels()["data"] == 3


def test_channel_out_of_range():
    data = starter_config("u280")
    data["ports"] = {"data": 0, "w0": 32}
    with pytest.raises(ConfigError, match=r"ports.w0: channel must be in \[0, 31\]"):
        parse_config(data)


def test_lanes_and_port_width_must_divide():
    data = starter_config("u280")
    data["engines"][0].update(lanes=8, weight_ports=1, weight_bits=[4])
    data["axi"] = {"data_width": 512}
    cfg = parse_config(data)          # 32 bits per fire, 512-bit port: divides
    assert cfg.data_width == 512


def test_max_k_must_be_aligned():
    data = starter_config("u280")
    data["engines"][0]["max_k"] = 1000
    with pytest.raises(ConfigError, match=r"max_k must be a multiple of"):
        parse_config(data)


def test_load_config_reports_yaml_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("version: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_load_config_reports_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config([1, 2])


def test_hash_changes_with_any_parameter():
    a = parse_config(starter_config("u280"))
    data = starter_config("u280")
    data["engines"][0]["rows"] = 8
    b = parse_config(data)
    assert config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(parse_config(starter_config("u280")))


def test_json_schema_describes_engines():
    schema = json_schema()
    text = json.dumps(schema)
    assert schema["title"] == "hbmforge accelerator config"
    assert "lanes" in text and "weight_ports" in text and schema["additionalProperties"] is False


def test_id_width_must_leave_room_for_the_data_port_readers():
    data = starter_config("u280")
    data["axi"]["id_width"] = 1
    with pytest.raises(ConfigError, match=r"axi.id_width: Input should be greater than or equal to 2"):
        parse_config(data)


def _with_attention(**attention):
    data = starter_config("u280")
    data["engines"].append({"kind": "attention", **attention})
    return data


@pytest.mark.parametrize("attention, message", [
    ({"head_dim": 96}, r"engines\.1\.head_dim: head_dim must be a power of two in \[16, 256\]"),
    ({"kv_bits": [2]}, r"engines\.1\.kv_bits\.0: Input should be 4 or 8, got 2"),
    ({"head_dim": 32, "kv_group_size": 64}, r"kv_group_size 64 must divide head_dim 32"),
    ({"page_tokens": 16, "max_context": 100}, r"max_context must be a multiple of page_tokens = 16"),
    ({"kv_ports": 3}, r"engines\.1\.kv_ports: Input should be 1 or 2, got 3"),
])
def test_bad_attention_parameters_name_field_and_allowed_values(attention, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_with_attention(**attention))


def test_engines_need_one_matmul_and_at_most_one_attention():
    data = _with_attention()
    data["engines"].append({"kind": "attention", "name": "attn1"})
    with pytest.raises(ConfigError, match="engines"):
        parse_config(data)
    data = starter_config("u280")
    data["engines"] = [{"kind": "attention"}]
    with pytest.raises(ConfigError, match="exactly one matmul engine"):
        parse_config(data)


def test_attention_kv_ports_add_stream_ports_and_tlmm_needs_ternary():
    cfg = parse_config(_with_attention(kv_ports=2))
    assert cfg.port_names() == ["data", "w0", "w1"] and cfg.attention.kv_ports == 2
    data = starter_config("u280")
    data["engines"][0].update(arch="tlmm")
    with pytest.raises(ConfigError, match=r"arch 'tlmm' computes ternary weights only"):
        parse_config(data)


@pytest.mark.parametrize("where, value, message", [
    (("clock_mhz",), True, "clock_mhz: Input should be a valid number"),
    (("engines", 0, "rows"), True, r"engines\.0\.rows: Input should be a valid integer"),
    (("engines", 0, "rows"), 4.0, r"engines\.0\.rows: Input should be a valid integer"),
    (("engines", 0, "max_k"), "4096", r"engines\.0\.max_k: Input should be a valid integer"),
    (("axi", "id_width"), False, r"axi\.id_width: Input should be a valid integer"),
    (("max_utilization",), True, "max_utilization: Input should be a valid number"),
    (("version",), True, "version must be the integer 1"),
    (("engines", 0, "weight_bits"), [True], r"engines\.0\.weight_bits\.0: Input should be 2, 4, 8 or 'ternary'"),
])
def test_numeric_fields_are_strict_no_bool_or_string_coercion(where, value, message):
    """`clock_mhz: true` used to be 1 MHz and `rows: true` one row."""
    data = starter_config("u280")
    node = data
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_copy_engine_config_and_one_engine_per_kind():
    data = starter_config("u280")
    data["engines"].append({"kind": "copy", "buffer_words": 16})
    cfg = parse_config(data)
    assert cfg.engine("copy").buffer_words == 16 and cfg.stream_ports == 1
    data["engines"].append({"kind": "copy", "name": "copy1"})
    with pytest.raises(ConfigError, match="at most one engine of each kind; more than one copy"):
        parse_config(data)
    data["engines"][1:] = [{"kind": "copy", "buffer_words": 3}]
    with pytest.raises(ConfigError, match=r"engines\.1\.buffer_words: buffer_words must be a power of two"):
        parse_config(data)
