"""Run a random layer on the sim backend and measure it: what ``hbmforge run`` reports.

The layer runs once on the device (integer path), and the result is compared
bit for bit with the golden model on the same quantized inputs and, after
dequantization, with float math.
"""
from __future__ import annotations

import time

import numpy as np

from hbmforge.config import AcceleratorConfig
from hbmforge.numerics import quantize_activations_per_token

__all__ = ["LayerRunError", "parse_wbits", "run_linear"]


#: the largest operand or result this runner simulates (elements): float64 copies of an
#: operand this size take 512 MiB of host memory, and the co-simulation hours
MAX_ELEMENTS = 1 << 26


class LayerRunError(RuntimeError):
    """The layer could not be run on the device (device error, timeout)."""


def parse_wbits(value):
    """``wbits`` text (or value) -> 2, 4, 8 or "ternary"; ValueError otherwise."""
    text = str(value).strip().lower()
    if text in ("2", "4", "8"):
        return int(text)
    if text in ("ternary", "t", "1.58"):
        return "ternary"
    raise ValueError(f"wbits must be one of 2, 4, 8, ternary, got {value!r}")


def check_size(**dims: int) -> None:
    """Positive integer dimensions; ValueError naming the first bad one."""
    for name, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def check_elements(**products: int) -> None:
    """Every named product of dimensions (an operand or result) at most :data:`MAX_ELEMENTS`."""
    for name, count in products.items():
        if count > MAX_ELEMENTS:
            raise ValueError(f"{name} = {count:,} elements; the layer runner simulates at most "
                             f"{MAX_ELEMENTS:,} per operand (use smaller dimensions)")


def check_linear_shape(cfg: AcceleratorConfig, m: int, k: int, n: int, wbits) -> None:
    """The random layer's shape and format against ``cfg``'s matmul engine (ValueError naming the field)."""
    mm = cfg.matmul
    check_size(m=m, k=k, n=n)
    if isinstance(wbits, bool) or wbits not in mm.weight_bits:
        raise ValueError(f"wbits must be one of this design's weight_bits {list(mm.weight_bits)}, "
                         f"got {wbits!r}")
    if k % mm.group_size:
        raise ValueError(f"k must be a multiple of the engine's group_size {mm.group_size}, got {k}")
    max_k = mm.split_k * (mm.max_k - mm.max_k % max(mm.lanes, mm.group_size, cfg.data_width // 8))
    if k > max_k:
        if mm.split_k == 1:
            raise ValueError(f"k must be at most the engine's max_k {mm.max_k}, got {k}")
        raise ValueError(f"k must be at most the engine's largest K {max_k} (split_k {mm.split_k} slices of "
                         f"max_k {mm.max_k}), got {k}")
    check_elements(**{"m x k": m * k, "n x k": n * k, "m x n": m * n})


def run_linear(cfg: AcceleratorConfig, *, m: int, k: int, n: int, wbits=4, seed: int = 0,
               timeout: float = 600.0, console=None, backend_options: dict | None = None) -> dict:
    """Run a random ``[m, k] x [n, k]^T`` Linear on the co-simulation; return the report dict.

    ``wbits``: 2, 4, 8 or "ternary" (text such as "2" or "ternary" is parsed too).
    """
    from hbmforge.host import DeviceError, Linear, open_device

    wbits = parse_wbits(wbits)
    check_linear_shape(cfg, m, k, n, wbits)
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    try:
        if console is not None:
            console.print("  building (or reusing) the Verilator model ...")
        dev = open_device(cfg, backend="sim", **(backend_options or {}))
    except DeviceError as err:
        raise LayerRunError(f"could not open the sim device: {err}") from None
    try:
        lin = Linear.from_float(w, bits=wbits, device=dev)
        aq = quantize_activations_per_token(x)
        shift = lin.out_shift_for(aq.q)
        t0 = time.perf_counter()
        yi = lin.forward_int(aq.q, out_shift=shift, timeout=timeout)
        wall = time.perf_counter() - t0
        golden = lin.golden_int(aq.q, out_shift=shift)
        run = lin.last_run
    except DeviceError as err:
        raise LayerRunError(f"device error: {err}") from None
    finally:
        dev.close()
    y = lin.dequantize_int32(yi, shift, aq.scale)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    c = run.counters
    mm = cfg.matmul
    word_bytes = cfg.data_width // 8
    weight_bytes = sum(v["bytes_read"] for p, v in c["ports"].items() if p.startswith("w"))
    cycles = c["cycles"]
    return {
        "layer": "linear", "m": m, "k": k, "n": n, "wbits": wbits, "board": cfg.board,
        "clock_mhz": cfg.clock, "rows": mm.rows, "lanes": mm.lanes, "weight_ports": mm.weight_ports,
        "cycles": cycles, "runs": run.runs,
        "seconds_at_clock": cycles / (cfg.clock * 1e6),
        "mac_utilization": (m * k * n) / (mm.rows * mm.lanes * cycles) if cycles else 0.0,
        "weight_port_efficiency": weight_bytes / (mm.weight_ports * word_bytes * cycles) if cycles else 0.0,
        "bytes_read": c["bytes_read"], "bytes_written": c["bytes_written"],
        "weight_bytes_read": weight_bytes,
        "stall_cycles": c["stall_cycles"], "mac_ops": c["mac_ops"],
        "golden_mismatches": int(np.count_nonzero(yi != golden)),
        "rel_err_vs_float": float(np.linalg.norm(y - ref) / np.linalg.norm(ref)),
        "max_abs_err_vs_float": float(np.max(np.abs(y - ref))),
        "sim_wall_seconds": wall,
        "sim_cycles_per_second": cycles / wall if wall > 0 else 0.0,
    }
