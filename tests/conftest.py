"""Shared pytest fixtures: configs small enough that Verilator builds and runs take seconds."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config, starter_config

from designs import tiny_config_dict


@pytest.fixture
def tiny_config():
    return parse_config(tiny_config_dict())


@pytest.fixture
def starter_u280():
    return parse_config(starter_config("u280"))
