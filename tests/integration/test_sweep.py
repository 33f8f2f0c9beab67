"""``hbmforge sweep`` end to end on the tiny designs: a LocalCluster, a real ``dask scheduler`` with
two ``dask worker`` processes reached by address, a run killed mid-sweep and resumed, failing
points recorded as failed, Optuna resumed with a bigger budget. Every point is generated, built
into a Verilator co-simulation and run layer by layer (the builds are cached by RTL hash)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from hbmforge.design import load_design
from hbmforge.flows.design_cache import cached_design, design_key
from hbmforge.flows.runner import run_linear
from hbmforge.flows.sweep import parse_spec, run_sweep
from hbmforge.flows.sweep.workload import LayerEvaluator, extrapolate
from hbmforge.sim.build import build_library
from hbmforge.sim.cache import BuildCache

from cli_helpers import invoke
from designs import tiny_sweep_spec_dict

pytestmark = pytest.mark.rtl

BIN = Path(sys.executable).parent
ROWS = (2, 4)


def _config(rows: int, max_k: int = 256) -> dict:
    return parse_spec(tiny_sweep_spec_dict()).config_for({"engines.0.rows": rows, "engines.0.max_k": max_k})


@pytest.fixture(scope="module")
def warm_tiny():
    """The two feasible points' designs and co-sim libraries, built once into the cache (in parallel)."""
    out: dict[int, dict] = {}
    errors: list[str] = []

    def build(rows: int) -> None:
        try:
            layout = load_design(_config(rows))
            design = cached_design(layout)
            out[rows] = {"layout": layout, "design": design,
                         "cosim": build_library(design, progress=False).directory}
        except Exception as err:     # noqa: BLE001 - reported below
            errors.append(f"rows={rows}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=build, args=(r,)) for r in ROWS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert set(out) == set(ROWS), f"building the tiny sweep designs failed: {errors}"
    return out


def _spec_file(tmp_path: Path, **top) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(tiny_sweep_spec_dict(**top)))
    return p


def _expected_cycles_per_token(rows: int) -> float:
    """The projection recomputed from direct runs of the layer runner (same shapes, same seed)."""
    spec = parse_spec(tiny_sweep_spec_dict())
    layout = load_design(_config(rows))
    cycles = {}
    total = 0.0
    for p in LayerEvaluator().plan(layout, spec.workload, spec.model):
        got = []
        for run in p.runs:
            if run.key not in cycles:
                cycles[run.key] = run_linear(layout.config, **run.kwargs, seed=0,
                                             backend_options={"progress": False})["cycles"]
            got.append(cycles[run.key])
        full = got[0] if len(got) == 1 else extrapolate(got[0], got[1], *p.axis_values, p.full)
        total += p.repeat * full
    return total / spec.workload.batch


def _check_results(result, out: Path) -> dict[int, float]:
    import pyarrow.parquet as pq

    status = {(r.params["engines.0.rows"], r.params["engines.0.max_k"]): r for r in result.rows}
    assert len(status) == 4
    for rows in ROWS:
        bad = status[(rows, 128)]
        assert bad.status == "infeasible" and "down_proj: k must be at most the engine's max_k 128" in bad.reason
        ok = status[(rows, 256)]
        assert ok.status == "ok", ok.reason
        assert ok.config_hash == load_design(ok.config).config_hash
        assert ok.metrics["tokens_per_s"] == pytest.approx(300e6 / ok.metrics["cycles_per_token"])
        assert 0 < ok.metrics["hbm_efficiency"] <= 1
    table = pq.read_table(out / "points.parquet").to_pylist()
    assert sorted(t["status"] for t in table) == ["infeasible", "infeasible", "ok", "ok"]
    assert len((out / "points.csv").read_text().splitlines()) == 5
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = result.files["best"]["tokens_per_s"]
    top = max((r for r in result.rows if r.status == "ok"), key=lambda r: r.metrics["tokens_per_s"])
    assert load_design(yaml.safe_load(best.read_text())).config_hash == top.config_hash
    return {rows: status[(rows, 256)].metrics["cycles_per_token"] for rows in ROWS}


def test_tiny_sweep_on_a_local_cluster_projects_the_per_layer_cosim(warm_tiny, tmp_path):
    result = run_sweep(_spec_file(tmp_path), output=tmp_path / "out", workers=2, progress=False)
    assert result.cluster.startswith("local cluster (2 workers)")
    got = _check_results(result, tmp_path / "out")
    for rows in ROWS:
        assert got[rows] == _expected_cycles_per_token(rows)
    workers = {w for r in result.rows for w in r.steps.get("workers", [])}
    assert workers and all(w.startswith("tcp://127.0.0.1:") for w in workers)


