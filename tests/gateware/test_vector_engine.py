# amaranth: UnusedElaboratable=no
"""The vector engine alone (amaranth.sim on the DMA bench): every kind of descriptor, bit for bit
against hbmforge.numerics.vector.run_vector, under random stalls and back-pressure, on port widths
where a blocked word holds several rows' columns (R <= lanes) and where a column spans words."""
from __future__ import annotations

import numpy as np
import pytest

from designs import tiny_vector_config_dict
from hbmforge.config import parse_config
from hbmforge.generators.vector.engine import VectorEngine
from hbmforge.encodings import VectorOut
from hbmforge.generators.vector.testing import CASE_KINDS, VectorBench, random_case
from hbmforge.layout import DesignLayout


def _layout(width: int = 64, rows: int = 2, lanes: int = 16, **vector) -> DesignLayout:
    cfg = tiny_vector_config_dict(**vector)
    cfg["axi"]["data_width"] = width
    cfg["engines"][0].update(rows=rows, lanes=lanes)
    return DesignLayout(parse_config(cfg))


def _run(layout, kinds, *, seed, stall=0.3, backpressure=0.3, response_delay=(1, 6), port_stall=None, **case):
    bench = VectorBench(layout, seed=seed, stall=stall, backpressure=backpressure, response_delay=response_delay)
    bench.port_stall.update(port_stall or {})
    rng = np.random.default_rng(seed)
    for kind in kinds:
        random_case(bench, rng, kind, **case)
    before = bytes(bench.mem)
    expected = bench.run(max_cycles=60_000)
    return bench, before, expected


def _diff(a, b) -> str:
    bad = [i for i in range(len(a)) if a[i] != b[i]]
    return f"{len(bad)} bytes differ, first at {bad[0]:#x}" if bad else ""


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_every_descriptor_kind_matches_the_golden_model_under_stalls(seed):
    bench, before, expected = _run(_layout(), CASE_KINDS, seed=seed)
    assert bench.mem == expected, _diff(bench.mem, expected)
    assert expected != before                      # the jobs wrote something


@pytest.mark.parametrize("width, rows, lanes, kinds", [
    (64, 4, 16, ("add_res32", "norm_act8", "swiglu_act8", "rope_qrec", "kv8_rope", "kv4")),     # R > L
    (128, 8, 32, ("add_res32", "norm_act8", "swiglu_act8", "rope_qrec", "kv8_rope", "kv4")),    # R > L
    (256, 4, 64, ("add_res32", "rope_qrec", "kv8_rope")),                                       # R < L
    pytest.param(256, 4, 64, CASE_KINDS, marks=pytest.mark.slow),
])
def test_blocked_layouts_of_other_row_and_port_widths(width, rows, lanes, kinds):
    layout = _layout(width, rows, lanes)
    bench, _, expected = _run(layout, kinds, seed=width + rows)
    assert bench.mem == expected, _diff(bench.mem, expected)


def test_partial_last_block_and_single_row_decode_shapes():
    layout = _layout()
    R = layout.mm.rows
    for m in (1, R + 1):
        bench, _, expected = _run(layout, ("norm_act8", "kv8_rope", "rope_qrec", "add_res32"), seed=m, m=m)
        assert bench.mem == expected, (m, _diff(bench.mem, expected))


def _pool_ports(bench, before) -> list[tuple[int, int]]:
    """(pool start, its port index) of every KV job's pools, from the pool tables in ``before``."""
    owners = []
    for d in bench.jobs:
        if d["out_fmt"] == VectorOut.KV:
            n = max(d["kv_groups"], 1)
            starts = [d["pool"]] if n == 1 else [int.from_bytes(before[d["pool"] + 8 * i:d["pool"] + 8 * i + 8],
                                                                "little") for i in range(n)]
            owners += [(start, d["port"] + 2 * i) for i, start in enumerate(starts)]
    return sorted(owners)


