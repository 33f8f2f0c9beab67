"""A paged int8/int4 KV cache in device memory, owned and allocated by the host.

Layout (docs/engines/attention.md, :class:`hbmforge.engines.attention.AttentionGeometry`): the
K pool is one buffer on port ``w0``, the V pool one buffer on port ``w<kv_ports-1>`` (both on
``w0`` when ``kv_ports`` is 1); each holds ``pages`` physical pages of
``page_bytes(kv_bits, kv_heads)`` bytes. A sequence owns a list of physical pages (its block
table: a u32 per logical page, in a data-port buffer the ATTENTION descriptor points at).

``layout="head_parallel"`` (an engine with ``head_parallel: true``, MHA decode): the heads are
split into ``rows`` port groups of ``kv_heads / rows`` consecutive heads; group r has its own K
pool on ``w<2r>`` and V pool on ``w<2r+1>`` (ordinary pools of ``kv_heads / rows`` heads, the
same physical page numbers, one block table), and a pool table in a data-port buffer lists them
(:attr:`KVCache.k_pool` is that table; the descriptor's ``kv_layout`` is 1, ``v_pool`` 0).

Allocation: the host keeps the free-page list. A sequence takes pages from it (lowest
physical page first) only when an append crosses into a new logical page, and
:meth:`KVSequence.free` returns them. A page belongs to one sequence at a time and every write
of an append goes to the appending sequence's own pages, so sequences sharing a pool never
see each other's tokens.

Quantization (quantize-on-append, :func:`hbmforge.numerics.attention.quantize_kv`): each new
token is quantized per (token, KV head, group of ``kv_group_size``) with a group scale
``mantissa * head_scale[h]`` (u16 mantissa on the device, float head scale on the host). The
per-KV-head scales are fixed once:

* ``k_scale``/``v_scale`` give them directly (float or one per KV head), or
* ``k_range``/``v_range`` give the calibration range (the largest |value| expected in a group;
  ``head_scale = kv_head_scale(range)``: a group at the range gets mantissa 2**15), or
* by default a head is calibrated from the first append that holds a non-zero value for it,
  with ``range = calibration_headroom * absmax`` (default 2: groups up to ~4x the first
  append's largest value are represented exactly; the headroom costs only mantissa bits,
  a group at the calibration absmax still gets a 14-bit mantissa).

A group whose absmax needs a mantissa above 65535 (more than ~2x the range) is *clipped*:
its mantissa saturates and its largest values saturate at ``±qmax``. Clipping is counted per
append (:attr:`KVCache.last_append`) and in total (:attr:`KVCache.stats`), and ``on_clip``
chooses what else happens: ``"warn"`` (default, a :class:`KVClipWarning`), ``"raise"``
(:class:`KVClipError` before anything is written) or ``"count"`` (statistics only).
"""
from __future__ import annotations

import heapq
import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np

from hbmforge.engines.attention import KV_HEAD_PARALLEL, KV_SHARED, MANT_BITS, MAX_HEADS, attention_geometry
from hbmforge.numerics.attention import dequantize_kv, kv_head_scale, pack_block_table, quantize_kv

from .checks import check_bool, check_choice, check_int, check_real, real_array
from .device import Buffer, Device, check_device

__all__ = ["KVCache", "KVSequence", "KVAppend", "KVCacheError", "KVCacheFullError", "KVClipError",
           "KVClipWarning", "SequenceStateError", "attention_engine"]

_MANT_MAX = (1 << MANT_BITS) - 1
#: KVCache ``layout`` values: the ATTENTION descriptor's kv_layout 0 and 1
KV_LAYOUTS = ("shared", "head_parallel")
_TINY = np.finfo(np.float64).tiny


class KVCacheError(ValueError):
    """A KV cache operation that cannot be done (bad input, a context too long, a full pool)."""


class KVCacheFullError(KVCacheError, MemoryError):
    """The page pool has fewer free pages than an append needs."""