def test_extrapolated_layer_is_close_to_the_full_simulation(warm_tiny):
    cfg = warm_tiny[2]["layout"].config
    full = run_linear(cfg, m=1, k=256, n=128, wbits=4, backend_options={"progress": False})["cycles"]
    c32, c64 = (run_linear(cfg, m=1, k=256, n=n, wbits=4, backend_options={"progress": False})["cycles"]
                for n in (32, 64))
    assert abs(extrapolate(c32, c64, 32, 64, 128) - full) <= 0.02 * full


def test_repeated_sweep_rebuilds_and_regenerates_nothing(warm_tiny, tmp_path):
    result = run_sweep(_spec_file(tmp_path), output=tmp_path / "again", workers=0, progress=False)
    assert result.cluster == "this process"
    assert result.cache == {"hits": 4, "lookups": 4}          # 2 points x (design, co-sim build)
    assert _check_results(result, tmp_path / "again") == {r: _expected_cycles_per_token(r) for r in ROWS}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=20)


def test_same_sweep_runs_on_a_dask_scheduler_and_two_workers_by_address(warm_tiny, tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "dask.log", "w")
    procs = []
    try:
        procs.append(subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], stdout=log, stderr=log, start_new_session=True))
        for i in range(2):
            procs.append(subprocess.Popen(
                [BIN / "dask", "worker", address, "--nthreads", "1", "--name", f"w{i}", "--no-dashboard",
                 "--resources", "verilator=1 yosys=1"], stdout=log, stderr=log, start_new_session=True))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            addresses = set(client.scheduler_info()["workers"])
        res = invoke("sweep", _spec_file(tmp_path), "--scheduler", address, "-o", tmp_path / "out", "--json")
        assert res.exit_code == 0, res.output + (tmp_path / "dask.log").read_text()[-3000:]
        summary = json.loads(res.stdout)
        assert summary["cluster"].startswith(f"scheduler {address} (2 workers")
        assert (summary["ok"], summary["infeasible"], summary["failed"]) == (2, 2, 0)
        result = run_sweep(_spec_file(tmp_path), output=tmp_path / "out", scheduler=address, resume=True,
                           progress=False)
        assert result.evaluated == 0                      # all stored: nothing re-run
        workers = {w for r in result.rows for w in r.steps.get("workers", [])}
        assert workers and workers <= addresses
        assert _check_results(result, tmp_path / "out") == {r: _expected_cycles_per_token(r) for r in ROWS}
    finally:
        _stop(procs)
        log.close()


