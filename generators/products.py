"""Wide products over registered stages, for units shared by several engine families (the
vector engine's variance, the reciprocal of the attention and vector engines)."""
from __future__ import annotations

from amaranth.hdl import Module, Signal, Value, signed, unsigned

__all__ = ["pipelined_product", "pipelined_sum", "product_latency", "carry_save_sum"]


def _pieces(v: Value, size: int) -> list[tuple[int, Value]]:
    """``v`` as ``(offset, piece)`` pairs of ``size`` bits; the top piece is signed if ``v`` is."""
    out = []
    for i in range(0, len(v), size):
        piece = v[i:i + size]
        out.append((i, piece.as_signed() if v.shape().signed and i + size >= len(v) else piece))
    return out


def product_latency(a_bits: int, b_bits: int, *, a_chunk: int = 17, b_chunk: int = 26) -> int:
    """Cycles of :func:`pipelined_product` for operands of these widths."""
    terms = -(-a_bits // a_chunk) * -(-b_bits // b_chunk)
    return 1 + (terms - 1).bit_length()


def pipelined_product(m: Module, a, b, *, name: str, a_chunk: int = 17, b_chunk: int = 26) -> tuple[Signal, int]:
    """``a * b`` over registered stages: ``(product, latency in cycles)``; signed if either is.

    Every partial product is at most ``a_chunk x b_chunk`` bits (one DSP48E2, 27 x 18 signed:
    low pieces are unsigned, the top piece of a signed operand signed) and registered; the
    shifted partial products are then summed two at a time, each level registered. For wide
    operands whose result may take several cycles (a wide multiply in one cycle is a cascade of
    DSPs and carry chains)."""
    a, b = Value.cast(a), Value.cast(b)
    width = len(a) + len(b)
    is_signed = a.shape().signed or b.shape().signed
    terms = []
    for i, pa in _pieces(a, a_chunk):
        for k, pb in _pieces(b, b_chunk):
            bits = len(pa) + len(pb)
            shape = signed(bits + 1) if pa.shape().signed or pb.shape().signed else unsigned(bits)
            pp = Signal(shape, name=f"{name}_pp{i}_{k}")
            m.d.sync += pp.eq(pa * pb)
            terms.append((pp, i + k))
    latency = 1
    level = 0
    while len(terms) > 1:
        nxt = []
        for t in range(0, len(terms), 2):
            pair = terms[t:t + 2]
            low = min(sh for _, sh in pair)
            # a partial sum of signed terms is bounded by the sum of their magnitudes: 2 bits more
            acc = Signal(signed(width - low + 2) if is_signed else unsigned(width - low),
                         name=f"{name}_s{level}_{t // 2}")
            m.d.sync += acc.eq(sum(v << (sh - low) for v, sh in pair))
            nxt.append((acc, low))
        terms, level, latency = nxt, level + 1, latency + 1
    (v, sh), = terms
    assert latency == product_latency(len(a), len(b), a_chunk=a_chunk, b_chunk=b_chunk)
    out = Signal(signed(width) if is_signed else unsigned(width), name=name)
    m.d.comb += out.eq(v << sh)
    return out, latency


def pipelined_sum(m: Module, values, *, name: str) -> tuple[Value, int]:
    """The exact sum of ``values`` as a tree of registered two-input adds: ``(sum, latency)``,
    ``ceil(log2(len(values)))`` cycles."""
    terms = [Value.cast(v) for v in values]
    latency = 0
    while len(terms) > 1:
        nxt = []
        for t in range(0, len(terms), 2):
            total = terms[t] + terms[t + 1] if t + 1 < len(terms) else terms[t]
            acc = Signal(total.shape(), name=f"{name}_s{latency}_{t // 2}")
            m.d.sync += acc.eq(total)
            nxt.append(acc)
        terms, latency = nxt, latency + 1
    return terms[0], latency


def carry_save_sum(m: Module, values, n: int, *, name: str) -> Value:
    """The sum of ``values`` modulo ``2^n`` (each sign-extended or truncated to ``n`` bits) as
    layers of 3:2 carry-save adders (one LUT per bit, which the final adder's LUTs can absorb)
    and one carry chain, instead of a chain per operand."""
    terms = []
    for i, v in enumerate(values):
        t = Signal(n, name=f"{name}_cs{i}")
        m.d.comb += t.eq(v)
        terms.append(t)
    while len(terms) > 2:
        a, b, c = terms[:3]
        terms = terms[3:] + [(a ^ b ^ c)[:n], ((a & b | a & c | b & c) << 1)[:n]]
    return (terms[0] + terms[1])[:n] if len(terms) == 2 else terms[0]
