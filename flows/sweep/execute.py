"""Running a sweep: design points as Dask task graphs, results into the store, the search told.

For each point the search proposes, the client resolves the config and checks it before any
task runs (schema, board budget with the analytic model, the workload's needs): a point that
fails there is *infeasible*, recorded with the reason. The others become a small task graph
(:mod:`.steps`)::

    generate ──> estimate ──(yosys + board_budget)──┐
        └───────────────────────────────────────────┴─> build ──> simulate x runs ──> collect

submitted to a Dask cluster: a ``LocalCluster`` (one single-threaded worker process per core,
each with the resources ``verilator=1 yosys=1``), an existing scheduler by address, or SLURM/PBS
jobs through dask-jobqueue. ``workers=0`` runs the same steps in this process, one point after
another (debugging, and the one-process baseline of ``benchmarks/sweep.py``). Builds and Yosys
runs ask for the ``verilator``/``yosys`` resources, and a build runs ``make -j`` with the
worker's threads divided by its ``verilator`` slots, so no worker runs more jobs than it has
cores. A point whose step raised is *failed*, with the step and the error; the sweep goes on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hbmforge.config import ConfigError

from . import steps as S
from .results import plot_pareto_html, plot_pareto_png, pareto_front, write_best_configs, write_table
from .search import Candidate, Outcome, make_search
from .spec import METRICS, ResolvedSpec, load_spec, parse_spec
from .store import PointRow, SweepStore
from .workload import Infeasible, get_evaluator

__all__ = ["run_sweep", "SweepResult", "ClusterError", "RESOURCES", "local_worker_count", "point_tasks"]

#: worker resources the steps ask for (LocalCluster workers have one of each)
RESOURCES = {"verilator": 1, "yosys": 1}


class ClusterError(RuntimeError):
    """The cluster could not be started or reached (the message says which and how to fix it)."""


def local_worker_count() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class SweepResult:
    """What :func:`run_sweep` did and wrote."""

    output: Path
    rows: list[PointRow]
    front: list[PointRow]
    files: dict[str, Any]
    evaluated: int                      # points evaluated by this run (not taken from the store)
    seconds: float
    workers: int
    cluster: str
    objectives: list[str] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def cache(self) -> dict[str, int]:
        """Cache hits and lookups (generate, build, Yosys) over the points evaluated by this run."""
        mine = [r for r in self.rows if r.steps.get("run") == self._run_id]
        return {"hits": sum(r.steps.get("cache_hits", 0) for r in mine),
                "lookups": sum(r.steps.get("cache_lookups", 0) for r in mine)}

    _run_id: str = field(default="", repr=False)

    def summary(self) -> dict:
        c = self.cache
        return {
            "output": str(self.output), "points": len(self.rows), "ok": self.count("ok"),
            "infeasible": self.count("infeasible"), "failed": self.count("failed"),
            "evaluated_now": self.evaluated, "seconds": round(self.seconds, 2), "workers": self.workers,
            "cluster": self.cluster, "interrupted": self.interrupted, "objectives": self.objectives,
            "points_per_hour": self.evaluated * 3600 / self.seconds if self.seconds > 0 else None,
            "cache_hits": c["hits"], "cache_lookups": c["lookups"],
            "pareto": [{"index": r.index, "params": r.params, "config_hash": r.config_hash,
                        "metrics": {k: v for k, v in r.metrics.items() if k in METRICS}} for r in self.front],
            "files": {k: str(v) if not isinstance(v, dict) else {a: str(b) for a, b in v.items()}
                      for k, v in self.files.items()},
        }


# ---------------------------------------------------------------------------------------------
# Task graphs and runners
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ref:
    """An argument that is the result of another task of the same point."""
    name: str


@dataclass(frozen=True)
class Task:
    name: str
    fn: Callable
    args: tuple
    resources: dict | None = None


def point_tasks(spec: ResolvedSpec, config: dict, runs) -> list[Task]:
    """The task graph of one point (see the module docstring), in dependency order."""
    wl = spec.workload
    yosys = spec.estimate == "yosys"
    tasks = [Task("generate", S.generate_step, (config,)),
             Task("estimate", S.estimate_step, (config, spec.estimate, spec.estimate_timeout,
                                                spec.constraints.board_budget, Ref("generate")),
                  {"yosys": 1} if yosys else None)]
    if runs:
        gate = Ref("estimate") if yosys and spec.constraints.board_budget else Ref("generate")
        tasks.append(Task("build", S.build_step, (config, gate), {"verilator": 1}))
        for i, run in enumerate(runs):
            tasks.append(Task(f"simulate{i}", S.simulate_step,
                              (config, wl.evaluator, run, wl.timeout, wl.seed, Ref("build"))))
    tasks.append(Task("collect", S.collect, tuple(Ref(t.name) for t in tasks)))
    return tasks


class InlineRunner:
    """The steps in this process, one point at a time (``workers=0``)."""

    name = "this process"
    threads = 1
    window = 1          # each point is stored before the next one starts

    def __init__(self):
        self._done: dict[str, tuple[bool, Any]] = {}

    def submit(self, key: str, tasks: list[Task]) -> None:
        results: dict[str, Any] = {}
        try:
            for t in tasks:
                results[t.name] = t.fn(*[results[a.name] if isinstance(a, Ref) else a for a in t.args])
            self._done[key] = (True, results["collect"])
        except Exception as err:     # noqa: BLE001 - recorded as the point's failure
            self._done[key] = (False, err)

    def wait(self, timeout: float) -> list[str]:
        return list(self._done)

    def result(self, key: str):
        ok, value = self._done.pop(key)
        if not ok:
            raise value
        return value

    def cancel(self, key: str) -> None:
        self._done.pop(key, None)

    def close(self) -> None:
        pass


class DaskRunner:
    """Point graphs as Dask futures on a ``distributed.Client``."""

    def __init__(self, client, *, name: str, threads: int, use_resources: bool, closers=()):
        self.client, self.name, self.threads = client, name, threads
        self.use_resources = use_resources
        self._closers = list(closers)
        self._futures: dict[str, dict[str, Any]] = {}
        self._counted = time.monotonic()

    @property
    def window(self) -> int:
        """Points in flight: two per worker thread, recounted as workers come and go."""
        if time.monotonic() - self._counted > 5.0:
            self._counted = time.monotonic()
            try:
                workers = self.client.scheduler_info()["workers"].values()
                self.threads = max(1, sum(w.get("nthreads", 1) for w in workers))
            except Exception:       # noqa: BLE001 - keep the last count
                pass
        return max(2, 2 * self.threads)

    def submit(self, key: str, tasks: list[Task]) -> None:
        futs: dict[str, Any] = {}
        tag = uuid.uuid4().hex[:8]
        for t in tasks:
            args = [futs[a.name] if isinstance(a, Ref) else a for a in t.args]
            futs[t.name] = self.client.submit(t.fn, *args, key=f"{t.name}-{key[:16]}-{tag}", pure=False,
                                              resources=t.resources if self.use_resources else None)
        self._futures[key] = futs

    def wait(self, timeout: float) -> list[str]:
        from distributed import wait

        finals = {k: f["collect"] for k, f in self._futures.items()}
        if not finals:
            return []
        try:
            wait(list(finals.values()), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        return [k for k, f in finals.items() if f.done()]

    def result(self, key: str):
        futs = self._futures.pop(key)
        final = futs["collect"]
        try:
            if final.status == "error":
                err = final.exception()
                raise err
            if final.status == "cancelled":
                raise S.StepError("the point's tasks were cancelled (a worker or the scheduler went away)")
            return final.result()
        finally:
            for f in futs.values():
                f.release()

    def cancel(self, key: str) -> None:
        futs = self._futures.pop(key, {})
        if futs:
            self.client.cancel(list(futs.values()))

    def close(self) -> None:
        for key in list(self._futures):
            self.cancel(key)
        for close in self._closers:
            try:
                close()
            except Exception:       # noqa: BLE001 - teardown must not hide the sweep's result
                pass


class _LazyRunner:
    """A Dask runner whose cluster starts when the first point is submitted."""

    def __init__(self, start, name: str, threads: int):
        self._start, self.name, self.threads = start, name, threads
        self._runner = None

    @property
    def window(self) -> int:
        return self._runner.window if self._runner is not None else max(2, 2 * self.threads)

    def submit(self, key: str, tasks: list[Task]) -> None:
        if self._runner is None:
            self._runner = self._start()
            self.name, self.threads = self._runner.name, self._runner.threads
        self._runner.submit(key, tasks)

    def wait(self, timeout: float) -> list[str]:
        return self._runner.wait(timeout) if self._runner is not None else []

    def result(self, key: str):
        return self._runner.result(key)

    def cancel(self, key: str) -> None:
        if self._runner is not None:
            self._runner.cancel(key)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()


def _check_address(address: str) -> str:
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"scheduler must be an address such as tcp://HOST:PORT, got {address!r}")
    address = address.strip()
    if "://" not in address:
        address = "tcp://" + address
    proto, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    if proto not in ("tcp", "tls", "ws", "wss", "inproc", "ucx") or not host or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise ValueError(f"scheduler must be an address such as tcp://HOST:PORT, got {address!r}")
    return address


def _quiet_dask() -> None:
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny",
                 "distributed.core", "distributed.comm", "distributed.batched", "distributed.client"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _dask_runner(spec: ResolvedSpec, scheduler: str | None, workers: int | None, say) -> DaskRunner:
    from distributed import Client

    _quiet_dask()
    cl = spec.cluster
    timeout = cl.connect_timeout
    if scheduler is not None or cl.kind == "address":
        address = scheduler or cl.address
        try:
            client = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise ClusterError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s: {err}") from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            client.close()
            raise ClusterError(f"the Dask scheduler at {address} has no workers (waited {timeout:g} s); "
                               f"start some with: dask worker {address} --nthreads 1 "
                               "--resources 'verilator=1 yosys=1'") from None
        info = client.scheduler_info()["workers"]
        threads = sum(w.get("nthreads", 1) for w in info.values())
        have = all(all(r in (w.get("resources") or {}) for r in RESOURCES) for w in info.values())
        if not have:
            say(f"[yellow]note:[/] workers at {address} declare no {'/'.join(RESOURCES)} resources; builds and "
                "Yosys runs are not limited per worker (start workers with --resources 'verilator=1 yosys=1')")
        return DaskRunner(client, name=f"scheduler {address} ({len(info)} workers, {threads} threads)",
                          threads=threads, use_resources=have, closers=[client.close])
    if cl.kind in ("slurm", "pbs"):
        try:
            import dask_jobqueue
        except ImportError:
            raise ClusterError("cluster kind slurm/pbs needs dask-jobqueue: pip install 'hbmforge[sweep]'") from None
        cls = dask_jobqueue.SLURMCluster if cl.kind == "slurm" else dask_jobqueue.PBSCluster
        cluster = jobqueue_cluster(cls, cl.jobqueue)
        jobs = workers if workers is not None else (cl.workers or 1)
        cluster.scale(jobs=jobs)
        client = Client(cluster, timeout=timeout)
        threads = jobs * int(cl.jobqueue.get("cores", 1))
        return DaskRunner(client, name=f"{cl.kind} ({jobs} jobs)", threads=threads, use_resources=True,
                          closers=[client.close, cluster.close])
    from distributed import LocalCluster

    n = workers if workers is not None else (cl.workers or local_worker_count())
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, resources=dict(RESOURCES),
                           dashboard_address=":0", silence_logs=logging.ERROR)   # any free port
    client = Client(cluster, timeout=timeout)
    return DaskRunner(client, name=f"local cluster ({n} workers)", threads=n, use_resources=True,
                      closers=[client.close, cluster.close])


def jobqueue_cluster(cls, options: dict):
    """A dask-jobqueue cluster whose workers declare the sweep's resources (one of each per process)."""
    opts = dict(options)
    extra = list(opts.pop("worker_extra_args", []))
    if "--resources" not in extra:
        extra += ["--resources", " ".join(f"{k}={v}" for k, v in RESOURCES.items())]
    try:
        return cls(worker_extra_args=extra, **opts)
    except TypeError as err:
        raise ValueError(f"cluster.jobqueue: {err}") from None


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------

