"""Analytic resource model: is a config plausible on its board before any synthesis?

This is a first-order count (one DSP per 8x8 multiplier, adder-tree LUTs,
block RAM by width and depth) meant to reject configs that cannot fit, with a
message that names the budget and by how much. ``hbmforge estimate`` gives
Yosys synthesis figures; neither is a Vivado result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ConfigError
from .layout import DesignLayout

BRAM36_BITS = 36 * 1024
BRAM36_MAX_WIDTH = 72


@dataclass(frozen=True)
class ResourceEstimate:
    lut: int
    ff: int
    dsp: int
    bram36: int
    ports: int

    def as_dict(self) -> dict:
        return {"lut": self.lut, "ff": self.ff, "dsp": self.dsp, "bram36": self.bram36, "ports": self.ports}


def _bram_for(width: int, depth: int) -> int:
    """BRAM36 blocks for a width x depth memory (width-limited or capacity-limited)."""
    return max(math.ceil(width / BRAM36_MAX_WIDTH), math.ceil(width * depth / BRAM36_BITS))


def _trit_unpack_luts(cfg) -> int:
    """'5trit' ternary: a trit decoder per port byte (8 -> 10 bits, ~20 LUT) and the trit
    gearbox's buffer of ``L - g + T`` 2-bit codes, each a mux over ``L/g + 1`` sources."""
    mm = cfg.matmul
    if "ternary" not in mm.weight_bits or mm.ternary_packing != "5trit":
        return 0
    nbytes = mm.weight_ports * cfg.data_width // 8
    trits = 5 * nbytes
    g = math.gcd(trits, mm.lanes)
    codes = mm.lanes - g + trits
    return 20 * nbytes + 2 * codes * math.ceil((mm.lanes // g + 1) / 4)


def estimate_resources(lay: DesignLayout) -> ResourceEstimate:
    """First-order LUT/FF/DSP/BRAM count of a design (the matmul datapath and the ports)."""
    cfg = lay.config
    mm = cfg.matmul
    w = lay.matmul.widths
    macs = mm.rows * mm.lanes
    groups_per_fire = max(1, mm.lanes // mm.group_size)
    # DSPs: one per 8x8 MAC lane, group-scale and requant multipliers per row.
    dsp_scale = mm.rows * groups_per_fire * math.ceil(w.group_bits / 27) * math.ceil(mm.scale_bits / 18)
    dsp_requant = mm.rows * math.ceil(w.acc_bits / 27) * math.ceil(w.mult_bits / 18)
    # 2-bit and ternary products are a few LUTs each (sign-select/small multiply), not DSPs
    small = w.max_wbits <= 2
    dsp = (0 if small else macs) + dsp_scale + dsp_requant
    # LUTs: adder tree per row (about one LUT per sum bit per input), accumulators,
    # unpacker muxes, and a fixed cost per AXI port and for control.
    lut_tree = mm.rows * mm.lanes * (w.chunk_bits + 2)
    lut_acc = mm.rows * (w.acc_bits + w.group_bits) * 2
    lut_ports = len(lay.ports) * 1500 + 4000
    lut_small = macs * 9 if small else 0
    # on-chip tiles (docs/engines/matmul.md): the column parameters of two weight tiles (mult,
    # shift, bias: LUT RAM), the init adder of the output stage, 64-bit result columns in the FIFO
    geom = lay.matmul
    lut_tiles = 2 * geom.tile_n * 71 // 32 + mm.rows * w.acc_bits + mm.rows * 64 * 16 // 32
    lut = (lut_tree + lut_acc + lut_ports + lut_small + mm.lanes * w.max_wbits * 2 + _trit_unpack_luts(cfg)
           + lut_tiles)
    ff = 2 * lut
    if geom.inline_scales:
        # inline scales (docs/engines/matmul.md): a combined P x W-bit word register in front of the
        # scale adapter and the adapter's own word buffer; the demux is about one LUT per bit
        combined = 8 * geom.combined_bytes
        lut += combined
        ff += 2 * combined
    # BRAM: the activation ring (one bank of act_depth lines per row), the weight ring (2 x tile_n
    # columns of line_stride lines, weights and group scales per line), the split-K partial-sum
    # queue, reader FIFOs per port.
    act = mm.rows * _bram_for(mm.lanes * 8, geom.act_depth)
    weights = _bram_for(geom.weight_line_bits, geom.weight_depth)
    partials = _bram_for(64 * mm.rows, 32)
    fifo_depth = cfg.axi.max_burst_beats * cfg.axi.max_outstanding
    fifos = len(lay.ports) * 2 * _bram_for(cfg.data_width, fifo_depth)
    hp = attention_head_parallel_terms(lay)
    return ResourceEstimate(lut=lut + hp["lut"], ff=ff + hp["ff"], dsp=dsp + hp["dsp"],
                            bram36=act + weights + partials + fifos + hp["bram36"], ports=len(lay.ports))


def attention_head_parallel_terms(lay: DesignLayout) -> dict:
    """What ``head_parallel: true`` adds to an attention engine of R rows (docs/engines/attention.md):
    2 (R - 1) more K/V word feeds (each a scale-word buffer, the lane unpacking and the mantissa
    select) with their segment FIFOs, a per-row select of own/shared lanes and mantissas in front
    of the QK and PV units, (R - 1) x lanes more mantissa x value multipliers in the PV unit (the
    shared layout has one set for all rows), and R - 1 more K/V address pairs per segment
    command (adders, wider command FIFOs). The extra ports' AXI logic and reader FIFOs are
    counted with the ports. Zero without an attention engine or without head_parallel."""
    att = lay.config.attention
    if att is None or not att.head_parallel:
        return {"lut": 0, "ff": 0, "dsp": 0, "bram36": 0, "feeds": 0}
    from .engines.attention import attention_geometry

    g = attention_geometry(lay)
    R, W = g.rows, 8 * g.word_bytes
    lanes = g.lanes
    block_lanes = min(g.group_size, g.slot)
    blocks = lanes // block_lanes
    mpw = g.mants_per_word
    scale_depth = -(-(mpw - 1 + g.page_tokens * g.groups) // mpw)
    feeds = 2 * (R - 1)
    seg_bits = 64                                                 # a segment record, rounded up
    feed_lut = 8 * lanes + 16 * blocks * max(1, mpw // 4)          # unpack + mantissa select
    select_lut = 2 * R * (8 * lanes + 16 * blocks)                 # own or shared word per row, K and V
    addr_lut = 2 * (R - 1) * 64 * 2                                 # two 64-bit adds per extra address
    cmd_ff = 2 * (R - 1) * 64 * (2 + 4)                             # K (depth 2) and V (depth 4) command FIFOs
    lut = feeds * feed_lut + select_lut + addr_lut
    ff = 2 * lut + cmd_ff + feeds * 8 * seg_bits
    return {"lut": lut, "ff": ff, "dsp": (R - 1) * lanes, "bram36": feeds * _bram_for(W, max(2, scale_depth)),
            "feeds": feeds}


def tile_buffers(lay: DesignLayout) -> dict:
    """Bits and BRAM36 blocks of the matmul engine's on-chip tiles (the budget's terms)."""
    geom, mm = lay.matmul, lay.mm
    return {
        "activation_ring": {"banks": mm.rows, "lines": geom.act_depth, "line_bits": 8 * mm.lanes,
                            "bits": mm.rows * geom.act_depth * 8 * mm.lanes,
                            "bram36": mm.rows * _bram_for(8 * mm.lanes, geom.act_depth)},
        "weight_ring": {"lines": geom.weight_depth, "line_bits": geom.weight_line_bits,
                        "bits": geom.weight_depth * geom.weight_line_bits,
                        "bram36": _bram_for(geom.weight_line_bits, geom.weight_depth)},
        "partial_queue": {"entries": 32, "bits": 32 * 64 * mm.rows, "bram36": _bram_for(64 * mm.rows, 32)},
    }


def check_budget(lay: DesignLayout) -> ResourceEstimate:
    """Raise :class:`ConfigError` naming every budget the design exceeds."""
    cfg = lay.config
    est = estimate_resources(lay)
    board = cfg.board_info
    frac = cfg.max_utilization
    limits = {
        "LUT": (est.lut, board.resources.lut),
        "FF": (est.ff, board.resources.ff),
        "DSP": (est.dsp, board.resources.dsp),
        "BRAM": (est.bram36, board.resources.bram36 + 8 * board.resources.uram),
    }
    problems = []
    for name, (need, have) in limits.items():
        allowed = int(have * frac)
        if need > allowed:
            problems.append(f"{name} budget exceeded: needs {need}, {board.name} allows {allowed} "
                            f"({frac:.0%} of {have}), over by {need - allowed}")
    if problems:
        raise ConfigError(f"config {cfg.name!r} does not fit board {board.name}:\n  "
                          + "\n  ".join(problems)
                          + "\n  (analytic estimate; reduce engines.0.rows, lanes, max_k, tile_m or tile_n)")
    return est
