"""Functional coverage model (flows/coverage_points.py): bins derived from the design, sampling,
merging exports, the missing bins. Runs without a simulator (cocotb-coverage is plain Python)."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.encodings import Opcode
from hbmforge.layout import DesignLayout

from designs import tiny_config_dict


@pytest.fixture(scope="module")
def model():
    from hbmforge.flows import coverage_points as cp

    lay = DesignLayout(parse_config(tiny_config_dict()))
    return lay, cp.coverage_model(lay), cp


def test_bins_come_from_the_design(model, tmp_path):
    lay, m, cp = model
    cp.export(tmp_path / "f.yml")
    fc = cp.read_fcov(tmp_path / "f.yml")
    assert set(fc.points["mm.wbits"]) == {"4", "8"}                      # tiny's formats only
    assert set(fc.points["op"]) == {str(int(Opcode.END)), str(int(Opcode.MATMUL))}
    codes = {int(c) for c in fc.points["status.error"]}
    assert codes >= {0, 1, 2, 3, 4, 5, 6, 7} and 12 not in codes          # no attention codes in tiny
    assert "mm.wbits_x_out_mode" in fc.points and len(fc.points["mm.wbits_x_out_mode"]) == 4


def test_sampling_hits_bins_and_merging_ors_runs(model, tmp_path):
    lay, m, cp = model
    k = lay.matmul.k_align
    m.samplers[int(Opcode.MATMUL)]({"op": 1, "m": 1, "k": k, "n": 1, "wbits": 4, "out_mode": 1, "bias": 1})
    m.status(3)
    m.burst("ar", lay.config.axi.max_burst_beats, "cut_at_4k")
    m.stall("w", 5)
    cp.export(tmp_path / "a.yml")
    fc = cp.read_fcov(tmp_path / "a.yml")
    assert fc.points["mm.out_mode"]["1"] >= 1 and fc.points["status.error"]["3"] >= 1
    assert fc.points["axi.ar_len"]["max"] >= 1 and fc.points["backpressure.w"]["4+"] >= 1
    assert fc.points["mm.wbits_x_out_mode"]["(4, 1)"] >= 1
    assert "mm.wbits = 8" in fc.missing() and "mm.out_mode = 1" not in fc.missing()
    twice = cp.read_fcov(tmp_path / "a.yml", tmp_path / "a.yml")
    assert twice.hit == fc.hit and twice.bins == fc.bins
    assert 0 < fc.ratio < 1 and "mm.wbits" in fc.table()
