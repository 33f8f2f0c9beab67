"""``load_design``: one way from a config (object, mapping or YAML path) to a checked layout.

config (schema) -> :class:`~hbmforge.layout.DesignLayout` (derived contract) -> board budget
(:mod:`hbmforge.budget`). Each step only imports the ones before it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .budget import check_budget as _check_budget
from .config import AcceleratorConfig, load_config, parse_config
from .layout import DesignLayout

__all__ = ["load_design", "as_config"]


def as_config(source) -> AcceleratorConfig:
    """An :class:`AcceleratorConfig` from a config, a mapping or a YAML path (schema checked)."""
    if isinstance(source, AcceleratorConfig):
        return source
    if isinstance(source, DesignLayout):
        return source.config
    if isinstance(source, Mapping):
        return parse_config(dict(source))
    if isinstance(source, (str, Path)):
        return load_config(source)
    raise TypeError(f"a design is an AcceleratorConfig, a config mapping or a YAML path, "
                    f"got {type(source).__name__}")


def load_design(source, *, check_budget: bool = True) -> DesignLayout:
    """The layout of a config; raises :class:`~hbmforge.config.ConfigError` naming the bad
    field or the exceeded budget."""
    if isinstance(source, DesignLayout):
        layout = source
    else:
        layout = DesignLayout(as_config(source))
    if check_budget:
        _check_budget(layout)
    return layout
