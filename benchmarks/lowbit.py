"""Low-bit matmul family: GEMV efficiency on the co-sim and TLMM vs sign-select resources.

    python benchmarks/lowbit.py [--board u280] [--skip-estimate] [--skip-gemv] [--groups 2,3,4,5]

Metrics (``{"bench": "lowbit", "metric", "value", "unit", ...context}``):

* ``w2a8_gemv_hbm_efficiency`` / ``ternary_gemv_hbm_efficiency``: weight bytes delivered /
  (ports x port bytes per cycle x cycles) for M = 1, K = N = 4096 on the co-simulated
  kernel with the board's HBM timing (target >= 0.90); for ternary, every packing and
  architecture: 2bit and 5trit on the sign-select array, 2bit on the TLMM.
* ``tlmm_macs_per_lut_vs_baseline``: (MACs per cycle / LUT) of the ternary TLMM engine over
  that of the sign-select engine with the same rows x lanes (equal MACs per cycle), one
  line per g; LUTs of the engine subtree from ``hbmforge estimate`` (Yosys, not Vivado),
  both estimated in this run. The context also gives the whole-kernel ratio and the
  BRAM the tables take (LUTs are not the only cost).
* ``tlmm_array_macs_per_lut_vs_baseline``: the same ratio for the two arrays alone
  (``hbmforge.flows.estimate.estimate_component``), which shows where the engine's LUTs go.
* ``estimate_seconds``: wall time of ``hbmforge estimate`` on the starter config with a
  warm WebAssembly cache and the result cache bypassed (and the cached-result time).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import yaml

from hbmforge.config import parse_config, starter_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "lowbit", "metric": metric, "value": value, "unit": unit, **context}), flush=True)


def _example(name: str, board: str) -> dict:
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    data["board"] = board
    return data


def _with_engine(data: dict, name: str, **engine) -> dict:
    data = copy.deepcopy(data)
    data["name"] = name
    data["engines"][0].update(engine)
    return data


def gemv(board: str, only: str | None = None) -> None:
    from hbmforge.flows.runner import run_linear

    cases = [
        ("w2a8_gemv_hbm_efficiency", _example("u280_w2a8", board), 2, {}),
        ("ternary_gemv_hbm_efficiency", _example("u280_ternary", board), "ternary", {"packing": "2bit"}),
        ("ternary_gemv_hbm_efficiency", _example("u280_ternary_5trit", board), "ternary", {"packing": "5trit"}),
        ("ternary_gemv_hbm_efficiency",
         _with_engine(_example("u280_ternary", board), "u280_tlmm4", arch="tlmm", tlmm_group=4),
         "ternary", {"packing": "2bit", "arch": "tlmm", "g": 4}),
    ]
    for metric, data, wbits, extra in cases:
        if only and only != data["name"]:
            continue
        cfg = parse_config(data)
        mm = cfg.matmul
        r = run_linear(cfg, m=1, k=4096, n=4096, wbits=wbits, seed=0, timeout=3600)
        if r["golden_mismatches"]:
            raise SystemExit(f"{metric} {extra}: {r['golden_mismatches']} mismatches with the golden model")
        emit(metric, round(r["weight_port_efficiency"], 4), "ratio", m=1, k=4096, n=4096, target=0.90,
             cycles=r["cycles"], weight_bytes=r["weight_bytes_read"], rows=mm.rows, lanes=mm.lanes,
             board=board, config=cfg.name, **{"arch": mm.arch, **extra})


def engine_part(report) -> dict:
    """The matmul engine's subtree in an estimate (the part named after the engine instance)."""
    for name in ("engine", "mm0"):
        if name in report.parts:
            return report.parts[name]
    raise SystemExit(f"no engine part in the estimate of {report.name}: {sorted(report.parts)}")


