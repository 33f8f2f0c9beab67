"""Memory family: the oblivious map's cost per query at scale, against Path ORAM; the tile cache's
hit rate and MoE decode speed per replacement policy, against Belady; Yosys resources.

    python benchmarks/memory.py [--skip-cosim] [--skip-moe] [--skip-estimate] [--max-log2 24]

Metrics (``{"bench": "memory", "metric", "value", "unit", ...context}``):

* ``omap_host_bytes_per_query``, ``omap_cycles_per_query`` for N = 2**10 ... 2**24: on the
  co-simulation of a U280 design (256-bit ports, 300 MHz, the board's HBM and PCIe timing) at
  N = 2**10 and 2**12 (``source: "co-sim"``: host-region bytes and kernel cycles of a batch);
  above, the scale model (``source: "scale model"``): the map's algorithm on integers at that N
  (bins read per query counted, bytes = bins x bin size; cycles = the constant-time slot the
  design's budget gives, which the co-simulation measures exactly at small N). The scale model
  also reports the trusted-state peaks and overflow events of a long run (``omap_scale_*``).
* ``omap_stash_entries_fraction``: the scale model's steady state under uniform queries (entries
  waiting in the HBM stash, nodes in use and planned), at N = 2**12 and 2**16.
* ``omap_growth_2e10_to_2e24``: bytes per query at 2**24 over 2**10 (target <= 2).
* ``omap_vs_path_oram_bytes_ratio`` at N = 2**20: Path ORAM (Z = 4, recursive position map
  down to 1024 on-chip entries, same 32-byte blocks and sealed 16-byte-tag buckets) bytes per
  access counted on its trace, over the map's (target >= 50).
* ``omap_init_seconds`` at N = 2**20: projected from co-sim cycles per bulk-loaded record and per
  formatted bin at the clock, plus the host writing the initial state at the PCIe figure.
* ``tile_cache_hit_rate`` and ``moe_decode_tok_s`` per replacement policy and for Belady: a
  decode over an expert trace calibrated to Mixtral 8x7B's routing statistics
  (hbmforge.numerics.memory.moe_expert_trace; Zipf skew assumed) on co-simulated designs, one
  per policy; Belady's tok/s from the per-line costs fitted on those runs. Also the hit rates
  at Mixtral scale (32 layers x 8 experts, cache of a quarter of the experts) on the golden model.
* ``yosys_*``: resources of the tile cache and of the oblivious-map unit alone (Yosys
  ``synth_xilinx -family xcup`` estimates, not Vivado).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hbmforge.engines.memory import OmapGeometry, omap_slot_timing
from hbmforge.memory_map import region_for

BOARD = "u280"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "u280_memory.yaml"
CLOCK = 300.0


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "memory", "metric": metric, "value": value, "unit": unit, **context}), flush=True)


def bench_config(policy: str = "lru") -> dict:
    """examples/u280_memory.yaml with the cache's replacement policy set to ``policy``."""
    import yaml

    with open(EXAMPLE) as f:
        cfg = yaml.safe_load(f)
    cfg["name"] = f"mem_bench_{policy}"
    cfg["engines"][1]["cache"]["replacement"] = policy
    return cfg


def _geometry() -> OmapGeometry:
    return OmapGeometry(32, 4, 8, 8, 1 << 20)


def _slot():
    from hbmforge.boards import load_board

    b = load_board(BOARD)
    host = region_for(b, "host")
    return omap_slot_timing(_geometry(), hbm_read=b.latency_cycles(CLOCK), hbm_write=b.latency_cycles(CLOCK, write=True),
                            host_read=host.latency_cycles(CLOCK), host_write=host.latency_cycles(CLOCK, write=True))


