"""Content-addressed build cache shared by co-sim and cocotb builds.

A Verilator build takes tens of seconds; the same RTL is built by many tests,
pytest-xdist workers and CLI runs. Entries live under a user cache dir
(``HBMFORGE_CACHE_DIR`` overrides it) at ``<root>/<kind>/<name>-<key>``, where
the key hashes everything that affects the result. A builder works in a
private temporary directory and publishes it with one ``rename``, so readers
never see a half-built entry; a per-key file lock makes a second process that
wants the same entry wait for the first instead of building it again.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["cache_root", "content_key", "BuildCache", "CacheEntry", "CacheLockTimeout"]

_COMPLETE = ".complete"     # written last inside the temporary dir, so a published entry always has it
DEFAULT_MAX_AGE_DAYS = 30   # entries unused this long are removed after a build


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


class CacheLockTimeout(TimeoutError):
    """Another process held the build lock for longer than the caller wanted to wait."""


def cache_root() -> Path:
    """``$HBMFORGE_CACHE_DIR``, else the platform's user cache dir for hbmforge."""
    env = os.environ.get("HBMFORGE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir
    return Path(user_cache_dir("hbmforge", appauthor=False))


def content_key(parts: Iterable[str | bytes | Path]) -> str:
    """sha256 over the parts in order; a Path contributes its name and its bytes."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            data = part.name.encode() + b"\0" + part.read_bytes()
        elif isinstance(part, str):
            data = part.encode()
        else:
            data = bytes(part)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    path: Path          # the published directory
    hit: bool           # True when nothing had to be built by this call
    waited_s: float     # time spent waiting for another process's build


class BuildCache:
    """Entries of one kind (``cosim``, ``cocotb``) under the cache root."""

    def __init__(self, kind: str, root: Path | None = None):
        self.dir = (root or cache_root()) / kind
        self._locks = self.dir / ".locks"
        self._tmp = self.dir / ".tmp"

    def entry_path(self, name: str, key: str) -> Path:
        return self.dir / f"{name}-{key[:20]}"

    def lookup(self, name: str, key: str) -> Path | None:
        path = self.entry_path(name, key)
        return path if (path / _COMPLETE).exists() else None

    def get_or_build(self, name: str, key: str, build: Callable[[Path], None], *,
                     metadata: dict | None = None, lock_timeout: float | None = None,
                     on_wait: Callable[[], None] | None = None) -> CacheEntry:
        """Return the entry for ``key``, calling ``build(tmp_dir)`` under the lock if it is missing.

        ``build`` fills ``tmp_dir``; it is published only if ``build`` returns normally.
        """
        found = self.lookup(name, key)
        if found:
            _touch(found / _COMPLETE)
            return CacheEntry(found, True, 0.0)
        t0 = time.monotonic()
        with self._lock(name, key, lock_timeout, on_wait):
            waited = time.monotonic() - t0
            found = self.lookup(name, key)          # another process may have built it meanwhile
            if found:
                return CacheEntry(found, True, waited)
            self._remove_stale_tmp(name, key)
            tmp = self._tmp / f"{name}-{key[:20]}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                build(tmp)
                info = {"name": name, "key": key, "built_at": time.time(), **(metadata or {})}
                (tmp / _COMPLETE).write_text(json.dumps(info, indent=1))
                final = self.entry_path(name, key)
                if final.exists():                  # a leftover without the marker
                    shutil.rmtree(final)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.prune()
        return CacheEntry(final, False, waited)

    def prune(self, max_age_days: float = DEFAULT_MAX_AGE_DAYS) -> list[Path]:
        """Remove entries not used for ``max_age_days`` (a hit refreshes an entry); the removed paths.

        Runs after every build, so the cache does not grow without bound.
        """
        removed = []
        if not self.dir.is_dir():
            return removed
        cutoff = time.time() - max_age_days * 86400
        for marker in self.dir.glob(f"*/{_COMPLETE}"):
            try:
                if marker.stat().st_mtime < cutoff:
                    shutil.rmtree(marker.parent, ignore_errors=True)
                    removed.append(marker.parent)
            except OSError:
                pass
        return removed

    def remove(self, name: str, key: str) -> None:
        shutil.rmtree(self.entry_path(name, key), ignore_errors=True)

    @contextmanager
    def _lock(self, name: str, key: str, timeout: float | None, on_wait: Callable[[], None] | None):
        self._locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._locks / f"{name}-{key[:20]}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait:
                    on_wait()
                deadline = None if timeout is None else time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if deadline is not None and time.monotonic() > deadline:
                            raise CacheLockTimeout(
                                f"waited {timeout:.0f} s for another process building {name} "
                                f"(lock {self._locks / (name + '-' + key[:20] + '.lock')})") from None
                        time.sleep(0.2)
            yield
        finally:
            os.close(fd)                            # closing releases the flock

    def _remove_stale_tmp(self, name: str, key: str) -> None:
        """Leftovers of killed builds of this key (safe: we hold its lock)."""
        if self._tmp.is_dir():
            for p in self._tmp.glob(f"{name}-{key[:20]}.*"):
                shutil.rmtree(p, ignore_errors=True)
