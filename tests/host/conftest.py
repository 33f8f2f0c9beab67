"""Fixtures for host runtime tests: a tiny design and an in-process golden device."""
from __future__ import annotations

import pytest

from hbmforge.layout import DesignLayout

from golden_kernel import GoldenDevice, tiny_copy_layout


@pytest.fixture
def tiny_layout(tiny_config) -> DesignLayout:
    return DesignLayout(tiny_config)


@pytest.fixture
def golden_dev(tiny_layout):
    with GoldenDevice(tiny_layout) as dev:
        yield dev


@pytest.fixture
def copy_dev():
    with GoldenDevice(tiny_copy_layout()) as dev:
        yield dev