@pytest.mark.parametrize("m", [1, 3])
def test_kv_append_over_port_groups_writes_each_group_on_its_port(m):
    """One KV append for every port group of the head-parallel layout (kv_groups 2 or 4 of a design
    with 8 KV ports): bit for bit, and every read and write of a pool on that pool's port. Write
    answers take up to 40 cycles, so those of several ports often arrive in the same cycle."""
    cfg = tiny_vector_config_dict()
    cfg["engines"][1].update(rows=4, kv_ports=8, head_parallel=True)
    layout = DesignLayout(parse_config(cfg))
    bench, before, expected = _run(layout, ("kv_groups", "kv4", "kv_groups", "kv_groups"), seed=20 + m, m=m,
                                   response_delay=(1, 40))
    assert bench.mem == expected, _diff(bench.mem, expected)
    assert any(d["kv_groups"] >= 2 for d in bench.jobs)
    owners = _pool_ports(bench, before)
    used = set()
    for name, cmds in bench.commands.items():
        if name.startswith(("w", "sw")):
            port = int(name.lstrip("sw")) + 1
            for addr, _ in cmds:
                start, owner = max(o for o in owners if o[0] <= addr)
                assert owner == port, (name, hex(addr), hex(start), owner)
                used.add(port)
    assert len(used) >= 3, used


def test_residual_add_streams_close_to_one_word_per_cycle_per_pass():
    layout = _layout()
    bench, _, expected = _run(layout, ("add_res32",), seed=3, stall=0.0, backpressure=0.0, m=8, dim=64)
    assert bench.mem == expected
    words = 8 * 64 * 4 // layout.word_bytes        # A, B and Y each
    # load A + B, one sweep and the store, each a word per cycle, plus per-block pipeline fills
    assert bench.cycles[0] <= 4 * words, bench.cycles        # measured 961: the loads overlap the passes


def test_constructor_refuses_what_it_cannot_build():
    with pytest.raises(TypeError, match="DesignLayout"):
        VectorEngine("tiny")
    cfg = tiny_vector_config_dict()
    cfg["engines"] = cfg["engines"][:2]
    with pytest.raises(ValueError, match="no vector engine"):
        VectorEngine(DesignLayout(parse_config(cfg)))
    with pytest.raises(ValueError, match="kv_group_size"):
        VectorEngine(_layout(512, 4, 128))


def _table_port_layout(table_port: bool) -> DesignLayout:
    cfg = tiny_vector_config_dict(table_port=table_port)
    cfg["engines"][0].update(weight_ports=4)          # w2 after the two KV ports: the table port
    return DesignLayout(parse_config(cfg))


@pytest.mark.parametrize("seed, table_stall", [(5, 0.3), (6, 0.3), (7, 0.9)])
def test_tables_come_through_the_table_port_beside_the_operands(seed, table_stall):
    """``table_port``: every per-column table (column multipliers, bias, gamma, beta) is read through
    w2 while the operands come through the data port, bit-exact under stalls (and with w2 much slower
    than the data port: the first sweep follows the element tables word by word, a norm's second
    sweep waits for its gamma and beta); the data port reads exactly what it read before minus the
    tables."""
    from collections import Counter

    plain, _, _ = _run(_table_port_layout(False), CASE_KINDS, seed=seed)
    bench, before, expected = _run(_table_port_layout(True), CASE_KINDS, seed=seed, port_stall={"w2": table_stall})
    assert bench.mem == expected, _diff(bench.mem, expected)
    assert expected != before
    tables = Counter(bench.commands["w2"])
    assert tables and Counter(plain.commands["src"]) - Counter(bench.commands["src"]) == tables
    assert not Counter(bench.commands["src"]) - Counter(plain.commands["src"])
    assert "w2" not in plain.commands or not plain.commands["w2"]


@pytest.mark.parametrize("seed, width", [(8, 64), (9, 128)])
def test_one_and_four_store_words_write_the_same_bytes(seed, width):
    """``store_words`` 4 (tile A interleaved over four memories, a four-word quantizer) and 1 write
    the same ACT8 rows, Q records and KV values, bit-exact under stalls (at 128 bits a four-word KV
    op spans two scale groups of 8: two multipliers, two mantissas; KV4's ops are half words); the
    four-word store of an ACT8 row (no stalls) takes fewer cycles, so its wide micro-ops are taken."""
    kinds = ("norm_act8", "swiglu_act8", "rope_qrec", "kv4", "kv8_rope")
    for words in (1, 4):
        bench, before, expected = _run(_layout(width, store_words=words), kinds, seed=seed)
        assert bench.mem == expected, (words, _diff(bench.mem, expected))
        assert expected != before
    cycles = {}
    for words in (1, 4):
        bench, _, expected = _run(_layout(rows=1, store_words=words), ("norm_act8",), seed=seed, stall=0.0,
                                  backpressure=0.0, m=1, dim=256)
        assert bench.mem == expected
        cycles[words] = bench.cycles[0]
    assert cycles[4] < cycles[1], cycles
