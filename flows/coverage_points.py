"""Functional coverage of the cocotb benches: cover points and crosses with cocotb-coverage.

Code coverage says which RTL lines ran; functional coverage says which *situations* the benches
created: every weight format with every output mode, shapes at the block/tile/slice
boundaries, every error code the design can raise, bursts of one beat, of the maximum and cut
at a 4 KiB boundary, stalls of every length on every channel, KV contexts inside one page, on
a page boundary and across pages, every mask shape, and the new families' fields (vector
formats and ops, copy modes and ports, cache and oblivious-map actions, all-reduce modes).
The bins are derived from the design (its layout), so a bin exists only where the design can
reach it.

Sampling costs nothing unless ``HBMFORGE_FCOV`` names a file: :func:`attach` (called by
``tb_kernel._bench`` for every bench) then wraps ``bench.run`` to sample every descriptor that
ran and the run's status, starts one monitor per AXI port (burst lengths, 4 KiB cuts, stall
lengths), and exports the coverage database (YAML) after every run. :func:`read_fcov` merges
such files (tests, seeds, configs) into a :class:`FunctionalCoverage` with the bins hit and
the bins missing.

cocotb-coverage 2.0 works with cocotb 2.1 here (its coverage database is plain Python; its
constrained-random part, which needs python-constraint, is not used).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENV", "attach", "coverage_model", "FunctionalCoverage", "read_fcov", "ROOT"]

#: environment variable naming the YAML file a bench writes its coverage to
ENV = "HBMFORGE_FCOV"
ROOT = "fcov"

_STALL_BINS = ["0", "1", "2-3", "4+"]


def _stall_bin(n: int) -> str:
    return "0" if n == 0 else "1" if n == 1 else "2-3" if n < 4 else "4+"


def _len_bin(beats: int, max_beats: int) -> str:
    return "1" if beats == 1 else "max" if beats == max_beats else "between"


# -- the model: (name, opcode or None, function of the fields, bins) ----------------------------
def _descriptor_points(lay) -> list[tuple[str, int | None, object, list]]:
    from hbmforge.encodings import (AttentionMode, CacheAction, CopyMode, ErrorCode, NetMode, OmapAction,
                                    Opcode, VectorAct, VectorCombine, VectorIn, VectorNorm, VectorOut,
                                    WeightFormat)

    pts = [("op", None, lambda f: int(f["op"]), sorted(int(op) for op in lay.opcodes.values()))]
    kinds = {f.kind for f in lay.families}
    if "matmul" in kinds:
        eng, geom = lay.mm, lay.matmul
        rows, MM = eng.rows, int(Opcode.MATMUL)

        def m_bin(f):
            m = f["m"]
            if m == 1:
                return "one_row"
            if m <= rows:
                return "one_block"
            return "blocks_full" if m % rows == 0 else "blocks_partial"

        m_bins = ["one_row", *(["one_block"] if rows > 1 else []), "blocks_full", "blocks_partial"]
        k_bins = ["one_step", *(["steps"] if geom.k_slice > geom.k_align else []),
                  *(["split_k"] if geom.widths.max_k > geom.k_slice else [])]

        def k_bin(f):
            k = f["k"]
            return "one_step" if k == geom.k_align else "steps" if k <= geom.k_slice else "split_k"

        n_bins = ["one_column", *(["one_tile"] if geom.tile_n > 1 else []), "tiles"]
        pts += [
            ("mm.wbits", MM, lambda f: int(f["wbits"]), [int(WeightFormat.code(b)) for b in eng.weight_bits]),
            ("mm.out_mode", MM, lambda f: int(f["out_mode"]), [0, 1]),
            ("mm.bias", MM, lambda f: int(f["bias"]), [0, 1]),
            ("mm.m", MM, m_bin, m_bins),
            ("mm.k", MM, k_bin, k_bins),
            ("mm.n", MM, lambda f: "one_column" if f["n"] == 1 else "one_tile" if f["n"] <= geom.tile_n
             else "tiles", n_bins),
        ]
    if "attention" in kinds:
        att = lay.config.engine("attention")
        page, AT = att.page_tokens, int(Opcode.ATTENTION)

        def ctx_bin(f):
            c = f["ctx_len"]
            return "in_page" if c < page else "page_boundary" if c % page == 0 else "across_pages"

        def mask_bin(f):
            return "sink_window" if f["sink"] else "window" if f["window"] else "full"

        pts += [
            ("attn.kv_bits", AT, lambda f: int(f["kv_bits"]), sorted(int(b) for b in att.kv_bits)),
            ("attn.mode", AT, lambda f: int(f["mode"]), [int(m) for m in AttentionMode]),
            ("attn.mask", AT, mask_bin, ["full", "window", "sink_window"]),
            ("attn.ctx", AT, ctx_bin, ["in_page", "page_boundary", "across_pages"]),
            ("attn.heads", AT, lambda f: "mha" if f["q_per_kv"] == 1 else "gqa", ["mha", "gqa"]),
            ("attn.n_q", AT, lambda f: "decode" if f["n_q"] == 1 else "prefill", ["decode", "prefill"]),
        ]
    if "vector" in kinds:
        VE = int(Opcode.VECTOR)
        pts += [
            ("vec.a_fmt", VE, lambda f: int(f["a_fmt"]), [int(v) for v in VectorIn if v != VectorIn.NONE]),
            ("vec.b_fmt", VE, lambda f: int(f["b_fmt"]), [int(v) for v in VectorIn]),
            ("vec.out_fmt", VE, lambda f: int(f["out_fmt"]), [int(v) for v in VectorOut]),
            ("vec.act", VE, lambda f: int(f["act"]), [int(v) for v in VectorAct]),
            ("vec.combine", VE, lambda f: int(f["combine"]), [int(v) for v in VectorCombine]),
            ("vec.norm", VE, lambda f: int(f["norm"]), [int(v) for v in VectorNorm]),
            ("vec.rope", VE, lambda f: int(bool(f["rope"])), [0, 1]),
        ]
    if "copy" in kinds:
        CO = int(Opcode.COPY)
        ports = list(range(len(lay.port_names)))
        pts += [
            ("copy.mode", CO, lambda f: int(f["mode"]), [int(m) for m in CopyMode]),
            ("copy.src_port", CO, lambda f: int(f["src_port"]) if f["mode"] == CopyMode.COPY else None, ports),
            ("copy.dst_port", CO, lambda f: int(f["dst_port"]), ports),
        ]
    if "memory" in kinds:
        mem = lay.config.engine("memory")
        if getattr(mem, "cache", None) is not None:
            pts.append(("mem.cache_action", int(Opcode.CACHE), lambda f: int(f["action"]),
                        [int(a) for a in CacheAction]))
        if getattr(mem, "omap", None) is not None:
            pts.append(("mem.omap_action", int(Opcode.OMAP), lambda f: int(f["action"]),
                        [int(a) for a in OmapAction]))
    if "network" in kinds:
        pts.append(("net.mode", int(Opcode.ALLREDUCE), lambda f: int(f["mode"]), [int(m) for m in NetMode]))
    codes = {int(ErrorCode.NONE), int(ErrorCode.BAD_OPCODE), int(ErrorCode.AXI_RESP)}
    for fam in lay.families:
        for op in fam.opcodes:
            codes.update(int(c.code) for c in lay.checks(op))
        codes.update(int(c) for c in fam.runtime_errors)
    pts.append(("status.error", None, lambda f: None, sorted(codes)))
    return pts


_CROSSES = [("mm.wbits_x_out_mode", ("mm.wbits", "mm.out_mode")),
            ("attn.kv_bits_x_mask", ("attn.kv_bits", "attn.mask")),
            ("vec.out_fmt_x_norm", ("vec.out_fmt", "vec.norm"))]


@dataclass
class _Model:
    samplers: dict                 # opcode -> function(fields)
    status: object                 # function(code)
    burst: object                  # function(channel, beats, to_page_end)
    stall: object                  # function(channel, run)
    names: list = field(default_factory=list)
    design: int = 0                # the layout's hash64: one model per process (one simulated design)


_MODEL: _Model | None = None


def coverage_model(lay) -> _Model:
    """The cover points of ``lay`` registered in cocotb-coverage's database (once per process)."""
    global _MODEL
    if _MODEL is not None:
        if _MODEL.design != lay.hash64:
            raise RuntimeError("cocotb-coverage keeps one database per process: this process already "
                               f"samples the design {_MODEL.design:#x}")
        return _MODEL
    from cocotb_coverage.coverage import CoverCross, CoverPoint

    pts = _descriptor_points(lay)
    names = [n for n, *_ in pts]
    samplers = {}
    ops = sorted(int(op) for op in lay.opcodes.values())
    for op in ops:
        def sample(fields):
            pass
        mine = [p for p in pts if p[1] in (None, op) and p[0] != "status.error"]
        points = [CoverPoint(f"{ROOT}.{name}", xf=lambda f, fn=fn: _safe(fn, f), bins=list(bins))
                  for name, _op, fn, bins in mine]           # registered first: crosses refer to them
        for cross, items in _CROSSES:          # innermost: a cross reads the points sampled around it
            if all(i in [p[0] for p in mine] for i in items) and any(p[1] == op for p in mine):
                sample = CoverCross(f"{ROOT}.{cross}", items=[f"{ROOT}.{i}" for i in items])(sample)
                names.append(cross)
        for point in points:
            sample = point(sample)
        samplers[op] = sample
    code_bins = next(b for n, _o, _f, b in pts if n == "status.error")

    @CoverPoint(f"{ROOT}.status.error", xf=lambda code: code, bins=code_bins)
    def status(code):
        pass

    max_beats = lay.config.axi.max_burst_beats

    @CoverPoint(f"{ROOT}.axi.ar_len", xf=lambda ch, beats, end: _len_bin(beats, max_beats) if ch == "ar" else None,
                bins=["1", "between", "max"] if max_beats > 2 else ["1", "max"])
    @CoverPoint(f"{ROOT}.axi.aw_len", xf=lambda ch, beats, end: _len_bin(beats, max_beats) if ch == "aw" else None,
                bins=["1", "between", "max"] if max_beats > 2 else ["1", "max"])
    @CoverPoint(f"{ROOT}.axi.ar_4k", xf=lambda ch, beats, end: end if ch == "ar" else None,
                bins=["cut_at_4k", "inside_page"])
    @CoverPoint(f"{ROOT}.axi.aw_4k", xf=lambda ch, beats, end: end if ch == "aw" else None,
                bins=["cut_at_4k", "inside_page"])
    def burst(ch, beats, end):
        pass

    stall_points = {}
    for ch in ("ar", "aw", "w", "r_gap"):
        @CoverPoint(f"{ROOT}.backpressure.{ch}", xf=lambda run: _stall_bin(run), bins=_STALL_BINS)
        def stall_one(run):
            pass
        stall_points[ch] = stall_one
        names.append(f"backpressure.{ch}")
    names += ["status.error", "axi.ar_len", "axi.aw_len", "axi.ar_4k", "axi.aw_4k"]
    _MODEL = _Model(samplers, status, burst, lambda ch, run: stall_points[ch](run), names, lay.hash64)
    return _MODEL


