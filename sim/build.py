"""Build the co-simulation shared library of a design (cached).

Verilator turns the kernel into C++; the Verilator makefile then compiles it,
``libverilated`` and the harness (``sim/harness``) with ``-fPIC`` and links
everything into ``lib<kernel>.so`` (``--exe`` with ``-shared``: one make run,
one set of flags). Only the ``hbf_*`` ABI is exported and symbols bind
inside the library, so several designs can be loaded into one process.
The result is cached by the hash of everything that goes into it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from .bindings import HARNESS_SOURCES, harness_dir, load_manifest, render_ports_header
from .cache import BuildCache, content_key
from .progress import StageProgress
from .runtime_cache import runtime_key, save_runtime, seed_runtime
from .verilator import VerilatorInstall, find_verilator

__all__ = ["BuildOptions", "BuildResult", "BuildError", "build_library", "cosim_key", "design_sources"]

_KEY_VERSION = "cosim-build-2"     # bump when the build recipe changes in a way the inputs don't show
#: Verilog size above which ``opt="auto"`` compiles the model with -O1 (see BuildOptions.for_rtl)
LARGE_RTL_BYTES = 8_000_000
# GNU ld: bind the library's own symbols inside it and keep libverilated's out of the dynamic table,
# so two designs loaded into one process cannot resolve into each other. (macOS ld: two-level
# namespaces already do that.)
_LDFLAGS = ("-shared -pthread" if sys.platform == "darwin"
            else "-shared -Wl,-Bsymbolic -Wl,--exclude-libs,ALL -pthread")


@dataclass(frozen=True)
class BuildOptions:
    """What affects the built library besides the RTL and the harness."""

    trace: bool = False                     # waveform tracing (hbf_trace_open); slows the model down
    trace_format: str = "auto"              # "fst", "vcd" or "auto": FST when liblz4 headers exist
    opt: str = "auto"                       # model eval code and harness: "auto" = -O2, or -O1 for large RTL
    opt_slow: str = "auto"                  # model init code, run once: "auto" = -O1, or -O0 for large RTL
    opt_runtime: str = "-O1"                # libverilated: not on the per-cycle path; -O2 compiles 2x slower
    x_fast: bool = True                     # --x-assign fast --x-initial fast
    warnings_fatal: bool = False            # generated RTL trips style warnings; don't fail on them
    verilator_args: tuple[str, ...] = ()
    jobs: int = 2                           # make -j (the machines have few cores)
    verilate_jobs: int = 0                  # Verilator's own threads; 0 = auto: ``jobs`` for large RTL, else 1
    coverage: bool = False                  # line + toggle coverage (hbf_coverage_write; hbmforge.sim.coverage)

    def __post_init__(self):
        for name, low in (("jobs", 1), ("verilate_jobs", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"BuildOptions.{name} must be an int >= {low}, got {v!r}")

    def for_rtl(self, rtl_bytes: int) -> "BuildOptions":
        """These options with ``opt="auto"`` resolved for a design of ``rtl_bytes`` of Verilog.

        Verilator's default -Os runs ~3x slower than -O2, so -O2 it is; but C++ compile time grows
        with the model, and above :data:`LARGE_RTL_BYTES` -O1 compiles in ~45 % of -O2's time for
        ~15 % slower simulation (u280_llm512, 23 MB: the whole build 806 -> 546 s on one core, a
        LLaMA-2-7B decode layer 19 -> 22 s; docs/decode-projection.md).

        Large RTL also gets its init code (Verilator's ``__Slow`` files, about 40 % of the C++,
        run once when the model is made) at -O0, which compiles in half -O1's time, and Verilator
        run on ``jobs`` threads (docs/decode-projection.md, session 40: 710 -> 458 s)."""
        large = rtl_bytes > LARGE_RTL_BYTES
        out = self
        if self.opt == "auto":
            out = replace(out, opt="-O1" if large else "-O2")
        if self.opt_slow == "auto":
            out = replace(out, opt_slow="-O0" if large else "-O1")
        if self.verilate_jobs == 0:
            out = replace(out, verilate_jobs=self.jobs if large else 1)
        return out

    def verilator_flags(self) -> list[str]:
        flags = ["-O3", "--no-timing", "-Wno-SYMRSVDWORD"]
        if self.verilate_jobs > 1:
            flags += ["--verilate-jobs", str(self.verilate_jobs)]
        if self.x_fast:
            flags += ["--x-assign", "fast", "--x-initial", "fast"]
        if not self.warnings_fatal:
            flags += ["-Wno-fatal", "-Wno-lint", "-Wno-style"]
        if self.trace:
            flags += ["--trace-fst" if self.resolved_trace_format() == "fst" else "--trace"]
        if self.coverage:
            flags += ["--coverage-line", "--coverage-toggle"]
        return flags + list(self.verilator_args)

    def resolved_trace_format(self) -> str | None:
        if not self.trace:
            return None
        if self.trace_format not in ("auto", "fst", "vcd"):
            raise ValueError(f"trace_format must be 'auto', 'fst' or 'vcd', got {self.trace_format!r}")
        if self.trace_format == "auto":
            return "fst" if _have_header("lz4.h") else "vcd"
        return self.trace_format

    def to_json(self) -> dict:
        return {"trace": self.resolved_trace_format(), "opt": self.opt, "opt_slow": self.opt_slow,
                "opt_runtime": self.opt_runtime, "x_fast": self.x_fast,
                "warnings_fatal": self.warnings_fatal, "verilator_args": list(self.verilator_args),
                **({"verilate_jobs": self.verilate_jobs} if self.verilate_jobs > 1 else {}),
                **({"coverage": True} if self.coverage else {})}     # absent when off: existing keys stay


@lru_cache(maxsize=None)
def _have_header(name: str) -> bool:
    """Whether the C++ compiler finds ``name`` (Verilator's FST writer needs lz4.h and zlib.h)."""
    cxx = os.environ.get("CXX", "c++")
    try:
        r = subprocess.run([cxx, "-E", "-x", "c++", "-"], input=f"#include <{name}>\n", text=True,
                           capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


@dataclass(frozen=True)
class BuildResult:
    library: Path               # lib<kernel>.so
    manifest: dict = field(repr=False)
    cache_hit: bool
    seconds: float              # wall time of this call (build or lookup)
    key: str
    stage_seconds: dict = field(default_factory=dict)
    trace: str | None = None        # "fst", "vcd" or None (built without tracing)

    @property
    def directory(self) -> Path:
        return self.library.parent


class BuildError(RuntimeError):
    """Verilator or the C++ build failed; the message holds the tail of the log and its path."""


def design_sources(design: str | Path | Sequence[str | Path],
                   manifest: dict | str | Path | None = None) -> tuple[list[Path], dict]:
    """RTL files and manifest of a design given as a generated design dir or as Verilog file(s).

    A directory holds ``manifest.json`` and ``<kernel>.v`` (what ``hbmforge.flows.emit.generate`` writes);
    without ``<kernel>.v`` every ``*.v``/``*.sv`` in it is used. For files, the manifest
    defaults to ``manifest.json`` beside the first one.
    """
    items = [design] if isinstance(design, (str, Path)) else list(design)
    if len(items) == 1 and Path(items[0]).is_dir():
        d = Path(items[0])
        m = load_manifest(manifest if manifest is not None else d / "manifest.json")
        top = d / f"{m['kernel']}.v"
        paths = [top] if top.is_file() else sorted([*d.glob("*.v"), *d.glob("*.sv")])
        if not paths:
            raise FileNotFoundError(f"{d} holds no Verilog ({m['kernel']}.v or *.v)")
        return [p.resolve() for p in paths], m
    paths = [Path(p).resolve() for p in items]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"RTL source {p} does not exist")
    if manifest is None:
        manifest = paths[0].parent / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"no manifest given and no {manifest}")
    return paths, load_manifest(manifest)


