"""Run a random attention layer on a device and measure it: what ``hbmforge run --layer attention``
reports.

The K/V of ``ctx - n_q`` earlier tokens are appended to a paged KV cache (no attention is run
on them), then one attention call with ``n_q`` queries (decode: ``n_q = 1``; a prefill chunk
otherwise) appends the last ``n_q`` tokens and runs one ATTENTION descriptor. Its int32 output is
compared bit for bit with the golden model (:func:`hbmforge.numerics.attention.attention_int`
on the cache's host mirror) and, dequantized, with float64 attention on the unquantized tensors.

Efficiency figures:

* ``kv_efficiency = kv_bytes_read / (kv_ports * word_bytes * cycles)``: the fraction of the KV
  ports' peak (one word per port per cycle) the run used.
* ``mac_utilization = mac_ops / (peak * cycles)`` with ``peak = 2 * rows * values per word``
  (:func:`hbmforge.host.attention.attention_peak_macs`: the K and V feeds each deliver one word
  per cycle to units that multiply it with all ``rows`` query rows; MAC_OPS counts the QK and
  the PV products).
"""
from __future__ import annotations

import time

import numpy as np

from hbmforge.engines.attention import attention_geometry, job_ranges, segments, tile_rows
from hbmforge.config import AcceleratorConfig
from .runner import LayerRunError, check_elements, check_size

__all__ = ["run_attention", "expected_kv_bytes", "LayerRunError"]


def expected_kv_bytes(geom, d: dict) -> tuple[int, int]:
    """(K bytes, V bytes) the engine reads for descriptor fields ``d`` (the golden model's reads:
    per tile and segment, the scale words spanning its tokens plus one value record per token)."""
    B, bits = geom.word_bytes, d["kv_bits"]
    base = d["ctx_len"] - d["n_q"]
    per_side = 0
    for _, trows in tile_rows(d, geom.rows):
        pos = [base + pi for pi, _ in trows]
        for j0, n in segments(job_ranges(d, min(pos), max(pos)), geom.page_tokens):
            _, words, _ = geom.scale_span(j0 % geom.page_tokens, n)
            per_side += words * B + n * geom.value_bytes(bits)
    return per_side, per_side


