"""Block programs and single vector ops on the Verilator co-simulation of a design with matmul,
attention and vector engines: every step equals the CPU golden program bit for bit, with one
start per step."""
from __future__ import annotations

import numpy as np
import pytest

from designs import tiny_vector_config_dict
from hbmforge.config import parse_config
from hbmforge.host import open_device
from hbmforge.host.blocks import BlockWeights, TransformerBlock
from hbmforge.host.vector import Vector

from test_blocks import BERT, LLAMA, _cos, build_llama, float_forward, float_layer

pytestmark = pytest.mark.rtl


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    with open_device(parse_config(tiny_vector_config_dict("tiny_vec_host")),
                     build_dir=tmp_path_factory.mktemp("tiny_vec"), progress=False) as d:
        yield d


def _prefill_then_decode(prog, xs, first: int):
    """Prefill ``xs[:first]``, then decode the rest a step at a time: every result equals the golden
    program's, every step is one start running all its descriptors. Returns the last step's stats."""
    seq = prog.sequence()
    golden = prog.golden_prefill(xs[:first], seq)
    assert np.array_equal(prog.prefill(xs[:first], seq), golden)
    for t in range(first, len(xs)):
        golden = prog.golden_decode_step(xs[t], seq)
        assert np.array_equal(prog.decode_step(xs[t], seq), golden)
        st = prog.last_step
        assert st.host_round_trips == 1 and st.counters["descriptors_done"] == st.descriptors
    return st


def test_decoder_prefill_and_decode_on_the_cosim_equal_the_golden_program(dev):
    rng = np.random.default_rng(10)
    prog, *_ = build_llama(dev, rng, layers=2)
    _prefill_then_decode(prog, rng.normal(0, 1, (8, LLAMA.hidden)), 5)
    prog.close()


def test_a_profiled_step_gives_the_same_result_and_each_descriptors_cycles(dev):
    rng = np.random.default_rng(11)
    prog, *_ = build_llama(dev, rng, layers=2)
    seq = prog.sequence()
    xs = rng.normal(0, 1, (6, LLAMA.hidden))
    golden = prog.golden_prefill(xs[:4], seq)
    assert np.array_equal(prog.prefill(xs[:4], seq, profile=True), golden)
    for t in (4, 5):
        golden = prog.golden_decode_step(xs[t], seq)
        assert np.array_equal(prog.decode_step(xs[t], seq, profile=True), golden)
        st = prog.last_step
        assert len(st.profile) == st.descriptors == st.host_round_trips
        ops = {row["opcode"] for row in st.profile}
        assert {"MATMUL", "ATTENTION"} <= ops, ops
        assert all(row["cycles"] > 0 for row in st.profile)
        assert st.cycles == sum(row["cycles"] for row in st.profile)
        assert st.mac_ops == sum(row["mac_ops"] for row in st.profile) > 0
    golden = prog.golden_decode_step(xs[0], seq)            # and an unprofiled step after it
    assert np.array_equal(prog.decode_step(xs[0], seq), golden) and prog.last_step.profile == []
    with pytest.raises(TypeError, match="profile"):
        prog.decode_step(xs[0], seq, profile="yes")
    prog.close()


def test_encoder_block_on_the_cosim_equals_golden_and_tracks_float(dev):
    rng = np.random.default_rng(11)
    t = float_layer(BERT, rng)
    blk = TransformerBlock(dev, BERT, BlockWeights.from_float(BERT, t, bits=8, group_size=dev.layout.mm.group_size))
    x = rng.normal(0, 1, (6, BERT.hidden))
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    seq = blk.sequence()
    golden = blk.golden_prefill(x, seq, valid_len=4)
    h = blk.prefill(x, seq, valid_len=4)
    assert np.array_equal(h, golden)
    ref = float_forward(BERT, [t], x, valid=4)
    assert min(_cos(h[i], ref[i]) for i in range(4)) > 0.99
    blk.close()


def test_single_vector_ops_on_the_cosim_equal_the_golden_runs(dev):
    rng = np.random.default_rng(12)
    x, b = rng.normal(0, 2, (3, 32)), rng.normal(0, 2, (3, 32))
    with Vector(dev) as vec:
        for op, args in (("rmsnorm", (x, rng.uniform(0.5, 1.5, 32))), ("swiglu", (x, b)), ("gelu", (x,)),
                         ("rope", (x,)), ("quantize", (x,))):
            kwargs = {"positions": np.arange(2, 5)} if op == "rope" else {}
            got, want = getattr(vec, op)(*args, **kwargs), vec.golden(op, *args, **kwargs)
            if op == "quantize":
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
            else:
                assert np.array_equal(got, want), op
            assert vec.last_run.cycles > 0


