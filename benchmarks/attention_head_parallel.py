"""Decode attention cycles per head-token, shared vs head-parallel KV layout; one JSON object per line.

    python benchmarks/attention_head_parallel.py [--ctx 2048] [--heads 32] [--page-tokens 16]
        [--rows 4] [--clocks 300,0] [--layouts shared,head_parallel] [--seed 0]

The design is the lead's /tmp/attx experiment: a 512-bit U280 kernel with a small matmul and an
attention engine (head_dim 128, ``rows`` R (default 4), KV4 groups of 32, ``page_tokens``), here
with ``head_parallel: true`` and ``kv_ports: 2R`` so both layouts run on the same RTL:

* ``shared`` (kv_layout 0): K on w0, V on w<2R-1>; MHA decode fills one row of each tile;
* ``head_parallel`` (kv_layout 1): row r of a tile is head ``r * heads/R + t``, K on w<2r>, V on
  w<2r+1>, each group's pools in its own pseudo-channel.

One decode step (n_q = 1) over a ``ctx``-token cache of ``heads`` MHA heads; the output is
compared bit for bit with the golden model (``golden_mismatches``). ``--clocks``: memory model
per run: a clock in MHz selects the calibrated HBM model at that clock, 0 the ideal per-port model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from hbmforge.config import parse_config


def design(page_tokens: int, rows: int = 4):
    name = f"attxhp{page_tokens}" if rows == 4 else f"attxhp{page_tokens}r{rows}"
    return parse_config({"version": 1, "name": name, "board": "u280", "clock_mhz": 300,
                         "axi": {"data_width": 512, "max_burst_beats": 32, "max_outstanding": 8, "id_width": 4},
                         "engines": [{"kind": "matmul", "name": "mm0", "rows": 1, "lanes": 128, "weight_ports": 2,
                                      "weight_bits": [4], "group_size": 128, "max_k": 4096},
                                     {"kind": "attention", "name": "attn0", "head_dim": 128, "rows": rows,
                                      "kv_bits": [4], "kv_group_size": 32, "page_tokens": page_tokens,
                                      "max_context": 4096, "kv_ports": 2 * rows, "head_parallel": True}]})


def decode_once(dev, *, layout: str, ctx: int, heads: int, seed: int) -> dict:
    from hbmforge.host import Attention, KVCache

    hd = dev.layout.config.attention.head_dim
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((ctx, heads, hd))
    v = rng.standard_normal((ctx, heads, hd))
    q = rng.standard_normal((heads, hd))
    P = dev.layout.config.attention.page_tokens
    with KVCache(dev, kv_heads=heads, kv_bits=4, pages=-(-ctx // P), on_clip="count", layout=layout,
                 k_range=np.abs(k).max(axis=(0, 2)), v_range=np.abs(v).max(axis=(0, 2))) as cache, \
            Attention(dev, q_heads=heads, kv_heads=heads, head_dim=hd, cache=cache, timeout=3600) as att:
        seq = cache.sequence()
        cache.append(seq, k[:ctx - 1], v[:ctx - 1])
        t0 = time.perf_counter()
        att.decode_step(q, k[ctx - 1], v[ctx - 1], seq)
        wall = time.perf_counter() - t0
        r = att.last_run
        golden = att.golden_int(r.q_int, r.mult, r.shift, seq)
        return {"cycles": r.cycles, "golden_mismatches": int(np.count_nonzero(r.output_int != golden)),
                "kv_bytes_read": r.kv_bytes_read, "kv_efficiency": r.kv_efficiency,
                "kv_port_bytes_read": {p: b for p, b in sorted(r.port_bytes_read.items()) if p.startswith("w") and b},
                "sim_wall_seconds": wall}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--page-tokens", type=int, default=16)
    ap.add_argument("--rows", type=int, default=4, help="attention rows R (heads per tile; kv_ports 2R)")
    ap.add_argument("--clocks", default="300,0")
    ap.add_argument("--layouts", default="shared,head_parallel")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from hbmforge.host import open_device

    cfg = design(args.page_tokens, args.rows)
    t0 = time.time()
    dev = open_device(cfg)
    print(f"open {time.time() - t0:.1f} s", file=sys.stderr)
    try:
        for clk in (float(c) for c in args.clocks.split(",")):
            if clk:
                dev.sim.set_memory_model("calibrated", clock_mhz=clk)
            else:
                dev.sim.set_memory_model("ideal")
            for layout in args.layouts.split(","):
                r = decode_once(dev, layout=layout, ctx=args.ctx, heads=args.heads, seed=args.seed)
                print(json.dumps({"bench": "attention_head_parallel", "layout": layout, "rows": args.rows,
                                  "kv_ports": 2 * args.rows, "page_tokens": args.page_tokens,
                                  "ctx": args.ctx, "heads": args.heads, "mem_clock": clk or "ideal",
                                  "seed": args.seed, "per_head_token": r["cycles"] / (args.heads * args.ctx), **r}),
                      flush=True)
    finally:
        dev.close()


if __name__ == "__main__":
    main()
