"""Every formal property can fail: each mutant breaks its RTL (the shell's ports and control
slave, the aggregation switch, the tile cache), and SymbiYosys finds that property's
counterexample (tests/formal/mutants.py). A representative mutant per property group
runs in CI; the whole list under ``-m slow``."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.generators.formal.run import run_formal
from hbmforge.layout import DesignLayout

from designs import tiny_config_dict
from mutants import CACHE_MUTANTS, CI_MUTANTS, CONTROL_MUTANTS, PORT_MUTANTS, SWITCH_MUTANTS

ALL = PORT_MUTANTS + CONTROL_MUTANTS + SWITCH_MUTANTS + CACHE_MUTANTS


def _params(mutants):
    return [pytest.param(m, id=m.prop, marks=() if m.prop in CI_MUTANTS else pytest.mark.slow) for m in mutants]


@pytest.fixture(scope="module")
def layout():
    return DesignLayout(parse_config(tiny_config_dict()))


@pytest.mark.parametrize("mutant", _params(ALL))
def test_mutant_breaks_its_property(mutant, layout, tmp_path):
    res = run_formal(mutant.build(layout), "mutant", tmp_path, mode="bmc", depth=mutant.depth, keep_going=False)
    if res.status == "fail" and mutant.prop not in res.failed:    # another property broke first: look on
        res = run_formal(mutant.build(layout), "mutant_all", tmp_path, mode="bmc", depth=mutant.depth)
    assert res.status == "fail", f"{mutant.what}: SymbiYosys found no counterexample ({res.status})"
    assert mutant.prop in res.failed, f"{mutant.what}: expected {mutant.prop} to fail, failed: {res.failed}"


def test_every_property_has_a_mutant(layout):
    from amaranth.back import rtlil

    from hbmforge.generators.formal.engines import CacheHarness, SwitchHarness
    from hbmforge.generators.formal.run import check_names
    from hbmforge.generators.formal.shell import ControlHarness, PortHarness
    from mutants import PORT

    names = set()
    for harness in (PortHarness(**PORT), ControlHarness(layout), SwitchHarness(), CacheHarness()):
        names.update(check_names(rtlil.convert(harness, name="top", ports=list(harness.ports))))
    assert names == {m.prop for m in ALL}, (f"no mutant for {sorted(names - {m.prop for m in ALL})}; "
                                            f"mutants of unknown properties {sorted({m.prop for m in ALL} - names)}")