# -- the oblivious map ----------------------------------------------------------------------------
def omap_cosim(log2s=(10, 12), queries: int = 256) -> dict:
    from hbmforge.host import open_device
    from hbmforge.host.omap import ObliviousMap

    out = {}
    dev = open_device(bench_config("lru"), progress=True)
    rng = np.random.default_rng(1)
    for lg in log2s:
        n = 1 << lg
        keys = [rng.integers(0, 256, 8, dtype=np.uint8).tobytes() for _ in range(n)]
        items = {k: rng.integers(0, 256, 8, dtype=np.uint8).tobytes() for k in keys}
        t0 = time.monotonic()
        om = ObliviousMap(dev, capacity=n, key_bytes=8, value_bytes=8, items=items, seed=lg)
        # the two runs of the creation: BULK then FORMAT (cycles of each from the last counters)
        init_s = time.monotonic() - t0
        fmt_cycles = dev.counters()["cycles"]
        bulk_cycles = _bulk_cycles(dev, om, n, items)
        region = next(r for r in dev.memory_regions if r.kind == "host")
        before = dev.counters()["sim"]["regions"][region.name]
        ops = [("get", keys[int(rng.integers(n))]) for _ in range(queries)]
        t0 = time.monotonic()
        om.get_many([k for _, k in ops])
        wall = time.monotonic() - t0
        c = dev.counters()
        after = c["sim"]["regions"][region.name]
        moved = (after["bytes_read"] - before["bytes_read"]) + (after["bytes_written"] - before["bytes_written"])
        st = om.stats()
        out[lg] = {"bytes": moved / queries, "cycles": c["cycles"] / queries, "format_cycles_per_bin": fmt_cycles / om.plan.bins,
                   "bulk_cycles_per_record": bulk_cycles / n, "overruns": st["overruns"], "max_work": st["max_work"],
                   "t_slot": st["t_slot"], "nodes_peak": st["nodes_peak"], "init_wall_s": init_s, "query_wall_s": wall}
        om.close()
    dev.close()
    return out


def _bulk_cycles(dev, om, n, items) -> int:
    """Cycles of a BULK run of ``n`` records on a second map (the creation ran BULK then FORMAT)."""
    from hbmforge.encodings import OmapAction, OmapOp
    from hbmforge.host.omap import ObliviousMap

    probe = ObliviousMap(dev, capacity=n, key_bytes=8, value_bytes=8, seed=99)
    probe._run_batch(OmapAction.BULK, [(OmapOp.PUT, k, v) for k, v in items.items()])
    cycles = dev.counters()["cycles"]
    probe.close()
    return cycles


def omap_scale(log2s, queries: int) -> dict:
    from hbmforge.numerics.omap_scale import OmapScaleModel

    g = _geometry()
    slot = _slot()
    out = {}
    for lg in log2s:
        n = 1 << lg
        t0 = time.monotonic()
        model = OmapScaleModel(g, n, n, seed=lg)
        rng = np.random.default_rng(lg)
        for k in rng.integers(0, n, queries).tolist():
            model.query(k)
        s = model.stats
        bins_read = len(s.bins_read)
        out[lg] = {"bytes": 2 * g.bin_bytes * bins_read / queries, "cycles": slot.t_slot,
                   "nodes_peak_after_load": s.nodes_used, "stash_nodes": s.nodes_used, "nodes_planned": model.plan.nodes,
                   "stash_full": s.stash_full, "dir_full": s.dir_full, "bin_overflow": s.bin_overflow,
                   "dir_peak": model.dir_peak, "dir_ways": g.dir_ways, "directory_exact": model.directory_exact,
                   "seconds": time.monotonic() - t0}
    return out


def omap_steady(lg: int, rounds: int) -> dict:
    """A long run of uniform queries (``rounds`` x N): the stash's steady state."""
    from hbmforge.numerics.omap_scale import OmapScaleModel

    n = 1 << lg
    model = OmapScaleModel(_geometry(), n, n, seed=100 + lg)
    rng = np.random.default_rng(lg)
    live, used, peak = [], [], 0
    for r in range(rounds):
        for k in rng.integers(0, n, n).tolist():
            model.query(k)
            peak = max(peak, model.stats.nodes_used) if r >= rounds // 2 else peak
        if r >= rounds // 2:
            live.append(len(model.alive))
            used.append(model.stats.nodes_used)
    return {"live_fraction": float(np.mean(live)) / n, "used_fraction": float(np.mean(used)) / n,
            "peak_fraction": peak / n, "planned_fraction": model.plan.nodes / n, "stash_full": model.stats.stash_full,
            "bin_overflow_per_query": model.stats.bin_overflow / (rounds * n), "queries": rounds * n}


