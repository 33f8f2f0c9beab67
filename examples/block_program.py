"""A whole decoder as one descriptor program per step, on the co-simulated kernel.

    python examples/block_program.py [--config examples/u280_blocks.yaml] [--hidden 256] [--layers 2]

Builds a LLaMA-shaped decoder with random int8 weights (no checkpoint needed; see
examples/run_decoder.py for Hugging Face checkpoints), runs a prefill chunk and a few decode
steps, and checks every step against the same integer program run by the CPU golden model.
Each step is one start and one wait of the device: the vector engine keeps every activation in
device memory between the matmul and attention descriptors (docs/architecture.md §9).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from hbmforge.host import BlockConfig, BlockWeights, ModelProgram, open_device
from hbmforge.numerics.encoded import quantize_weights_encoded

HERE = Path(__file__).resolve().parent


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(HERE / "u280_blocks.yaml"))
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=8, help="tokens in the prefill chunk")
    ap.add_argument("--steps", type=int, default=4, help="decode steps")
    args = ap.parse_args(argv)

    dev = open_device(args.config, progress=True)
    lay = dev.layout
    hd = lay.attention.head_dim
    heads = args.hidden // hd
    cfg = BlockConfig(arch="llama", hidden=args.hidden, heads=heads, kv_heads=max(1, heads // 4), head_dim=hd,
                      intermediate=round(args.hidden * 2.75 / 128) * 128)
    rng = np.random.default_rng(0)
    layers = []
    for _ in range(args.layers):
        t = {n: rng.normal(0, 1 / math.sqrt(cfg.projection_shape(n)[1]), cfg.projection_shape(n))
             for n in cfg.projections}
        t["attn_norm"] = t["mlp_norm"] = np.ones(args.hidden)
        layers.append(BlockWeights.from_float(cfg, t, bits=8, group_size=lay.mm.group_size))
    head = quantize_weights_encoded(rng.normal(0, 1 / math.sqrt(args.hidden), (1024, args.hidden)), 8,
                                    lay.mm.group_size, lay.mm.scale_bits)
    with dev, ModelProgram(dev, cfg, layers, final_norm=(np.ones(args.hidden), None), lm_head=head) as model:
        seq = model.sequence()
        x = rng.normal(0, 1, (args.prompt, args.hidden))
        golden = model.golden_prefill(x, seq)
        logits = model.prefill(x, seq)
        st = model.last_step
        print(f"prefill {args.prompt} tokens: {st.cycles} cycles, {st.descriptors} descriptors, "
              f"{st.host_round_trips} start, golden {'equal' if np.array_equal(logits, golden) else 'DIFFERENT'}")
        for i in range(args.steps):
            x1 = rng.normal(0, 1, args.hidden)
            golden = model.golden_decode_step(x1, seq)
            logits = model.decode_step(x1, seq)
            st = model.last_step
            print(f"decode step {i}: token {int(np.argmax(logits))}, {st.cycles} cycles, "
                  f"{st.host_round_trips} start, golden {'equal' if np.array_equal(logits, golden) else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
