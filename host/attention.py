"""Attention on the device over a paged int8/int4 KV cache: float in, float out.

    cache = KVCache(dev, kv_heads=2, kv_bits=8)
    att = Attention(dev, q_heads=8, kv_heads=2, head_dim=128, window=0, cache=cache)
    seq = cache.sequence()
    o = att.prefill(q, k, v, seq)              # q [T, 8, 128], k/v [T, 2, 128] -> [T, 8, 128]
    o1 = att.decode_step(q1, k1, v1, seq)      # one token: q1 [8, 128], k1/v1 [2, 128] -> [8, 128]

    enc = Attention(dev, q_heads=8, kv_heads=8, head_dim=128, mode="bidirectional")
    o = enc.prefill(q, k, v, valid_len=111)    # an encoder over 128 positions, 111 real tokens

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
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from hbmforge.encodings import AttentionMode
from hbmforge.engines.attention import MAX_HEADS, MAX_SHIFT, MULT_BITS, attention_geometry
from hbmforge.numerics.attention import (attention_float, attention_int, dequantize_output, pack_q_records,
                                         quantize_q, score_multiplier)
from hbmforge.numerics.encoded import scale_product

from .checks import check_choice, check_int, check_positive, check_timeout, int_array, real_array
from .device import Device
from .kvcache import KVCache, KVCacheError, KVSequence, attention_engine
from .program import ProgramBuilder
from .workspace import Workspace

__all__ = ["Attention", "AttentionRun", "attention_peak_macs", "ATTENTION_MODES"]

#: ``Attention(mode=...)`` -> descriptor ``mode``
ATTENTION_MODES = {"causal": AttentionMode.CAUSAL, "bidirectional": AttentionMode.BIDIRECTIONAL}


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


class Attention:
    """Multi-head / grouped-query attention with an optional sliding window and sinks.

    ``q_heads`` must be a multiple of ``kv_heads`` (the GQA group ``q_heads / kv_heads``
    query heads share a KV head); ``head_dim`` must be the engine's. ``window`` (0: causal,
    unlimited) and ``sink`` (tokens ``j < sink`` always visible; needs a window) at most the
    engine's ``max_context``. ``softmax_scale`` default ``1/sqrt(head_dim)``.
    ``mode``: ``"causal"`` (decoders: a query at position p sees the tokens j <= p) or
    ``"bidirectional"`` (encoders: every query sees every token of the sequence, or the first
    ``valid_len`` a call gives: the rest is padding, masked and never read; padded query rows
    attend to the valid tokens like the others). Bidirectional layers take no window, no sink
    and no decode step.
    ``cache``: a :class:`KVCache` for ``kv_heads`` on the same device, or None to make one
    (``kv_bits``, ``pages`` and ``cache_options`` go to it). ``timeout``: seconds a call
    waits for the device (each call may override it).

    Every call checks all its arguments, the K/V append included (context length, free pages,
    clipping with ``on_clip="raise"``, the query multipliers), before it appends, allocates or
    writes anything; if the device run then fails, the append is undone.
    """

    def __init__(self, device: Device, *, q_heads: int, kv_heads: int, head_dim: int, window: int = 0,
                 sink: int = 0, softmax_scale: float | None = None, cache: KVCache | None = None,
                 kv_bits: int = 8, pages: int | None = None, timeout: float = 60.0, mode: str = "causal",
                 **cache_options):
        att = attention_engine(device)
        hd = check_int("head_dim", head_dim, 1)
        if hd != att.head_dim:
            raise ValueError(f"head_dim must equal the attention engine's head_dim {att.head_dim}, got {hd}")
        kvh = check_int("kv_heads", kv_heads, 1, MAX_HEADS)
        qh = check_int("q_heads", q_heads, 1, MAX_HEADS)
        if qh % kvh:
            raise ValueError(f"q_heads ({qh}) must be a multiple of kv_heads ({kvh}): each KV head serves "
                             "a group of q_heads / kv_heads query heads")
        window = check_int("window", window, 0, att.max_context)
        sink = check_int("sink", sink, 0, att.max_context)
        if sink and not window:
            raise ValueError(f"sink={sink} needs a sliding window (window > 0): without one every "
                             "token is visible anyway")
        mode = check_choice("mode", mode, tuple(ATTENTION_MODES))
        if mode == "bidirectional" and (window or sink):
            raise ValueError(f"a bidirectional layer takes no window or sink (got window={window}, "
                             f"sink={sink}): every query sees every valid token")
        softmax_scale = None if softmax_scale is None else check_positive("softmax_scale", softmax_scale)
        self.timeout = check_timeout(timeout)
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
            cache._check_open()
            self._owns_cache = False
        self._dev = device
        self._att = att
        self._window, self._sink = window, sink
        self._mode = mode
        self.geometry = attention_geometry(device.layout)
        self.q_heads, self.kv_heads, self.head_dim = qh, kvh, hd
        self.q_per_kv = qh // kvh
        self.softmax_scale = 1.0 / math.sqrt(hd) if softmax_scale is None else softmax_scale
        self.cache = cache
        self._default: KVSequence | None = None
        self._work = Workspace(device)
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
    def mode(self) -> str:
        """``"causal"`` or ``"bidirectional"``."""
        return self._mode

    @property
    def bidirectional(self) -> bool:
        return self._mode == "bidirectional"

    def _valid_len(self, valid_len, ctx_len: int) -> int:
        """The descriptor's ``valid_len`` for a call over ``ctx_len`` tokens (0: all valid)."""
        if valid_len is None:
            return 0
        if not self.bidirectional:
            raise ValueError("valid_len applies to bidirectional layers (mode='bidirectional'); a causal "
                             "layer masks by position")
        return check_int("valid_len", valid_len, 1, ctx_len)

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

    @contextmanager
    def _call_seq(self, seq):
        """The call's sequence; a default sequence made for a call that then fails is freed again."""
        made = seq is None and (self._default is None or self._default.freed)
        s = self._seq(seq)
        try:
            yield s
        except BaseException:
            if made and s.length == 0:
                s.free()
                self._default = None
            raise

    def _timeout(self, timeout) -> float:
        return self.timeout if timeout is None else check_timeout(timeout)

    # -- inputs ------------------------------------------------------------------------
    def _queries(self, q, *, one: bool = False) -> np.ndarray:
        qh, hd = self.q_heads, self.head_dim
        want = f"[{qh}, {hd}] (or [1, {qh}, {hd}])" if one else f"[n_q >= 1, q_heads={qh}, head_dim={hd}]"
        q = real_array("q", q, ndim=(2, 3) if one else (3,), what=want)
        if q.ndim == 2:
            q = q[None]
        if q.shape[1:] != (qh, hd) or q.shape[0] == 0 or (one and q.shape[0] != 1):
            raise ValueError(f"q must be {want}, got shape {q.shape if not one or q.shape[0] != 1 else q.shape[1:]}")
        return q

    def _quantize(self, q: np.ndarray, k_head_scale: np.ndarray):
        qi, qs = quantize_q(q)
        k_hs = np.repeat(k_head_scale, self.q_per_kv)                  # per query head
        try:
            mult, shift = score_multiplier(scale_product(qs, k_hs[None, :]), 1.0, self.head_dim,
                                           self.softmax_scale)
        except (ValueError, OverflowError) as err:
            raise ValueError(f"queries too large for the 16-bit score multiplier ({err}); scale Q down or "
                             "use a smaller softmax_scale") from None
        return qi, mult.reshape(qs.shape), shift.reshape(qs.shape), qs

    def quantize_queries(self, q):
        """float [n_q, q_heads, hd] -> (int8 q, u16 mult, shift, float q scale) as the device gets them."""
        return self._quantize(self._queries(q), self.cache.k_head_scale)

    def _q_records(self, qi, mult, shift):
        qi = int_array("q_int", qi, -128, 127, shape=(None, self.q_heads, self.head_dim),
                       what=f"an integer array [n_q, {self.q_heads}, {self.head_dim}]")
        if qi.shape[0] == 0:
            raise ValueError(f"q_int must be an integer array [n_q >= 1, {self.q_heads}, {self.head_dim}], "
                             f"got shape {qi.shape}")
        rows = qi.shape[:2]
        mult = int_array("mult", mult, 0, (1 << MULT_BITS) - 1, shape=rows)
        shift = int_array("shift", shift, 0, MAX_SHIFT, shape=rows)
        return qi, mult, shift

    # -- the float interface -----------------------------------------------------------
    def prefill(self, q, k, v, seq: KVSequence | None = None, *, valid_len: int | None = None,
                timeout: float | None = None) -> np.ndarray:
        """Append ``k``/``v`` [T, kv_heads, hd] to ``seq`` and attend with ``q`` [T, q_heads, hd]
        (the T new positions, causal + this layer's window/sink; bidirectional: every token of the
        sequence, or its first ``valid_len``); returns float32 [T, q_heads, hd].

        On a sequence that already holds tokens this is a chunked prefill (bidirectional: the new
        queries see every token appended so far). Inputs are checked before anything is appended."""
        timeout = self._timeout(timeout)
        q = self._queries(q)
        with self._call_seq(seq) as s:
            return self._append_and_attend(q, s, k, v, timeout, valid_len)

    def decode_step(self, q, k_new, v_new, seq: KVSequence | None = None, *,
                    timeout: float | None = None) -> np.ndarray:
        """One token: ``q`` [q_heads, hd], ``k_new``/``v_new`` [kv_heads, hd] (a leading 1 is also
        accepted); returns float32 in the shape of ``q``."""
        timeout = self._timeout(timeout)
        if self.bidirectional:
            raise ValueError("a bidirectional (encoder) layer has no decode step; use prefill() or attend()")
        squeeze = np.ndim(q) == 2
        q3 = self._queries(q, one=True)
        for name, x in (("k_new", k_new), ("v_new", v_new)):
            if np.ndim(x) == 3 and np.shape(x)[0] != 1:
                raise ValueError(f"{name} must be one token [{self.kv_heads}, {self.head_dim}], got shape {np.shape(x)}")
        with self._call_seq(seq) as s:
            out = self._append_and_attend(q3, s, k_new, v_new, timeout, None)
        return out[0] if squeeze else out

    def _append_and_attend(self, q: np.ndarray, seq: KVSequence, k, v, timeout: float, valid_len) -> np.ndarray:
        """Plan the append, quantize Q against the K scales it fixes, check the descriptor and
        reserve the workspace; only then append, run (undoing the append if the run fails)."""
        n_q = q.shape[0]
        plan = self.cache._plan(seq, k, v, tokens=n_q)
        valid = self._valid_len(valid_len, plan.end)
        qi, mult, shift, _ = self._quantize(q, plan.k_head_scale)
        bufs = self._prepare(seq, n_q, plan.end, valid)
        self.cache._commit(plan)
        try:
            out = self._execute(seq, bufs, qi, mult, shift, timeout)
        except BaseException:
            self.cache._undo(plan)
            raise
        return self.dequantize(out)

    def attend(self, q, seq: KVSequence | None = None, *, valid_len: int | None = None,
               timeout: float | None = None) -> np.ndarray:
        """Queries ``q`` [n_q, q_heads, hd] at the last n_q positions of ``seq`` (nothing is appended;
        bidirectional: over the sequence's first ``valid_len`` tokens, default all); float32
        [n_q, q_heads, hd]."""
        timeout = self._timeout(timeout)
        q = self._queries(q)
        with self._call_seq(seq) as s:
            qi, mult, shift, _ = self._quantize(q, self.cache.k_head_scale)
            return self.dequantize(self._forward(qi, mult, shift, s, timeout, valid_len))

    def dequantize(self, o) -> np.ndarray:
        """int32 device output [n_q, q_heads, hd] -> float32 ``o / 2**8 * v_head_scale``."""
        o = int_array("o", o, -(1 << 31), (1 << 31) - 1, shape=(None, self.q_heads, self.head_dim))
        return dequantize_output(o, self.cache.v_head_scale, self.q_per_kv).astype(np.float32)

    # -- the integer interface ---------------------------------------------------------
    def descriptor(self, seq: KVSequence, n_q: int, q_addr: int = 0, o_addr: int = 0, *,
                   ctx_len: int | None = None, valid_len: int = 0) -> dict:
        """The ATTENTION descriptor fields for ``n_q`` queries at the end of ``seq`` (of ``ctx_len``
        tokens; default its length); ``valid_len`` (bidirectional): the descriptor slot, 0 = all."""
        seq = self.cache.check_sequence(seq)
        n_q = check_int("n_q", n_q, 1)
        if self.cache.layout == "head_parallel" and (n_q != 1 or self.q_per_kv != 1):
            raise ValueError(f"a head-parallel KV cache runs decode of MHA layers only: n_q must be 1 and "
                             f"q_heads == kv_heads, got n_q {n_q}, q_per_kv {self.q_per_kv} (use a "
                             "KVCache(layout='shared') for prefill or GQA)")
        return {"head_dim": self.head_dim, "kv_heads": self.kv_heads, "q_per_kv": self.q_per_kv,
                "n_q": n_q, "ctx_len": seq.length if ctx_len is None else ctx_len, "window": self._window,
                "sink": self._sink, "kv_bits": self.cache.kv_bits, "mode": ATTENTION_MODES[self._mode],
                "valid_len": valid_len, "q_addr": q_addr,
                "bt_addr": seq.block_table.address, **self.cache.descriptor_fields(), "o_addr": o_addr}

    def forward_int(self, q_int, mult, shift, seq: KVSequence | None = None, *, valid_len: int | None = None,
                    timeout: float | None = None) -> np.ndarray:
        """Raw device output int32 [n_q, q_heads, hd] for given Q records (int8 q, u16 mult,
        6-bit shift per row) at the last n_q positions of ``seq``."""
        timeout = self._timeout(timeout)
        qi, mult, shift = self._q_records(q_int, mult, shift)
        with self._call_seq(seq) as s:
            return self._forward(qi, mult, shift, s, timeout, valid_len)

    def _forward(self, qi, mult, shift, seq: KVSequence, timeout: float, valid_len=None) -> np.ndarray:
        n_q = qi.shape[0]
        if n_q > seq.length:
            raise KVCacheError(f"{n_q} queries need at least {n_q} tokens in the cache; sequence {seq.id} "
                               f"holds {seq.length} (append K/V first)")
        bufs = self._prepare(seq, n_q, seq.length, self._valid_len(valid_len, seq.length))
        return self._execute(seq, bufs, qi, mult, shift, timeout)

    def _prepare(self, seq: KVSequence, n_q: int, ctx_len: int, valid_len: int = 0) -> dict:
        """Check the descriptor (with the kernel's rules), then reserve the workspace and build the
        program: everything a run needs before anything is written."""
        ProgramBuilder(self._dev).attention(**self.descriptor(seq, n_q, ctx_len=ctx_len, valid_len=valid_len))
        geom = self.geometry
        rows = n_q * self.q_heads
        bufs = self._work.reserve({"q": rows * geom.q_record_bytes, "o": rows * geom.out_row_bytes,
                                   "program": self._dev.layout.descriptor_bytes})
        prog = ProgramBuilder(self._dev)
        prog.attention(**self.descriptor(seq, n_q, bufs["q"], bufs["o"], ctx_len=ctx_len, valid_len=valid_len))
        return dict(bufs, n_q=n_q, ctx_len=ctx_len, program_bytes=prog.to_bytes())

    def _execute(self, seq: KVSequence, bufs: dict, qi, mult, shift, timeout: float) -> np.ndarray:
        dev, geom = self._dev, self.geometry
        n_q = bufs["n_q"]
        rows = n_q * self.q_heads
        dev.write(bufs["q"], pack_q_records(geom, qi, mult, shift))
        dev.write(bufs["program"], bufs["program_bytes"])
        started = time.monotonic()
        status = dev.run(bufs["program"], 1, timeout=timeout)
        elapsed = time.monotonic() - started
        raw = dev.read(bufs["o"], rows * geom.out_row_bytes)
        out = np.frombuffer(raw, dtype="<i4").reshape(n_q, self.q_heads, self.head_dim).astype(np.int32)
        self.last_run = self._run_info(status, elapsed, n_q, seq.length, qi, mult, shift, out)
        return out

    def golden_int(self, q_int, mult, shift, seq: KVSequence | None = None, *,
                   valid_len: int | None = None) -> np.ndarray:
        """What :meth:`forward_int` must return, from the golden model on the cache's host mirror."""
        qi, mult, shift = self._q_records(q_int, mult, shift)
        with self._call_seq(seq) as s:
            if qi.shape[0] > s.length:
                raise KVCacheError(f"{qi.shape[0]} queries need at least {qi.shape[0]} tokens in the cache; "
                                   f"sequence {s.id} holds {s.length}")
            seq = s
        valid = self._valid_len(valid_len, seq.length)
        k, km, v, vm = seq.quantized()
        g = self.geometry
        return attention_int(qi, mult, shift, k, km, v, vm, ctx_len=seq.length, window=self._window,
                             sink=self._sink, q_per_kv=self.q_per_kv, rows=g.rows, page_tokens=g.page_tokens,
                             group_size=g.group_size, bidirectional=self.bidirectional, valid_len=valid)

    def golden(self, q, seq: KVSequence | None = None, *, valid_len: int | None = None) -> np.ndarray:
        """float32 output of the golden int model for queries ``q`` at the last n_q positions of
        ``seq`` (quantized exactly as :meth:`attend` does): equal to the device's output."""
        qi, mult, shift, _ = self.quantize_queries(q)
        return self.dequantize(self.golden_int(qi, mult, shift, seq, valid_len=valid_len))

    def reference(self, q, k=None, v=None, seq: KVSequence | None = None, *,
                  valid_len: int | None = None) -> np.ndarray:
        """float64 softmax attention with this layer's heads, mask and scale: ``q`` [n_q, q_heads, hd]
        at the last n_q positions of ``k``/``v`` [ctx, kv_heads, hd] (float, unquantized), or of the
        dequantized cache of ``seq`` when k and v are omitted (bidirectional: over the first
        ``valid_len`` tokens)."""
        q = self._queries(q)
        if (k is None) != (v is None):
            raise ValueError("give both k and v, or neither (then the dequantized cache of seq is used)")
        if k is None:
            k, v = self._seq(seq).dequantized()
        want = f"[ctx >= n_q, {self.kv_heads}, {self.head_dim}]"
        k = real_array("k", k, ndim=(3,), what=want)
        v = real_array("v", v, ndim=(3,), what=want)
        if k.shape != v.shape or k.shape[1:] != (self.kv_heads, self.head_dim) or k.shape[0] < q.shape[0]:
            raise ValueError(f"k and v must be {want}, got {k.shape} and {v.shape}")
        valid = self._valid_len(valid_len, k.shape[0])
        with np.errstate(over="ignore", invalid="ignore"):
            out = attention_float(q, k, v, ctx_len=k.shape[0], window=self._window, sink=self._sink,
                                  q_per_kv=self.q_per_kv, scale=self.softmax_scale,
                                  bidirectional=self.bidirectional, valid_len=valid)
        if not np.all(np.isfinite(out)):
            raise ValueError("q and k are too large for float64 scores (q @ k.T overflows); scale them down")
        return out

    # -- running -----------------------------------------------------------------------
    def _run_info(self, status, elapsed, n_q, ctx, qi, mult, shift, out) -> AttentionRun:
        c = self._dev.counters()
        geom = self.geometry
        kv_ports = ({f"w{i}" for i in range(geom.kv_ports)} if self.cache.layout == "head_parallel"
                    else {"w0", f"w{geom.kv_ports - 1}"})
        port_read = {p: s["bytes_read"] for p, s in c["ports"].items()}
        kv_bytes = sum(b for p, b in port_read.items() if p in kv_ports)
        cycles = c["cycles"]
        peak = attention_peak_macs(geom, self.cache.kv_bits)
        util = c["mac_ops"] / (peak * cycles) if cycles else 0.0
        c["mac_utilization"] = util
        return AttentionRun(
            n_q=n_q, ctx_len=ctx, kv_bits=self.cache.kv_bits, cycles=status.cycles, elapsed_s=elapsed,
            mac_ops=c["mac_ops"], kv_bytes_read=kv_bytes, port_bytes_read=port_read,
            kv_efficiency=kv_bytes / (len(kv_ports) * geom.word_bytes * cycles) if cycles else 0.0,
            mac_utilization=util, counters=c, q_int=qi.astype(np.int8), mult=mult, shift=shift,
            output_int=out)

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Free the workspace (and the cache, if the layer made it)."""
        self._work.close()
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
                f"window={self._window}, sink={self._sink}, mode={self._mode!r}, kv_bits={self.cache.kv_bits}, "
                f"device={self._dev.backend})")
