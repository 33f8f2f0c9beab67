"""The analytic budget counts the attention engine's base units, the vector engine (with a KV
reader/writer pair per KV port) and the command processor, per part; a design without attention or
vector has nothing for them; every example fits; an over-budget config is refused naming the budget
and the fields."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hbmforge.budget import (PARTS, attention_terms, check_budget, control_terms, estimate_resources,
                             vector_terms)
from hbmforge.config import ConfigError, load_config, parse_config
from hbmforge.engines.attention import attention_geometry
from hbmforge.engines.vector import vector_geometry
from hbmforge.layout import DesignLayout

from designs import tiny_attention_config_dict, tiny_config_dict, tiny_vector_config_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ZERO = {"lut": 0, "ff": 0, "dsp": 0, "bram36": 0}


def _lay(data):
    return DesignLayout(parse_config(data))


def _att(**att):
    return _lay(tiny_attention_config_dict(**att))


def _vec(data_width=64, **att):
    d = tiny_vector_config_dict()
    d["axi"]["data_width"] = data_width
    next(e for e in d["engines"] if e["kind"] == "attention").update(att)
    return _lay(d)


def test_a_design_without_attention_or_vector_counts_nothing_for_them():
    est = estimate_resources(_lay(tiny_config_dict()))
    parts = est.parts_dict()
    assert list(parts) == list(PARTS)
    assert parts["attention"] == parts["attention_head_parallel"] == parts["vector"] == ZERO
    assert parts["control"]["lut"] > 0 and parts["matmul"]["dsp"] > 0
    assert attention_terms(_lay(tiny_config_dict())) == vector_terms(_lay(tiny_config_dict())) == ZERO


def test_attention_terms_grow_with_rows_by_whole_rows_of_units():
    two, four, eight = (attention_terms(_att(rows=r)) for r in (2, 4, 8))
    for k in ("lut", "ff", "dsp"):
        assert two[k] < four[k] < eight[k], k
    # the DSPs are per row (QK, PV, rescale, score) plus a fixed set: linear in rows
    per_row = (four["dsp"] - two["dsp"]) // 2
    assert eight["dsp"] - four["dsp"] == 4 * per_row
    # each row has at least one q x k and one p x v product per lane
    assert per_row >= 2 * attention_geometry(_att(rows=4)).lanes


def test_attention_terms_are_in_the_totals_and_the_parts():
    lay = _att(rows=4)
    est = estimate_resources(lay)
    assert est.parts["attention"] == attention_terms(lay)
    for k, total in (("lut", est.lut), ("ff", est.ff), ("dsp", est.dsp), ("bram36", est.bram36)):
        assert total == sum(p[k] for p in est.parts.values()), k


def test_vector_terms_grow_with_lanes():
    narrow, wide = _vec(64), _vec(128)
    assert vector_geometry(wide).lanes == 2 * vector_geometry(narrow).lanes
    a, b = vector_terms(narrow), vector_terms(wide)
    assert a["dsp"] < b["dsp"] and a["lut"] < b["lut"] and a["ff"] < b["ff"]


def test_vector_terms_count_a_reader_writer_pair_per_kv_port():
    shared = _vec(kv_ports=2)                                       # 2 KV ports
    hp2, hp4 = _vec(rows=2, kv_ports=4, head_parallel=True), _vec(rows=4, kv_ports=8, head_parallel=True)
    a, b, c = (vector_terms(x) for x in (shared, hp2, hp4))
    assert a["lut"] < b["lut"] < c["lut"] and a["ff"] < b["ff"] < c["ff"]
    # the same cost for each added port: the vector engine does not depend on the attention rows
    assert (c["lut"] - b["lut"]) == 2 * (b["lut"] - a["lut"]) and (c["ff"] - b["ff"]) == 2 * (b["ff"] - a["ff"])
    assert a["dsp"] == b["dsp"] == c["dsp"] and a["bram36"] == b["bram36"] == c["bram36"]


def test_control_grows_with_the_descriptor_and_the_engines():
    base, more = control_terms(_lay(tiny_config_dict())), control_terms(_vec())
    assert 0 < base["lut"] < more["lut"] and 0 < base["ff"] < more["ff"] and more["dsp"] == 0


@pytest.mark.parametrize("path", sorted(p.name for p in EXAMPLES.glob("*.yaml") if not p.name.startswith("sweep_")),
                         ids=str)
def test_every_example_fits_its_board(path):
    # u280_llm512 fits since its int4 products (W4 lanes, KV4 keys and values) are LUTs
    # (docs/decode-projection.md "Budget"); kv260_ternary since its attention has 2 query rows
    lay = DesignLayout(load_config(EXAMPLES / path))
    est = estimate_resources(lay)
    assert est.lut == sum(p["lut"] for p in est.parts.values())
    check_budget(lay)


def test_int4_products_lut_trades_the_lane_dsps_for_luts():
    # attention (kv_bits [4]): no DSP per q x k or mantissa x value product, LUTs instead
    kw = dict(rows=4, head_parallel=True, kv_ports=8, kv_bits=[4])
    dsp, lut = _att(**kw), _att(**kw, int4_products="lut")
    a, b = estimate_resources(dsp), estimate_resources(lut)
    lanes = attention_geometry(dsp).lanes
    assert a.dsp - b.dsp == 4 * lanes + lanes + 3 * lanes     # q x k per row, the shared and per-row mant x v
    assert b.parts["attention"]["lut"] > a.parts["attention"]["lut"]
    assert b.parts["attention_head_parallel"]["lut"] > a.parts["attention_head_parallel"]["lut"]
    # qk_lut: only the q x k products leave the DSPs; the mantissa x value products stay
    c = estimate_resources(_att(**kw, int4_products="qk_lut"))
    assert a.dsp - c.dsp == 4 * lanes
    assert a.parts["attention"]["lut"] < c.parts["attention"]["lut"] < b.parts["attention"]["lut"]
    assert c.parts["attention_head_parallel"]["lut"] == a.parts["attention_head_parallel"]["lut"]
    # matmul (weight_bits [2, 4]): one DSP per lane, or none
    mm = []
    for how in ("dsp", "lut"):
        d = tiny_config_dict()
        d["engines"][0].update(weight_bits=[2, 4], int4_products=how)
        mm.append(estimate_resources(_lay(d)).parts["matmul"])
    macs = d["engines"][0]["rows"] * d["engines"][0]["lanes"]
    assert mm[0]["dsp"] - mm[1]["dsp"] == macs and mm[1]["lut"] > mm[0]["lut"]


def test_a_refusal_names_the_int4_products_switch_that_trades_the_exceeded_budget():
    # u280_llm512 with every int4 product a DSP: over the DSP budget; the hint names both switches
    d = yaml.safe_load((EXAMPLES / "u280_llm512.yaml").read_text())
    for e in d["engines"][:2]:
        e["int4_products"] = "dsp"
    with pytest.raises(ConfigError, match=r"DSP budget exceeded(.|\n)*or set engines\.0\.int4_products: lut, "
                                          r"engines\.1\.int4_products: lut\)"):
        check_budget(_lay(d))
    # kv260_ternary with its KV4 products in LUTs: over the LUT budget; the hint is the way back
    d = yaml.safe_load((EXAMPLES / "kv260_ternary.yaml").read_text())
    i = next(i for i, e in enumerate(d["engines"]) if e["kind"] == "attention")
    d["engines"][i]["int4_products"] = "lut"
    with pytest.raises(ConfigError, match=rf"LUT budget exceeded(.|\n)*or set engines\.{i}\.int4_products: dsp\)"):
        check_budget(_lay(d))


@pytest.mark.parametrize("engine,field,value", [(0, "weight_bits", [4, 8]), (1, "kv_bits", [4, 8])])
def test_int4_products_lut_is_refused_with_an_eight_bit_format(engine, field, value):
    d = tiny_attention_config_dict()
    d["engines"][engine].update({field: value, "int4_products": "lut"})
    with pytest.raises(ConfigError, match=rf"engines\.{engine}(.|\n)*int4_products 'lut'(.|\n)*{field} must"):
        parse_config(d)


def test_a_config_over_only_because_of_attention_is_refused_naming_the_attention_fields():
    data = yaml.safe_load((EXAMPLES / "u280_attention.yaml").read_text())
    i = next(i for i, e in enumerate(data["engines"]) if e["kind"] == "attention")
    check_budget(_lay(data))                                        # fits as it is
    rows = data["engines"][i]["rows"]
    msg = None
    while msg is None:                                              # more rows until a budget is exceeded
        rows *= 2
        assert rows < 1024, "never exceeded"
        data["engines"][i]["rows"] = rows
        lay = _lay(data)
        try:
            check_budget(lay)
        except ConfigError as err:
            msg = str(err)
    est = estimate_resources(lay)
    board = lay.config.board_info.resources
    frac = lay.config.max_utilization
    # without the attention engine's terms every budget would hold
    for k, have in (("lut", board.lut), ("ff", board.ff), ("dsp", board.dsp)):
        assert getattr(est, k) - est.parts["attention"][k] <= int(have * frac), k
    assert "budget exceeded" in msg and f"engines.{i}.rows, head_dim" in msg
    assert "engines.0.rows, lanes" not in msg                       # the matmul is not to blame
