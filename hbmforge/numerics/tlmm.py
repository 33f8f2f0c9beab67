"""Golden model of the ternary table-lookup matmul (TLMM) architecture, bit-exact with the RTL.

Activations are taken ``g`` at a time (``g = tlmm_group``, 2..5). For one group
``x_0 .. x_{g-1}`` and ternary weights ``t_0 .. t_{g-1}`` in {-1, 0, +1}, the
weights' balanced-ternary value

    u = sum_i t_i * 3^i          in [-(3^g - 1) / 2, (3^g - 1) / 2]

names the vector (a bijection), and negating every trit negates ``u``. So one
*half table* of ``E = (3^g + 1) / 2`` entries, ``table[e] = sum_i d_i(e) * x_i``
with ``d(e)`` the balanced-ternary digits of ``e`` (``e = 0 .. E - 1``), holds
every signed partial sum of the group: ``sum_i t_i x_i = sign(u) * table[|u|]``.

In the unsigned form of the index, ``v = sum_i (t_i + 1) 3^i = u + c`` with
``c = (3^g - 1) / 2`` (the all-zero vector): ``v >= c`` reads entry ``v - c``
with sign +, ``v < c`` reads entry ``(3^g - 1 - v) - c`` with sign - (negation
maps ``v`` to ``3^g - 1 - v``).

Engine organisation (one fire = ``L`` lanes of one output column, ``R`` rows):
the lanes are cut into *spans* of ``min(L, G)`` lanes (one scale group each),
and each span into ``ceil(span / g)`` *banks* of ``g`` lanes, the last one
partial (``r = span mod g`` lanes) when ``g`` does not divide the span. A
partial bank's missing lanes have ``x = 0`` and ``t = 0``, so ``|u| <
(3^r + 1) / 2`` and its table only needs that many entries. Every bank holds,
for each ``L``-lane line of the activation row block, its entries for every
row. Tables are built once per row block (``E`` cycles per line, one entry of
every bank of every row per cycle) and read by every output column: one entry
per bank per row per fire, a conditional negate and a ``ceil(span / g)``-input
adder tree per span.

All arithmetic is integer and exact, so :func:`tlmm_accumulate` equals
:func:`hbmforge.numerics.matmul.matmul_accumulate` for ternary weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .matmul import _check_operands

__all__ = [
    "MIN_GROUP", "MAX_GROUP", "table_entries", "entry_bits", "index_of", "trits_of", "unsigned_index",
    "sign_index_from_unsigned", "index_patterns", "build_table", "bank_layout", "TlmmShape",
    "build_tables", "lookup_sums", "tlmm_accumulate", "tlmm_dot", "build_cycles", "fire_cycles",
    "cycles_per_output",
]

MIN_GROUP, MAX_GROUP = 2, 5
ACT_BITS = 8


def _check_g(g: int) -> int:
    if not isinstance(g, int) or isinstance(g, bool) or not MIN_GROUP <= g <= MAX_GROUP:
        raise ValueError(f"tlmm group g must be an int in [{MIN_GROUP}, {MAX_GROUP}], got {g!r}")
    return g


def table_entries(g: int) -> int:
    """Entries of the half table of a ``g``-lane group: ``(3^g + 1) / 2`` (5, 14, 41, 122 for g = 2..5).

    ``g`` may also be 1 (a partial bank of one lane: 2 entries, ``0`` and ``x_0``)."""
    if not isinstance(g, int) or g < 1:
        raise ValueError(f"group width must be a positive int, got {g!r}")
    return (3 ** g + 1) // 2


def entry_bits(g: int, act_bits: int = ACT_BITS) -> int:
    """Signed bits of a table entry.

    An entry's leading nonzero trit is +1, so with ``x`` in ``[-2^(a-1), 2^(a-1) - 1]`` the
    entries lie in ``[-2^(a-1) g, 2^(a-1) g - 1]``: ``a + ceil(log2 g)`` bits (9, 10, 10, 11
    for g = 2..5 and int8 activations)."""
    if not isinstance(g, int) or g < 1:
        raise ValueError(f"group width must be a positive int, got {g!r}")
    return act_bits + (g - 1).bit_length()


def index_of(trits) -> tuple[bool, int]:
    """Ternary weights ``t_0 .. t_{g-1}`` -> ``(negate, entry)``: ``sum t_i x_i = (-1)^negate * table[entry]``."""
    u = 0
    for i, t in enumerate(trits):
        t = int(t)
        if t not in (-1, 0, 1):
            raise ValueError(f"trits must be -1, 0 or +1, got {t}")
        u += t * 3 ** i
    return u < 0, abs(u)


def trits_of(entry: int, g: int) -> tuple[int, ...]:
    """The balanced-ternary digits (``g`` of them, least significant first) of ``entry`` >= 0."""
    if not 0 <= entry < table_entries(g):
        raise ValueError(f"entry must be in [0, {table_entries(g)}), got {entry}")
    digits = []
    v = entry
    for _ in range(g):
        d = v % 3
        if d == 2:
            d = -1
        digits.append(d)
        v = (v - d) // 3
    assert v == 0
    return tuple(digits)


def unsigned_index(trits) -> int:
    """``v = sum (t_i + 1) 3^i`` in ``[0, 3^g)`` (the all-zero vector is ``c = (3^g - 1) / 2``)."""
    return sum((int(t) + 1) * 3 ** i for i, t in enumerate(trits))


def sign_index_from_unsigned(v: int, g: int) -> tuple[bool, int]:
    """The unsigned form of the mapping: ``v >= c`` -> ``(False, v - c)``, else ``(True, 3^g - 1 - v - c)``."""
    full = 3 ** g
    if not 0 <= v < full:
        raise ValueError(f"v must be in [0, {full}), got {v}")
    c = (full - 1) // 2
    return (False, v - c) if v >= c else (True, full - 1 - v - c)


@lru_cache(maxsize=None)
def index_patterns(g: int) -> np.ndarray:
    """``[E, g]`` int8: the trit vector of each half-table entry (the build's constant patterns)."""
    return np.array([trits_of(e, g) for e in range(table_entries(g))], dtype=np.int8).reshape(-1, g)


def build_table(x_group, g: int | None = None) -> np.ndarray:
    """The half table (int64, ``E`` entries) of one group of activations (fewer than ``g`` are zero padded)."""
    x_group = np.asarray(x_group, dtype=np.int64).reshape(-1)
    g = len(x_group) if g is None else g
    if len(x_group) > g:
        raise ValueError(f"a group holds at most g = {g} activations, got {len(x_group)}")
    xg = np.zeros(g, dtype=np.int64)
    xg[:len(x_group)] = x_group
    return index_patterns(g).astype(np.int64) @ xg


def bank_layout(lanes: int, group_size: int, g: int) -> list[tuple[int, int]]:
    """``(first lane, width)`` of every bank of one fire, in lane order.

    The ``L`` lanes split into spans of ``min(L, G)`` (one scale group each), each span into
    ``ceil(span / g)`` banks; the last bank of a span has ``span mod g`` lanes when that is
    not zero."""
    _check_g(g)
    span = min(lanes, group_size)
    banks = []
    for s0 in range(0, lanes, span):
        for b0 in range(0, span, g):
            banks.append((s0 + b0, min(g, span - b0)))
    return banks


@dataclass(frozen=True)
class TlmmShape:
    """Sizes of the TLMM tables for ``R`` rows, ``L`` lanes, group size ``G`` and ``max_k``."""

    rows: int
    lanes: int
    group_size: int
    g: int
    max_k: int

    def __post_init__(self):
        _check_g(self.g)
        for name in ("rows", "lanes", "group_size", "max_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.max_k % self.lanes:
            raise ValueError(f"max_k {self.max_k} must be a multiple of lanes {self.lanes}")

    @property
    def span(self) -> int:
        """Lanes per scale group within one fire: ``min(L, G)``."""
        return min(self.lanes, self.group_size)

    @property
    def banks(self) -> list[tuple[int, int]]:
        return bank_layout(self.lanes, self.group_size, self.g)

    @property
    def banks_per_fire(self) -> int:
        """Table banks, i.e. lookups per row per fire: ``(L / span) * ceil(span / g)``."""
        return len(self.banks)

    @property
    def entries(self) -> int:
        """Entries of a full bank's table per line: ``(3^g + 1) / 2``."""
        return table_entries(self.g)

    @property
    def bank_entries(self) -> list[int]:
        """Entries per line of each bank (a partial bank of ``r`` lanes needs ``(3^r + 1) / 2``)."""
        return [table_entries(w) for _, w in self.banks]

    @property
    def entry_bits(self) -> int:
        return entry_bits(self.g)

    @property
    def lines(self) -> int:
        """``L``-lane lines per row at ``max_k``."""
        return self.max_k // self.lanes

    def bank_depth(self, bank: int) -> int:
        """Words of bank ``bank``'s memory: ``lines * entries`` (each word holds all ``R`` rows)."""
        return self.lines * self.bank_entries[bank]

    @property
    def word_bits(self) -> int:
        """Bits of one bank word: ``R * entry_bits``."""
        return self.rows * self.entry_bits

    def table_bits(self, k: int | None = None) -> int:
        """Table storage for a row block of ``k`` (default ``max_k``) activations per row, in bits."""
        k = self.max_k if k is None else k
        if k % self.lanes:
            raise ValueError(f"k {k} must be a multiple of lanes {self.lanes}")
        return (k // self.lanes) * sum(self.bank_entries) * self.word_bits

    @property
    def activation_bits(self) -> int:
        """The same activations as int8: ``R * max_k * 8`` (for comparison)."""
        return self.rows * self.max_k * ACT_BITS


def build_tables(x, shape: TlmmShape) -> list[np.ndarray]:
    """Tables of one row block ``x`` [rows <= R, K]: per bank an int64 array ``[K / L, entries, rows]``.

    Rows beyond ``x``'s are absent (the hardware leaves them stale; the output stage drops them)."""
    x = np.asarray(x, dtype=np.int64)
    rows, k = x.shape
    if k % shape.lanes:
        raise ValueError(f"K = {k} must be a multiple of lanes {shape.lanes}")
    lines = k // shape.lanes
    xl = x.reshape(rows, lines, shape.lanes)
    tables = []
    for (l0, width), ent in zip(shape.banks, shape.bank_entries):
        pat = index_patterns(width).astype(np.int64)                # [ent, width]
        assert pat.shape[0] == ent
        # [rows, lines, width] x [ent, width] -> [lines, ent, rows]
        tables.append(np.einsum("rlw,ew->ler", xl[:, :, l0:l0 + width], pat))
    return tables


def _weight_indices(w, shape: TlmmShape):
    """Ternary ``w`` [N, K] -> per bank ``(negate, entry)`` arrays ``[N, K / L]``."""
    w = np.asarray(w, dtype=np.int64)
    if np.any((w < -1) | (w > 1)):
        raise ValueError("TLMM weights must be ternary (-1, 0, +1)")
    n, k = w.shape
    wl = w.reshape(n, k // shape.lanes, shape.lanes)
    out = []
    for l0, width in shape.banks:
        u = np.zeros((n, k // shape.lanes), dtype=np.int64)
        for i in range(width):
            u += wl[:, :, l0 + i] * 3 ** i
        out.append((u < 0, np.abs(u)))
    return out


def lookup_sums(x, w, shape: TlmmShape) -> np.ndarray:
    """What the TLMM array emits: ``[rows, N, K / L, L / span]`` exact span sums, by table lookup only."""
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"need x [M, K] and w [N, K] with equal K, got {x.shape} and {w.shape}")
    tables = build_tables(x, shape)
    idx = _weight_indices(w, shape)
    rows = x.shape[0]
    n, k = w.shape
    lines = k // shape.lanes
    spans = shape.lanes // shape.span
    sums = np.zeros((rows, n, lines, spans), dtype=np.int64)
    line = np.arange(lines)[None, :]
    for (l0, _), table, (neg, entry) in zip(shape.banks, tables, idx):
        got = table[line, entry]                                  # [N, lines, rows]
        got = np.where(neg[:, :, None], -got, got)
        sums[:, :, :, l0 // shape.span] += got.transpose(2, 0, 1)
    return sums


def tlmm_accumulate(x, w, s, group_size: int, *, lanes: int, g: int, rows: int | None = None) -> np.ndarray:
    """The engine's accumulator ``acc[m, n]`` computed the TLMM way (equal to ``matmul_accumulate``).

    ``x`` is processed in row blocks of ``rows`` (default all of them), each with its own tables."""
    x, w, s = _check_operands(x, w, s, group_size)
    m, k = x.shape
    n = w.shape[0]
    if k % lanes:
        raise ValueError(f"K = {k} must be a multiple of lanes {lanes}")
    rows = m if rows is None else rows
    shape = TlmmShape(rows=rows, lanes=lanes, group_size=group_size, g=g, max_k=k)
    span = shape.span
    acc = np.zeros((m, n), dtype=object)
    for b0 in range(0, m, rows):
        sums = lookup_sums(x[b0:b0 + rows], w, shape)             # [r, N, lines, spans]
        r = sums.shape[0]
        # scale group of (line, span j): ((line * L) + j * span) // G
        parts = sums.reshape(r, n, -1)                            # consecutive span groups along K
        if span < group_size:
            parts = parts.reshape(r, n, k // group_size, group_size // span).sum(axis=3)
        acc[b0:b0 + r] = np.einsum("rng,ng->rn", parts.astype(object), s.astype(object))
    return acc


def tlmm_dot(x, w, g: int) -> np.ndarray:
    """``x @ w.T`` for ternary ``w`` by table lookup alone (one scale group spanning all of K)."""
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    k = x.shape[1]
    shape = TlmmShape(rows=x.shape[0], lanes=k, group_size=k, g=g, max_k=k)
    return lookup_sums(x, w, shape)[:, :, 0, 0]


def build_cycles(k: int, lanes: int, g: int, *, latency: int = 0) -> int:
    """Cycles to build one row block's tables: ``(K / L) * E`` (plus the build pipeline ``latency``)."""
    _check_g(g)
    return (k // lanes) * table_entries(g) + latency


def fire_cycles(n: int, k: int, lanes: int) -> int:
    """Fires for one row block: ``N * K / L`` (one column chunk per cycle, as the MAC array)."""
    return n * (k // lanes)


def cycles_per_output(n: int, k: int, lanes: int, g: int) -> float:
    """Array cycles per output column of a row block, build amortized: ``(K / L) * (1 + E / N)``."""
    return (build_cycles(k, lanes, g) + fire_cycles(n, k, lanes)) / n