def _check(cfg: AcceleratorConfig, ctx, n_q, q_heads, kv_heads, kv_bits, window, sink, mode="causal",
           valid_len=None) -> None:
    att = cfg.attention
    if att is None:
        raise ValueError(f"config {cfg.name!r} has no attention engine; add an engine with "
                         "`kind: attention` (see examples/u280_attention.yaml)")
    check_size(ctx=ctx, n_q=n_q, q_heads=q_heads, kv_heads=kv_heads)
    for name, v in (("window", window), ("sink", sink)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if ctx > att.max_context:
        raise ValueError(f"ctx {ctx} exceeds the engine's max_context {att.max_context}")
    if n_q > ctx:
        raise ValueError(f"n_q {n_q} must be at most ctx {ctx} (the queries are the last n_q tokens)")
    if q_heads % kv_heads or q_heads > 1024:
        raise ValueError(f"q_heads {q_heads} must be a multiple of kv_heads {kv_heads} and at most 1024")
    if kv_bits not in att.kv_bits:
        raise ValueError(f"kv_bits must be one of this engine's kv_bits {list(att.kv_bits)}, got {kv_bits!r}")
    if window > att.max_context or sink > att.max_context:
        raise ValueError(f"window {window} / sink {sink} must be at most max_context {att.max_context}")
    if sink and not window:
        raise ValueError("sink needs a sliding window > 0")
    if mode not in ("causal", "bidirectional"):
        raise ValueError(f"mode must be 'causal' or 'bidirectional', got {mode!r}")
    if mode == "bidirectional" and (window or sink):
        raise ValueError("bidirectional attention takes no window or sink")
    if valid_len is not None:
        if mode != "bidirectional":
            raise ValueError("valid_len applies to bidirectional attention (mode='bidirectional')")
        if isinstance(valid_len, bool) or not isinstance(valid_len, int) or not 1 <= valid_len <= ctx:
            raise ValueError(f"valid_len must be an integer in [1, ctx={ctx}], got {valid_len!r}")
    check_elements(**{"ctx x kv_heads x head_dim": ctx * kv_heads * att.head_dim,
                      "n_q x q_heads x head_dim": n_q * q_heads * att.head_dim})


def run_attention(cfg: AcceleratorConfig, *, ctx: int, n_q: int = 1, q_heads: int = 8, kv_heads: int = 2,
                  kv_bits: int = 8, window: int = 0, sink: int = 0, seed: int = 0, timeout: float = 600.0,
                  backend: str = "sim", console=None, backend_options: dict | None = None,
                  device=None, mode: str = "causal", valid_len: int | None = None) -> dict:
    """Run one random attention call (``n_q`` queries over a context of ``ctx`` tokens) on the
    device and return the report dict. ``mode="bidirectional"``: an encoder call (every query sees
    the first ``valid_len`` tokens, default all; the rest is padding).

    ``backend``/``backend_options`` open a device for ``cfg`` (``open_device``); pass an open
    ``device`` instead to use it (it is left open). Data: Gaussian Q/K/V with two outlier
    channels in K (x4) and Q (x2), KV head scales calibrated on the whole K/V (no clipping).
    """
    from hbmforge.host import Attention, DeviceError, KVCache, KVCacheError, open_device
    from hbmforge.host.attention import attention_peak_macs
    from hbmforge.numerics.attention import attention_float

    if isinstance(kv_bits, str) and kv_bits.strip().isdigit():
        kv_bits = int(kv_bits)
    _check(cfg, ctx, n_q, q_heads, kv_heads, kv_bits, window, sink, mode, valid_len)
    att_cfg = cfg.attention
    hd = att_cfg.head_dim
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_q, q_heads, hd))
    k = rng.standard_normal((ctx, kv_heads, hd))
    v = rng.standard_normal((ctx, kv_heads, hd))
    ch = rng.integers(0, hd, 2)
    k[:, :, ch] *= 4.0
    q[:, :, ch] *= 2.0
    owns = device is None
    if owns:
        try:
            if console is not None:
                console.print("  building (or reusing) the Verilator model ..." if backend == "sim"
                              else f"  opening the {backend} device ...")
            device = open_device(cfg, backend=backend, **(backend_options or {}))
        except DeviceError as err:
            raise LayerRunError(f"could not open the {backend} device: {err}") from None
    pages = -(-ctx // att_cfg.page_tokens)
    try:
        cache = KVCache(device, kv_heads=kv_heads, kv_bits=kv_bits, pages=pages, on_clip="count",
                        k_range=np.abs(k).max(axis=(0, 2)), v_range=np.abs(v).max(axis=(0, 2)))
        try:
            layer = Attention(device, q_heads=q_heads, kv_heads=kv_heads, head_dim=hd, window=window, sink=sink,
                              cache=cache, timeout=timeout, mode=mode)
            seq = cache.sequence()
            t0 = time.perf_counter()
            if ctx > n_q:
                cache.append(seq, k[:ctx - n_q], v[:ctx - n_q])
            append_wall = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = layer.prefill(q, k[ctx - n_q:], v[ctx - n_q:], seq, valid_len=valid_len)
            wall = time.perf_counter() - t0
            run = layer.last_run
            golden = layer.golden_int(run.q_int, run.mult, run.shift, seq, valid_len=valid_len)
            ref_cache = layer.reference(q, seq=seq, valid_len=valid_len)
            d = layer.descriptor(seq, n_q, valid_len=valid_len or 0)
            clipped = dict(cache.stats["clipped_groups"])
            layer.close()
        finally:
            cache.close()
    except (DeviceError, KVCacheError) as err:
        raise LayerRunError(f"device error: {err}") from None
    finally:
        if owns:
            device.close()
    geom = attention_geometry(device.layout)
    ref = attention_float(q, k, v, ctx_len=ctx, window=window, sink=sink, q_per_kv=q_heads // kv_heads,
                          bidirectional=mode == "bidirectional", valid_len=valid_len or 0)
    cycles = run.cycles
    peak = attention_peak_macs(geom, kv_bits)
    kb, vb = expected_kv_bytes(geom, d)
    kv_port_names = sorted({"w0", f"w{geom.kv_ports - 1}"})
    seconds = cycles / (cfg.clock * 1e6)
    c = run.counters
    return {
        "layer": "attention", "ctx": ctx, "n_q": n_q, "q_heads": q_heads, "kv_heads": kv_heads,
        "kv_bits": kv_bits, "window": window, "sink": sink, "mode": mode, "valid_len": valid_len or ctx,
        "head_dim": hd, "board": cfg.board,
        "clock_mhz": cfg.clock, "rows": geom.rows, "page_tokens": geom.page_tokens, "kv_ports": geom.kv_ports,
        "data_width": cfg.data_width, "backend": device.backend,
        "cycles": cycles, "seconds_at_clock": seconds,
        "kv_bytes_read": run.kv_bytes_read, "kv_bytes_expected": kb + vb,
        "kv_port_bytes_read": {p: run.port_bytes_read.get(p, 0) for p in kv_port_names},
        "kv_efficiency": run.kv_efficiency,
        "kv_gbytes_per_second_at_clock": run.kv_bytes_read / seconds / 1e9 if seconds else 0.0,
        "mac_ops": run.mac_ops, "peak_macs_per_cycle": peak,
        "mac_utilization": run.mac_ops / (peak * cycles) if cycles else None,
        "bytes_read": c["bytes_read"], "bytes_written": c["bytes_written"], "stall_cycles": c["stall_cycles"],
        "golden_mismatches": int(np.count_nonzero(run.output_int != golden)),
        "rel_err_vs_float": float(np.linalg.norm(out - ref) / np.linalg.norm(ref)),
        "rel_err_vs_dequantized_cache": float(np.linalg.norm(out - ref_cache) / np.linalg.norm(ref_cache)),
        "max_abs_err_vs_float": float(np.max(np.abs(out - ref))),
        "clipped_groups": clipped,
        "append_wall_seconds": append_wall,
        "sim_wall_seconds": wall,
        "sim_cycles_per_second": cycles / wall if wall > 0 else 0.0,
    }
