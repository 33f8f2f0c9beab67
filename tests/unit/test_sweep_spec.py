"""The sweep spec, search, planning and results logic (no simulation): bad specs are refused
naming the field, parameters land on config paths, the planner says why a design cannot run a
workload, the Pareto front and the tables are what they claim."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from hbmforge.config import parse_config
from hbmforge.design import load_design
from hbmforge.flows.sweep import SweepSpecError, load_spec, parse_spec, sweep_schema
from hbmforge.flows.sweep.results import pareto_front, write_best_configs, write_table
from hbmforge.flows.sweep.search import GridSearch, RandomSearch
from hbmforge.flows.sweep.spec import apply_params, domain_values
from hbmforge.flows.sweep.store import PointRow
from hbmforge.flows.sweep.workload import Infeasible, LayerEvaluator, extrapolate

from designs import tiny_attention_config_dict, tiny_sweep_spec_dict


def invoke(*args):
    from typer.testing import CliRunner

    from hbmforge.flows.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _error(spec: dict) -> str:
    with pytest.raises(SweepSpecError) as info:
        parse_spec(spec)
    return str(info.value)


@pytest.mark.parametrize("change, words", [
    ({"parameterz": {}}, ["parameterz: unknown field"]),
    ({"objectives": ["speed"]}, ["objectives", "metric must be one of", "'speed'"]),
    ({"objectives": [{"metric": "lut", "direction": "up"}]}, ["objectives.0.direction", "'up'"]),
    ({"objectives": ["logic_depth"]}, ["logic_depth come from Yosys: set estimate: yosys"]),
    ({"parameters": {"engines.0.rowz": [2, 4]}}, ["parameters.engines.0.rowz: not a field"]),
    ({"parameters": {"engines.0.lanes": [16, 24]}}, ["parameters.engines.0.lanes: value 24", "power of two"]),
    ({"parameters": {"engines.3.rows": [2]}}, ["parameters.engines.3.rows", "out of range"]),
    ({"parameters": {"clock_mhz": {"low": 200.0, "high": 300.0}}}, ["parameters.clock_mhz", "needs a step"]),
    ({"parameters": {"clock_mhz": {"low": 300, "high": 200}}}, ["parameters.clock_mhz", "low must be less"]),
    ({"parameters": {"clock_mhz": 250}}, ["parameters.clock_mhz", "a list of choices or a range"]),
    ({"parameters": {"engines.0.rows": [2, 2]}}, ["engines.0.rows: choices have duplicates"]),
    ({"search": {"method": "nsga2"}}, ["search", "trials is required"]),
    ({"search": {"method": "annealing"}}, ["search.method", "'annealing'"]),
    ({"version": 2}, ["version"]),
    ({"cluster": {"kind": "address"}}, ["cluster", "needs address"]),
    ({"base": 5}, ["base: must be a config mapping or the path"]),
])
def test_bad_spec_is_refused_naming_the_field(change, words):
    msg = _error(tiny_sweep_spec_dict(**change))
    for w in words:
        assert w in msg, msg


def test_bad_workload_names_its_field():
    spec = tiny_sweep_spec_dict()
    spec["workload"]["layers"] = ["q_proj", "mlp"]
    assert "workload.layers.1" in _error(spec)
    spec = tiny_sweep_spec_dict()
    spec["workload"]["model"]["num_key_value_heads"] = 3
    assert "multiple of num_key_value_heads 3" in _error(spec)
    spec = tiny_sweep_spec_dict()
    spec["workload"]["checkpoint"] = "x"
    assert "exactly one of model" in _error(spec)
    spec = tiny_sweep_spec_dict()
    spec["workload"]["batch"] = True          # strict: a YAML true is not a number
    assert "workload.batch" in _error(spec)


def test_bad_base_config_is_refused_with_its_field(tmp_path):
    spec = tiny_sweep_spec_dict()
    spec["base"]["engines"][0]["lanes"] = 24
    assert "base:" in _error(spec) and "engines.0.lanes" in _error(spec)
    spec = tiny_sweep_spec_dict(base="missing.yaml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepSpecError, match="cannot read base config .*missing.yaml"):
        load_spec(tmp_path / "s.yaml")


def test_base_path_and_checkpoint_are_relative_to_the_spec(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny.yaml").write_text(yaml.safe_dump(tiny_sweep_spec_dict()["base"]))
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 8,
        "num_key_value_heads": 2, "num_hidden_layers": 3, "vocab_size": 1000, "rope_theta": 1e4}))
    spec = tiny_sweep_spec_dict(base="cfg/tiny.yaml")
    spec["workload"] = {"checkpoint": "llm", "context": 64}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    r = load_spec(tmp_path / "s.yaml")
    assert r.base["name"] == "tiny"
    assert (r.model.hidden_size, r.model.kv_heads, r.model.head_size, r.model.vocab_size) == (256, 2, 32, 1000)
    assert r.spec.workload.layer_names(r.model)[-1] == "lm_head"


def test_schema_forbids_unknown_fields_and_names_the_metrics():
    s = sweep_schema()
    assert s["additionalProperties"] is False and s["title"] == "hbmforge sweep spec"
    text = json.dumps(s)
    assert "tokens_per_s" in text and "nsga2" in text


def test_params_land_on_config_paths():
    base = tiny_sweep_spec_dict()["base"]
    cfg = apply_params(base, {"engines.0.rows": 4, "clock_mhz": 250, "axi.max_outstanding": 2})
    parsed = parse_config(cfg)
    assert (parsed.matmul.rows, parsed.clock, parsed.axi.max_outstanding) == (4, 250, 2)
    assert base["engines"][0]["rows"] == 2          # the base is not changed


def test_grid_is_the_cartesian_product_in_order_and_trials_cap_it():
    r = parse_spec(tiny_sweep_spec_dict(parameters={"engines.0.rows": [2, 4],
                                                    "clock_mhz": {"low": 200, "high": 300, "step": 50}}))
    g = GridSearch(r)
    pts = [g.ask().params for _ in range(g.total)]
    assert g.ask() is None and len(pts) == 6
    assert pts[:3] == [{"engines.0.rows": 2, "clock_mhz": c} for c in (200, 250, 300)]
    r = parse_spec(tiny_sweep_spec_dict(search={"method": "grid", "trials": 3}))
    assert GridSearch(r).total == 3 == r.total_points()


def test_random_search_is_seeded_and_stays_in_the_domain():
    spec = tiny_sweep_spec_dict(parameters={"clock_mhz": {"low": 100.0, "high": 400.0, "log": True},
                                            "engines.0.rows": [1, 2, 4]},
                                search={"method": "random", "trials": 20, "seed": 3})
    a = [c.params for c in iter(RandomSearch(parse_spec(spec)).ask, None)]
    b = [c.params for c in iter(RandomSearch(parse_spec(spec)).ask, None)]
    assert a == b and len(a) == 20
    assert all(100.0 <= p["clock_mhz"] <= 400.0 and p["engines.0.rows"] in (1, 2, 4) for p in a)
    assert domain_values(parse_spec(tiny_sweep_spec_dict()).parameters["engines.0.rows"]) == [2, 4]


def _layout(**engine):
    return load_design(tiny_sweep_spec_dict()["base"] | {"engines": [tiny_sweep_spec_dict()["base"]["engines"][0]
                                                                     | engine]})


def test_plan_says_why_a_design_cannot_run_the_workload():
    r = parse_spec(tiny_sweep_spec_dict())
    ev = LayerEvaluator()
    with pytest.raises(Infeasible, match=r"down_proj: k must be at most the engine's max_k 128, got 256"):
        ev.plan(_layout(max_k=128), r.workload, r.model)
    wl = r.workload.model_copy(update={"weight_bits": 2})
    with pytest.raises(Infeasible, match=r"q_proj: wbits must be one of this design's weight_bits \[4, 8\], got 2"):
        ev.plan(_layout(), wl, r.model)
    wl = r.workload.model_copy(update={"layers": ["attention"]})
    with pytest.raises(Infeasible, match="no attention engine"):
        ev.plan(_layout(), wl, r.model)
    att = load_design(tiny_attention_config_dict())          # head_dim 16; the model's is 32
    with pytest.raises(Infeasible, match="head_dim 32 differs from engines.1.head_dim 16"):
        ev.plan(att, wl, r.model)


def test_plan_extrapolates_wide_layers_from_two_runs_and_shares_equal_runs():
    r = parse_spec(tiny_sweep_spec_dict())
    plans = {p.name: p for p in LayerEvaluator().plan(_layout(), r.workload, r.model)}
    assert plans["k_proj"].axis is None and plans["k_proj"].dims["n"] == 64
    assert plans["q_proj"].axis_values == (32, 64) and plans["q_proj"].full == 128
    assert plans["q_proj"].repeat == 2                        # num_hidden_layers
    keys = {run.key for p in plans.values() for run in p.runs}
    assert len(keys) == 4                                     # q/o and k share runs


def test_extrapolation_is_exact_on_a_line():
    assert extrapolate(100 + 3 * 32, 100 + 3 * 64, 32, 64, 1000) == 100 + 3 * 1000
    assert math.isclose(extrapolate(5.0, 9.0, 1, 2, 8), 33.0)


def _row(i, status="ok", **metrics):
    return PointRow(point_hash=f"h{i}", index=i, status=status, params={"engines.0.rows": i},
                    config=tiny_sweep_spec_dict()["base"], config_hash=f"c{i}", metrics=metrics)


def test_pareto_front_keeps_the_non_dominated_feasible_points():
    r = parse_spec(tiny_sweep_spec_dict())                    # maximize tokens_per_s, minimize lut
    rows = [_row(0, tokens_per_s=10, lut=100), _row(1, tokens_per_s=20, lut=200), _row(2, tokens_per_s=15, lut=300),
            _row(3, tokens_per_s=20, lut=250), _row(4, "infeasible", tokens_per_s=99, lut=1), _row(5, "failed")]
    assert [p.index for p in pareto_front(rows, r.objective_list)] == [0, 1]


def test_table_and_best_configs_carry_every_point(tmp_path):
    import pyarrow.parquet as pq

    r = parse_spec(tiny_sweep_spec_dict())
    rows = [_row(0, tokens_per_s=10.5, lut=100), _row(1, tokens_per_s=20.0, lut=200),
            PointRow(point_hash="h2", index=2, status="infeasible", reason="too big", params={"engines.0.rows": [1]},
                     config={})]
    csv_path, pq_path = write_table(rows, r.objective_list, tmp_path)
    t = pq.read_table(pq_path).to_pylist()
    assert [x["status"] for x in t] == ["ok", "ok", "infeasible"] and t[2]["reason"] == "too big"
    assert [x["pareto"] for x in t] == [True, True, False] and t[1]["tokens_per_s"] == 20.0
    assert t[2]["param.engines.0.rows"] == "[1]"              # a list value as its JSON text
    assert csv_path.read_text().splitlines()[0].startswith("index,trial,status,reason,config_hash")
    best = write_best_configs(rows, r.objective_list, tmp_path, "t")
    assert set(best) == {"tokens_per_s", "lut"}
    assert "20" in best["tokens_per_s"].read_text().splitlines()[0]
    assert parse_config(yaml.safe_load(best["lut"].read_text())).name == "tiny"


def test_cli_prints_the_schema_and_refuses_bad_input_without_traceback(tmp_path):
    res = invoke("sweep", "--schema")
    assert res.exit_code == 0 and json.loads(res.stdout)["title"] == "hbmforge sweep spec"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(tiny_sweep_spec_dict(objectives=["speed"])))
    for args, words in [(("sweep", tmp_path / "none.yaml"), "cannot read sweep spec"),
                        (("sweep", spec), "objectives"),
                        (("sweep",), "give a sweep spec")]:
        res = invoke(*args)
        assert res.exit_code == 2 and "Traceback" not in res.output and res.stdout == "", res.output
        assert words in res.stderr, res.stderr
    spec.write_text(yaml.safe_dump(tiny_sweep_spec_dict()))
    for args, words in [(("--workers", "-1"), "--workers must be an integer >= 0"),
                        (("--scheduler", "not an address"), "--scheduler must be an address"),
                        (("--scheduler", "tcp://127.0.0.1:1", "--workers", "2"), "not both")]:
        res = invoke("sweep", spec, "-o", tmp_path / "out", *args)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert words in res.stderr, res.stderr
        assert not (tmp_path / "out").exists()               # checked before anything is written


def test_an_output_directory_holding_another_sweep_is_refused_before_anything_starts(tmp_path):
    from hbmforge.flows.sweep.store import SweepStore

    store = SweepStore(tmp_path / "out")
    store.open("another sweep", {}, resume=False)
    store.close()
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(tiny_sweep_spec_dict()))
    for extra in ((), ("--resume",)):
        res = invoke("sweep", spec, "-o", tmp_path / "out", "--workers", "2", *extra)
        assert res.exit_code == 2 and "spec differs from this one" in res.stderr, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sweep.db"]
