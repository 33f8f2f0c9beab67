"""The analytic budget counts the head-parallel attention hardware (per-row K/V feeds, selects,
PV mantissa products, address pairs) and nothing for a shared-layout engine."""
from __future__ import annotations

from hbmforge.budget import attention_head_parallel_terms, estimate_resources
from hbmforge.config import parse_config
from hbmforge.layout import DesignLayout

from designs import tiny_attention_config_dict


def _lay(**att):
    return DesignLayout(parse_config(tiny_attention_config_dict(**att)))


def test_shared_layout_engines_add_nothing():
    assert attention_head_parallel_terms(_lay()) == {"lut": 0, "ff": 0, "dsp": 0, "bram36": 0, "feeds": 0}


def test_head_parallel_adds_feeds_and_multipliers_growing_with_rows():
    two = attention_head_parallel_terms(_lay(rows=2, kv_ports=4, head_parallel=True))
    four = attention_head_parallel_terms(_lay(rows=4, kv_ports=8, head_parallel=True))
    assert two["feeds"] == 2 and four["feeds"] == 6
    assert 0 < two["dsp"] < four["dsp"] and 0 < two["lut"] < four["lut"] and 0 < two["ff"] < four["ff"]
    # a feed's scale buffer is a few words: LUT RAM, no block RAM
    assert two["bram36"] == four["bram36"] == 0
    base = estimate_resources(_lay(rows=4, kv_ports=2))
    hp = estimate_resources(_lay(rows=4, kv_ports=8, head_parallel=True))
    # the extra terms plus six more ports' AXI logic and reader/writer FIFOs
    assert hp.dsp - base.dsp == four["dsp"] and hp.lut - base.lut == four["lut"] + 6 * 1500
    assert hp.ports == base.ports + 6


def test_eight_rows_count_fourteen_feeds_and_seven_multiplier_sets():
    four = attention_head_parallel_terms(_lay(rows=4, kv_ports=8, head_parallel=True))
    eight = attention_head_parallel_terms(_lay(rows=8, kv_ports=16, head_parallel=True))
    assert eight["feeds"] == 14
    lanes = four["dsp"] // 3                        # (R - 1) x lanes mantissa x value products
    assert eight["dsp"] == 7 * lanes and eight["ff"] == 7 * (four["ff"] // 3)      # per extra row
    base = estimate_resources(_lay(rows=8, kv_ports=2))
    hp = estimate_resources(_lay(rows=8, kv_ports=16, head_parallel=True))
    assert hp.dsp - base.dsp == eight["dsp"] and hp.lut - base.lut == eight["lut"] + 14 * 1500
    assert hp.ports == base.ports + 14