def _safe(fn, fields):
    try:
        return fn(fields)
    except (KeyError, TypeError):
        return None


# -- sampling in a bench ----------------------------------------------------------------------
def attach(bench, lay) -> None:
    """Sample ``bench`` (a :class:`~hbmforge.sim.kernel_bench.KernelBench`) when ``HBMFORGE_FCOV`` is set."""
    path = os.environ.get(ENV)
    if not path or getattr(bench, "_fcov_attached", False):
        return
    import cocotb

    model = coverage_model(lay)
    bench._fcov_attached = True
    run = bench.run

    async def sampled_run(program_addr: int, count: int, **kw) -> int:
        status = await run(program_addr, count, **kw)
        sample_program(bench, lay, program_addr, count, status)
        export(path)
        return status

    bench.run = sampled_run
    for port in bench.manifest["ports"]:
        cocotb.start_soon(_monitor(bench, port, model))


def sample_program(bench, lay, program_addr: int, count: int, status: int) -> None:
    """Sample the descriptors of a finished run (those that ran, and the one that stopped it)."""
    model = coverage_model(lay)
    error = status & 1
    code = (status >> 8) & 0xFF if error else 0
    last = (status >> 16) if error else count - 1
    size = lay.descriptor_bytes
    for i in range(min(count, last + 1)):
        try:
            raw = bench.read(program_addr + i * size, size)
        except (IndexError, ValueError):             # a program outside the bench memory (fetch error)
            break
        fields = lay.decode_descriptor(raw)
        sampler = model.samplers.get(int(fields["op"]))
        if sampler is not None and (not error or i < last or code == 0):
            sampler(fields)
        if int(fields["op"]) == 0:
            break
    model.status(code)


