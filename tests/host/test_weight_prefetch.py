"""weight_prefetch: the matmul reads its weights through readers of its own, and the command
processor hands it a MATMUL descriptor while the VECTOR or ATTENTION descriptor before it runs.
On the Verilator co-simulation a LLaMA decoder equals the golden program bit for bit; the whole
step takes fewer cycles than its descriptors one at a time (the weights stream early); a failing
descriptor before an early MATMUL still stops the run with its own error, and the next run works."""
from __future__ import annotations

import numpy as np
import pytest

from designs import tiny_vector_config_dict
from hbmforge.config import ConfigError, parse_config
from hbmforge.host import open_device
from hbmforge.layout import DesignLayout

from test_blocks import LLAMA, build_llama

PREFETCH = 512


def prefetch_config_dict(name="tiny_vec_pf", depth=PREFETCH):
    cfg = tiny_vector_config_dict(name)
    cfg["engines"][0]["weight_prefetch"] = depth
    return cfg


def test_the_config_names_the_allowed_depths():
    assert parse_config(prefetch_config_dict()).matmul.weight_prefetch == PREFETCH
    for bad in (100, 256, 768, 16384):
        with pytest.raises(ConfigError, match=r"engines.0.weight_prefetch: must be 0 \(off\) or a power of two "
                                              r"in \[512, 8192\]"):
            parse_config(prefetch_config_dict(depth=bad))
    from designs import tiny_memory_config_dict
    cfg = tiny_memory_config_dict()
    cfg["engines"][0]["weight_prefetch"] = PREFETCH
    with pytest.raises(ConfigError, match="weight_prefetch: a design with a memory engine"):
        parse_config(cfg)
    lay = DesignLayout(parse_config(prefetch_config_dict()))
    assert lay.to_json()["engines"][0]["weight_prefetch"] == PREFETCH


def _decode_cycles(cfg, tmp_path):
    """Prefill 4 tokens and decode 2 on the co-simulation of ``cfg`` (each step bit-exact against
    the golden program); the decode steps' cycles and the opcodes of a profiled step."""
    with open_device(parse_config(cfg), build_dir=tmp_path / cfg["name"], progress=False) as dev:
        rng = np.random.default_rng(21)
        prog, *_ = build_llama(dev, rng, layers=2)
        seq = prog.sequence()
        xs = rng.normal(0, 1, (7, LLAMA.hidden))
        golden = prog.golden_prefill(xs[:4], seq)          # the golden step first: it reads the cache before
        assert np.array_equal(prog.prefill(xs[:4], seq), golden)
        cycles = []
        for t in (4, 5):
            golden = prog.golden_decode_step(xs[t], seq)
            assert np.array_equal(prog.decode_step(xs[t], seq), golden)
            st = prog.last_step
            assert st.host_round_trips == 1 and st.counters["descriptors_done"] == st.descriptors
            cycles.append(st.cycles)
        golden = prog.golden_decode_step(xs[6], seq)        # one descriptor per run: nothing handed over early
        assert np.array_equal(prog.decode_step(xs[6], seq, profile=True), golden)
        ops = [r["opcode"] for r in prog.last_step.profile]
        prog.close()
    return cycles, ops


@pytest.mark.rtl
def test_a_decoder_with_weight_prefetch_equals_the_golden_program_in_fewer_cycles(tmp_path):
    cycles, ops = _decode_cycles(prefetch_config_dict(), tmp_path)
    ref, ref_ops = _decode_cycles(tiny_vector_config_dict("tiny_vec_host"), tmp_path)
    assert ops == ref_ops
    early = sum(1 for a, b in zip(ops, ops[1:]) if b == "MATMUL" and a in ("VECTOR", "ATTENTION"))
    assert early >= 8
    # the same steps on the same engines, but every MATMUL after a VECTOR streams its weights during it
    assert max(cycles) <= min(ref) - 8 * early, (cycles, ref)