def omap_metrics(args) -> None:
    from hbmforge.numerics.oram import path_oram_bytes_per_access

    g = _geometry()
    cosim = omap_cosim() if not args.skip_cosim else {}
    scale = omap_scale([lg for lg in range(10, args.max_log2 + 1, 2) if lg not in cosim or lg >= 10],
                       args.scale_queries)
    per = {}
    for lg in range(10, args.max_log2 + 1, 2):
        if lg in cosim:
            r = cosim[lg]
            per[lg] = r["bytes"]
            emit("omap_host_bytes_per_query", round(r["bytes"], 1), "B", n=1 << lg, source="co-sim",
                 board=BOARD, clock_mhz=CLOCK)
            emit("omap_cycles_per_query", round(r["cycles"], 1), "cycles", n=1 << lg, source="co-sim",
                 t_slot=r["t_slot"], max_work=r["max_work"], overruns=r["overruns"])
        s = scale[lg]
        if lg not in cosim:
            per[lg] = s["bytes"]
            emit("omap_host_bytes_per_query", s["bytes"], "B", n=1 << lg, source="scale model",
                 note="one bin read and one written per query (bins counted by the scale model)")
            emit("omap_cycles_per_query", s["cycles"], "cycles", n=1 << lg, source="scale model",
                 note="the constant-time slot of the design's budget (co-sim measures it at small N)")
        emit("omap_scale_trusted_state", s["stash_nodes"], "nodes", n=1 << lg, planned_nodes=s["nodes_planned"],
             stash_full_events=s["stash_full"], dir_full_events=s["dir_full"], bin_overflow_events=s["bin_overflow"],
             dir_peak_ways=s["dir_peak"], dir_ways=s["dir_ways"], directory_model="exact" if s["directory_exact"]
             else "batched two-choice", queries=args.scale_queries, source="scale model")
    for lg in (12, 16):
        st = omap_steady(lg, args.steady_rounds)
        emit("omap_stash_entries_fraction", round(st["live_fraction"], 4), "fraction of N", n=1 << lg,
             source="scale model", nodes_used_fraction=round(st["used_fraction"], 4),
             nodes_peak_fraction=round(st["peak_fraction"], 4), nodes_planned_fraction=round(st["planned_fraction"], 4),
             stash_full_events=st["stash_full"], bin_full_blocks_per_query=round(st["bin_overflow_per_query"], 4),
             queries=st["queries"], note="steady state of uniform queries (second half of the run): entries "
             "waiting in the HBM stash for their bin; nodes used include dead nodes not yet popped")
    top = args.max_log2 - args.max_log2 % 2
    emit("omap_growth_2e10_to_2e24" if top == 24 else f"omap_growth_2e10_to_2e{top}", round(per[top] / per[10], 4),
         "ratio", target="<= 2")
    ours = per[20] if 20 in per else per[max(per)]
    oram = path_oram_bytes_per_access(1 << 20, z=4, block_bytes=g.slot_bytes, word_bytes=g.word_bytes, onchip=1024)
    emit("omap_vs_path_oram_bytes_ratio", round(oram / ours, 1), "x", n=1 << 20, path_oram_bytes=oram,
         omap_bytes=ours, target=">= 50",
         note="Path ORAM as an array (key = block index, the map layer not counted): favours the baseline")
    if cosim:
        r = cosim[max(cosim)]
        n = 1 << 20
        plan_bins = 1 << 19
        from hbmforge.engines.memory import plan_omap
        plan = plan_omap(g, n)
        cycles = n * r["bulk_cycles_per_record"] + plan.bins * r["format_cycles_per_bin"]
        host = plan.hbm_bytes / 12e9                       # the initial (public) state over PCIe
        emit("omap_init_seconds", round(cycles / (CLOCK * 1e6) + host, 3), "s", n=n, source="projected",
             note="simulated cycles per bulk record and per formatted bin (co-sim at N=2**%d) x N, at %g MHz, "
                  "plus the initial HBM state written at 12 GB/s" % (max(cosim), CLOCK),
             bulk_cycles_per_record=round(r["bulk_cycles_per_record"], 1),
             format_cycles_per_bin=round(r["format_cycles_per_bin"], 1), bins=plan.bins, state_bytes=plan.hbm_bytes)


