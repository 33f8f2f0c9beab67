"""Clusters of devices joined by the aggregation switch: all-reduce from Python.

    from hbmforge.host import open_cluster
    with open_cluster("my.yaml", devices=4) as cluster:        # 4 co-simulated kernels + the switch
        out = cluster.allreduce([x0, x1, x2, x3])                # int32 or float32 arrays, one per device
        cluster.allreduce([buf0, buf1, buf2, buf3])              # device Buffers: reduced in place

Every device runs one ALLREDUCE descriptor (docs/engines/network.md); the switch reduces the
packets of every device and multicasts the result. Integers are summed modulo 2**32 (or
``op="max"``); float32 arrays go through a per-block exponent the hosts agree on first (a MAX
all-reduce of the exponents, then an integer SUM: the result is the same bits on every device
and for every arrival order, :func:`hbmforge.numerics.network.float_allreduce_reference`).

Every argument is checked before anything is written to a device. A failed all-reduce (a
device that never joins, a job held by another member set) raises :class:`ClusterError` naming
the cause and the devices, leaves every input as it was, and resets the job (a new epoch) so
the cluster stays usable.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from hbmforge.encodings import ErrorCode, NetMode, Opcode
from hbmforge.engines.network import MAX_RETRIES, MAX_TIMEOUT, EndpointGeometry, SwitchGeometry
from hbmforge.mathutil import ceil_div

from .checks import check_choice, check_int, check_timeout
from .device import Buffer, Device, merge_counters
from .errors import DeviceError, DeviceRunError, DeviceTimeoutError
from .program import ProgramBuilder
from .workspace import Workspace

__all__ = ["open_cluster", "default_inflight", "Cluster", "ClusterError", "ClusterProgram", "AllreduceRun", "OPS"]

OPS = {"sum": NetMode.SUM, "max": NetMode.MAX}
_NET_COUNTERS = ("NET_PACKETS", "NET_RETRANSMITS", "NET_RESULTS", "NET_DUPLICATES", "NET_BAD_PACKETS")


class ClusterError(DeviceError):
    """An all-reduce failed on the devices (``code``: the ErrorCode; ``missing``: devices that never
    joined, when the switch told; ``devices``: the devices that reported it)."""

    def __init__(self, message: str, *, code: int, devices: Sequence[int] = (), missing: Sequence[int] = ()):
        super().__init__(message)
        self.code = code
        self.devices = tuple(devices)
        self.missing = tuple(missing)


@dataclass
class AllreduceRun:
    """What the last all-reduce cost."""

    bytes: int = 0                       # bytes reduced per device
    cycles: int = 0                      # the slowest device's CYCLES
    network_cycles: int = 0              # network clock from the first start to the last done
    elapsed_s: float = 0.0
    counters: dict = field(default_factory=dict)     # NET_* summed over the devices
    links: list = field(default_factory=list)        # per device, up/down link statistics (deltas)
    switch: dict = field(default_factory=dict)       # switch counters (deltas)


class ClusterProgram(ProgramBuilder):
    """A ProgramBuilder that also writes ALLREDUCE descriptors (checked with the kernel's rules)."""

    def allreduce(self, target, *, mode: int, job: int, worker: int, members: int, epoch: int, window: int,
                  timeout: int, retries: int, inflight: int | None = None, nbytes: int | None = None) -> int:
        """Append one ALLREDUCE of ``target`` (a data-port Buffer or an address; ``nbytes`` defaults
        to the Buffer's size)."""
        self._need(Opcode.ALLREDUCE, "a network engine")
        if nbytes is None:
            if not isinstance(target, Buffer):
                raise ValueError("nbytes is required when the target is an address")
            nbytes = target.nbytes
        rec = {"op": Opcode.ALLREDUCE, "mode": int(mode), "job": job, "worker": worker, "members": members,
               "epoch": epoch, "addr": self._address("buffer", target) if mode != NetMode.RESET else 0,
               "bytes": nbytes if mode != NetMode.RESET else 0, "window": window,
               "inflight": window if inflight is None else inflight, "timeout": timeout, "retries": retries}
        self._validate(rec)
        self._check_buffer("buffer", target, "data", nbytes)
        return self._append(rec)


def _ids(mask: int) -> list[int]:
    return [i for i in range(64) if mask >> i & 1]


class Cluster:
    """N devices of one design joined by the switch (build one with :func:`open_cluster`).

    ``devices[i]`` is worker ``i`` (switch port ``i``). ``timeout_cycles`` and ``retries`` are
    the endpoint's retransmission timer and limit for every all-reduce, ``inflight`` the blocks
    each device keeps in flight (about the links' bandwidth-delay product).
    """

    def __init__(self, devices: Sequence[Device], sim, switch: SwitchGeometry, *, timeout_cycles: int,
                 retries: int, inflight: int | None = None):
        self._devs = list(devices)
        self._sim = sim
        self._switch = switch
        self._layout = self._devs[0].layout
        self._geom = EndpointGeometry.of(self._layout)
        self.timeout_cycles = check_int("timeout_cycles", timeout_cycles, 1, MAX_TIMEOUT)
        self.retries = check_int("retries", retries, 1, MAX_RETRIES)
        self.inflight = self._geom.window if inflight is None else check_int("inflight", inflight, 1,
                                                                              self._geom.window)
        self._epochs = [0] * self._geom.jobs
        self._work = [Workspace(d) for d in self._devs]
        self._closed = False
        self.last_run: AllreduceRun | None = None

    # -- properties ------------------------------------------------------------------------
    @property
    def devices(self) -> list[Device]:
        return list(self._devs)

    @property
    def size(self) -> int:
        return len(self._devs)

    def __len__(self) -> int:
        return len(self._devs)

    def __getitem__(self, i: int) -> Device:
        return self._devs[i]

    @property
    def layout(self):
        return self._layout

    @property
    def switch(self) -> SwitchGeometry:
        return self._switch

    @property
    def sim(self):
        """The :class:`hbmforge.sim.network.ClusterSim` (link statistics, switch counters)."""
        return self._sim

    @property
    def word_bytes(self) -> int:
        return self._layout.word_bytes

    @property
    def jobs(self) -> int:
        return self._geom.jobs

    def epoch(self, job: int) -> int:
        return self._epochs[check_int("job", job, 0, self.jobs - 1)]

    # -- all-reduce ------------------------------------------------------------------------
    def allreduce(self, buffers, *, op: str = "sum", job: int = 0, window: int | None = None,
                  timeout: float = 120.0):
        """All-reduce one buffer per device. ``buffers``: device Buffers (``buffers[i]`` on device
        ``i``; reduced in place; returns None) or arrays of one dtype and shape (int32: sum modulo
        2**32 or max; float32: sum through per-block exponents; returns the reduced arrays)."""
        self._check_open()
        op = check_choice("op", op, tuple(OPS))
        timeout = check_timeout(timeout)
        items = self._sequence(buffers)
        if all(isinstance(b, Buffer) for b in items):
            bufs = dict(enumerate(items))
            self._check_buffers(bufs)
            self.run_allreduce(bufs, op=op, job=job, window=window, timeout=timeout)
            return None
        if any(isinstance(b, Buffer) for b in items):
            raise TypeError("buffers must be all device Buffers or all arrays, not a mix")
        arrays = self._check_arrays(items, op)
        if arrays[0].dtype == np.float32:
            return self._float_allreduce(arrays, job=job, window=window, timeout=timeout)
        return self._int_allreduce(arrays, op=op, job=job, window=window, timeout=timeout)

    def run_allreduce(self, buffers: Mapping[int, Buffer], *, members: Sequence[int] | None = None,
                      op: str = "sum", job: int = 0, window: int | None = None, timeout: float = 120.0,
                      groups: Sequence[Mapping] = ()) -> AllreduceRun:
        """The all-reduce of ``buffers`` (device index -> Buffer, reduced in place) as job ``job``
        with ``members`` (default: the devices given; a member without a buffer never joins, and
        the others fail naming it). ``groups``: further concurrent all-reduces, each a mapping
        with ``buffers`` and optionally ``members``, ``op``, ``job`` (each needs its own job id)."""
        self._check_open()
        timeout = check_timeout(timeout)
        specs = [dict(buffers=buffers, members=members, op=op, job=job)] + [dict(g) for g in groups]
        plans = [self._plan(i, s, window) for i, s in enumerate(specs)]
        jobs = [p["job"] for p in plans]
        for a in range(len(plans)):
            for b in range(a):
                if jobs[a] == jobs[b]:
                    raise ValueError(f"job id collision: groups {b} and {a} both use job {jobs[a]}; "
                                     "concurrent all-reduces need their own job ids")
                shared = set(plans[a]["members"]) & set(plans[b]["members"])
                if shared:
                    raise ValueError(f"devices {sorted(shared)} are in groups {b} and {a}; a device runs one "
                                     "all-reduce at a time")
        programs = {}
        for p in plans:
            for dev, buf in p["buffers"].items():
                prog = ClusterProgram(self._devs[dev])
                prog.allreduce(buf, mode=p["mode"], job=p["job"], worker=dev, members=p["mask"],
                               epoch=self._epochs[p["job"]], window=p["window"], timeout=self.timeout_cycles,
                               retries=self.retries, inflight=min(self.inflight, p["window"]))
                programs[dev] = prog
        blocks = max(self._geom.blocks(p["nbytes"]) for p in plans)
        budget = (self.retries + 2) * self.timeout_cycles * (blocks + 2)
        try:
            run = self.run_programs(programs, max_cycles=budget, timeout=timeout)
        except ClusterError as err:
            for p in plans:
                self._recover(p["job"], timeout)
            raise err from None
        run.bytes = max(p["nbytes"] for p in plans)
        self.last_run = run
        return run

    def reset_job(self, job: int, *, timeout: float = 60.0) -> int:
        """Give ``job`` a new epoch on the switch and clear its slot rounds on every device (what a
        failed all-reduce does by itself); returns the new epoch."""
        self._check_open()
        job = check_int("job", job, 0, self.jobs - 1)
        timeout = check_timeout(timeout)
        epoch = (self._epochs[job] + 1) % 256
        mask = (1 << self.size) - 1
        programs = {}
        for i, dev in enumerate(self._devs):
            prog = ClusterProgram(dev)
            prog.allreduce(0, mode=NetMode.RESET, job=job, worker=i, members=mask, epoch=epoch, window=1,
                           timeout=self.timeout_cycles, retries=self.retries, nbytes=0)
            programs[i] = prog
        self.run_programs(programs, max_cycles=(self.retries + 2) * self.timeout_cycles + 100_000, timeout=timeout)
        self._epochs[job] = epoch
        return epoch

    # -- internals ---------------------------------------------------------------------------
    def _sequence(self, buffers) -> list:
        if isinstance(buffers, (Buffer, np.ndarray)) or not isinstance(buffers, Sequence):
            raise TypeError(f"buffers must be a list with one Buffer or array per device ({self.size}), "
                            f"got {type(buffers).__name__}")
        if len(buffers) != self.size:
            raise ValueError(f"give one buffer per device: the cluster has {self.size}, got {len(buffers)}")
        return list(buffers)

    def _check_buffers(self, bufs: Mapping[int, Buffer]) -> int:
        sizes = set()
        for i, buf in bufs.items():
            if not isinstance(buf, Buffer):
                raise TypeError(f"buffers[{i}] must be a Buffer of device {i}, got {type(buf).__name__}")
            if buf.device is not self._devs[i]:
                raise ValueError(f"buffers[{i}] belongs to another device; buffers[i] must be on cluster device {i}")
            if buf.freed:
                raise ValueError(f"buffers[{i}] was freed")
            if buf.port != "data":
                raise ValueError(f"buffers[{i}] is on port {buf.port!r}; all-reduce buffers live on the 'data' port")
            sizes.add(buf.nbytes)
        if len(sizes) > 1:
            raise ValueError(f"buffer sizes differ across devices: {sorted(sizes)} bytes; every device must "
                             "reduce the same number of bytes")
        nbytes = sizes.pop()
        if nbytes % self.word_bytes:
            raise ValueError(f"buffer size {nbytes} is not a whole number of {self.word_bytes}-byte words")
        return nbytes

    def _check_arrays(self, items: list, op: str) -> list[np.ndarray]:
        arrays = []
        for i, x in enumerate(items):
            if not isinstance(x, np.ndarray):
                raise TypeError(f"buffers[{i}] must be a NumPy array or a Buffer, got {type(x).__name__}")
            arrays.append(x)
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise TypeError(f"dtypes differ across devices: {sorted(str(d) for d in dtypes)}; give one dtype")
        dtype = arrays[0].dtype
        if dtype not in (np.dtype(np.int32), np.dtype(np.float32)):
            raise TypeError(f"arrays must be int32 or float32, got {dtype}")
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"shapes differ across devices: {sorted(shapes)}; every device reduces the same shape")
        if arrays[0].size == 0:
            raise ValueError("the arrays are empty")
        if dtype == np.float32:
            if op != "sum":
                raise ValueError("float32 all-reduce sums (op='sum'); use int32 arrays for op='max'")
            for i, a in enumerate(arrays):
                if not np.all(np.isfinite(a)):
                    raise ValueError(f"buffers[{i}] holds non-finite values (inf or nan)")
        return arrays

    def _plan(self, index: int, spec: Mapping, window: int | None) -> dict:
        where = "" if index == 0 else f"groups[{index - 1}]: "
        bufs = spec.get("buffers")
        if not isinstance(bufs, Mapping) or not bufs:
            raise TypeError(f"{where}buffers must map device indexes to Buffers")
        bufs = {check_int(f"{where}device index", k, 0, self.size - 1): v for k, v in bufs.items()}
        nbytes = self._check_buffers(bufs)
        members = spec.get("members")
        members = sorted(bufs) if members is None else members
        if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or not members:
            raise TypeError(f"{where}members must be a non-empty list of device indexes")
        members = sorted({check_int(f"{where}member", m, 0, self.size - 1) for m in members})
        extra = sorted(set(bufs) - set(members))
        if extra:
            raise ValueError(f"{where}devices {extra} have buffers but are not members")
        op = check_choice(f"{where}op", spec.get("op", "sum"), tuple(OPS))
        job = check_int(f"{where}job", spec.get("job", 0), 0, self.jobs - 1)
        win = self._geom.window if window is None else check_int("window", window, 1, self._geom.window)
        return {"buffers": bufs, "members": members, "mask": sum(1 << m for m in members), "mode": OPS[op],
                "job": job, "window": win, "nbytes": nbytes}

    def _int_allreduce(self, arrays: list[np.ndarray], *, op: str, job: int, window, timeout) -> list[np.ndarray]:
        flat = [np.ascontiguousarray(a, dtype=np.int32).reshape(-1) for a in arrays]
        lanes = self.word_bytes // 4
        padded = ceil_div(flat[0].size, lanes) * lanes
        bufs = {i: self._work[i].get("allreduce", padded * 4) for i in range(self.size)}
        for i, a in enumerate(flat):
            data = np.zeros(padded, np.int32)
            data[:a.size] = a
            self._devs[i].write(bufs[i], data)
        nbytes = padded * 4
        self.run_allreduce({i: _View(b, nbytes) for i, b in bufs.items()}, op=op, job=job, window=window,
                           timeout=timeout)
        out = []
        for i, a in enumerate(arrays):
            got = np.frombuffer(self._devs[i].read(bufs[i], nbytes), np.int32)[:a.size]
            out.append(got.reshape(a.shape).copy())
        return out

    def _float_allreduce(self, arrays: list[np.ndarray], *, job: int, window, timeout) -> list[np.ndarray]:
        from hbmforge.numerics.network import block_exponents

        block = self._geom.packet_words * self.word_bytes // 4
        n = self.size
        exps = [block_exponents(a, block) for a in arrays]
        common = self._int_allreduce(exps, op="max", job=job, window=window, timeout=timeout)[0]
        head = max(1, math.ceil(math.log2(n))) if n > 1 else 0
        scale = np.repeat(np.ldexp(1.0, (30 - head - common.astype(np.int64))), block)[:arrays[0].size]
        q = [np.rint(a.reshape(-1).astype(np.float64) * scale).astype(np.int64).astype(np.int32) for a in arrays]
        total = self._int_allreduce(q, op="sum", job=job, window=window, timeout=timeout)
        return [(t.astype(np.float64) / scale).astype(np.float32).reshape(a.shape) for t, a in zip(total, arrays)]

    def run_programs(self, programs: Mapping[int, ProgramBuilder], *, max_cycles: int = 1 << 40,
                     timeout: float = 120.0) -> AllreduceRun:
        """Upload every device's program (device index -> ProgramBuilder), start them all, run the
        devices and the network until each is done (or ``max_cycles`` network cycles, or ``timeout``
        seconds), and check every device's status (a failed all-reduce raises ClusterError)."""
        self._check_open()
        timeout = check_timeout(timeout)
        t0 = time.monotonic()
        for i in programs:
            if self._devs[i].running:
                raise DeviceError(f"device {i} is still running another program")
        bufs = {i: self._work[i].get("program", prog.nbytes) for i, prog in programs.items()}
        links0 = self._sim.link_stats()
        switch0 = self._sim.switch_counters()
        net0 = self._sim.now()
        for i, prog in programs.items():
            self._devs[i].write(bufs[i], prog.to_bytes())
        for i, prog in programs.items():
            self._devs[i].start(bufs[i], len(prog))
        done = self._sim.run(max_cycles, wait=sorted(programs), timeout=timeout)
        statuses, failures = {}, {}
        for i in programs:
            dev = self._devs[i]
            if i not in done:
                failures[i] = None
                continue
            try:
                statuses[i] = dev.wait(timeout=timeout)
            except DeviceRunError as err:
                failures[i] = err
        run = AllreduceRun(network_cycles=self._sim.now() - net0, elapsed_s=time.monotonic() - t0)
        run.cycles = max((s.cycles for s in statuses.values()), default=0)
        for i in programs:                       # the NET_* counters restart with every run
            run.counters = merge_counters(run.counters, self._net_counters(i))
        links1 = self._sim.link_stats()
        run.links = [{d: {k: links1[i][d][k] - links0[i][d][k] for k in links1[i][d]} for d in ("up", "down")}
                     for i in range(self.size)]
        switch1 = self._sim.switch_counters()
        run.switch = {k: switch1[k] - switch0[k] for k in switch1}
        if failures:
            self._raise(failures, programs)
        return run

    def _net_counters(self, i: int) -> dict:
        return {k: self._devs[i].read_reg(k) for k in _NET_COUNTERS}

    def _raise(self, failures: dict, programs: Mapping) -> None:
        hung = [i for i, e in failures.items() if e is None]
        if hung:
            for i in hung:                      # the device still runs: let it finish (it will time out)
                try:
                    self._devs[i].wait(timeout=60.0)
                except (DeviceRunError, DeviceTimeoutError):
                    pass
            raise ClusterError(f"devices {hung} did not finish their all-reduce in time", code=ErrorCode.NET_TIMEOUT,
                               devices=hung)
        codes = {i: e.code for i, e in failures.items()}
        code = min(codes.values())
        names = self._layout.error_names
        if code == ErrorCode.NET_TIMEOUT:
            members = 0
            heard = 0
            for i in failures:
                for d in programs[i].descriptors:
                    if d["op"] == Opcode.ALLREDUCE:
                        members |= d["members"]
                heard |= self._devs[i].read_reg("NET_HEARD")
            if heard and members & ~heard == 0:
                raise ClusterError(
                    f"all-reduce failed: the switch heard from every member {_ids(heard)}, but devices "
                    f"{sorted(failures)} got no result after {self.retries} retransmissions of {self.timeout_cycles} "
                    f"cycles ({ErrorCode(code).name}): a member fell more than that behind (a long computation "
                    f"before its all-reduce?) or the links drop too much", code=code, devices=sorted(failures))
            if heard:
                missing = _ids(members & ~heard)
                raise ClusterError(
                    f"all-reduce failed: device(s) {missing} never joined the job (the switch heard from "
                    f"{_ids(heard)}); devices {sorted(failures)} stopped after {self.retries} retransmissions "
                    f"of {self.timeout_cycles} cycles ({ErrorCode(code).name})", code=code, devices=sorted(failures),
                    missing=missing)
            raise ClusterError(f"all-reduce failed: devices {sorted(failures)} got no answer from the switch after "
                               f"{self.retries} retransmissions ({ErrorCode(code).name})", code=code,
                               devices=sorted(failures))
        raise ClusterError(f"all-reduce failed on devices {sorted(failures)}: {names.get(code, code)} "
                           f"({ErrorCode(code).name}, error code {code})", code=code, devices=sorted(failures))

    def _recover(self, job: int, timeout: float) -> None:
        """After a failure every member's rounds may differ from the switch's: a new epoch for the job."""
        try:
            self.reset_job(job, timeout=timeout)
        except (ClusterError, DeviceError):
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError("the cluster was closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._work:
            w.close()
        self._sim.close()
        for d in self._devs:
            d.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.size} devices"
        return f"<Cluster {self._layout.kernel!r} ({state}, {self._switch.ports}-port switch)>"


