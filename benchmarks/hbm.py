"""Memory bandwidth of each board on the co-simulation, ideal and calibrated models; one JSON
object per line.

    python benchmarks/hbm.py                       # u280, u55c, kv260, zcu102
    python benchmarks/hbm.py --boards u280 --mib-per-port 4

Per board it generates the board's widest design (u280/u55c: 32 stream ports of 512 bits at the
board clock, the data port sharing pseudo-channel 0; kv260/zcu102: 4 HP ports) with the traffic
engine of ``hbmforge.generators.hbm_bench`` in the matmul's slot, builds its Verilator model
(cached), and runs descriptor programs on it: every port streams its own channel (sequential), or
reads blocks at random offsets of its channel (random), or streams a channel of another switch
group (HBM: crossing the switch). Bandwidth = bytes read on the stream ports / (CYCLES / clock).
Metrics (docs/hbm-model.md): ``hbm_seq_read_gbps`` (calibrated, with ``ratio_to_peak`` against the
data sheet's 460 GB/s and the measured anchor), ``hbm_random_read_gbps``, ``hbm_cross_read_gbps``,
``*_ideal`` for the ideal model, ``ddr_*`` on the edge boards, and the model's row-hit and refresh
counts. Figures are simulated, not measured on a board.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paths import writable_dir  # noqa: E402

BOARDS = ("u280", "u55c", "kv260", "zcu102")
#: the published anchor the calibrated model is checked against (Shuhai, FCCM 2020, U280)
MEASURED_SEQ_GBPS = {"u280": 425.0}
#: the data sheets' peak (DS963 / DS978: 460 GB/s; DS987: 19.2; UG1182: 17.06)
PEAK_GBPS = {"u280": 460.0, "u55c": 460.0, "kv260": 19.2, "zcu102": 17.06}


#: the kernel clock of AccLLM's and FlightLLM's U280 designs
SLOW_CLOCK_MHZ = 225.0


def bench_config(board: str) -> dict:
    """The board's widest traffic design: every memory channel a stream port."""
    from hbmforge.boards import load_board

    b = load_board(board)
    hbm = b.memory.kind == "hbm"
    ports = b.memory.channels
    width = 512 if hbm else b.memory.axi_data_width      # 512-bit HBM ports: the switch's 256 x 450 MHz is the limit
    lanes = ports * width // 8                            # int8 lanes x 8 bits = one combined word
    lanes = min(lanes, 1024)
    return {
        "version": 1, "name": f"hbm_bench_{board}", "board": board, "clock_mhz": b.default_clock_mhz,
        "axi": {"data_width": width, "max_burst_beats": 4096 // (width // 8) if width == 512 else 32,
                "max_outstanding": 32, "id_width": 4},
        "engines": [{"kind": "matmul", "rows": 1, "lanes": lanes, "weight_ports": ports, "weight_bits": [8],
                     "group_size": max(lanes, 16), "max_k": 4096 if lanes <= 4096 else lanes}],
    }


def build(board: str, work: Path):
    """(CoSim, layout, build seconds) of the board's traffic design."""
    from hbmforge.config import parse_config
    from hbmforge.design import load_design
    from hbmforge.flows.emit import generate
    from hbmforge.generators.hbm_bench import stream_read_engines
    from hbmforge.sim.build import build_library
    from hbmforge.sim.cosim import CoSim

    cfg = parse_config(bench_config(board), source=f"benchmarks/hbm.py:{board}")
    layout = load_design(cfg, check_budget=False)        # the matmul's budget does not apply: it is not built
    design = generate(cfg, work / board, engines=stream_read_engines(layout))
    res = build_library(design.out_dir, progress=sys.stderr.isatty())
    return CoSim(res.library, res.manifest), layout, res.seconds


