"""Fixtures for the simulation tests: the hand-written fixture kernel, built once per session.

The build goes to the normal cache (``HBMFORGE_CACHE_DIR`` or the user cache),
so a second test run, and every xdist worker after the first, reuses it.
"""
from __future__ import annotations

import json

import pytest

from sim_fixture import FIXTURE_MANIFEST, FIXTURE_RTL


@pytest.fixture(scope="session")
def fixture_manifest() -> dict:
    return json.loads(FIXTURE_MANIFEST.read_text())


@pytest.fixture(scope="session")
def fixture_build():
    from hbmforge.sim.build import build_library
    return build_library(FIXTURE_RTL, FIXTURE_MANIFEST, progress=False)


@pytest.fixture
def sim(fixture_build):
    from hbmforge.sim.cosim import CoSim
    with CoSim(fixture_build.library, fixture_build.manifest) as s:
        yield s
