"""Verification depth per example config: RTL line/toggle coverage, functional coverage, formal proofs.

Runs :func:`hbmforge.flows.verify.verify` (formal proofs of the shell, the cocotb regression with
the closure bench on a Verilator coverage build, functional coverage) on each accelerator config
of ``examples/`` (or the ones named) and prints one JSON object per metric:

* ``rtl_line_coverage``, ``rtl_toggle_coverage``: covered / total Verilator points (target line >= 0.95);
* ``functional_coverage_bins_hit``: bins hit / bins (target 1.0; the missing bins are in ``detail``);
* ``formal_properties_proved``: proved properties, with the total and each proof's depth;
* ``formal_seconds``: wall time of the proofs.

    python benchmarks/verify.py [CONFIG.yaml ...] [--out DIR] [--no-formal] [--cases N] [--scale small|full]

A coverage build of a large config takes many minutes (Verilator with line and toggle counters).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def example_configs() -> list[Path]:
    """The accelerator configs of examples/ (sweep specs left out), smallest design first."""
    from hbmforge.config import load_config

    found = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        try:
            cfg = load_config(path)
        except Exception:
            continue                                  # a sweep spec, not an accelerator config
        size = sum(getattr(e, "lanes", 0) * getattr(e, "rows", 1) for e in cfg.engines) + 10_000 * len(cfg.engines)
        found.append((size, path))
    return [p for _s, p in sorted(found)]


def emit(bench: str, metric: str, value, unit: str, **extra) -> None:
    print(json.dumps({"bench": bench, "metric": metric, "value": value, "unit": unit, **extra}), flush=True)


def main(argv=None) -> int:
    from hbmforge.config import load_config
    from hbmforge.flows.verify import verify

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=Path("verify-bench"))
    ap.add_argument("--no-formal", action="store_true")
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--scale", choices=("small", "full"), default="small")
    args = ap.parse_args(argv)
    for path in args.configs or example_configs():
        cfg = load_config(path)
        rep = verify(cfg, out_dir=args.out / path.stem, formal=not args.no_formal, scale=args.scale,
                     cases=args.cases)
        j = rep.to_json()
        bench = f"verify:{path.name}"
        if j["rtl_line_coverage"] is not None:
            emit(bench, "rtl_line_coverage", round(j["rtl_line_coverage"], 4), "ratio",
                 points=j["line_points"], target=0.95, modules_below_target=j["modules_below_target"])
            emit(bench, "rtl_toggle_coverage", round(j["rtl_toggle_coverage"], 4), "ratio", points=j["toggle_points"])
        if j["functional_coverage_bins_hit"] is not None:
            fb = j["functional_bins"]
            emit(bench, "functional_coverage_bins_hit", round(j["functional_coverage_bins_hit"], 4), "ratio",
                 hit=fb["hit"], total=fb["total"], detail={"missing": fb["missing"]})
        if j["formal"]:
            emit(bench, "formal_properties_proved", j["formal_properties_proved"], "properties",
                 total=j["formal_properties"],
                 proofs={f["name"]: f"{f['proved']} (depth {f['depth']})" for f in j["formal"]})
            emit(bench, "formal_seconds", j["formal_seconds"], "s")
        emit(bench, "regression_tests_passed", j["regression"]["passed"] if j["regression"] else None, "tests",
             failed=j["regression"]["failed"] if j["regression"] else None, seconds=j["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
