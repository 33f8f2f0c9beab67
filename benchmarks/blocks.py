"""Vector engine accuracy and whole-block programs on the co-simulation; one JSON object per line.

    python benchmarks/blocks.py [--config examples/u280_blocks.yaml] [--layers 1] [--hidden 1024]
                                [--decode-steps 4] [--prefill 512] [--accuracy-only] [--skip-prefill]

Metrics (``{"bench": "blocks", "metric", "value", "unit", ...context}``):

* ``vector_<stage>_*``: each vector-engine stage against float64 (``measure_vector_errors``).
* ``host_round_trips_per_token``: device starts (= waits) per decode step of the whole model
  (every block, the final norm and the LM head): target 1.
* ``decode_cycles_per_token`` and ``decode_tokens_per_s`` (at the config's clock).
* ``decode_port_efficiency``: bytes the decode step moves over the design's weight/KV ports
  (``w0 ..``) / (those ports x port word x the step's cycles): target >= 0.85 for a decoder with
  hidden >= 1024; ``decode_data_port_bytes`` is what the step moved on the data port besides.
* ``decode_all_ports_efficiency``: the same over every port, the data port included.
* ``prefill_mac_utilization``: MAC_OPS of one ``--prefill``-token chunk through whole blocks
  (matmul and attention MACs) / (the matmul array's MACs per cycle x the chunk's cycles):
  target >= 0.80.

The model is a LLaMA-shaped decoder with random int8 weights (hidden ``--hidden``, 16 heads of 64,
4 KV heads, intermediate 2.75 x hidden rounded to 128, vocabulary 4096). Cycle counts are
deterministic; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "blocks", "metric": metric, "value": value, "unit": unit, **context}), flush=True)


def accuracy() -> None:
    from hbmforge.numerics.vector import measure_vector_errors

    context_keys = ("bound", "dim", "range")
    for stage, values in measure_vector_errors().items():
        ctx = {k: v for k, v in values.items() if k in context_keys}
        for key, value in values.items():
            if key not in context_keys:
                emit(f"vector_{stage}_{key}", value, "abs" if "abs" in key or "diff" in key else "ratio", **ctx)


def build_model(dev, *, hidden: int, layers: int, vocab: int, seed: int = 0, timeout: float = 600.0):
    from hbmforge.host.blocks import BlockConfig, BlockWeights, ModelProgram
    from hbmforge.numerics.encoded import quantize_weights_encoded

    lay = dev.layout
    heads, hd = hidden // 64, 64
    inter = int(round(hidden * 2.75 / 128)) * 128
    cfg = BlockConfig(arch="llama", hidden=hidden, heads=heads, kv_heads=max(1, heads // 4), head_dim=hd,
                      intermediate=inter)
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(layers):
        t = {name: rng.normal(0, 1 / math.sqrt(cfg.projection_shape(name)[1]), cfg.projection_shape(name))
             for name in cfg.projections}
        t["attn_norm"] = rng.uniform(0.8, 1.2, hidden)
        t["mlp_norm"] = rng.uniform(0.8, 1.2, hidden)
        blocks.append(BlockWeights.from_float(cfg, t, bits=8, group_size=lay.mm.group_size))
    head = quantize_weights_encoded(rng.normal(0, 1 / math.sqrt(hidden), (vocab, hidden)), 8, lay.mm.group_size,
                                    lay.mm.scale_bits)
    prog = ModelProgram(dev, cfg, blocks, final_norm=(rng.uniform(0.8, 1.2, hidden), None), lm_head=head,
                        kv_bits=8, max_context=2048, timeout=timeout)
    return prog, cfg, rng


def performance(config: str, *, hidden: int, layers: int, steps: int, prefill: int, timeout: float) -> None:
    from hbmforge.host import open_device

    t0 = time.monotonic()
    dev = open_device(config, progress=True)
    lay = dev.layout
    print(f"design ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    ctx = {"config": Path(config).name, "hidden": hidden, "layers": layers}
    with dev:
        prog, cfg, rng = build_model(dev, hidden=hidden, layers=layers, vocab=4096, timeout=timeout)
        stream = [p for p in lay.ports if p.role == "stream"]
        seq = prog.sequence()
        prog.prefill(rng.normal(0, 1, (16, hidden)), seq)
        cycles, trips, eff, overall, data_bytes = [], [], [], [], []
        for _ in range(steps):
            prog.decode_step(rng.normal(0, 1, hidden), seq)
            st = prog.last_step
            ports = st.counters["ports"]
            moved = sum(ports[p.name]["bytes_read"] + ports[p.name]["bytes_written"] for p in stream)
            cycles.append(st.cycles)
            trips.append(st.host_round_trips)
            eff.append(moved / (len(stream) * lay.word_bytes * st.cycles))
            every = sum(ports[p.name]["bytes_read"] + ports[p.name]["bytes_written"] for p in lay.ports)
            overall.append(every / (len(lay.ports) * lay.word_bytes * st.cycles))
            data_bytes.append(ports["data"]["bytes_read"] + ports["data"]["bytes_written"])
        clock = lay.config.clock * 1e6
        emit("host_round_trips_per_token", float(np.mean(trips)), "starts", target=1, **ctx)
        emit("decode_cycles_per_token", float(np.mean(cycles)), "cycles", context_tokens=seq.length, **ctx)
        emit("decode_tokens_per_s", clock / float(np.mean(cycles)), "tokens/s", clock_mhz=lay.config.clock, **ctx)
        emit("decode_port_efficiency", float(np.mean(eff)), "ratio", target=0.85, ports=[p.name for p in stream],
             **ctx)
        emit("decode_data_port_bytes", float(np.mean(data_bytes)), "bytes", **ctx)
        emit("decode_all_ports_efficiency", float(np.mean(overall)), "ratio", ports=list(lay.port_names), **ctx)
        if prefill:
            seq2 = prog.sequence()
            prog.prefill(rng.normal(0, 1, (prefill, hidden)), seq2)
            st = prog.last_step
            peak = lay.matmul.macs_per_cycle
            emit("prefill_mac_utilization", st.mac_ops / (peak * st.cycles), "ratio", target=0.80, tokens=prefill,
                 cycles=st.cycles, mac_ops=st.mac_ops, macs_per_cycle=peak, **ctx)
        prog.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "u280_blocks.yaml"))
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--decode-steps", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--accuracy-only", action="store_true")
    ap.add_argument("--skip-prefill", action="store_true")
    ap.add_argument("--timeout", type=float, default=7200.0,
                    help="seconds one device run may take (a 512-token prefill is ~14 M co-sim cycles)")
    args = ap.parse_args(argv)
    accuracy()
    if not args.accuracy_only:
        performance(args.config, hidden=args.hidden, layers=args.layers, steps=args.decode_steps,
                    prefill=0 if args.skip_prefill else args.prefill, timeout=args.timeout)


if __name__ == "__main__":
    main()
