"""Tensor-parallel linear layers across the devices of a :class:`~hbmforge.host.cluster.Cluster`.

    layer = ColumnParallelLinear.from_float(w, bits=4, cluster=cluster)   # out_features split
    layer = RowParallelLinear.from_float(w, bits=4, cluster=cluster)      # in_features split
    y = layer(x)                      # float32, the same bits as Linear(w) on one device
    yi = layer.forward_int(xq)        # the device integers

Both quantize the weights once, exactly as :class:`hbmforge.host.Linear` does on one device,
and give each device its part. Each device runs one program per call, started together: its
MATMUL(s), then an ALLREDUCE of the output buffer on the device, through the switch.

* Column split: device ``d`` computes output columns ``[n0, n1)`` with the single-device
  output shift, writing them where they belong in a zeroed full-size output; the all-reduce
  (a sum of disjoint parts) then leaves the whole output on every device: an all-gather.
  Bit-exact with one device, always.
* Row split: device ``d`` multiplies its K slice (group aligned) and the all-reduce sums the
  int32 partials. Exact when the output shift is 0 (the accumulator fits int32, as for
  low-bit weights with small mantissas); with a shift ``s > 0`` every device rounds its own
  partial, so the sum is within ``ceil(devices / 2)`` LSB of the single-device result
  (``last_run.exact`` says which).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hbmforge.encodings import NetMode, OutMode
from hbmforge.numerics import matmul_int32, quantize_activations_per_token, storage_range
from hbmforge.numerics.encoded import quantize_weights_encoded, scale_product

from .checks import check_choice, check_int, check_timeout, int_array, real_array
from .cluster import Cluster, ClusterProgram
from .linear import choose_out_shift
from .packing import engine_format, pack_activations, pack_scales, pack_weights, unpack_output
from .workspace import Workspace

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "TensorParallelRun"]



def split_even(total: int, parts: int, align: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of ``total`` columns over ``parts`` devices in whole ``align``-column
    units, as even as they go (earlier parts take the extra units; the last also takes a remainder
    below ``align``). The caller checks ``total // align >= parts``."""
    base, extra = divmod(total // align, parts)
    out, start = [], 0
    for d in range(parts):
        size = (base + (d < extra)) * align
        out.append((start, start + size))
        start += size
    out[-1] = (out[-1][0], total)
    return out

@dataclass
class TensorParallelRun:
    rows: int = 0
    out_shift: int = 0
    exact: bool = True              # bit-exact with one device (row split: out_shift == 0)
    cycles: int = 0                 # the slowest device
    network_cycles: int = 0
    elapsed_s: float = 0.0
    counters: dict = field(default_factory=dict)


class _TensorParallel:
    split = ""

    def __init__(self, cluster: Cluster, weight_q, mantissas, row_scale, *, bits, in_features: int, job: int = 0):
        if not isinstance(cluster, Cluster):
            raise TypeError(f"cluster must be a hbmforge.host.Cluster, got {type(cluster).__name__}")
        cluster._check_open()
        lay = cluster.layout
        mm, geom = lay.mm, lay.matmul
        self._cluster, self._lay = cluster, lay
        self._bits = engine_format(bits, lay, "bits")
        k = check_int("in_features", in_features, 1)
        kp = geom.pad_k(k)
        if kp > geom.k_slice:
            raise ValueError(f"in_features {k} (padded to {kp}) is above one K pass of the engine ({geom.k_slice}); "
                             "tensor-parallel layers take K within one pass")
        q = int_array("weight_q", weight_q, *storage_range(self._bits), shape=(None, kp))
        n = q.shape[0]
        g = mm.group_size
        mant = int_array("mantissas", mantissas, 0, (1 << mm.scale_bits) - 1, shape=(n, kp // g))
        rs = real_array("row_scale", row_scale, ndim=(1,), what=f"[{n}] finite floats > 0")
        if rs.shape != (n,) or not np.all(rs > 0):
            raise ValueError(f"row_scale must be {n} finite floats > 0 (one per output)")
        self._job = check_int("job", job, 0, cluster.jobs - 1)
        self._n, self._k, self._kp = n, k, kp
        self._q, self._mant, self._rs = q.astype(np.int8), mant.astype(np.uint16), rs
        group_l1 = np.abs(self._q.reshape(n, kp // g, g).astype(np.int64)).sum(axis=2)
        self._max_col_l1 = int((group_l1 * self._mant.astype(np.int64)).sum(axis=1).max())
        self._parts = self._partition()
        self._work = [Workspace(d) for d in cluster.devices]
        self._w: list[list] = []
        self._s: list = []
        self.last_run: TensorParallelRun | None = None
        try:
            for d, (dev, part) in enumerate(zip(cluster.devices, self._parts)):
                wq, sm = self._shard(part)
                bufs = []
                for port, stripe in zip((f"w{i}" for i in range(mm.weight_ports)), pack_weights(wq, self._bits, lay)):
                    buf = dev.alloc(stripe.nbytes, port)
                    dev.write(buf, stripe)
                    bufs.append(buf)
                self._w.append(bufs)
                scales = pack_scales(sm, lay)
                sbuf = dev.alloc(scales.nbytes)
                dev.write(sbuf, scales)
                self._s.append(sbuf)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_float(cls, w, *, bits=4, cluster: Cluster, job: int = 0):
        """Quantize ``w`` [out_features, in_features] as :meth:`Linear.from_float` does and split it."""
        if not isinstance(cluster, Cluster):
            raise TypeError(f"cluster must be a hbmforge.host.Cluster, got {type(cluster).__name__}")
        lay = cluster.layout
        fmt = engine_format(bits, lay, "bits")
        w = real_array("weights", w, ndim=(2,), what="2-D [out_features, in_features]")
        if 0 in w.shape:
            raise ValueError(f"weights must be [out_features, in_features] with both >= 1, got shape {w.shape}")
        kp = lay.matmul.pad_k(w.shape[1])
        enc = quantize_weights_encoded(w, fmt, lay.mm.group_size, lay.mm.scale_bits, k_padded=kp)
        return cls(cluster, enc.q, enc.mantissas, enc.row_scale, bits=fmt, in_features=w.shape[1], job=job)

    # -- the split ----------------------------------------------------------------------------
    def _partition(self) -> list[tuple[int, int]]:
        raise NotImplementedError

    def _shard(self, part: tuple[int, int]):
        raise NotImplementedError

    @staticmethod
    def _even(total: int, parts: int, align: int, what: str) -> list[tuple[int, int]]:
        if total // align < parts:
            raise ValueError(f"{what} {total} splits into at most {total // align} parts of {align}; the cluster "
                             f"has {parts} devices")
        return split_even(total, parts, align)

    # -- properties ------------------------------------------------------------------------------
    @property
    def in_features(self) -> int:
        return self._k

    @property
    def out_features(self) -> int:
        return self._n

    @property
    def parts(self) -> list[tuple[int, int]]:
        """Per device, the ``[start, end)`` of the split dimension it holds."""
        return list(self._parts)

    def out_shift_for(self, xq) -> int:
        """The single-device output shift for these int8 inputs (cannot saturate)."""
        xq = self._int_input(xq)
        bound = int(np.abs(xq.astype(np.int64)).max()) * self._max_col_l1
        return choose_out_shift(bound, self._lay.matmul.widths.max_out_shift)

    def _int_input(self, xq) -> np.ndarray:
        xq = int_array("xq", xq, -128, 127, ndim=(2,), what="an int8-valued integer array")
        if xq.shape[0] == 0 or xq.shape[1] not in (self._k, self._kp):
            raise ValueError(f"xq must be [M >= 1, {self._k}] (or [M, {self._kp}] padded), got shape {xq.shape}")
        out = np.zeros((xq.shape[0], self._kp), dtype=np.int8)
        out[:, :xq.shape[1]] = xq
        return out

    def golden_int(self, xq, *, out_shift: int | None = None) -> np.ndarray:
        """What one device computes (hbmforge.numerics): the reference of :meth:`forward_int`."""
        xq = self._int_input(xq)
        shift = self.out_shift_for(xq) if out_shift is None else out_shift
        return matmul_int32(xq, self._q, self._mant, self._lay.mm.group_size, shift)

    # -- running -----------------------------------------------------------------------------------
    def forward_int(self, xq, *, out_shift: int | None = None, timeout: float = 120.0) -> np.ndarray:
        """The int32 output [M, N] for int8 ``xq`` [M, K], every device's copy checked equal."""
        timeout = check_timeout(timeout)
        self._check_open()
        xq = self._int_input(xq)
        shift = self.out_shift_for(xq) if out_shift is None else check_int(
            "out_shift", out_shift, 0, self._lay.matmul.widths.max_out_shift)
        m = xq.shape[0]
        geom = self._lay.matmul
        if m > self._lay.mm.rows * 64:
            raise ValueError(f"M = {m} rows: give at most {self._lay.mm.rows * 64} rows per call")
        out_bytes = geom.out_bytes(m, self._n, OutMode.INT32)
        programs, bufs = {}, {}
        cl = self._cluster
        for d, dev in enumerate(cl.devices):
            x = self._x_part(xq, d)
            b = self._work[d].reserve({"x": max(geom.act_bytes(m, x.shape[1]), 1), "y": out_bytes})
            bufs[d] = b
            dev.write(b["x"], pack_activations(x, self._lay))
            if self.split == "column":
                dev.write(b["y"], np.zeros(out_bytes, np.uint8))
            programs[d] = self._program(d, dev, m, x.shape[1], shift, b)
        t0 = time.monotonic()
        run = cl.run_programs(programs, timeout=timeout)
        outs = [unpack_output(np.frombuffer(dev.read(bufs[d]["y"], out_bytes), np.uint8), m, self._n,
                              OutMode.INT32, self._lay) for d, dev in enumerate(cl.devices)]
        for d in range(1, len(outs)):
            if not np.array_equal(outs[d], outs[0]):
                raise RuntimeError(f"device {d} holds a different all-reduce result than device 0")
        self.last_run = TensorParallelRun(rows=m, out_shift=shift, exact=self.split == "column" or shift == 0,
                                          cycles=run.cycles, network_cycles=run.network_cycles,
                                          elapsed_s=time.monotonic() - t0, counters=run.counters)
        return outs[0]

    def __call__(self, x, *, timeout: float = 120.0) -> np.ndarray:
        """float32 ``x @ w.T`` for x [M, K] or [K]: per-token int8 activations, as one device does."""
        x = real_array("x", x, ndim=(1, 2), what=f"[M >= 1, in_features={self._k}] or [{self._k}]")
        squeeze = x.ndim == 1
        x2 = x[None, :] if squeeze else x
        if x2.shape[1] != self._k or x2.shape[0] == 0:
            raise ValueError(f"x must be [M >= 1, in_features={self._k}] or [{self._k}], got shape {x.shape}")
        aq = quantize_activations_per_token(x2)
        xq = self._int_input(aq.q)
        shift = self.out_shift_for(xq)
        yi = self.forward_int(xq, out_shift=shift, timeout=timeout)
        y = scale_product(yi, aq.scale[:, None], self._rs[None, :], exp=shift).astype(np.float32)
        return y[0] if squeeze else y

    def _program(self, d, dev, m, k_d, shift, b) -> ClusterProgram:
        raise NotImplementedError

    def _x_part(self, xq: np.ndarray, d: int) -> np.ndarray:
        raise NotImplementedError

    def _allreduce(self, prog: ClusterProgram, d: int, y, nbytes: int) -> None:
        cl = self._cluster
        prog.allreduce(y, mode=NetMode.SUM, job=self._job, worker=d, members=(1 << cl.size) - 1,
                       epoch=cl.epoch(self._job), window=cl.layout.config.engine("network").window,
                       timeout=cl.timeout_cycles, retries=cl.retries, inflight=cl.inflight, nbytes=nbytes)

    def _check_open(self) -> None:
        if not self._s:
            raise ValueError(f"this {type(self).__name__} was closed; its weights are no longer on the devices")
        self._cluster._check_open()

    def close(self) -> None:
        """Free the layer's device buffers on every device."""
        for d, dev in enumerate(self._cluster.devices):
            if dev.closed:
                continue
            for buf in (self._w[d] if d < len(self._w) else []) + ([self._s[d]] if d < len(self._s) else []):
                if not buf.freed:
                    dev.free(buf)
            self._work[d].close() if d < len(self._work) else None
        self._w, self._s = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(in_features={self._k}, out_features={self._n}, bits={self._bits}, "
                f"devices={self._cluster.size})")


class ColumnParallelLinear(_TensorParallel):
    """Output columns split across the devices; the all-reduce gathers them (bit-exact)."""

    split = "column"

    def _partition(self):
        lay = self._lay
        rows, word = lay.mm.rows, lay.word_bytes
        align = max(1, word // np.gcd(word, rows * 4))          # columns whose blocked output fills whole words
        if (self._n * rows * 4) % word and self._n > align:
            align = self._n                                     # one device would hold it all: refuse below
        return self._even(self._n, self._cluster.size, align, "out_features")

    def _shard(self, part):
        n0, n1 = part
        return self._q[n0:n1], self._mant[n0:n1]

    def _x_part(self, xq, d):
        return xq

    def _program(self, d, dev, m, k_d, shift, b) -> ClusterProgram:
        lay, geom = self._lay, self._lay.matmul
        rows = lay.mm.rows
        n0, n1 = self._parts[d]
        prog = ClusterProgram(dev)
        for blk in range(geom.row_blocks(m)):                   # each row block where it goes in the full output
            mb = min(rows, m - blk * rows)
            y_addr = b["y"].address + (blk * self._n + n0) * rows * 4
            x_addr = b["x"].address + blk * rows * self._kp
            prog.matmul(m=mb, k=self._kp, n=n1 - n0, wbits=self._bits, x=x_addr, s=self._s[d], y=y_addr,
                        w=self._w[d], out_mode="int32", out_shift=shift)
        self._allreduce(prog, d, b["y"], geom.out_bytes(m, self._n, OutMode.INT32))
        return prog


class RowParallelLinear(_TensorParallel):
    """Input features split across the devices; the all-reduce sums the int32 partials."""

    split = "row"

    def _partition(self):
        return self._even(self._kp, self._cluster.size, self._lay.matmul.k_align, "in_features (padded)")

    def _shard(self, part):
        k0, k1 = part
        g = self._lay.mm.group_size
        return self._q[:, k0:k1], self._mant[:, k0 // g:k1 // g]

    def _x_part(self, xq, d):
        k0, k1 = self._parts[d]
        return np.ascontiguousarray(xq[:, k0:k1])

    def _program(self, d, dev, m, k_d, shift, b) -> ClusterProgram:
        prog = ClusterProgram(dev)
        prog.matmul(m=m, k=k_d, n=self._n, wbits=self._bits, x=b["x"], s=self._s[d], y=b["y"], w=self._w[d],
                    out_mode="int32", out_shift=shift)
        self._allreduce(prog, d, b["y"], self._lay.matmul.out_bytes(m, self._n, OutMode.INT32))
        return prog

    def golden_int(self, xq, *, out_shift: int | None = None) -> np.ndarray:
        """What the devices compute: each K slice rounded with the shift on its own, then summed
        (modulo 2**32). Equal to one device's result when the shift is 0."""
        xq = self._int_input(xq)
        shift = self.out_shift_for(xq) if out_shift is None else out_shift
        g = self._lay.mm.group_size
        total = np.zeros((xq.shape[0], self._n), dtype=np.int64)
        for k0, k1 in self._parts:
            part = matmul_int32(xq[:, k0:k1], self._q[:, k0:k1], self._mant[:, k0 // g:k1 // g], g, shift)
            total += part
        return ((total + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)
