"""Design-space sweep throughput on this machine; prints one JSON object per line.

    python benchmarks/sweep.py [--rows 1,2,4,8]

A grid over the tiny matmul design (``engines.0.rows`` in ``--rows``: one design, one Verilator
build each) with a four-Linear workload, run by ``hbmforge sweep --json`` in a fresh process
with ``HBMFORGE_CACHE_DIR`` on a scratch cache, so every "cold" point generates, builds and
simulates:

* ``sweep_points_per_hour`` (cold cache) in one process (``--workers 0``), on a LocalCluster of
  1 worker and of 2 workers (one per core), and warm: the 2-worker sweep repeated into a new
  output directory over the same cache (no generation, no build);
* ``sweep_cache_hit_rate``: design-cache and co-sim build hits / lookups of that repeated sweep;
* ``sweep_scaling_efficiency``: points/hour with 2 workers / (2 x points/hour with 1 worker);
* ``sweep_extrapolation_error``: a Linear wider than ``max_columns`` projected from two narrower
  runs (``workload.max_columns``) vs the same layer simulated whole, relative cycle error.

The machine is shared: each line carries the load average at its start, and a busy machine
lowers every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from designs import tiny_config_dict, tiny_sweep_spec_dict  # noqa: E402

HBMFORGE = Path(sys.executable).with_name("hbmforge")


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "sweep", "metric": metric, "value": value, "unit": unit, **context}), flush=True)


def _sweep(spec: Path, out: Path, cache: Path, workers: int) -> dict:
    env = {**os.environ, "HBMFORGE_CACHE_DIR": str(cache)}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run([str(HBMFORGE), "sweep", str(spec), "--workers", str(workers), "-o", str(out), "--json"],
                         env=env, capture_output=True, text=True, timeout=4 * 3600)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"hbmforge sweep failed:\n{res.stderr[-3000:]}")
    summary = json.loads(res.stdout)
    if summary["failed"] or summary["ok"] != summary["points"]:
        raise SystemExit(f"the benchmark sweep had infeasible or failed points: {summary}")
    summary["wall"] = wall
    summary["load_avg"] = round(load, 2)
    return summary


def _pph(s: dict) -> float:
    return s["evaluated_now"] * 3600 / s["wall"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,8", help="engines.0.rows values (one design each)")
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    spec = tiny_sweep_spec_dict("bench_sweep", parameters={"engines.0.rows": rows})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="hbmforge-bench-sweep-") as tmp:
        tmp = Path(tmp)
        spec_path = tmp / "sweep.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        ctx = {"points": len(rows), "design": "tiny (2x16 MACs, 64-bit ports) x rows " + args.rows,
               "workload": "4 Linear layers, co-sim", "cores": cores}
        runs = {}
        for name, workers in (("one process", 0), ("local cluster, 1 worker", 1), ("local cluster, 2 workers", 2)):
            s = _sweep(spec_path, tmp / f"out-{workers}", tmp / f"cache-{workers}", workers)
            runs[workers] = s
            emit("sweep_points_per_hour", round(_pph(s), 1), "points/h", mode=name, cache="cold",
                 seconds=round(s["wall"], 1), load_avg=s["load_avg"], **ctx)
        warm = _sweep(spec_path, tmp / "out-2-again", tmp / "cache-2", 2)
        emit("sweep_points_per_hour", round(_pph(warm), 1), "points/h", mode="local cluster, 2 workers",
             cache="warm (repeated sweep)", seconds=round(warm["wall"], 1), load_avg=warm["load_avg"], **ctx)
        rate = warm["cache_hits"] / warm["cache_lookups"] if warm["cache_lookups"] else None
        emit("sweep_cache_hit_rate", rate, "fraction", hits=warm["cache_hits"], lookups=warm["cache_lookups"],
             what="design cache + co-sim build cache, repeated sweep into a new output directory", **ctx)
        eff = _pph(runs[2]) / (2 * _pph(runs[1]))
        emit("sweep_scaling_efficiency", round(eff, 3), "fraction", workers="1 -> 2", cache="cold",
             points_per_hour_1=round(_pph(runs[1]), 1), points_per_hour_2=round(_pph(runs[2]), 1), **ctx)
        os.environ["HBMFORGE_CACHE_DIR"] = str(tmp / "cache-2")
        _extrapolation()


def _extrapolation() -> None:
    from hbmforge.design import load_design
    from hbmforge.flows.runner import run_linear
    from hbmforge.flows.sweep.workload import extrapolate

    cfg = load_design(tiny_config_dict()).config
    k, n, half, cap = 256, 1024, 64, 128

    def cycles(cols: int) -> int:
        return run_linear(cfg, m=1, k=k, n=cols, wbits=4, backend_options={"progress": False})["cycles"]

    full, c1, c2 = cycles(n), cycles(half), cycles(cap)
    proj = extrapolate(c1, c2, half, cap, n)
    emit("sweep_extrapolation_error", round(abs(proj - full) / full, 5), "fraction",
         layer=f"linear m=1 k={k} n={n} int4 on tiny", simulated_columns=[half, cap], projected_cycles=proj,
         simulated_cycles=full)


if __name__ == "__main__":
    main()
