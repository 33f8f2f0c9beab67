"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p.

The order and the rules are those of transformers' logits processors: temperature scales the
logits, top-k keeps the k largest, top-p (nucleus) keeps the smallest set of most likely tokens
whose probability reaches ``top_p`` (always at least one); then one draw from the renormalized
distribution with a ``numpy.random.Generator`` seeded by ``seed`` (the same seed, logits and
settings give the same tokens). Greedy takes the first index of the largest logit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checks import check_bool, check_int, check_real

__all__ = ["Sampling", "sampling", "choose_token"]


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0                   # 0: no top-k
    top_p: float = 1.0               # 1.0: no top-p
    seed: int | None = None


def sampling(*, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, seed=None) -> Sampling:
    """Checked sampling settings (every value named in its error)."""
    do_sample = check_bool("do_sample", do_sample)
    temperature = check_real("temperature", temperature)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    top_k = check_int("top_k", top_k, 0)
    top_p = check_real("top_p", top_p)
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is not None:
        seed = check_int("seed", seed, 0)
    return Sampling(do_sample, float(temperature), top_k, float(top_p), seed)


def choose_token(logits: np.ndarray, s: Sampling, rng: np.random.Generator | None) -> int:
    """The next token id from float logits [vocab]."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if not s.do_sample:
        return int(np.argmax(z))
    z = z / s.temperature
    if 0 < s.top_k < z.size:
        kth = np.partition(z, -s.top_k)[-s.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if s.top_p < 1.0:
        order = np.argsort(p, kind="stable")                 # ascending, as transformers' TopPLogitsWarper
        cum = np.cumsum(p[order])
        drop = cum <= 1.0 - s.top_p
        drop[-1] = False                                     # keep at least the most likely token
        p[order[drop]] = 0.0
        p /= p.sum()
    return int(rng.choice(p.size, p=p))
