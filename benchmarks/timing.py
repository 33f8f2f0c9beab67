"""Logic depth and Fmax *estimates* of the example configs (Yosys synth_xilinx + hbmforge's delay model).

    python benchmarks/timing.py [examples/u280_starter.yaml ...] [--no-cache]

With no config, every ``examples/*.yaml`` that is an accelerator config (sweep
specs are skipped). One JSON object per line:

* ``max_logic_levels`` per part (``part`` in the context): the deepest
  register-to-register path ending in that part, in LUT levels, with the
  budget at 300 MHz beside it (``lut_level_budget``);
* ``fmax_estimate_mhz`` per part and per config (``part: "kernel"``: the lowest
  over the parts);
* ``timing_budget_parts_over``: how many parts miss the budget.

Every figure is an estimate (no placement or routing; see docs/estimate.md), not Vivado timing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hbmforge.config import ConfigError, load_config
from hbmforge.flows.estimate import SOURCE, TIMING_NOTE, estimate

ROOT = Path(__file__).resolve().parents[1]


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "timing", "metric": metric, "value": value, "unit": unit, **context}),
          flush=True)


def example_configs() -> list[Path]:
    out = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        try:
            load_config(path)
        except (ConfigError, ValueError, TypeError):
            continue                     # a sweep spec, not an accelerator config
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", type=Path)
    ap.add_argument("--no-cache", action="store_true", help="Re-synthesize even if a result is cached.")
    args = ap.parse_args(argv)
    for path in args.configs or example_configs():
        cfg = load_config(path)
        rep = estimate(cfg, use_cache=not args.no_cache,
                       progress=lambda msg: print(f"\r{path.name}: {msg[:70]:<70}", end="", file=sys.stderr))
        print(file=sys.stderr)
        ctx = {"config": path.name, "board": cfg.board, "clock_mhz": cfg.clock, "source": SOURCE,
               "note": TIMING_NOTE}
        budget = rep.lut_level_budget()
        for part, t in rep.timing.items():
            emit("max_logic_levels", t.max_logic_levels, "LUT levels", part=part, lut_level_budget=budget,
                 budget_clock_mhz=rep.budget_clock_mhz, **ctx)
            emit("fmax_estimate_mhz", t.fmax_estimate_mhz, "MHz", part=part, slowest_path_ns=t.delay_ns,
                 slowest_path_lut=t.lut, slowest_path_carry8=t.carry8, slowest_path_dsp_stages=t.dsp,
                 end=t.end, **ctx)
        emit("fmax_estimate_mhz", rep.fmax_estimate_mhz(), "MHz", part="kernel", **ctx)
        over = rep.over_timing_budget()
        emit("timing_budget_parts_over", len(over), "parts", parts=over, lut_level_budget=budget, **ctx)


if __name__ == "__main__":
    main()
