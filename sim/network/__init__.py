"""The multi-device co-simulation: N device libraries and the aggregation switch joined by links.

Why several libraries joined by a C++ network model rather than one Verilator model of a
cluster top: every device stays the ordinary single-device library (built once per design,
loaded N times, driven by the ordinary host ``Device``), so a cluster needs no new kernel
build and no new host protocol; the switch is a second, small library that also holds the
network model (net_model.cpp). The model steps every library through its C functions (by
pointer, no Python per cycle) in quanta no longer than the shortest link latency, which is
exact: a beat cannot reach another node within the quantum it was sent in.

Links: per direction a latency (cycles) and seeded faults (Bernoulli or Gilbert-Elliott loss,
duplicates, hold-back that reorders), per packet; their rate is the transmit side's pacing
(bytes per cycle). The same seed gives the same run.
"""
from __future__ import annotations

import ctypes
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import jinja2

from hbmforge.engines.network import SwitchGeometry

from ..build import _LDFLAGS, BuildError, BuildOptions, _compiler_id, _run
from ..cache import BuildCache, content_key
from ..progress import StageProgress
from ..runtime_cache import runtime_key, save_runtime, seed_runtime
from ..verilator import find_verilator

__all__ = ["Link", "ClusterSim", "build_switch_library", "network_dir", "NetworkSimError"]

_KEY_VERSION = "switch-build-1"
_SOURCES = ("net_model.cpp", "switch_ports.h.j2")


class NetworkSimError(RuntimeError):
    """The switch library could not be built, loaded or driven."""


def network_dir() -> Path:
    return Path(__file__).resolve().parent


def _harness_dir() -> Path:
    return network_dir().parent / "harness"


@dataclass(frozen=True)
class Link:
    """One direction of a device's link to the switch (see ``hbmforge.numerics.network.LinkParams``,
    the golden model's twin): ``bytes_per_cycle`` (the sender's pacing), ``latency`` (cycles),
    ``loss`` (Bernoulli) or ``burst = (p_good_to_bad, p_bad_to_good, loss_good, loss_bad)``
    (Gilbert-Elliott, one step per packet), ``duplicate``, ``reorder`` (held back by
    1..``reorder_cycles``)."""

    bytes_per_cycle: float = 8.0
    latency: int = 100
    loss: float = 0.0
    burst: tuple | None = None
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_cycles: int = 200
    buffer_beats: int = 4

    def __post_init__(self):
        from hbmforge.numerics.network import LinkParams

        LinkParams(self.bytes_per_cycle, self.latency, self.loss, self.burst, self.duplicate, self.reorder,
                   self.reorder_cycles)                                    # the same checks
        if isinstance(self.buffer_beats, bool) or not isinstance(self.buffer_beats, int) or self.buffer_beats < 1:
            raise ValueError(f"buffer_beats must be an int >= 1, got {self.buffer_beats!r}")


