"""Attention on the device over a paged int8/int4 KV cache: float in, float out.

    cache = KVCache(dev, kv_heads=2, kv_bits=8)
    att = Attention(dev, q_heads=8, kv_heads=2, head_dim=128, window=0, cache=cache)
    seq = cache.sequence()
    o = att.prefill(q, k, v, seq)              # q [T, 8, 128], k/v [T, 2, 128] -> [T, 8, 128]
    o1 = att.decode_step(q1, k1, v1, seq)      # one token: q1 [8, 128], k1/v1 [2, 128] -> [8, 128]

Each call appends the new K/V to the cache (quantize-on-append, :mod:`hbmforge.host.kvcache`),
quantizes Q per (position, head) to int8 with a dyadic score multiplier
(:func:`~hbmforge.numerics.attention.score_multiplier`: q scale x K head scale x softmax scale
x log2 e), runs one ATTENTION descriptor (n_q = T queries at the last T positions of the
sequence) and dequantizes the int32 output (``o / 2**8 * v_head_scale``).

:meth:`Attention.golden` / :meth:`Attention.golden_int` give the bit-exact golden model of
the same call (from the cache's host mirror, :func:`hbmforge.numerics.attention.attention_int`),
:meth:`Attention.reference` float64 softmax attention (on given float K/V or on the dequantized
cache).
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np

from hbmforge.engines.attention import MAX_HEADS, attention_geometry
from hbmforge.numerics.attention import (attention_float, attention_int, dequantize_output, pack_q_records,
                                         quantize_q, score_multiplier)

from .device import Buffer, Device
from .kvcache import KVCache, KVCacheError, KVSequence, attention_engine
from .program import ProgramBuilder

__all__ = ["Attention", "AttentionRun", "attention_peak_macs"]


def attention_peak_macs(geom, kv_bits: int) -> int:
    """Peak MAC_OPS per cycle of the attention engine for ``kv_bits``.

    The engine's K feed and V feed each hand one memory word per cycle to the score and value
    units (generators/attention/feed.py), each of which multiplies it with all ``rows`` query
    rows: ``min(B, head_dim)`` int8 or ``min(2B, head_dim)`` int4 values per word. MAC_OPS counts
    both products (``2 x rows x tokens x head_dim``), so the peak is ``2 x rows x values/word``.
    """
    per_word = min(geom.word_bytes * 8 // kv_bits, geom.head_dim)
    return 2 * geom.rows * per_word


@dataclass
class AttentionRun:
    """What the last attention call did on the device."""

    n_q: int = 0
    ctx_len: int = 0
    kv_bits: int = 8
    cycles: int = 0
    elapsed_s: float = 0.0
    mac_ops: int = 0
    kv_bytes_read: int = 0                       # K + V bytes over the KV ports
    port_bytes_read: dict = field(default_factory=dict)     # per port, from the counters
    kv_efficiency: float = 0.0                   # kv_bytes_read / (kv_ports * word_bytes * cycles)
    mac_utilization: float = 0.0                 # mac_ops / (attention_peak_macs * cycles)
    counters: dict = field(default_factory=dict)
    q_int: np.ndarray | None = None              # the Q records sent: int8 [n_q, q_heads, hd]
    mult: np.ndarray | None = None               # [n_q, q_heads]
    shift: np.ndarray | None = None
    output_int: np.ndarray | None = None         # int32 [n_q, q_heads, hd] as read back


def _int_arg(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}" if hi is not None
                         else f"{name} must be >= {lo}, got {value}")
    return value


class Attention:
    """Multi-head / grouped-query attention with an optional sliding window and sinks.

    ``q_heads`` must be a multiple of ``kv_heads`` (the GQA group ``q_heads / kv_heads``
    query heads share a KV head); ``head_dim`` must be the engine's. ``window`` (0: causal,
    unlimited) and ``sink`` (tokens ``j < sink`` always visible; needs a window) at most the
    engine's ``max_context``. ``softmax_scale`` default ``1/sqrt(head_dim)``.
    ``cache``: a :class:`KVCache` for ``kv_heads`` on the same device, or None to make one
    (``kv_bits``, ``pages`` and ``cache_options`` go to it).
    """

    def __init__(self, device: Device, *, q_heads: int, kv_heads: int, head_dim: int, window: int = 0,
                 sink: int = 0, softmax_scale: float | None = None, cache: KVCache | None = None,
                 kv_bits: int = 8, pages: int | None = None, timeout: float = 60.0, **cache_options):
        att = attention_engine(device)
        hd = _int_arg("head_dim", head_dim, 1)
        if hd != att.head_dim:
            raise ValueError(f"head_dim must equal the attention engine's head_dim {att.head_dim}, got {hd}")
        kvh = _int_arg("kv_heads", kv_heads, 1, MAX_HEADS)
        qh = _int_arg("q_heads", q_heads, 1, MAX_HEADS)
        if qh % kvh:
            raise ValueError(f"q_heads ({qh}) must be a multiple of kv_heads ({kvh}): each KV head serves "
                             "a group of q_heads / kv_heads query heads")
        self._window = _int_arg("window", window, 0, att.max_context)
        self._sink = _int_arg("sink", sink, 0, att.max_context)
        if self._sink and not self._window:
            raise ValueError(f"sink={self._sink} needs a sliding window (window > 0): without one every "
                             "token is visible anyway")
        if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real)
                                          or not math.isfinite(softmax_scale) or softmax_scale <= 0):
            raise ValueError(f"softmax_scale must be a finite float > 0, got {softmax_scale!r}")
        if cache is None:
            cache = KVCache(device, kv_heads=kvh, kv_bits=kv_bits, pages=pages, **cache_options)
            self._owns_cache = True
        else:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
            if cache.device is not device:
                raise ValueError("cache lives on another device")
            if cache.kv_heads != kvh:
                raise ValueError(f"cache has kv_heads={cache.kv_heads}, this layer kv_heads={kvh}")
            if cache_options or pages is not None:
                raise ValueError("pages and cache options apply only when the layer makes its own cache")
            self._owns_cache = False
        self._dev = device
        self._att = att
        self.geometry = attention_geometry(device.layout)
        self.q_heads, self.kv_heads, self.head_dim = qh, kvh, hd
        self.q_per_kv = qh // kvh
        self.softmax_scale = 1.0 / math.sqrt(hd) if softmax_scale is None else float(softmax_scale)
        self.cache = cache
        self.timeout = timeout
        self._default: KVSequence | None = None
        self._work: dict[str, Buffer] = {}
        self.last_run: AttentionRun | None = None

    # -- properties --------------------------------------------------------------------
    @property
    def device(self) -> Device:
        return self._dev

    @property
    def window(self) -> int:
        return self._window

    @property
    def sink(self) -> int:
        return self._sink

    @property
    def kv_bits(self) -> int:
        return self.cache.kv_bits

    @property
    def sequence(self) -> KVSequence:
        """The layer's default sequence (used when a call gets ``seq=None``), made on first use."""
        if self._default is None or self._default.freed:
            self._default = self.cache.sequence()
        return self._default

    def _seq(self, seq) -> KVSequence:
        return self.sequence if seq is None else self.cache.check_sequence(seq)

    # -- inputs ------------------------------------------------------------------------
    def _queries(self, q, *, one: bool = False) -> np.ndarray:
        qh, hd = self.q_heads, self.head_dim
        if isinstance(q, (list, tuple)):
            q = np.asarray(q)
        if not isinstance(q, np.ndarray):
            raise TypeError(f"q must be a NumPy array [n_q, {qh}, {hd}], got {type(q).__name__}")
        if q.dtype == np.bool_ or q.dtype.kind not in "fiu":
            raise TypeError(f"q must be a real float array, got dtype {q.dtype}")
        if q.ndim == 2 and one:
            q = q[None]
        if q.ndim != 3 or q.shape[1:] != (qh, hd) or q.shape[0] == 0 or (one and q.shape[0] != 1):
            want = f"[{qh}, {hd}] (or [1, {qh}, {hd}])" if one else f"[n_q >= 1, q_heads={qh}, head_dim={hd}]"
            raise ValueError(f"q must be {want}, got shape {q.shape}")
        finite = np.isfinite(q)
        if not finite.all():
            raise ValueError(f"q contains {int(q.size - np.count_nonzero(finite))} NaN/Inf value(s)")
        return q.astype(np.float64)

    def quantize_queries(self, q):
        """float [n_q, q_heads, hd] -> (int8 q, u16 mult, shift, float q scale) as the device gets them."""
        q = self._queries(q)
        qi, qs = quantize_q(q)
        k_hs = np.repeat(self.cache.k_head_scale, self.q_per_kv)          # per query head
        try:
            mult, shift = score_multiplier(qs * k_hs[None, :], 1.0, self.head_dim, self.softmax_scale)
        except ValueError as err:
            raise ValueError(f"queries too large for the 16-bit score multiplier ({err}); scale Q down or "
                             "use a smaller softmax_scale") from None
        return qi, mult.reshape(qs.shape), shift.reshape(qs.shape), qs

    def _q_records(self, qi, mult, shift):
        qi = np.asarray(qi)
        if qi.dtype.kind not in "iu" or qi.ndim != 3 or qi.shape[1:] != (self.q_heads, self.head_dim) \
                or qi.shape[0] == 0:
            raise ValueError(f"q_int must be an integer array [n_q, {self.q_heads}, {self.head_dim}], "
                             f"got {qi.dtype} {qi.shape}")
        if qi.min() < -128 or qi.max() > 127:
            raise ValueError("q_int values must be in [-128, 127]")
        mult = np.asarray(mult, dtype=np.int64).reshape(qi.shape[:2])
        shift = np.asarray(shift, dtype=np.int64).reshape(qi.shape[:2])
        if mult.min() < 0 or mult.max() >= 1 << 16 or shift.min() < 0 or shift.max() > 63:
            raise ValueError("mult must be in [0, 65535] and shift in [0, 63]")
        return qi.astype(np.int64), mult, shift

    # -- the float interface -----------------------------------------------------------
    def prefill(self, q, k, v, seq: KVSequence | None = None, *, timeout: float | None = None) -> np.ndarray:
        """Append ``k``/``v`` [T, kv_heads, hd] to ``seq`` and attend with ``q`` [T, q_heads, hd]
        (the T new positions, causal + this layer's window/sink); returns float32 [T, q_heads, hd].

        On a sequence that already holds tokens this is a chunked prefill. Inputs are checked
        before anything is appended."""
        seq = self._seq(seq)
        q = self._queries(q)
        n = q.shape[0]
        kk = np.asarray(k) if isinstance(k, np.ndarray) else k
        if isinstance(kk, np.ndarray) and kk.ndim == 3 and kk.shape[0] != n:
            raise ValueError(f"k/v must hold one token per query: q has {n} positions, k has {kk.shape[0]}")
        self.cache.append(seq, k, v)
        return self.attend(q, seq, timeout=timeout)

    def decode_step(self, q, k_new, v_new, seq: KVSequence | None = None, *,
                    timeout: float | None = None) -> np.ndarray:
        """One token: ``q`` [q_heads, hd], ``k_new``/``v_new`` [kv_heads, hd] (a leading 1 is also
        accepted); returns float32 in the shape of ``q``."""
        squeeze = np.ndim(q) == 2
        seq = self._seq(seq)
        q3 = self._queries(q, one=True)
        for name, x in (("k_new", k_new), ("v_new", v_new)):
            if np.ndim(x) == 3 and np.shape(x)[0] != 1:
                raise ValueError(f"{name} must be one token [{self.kv_heads}, {self.head_dim}], got shape {np.shape(x)}")
        self.cache.append(seq, k_new, v_new)
        out = self.attend(q3, seq, timeout=timeout)
        return out[0] if squeeze else out

    def attend(self, q, seq: KVSequence | None = None, *, timeout: float | None = None) -> np.ndarray:
        """Queries ``q`` [n_q, q_heads, hd] at the last n_q positions of ``seq`` (nothing is appended);
        float32 [n_q, q_heads, hd]."""
        seq = self._seq(seq)
        qi, mult, shift, _ = self.quantize_queries(q)
        o = self.forward_int(qi, mult, shift, seq, timeout=timeout)
        return self.dequantize(o)

    def dequantize(self, o) -> np.ndarray:
        """int32 device output -> float32 ``o / 2**8 * v_head_scale``."""
        return dequantize_output(o, self.cache.v_head_scale, self.q_per_kv).astype(np.float32)

    # -- the integer interface ---------------------------------------------------------
    def descriptor(self, seq: KVSequence, n_q: int, q_addr: int = 0, o_addr: int = 0) -> dict:
        """The ATTENTION descriptor fields for ``n_q`` queries at the end of ``seq``."""
        return {"head_dim": self.head_dim, "kv_heads": self.kv_heads, "q_per_kv": self.q_per_kv,
                "n_q": n_q, "ctx_len": seq.length, "window": self._window, "sink": self._sink,
                "kv_bits": self.cache.kv_bits, "q_addr": q_addr, "bt_addr": seq.block_table.address,
                "k_pool": self.cache.k_pool.address, "v_pool": self.cache.v_pool.address, "o_addr": o_addr}

    def forward_int(self, q_int, mult, shift, seq: KVSequence | None = None, *,
                    timeout: float | None = None) -> np.ndarray:
        """Raw device output int32 [n_q, q_heads, hd] for given Q records (int8 q, u16 mult,
        6-bit shift per row) at the last n_q positions of ``seq``."""
        seq = self._seq(seq)
        qi, mult, shift = self._q_records(q_int, mult, shift)
        n_q = qi.shape[0]
        if n_q > seq.length:
            raise KVCacheError(f"{n_q} queries need at least {n_q} tokens in the cache; sequence {seq.id} "
                               f"holds {seq.length} (append K/V first)")
        dev, geom = self._dev, self.geometry
        rows = n_q * self.q_heads
        q_buf = self._workspace("q", rows * geom.q_record_bytes)
        o_buf = self._workspace("o", rows * geom.out_row_bytes)
        prog = ProgramBuilder(dev.manifest)
        prog.attention(**self.descriptor(seq, n_q, q_buf.address, o_buf.address))
        dev.write(q_buf, pack_q_records(geom, qi, mult, shift))
        p_buf = self._workspace("program", prog.nbytes)
        dev.write(p_buf, prog.to_bytes())
        started = time.monotonic()
        status = dev.run(p_buf, 1, timeout=self.timeout if timeout is None else timeout)
        elapsed = time.monotonic() - started
        raw = dev.read(o_buf, rows * geom.out_row_bytes)
        out = np.frombuffer(raw, dtype="<i4").reshape(n_q, self.q_heads, self.head_dim).astype(np.int32)
        self.last_run = self._run_info(status, elapsed, n_q, seq.length, qi, mult, shift, out)
        return out

    def golden_int(self, q_int, mult, shift, seq: KVSequence | None = None) -> np.ndarray:
        """What :meth:`forward_int` must return, from the golden model on the cache's host mirror."""
        seq = self._seq(seq)
        qi, mult, shift = self._q_records(q_int, mult, shift)
        k, km, v, vm = seq.quantized()
        g = self.geometry
        return attention_int(qi, mult, shift, k, km, v, vm, ctx_len=seq.length, window=self._window,
                             sink=self._sink, q_per_kv=self.q_per_kv, rows=g.rows, page_tokens=g.page_tokens,
                             group_size=g.group_size)

    def golden(self, q, seq: KVSequence | None = None) -> np.ndarray:
        """float32 output of the golden int model for queries ``q`` at the last n_q positions of
        ``seq`` (quantized exactly as :meth:`attend` does): equal to the device's output."""
        qi, mult, shift, _ = self.quantize_queries(q)
        return self.dequantize(self.golden_int(qi, mult, shift, seq))

    def reference(self, q, k=None, v=None, seq: KVSequence | None = None) -> np.ndarray:
        """float64 softmax attention with this layer's heads, mask and scale: ``q`` [n_q, q_heads, hd]
        at the last n_q positions of ``k``/``v`` [ctx, kv_heads, hd] (float, unquantized), or of the
        dequantized cache of ``seq`` when k and v are omitted."""
        q = self._queries(q)
        if (k is None) != (v is None):
            raise ValueError("give both k and v, or neither (then the dequantized cache of seq is used)")
        if k is None:
            k, v = self._seq(seq).dequantized()
        k = np.asarray(k, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        if k.shape != v.shape or k.ndim != 3 or k.shape[1:] != (self.kv_heads, self.head_dim) \
                or k.shape[0] < q.shape[0]:
            raise ValueError(f"k and v must be [ctx >= n_q, {self.kv_heads}, {self.head_dim}], got "
                             f"{k.shape} and {v.shape}")
        return attention_float(q, k, v, ctx_len=k.shape[0], window=self._window, sink=self._sink,
                               q_per_kv=self.q_per_kv, scale=self.softmax_scale)

    # -- running -----------------------------------------------------------------------
    def _workspace(self, name: str, nbytes: int) -> Buffer:
        buf = self._work.get(name)
        if buf is None or buf.nbytes < nbytes or buf.freed:
            if buf is not None and not buf.freed:
                self._dev.free(buf)
            self._work[name] = buf = self._dev.alloc(nbytes, "data")
        return buf

    def _run_info(self, status, elapsed, n_q, ctx, qi, mult, shift, out) -> AttentionRun:
        c = self._dev.counters()
        geom = self.geometry
        kv_ports = {"w0", f"w{geom.kv_ports - 1}"}
        port_read = {p: s["bytes_read"] for p, s in c["ports"].items()}
        kv_bytes = sum(b for p, b in port_read.items() if p in kv_ports)
        cycles = c["cycles"]
        peak = attention_peak_macs(geom, self.cache.kv_bits)
        util = c["mac_ops"] / (peak * cycles) if cycles else 0.0
        c["mac_utilization"] = util
        return AttentionRun(
            n_q=n_q, ctx_len=ctx, kv_bits=self.cache.kv_bits, cycles=status.cycles, elapsed_s=elapsed,
            mac_ops=c["mac_ops"], kv_bytes_read=kv_bytes, port_bytes_read=port_read,
            kv_efficiency=kv_bytes / (geom.kv_ports * geom.word_bytes * cycles) if cycles else 0.0,
            mac_utilization=util, counters=c, q_int=qi.astype(np.int8), mult=mult, shift=shift,
            output_int=out)

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Free the workspace (and the cache, if the layer made it)."""
        if not self._dev.closed:
            for buf in self._work.values():
                if not buf.freed:
                    self._dev.free(buf)
        self._work = {}
        if self._owns_cache:
            self.cache.close()
        elif self._default is not None and not self._default.freed:
            self._default.free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"Attention(q_heads={self.q_heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
                f"window={self._window}, sink={self._sink}, kv_bits={self.cache.kv_bits}, "
                f"device={self._dev.backend})")
