"""Golden model of the tile cache (hbmforge.engines.memory): hit/miss sequence, tags, contents.

:class:`TileCacheModel` runs the requests the cache sees (an engine's reads and writes of the
backing port, the CACHE actions) one line segment at a time, in order, and keeps what the RTL
keeps: per line valid/dirty/tag, an LRU age and an access frequency, the LFSR of the random
policy, the counters, and the bytes of the HBM store and the backing memory. The RTL overlaps
fills with later hits, but decides every hit, miss and victim in request order exactly like
this model, so the two give the same event sequence, tags and memory bit for bit.

Rules (docs/engines/memory.md, "tile cache"):

* a request is cut at line boundaries; a segment outside the window bypasses the cache;
* read hit: the store copy; read miss: the victim (the first invalid way, else by policy) is
  written back if dirty, the line is filled from the backing memory (the segment's words come
  from the fill); every access makes its line the most recent (LRU) and counts it (frequency);
* write, write-through: a hit updates store and backing, a miss only the backing;
  write-back: a hit updates the store and dirties the line; a miss of a whole line takes a
  victim without a fill; a partial miss goes around the cache to the backing memory;
* PREFETCH fills the missing lines of a range (no data returned, counted as prefetches);
  FLUSH writes the dirty lines of a range back; INVALIDATE drops the lines of a range; both
  walk set by set, way by way; CONFIGURE sets window and store and makes every line invalid.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..engines.memory import CACHE_COUNTERS, CacheGeometry

__all__ = ["TileCacheModel", "CacheEvent", "LineState", "LFSR_SEED", "LFSR_TAPS", "lfsr_next", "belady_hits",
           "policy_hits", "moe_expert_trace", "trace_statistics", "MIXTRAL_REPEAT_FIRST", "MIXTRAL_REPEAT_ANY"]

LFSR_SEED = 0xACE1
LFSR_TAPS = 0xB400            # 16-bit Galois LFSR x^16 + x^14 + x^13 + x^11 + 1
FREQ_MAX = 255


def lfsr_next(state: int) -> int:
    """One step of the random policy's 16-bit Galois LFSR."""
    lsb = state & 1
    state >>= 1
    return state ^ LFSR_TAPS if lsb else state


@dataclass
class LineState:
    valid: bool = False
    dirty: bool = False
    tag: int = 0
    age: int = 0
    freq: int = 0

    def word(self) -> int:
        """The STATS tag word (hbmforge.engines.memory.TAG_BITS)."""
        return (self.tag | int(self.valid) << 40 | int(self.dirty) << 41 | (self.age & 15) << 44
                | (self.freq & 255) << 48)


@dataclass(frozen=True)
class CacheEvent:
    """What one segment did: ``kind`` is hit, miss, bypass, prefetch (a fill) or skip (prefetch hit)."""

    kind: str
    write: bool
    set: int = -1
    way: int = -1
    victim_valid: bool = False
    writeback: bool = False


