"""Fixtures of the CLI tests."""
from __future__ import annotations

import pytest
import yaml

from designs import tiny_config_dict


@pytest.fixture
def tiny_yaml(tmp_path):
    """The tiny test design as a YAML config file."""
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny_config_dict()))
    return p