def tlmm_vs_baseline(board: str, groups: list[int]) -> None:
    from hbmforge.flows.estimate import estimate

    base_data = _example("u280_ternary", board)
    base = estimate(parse_config(base_data))
    b_eng = engine_part(base)
    mm = parse_config(base_data).matmul
    macs = mm.rows * mm.lanes
    common = {"board": board, "rows": mm.rows, "lanes": mm.lanes, "macs_per_cycle": macs,
              "source": base.source}
    emit("signselect_engine_luts", b_eng["lut"], "LUT", ff=b_eng["ff"], carry=b_eng["carry"], bram=b_eng["bram"],
         dsp=b_eng["dsp"], kernel_luts=base.total["lut"], **common)
    for g in groups:
        rep = estimate(parse_config(_with_engine(base_data, f"u280_tlmm{g}", arch="tlmm", tlmm_group=g)))
        t_eng = engine_part(rep)
        ratio = b_eng["lut"] / t_eng["lut"]
        emit("tlmm_macs_per_lut_vs_baseline", round(ratio, 3), "ratio", g=g, target=1.5,
             tlmm_engine_luts=t_eng["lut"], baseline_engine_luts=b_eng["lut"],
             tlmm_engine_bram=t_eng["bram"], baseline_engine_bram=b_eng["bram"],
             tlmm_engine_ff=t_eng["ff"], baseline_engine_ff=b_eng["ff"],
             kernel_ratio=round(base.total["lut"] / rep.total["lut"], 3), **common)


def array_luts(groups: list[int], *, rows: int = 4, lanes: int = 128, group_size: int = 128,
               max_k: int = 4096) -> None:
    """The two arrays alone (no unpacker, buffers, accumulators or shell): where the LUTs go."""
    from amaranth.hdl import signed
    from amaranth.lib import data

    from hbmforge.flows.estimate import SOURCE, estimate_component
    from hbmforge.generators.matmul.array import MacArray
    from hbmforge.generators.matmul.tlmm import TlmmArray

    tag = data.StructLayout({"t": 1})
    macs = rows * lanes
    common = {"rows": rows, "lanes": lanes, "macs_per_cycle": macs, "source": SOURCE}
    base = estimate_component(MacArray(rows=rows, lanes=lanes, group_size=group_size, weight_shape=signed(2),
                                       tag_layout=tag, lane_format="ternary"), "signselect_array")
    emit("signselect_array_luts", base["lut"], "LUT", ff=base["ff"], carry=base["carry"],
         luts_per_mac=round(base["lut"] / macs, 2), **common)
    for g in groups:
        r = estimate_component(TlmmArray(rows=rows, lanes=lanes, group_size=group_size, g=g, max_k=max_k,
                                         weight_shape=signed(2), tag_layout=tag), f"tlmm_array_g{g}")
        emit("tlmm_array_macs_per_lut_vs_baseline", round(base["lut"] / r["lut"], 3), "ratio", g=g,
             tlmm_array_luts=r["lut"], baseline_array_luts=base["lut"], tlmm_array_bram=r["bram"],
             tlmm_array_ff=r["ff"], baseline_array_ff=base["ff"], **common)


def estimate_seconds(board: str) -> None:
    from hbmforge.flows.estimate import estimate

    cfg = parse_config(starter_config(board))
    estimate(cfg)                                   # warms the WebAssembly cache (and the result cache)
    t0 = time.perf_counter()
    rep = estimate(cfg, use_cache=False)
    fresh = time.perf_counter() - t0
    t0 = time.perf_counter()
    estimate(cfg)
    cached = time.perf_counter() - t0
    emit("estimate_seconds", round(fresh, 2), "s", board=board, config="starter", wasm_cache="warm",
         result_cache="bypassed", synth_seconds=round(rep.synth_seconds, 2), cached_result_seconds=round(cached, 3))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="u280")
    ap.add_argument("--skip-estimate", action="store_true", help="skip the Yosys runs")
    ap.add_argument("--skip-gemv", action="store_true", help="skip the co-simulated GEMVs")
    ap.add_argument("--groups", default="2,3,4,5", help="TLMM group sizes g to estimate")
    ap.add_argument("--only", help="run only the GEMV of this config name (e.g. u280_tlmm4)")
    args = ap.parse_args(argv)
    if not args.skip_gemv:
        gemv(args.board, args.only)
    if not args.skip_estimate:
        estimate_seconds(args.board)
        groups = [int(g) for g in args.groups.split(",")]
        tlmm_vs_baseline(args.board, groups)
        array_luts(groups)


if __name__ == "__main__":
    main()
