# amaranth: UnusedElaboratable=no
"""The vector engine with one row per block (R = 1, the decode designs' matmul): every descriptor
kind against hbmforge.numerics.vector.run_vector under random stalls and back-pressure, single
rows (decode) and several blocks (prefill). R = 1 takes the paths the other benches do not: the
RES32 store straight from SWEEP1 (no tile pass), SWEEP1 following the receiver, every block
its own row."""
from __future__ import annotations

import numpy as np
import pytest

from designs import tiny_vector_config_dict
from hbmforge.config import parse_config
from hbmforge.generators.vector.elementwise import ElementPipe
from hbmforge.generators.vector.testing import CASE_KINDS, ROW_KINDS, VectorBench, random_case
from hbmforge.encodings import VectorIn, VectorOut
from hbmforge.layout import DesignLayout


def _layout(width: int) -> DesignLayout:
    cfg = tiny_vector_config_dict()
    cfg["axi"]["data_width"] = width
    cfg["engines"][0].update(rows=1, lanes=16)
    return DesignLayout(parse_config(cfg))


def _diff(a, b) -> str:
    bad = [i for i in range(len(a)) if a[i] != b[i]]
    return f"{len(bad)} bytes differ, first at {bad[0]:#x}" if bad else ""


@pytest.mark.parametrize("width, m, seed", [(64, 1, 0), (64, 3, 1), (128, 1, 2), (128, 2, 3)])
def test_one_row_blocks_match_the_golden_model_under_stalls(width, m, seed):
    layout = _layout(width)
    assert layout.mm.rows == 1
    bench = VectorBench(layout, seed=seed, stall=0.3, backpressure=0.3)
    rng = np.random.default_rng(seed)
    for kind in CASE_KINDS + ROW_KINDS:
        random_case(bench, rng, kind, m=m)
    before = bytes(bench.mem)
    expected = bench.run(max_cycles=60_000)
    assert bench.mem == expected, _diff(bench.mem, expected)
    assert expected != before


def test_direct_residual_add_overlaps_its_store_with_the_loads():
    layout = _layout(64)
    bench = VectorBench(layout, seed=5, stall=0.0, backpressure=0.0)
    rng = np.random.default_rng(5)
    dim = 256
    random_case(bench, rng, "add_res32", m=1, dim=dim)
    expected = bench.run(max_cycles=20_000)
    assert bench.mem == expected, _diff(bench.mem, expected)
    words = dim * 4 // layout.word_bytes            # A, B and Y each
    # A and B load one word per cycle; the sweep follows B and the store follows the sweep (its
    # element pipeline's fixed latency once, plus a constant: the job's start, the write's answer
    # and its count registered before it is taken off the outstanding writes)
    assert bench.cycles[0] <= 2 * words + ElementPipe.LATENCY + 32, bench.cycles


def test_a_residual_add_and_the_next_norm_in_one_pass_cost_less_than_the_two():
    """res_out: h += deq(y) written as RES32 while the same pass goes on to RMSNorm(h) -> ACT8; bit-exact
    with the two descriptors it replaces, and faster than them back to back."""
    layout = _layout(64)
    dim, seed = 256, 7
    fused = VectorBench(layout, seed=seed, stall=0.0, backpressure=0.0)
    d = random_case(fused, np.random.default_rng(seed), "residual_norm_act8", m=1, dim=dim)
    expected = fused.run(max_cycles=20_000)
    assert fused.mem == expected, _diff(fused.mem, expected)
    # the same work as two descriptors: the residual add (RES32, in place), then the norm of the sum
    two = VectorBench(layout, seed=seed, stall=0.0, backpressure=0.0)
    d2 = random_case(two, np.random.default_rng(seed), "residual_norm_act8", m=1, dim=dim)   # the same memory
    add = {k: v for k, v in d2.items() if k not in ("norm", "gamma_addr", "eps_q", "eps_shift", "norm_shift",
                                                    "y_scale", "res_out", "res_addr")}
    add.update(out_fmt=VectorOut.RES32, y_addr=d2["res_addr"])
    norm = {k: d2[k] for k in ("m", "dim", "norm", "gamma_addr", "eps_q", "eps_shift", "norm_shift", "y_addr",
                               "y_scale")}
    norm.update(a_fmt=VectorIn.RES32, a_addr=d2["res_addr"], a_stride=d2["b_stride"], out_fmt=VectorOut.ACT8)
    two.jobs.clear()
    two.add(add)
    two.add(norm)
    expected_two = two.run(max_cycles=20_000)
    assert two.mem == expected_two, _diff(two.mem, expected_two)
    assert bytes(two.mem) == bytes(fused.mem)           # the same h and the same ACT8 rows and scale
    assert d["res_out"] == 1 and fused.cycles[0] < two.cycles[0] + two.cycles[1], (fused.cycles, two.cycles)


class _HandshakeTimes(VectorBench):
    """A VectorBench that notes the cycle of the last data-port read word and of the first word
    written (data port or a KV port): when the store started against the operand loads."""

    def add_dma(self, sim) -> None:
        super().add_dma(sim)
        dut = self.dut
        ch = dut.signature.channels
        reads = [getattr(dut, f"{n}_data") for n in ch.data_readers]
        writes = ([dut.out_data] if ch.data_writer else []) + [dut.sw_data[i] for i in range(ch.stream_writers)]
        self.last_read, self.first_write = None, None

        async def watch(ctx):
            now = 0
            signals = [s for port in reads + writes for s in (port.valid, port.ready)]
            async for _, _, *values in ctx.tick().sample(*signals):
                now += 1
                fired = [values[2 * i] and values[2 * i + 1] for i in range(len(reads) + len(writes))]
                if any(fired[:len(reads)]):
                    self.last_read = now
                if self.first_write is None and any(fired[len(reads):]):
                    self.first_write = now
        sim.add_testbench(watch, background=True)


@pytest.mark.parametrize("kind", ["rope_qrec", "kv4", "kv8_rope"])
def test_head_quantized_stores_start_while_the_operand_loads(kind):
    # Q records and KV appends quantize per head (or per group of a head): the store takes head h as
    # soon as its groups' parameters are in, so the first head is written while later heads' words
    # are still being read (a store after the whole sweep would write only after the last read)
    layout = _layout(64)
    bench = _HandshakeTimes(layout, seed=7, stall=0.0, backpressure=0.0)
    rng = np.random.default_rng(7)
    random_case(bench, rng, kind, m=1, dim=layout.mm.rows * 256)
    expected = bench.run(max_cycles=20_000)
    assert bench.mem == expected, _diff(bench.mem, expected)
    assert bench.first_write is not None and bench.last_read is not None
    assert bench.first_write < bench.last_read, (bench.first_write, bench.last_read)
