"""Can this design hold and run this model? Checked before anything is quantized or uploaded.

Each refusal is a :class:`ModelFitError` naming what does not fit: a missing engine or
activation table, the head size against the attention engine's ``head_dim``, every activation
row (hidden, MLP, heads x head_dim) against the matmul's ``max_k``, the vector engine's
``max_dim`` and the ``k_align`` (block programs hold whole rows on chip), a weight format or KV
width the engines lack, the context, or the memory of a port (weights, group scales and the KV
pools of ``sequences`` full sequences, page-rounded as the allocator hands them out, against
the free bytes of the port's bank).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hbmforge.engines.attention import MAX_HEADS, attention_geometry
from hbmforge.mathutil import ceil_div, round_up
from hbmforge.numerics.reference import DecoderSpec, EncoderSpec

from ..allocator import PAGE_BYTES
from ..device import Device
from ..packing import engine_format
from .heads import HeadPadding
from .recipe import QuantRecipe, engine_bits

__all__ = ["ModelFitError", "Projection", "projections", "check_fit", "context_limit", "head_padding"]


class ModelFitError(ValueError):
    """The design cannot hold or run the model; the message names what does not fit."""


@dataclass(frozen=True)
class Projection:
    """One matmul of the model: ``layer`` (None: LM head), block name, HF module name, [N, K]."""

    layer: int | None
    name: str
    module: str
    out_features: int
    in_features: int
    bias: bool = False

    @property
    def aliases(self) -> tuple[str, ...]:
        short = "lm_head" if self.layer is None else f"layers.{self.layer}.{self.name}"
        return (self.module, short)


def projections(spec, head_dim: int | None = None) -> list[Projection]:
    """Every projection of the model in block order, the LM head last (decoders); with
    ``head_dim``, the shapes of heads zero-padded to it (:mod:`.heads`)."""
    out: list[Projection] = []
    hd = head_dim or spec.head_dim
    if isinstance(spec, DecoderSpec):
        d, f = spec.hidden_size, spec.intermediate_size
        qd, kd = spec.q_heads * hd, spec.kv_heads * hd
        for i in range(spec.num_layers):
            p = f"model.layers.{i}."
            out += [Projection(i, "q_proj", p + "self_attn.q_proj", qd, d, spec.qkv_bias),
                    Projection(i, "k_proj", p + "self_attn.k_proj", kd, d, spec.qkv_bias),
                    Projection(i, "v_proj", p + "self_attn.v_proj", kd, d, spec.qkv_bias),
                    Projection(i, "o_proj", p + "self_attn.o_proj", d, qd, spec.o_bias),
                    Projection(i, "gate_proj", p + "mlp.gate_proj", f, d, spec.mlp_bias),
                    Projection(i, "up_proj", p + "mlp.up_proj", f, d, spec.mlp_bias),
                    Projection(i, "down_proj", p + "mlp.down_proj", d, f, spec.mlp_bias)]
        head = "model.embed_tokens" if spec.tie_word_embeddings else "lm_head"
        out.append(Projection(None, "lm_head", head, spec.vocab_size, d))
    else:
        d, f, qd = spec.hidden_size, spec.intermediate_size, spec.heads * hd
        for i in range(spec.num_layers):
            p = f"encoder.layer.{i}."
            out += [Projection(i, "q_proj", p + "attention.self.query", qd, d, True),
                    Projection(i, "k_proj", p + "attention.self.key", qd, d, True),
                    Projection(i, "v_proj", p + "attention.self.value", qd, d, True),
                    Projection(i, "o_proj", p + "attention.output.dense", d, qd, True),
                    Projection(i, "fc_in", p + "intermediate.dense", f, d, True),
                    Projection(i, "fc_out", p + "output.dense", d, f, True)]
    return out


def head_padding(spec, engine_head_dim: int) -> HeadPadding:
    """How the model's heads sit in the attention engine's (zero-padded when narrower, :mod:`.heads`);
    ModelFitError when they are wider."""
    if spec.head_dim > engine_head_dim:
        raise ModelFitError(f"the model's head_dim {spec.head_dim} exceeds the attention engine's head_dim "
                            f"{engine_head_dim}: the design cannot run this model's attention (a narrower head "
                            "is zero-padded to the engine's; a wider one needs a design with a larger head_dim)")
    return HeadPadding(spec.head_dim, engine_head_dim)


def projection_format(recipe: QuantRecipe, proj: Projection) -> str:
    return recipe.head_format() if proj.layer is None else recipe.weight_format(*proj.aliases)


def context_limit(device: Device, spec, max_context: int | None) -> int:
    """Tokens one sequence may hold: ``max_context`` if given (checked), else the smallest of the
    attention engine's ``max_context``, the model's ``max_position_embeddings`` and the positions
    from which a sliding window or dynamic RoPE scaling would change its attention."""
    att = device.layout.attention
    engine = att.max_context if att is not None else 0
    model_max = spec.max_positions
    exact = getattr(spec, "exact_positions", None)
    if max_context is None:
        return min(engine, model_max, exact or model_max)
    if max_context > engine:
        raise ModelFitError(f"max_context {max_context} exceeds the attention engine's max_context {engine}")
    if max_context > model_max:
        raise ModelFitError(f"max_context {max_context} exceeds the model's max_position_embeddings {model_max}")
    if exact is not None and max_context > exact:
        raise ModelFitError(f"max_context {max_context} exceeds {exact}, where the model's config.json field "
                            f"{spec.exact_positions_field!r} changes its attention (not modelled)")
    return max_context


def _bank_free(device: Device, port: str) -> tuple[str, int]:
    region = device._bank_region(device.layout.port(port))
    alloc = device._allocators.get(region.name)
    return region.name, region.size - (alloc.bytes_used if alloc is not None else 0)


def _pages(nbytes: int) -> int:
    return round_up(max(nbytes, 1), PAGE_BYTES)


def check_fit(device: Device, spec, recipe: QuantRecipe, max_context: int, sequences: int = 1) -> dict[str, int]:
    """Refuse (ModelFitError) what this design cannot run with KV pools for ``sequences`` full
    sequences; returns the bytes needed per port."""
    lay = device.layout
    kind = "decoder" if isinstance(spec, DecoderSpec) else "encoder"
    for family in ("matmul", "attention", "vector"):
        if not lay.has(family):
            raise ModelFitError(f"design {lay.kernel!r} has no {family} engine; a {kind} needs matmul, attention "
                                f"and vector engines (add `kind: {family}` to its config)")
    att, mm, geom = lay.attention, lay.mm, lay.matmul
    vec = lay.config.engine("vector")
    act = "silu" if isinstance(spec, DecoderSpec) else "gelu"
    if act not in vec.activations:
        raise ModelFitError(f"the vector engine has no {act} table (activations: {list(vec.activations)}); a {kind} "
                            f"of this family needs {act}")
    heads = spec.q_heads if isinstance(spec, DecoderSpec) else spec.heads
    kv_heads = spec.kv_heads if isinstance(spec, DecoderSpec) else spec.heads
    pad = head_padding(spec, att.head_dim)
    hd = pad.device_dim
    padded = f" (heads zero-padded to the engine's head_dim {hd})" if pad.padded else ""
    rows = {"hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
            f"heads x head_dim{padded}": heads * hd, f"kv_heads x head_dim{padded}": kv_heads * hd}
    align, word = geom.k_align, lay.word_bytes
    # the block programs zero-pad the FFN's intermediate width to k_align (exact: zero weights)
    rows["intermediate_size (padded to k_align)"] = geom.pad_k(rows.pop("intermediate_size"))
    for what, width in rows.items():
        # the block programs hold every activation row on chip: within max_dim and max_k, whole words
        if width > vec.max_dim:
            raise ModelFitError(f"the model's {what} {width} exceeds the vector engine's max_dim {vec.max_dim} "
                                "(the longest row it holds)")
        if what.startswith("kv_heads"):      # not a matmul input: whole port words only
            if width % word:
                raise ModelFitError(f"the model's {what} {width} is not a multiple of the {word}-byte port word "
                                    "that block programs need")
            continue
        if width > geom.max_k_total:
            raise ModelFitError(f"the model's {what} {width} exceeds the largest K of one matmul descriptor "
                                f"{geom.max_k_total} (max_k {mm.max_k} x split_k {mm.split_k}): a matmul input row "
                                "of a block program must fit the engine")
        if width % align or width % word:
            raise ModelFitError(f"the model's {what} {width} is not a multiple of the matmul's k_align {align} "
                                f"(and of the {word}-byte port word) that block programs need")
    if heads > MAX_HEADS:
        raise ModelFitError(f"the model has {heads} attention heads; the attention engine takes at most {MAX_HEADS}")
    if recipe.kv_bits not in att.kv_bits:
        raise ModelFitError(f"quant recipe kv_bits {recipe.kv_bits}: the attention engine stores KV at "
                            f"{sorted(att.kv_bits)} bits only")
    if max_context < 1:
        raise ModelFitError("the design's attention engine holds no context")
    need: dict[str, int] = defaultdict(int)
    ports = [f"w{i}" for i in range(mm.weight_ports)]
    for proj in projections(spec, hd):
        fmt = projection_format(recipe, proj)
        try:
            bits = engine_format(engine_bits(fmt), lay, "bits")
        except ValueError:
            raise ModelFitError(f"{proj.module} is quantized to {fmt} by the recipe, but the matmul engine takes "
                                f"weight formats {list(mm.weight_bits)} only") from None
        kp = geom.pad_k(proj.in_features)
        code = 3 if bits == "ternary" else bits
        for port in ports:
            need[port] += _pages(geom.weight_port_bytes(proj.out_features, kp, code))
        need["data"] += _pages(geom.scale_bytes(proj.out_features, kp))
    ageom = attention_geometry(lay)
    pages = sequences * ceil_div(max_context, ageom.page_tokens)
    pool = _pages(pages * ageom.page_bytes(recipe.kv_bits, kv_heads))
    k_port, v_port = "w0", f"w{ageom.kv_ports - 1}"
    for _ in range(spec.num_layers):
        need[k_port] += pool
        need[v_port] += pool
    banks: dict[str, list] = {}
    for port, nbytes in need.items():
        bank, free = _bank_free(device, port)
        entry = banks.setdefault(bank, [free, 0, []])
        entry[1] += nbytes
        entry[2].append(port)
    for bank, (free, nbytes, on) in banks.items():
        if nbytes > free:
            raise ModelFitError(f"the model needs {nbytes / 2**20:.1f} MiB on port(s) {', '.join(on)} (bank {bank}: "
                                f"weights, scales and KV pools for {sequences} x {max_context} tokens at {recipe.kv_bits} bits), the "
                                f"bank has {free / 2**20:.1f} MiB free; use fewer weight bits, a shorter max_context "
                                "or a design with more weight ports")
    return dict(need)
