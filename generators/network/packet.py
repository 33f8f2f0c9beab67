"""The 128-bit packet header in RTL: its record layout, its check and the header rules.

Every field, width and rule comes from :mod:`hbmforge.engines.network`, so the switch, the
endpoint and the golden models read the same header the same way.
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Cat, Const, Signal, Value
from amaranth.lib import data

from hbmforge.engines.network import HEADER_BITS, HEADER_CHECK_SEED, HEADER_FIELDS

from ..engine import RtlOps

__all__ = ["HEADER_LAYOUT", "header_check", "header_fields", "rule_fails", "make_header"]

#: the header as an Amaranth record (fields at their bit positions, low bit first)
HEADER_LAYOUT = data.StructLayout({name: width for name, (_, width) in
                                   sorted(HEADER_FIELDS.items(), key=lambda kv: kv[1][0])})
assert HEADER_LAYOUT.size == HEADER_BITS
assert all(HEADER_LAYOUT[name].offset == lsb for name, (lsb, _) in HEADER_FIELDS.items())


def header_check(value) -> Value:
    """The check of a 128-bit header value: XOR of its seven low 16-bit lanes and the seed."""
    value = Value.cast(value)
    acc = Const(HEADER_CHECK_SEED, 16)
    for i in range(7):
        acc = acc ^ value[16 * i:16 * i + 16]
    return acc


def header_fields(hdr, **extra) -> dict:
    """The ``fields`` mapping of the header rules for a header record (``calc``: its computed check)."""
    view = hdr if isinstance(hdr, data.View) else data.View(HEADER_LAYOUT, hdr)
    out = {name: view[name] for name in HEADER_FIELDS}
    out["calc"] = header_check(Value.cast(view))
    out.update(extra)
    return out


def rule_fails(rules, fields) -> Value:
    """1 when any of the header rules fails (the packet is dropped)."""
    return Cat(*(RtlOps._bit(fails(fields, RtlOps)) for _, fails in rules)).any()


def make_header(m, name: str = "hdr", **fields) -> data.View:
    """A combinational header record with ``fields`` set and its check computed."""
    sig = Signal(HEADER_LAYOUT, name=name)
    body = Signal(HEADER_LAYOUT, name=f"{name}_body")
    for key, value in fields.items():
        m.d.comb += body[key].eq(value)
    m.d.comb += [Value.cast(sig).eq(Value.cast(body)), sig.check.eq(header_check(Value.cast(body)))]
    return sig
