"""Decode with a sliding-window (+ sink) attention layer on the simulated accelerator.

    python examples/attention_decode.py [examples/u280_attention.yaml]

Float in, float out: the layer quantizes K/V into a paged int8 KV cache as tokens are
appended, quantizes Q per row, runs one ATTENTION descriptor per step and dequantizes.
Each step is checked bit for bit against the golden model and compared with float attention.
"""
import sys

import numpy as np

from hbmforge.host import Attention, KVCache, open_device

config = sys.argv[1] if len(sys.argv) > 1 else "examples/u280_attention.yaml"
q_heads, kv_heads, window, sink = 8, 2, 64, 4
rng = np.random.default_rng(0)

with open_device(config, backend="sim") as dev:                    # Verilator co-simulation
    hd = dev.layout.config.attention.head_dim
    cache = KVCache(dev, kv_heads=kv_heads, kv_bits=8, pages=16)   # K/V head scales: calibrated on prefill
    att = Attention(dev, q_heads=q_heads, kv_heads=kv_heads, head_dim=hd, window=window, sink=sink,
                    cache=cache)
    seq = cache.sequence()
    k = rng.standard_normal((96, kv_heads, hd))
    v = rng.standard_normal((96, kv_heads, hd))
    q = rng.standard_normal((96, q_heads, hd))
    o = att.prefill(q[:88], k[:88], v[:88], seq)                   # 88 prompt tokens
    r = att.last_run
    print(f"prefill 88 tokens: {r.cycles} cycles, KV {r.kv_bytes_read} B read, "
          f"MAC utilization {r.mac_utilization:.2f}")
    for t in range(88, 96):                                        # 8 decode steps
        o1 = att.decode_step(q[t], k[t], v[t], seq)
        r = att.last_run
        exact = np.array_equal(o1, att.golden(q[t:t + 1], seq)[0])
        ref = att.reference(q[t:t + 1], k[:t + 1], v[:t + 1])[0]
        print(f"token {t}: ctx {seq.length}, {r.cycles} cycles, KV {r.kv_bytes_read} B "
              f"(efficiency {r.kv_efficiency:.2f}), golden {'exact' if exact else 'MISMATCH'}, "
              f"rel. error vs float {np.linalg.norm(o1 - ref) / np.linalg.norm(ref):.4f}")
    print(f"pages used {len(seq.pages)} of {cache.num_pages}; clipped groups {cache.stats['clipped_groups']}")
    att.close()
    cache.close()
