"""Code coverage from the co-simulation: a coverage build of the fixture kernel writes
coverage.dat through hbf_coverage_write; a branch the run never takes shows up uncovered, and
covered once a later run takes it."""
from __future__ import annotations

import pytest

from hbmforge.sim.build import BuildOptions, build_library
from hbmforge.sim.cosim import CoSim, CoSimError
from hbmforge.sim.coverage import read_coverage

from sim_fixture import FIXTURE_MANIFEST, FIXTURE_RTL, WORD, fixture_reg_read, run_job

pytestmark = pytest.mark.rtl


def _options_read_line() -> int:
    """The fixture's read-mux arm of the OPTIONS register: reached only when the host reads it."""
    lines = FIXTURE_RTL.read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if "rd_word = options;" in text)


def _on(data, line):
    return [p for p in data.points("line") if p.first <= line <= p.last]


def test_coverage_build_counts_lines_and_leaves_the_untaken_branch_uncovered(tmp_path):
    build = build_library(FIXTURE_RTL, FIXTURE_MANIFEST, options=BuildOptions(coverage=True), progress=False)
    with CoSim(build.library, build.manifest) as sim:
        sim.mem_write(0x10_0000, bytes(range(256)) * (8 * WORD // 256))
        run_job(sim, src=0x10_0000, dst=0x20_0000, words=8, w0=0x30_0000, w0_words=4)
        first = sim.coverage_write(tmp_path / "one.dat")
        run_job(sim, src=0x10_0000, dst=0x40_0000, words=8)
        assert fixture_reg_read(sim, "OPTIONS") == 0x0F
        sim.coverage_write(tmp_path / "two.dat")
    one, two = read_coverage(first), read_coverage(tmp_path / "two.dat")
    hit, total = one.counts("line")
    assert total > 20 and hit > total // 2
    assert one.counts("toggle")[1] > 0
    line = _options_read_line()
    assert _on(one, line) and not any(p.covered for p in _on(one, line)), \
        f"line {line} (OPTIONS read) was never reached and must show up uncovered"
    assert any(p.line == line for p in one.uncovered("line"))
    assert all(p.covered for p in _on(two, line)), "after reading OPTIONS its line is covered"
    covered = [p for p in one.points("line") if p.covered]
    assert covered and all(p.file.endswith("fixture.v") for p in covered)
    # counts only grow during one model's life: the second file holds the first run too
    assert sum(p.count for p in two.points("line")) > sum(p.count for p in one.points("line"))


def test_coverage_write_without_a_coverage_build_is_a_clear_error(sim, tmp_path):
    with pytest.raises(CoSimError, match="without coverage"):
        sim.coverage_write(tmp_path / "x.dat")
