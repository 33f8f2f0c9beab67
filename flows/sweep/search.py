"""Choosing the design points: every grid point, seeded random samples, or Optuna.

All three hand out :class:`Candidate` points one at a time (``ask``) and hear how each went
(``tell``), so the executor keeps a cluster busy with several points in flight. Grid and random
orders are deterministic (the seed), so a resumed sweep recomputes the same list and skips the
points its results table holds. Optuna (NSGA-II or TPE, multi-objective) keeps its study in
SQLite beside the table; a resumed study first re-runs the trials a killed run left running.
Infeasible points reach Optuna as constraint violations (``Trial.set_constraint``: feasible
points dominate), failed points as failed trials.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spec import Range, ResolvedSpec, domain_values, grid_points

__all__ = ["Candidate", "Outcome", "GridSearch", "RandomSearch", "OptunaSearch", "make_search"]


@dataclass
class Candidate:
    params: dict[str, Any]
    trial: int | None = None          # Optuna trial number
    index: int = 0                    # order in which the search proposed it


@dataclass
class Outcome:
    status: str                       # "ok", "infeasible", "failed"
    values: list[float] | None = None # objective values (ok)
    violation: float = 1.0            # infeasible: how far outside the constraints (> 0)
    reason: str = ""


class GridSearch:
    def __init__(self, spec: ResolvedSpec):
        pts = grid_points(spec.spec)
        self._points = pts[:spec.search.trials] if spec.search.trials else pts
        self._next = 0
        self.total = len(self._points)

    def ask(self) -> Candidate | None:
        if self._next >= len(self._points):
            return None
        c = Candidate(self._points[self._next], index=self._next)
        self._next += 1
        return c

    def tell(self, cand: Candidate, outcome: Outcome) -> None:
        pass

    def close(self) -> None:
        pass


def _sample(rng: random.Random, dom) -> Any:
    if isinstance(dom, list):
        return dom[rng.randrange(len(dom))]
    if dom.step is not None:
        vals = domain_values(dom)
        return vals[rng.randrange(len(vals))]
    if dom.is_int:
        if dom.log:
            return int(round(math.exp(rng.uniform(math.log(dom.low), math.log(dom.high)))))
        return rng.randint(dom.low, dom.high)
    if dom.log:
        return math.exp(rng.uniform(math.log(dom.low), math.log(dom.high)))
    return rng.uniform(dom.low, dom.high)


class RandomSearch(GridSearch):
    def __init__(self, spec: ResolvedSpec):
        rng = random.Random(spec.search.seed)
        self._points = [{p: _sample(rng, d) for p, d in spec.parameters.items()} for _ in range(spec.search.trials)]
        self._next = 0
        self.total = len(self._points)


class OptunaSearch:
    """Multi-objective Optuna search (NSGA-II or TPE) with the constraints as trial constraints."""

    def __init__(self, spec: ResolvedSpec, storage_path: Path):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        s = spec.search
        if s.method == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(population_size=s.population or max(2, min(20, s.trials)),
                                                    seed=s.seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=max(1, min(10, s.trials // 3)))
        self._optuna = optuna
        self._senses = [o.sense for o in spec.objective_list]
        self.study = optuna.create_study(
            study_name=spec.name, storage=f"sqlite:///{storage_path}", sampler=sampler, load_if_exists=True,
            directions=self._senses)
        self._dists: dict[str, Any] = {}
        self._encoded: dict[str, bool] = {}
        for path, dom in spec.parameters.items():
            self._dists[path], self._encoded[path] = self._distribution(dom)
        self.total = s.trials
        # trials a killed run left running: evaluate them again first (same numbers, same params)
        running = self._optuna.trial.TrialState.RUNNING
        self._pending = [t for t in self.study.get_trials(deepcopy=False, states=(running,))]

    def _distribution(self, dom) -> tuple[Any, bool]:
        d = self._optuna.distributions
        if isinstance(dom, Range):
            if dom.is_int:
                return d.IntDistribution(dom.low, dom.high, step=dom.step or 1, log=dom.log), False
            return d.FloatDistribution(dom.low, dom.high, step=dom.step, log=dom.log), False
        if all(isinstance(c, (bool, int, float, str)) for c in dom):
            return d.CategoricalDistribution(list(dom)), False
        return d.CategoricalDistribution([json.dumps(c) for c in dom]), True   # lists: by their JSON text

    def _decode(self, params: dict) -> dict:
        return {p: json.loads(v) if self._encoded[p] else v for p, v in params.items()}

    def _count(self) -> int:
        return len(self.study.get_trials(deepcopy=False))

    def ask(self) -> Candidate | None:
        if self._pending:
            t = self._pending.pop(0)
            return Candidate(self._decode(dict(t.params)), trial=t.number, index=t.number)
        if self._count() >= self.total:
            return None
        t = self.study.ask(self._dists)
        return Candidate(self._decode(dict(t.params)), trial=t.number, index=t.number)

    def _trial(self, number: int):
        frozen = self.study.get_trials(deepcopy=False)[number]
        return self._optuna.trial.Trial(self.study, frozen._trial_id)

    def tell(self, cand: Candidate, outcome: Outcome) -> None:
        state = self._optuna.trial.TrialState
        trial = self._trial(cand.trial)
        if trial.number != cand.trial:
            raise RuntimeError(f"optuna trial {cand.trial} not found in the study")
        trial.set_user_attr("status", outcome.status)
        if outcome.reason:
            trial.set_user_attr("reason", outcome.reason[:2000])
        if outcome.status == "failed":
            self.study.tell(trial, state=state.FAIL)
            return
        # every told trial carries the constraint, so the samplers compare like with like
        trial.set_constraint("feasible", 0.0 if outcome.status == "ok" else max(outcome.violation, 1e-9))
        values = outcome.values
        if values is None:                      # never evaluated: the worst values
            values = [math.inf if s == "minimize" else -math.inf for s in self._senses]
        self.study.tell(trial, values)

    def close(self) -> None:
        pass


def make_search(spec: ResolvedSpec, out_dir: Path):
    method = spec.search.method
    if method == "grid":
        return GridSearch(spec)
    if method == "random":
        return RandomSearch(spec)
    return OptunaSearch(spec, out_dir / "optuna.db")