def _violation(layout) -> float:
    """How far the analytic estimate exceeds the board allowance (a fraction, > 0 when over)."""
    from hbmforge.budget import estimate_resources

    est = estimate_resources(layout)
    res = layout.config.board_info.resources
    frac = layout.config.max_utilization
    pairs = [(est.lut, res.lut), (est.ff, res.ff), (est.dsp, res.dsp), (est.bram36, res.bram36 + 8 * res.uram)]
    return max(need / max(1.0, have * frac) - 1.0 for need, have in pairs)


class _Sweep:
    def __init__(self, spec: ResolvedSpec, out: Path, runner, store: SweepStore, say, progress):
        self.spec, self.out, self.runner, self.store, self.say = spec, out, runner, store, say
        self.progress = progress
        self.search = make_search(spec, out)
        self.evaluator = get_evaluator(spec.workload.evaluator)
        self.identity = spec.identity()
        # stored results are reused; stored failures are tried again (a tool fixed, a worker back)
        self.known = {r.point_hash: r for r in store.rows() if r.status != "failed"}
        self.inflight: dict[str, dict] = {}       # point hash -> {"cands", "config", "layout", "plans", ...}
        self.evaluated = 0
        self.run_id = uuid.uuid4().hex
        self.objectives = spec.objective_list

    # -- one candidate --------------------------------------------------------------------------
    def _hash(self, config: dict, chash: str | None) -> str:
        ident = chash or json.dumps(config, sort_keys=True, default=str)
        return hashlib.sha256(f"{ident}:{self.identity}".encode()).hexdigest()

    def propose(self, cand: Candidate) -> None:
        from hbmforge.design import load_design
        from hbmforge.budget import check_budget

        config = self.spec.config_for(cand.params)
        try:
            layout = load_design(config, check_budget=False)
        except (ConfigError, TypeError) as err:
            text = str(err).split("\n", 1)[-1].strip()
            return self._record_now(cand, config, None, self._hash(config, None), "infeasible",
                                    f"invalid config: {text}", violation=1.0)
        phash = self._hash(config, layout.config_hash)
        if phash in self.inflight:                 # the same design again (random/Optuna): one evaluation
            self.inflight[phash]["cands"].append(cand)
            return
        if phash in self.known:
            self._tell(cand, self.known[phash])
            self.progress.advance(self.known[phash], reused=True)
            return
        try:
            if self.spec.constraints.board_budget:
                try:
                    check_budget(layout)
                except ConfigError as err:
                    raise Infeasible(str(err).split("\n", 1)[-1].strip().replace("\n  ", "; ")) from None
            plans = self.evaluator.plan(layout, self.spec.workload, self.spec.model)
        except Infeasible as err:
            viol = _violation(layout) if "budget exceeded" in str(err) else 1.0
            return self._record_now(cand, config, layout, phash, "infeasible", str(err), violation=viol)
        except Exception as err:     # noqa: BLE001 - an evaluator's bug fails the point, not the sweep
            return self._record_now(cand, config, layout, phash, "failed",
                                    f"plan failed: {type(err).__name__}: {err}")
        runs = list({r.key: r for p in plans for r in p.runs}.values())
        self.inflight[phash] = {"cands": [cand], "config": config, "layout": layout, "plans": plans,
                                "t0": time.monotonic(), "deadline": time.monotonic() + self.spec.cluster.point_timeout}
        self.runner.submit(phash, point_tasks(self.spec, config, runs))

    # -- results --------------------------------------------------------------------------------
    def _row(self, cand, config, layout, phash, status, reason, **kw) -> PointRow:
        return PointRow(point_hash=phash, index=cand.index, trial=cand.trial, status=status, reason=reason,
                        params=cand.params, config=config,
                        config_hash=layout.config_hash if layout is not None else None,
                        design_hash=layout.design_hash if layout is not None else None, **kw)

    def _record_now(self, cand, config, layout, phash, status, reason, violation=1.0) -> None:
        metrics = {}
        if layout is not None:
            metrics = {"macs_per_cycle": layout.macs_per_cycle, "clock_mhz": layout.config.clock}
            res = S.analytic_resources(layout)
            metrics.update({k: v for k, v in res.items() if k != "fractions"})
        row = self._row(cand, config, layout, phash, status, reason, metrics=metrics,
                        steps={"run": self.run_id, "violation": violation},
                        detail={"resource_source": "analytic model"} if metrics else {})
        self._finish(row, [cand])

    def _finish(self, row: PointRow, cands: list[Candidate]) -> None:
        self.store.add(row)
        self.known[row.point_hash] = row
        for c in cands:
            self._tell(c, row)
        self.progress.advance(row)
        self.progress.running(len(self.inflight))

    def _tell(self, cand: Candidate, row: PointRow) -> None:
        values = None
        if row.status != "failed" and all(row.metrics.get(o.metric) is not None for o in self.objectives):
            values = [float(row.metrics[o.metric]) for o in self.objectives]
        self.search.tell(cand, Outcome(status=row.status, values=values, reason=row.reason,
                                       violation=float(row.steps.get("violation", 1.0))))

    def _constraints(self, metrics: dict) -> tuple[str, float]:
        broken, viol = [], 0.0
        for name, bound in self.spec.constraints.max.items():
            v = metrics.get(name)
            if v is not None and v > bound:
                broken.append(f"{name} {v:.6g} > max {bound:g}")
                viol = max(viol, (v - bound) / max(abs(bound), 1e-12))
        for name, bound in self.spec.constraints.min.items():
            v = metrics.get(name)
            if v is not None and v < bound:
                broken.append(f"{name} {v:.6g} < min {bound:g}")
                viol = max(viol, (bound - v) / max(abs(bound), 1e-12))
        return "; ".join(broken), viol

    def complete(self, phash: str) -> None:
        info = self.inflight.pop(phash)
        cand, layout = info["cands"][0], info["layout"]
        seconds = time.monotonic() - info["t0"]
        try:
            parts = self.runner.result(phash)
        except Infeasible as err:
            row = self._row(cand, info["config"], layout, phash, "infeasible", str(err), seconds=seconds,
                            steps={"run": self.run_id, "violation": 1.0})
            self.evaluated += 1
            return self._finish(row, info["cands"])
        except Exception as err:     # noqa: BLE001 - a failed point is recorded, the sweep goes on
            reason = str(err) if isinstance(err, S.StepError) else f"{type(err).__name__}: {err}"
            row = self._row(cand, info["config"], layout, phash, "failed", reason, seconds=seconds,
                            steps={"run": self.run_id})
            self.evaluated += 1
            return self._finish(row, info["cands"])
        by = {p["step"]: p for p in parts if not p["step"].startswith("simulate")}
        sims = [p for p in parts if p["step"].startswith("simulate")]
        est = by["estimate"]
        metrics: dict[str, Any] = {"macs_per_cycle": layout.macs_per_cycle, "clock_mhz": layout.config.clock}
        metrics.update({k: v for k, v in est["resources"].items() if k != "fractions"})
        detail: dict[str, Any] = {"resource_source": est["source"], "fractions": est["resources"].get("fractions")}
        status, reason = "ok", ""
        try:
            sim_metrics, sim_detail = self.evaluator.combine(
                layout, self.spec.workload, self.spec.model, info["plans"], {s["key"]: s["result"] for s in sims})
            metrics.update(sim_metrics)
            detail.update(sim_detail)
        except Infeasible as err:
            status, reason = "infeasible", str(err)
        except Exception as err:     # noqa: BLE001
            status, reason = "failed", f"combine failed: {type(err).__name__}: {err}"
        violation = 0.0
        if status == "ok":
            reason, violation = self._constraints(metrics)
            if reason:
                status = "infeasible"
        lookups = [p for p in parts if p.get("hit") is not None and p["step"] in ("generate", "build", "estimate")]
        steps = {"run": self.run_id, "violation": violation,
                 "generate_s": by["generate"]["seconds"], "estimate_s": est["seconds"],
                 "build_s": by["build"]["seconds"] if "build" in by else None,
                 "simulate_s": round(sum(s["seconds"] for s in sims), 3),
                 "cache_hits": sum(bool(p["hit"]) for p in lookups), "cache_lookups": len(lookups),
                 "hits": {p["step"]: p["hit"] for p in lookups},
                 "workers": sorted({p["worker"] for p in parts})}
        row = self._row(cand, info["config"], layout, phash, status, reason, metrics=metrics, steps=steps,
                        detail=detail, seconds=seconds)
        self.evaluated += 1
        self._finish(row, info["cands"])

    def expire(self) -> None:
        now = time.monotonic()
        for phash in [h for h, i in self.inflight.items() if now > i["deadline"]]:
            info = self.inflight.pop(phash)
            self.runner.cancel(phash)
            row = self._row(info["cands"][0], info["config"], info["layout"], phash, "failed",
                            f"timed out after {self.spec.cluster.point_timeout:g} s (cluster.point_timeout)",
                            seconds=now - info["t0"], steps={"run": self.run_id})
            self.evaluated += 1
            self._finish(row, info["cands"])

    def run(self, stop: threading.Event) -> bool:
        """Evaluate points until the search is exhausted (True) or ``stop`` is set (False)."""
        exhausted = False
        while True:
            if stop.is_set():
                return False
            while not exhausted and len(self.inflight) < self.runner.window:
                cand = self.search.ask()
                if cand is None:
                    exhausted = True
                    break
                self.propose(cand)
            if not self.inflight:
                if exhausted:
                    return True
                continue
            self.progress.running(len(self.inflight))
            for phash in self.runner.wait(1.0):
                self.complete(phash)
            self.expire()


