"""Whether a benchmark's output paths can be written, checked before it runs (a run that fails
at its last step, writing its report, wastes the run)."""
from __future__ import annotations

import os
from pathlib import Path


def _existing_ancestor(path: Path) -> Path:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    return parent


def writable_file(path: Path) -> bool:
    """True when ``path`` can be written as a file: it is a writable file, or it does not exist and
    its nearest existing ancestor is a writable directory."""
    path = Path(path)
    if path.exists():
        return path.is_file() and os.access(path, os.W_OK)
    parent = _existing_ancestor(path)
    return parent.is_dir() and os.access(parent, os.W_OK)


def writable_dir(path: Path) -> bool:
    """True when ``path`` is a writable directory or could be made one (it is made then: the run
    writes there first)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
