"""What a sweep writes: the table of every point (CSV and Parquet), the Pareto front as a PNG
(matplotlib) and an interactive HTML page (plotly, when installed), and the best config per
objective as YAML ready for ``hbmforge gen``.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from hbmforge.config import dump_yaml

from .spec import METRICS, Objective
from .store import PointRow

__all__ = ["pareto_front", "table_rows", "write_table", "plot_pareto_png", "plot_pareto_html",
           "write_best_configs", "STEP_NAMES"]

STEP_NAMES = ("generate", "estimate", "build", "simulate")


def _value(row: PointRow, obj: Objective) -> float | None:
    v = row.metrics.get(obj.metric)
    return None if v is None or not math.isfinite(v) else float(v)


def _dominates(a: list[float], b: list[float], senses: list[str]) -> bool:
    better = False
    for x, y, s in zip(a, b, senses):
        if s == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def pareto_front(rows: list[PointRow], objectives: list[Objective]) -> list[PointRow]:
    """The feasible points no other feasible point dominates (all objectives at least as good, one
    better), in table order."""
    senses = [o.sense for o in objectives]
    pts = [(r, [_value(r, o) for o in objectives]) for r in rows if r.status == "ok"]
    pts = [(r, v) for r, v in pts if None not in v]
    return [r for r, v in pts if not any(_dominates(w, v, senses) for _, w in pts if w is not v)]


def _cell(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def table_rows(rows: list[PointRow], objectives: list[Objective]) -> tuple[list[str], list[dict]]:
    """(columns, one flat dict per point): identity, parameters, metrics, steps, the Pareto flag."""
    front = {r.point_hash for r in pareto_front(rows, objectives)}
    params = list(dict.fromkeys(p for r in rows for p in r.params))
    metric_names = [m for m in METRICS if any(m in r.metrics for r in rows)]
    extra = sorted({m for r in rows for m in r.metrics if m not in METRICS and not isinstance(r.metrics[m], dict)})
    cols = (["index", "trial", "status", "reason", "config_hash", "design_hash", "point_hash"]
            + [f"param.{p}" for p in params] + metric_names + extra + ["pareto"]
            + [f"{s}_s" for s in STEP_NAMES] + ["cache_hits", "cache_lookups", "workers", "seconds"])
    out = []
    for r in rows:
        d: dict[str, Any] = {"index": r.index, "trial": r.trial, "status": r.status, "reason": r.reason,
                             "config_hash": r.config_hash, "design_hash": r.design_hash,
                             "point_hash": r.point_hash}
        for p in params:
            d[f"param.{p}"] = _cell(r.params.get(p))
        for m in metric_names + extra:
            d[m] = r.metrics.get(m)
        d["pareto"] = r.point_hash in front
        for s in STEP_NAMES:
            d[f"{s}_s"] = r.steps.get(f"{s}_s")
        d["cache_hits"] = r.steps.get("cache_hits")
        d["cache_lookups"] = r.steps.get("cache_lookups")
        d["workers"] = ",".join(r.steps.get("workers", []))
        d["seconds"] = r.seconds
        out.append(d)
    return cols, out


def _arrow_type(values: list):
    import pyarrow as pa

    vals = [v for v in values if v is not None]
    if not vals:
        return pa.string()
    if all(isinstance(v, bool) for v in vals):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return pa.int64()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return pa.float64()
    return pa.string()


def write_table(rows: list[PointRow], objectives: list[Objective], out_dir: Path) -> tuple[Path, Path]:
    """``points.csv`` and ``points.parquet`` (columns typed: ints, floats, bools, text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols, data = table_rows(rows, objectives)
    csv_path, pq_path = out_dir / "points.csv", out_dir / "points.parquet"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for d in data:
            w.writerow({k: "" if d.get(k) is None else d.get(k) for k in cols})
    arrays = {}
    for c in cols:
        values = [d.get(c) for d in data]
        t = _arrow_type(values)
        if t == pa.string():
            values = [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values]
        elif t == pa.float64():
            values = [None if v is None else float(v) for v in values]
        arrays[c] = pa.array(values, type=t)
    pq.write_table(pa.table(arrays), pq_path)
    return csv_path, pq_path


def _label(obj: Objective) -> str:
    m = METRICS[obj.metric]
    arrow = "higher" if obj.sense == "maximize" else "lower"
    return f"{obj.metric} [{m.unit}] ({arrow} is better)"


def _point_text(r: PointRow) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in r.params.items())


