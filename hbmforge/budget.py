"""Analytic resource model: is a config plausible on its board before any synthesis?

This is a first-order count (one DSP per 8x8 multiplier, ``ceil(a/27) * ceil(b/18)`` DSPs for a
wider a x b product, adder-tree LUTs, block RAM by width and depth) meant to reject configs that
cannot fit, with a message that names the budget and by how much. It is summed over parts
(:attr:`ResourceEstimate.parts`): the matmul datapath, the AXI ports, the attention engine
(:func:`attention_terms` + :func:`attention_head_parallel_terms`), the vector engine
(:func:`vector_terms`) and the command processor with the shell glue (:func:`control_terms`).
The per-engine terms are calibrated against Yosys on small configs (docs/engines/attention.md,
docs/engines/vector.md: within a stated error, an estimate). ``hbmforge estimate`` gives Yosys
synthesis figures; neither is a Vivado result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import ConfigError
from .layout import DesignLayout

BRAM36_BITS = 36 * 1024
BRAM36_MAX_WIDTH = 72

#: LUTs per product by an int4 operand built as shift-and-add (``int4_products: lut``,
#: ``hbmforge.generators.lutmul``), Yosys synth_xilinx (docs/estimate.md, "Products in LUTs"): an int4 matmul
#: lane (added to the lane's adder-tree input: 4,060 vs 1,967 LUT for 64 lanes), a registered
#: int8 q x int4 k, a 16-bit block mantissa x int4 value (64 of each: 2,691 and 5,056 LUT)
LUT_MATMUL_INT4_LANE = 33
LUT_Q_TIMES_K4 = 42
LUT_MANT_TIMES_V4 = 79
#: LUTs per matmul lane beyond the adder trees and products: the slope of Yosys's matmul engine
#: from 256 to 1024 lanes (93.7 per lane) less the other per-lane terms' (65.7; docs/engines/matmul.md,
#: "Resources"): the weight sign extension, the weight-sum tree and the format select
LUT_MATMUL_LANE = 28
#: the 2:4 pair fire (``sparse24_pairs``) per lane and row: the registered activation select (an
#: 8-bit 4:1 mux, one LUT6 a bit) and the weights' extra pipeline register. Yosys synth_xilinx, a
#: 256-lane int4 (lut) MacArray of one row: 16,596 LUT / 9,096 FF plain, 18,807 / 14,006 with pairs
#: (docs/engines/matmul.md, "Pair fire")
LUT_PAIR_LANE = 9
FF_PAIR_LANE = 19
#: the 2:4 unpacker paths per lane (Yosys, a 256-lane WeightUnpacker of 2 x 512-bit ports with
#: int2, int4 and ternary: 3,604 LUT dense; sparse24 [2, ternary] +850, sparse24 for all three
#: +5,415, the pair slots on top of [2, ternary] +1,252; docs/engines/matmul.md, "Pair fire"): int2
#: and ternary share one path; int8's (a 5-bit-per-weight gearbox) is not measured, taken as int4's x 5/3
LUT_SPARSE24_LANE = {2: 4, 4: 18, 8: 30}
LUT_PAIR_UNPACK_LANE = 5
#: the dense pair fire (``dense_pairs``) on top of the pair fire's datapath, per lane and row: the
#: second activation's register, the operand muxes of the shared shift-and-add, the weight-sum
#: table. Yosys synth_xilinx, a 128-lane int4 (lut) MacArray of one row with pairs: 9,353 LUT /
#: 6,902 FF, with dense_pairs too 10,967 / 6,780; the unpacker's dense pair slots (256 lanes, as
#: above): 5,762 -> 6,137 LUT (docs/engines/matmul.md, "Dense pair fire")
LUT_DENSE_PAIR_LANE = 12.6
LUT_DENSE_PAIR_UNPACK_LANE = 1.5
#: ``weight_prefetch``: the matmul's own reader beside the other engines' one on a weight port (a
#: second burst reader, the AR arbiter, the R routing by RID). Yosys synth_xilinx, a 512-bit AxiPort
#: with a writer: one reader 1,801 LUT / 2,984 FF, with the prefetch reader (4096 words) too
#: 2,203 / 3,469 (docs/engines/matmul.md, "Weight prefetch"). A port only the matmul reads keeps one
#: reader, its FIFO deeper (counted by its memory alone).
LUT_PREFETCH_READER = 402
FF_PREFETCH_READER = 485
#: UltraRAM blocks count as 8 BRAM36 in the budget (``check_budget``: 288 Kb against 36 Kb)
URAM_AS_BRAM36 = 8


#: the parts of an estimate, in the order they are reported
PARTS = ("matmul", "ports", "attention", "attention_head_parallel", "vector", "control")
_RES = ("lut", "ff", "dsp", "bram36")


@dataclass(frozen=True)
class ResourceEstimate:
    """Totals (``lut``, ``ff``, ``dsp``, ``bram36``, ``ports``) and, in ``parts``, the share of each
    part of the design (:data:`PARTS`: ``{part: {"lut", "ff", "dsp", "bram36"}}``; the totals are
    their sums). ``as_dict()`` gives the totals only, as before the parts were added."""

    lut: int
    ff: int
    dsp: int
    bram36: int
    ports: int
    parts: dict = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict:
        return {"lut": self.lut, "ff": self.ff, "dsp": self.dsp, "bram36": self.bram36, "ports": self.ports}

    def parts_dict(self) -> dict:
        """``{part: {"lut", "ff", "dsp", "bram36"}}`` for every part of :data:`PARTS`."""
        return {name: dict(self.parts[name]) for name in PARTS if name in self.parts}


def _dsp(a: int, b: int) -> int:
    """DSP48E2 slices of a signed ``a`` x ``b``-bit product: ``ceil(a/27) * ceil(b/18)`` with the
    wider operand on the 27-bit side (as Yosys's synth_xilinx splits it; calibrated on the engines)."""
    a, b = max(a, b), min(a, b)
    return math.ceil(a / 27) * math.ceil(b / 18)


def _memory(width: int, depth: int) -> tuple[int, int]:
    """``(bram36, lut)`` of a ``width`` x ``depth`` memory: up to 64 entries, or up to 4 Kbit (a
    small table), in LUT RAM/ROM (8 LUTs per 14 bits x 32 entries or 7 bits x 64 entries: RAM32M16,
    RAM64M8), else block RAM."""
    if depth <= 32:
        return 0, math.ceil(width / 14) * 8
    if depth <= 64 or width * depth <= 4096:
        return 0, math.ceil(width / 7) * 8 * math.ceil(depth / 64)
    return _bram_for(width, depth), 0


def _uram_for(width: int, depth: int) -> int:
    """UltraRAM blocks (4096 x 72 bits, cascaded in depth) for a width x depth memory."""
    return math.ceil(width / 72) * math.ceil(depth / 4096)


def prefetch_terms(lay: DesignLayout) -> dict:
    """What ``weight_prefetch`` adds to the ports: per weight port its FIFO of ``weight_prefetch``
    words in URAM (as BRAM36), and on a port another engine reads too, the second reader."""
    cfg, mm = lay.config, lay.mm
    if not mm.weight_prefetch:
        return _zero()
    shared = max((lay.channels(f.kind).stream_readers for f in lay.families if f.kind != "matmul"), default=0)
    two = min(shared, mm.weight_ports)
    uram = mm.weight_ports * _uram_for(cfg.data_width + 1, mm.weight_prefetch)
    return {"lut": two * LUT_PREFETCH_READER, "ff": two * FF_PREFETCH_READER, "dsp": 0,
            "bram36": URAM_AS_BRAM36 * uram}


def _zero() -> dict:
    return {k: 0 for k in _RES}


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
    """First-order LUT/FF/DSP/BRAM count of a design: the matmul datapath, the ports, the attention
    and vector engines and the command processor with the shell glue (``parts``: each one's share)."""
    cfg = lay.config
    mm = cfg.matmul
    w = lay.matmul.widths
    macs = mm.rows * mm.lanes
    groups_per_fire = max(1, mm.lanes // mm.group_size)
    # DSPs: one per 8x8 MAC lane (none for lanes of 4 bits or less: LUT products), group-scale
    # and requant multipliers per row.
    # (the pair fire: a scale multiplier per half group and a second requantizer per row)
    pairs = mm.sparse24_pairs or mm.dense_pairs
    pair = 2 if pairs else 1
    dsp_scale = pair * mm.rows * groups_per_fire * math.ceil(w.group_bits / 27) * math.ceil(mm.scale_bits / 18)
    dsp_requant = pair * mm.rows * math.ceil(w.acc_bits / 27) * math.ceil(w.mult_bits / 18)
    # 2-bit and ternary products are a few LUTs each (sign-select/small multiply), int4 ones a
    # shift-and-add: no DSPs
    small = w.max_wbits <= 2
    lut_lanes = small or mm.int4_products == "lut"
    dsp = (0 if lut_lanes else macs) + dsp_scale + dsp_requant
    # LUTs: adder tree per row (about one LUT per sum bit per input), accumulators,
    # unpacker muxes, and a fixed cost per AXI port and for control.
    lut_tree = mm.rows * mm.lanes * (w.chunk_bits + 2)
    lut_acc = mm.rows * (w.acc_bits + w.group_bits) * 2
    lut_ports = len(lay.ports) * 1500           # the ports' part (the command processor: control_terms)
    lut_small = macs * (9 if small else LUT_MATMUL_INT4_LANE if lut_lanes else 0)
    # on-chip tiles (docs/engines/matmul.md): the column parameters of two weight tiles (mult,
    # shift, bias: LUT RAM), the init adder of the output stage, 64-bit result columns in the FIFO
    geom = lay.matmul
    lut_tiles = 2 * geom.tile_n * 71 // 32 + mm.rows * w.acc_bits + mm.rows * 64 * 16 // 32
    lut = (lut_tree + lut_acc + lut_ports + lut_small + mm.lanes * (w.max_wbits * 2 + LUT_MATMUL_LANE)
           + _trit_unpack_luts(cfg)
           + lut_tiles)
    # two FFs per LUT, but not for the int4 LUT products: they replace a DSP's pipeline registers
    # (Yosys, 256 int4 lanes: 3,300 fewer FFs as LUTs; docs/estimate.md)
    ff = 2 * (lut - (0 if small else lut_small))
    sparse_widths = {2 if f == "ternary" else f for f in mm.sparse24_formats}
    if sparse_widths:
        s24 = mm.lanes * sum(LUT_SPARSE24_LANE[b] for b in sparse_widths)
        lut += s24
        ff += 4 * mm.lanes * len(sparse_widths)
    if pairs:
        # the pair fire's activation select and weight register, the second column's
        # accumulators, output stage and result column; the 2:4 pairs' slot unpacker
        lut += macs * LUT_PAIR_LANE + lut_acc + mm.rows * (w.acc_bits + 64)
        ff += macs * FF_PAIR_LANE + 2 * (lut_acc + mm.rows * (w.acc_bits + 64))
    if mm.sparse24_pairs:
        lut += LUT_PAIR_UNPACK_LANE * mm.lanes
        ff += 4 * mm.lanes
    if mm.dense_pairs:
        # (no FFs more: the second activation's register replaces the wide weight-sum register)
        lut += math.ceil(macs * LUT_DENSE_PAIR_LANE + mm.lanes * LUT_DENSE_PAIR_UNPACK_LANE)
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
    # the AXI logic of every port (1500 LUT) and its reader and writer FIFOs
    lut_ports = len(lay.ports) * 1500
    pf = prefetch_terms(lay)
    ports = {"lut": lut_ports + pf["lut"], "ff": 2 * lut_ports + pf["ff"], "dsp": 0, "bram36": fifos + pf["bram36"]}
    matmul = {"lut": lut - lut_ports, "ff": ff - 2 * lut_ports, "dsp": dsp, "bram36": act + weights + partials}
    hp = attention_head_parallel_terms(lay)
    parts = {"matmul": matmul, "ports": ports, "attention": attention_terms(lay),
             "attention_head_parallel": {k: hp[k] for k in _RES}, "vector": vector_terms(lay),
             "control": control_terms(lay)}
    parts = {name: {k: int(parts[name][k]) for k in _RES} for name in PARTS}
    total = {k: sum(p[k] for p in parts.values()) for k in _RES}
    return ResourceEstimate(lut=total["lut"], ff=total["ff"], dsp=total["dsp"], bram36=total["bram36"],
                            ports=len(lay.ports), parts=parts)


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
    feed_lut = 8 * lanes + 16 * blocks * max(1, mpw // 4)          # unpack + mantissa select
    select_lut = 2 * R * (8 * lanes + 16 * blocks)                 # own or shared word per row, K and V
    addr_lut = 2 * (R - 1) * 64 * 2                                 # two 64-bit adds per extra address
    cmd_ff = 2 * (R - 1) * 64 * (2 + 4)                             # K (depth 2) and V (depth 4) command FIFOs
    # a feed's scale-word buffer holds a few words (LUT RAM, block RAM only if it is deep); its
    # counters and output registers about 170 FFs; the segment FIFOs are LUT RAM (Yosys: SRLs)
    sbuf_bram, sbuf_lut = _memory(W, max(2, scale_depth))
    lut = feeds * (feed_lut + sbuf_lut) + select_lut + addr_lut
    ff = cmd_ff + feeds * 170 + (R - 1) * lanes * 26          # + each row's registered mantissa x value products
    if g.lut_mant_products:          # the extra mantissa x value products are LUTs (attention_terms)
        lut, dsp = lut + (R - 1) * lanes * LUT_MANT_TIMES_V4, 0
    else:
        dsp = (R - 1) * lanes
    return {"lut": lut, "ff": ff, "dsp": dsp, "bram36": feeds * sbuf_bram, "feeds": feeds}


# -- the attention engine's base units ------------------------------------------------------------

def attention_terms(lay: DesignLayout) -> dict:
    """The attention engine of R rows in either layout (docs/engines/attention.md), without what
    ``head_parallel`` adds (:func:`attention_head_parallel_terms`) and without the K/V ports (counted
    with the ports). Per row: ``lanes`` q x k products (8 x 8: one DSP each) and their block adder
    trees, the block x mantissa and score x multiplier products, the log2-domain score, masks, page
    bank and online-softmax state, an ``exp2`` unit; the PV unit's ``lanes`` p x (mantissa x value)
    products with the two rescale products (the accumulator split at bit 15), the ``head_dim`` x
    ``acc_bits`` accumulator ring and its adders; the Q ring and the Q loader's record buffer. Once:
    the K and V feeds of row 0 (scale-word buffer, lane unpacking, mantissa select), the shared
    mantissa x value products, the output stage (``slot`` lanes of ``acc x reciprocal`` in
    one-tile products, their sum, shift, round, saturate), the reciprocal, the sequencer (segment and command logic, its
    FIFOs). Zero without an attention engine."""
    att = lay.config.attention
    if att is None:
        return _zero()
    from .engines.attention import MULT_BITS, P_FRAC, RECIP_X_BITS, Z_BITS, attention_geometry

    g = attention_geometry(lay)
    R, L, I8, hd, W = g.rows, g.lanes, g.slot, g.head_dim, 8 * g.word_bytes
    bl = min(g.group_size, g.slot)
    blocks = L // bl
    acc, lb, sb = g.acc_bits, g.l_bits, g.score_bits
    both = len(set(g.kv_bits)) > 1
    ctx = 21                                                         # CTX_BITS: positions
    qw = g.q_record_bytes // g.word_bytes
    # DSPs
    p_bits, m_bits = P_FRAC + 2, MULT_BITS + 1                       # unsigned operands as signed
    # int4_products 'lut': the products by K/V lanes are LUTs (generators/attention/geometry.py)
    lut_kv, lut_mv = g.lut_products, g.lut_mant_products
    qk = R * L * (0 if lut_kv else _dsp(8, 8)) + R * blocks * _dsp(16 + bl.bit_length() + 1, 17) + R * _dsp(sb, m_bits)
    pv = R * L * (_dsp(26, p_bits) + _dsp(acc - P_FRAC, p_bits) + _dsp(P_FRAC + 1, p_bits))
    pv += R * (_dsp(lb - P_FRAC + 1, p_bits) + _dsp(P_FRAC + 1, p_bits))      # l rescale
    shared = L * (0 if lut_mv else _dsp(17, 8))                     # mantissa x value, one set
    y_bits = RECIP_X_BITS + 2
    out = I8 * (len(g.out_cuts) - 1)                                 # acc x y: one tile per 17-bit piece
    recip = _dsp(RECIP_X_BITS + 1, y_bits) + _dsp(y_bits, 2 * RECIP_X_BITS + 2)
    seq_dsp = 9                                                       # head counts, page x stride, offsets
    dsp = qk + pv + shared + out + recip + seq_dsp
    # BRAM (and LUT RAM): the score bank, the two feeds' scale buffers, the exp2 and reciprocal tables
    scale_depth = -(-(g.mants_per_word - 1 + g.page_tokens * g.groups) // g.mants_per_word)
    # (the score bank: ScoreUnit.BANKS = 4 pages of R scores)
    mems = [_memory(R * (Z_BITS + 1), 4 * g.page_tokens)] + 2 * [_memory(W, max(2, scale_depth))]
    mems += R * [_memory(P_FRAC + 1, 256)] + [_memory(RECIP_X_BITS + 1, 128)]
    bram = sum(b for b, _ in mems)
    lut_mem = sum(x for _, x in mems)
    # LUTs: per row the QK trees (about 18 per product), the PV adders (rescale sum and accumulate,
    # about 2 x acc_bits per lane), the ring's select (one per bit), Q ring, score/softmax logic
    # (the next ring head's select replaced the rescale mux: Yosys, value unit alone, +13 LUT)
    per_row = (18 * L + 40 * blocks + 2 * L * acc + hd * acc + (2 if both else 1) * 8 * hd
               + 4 * sb + 14 * Z_BITS + 6 * ctx + 200)
    feeds = 2 * (8 * L + 16 * blocks * max(1, g.mants_per_word // 4) + 120)
    out_lut = I8 * 6 * (acc + RECIP_X_BITS)
    fixed = 3000 + 4 * 64                                             # sequencer, FIFOs, completion
    lane_products = (R * L * LUT_Q_TIMES_K4 if lut_kv else 0) + (L * LUT_MANT_TIMES_V4 if lut_mv else 0)
    # register slices: the block-table words, the Q-record and block-table commands (96 bits each)
    sl, sf = (a + 2 * b for a, b in zip(_slice(W), _slice(96)))
    lut = R * per_row + feeds + out_lut + fixed + lut_mem + lane_products + sl
    # FFs: the accumulator ring, Q ring and records, the QK pipeline, per-row state; the output pipe
    ff_row = hd * acc + 8 * hd + qw * W + 24 * L + 2 * sb + 16 * Z_BITS + 4 * ctx + 150
    # + the PV unit's update pipeline (generators/attention/value.py): per lane the registered
    # probability x value product and the rescaled ring head; per row two probabilities and l
    ff_row += 2 * L * acc + 2 * (P_FRAC + 1) + lb
    ff = R * ff_row + I8 * 4 * (acc + RECIP_X_BITS) + 2 * (W + 200) + 3000 + L * 26 + sf  # + mantissa x value
    return {"lut": lut, "ff": ff, "dsp": dsp, "bram36": bram}


# -- the vector engine ------------------------------------------------------------------------------

def _slice(width: int) -> tuple[int, int]:
    """``(lut, ff)`` of a register slice (``generators/skid.py``) of ``width`` bits: a 2:1 mux and
    two registers a bit."""
    return width, 2 * width


def _writer(width: int) -> tuple[int, int]:
    """``(lut, ff)`` of the shell's burst writer on a KV port beside the port's reader (its FIFO is
    counted with the ports): Yosys, 64-bit kernel: 311 LUT / 341 FF more than a reader-only port;
    the data registers scale with the width (not measured at other widths)."""
    return 300 + width // 8, 300 + width // 2


#: one more quantizer lane (a 32 x 25 product, the 3-stage rounding shift, the clamp): Yosys
#: synth_xilinx of ChunkQuantizer at 16 and 64 lanes, 6,317 -> 25,258 LUT, 5,667 -> 22,467 FF, 32 -> 128 DSP
_LUT_QUANT_LANE, _FF_QUANT_LANE, _DSP_QUANT_LANE = 395, 350, 2


def vector_terms(lay: DesignLayout, *, writers: bool = True) -> dict:
    """The vector engine (docs/engines/vector.md): ``lanes`` int32 lanes (one port word) through the
    element pipe (two dequantizing products per operand, GELU/SiLU per activation, the combine
    multiply, RoPE), the row sums and squares, the norm-apply pipe and the quantizer; the scalar
    units (rsqrt, quantization parameters, the norm's variance); its memories (two tiles of R rows
    x 2 banks of ``max_dim`` int32, five column tables, RoPE rows, KV constants, group absmax and
    quantization records); and on each KV port (one per port group: ``kv_ports``) the KV append's
    reader/writer pair (the shell's burst writer beside the port's reader, the engine's command and
    word selects; the FIFOs are counted with the ports). ``writers=False``: without the shell's
    writers (the engine alone, as ``estimate_component`` synthesizes it). Zero without a vector
    engine."""
    if lay.config.engine("vector") is None:
        return _zero()
    from .engines.vector import COL_MULT_BITS, RSQRT_FRAC, SCALE_MANT_BITS, vector_geometry

    g = vector_geometry(lay)
    L, R, W = g.lanes, g.rows, 8 * g.word_bytes
    acts = len(g.activations)
    dim_bits = g.max_dim.bit_length()
    nb = 33 + dim_bits + 1                                           # norm numerator D*x - S1
    mant = RSQRT_FRAC + 1
    deq = _dsp(32, SCALE_MANT_BITS + COL_MULT_BITS + 1) + _dsp(SCALE_MANT_BITS + 1, COL_MULT_BITS + 1)
    per_lane = (2 * deq + acts * 1 + _dsp(32, 32) + 2 * _dsp(32, 16)          # dequantize A, B; act; combine; RoPE
                + _dsp(32, 32)                                                  # the row sum of squares
                + _dsp(dim_bits + 1, 32) + _dsp(nb, mant + 1) + _dsp(nb + mant + 1, 32)   # norm apply
                + _dsp(32, 26))                                                 # quantizer
    scalar = 62                         # address products (row x stride, page x head area), rsqrt, qparams, V
    # the store's quantizer has store_words x L lanes (ACT8/QREC quantize that many tile words at
    # once); ``per_lane`` counts one of them, these the others
    wide = (g.store_words - 1) * L
    dsp = L * per_lane + wide * _DSP_QUANT_LANE + scalar
    DW = g.max_dim // L
    if g.has_attention:
        groups = g.max_dim // min(g.kv_group_size, g.head_dim)
        rope_words = -(-g.rope_row_bytes // g.word_bytes)
        consts_words = -(-(g.max_dim // g.head_dim) * 8 // g.word_bytes)
    else:
        groups, rope_words, consts_words = 1, 0, 0
    mems = [_memory(W, DW)] * (2 * 2 * R + 5)                       # tiles A, B (2 banks a row), tables
    mems += [_memory(32, R * groups), _memory(64, R * groups), _memory(W + 1, 16)]
    if g.has_attention:
        mems += [_memory(W, 2 * R * rope_words), _memory(W, consts_words)]
    bram = sum(b for b, _ in mems)
    lut_mem = sum(x for _, x in mems)
    # per lane (calibrated on Yosys at 2, 4 and 8 lanes, linear within 0.1 %): the pipes' shifts,
    # rounding and saturation, the adders that sum the split products' partial products, the row
    # sums; fixed: the issuer, receiver, sweeps, store micro-ops and packer. Per KV port: the
    # engine's word select (one LUT per bit) and the shell's burst writer beside the port's reader.
    kv = g.kv_ports
    wl, wf = _writer(W) if writers else (0, 0)
    sl, sf = _slice(W)                                               # the operand words' register slice
    lut = L * (5300 + 60 * acts) + wide * _LUT_QUANT_LANE + 5800 + lut_mem + kv * (W + wl) + sl
    ff = L * (2150 + 50 * acts) + wide * _FF_QUANT_LANE + 2900 + kv * wf + sf
    return {"lut": lut, "ff": ff, "dsp": dsp, "bram36": bram}


# -- the command processor and the shell glue --------------------------------------------------------

def control_terms(lay: DesignLayout) -> dict:
    """The AXI4-Lite control block, the command processor (descriptor fetch and register, every
    family's checks, one job record per engine) and the kernel's glue (the per-engine selects of each
    shared channel, the performance counters). Present in every design."""
    cfg = lay.config
    desc_bits = 8 * lay.descriptor_bytes
    engines = len(lay.families)
    shared = 0                                   # engine channels the glue selects between, per stream port
    for i in range(sum(1 for p in lay.ports if p.role == "stream")):
        readers = sum(1 for f in lay.families if lay.channels(f.kind).stream_readers > i)
        writers = sum(1 for f in lay.families if lay.channels(f.kind).stream_writers > i)
        shared += max(0, readers - 1) * 100 + max(0, writers - 1) * (cfg.data_width + 100)
    # calibrated on Yosys (benchmarks/budget_calibration.py kernel_vec_hp2: cmdproc + control +
    # glue 3,809 LUT / 3,197 FF with a 272-byte descriptor and three engines; 1.10x here)
    lut = 500 + desc_bits + 300 * engines + shared
    ff = 500 + desc_bits + 64 * (3 + 2 * len(lay.ports))
    return {"lut": lut, "ff": ff, "dsp": 0, "bram36": 0}


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
    exceeded = []
    culprits = []                       # parts with a large share of an exceeded budget
    for name, (need, have) in limits.items():
        allowed = int(have * frac)
        if need > allowed:
            key = _LIMIT_KEYS[name]
            shares = sorted(((p[key], part) for part, p in est.parts.items() if p[key]), reverse=True)
            where = ", ".join(f"{part} {n:,}" for n, part in shares[:3])
            problems.append(f"{name} budget exceeded: needs {need}, {board.name} allows {allowed} "
                            f"({frac:.0%} of {have}), over by {need - allowed} (largest parts: {where})")
            culprits += [part for n, part in shares if n >= need / 4 and part not in culprits]
            exceeded.append(name)
    if problems:
        fields = [_reduce_hint(cfg, part) for part in culprits]
        fields = [f for f in fields if f] or [_reduce_hint(cfg, "matmul")]
        trade = _products_hint(cfg, exceeded)
        raise ConfigError(f"config {cfg.name!r} does not fit board {board.name}:\n  "
                          + "\n  ".join(problems)
                          + "\n  (analytic estimate; reduce " + "; or ".join(fields)
                          + (f"; or set {trade}" if trade else "") + ")")
    return est


def _products_hint(cfg, exceeded: list[str]) -> str | None:
    """The ``int4_products`` switches that move int4 products to the budget that is not exceeded:
    to ``lut`` when DSPs are short, to ``dsp`` when LUTs are (docs/estimate.md, "Products in LUTs")."""
    if ("DSP" in exceeded) == ("LUT" in exceeded):
        return None
    want = "lut" if "DSP" in exceeded else "dsp"
    switches = []
    for i, e in enumerate(cfg.engines):
        if getattr(e, "int4_products", want) == want:
            continue
        eligible = {"matmul": lambda: 8 not in e.weight_bits and any(b == 4 for b in e.weight_bits),
                    "attention": lambda: list(e.kv_bits) == [4]}.get(e.kind, lambda: False)
        if want == "dsp" or eligible():
            switches.append(f"engines.{i}.int4_products: {want}")
    return ", ".join(switches) or None


_LIMIT_KEYS = {"LUT": "lut", "FF": "ff", "DSP": "dsp", "BRAM": "bram36"}


def _reduce_hint(cfg, part: str) -> str | None:
    """The config fields that size ``part`` (None for the fixed control part)."""
    def index(kind):
        return next((i for i, e in enumerate(cfg.engines) if e.kind == kind), None)

    kind = {"attention_head_parallel": "attention"}.get(part, part)
    i = index(kind) if kind in ("matmul", "attention", "vector") else None
    if kind == "matmul" and i is not None:
        return f"engines.{i}.rows, lanes, max_k, tile_m or tile_n"
    if kind == "attention" and i is not None:
        extra = ", head_parallel or kv_ports" if cfg.engines[i].head_parallel else " or kv_bits"
        return f"engines.{i}.rows, head_dim{extra} (or axi.data_width)"
    if kind == "vector" and i is not None:
        return f"engines.{i}.max_dim or activations (or axi.data_width)"
    if part == "ports":
        return "the number of ports (weight_ports, kv_ports) or axi.data_width"
    return None
