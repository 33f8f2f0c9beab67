"""Co-simulation build time and speed; prints one JSON object per line.

    python benchmarks/sim_speed.py                 # the fixture kernel (tests/fixtures)
    python benchmarks/sim_speed.py --starter u280  # the generated starter kernel (needs hbmforge.flows.emit)
    python benchmarks/sim_speed.py --design DIR    # any generated design dir (<kernel>.v + manifest.json)

Reports the build (or cache lookup) time and cycles per second: idle (clock
only) and, for the fixture, busy (its copy engine and w0 reader streaming at
one beat per cycle on both ports).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures"


def _mcps(cycles: int, seconds: float) -> float:
    return round(cycles / seconds / 1e6, 3)


def measure(design, manifest=None, *, fixture: bool, opt: str, label: str) -> dict:
    from hbmforge.sim.build import BuildOptions, build_library
    from hbmforge.sim.cosim import CoSim

    res = build_library(design, manifest, options=BuildOptions(opt=opt), progress=sys.stderr.isatty())
    out = {"bench": "sim_speed", "design": label, "opt": opt, "cache_hit": res.cache_hit,
           "build_s": round(res.seconds, 2), "stages_s": {k: round(v, 2) for k, v in res.stage_seconds.items()}}
    with CoSim(res.library, res.manifest) as sim:
        out["id"] = f"{sim.reg_read(0x100):#010x}"
        out["hash64"] = f"{sim.reg_read(0x108) | sim.reg_read(0x10C) << 32:#018x}"
        n = 2_000_000
        t0, c0 = time.perf_counter(), time.process_time()
        sim.step(n)
        out["idle_mcycles_per_s"] = _mcps(n, time.perf_counter() - t0)
        out["idle_mcycles_per_cpu_s"] = _mcps(n, time.process_time() - c0)   # robust on a shared machine
        if fixture:
            words = 500_000
            for reg, value in (("w0", 1 << 32), ("w0_words", words), ("program", 2 << 32), ("dst", 3 << 32),
                               ("count", words // 5)):
                sim.reg_write(reg, value)
            c0 = sim.cycles()
            sim.start()
            t0, p0 = time.perf_counter(), time.process_time()
            assert sim.run_until_interrupt(50_000_000), "fixture run did not finish"
            dt, dp = time.perf_counter() - t0, time.process_time() - p0
            out["busy_cycles"] = sim.cycles() - c0
            out["busy_mcycles_per_s"] = _mcps(out["busy_cycles"], dt)
            out["busy_mcycles_per_cpu_s"] = _mcps(out["busy_cycles"], dp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", type=Path, help="generated design dir")
    ap.add_argument("--starter", metavar="BOARD", help="generate and measure the starter kernel of BOARD")
    ap.add_argument("--opt", default="-O2", help="C++ optimisation of the model (default -O2)")
    args = ap.parse_args()
    if args.starter:
        from hbmforge.config import parse_config, starter_config
        from hbmforge.flows.emit import generate
        with tempfile.TemporaryDirectory() as tmp:
            generate(parse_config(starter_config(args.starter)), Path(tmp))
            print(json.dumps(measure(Path(tmp), fixture=False, opt=args.opt, label=f"starter-{args.starter}")))
    elif args.design:
        print(json.dumps(measure(args.design, fixture=False, opt=args.opt, label=str(args.design))))
    else:
        print(json.dumps(measure(FIXTURE / "fixture.v", FIXTURE / "fixture_manifest.json", fixture=True,
                                 opt=args.opt, label="fixture")))


if __name__ == "__main__":
    main()
