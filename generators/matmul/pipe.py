"""Small pipeline helpers shared by the engine's stages (registered, never stalled)."""
from __future__ import annotations

from amaranth.hdl import Const, Module, Signal, Value

__all__ = ["adder_tree", "delay", "tiled_product"]


def delay(m: Module, value, cycles: int, *, name: str, reset_less: bool = False):
    """``value`` registered ``cycles`` times (a shift register; 0 returns ``value``)."""
    for i in range(cycles):
        shape = value.shape()
        r = Signal(shape, name=f"{name}_d{i + 1}", reset_less=reset_less)
        m.d.sync += r.eq(value)
        value = r
    return value


def adder_tree(m: Module, values: list, *, levels_per_stage: int, name: str) -> tuple:
    """Sum ``values`` pairwise, registering every ``levels_per_stage`` levels and the root.

    Returns ``(root, register_stages)``; each level widens by one bit so the sum
    is exact. ``len(values)`` must be a power of two; one value is returned as is.
    """
    n = len(values)
    if n == 0 or n & (n - 1):
        raise ValueError(f"adder_tree needs a power-of-two number of inputs, got {n}")
    stages = level = 0
    while len(values) > 1:
        values = [values[i] + values[i + 1] for i in range(0, len(values), 2)]
        level += 1
        if level % levels_per_stage == 0 or len(values) == 1:
            regs = []
            for i, v in enumerate(values):
                r = Signal(v.shape(), name=f"{name}_l{level}_{i}", reset_less=True)
                m.d.sync += r.eq(v)
                regs.append(r)
            values = regs
            stages += 1
    return values[0], stages


def tiled_product(m: Module, a, b, *, name: str, a_tile: int = 17, b_tile: int = 24) -> tuple:
    """``a * b`` (both unsigned) as registered ``a_tile x b_tile`` tile products (one DSP48E2 each)
    summed by an :func:`adder_tree` (two levels per stage). Returns ``(product, latency)``."""
    a, b = Value.cast(a), Value.cast(b)
    # tiles of even widths (a 32-bit operand as 16 + 16, not 24 + 8): Yosys builds a narrow tile's
    # product from LUTs, several levels deep, instead of a DSP
    a_w = -(-len(a) // -(-len(a) // a_tile))
    b_w = -(-len(b) // -(-len(b) // b_tile))
    tiles = []
    for i in range(0, len(a), a_w):
        for j in range(0, len(b), b_w):
            t = Signal(len(a) + len(b), name=f"{name}_t{i}_{j}", reset_less=True)
            m.d.sync += t.eq((a[i:i + a_w] * b[j:j + b_w]) << (i + j))
            tiles.append(t)
    tiles += [Const(0, 1)] * ((1 << (len(tiles) - 1).bit_length()) - len(tiles))
    total, stages = adder_tree(m, tiles, levels_per_stage=2, name=f"{name}_sum")
    return total, 1 + stages


def opaque_const(m: Module, value: int, width: int, *, name: str) -> Signal:
    """A constant the netlist cannot see through: a register that holds its init value.

    Amaranth lowers ``x & K`` and ``x ^ K`` with a constant ``K`` to per-bit
    slices and inverters, which a simulator such as Verilator then evaluates
    bit by bit; against this register they stay word-wide operations.
    Synthesis removes the hold register (its input is its own output).
    """
    k = Signal(width, init=value, reset_less=True, name=name)
    m.d.sync += k.eq(k)
    return k
