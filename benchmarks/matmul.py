"""Matmul engine performance on the starter config; prints one JSON object per line.

    python benchmarks/matmul.py [--board u280] [--skip-cocotb]

Metrics (``{"bench": "matmul", "metric", "value", "unit", ...context}``):

* ``gemm_mac_utilization``: useful MACs / (array MACs x busy cycles), M = N = K = 512,
  int4 weights (target >= 0.90); ``gemm_mac_utilization_int8`` for int8 weights.
* ``gemm_weight_reads_per_weight``: weight bytes read / packed weight bytes for an M = 128
  prefill (K = N = 512; target 1.0: each weight once per chunk of rows the activation ring
  holds); ``gemm_mac_utilization_m128`` for the same layer, int8 and int4.
* ``encoder_gemm_mac_utilization`` / ``encoder_gemm_weight_reads_per_weight``: a 111-token
  encoder projection (M = 111, K = N = 768), int8 and int4; 111 of the 112 rows of the last
  row block are valid, so 0.991 is the array's ceiling.
* ``gemv_split_k_hbm_efficiency``: a GEMV whose K (8192) is twice max_k (exact split-K with
  int64 partial sums in memory), int4.
* ``gemv_hbm_efficiency``: weight bytes delivered / (weight ports x port bytes per
  cycle x cycles), M = 1, K = N = 4096, int4, HBM model at the board's nominal
  latency (target >= 0.85).
* ``cosim_cycles_per_second`` and ``cosim_speedup_vs_cocotb``: one layer run through
  the co-simulation harness and through cocotb (same RTL, no injected stalls).
* ``weight_bytes_per_token`` / ``weight_bytes_per_token_sparse24``: weight bytes the co-sim's
  ports read for one decode token (M = 1, K = N = 2048) on the starter with ``sparse24: true``,
  dense and 2:4 (magnitude-pruned), int4 and int8; ``sparse24_weight_bytes_ratio`` and
  ``sparse24_gemv_speedup`` (dense cycles / 2:4 cycles) beside them (``--sparse24-only``).

Cycle counts are deterministic; wall-clock figures depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from hbmforge.config import parse_config, starter_config
from hbmforge.flows.runner import run_linear


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "matmul", "metric": metric, "value": value, "unit": unit, **context}), flush=True)


def _layer(cfg, m, k, n, wbits):
    r = run_linear(cfg, m=m, k=k, n=n, wbits=wbits, seed=0, timeout=3600)
    if r["golden_mismatches"]:
        raise SystemExit(f"golden mismatch in benchmark layer {m}x{k}x{n} int{wbits}: {r['golden_mismatches']}")
    return r


def _reads_per_weight(cfg, r, k, n, wbits) -> float:
    """Weight bytes read over the packed weight bytes (every stripe): how often each weight was fetched."""
    from hbmforge.layout import DesignLayout

    geom = DesignLayout(cfg).matmul
    return r["weight_bytes_read"] / (cfg.matmul.weight_ports * geom.weight_port_bytes(n, geom.pad_k(k), wbits))


def prefill(cfg, ctx) -> None:
    """GEMM with the weights held on chip: an M = 128 prefill and a 111-token encoder projection."""
    for (m, k, n), prefix in (((128, 512, 512), "gemm"), ((111, 768, 768), "encoder_gemm")):
        for wbits in (8, 4):
            r = _layer(cfg, m, k, n, wbits)
            shape = dict(m=m, k=k, n=n, wbits=wbits, cycles=r["cycles"], **ctx)
            reads = _reads_per_weight(cfg, r, k, n, wbits)
            emit(f"{prefix}_weight_reads_per_weight", round(reads, 4), "reads", target=1.0,
                 rows_on_chip=m, **shape)
            emit("gemm_mac_utilization_m128" if prefix == "gemm" else f"{prefix}_mac_utilization",
                 round(r["mac_utilization"], 4), "ratio", **shape)


def cocotb_cycles_per_second(cfg, m, k, n, wbits) -> tuple[float, int, float]:
    """Run the same layer through the cocotb bench; return (cycles/s, cycles, wall seconds)."""
    from hbmforge.flows.emit import generate
    from hbmforge.sim.cocotb_runner import run_cocotb

    with tempfile.TemporaryDirectory(prefix="hbmforge-bench-") as tmp:
        design = generate(cfg, Path(tmp) / "rtl")
        report = Path(tmp) / "bench.json"
        res = run_cocotb([design.verilog_path], cfg.name, "hbmforge.flows.tb_kernel",
                         testcase="test_benchmark_one_layer", test_dir=Path(tmp) / "cocotb",
                         progress=sys.stderr.isatty(),
                         extra_env={"HBMFORGE_MANIFEST": str(design.manifest_path),
                                    "HBMFORGE_TB_BENCH": f"{m},{k},{n},{wbits}",
                                    "HBMFORGE_TB_REPORT": str(report)})
        if not res.ok:
            raise SystemExit(f"cocotb benchmark run failed:\n{res.summary()}")
        data = json.loads(report.read_text())
    return data["cycles"] / data["wall_seconds"], data["cycles"], data["wall_seconds"]


def sparse24(board: str) -> None:
    """Decode GEMV, dense vs 2:4 sparse weights, on the starter config with ``sparse24: true``."""
    import numpy as np

    from hbmforge.host import Linear, open_device
    from hbmforge.numerics import quantize_activations_per_token

    d = starter_config(board)
    d["engines"][0]["sparse24"] = True
    cfg = parse_config(d)
    k = n = 2048
    ctx = {"board": board, "config": "starter + sparse24", "rows": cfg.matmul.rows, "lanes": cfg.matmul.lanes,
           "weight_ports": cfg.matmul.weight_ports, "m": 1, "k": k, "n": n}
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    xq = quantize_activations_per_token(rng.standard_normal((1, k)).astype(np.float32)).q
    dev = open_device(cfg, backend="sim")
    try:
        for wbits in [b for b in (4, 8) if b in cfg.matmul.weight_bits]:
            got = {}
            for sparse in (False, True):
                lin = Linear.from_float(w, bits=wbits, device=dev, sparse24=sparse)
                shift = lin.out_shift_for(xq)
                if not np.array_equal(lin.forward_int(xq, out_shift=shift, timeout=3600),
                                      lin.golden_int(xq, out_shift=shift)):
                    raise SystemExit(f"golden mismatch: int{wbits} sparse24={sparse}")
                c = lin.last_run.counters
                got[sparse] = (sum(v["bytes_read"] for p, v in c["ports"].items() if p.startswith("w")),
                               c["cycles"])
                lin.close()
            (dense, dcyc), (sp, scyc) = got[False], got[True]
            emit("weight_bytes_per_token", dense, "bytes", wbits=wbits, cycles=dcyc, **ctx)
            emit("weight_bytes_per_token_sparse24", sp, "bytes", wbits=wbits, cycles=scyc, **ctx)
            emit("sparse24_weight_bytes_ratio", round(sp / dense, 4), "ratio", wbits=wbits,
                 expected=(wbits + 2) / (2 * wbits), **ctx)
            emit("sparse24_gemv_speedup", round(dcyc / scyc, 3), "x", wbits=wbits, **ctx)
    finally:
        dev.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="u280")
    ap.add_argument("--skip-cocotb", action="store_true", help="skip the (slow) cocotb comparison")
    ap.add_argument("--prefill-only", action="store_true", help="only the M = 128 / encoder GEMM metrics")
    ap.add_argument("--sparse24-only", action="store_true", help="only the 2:4 sparse weight-bytes metrics")
    args = ap.parse_args(argv)
    if args.sparse24_only:
        sparse24(args.board)
        return
    cfg = parse_config(starter_config(args.board))
    from hbmforge.layout import DesignLayout
    geom = DesignLayout(cfg).matmul
    ctx = {"board": args.board, "config": "starter", "rows": cfg.matmul.rows, "lanes": cfg.matmul.lanes,
           "weight_ports": cfg.matmul.weight_ports, "tile_n": geom.tile_n, "tile_m": geom.tile_m}
    prefill(cfg, ctx)
    if args.prefill_only:
        return

    r = _layer(cfg, 512, 512, 512, 4)
    emit("gemm_mac_utilization", round(r["mac_utilization"], 4), "ratio", m=512, k=512, n=512, wbits=4,
         cycles=r["cycles"], target=0.90, **ctx)
    r8 = _layer(cfg, 512, 512, 512, 8)
    emit("gemm_mac_utilization_int8", round(r8["mac_utilization"], 4), "ratio", m=512, k=512, n=512, wbits=8,
         cycles=r8["cycles"], **ctx)

    g = _layer(cfg, 1, 4096, 4096, 4)
    emit("gemv_hbm_efficiency", round(g["weight_port_efficiency"], 4), "ratio", m=1, k=4096, n=4096, wbits=4,
         cycles=g["cycles"], weight_bytes=g["weight_bytes_read"], target=0.85, **ctx)
    emit("gemv_cycles", g["cycles"], "cycles", m=1, k=4096, n=4096, wbits=4, **ctx)
    emit("cosim_cycles_per_second", round(g["sim_cycles_per_second"]), "cycles/s",
         layer="gemv 1x4096x4096 int4", **ctx)
    ks = 2 * cfg.matmul.max_k
    gs = _layer(cfg, 1, ks, 4096, 4)
    emit("gemv_split_k_hbm_efficiency", round(gs["weight_port_efficiency"], 4), "ratio", m=1, k=ks, n=4096,
         wbits=4, slices=geom.slices(ks), cycles=gs["cycles"], weight_bytes=gs["weight_bytes_read"], **ctx)

    # the same mid-size layer through both simulators
    m, k, n = 8, 1024, 512
    cs = _layer(cfg, m, k, n, 4)
    emit("cosim_cycles_per_second_small_layer", round(cs["sim_cycles_per_second"]), "cycles/s",
         m=m, k=k, n=n, wbits=4, cycles=cs["cycles"], **ctx)
    if not args.skip_cocotb:
        t0 = time.perf_counter()
        coc_cps, coc_cycles, coc_wall = cocotb_cycles_per_second(cfg, m, k, n, 4)
        emit("cocotb_cycles_per_second", round(coc_cps), "cycles/s", m=m, k=k, n=n, wbits=4,
             cycles=coc_cycles, wall_seconds=round(coc_wall, 2),
             total_seconds_with_build=round(time.perf_counter() - t0, 1), **ctx)
        emit("cosim_speedup_vs_cocotb", round(cs["sim_cycles_per_second"] / coc_cps, 1), "x",
             m=m, k=k, n=n, wbits=4, target=20, **ctx)
    sparse24(args.board)


if __name__ == "__main__":
    main()