def export(path: str | os.PathLike) -> None:
    from cocotb_coverage.coverage import coverage_db

    coverage_db.export_to_yaml(str(path))


async def _monitor(bench, port: dict, model: _Model) -> None:
    """Per cycle: AR/AW handshakes (length, 4 KiB cut), and the length of every stall that ends:
    the memory holding AR/AW/W READY low (back-pressure), and pausing R inside a burst. (The
    kernel itself never back-pressures R and takes B as soon as its writer can: no bins there.)"""
    from cocotb.triggers import ReadOnly, RisingEdge

    dut, p = bench.dut, port["prefix"]
    beat = port["data_width"] // 8
    sig = {n: getattr(dut, f"{p}_{n}") for n in ("arvalid", "arready", "awvalid", "awready", "wvalid", "wready",
                                                  "rvalid", "rready", "rlast", "araddr",
                                                  "arlen", "awaddr", "awlen")}
    runs = {"ar": 0, "aw": 0, "w": 0, "r_gap": 0}
    in_r_burst = False
    while True:
        await RisingEdge(dut.ap_clk)
        await ReadOnly()
        v = {n: int(s.value) for n, s in sig.items() if n[-4:] in ("alid", "eady", "last")}
        for ch in ("ar", "aw", "w"):
            if v[f"{ch}valid"]:
                if v[f"{ch}ready"]:
                    model.stall(ch, runs[ch])
                    runs[ch] = 0
                    if ch != "w":
                        addr = int(sig[f"{ch}addr"].value)
                        beats = int(sig[f"{ch}len"].value) + 1
                        end = "cut_at_4k" if (addr & 0xFFF) + beats * beat == 0x1000 else "inside_page"
                        model.burst(ch, beats, end)
                else:
                    runs[ch] += 1
        if v["rvalid"] and v["rready"]:
            if in_r_burst:
                model.stall("r_gap", runs["r_gap"])
            runs["r_gap"] = 0
            in_r_burst = not v["rlast"]
        elif in_r_burst:
            runs["r_gap"] += 1