class SequenceStateError(KVCacheError):
    """Use of a sequence that was freed or belongs to another cache."""


class KVClipError(KVCacheError):
    """``on_clip="raise"``: an append would clip groups beyond the calibrated range."""


class KVClipWarning(RuntimeWarning):
    """``on_clip="warn"``: an append clipped groups beyond the calibrated range."""


def attention_engine(device: Device):
    """The attention engine config of ``device``'s design; a clear error when it has none."""
    device = check_device(device)
    att = device.layout.attention
    if att is None:
        raise ValueError(f"design {device.layout.kernel!r} has no attention engine; add an engine "
                         "with `kind: attention` to its config")
    return att


def _head_values(name: str, value, kv_heads: int) -> np.ndarray:
    """A float or one float per KV head -> float64 [kv_heads] (finite, > 0)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        value = np.full(kv_heads, check_real(name, value))
    arr = real_array(name, value, ndim=(0, 1), what=f"a float or one float per KV head ({kv_heads})")
    if arr.ndim == 0:
        arr = np.full(kv_heads, float(arr))
    if arr.shape != (kv_heads,):
        raise ValueError(f"{name} must be a float or one value per KV head ({kv_heads}), got shape {arr.shape}")
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {arr.tolist()}")
    return arr


def _normal_scale(name: str, hs: np.ndarray) -> np.ndarray:
    """Head scales must be normal float64 numbers (a subnormal scale has lost its precision)."""
    if not np.all(np.isfinite(hs)) or np.any(hs < _TINY):
        raise ValueError(f"{name} gives head scale(s) {hs.tolist()} outside float64's normal range; "
                         "the values are too small (or the headroom too large) to quantize")
    return hs


def _float_tokens(name: str, x, kv_heads: int, head_dim: int) -> np.ndarray:
    """[n, kv_heads, head_dim] (or [kv_heads, head_dim] for one token) real -> float64 [n, kvh, hd]."""
    want = (f"[n_tokens >= 1, kv_heads={kv_heads}, head_dim={head_dim}] "
            f"(or [{kv_heads}, {head_dim}] for one token)")
    x = real_array(name, x, ndim=(2, 3), what=want,
                   axes=("token", "kv head", "dim") if np.ndim(x) == 3 else ("kv head", "dim"))
    if x.ndim == 2:
        x = x[None]
    if x.shape[1:] != (kv_heads, head_dim) or x.shape[0] == 0:
        raise ValueError(f"{name} must be {want}, got shape {x.shape}")
    return x


class _PagePool:
    """The free physical pages of a pool, lowest first, in memory independent of the pool size:
    pages never used yet are a counter, returned pages a heap (always below the counter)."""

    def __init__(self, pages: int):
        self.size = pages
        self._fresh = 0
        self._returned: list[int] = []

    def __len__(self) -> int:
        return self.size - self._fresh + len(self._returned)

    def take(self) -> int:
        if self._returned:
            return heapq.heappop(self._returned)
        if self._fresh >= self.size:
            raise KVCacheFullError("KV pool has no free page")
        self._fresh += 1
        return self._fresh - 1

    def give(self, page: int) -> None:
        heapq.heappush(self._returned, page)


@dataclass
class KVAppend:
    """What one append did: tokens, pages taken, bytes written and the clipping it measured."""

    tokens: int = 0
    new_pages: int = 0
    bytes_written: int = 0
    clipped_groups: dict = field(default_factory=lambda: {"k": 0, "v": 0})
    clipped_values: dict = field(default_factory=lambda: {"k": 0, "v": 0})
    max_overrange: dict = field(default_factory=lambda: {"k": 0.0, "v": 0.0})   # worst absmax / range
    calibrated_heads: dict = field(default_factory=lambda: {"k": [], "v": []})


@dataclass
class _Pending:
    """An append checked and quantized but not yet applied (see :meth:`KVCache.append`)."""

    seq: "KVSequence"
    start: int                      # the sequence length it was planned for
    report: KVAppend
    kq: np.ndarray
    km: np.ndarray
    vq: np.ndarray
    vm: np.ndarray
    head_scales: dict               # "k"/"v" -> float64 [kv_heads] after the append
    clip_message: str = ""
    undo: dict | None = None        # what commit changed, to put it back

    @property
    def k_head_scale(self) -> np.ndarray:
        return self.head_scales["k"]

    @property
    def end(self) -> int:
        return self.start + self.report.tokens


class _Growing:
    """A host mirror of a sequence's quantized tokens (for golden models), grown by doubling."""

    def __init__(self, kv_heads: int, head_dim: int, groups: int):
        self.n = 0
        self.q = np.zeros((16, kv_heads, head_dim), dtype=np.int8)
        self.m = np.zeros((16, kv_heads, groups), dtype=np.uint16)

    def extend(self, q: np.ndarray, m: np.ndarray) -> None:
        need = self.n + q.shape[0]
        if need > self.q.shape[0]:
            cap = max(need, 2 * self.q.shape[0])
            self.q = np.concatenate([self.q, np.zeros((cap - self.q.shape[0],) + self.q.shape[1:], np.int8)])
            self.m = np.concatenate([self.m, np.zeros((cap - self.m.shape[0],) + self.m.shape[1:], np.uint16)])
        self.q[self.n:need] = q
        self.m[self.n:need] = m
        self.n = need


