"""The cocotb regression for one config: generate, build with Verilator, run the kernel bench.

``hbmforge sim CONFIG`` and the RTL tests call :func:`run_regression`; the bench
itself is :mod:`hbmforge.flows.tb_kernel` (cocotbext-axi bus models with random
back-pressure and latency, results compared with :mod:`hbmforge.numerics`).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hbmforge.config import AcceleratorConfig

__all__ = ["RegressionResult", "run_regression", "FAMILY_BENCHES"]

#: engine kind -> the cocotb module that tests it inside a whole kernel (besides tb_kernel)
FAMILY_BENCHES = {"attention": "hbmforge.flows.tb_attention", "copy": "hbmforge.flows.tb_copy",
                  "network": "hbmforge.flows.tb_network",
                  "vector": "hbmforge.flows.tb_vector", "memory": "hbmforge.flows.tb_memory"}


@dataclass(frozen=True)
class RegressionResult:
    passed: int
    failed: int
    skipped: int
    seconds: float
    summary: str
    design_dir: Path


#: the cocotb bench's knobs: seeds (numpy's and Python's generators take any of them) and cases per test
MAX_SEED = 2**32 - 1
MAX_CASES = 10_000


def check_bench_knobs(seed, cases, busy) -> None:
    """The cocotb bench's seed, cases per test and back-pressure probability, checked before a
    design is generated (the bench would fail on them only after the build)."""
    from hbmforge.host.checks import check_int, check_real

    check_int("seed", seed, 0, MAX_SEED)
    check_int("cases", cases, 1, MAX_CASES)
    check_real("busy", busy, 0.0, 0.95)


def run_regression(cfg: AcceleratorConfig, *, seed: int = 1, test_filter: str | None = None,
                   build_dir: Path | None = None, console=None, cases: int = 4,
                   busy: float = 0.3) -> RegressionResult:
    """Run every cocotb test of the kernel bench (or those whose name contains ``test_filter``)."""
    from .emit import generate
    from hbmforge.sim.cocotb_runner import run_cocotb

    check_bench_knobs(seed, cases, busy)
    t0 = time.monotonic()
    testcase = None
    modules = ["hbmforge.flows.tb_kernel"] + [FAMILY_BENCHES[e.kind] for e in cfg.engines
                                               if e.kind in FAMILY_BENCHES]
    if test_filter:                     # checked before the (slow) generation and build
        import importlib

        names = [name for mod in modules for name in dir(importlib.import_module(mod))]
        testcase = [name for name in names if name.startswith("test_") and test_filter in name]
        if not testcase:
            raise ValueError(f"no cocotb test name contains {test_filter!r}")
    out = Path(build_dir) if build_dir is not None else Path(tempfile.mkdtemp(prefix=f"hbmforge-{cfg.name}-"))
    design = generate(cfg, out / "rtl")
    if console is not None:
        console.print(f"generated {design.verilog_path}; building the cocotb model with Verilator")
    res = run_cocotb([design.verilog_path], cfg.name, modules, testcase=testcase,
                     test_dir=out / "cocotb", seed=seed, progress=console is not None,
                     extra_env={"HBMFORGE_MANIFEST": str(Path(design.manifest_path).resolve()),
                                "HBMFORGE_SEED": str(seed), "HBMFORGE_TB_CASES": str(cases),
                                "HBMFORGE_TB_BUSY": str(busy)})
    if console is not None:
        console.print(res.summary())
    return RegressionResult(passed=res.passed, failed=res.failed + (1 if res.exit_code else 0),
                            skipped=res.skipped, seconds=time.monotonic() - t0, summary=res.summary(),
                            design_dir=out)