@lru_cache(maxsize=None)
def _compiler_id() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return cxx


def cosim_key(rtl_paths: list[Path], header: str, install: VerilatorInstall, options: BuildOptions) -> str:
    hdir = harness_dir()
    return content_key([
        _KEY_VERSION,
        *rtl_paths,
        *(hdir / name for name in HARNESS_SOURCES),
        header,
        install.version_str,
        _compiler_id(),
        json.dumps(options.to_json(), sort_keys=True),
    ])


def build_library(design: str | Path | Sequence[str | Path], manifest: dict | str | Path | None = None, *,
                  options: BuildOptions | None = None, progress: bool = True,
                  cache: BuildCache | None = None, lock_timeout: float | None = 3600) -> BuildResult:
    """The co-simulation library of a design (see :func:`design_sources`); built if not cached."""
    t0 = time.monotonic()
    rtl_paths, manifest = design_sources(design, manifest)
    options = (options or BuildOptions()).for_rtl(sum(p.stat().st_size for p in rtl_paths))
    install = find_verilator()
    header = render_ports_header(manifest, trace=options.trace)
    key = cosim_key(rtl_paths, header, install, options)
    name = manifest["kernel"]
    cache = cache or BuildCache("cosim")
    prog = StageProgress(f"co-sim {name}", enabled=progress)

    def build(out: Path) -> None:
        _build_into(out, rtl_paths, manifest, header, install, options, prog, cache)

    entry = cache.get_or_build(
        name, key, build, lock_timeout=lock_timeout,
        on_wait=lambda: prog.note("waiting for another process building the same design"),
        metadata={"kernel": name, "verilator": install.describe(), "options": options.to_json(),
                  "rtl": [str(p) for p in rtl_paths]})
    lib = entry.path / f"lib{name}.so"
    stages = {}
    info = entry.path / "build_info.json"
    if info.exists():
        stages = json.loads(info.read_text()).get("stage_seconds", {})
    return BuildResult(lib, manifest, entry.hit, time.monotonic() - t0, key, stages,
                       options.resolved_trace_format())