def plot_pareto_png(rows: list[PointRow], objectives: list[Objective], path: Path, title: str) -> Path:
    """The feasible points and the Pareto front: one objective against the point order, two as a
    scatter with the front joined, more as every pair of objectives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.status == "ok" and all(_value(r, o) is not None for o in objectives)]
    front = pareto_front(rows, objectives)
    bad = sum(r.status != "ok" for r in rows)
    sub = f"{len(ok)} feasible points, {len(front)} on the front, {bad} infeasible or failed"
    if len(objectives) == 1:
        o = objectives[0]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.scatter([r.index for r in ok], [_value(r, o) for r in ok], c="0.6", s=18, label="feasible points")
        ax.scatter([r.index for r in front], [_value(r, o) for r in front], c="C3", s=40, label="best")
        ax.set_xlabel("point (search order)")
        ax.set_ylabel(_label(o))
        ax.legend(loc="best", fontsize=8)
        axes = [ax]
    else:
        pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
        n = len(pairs)
        cols = min(3, n)
        nrows = math.ceil(n / cols)
        fig, axs = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.8 * nrows), squeeze=False)
        axes = [a for row in axs for a in row]
        for a in axes[n:]:
            a.set_visible(False)
        for a, (i, j) in zip(axes, pairs):
            oi, oj = objectives[i], objectives[j]
            a.scatter([_value(r, oi) for r in ok], [_value(r, oj) for r in ok], c="0.6", s=18,
                      label="feasible points")
            fx = sorted(((_value(r, oi), _value(r, oj)) for r in front))
            a.scatter([x for x, _ in fx], [y for _, y in fx], c="C3", s=40, zorder=3, label="Pareto front")
            if len(objectives) == 2 and len(fx) > 1:
                a.step([x for x, _ in fx], [y for _, y in fx], where="post", c="C3", lw=1)
            a.set_xlabel(_label(oi), fontsize=8)
            a.set_ylabel(_label(oj), fontsize=8)
            a.grid(alpha=0.3)
        axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"{title}\n{sub}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto_html(rows: list[PointRow], objectives: list[Objective], path: Path, title: str) -> Path | None:
    """The same as an interactive plotly page (hover: the point's parameters); None without plotly."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        return None
    ok = [r for r in rows if r.status == "ok" and all(_value(r, o) is not None for o in objectives)]
    front = {r.point_hash for r in pareto_front(rows, objectives)}
    groups = [("feasible points", [r for r in ok if r.point_hash not in front], "#999999"),
              ("Pareto front", [r for r in ok if r.point_hash in front], "#d62728")]
    fig = go.Figure()
    if len(objectives) <= 2:
        ox = None if len(objectives) == 1 else objectives[0]
        oy = objectives[-1]
        for name, pts, color in groups:
            fig.add_trace(go.Scatter(
                x=[r.index if ox is None else _value(r, ox) for r in pts], y=[_value(r, oy) for r in pts],
                mode="markers", name=name, marker={"color": color, "size": 9},
                text=[f"#{r.index} {_point_text(r)}<br>config {r.config_hash[:12]}" for r in pts],
                hoverinfo="text+x+y"))
        fig.update_layout(xaxis_title="point" if ox is None else _label(ox), yaxis_title=_label(oy))
    else:
        for name, pts, color in groups:
            fig.add_trace(go.Splom(
                dimensions=[{"label": o.metric, "values": [_value(r, o) for r in pts]} for o in objectives],
                name=name, marker={"color": color, "size": 7},
                text=[f"#{r.index} {_point_text(r)}" for r in pts]))
    fig.update_layout(title=title)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def write_best_configs(rows: list[PointRow], objectives: list[Objective], out_dir: Path,
                       sweep_name: str) -> dict[str, Path]:
    """``best/<metric>.yaml``: the feasible point best in each objective, as an accelerator config."""
    best_dir = out_dir / "best"
    written = {}
    for o in objectives:
        cands = [(r, _value(r, o)) for r in rows if r.status == "ok" and _value(r, o) is not None]
        if not cands:
            continue
        r, v = (max if o.sense == "maximize" else min)(cands, key=lambda c: c[1])
        best_dir.mkdir(parents=True, exist_ok=True)
        p = best_dir / f"{o.metric}.yaml"
        unit = METRICS[o.metric].unit
        header = (f"# best {o.metric} ({o.sense}) of sweep {sweep_name!r}: {v:.6g} {unit}\n"
                  f"# point #{r.index}: {_point_text(r)}\n"
                  f"# config hash {r.config_hash}\n"
                  f"# generate it with: hbmforge gen {p.name} -o <dir>\n")
        p.write_text(header + dump_yaml(r.config))
        written[o.metric] = p
    return written
