"""The steps of one design point, as plain functions a Dask worker runs (or this process).

generate -> estimate (analytic model, or Yosys: resource ``yosys``)
generate -> build (the Verilator co-sim library: resource ``verilator``) -> simulate (one per run)

Each step takes the resolved config mapping (never a path or an open object, so any worker of a
cluster can run it) and returns a small dict with its wall time, whether a cache served it, and
the worker that ran it. The caches do the de-duplication: the design cache keys generation by
design hash and generator fingerprint, the co-sim build cache and the estimate cache key by RTL
hash, so a repeated design point neither rebuilds nor re-synthesizes. A failing step raises
:class:`StepError` naming the step; :class:`~.workload.Infeasible` passes through.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

from .workload import Infeasible, SimRun, get_evaluator

__all__ = ["StepError", "generate_step", "estimate_step", "build_step", "simulate_step", "collect",
           "build_jobs", "analytic_resources"]


class StepError(RuntimeError):
    """A step of a design point failed; the message names the step and the cause."""


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def build_jobs() -> int:
    """``make -j`` for a Verilator build on this worker: its threads shared by the builds it may run
    at once (its ``verilator`` resource), so a worker never runs more compile jobs than its cores."""
    try:
        from distributed import get_worker

        w = get_worker()
    except (ImportError, ValueError):
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    threads = w.state.nthreads
    builds = int(w.state.total_resources.get("verilator", threads) or threads)
    return max(1, threads // max(1, builds))


def _run(step: str, fn: Callable[[], dict]) -> dict:
    t0 = time.monotonic()
    try:
        out = fn()
    except Infeasible:
        raise
    except Exception as err:      # noqa: BLE001 - every failure becomes the point's recorded reason
        raise StepError(f"{step} failed: {type(err).__name__}: {err}") from None
    out.update(seconds=round(time.monotonic() - t0, 3), worker=_worker_name(), step=step)
    return out


def _layout(config: dict):
    from hbmforge.design import load_design

    return load_design(config, check_budget=False)


def generate_step(config: dict) -> dict:
    """The RTL and manifest of the point, from the design cache (Amaranth only on a miss)."""
    def go():
        from hbmforge.flows.design_cache import cached_design, design_key
        from hbmforge.sim.cache import BuildCache

        layout = _layout(config)
        cache = BuildCache("designs")
        hit = cache.lookup(layout.kernel, design_key(layout)) is not None
        cached_design(layout, cache=cache)
        return {"hit": hit, "design_hash": layout.design_hash}
    return _run("generate", go)


def analytic_resources(layout) -> dict:
    """The analytic model's figures (``hbmforge.budget``) as sweep metrics; fractions as the budget
    check counts them (BRAM against BRAM36 + 8 x URAM)."""
    from hbmforge.budget import estimate_resources

    est = estimate_resources(layout)
    res = layout.config.board_info.resources
    fractions = {"lut": est.lut / res.lut, "ff": est.ff / res.ff, "dsp": est.dsp / res.dsp,
                 "bram": est.bram36 / max(1, res.bram36 + 8 * res.uram)}
    return {"lut": est.lut, "ff": est.ff, "dsp": est.dsp, "bram": est.bram36,
            "utilization": max(fractions.values()), "fractions": fractions}


def estimate_step(config: dict, method: str, timeout: float, board_budget: bool, _generated=None) -> dict:
    """Resources of the point: the analytic model (instant) or Yosys ``synth_xilinx`` (cached by RTL
    hash). With ``board_budget``, Yosys totals over the config's ``max_utilization`` make the point
    infeasible (raised before the simulation starts)."""
    def go():
        layout = _layout(config)
        if method == "analytic":
            return {"hit": None, "resources": analytic_resources(layout), "source": "analytic model"}
        from hbmforge.flows.estimate import estimate

        rep = estimate(layout.config, timeout=timeout)
        frac = {k: v for k, v in rep.fractions["total"].items() if v is not None}
        r = {k: rep.total[k] for k in ("lut", "ff", "dsp", "bram", "uram", "carry", "lutram", "srl")}
        r["utilization"] = max(frac.values()) if frac else 0.0
        r["fractions"] = frac
        if rep.timing:                   # the estimate's delay-weighted timing (hbmforge.flows.timing)
            r.update(logic_depth=max(rep.max_logic_levels().values()),
                     fmax_estimate_mhz=rep.fmax_estimate_mhz())
        over = rep.over_allowance()
        if board_budget and over:
            raise Infeasible(f"Yosys estimate over max_utilization {rep.max_utilization:.0%} for "
                             + ", ".join(f"{k} ({rep.fractions['total'][k]:.1%})" for k in over))
        return {"hit": rep.cached, "resources": r, "source": rep.source}
    return _run("estimate", go)


def build_step(config: dict, _before=None) -> dict:
    """The co-simulation library of the point (Verilator; cached by RTL hash)."""
    def go():
        from hbmforge.flows.design_cache import cached_design
        from hbmforge.sim.build import BuildOptions, build_library

        design = cached_design(_layout(config))
        res = build_library(design, options=BuildOptions(jobs=build_jobs()), progress=False)
        return {"hit": res.cache_hit, "build_seconds": round(res.seconds, 3)}
    return _run("build", go)


def simulate_step(config: dict, evaluator: str, run: SimRun, timeout: float, seed: int, _built=None) -> dict:
    """One run of the workload on the point's co-simulation."""
    def go():
        ev = get_evaluator(evaluator)
        return {"key": run.key, "result": ev.run(run, config, timeout=timeout, seed=seed, build_jobs=build_jobs())}
    return _run(f"simulate {run.key}", go)


def collect(*parts: dict) -> list[dict]:
    """The results of a point's steps, in one task (the point is done when it is)."""
    return list(parts)
