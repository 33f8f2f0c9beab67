"""benchmarks/decode.py's byte accounting (the FFN's K padding and the edge model's padded heads are not
the model's bytes) and its edge cells."""
import re
from pathlib import Path

import pytest

from bench_modules import bench_module
from hbmforge.config import load_config
from hbmforge.layout import DesignLayout

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def decode():
    return bench_module("decode")


def test_padding_bytes_are_down_projs_padded_columns_and_the_swiglus_rounding(decode):
    lay = DesignLayout(load_config(ROOT / "examples" / "u280_llm512.yaml"))     # 4096 lanes: 11008 -> 12288
    H, I, P = 4096, 11008, 12288
    # W2 dense, scales inline (u16 per group of 128) in the weight stripes: the padded 1280 of 12288
    # K columns of down_proj's weights and scales, SwiGLU's operands, tables and output, down's input
    down = (H * P * 2 // 8 + H * (P // 128) * 2) * (P - I) // P
    # (the decode step's SwiGLU covers the 11008 columns, a multiple of the 64-byte word: none padded)
    assert decode.ffn_padding_bytes(lay, "w2a8kv4", H, I) == down + (P - I)
    # an FFN that is not a whole number of port words: the SwiGLU's rounding is padding too
    down2 = (H * P * 2 // 8 + H * (P // 128) * 2) * (P - 11000) // P
    assert decode.ffn_padding_bytes(lay, "w2a8kv4", H, 11000) == pytest.approx(down2 + 8 * 17 + (P - 11000), abs=1)
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


def test_edge_rows_count_the_models_bytes_not_the_padded_heads(decode):
    m = decode.TELLME_MODEL
    H, I, L, V = m["hidden"], m["intermediate"], m["layers"], m["vocab"]
    row = {"context": "1024", "ctx_tokens": 1024, "cycles": 270_000, "bytes_read": 11_000_000,
           "bytes_written": 40_000, "bit_exact": True}
    p, = decode.edge_simulated_rows([row], "kv260", 250.0, {"kv260": 9.0}, 0.0)
    # 24 layers + the LM head at the layer's cycles per (model) weight, at the design's clock
    cycles = L * 270_000 + V * H * 270_000 / (4 * H * H + 3 * H * I)
    assert p["cycles_per_token"] == pytest.approx(cycles)
    assert p["tok_s"] == pytest.approx(250e6 / cycles)
    # the roofline: ternary weights (2 bits + u16 per 128) and the KV4 cache at head_dim 96
    model = (L * (4 * H * H + 3 * H * I) + V * H) * (2 + 16 / 128) / 8 + L * 2 * 1024 * 16 * 96 * (0.5 + 2 / 32)
    assert p["bytes_per_token"] == pytest.approx(model)
    assert p["roofline_tok_s"] == pytest.approx(9e9 / model)
    assert p["streamed_bytes_per_token"] == pytest.approx(L * 11_040_000 + V * H * (2 + 16 / 128) / 8)
    none, = decode.edge_simulated_rows([row], "zcu102", 250.0, {}, 0.0)
    assert none["roofline_tok_s"] is None and none["roofline_fraction"] is None


def test_edge_configs_that_cannot_run_the_model_are_refused_before_anything_runs(decode, tmp_path):
    ok = [ROOT / "examples" / "kv260_ternary.yaml", ROOT / "examples" / "zcu102_ternary.yaml"]
    assert decode.edge_problem(ok, ["512", "2048"]) is None
    assert "max_context 2048" in decode.edge_problem(ok[:1], ["4096"])
    assert "needs matmul, attention and vector engines" in decode.edge_problem([ROOT / "examples" / "u280_w2a8.yaml"],
                                                                               ["512"])
    text = (ROOT / "examples" / "kv260_ternary.yaml").read_text()
    for name, old, new, why in (("narrow", "head_dim: 128", "head_dim: 64", "head_dim 64 < the model's 96"),
                                ("w4", "weight_bits: [2, 4, ternary]", "weight_bits: [4]", "[4], not ternary"),
                                ("gelu", "activations: [silu]", "activations: [gelu]", "no silu")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text.replace(old, new))
        assert why in decode.edge_problem([path], ["512"])
    assert "No such file" in decode.edge_problem([tmp_path / "missing.yaml"], ["512"])


def test_the_edge_layer_pads_its_heads_like_a_checkpoint(decode):
    import numpy as np

    lay = DesignLayout(load_config(ROOT / "examples" / "kv260_ternary.yaml"))
    dims = dict(decode.TELLME_MODEL, hidden=256, heads=2, kv_heads=2, intermediate=512)
    cfg = decode.block_config(lay, dims)
    assert cfg.head_dim == 128 and cfg.softmax_scale == pytest.approx(96 ** -0.5)
    w = decode.layer_weights(lay, "ternary", np.random.default_rng(0), dims)
    q = w.projections["q_proj"]
    assert q.q.shape[0] == 2 * 128
    dead = np.setdiff1d(np.arange(256), decode.head_padding(lay, dims).rows(2))
    assert not np.any(q.q[dead]) and np.any(q.q[:96])
    o = w.projections["o_proj"]
    assert o.q.shape[0] == 256


def _args(decode, tmp_path, *argv):
    return decode.parser().parse_args(["--json", str(tmp_path / "d.json"), "--png", str(tmp_path / "d.png"), *argv])


@pytest.mark.parametrize("argv, why", [
    (["--hbm-report", "{tmp}/missing.jsonl"], "--hbm-report .*no such file"),
    (["--config", "{tmp}/missing.yaml"], "--config .*No such file"),
    (["--config", "examples/u280_w2a8.yaml"], "needs matmul, attention and vector engines"),
    (["--layer-report", "{tmp}/missing.json"], "--layer-report .*No such file"),
    (["--layer-report", "README.md"], "not a JSON report of this benchmark"),
    (["--layer-report", "{tmp}/other.json"], "no 'layer' list"),
    (["--contexts", "512,512"], "--contexts lists 512 more than once"),
    (["--formats", "w2a8kv4,ternary,w2a8kv4"], "--formats lists w2a8kv4 more than once"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--heads", "0"], r"--heads must be in \[1, 32\]"),
    (["--heads", "4"], "hidden 512 is not a multiple of the matmul's k_align 4096"),
    (["--tile-rows", "-3"], "--tile-rows must be >= 0"),
    (["--design", "{tmp}"], "not a generated design directory"),
    (["--json", "{tmp}/other.json/x.json"], "--json .* cannot be written there"),
])
def test_bad_files_paths_and_counts_are_named_before_anything_runs(decode, tmp_path, argv, why):
    (tmp_path / "other.json").write_text('{"edge": []}')
    args = _args(decode, tmp_path, *(a.replace("{tmp}", str(tmp_path)).replace("examples/", str(ROOT / "examples") + "/")
                                     .replace("README.md", str(ROOT / "README.md")) for a in argv))
    problem = decode.args_problem(args)
    assert problem is not None and re.search(why, problem), problem
    assert not (tmp_path / "d.json").exists()


def test_the_default_command_line_has_no_problem(decode, tmp_path):
    assert decode.args_problem(_args(decode, tmp_path)) is None


def test_a_model_counts_its_first_layer_alone_and_the_rest_at_the_steady_layer(decode):
    """A model's step = the lone layer (its own norm1) + 31 layers as the second of a two-layer step
    (each residual carries the next norm); without a steady figure, or with a two-layer step that was
    not bit-exact, every layer at the lone layer's cycles."""
    cell = {"format": "w2a8kv4", "context": "2048", "cycles": 45_000, "bytes_read": 65_000_000,
            "bytes_written": 300_000, "measured": True, "padding_bytes": 0, "steady_layer_cycles": 44_000}
    L = decode.LLAMA2_7B["layers"]
    assert decode.model_cycles(cell, L) == 45_000 + (L - 1) * 44_000
    p, = decode.project([cell], port_bytes=2048, bw={"u280": 426.0}, host_rt_us=0.0, clocks=(225,), boards=("u280",))
    lone, = decode.project([dict(cell, steady_layer_cycles=None)], port_bytes=2048, bw={"u280": 426.0},
                           host_rt_us=0.0, clocks=(225,), boards=("u280",))
    assert p["cycles_per_token"] == pytest.approx(lone["cycles_per_token"] - (L - 1) * 1_000)
    assert p["tok_s"] > lone["tok_s"]
    assert decode.model_cycles(dict(cell, two_layer_bit_exact=False), L) == L * 45_000
    row, = decode.edge_simulated_rows([dict(cell, ctx_tokens=512)], "kv260", 250.0, {"kv260": 16.0}, 0.0)
    m = decode.TELLME_MODEL
    head = m["vocab"] * m["hidden"] * 45_000 / (4 * m["hidden"] ** 2 + 3 * m["hidden"] * m["intermediate"])
    assert row["cycles_per_token"] == pytest.approx(decode.model_cycles(cell, m["layers"]) + head)


def test_extrapolated_cells_carry_the_steady_layer_too(decode):
    def cell(fmt, ctx, cycles, steady):
        return {"format": fmt, "context": ctx, "ctx_tokens": int(ctx), "attended_tokens": int(ctx), "sink": 0,
                "window": 0, "cycles": cycles, "bytes_read": 10, "bytes_written": 1, "measured": True,
                "steady_layer_cycles": steady, "steady_layer_bytes": 11}
    rows = [cell("w2a8kv4", "512", 100, 90), cell("w2a8kv4", "2048", 150, 140), cell("w4a8kv4", "512", 200, 185)]
    w4 = {(r["format"], r["context"]): r for r in decode.complete(rows, ["w2a8kv4", "w4a8kv4"], ["512", "2048"])}
    assert not w4[("w4a8kv4", "2048")]["measured"]
    assert w4[("w4a8kv4", "2048")]["cycles"] == 250
    assert w4[("w4a8kv4", "2048")]["steady_layer_cycles"] == 235


def test_the_efficiency_takes_the_steady_layer_and_reports_the_lone_one_beside(decode, tmp_path, monkeypatch, capsys):
    """--projection-only on a saved layer row: decode_board_bw_efficiency divides the steady layer's
    bytes by its cycles (the layer as a model runs it) and names the lone layer's ratio beside."""
    import json

    bw = 424.87
    (tmp_path / "hbm.jsonl").write_text(json.dumps({"bench": "hbm", "board": "u280", "metric": "hbm_seq_read_gbps",
                                                    "value": bw, "model": "calibrated"}) + "\n")
    cell = {"format": "w2a8kv4", "context": "2048", "ctx_tokens": 2048, "attended_tokens": 2048, "sink": 0,
            "window": 0, "measured": True, "bit_exact": True, "memory_clock_mhz": 225.0, "cycles": 45_000,
            "bytes_read": 65_000_000, "bytes_written": 300_000, "two_layer_bit_exact": True,
            "steady_layer_cycles": 44_000, "steady_layer_bytes": 65_290_000}
    (tmp_path / "layer.json").write_text(json.dumps({"layer": [cell]}))
    monkeypatch.setattr("sys.argv", ["decode.py", "--projection-only", "--layer-report", str(tmp_path / "layer.json"),
                                     "--formats", "w2a8kv4", "--contexts", "2048", "--ref-context", "2048",
                                     "--hbm-report", str(tmp_path / "hbm.jsonl"), "--no-hbm-run", "--clocks", "225",
                                     "--json", str(tmp_path / "d.json"), "--png", str(tmp_path / "d.png")])
    decode.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    eff, = [r for r in rows if r.get("metric") == "decode_board_bw_efficiency"]
    pad = decode.ffn_padding_bytes(DesignLayout(load_config(ROOT / "examples" / "u280_llm512.yaml")), "w2a8kv4",
                                   4096, 11008)
    seconds = 44_000 / 225e6
    assert eff["steady_state"] and eff["layer_cycles"] == 44_000
    assert eff["value"] == pytest.approx((65_290_000 - pad) / (bw * 1e9 * seconds), abs=1e-4)
    assert eff["layer_alone_ratio"] == pytest.approx((65_300_000 - pad) / (bw * 1e9 * 45_000 / 225e6), abs=1e-4)
    tok, = [r for r in rows if r.get("metric") == "projected_tok_s_7b_w2a8kv4_dense"]
    assert tok["layer_cycles"] == 45_000 and tok["steady_layer_cycles"] == 44_000
