"""The build cache: keys, atomic publish, one build per key across processes."""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from hbmforge.sim.cache import BuildCache, CacheLockTimeout, cache_root, content_key


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HBMFORGE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("HBMFORGE_CACHE_DIR")
    assert "hbmforge" in str(cache_root())


def test_key_changes_with_any_input(tmp_path):
    f = tmp_path / "k.v"
    f.write_text("module k; endmodule\n")
    base = content_key(["v1", f, "flags"])
    assert base == content_key(["v1", f, "flags"])
    f.write_text("module k; endmodule // edited\n")
    assert content_key(["v1", f, "flags"]) != base
    assert content_key(["v1", "a", "bc"]) != content_key(["v1", "ab", "c"])   # parts are delimited


def test_miss_builds_then_hit_reuses(tmp_path):
    cache = BuildCache("t", tmp_path)
    calls = []

    def build(out: Path):
        calls.append(out)
        (out / "lib.so").write_text("x")

    first = cache.get_or_build("d", "ab" * 32, build)
    second = cache.get_or_build("d", "ab" * 32, build)
    assert not first.hit and second.hit
    assert first.path == second.path and (first.path / "lib.so").read_text() == "x"
    assert len(calls) == 1 and not calls[0].exists()          # built elsewhere, then renamed in


def test_failed_build_publishes_nothing(tmp_path):
    cache = BuildCache("t", tmp_path)

    def build(out: Path):
        (out / "half").write_text("x")
        raise RuntimeError("compiler exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        cache.get_or_build("d", "cd" * 32, build)
    assert cache.lookup("d", "cd" * 32) is None
    assert not list((tmp_path / "t" / ".tmp").iterdir())


def _slow_build(root: str, counter: str, result: "mp.Queue") -> None:
    def build(out: Path):
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(1.5)
        (out / "lib.so").write_text("ok")

    entry = BuildCache("t", Path(root)).get_or_build("d", "ef" * 32, build)
    result.put((str(entry.path), entry.hit, entry.waited_s))


def test_parallel_processes_build_once(tmp_path):
    counter = tmp_path / "count.txt"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_slow_build, args=(str(tmp_path), str(counter), q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert counter.read_text().count("built") == 1
    assert len({r[0] for r in results}) == 1
    assert sorted(r[1] for r in results) == [False, True, True]


def test_lock_timeout_names_the_wait(tmp_path):
    cache = BuildCache("t", tmp_path)
    with cache._lock("d", "12" * 32, None, None):
        other = BuildCache("t", tmp_path)
        # flock locks are per open file description: a second open() in this process conflicts too
        with pytest.raises(CacheLockTimeout, match="waited"):
            other.get_or_build("d", "12" * 32, lambda out: None, lock_timeout=0.3)


def test_unused_entries_are_pruned_and_hits_keep_entries_alive(tmp_path):
    import os
    cache = BuildCache("t", tmp_path)
    old = cache.get_or_build("d", "aa" * 32, lambda out: None).path
    kept = cache.get_or_build("d", "bb" * 32, lambda out: None).path
    month_ago = time.time() - 40 * 86400
    for p in (old, kept):
        os.utime(p / ".complete", (month_ago, month_ago))
    assert cache.get_or_build("d", "bb" * 32, lambda out: None).hit      # a hit refreshes it
    assert cache.prune() == [old]
    assert not old.exists() and kept.exists()
