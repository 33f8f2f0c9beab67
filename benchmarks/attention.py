"""Attention unit accuracy and performance; prints one JSON object per line.

    python benchmarks/attention.py [--board u280] [--ctx 4096] [--heads 32] [--prefill 1024]
                                   [--encoder 128] [--valid 111] [--accuracy-only]

Metrics (``{"bench": "attention", "metric", "value", "unit", ...context}``):

* ``softmax_max_abs_err``: probabilities of the integer online softmax against float64
  (target <= 1/256).
* ``gelu_max_abs_err`` / ``silu_max_abs_err``: every representable input in [-8, 8]
  against float64 (target <= 0.01); ``rmsnorm_max_abs_err`` / ``layernorm_max_abs_err``.
* ``exp2_max_rel_err`` / ``reciprocal_max_rel_err``: the softmax's base-2 exp and reciprocal.
* ``decode_attention_rel_err``: the golden integer attention (bit-exact with the RTL)
  against float64 attention on random data of realistic scale, KV8 (target <= 0.02) and KV4.
* ``decode_attention_kv_efficiency``: KV bytes delivered / KV port peak while the
  co-simulated kernel decodes one token over a ``ctx``-token cache with ``heads`` heads
  of dim 128 (target >= 0.85).
* ``prefill_mac_utilization``: MACs needed under the causal mask / (peak MACs per cycle x
  cycles) for a ``prefill``-token prompt (target >= 0.80).
* ``encoder_attention_rel_err``: bidirectional (encoder) attention, golden integer model against
  float64, 128 positions of which 111 are real tokens (the rest padded keys), KV8 and KV4.
* ``bidirectional_attention_mac_utilization`` / ``_kv_efficiency`` / ``_rel_err_device``: one
  encoder call on the co-simulated kernel (``encoder`` positions, ``valid`` real tokens, 8 heads):
  MACs needed (every row x every valid key) / (peak x cycles), KV bytes / port peak, and the
  device output's error against float64.

Cycle counts are deterministic; errors are measured, not asserted.
"""
from __future__ import annotations

import argparse
import json

from hbmforge.config import parse_config


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "attention", "metric": metric, "value": value, "unit": unit, **context}),
          flush=True)


def accuracy() -> None:
    from hbmforge.numerics import nonlinear, softmax
    from hbmforge.numerics.attention import decode_attention_rel_err, encoder_attention_rel_err

    emit("softmax_max_abs_err", softmax.softmax_max_abs_err(), "probability", target=1 / 256)
    emit("exp2_max_rel_err", softmax.exp2_max_rel_err(), "ratio")
    emit("reciprocal_max_rel_err", softmax.reciprocal_max_rel_err(), "ratio")
    for name, fn in (("gelu", nonlinear.measure_gelu_error), ("silu", nonlinear.measure_silu_error)):
        r = fn()
        emit(f"{name}_max_abs_err", r["max_abs_err"], "abs", range=[-8, 8], target=0.01,
             max_abs_err_lsb=r.get("max_abs_err_lsb"))
    for name, fn in (("rmsnorm", nonlinear.measure_rmsnorm_error),
                     ("layernorm", nonlinear.measure_layernorm_error)):
        r = fn()
        emit(f"{name}_max_abs_err", r["max_abs_err"], "abs", max_abs_err_lsb=r.get("max_abs_err_lsb"),
             dim=256)
    for bits, target in ((8, 0.02), (4, None)):
        err = decode_attention_rel_err(bits)
        extra = {"target": target} if target else {}
        emit("decode_attention_rel_err", err, "ratio", kv_bits=bits, **extra)
    for bits in (8, 4):
        emit("encoder_attention_rel_err", encoder_attention_rel_err(bits), "ratio", kv_bits=bits, tokens=128,
             valid_len=111, heads=4, head_dim=128)


def attention_config(board: str, *, rows: int = 8, kv_ports: int = 2, max_context: int = 8192) -> dict:
    from hbmforge.config import starter_config

    cfg = starter_config(board, name="attn_bench")
    cfg["engines"].append({"kind": "attention", "name": "attn0", "head_dim": 128, "rows": rows,
                           "kv_bits": [4, 8], "kv_group_size": 32, "page_tokens": 16,
                           "max_context": max_context, "kv_ports": kv_ports})
    return cfg


