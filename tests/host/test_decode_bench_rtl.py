"""benchmarks/decode.py's cells on a co-simulated design: the lone layer and the layer as a model
runs it (the second of a two-layer step), both bit-exact against the golden program."""
from __future__ import annotations

import pytest
import yaml

from bench_modules import bench_module
from designs import tiny_vector_config_dict

pytestmark = pytest.mark.rtl
DIMS = {"layers": 2, "hidden": 32, "heads": 2, "kv_heads": 2, "head_dim": 16, "intermediate": 48, "vocab": 40}


@pytest.fixture(scope="module")
def decode():
    return bench_module("decode")


def test_a_cell_measures_the_lone_layer_and_the_steady_layer_bit_exact(decode, tmp_path):
    """On a one-row design each residual carries the next norm, so the second layer of a model
    step skips its own norm pass: the steady layer is cheaper than the lone one, and the two-layer
    step is bit-exact too."""
    cfg = tiny_vector_config_dict("tiny_vec_rows1")
    cfg["engines"][0]["rows"] = 1
    path = tmp_path / "tiny_vec_rows1.yaml"
    path.write_text(yaml.safe_dump(cfg))
    row, = decode.measure(path, [("w4a8kv4", "24")], sink=0, window=0, seed=5, dims=DIMS)
    assert row["bit_exact"] and row["two_layer_bit_exact"]
    assert row["two_layer_descriptors"] == 2 * row["descriptors"] - 1      # layer 1's residual carries norm1
    assert 0 < row["steady_layer_cycles"] < row["cycles"]
    assert row["steady_layer_cycles"] == row["two_layer_cycles"] - row["cycles"]
    lone, = decode.measure(path, [("w4a8kv4", "24")], sink=0, window=0, seed=5, dims=DIMS, steady=False)
    assert "steady_layer_cycles" not in lone and lone["bit_exact"]
