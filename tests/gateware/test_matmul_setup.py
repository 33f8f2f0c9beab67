"""The matmul sequencer's SETUP: every size register settles before the job starts.

SETUP computes the job's sizes as a chain of registers (one operation each, for timing), and
the loops start from them after ``SETUP_CYCLES``. A register still moving then would start the
loops from a wrong size, on some jobs only. This test elaborates the sequencer with a long
SETUP, records every setup register on every cycle of random jobs, and checks that the last
change comes before the cycle in which the real ``SETUP_CYCLES`` starts the loops.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from hbmforge.config import load_config, parse_config
from hbmforge.encodings import BiasMode, OutMode, WeightFormat
from hbmforge.generators.matmul import sequencer
from hbmforge.generators.matmul.geometry import EngineGeometry
from hbmforge.layout import DesignLayout
from designs import tiny_config_dict
from sim_helpers import simulate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LONG_SETUP = 64
DESIGNS = {
    "tiny": lambda: parse_config(tiny_config_dict()),
    "tiny_sparse": lambda: parse_config(tiny_config_dict(weight_bits=[2, 4, 8], sparse24=True)),
    "tiny_rows3": lambda: parse_config(tiny_config_dict(rows=3)),
    **{name: (lambda name=name: load_config(EXAMPLES / f"{name}.yaml"))
       for name in ("u280_llm512", "u280_ternary_5trit", "kv260_ternary")},
}


def _random_job(layout: DesignLayout, rng: random.Random) -> dict:
    mm = layout.mm
    fmt = WeightFormat.from_config(rng.choice(mm.weight_bits))
    sparse = fmt in {WeightFormat.from_config(f) for f in mm.sparse24_formats} and rng.random() < 0.5
    k_max = mm.max_k * mm.split_k
    return {"m": rng.choice([1, 2, 3, rng.randrange(1, 5000)]), "n": rng.randrange(1, 12000),
            "k": mm.lanes * rng.randrange(1, k_max // mm.lanes + 1),
            "wbits": int(fmt) | (16 if sparse else 0),
            "out_mode": rng.choice(list(OutMode)), "bias": rng.choice(list(BiasMode)),
            "out_shift": rng.randrange(0, 32), "bias_shift": rng.randrange(0, 8)}


def _settle_cycle(layout: DesignLayout, job: dict, monkeypatch) -> int:
    """The number of SETUP cycles after which no setup register changes for ``job``."""
    mm = layout.mm
    geom = EngineGeometry.of(layout)
    monkeypatch.setattr(sequencer, "SETUP_CYCLES", LONG_SETUP)
    seq = sequencer.JobSequencer(geom, ternary_packing=mm.ternary_packing, sparse24=bool(mm.sparse24),
                                 inline_scales=layout.matmul.inline_scales)
    trace = []

    async def bench(ctx):
        regs = seq.setup_registers        # set by elaborate, which runs before the testbench
        for name, value in job.items():
            ctx.set(getattr(seq.job.payload, name), value)
        for i in range(geom.weight_ports):
            ctx.set(seq.job.payload.w_addr[i], 0x10000 * (i + 1))
        ctx.set(seq.job.valid, 1)
        await ctx.tick()
        ctx.set(seq.job.valid, 0)
        for _ in range(LONG_SETUP - 1):
            trace.append(tuple(ctx.get(r) for r in regs))
            await ctx.tick()

    simulate(seq, bench)
    final = trace[-1]
    return 1 + max((c for c, values in enumerate(trace) if values != final), default=-1)


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_setup_registers_settle_before_the_job_starts(design, monkeypatch):
    real = sequencer.SETUP_CYCLES
    layout = DesignLayout(DESIGNS[design]())
    rng = random.Random(design)
    settles = [_settle_cycle(layout, _random_job(layout, rng), monkeypatch) for _ in range(4)]
    # trace[c] holds the registers in SETUP cycle c (count == c); the loops start from them in
    # cycle SETUP_CYCLES - 1, so every value must be final by then
    assert max(settles) <= real - 1, f"{design}: setup registers settle after {settles} cycles, " \
                                     f"SETUP_CYCLES is {real}"
    assert min(settles) >= 8, f"{design}: the trace settled after {settles} cycles: it sees no chain"