def _stored(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT params, status, finished FROM points ORDER BY seq").fetchall()
    except sqlite3.Error:
        return []


def test_killed_sweep_resumes_where_it_stopped(warm_tiny, tmp_path, monkeypatch):
    # a private cache holding the rows=2 design and both co-sim builds, not the rows=4 design: this
    # test holds that design's build lock, so the sweep stops there until it is killed
    cache = tmp_path / "cache"
    for kind, path in (("designs", warm_tiny[2]["design"]), ("cosim", warm_tiny[2]["cosim"]),
                       ("cosim", warm_tiny[4]["cosim"])):
        shutil.copytree(path, cache / kind / Path(path).name)
    layout4 = warm_tiny[4]["layout"]
    holding, release = threading.Event(), threading.Event()

    def slow_generation(out: Path) -> None:
        from hbmforge.flows.emit import generate

        holding.set()
        release.wait(timeout=600)
        generate(layout4.config, out)

    holder = threading.Thread(target=lambda: BuildCache("designs", root=cache).get_or_build(
        layout4.kernel, design_key(layout4), slow_generation))
    holder.start()
    assert holding.wait(timeout=60)
    spec, out = _spec_file(tmp_path), tmp_path / "out"
    proc = subprocess.Popen([BIN / "hbmforge", "sweep", spec, "--workers", "0", "-o", out],
                            env={**os.environ, "HBMFORGE_CACHE_DIR": str(cache)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sweep.log", "w"))
    try:
        deadline = time.monotonic() + 300
        while not any(s == "ok" for _, s, _ in _stored(out / "sweep.db")):
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()
            assert time.monotonic() < deadline, "the sweep stored no point in 300 s"
            time.sleep(0.2)
        time.sleep(1.0)
        assert proc.poll() is None                        # still waiting for the rows=4 design
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        release.set()
        holder.join(timeout=300)
    before = _stored(out / "sweep.db")
    assert len(before) == 3 and not (out / "points.csv").exists()
    monkeypatch.setenv("HBMFORGE_CACHE_DIR", str(cache))
    res = invoke("sweep", spec, "-o", out)
    assert res.exit_code == 2 and "--resume" in res.stderr           # no silent restart over a store
    result = run_sweep(spec, output=out, workers=0, resume=True, progress=False)
    assert result.evaluated == 1                          # only the point that was running
    assert _stored(out / "sweep.db")[:3] == before        # stored points untouched
    assert result.cache == {"hits": 2, "lookups": 2}
    assert _check_results(result, out) == {r: _expected_cycles_per_token(r) for r in ROWS}


class CrashOnFourRows(LayerEvaluator):
    """A workload step that dies on the rows=4 design (a tool crash on one design point)."""

    def run(self, run, config, **kw):
        if config["engines"][0]["rows"] == 4:
            raise RuntimeError("simulator crashed on this design")
        return super().run(run, config, **kw)


def test_failing_points_are_recorded_and_the_sweep_goes_on(warm_tiny, tmp_path, monkeypatch):
    spec = tiny_sweep_spec_dict()
    spec["workload"]["evaluator"] = f"{__name__}:CrashOnFourRows"
    result = run_sweep(spec, output=tmp_path / "one", workers=0, progress=False)
    by = {(r.params["engines.0.rows"], r.params["engines.0.max_k"]): r for r in result.rows}
    assert by[(2, 256)].status == "ok" and by[(4, 256)].status == "failed"
    assert by[(4, 256)].reason.startswith("simulate linear(") and "simulator crashed" in by[(4, 256)].reason
    assert [r.status for r in result.front] == ["ok"] and (tmp_path / "one" / "pareto.png").exists()
    # a broken tool on every worker: every feasible point fails with the reason, the table is still written
    monkeypatch.setenv("HBMFORGE_VERILATOR", str(tmp_path / "no-verilator"))
    res = invoke("sweep", _spec_file(tmp_path), "-o", tmp_path / "two", "--workers", "1")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "no point could be evaluated" in res.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "two" / "points.parquet").to_pylist()
    assert sorted(t["status"] for t in table) == ["failed", "failed", "infeasible", "infeasible"]
    assert all("build failed" in t["reason"] and "HBMFORGE_VERILATOR" in t["reason"]
               for t in table if t["status"] == "failed")
    # the tool fixed, --resume tries the failed points again and keeps the infeasible ones
    monkeypatch.delenv("HBMFORGE_VERILATOR")
    again = run_sweep(_spec_file(tmp_path), output=tmp_path / "two", workers=0, resume=True, progress=False)
    assert again.evaluated == 2 and (again.count("ok"), again.count("infeasible"), again.count("failed")) == (2, 2, 0)


def test_optuna_sweep_resumes_with_a_bigger_budget(warm_tiny, tmp_path):
    import optuna

    spec = tiny_sweep_spec_dict(search={"method": "nsga2", "trials": 4, "seed": 1, "population": 2})
    out = tmp_path / "out"
    first = run_sweep(spec, output=out, workers=0, progress=False)
    spec["search"]["trials"] = 7
    second = run_sweep(spec, output=out, workers=0, progress=False, resume=True)
    study = optuna.load_study(study_name="tiny_sweep", storage=f"sqlite:///{out / 'optuna.db'}")
    assert len(study.trials) == 7
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in study.trials)
    hashes = {r.point_hash for r in second.rows}
    assert len(hashes) == len(second.rows) <= 4 and len(first.rows) <= len(second.rows)
    feasible = [t for t in study.trials if t.user_attrs["status"] == "ok"]
    for t in feasible:
        assert t.params["engines.0.max_k"] == 256 and t.values[0] > 0
    for t in study.trials:
        if t.user_attrs["status"] == "infeasible":
            assert t.params["engines.0.max_k"] == 128


def test_slurm_example_submits_workers_that_declare_the_sweep_resources():
    from dask_jobqueue import SLURMCluster

    from hbmforge.flows.sweep import load_spec
    from hbmforge.flows.sweep.execute import jobqueue_cluster

    spec = load_spec(Path(__file__).parents[2] / "examples" / "sweep_slurm.yaml")
    assert spec.cluster.kind == "slurm"
    cluster = jobqueue_cluster(SLURMCluster, spec.cluster.jobqueue)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH" in script and "--resources" in script and "verilator=1 yosys=1" in script


@pytest.mark.slow
def test_yosys_backed_point_reports_the_estimate_and_its_depth(warm_tiny, tmp_path):
    from hbmforge.flows.estimate import estimate

    spec = tiny_sweep_spec_dict(parameters={"engines.0.rows": [2]}, estimate="yosys",
                                objectives=["tokens_per_s", "lut", "logic_depth", "fmax_estimate_mhz"])
    result = run_sweep(spec, output=tmp_path / "out", workers=0, progress=False)
    (row,) = result.rows
    assert row.status == "ok", row.reason
    rep = estimate(load_design(row.config).config)              # cached by RTL hash: no second Yosys run
    assert rep.cached and row.detail["resource_source"] == rep.source
    assert {k: row.metrics[k] for k in ("lut", "ff", "dsp", "bram", "uram")} == \
        {k: rep.total[k] for k in ("lut", "ff", "dsp", "bram", "uram")}
    assert row.metrics["logic_depth"] == max(rep.max_logic_levels().values())
    assert row.metrics["fmax_estimate_mhz"] == rep.fmax_estimate_mhz()
    assert row.steps["hits"]["estimate"] in (True, False)
