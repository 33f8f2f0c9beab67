"""Helpers shared by the vector engine's pipelines: delays and registers, and the arithmetic that
mirrors :mod:`hbmforge.numerics.vector` bit for bit."""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned

from ..nonlinear.rsqrt import highest_set_bit

__all__ = ["delayed", "registered", "valid_chain", "I32_MIN", "I32_MAX", "sat32", "clamp", "rsr",
           "RSR_STAGES", "rsr_var_staged", "bit_length", "lanes_of", "word_of", "as_signed_field"]

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def delayed(m: Module, v, n: int, *, name: str) -> Value:
    """``v`` through ``n`` registers (``v`` itself for ``n == 0``); the registers keep ``v``'s
    shape, an enum or a layout included."""
    shape = v.shape() if hasattr(v, "shape") else Value.cast(v).shape()
    out = v
    for t in range(n):
        reg = Signal(shape, name=f"{name}_d{t}")
        m.d.sync += reg.eq(out)
        out = reg
    return out


def registered(m: Module, shape, value, *, name: str) -> Signal:
    """A register of ``shape`` loaded with ``value`` every cycle."""
    out = Signal(shape, name=name)
    m.d.sync += out.eq(value)
    return out


def valid_chain(m: Module, valid, n: int) -> list[Value]:
    """``valid`` and its ``n`` delayed copies (index t: ``t`` cycles later): a fixed-latency
    pipeline's valid bits."""
    chain = [Value.cast(valid)]
    for t in range(n):
        chain.append(registered(m, 1, chain[-1], name=f"valid{t + 1}"))
    return chain


def clamp(v, lo: int, hi: int) -> Value:
    return Mux(v > hi, hi, Mux(v < lo, lo, v))


def sat32(v) -> Value:
    return clamp(v, I32_MIN, I32_MAX)


def rsr(v, s: int) -> Value:
    """Round-half-up arithmetic right shift by a constant ``s`` (``v`` unchanged for ``s == 0``)."""
    return (v + (1 << (s - 1))) >> s if s > 0 else v


#: cycles of :func:`rsr_var_staged`
RSR_STAGES = 3


def shift_stages(m: Module, v, s_m1, s_zero, *, name: str) -> tuple[Signal, Signal]:
    """The two shift stages of :func:`rsr_var_staged`: ``v >> (s - 1)`` (``v`` when ``s == 0``) by
    the multiple of 8 of ``s - 1``, then by the rest. Returns ``(shifted, s == 0)``, registers
    two cycles after the inputs."""
    v, s_m1, s_zero = Value.cast(v), Value.cast(s_m1), Value.cast(s_zero)
    shape = v.shape()
    coarse = Signal(shape, name=f"{name}_c")
    fine_s = Signal(3, name=f"{name}_fs")
    z1, z2 = Signal(name=f"{name}_z1"), Signal(name=f"{name}_z2")
    m.d.sync += [coarse.eq(Mux(s_zero, v, v >> (s_m1[3:] << 3))), fine_s.eq(s_m1[:3]), z1.eq(s_zero)]
    fine = Signal(shape, name=f"{name}_f")
    m.d.sync += [fine.eq(Mux(z1, coarse, coarse >> fine_s)), z2.eq(z1)]
    return fine, z2


def rsr_var_staged(m: Module, v, s_m1, s_zero, *, name: str) -> Signal:
    """Round-half-up arithmetic right shift by a variable ``s >= 0`` (``((v >> (s-1)) + 1) >> 1``,
    ``v`` for ``s == 0``) over :data:`RSR_STAGES` registered stages: shift by the multiple of 8 of
    ``s - 1``, then by the rest, then round. ``s_m1`` (``s - 1``, at least 3 bits; any value when
    ``s == 0``) and ``s_zero`` (``s == 0``) come with ``v``, ideally from registers: the shift
    amount then needs no subtraction in the first stage."""
    v = Value.cast(v)
    shape = v.shape()
    fine, z2 = shift_stages(m, v, s_m1, s_zero, name=name)
    out = Signal(signed(len(v) + 1) if shape.signed else unsigned(len(v) + 1), name=name)
    m.d.sync += out.eq(Mux(z2, fine, (fine + 1) >> 1))
    return out


def bit_length(m: Module, v, *, name: str) -> Signal:
    """Position of the highest set bit + 1 (0 for 0): the priority encoder as a tree
    (:func:`~..nonlinear.rsqrt.highest_set_bit`)."""
    v = Value.cast(v)
    out = Signal(range(len(v) + 1), name=name)
    any_set, top = highest_set_bit(v)
    m.d.comb += out.eq(Mux(any_set, top + 1, 0))
    return out


def as_signed_field(v) -> Value:
    """An unsigned bit field as a non-negative signed value (one sign bit added)."""
    return Cat(Value.cast(v), Const(0, 1)).as_signed()


def lanes_of(word, lanes: int, width: int = 32, *, signed_: bool = True) -> list[Value]:
    """The ``lanes`` elements of a word (lane 0 in the least significant bits)."""
    word = Value.cast(word)
    out = [word[width * i:width * (i + 1)] for i in range(lanes)]
    return [v.as_signed() for v in out] if signed_ else out


def word_of(values, width: int = 32) -> Value:
    """Concatenate lane values (lane 0 lowest), each truncated to ``width`` bits."""
    return Cat(*(Value.cast(v)[:width] for v in values))
