"""exp2 / reciprocal RTL units and the ATTENTION descriptor checks against their golden models."""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Const, Module, Signal
from amaranth.sim import Simulator

from hbmforge.encodings import ErrorCode
from hbmforge.engines.attention import ATTENTION_FIELDS, attention_checks, validate_attention
from hbmforge.config import parse_config
from hbmforge.generators.engine import rtl_error_code
from hbmforge.generators.attention.exp2 import Exp2
from hbmforge.generators.attention.recip import Reciprocal
from hbmforge.layout import DesignLayout
from hbmforge.numerics.softmax import exp2_neg, reciprocal

from designs import tiny_config_dict


def _comb_sweep(dut, inp, outs, values):
    got = []

    async def bench(ctx):
        for v in values:
            ctx.set(inp, v)
            got.append(tuple(ctx.get(o) for o in outs))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return got


def test_exp2_unit_matches_golden_on_every_input_up_to_zero_and_beyond():
    dut = Exp2(25)
    ds = list(range(0, 18 << 8)) + [1 << 20, (1 << 25) - 1]
    got = [g for (g,) in _comb_sweep(dut, dut.d, [dut.p], ds)]
    assert got == [int(exp2_neg(d)) for d in ds]


def test_reciprocal_unit_matches_golden():
    dut = Reciprocal(36)
    rng = np.random.default_rng(0)
    ls = [0, 1, 2, 3, (1 << 15), (1 << 17) - 1, (1 << 17), (1 << 36) - 1] + \
        [int(v) for v in rng.integers(1, 1 << 36, 3000)] + list(range(32768, 32768 + 2000))
    got = _comb_sweep(dut, dut.l, [dut.y, dut.n], ls)
    assert got == [reciprocal(l) for l in ls]


def _layout():
    cfg = tiny_config_dict()
    cfg["engines"].append({"kind": "attention", "head_dim": 32, "rows": 2, "kv_bits": [8], "kv_group_size": 16,
                           "page_tokens": 4, "max_context": 128})
    return DesignLayout(parse_config(cfg))


def test_descriptor_checks_mirror_validate_attention():
    lay = _layout()
    rng = np.random.default_rng(1)
    good = {"head_dim": 32, "kv_heads": 2, "q_per_kv": 4, "n_q": 3, "ctx_len": 10, "window": 0, "sink": 0,
            "kv_bits": 8, "q_addr": 64, "bt_addr": 128, "k_pool": 4096, "v_pool": 8192, "o_addr": 256}
    variants = [good]
    tweaks = [("head_dim", 64), ("kv_heads", 0), ("q_per_kv", 0), ("kv_heads", 33), ("q_per_kv", 2000),
              ("kv_bits", 4), ("kv_bits", 3), ("n_q", 0), ("ctx_len", 0), ("ctx_len", 129), ("n_q", 11),
              ("window", 129), ("sink", 2), ("sink", 200), ("q_addr", 65), ("o_addr", 4), ("v_pool", 1 << 40),
              ("kv_heads", 1 << 40)]
    for f, v in tweaks:
        variants.append({**good, f: v})
    for _ in range(40):                                       # several faults at once: the first one wins
        d = dict(good)
        for f, v in [tweaks[i] for i in rng.choice(len(tweaks), 3, replace=False)]:
            d[f] = v
        variants.append(d)
    fields = {name: Signal(64, name=name) for name in ATTENTION_FIELDS}
    m = Module()
    code = rtl_error_code(m, attention_checks(lay), fields)
    got = []

    async def bench(ctx):
        for d in variants:
            for name, sig in fields.items():
                ctx.set(sig, d[name])
            got.append(ctx.get(code))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    expected = [validate_attention(d, lay)[0] for d in variants]
    assert got == expected
    assert set(expected) >= {0, ErrorCode.BAD_HEAD_DIM, ErrorCode.BAD_HEADS, ErrorCode.BAD_KV_BITS,
                             ErrorCode.BAD_CONTEXT, ErrorCode.BAD_MASK, ErrorCode.MISALIGNED}