# -- reading exported coverage --------------------------------------------------------------------
@dataclass(frozen=True)
class FunctionalCoverage:
    """Merged bins: ``{point: {bin: hits}}``; a bin counts as hit if any run hit it."""

    points: dict

    @property
    def bins(self) -> int:
        return sum(len(b) for b in self.points.values())

    @property
    def hit(self) -> int:
        return sum(1 for b in self.points.values() for n in b.values() if n > 0)

    @property
    def ratio(self) -> float | None:
        return self.hit / self.bins if self.bins else None

    def missing(self) -> list[str]:
        return [f"{p} = {b}" for p, bins in sorted(self.points.items()) for b, n in bins.items() if n == 0]

    def table(self) -> str:
        width = max([len("cover point"), *(len(p) for p in self.points)])
        out = [f"{'cover point':<{width}}  bins hit", "-" * (width + 12)]
        for p, bins in sorted(self.points.items()):
            out.append(f"{p:<{width}}  {sum(n > 0 for n in bins.values())}/{len(bins)}")
        return "\n".join(out)


def read_fcov(*paths: str | os.PathLike) -> FunctionalCoverage:
    """Merge cocotb-coverage YAML exports (ValueError naming a file that is not one)."""
    import yaml

    merged: dict[str, dict[str, int]] = {}
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError:
            # the export writes the item type as a Python tag-less repr; read it leniently
            data = yaml.load(Path(path).read_text(), Loader=yaml.BaseLoader) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a cocotb-coverage YAML export")
        for name, item in data.items():
            if not isinstance(item, dict) or "bins:_hits" not in item:
                continue                         # a group node (its children carry the bins)
            short = str(name).removeprefix(ROOT + ".")
            bins = merged.setdefault(short, {})
            for b, n in (item["bins:_hits"] or {}).items():
                bins[str(b)] = bins.get(str(b), 0) + int(n)
    return FunctionalCoverage(merged)
