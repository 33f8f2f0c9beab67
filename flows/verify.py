"""``hbmforge verify CONFIG``: formal proofs, code and functional coverage, and the regression, in one report.

1. **Formal** (:mod:`hbmforge.generators.formal`): the design's control slave (AXI4-Lite +
   ap_ctrl_hs, k-induction), every AXI4 memory port with its DMA readers and writer (AXI4
   manager rules, FIFO and credit bounds; bounded) and, where the config has them, the
   aggregation switch and the tile cache (bounded), with SymbiYosys and Yices.
2. **Regression with coverage**: the cocotb regression of the config (``tb_kernel`` and the
   family benches, as ``hbmforge sim`` runs it) plus the closure bench (:mod:`.tb_closure`:
   every register read, every descriptor check fired), on a Verilator build with line and
   toggle coverage, and with functional coverage sampled (:mod:`.coverage_points`).
3. **Reports** in ``out_dir``: ``report.json``, ``summary.txt``, ``coverage/coverage.dat`` (merged),
   ``coverage/coverage.info`` (lcov), ``coverage/html/index.html``, ``coverage/modules.txt``,
   ``coverage/uncovered.txt`` (every line never reached, with its module and Verilog),
   ``fcov.yml`` (cocotb-coverage export) and ``fcov_missing.txt``, and each proof's SymbiYosys dir.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hbmforge.config import AcceleratorConfig

__all__ = ["VerifyReport", "verify", "CLOSURE_BENCH"]

CLOSURE_BENCH = "hbmforge.flows.tb_closure"


@dataclass
class VerifyReport:
    config: str
    out_dir: Path
    formal: list = field(default_factory=list)            # FormalResult
    formal_seconds: float = 0.0
    regression: dict | None = None                        # passed, failed, skipped, seconds
    line: tuple[int, int] | None = None                   # covered, total points
    toggle: tuple[int, int] | None = None
    branch: tuple[int, int] | None = None
    modules_below: list = field(default_factory=list)     # (module, line ratio) under the target
    fcov: object | None = None                            # FunctionalCoverage
    seconds: float = 0.0
    target_line: float = 0.95

    @staticmethod
    def _ratio(pair):
        return None if not pair or not pair[1] else pair[0] / pair[1]

    @property
    def proved(self) -> int:
        return sum(len(r.asserts) for r in self.formal if r.ok and not r.failed)

    @property
    def properties(self) -> int:
        return sum(len(r.asserts) for r in self.formal)

    @property
    def ok(self) -> bool:
        formal_ok = all(r.ok and not r.failed for r in self.formal)
        reg_ok = self.regression is None or (self.regression["failed"] == 0 and self.regression["passed"] > 0)
        return formal_ok and reg_ok

    def to_json(self) -> dict:
        fc = self.fcov
        return {
            "config": self.config, "ok": self.ok, "seconds": round(self.seconds, 1),
            "formal": [r.to_json() for r in self.formal],
            "formal_properties_proved": self.proved, "formal_properties": self.properties,
            "formal_seconds": round(self.formal_seconds, 1),
            "regression": self.regression,
            "rtl_line_coverage": self._ratio(self.line), "rtl_toggle_coverage": self._ratio(self.toggle),
            "rtl_branch_coverage": self._ratio(self.branch),
            "line_points": list(self.line) if self.line else None,
            "toggle_points": list(self.toggle) if self.toggle else None,
            "modules_below_target": [{"module": m, "line": r} for m, r in self.modules_below],
            "functional_coverage_bins_hit": fc.ratio if fc else None,
            "functional_bins": {"hit": fc.hit, "total": fc.bins, "missing": fc.missing()} if fc else None,
            "out_dir": str(self.out_dir),
        }

    def rows(self) -> list[tuple[str, str, str]]:
        """(part, what, result) rows of the summary table."""
        out = []
        for r in self.formal:
            if r.ok and not r.failed:
                how = ("proved, unbounded (k-induction)" if r.proved == "unbounded"
                       else f"proved to depth {r.depth} (bounded)")
            else:
                how = f"FAILED: {', '.join(r.failed) or r.status}"
            out.append((f"formal {r.name}", f"{len(r.asserts)} properties", f"{how}, {r.seconds:.0f} s"))
        if self.regression is not None:
            g = self.regression
            out.append(("regression", "cocotb tests", f"{g['passed']} passed, {g['failed']} failed, "
                                                      f"{g['skipped']} skipped ({g['seconds']:.0f} s)"))
        for name, pair in (("line", self.line), ("toggle", self.toggle), ("branch", self.branch)):
            if pair:
                mark = "" if name != "line" or pair[0] >= self.target_line * pair[1] else \
                    f" (below {self.target_line:.0%})"
                out.append(("code coverage", name, f"{100 * pair[0] / pair[1]:.2f}% ({pair[0]}/{pair[1]}){mark}"))
        if self.fcov is not None:
            fc = self.fcov
            miss = fc.missing()
            extra = f"; missing: {', '.join(miss[:6])}{' ...' if len(miss) > 6 else ''}" if miss else ""
            out.append(("functional coverage", "bins hit", f"{100 * (fc.ratio or 0):.1f}% ({fc.hit}/{fc.bins}){extra}"))
        return out

    def text(self) -> str:
        rows = [("part", "what", "result"), *self.rows()]
        w = [max(len(r[i]) for r in rows) for i in range(2)]
        lines = [f"hbmforge verify {self.config}: {'OK' if self.ok else 'FAILED'} ({self.seconds:.0f} s)"]
        lines += [f"{a:<{w[0]}}  {b:<{w[1]}}  {c}" for a, b, c in rows]
        return "\n".join(lines)


def verify(cfg: AcceleratorConfig, *, out_dir: str | Path | None = None, formal: bool = True,
           coverage: bool = True, scale: str = "small", depth: int | None = None, seed: int = 1,
           cases: int = 4, busy: float = 0.3, target_line: float = 0.95, console=None) -> VerifyReport:
    """Run the proofs and the covered regression of ``cfg``; write the reports (module doc)."""
    from hbmforge.generators.formal.cases import KINDS, design_cases
    from hbmforge.layout import DesignLayout

    from .regression import check_bench_knobs

    if not isinstance(cfg, AcceleratorConfig):
        raise TypeError(f"cfg must be an AcceleratorConfig, got {type(cfg).__name__}")
    if not formal and not coverage:
        raise ValueError("nothing to verify: formal and coverage are both off")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 200):
        raise ValueError(f"depth must be an int in [1, 200], got {depth!r}")
    check_bench_knobs(seed, cases, busy)
    if not 0.0 <= target_line <= 1.0:
        raise ValueError(f"target_line must be in [0, 1], got {target_line!r}")
    layout = DesignLayout(cfg)
    proofs = design_cases(layout, scale=scale, depths=dict.fromkeys(KINDS, depth) if depth else None)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix=f"hbmforge-verify-{cfg.name}-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    report = VerifyReport(cfg.name, out, target_line=target_line)

    def say(msg):
        if console is not None:
            console.print(msg, highlight=False)

    if formal:
        from hbmforge.generators.formal.run import run_formal

        f0 = time.monotonic()
        for case in proofs:
            say(f"formal {case.name}: {case.describe} ({case.mode}, depth {case.depth})")
            report.formal.append(run_formal(case.build(), case.name, out / "formal" / case.name,
                                            mode=case.mode, depth=case.depth))
        report.formal_seconds = time.monotonic() - f0
    if coverage:
        _covered_regression(cfg, out, report, seed=seed, cases=cases, busy=busy, say=say,
                            progress=console is not None)
    report.seconds = time.monotonic() - t0
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1) + "\n")
    (out / "summary.txt").write_text(report.text() + "\n")
    return report


def _covered_regression(cfg, out: Path, report: VerifyReport, *, seed, cases, busy, say, progress) -> None:
    from hbmforge.sim.cocotb_runner import run_cocotb
    from hbmforge.sim.coverage import read_coverage, text_table, write_html, write_lcov

    from .coverage_points import ENV, read_fcov
    from .emit import generate
    from .regression import FAMILY_BENCHES

    design = generate(cfg, out / "rtl")
    modules = ["hbmforge.flows.tb_kernel"] + [FAMILY_BENCHES[e.kind] for e in cfg.engines
                                               if e.kind in FAMILY_BENCHES] + [CLOSURE_BENCH]
    fcov_file = (out / "fcov.yml").resolve()
    fcov_file.unlink(missing_ok=True)
    say(f"regression with coverage: {', '.join(m.rsplit('.', 1)[1] for m in modules)}")
    res = run_cocotb([design.verilog_path], cfg.name, modules, test_dir=out / "cocotb", seed=seed,
                     progress=progress, coverage=True,
                     extra_env={"HBMFORGE_MANIFEST": str(Path(design.manifest_path).resolve()),
                                "HBMFORGE_SEED": str(seed), "HBMFORGE_TB_CASES": str(cases),
                                "HBMFORGE_TB_BUSY": str(busy), ENV: str(fcov_file)})
    report.regression = {"passed": res.passed, "failed": res.failed + (1 if res.exit_code else 0),
                         "skipped": res.skipped, "seconds": round(res.build_seconds + res.run_seconds, 1),
                         "summary": res.summary()}
    if res.coverage_file is not None:
        cov = read_coverage(res.coverage_file)
        cdir = out / "coverage"
        cdir.mkdir(exist_ok=True)
        cov.write(cdir / "coverage.dat")
        write_lcov(cov, cdir / "coverage.info", test_name=cfg.name)
        write_html(cov, cdir / "html", title=f"hbmforge RTL coverage: {cfg.name}", threshold=report.target_line)
        (cdir / "modules.txt").write_text(text_table(cov, title=f"{cfg.name}: coverage per module") + "\n")
        report.line, report.toggle, report.branch = (cov.counts(k) for k in ("line", "toggle", "branch"))
        report.modules_below = [(m.module, round(m.ratio("line"), 4)) for m in cov.modules()
                                if m.ratio("line") is not None and m.ratio("line") < report.target_line]
        src = design.verilog_path.read_text().splitlines()
        lines = [f"{p.module}  {Path(p.file).name}:{p.first}-{p.last}  {p.what}  |  "
                 f"{src[p.line - 1].strip() if 0 < p.line <= len(src) else ''}"
                 for p in cov.uncovered("line")]
        (cdir / "uncovered.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    if fcov_file.exists():
        report.fcov = read_fcov(fcov_file)
        (out / "fcov_missing.txt").write_text("\n".join(report.fcov.missing()) + "\n")