class KVSequence:
    """One sequence in a :class:`KVCache`: its pages, block table buffer and length.

    Make with :meth:`KVCache.sequence`; grow with :meth:`append`; give the pages back with :meth:`free`.
    """

    def __init__(self, cache: "KVCache", ident: int, block_table: Buffer):
        self._cache = cache
        self.id = ident
        self._bt = block_table
        self._pages: list[int] = []
        self._length = 0
        self._freed = False
        geom = cache.geometry
        self._k = _Growing(cache.kv_heads, geom.head_dim, geom.groups) if cache.mirror else None
        self._v = _Growing(cache.kv_heads, geom.head_dim, geom.groups) if cache.mirror else None

    @property
    def cache(self) -> "KVCache":
        return self._cache

    @property
    def length(self) -> int:
        """Tokens in the cache for this sequence (the ``ctx_len`` of its next attention run)."""
        return self._length

    def __len__(self) -> int:
        return self._length

    @property
    def pages(self) -> tuple[int, ...]:
        """Physical page per logical page (what the block table holds)."""
        return tuple(self._pages)

    @property
    def block_table(self) -> Buffer:
        self._check_live()
        return self._bt

    @property
    def freed(self) -> bool:
        return self._freed

    @property
    def capacity(self) -> int:
        """Tokens this sequence can hold without taking a page: its pages times page_tokens."""
        return len(self._pages) * self._cache.geometry.page_tokens

    def append(self, k, v) -> KVAppend:
        """``cache.append(self, k, v)``."""
        return self._cache.append(self, k, v)

    def free(self) -> None:
        """``cache.free(self)``: return the pages to the pool (idempotent)."""
        self._cache.free(self)

    def quantized(self):
        """``(k, km, v, vm)``: int8 values [length, kv_heads, head_dim] (int4 values sign-extended)
        and u16 mantissas [length, kv_heads, groups], as written to the device."""
        self._check_live()
        if self._k is None:
            raise KVCacheError("this cache keeps no host mirror of its tokens (mirror=False)")
        n = self._length
        return self._k.q[:n], self._k.m[:n], self._v.q[:n], self._v.m[:n]

    def dequantized(self):
        """``(k, v)`` float64 [length, kv_heads, head_dim]: what the device's cache represents."""
        k, km, v, vm = self.quantized()
        c = self._cache
        g = c.geometry.group_size
        return (dequantize_kv(k, km, c.k_head_scale, g), dequantize_kv(v, vm, c.v_head_scale, g))

    def _check_live(self) -> None:
        if self._freed:
            raise SequenceStateError(f"sequence {self.id} was freed; its pages are back in the pool "
                                     "(make a new one with cache.sequence())")

    def __repr__(self) -> str:
        state = "freed" if self._freed else f"{self._length} tokens, pages {list(self._pages)}"
        return f"KVSequence({self.id}, {state})"


