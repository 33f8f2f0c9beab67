"""Path ORAM (Stefanov et al., CCS 2013), the baseline the oblivious map is compared with.

:class:`PathORAM` is a functional Path ORAM of ``n`` blocks: a binary tree of buckets of ``Z``
blocks in untrusted memory, a stash, and a position map that is itself a Path ORAM holding
``pack`` positions per block, recursively, until it has at most ``onchip`` entries (kept on
chip). Every access reads and writes the whole path of a uniformly random leaf in each tree of
the recursion; :attr:`trace` records every bucket transfer (tree, level, bytes, read/write), so
bytes per access are counted, not assumed. Buckets are sealed like the map's bins (Z blocks
and a 16-byte tag, whole words), so both are measured in the same units. ``store=False``
keeps no block contents (for large ``n``, when only the trace is wanted: the path of an access
does not depend on the contents).

This baseline is an *array* ORAM: block ``i`` is key ``i`` (the key-to-index map an
oblivious map needs on top of it is not counted, which favours the baseline).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..mathutil import round_up

__all__ = ["PathORAM", "path_oram_bytes_per_access", "TreeSpec"]


@dataclass(frozen=True)
class TreeSpec:
    blocks: int
    levels: int            # buckets on a path (tree height + 1)


def _levels(blocks: int) -> int:
    return max(1, (blocks - 1).bit_length()) + 1


@dataclass
class PathORAM:
    n: int
    z: int = 4
    block_bytes: int = 32
    word_bytes: int = 32
    pack: int | None = None             # positions per posmap block (default: block_bytes // 4)
    onchip: int = 1024
    seed: int = 0
    store: bool = True
    trace: list = field(default_factory=list)
    max_stash: int = 0

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.pack = self.pack or self.block_bytes // 4
        self.trees: list[TreeSpec] = []
        blocks = self.n
        while True:
            self.trees.append(TreeSpec(blocks, _levels(blocks)))
            if blocks <= self.onchip:
                break
            blocks = -(-blocks // self.pack)
        # the last tree's positions live on chip
        self.bucket_bytes = round_up(self.z * self.block_bytes + 16, self.word_bytes)
        self.leaves = [1 << (t.levels - 1) for t in self.trees]
        self.pos = [[self.rng.randrange(leaves) for _ in range(t.blocks)] if self.store else None
                    for t, leaves in zip(self.trees, self.leaves)]
        self.buckets = [dict() for _ in self.trees] if self.store else None      # (level, index) -> [(id, leaf, data)]
        self.stash = [dict() for _ in self.trees]                                # id -> (leaf, data)

    def bytes_per_access(self) -> int:
        """Bytes one access moves: every tree's path read and written."""
        return sum(2 * t.levels * self.bucket_bytes for t in self.trees)

    # -- one access -------------------------------------------------------------------------
    def access(self, index: int, write: bytes | None = None) -> bytes | None:
        """Read block ``index`` (or write ``write`` to it); returns its data (None if never written)."""
        if not 0 <= index < self.n:
            raise ValueError(f"index {index} outside [0, {self.n})")
        # the recursion: the position of block ``index`` in tree 0 lives in tree 1 at index // pack, ...
        idx = [index]
        for _ in self.trees[1:]:
            idx.append(idx[-1] // self.pack)
        # walk from the on-chip map down: each level's access returns the leaf of the next
        new_leaves = [self.rng.randrange(leaves) for leaves in self.leaves]
        leaf_of_next = None
        result = None
        for t in reversed(range(len(self.trees))):
            if t == len(self.trees) - 1:
                leaf = self.pos[t][idx[t]] if self.store else self.rng.randrange(self.leaves[t])
                if self.store:
                    self.pos[t][idx[t]] = new_leaves[t]
            else:
                leaf = leaf_of_next
            data = self._path(t, idx[t], leaf, new_leaves[t],
                              child=(idx[t - 1] % self.pack, new_leaves[t - 1]) if t > 0 else None,
                              write=write if t == 0 else None)
            if t > 0:
                leaf_of_next = data
            else:
                result = data
        return result

    def _path(self, t: int, index: int, leaf: int, new_leaf: int, *, child, write):
        """Read the path to ``leaf`` into the stash, update block ``index`` (remap it), write the path
        back greedily; for a posmap tree return (and replace) the child's old leaf."""
        levels = self.trees[t].levels
        path = [(lvl, leaf >> (levels - 1 - lvl)) for lvl in range(levels)]
        for lvl, b in path:
            self.trace.append((t, lvl, b, self.bucket_bytes, False))
            if self.store:
                for blk in self.buckets[t].pop((lvl, b), []):
                    self.stash[t][blk[0]] = (blk[1], blk[2])
        out = None
        if self.store:
            old = self.stash[t].get(index, (None, None))[1]
            if child is not None:                               # a block of positions
                pos = list(old) if old is not None else [self.rng.randrange(self.leaves[t - 1])
                                                         for _ in range(self.pack)]
                slot, leaf_new_child = child
                out = pos[slot]
                pos[slot] = leaf_new_child
                self.stash[t][index] = (new_leaf, tuple(pos))
            else:
                out = old
                self.stash[t][index] = (new_leaf, write if write is not None else old)
        elif child is not None:
            out = self.rng.randrange(self.leaves[t - 1])
        # write back, deepest bucket first, each taking the stash blocks whose leaf shares it
        for lvl, b in reversed(path):
            if self.store:
                fit = [i for i, (lf, _) in self.stash[t].items() if (lf >> (levels - 1 - lvl)) == b][:self.z]
                self.buckets[t][(lvl, b)] = [(i, *self.stash[t].pop(i)) for i in fit]
            self.trace.append((t, lvl, b, self.bucket_bytes, True))
        self.max_stash = max(self.max_stash, max(len(s) for s in self.stash))
        return out

    def traffic(self) -> int:
        return sum(rec[3] for rec in self.trace)


def path_oram_bytes_per_access(n: int, *, z: int = 4, block_bytes: int = 32, word_bytes: int = 32,
                               onchip: int = 1024, accesses: int = 64, seed: int = 0) -> float:
    """Bytes per access of a Path ORAM of ``n`` blocks, counted on its trace (no contents kept)."""
    oram = PathORAM(n, z=z, block_bytes=block_bytes, word_bytes=word_bytes, onchip=onchip, seed=seed, store=False)
    rng = random.Random(seed + 1)
    for _ in range(accesses):
        oram.access(rng.randrange(n))
    return oram.traffic() / accesses
