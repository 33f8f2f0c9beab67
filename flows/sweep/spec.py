"""The sweep spec (``sweep.yaml``): what to vary, what to run on each design point, what to optimize.

A spec names a base accelerator config (inline or a path), the parameters to vary (addressed
by config paths such as ``engines.0.rows``), a workload (a model's dimensions or a checkpoint's
``config.json``, a context length, a batch), the objectives, the constraints, the search and
the cluster. It is validated by pydantic v2 models (``extra="forbid"``, strict) like accelerator
configs; :func:`load_spec` raises :class:`SweepSpecError` naming every bad field, and
:func:`sweep_schema` is the JSON Schema (``hbmforge sweep --schema``).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hbmforge.config import ENGINE_KINDS, AcceleratorConfig, ConfigError, parse_config, read_yaml

__all__ = ["SPEC_VERSION", "METRICS", "Metric", "SweepSpecError", "Range", "ModelDims", "Workload",
           "Objective", "Constraints", "Search", "Cluster", "SweepSpec", "load_spec", "parse_spec",
           "sweep_schema", "apply_params", "domain_values", "LAYER_NAMES"]

SPEC_VERSION = 1
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|\d+))*$")


class SweepSpecError(ValueError):
    """A sweep spec that cannot run; the message names the field and what it allows."""


class Metric:
    """A figure a design point reports: its unit, the better direction and the step that measures it."""

    def __init__(self, name: str, unit: str, direction: str, source: str, what: str):
        self.name, self.unit, self.direction, self.source, self.what = name, unit, direction, source, what


#: every metric an objective or a constraint may name. ``source``: ``simulate`` (per-layer co-sim
#: of the workload), ``resources`` (analytic budget model or Yosys), ``yosys`` (Yosys only),
#: ``design`` (the config alone).
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("tokens_per_s", "tokens/s", "maximize", "simulate",
           "decode tokens per second at the kernel clock (projection: sum of per-layer co-sim runs)"),
    Metric("cycles_per_token", "cycles", "minimize", "simulate",
           "kernel cycles per decoded token (projection: sum of per-layer co-sim runs)"),
    Metric("hbm_efficiency", "fraction", "maximize", "simulate",
           "bytes the streaming ports (weights, KV) read / their peak (one word per port per cycle)"),
    Metric("hbm_gbytes_per_s", "GB/s", "maximize", "simulate",
           "memory read bandwidth at the kernel clock over the decode step"),
    Metric("lut", "LUT", "minimize", "resources", "LUTs (analytic model or Yosys estimate)"),
    Metric("ff", "FF", "minimize", "resources", "flip-flops (analytic model or Yosys estimate)"),
    Metric("dsp", "DSP", "minimize", "resources", "DSP48E2 slices (analytic model or Yosys estimate)"),
    Metric("bram", "BRAM36", "minimize", "resources", "block RAM in BRAM36 units (analytic model or Yosys)"),
    Metric("uram", "URAM", "minimize", "yosys", "UltraRAM blocks (Yosys estimate)"),
    Metric("utilization", "fraction", "minimize", "resources",
           "the largest fraction of a board resource the kernel uses"),
    Metric("logic_depth", "LUT levels", "minimize", "yosys",
           "LUT levels on the deepest register-to-register path (hbmforge estimate timing)"),
    Metric("fmax_estimate_mhz", "MHz", "maximize", "yosys",
           "Fmax estimate of the slowest delay-weighted path (a delay model, not timing analysis; docs/estimate.md)"),
    Metric("macs_per_cycle", "MAC/cycle", "maximize", "design", "peak matmul MACs per cycle"),
)}

#: the Linear layers and the attention of one decoder block, plus the LM head (once per token)
LAYER_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "attention",
               "lm_head")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Scalar = Union[bool, int, float, str]


class Range(_Strict):
    """A numeric parameter range: ``{low, high}`` (+ ``step``, ``log``). Ints if low, high and
    step are ints; grid search needs a ``step`` for float ranges."""

    low: int | float
    high: int | float
    step: int | float | None = Field(None, gt=0, description="grid spacing (values low, low+step, ... <= high)")
    log: bool = Field(False, description="sample on a log scale (random and Optuna search)")

    @model_validator(mode="after")
    def _bounds(self) -> "Range":
        for name in ("low", "high", "step"):
            v = getattr(self, name)
            if isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not self.low < self.high:
            raise ValueError(f"low must be less than high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high)) and isinstance(self.step, (int, type(None)))


class ModelDims(_Strict):
    """A decoder model's dimensions, with the names Hugging Face ``config.json`` uses."""

    name: str | None = Field(None, description="a label for the report")
    hidden_size: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_key_value_heads: int | None = Field(None, ge=1, description="default: num_attention_heads (no GQA)")
    head_dim: int | None = Field(None, ge=1, description="default: hidden_size / num_attention_heads")
    num_hidden_layers: int = Field(1, ge=1, description="decoder blocks (each block's layers repeat this often)")
    vocab_size: int | None = Field(None, ge=1, description="LM head width; counted when given")

    @model_validator(mode="after")
    def _heads(self) -> "ModelDims":
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                             f"num_key_value_heads {self.kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}; give head_dim")
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


