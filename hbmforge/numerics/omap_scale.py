"""The oblivious map's algorithm at scale, without bytes: loads, stash lists, overflow events.

:class:`OmapScaleModel` runs the rules of :mod:`hbmforge.numerics.omap` (uniform labels; a
key's label is read whether the key is in its bin or still in the stash; one bin read and
written per query; up to ``Z`` stash nodes evicted into the bin read; the entry pushed onto
its next bin's list; dead nodes freed when met; two-choice directory) on integers,
so maps of 2**24 entries and long runs fit in seconds: it counts what the device counts
(nodes in use and their peak, directory-full and stash-full events, entries a full bin had to
leave in the stash) and records the bins read, one per query. Host bytes per query follow from
the geometry (one bin read, one written), which the byte-level model and the co-simulation
measure; this model checks the bound's other side: the trusted state the design needs stays
within the plan at every scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..engines.memory import OmapGeometry, plan_omap

__all__ = ["OmapScaleModel", "ScaleStats"]


@dataclass
class ScaleStats:
    queries: int = 0
    nodes_used: int = 0
    nodes_peak: int = 0
    stash_full: int = 0            # a query found no free node (the device stops the job)
    dir_full: int = 0              # an insert found both directory buckets full (FULL)
    bin_overflow: int = 0          # a live node stayed in the stash because its bin was full
    bins_read: list = field(default_factory=list)


class OmapScaleModel:
    """A map of ``capacity`` entries (``entries`` inserted by a bulk load and the format sweep)."""

    def __init__(self, geometry: OmapGeometry, capacity: int, entries: int, *, seed: int = 0):
        self.g = geometry
        self.plan = plan_omap(geometry, capacity)
        self.rng = np.random.default_rng(seed)
        self.bins = self.plan.bins
        self.z = geometry.bin_slots
        self.stats = ScaleStats()
        self.load = np.zeros(self.bins, dtype=np.int16)           # valid slots of each host bin
        self.lists: dict[int, list] = {}                           # label -> node ids, head last
        self.alive: dict[int, int] = {}                            # node -> key (absent: dead)
        self.where = np.full(entries, -1, dtype=np.int64)          # key -> bin (>= 0) or -(node + 2)
        self.label = np.zeros(entries, dtype=np.int64)             # key -> its label (the bin a query reads)
        self.free = self.plan.nodes
        self.next_node = 0
        self._directory(entries)
        self._bulk_and_format(entries)
        self._draws = np.empty((0, 2), dtype=np.int64)

    def _bulk_and_format(self, entries: int) -> None:
        """BULK pushes key k onto its label's list in key order; FORMAT then pops up to Z nodes of
        every list into its bin (the last pushed first): the same result, computed per label."""
        labels = self.rng.integers(0, self.bins, entries)
        self.label[:] = labels
        order = np.lexsort((-np.arange(entries), labels))           # by label, the last pushed first
        sorted_labels = labels[order]
        starts = np.searchsorted(sorted_labels, np.arange(self.bins))
        counts = np.bincount(labels, minlength=self.bins)
        rank = np.arange(entries) - starts[sorted_labels]           # 0 = the list head
        placed = rank < self.z
        self.load = np.minimum(counts, self.z).astype(np.int16)
        self.where[order[placed]] = sorted_labels[placed]
        left = order[~placed]                                        # stay in the stash, head last
        left_labels = sorted_labels[~placed]                         # sorted: one run per label
        labels_left, firsts = np.unique(left_labels, return_index=True)
        bounds = np.r_[firsts, len(left)].tolist()
        keys_left = left.tolist()
        for i, label in enumerate(labels_left.tolist()):
            keys = keys_left[bounds[i]:bounds[i + 1]][::-1]          # bottom (pushed first) ... head
            nodes = list(range(self.next_node, self.next_node + len(keys)))
            self.next_node += len(keys)
            self.lists[label] = nodes
            for node, key in zip(nodes, keys):
                self.alive[node] = key
                self.where[key] = -(node + 2)
        used = int((~placed).sum())
        self.free -= used
        self.stats.nodes_used = used
        self.stats.nodes_peak = entries                              # every entry sat in the stash once
        self.stats.bin_overflow += int((counts > self.z).sum())

    #: inserts the directory model places one at a time; above, in batches that see the loads
    #: as they were before the batch (a close approximation of two-choice at these sizes)
    EXACT_DIRECTORY = 1 << 20
    DIRECTORY_BATCH = 4096

    def _directory(self, entries: int) -> None:
        ways = self.g.dir_ways
        buckets = self.plan.buckets
        count = np.zeros(buckets, dtype=np.int32)
        h = self.rng.integers(0, buckets, size=(entries, 2))
        if entries <= self.EXACT_DIRECTORY:
            for a, b in h.tolist():
                pick = b if count[b] < count[a] else a
                if count[pick] >= ways:
                    self.stats.dir_full += 1
                else:
                    count[pick] += 1
        else:
            for i in range(0, entries, self.DIRECTORY_BATCH):
                a, b = h[i:i + self.DIRECTORY_BATCH, 0], h[i:i + self.DIRECTORY_BATCH, 1]
                pick = np.where(count[b] < count[a], b, a)
                np.add.at(count, pick, 1)
                over = count > ways
                if over.any():
                    self.stats.dir_full += int((count[over] - ways).sum())
                    count[over] = ways
        self.dir_peak = int(count.max()) if entries else 0
        self.directory_exact = entries <= self.EXACT_DIRECTORY

    def _push(self, key: int, label: int) -> None:
        if self.free == 0:
            self.stats.stash_full += 1
            return
        node = self.next_node
        self.next_node += 1
        self.free -= 1
        self.lists.setdefault(label, []).append(node)
        self.alive[node] = key
        self.where[key] = -(node + 2)
        self.label[key] = label
        self.stats.nodes_used += 1
        self.stats.nodes_peak = max(self.stats.nodes_peak, self.stats.nodes_used)

    def _evict(self, b: int) -> None:
        lst = self.lists.get(b)
        for _ in range(self.z):
            if not lst:
                break
            node = lst[-1]
            key = self.alive.get(node)
            if key is not None:
                if self.load[b] >= self.z:
                    self.stats.bin_overflow += 1
                    break
                self.load[b] += 1
                self.where[key] = b
                del self.alive[node]
            lst.pop()
            self.free += 1
            self.stats.nodes_used -= 1
        if lst is not None and not lst:
            del self.lists[b]

    def query(self, key: int | None) -> int:
        """One query of ``key`` (None: an absent key or a dummy); returns the bin read."""
        if not len(self._draws):
            self._draws = self.rng.integers(0, self.bins, size=(65536, 2))
        dummy, label = (int(v) for v in self._draws[-1])
        self._draws = self._draws[:-1]
        loc = -1 if key is None else int(self.where[key])
        target = dummy if key is None else int(self.label[key])
        self.stats.bins_read.append(target)
        self.stats.queries += 1
        if key is not None:
            if loc >= 0:
                self.load[target] -= 1
            else:
                self.alive.pop(-loc - 2, None)                       # the node dies where it stands
        self._evict(target)
        if key is not None:
            self._push(key, label)
        return target