class _View(Buffer):
    """The first ``nbytes`` of a workspace buffer (so a descriptor reduces just those)."""

    __slots__ = ()

    def __init__(self, buf: Buffer, nbytes: int):
        super().__init__(buf.device, buf.port, buf.bank, buf.address, nbytes, buf.handle)


def default_inflight(window: int, latency: float, packet_cycles: float, devices: int, packet_words: int) -> int:
    """Blocks each device keeps in flight by default: about 1.5 round trips of the links plus the
    switch's skew, and 4 more, at most ``window``. The skew: every member's packet of a block is
    reduced by the one unit of its slot, one after the other (``packet_words + 2`` cycles each), so
    a round completes ``(devices - 1)`` unit periods after its first packet arrived (238 cycles at
    8 devices and 32-word packets): without it the answers of 8 devices came late enough to leave
    the feeders waiting on ``inflight`` (co-simulated at 1% loss, 8 devices: 23 -> 30 gave
    0.7188 / 0.6674 -> 0.7471 / 0.7081 for seeds 1, 2)."""
    skew = (max(devices, 1) - 1) * (packet_words + 2)
    return min(window, max(2, math.ceil((1.5 * 2 * latency + skew) / packet_cycles) + 4))


def open_cluster(config_or_path, devices: int = 2, *, backend: str = "sim", link=None, up=None, down=None,
                 seed: int = 0, switch: Mapping | None = None, timeout_cycles: int | None = None,
                 retries: int = 20, inflight: int | None = None, progress: bool = True,
                 **device_options) -> Cluster:
    """``devices`` co-simulated devices of one design (it needs a ``kind: network`` engine) joined by
    an aggregation switch with one port per device.

    ``link`` / ``up`` / ``down``: :class:`hbmforge.sim.network.Link` (rate, latency, faults) for
    every direction, or per device lists; ``seed``: the faults' seed; ``switch``: SwitchGeometry
    fields to override (``rx_packets``, ``units`` ...); ``inflight``: blocks each device keeps in
    flight (default: :func:`default_inflight`, about 1.5 round trips of the links plus the
    switch's skew, at most the window); ``timeout_cycles``:
    the endpoints' retransmission timer (default: four loaded round trips; lost packets are
    recovered sooner, on the answer time the endpoints measure). ``device_options``
    go to every device (sim backend options).
    """
    from hbmforge.sim.network import Link

    from .open import _check_sim_options, _layout, _prebuilt_design

    if backend != "sim":
        raise ValueError(f"clusters run on the sim backend (a co-simulated switch joins the devices); "
                         f"got backend {backend!r}")
    devices = check_int("devices", devices, 1, 16)
    link = Link() if link is None else link
    for name, value in (("link", link), ("up", up), ("down", down)):
        if value is None:
            continue
        vals = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, Link) for v in vals) or (isinstance(value, (list, tuple)) and len(vals) != devices):
            raise TypeError(f"{name} must be a hbmforge.sim.network.Link or a list of {devices} of them")
    seed = check_int("seed", seed, 0, (1 << 63) - 1)
    retries = check_int("retries", retries, 1, MAX_RETRIES)
    if switch is not None and not isinstance(switch, Mapping):
        raise TypeError(f"switch must be a mapping of SwitchGeometry fields, got {type(switch).__name__}")
    options = _check_sim_options(dict(device_options, progress=progress))
    design = _prebuilt_design(config_or_path)
    layout = _layout(config_or_path) if design is None else None
    if layout is None:
        from hbmforge.manifest import read_manifest

        layout = read_manifest(design).layout
    if layout.config.engine("network") is None:
        raise ValueError(f"design {layout.kernel!r} has no network engine; add `- kind: network` to its engines "
                         "to join it to a cluster")
    geom = SwitchGeometry.for_endpoint(layout, max(2, devices), **dict(switch or {}))
    ups = up if up is not None else link
    downs = down if down is not None else link
    lats = [l.latency for l in (ups if isinstance(ups, (list, tuple)) else [ups])] + \
        [l.latency for l in (downs if isinstance(downs, (list, tuple)) else [downs])]
    rates = [l.bytes_per_cycle for l in (ups if isinstance(ups, (list, tuple)) else [ups])]
    packet_cycles = (geom.header_beats + geom.packet_words) * geom.word_bytes / min(rates)
    window = layout.config.engine("network").window
    if inflight is None:
        inflight = default_inflight(window, max(lats), packet_cycles, devices, geom.packet_words)
    inflight = check_int("inflight", inflight, 1, window)
    if timeout_cycles is None:
        # a safety net and NET_TIMEOUT's clock, not the loss recovery (the endpoints probe and
        # resend on their measured answer time): four loaded round trips, so a late answer under
        # load (a lagging member, the switch's output bus) is never taken for a loss
        timeout_cycles = int(4 * (inflight * packet_cycles + 2 * max(lats)) + 500)
    timeout_cycles = check_int("timeout_cycles", timeout_cycles, 1, MAX_TIMEOUT)

    from hbmforge.flows.network import switch_library
    from hbmforge.sim.build import BuildOptions, build_library
    from hbmforge.sim.cosim import CoSim
    from hbmforge.sim.network import ClusterSim

    from .backends.sim import SimDevice, check_sim_device_options

    progress = options.pop("progress", True)
    build_options = options.pop("build_options", None) or BuildOptions()
    check_sim_device_options(**options)
    if design is None:
        from hbmforge.flows.design_cache import cached_design

        design = cached_design(layout)
    result = build_library(design, options=build_options, progress=progress)
    lib = switch_library(geom, progress=progress)
    devs: list[Device] = []
    try:
        for _ in range(devices):
            devs.append(SimDevice(design, CoSim.from_build(result), **options))
        sim = ClusterSim(lib, [d.sim for d in devs], up=ups, down=downs, seed=seed)
    except BaseException:
        for d in devs:
            d.close()
        raise
    return Cluster(devs, sim, geom, timeout_cycles=timeout_cycles, retries=retries, inflight=inflight)
