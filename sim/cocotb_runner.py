"""Build (cached) and run cocotb tests on a design with Verilator; return a parsed summary.

``cocotb_tools.runner`` rebuilds per build dir and, under pytest, ends the
process with ``sys.exit`` on a failing test. Here the Verilator build is
cached by the hash of the sources and flags (shared across pytest-xdist
workers through the cache lock), every run gets its own test dir for
``results.xml`` and waves, and the outcome comes back as a
:class:`CocotbResults` whatever happened in the simulator.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .cache import BuildCache, content_key
from .progress import StageProgress
from .verilator import activate

__all__ = ["CocotbResults", "TestCaseResult", "run_cocotb", "build_cocotb", "COCOTB_BUILD_ARGS",
           "COCOTB_MAKEFLAGS", "COVERAGE_BUILD_ARGS"]

#: Verilator flags for cocotb builds: generated RTL trips lint/style warnings; X handling made cheap.
COCOTB_BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-SYMRSVDWORD",
                     "--x-assign", "fast", "--x-initial", "fast")
#: Make variables for cocotb builds. A cocotb run spends its time in Python coroutines, not in the
#: model, so the C++ is compiled for build speed (Verilator's default -Os is slower to compile).
COCOTB_MAKEFLAGS = ("OPT_FAST=-O1", "OPT_SLOW=-O0", "OPT_GLOBAL=-O1")
#: Verilator flags of a coverage build (``coverage=True``): the model counts every statement block
#: and every signal bit's toggles, and cocotb's main writes ``coverage.dat`` into the test dir at the
#: end (read it with :mod:`hbmforge.sim.coverage`).
COVERAGE_BUILD_ARGS = ("--coverage-line", "--coverage-toggle")


@dataclass(frozen=True)
class TestCaseResult:
    name: str
    status: str                 # "passed", "failed", "skipped"
    seconds: float
    sim_time_ns: float
    message: str = ""


@dataclass(frozen=True)
class CocotbResults:
    passed: int
    failed: int
    skipped: int
    tests: list[TestCaseResult]
    results_xml: Path | None
    build_dir: Path
    test_dir: Path
    build_cached: bool
    build_seconds: float
    run_seconds: float
    exit_code: int = 0          # the simulator's, when it ended abnormally
    notes: list[str] = field(default_factory=list)
    coverage_file: Path | None = None   # coverage.dat of a coverage build's run

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.passed > 0 and self.exit_code == 0

    def summary(self) -> str:
        head = f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"
        bad = [f"  {t.name}: {t.message}" for t in self.tests if t.status == "failed"]
        extra = [f"  simulator exit code {self.exit_code}"] if self.exit_code else []
        return "\n".join([head, *bad, *extra, *("  " + n for n in self.notes)])


@contextmanager
def _environ(set_vars: Mapping[str, str] = {}, unset: Sequence[str] = ()):
    """Temporarily change os.environ (the runner copies it into every subprocess)."""
    saved = {k: os.environ.get(k) for k in [*set_vars, *unset]}
    try:
        os.environ.update(set_vars)
        for k in unset:
            os.environ.pop(k, None)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cocotb_version() -> str:
    from importlib.metadata import version
    return version("cocotb")


def build_cocotb(sources: Sequence[str | Path], toplevel: str, *, build_args: Sequence[str] = (),
                 parameters: Mapping[str, object] | None = None, defines: Mapping[str, object] | None = None,
                 includes: Sequence[str | Path] = (), waves: bool = False,
                 timescale: tuple[str, str] = ("1ns", "1ps"), progress: bool = True, coverage: bool = False):
    """The cached Verilator build dir for cocotb; returns ``(path, was_cached, seconds)``.

    ``coverage``: build with :data:`COVERAGE_BUILD_ARGS` (a separate cache entry)."""
    from cocotb_tools.runner import get_runner

    install = activate()
    srcs = [Path(s).resolve() for s in sources]
    args = [*COCOTB_BUILD_ARGS, *build_args, *(COVERAGE_BUILD_ARGS if coverage else ())]
    key = content_key(["cocotb-build-1", *srcs, toplevel, repr(args), repr(sorted((parameters or {}).items())),
                       repr(sorted((defines or {}).items())), repr([str(i) for i in includes]), str(waves),
                       repr(timescale), install.describe(), _cocotb_version(),
                       " ".join([*COCOTB_MAKEFLAGS, *install.make_overrides()]),
                       sys.version])
    prog = StageProgress(f"cocotb {toplevel}", enabled=progress)
    t0 = time.monotonic()

    def build(out: Path) -> None:
        runner = get_runner("verilator")
        makeflags = " ".join([*COCOTB_MAKEFLAGS, *install.make_overrides()])
        with prog.stage("verilate, compile and link"), _environ({"MAKEFLAGS": makeflags}):
            runner.build(sources=srcs, hdl_toplevel=toplevel, build_dir=out, build_args=args,
                         parameters=dict(parameters or {}), defines=dict(defines or {}),
                         includes=list(includes), waves=waves, timescale=timescale, always=True,
                         log_file=out / "build.log")
        _keep_only(out, {toplevel, "build.log"})

    entry = BuildCache("cocotb").get_or_build(
        toplevel, key, build, lock_timeout=3600,
        on_wait=lambda: prog.note("waiting for another process building the same design"))
    return entry.path, entry.hit, time.monotonic() - t0


def _keep_only(build_dir: Path, names: set[str]) -> None:
    """Drop sources and objects (100+ MB for a real kernel); a test run needs only the executable."""
    for p in build_dir.iterdir():
        if p.name not in names:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_cocotb(sources: Sequence[str | Path], toplevel: str, test_module: str | Sequence[str], *,
               module_dirs: Sequence[str | Path] = (), testcase: str | Sequence[str] | None = None,
               test_dir: str | Path | None = None, extra_env: Mapping[str, str] | None = None,
               seed: int | None = None, waves: bool = False, build_args: Sequence[str] = (),
               parameters: Mapping[str, object] | None = None, defines: Mapping[str, object] | None = None,
               includes: Sequence[str | Path] = (), timescale: tuple[str, str] = ("1ns", "1ps"),
               progress: bool = True, coverage: bool = False) -> CocotbResults:
    """Build ``sources`` (cached) and run the cocotb ``test_module`` against ``toplevel``.

    ``module_dirs`` are put on the simulator's PYTHONPATH so the test module is found.
    Test output (results.xml, waves, log) goes to ``test_dir``, a fresh temporary dir by default.
    ``coverage``: a coverage build; its counts land in ``CocotbResults.coverage_file``.
    """
    from cocotb_tools.runner import get_runner

    build_dir, cached, build_s = build_cocotb(sources, toplevel, build_args=build_args, parameters=parameters,
                                              defines=defines, includes=includes, waves=waves,
                                              timescale=timescale, progress=progress, coverage=coverage)
    tdir = Path(test_dir) if test_dir is not None else Path(tempfile.mkdtemp(prefix=f"hbmforge-cocotb-{toplevel}-"))
    tdir.mkdir(parents=True, exist_ok=True)
    results_xml = (tdir / "results.xml").resolve()
    if coverage:
        (tdir / "coverage.dat").unlink(missing_ok=True)        # only this run's counts
    runner = get_runner("verilator")
    exit_code = 0
    notes: list[str] = []
    extra_paths = [str(Path(d).resolve()) for d in module_dirs]
    t0 = time.monotonic()
    saved_path = list(sys.path)
    sys.path[:0] = [p for p in extra_paths if p not in sys.path]   # the runner exports sys.path as PYTHONPATH
    try:
        # Without PYTEST_CURRENT_TEST the runner returns instead of calling sys.exit on failures.
        with _environ(unset=["PYTEST_CURRENT_TEST"]):
            runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                        build_dir=build_dir, test_dir=tdir,
                        testcase=testcase, seed=seed, extra_env=dict(extra_env or {}), waves=waves,
                        results_xml=str(results_xml), timescale=timescale, log_file=tdir / "sim.log")
    except SystemExit as e:                     # the runner exits when the simulator does
        exit_code = int(e.code) if isinstance(e.code, int) else 1
        notes.append(f"see {tdir / 'sim.log'}")
    finally:
        sys.path[:] = saved_path
    run_s = time.monotonic() - t0
    tests = _parse_results(results_xml) if results_xml.exists() else []
    if not results_xml.exists():
        notes.append("no results.xml was written (the simulator did not get to run the tests)")
        exit_code = exit_code or 1
    count = {s: sum(t.status == s for t in tests) for s in ("passed", "failed", "skipped")}
    cov = tdir / "coverage.dat"
    return CocotbResults(count["passed"], count["failed"], count["skipped"], tests,
                         results_xml if results_xml.exists() else None, build_dir, tdir, cached, build_s,
                         run_s, exit_code, notes, cov if coverage and cov.exists() else None)


def _parse_results(path: Path) -> list[TestCaseResult]:
    """Test cases of a cocotb JUnit-style results.xml."""
    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            status, msg = "failed", failure.get("message", "") or (failure.text or "").strip()
        elif case.find("skipped") is not None:
            status, msg = "skipped", case.find("skipped").get("message", "")
        else:
            status, msg = "passed", ""
        out.append(TestCaseResult(case.get("name", "?"), status, float(case.get("time", 0) or 0),
                                  float(case.get("sim_time_ns", 0) or 0), msg))
    return out
