"""How long ``open_device("my.yaml")`` takes on the starter config; prints one JSON object per line.

    python benchmarks/open_device.py [--board u280] [--repeats 3]

Each measurement runs in a fresh Python process (``import hbmforge.host`` included), with
``HBMFORGE_CACHE_DIR`` pointing at a scratch cache so that nothing is warm by accident:

* ``open_device_cold_seconds``: empty caches: RTL generation (Amaranth) + Verilator build + open.
* ``open_device_regen_seconds``: the design cache emptied, the co-simulation build kept:
  what the old flow paid on every open (Amaranth elaboration + Verilog emission).
* ``open_device_warm_seconds``: both caches warm (target <= 2 s), the median of ``--repeats``;
  ``open_device_warm_call_seconds``: the ``open_device`` call alone in that process.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from hbmforge.host import open_device
t1 = time.perf_counter()
dev = open_device(sys.argv[1], progress=False)
t2 = time.perf_counter()
assert dev.read_reg("HASH") == dev.layout.hash64
dev.close()
print(json.dumps({"total": t2 - t0, "call": t2 - t1}))
"""


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "open_device", "metric": metric, "value": value, "unit": unit, **context}),
          flush=True)


def _open(config: Path, cache: Path) -> dict:
    env = {**os.environ, "HBMFORGE_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(config)], env=env, capture_output=True,
                         text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"open_device failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="u280")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from hbmforge.config import dump_yaml, starter_config

    with tempfile.TemporaryDirectory(prefix="hbmforge-open-bench-") as tmp:
        tmp = Path(tmp)
        config = tmp / "my.yaml"
        config.write_text(dump_yaml(starter_config(args.board)))
        cache = tmp / "cache"
        ctx = {"board": args.board, "config": "starter"}
        cold = _open(config, cache)
        emit("open_device_cold_seconds", round(cold["total"], 2), "s", **ctx)
        shutil.rmtree(cache / "designs")
        regen = _open(config, cache)
        emit("open_device_regen_seconds", round(regen["total"], 2), "s", **ctx)
        warm = [_open(config, cache) for _ in range(max(1, args.repeats))]
        emit("open_device_warm_seconds", round(statistics.median(w["total"] for w in warm), 3), "s",
             target=2.0, **ctx)
        emit("open_device_warm_call_seconds", round(statistics.median(w["call"] for w in warm), 3), "s", **ctx)


if __name__ == "__main__":
    main()
