"""The tensor-parallel decoder block (hbmforge.host.tp_block) on golden devices: every device's
program run by the golden model, the gathers by GoldenFabric, against the same block on one
device (ModelProgram's golden step). No Verilator: the co-simulated run is in
tests/sim/test_network_cosim.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.engines.network import SwitchGeometry
from hbmforge.host.blocks import BlockConfig, BlockProgramError, BlockWeights, TransformerBlock
from hbmforge.host.cluster import Cluster
from hbmforge.host.tp_block import TensorParallelBlock
from hbmforge.layout import DesignLayout

from designs import tiny_vector_config_dict
from golden_kernel import GoldenDevice


def tp_layout() -> DesignLayout:
    cfg = tiny_vector_config_dict("tiny_tp")
    cfg["engines"].append({"kind": "network", "packet_words": 4, "window": 8, "jobs": 2})
    return DesignLayout(parse_config(cfg))


def golden_cluster(devices: int) -> Cluster:
    lay = tp_layout()
    return Cluster([GoldenDevice(lay) for _ in range(devices)], None, SwitchGeometry.for_endpoint(lay, max(2, devices)),
                   timeout_cycles=1000, retries=5)


def block(kv_heads: int, seed: int = 3, **cfg):
    rng = np.random.default_rng(seed)
    bc = BlockConfig(**{"arch": "llama", "hidden": 64, "heads": 4, "kv_heads": kv_heads, "head_dim": 16,
                        "intermediate": 128, **cfg})
    t = {}
    for name in bc.projections:
        n, k = bc.projection_shape(name)
        t[name] = rng.normal(0, 1 / math.sqrt(k), (n, k))
        if bc.qkv_bias and name in ("q_proj", "k_proj", "v_proj"):
            t[f"{name}_bias"] = rng.normal(0, 0.1, n)
    t["attn_norm"] = rng.uniform(0.7, 1.3, bc.hidden)
    t["mlp_norm"] = rng.uniform(0.7, 1.3, bc.hidden)
    return bc, BlockWeights.from_float(bc, t, bits=8, group_size=16), rng


@pytest.mark.parametrize("devices,kv_heads,qkv_bias", [(2, 2, False), (4, 4, True)], ids=["2dev-gqa", "4dev-bias"])
def test_prefill_and_decode_across_devices_are_bit_exact_with_one_device(devices, kv_heads, qkv_bias):
    cl = golden_cluster(devices)
    bc, w, rng = block(kv_heads, qkv_bias=qkv_bias)
    one = TransformerBlock(cl[0], bc, w)
    tp = TensorParallelBlock(cl, bc, w)
    assert [p["heads"] for p in tp.parts] == [(d * 4 // devices, (d + 1) * 4 // devices) for d in range(devices)]
    s1, s = one.sequence(), tp.sequence()
    x = rng.normal(0, 1, (5, 64))
    # golden steps leave the devices and sequences as they were: the decode step is at position 0
    want, got = one.golden_prefill(x, s1), tp.golden_prefill(x, s)
    assert np.array_equal(got, want)
    x1 = rng.normal(0, 1, 64)
    assert np.array_equal(tp.golden_decode_step(x1, s), one.golden_decode_step(x1, s1))
    tp.close()
    one.close()


def test_bad_splits_and_inputs_are_refused_before_anything_changes():
    cl = golden_cluster(4)
    bc, w, rng = block(2)
    with pytest.raises(BlockProgramError, match="kv_heads 2 must divide among the 4 devices"):
        TensorParallelBlock(cl, bc, w)
    bert = BlockConfig(arch="bert", hidden=64, heads=4, kv_heads=4, head_dim=16, intermediate=128)
    with pytest.raises(BlockProgramError, match="arch 'llama'"):
        TensorParallelBlock(cl, bert, w)
    with pytest.raises(TypeError, match="cluster must be"):
        TensorParallelBlock(cl[0], bc, w)
    with pytest.raises(TypeError, match="weights must be"):
        TensorParallelBlock(golden_cluster(2), bc, "w")
    cl2 = golden_cluster(2)
    tp = TensorParallelBlock(cl2, bc, w)
    s = tp.sequence()
    with pytest.raises(ValueError, match=r"x must be \[T >= 1, 64\]"):
        tp.golden_prefill(np.zeros((3, 32)), s)
    with pytest.raises(TypeError, match="TensorParallelSequence"):
        tp.golden_prefill(np.zeros((3, 64)), object())
    with pytest.raises(BlockProgramError, match="max_context"):
        tp.golden_prefill(np.zeros((65, 64)), s)
    assert s.length == 0
    other = TensorParallelBlock(cl2, bc, w)
    with pytest.raises(ValueError, match="another tensor-parallel block"):
        other.golden_prefill(np.zeros((1, 64)), s)
    s.free()
    with pytest.raises(ValueError, match="was freed"):
        tp.golden_prefill(np.zeros((1, 64)), s)
    tp.close()
    with pytest.raises(ValueError, match="closed"):
        tp.sequence()