@dataclass
class TileCacheModel:
    geometry: CacheGeometry
    memory: object = None                 # read(addr, n) / write(addr, data): backing and store alike
    window_base: int = 0
    window_bytes: int = 0
    store_base: int = 0
    lfsr: int = LFSR_SEED
    counters: dict = field(default_factory=lambda: dict.fromkeys(CACHE_COUNTERS, 0))
    events: list = field(default_factory=list)

    def __post_init__(self):
        g = self.geometry
        self.lines = [[LineState(age=w) for w in range(g.ways)] for _ in range(g.sets)]

    # -- actions -----------------------------------------------------------------------
    def configure(self, window_base: int, window_bytes: int, store_base: int) -> None:
        g = self.geometry
        self.window_base, self.window_bytes, self.store_base = window_base, window_bytes, store_base
        self.lines = [[LineState(age=w) for w in range(g.ways)] for _ in range(g.sets)]

    def read(self, addr: int, nbytes: int) -> bytes:
        out = bytearray()
        for a, n in self._segments(addr, nbytes):
            out += self._read_segment(a, n)
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        pos = 0
        for a, n in self._segments(addr, len(data)):
            self._write_segment(a, bytes(data[pos:pos + n]))
            pos += n

    def prefetch(self, addr: int, nbytes: int) -> None:
        for a, n in self._segments(addr, nbytes):
            if not self._inside(a):
                continue
            tag, s, _ = self._split(a)
            if self._find(s, tag) is not None:
                self.events.append(CacheEvent("skip", False, s))
                continue
            self.counters["prefetches"] += 1
            way, victim, wb = self._allocate(s, tag, a)
            self._fill(s, way, a - (a - self.window_base) % self.geometry.line_bytes)
            self.events.append(CacheEvent("prefetch", False, s, way, victim, wb))

    def flush(self, addr: int, nbytes: int) -> None:
        for s, w, line in self._walk(addr, nbytes):
            if line.valid and line.dirty:
                self._writeback(s, w)
                line.dirty = False

    def invalidate(self, addr: int, nbytes: int) -> None:
        for s, w, line in self._walk(addr, nbytes):
            if line.valid:
                line.valid = line.dirty = False

    def stats_bytes(self) -> bytes:
        """What STATS writes: 16 u64 counter slots, then a tag word per line (set-major)."""
        words = [self.counters[c] for c in CACHE_COUNTERS] + [0] * (16 - len(CACHE_COUNTERS))
        words += [line.word() for row in self.lines for line in row]
        raw = struct.pack(f"<{len(words)}Q", *words)
        return raw.ljust(self.geometry.stats_bytes, b"\0")

    # -- segments ----------------------------------------------------------------------
    def _segments(self, addr: int, nbytes: int):
        line = self.geometry.line_bytes
        end = addr + nbytes
        while addr < end:
            stop = min(end, (addr // line + 1) * line)
            yield addr, stop - addr
            addr = stop

    def _inside(self, addr: int) -> bool:
        return self.window_base <= addr < self.window_base + self.window_bytes

    def _split(self, addr: int):
        return self.geometry.split(addr - self.window_base)

    def _line_addr(self, s: int, tag: int) -> int:
        g = self.geometry
        return self.window_base + (((tag << g.set_bits) | s) << g.line_bits)

    def _slot(self, s: int, w: int) -> int:
        return self.store_base + self.geometry.store_slot(s, w)

    def _find(self, s: int, tag: int):
        for w, line in enumerate(self.lines[s]):
            if line.valid and line.tag == tag:
                return w
        return None

    def _touch(self, s: int, w: int, *, fill: bool) -> None:
        row = self.lines[s]
        age = row[w].age
        for line in row:
            if line.age < age:
                line.age += 1
        row[w].age = 0
        if fill:
            row[w].freq = 1
        else:
            row[w].freq = min(row[w].freq + 1, FREQ_MAX)
            if row[w].freq == FREQ_MAX:
                for line in row:
                    line.freq >>= 1

    def _victim(self, s: int) -> int:
        g = self.geometry
        row = self.lines[s]
        for w, line in enumerate(row):
            if not line.valid:
                return w
        if g.replacement == "lru":
            return next(w for w, line in enumerate(row) if line.age == g.ways - 1)
        if g.replacement == "random":
            self.lfsr = lfsr_next(self.lfsr)
            return self.lfsr & (g.ways - 1)
        return min(range(g.ways), key=lambda w: (row[w].freq, -row[w].age))

    def _writeback(self, s: int, w: int) -> None:
        g = self.geometry
        line = self.lines[s][w]
        self.memory.write(self._line_addr(s, line.tag), self.memory.read(self._slot(s, w), g.line_bytes))
        self.counters["writebacks"] += 1
        self.counters["store_bytes_read"] += g.line_bytes
        self.counters["backing_bytes_written"] += g.line_bytes

    def _allocate(self, s: int, tag: int, addr: int) -> tuple[int, bool, bool]:
        """Take a victim way for ``tag`` (written back if dirty); (way, victim was valid, written back)."""
        w = self._victim(s)
        line = self.lines[s][w]
        was_valid, wb = line.valid, line.valid and line.dirty
        if was_valid:
            self.counters["evictions"] += 1
        if wb:
            self._writeback(s, w)
        line.valid, line.dirty, line.tag = True, False, tag
        self._touch(s, w, fill=True)
        return w, was_valid, wb

    def _fill(self, s: int, w: int, line_addr: int) -> bytes:
        g = self.geometry
        data = self.memory.read(line_addr, g.line_bytes)
        self.memory.write(self._slot(s, w), data)
        self.counters["backing_bytes_read"] += g.line_bytes
        self.counters["store_bytes_written"] += g.line_bytes
        return data

    def _read_segment(self, addr: int, n: int) -> bytes:
        if not self._inside(addr):
            self.counters["bypasses"] += 1
            self.counters["backing_bytes_read"] += n
            self.events.append(CacheEvent("bypass", False))
            return self.memory.read(addr, n)
        tag, s, off = self._split(addr)
        w = self._find(s, tag)
        if w is not None:
            self.counters["hits"] += 1
            self.counters["store_bytes_read"] += n
            self._touch(s, w, fill=False)
            self.events.append(CacheEvent("hit", False, s, w))
            return self.memory.read(self._slot(s, w) + off, n)
        self.counters["misses"] += 1
        w, victim, wb = self._allocate(s, tag, addr)
        data = self._fill(s, w, addr - off)
        self.events.append(CacheEvent("miss", False, s, w, victim, wb))
        return data[off:off + n]

    def _write_segment(self, addr: int, data: bytes) -> None:
        g = self.geometry
        n = len(data)
        if not self._inside(addr):
            self.counters["bypasses"] += 1
            self.counters["backing_bytes_written"] += n
            self.memory.write(addr, data)
            self.events.append(CacheEvent("bypass", True))
            return
        tag, s, off = self._split(addr)
        w = self._find(s, tag)
        if w is not None:
            self.counters["hits"] += 1
            self._touch(s, w, fill=False)
            self.memory.write(self._slot(s, w) + off, data)
            self.counters["store_bytes_written"] += n
            if g.write_policy == "write_through":
                self.memory.write(addr, data)
                self.counters["backing_bytes_written"] += n
            else:
                self.lines[s][w].dirty = True
            self.events.append(CacheEvent("hit", True, s, w))
            return
        self.counters["misses"] += 1
        if g.write_policy == "write_back" and off == 0 and n == g.line_bytes:
            w, victim, wb = self._allocate(s, tag, addr)
            self.memory.write(self._slot(s, w), data)
            self.counters["store_bytes_written"] += n
            self.lines[s][w].dirty = True
            self.events.append(CacheEvent("miss", True, s, w, victim, wb))
            return
        self.memory.write(addr, data)
        self.counters["backing_bytes_written"] += n
        self.events.append(CacheEvent("miss", True, s))

    def _walk(self, addr: int, nbytes: int):
        """Every (set, way, line) whose line lies in [addr, addr + nbytes), set-major."""
        g = self.geometry
        for s in range(g.sets):
            for w in range(g.ways):
                line = self.lines[s][w]
                if line.valid:
                    a = self._line_addr(s, line.tag)
                    if addr <= a and a + g.line_bytes <= addr + nbytes:
                        yield s, w, line


# -- replacement on a trace of line addresses (benchmarks: hit rates against Belady) ----------
def policy_hits(lines, *, sets: int, ways: int, replacement: str) -> int:
    """Read hits of :class:`TileCacheModel`'s policy on a trace of line numbers (no data)."""
    geom = CacheGeometry(32, 1024, ways, sets, replacement, "write_back", 1)
    model = TileCacheModel(geom, memory=_NullMemory(), window_bytes=1 << 40)
    for line in lines:
        model.read(int(line) * 1024, 32)
    return model.counters["hits"]


def belady_hits(lines, *, sets: int, ways: int) -> int:
    """Hits of Belady's optimal offline policy (MIN) on the same set-associative geometry."""
    import heapq

    lines = [int(x) for x in lines]
    nxt = [0] * len(lines)
    last: dict[int, int] = {}
    for i in range(len(lines) - 1, -1, -1):
        nxt[i] = last.get(lines[i], 1 << 62)
        last[lines[i]] = i
    hits = 0
    content: list[dict[int, int]] = [dict() for _ in range(sets)]          # line -> next use
    heaps: list[list] = [[] for _ in range(sets)]
    for i, line in enumerate(lines):
        s = line % sets
        c, h = content[s], heaps[s]
        if line in c:
            hits += 1
        elif len(c) >= ways:
            while True:                                     # the resident line used furthest ahead
                use, victim = heapq.heappop(h)
                if c.get(victim) == -use:
                    del c[victim]
                    break
        c[line] = nxt[i]
        heapq.heappush(h, (-nxt[i], line))
    return hits


class _NullMemory:
    def read(self, addr, n):
        return bytes(n)

    def write(self, addr, data):
        pass


# -- expert-access traces for the MoE benchmarks ------------------------------------------------
#: Mixtral 8x7B routing statistics the trace generator is calibrated to (Jiang et al., "Mixtral of
#: Experts", arXiv:2401.04088, Table 5, middle layer 15, read approximately): the first-choice
#: expert repeats between consecutive tokens about 28% of the time (12.5% at random), and the two
#: tokens' top-2 sets share an expert ("first or second choice") about 62% of the time (46% at random).
MIXTRAL_REPEAT_FIRST = 0.28
MIXTRAL_REPEAT_ANY = 0.62


def moe_expert_trace(tokens: int, layers: int, experts: int = 8, top_k: int = 2, *, zipf: float = 0.5,
                     keep_first: float = 0.17, swap: float = 0.04, keep_second: float = 0.02, seed: int = 0):
    """Expert choices ``[tokens, layers, top_k]`` of a decode: per layer a Zipf(``zipf``) popularity
    over the experts (an assumption for the load skew; a random ranking per layer) and a Markov
    repetition: a token's first expert is the previous token's first with ``keep_first``, its
    second with ``swap``, else drawn by popularity; its second expert is the previous second with
    ``keep_second`` (if free), else drawn. The defaults land near :data:`MIXTRAL_REPEAT_FIRST` and
    :data:`MIXTRAL_REPEAT_ANY` (measured by :func:`trace_statistics`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, experts + 1) ** zipf
    out = np.zeros((tokens, layers, top_k), dtype=np.int64)
    for layer in range(layers):
        p = rng.permutation(pop / pop.sum())
        prev = None
        for t in range(tokens):
            chosen: list[int] = []
            u = rng.random()
            if prev is not None and u < keep_first:
                chosen.append(int(prev[0]))
            elif prev is not None and top_k > 1 and u < keep_first + swap:
                chosen.append(int(prev[1]))
            while len(chosen) < top_k:
                slot = len(chosen)
                if prev is not None and slot == 1 and rng.random() < keep_second and prev[1] not in chosen:
                    chosen.append(int(prev[1]))
                    continue
                q = p.copy()
                q[chosen] = 0
                chosen.append(int(rng.choice(experts, p=q / q.sum())))
            out[t, layer] = chosen
            prev = chosen
    return out


def trace_statistics(trace) -> dict:
    """Repetition rates of a trace (as Mixtral's Table 5 counts them: the first choice repeats; the
    consecutive top-k sets share an expert) and its load skew (busiest expert over the mean)."""
    import numpy as np

    first_same = (trace[1:, :, 0] == trace[:-1, :, 0]).mean()
    now, before = trace[1:, :, :, None], trace[:-1, :, None, :]
    any_same = (now == before).any(axis=(2, 3)).mean()
    load = np.stack([np.bincount(trace[:, layer].ravel(), minlength=trace.max() + 1)
                     for layer in range(trace.shape[1])])
    return {"repeat_first": float(first_same), "repeat_any": float(any_same),
            "max_over_mean_load": float((load.max(axis=1) / load.mean(axis=1)).mean())}