def _build_into(out: Path, rtl_paths: list[Path], manifest: dict, header: str, install: VerilatorInstall,
                options: BuildOptions, prog: StageProgress, cache: BuildCache) -> None:
    name = manifest["kernel"]
    gen = out / "gen"
    obj = out / "obj"
    gen.mkdir()
    (gen / "hbf_ports.h").write_text(header)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log_path = out / "build.log"
    env = install.env()
    hdir = harness_dir()
    fmt = options.resolved_trace_format()
    cflags = ["-fPIC", "-fvisibility=hidden", "-fvisibility-inlines-hidden", f"-I{hdir}", f"-I{gen}",
              f"-DHBF_TRACE={int(options.trace)}", f"-DHBF_TRACE_FST={int(fmt == 'fst')}"]
    lib_name = f"lib{name}.so"
    vcmd = [str(install.executable), "--cc", "--exe", "--top-module", name, "--prefix", "Vtop",
            "-Mdir", str(obj), "-o", str(out / lib_name),
            *options.verilator_flags(),
            "-CFLAGS", " ".join(cflags),
            "-LDFLAGS", _LDFLAGS,
            *map(str, rtl_paths), str(hdir / "hbf_harness.cpp")]
    rt_key = runtime_key(install.describe(), _compiler_id(), options.opt_runtime, str(fmt),
                         " ".join(c for c in cflags if not c.startswith("-I")))
    with open(log_path, "w") as log:
        with prog.stage("verilate"):
            warnings = _run(vcmd, env, log, log_path, cache, name)
        if warnings:
            prog.note(f"Verilator reported {len(warnings)} warning(s), e.g. {warnings[0]} (full list in {log_path})")
        seeded = seed_runtime(obj, rt_key, cache.dir.parent)
        total = len(list(obj.glob("*.cpp"))) + 1 + (0 if seeded else 2 + int(options.trace))
        mcmd = ["make", f"-j{options.jobs}", "-C", str(obj), "-f", "Vtop.mk",
                f"OPT_FAST={options.opt}", f"OPT_SLOW={options.opt_slow}", f"OPT_GLOBAL={options.opt_runtime}",
                f"VM_TRACE={int(options.trace)}", *install.make_overrides()]
        with prog.stage("compile and link"):
            done = 0

            def on_line(line: str) -> None:
                nonlocal done
                if re.search(r"\s-c\s|\s-c$", line) and ".cpp" in line:
                    done += 1
                    prog.detail(f"{min(done, total)}/{total}")
            _run(mcmd, env, log, log_path, cache, name, on_line=on_line)
    if not (out / lib_name).exists():
        raise BuildError(f"build of {name} produced no {lib_name}; see {log_path}")
    if not seeded:
        save_runtime(obj, rt_key, cache.dir.parent)
    shutil.rmtree(obj, ignore_errors=True)        # objects are large; the library is all we load
    (out / "build_info.json").write_text(json.dumps({
        "kernel": name, "verilator": install.describe(), "options": options.to_json(),
        "verilator_command": vcmd, "stage_seconds": prog.times}, indent=1))


def _run(cmd: list[str], env: dict, log, log_path: Path, cache: BuildCache, name: str,
         on_line=None) -> list[str]:
    """Run one build command into the log; its ``%Warning`` lines; BuildError with the log tail on failure."""
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    tail: list[str] = []
    warnings: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if line.startswith("%Warning"):
            warnings.append(line.strip())
        tail.append(line.rstrip("\n"))
        del tail[:-60]
        if on_line:
            on_line(line)
    rc = proc.wait()
    log.flush()
    if rc != 0:
        keep = cache.dir / ".logs" / f"{name}-failed-{int(time.time())}.log"
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, keep)
        raise BuildError(f"`{Path(cmd[0]).name}` failed (exit {rc}) building {name}; full log: {keep}\n"
                         + "\n".join(tail[-40:]))
    return warnings