class _Progress:
    """A rich progress bar on stderr: points done (ok / infeasible / failed) and the ETA."""

    def __init__(self, console, total: int, done_before: int, title: str):
        self.counts = {"ok": 0, "infeasible": 0, "failed": 0}
        self._bar = None
        if console is None:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._bar = Progress(BarColumn(bar_width=12), MofNCompleteColumn(),
                             TextColumn("ok {task.fields[ok]} · infeasible {task.fields[infeasible]} · "
                                        "[red]failed {task.fields[failed]}[/] · running {task.fields[running]}"),
                             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                             console=console, transient=False)
        self._task = self._bar.add_task(title, total=total or None, completed=0, running=0, **self.counts)
        self._bar.start()

    def running(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, running=n)

    def advance(self, row: PointRow, reused: bool = False) -> None:
        self.counts[row.status] = self.counts.get(row.status, 0) + 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, **self.counts)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextmanager
def _stop_on_interrupt(say):
    """Ctrl-C (SIGINT) asks the sweep to stop: points in flight are cancelled, the finished ones
    are written; a second Ctrl-C interrupts at once. (Outside the main thread: no handler.)"""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        say("[yellow]interrupted[/]: stopping the sweep and writing the points done so far "
            "(Ctrl-C again to abort at once; --resume continues)")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, old)


