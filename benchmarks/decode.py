"""LLM decode on the largest U280 design: one LLaMA-2-7B decoder layer per decode step on the
co-simulation (calibrated HBM model), and the whole model's tokens/s projected from it; one JSON
object per line.

    python benchmarks/decode.py                              # examples/u280_llm512.yaml, the default plan
    python benchmarks/decode.py --config examples/u280_llm.yaml   # the 256-bit, 1024-lane design
    python benchmarks/decode.py --all                        # every format x context on the co-sim
    python benchmarks/decode.py --hbm-report hbm.jsonl       # calibrated bandwidths from benchmarks/hbm.py
    python benchmarks/decode.py --projection-only --layer-report decode.json   # re-project saved cycles

What is simulated: one decoder layer (hidden 4096, 32 heads of 128, FFN 11008, padded to the
matmul's K alignment (its lanes) with zero weights by the block program itself: 11264 at 1024 lanes, 12288 at 4096 — the same
function, 2.3 % / 11.6 % more MLP bytes), random weights of N(0, 1/sqrt(K)) quantized to each format, a random KV4 cache of ``ctx``
tokens written straight into its pages (``ModelSequence.load_kv``), one decode step (ONE
descriptor program: norms, QKV, RoPE, KV append, attention, O, SwiGLU MLP, residuals) on the
Verilator model of ``--config`` with ``set_memory_model('calibrated')``, compared bit for bit
with ``golden_decode_step`` (the CPU golden program on a snapshot of the device memory).

What is projected (labelled ``"kind": "projection"``): tokens/s of the whole model =
clock / (32 x layer cycles + LM head cycles) with the host round trip per token added; the LM head
(32000 x 4096 at W4) at the layer's measured cycles per weight; 225 MHz (AccLLM / FlightLLM) and
300 MHz with the cycle counts of the co-sim (its calibrated memory timing at ``--memory-clock``,
default the config's clock: run once per clock, ``--memory-clock 225``, to have cycles measured at
each; every projection row says which clock its cycles were measured at); the roofline = bytes per token / the board's
calibrated sequential bandwidth (``hbm_seq_read_gbps`` of benchmarks/hbm.py); U55C (the same HBM
and design) and KV260/ZCU102 with the ternary model of TeLLMe's size (analytic rows; with
``--edge-config examples/kv260_ternary.yaml`` one layer of it per context co-simulated on that
design instead of the U280 layer, its heads of 96 zero-padded to the engine's 128, and projected).
Cells not run on the co-sim (default plan) are extrapolated and say so: cycles(fmt, ctx) =
cycles(fmt, ref ctx) + cycles(w2, ctx) - cycles(w2, ref ctx) (a step runs its descriptors one
after the other: the matmuls do not depend on the context, the attention not on the weights).
Nothing here is a measurement on a board. Writes ``--json`` and the roofline plot ``--png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

#: LLaMA-2-7B (Touvron et al. 2023, the HF config): the model every U280 anchor decodes
LLAMA2_7B = {"layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 32, "head_dim": 128, "intermediate": 11008,
             "vocab": 32000}
#: the ternary model of TeLLMe's size: BitNet b1.58 0.73B (1bitLLM/bitnet_b1_58-large config: hidden 1536,
#: 24 layers, 16 heads of 96, FFN 4096, vocab 32002, tied embeddings)
TELLME_MODEL = {"name": "BitNet b1.58 0.73B (1bitLLM/bitnet_b1_58-large)", "layers": 24, "hidden": 1536,
                "heads": 16, "kv_heads": 16, "head_dim": 96, "intermediate": 4096, "vocab": 32002}
ANCHORS = [
    {"name": "AccLLM", "tok_s": 164.0, "board": "u280", "clock_mhz": 225,
     "note": "W2A8KV4, 2:4 sparse, Lambda-attention, LLaMA-2-7B, cycle-accurate simulation (arXiv 2505.03745)"},
    {"name": "FlightLLM", "tok_s": 55.0, "board": "u280", "clock_mhz": 225,
     "note": "real U280, LLaMA-2-7B (FPGA 2024)"},
    {"name": "TeLLMe v2", "tok_s": 25.0, "board": "kv260", "clock_mhz": None,
     "note": "ternary, edge FPGA, 5 W (arXiv 2510.15926)"},
]
BW_ANCHORS = {"u280_theoretical_gbps": 460.0, "u280_measured_seq_gbps": 425.0}   # DS963; Shuhai (FCCM 2020)
FORMATS = {"w4a8kv4": 4, "w2a8kv4": 2, "ternary": "ternary", "w2a8kv4_sparse24": 2}
#: formats whose weights are magnitude-pruned to 2:4 and packed 2:4 (an engine with sparse24; with
#: sparse24_pairs the W2 matmuls run as pair fires, two columns a fire)
SPARSE_FORMATS = {"w2a8kv4_sparse24"}
#: weight bits per weight in memory, scales (u16 per group of 128) included; 2:4 per numerics.sparse
GROUP = 128


def weight_bits(fmt: str, sparse24: bool = False) -> float:
    sparse24 = sparse24 or fmt in SPARSE_FORMATS
    b = {"w4a8kv4": 4, "w2a8kv4": 2, "ternary": 2, "w2a8kv4_sparse24": 2}[fmt]
    if sparse24:
        b = (2 * b + 4) / 4                  # 2 values + two 2-bit indexes per 4 weights
    return b + 16 / GROUP


def emit(metric: str, value, unit: str, **ctx) -> dict:
    row = {"bench": "decode", "metric": metric, "value": value, "unit": unit, **ctx}
    print(json.dumps(row), flush=True)
    return row


# -- the co-simulated layer --------------------------------------------------------------------------

def head_padding(lay, dims: dict):
    """How the layer's heads sit in the design's attention engine (zero-padded when narrower:
    TeLLMe's model has heads of 96 on a 128-wide engine; host/models/heads.py)."""
    from hbmforge.host.models.heads import HeadPadding

    return HeadPadding(dims["head_dim"], lay.attention.head_dim)


def block_config(lay, dims: dict):
    """The BlockConfig of a ``dims`` layer on the design (heads padded to the engine's)."""
    from hbmforge.host.blocks import BlockConfig
    from hbmforge.numerics.reference import DecoderSpec

    spec = DecoderSpec(vocab_size=dims["vocab"], hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
                       num_layers=dims["layers"], q_heads=dims["heads"], kv_heads=dims["kv_heads"],
                       head_dim=dims["head_dim"])
    return BlockConfig(arch="llama", hidden=dims["hidden"], heads=dims["heads"], kv_heads=dims["kv_heads"],
                       intermediate=dims["intermediate"], **head_padding(lay, dims).block_options(spec))


def layer_weights(lay, fmt_bits, rng, dims: dict = LLAMA2_7B, tile_rows: int = 0, sparse24: bool = False):
    """BlockWeights of a random LLaMA-2-7B layer (the block program zero-pads the FFN's 11008 to the
    matmul's K alignment itself). ``tile_rows`` > 0: quantize that many random rows per projection
    and repeat them (quantizing 200 M weights takes minutes; the engine's cycles do not depend on
    the values). ``sparse24``: every projection magnitude-pruned to 2:4 before quantizing. Heads
    narrower than the engine's are zero-padded to it as a checkpoint's would be."""
    from hbmforge.host.blocks import BlockWeights
    from hbmforge.numerics.encoded import EncodedWeights, quantize_weights_encoded
    from hbmforge.numerics.sparse import prune_2_4

    H, I = dims["hidden"], dims["intermediate"]
    pad = head_padding(lay, dims)
    q, kv = dims["heads"], dims["kv_heads"]
    g, sb = lay.mm.group_size, lay.mm.scale_bits
    hd = dims["head_dim"]
    shapes = {"q_proj": (q * hd, H), "k_proj": (kv * hd, H), "v_proj": (kv * hd, H), "o_proj": (H, q * hd),
              "gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}
    heads_of = {"q_proj": q, "k_proj": kv, "v_proj": kv, "o_proj": q}
    enc = {}
    for name, (n, k) in shapes.items():
        rows = min(n, tile_rows) if tile_rows and not pad.padded else n
        w = rng.standard_normal((rows, k), dtype=np.float32) * np.float32(1 / math.sqrt(k))
        if pad.padded and name in heads_of:
            w = pad.pad_columns(w, q) if name == "o_proj" else pad.pad_rows(w, heads_of[name])
            n, k = w.shape
        if sparse24:
            w = prune_2_4(w)
        e = quantize_weights_encoded(w, fmt_bits, g, sb, k_padded=lay.matmul.pad_k(k))
        del w
        if rows < n:
            reps = -(-n // rows)
            e = EncodedWeights(q=np.tile(e.q, (reps, 1))[:n], mantissas=np.tile(e.mantissas, (reps, 1))[:n],
                               row_scale=np.tile(e.row_scale, reps)[:n], bits=e.bits, group_size=e.group_size)
        enc[name] = e
    norm = (rng.uniform(0.8, 1.2, H), None)
    return BlockWeights(projections=enc, attn_norm=norm, mlp_norm=norm)


def profile_summary(rows: list[dict]) -> dict:
    """Per-opcode totals of a profiled step (``last_step.profile``): where the layer's cycles go."""
    out = {}
    for r in rows:
        o = out.setdefault(r["opcode"], {"descriptors": 0, "cycles": 0, "stall_cycles": 0, "bytes_read": 0,
                                         "bytes_written": 0, "mac_ops": 0})
        o["descriptors"] += 1
        for k in ("cycles", "stall_cycles", "bytes_read", "bytes_written", "mac_ops"):
            o[k] += r[k]
    return out


def steady_layer(two, k, v, x, one: dict) -> dict:
    """The layer as a model runs it: the same decode step on ``two`` (a program of two copies of the
    layer), minus the one-layer step ``one``. Alone, a layer starts with its own norm and ends with
    a plain residual; in a model each residual carries the next layer's norm (host/blocks.py) and
    the next layer's first weights stream during it, so the second layer costs what every layer
    after the first does."""
    seq = two.sequence()
    try:
        seq.load_kv(np.concatenate([k, k]), np.concatenate([v, v]))
        golden = two.golden_decode_step(x, seq)
        t0 = time.perf_counter()
        got = two.decode_step(x, seq)
        sim_s = time.perf_counter() - t0
        st = two.last_step
        return {"two_layer_cycles": st.cycles, "two_layer_bit_exact": bool(np.array_equal(got, golden)),
                "two_layer_descriptors": st.descriptors, "two_layer_sim_seconds": round(sim_s, 1),
                "steady_layer_cycles": st.cycles - one["cycles"],
                "steady_layer_bytes": st.bytes_read + st.bytes_written - one["bytes_read"] - one["bytes_written"]}
    finally:
        seq.free()


def run_cell(prog, ctx: int, rng, profile: bool = False, live_dims=None, two=None) -> dict:
    """One decode step at context ``ctx`` on the device and the golden program; ``profile``: then
    one more step (the next token) one descriptor per run, for the per-opcode cycle breakdown.
    ``live_dims``: the head dimensions a padded model uses (the cache holds zeros elsewhere).
    ``two``: a program of two copies of the layer, for the steady-state layer (:func:`steady_layer`)."""
    cfg = prog.config
    seq = prog.sequence()
    try:
        shape = (1, ctx, cfg.kv_heads, cfg.head_dim)
        k = np.clip(rng.normal(0, 1.5, shape), -7.5, 7.5)
        v = np.clip(rng.normal(0, 1.5, shape), -7.5, 7.5)
        if live_dims is not None:
            dead = np.setdiff1d(np.arange(cfg.head_dim), live_dims)
            k[..., dead] = 0.0
            v[..., dead] = 0.0
        t0 = time.perf_counter()
        seq.load_kv(k, v)
        load_s = time.perf_counter() - t0
        if two is None:
            del k, v
        x = rng.normal(0, 1, cfg.hidden)
        t0 = time.perf_counter()
        golden = prog.golden_decode_step(x, seq)
        golden_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = prog.decode_step(x, seq)
        sim_s = time.perf_counter() - t0
        st = prog.last_step
        c = st.counters
        extra = {}
        if profile:
            x2 = rng.normal(0, 1, cfg.hidden)
            golden2 = prog.golden_decode_step(x2, seq)
            got2 = prog.decode_step(x2, seq, profile=True)
            ps = prog.last_step
            extra = {"profile": profile_summary(ps.profile), "profile_cycles": ps.cycles,
                     "profile_bit_exact": bool(np.array_equal(got2, golden2)),
                     "profile_descriptors": [{k: r[k] for k in ("index", "opcode", "cycles", "bytes_read", "mac_ops")}
                                             for r in ps.profile]}
        row = {**extra, "cycles": st.cycles, "bit_exact": bool(np.array_equal(got, golden)),
               "bytes_read": st.bytes_read, "bytes_written": st.bytes_written, "descriptors": st.descriptors,
               "host_round_trips": st.host_round_trips, "mac_ops": st.mac_ops,
               "stall_cycles": c.get("stall_cycles"), "sim_seconds": round(sim_s, 1),
               "golden_seconds": round(golden_s, 1), "load_kv_seconds": round(load_s, 1),
               "sim_cycles_per_s": round(st.cycles / sim_s) if sim_s else None}
        if two is not None:
            row.update(steady_layer(two, k, v, x, row))
        return row
    finally:
        seq.free()


def measure(config: Path, plan: list[tuple[str, str]], *, sink: int, window: int, seed: int,
            design: Path | None = None, dims: dict = LLAMA2_7B, tile_rows: int = 0,
            profile: bool = False, memory_model: str = "calibrated",
            memory_clock: float | None = None, steady: bool = True) -> list[dict]:
    """Co-simulate the cells of ``plan`` ((format, context key) pairs); a row per cell. ``steady``:
    each cell also runs two copies of the layer as one model step (:func:`steady_layer`)."""
    from hbmforge.host import open_device
    from hbmforge.host.blocks import ModelProgram, TransformerBlock

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    dev = open_device(str(design or config), progress=sys.stderr.isatty())
    open_s = time.perf_counter() - t0
    if memory_model == "calibrated":
        dev.sim.set_memory_model(memory_model, clock_mhz=memory_clock)
    else:
        dev.sim.set_memory_model(memory_model)
    mem_clock = dev.sim.memory_clock_mhz or float(dev.layout.config.clock)
    lay = dev.layout
    inter_pad = lay.matmul.pad_k(dims["intermediate"])
    cfg = block_config(lay, dims)
    pad = head_padding(lay, dims)
    rows = []
    emit("cosim_open_seconds", round(open_s, 1), "s", config=str(config), load_avg=round(load0, 1),
         note="generate (unless --design) + Verilator model build (or cache hit) + open")
    built = dev.sim.build_result
    if built is not None and built.stage_seconds:
        emit("verilator_build_seconds", round(sum(built.stage_seconds.values()), 1), "s", config=str(config),
             stages={k: round(v, 1) for k, v in built.stage_seconds.items()}, cache_hit=built.cache_hit,
             load_avg=round(load0, 1),
             note="Verilator (verilate + C++ compile and link), wall; on a cache hit the cached build's own times")
    for fmt in dict.fromkeys(f for f, _ in plan):
        rng = np.random.default_rng(seed)
        t1 = time.perf_counter()
        weights = layer_weights(lay, FORMATS[fmt], rng, dims, tile_rows, sparse24=fmt in SPARSE_FORMATS)
        quant_s = time.perf_counter() - t1
        for windowed in (False, True):
            cells = [c for f, c in plan if f == fmt and (c == "sink_window") == windowed]
            if not cells:
                continue
            opts = {"window": window, "sink": sink} if windowed else {}
            t1 = time.perf_counter()
            kv_range = (np.full(cfg.kv_heads, 8.0), np.full(cfg.kv_heads, 8.0))
            prog = TransformerBlock(dev, cfg, weights, kv_bits=4, kv_ranges=[kv_range],
                                    sparse24=fmt in SPARSE_FORMATS, **opts)
            upload_s = time.perf_counter() - t1
            two = None
            try:
                if steady:
                    two = ModelProgram(dev, cfg, [weights, weights], kv_bits=4, kv_ranges=[kv_range] * 2,
                                       sparse24=fmt in SPARSE_FORMATS, **opts)
                for cell in cells:
                    ctx = lay.config.engine("attention").max_context if windowed else int(cell)
                    ctx -= 1                               # the step appends the ctx-th token
                    # (profiled: one token less, the profiled step appends the ctx-th)
                    ctx -= profile
                    r = run_cell(prog, ctx, np.random.default_rng(seed + ctx), profile,
                                 pad.slots() if pad.padded else None, two)
                    rows.append({"format": fmt, "context": cell, "ctx_tokens": ctx + 1, "heads": dims["heads"],
                                 "hidden": dims["hidden"], "intermediate_padded": inter_pad,
                                 "head_dim": dims["head_dim"], "engine_head_dim": pad.device_dim,
                                 "attended_tokens": min(ctx + 1, sink + window) if windowed else ctx + 1,
                                 "sink": sink if windowed else 0, "window": window if windowed else 0,
                                 "measured": True, "memory_model": memory_model,
                                 "memory_clock_mhz": mem_clock,
                                 "quantize_seconds": round(quant_s, 1),
                                 "upload_seconds": round(upload_s, 1), **r})
                    print(json.dumps({"bench": "decode", "progress": rows[-1]}), file=sys.stderr, flush=True)
            finally:
                prog.close()
                if two is not None:
                    two.close()
        del weights
    dev.close()
    return rows


# -- projection ------------------------------------------------------------------------------------

def layer_dims(heads: int) -> dict:
    """LLaMA-2-7B's layer cut to ``heads`` heads of 128 (hidden and FFN in proportion)."""
    if heads == LLAMA2_7B["heads"]:
        return dict(LLAMA2_7B)
    return dict(LLAMA2_7B, hidden=heads * 128, heads=heads, kv_heads=heads,
                intermediate=-(-LLAMA2_7B["intermediate"] * heads // 32 // 128) * 128)


def scale_to_full(rows: list[dict], k_align: int) -> list[dict]:
    """Rows of a layer cut to h heads -> the full layer (extrapolated): from two contexts c1 < c2 of
    one format, attention cycles per (head x token) = (cycles(c2) - cycles(c1)) / (h (c2 - c1));
    the rest of cycles(c1) is charged to the weights and scales with the (padded) weight count
    (the fixed per-descriptor costs scale with it too: conservative). Bytes the same way."""
    full = []
    by_fmt = {}
    for r in rows:
        by_fmt.setdefault(r["format"], []).append(r)
    H, I = LLAMA2_7B["hidden"], LLAMA2_7B["intermediate"]
    pad = lambda k: -(-k // k_align) * k_align                      # noqa: E731
    w_full = 4 * H * H + 2 * pad(I) * H + H * pad(I)
    ref = sorted((r for r in rows if r["context"].isdigit() and r["format"] == "w2a8kv4"),
                 key=lambda r: r["ctx_tokens"])
    if len(ref) < 2:
        raise SystemExit("scaling a cut layer needs two contexts of w2a8kv4")
    a, b = ref[0], ref[-1]
    h = a["heads"]
    slope = {k: (b[k] - a[k]) / (h * (b["ctx_tokens"] - a["ctx_tokens"])) for k in ("cycles", "bytes_read", "bytes_written")}
    for r in rows:
        hs, Is = r["hidden"], r["intermediate_padded"]
        w_small = 4 * hs * hs + 3 * Is * hs
        att_tokens = r["attended_tokens"]
        out = dict(r, measured=False, heads=32, hidden=H,
                   extrapolated_from=f"{h}-head cut of the layer co-simulated (cycles {r['cycles']}, bit-exact "
                                     f"{r.get('bit_exact')}); attention per head-token from w2a8kv4 at "
                                     f"{a['ctx_tokens']} and {b['ctx_tokens']}; weight part x {w_full / w_small:.2f}")
        for k in ("steady_layer_cycles", "steady_layer_bytes", "two_layer_cycles"):
            out.pop(k, None)                     # not scaled: the projection takes the lone layer's
        for k in ("cycles", "bytes_read", "bytes_written"):
            att = slope[k] * h * att_tokens
            out[k] = int(round((r[k] - att) * w_full / w_small + slope[k] * 32 * att_tokens))
        full.append(out)
    return full


def complete(rows: list[dict], formats, contexts, ref_fmt: str = "w2a8kv4") -> list[dict]:
    """Every (format, context) cell: measured, or extrapolated from the measured ones."""
    have = {(r["format"], r["context"]): r for r in rows}
    out = []
    for fmt in formats:
        for ctx in contexts:
            if (fmt, ctx) in have:
                out.append(have[(fmt, ctx)])
                continue
            base = [c for c in contexts if (fmt, c) in have and (ref_fmt, c) in have]
            if not base or (ref_fmt, ctx) not in have:
                continue
            b = base[0]
            mine, ref_b, ref_c = have[(fmt, b)], have[(ref_fmt, b)], have[(ref_fmt, ctx)]
            r = {k: v for k, v in ref_c.items()
                 if k in ("ctx_tokens", "attended_tokens", "sink", "window", "memory_clock_mhz")}
            r.update(format=fmt, context=ctx, measured=False,
                     extrapolated_from=f"cycles({fmt},{b}) + cycles({ref_fmt},{ctx}) - cycles({ref_fmt},{b})")
            for key in ("cycles", "bytes_read", "bytes_written", "steady_layer_cycles", "steady_layer_bytes"):
                if all(key in c for c in (mine, ref_b, ref_c)):
                    r[key] = mine[key] + ref_c[key] - ref_b[key]
            out.append(r)
    return out


def model_cycles(cell: dict, layers: int) -> float:
    """Cycles of ``layers`` decoder layers in one step: the first as co-simulated alone, every
    further one at the steady-state layer's cycles (:func:`steady_layer`) when the cell has them,
    else at the lone layer's (conservative: it counts each layer's own norm pass)."""
    steady = steady_cycles(cell)
    return cell["cycles"] + (layers - 1) * (cell["cycles"] if steady is None else steady)


def steady_cycles(cell: dict) -> int | None:
    """The cell's steady-state layer cycles, if it has them and its two-layer step was bit-exact."""
    return cell.get("steady_layer_cycles") if cell.get("two_layer_bit_exact", True) else None


def ffn_padding_bytes(lay, fmt: str, hidden: int, intermediate: int) -> int:
    """Bytes a decode layer moves only because its FFN is padded to the matmul's K alignment (11008 ->
    12288 at 4096 lanes): ``down_proj``'s weight stream (inline scales included) over the padded K
    columns and its int8 activation there; the decode step's SwiGLU covers the FFN's columns rounded
    up to a port word only (host/blocks.py), so its two ACC32 operands, two column-multiplier tables and
    int8 output are padding over that rounding alone. The model needs none of them, so the roofline and
    ``decode_board_bw_efficiency`` count the layer's bytes without them (the streamed bytes are
    reported beside). Weights and scales are linear in K per slice, so the padded share of
    ``down_proj``'s stream is ``pad / K_padded`` (an estimate within a combined word per slice)."""
    from hbmforge.encodings import WeightFormat
    from hbmforge.engines.matmul import SPARSE24

    mm = lay.matmul
    k_pad = mm.pad_k(intermediate)
    pad = k_pad - intermediate
    if pad == 0:
        return 0
    code = int(WeightFormat.from_config(FORMATS[fmt])) | (SPARSE24 if fmt in SPARSE_FORMATS else 0)
    down = mm.weight_port_bytes(hidden, k_pad, code) * mm.weight_ports + mm.scale_bytes(hidden, k_pad)
    act_cols = -(-intermediate // lay.word_bytes) * lay.word_bytes
    swiglu = (act_cols - intermediate) * (2 * 4 + 2 * 4 + 1)
    return int(round(down * pad / k_pad)) + swiglu + pad


def lm_head_bytes(fmt: str) -> float:
    """The LM head (32000 x 4096) at W4 for every model (W4 for the W4 model; W2/ternary models keep a
    4-bit head, as low-bit deployments usually do)."""
    return LLAMA2_7B["vocab"] * LLAMA2_7B["hidden"] * weight_bits("w4a8kv4") / 8


def project(cells: list[dict], *, port_bytes: int, bw: dict, host_rt_us: float, clocks=(225, 300),
            cycles_mhz: float = 300.0, boards=("u280", "u55c")) -> list[dict]:
    """Whole-model tokens/s per cell and clock (labelled projections), with the roofline.
    ``cycles_mhz``: the kernel clock the cells' memory timing was simulated at (a cell's own
    ``memory_clock_mhz`` wins); a row at another clock reuses those cycles and says so.
    ``boards``: where the design's cycles hold (a data port on the U280's DDR: the U280 only)."""
    L = LLAMA2_7B["layers"]
    H, I = LLAMA2_7B["hidden"], LLAMA2_7B["intermediate"]
    layer_weights_n = 4 * H * H + 3 * H * I
    out = []
    for c in cells:
        fmt = c["format"]
        streamed = c["bytes_read"] + c["bytes_written"]
        layer_bytes = streamed - c.get("padding_bytes", 0)      # the model's bytes (ffn_padding_bytes)
        # the LM head at the layer's measured cycles per weight (matmul + everything around it)
        per_weight = c["cycles"] / layer_weights_n
        lm_cycles = LLAMA2_7B["vocab"] * H * per_weight
        cycles_tok = model_cycles(c, L) + lm_cycles
        bytes_tok = L * layer_bytes + lm_head_bytes(fmt)
        streamed_tok = L * streamed + lm_head_bytes(fmt)
        for board in boards:
            gbps = bw.get(board)
            if gbps is None:                 # no calibrated figure for it: no projection either
                continue
            for mhz in clocks:
                t = cycles_tok / (mhz * 1e6) + host_rt_us * 1e-6
                tok_s = 1.0 / t
                roof = gbps * 1e9 / bytes_tok
                port_roof = port_bytes * mhz * 1e6 / bytes_tok     # every stream port, one word per cycle
                out.append({"format": fmt, "context": c["context"], "board": board, "clock_mhz": mhz,
                            "tok_s": tok_s, "roofline_tok_s": roof, "port_roofline_tok_s": port_roof,
                            "roofline_fraction": tok_s / roof, "bytes_per_token": bytes_tok,
                            "streamed_bytes_per_token": streamed_tok,
                            "cycles_per_token": cycles_tok, "layer_cycles": c["cycles"],
                            "steady_layer_cycles": c.get("steady_layer_cycles"), "measured": c["measured"],
                            "cycles_at_mhz": c.get("memory_clock_mhz", cycles_mhz),
                            "calibrated_gbps": gbps})
    return out


def sparse24_rows(cells: list[dict], lanes: int) -> list[dict]:
    """W2A8KV4 2:4 for a design without the pair fire (no co-simulated 2:4 cell): from the measured
    W2A8KV4 dense layer. The 2:4 stream of 2-bit weights is (2 x 2 + 4) / 4 = 2 bits per weight —
    the dense W2 rate — and such an engine keeps ``lanes`` dense lanes per cycle
    (generators/matmul/sparse.py), so cycles and bytes are those of the dense row."""
    have = {c["context"] for c in cells if c["format"] == "w2a8kv4_sparse24"}
    out = []
    for c in cells:
        if c["format"] == "w2a8kv4" and c["context"] not in have:
            r = dict(c, format="w2a8kv4_sparse24", measured=False,
                     extrapolated_from="w2a8kv4 dense (same bits per weight, same lanes per cycle; 2:4 RTL "
                                       "not in the co-simulated design)")
            out.append(r)
    return out


def edge_bytes_per_token(ctx: int) -> float:
    """The bytes a token of TeLLMe's model needs: every weight at ternary's bits (the LM head too)
    and the KV4 cache of ``ctx`` tokens at the model's head_dim (u16 scale per 32)."""
    m = TELLME_MODEL
    H, I, L = m["hidden"], m["intermediate"], m["layers"]
    n = L * (4 * H * H + 3 * H * I) + m["vocab"] * H
    kv = L * 2 * ctx * m["kv_heads"] * m["head_dim"] * (0.5 + 2 / 32)
    return n * weight_bits("ternary") / 8 + kv


def edge_rows(bw: dict, host_rt_us: float, edge_lanes: int = 256) -> list[dict]:
    """KV260/ZCU102 with a ternary model of TeLLMe's size: analytic roofline and compute bound."""
    m = TELLME_MODEL
    H, I, L = m["hidden"], m["intermediate"], m["layers"]
    n = L * (4 * H * H + 3 * H * I) + m["vocab"] * H
    out = []
    for board in ("kv260", "zcu102"):
        for ctx in (512, 1024, 2048):
            bytes_tok = edge_bytes_per_token(ctx)
            gbps = bw.get(board)
            roof = gbps * 1e9 / bytes_tok if gbps else None
            for mhz in (250,):
                compute = edge_lanes * mhz * 1e6 / n
                t = 1 / min(roof, compute) + host_rt_us * 1e-6 if roof else None
                out.append({"board": board, "context": ctx, "clock_mhz": mhz, "model": m["name"],
                            "bytes_per_token": bytes_tok, "roofline_tok_s": roof, "compute_bound_tok_s": compute,
                            "tok_s": 1 / t if t else None, "calibrated_gbps": gbps, "lanes": edge_lanes})
    return out


def emit_edge_analytic(e: dict) -> dict:
    """One analytic edge row of :func:`edge_rows` as ``projected_tok_s_ternary_edge``."""
    return emit("projected_tok_s_ternary_edge", round(e["tok_s"], 2) if e["tok_s"] else None, "tok/s",
                kind="projection (analytic)", board=e["board"], context=e["context"], clock_mhz=e["clock_mhz"],
                model=e["model"], roofline_tok_s=round(e["roofline_tok_s"], 2) if e["roofline_tok_s"] else None,
                compute_bound_tok_s=round(e["compute_bound_tok_s"], 2), calibrated_gbps=e["calibrated_gbps"],
                bytes_per_token=int(e["bytes_per_token"]), lanes=e["lanes"])


def edge_simulated_rows(rows: list[dict], board: str, clock_mhz: float, bw: dict, host_rt_us: float) -> list[dict]:
    """Whole-model tokens/s of TeLLMe's model from one co-simulated layer per context (labelled
    projections): 24 x the layer's cycles + the LM head at the layer's cycles per weight, at the
    design's clock; the roofline counts the model's bytes (:func:`edge_bytes_per_token`: the
    zero-padded head dimensions are not the model's), the streamed bytes are reported beside."""
    m = TELLME_MODEL
    H, I, L = m["hidden"], m["intermediate"], m["layers"]
    layer_n = 4 * H * H + 3 * H * I
    gbps = bw.get(board)
    out = []
    for r in rows:
        lm_cycles = m["vocab"] * H * r["cycles"] / layer_n
        cycles_tok = model_cycles(r, L) + lm_cycles
        t = cycles_tok / (clock_mhz * 1e6) + host_rt_us * 1e-6
        model_bytes = edge_bytes_per_token(r["ctx_tokens"])
        streamed = L * (r["bytes_read"] + r["bytes_written"]) + m["vocab"] * H * weight_bits("ternary") / 8
        roof = gbps * 1e9 / model_bytes if gbps else None
        out.append({"board": board, "context": r["context"], "clock_mhz": clock_mhz, "model": m["name"],
                    "tok_s": 1 / t, "roofline_tok_s": roof, "roofline_fraction": (1 / t) / roof if roof else None,
                    "bytes_per_token": model_bytes, "streamed_bytes_per_token": streamed,
                    "cycles_per_token": cycles_tok, "layer_cycles": r["cycles"],
                    "steady_layer_cycles": r.get("steady_layer_cycles"), "bit_exact": r.get("bit_exact"),
                    "calibrated_gbps": gbps, "measured": True})
    return out


def calibrated_bandwidths(report: Path | None, boards, run_missing: bool = True) -> dict:
    """``hbm_seq_read_gbps`` / ``ddr_seq_read_gbps`` (calibrated model) per board, from a
    benchmarks/hbm.py report, or by running its benchmark for the missing boards."""
    bw = {}
    if report is not None:
        for line in Path(report).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("metric") in ("hbm_seq_read_gbps", "ddr_seq_read_gbps") and row.get("model") == "calibrated":
                bw[row["board"]] = float(row["value"])
    missing = [b for b in boards if b not in bw]
    if missing and run_missing:
        import tempfile

        import hbm
        with tempfile.TemporaryDirectory(prefix="decode_hbm_") as tmp:
            for b in missing:
                for row in hbm.bench_board(b, Path(tmp), 1.0):
                    if row["metric"].endswith("_seq_read_gbps") and row.get("model") == "calibrated":
                        bw[b] = float(row["value"])
    return bw


def plot(path: Path, proj: list[dict], edge: list[dict], contexts, name: str = "u280_llm") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6.5))
    xs = list(range(len(contexts)))
    colors = {"w4a8kv4": "C0", "w2a8kv4": "C1", "w2a8kv4_sparse24": "C2", "ternary": "C3"}
    for fmt, color in colors.items():
        rows = {r["context"]: r for r in proj if r["format"] == fmt and r["board"] == "u280" and r["clock_mhz"] == 225}
        if not rows:
            continue
        ys = [rows[c]["tok_s"] if c in rows else np.nan for c in contexts]
        rs = [rows[c]["roofline_tok_s"] if c in rows else np.nan for c in contexts]
        timing = sorted({r["cycles_at_mhz"] for r in rows.values()})
        ax.plot(xs, ys, "o-", color=color, label=f"{fmt} simulated (U280 co-sim, 225 MHz; memory timing "
                                                 f"of {'/'.join(f'{t:g}' for t in timing)} MHz)")
        ax.plot(xs, rs, "--", color=color, alpha=0.6, label=f"{fmt} roofline (calibrated HBM)")
    for a, style in zip(ANCHORS, (":", "-.", (0, (1, 3)))):
        ax.axhline(a["tok_s"], color="k", linestyle=style, lw=1)
        ax.text(xs[-1] + 0.05, a["tok_s"], f"{a['name']} {a['tok_s']:g}", va="center", fontsize=8)
    ax.set_xticks(xs, [str(c) for c in contexts])
    ax.set_xlabel("context (tokens; sink_window = sink + recent window at 4096)")
    ax.set_ylabel("tokens/s, LLaMA-2-7B decode (projection)")
    ax.set_yscale("log")
    ax.set_title(f"hbmforge {name}: simulated decode vs. roofline and published anchors")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlim(-0.2, len(xs) - 1 + 0.7)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)   # below: no curve hidden
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def edge_plot(path: Path, projections: list[dict], analytic: list[dict]) -> None:
    """Tokens/s of TeLLMe's model per context: each edge board's co-simulated projection, its
    roofline (calibrated DDR4) and TeLLMe's published figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for color, board in zip(("C0", "C1"), sorted({p["board"] for p in projections})):
        rows = sorted((p for p in projections if p["board"] == board), key=lambda p: int(p["context"]))
        xs = [int(p["context"]) for p in rows]
        ax.plot(xs, [p["tok_s"] for p in rows], "o-", color=color,
                label=f"{board} simulated layer x {TELLME_MODEL['layers']} + LM head ({rows[0]['clock_mhz']:g} MHz)")
        if all(p["roofline_tok_s"] for p in rows):
            ax.plot(xs, [p["roofline_tok_s"] for p in rows], "--", color=color, alpha=0.6,
                    label=f"{board} roofline (calibrated DDR4, {rows[0]['calibrated_gbps']:g} GB/s)")
    a = next(a for a in ANCHORS if a["name"].startswith("TeLLMe"))
    ax.axhline(a["tok_s"], color="k", linestyle=":", lw=1, label=f"{a['name']} {a['tok_s']:g} tok/s (real KV260)")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(p["context"]) for p in projections})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("tokens/s (projection)")
    ax.set_title(f"{TELLME_MODEL['name']}, ternary: simulated edge decode")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def edge_problem(paths, contexts) -> str | None:
    """Why an --edge-config cannot run TeLLMe's ternary layer (None: it can); checked before
    anything is built."""
    from hbmforge.config import ConfigError, load_config

    m = TELLME_MODEL
    for path in paths:
        try:
            cfg = load_config(path)
        except (OSError, ConfigError, ValueError) as e:
            return f"--edge-config {path}: {e}"
        mm, att, vec = (cfg.engine(k) for k in ("matmul", "attention", "vector"))
        if mm is None or att is None or vec is None:
            return f"--edge-config {path}: needs matmul, attention and vector engines"
        if "ternary" not in mm.weight_bits:
            return f"--edge-config {path}: the matmul takes {list(mm.weight_bits)}, not ternary weights"
        if att.head_dim < m["head_dim"]:
            return f"--edge-config {path}: attention head_dim {att.head_dim} < the model's {m['head_dim']}"
        if max(int(c) for c in contexts) > att.max_context:
            return f"--edge-config {path}: --edge-contexts beyond the attention engine's max_context {att.max_context}"
        if "silu" not in vec.activations:
            return f"--edge-config {path}: the vector engine has no silu"
    return None


def edge_main(args, contexts: list[str]) -> None:
    """--edge-config: TeLLMe's model, one ternary layer per context on each edge design's
    co-simulation (calibrated DDR4), projected to the whole model beside the analytic rows."""
    from hbmforge.config import load_config

    configs = [(path, load_config(path)) for path in args.edge_config]
    boards = sorted({"kv260", "zcu102"} | {c.board for _, c in configs})       # the analytic rows' too
    bw = calibrated_bandwidths(args.hbm_report, boards, run_missing=not args.no_hbm_run)
    layers, projections = [], []
    for path, cfg in configs:
        rows = measure(path, [("ternary", c) for c in contexts], sink=args.sink, window=args.window, seed=args.seed,
                       dims=TELLME_MODEL, tile_rows=args.tile_rows, profile=args.profile,
                       memory_model=args.memory_model, memory_clock=args.memory_clock,
                       steady=not args.no_steady_state)
        mhz = rows[0]["memory_clock_mhz"] if rows else float(cfg.clock)
        for r in rows:
            r["board"] = cfg.board
            emit("decode_layer_cycles", r["cycles"], "cycles", kind="simulated", board=cfg.board, model=TELLME_MODEL["name"],
                 format="ternary", context=r["context"], bit_exact=r["bit_exact"],
                 bytes=r["bytes_read"] + r["bytes_written"], memory_model=r["memory_model"], memory_clock_mhz=mhz,
                 head_dim=r["head_dim"], engine_head_dim=r["engine_head_dim"], sim_seconds=r["sim_seconds"],
                 steady_layer_cycles=r.get("steady_layer_cycles"), two_layer_bit_exact=r.get("two_layer_bit_exact"))
            for op, o in (r.get("profile") or {}).items():
                emit("decode_layer_opcode_cycles", o["cycles"], "cycles", kind="simulated", board=cfg.board,
                     format="ternary", context=r["context"], opcode=op, descriptors=o["descriptors"],
                     bytes_read=o["bytes_read"], bit_exact=r["profile_bit_exact"])
        layers += rows
        for p in edge_simulated_rows(rows, cfg.board, mhz, bw, args.host_rt_us):
            projections.append(p)
            emit("projected_tok_s_ternary_edge", round(p["tok_s"], 2), "tok/s", kind="projection (simulated layer)",
                 board=p["board"], context=p["context"], clock_mhz=p["clock_mhz"], model=p["model"],
                 roofline_tok_s=round(p["roofline_tok_s"], 2) if p["roofline_tok_s"] else None,
                 roofline_fraction=round(p["roofline_fraction"], 4) if p["roofline_fraction"] else None,
                 bytes_per_token=int(p["bytes_per_token"]), streamed_bytes_per_token=int(p["streamed_bytes_per_token"]),
                 layer_cycles=p["layer_cycles"], bit_exact=p["bit_exact"], calibrated_gbps=p["calibrated_gbps"],
                 host_rt_us=args.host_rt_us, config=str(path))
    analytic = edge_rows(bw, args.host_rt_us)
    for e in analytic:
        emit_edge_analytic(e)
    a = next(a for a in ANCHORS if a["name"].startswith("TeLLMe"))
    emit("anchor_tok_s", a["tok_s"], "tok/s", kind="published", name=a["name"], board=a["board"], note=a["note"])
    report = {"edge_configs": [str(p) for p in args.edge_config], "edge_layer": layers, "edge_projection": projections,
              "edge_analytic": analytic, "bandwidth_gbps": bw, "host_rt_us": args.host_rt_us, "edge_model": TELLME_MODEL,
              "anchors": [a]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    if projections:
        edge_plot(args.png, projections, analytic)
    emit("report_written", str(args.json), "path", png=str(args.png) if projections else None)


def _layer_report_problem(path: Path) -> str | None:
    try:
        report = json.loads(path.read_text())
    except OSError as e:
        return f"--layer-report {path}: {e.strerror or e}"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"--layer-report {path}: not a JSON report of this benchmark ({e})"
    rows = report.get("layer") if isinstance(report, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"format", "context"} <= r.keys() for r in rows):
        return f"--layer-report {path}: has no 'layer' list of rows with 'format' and 'context' (write one with --json)"
    return None


def args_problem(args) -> str | None:
    """What is wrong with the command line's files, paths and counts (None: nothing), checked before
    anything is generated, simulated or written."""
    from hbmforge.config import ConfigError, load_config
    from paths import writable_file

    for flag, text in (("--formats", args.formats), ("--contexts", args.contexts), ("--clocks", args.clocks),
                       ("--edge-contexts", args.edge_contexts)):
        items = [t for t in text.split(",") if t]
        twice = sorted({t for t in items if items.count(t) > 1})
        if twice:
            return f"{flag} lists {', '.join(twice)} more than once"
    if args.seed < 0:
        return f"--seed must be >= 0, got {args.seed}"
    if args.tile_rows < 0:
        return f"--tile-rows must be >= 0 (0: every row random), got {args.tile_rows}"
    if not 1 <= args.heads <= LLAMA2_7B["heads"]:
        return f"--heads must be in [1, {LLAMA2_7B['heads']}], got {args.heads}"
    if not args.edge_config:
        try:
            cfg = load_config(args.config)
        except (OSError, ConfigError, ValueError) as e:
            return f"--config {args.config}: {e}"
        from hbmforge.layout import DesignLayout

        mm = cfg.engine("matmul")
        if mm is None or cfg.engine("attention") is None or cfg.engine("vector") is None:
            return f"--config {args.config}: needs matmul, attention and vector engines to run a decoder layer"
        k_align = DesignLayout(cfg).matmul.k_align
        hidden = layer_dims(args.heads)["hidden"]
        if hidden % k_align:
            return (f"--heads {args.heads}: hidden {hidden} is not a multiple of the matmul's k_align {k_align} "
                    f"(heads a multiple of {max(1, k_align // 128)})")
    if args.hbm_report is not None and not args.hbm_report.is_file():
        return f"--hbm-report {args.hbm_report}: no such file (write one with python benchmarks/hbm.py > FILE)"
    if args.layer_report is not None:
        problem = _layer_report_problem(args.layer_report)
        if problem:
            return problem
    if args.design is not None and not (args.design / "manifest.json").is_file():
        return f"--design {args.design}: not a generated design directory (no manifest.json; hbmforge gen writes one)"
    for flag, path in (("--json", args.json), ("--png", args.png)):
        if not writable_file(path):
            return f"{flag} {path}: cannot be written there"
    return None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "u280_llm512.yaml")
    ap.add_argument("--all", action="store_true", help="co-simulate every format x context (slow)")
    ap.add_argument("--formats", default="w4a8kv4,w2a8kv4,ternary",
                    help="comma-separated, of " + ", ".join(FORMATS) + " (w2a8kv4_sparse24: 2:4-pruned W2 weights, "
                         "co-simulated; needs a design with sparse24, and sparse24_pairs to skip the zeros)")
    ap.add_argument("--contexts", default="512,2048,4096,sink_window",
                    help="contexts (tokens) and/or sink_window (sink + window at the design's max_context)")
    ap.add_argument("--ref-context", default="2048", help="the context every format is co-simulated at")
    ap.add_argument("--sink", type=int, default=4, help="attention sinks of the sink_window row")
    ap.add_argument("--window", type=int, default=508, help="recent-token window of the sink_window row")
    ap.add_argument("--host-rt-us", type=float, default=30.0,
                    help="per-token host round trip (one start + wait; assumed, not measured)")
    ap.add_argument("--hbm-report", type=Path, default=None, help="benchmarks/hbm.py output (JSON lines)")
    ap.add_argument("--no-hbm-run", action="store_true",
                    help="boards missing from --hbm-report stay unprojected instead of running benchmarks/hbm.py")
    ap.add_argument("--layer-report", type=Path, default=None, help="reuse the layer rows of a previous --json")
    ap.add_argument("--projection-only", action="store_true", help="no co-sim: project --layer-report")
    ap.add_argument("--json", type=Path, default=Path("decode-bench") / "decode.json")
    ap.add_argument("--png", type=Path, default=Path("decode-bench") / "decode_roofline.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tile-rows", type=int, default=0,
                    help="quantize this many random rows per projection and repeat them (0: every row random)")
    ap.add_argument("--heads", type=int, default=32,
                    help="co-simulate the layer cut to this many heads (hidden = 128 x heads, FFN in proportion) "
                         "and extrapolate to 32 (when the full layer is too slow to simulate)")
    ap.add_argument("--memory-model", choices=("calibrated", "ideal"), default="calibrated",
                    help="the co-sim's HBM model (ideal: no channel limits; separates the design's own bounds)")
    ap.add_argument("--memory-clock", type=float, default=None,
                    help="kernel clock (MHz) the calibrated HBM timing is converted at (default: the config's); "
                         "the RTL is the same, so --memory-clock 225 measures the 225 MHz cycles")
    ap.add_argument("--clocks", default="225,300", help="clocks (MHz) to project at, comma-separated")
    ap.add_argument("--no-steady-state", action="store_true",
                    help="skip each cell's two-layer step (then every layer of the model is projected at the "
                         "lone layer's cycles, which count each layer's own norm pass)")
    ap.add_argument("--profile", action="store_true",
                    help="after each measured step, one more step one descriptor per run: cycles per opcode")
    ap.add_argument("--design", type=Path, default=None,
                    help="an already generated design directory of --config (skips regenerating the RTL)")
    ap.add_argument("--edge-config", type=Path, action="append", default=[],
                    help="also co-simulate one ternary layer of TeLLMe's model (heads of 96 zero-padded to the "
                         "engine's) on this edge design (examples/kv260_ternary.yaml, zcu102_ternary.yaml; "
                         "repeatable) and project it; without it the edge rows are analytic only")
    ap.add_argument("--edge-contexts", default="512,1024,2048", help="contexts of the --edge-config cells")
    return ap


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    problem = args_problem(args)
    if problem:
        ap.error(problem)
    formats = [f for f in args.formats.split(",") if f]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        ap.error(f"unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    if "w2a8kv4" not in formats:
        ap.error("--formats must include w2a8kv4 (the reference of the context sweep)")
    if args.sink < 0 or args.window <= 0 or args.sink + args.window > 4096:
        ap.error("--sink >= 0, --window > 0, sink + window <= 4096")
    if args.host_rt_us < 0:
        ap.error("--host-rt-us must be >= 0")
    if args.projection_only and args.layer_report is None:
        ap.error("--projection-only needs --layer-report")
    try:
        clocks = tuple(float(c) for c in args.clocks.split(",") if c)
    except ValueError:
        clocks = ()
    if not clocks or any(not 0 < c <= 1000 for c in clocks):
        ap.error(f"--clocks must be MHz values in (0, 1000], comma-separated, got {args.clocks!r}")
    if args.memory_clock is not None:
        if not 0 < args.memory_clock <= 1000:
            ap.error(f"--memory-clock must be in (0, 1000] MHz, got {args.memory_clock}")
        if args.memory_model != "calibrated":
            ap.error("--memory-clock applies to --memory-model calibrated only")
    contexts = [c for c in args.contexts.split(",") if c]
    if any(c != "sink_window" and not (c.isdigit() and 1 < int(c) <= 1 << 20) for c in contexts) or not contexts:
        ap.error(f"--contexts must be token counts > 1 and/or sink_window, got {args.contexts!r}")
    if args.ref_context not in contexts:
        ap.error(f"--ref-context must be one of {contexts}")
    edge_contexts = [c for c in args.edge_contexts.split(",") if c]
    if not edge_contexts or any(not (c.isdigit() and 1 < int(c) <= 1 << 20) for c in edge_contexts):
        ap.error(f"--edge-contexts must be token counts > 1, got {args.edge_contexts!r}")
    if args.edge_config:
        problem = edge_problem(args.edge_config, edge_contexts)
        if problem:
            ap.error(problem)
        return edge_main(args, edge_contexts)
    if args.all:
        plan = [(f, c) for f in formats for c in contexts]
    else:
        plan = [("w2a8kv4", args.ref_context)] + [("w2a8kv4", c) for c in contexts if c != args.ref_context] + \
            [(f, args.ref_context) for f in formats if f != "w2a8kv4"]
    from hbmforge.boards import load_board
    from hbmforge.config import load_config

    cfg = load_config(args.config)
    lanes = cfg.engine("matmul").lanes
    if SPARSE_FORMATS & set(formats) and not cfg.engine("matmul").sparse24:
        ap.error(f"--formats {sorted(SPARSE_FORMATS & set(formats))} needs a matmul engine with sparse24: true "
                 f"({args.config} has none)")
    prior = []
    if args.layer_report is not None:
        prior = [r for r in json.loads(args.layer_report.read_text())["layer"] if r.get("measured")]
        plan = [p for p in plan if p not in {(r["format"], r["context"]) for r in prior}]
    measured = list(prior)
    if plan and not args.projection_only:
        measured += measure(args.config, plan, sink=args.sink, window=args.window, seed=args.seed,
                            design=args.design, dims=layer_dims(args.heads), tile_rows=args.tile_rows,
                            profile=args.profile, memory_model=args.memory_model,
                            memory_clock=args.memory_clock, steady=not args.no_steady_state)
        args.json.parent.mkdir(parents=True, exist_ok=True)       # kept even if the projection fails
        args.json.write_text(json.dumps({"layer": measured}, indent=1))
    for r in measured:
        emit("decode_layer_cycles", r["cycles"], "cycles", kind="simulated", format=r["format"], context=r["context"],
             bit_exact=r.get("bit_exact"), bytes=r["bytes_read"] + r["bytes_written"],
             memory_model=r.get("memory_model", "calibrated"), memory_clock_mhz=r.get("memory_clock_mhz", cfg.clock),
             sim_cycles_per_s=r.get("sim_cycles_per_s"), sim_seconds=r.get("sim_seconds"),
             steady_layer_cycles=r.get("steady_layer_cycles"), two_layer_bit_exact=r.get("two_layer_bit_exact"))
        for op, o in (r.get("profile") or {}).items():
            emit("decode_layer_opcode_cycles", o["cycles"], "cycles", kind="simulated", format=r["format"],
                 context=r["context"], opcode=op, descriptors=o["descriptors"], share=round(o["cycles"] / r["profile_cycles"], 4),
                 bytes_read=o["bytes_read"], mac_ops=o["mac_ops"], bit_exact=r["profile_bit_exact"],
                 note="one descriptor per run (profile step, the next token)")
    full = measured
    if any(r.get("heads", 32) != 32 for r in measured):
        full = scale_to_full(measured, cfg.engine("matmul").lanes)
        for r in full:
            emit("decode_layer_cycles", r["cycles"], "cycles", kind="extrapolated", format=r["format"],
                 context=r["context"], how=r["extrapolated_from"])
    cells = complete(full, formats, contexts)
    cells += sparse24_rows(cells, lanes)
    from hbmforge.layout import DesignLayout

    lay = DesignLayout(cfg)
    for c in cells:
        c["padding_bytes"] = ffn_padding_bytes(lay, c["format"], LLAMA2_7B["hidden"], LLAMA2_7B["intermediate"])
    bw = calibrated_bandwidths(args.hbm_report, ("u280", "u55c", "kv260", "zcu102"),
                               run_missing=not args.no_hbm_run)
    port_bytes = cfg.stream_ports * cfg.data_width // 8
    # the U55C has no DDR: a design whose data port is on the U280's DDR4 says nothing about it
    same_on = [b for b in ("u280", "u55c") if cfg.data_memory == "main" or load_board(b).other_memory("ddr")]
    proj = project(cells, port_bytes=port_bytes, bw=bw, host_rt_us=args.host_rt_us, clocks=clocks,
                   cycles_mhz=float(cfg.clock), boards=same_on)
    for b in sorted({"u280", "u55c"} - set(same_on)):
        emit("projection_skipped", b, "board", config=str(args.config),
             note=f"data_memory {cfg.data_memory}: {b} has no DDR beside its HBM; project it from a "
                  f"data_memory: main config")
    for c in cells:
        if not c["measured"]:
            emit("decode_layer_cycles", c["cycles"], "cycles", kind="extrapolated", format=c["format"],
                 context=c["context"], how=c["extrapolated_from"])
    # decode_board_bw_efficiency: W2A8KV4, ctx 2048, at the co-sim's clock, on the config's board
    ref = next((c for c in cells if c["format"] == "w2a8kv4" and c["context"] == "2048"), None)
    eff_board = cfg.board if cfg.board in bw else "u280"
    if ref is not None and eff_board in bw:
        ref_mhz = ref.get("memory_clock_mhz", cfg.clock)          # the clock its cycles were simulated at
        gbps = bw[eff_board]
        alone = ref["bytes_read"] + ref["bytes_written"]
        # the layer as a model runs it (the second of two), else the layer alone
        steady = steady_cycles(ref)
        layer_cycles = ref["cycles"] if steady is None else steady
        streamed = alone if steady is None else ref.get("steady_layer_bytes", alone)
        model_bytes = streamed - ref["padding_bytes"]

        def ratio(nbytes, cycles):          # bytes / (calibrated bandwidth x time)
            return round(nbytes / (gbps * 1e9 * cycles / (ref_mhz * 1e6)), 4)

        emit("decode_board_bw_efficiency", ratio(model_bytes, layer_cycles),
             "ratio", kind="simulated", format="w2a8kv4", context="2048", clock_mhz=ref_mhz, board=eff_board,
             calibrated_gbps=gbps, measured=ref["measured"], layer_bytes=model_bytes, layer_cycles=layer_cycles,
             steady_state=steady is not None, layer_alone_cycles=ref["cycles"],
             layer_alone_ratio=ratio(alone - ref["padding_bytes"], ref["cycles"]),
             streamed_bytes=streamed, streamed_ratio=ratio(streamed, layer_cycles),
             note="the layer's bytes without the FFN's K padding / (calibrated achievable bandwidth x layer "
                  "decode time); the layer as a model runs it (the second of a two-layer step) when "
                  "steady_state, layer_alone_ratio for the layer alone; streamed_ratio counts the padding "
                  "too; target >= 0.90")
    names = {"w2a8kv4_sparse24": "projected_tok_s_7b_w2a8kv4_sparse24", "w2a8kv4": "projected_tok_s_7b_w2a8kv4_dense",
             "w4a8kv4": "projected_tok_s_7b_w4a8kv4", "ternary": "projected_tok_s_7b_ternary"}
    for p in proj:
        emit(names[p["format"]], round(p["tok_s"], 2), "tok/s", kind="projection (simulated layer)",
             board=p["board"], clock_mhz=p["clock_mhz"], context=p["context"],
             roofline_tok_s=round(p["roofline_tok_s"], 2), roofline_fraction=round(p["roofline_fraction"], 4),
             port_roofline_tok_s=round(p["port_roofline_tok_s"], 2), bytes_per_token=int(p["bytes_per_token"]),
             streamed_bytes_per_token=int(p["streamed_bytes_per_token"]),
             layer_cycles=p["layer_cycles"], steady_layer_cycles=p["steady_layer_cycles"],
             layer_measured=p["measured"], calibrated_gbps=p["calibrated_gbps"],
             cycles_simulated_at_mhz=p["cycles_at_mhz"],
             host_rt_us=args.host_rt_us)
    edge = edge_rows(bw, args.host_rt_us)
    for e in edge:
        emit_edge_analytic(e)
    for a in ANCHORS:
        emit("anchor_tok_s", a["tok_s"], "tok/s", kind="published", name=a["name"], board=a["board"],
             clock_mhz=a["clock_mhz"], note=a["note"])
    for k, v in BW_ANCHORS.items():
        emit(k, v, "GB/s", kind="published", note="DS963 / Shuhai (FCCM 2020)")
    report = {"config": str(args.config), "layer": measured, "cells": cells, "projection": proj, "edge": edge,
              "anchors": ANCHORS, "bandwidth_gbps": bw, "bw_anchors": BW_ANCHORS, "host_rt_us": args.host_rt_us,
              "sink": args.sink, "window": args.window, "model": LLAMA2_7B, "edge_model": TELLME_MODEL}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    plot(args.png, proj, edge, contexts, cfg.name)
    emit("report_written", str(args.json), "path", png=str(args.png))


if __name__ == "__main__":
    main()
