"""Reading a generated design's ``manifest.json``: one reader for the host, the co-simulation and the tools.

:func:`read_manifest` takes a layout, a manifest mapping, a ``manifest.json`` path or the
directory of a generated design, and returns a :class:`DesignManifest`: the checked
:class:`~hbmforge.layout.DesignLayout` (:meth:`~hbmforge.layout.DesignLayout.from_manifest`
refuses any manifest that disagrees with its own config) and the file's extras (top module,
Verilog file name).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .layout import DesignLayout, ManifestError

__all__ = ["DesignManifest", "read_manifest", "MAX_MANIFEST_BYTES"]

#: a manifest is a few tens of kB; anything far larger is not one
MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class DesignManifest:
    """A checked manifest: its layout, its JSON data and where it was read from (if a file)."""

    layout: DesignLayout
    data: Mapping[str, Any]
    path: Path | None = None

    @property
    def directory(self) -> Path | None:
        return None if self.path is None else self.path.parent

    @property
    def top(self) -> str:
        return self.data.get("top", self.layout.kernel)

    @property
    def verilog_path(self) -> Path | None:
        """The generated Verilog next to the manifest, if the manifest names one."""
        name = self.data.get("verilog")
        if name is None or self.path is None:
            return None
        return self.path.parent / name


def read_manifest(source) -> DesignManifest:
    """A :class:`DesignManifest` from a DesignManifest, a DesignLayout, a mapping, a manifest
    path or a design directory; :class:`~hbmforge.layout.ManifestError` names what is wrong."""
    if isinstance(source, DesignManifest):
        return source
    if isinstance(source, DesignLayout):
        return DesignManifest(source, source.to_json())
    if isinstance(source, Mapping):
        return DesignManifest(DesignLayout.from_manifest(source), dict(source))
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            path = path / "manifest.json"
        try:
            size = path.stat().st_size
            if size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{path} is {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
            data = json.loads(path.read_bytes().decode("utf-8"))
        except OSError as err:
            raise ManifestError(f"cannot read manifest {path}: {err.strerror or err}") from None
        except UnicodeDecodeError as err:
            raise ManifestError(f"manifest {path} is not UTF-8 text ({err.reason})") from None
        except (json.JSONDecodeError, RecursionError, ValueError) as err:
            raise ManifestError(f"manifest {path} is not valid JSON: {err}") from None
        return DesignManifest(DesignLayout.from_manifest(data, source=str(path)), data, path)
    raise TypeError(f"a design manifest is a DesignLayout, a mapping, a manifest.json path or a design "
                    f"directory, got {type(source).__name__}")
