"""Products by a narrow signed operand, written as shift-and-add so that they map to LUTs.

A product whose narrow operand has at most :data:`LUT_PRODUCT_MAX_BITS` bits (int4 weights, KV4
keys and values) costs a few dozen LUTs as adds of shifted, gated copies of the wide operand,
but a whole DSP slice when written as ``*`` (Yosys maps every ``$mul`` to DSPs). On the largest
U280 design those products are thousands of DSPs the board does not have; with
``int4_products: lut`` (config) the engines build them here instead (docs/estimate.md,
"Products in LUTs"). The sum is the same integer, bit for bit.
"""
from __future__ import annotations

from amaranth.hdl import Mux

__all__ = ["LUT_PRODUCT_MAX_BITS", "lut_product"]

#: widest narrow operand multiplied in LUTs (wider ones keep ``*`` and a DSP)
LUT_PRODUCT_MAX_BITS = 4


def lut_product(x, w, w_bits: int):
    """``x * w`` where ``w``'s low ``w_bits`` bits are a two's-complement number (upper bits ignored).

    ``x`` may be signed or unsigned. The terms ``w[i] * 2^i * x`` (the top one subtracted) are
    summed as a balanced tree of adds, no multiplier.
    """
    if not 1 <= w_bits <= LUT_PRODUCT_MAX_BITS:
        raise ValueError(f"w_bits must be 1 .. {LUT_PRODUCT_MAX_BITS}, got {w_bits!r}")
    top = w_bits - 1
    # (term, sign) pairs; the top bit's term is the only negative one and stays last in the list
    items = [(Mux(w[i], x << i, 0), 1) for i in range(top)] + [(Mux(w[top], x << top, 0), -1)]
    while len(items) > 1:
        nxt = []
        for i in range(0, len(items), 2):
            if i + 1 == len(items):
                nxt.append(items[i])
            else:
                (a, _), (b, sign_b) = items[i], items[i + 1]
                nxt.append((a + b if sign_b > 0 else a - b, 1))
        items = nxt
    value, sign = items[0]
    return value if sign > 0 else -value
