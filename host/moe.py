"""``MoE``: a mixture-of-experts layer whose experts' weights live behind the tile cache.

    moe = MoE(dev, router, experts, top_k=2, bits=4, weight_memory="host")
    y = moe(x)                          # x float [T, d] -> float [T, d]
    moe.last_run                        # experts run, cache hits/misses, cycles, bytes per level

Routing (host, float32; the router is ``E x d``): ``logits = x @ router.T``; each token takes
its ``top_k`` experts; their gates are the softmax of those ``top_k`` logits (renormalized,
as Mixtral). An expert is a quantized MLP run on the device: ``down(act(up(x)))``, or SwiGLU
``down(silu(gate(x)) * up(x))`` when given three matrices; each projection a
:class:`~hbmforge.host.linear.Linear` whose weights are allocated in ``weight_memory`` (host
memory or DDR). On a design with a tile cache those weights are read through it: the experts
used often stay in HBM, the others come over PCIe/DDR. With ``prefetch`` the next expert's
weights are prefetched (a CACHE PREFETCH run returns at once; its lines fill while the current
expert's matmuls run). The activation between the projections runs on the host in float.

Not (yet) inside :class:`hbmforge.host.blocks.ModelProgram`: a block step there is one device
program with no host round trip, and routing needs the router's top-k, which no engine computes
on the device; use ``MoE`` as the MLP of a host-composed layer (``h + moe(norm(h))``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .checks import check_bool, check_choice, check_int, check_timeout, real_array
from .device import Device, check_device, merge_counters
from .errors import DeviceError
from .linear import Linear

__all__ = ["MoE", "MoERun", "route"]


def route(logits: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts per token (ties: the lower index) and their renormalized gates (softmax of
    the chosen logits): ``(experts [T, k] int, gates [T, k] float32)``."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    chosen = np.take_along_axis(logits, order, axis=1).astype(np.float64)
    chosen -= chosen.max(axis=1, keepdims=True)
    g = np.exp(chosen)
    g /= g.sum(axis=1, keepdims=True)
    return order, g.astype(np.float32)


def _act(name: str, h: np.ndarray) -> np.ndarray:
    h = h.astype(np.float64)
    if name == "silu":
        return h / (1.0 + np.exp(-h))
    from math import erf, sqrt
    return 0.5 * h * (1.0 + np.vectorize(erf)(h / sqrt(2.0)))


@dataclass
class MoERun:
    tokens: int = 0
    expert_calls: list = field(default_factory=list)       # expert index per device call, in order
    cycles: int = 0
    elapsed_s: float = 0.0
    counters: dict = field(default_factory=dict)           # merged device counters of every run
    cache: dict = field(default_factory=dict)              # CACHE_* register sums (hits, misses, ...)


class MoE:
    """``router`` float [E, d]; ``experts``: E tuples ``(up [f, d], down [d, f])`` or
    ``(gate [f, d], up [f, d], down [d, f])`` (float); ``cache``: a
    :class:`~hbmforge.host.memory.TileCache` to prefetch with (optional)."""

    def __init__(self, device: Device, router, experts, *, top_k: int = 2, bits=4, activation: str = "silu",
                 weight_memory: str | None = "host", cache=None, prefetch: bool = True):
        dev = check_device(device)
        r = real_array("router", router, ndim=(2,), what="a float [experts, d] array")
        n_exp, d = r.shape
        if n_exp == 0 or d == 0:
            raise ValueError(f"router must be [experts >= 1, d >= 1], got shape {r.shape}")
        if isinstance(experts, (str, bytes)) or not hasattr(experts, "__len__") or len(experts) != n_exp:
            raise ValueError(f"experts must list one expert per router row ({n_exp})")
        self._top_k = check_int("top_k", top_k, 1, n_exp)
        self._act = check_choice("activation", activation, ("silu", "gelu"))
        self._prefetch = check_bool("prefetch", prefetch)
        checked = []
        for i, e in enumerate(experts):
            if not isinstance(e, (tuple, list)) or len(e) not in (2, 3):
                raise ValueError(f"experts[{i}] must be (up, down) or (gate, up, down) float arrays")
            mats = [real_array(f"experts[{i}][{j}]", m, ndim=(2,), what="a 2-D float array") for j, m in enumerate(e)]
            f = mats[-1].shape[1]
            want = [(f, d)] * (len(mats) - 1) + [(d, f)]
            if [m.shape for m in mats] != want or f == 0:
                raise ValueError(f"experts[{i}] shapes must be {want} (d = {d}), got {[m.shape for m in mats]}")
            checked.append(mats)
        if len({len(m) for m in checked}) != 1:
            raise ValueError("every expert must have the same form (all (up, down) or all (gate, up, down))")
        if cache is not None and getattr(cache, "_dev", None) is not dev:
            raise ValueError("cache must be a TileCache of the same device")
        self._dev, self._router, self._d, self._cache = dev, r.astype(np.float32), d, cache
        self._experts: list[list[Linear]] = []
        self._closed = False
        try:
            for mats in checked:
                self._experts.append([Linear.from_float(m, bits=bits, device=dev, weight_memory=weight_memory)
                                      for m in mats])
            if cache is not None:
                base, size = cache.window
                outside = [buf for lins in self._experts for lin in lins for buf in lin.weight_buffers
                           if not (base <= buf.address and buf.address + buf.nbytes <= base + size)]
                if outside:
                    raise ValueError(f"the experts' weights in weight_memory={weight_memory!r} ({outside[0].memory} "
                                     f"memory) are outside the cache's window [{base:#x}, +{size:#x}): put them in "
                                     f"the memory the cache fronts, or pass cache=None")
        except BaseException:
            self.close()
            raise
        self.last_run: MoERun | None = None

    @property
    def experts(self) -> int:
        return len(self._experts)

    @property
    def top_k(self) -> int:
        return self._top_k

    def expert_linears(self, e: int) -> list[Linear]:
        self._check()
        return list(self._experts[check_int("expert", e, 0, len(self._experts) - 1)])

    def route(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = real_array("x", x, ndim=(2,), what=f"a float [T, {self._d}] array")
        if x.shape[1] != self._d or x.shape[0] == 0:
            raise ValueError(f"x must be [T >= 1, {self._d}], got shape {x.shape}")
        return route(x.astype(np.float32) @ self._router.T, self._top_k)

    def __call__(self, x, *, routing=None, timeout: float = 60.0) -> np.ndarray:
        """``x`` float [T, d] -> float [T, d]: each token's top-k experts, gate-weighted.
        ``routing``: ``(experts [T, k] int, gates [T, k] float)`` to use instead of the router
        (replaying a recorded expert trace)."""
        self._check()
        x = real_array("x", x, ndim=(2,), what=f"a float [T, {self._d}] array")
        if x.shape[1] != self._d or x.shape[0] == 0:
            raise ValueError(f"x must be [T >= 1, {self._d}], got shape {x.shape}")
        check_timeout(timeout)
        if routing is None:
            experts, gates = self.route(x)
        else:
            if not isinstance(routing, (tuple, list)) or len(routing) != 2:
                raise TypeError(f"routing must be a pair (experts, gates), got {type(routing).__name__}")
            experts = np.asarray(routing[0])
            gates = np.asarray(routing[1], dtype=np.float32)
            if experts.shape != (x.shape[0], self._top_k) or gates.shape != experts.shape \
                    or experts.dtype.kind not in "iu" or not ((experts >= 0) & (experts < len(self._experts))).all():
                raise ValueError(f"routing must be (experts [T={x.shape[0]}, {self._top_k}] ints in "
                                 f"[0, {len(self._experts)}), gates of the same shape)")
            if not np.isfinite(gates).all():
                raise ValueError("routing gates must be finite numbers")
        run = MoERun(tokens=x.shape[0])
        t0 = time.monotonic()
        out = np.zeros((x.shape[0], self._d), dtype=np.float64)
        used = [e for e in range(len(self._experts)) if (experts == e).any()]
        for n, e in enumerate(used):
            if self._cache is not None and self._prefetch and n + 1 < len(used):
                for lin in self._experts[used[n + 1]]:
                    self._cache.prefetch(lin.weight_buffers[0])
            rows, slot = np.nonzero(experts == e)
            y = self._expert(e, x[rows], run, timeout)
            out[rows] += gates[rows, slot][:, None] * y
        run.elapsed_s = time.monotonic() - t0
        self.last_run = run
        return out.astype(np.float32)

    def _expert(self, e: int, xe: np.ndarray, run: MoERun, timeout: float) -> np.ndarray:
        lins = self._experts[e]
        if len(lins) == 3:
            g = lins[0](xe, timeout=timeout)
            self._account(lins[0], run, e)
            u = lins[1](xe, timeout=timeout)
            self._account(lins[1], run, e)
            h = _act("silu", g) * u.astype(np.float64)
        else:
            h = _act(self._act, lins[0](xe, timeout=timeout))
            self._account(lins[0], run, e)
        y = lins[-1](h.astype(np.float32), timeout=timeout)
        self._account(lins[-1], run, e)
        return y.astype(np.float64)

    def _account(self, lin: Linear, run: MoERun, e: int) -> None:
        info = lin.last_run
        run.expert_calls.append(e)
        if info is None:
            return
        run.cycles += info.cycles
        run.counters = merge_counters(run.counters, info.counters)
        cache = {k[len("cache_"):]: v for k, v in info.counters.items() if k.startswith("cache_")}
        run.cache = merge_counters(run.cache, cache)

    def reference(self, x) -> np.ndarray:
        """The same layer in float32 on the host with the dequantized device weights (the error
        the quantization adds is ``moe(x) - reference(x)``)."""
        self._check()
        x = real_array("x", x, ndim=(2,), what=f"a float [T, {self._d}] array")
        experts, gates = self.route(x)
        out = np.zeros((x.shape[0], self._d), dtype=np.float64)
        for e, lins in enumerate(self._experts):
            rows, slot = np.nonzero(experts == e)
            if rows.size == 0:
                continue
            w = [lin.dequantized_weight().astype(np.float64) for lin in lins]
            xe = x[rows].astype(np.float64)
            if len(w) == 3:
                h = _act("silu", xe @ w[0].T) * (xe @ w[1].T)
            else:
                h = _act(self._act, xe @ w[0].T)
            out[rows] += gates[rows, slot][:, None] * (h @ w[-1].T)
        return out.astype(np.float32)

    def _check(self) -> None:
        if self._closed:
            raise DeviceError("this MoE was closed")
        self._dev._check_open()

    def close(self) -> None:
        """Free every expert's weights."""
        for lins in self._experts:
            for lin in lins:
                lin.close()
        self._experts = []
        self._closed = True
