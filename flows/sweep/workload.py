"""Workload evaluation of a design point: a pluggable step.

An :class:`Evaluator` turns a workload into simulation runs for one design (``plan``, on the
client: it also says why a design cannot run the workload), runs each of them on a worker
(``run``) and combines their results into the point's metrics (``combine``). The built-in
``layers`` evaluator projects one decode step of a decoder model from per-layer co-simulations:

* every Linear of a block (``q/k/v/o_proj``, ``gate/up/down_proj``) and the LM head run with
  ``m = batch`` rows through :func:`hbmforge.flows.runner.run_linear`; the attention of one
  sequence at ``context`` tokens through :func:`hbmforge.flows.attention_runner.run_attention`;
* a Linear wider than ``max_columns`` outputs is run at ``max_columns / 2`` and ``max_columns``
  columns and its cycles and bytes extrapolated linearly to the full width (the same for the
  attention's KV heads beyond ``max_kv_heads``); the fit is exact when a run is affine in that
  width (weights stream column by column), and ``benchmarks/sweep.py`` measures its error;
* ``cycles per step = sum(layer cycles x repeats)`` (block layers x ``num_hidden_layers``, the
  attention also x ``batch``, the LM head once). Vector ops (norms, activations, residuals)
  and the host's work between layers are not counted: a **projection**, stated as such.

A whole-model evaluator (one program per block, issue 10) registers with
:func:`register_evaluator` and is chosen by ``workload.evaluator`` in the spec; a
``"module:attribute"`` name is imported (on the client and on every worker).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from hbmforge.layout import DesignLayout

from .spec import ModelDims, Workload

__all__ = ["Infeasible", "SimRun", "LayerPlan", "Evaluator", "LayerEvaluator", "EVALUATORS",
           "register_evaluator", "get_evaluator", "extrapolate"]


class Infeasible(Exception):
    """The design cannot run the workload (or breaks a constraint); the message says why."""


@dataclass(frozen=True)
class SimRun:
    """One simulation run: a runner kind and its keyword arguments (a task on a worker)."""

    kind: str
    args: tuple[tuple[str, Any], ...]

    @property
    def kwargs(self) -> dict:
        return dict(self.args)

    @property
    def key(self) -> str:
        return self.kind + "(" + ",".join(f"{k}={v}" for k, v in self.args) + ")"


@dataclass(frozen=True)
class LayerPlan:
    """A layer of the workload: its full size, how often a decode step runs it, and the runs
    that measure it (one exact run, or two along ``axis`` to extrapolate to ``full``)."""

    name: str
    kind: str
    dims: dict
    repeat: int
    runs: tuple[SimRun, ...]
    axis: str | None = None
    axis_values: tuple[int, ...] = ()
    full: int = 0
    extra: dict = field(default_factory=dict)


def extrapolate(v1: float, v2: float, x1: int, x2: int, x: int) -> float:
    """The value at ``x`` of the line through ``(x1, v1)`` and ``(x2, v2)``."""
    return v2 + (v2 - v1) * (x - x2) / (x2 - x1)


class Evaluator:
    """The pluggable workload step (see the module docstring)."""

    name = "abstract"
    #: what the metrics are (a projection, a measurement): stored with every point
    kind = ""

    def plan(self, layout: DesignLayout, workload: Workload, model: ModelDims) -> list[LayerPlan]:
        raise NotImplementedError

    def run(self, run: SimRun, config: dict, *, timeout: float, seed: int, build_jobs: int) -> dict:
        raise NotImplementedError

    def combine(self, layout: DesignLayout, workload: Workload, model: ModelDims, plans: list[LayerPlan],
                results: dict[str, dict]) -> tuple[dict[str, float], dict]:
        raise NotImplementedError


def _engine_index(cfg, kind: str) -> int:
    return next(i for i, e in enumerate(cfg.engines) if e.kind == kind)


class LayerEvaluator(Evaluator):
    """Per-layer co-simulation of one decode step, summed over the model (a projection)."""

    name = "layers"
    kind = "projection: sum of per-layer co-sim runs (vector ops and host work between layers not counted)"

    # -- plan (client) --------------------------------------------------------------------------
    def plan(self, layout, workload, model):
        cfg = layout.config
        hd, qh, kvh = model.head_size, model.num_attention_heads, model.kv_heads
        shapes = {
            "q_proj": (model.hidden_size, qh * hd), "k_proj": (model.hidden_size, kvh * hd),
            "v_proj": (model.hidden_size, kvh * hd), "o_proj": (qh * hd, model.hidden_size),
            "gate_proj": (model.hidden_size, model.intermediate_size),
            "up_proj": (model.hidden_size, model.intermediate_size),
            "down_proj": (model.intermediate_size, model.hidden_size),
            "lm_head": (model.hidden_size, model.vocab_size or 0),
        }
        plans = []
        for name in workload.layer_names(model):
            if name == "attention":
                plans.append(self._attention(cfg, workload, model))
                continue
            k, n = shapes[name]
            if n == 0:
                raise Infeasible("lm_head needs the model's vocab_size")
            plans.append(self._linear(cfg, workload, name, k, n,
                                      repeat=1 if name == "lm_head" else model.num_hidden_layers))
        return plans

    def _linear(self, cfg, wl: Workload, name: str, k: int, n: int, repeat: int) -> LayerPlan:
        dims = {"m": wl.batch, "k": k, "n": n, "wbits": wl.weight_bits}
        if n <= wl.max_columns:
            plan = LayerPlan(name, "linear", dims, repeat, (self._lin_run(dims, n),))
        else:
            xs = (wl.max_columns // 2, wl.max_columns)
            plan = LayerPlan(name, "linear", dims, repeat, tuple(self._lin_run(dims, x) for x in xs),
                             axis="n", axis_values=xs, full=n)
        _runnable(cfg, name, plan, _check_linear)
        return plan

    @staticmethod
    def _lin_run(dims: dict, n: int) -> SimRun:
        return SimRun("linear", (("m", dims["m"]), ("k", dims["k"]), ("n", n), ("wbits", dims["wbits"])))

    def _attention(self, cfg, wl: Workload, model: ModelDims) -> LayerPlan:
        att = cfg.attention
        hd, qh, kvh = model.head_size, model.num_attention_heads, model.kv_heads
        if att is not None and hd != att.head_dim:
            raise Infeasible(f"the model's head_dim {hd} differs from engines.{_engine_index(cfg, 'attention')}"
                             f".head_dim {att.head_dim}")
        group = qh // kvh
        dims = {"ctx": wl.context, "n_q": 1, "q_heads": qh, "kv_heads": kvh, "kv_bits": wl.kv_bits,
                "window": wl.window, "sink": wl.sink}

        def run(h: int) -> SimRun:
            d = dict(dims, q_heads=h * group, kv_heads=h)
            return SimRun("attention", tuple(d.items()))

        repeat = model.num_hidden_layers * wl.batch
        if kvh <= wl.max_kv_heads:
            plan = LayerPlan("attention", "attention", dims, repeat, (run(kvh),))
        else:
            xs = (wl.max_kv_heads // 2, wl.max_kv_heads)
            plan = LayerPlan("attention", "attention", dims, repeat, tuple(run(x) for x in xs),
                             axis="kv_heads", axis_values=xs, full=kvh)
        _runnable(cfg, "attention", plan, _check_attention)
        return plan

    # -- run (worker) ---------------------------------------------------------------------------
    def run(self, run, config, *, timeout, seed, build_jobs):
        from hbmforge.design import load_design
        from hbmforge.sim.build import BuildOptions

        cfg = load_design(config, check_budget=False).config
        options = {"progress": False, "build_options": BuildOptions(jobs=build_jobs)}
        if run.kind == "linear":
            from hbmforge.flows.runner import run_linear

            r = run_linear(cfg, **run.kwargs, seed=seed, timeout=timeout, backend_options=options)
            stream, width = r["weight_bytes_read"], r["weight_ports"] * cfg.data_width // 8
        elif run.kind == "attention":
            from hbmforge.flows.attention_runner import run_attention

            r = run_attention(cfg, **run.kwargs, seed=seed, timeout=timeout, backend_options=options)
            stream, width = r["kv_bytes_read"], r["kv_ports"] * cfg.data_width // 8
        else:
            raise ValueError(f"unknown run kind {run.kind!r}")
        return {"cycles": r["cycles"], "stream_bytes": stream, "stream_bytes_per_cycle": width,
                "bytes_read": r["bytes_read"], "bytes_written": r["bytes_written"],
                "golden_mismatches": r["golden_mismatches"], "rel_err_vs_float": r["rel_err_vs_float"],
                "sim_wall_seconds": r["sim_wall_seconds"]}

    # -- combine (client) -----------------------------------------------------------------------
    _ADDITIVE = ("cycles", "stream_bytes", "bytes_read", "bytes_written")

    def combine(self, layout, workload, model, plans, results):
        cfg = layout.config
        step = {k: 0.0 for k in self._ADDITIVE}
        capacity = 0.0
        mismatches = 0
        layers = {}
        for p in plans:
            got = [results[r.key] for r in p.runs]
            mismatches += sum(g["golden_mismatches"] for g in got)
            if len(got) == 1:
                full = {k: float(got[0][k]) for k in self._ADDITIVE}
            else:
                x1, x2 = p.axis_values
                full = {k: extrapolate(got[0][k], got[1][k], x1, x2, p.full) for k in self._ADDITIVE}
            for k in self._ADDITIVE:
                step[k] += p.repeat * full[k]
            capacity += p.repeat * full["cycles"] * got[-1]["stream_bytes_per_cycle"]
            layers[p.name] = {"cycles": full["cycles"], "repeat": p.repeat, "dims": p.dims,
                              "extrapolated": None if p.axis is None else
                              {"axis": p.axis, "simulated": list(p.axis_values), "full": p.full},
                              "rel_err_vs_float": max(g["rel_err_vs_float"] for g in got)}
        if mismatches:
            raise RuntimeError(f"the RTL disagrees with the golden model in {mismatches} outputs "
                               "(a bug: please report it)")
        cycles = step["cycles"]
        hz = cfg.clock * 1e6
        metrics = {
            "cycles_per_token": cycles / workload.batch,
            "tokens_per_s": workload.batch * hz / cycles if cycles else 0.0,
            "hbm_efficiency": step["stream_bytes"] / capacity if capacity else 0.0,
            "hbm_gbytes_per_s": step["bytes_read"] * hz / cycles / 1e9 if cycles else 0.0,
            "step_cycles": cycles,
        }
        return metrics, {"layers": layers, "kind": self.kind}


def _check_linear(cfg, **kw) -> None:
    from hbmforge.flows.runner import check_linear_shape

    check_linear_shape(cfg, kw["m"], kw["k"], kw["n"], kw["wbits"])


def _check_attention(cfg, **kw) -> None:
    from hbmforge.flows.attention_runner import _check

    _check(cfg, kw["ctx"], kw["n_q"], kw["q_heads"], kw["kv_heads"], kw["kv_bits"], kw["window"], kw["sink"])


def _runnable(cfg, name: str, plan: LayerPlan, check) -> None:
    """The runner's own argument checks on every run of ``plan``: a design the runner would refuse
    is infeasible, with the runner's reason."""
    for run in plan.runs:
        try:
            check(cfg, **run.kwargs)
        except ValueError as err:
            raise Infeasible(f"{name}: {err}") from None


EVALUATORS: dict[str, Evaluator] = {"layers": LayerEvaluator()}


def register_evaluator(name: str, evaluator: Evaluator) -> None:
    """Make ``evaluator`` available as ``workload.evaluator: name`` (in this process)."""
    if not isinstance(evaluator, Evaluator):
        raise TypeError(f"evaluator must be an Evaluator, got {type(evaluator).__name__}")
    EVALUATORS[name] = evaluator


def get_evaluator(name: str) -> Evaluator:
    """A registered evaluator, or ``module:attribute`` imported (an Evaluator instance or class)."""
    if name in EVALUATORS:
        return EVALUATORS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"workload.evaluator {name!r} cannot be imported: {err}") from None
        if isinstance(obj, type) and issubclass(obj, Evaluator):
            obj = obj()
        if not isinstance(obj, Evaluator):
            raise ValueError(f"workload.evaluator {name!r} is not an Evaluator")
        EVALUATORS[name] = obj
        return obj
    raise ValueError(f"workload.evaluator must be one of {', '.join(EVALUATORS)} or 'module:attribute', "
                     f"got {name!r}")