class KVCache:
    """A paged KV cache pool on ``device`` for ``kv_heads`` KV heads at ``kv_bits`` (4 or 8).

    ``pages``: physical pages in the pool (default: enough for one sequence of the engine's
    ``max_context``). ``k_scale``/``v_scale`` or ``k_range``/``v_range`` fix the per-KV-head
    scales (see the module docstring); without them each head is calibrated on its first
    non-zero append. ``on_clip``: "warn", "raise" or "count". ``mirror``: keep the quantized
    tokens on the host too (needed by the golden-model helpers; costs ~2 bytes per stored value).
    ``layout``: "shared" (default) or "head_parallel" (see the module docstring).
    """

    def __init__(self, device: Device, *, kv_heads: int, kv_bits: int = 8, pages: int | None = None,
                 k_scale=None, v_scale=None, k_range=None, v_range=None, calibration_headroom: float = 2.0,
                 on_clip: str = "warn", mirror: bool = True, layout: str = "shared"):
        att = attention_engine(device)
        geom = attention_geometry(device.layout)
        kv_heads = check_int("kv_heads", kv_heads, 1, MAX_HEADS)
        layout = check_choice("layout", layout, KV_LAYOUTS)
        if layout == "head_parallel":
            if not att.head_parallel:
                raise ValueError("layout 'head_parallel' needs an attention engine with head_parallel: true "
                                 f"(this one has kv_ports {att.kv_ports}, rows {att.rows}); use layout='shared'")
            if kv_heads % att.rows:
                raise ValueError(f"kv_heads {kv_heads} must be a multiple of the engine's rows {att.rows} "
                                 "with layout 'head_parallel' (one port group per row)")
        kv_bits = check_choice("kv_bits", kv_bits, tuple(att.kv_bits), "the engine's kv_bits")
        max_pages = att.max_context // att.page_tokens
        pages = max_pages if pages is None else check_int("pages", pages, 1, (1 << 32) - 1)
        on_clip = check_choice("on_clip", on_clip, ("warn", "raise", "count"))
        headroom = check_real("calibration_headroom", calibration_headroom, 1.0)
        mirror = check_bool("mirror", mirror)
        head_scales = {}
        for which, scale, rng in (("k", k_scale, k_range), ("v", v_scale, v_range)):
            if scale is not None and rng is not None:
                raise ValueError(f"give {which}_scale or {which}_range, not both")
            if scale is not None:
                head_scales[which] = _normal_scale(f"{which}_scale", _head_values(f"{which}_scale", scale, kv_heads))
            elif rng is not None:
                head_scales[which] = _normal_scale(
                    f"{which}_range", kv_head_scale(_head_values(f"{which}_range", rng, kv_heads), kv_bits))
            else:
                head_scales[which] = np.zeros(kv_heads)           # 0: calibrate on first non-zero append
        self.layout = layout
        self.groups = att.rows if layout == "head_parallel" else 1
        self.heads_per_group = kv_heads // self.groups
        page_bytes = geom.page_bytes(kv_bits, self.heads_per_group)
        self._dev = device
        self._att = att
        self.geometry = geom
        self.kv_heads, self.kv_bits, self.num_pages = kv_heads, kv_bits, pages
        self.mirror = mirror
        self.on_clip = on_clip
        self.calibration_headroom = headroom
        self._qmax = (1 << (kv_bits - 1)) - 1
        self._hs = head_scales
        self.page_bytes = page_bytes
        self.max_pages_per_sequence = max_pages
        self._bt_bytes = len(pack_block_table(np.zeros(max_pages, np.uint32), geom.word_bytes))
        self._owner: dict[int, int] = {}                           # physical page -> sequence id
        self._seqs: dict[int, KVSequence] = {}
        self._ids = itertools.count()
        self.last_append: KVAppend | None = None
        self.stats = {"tokens": 0, "appends": 0, "bytes_written": 0,
                      "clipped_groups": {"k": 0, "v": 0}, "clipped_values": {"k": 0, "v": 0}}
        self.k_pool = self.v_pool = None
        self.k_pools: list[Buffer] = []
        self.v_pools: list[Buffer] = []
        pool_bytes = pages * page_bytes                 # the device refuses a pool beyond its bank
        try:
            if layout == "shared":
                self.k_pool = device.alloc(pool_bytes, "w0")
                self.v_pool = device.alloc(pool_bytes, f"w{att.kv_ports - 1}")
                self.k_pools, self.v_pools = [self.k_pool], [self.v_pool]
            else:
                self.k_pool = device.alloc(geom.pool_table_bytes, "data")
                for r in range(self.groups):
                    self.k_pools.append(device.alloc(pool_bytes, f"w{geom.k_port(r)}"))
                    self.v_pools.append(device.alloc(pool_bytes, f"w{geom.v_port(r)}"))
                table = b"".join(b.address.to_bytes(8, "little") for b in self.k_pools + self.v_pools)
                device.write(self.k_pool, table + bytes(geom.pool_table_bytes - len(table)))
        except BaseException:
            self.close()
            raise
        self._free = _PagePool(pages)                   # lowest page first, O(1) memory

    # -- properties --------------------------------------------------------------------
    def descriptor_fields(self) -> dict:
        """The ATTENTION descriptor's ``k_pool``, ``v_pool`` and ``kv_layout`` for this cache."""
        self._check_open()
        if self.layout == "shared":
            return {"k_pool": self.k_pool.address, "v_pool": self.v_pool.address, "kv_layout": KV_SHARED}
        return {"k_pool": self.k_pool.address, "v_pool": 0, "kv_layout": KV_HEAD_PARALLEL}

    def head_location(self, kv_head: int) -> tuple[int, int]:
        """(port group, head index in the group's pools) of KV head ``kv_head``."""
        kv_head = check_int("kv_head", kv_head, 0, self.kv_heads - 1)
        return divmod(kv_head, self.heads_per_group)

    @property
    def device(self) -> Device:
        return self._dev

    @property
    def max_context(self) -> int:
        return self._att.max_context

    @property
    def page_tokens(self) -> int:
        return self.geometry.page_tokens

    @property
    def free_pages(self) -> int:
        return len(self._free)

    @property
    def sequences(self) -> tuple[KVSequence, ...]:
        """Live sequences, oldest first."""
        return tuple(self._seqs.values())

    @property
    def k_head_scale(self) -> np.ndarray:
        """float64 [kv_heads]: K group scale = mantissa * k_head_scale[h] (0: head not yet calibrated)."""
        return self._hs["k"].copy()

    @property
    def v_head_scale(self) -> np.ndarray:
        return self._hs["v"].copy()

    @property
    def closed(self) -> bool:
        return self.k_pool is None

    def page_owner(self, page: int) -> int | None:
        """Id of the sequence holding physical ``page``, or None if it is free."""
        return self._owner.get(check_int("page", page, 0, self.num_pages - 1))

    # -- sequences ---------------------------------------------------------------------
    def sequence(self) -> KVSequence:
        """A new empty sequence (its block table buffer is allocated now; pages come on append)."""
        self._check_open()
        bt = self._dev.alloc(self._bt_bytes, "data")
        try:
            self._dev.write(bt, bytes(self._bt_bytes))
        except BaseException:
            self._dev.free(bt)
            raise
        seq = KVSequence(self, next(self._ids), bt)
        self._seqs[seq.id] = seq
        return seq

    def check_sequence(self, seq) -> KVSequence:
        if not isinstance(seq, KVSequence):
            raise TypeError(f"seq must be a KVSequence from cache.sequence(), got {type(seq).__name__}")
        if seq._cache is not self:
            raise SequenceStateError(f"sequence {seq.id} belongs to another KV cache")
        seq._check_live()
        self._check_open()
        return seq

    def free(self, seq: KVSequence) -> None:
        """Return ``seq``'s pages to the pool and release its block table (a second free is a no-op)."""
        if not isinstance(seq, KVSequence) or seq._cache is not self:
            raise SequenceStateError(f"{seq!r} is not a sequence of this cache")
        if seq._freed:
            return
        for p in seq._pages:
            del self._owner[p]
            self._free.give(p)
        seq._pages = []
        seq._freed = True
        self._seqs.pop(seq.id, None)
        if not self._dev.closed and not seq._bt.freed:
            self._dev.free(seq._bt)
        seq._k = seq._v = None

    # -- appending ---------------------------------------------------------------------
    def _quantize(self, which: str, x: np.ndarray, report: KVAppend):
        """float [n, kvh, hd] -> (int8 values, u16 mantissas, head scales) with this cache's head
        scales (calibrating uncalibrated heads on ``x``); changes nothing."""
        n, kvh, hd = x.shape
        g = self.geometry.group_size
        qmax = self._qmax
        hs = self._hs[which]
        absmax = np.abs(x.reshape(n, kvh, hd // g, g)).max(axis=3)          # [n, kvh, ng]
        head_max = absmax.max(axis=(0, 2))
        new = [h for h in range(kvh) if hs[h] == 0 and head_max[h] > 0]
        if new:
            hs = hs.copy()
            # headroom applied to the scale (not to absmax) so that no finite value overflows
            hs[new] = _normal_scale(f"{which} values of KV head(s) {new}",
                                    kv_head_scale(head_max[new], self.kv_bits) * self.calibration_headroom)
        eff = np.where(hs > 0, hs, 1.0)                                     # uncalibrated heads are all zero
        with np.errstate(over="ignore"):               # values far beyond the range clip (and are counted)
            need = absmax / qmax / eff[None, :, None]
            clipped = np.rint(need) > _MANT_MAX
            q, mant = quantize_kv(x.reshape(n * kvh, hd), self.kv_bits, g, np.tile(eff, n))
        q = q.reshape(n, kvh, hd).astype(np.int8)
        mant = mant.reshape(n, kvh, hd // g)
        if clipped.any():
            scale = mant.astype(np.float64) * eff[None, :, None]
            with np.errstate(over="ignore"):
                ideal = np.abs(np.rint(x.reshape(n, kvh, hd // g, g) / scale[..., None]))
            report.clipped_values[which] = int(np.count_nonzero(ideal > qmax))
            report.clipped_groups[which] = int(np.count_nonzero(clipped))
            report.max_overrange[which] = float((need / _MANT_MAX).max())
        report.calibrated_heads[which] = new
        return q, mant, hs

    def _pack_values(self, q: np.ndarray) -> np.ndarray:
        """int [n, kvh, hd] -> uint8 [n, kvh, value_bytes] value records."""
        n, kvh, hd = q.shape
        vb = self.geometry.value_bytes(self.kv_bits)
        out = np.zeros((n, kvh, vb), dtype=np.uint8)
        if self.kv_bits == 8:
            out[..., :hd] = q.astype(np.int64) & 0xFF
        else:
            nib = (q.astype(np.int64) & 0xF).astype(np.uint8)
            out[..., :hd // 2] = nib[..., 0::2] | (nib[..., 1::2] << 4)
        return out

    def append(self, seq: KVSequence, k, v) -> KVAppend:
        """Quantize and write ``n`` new tokens of K and V (float [n, kv_heads, head_dim], or
        [kv_heads, head_dim] for one) at positions ``seq.length ..``; returns what it did.

        Everything is checked (shapes, NaN/Inf, max_context, free pages, ``on_clip="raise"``)
        before a page is taken or a byte written; only the new tokens' value records and
        mantissas are written (plus the block table words of new pages).
        """
        return self._commit(self._plan(seq, k, v))

    def _plan(self, seq: KVSequence, k, v, *, tokens: int | None = None) -> _Pending:
        """Check and quantize an append without changing anything (``tokens``: the count the
        caller expects, e.g. one per query)."""
        seq = self.check_sequence(seq)
        hd = self.geometry.head_dim
        k = _float_tokens("k", k, self.kv_heads, hd)
        v = _float_tokens("v", v, self.kv_heads, hd)
        if k.shape != v.shape:
            raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
        n = k.shape[0]
        if tokens is not None and n != tokens:
            raise ValueError(f"k/v must hold one token per query: q has {tokens} positions, k has {n}")
        end = seq._length + n
        if end > self.max_context:
            raise KVCacheError(f"sequence {seq.id} would hold {end} tokens ({seq._length} + {n}); the "
                               f"attention engine's max_context is {self.max_context}")
        P = self.geometry.page_tokens
        new_pages = -(-end // P) - len(seq._pages)
        if new_pages > len(self._free):
            raise KVCacheFullError(f"KV pool has {len(self._free)} free pages, needs {new_pages} "
                                   f"(sequence {seq.id}: {seq._length} + {n} tokens, {P} tokens per page, "
                                   f"{self.num_pages} pages in the pool, {len(self._seqs)} live sequence(s))")
        report = KVAppend(tokens=n, new_pages=new_pages)
        kq, km, k_hs = self._quantize("k", k, report)
        vq, vm, v_hs = self._quantize("v", v, report)
        plan = _Pending(seq, seq._length, report, kq, km, vq, vm, {"k": k_hs, "v": v_hs})
        if report.clipped_groups["k"] + report.clipped_groups["v"]:
            what = ", ".join(f"{w.upper()}: {report.clipped_groups[w]} group(s), {report.clipped_values[w]} "
                             f"value(s), up to {report.max_overrange[w]:.2f}x the range"
                             for w in ("k", "v") if report.clipped_groups[w])
            plan.clip_message = (f"KV cache append to sequence {seq.id} clips groups beyond the calibrated range "
                                 f"({what}); give k_range/v_range (or a larger calibration_headroom) when "
                                 "creating the cache")
            if self.on_clip == "raise":
                raise KVClipError(plan.clip_message)
        return plan

    def _commit(self, plan: _Pending) -> KVAppend:
        """Apply a planned append: scales, pages, device bytes, mirror and statistics. If a write
        fails, everything it changed is put back."""
        seq, report = plan.seq, plan.report
        self.check_sequence(seq)
        if seq._length != plan.start:
            raise KVCacheError(f"sequence {seq.id} changed since this append was planned")
        if plan.clip_message and self.on_clip == "warn":
            warnings.warn(plan.clip_message, KVClipWarning, stacklevel=4)
        plan.undo = {"hs": dict(self._hs), "pages": len(seq._pages), "last_append": self.last_append,
                     "stats": {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.stats.items()},
                     "mirror": None if seq._k is None else (seq._k.n, seq._v.n)}
        try:
            self._hs = dict(plan.head_scales)
            first_new = len(seq._pages)
            for _ in range(report.new_pages):
                p = self._free.take()
                self._owner[p] = seq.id
                seq._pages.append(p)
            written = 0
            if report.new_pages:
                written += self._write_block_table(seq, first_new)
            written += self._write_tokens(seq, self.k_pools, plan.kq, plan.km)
            written += self._write_tokens(seq, self.v_pools, plan.vq, plan.vm)
            if seq._k is not None:
                seq._k.extend(plan.kq, plan.km)
                seq._v.extend(plan.vq, plan.vm)
            seq._length = plan.end
        except BaseException:
            self._undo(plan)
            raise
        report.bytes_written = written
        st = self.stats
        st["tokens"] += report.tokens
        st["appends"] += 1
        st["bytes_written"] += written
        for w in ("k", "v"):
            st["clipped_groups"][w] += report.clipped_groups[w]
            st["clipped_values"][w] += report.clipped_values[w]
        self.last_append = report
        return report

    def _undo(self, plan: _Pending) -> None:
        """Put back what :meth:`_commit` of ``plan`` changed (the bytes it wrote stay in slots and
        pages no sequence uses any more, which nothing reads)."""
        undo, seq = plan.undo, plan.seq
        if undo is None:
            return
        self._hs = undo["hs"]
        while len(seq._pages) > undo["pages"]:
            p = seq._pages.pop()
            del self._owner[p]
            self._free.give(p)
        seq._length = plan.start
        if undo["mirror"] is not None and seq._k is not None:
            seq._k.n, seq._v.n = undo["mirror"]
        self.stats = undo["stats"]
        self.last_append = undo["last_append"]
        plan.undo = None

    def _write_block_table(self, seq: KVSequence, first: int) -> int:
        """Write the block table words holding entries ``first ..`` (whole words)."""
        B = self.geometry.word_bytes
        start = first * 4 // B * B
        raw = pack_block_table(np.asarray(seq._pages, dtype=np.uint32), B)[start:]
        self._dev.write(seq._bt, raw, offset=start)
        return len(raw)

    def _write_tokens(self, seq: KVSequence, pools: list, q: np.ndarray, mant: np.ndarray) -> int:
        """Write tokens ``seq.length ..`` (values and mantissas) into their page slots, one
        contiguous range per (page, KV head) for each of the two areas (head h in its port
        group's pool, ``pools[h // heads_per_group]``)."""
        geom, P = self.geometry, self.geometry.page_tokens
        vals = self._pack_values(q)
        mants = np.ascontiguousarray(mant.astype("<u2"))
        vb, ng = geom.value_bytes(self.kv_bits), geom.groups
        head_area = geom.head_area(self.kv_bits)
        written = 0
        t, n = 0, q.shape[0]
        while t < n:
            pos = seq._length + t
            lp, slot = divmod(pos, P)
            take = min(P - slot, n - t)
            page_off = seq._pages[lp] * self.page_bytes
            for h in range(self.kv_heads):
                grp, hi = divmod(h, self.heads_per_group)
                pool = pools[grp]
                base = page_off + hi * head_area
                mb = mants[t:t + take, h].tobytes()
                vbytes = vals[t:t + take, h].tobytes()
                self._dev.write(pool, mb, offset=base + slot * ng * 2)
                self._dev.write(pool, vbytes, offset=base + geom.scale_area + slot * vb)
                written += len(mb) + len(vbytes)
            t += take
        return written

    # -- lifetime ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.k_pool is None:
            raise KVCacheError("this KV cache was closed; its pool is no longer on the device")
        self._dev._check_open()

    def close(self) -> None:
        """Free every sequence and the pools."""
        for seq in list(self._seqs.values()):
            self.free(seq)
        if not self._dev.closed:
            for buf in {id(b): b for b in [self.k_pool, self.v_pool, *self.k_pools, *self.v_pools]}.values():
                if buf is not None and not buf.freed:
                    self._dev.free(buf)
        self.k_pool = self.v_pool = None
        self.k_pools, self.v_pools = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"KVCache(kv_heads={self.kv_heads}, kv_bits={self.kv_bits}, pages={self.num_pages} "
                f"({self.free_pages} free), {len(self._seqs)} sequence(s), device={self._dev.backend})")
