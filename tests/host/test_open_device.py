"""open_device: argument checks and backend dispatch (the sim build itself is covered by rtl tests)."""
from __future__ import annotations

import pytest

from hbmforge.config import ConfigError
from hbmforge.host import BACKENDS, open_device


def test_backends_are_named():
    assert BACKENDS == ("sim", "pynq", "xrt")
    with pytest.raises(ValueError, match="backend must be one of sim, pynq, xrt, got 'fpga'"):
        open_device({}, backend="fpga")


def test_a_directory_without_a_manifest_is_refused(tmp_path):
    with pytest.raises(ValueError, match="directory without manifest.json"):
        open_device(tmp_path)


def test_an_invalid_config_is_reported_before_any_build():
    with pytest.raises(ConfigError, match="board"):
        open_device({"version": 1, "name": "x", "board": "nope", "engines": [{"kind": "matmul"}]})


def test_other_targets_are_refused_by_type():
    with pytest.raises(TypeError, match="got int"):
        open_device(42)


def test_hardware_backends_get_the_target_and_options(monkeypatch, tmp_path):
    import hbmforge.host.backends.xrt as xrt

    seen = {}
    monkeypatch.setattr(xrt, "open_device", lambda target, **kw: seen.update(target=target, **kw) or "dev")
    assert open_device(tmp_path, backend="xrt", device=1) == "dev"
    assert seen == {"target": tmp_path, "build_dir": None, "device": 1}
