"""Quantization recipes: which weight format each projection gets, and the KV cache width.

A recipe is a dict or a YAML file::

    weights: int8                  # default for every projection: int8, int4, int2 or ternary
    kv_bits: 8                     # KV cache: 8 or 4 (one width for every layer's cache)
    ternary_scale: group           # ternary absmean per group (BitNet b1.58) or per tensor
    lm_head: int8                  # the LM head (default: `weights`)
    rules:                         # first match wins; patterns are fnmatch globs over names
      - match: "model.layers.*.mlp.*"          # HF module names (no ".weight") ...
        weights: int4
      - match: "layers.0.*"                    # ... or "layers.<i>.<projection>" (both families)
        weights: int8

Names a rule can match: the checkpoint's module names (``model.layers.3.self_attn.q_proj``,
``encoder.layer.0.intermediate.dense``) and the family-neutral ``layers.<i>.<proj>`` with the
projection names of :mod:`hbmforge.host.blocks` (``q_proj`` ... ``down_proj``, ``fc_in``, ``fc_out``).
A rule that matches no projection of the model is an error (a typo should not pass silently).
Validation errors name the field (``rules.1.weights``).
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["QuantRecipe", "LayerRule", "RecipeError", "load_recipe", "FORMATS", "engine_bits"]

FORMATS = ("int8", "int4", "int2", "ternary")
_ALIASES = {8: "int8", 4: "int4", 2: "int2", "8": "int8", "4": "int4", "2": "int2", "w8": "int8", "w4": "int4",
            "w2": "int2", "int8": "int8", "int4": "int4", "int2": "int2", "ternary": "ternary", "w1.58": "ternary",
            "1.58": "ternary"}
Format = Literal["int8", "int4", "int2", "ternary"]


class RecipeError(ValueError):
    """A quantization recipe that is malformed or does not fit the model or the design."""


def _format(value):
    if isinstance(value, bool):
        raise ValueError(f"a weight format is one of {', '.join(FORMATS)} (or 8, 4, 2), got {value!r}")
    key = value.lower() if isinstance(value, str) else value
    if key not in _ALIASES:
        raise ValueError(f"a weight format is one of {', '.join(FORMATS)} (or 8, 4, 2), got {value!r}")
    return _ALIASES[key]


def engine_bits(fmt: str):
    """Recipe format -> the ``bits`` the numerics and the matmul engine take (8, 4, 2, "ternary")."""
    return {"int8": 8, "int4": 4, "int2": 2, "ternary": "ternary"}[fmt]


class LayerRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: str = Field(min_length=1)
    weights: Format

    _fmt = field_validator("weights", mode="before")(lambda cls, v: _format(v))


class QuantRecipe(BaseModel):
    """A validated recipe (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: Format = "int8"
    kv_bits: Literal[4, 8] = 8
    ternary_scale: Literal["group", "tensor"] = "group"
    lm_head: Union[Format, None] = None
    rules: tuple[LayerRule, ...] = ()

    _fmt = field_validator("weights", "lm_head", mode="before")(
        lambda cls, v: v if v is None else _format(v))

    @field_validator("kv_bits", mode="before")
    @classmethod
    def _kv(cls, v):
        if isinstance(v, str) and v.lower() in ("kv8", "kv4", "8", "4"):
            return int(v.lower().removeprefix("kv"))
        if isinstance(v, bool):
            raise ValueError(f"kv_bits must be 8 or 4, got {v!r}")
        return v

    def weight_format(self, *names: str) -> str:
        """The format of the projection known by ``names`` (first matching rule, else the default)."""
        for rule in self.rules:
            if any(fnmatch.fnmatchcase(n, rule.match) for n in names):
                return rule.weights
        return self.weights

    def head_format(self) -> str:
        return self.lm_head or self.weights

    def check_rules(self, names: list[tuple[str, ...]]) -> None:
        """Every rule matches at least one projection (``names``: the aliases of each)."""
        for i, rule in enumerate(self.rules):
            if not any(fnmatch.fnmatchcase(n, rule.match) for alias in names for n in alias):
                example = ", ".join(names[0]) if names else "none"
                raise RecipeError(f"quant recipe field 'rules.{i}.match': {rule.match!r} matches no projection of "
                                  f"this model (names look like {example})")

    def formats(self) -> set[str]:
        return {self.weights, self.head_format(), *(r.weights for r in self.rules)}

    def describe(self) -> str:
        parts = [f"W:{self.weights}", f"KV{self.kv_bits}"]
        if self.lm_head:
            parts.append(f"lm_head:{self.lm_head}")
        parts += [f"{r.match}:{r.weights}" for r in self.rules]
        return " ".join(parts)


def load_recipe(quant) -> QuantRecipe:
    """``quant``: None (int8 weights, KV8), a format name ("int4"), a dict, a QuantRecipe, or the
    path of a YAML file; errors name the field."""
    if quant is None:
        return QuantRecipe()
    if isinstance(quant, QuantRecipe):
        return quant
    source = "quant"
    if isinstance(quant, Path) or (isinstance(quant, str) and (quant.endswith((".yaml", ".yml"))
                                                               or Path(quant).is_file())):
        path = Path(quant)
        try:
            quant = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise RecipeError(f"quant recipe {str(path)!r}: cannot read it ({err})") from None
        except yaml.YAMLError as err:
            raise RecipeError(f"quant recipe {str(path)!r} is not valid YAML: {err}") from None
        source = f"quant recipe {path.name}"
    if isinstance(quant, (str, int)) and not isinstance(quant, bool):
        try:
            quant = {"weights": _format(quant)}
        except ValueError as err:
            raise RecipeError(f"quant: {err}; or give a dict or a YAML recipe file") from None
    if not isinstance(quant, dict):
        raise RecipeError(f"{source} must be a mapping (weights, kv_bits, lm_head, ternary_scale, rules), a format "
                          f"name or a YAML file, got {type(quant).__name__}")
    try:
        return QuantRecipe.model_validate(quant)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "recipe"
        msg = e["msg"].removeprefix("Value error, ")
        got = "" if "got" in msg else f" (got {e.get('input')!r})"
        raise RecipeError(f"{source} field {where!r}: {msg}{got}") from None
