"""benchmarks/decode.py's byte accounting: the FFN's K padding is not the model's bytes."""
import importlib.util
from pathlib import Path

import pytest

from hbmforge.config import load_config
from hbmforge.layout import DesignLayout

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def decode():
    spec = importlib.util.spec_from_file_location("decode_bench", ROOT / "benchmarks" / "decode.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_padding_bytes_are_down_projs_padded_columns_and_swiglus_padded_rows(decode):
    lay = DesignLayout(load_config(ROOT / "examples" / "u280_llm512.yaml"))     # 4096 lanes: 11008 -> 12288
    H, I, P = 4096, 11008, 12288
    # W2 dense, scales inline (u16 per group of 128) in the weight stripes: the padded 1280 of 12288
    # K columns of down_proj's weights and scales, SwiGLU's operands, tables and output, down's input
    down = (H * P * 2 // 8 + H * (P // 128) * 2) * (P - I) // P
    assert decode.ffn_padding_bytes(lay, "w2a8kv4", H, I) == down + (P - I) * 17 + (P - I)
    w4 = decode.ffn_padding_bytes(lay, "w4a8kv4", H, I)
    assert w4 > decode.ffn_padding_bytes(lay, "w2a8kv4", H, I)
    assert decode.ffn_padding_bytes(lay, "w2a8kv4", H, P) == 0          # nothing padded


def test_the_roofline_counts_the_models_bytes_and_reports_the_streamed_ones(decode):
    cell = {"format": "w2a8kv4", "context": "2048", "cycles": 45_000, "bytes_read": 65_000_000,
            "bytes_written": 300_000, "measured": True, "padding_bytes": 1_400_000}
    p, = decode.project([cell], port_bytes=2048, bw={"u280": 426.0}, host_rt_us=0.0, clocks=(225,),
                        boards=("u280",))
    L = decode.LLAMA2_7B["layers"]
    head = decode.lm_head_bytes("w2a8kv4")
    assert p["bytes_per_token"] == L * (65_300_000 - 1_400_000) + head
    assert p["streamed_bytes_per_token"] == L * 65_300_000 + head
    assert p["roofline_tok_s"] == pytest.approx(426e9 / p["bytes_per_token"])
