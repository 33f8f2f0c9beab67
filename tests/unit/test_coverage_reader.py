"""sim/coverage.py: reading Verilator's coverage.dat, merging runs, and the per-module reports."""
from __future__ import annotations

import pytest

from hbmforge.sim.coverage import CoverageData, read_coverage, text_table, write_html, write_lcov


def _point(kind, module, line, what, count, *, span=None, file="/x/k.v"):
    key = (f"\x01f\x02{file}\x01l\x02{line}\x01n\x025\x01t\x02{kind}\x01page\x02v_{kind}/{module}"
           f"\x01o\x02{what}" + (f"\x01S\x02{span}" if span else "") + f"\x01h\x02{module}")
    return f"C '{key}' {count}\n"


def _write(path, *points):
    path.write_text("# SystemC::Coverage-3\n" + "".join(points))
    return path


def test_points_are_read_with_kind_module_lines_and_counts(tmp_path):
    f = _write(tmp_path / "a.dat", _point("line", "k.ctl", 10, "if", 3, span="10-12"),
               _point("line", "k.ctl", 20, "else", 0),
               _point("toggle", "k", 1, "sig[0]:0->1", 1), _point("toggle", "k", 1, "sig[0]:1->0", 0))
    data = read_coverage(f)
    assert data.counts("line") == (1, 2) and data.counts("toggle") == (1, 2)
    (miss,) = data.uncovered("line")
    assert (miss.module, miss.line, miss.what, miss.covered) == ("k.ctl", 20, "else", False)
    first = next(p for p in data.points("line") if p.line == 10)
    assert (first.first, first.last, first.count) == (10, 12, 3)
    mods = {m.module: m for m in data.modules()}
    assert mods["k.ctl"].ratio("line") == 0.5 and mods["k"].ratio("line") is None


def test_runs_merge_by_adding_counts_and_round_trip(tmp_path):
    a = _write(tmp_path / "a.dat", _point("line", "k", 1, "block", 0), _point("line", "k", 2, "block", 2))
    b = _write(tmp_path / "b.dat", _point("line", "k", 1, "block", 5), _point("line", "k", 3, "block", 0))
    merged = read_coverage(a, b)
    assert sorted((p.line, p.count) for p in merged.points("line")) == [(1, 5), (2, 2), (3, 0)]
    again = CoverageData.read(merged.write(tmp_path / "m.dat"))
    assert sorted((p.line, p.count) for p in again.points()) == [(1, 5), (2, 2), (3, 0)]
    assert merged.ratio("line") == pytest.approx(2 / 3)


def test_reports_lcov_html_and_table(tmp_path):
    src = tmp_path / "k.v"
    src.write_text("module k;\n  always @* begin\n    x = 1;\n  end\nendmodule\n")
    f = _write(tmp_path / "a.dat", _point("line", "k", 2, "block", 4, span="2-3", file=str(src)),
               _point("line", "k", 4, "else", 0, file=str(src)))
    data = read_coverage(f)
    info = write_lcov(data, tmp_path / "c.info").read_text()
    assert f"SF:{src}" in info and "DA:2,4" in info and "DA:3,4" in info and "DA:4,0" in info
    assert "LF:3" in info and "LH:2" in info and info.rstrip().endswith("end_of_record")
    index = write_html(data, tmp_path / "html")
    assert "k" in index.read_text() and "2/3" not in index.read_text()       # 1 of 2 points
    page = (tmp_path / "html" / "src0.html").read_text()
    assert 'class="miss"' in page and 'class="hit"' in page and "always @*" in page
    table = text_table(data, title="t")
    assert "1/2  50.00%" in table and table.splitlines()[-1].startswith("total")


def test_not_a_coverage_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.dat"
    bad.write_text("hello\n")
    with pytest.raises(ValueError, match="not a Verilator coverage file"):
        read_coverage(bad)
    bad.write_text("# SystemC::Coverage-3\nC 'abc'\n")
    with pytest.raises(ValueError, match=":2"):
        read_coverage(bad)
    with pytest.raises(ValueError, match="at least one"):
        read_coverage()
