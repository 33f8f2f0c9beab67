"""Test modules need unique basenames: tests/ has no __init__.py files, so pytest imports each
module by its basename and a second module of the same name fails collection (it did twice)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def test_every_test_module_basename_is_unique():
    root = Path(__file__).resolve().parents[1]
    seen = defaultdict(list)
    for path in root.rglob("test_*.py"):
        seen[path.name].append(str(path.relative_to(root)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert clashes == {}, clashes
