"""open_device(config) takes the generated design from the design cache: a warm open runs no
Amaranth, a changed config or generator never reuses a stale design."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.flows import design_cache
from hbmforge.host import open_device
from hbmforge.layout import DesignLayout
from hbmforge.sim.cache import BuildCache

from designs import tiny_config_dict

pytestmark = pytest.mark.rtl


@pytest.fixture
def designs(tmp_path, monkeypatch):
    """A private design cache (the co-sim build cache stays shared)."""
    cache = BuildCache("designs", root=tmp_path)
    monkeypatch.setattr(design_cache, "BuildCache", lambda kind: cache)
    return cache


def _no_amaranth(*args, **kwargs):
    raise AssertionError("a warm open_device must not generate the RTL again")


def test_warm_open_reuses_the_generated_design(designs, monkeypatch):
    cfg = tiny_config_dict()
    with open_device(cfg, progress=False) as dev:
        first = dev.design.directory
    import hbmforge.flows.emit as emit

    monkeypatch.setattr(emit, "generate", _no_amaranth)
    with open_device(cfg, progress=False) as dev:
        assert dev.design.directory == first
        assert dev.read_reg("HASH") == dev.layout.hash64


def test_changed_config_gets_its_own_design(designs):
    a = DesignLayout(parse_config(tiny_config_dict()))
    b = DesignLayout(parse_config(tiny_config_dict(rows=4)))
    assert design_cache.design_key(a) != design_cache.design_key(b)
    path_a = design_cache.cached_design(a, cache=designs)
    path_b = design_cache.cached_design(b, cache=designs)
    assert path_a != path_b
    assert '"rows": 4' in (path_b / "manifest.json").read_text()


def test_changed_generator_never_reuses_a_stale_design(designs, monkeypatch):
    lay = DesignLayout(parse_config(tiny_config_dict()))
    before = design_cache.cached_design(lay, cache=designs)
    monkeypatch.setattr(design_cache, "generator_fingerprint", lambda: "an edited generator")
    calls = []
    import hbmforge.flows.emit as emit

    real = emit.generate
    monkeypatch.setattr(emit, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    after = design_cache.cached_design(lay, cache=designs)
    assert after != before and calls == [1]


def test_fingerprint_covers_the_generators_and_the_contract():
    names = {p.name for p in design_cache._sources()}
    assert {"kernel.py", "cmdproc.py", "engine.py", "layout.py", "config.py", "emit.py"} <= names