def test_head_parallel_decoder_on_the_cosim_appends_every_group_in_one_descriptor(tmp_path):
    # rows 2 / kv_ports 4: K pools on w0, w2, V pools on w1, w3; per side one KV append over both
    # port groups (kv_groups 2), then one head-parallel attention per token: bit-exact with golden
    from test_blocks_head_parallel import MHA, hp_vector_config

    with open_device(parse_config(hp_vector_config("tiny_vec_hp_host")), build_dir=tmp_path, progress=False) as d:
        rng = np.random.default_rng(12)
        prog, *_ = build_llama(d, rng, layers=2, cfg=MHA)
        assert prog.kv_layout == "head_parallel"
        st = _prefill_then_decode(prog, rng.normal(0, 1, (7, MHA.hidden)), 4)
        # the step's K and V of each group went out on that group's port
        assert all(st.counters["ports"][f"w{i}"]["bytes_written"] > 0 for i in range(4)), st.counters["ports"]
        prog.close()


def _sparse_llama(dev, rng, bits):
    """A 2-layer LLaMA block program of 2:4-pruned weights (``bits``: 2 or "ternary"), 2:4 packed."""
    from hbmforge.host.blocks import ModelProgram
    from hbmforge.numerics.sparse import prune_2_4
    from test_blocks import float_layer

    lay = dev.layout
    blocks = []
    for _ in range(2):
        t = float_layer(LLAMA, rng)
        t.update({name: prune_2_4(t[name]) for name in LLAMA.projections})
        blocks.append(BlockWeights.from_float(LLAMA, t, bits=bits, group_size=lay.mm.group_size))
    return ModelProgram(dev, LLAMA, blocks, kv_bits=8, sparse24=True)


@pytest.mark.parametrize("bits", [2, "ternary"])
def test_sparse24_decoder_runs_pair_fires_on_the_cosim_bit_exact(tmp_path, bits):
    """A matmul engine with the 2:4 pair fire (sparse24_pairs): every projection of a W2 / ternary
    2:4 decoder (N even) fires two columns at once; prefill and decode steps equal the golden program.
    With dense_pairs too, dense Linears of the format fire two columns at once as well."""
    cfg = tiny_vector_config_dict("tiny_vec_pairs")
    cfg["engines"][0].update(weight_bits=[2, 4, "ternary"], max_k=16, sparse24=True, sparse24_pairs=True,
                             dense_pairs=True)
    with open_device(parse_config(cfg), build_dir=tmp_path, progress=False) as d:
        rng = np.random.default_rng(13)
        prog = _sparse_llama(d, rng, bits)
        st = _prefill_then_decode(prog, rng.normal(0, 1, (6, LLAMA.hidden)), 4)
        assert st.mac_ops > 0
        prog.close()
        # a 2:4 Linear of odd N: a zero column added on the device, so it still runs as pair fires
        # (ceil(N / 2) fires per K slice of the row block, L MACs per row each)
        from hbmforge.host import Linear
        n, k, lanes = 7, 32, d.layout.mm.lanes
        lin = Linear.from_float(rng.normal(0, 0.1, (n, k)), bits=bits, device=d, sparse24=True)
        xq = rng.integers(-128, 128, (2, k))
        assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
        assert lin.last_run.counters["mac_ops"] == (n + 1) // 2 * (k // lanes) * 2 * lanes
        lin.close()
        # dense_pairs: a dense Linear of the same format (odd N too) runs as dense pair fires
        for n in (7, 10):
            lin = Linear.from_float(rng.normal(0, 0.1, (n, k)), bits=bits, device=d)
            assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
            assert lin.last_run.counters["mac_ops"] == (n + 1) // 2 * (k // lanes) * 2 * lanes
            lin.close()


def test_one_row_decoder_fuses_each_residual_with_the_next_norm_on_the_cosim(tmp_path):
    """rows 1 (the decode designs' matmul): each residual add writes h and the next RMSNorm's int8 rows
    in one descriptor (res_out); prefill and decode steps equal the golden program bit for bit."""
    cfg = tiny_vector_config_dict("tiny_vec_rows1")
    cfg["engines"][0]["rows"] = 1
    with open_device(parse_config(cfg), build_dir=tmp_path, progress=False) as dev:
        rng = np.random.default_rng(23)
        prog, *_ = build_llama(dev, rng, layers=2)
        st = _prefill_then_decode(prog, rng.normal(0, 1, (6, LLAMA.hidden)), 3)
        assert st.descriptors == 2 * 14 + 2 - 2 * 2          # norm2 of both layers, norm1 of layer 1, final norm
        prog.close()
