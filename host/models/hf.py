"""config.json of Hugging Face checkpoints -> the architecture specs of :mod:`hbmforge.numerics.reference`.

Supported: ``LlamaForCausalLM`` (default, linear, dynamic and LLaMA 3 RoPE scaling), ``MistralForCausalLM``
and ``Qwen2ForCausalLM`` (QKV bias; a sliding window caps the context at its length, where it
drops no key), ``Phi3ForCausalLM`` (Phi-3's fused ``qkv_proj`` and ``gate_up_proj`` read as the
LLaMA projections they stack; its 96-wide heads run zero-padded on a 128-wide engine), and BERT encoders (``BertModel``, ``BertForMaskedLM``, ... with
or without the ``bert.`` tensor prefix, plus sentence-transformers' pooling files). Anything
the float models here do not compute exactly as transformers does (YaRN and other RoPE scalings,
relative positions, other activations, other architectures) is refused naming the config field.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hbmforge.numerics.reference import (DecoderSpec, EncoderSpec, decoder_weight_shapes, encoder_weight_shapes,
                                         rope_inv_freq, rope_llama3_inv_freq)

from .checkpoint import Checkpoint, CheckpointError

__all__ = ["DECODER_ARCHITECTURES", "ENCODER_ARCHITECTURES", "parse_architecture", "decoder_spec", "encoder_spec",
           "fused_tensors",
           "check_tensors", "encoder_prefix", "encoder_max_length", "sentence_pooling", "stop_token_ids"]

DECODER_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM")
ENCODER_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification")
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
                "phi3": "Phi3ForCausalLM", "bert": "BertModel"}
#: architectures whose sliding window is on whenever ``sliding_window`` is set (Qwen2: ``use_sliding_window``)
_WINDOWED = ("MistralForCausalLM", "Phi3ForCausalLM")

_Pos = Field(gt=0)


class _HFConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, data):
        if isinstance(data, dict):
            for name, f in cls.model_fields.items():
                if isinstance(data.get(name), bool) and f.annotation in (int, float):
                    raise ValueError(f"{name} must be a number, got {data[name]!r}")
        return data


class LlamaConfigModel(_HFConfig):
    vocab_size: int = _Pos
    hidden_size: int = _Pos
    intermediate_size: int = _Pos
    num_hidden_layers: int = _Pos
    num_attention_heads: int = _Pos
    num_key_value_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    hidden_act: Literal["silu"] = "silu"
    rms_norm_eps: float = Field(default=1e-6, gt=0)
    rope_theta: float | None = Field(default=None, gt=0)
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None
    max_position_embeddings: int = Field(default=2048, gt=0)
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    use_sliding_window: bool = False
    sliding_window: int | None = None
    partial_rotary_factor: float = Field(default=1.0, gt=0)


class BertConfigModel(_HFConfig):
    vocab_size: int = _Pos
    hidden_size: int = _Pos
    intermediate_size: int = _Pos
    num_hidden_layers: int = _Pos
    num_attention_heads: int = _Pos
    hidden_act: Literal["gelu", "gelu_new", "gelu_pytorch_tanh"] = "gelu"
    layer_norm_eps: float = Field(default=1e-12, gt=0)
    max_position_embeddings: int = Field(default=512, gt=0)
    type_vocab_size: int = Field(default=2, gt=0)
    position_embedding_type: Literal["absolute"] = "absolute"
    is_decoder: Literal[False] = False
    add_cross_attention: Literal[False] = False
    pad_token_id: int | None = 0


def _validated(model: type[BaseModel], config: dict, arch: str):
    try:
        return model.model_validate(config)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "missing":
            raise CheckpointError(f"config.json has no field {where!r}, which {arch} needs") from None
        raise CheckpointError(f"config.json field {where!r} ({arch}): {e['msg']} (got {e.get('input')!r})") from None


def parse_architecture(config: dict) -> str:
    """The supported architecture a config.json names (``architectures[0]``, else ``model_type``)."""
    archs = config.get("architectures")
    if archs is not None:
        if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
            raise CheckpointError(f"config.json field 'architectures' must be a list of names, got {archs!r}")
        arch = archs[0]
    else:
        mt = config.get("model_type")
        if mt not in _MODEL_TYPES:
            raise CheckpointError(f"config.json names no 'architectures' and its 'model_type' {mt!r} is not one of "
                                  f"{sorted(_MODEL_TYPES)} (supported architectures: "
                                  f"{', '.join(DECODER_ARCHITECTURES + ENCODER_ARCHITECTURES)})")
        arch = _MODEL_TYPES[mt]
    if arch not in DECODER_ARCHITECTURES + ENCODER_ARCHITECTURES:
        raise CheckpointError(f"config.json field 'architectures': {arch!r} is not supported; supported: "
                              f"{', '.join(DECODER_ARCHITECTURES + ENCODER_ARCHITECTURES)}")
    qc = config.get("quantization_config")
    if qc is not None:
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else qc
        raise CheckpointError(f"config.json field 'quantization_config': a pre-quantized checkpoint (quant_method "
                              f"{method!r}) is not read; give the float (F32/F16/BF16) checkpoint, which "
                              "from_pretrained quantizes with its own recipe (quant=...)")
    return arch


ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


def _number(field: str, value, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > minimum:
        raise CheckpointError(f"config.json field {field!r} must be a number > {minimum:g}, got {value!r}")
    return float(value)


def _rope(c: LlamaConfigModel, head_dim: int) -> tuple[float, tuple[float, ...] | None, int | None, str]:
    """(theta, scaled inverse frequencies or None, exact positions, their field) from transformers
    4 (``rope_theta`` + ``rope_scaling``) or 5 (``rope_parameters``). Scaled RoPE as transformers
    computes it: ``linear`` (frequencies / factor), ``llama3`` (LLaMA 3.x), ``dynamic`` (NTK, the
    default frequencies up to ``original_max_position_embeddings``: the context is capped there)."""
    theta, inv, exact, exact_field = c.rope_theta, None, None, ""
    for field in ("rope_scaling", "rope_parameters"):
        params = getattr(c, field)
        if params is None:
            continue
        kind = params.get("rope_type", params.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise CheckpointError(f"config.json field '{field}': rope type {kind!r} is not supported (supported: "
                                  f"{', '.join(ROPE_TYPES)})")
        if "rope_theta" in params:
            theta = params["rope_theta"]
        theta = 10000.0 if theta is None else _number("rope_theta", theta)
        default = rope_inv_freq(head_dim, theta)
        if kind == "linear":
            inv = default / _number(f"{field}.factor", params.get("factor"))
        elif kind == "llama3":
            keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            vals = [_number(f"{field}.{k}", params.get(k)) for k in keys]
            if vals[2] <= vals[1]:
                raise CheckpointError(f"config.json field '{field}': high_freq_factor ({vals[2]:g}) must be greater "
                                      f"than low_freq_factor ({vals[1]:g})")
            inv = rope_llama3_inv_freq(default, vals[0], vals[1], vals[2], int(vals[3]))
        elif kind == "dynamic":
            _number(f"{field}.factor", params.get("factor"))
            original = params.get("original_max_position_embeddings", c.max_position_embeddings)
            exact, exact_field = int(_number(f"{field}.original_max_position_embeddings", original)), field
    theta = 10000.0 if theta is None else _number("rope_theta", theta)
    return theta, None if inv is None else tuple(float(f) for f in inv), exact, exact_field


def decoder_spec(config: dict) -> DecoderSpec:
    arch = parse_architecture(config)
    if arch not in DECODER_ARCHITECTURES:
        raise CheckpointError(f"{arch} is an encoder, not a decoder")
    c = _validated(LlamaConfigModel, config, arch)
    kvh = c.num_key_value_heads or c.num_attention_heads
    if c.num_attention_heads % kvh:
        raise CheckpointError(f"config.json field 'num_attention_heads' ({c.num_attention_heads}) must be a "
                              f"multiple of 'num_key_value_heads' ({kvh})")
    if c.head_dim is None and c.hidden_size % c.num_attention_heads:
        raise CheckpointError(f"config.json field 'hidden_size' ({c.hidden_size}) must be a multiple of "
                              f"'num_attention_heads' ({c.num_attention_heads}) when 'head_dim' is not given")
    hd = c.head_dim or c.hidden_size // c.num_attention_heads
    if hd % 2:
        raise CheckpointError(f"config.json field 'head_dim' ({hd}) must be even for the rotary embedding")
    if c.partial_rotary_factor != 1.0:
        raise CheckpointError(f"config.json field 'partial_rotary_factor' ({c.partial_rotary_factor:g}): RoPE on "
                              "part of each head (Phi-4-mini) is not supported; every head dimension is rotated")
    qwen = arch == "Qwen2ForCausalLM"
    theta, inv_freq, exact, exact_field = _rope(c, hd)
    if c.use_sliding_window or (arch in _WINDOWED and c.sliding_window is not None):
        # a window no shorter than the context never drops a key: cap the context at the window
        field = "use_sliding_window" if c.sliding_window is None else "sliding_window"
        if c.sliding_window is None or isinstance(c.sliding_window, bool) or c.sliding_window <= 0:
            raise CheckpointError(f"config.json field '{field}': sliding-window attention needs a positive "
                                  f"'sliding_window', got {c.sliding_window!r}")
        if exact is None or c.sliding_window < exact:
            exact, exact_field = c.sliding_window, "sliding_window"
    return DecoderSpec(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                       num_layers=c.num_hidden_layers, q_heads=c.num_attention_heads, kv_heads=kvh, head_dim=hd,
                       rms_norm_eps=c.rms_norm_eps, rope_theta=theta, qkv_bias=qwen or c.attention_bias,
                       o_bias=(not qwen) and c.attention_bias, mlp_bias=c.mlp_bias,
                       tie_word_embeddings=c.tie_word_embeddings, max_positions=c.max_position_embeddings,
                       architecture=arch, rope_inv_freq=inv_freq, exact_positions=exact,
                       exact_positions_field=exact_field)


def encoder_spec(config: dict, pooling: str = "mean", normalize: bool = False) -> EncoderSpec:
    arch = parse_architecture(config)
    if arch not in ENCODER_ARCHITECTURES:
        raise CheckpointError(f"{arch} is a decoder, not an encoder")
    c = _validated(BertConfigModel, config, arch)
    if c.hidden_size % c.num_attention_heads:
        raise CheckpointError(f"config.json field 'hidden_size' ({c.hidden_size}) must be a multiple of "
                              f"'num_attention_heads' ({c.num_attention_heads})")
    return EncoderSpec(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                       num_layers=c.num_hidden_layers, heads=c.num_attention_heads, layer_norm_eps=c.layer_norm_eps,
                       max_positions=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
                       hidden_act="gelu" if c.hidden_act == "gelu" else "gelu_tanh", pooling=pooling,
                       normalize=normalize, pad_token_id=c.pad_token_id or 0, architecture=arch)


def sentence_pooling(ckpt: Checkpoint) -> tuple[str, bool]:
    """(pooling mode, normalize) from sentence-transformers' modules.json and pooling config;
    ``("mean", False)`` for a plain BertModel directory."""
    modules = ckpt.json_file("modules.json")
    if modules is None:
        return "mean", False
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError("modules.json must be a list of module objects")
    pooling, normalize = "mean", False
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            cfg = ckpt.json_file(f"{m.get('path', '1_Pooling')}/config.json") or {}
            modes = [mode for mode, key in (("cls", "pooling_mode_cls_token"), ("mean", "pooling_mode_mean_tokens"),
                                            ("max", "pooling_mode_max_tokens")) if cfg.get(key)]
            if cfg.get("pooling_mode_mean_sqrt_len_tokens") or len(modes) != 1:
                raise CheckpointError(f"{m.get('path')}/config.json: exactly one of pooling_mode_cls_token, "
                                      "pooling_mode_mean_tokens, pooling_mode_max_tokens must be true (others are "
                                      f"not supported), got {cfg}")
            pooling = modes[0]
        elif kind == "Normalize":
            normalize = True
        elif kind != "Transformer":
            raise CheckpointError(f"modules.json: module type {m.get('type')!r} is not supported (Transformer, "
                                  "Pooling and Normalize are)")
    return pooling, normalize


def encoder_max_length(ckpt: Checkpoint, spec: EncoderSpec) -> int:
    """Tokens a text is truncated to: sentence-transformers' ``max_seq_length``
    (sentence_bert_config.json) when given, at most ``max_position_embeddings``."""
    st = ckpt.json_file("sentence_bert_config.json")
    limit = st.get("max_seq_length") if isinstance(st, dict) else None
    if limit is None:
        return spec.max_positions
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise CheckpointError(f"sentence_bert_config.json field 'max_seq_length' must be a positive integer, "
                              f"got {limit!r}")
    return min(limit, spec.max_positions)


def encoder_prefix(ckpt: Checkpoint) -> str:
    """``"bert."`` when the tensors carry BertForMaskedLM's prefix, else ``""``."""
    return "bert." if "bert.embeddings.word_embeddings.weight" in ckpt else ""