class Workload(_Strict):
    """What each design point runs: one decode step of a model (``batch`` sequences at ``context``
    tokens), layer by layer on the co-simulation."""

    model: ModelDims | None = Field(None, description="the model's dimensions (or give checkpoint)")
    checkpoint: str | None = Field(None, description="a Hugging Face model directory or its config.json "
                                                     "(dimensions only: cycles do not depend on weight values)")
    context: int = Field(1024, ge=1, description="tokens in the KV cache at the decode step")
    batch: int = Field(1, ge=1, le=4096, description="sequences decoded together (activation rows per Linear)")
    weight_bits: Literal[2, 4, 8, "ternary"] = Field(4, description="weight format of every Linear")
    kv_bits: Literal[4, 8] = Field(8, description="KV cache width")
    window: int = Field(0, ge=0, description="attention sliding window (0: causal over the whole context)")
    sink: int = Field(0, ge=0, description="sink tokens kept besides the window")
    layers: list[Literal[LAYER_NAMES]] | None = Field(
        None, description=f"layers to run, of {', '.join(LAYER_NAMES)}; default: the whole block, "
                          "plus lm_head when the model has vocab_size")
    evaluator: str = Field("layers", description="how a point's workload is evaluated: 'layers' (per-layer "
                                                 "co-simulation, summed over the model) or a registered one")
    max_columns: int = Field(512, ge=2, le=1 << 16,
                             description="co-simulate at most this many output columns of a Linear; wider "
                                         "layers are run at two widths and extrapolated linearly")
    max_kv_heads: int = Field(2, ge=2, le=64,
                              description="co-simulate at most this many KV heads of the attention; more are "
                                          "extrapolated linearly from two runs")
    timeout: float = Field(600.0, gt=0, le=86400, description="seconds allowed per simulated layer run")
    seed: int = Field(0, ge=0, description="random weights and inputs")

    @model_validator(mode="after")
    def _source(self) -> "Workload":
        if (self.model is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of model (dimensions) and checkpoint (a path)")
        if self.layers is not None:
            if not self.layers:
                raise ValueError("layers must name at least one layer")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers has duplicates: {self.layers}")
        if self.sink and not self.window:
            raise ValueError("sink needs a sliding window > 0")
        return self

    def layer_names(self, model: ModelDims) -> list[str]:
        if self.layers is not None:
            return list(self.layers)
        return [n for n in LAYER_NAMES if n != "lm_head" or model.vocab_size]


class Objective(_Strict):
    """One objective: a metric and whether to minimize or maximize it (default: the metric's own)."""

    metric: str
    direction: Literal["minimize", "maximize"] | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {v!r}")
        return v

    @property
    def sense(self) -> str:
        return self.direction or METRICS[self.metric].direction


class Constraints(_Strict):
    """Which points count as feasible."""

    board_budget: bool = Field(True, description="the config's max_utilization of every board resource "
                                                 "(analytic model before generating; with estimate: yosys "
                                                 "also the Yosys totals)")
    max: dict[str, float] = Field(default_factory=dict, description="upper bounds, e.g. {utilization: 0.5}")
    min: dict[str, float] = Field(default_factory=dict, description="lower bounds, e.g. {tokens_per_s: 20}")

    @field_validator("max", "min")
    @classmethod
    def _metrics(cls, v: dict[str, float]) -> dict[str, float]:
        for k, bound in v.items():
            if k not in METRICS:
                raise ValueError(f"{k!r} is not a metric; metrics: {', '.join(METRICS)}")
            if not math.isfinite(bound):
                raise ValueError(f"bound of {k} must be finite, got {bound}")
        return v


class Search(_Strict):
    """How points are chosen: every grid point, random samples, or Optuna (NSGA-II or TPE)."""

    method: Literal["grid", "random", "nsga2", "tpe"] = "grid"
    trials: int | None = Field(None, ge=1, le=1_000_000,
                               description="points to evaluate (random/nsga2/tpe: required; grid: at most)")
    seed: int = Field(0, ge=0)
    population: int | None = Field(None, ge=2, le=10_000, description="nsga2 population (default min(20, trials))")

    @model_validator(mode="after")
    def _trials(self) -> "Search":
        if self.method != "grid" and self.trials is None:
            raise ValueError(f"trials is required for method {self.method!r}")
        if self.population is not None and self.method != "nsga2":
            raise ValueError("population applies to method 'nsga2' only")
        return self


class Cluster(_Strict):
    """Where the points run. ``hbmforge sweep --scheduler/--workers`` override ``address``/``workers``."""

    kind: Literal["local", "address", "slurm", "pbs"] = Field(
        "local", description="local: a LocalCluster on this machine; address: an existing scheduler; "
                             "slurm/pbs: batch jobs through dask-jobqueue")
    address: str | None = Field(None, description="scheduler address for kind 'address' (tcp://HOST:PORT)")
    workers: int | None = Field(None, ge=0, le=4096, description="local: worker processes (default: one "
                                "per core; 0 runs the points in this process); slurm/pbs: jobs to submit")
    point_timeout: float = Field(4 * 3600.0, gt=0, description="seconds a point may take from submission")
    connect_timeout: float = Field(30.0, gt=0, le=3600, description="seconds to reach a scheduler")
    jobqueue: dict[str, Any] = Field(default_factory=dict, description="slurm/pbs: dask-jobqueue cluster "
                                     "arguments (cores, memory, queue, account, walltime, ...)")

    @model_validator(mode="after")
    def _kind(self) -> "Cluster":
        if self.kind == "address" and not self.address:
            raise ValueError("kind 'address' needs address: tcp://HOST:PORT")
        if self.address and self.kind != "address":
            raise ValueError(f"address applies to kind 'address', not {self.kind!r}")
        if self.jobqueue and self.kind not in ("slurm", "pbs"):
            raise ValueError("jobqueue applies to kinds 'slurm' and 'pbs'")
        return self


class SweepSpec(_Strict):
    """A design-space sweep."""

    version: Literal[1] = Field(description="sweep spec format version; this release reads 1")
    name: str = Field(description="sweep name: the default output directory is sweep-<name>")
    base: dict[str, Any] | str = Field(description="the base accelerator config: inline, or a YAML path "
                                                   "(relative to the spec file)")
    parameters: dict[str, Union[list[Union[Scalar, list[Scalar]]], Range]] = Field(
        description="config path -> choices (a list) or a range ({low, high, step, log})")
    workload: Workload
    objectives: list[Union[str, Objective]] = Field(min_length=1, max_length=8)
    constraints: Constraints = Field(default_factory=Constraints)
    estimate: Literal["analytic", "yosys"] = Field(
        "analytic", description="resources from the instant analytic model or from Yosys synth_xilinx "
                                "(minutes per new design; cached by RTL hash)")
    estimate_timeout: float = Field(7200.0, gt=0, description="seconds allowed per Yosys run")
    search: Search = Field(default_factory=Search)
    cluster: Cluster = Field(default_factory=Cluster)
    output: str | None = Field(None, description="output directory (default ./sweep-<name>)")

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v):
        if isinstance(v, bool):
            raise ValueError(f"version must be the integer 1, got {v!r}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _IDENT.match(v):
            raise ValueError(f"name must match {_IDENT.pattern}, got {v!r}")
        return v

    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict) -> dict:
        if not v:
            raise ValueError("give at least one parameter to vary")
        for path, dom in v.items():
            if not _PATH.match(path):
                raise ValueError(f"{path!r} is not a config path (dotted keys and list indices, "
                                 "e.g. engines.0.rows)")
            if path.split(".")[0] in ("version", "name"):
                raise ValueError(f"{path!r}: the config's {path.split('.')[0]} cannot be swept")
            if isinstance(dom, list):
                if not dom:
                    raise ValueError(f"{path}: give at least one choice")
                seen = [json.dumps(c, sort_keys=True) for c in dom]
                if len(set(seen)) != len(seen):
                    raise ValueError(f"{path}: choices have duplicates: {dom}")
        return v

    @field_validator("objectives", mode="after")
    @classmethod
    def _objectives(cls, v: list) -> list:
        for o in v:
            if isinstance(o, str) and o not in METRICS:
                raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {o!r}")
        out = [Objective(metric=o) if isinstance(o, str) else o for o in v]
        names = [o.metric for o in out]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives repeat a metric: {names}")
        return out

    @model_validator(mode="after")
    def _sources(self) -> "SweepSpec":
        named = [o.metric for o in self.objectives] + list(self.constraints.max) + list(self.constraints.min)
        needs_yosys = [m for m in named if METRICS[m].source == "yosys"]
        if needs_yosys and self.estimate != "yosys":
            raise ValueError(f"{', '.join(needs_yosys)} come from Yosys: set estimate: yosys")
        if self.search.method == "grid":
            for path, dom in self.parameters.items():
                if isinstance(dom, Range) and not dom.is_int and dom.step is None:
                    raise ValueError(f"parameters.{path}: grid search needs a step for a float range")
                if isinstance(dom, Range) and dom.log:
                    raise ValueError(f"parameters.{path}: grid search takes no log range; give a step")
        return self

    # -- derived --------------------------------------------------------------------------------
    @property
    def objective_list(self) -> list[Objective]:
        return list(self.objectives)        # strings became Objective in the validator

    def grid_size(self) -> int:
        return math.prod(len(domain_values(d)) for d in self.parameters.values())

    def total_points(self) -> int:
        if self.search.method == "grid":
            n = self.grid_size()
            return min(n, self.search.trials) if self.search.trials else n
        return self.search.trials or 0

    def identity(self) -> str:
        """sha256 of what a point's results depend on (everything but the search budget, the timeouts,
        the cluster and the output): a resumed sweep must match it."""
        data = self.model_dump(mode="json", exclude={"cluster", "output", "estimate_timeout"})
        data["search"].pop("trials", None)
        data["workload"].pop("timeout", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def domain_values(dom) -> list:
    """Every value of a parameter domain on a grid (choices as given; a range by its step)."""
    if isinstance(dom, list):
        return list(dom)
    step = dom.step if dom.step is not None else 1
    n = int(math.floor((dom.high - dom.low) / step + 1e-9)) + 1
    if n > 100_000:
        raise SweepSpecError(f"a range of {n} grid values is too large (at most 100000); use a larger step")
    vals = [dom.low + i * step for i in range(n)]
    return [int(v) for v in vals] if dom.is_int else [round(v, 12) for v in vals]


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    """A copy of the config mapping ``base`` with each ``path: value`` set (paths as in the spec)."""
    out = copy.deepcopy(base)
    for path, value in params.items():
        keys = path.split(".")
        node = out
        for i, key in enumerate(keys[:-1]):
            node = _child(node, key, path, ".".join(keys[:i + 1]))
        last = keys[-1]
        if isinstance(node, list):
            node[_index(node, last, path, path)] = copy.deepcopy(value)
        else:
            node[last] = copy.deepcopy(value)
    return out


def _index(node: list, key: str, path: str, where: str) -> int:
    if not key.isdigit():
        raise SweepSpecError(f"invalid sweep spec: parameters.{path}: {where} is a list; {key!r} is not an index")
    idx = int(key)
    if idx >= len(node):
        raise SweepSpecError(f"invalid sweep spec: parameters.{path}: {where} is out of range (the base "
                             f"config has {len(node)} entries there)")
    return idx


def _child(node, key: str, path: str, where: str):
    if isinstance(node, list):
        return node[_index(node, key, path, where)]
    if not isinstance(node, dict):
        raise SweepSpecError(f"invalid sweep spec: parameters.{path}: {where} is not a mapping or a list "
                             "in the base config")
    if key not in node or node[key] is None:
        if key.isdigit():
            raise SweepSpecError(f"invalid sweep spec: parameters.{path}: {where} does not exist in the base config")
        node[key] = {}
    return node[key]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _loc(loc: tuple, prefix: tuple = ()) -> str:
    """A pydantic error location as a dotted path (without pydantic's union tags)."""
    parts = []
    for p in prefix + tuple(loc):
        if isinstance(p, str) and (p in ENGINE_KINDS and parts and parts[-1].isdigit() and parts[-2:-1] == ["engines"]):
            continue
        if p in ("list[union[bool,int,float,str,list[union[bool,int,float,str]]]]", "Range", "str", "Objective"):
            continue
        if isinstance(p, str) and (p.startswith("list[") or p.startswith("function-") or p.startswith("union[")):
            continue
        parts.append(str(p))
    return ".".join(parts) or "(top level)"


def _format(err: ValidationError, source: str) -> str:
    lines, seen = [f"invalid sweep spec {source}:"], set()
    errors = err.errors()
    # a parameter domain that is neither a list nor a range gives one error per union member
    for e in errors:
        loc = _loc(e["loc"])
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        elif e["type"] == "missing":
            msg = "field required"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
        if e["loc"][:1] == ("parameters",) and len(e["loc"]) >= 2 and e["type"] in (
                "list_type", "model_type", "model_attributes_type", "dict_type"):
            loc, msg = f"parameters.{e['loc'][1]}", "must be a list of choices or a range {low, high[, step, log]}"
        if e["loc"][:1] == ("objectives",) and len(e["loc"]) >= 2 and e["type"] in ("string_type", "model_type"):
            loc, msg = f"objectives.{e['loc'][1]}", (f"must be a metric name or {{metric, direction}}; "
                                                   f"metrics: {', '.join(METRICS)}")
        if e["loc"][:1] == ("base",) and e["type"] in ("string_type", "dict_type"):
            loc, msg = "base", "must be a config mapping or the path of a config YAML file"
        line = f"  {loc}: {msg}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return "\n".join(lines)


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return read_yaml(path, what)
    except ConfigError as err:
        raise SweepSpecError(str(err)) from None


class ResolvedSpec:
    """A validated spec with its base config and model dimensions read and checked."""

    def __init__(self, spec: SweepSpec, base: dict, model: ModelDims, source: str, root: Path):
        self.spec, self.base, self.model, self.source, self.root = spec, base, model, source, root

    def __getattr__(self, name):
        return getattr(self.spec, name)

    def config_for(self, params: dict[str, Any]) -> dict:
        return apply_params(self.base, params)

    def identity(self) -> str:
        h = hashlib.sha256(self.spec.identity().encode())
        h.update(json.dumps(self.base, sort_keys=True).encode())
        h.update(json.dumps(self.model.model_dump(mode="json"), sort_keys=True).encode())
        return h.hexdigest()

    def output_dir(self, override: str | Path | None = None) -> Path:
        if override is not None:
            return Path(override)
        return Path(self.spec.output) if self.spec.output else Path(f"sweep-{self.spec.name}")

    def to_json(self) -> dict:
        data = self.spec.model_dump(mode="json")
        data["base"] = self.base
        data["workload"]["model"] = self.model.model_dump(mode="json", exclude_none=True)
        data["workload"]["checkpoint"] = None
        return data


def _checkpoint_dims(path: Path) -> ModelDims:
    cfg_path = path / "config.json" if path.is_dir() else path
    try:
        data = json.loads(cfg_path.read_text())
    except OSError as err:
        raise SweepSpecError(f"workload.checkpoint: cannot read {cfg_path}: {err.strerror or err}") from None
    except ValueError as err:
        raise SweepSpecError(f"workload.checkpoint: {cfg_path} is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise SweepSpecError(f"workload.checkpoint: {cfg_path} does not hold a JSON object")
    data = data.get("text_config", data) if "hidden_size" not in data else data
    keys = [k for k in ModelDims.model_fields if k != "name"]
    dims = {k: data[k] for k in keys if data.get(k) is not None}
    dims["name"] = str(data.get("_name_or_path") or data.get("model_type") or cfg_path.parent.name)
    try:
        return ModelDims.model_validate(dims)
    except ValidationError as err:
        raise SweepSpecError(_format(err, str(cfg_path)).replace(
            f"invalid sweep spec {cfg_path}", f"workload.checkpoint: {cfg_path} has no usable model dimensions")) \
            from None


def _check_parameters(spec: SweepSpec, base: dict) -> None:
    """Every parameter path lands on a config field, and no single value is refused by the field's own
    check (combinations are checked per point: an invalid combination is an infeasible point)."""
    for path, dom in spec.parameters.items():
        values = domain_values(dom) if isinstance(dom, list) or dom.step is not None or dom.is_int and \
            (dom.high - dom.low) <= 64 else [dom.low, dom.high]
        for value in values:
            try:
                AcceleratorConfig.model_validate(apply_params(base, {path: value}))
            except ValidationError as err:
                for e in err.errors():
                    loc = _loc(e["loc"])
                    if loc != path:
                        continue
                    if e["type"] == "extra_forbidden":
                        raise SweepSpecError(f"invalid sweep spec: parameters.{path}: not a field of the "
                                             "accelerator config (see `hbmforge schema`)") from None
                    msg = e["msg"].removeprefix("Value error, ")
                    if e["type"] == "literal_error":
                        msg = f"{msg}, got {value!r}"
                    raise SweepSpecError(f"invalid sweep spec: parameters.{path}: value {value!r} is not "
                                         f"allowed: {msg}") from None


def parse_spec(data: Any, *, source: str = "<dict>", root: Path | None = None) -> ResolvedSpec:
    """Validate a spec mapping; read its base config and checkpoint (paths relative to ``root``)."""
    if not isinstance(data, dict):
        raise SweepSpecError(f"invalid sweep spec {source}: expected a mapping at the top level, "
                             f"got {type(data).__name__}")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SweepSpecError(_format(err, source)) from None
    root = Path(root) if root is not None else Path.cwd()
    if isinstance(spec.base, str):
        base_path = root / spec.base
        base = _read_yaml(base_path, "base config")
        base_source = str(base_path)
    else:
        base, base_source = spec.base, f"{source} (base)"
    try:
        parse_config(base, source=base_source)
    except ConfigError as err:
        raise SweepSpecError(f"invalid sweep spec {source}: base: {err}") from None
    wl = spec.workload
    model = wl.model if wl.model is not None else _checkpoint_dims(root / wl.checkpoint)
    _check_parameters(spec, base)
    return ResolvedSpec(spec, base, model, source, root)


def load_spec(path: str | Path) -> ResolvedSpec:
    """Read and validate a ``sweep.yaml`` (relative paths in it are relative to its directory)."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    data = _read_yaml(path, "sweep spec")
    return parse_spec(data, source=str(path), root=path.parent)


def sweep_schema() -> dict:
    schema = SweepSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "hbmforge sweep spec"
    return schema


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every grid point, in order (the first parameter varies slowest)."""
    names = list(spec.parameters)
    domains = [domain_values(spec.parameters[n]) for n in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*domains)]
