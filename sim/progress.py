"""Stage-by-stage progress of long builds, shown with rich on stderr.

Builds take tens of seconds; a named stage with a running clock tells the user
what is happening, and the per-stage times end up in the build record.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

__all__ = ["StageProgress"]


class StageProgress:
    """``with progress.stage("verilate"): ...`` prints a spinner, then the stage's time."""

    def __init__(self, title: str, enabled: bool = True):
        self.title = title
        self.enabled = enabled
        self.times: dict[str, float] = {}
        self._status = None
        self._console = None
        if enabled:
            from rich.console import Console
            self._console = Console(stderr=True, highlight=False)

    @contextmanager
    def stage(self, name: str):
        t0 = time.monotonic()
        status = None
        if self._console is not None:
            status = self._console.status(f"[bold]{self.title}[/]: {name} ...")
            status.start()
        self._status = status
        self._current = (name, t0)
        try:
            yield self
        finally:
            if status is not None:
                status.stop()
            self._status = None
            self.times[name] = time.monotonic() - t0
        if self._console is not None:
            self._console.print(f"[green]done[/] {self.title}: {name} in {self.times[name]:.1f} s")

    def detail(self, text: str) -> None:
        """Update the running stage's line (e.g. ``compile 3/11``)."""
        if self._status is not None:
            name, t0 = self._current
            self._status.update(f"[bold]{self.title}[/]: {name} {text} ({time.monotonic() - t0:.0f} s)")

    def note(self, text: str) -> None:
        if self._console is not None:
            self._console.print(f"{self.title}: {text}")

    @property
    def total(self) -> float:
        return sum(self.times.values())
