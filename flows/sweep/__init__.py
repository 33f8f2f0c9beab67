"""Design-space exploration: ``hbmforge sweep`` on Dask, with Optuna search, a resumable store
and Pareto plots (docs/sweep.md).

    from hbmforge.flows.sweep import run_sweep
    result = run_sweep("examples/sweep_u280.yaml")            # a LocalCluster, one worker per core
    result = run_sweep(spec, scheduler="tcp://head:8786")       # an existing Dask cluster
    print(result.summary()["pareto"])

Modules: :mod:`.spec` (the ``sweep.yaml`` model and its JSON Schema), :mod:`.search` (grid,
random, Optuna), :mod:`.workload` (the pluggable workload evaluation), :mod:`.steps` (the tasks
of a point), :mod:`.execute` (clusters and the sweep loop), :mod:`.store` (the resumable results
table), :mod:`.results` (CSV/Parquet, Pareto plots, best configs).
"""
from .execute import ClusterError, SweepResult, run_sweep
from .spec import METRICS, SweepSpecError, load_spec, parse_spec, sweep_schema
from .store import StoreError
from .workload import Evaluator, Infeasible, register_evaluator

__all__ = ["run_sweep", "SweepResult", "ClusterError", "StoreError", "SweepSpecError", "load_spec", "parse_spec",
           "sweep_schema", "METRICS", "Evaluator", "Infeasible", "register_evaluator"]