def _resolve(spec) -> ResolvedSpec:
    if isinstance(spec, ResolvedSpec):
        return spec
    if isinstance(spec, (str, Path)):
        return load_spec(spec)
    if isinstance(spec, dict):
        return parse_spec(spec)
    raise TypeError(f"spec must be a sweep.yaml path, a spec mapping or a loaded spec, got {type(spec).__name__}")


def run_sweep(spec, *, output: str | Path | None = None, scheduler: str | None = None, workers: int | None = None,
              resume: bool = False, progress=True) -> SweepResult:
    """Run a design-space sweep and write its results; see docs/sweep.md.

    ``spec``: a ``sweep.yaml`` path, a spec mapping or a loaded spec. ``output``: the output
    directory (default: the spec's ``output`` or ``./sweep-<name>``). ``scheduler``: the address
    of an existing Dask scheduler (``tcp://HOST:PORT``). ``workers``: LocalCluster worker
    processes (default one per core; 0 = this process), or jobs for slurm/pbs. ``resume``:
    continue the sweep stored in ``output``. ``progress``: True (a bar on stderr), False, or a
    rich Console. Everything is checked before anything is written or started.
    """
    from rich.console import Console

    t0 = time.monotonic()
    spec = _resolve(spec)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    if scheduler is not None:
        scheduler = _check_address(scheduler)
        if workers is not None:
            raise ValueError("give scheduler or workers, not both: an existing cluster has its own workers")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    get_evaluator(spec.workload.evaluator)
    out = spec.output_dir(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    SweepStore.check(out, spec.identity(), resume=resume)
    console = progress if isinstance(progress, Console) else Console(stderr=True) if progress else None

    def say(msg: str) -> None:
        if console is not None:
            console.print(msg, highlight=False, soft_wrap=True)

    store = SweepStore(out)
    runner = None
    bar = None
    interrupted = False
    try:
        local = scheduler is None and spec.cluster.kind == "local"
        n_local = workers if workers is not None else spec.cluster.workers
        if local and n_local == 0:
            runner = InlineRunner()
        elif local or spec.cluster.kind in ("slurm", "pbs"):
            # started with the first point to evaluate: a resumed or all-infeasible sweep needs none
            n = n_local if local and n_local is not None else local_worker_count()
            jobs = workers if workers is not None else (spec.cluster.workers or 1)
            runner = _LazyRunner(lambda: _dask_runner(spec, scheduler, workers, say),
                                 f"local cluster ({n} workers)" if local else f"{spec.cluster.kind} ({jobs} jobs)",
                                 n if local else jobs * int(spec.cluster.jobqueue.get("cores", 1)))
        else:                                   # an existing scheduler: reached (and checked) now
            runner = _dask_runner(spec, scheduler, workers, say)
        store.open(spec.identity(), spec.to_json(), resume=resume)
        (out / "spec.json").write_text(json.dumps(spec.to_json(), indent=1) + "\n")
        sweep = _Sweep(spec, out, runner, store, say, None)
        total = sweep.search.total
        say(f"sweep {spec.name!r}: {total} points ({spec.search.method}), {runner.name}; results in {out}"
            + (f" (resuming: {len(sweep.known)} points stored)" if resume and sweep.known else ""))
        bar = _Progress(console, total, 0, spec.name)
        sweep.progress = bar
        with _stop_on_interrupt(say) as stop:
            try:
                interrupted = not sweep.run(stop)
            except KeyboardInterrupt:
                interrupted = True
        evaluated = sweep.evaluated
        run_id = sweep.run_id
    finally:
        if bar is not None:
            bar.stop()
        if runner is not None:
            runner.close()
    rows = store.rows() if store.is_open else []
    store.close()
    files = write_outputs(spec, rows, out)
    result = SweepResult(output=out, rows=rows, front=pareto_front(rows, spec.objective_list), files=files,
                         evaluated=evaluated, seconds=time.monotonic() - t0,
                         workers=getattr(runner, "threads", 1), cluster=getattr(runner, "name", ""),
                         objectives=[o.metric for o in spec.objective_list], interrupted=interrupted)
    result._run_id = run_id
    (out / "summary.json").write_text(json.dumps(result.summary(), indent=1, default=str) + "\n")
    if interrupted:
        raise KeyboardInterrupt
    return result


def write_outputs(spec: ResolvedSpec, rows: list[PointRow], out: Path) -> dict[str, Any]:
    """The table, the Pareto plots and the best configs of ``rows``."""
    objectives = spec.objective_list
    files: dict[str, Any] = {}
    if not rows:
        return files
    files["csv"], files["parquet"] = write_table(rows, objectives, out)
    title = f"sweep {spec.name}: " + " vs ".join(o.metric for o in objectives)
    files["pareto_png"] = plot_pareto_png(rows, objectives, out / "pareto.png", title)
    html = plot_pareto_html(rows, objectives, out / "pareto.html", title)
    if html is not None:
        files["pareto_html"] = html
    files["best"] = write_best_configs(rows, objectives, out, spec.name)
    return files