def performance(board: str, ctx: int, heads: int, prefill: int, encoder: int, valid: int) -> None:
    from hbmforge.flows.attention_runner import run_attention

    cfg = parse_config(attention_config(board, max_context=max(8192, ctx)))
    att = cfg.attention
    common = {"board": board, "head_dim": att.head_dim, "rows": att.rows, "kv_ports": att.kv_ports,
              "page_tokens": att.page_tokens}
    for bits in (8, 4):
        r = run_attention(cfg, ctx=ctx, n_q=1, q_heads=heads, kv_heads=heads, kv_bits=bits, window=0,
                          sink=0, seed=0, timeout=7200)
        if r["golden_mismatches"]:
            raise SystemExit(f"decode attention mismatches the golden model: {r['golden_mismatches']}")
        emit("decode_attention_kv_efficiency", round(r["kv_efficiency"], 4), "ratio", ctx=ctx, heads=heads,
             kv_bits=bits, cycles=r["cycles"], kv_bytes=r["kv_bytes_read"],
             **({"target": 0.85} if bits == 8 else {}), **common)
        emit("decode_attention_cycles", r["cycles"], "cycles", ctx=ctx, heads=heads, kv_bits=bits, **common)
        emit("decode_attention_rel_err_device", r["rel_err_vs_float"], "ratio", ctx=ctx, heads=heads, kv_bits=bits,
             **common)
    r = run_attention(cfg, ctx=prefill, n_q=prefill, q_heads=1, kv_heads=1, kv_bits=8, window=0, sink=0,
                      seed=1, timeout=7200)
    if r["golden_mismatches"]:
        raise SystemExit(f"prefill attention mismatches the golden model: {r['golden_mismatches']}")
    emit("prefill_mac_utilization", None if r["mac_utilization"] is None else round(r["mac_utilization"], 4),
         "ratio", tokens=prefill, heads=1, kv_bits=8, cycles=r["cycles"], mac_ops=r["mac_ops"], target=0.80,
         **common)
    emit("prefill_cycles", r["cycles"], "cycles", tokens=prefill, heads=1, **common)
    bidirectional(cfg, encoder, valid, common)


def bidirectional(cfg, tokens: int, valid: int, common: dict, heads: int = 8) -> None:
    """One encoder call: ``tokens`` positions (queries and keys), the first ``valid`` real."""
    from hbmforge.flows.attention_runner import run_attention

    for bits in (8, 4):
        r = run_attention(cfg, ctx=tokens, n_q=tokens, q_heads=heads, kv_heads=heads, kv_bits=bits,
                          mode="bidirectional", valid_len=valid, seed=2, timeout=7200)
        if r["golden_mismatches"]:
            raise SystemExit(f"bidirectional attention mismatches the golden model: {r['golden_mismatches']}")
        ctx = dict(tokens=tokens, valid_len=valid, heads=heads, kv_bits=bits, cycles=r["cycles"], **common)
        emit("bidirectional_attention_mac_utilization", round(r["mac_utilization"], 4), "ratio",
             mac_ops=r["mac_ops"], **ctx)
        emit("bidirectional_attention_kv_efficiency", round(r["kv_efficiency"], 4), "ratio",
             kv_bytes=r["kv_bytes_read"], **ctx)
        emit("bidirectional_attention_rel_err_device", r["rel_err_vs_float"], "ratio", **ctx)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="u280")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=1024)
    ap.add_argument("--encoder", type=int, default=128, help="positions of the bidirectional (encoder) call")
    ap.add_argument("--valid", type=int, default=111, help="real tokens among them (the rest is padding)")
    ap.add_argument("--accuracy-only", action="store_true")
    ap.add_argument("--bidirectional-only", action="store_true", help="accuracy, then only the encoder call")
    args = ap.parse_args(argv)
    accuracy()
    if args.bidirectional_only:
        cfg = parse_config(attention_config(args.board))
        att = cfg.attention
        bidirectional(cfg, args.encoder, args.valid, {"board": args.board, "head_dim": att.head_dim, "rows": att.rows,
                                                      "kv_ports": att.kv_ports, "page_tokens": att.page_tokens})
    elif not args.accuracy_only:
        performance(args.board, args.ctx, args.heads, args.prefill, args.encoder, args.valid)


if __name__ == "__main__":
    main()