def fused_tensors(spec) -> dict[str, dict[str, int]]:
    """Tensors that stack several projections' rows (Phi-3: ``qkv_proj``, ``gate_up_proj`` with
    gate first, as ``Phi3MLP`` splits it) -> the projections, each with its row count."""
    if getattr(spec, "architecture", "") != "Phi3ForCausalLM":
        return {}
    q, kv, f = spec.q_heads * spec.head_dim, spec.kv_heads * spec.head_dim, spec.intermediate_size
    out = {}
    for i in range(spec.num_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        out[a + "qkv_proj.weight"] = {a + "q_proj.weight": q, a + "k_proj.weight": kv, a + "v_proj.weight": kv}
        out[m + "gate_up_proj.weight"] = {m + "gate_proj.weight": f, m + "up_proj.weight": f}
    return out


def check_tensors(ckpt: Checkpoint, spec, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Every tensor the architecture needs is present with its shape (fused ones split into the
    projections they stack, :func:`fused_tensors`); returns the shapes."""
    for fused, parts in fused_tensors(spec).items():
        if prefix + fused not in ckpt:
            raise CheckpointError(f"the checkpoint has no tensor {prefix + fused!r} ({spec.architecture} stores "
                                  f"{', '.join(n.rsplit('.', 2)[-2] for n in parts)} in it)")
        ckpt.split_rows(prefix + fused, {prefix + n: rows for n, rows in parts.items()})
    shapes = decoder_weight_shapes(spec) if isinstance(spec, DecoderSpec) else encoder_weight_shapes(spec)
    missing = [n for n in shapes if prefix + n not in ckpt]
    if missing:
        hint = ""
        if missing == ["lm_head.weight"]:
            hint = ("; config.json's 'tie_word_embeddings' is false (or absent): if the LM head shares "
                    "model.embed_tokens.weight, the config must say so")
        raise CheckpointError(f"the checkpoint has no tensor {prefix + missing[0]!r} (missing {len(missing)} of the "
                              f"{len(shapes)} tensors {spec.architecture} needs){hint}")
    for name, shape in shapes.items():
        got = ckpt.shape(prefix + name)
        if got != shape:
            raise CheckpointError(f"tensor {prefix + name!r} has shape {list(got)}, config.json implies {list(shape)}")
    return shapes


def stop_token_ids(ckpt: Checkpoint) -> tuple[int, ...]:
    """eos_token_id(s) from generation_config.json, else config.json."""
    for source in (ckpt.json_file("generation_config.json") or {}, ckpt.config):
        eos = source.get("eos_token_id") if isinstance(source, dict) else None
        if eos is None:
            continue
        ids = eos if isinstance(eos, list) else [eos]
        if all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            return tuple(ids)
    return ()