def run_job(sim, layout, *, words: int, commands: int, span: int = 0, channel_of=None,
            stagger: int = 0) -> dict:
    """One traffic job on every stream port; ``span`` > 0: random blocks within ``span`` bytes;
    ``stagger``: bytes between the DDR ports' slices beyond their power-of-two spacing."""
    from hbmforge.encodings import Opcode, WeightFormat

    cfg = layout.config
    board = cfg.board_info
    chan_bytes = board.memory.channel_size_mib << 20
    channels = cfg.port_channels()
    n_ports = cfg.stream_ports
    fields = dict.fromkeys(layout.fields_for(int(Opcode.MATMUL)), 0)
    fields.update({"op": int(Opcode.MATMUL), "m": words, "n": commands, "k": layout.matmul.k_align,
                   "wbits": int(WeightFormat.INT8), "x_addr": span})
    for p in range(n_ports):
        ch = channels[f"w{p}"] if channel_of is None else channel_of(p)
        # HBM: the start of the port's pseudo-channel; DDR (one memory): a slice of it per port,
        # each slice starting ``banks / ports`` banks after the one before (``stagger``)
        base = ch * chan_bytes if board.memory.kind == "hbm" else \
            p * (chan_bytes // max(n_ports, 1) // 2) + p * stagger
        fields[f"w_addr{p}"] = base
    code, why = layout.validate_descriptor(fields)
    assert not code, why
    program = (board.memory.channel_size_mib << 20) - 4096 if board.memory.kind == "hbm" else chan_bytes - 4096
    sim.mem_write(program, layout.encode_descriptor(fields))
    sim.reg_write("program", program)
    sim.reg_write("count", 1)
    before = sim.memory_stats()
    sim.start()
    if not sim.run_until_interrupt(2_000_000_000, timeout=3600):
        raise RuntimeError(f"traffic job did not finish ({sim.last_stop})")
    sim.ack_interrupt()
    status = sim.reg_read("STATUS")
    assert status == 0, f"STATUS {status:#x}"
    cycles = sim.reg_read("CYCLES")
    got = sum(sim.reg_read(f"W{p}_BYTES_READ") for p in range(n_ports))
    want = n_ports * words * commands * layout.word_bytes
    assert got == want, f"read {got} bytes, expected {want}"
    after = sim.memory_stats()
    delta = {k: a - b for k, a, b in zip(after._fields, after, before)}
    return {"bytes": got, "cycles": cycles, "gbps": got / (cycles / (cfg.clock * 1e6)) / 1e9, "dram": delta}


def bench_board(board: str, work: Path, mib_per_port: float) -> list[dict]:
    t0 = time.perf_counter()
    sim, layout, build_s = build(board, work)
    cfg = layout.config
    hbm = cfg.board_info.memory.kind == "hbm"
    kind = "hbm" if hbm else "ddr"
    word = layout.word_bytes
    peak = PEAK_GBPS[board]
    common = {"bench": "hbm", "board": board, "ports": cfg.stream_ports, "port_bits": cfg.data_width,
              "clock_mhz": cfg.clock}
    rows = []
    seq_words = 4096 // word * 16                                 # 64 KiB per command
    seq_cmds = max(1, int(mib_per_port * (1 << 20)) // (seq_words * word))
    results = {}
    # DDR: the four HP ports' streams share one channel; bank-aligned slices walk the same bank in
    # lockstep and take its row from each other, so the achievable figure staggers them by
    # banks / ports banks (what a bank-aware allocator does); the aligned run is reported beside
    dram = cfg.board_info.memory.dram
    stagger = 0 if hbm or dram is None else dram.banks // max(cfg.stream_ports, 1) * dram.page_bytes
    for model in ("ideal", "calibrated"):
        sim.set_memory_model(model)
        r = run_job(sim, layout, words=seq_words, commands=seq_cmds, stagger=stagger)
        results[("seq", model)] = r
        suffix = "" if model == "calibrated" else "_ideal"
        rows.append({**common, "metric": f"{kind}_seq_read_gbps{suffix}", "value": round(r["gbps"], 2),
                     "unit": "GB/s", "model": model, "peak_gbps": peak, "ratio_to_peak": round(r["gbps"] / peak, 4),
                     **({"measured_gbps": MEASURED_SEQ_GBPS[board],
                         "ratio_to_measured": round(r["gbps"] / MEASURED_SEQ_GBPS[board], 4)}
                        if board in MEASURED_SEQ_GBPS else {}),
                     "bytes": r["bytes"], "cycles": r["cycles"], **({"stagger_bytes": stagger} if stagger else {}),
                     **({"dram": r["dram"]} if model == "calibrated" else {})})
    seq = results[("seq", "calibrated")]["gbps"]
    if stagger:
        sim.set_memory_model("calibrated")
        r = run_job(sim, layout, words=seq_words, commands=seq_cmds)
        rows.append({**common, "metric": "ddr_seq_read_gbps_bank_aligned", "value": round(r["gbps"], 2),
                     "unit": "GB/s", "model": "calibrated", "peak_gbps": peak, "ratio_to_peak": round(r["gbps"] / peak, 4),
                     "ratio_to_calibrated_seq": round(r["gbps"] / seq, 4), "bytes": r["bytes"], "cycles": r["cycles"],
                     "dram": r["dram"], "note": "the ports' slices bank-aligned: their streams take rows from each other"})
    if hbm:
        # the same reads with the kernel at AccLLM's and FlightLLM's 225 MHz: the memory's GB/s should
        # not change with the kernel clock while the ports (512 bits: 14.4 GB/s) are not the limit
        sim.set_memory_model("calibrated", clock_mhz=SLOW_CLOCK_MHZ)
        r = run_job(sim, layout, words=seq_words, commands=seq_cmds)
        gbps = r["bytes"] / (r["cycles"] / (SLOW_CLOCK_MHZ * 1e6)) / 1e9
        rows.append({**common, "clock_mhz": SLOW_CLOCK_MHZ, "metric": "hbm_seq_read_gbps_225mhz",
                     "value": round(gbps, 2), "unit": "GB/s", "model": "calibrated",
                     "port_peak_gbps": round(cfg.stream_ports * word * SLOW_CLOCK_MHZ / 1e3, 1),
                     "ratio_to_calibrated_seq": round(gbps / seq, 4), "bytes": r["bytes"], "cycles": r["cycles"]})
    sim.set_memory_model("calibrated")
    chan_bytes = cfg.board_info.memory.channel_size_mib << 20
    span = chan_bytes if hbm else chan_bytes // cfg.stream_ports // 2
    span = 1 << (span.bit_length() - 1)
    for block in (word, 1024):
        words = block // word
        cmds = max(64, int(mib_per_port * (1 << 20) / 4) // block)
        r = run_job(sim, layout, words=words, commands=cmds, span=span)
        rows.append({**common, "metric": f"{kind}_random_read_gbps", "value": round(r["gbps"], 2), "unit": "GB/s",
                     "model": "calibrated", "block_bytes": block, "span_bytes": span,
                     "ratio_to_peak": round(r["gbps"] / peak, 4),
                     "ratio_to_calibrated_seq": round(r["gbps"] / seq, 4), "dram": r["dram"]})
    if hbm:
        n = cfg.board_info.memory.channels
        for name, shift in (("next_group", 4), ("other_stack", n // 2)):
            r = run_job(sim, layout, words=seq_words, commands=max(1, seq_cmds // 2),
                        channel_of=lambda p, s=shift: (p + s) % n)
            rows.append({**common, "metric": "hbm_cross_read_gbps", "value": round(r["gbps"], 2), "unit": "GB/s",
                         "model": "calibrated", "target": name, "ratio_to_peak": round(r["gbps"] / peak, 4),
                         "ratio_to_calibrated_seq": round(r["gbps"] / seq, 4), "dram": r["dram"]})
    sim.close()
    rows.append({**common, "metric": "bench_seconds", "value": round(time.perf_counter() - t0, 1), "unit": "s",
                 "build_seconds": round(build_s, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default=",".join(BOARDS), help="comma-separated boards")
    ap.add_argument("--mib-per-port", type=float, default=2.0, help="MiB each port streams in the sequential runs")
    ap.add_argument("--work", type=Path, default=None, help="directory for the generated designs")
    args = ap.parse_args()
    boards = [b for b in args.boards.split(",") if b]
    bad = [b for b in boards if b not in BOARDS]
    if bad:
        ap.error(f"unknown board(s) {bad}; choose from {', '.join(BOARDS)}")
    if not 0 < args.mib_per_port <= 256:
        ap.error("--mib-per-port must be in (0, 256]")
    twice = sorted({b for b in boards if boards.count(b) > 1})
    if twice:
        ap.error(f"--boards lists {', '.join(twice)} more than once")
    if args.work is not None and not writable_dir(args.work):
        ap.error(f"--work {args.work}: not a directory that can be written")
    with tempfile.TemporaryDirectory(prefix="hbm_bench_") as tmp:
        work = args.work or Path(tmp)
        for board in boards:
            for row in bench_board(board, work, args.mib_per_port):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