def render_switch_header(geom: SwitchGeometry, top: str) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(network_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("switch_ports.h.j2").render(
        geometry=json.dumps(geom.to_json(), sort_keys=True), top=top, ports=geom.ports,
        data_width=geom.data_width, counters=list(geom.counter_names))


def build_switch_library(verilog: str | Path, top: str, geom: SwitchGeometry, *, progress: bool = True,
                         options: BuildOptions | None = None, cache: BuildCache | None = None,
                         lock_timeout: float | None = 3600) -> Path:
    """The shared library of the switch's RTL (``verilog``, top module ``top``) and the network
    model; built with Verilator if not cached (keyed by the RTL, the sources and the options)."""
    verilog = Path(verilog).resolve()
    if not verilog.is_file():
        raise FileNotFoundError(f"switch RTL {verilog} does not exist")
    options = (options or BuildOptions()).for_rtl(verilog.stat().st_size)
    install = find_verilator()
    header = render_switch_header(geom, top)
    key = content_key([_KEY_VERSION, verilog, *(network_dir() / n for n in _SOURCES),
                       _harness_dir() / "hbf_stream.h", header, install.version_str, _compiler_id(),
                       json.dumps(options.to_json(), sort_keys=True)])
    cache = cache or BuildCache("switch")
    prog = StageProgress(f"switch {top}", enabled=progress)
    name = f"libhbfnet_{top}.so"

    def build(out: Path) -> None:
        gen, obj = out / "gen", out / "obj"
        gen.mkdir()
        (gen / "switch_ports.h").write_text(header)
        (out / "geometry.json").write_text(json.dumps(geom.to_json(), indent=1))
        cflags = ["-fPIC", "-fvisibility=hidden", "-fvisibility-inlines-hidden", f"-I{_harness_dir()}",
                  f"-I{network_dir()}", f"-I{gen}", "-DHBF_TRACE=0", "-DHBF_TRACE_FST=0"]
        vcmd = [str(install.executable), "--cc", "--exe", "--top-module", top, "--prefix", "Vswitch",
                "-Mdir", str(obj), "-o", str(out / name), *options.verilator_flags(),
                "-CFLAGS", " ".join(cflags), "-LDFLAGS", _LDFLAGS, str(verilog), str(network_dir() / "net_model.cpp")]
        env = install.env()
        log_path = out / "build.log"
        # Verilator's runtime objects, shared with the device builds (same compiler, flags, options)
        rt_key = runtime_key(install.describe(), _compiler_id(), options.opt_runtime, "None",
                             " ".join(c for c in cflags if not c.startswith("-I")))
        with open(log_path, "w") as log:
            with prog.stage("verilate"):
                _run(vcmd, env, log, log_path, cache, top)
            seeded = seed_runtime(obj, rt_key, cache.dir.parent)
            mcmd = ["make", f"-j{options.jobs}", "-C", str(obj), "-f", "Vswitch.mk", f"OPT_FAST={options.opt}",
                    f"OPT_SLOW={options.opt_slow}", f"OPT_GLOBAL={options.opt_runtime}", "VM_TRACE=0",
                    *install.make_overrides()]
            with prog.stage("compile and link"):
                _run(mcmd, env, log, log_path, cache, top)
        if not (out / name).exists():
            raise BuildError(f"build of switch {top} produced no {name}; see {log_path}")
        if not seeded:
            save_runtime(obj, rt_key, cache.dir.parent)
        shutil.rmtree(obj, ignore_errors=True)

    entry = cache.get_or_build(top, key, build, lock_timeout=lock_timeout,
                               metadata={"top": top, "geometry": geom.to_json()})
    return entry.path / name


_LIBS: dict[str, ctypes.CDLL] = {}


def _load(path: Path) -> ctypes.CDLL:
    key = str(Path(path).resolve())
    if key in _LIBS:
        return _LIBS[key]
    try:
        lib = ctypes.CDLL(key, mode=ctypes.RTLD_LOCAL)
    except OSError as e:
        raise NetworkSimError(f"cannot load switch library {key}: {e}") from e
    vp, u64, i32, dbl, u32 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_double, ctypes.c_uint32
    sigs = {
        "hbn_ports": ([], i32), "hbn_word_bytes": ([], i32), "hbn_num_counters": ([], i32),
        "hbn_counter_name": ([i32], ctypes.c_char_p),
        "hbn_create": ([i32, u64], vp), "hbn_destroy": ([vp], None),
        "hbn_attach": ([vp, i32, vp, vp, vp, vp, vp, vp, i32, i32], i32),
        "hbn_set_link": ([vp, i32, i32, u32, dbl, i32, dbl, dbl, dbl, dbl, dbl, dbl, u32], i32),
        "hbn_switch_stream_config": ([vp, i32, dbl, u32], None),
        "hbn_run": ([vp, u64, u64], u64), "hbn_now": ([vp], u64),
        "hbn_link_stats": ([vp, i32, i32, ctypes.POINTER(u64)], None),
        "hbn_switch_counters": ([vp, ctypes.POINTER(u64)], None),
        "hbn_switch_give": ([vp, i32, vp, vp, u64], i32),
    }
    for fname, (args, res) in sigs.items():
        fn = getattr(lib, fname, None)
        if fn is None:
            raise NetworkSimError(f"{key} does not export {fname}: not an hbmforge switch library")
        fn.argtypes, fn.restype = args, res
    _LIBS[key] = lib
    return lib


class ClusterSim:
    """N co-simulated devices (``hbmforge.sim.cosim.CoSim``, each with the ``s_axis_net`` /
    ``m_axis_net`` streams of a network engine) joined by the switch library ``library``.

    ``up``/``down``: one :class:`Link` for every device's direction to / from the switch, or a list
    with one per device. The cluster does not own the devices (close them yourself).
    """

    #: wall-clock check interval of :meth:`run` (cycles per C call)
    CHUNK = 20_000

    def __init__(self, library: str | Path, devices: Sequence, *, up: Link | Sequence[Link] = Link(),
                 down: Link | Sequence[Link] | None = None, seed: int = 0):
        self._lib = _load(Path(library))
        n = len(devices)
        ports = self._lib.hbn_ports()
        if not 1 <= n <= ports:
            raise ValueError(f"the switch has {ports} ports; give 1..{ports} devices, got {n}")
        ups = list(up) if isinstance(up, (list, tuple)) else [up] * n
        downs = ups if down is None else (list(down) if isinstance(down, (list, tuple)) else [down] * n)
        if len(ups) != n or len(downs) != n or not all(isinstance(x, Link) for x in ups + downs):
            raise ValueError(f"up/down must be a Link or a list of {n} Links")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        word = self._lib.hbn_word_bytes()
        for i, dev in enumerate(devices):
            widths = [s.port.data_width // 8 for s in dev.layout.streams if s.name == "net"]
            if widths != [word, word]:
                raise ValueError(f"device {i} ({dev.layout.kernel}) needs s_axis_net and m_axis_net of "
                                 f"{8 * word} bits, the switch's width; it has {[8 * w for w in widths]}")
        self._h = self._lib.hbn_create(n, seed)
        if not self._h:
            raise NetworkSimError("hbn_create failed")
        self.devices = list(devices)
        self.up, self.down, self.seed = ups, downs, seed
        for i, dev in enumerate(self.devices):
            f = dev.c_functions()
            ok = self._lib.hbn_attach(self._h, i, f["handle"], f["hbf_step"], f["hbf_cycles"], f["hbf_stream_take"],
                                      f["hbf_stream_give"], f["hbf_interrupt"], dev.stream_index("s_axis_net"),
                                      dev.stream_index("m_axis_net"))
            if not ok:
                raise NetworkSimError(f"could not attach device {i}")
            dev.stream_config("m_axis_net", ups[i].bytes_per_cycle, ups[i].buffer_beats)
            self._set_link(i, 0, ups[i])
            self._set_link(i, 1, downs[i])
            self._lib.hbn_switch_stream_config(self._h, i, float(downs[i].bytes_per_cycle), downs[i].buffer_beats)

    def _set_link(self, i: int, direction: int, link: Link) -> None:
        b = link.burst or (0.0, 0.0, 0.0, 0.0)
        self._lib.hbn_set_link(self._h, i, direction, link.latency, float(link.loss), int(link.burst is not None),
                               *map(float, b), float(link.duplicate), float(link.reorder), link.reorder_cycles)

    @property
    def handle(self):
        if not self._h:
            raise NetworkSimError("the cluster simulation was closed")
        return self._h

    def now(self) -> int:
        """The network's cycle (the switch's clock)."""
        return self._lib.hbn_now(self.handle)

    def run(self, max_cycles: int, *, wait: Sequence[int] | None = None, timeout: float | None = None) -> set[int]:
        """Clock every device and the switch until each device in ``wait`` (default: all) raised its
        interrupt, ``max_cycles`` passed, or ``timeout`` seconds of wall clock; the devices whose
        interrupt is high at the end."""
        wait = range(len(self.devices)) if wait is None else wait
        mask = 0
        for i in wait:
            if not 0 <= i < len(self.devices):
                raise ValueError(f"wait: no device {i} (devices 0..{len(self.devices) - 1})")
            mask |= 1 << i
        if isinstance(max_cycles, bool) or not isinstance(max_cycles, int) or max_cycles < 0:
            raise ValueError(f"max_cycles must be an int >= 0, got {max_cycles!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        left = max_cycles
        done = 0
        while True:
            n = min(left, self.CHUNK)
            done = self._lib.hbn_run(self.handle, n, mask)
            left -= n
            if done & mask == mask or left <= 0 or (deadline is not None and time.monotonic() >= deadline):
                break
        return {i for i in range(len(self.devices)) if done >> i & 1}

    def link_stats(self) -> list[dict]:
        """Per device: ``{"up": {...}, "down": {...}}`` with packets, lost, duplicated, reordered, beats."""
        out = []
        for i in range(len(self.devices)):
            entry = {}
            for d, name in ((0, "up"), (1, "down")):
                buf = (ctypes.c_uint64 * 5)()
                self._lib.hbn_link_stats(self.handle, i, d, buf)
                entry[name] = dict(zip(("packets", "lost", "duplicated", "reordered", "beats"), map(int, buf)))
            out.append(entry)
        return out

    def inject(self, port: int, words: Sequence[int]) -> None:
        """Raw stream words into switch port ``port`` as one packet (``tlast`` on the last word):
        what a forged or corrupted packet from that device looks like to the switch."""
        import numpy as np

        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < len(self.devices):
            raise ValueError(f"port must be a device index in [0, {len(self.devices)}), got {port!r}")
        if not words:
            raise ValueError("words must hold at least one stream word")
        wb = self._lib.hbn_word_bytes()
        data = np.frombuffer(b"".join(int(w).to_bytes(wb, "little") for w in words), np.uint8)
        lasts = np.zeros(len(words), np.uint8)
        lasts[-1] = 1
        self._lib.hbn_switch_give(self.handle, port, data.ctypes.data, lasts.ctypes.data, len(words))

    def switch_counters(self) -> dict[str, int]:
        n = self._lib.hbn_num_counters()
        buf = (ctypes.c_uint64 * n)()
        self._lib.hbn_switch_counters(self.handle, buf)
        return {self._lib.hbn_counter_name(i).decode().removeprefix("stat_"): int(buf[i]) for i in range(n)}

    def close(self) -> None:
        if getattr(self, "_h", None):
            self._lib.hbn_destroy(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
