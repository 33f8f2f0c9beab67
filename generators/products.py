"""Wide products over registered stages, for units shared by several engine families (the
vector engine's variance, the reciprocal of the attention and vector engines)."""
from __future__ import annotations

from amaranth.hdl import Module, Signal, Value

__all__ = ["pipelined_product"]


def pipelined_product(m: Module, a, b, *, name: str, a_chunk: int = 17, b_chunk: int = 26) -> tuple[Signal, int]:
    """``a * b`` of unsigned values over registered stages: ``(product, latency in cycles)``.

    Every partial product is ``a_chunk x b_chunk`` bits (one DSP48E2, 27 x 18 signed) and
    registered; the shifted partial products are then summed two at a time, each level
    registered. For wide operands whose result may take several cycles (a wide multiply in
    one cycle is a cascade of DSPs and carry chains)."""
    a, b = Value.cast(a), Value.cast(b)
    width = len(a) + len(b)
    terms = []
    for i in range(0, len(a), a_chunk):
        for k in range(0, len(b), b_chunk):
            pp = Signal(min(a_chunk, len(a) - i) + min(b_chunk, len(b) - k), name=f"{name}_pp{i}_{k}")
            m.d.sync += pp.eq(a[i:i + a_chunk] * b[k:k + b_chunk])
            terms.append((pp, i + k))
    latency = 1
    level = 0
    while len(terms) > 1:
        nxt = []
        for t in range(0, len(terms), 2):
            pair = terms[t:t + 2]
            low = min(sh for _, sh in pair)
            acc = Signal(width - low, name=f"{name}_s{level}_{t // 2}")
            m.d.sync += acc.eq(sum(v << (sh - low) for v, sh in pair))
            nxt.append((acc, low))
        terms, level, latency = nxt, level + 1, latency + 1
    (v, sh), = terms
    out = Signal(width, name=name)
    m.d.comb += out.eq(v << sh)
    return out, latency