# -- tile cache and MoE ----------------------------------------------------------------------------
def moe_cosim(policies, tokens: int, layers: int) -> dict:
    from hbmforge.host import open_device
    from hbmforge.host.memory import TileCache, expected_matmul_reads
    from hbmforge.host.moe import MoE
    from hbmforge.numerics.memory import belady_hits, moe_expert_trace

    experts, d, f = 8, 256, 512
    trace = moe_expert_trace(tokens, layers, experts, 2, seed=7)
    rng = np.random.default_rng(3)
    weights = [[(rng.standard_normal((f, d)) * 0.05, rng.standard_normal((d, f)) * 0.05) for _ in range(experts)]
               for _ in range(layers)]
    routers = [rng.standard_normal((experts, d)).astype(np.float32) for _ in range(layers)]
    out = {}
    line_trace = None
    for policy in policies:
        dev = open_device(bench_config("lru" if policy == "none" else policy), progress=True)
        if policy == "none":                # the baseline: a window that holds no weights, every read bypasses
            spare = dev.alloc(4096, "w0", memory="host")
            cache = TileCache(dev, window=spare)
        else:
            cache = TileCache(dev)
        moes = [MoE(dev, routers[layer], weights[layer], top_k=2, cache=None if policy == "none" else cache,
                    prefetch=False) for layer in range(layers)]
        x = rng.standard_normal((1, d)).astype(np.float32)
        runs, lines = [], []
        cycles = hits = misses = host_bytes = 0
        for t in range(tokens):
            for layer, moe in enumerate(moes):
                moe(x, routing=(trace[t, layer][None, :], np.full((1, 2), 0.5, np.float32)))
                run = moe.last_run
                cycles += run.cycles
                hits += run.cache.get("hits", 0)
                misses += run.cache.get("misses", 0)
                host_bytes += run.cache.get("backing_bytes_read", 0) + run.cache.get("backing_bytes_written", 0)
                runs.append((run.cycles, run.cache.get("hits", 0), run.cache.get("misses", 0), len(run.expert_calls)))
                if line_trace is None:
                    for e in sorted(set(trace[t, layer].tolist())):
                        for lin in moe.expert_linears(e):
                            for a, n in expected_matmul_reads(dev.layout, 1, lin.out_features, lin.k_padded, 4,
                                                              lin.weight_buffers[0].address):
                                lines += list(range(a // 4096, -(-(a + n) // 4096)))
        if line_trace is None:
            line_trace = lines
        out[policy] = {"cycles_per_token": cycles / tokens, "hits": hits, "misses": misses, "runs": runs,
                       "host_bytes_per_token": host_bytes / tokens}
        dev.close()
    baseline = out.pop("none", None)
    geom_sets, geom_ways = 64, 4
    belady = belady_hits(line_trace, sets=geom_sets, ways=geom_ways)
    rows = [r for v in out.values() for r in v["runs"]]
    a = np.array([[1.0 * calls, h, m] for _, h, m, calls in rows])
    y = np.array([c for c, _, _, _ in rows], dtype=float)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    total = len(line_trace)
    calls = sum(r[3] for r in rows) / len(out)
    line_bytes = 4096
    out["belady"] = {"cycles_per_token": (coef[0] * calls + coef[1] * belady + coef[2] * (total - belady)) / tokens,
                     "hits": belady, "misses": total - belady, "fit": coef.tolist(),
                     "host_bytes_per_token": (total - belady) * line_bytes / tokens}
    if baseline is not None:
        out["none"] = baseline
    return out


def moe_metrics(args) -> None:
    from hbmforge.numerics.memory import belady_hits, moe_expert_trace, policy_hits, trace_statistics

    # Mixtral scale on the golden model: 32 layers x 8 experts, 16 lines per expert, a quarter cached
    tokens, layers, experts, lines_per_expert = args.mixtral_tokens, 32, 8, 16
    trace = moe_expert_trace(tokens, layers, experts, 2, seed=11)
    st = trace_statistics(trace)
    line_trace = []
    for t in range(tokens):
        for layer in range(layers):
            for e in trace[t, layer]:
                base = (layer * experts + int(e)) * lines_per_expert
                line_trace += range(base, base + lines_per_expert)
    sets, ways = 64, 16         # 1024 lines: 64 of the 256 experts (int4 Mixtral experts are ~88 MB each:
                                # a U280's 8 GiB of HBM holds about a third of the 22.5 GB)
    total = len(line_trace)
    context = dict(source="golden model", trace="moe_expert_trace (Mixtral 8x7B routing statistics, Zipf 0.5 "
                   "skew assumed)", repeat_first=round(st["repeat_first"], 3), repeat_any=round(st["repeat_any"], 3),
                   load_max_over_mean=round(st["max_over_mean_load"], 2), tokens=tokens, layers=layers, experts=experts,
                   cache_fraction=sets * ways / (layers * experts * lines_per_expert))
    for policy in ("lru", "random", "lfu"):
        emit("tile_cache_hit_rate", round(policy_hits(line_trace, sets=sets, ways=ways, replacement=policy) / total, 4),
             "fraction", policy=policy, **context)
    emit("tile_cache_hit_rate", round(belady_hits(line_trace, sets=sets, ways=ways) / total, 4), "fraction",
         policy="belady (bound)", **context)
    if args.skip_cosim:
        return
    res = moe_cosim(("lru", "random", "lfu", "none"), args.moe_tokens, args.moe_layers)
    names = {"belady": "belady (bound)", "none": "none (every read bypasses the cache)"}
    for policy, r in res.items():
        acc = r["hits"] + r["misses"]
        ctx = dict(source="co-sim" if policy != "belady" else "projected from per-line costs fitted on the co-sim runs",
                   policy=names.get(policy, policy), board=BOARD, clock_mhz=CLOCK,
                   layers=args.moe_layers, experts=8, top_k=2, d=256, f=512, cache_bytes=4 * 64 * 4096,
                   expert_bytes=2 * 256 * 512 // 2, host_bytes_per_token=round(r["host_bytes_per_token"]),
                   tokens=args.moe_tokens, trace="moe_expert_trace (seed 7)")
        if policy != "none":
            emit("tile_cache_hit_rate", round(r["hits"] / acc, 4) if acc else 0.0, "fraction", **ctx)
        emit("moe_decode_tok_s", round(CLOCK * 1e6 / r["cycles_per_token"], 1), "tok/s", **ctx)


# -- resources ------------------------------------------------------------------------------------
def estimates() -> None:
    from hbmforge.engines.memory import CacheGeometry
    from hbmforge.flows.estimate import SOURCE, estimate_component
    from hbmforge.generators.memory.cache import TileCache
    from hbmforge.generators.memory.omap import ObliviousMapUnit

    parts = {"tile_cache": TileCache(CacheGeometry(32, 4096, 4, 64, "lru", "write_back", 4), data_width=256),
             "omap_unit": ObliviousMapUnit(_geometry())}
    for name, comp in parts.items():
        r = estimate_component(comp, name, timeout=7200)
        emit(f"yosys_{name}_luts", r.get("lut"), "LUT", ff=r.get("ff"), bram36=r.get("bram"), dsp=r.get("dsp"),
             uram=r.get("uram"), lutram=r.get("lutram"), carry=r.get("carry"),
             lut_levels=_lut_levels(r.get("depth")),
             synth_seconds=round(r.get("synth_seconds") or 0, 1), source=SOURCE)


def _lut_levels(depth):
    return depth.get("lut") if isinstance(depth, dict) else getattr(depth, "lut", None)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-cosim", action="store_true")
    ap.add_argument("--skip-moe", action="store_true")
    ap.add_argument("--skip-omap", action="store_true")
    ap.add_argument("--skip-estimate", action="store_true")
    ap.add_argument("--max-log2", type=int, default=24)
    ap.add_argument("--scale-queries", type=int, default=100_000)
    ap.add_argument("--steady-rounds", type=int, default=16, help="long-run queries per entry (steady state)")
    ap.add_argument("--moe-tokens", type=int, default=32)
    ap.add_argument("--moe-layers", type=int, default=4)
    ap.add_argument("--mixtral-tokens", type=int, default=256)
    args = ap.parse_args(argv)
    if not args.skip_omap:
        omap_metrics(args)
    if not args.skip_moe:
        moe_metrics(args)
    if not args.skip_estimate:
        estimates()


if __name__ == "__main__":
    main()
