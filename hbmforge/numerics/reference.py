"""Float64 NumPy forward passes of the two model architectures the host loads, to measure
quantization error against (not golden models: nothing on the device computes these).

They follow the Hugging Face ``transformers`` definitions:

* **LLaMA family** (``LlamaForCausalLM``, ``Qwen2ForCausalLM``)::

      h = embed[ids]
      per layer:  a = rmsnorm(h) ;  q, k, v = a Wq^T (+bq), a Wk^T (+bk), a Wv^T (+bv)
                  q, k = rope(q, pos), rope(k, pos)          rotate_half: [-x2, x1], cos/sin of
                                                             cat(freqs, freqs), inv_freq = theta^(-2i/hd)
                  o = softmax(q k^T / sqrt(hd) + causal) v   (GQA: KV head = q head // (Hq / Hkv))
                  h = h + o Wo^T (+bo)
                  a = rmsnorm(h) ;  h = h + (silu(a Wg^T) * (a Wu^T)) Wd^T
      logits = rmsnorm(h) W_lm^T     (W_lm = embed when the embeddings are tied)

  ``rmsnorm(x) = x / sqrt(mean(x^2) + eps) * w``.

* **BERT** (``BertModel``, post-LayerNorm)::

      h = LN(word[ids] + pos[0..T) + type[token_type_ids])
      per layer:  a = softmax(q k^T / sqrt(hd) + mask) v    mask: -inf on padded keys (HF adds the
                                                            dtype minimum; identical after softmax)
                  h = LN(h + a Wo^T + bo)
                  h = LN(h + gelu(h Wi^T + bi) Wo2^T + bo2)
      pooled: mean of h over the valid tokens (sentence-transformers), or h[CLS]; optional L2 norm

Weights are a mapping from the checkpoint's tensor names (LLaMA: ``model.layers.{i}...``,
``lm_head.weight``; BERT without any ``bert.`` prefix: ``embeddings...``, ``encoder.layer.{i}...``)
to arrays; :mod:`hbmforge.host.models` reads them from safetensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .nonlinear import gelu_ref, layernorm_ref, rmsnorm_ref, silu_ref

__all__ = ["DecoderSpec", "EncoderSpec", "DecoderReference", "DecoderCache", "decoder_weight_shapes",
           "encoder_weight_shapes", "encoder_forward", "encoder_embeddings", "encoder_blocks", "pool", "rope_inv_freq",
           "rope_llama3_inv_freq", "rope_cos_sin",
           "apply_rope", "gelu_tanh_ref", "cosine"]

GELU_KINDS = ("gelu", "gelu_tanh")
POOLINGS = ("mean", "cls", "max")


@dataclass(frozen=True)
class DecoderSpec:
    """The hyper-parameters of a LLaMA-family decoder (names follow ``LlamaConfig``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    max_positions: int = 2048
    architecture: str = "LlamaForCausalLM"
    #: scaled RoPE (LLaMA 3, linear): the ``head_dim / 2`` inverse frequencies, overriding ``rope_theta``
    rope_inv_freq: tuple[float, ...] | None = None
    #: positions below which the model computes as here (a sliding window or dynamic RoPE scaling
    #: beyond them is not modelled), and the config field that sets it
    exact_positions: int | None = None
    exact_positions_field: str = ""
    #: the scores' factor when it is not ``1 / sqrt(head_dim)`` (heads zero-padded to a wider engine's)
    softmax_scale: float | None = None

    @property
    def q_per_kv(self) -> int:
        return self.q_heads // self.kv_heads

    def inv_freq(self) -> np.ndarray:
        """The RoPE inverse frequencies ``[head_dim / 2]`` (scaled ones when given)."""
        if self.rope_inv_freq is not None:
            return np.asarray(self.rope_inv_freq, dtype=np.float64)
        return rope_inv_freq(self.head_dim, self.rope_theta)


@dataclass(frozen=True)
class EncoderSpec:
    """The hyper-parameters of a BERT encoder (names follow ``BertConfig``) and its pooling."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    heads: int
    layer_norm_eps: float = 1e-12
    max_positions: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"                  # "gelu" (erf) or "gelu_tanh"
    pooling: str = "mean"                     # "mean", "cls" or "max"
    normalize: bool = False                   # L2-normalize the pooled embedding
    pad_token_id: int = 0
    architecture: str = "BertModel"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads


def decoder_weight_shapes(spec: DecoderSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor a decoder checkpoint must hold, with its shape (``lm_head.weight`` only
    when the embeddings are not tied)."""
    d, f, hd = spec.hidden_size, spec.intermediate_size, spec.head_dim
    qd, kd = spec.q_heads * hd, spec.kv_heads * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab_size, d),
                                          "model.norm.weight": (d,)}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (qd, d), p + "self_attn.k_proj.weight": (kd, d),
                       p + "self_attn.v_proj.weight": (kd, d), p + "self_attn.o_proj.weight": (d, qd),
                       p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                       p + "mlp.down_proj.weight": (d, f)})
        if spec.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (qd,), p + "self_attn.k_proj.bias": (kd,),
                           p + "self_attn.v_proj.bias": (kd,)})
        if spec.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (d,)
        if spec.mlp_bias:
            shapes.update({p + "mlp.gate_proj.bias": (f,), p + "mlp.up_proj.bias": (f,),
                           p + "mlp.down_proj.bias": (d,)})
    if not spec.tie_word_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, d)
    return shapes


def encoder_weight_shapes(spec: EncoderSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor a BERT encoder checkpoint must hold (names without a ``bert.`` prefix)."""
    d, f = spec.hidden_size, spec.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (spec.vocab_size, d),
        "embeddings.position_embeddings.weight": (spec.max_positions, d),
        "embeddings.token_type_embeddings.weight": (spec.type_vocab_size, d),
        "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
    for i in range(spec.num_layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.self.{name}.weight"] = (d, d)
            shapes[p + f"attention.self.{name}.bias"] = (d,)
        shapes.update({p + "attention.output.dense.weight": (d, d), p + "attention.output.dense.bias": (d,),
                       p + "attention.output.LayerNorm.weight": (d,), p + "attention.output.LayerNorm.bias": (d,),
                       p + "intermediate.dense.weight": (f, d), p + "intermediate.dense.bias": (f,),
                       p + "output.dense.weight": (d, f), p + "output.dense.bias": (d,),
                       p + "output.LayerNorm.weight": (d,), p + "output.LayerNorm.bias": (d,)})
    return shapes


# -- building blocks ------------------------------------------------------------------------

def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """``theta ** (-2i / head_dim)`` for ``i < head_dim / 2`` (LlamaRotaryEmbedding, default type)."""
    return 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def rope_llama3_inv_freq(inv_freq, factor: float, low_freq_factor: float, high_freq_factor: float,
                         original_max_positions: int) -> np.ndarray:
    """LLaMA 3's scaled frequencies (transformers' ``rope_type="llama3"``): long wavelengths
    divided by ``factor``, short ones kept, a smooth blend in between."""
    inv = np.asarray(inv_freq, dtype=np.float64)
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = original_max_positions / low_freq_factor, original_max_positions / high_freq_factor
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, blended, scaled)


def rope_cos_sin(positions, head_dim: int, theta: float, inv_freq=None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [T, head_dim] of ``cat(freqs, freqs)``, ``freqs = pos * inv_freq``
    (``inv_freq`` default: :func:`rope_inv_freq` of ``theta``)."""
    inv = rope_inv_freq(head_dim, theta) if inv_freq is None else np.asarray(inv_freq, dtype=np.float64)
    freqs = np.asarray(positions, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """``x * cos + rotate_half(x) * sin`` for ``x`` [T, heads, hd], ``rotate_half(x) = [-x2, x1]``."""
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def gelu_tanh_ref(x) -> np.ndarray:
    """The tanh approximation of GELU (``gelu_new``, ``gelu_pytorch_tanh``)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def cosine(a, b, axis: int = -1) -> np.ndarray:
    """Cosine similarity along ``axis`` (1.0 for two all-zero vectors)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(axis=axis)
    den = np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


def _softmax(s: np.ndarray) -> np.ndarray:
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=-1, keepdims=True)


def _linear(x: np.ndarray, w: Mapping, name: str, bias: bool = False) -> np.ndarray:
    y = x @ np.asarray(w[name + ".weight"], dtype=np.float64).T
    if bias:
        y = y + np.asarray(w[name + ".bias"], dtype=np.float64)
    return y


def _vec(w: Mapping, name: str) -> np.ndarray:
    return np.asarray(w[name], dtype=np.float64)


# -- decoder ------------------------------------------------------------------------------

@dataclass
class DecoderCache:
    """Float K (after RoPE) and V per layer: [tokens, kv_heads, head_dim] each."""

    k: list = field(default_factory=list)
    v: list = field(default_factory=list)

    @property
    def length(self) -> int:
        return 0 if not self.k else self.k[0].shape[0]


class DecoderReference:
    """A float64 LLaMA-family decoder over given weights, with its own KV cache per call chain."""

    def __init__(self, spec: DecoderSpec, weights: Mapping[str, np.ndarray]):
        missing = [n for n in decoder_weight_shapes(spec) if n not in weights]
        if missing:
            raise ValueError(f"decoder weights miss {len(missing)} tensor(s), e.g. {missing[0]!r}")
        self.spec = spec
        self.w = weights

    def embed(self, ids) -> np.ndarray:
        return _vec(self.w, "model.embed_tokens.weight")[np.asarray(ids, dtype=np.int64)]

    def lm_head(self) -> np.ndarray:
        name = "model.embed_tokens.weight" if self.spec.tie_word_embeddings else "lm_head.weight"
        return _vec(self.w, name)

    def forward(self, ids, cache: DecoderCache | None = None) -> tuple[np.ndarray, DecoderCache]:
        """Logits float64 [T, vocab] for the token ids ``ids`` [T] appended after ``cache``
        (positions ``cache.length ..``); returns them and the grown cache (a new object)."""
        return self.forward_embeddings(self.embed(np.asarray(ids, dtype=np.int64).reshape(-1)), cache)

    def forward_embeddings(self, x, cache: DecoderCache | None = None, *,
                           lm_head: bool = True) -> tuple[np.ndarray, DecoderCache]:
        """:meth:`forward` from input embeddings ``x`` [T, hidden]; ``lm_head=False`` returns the
        final-normed hidden states instead of logits."""
        s, w = self.spec, self.w
        h = np.asarray(x, dtype=np.float64).reshape(-1, s.hidden_size)
        cache = DecoderCache() if cache is None else cache
        start = cache.length
        t = h.shape[0]
        cos, sin = rope_cos_sin(np.arange(start, start + t), s.head_dim, s.rope_theta, s.inv_freq())
        new = DecoderCache()
        ctx = start + t
        causal = np.arange(ctx)[None, :] <= np.arange(start, ctx)[:, None]        # [T, ctx]
        for i in range(s.num_layers):
            p = f"model.layers.{i}."
            a = rmsnorm_ref(h, _vec(w, p + "input_layernorm.weight"), s.rms_norm_eps)
            q = _linear(a, w, p + "self_attn.q_proj", s.qkv_bias).reshape(t, s.q_heads, s.head_dim)
            k = _linear(a, w, p + "self_attn.k_proj", s.qkv_bias).reshape(t, s.kv_heads, s.head_dim)
            v = _linear(a, w, p + "self_attn.v_proj", s.qkv_bias).reshape(t, s.kv_heads, s.head_dim)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if start:
                k = np.concatenate([cache.k[i], k])
                v = np.concatenate([cache.v[i], v])
            new.k.append(k)
            new.v.append(v)
            kk = np.repeat(k, s.q_per_kv, axis=1)                                  # [ctx, Hq, hd]
            vv = np.repeat(v, s.q_per_kv, axis=1)
            scores = np.einsum("thd,chd->htc", q, kk)
            scores = scores / math.sqrt(s.head_dim) if s.softmax_scale is None else scores * s.softmax_scale
            scores = np.where(causal[None], scores, -np.inf)
            o = np.einsum("htc,chd->thd", _softmax(scores), vv).reshape(t, s.q_heads * s.head_dim)
            h = h + _linear(o, w, p + "self_attn.o_proj", s.o_bias)
            a = rmsnorm_ref(h, _vec(w, p + "post_attention_layernorm.weight"), s.rms_norm_eps)
            gate = silu_ref(_linear(a, w, p + "mlp.gate_proj", s.mlp_bias))
            h = h + _linear(gate * _linear(a, w, p + "mlp.up_proj", s.mlp_bias), w, p + "mlp.down_proj",
                            s.mlp_bias)
        h = rmsnorm_ref(h, _vec(w, "model.norm.weight"), s.rms_norm_eps)
        return (h @ self.lm_head().T if lm_head else h), new

    def generate_greedy(self, ids, max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``ids`` (for agreement measurements)."""
        logits, cache = self.forward(ids)
        out = []
        for _ in range(max_new_tokens):
            tok = int(np.argmax(logits[-1]))
            out.append(tok)
            logits, cache = self.forward([tok], cache)
        return out


# -- encoder ------------------------------------------------------------------------------

def encoder_embeddings(spec: EncoderSpec, weights: Mapping[str, np.ndarray], input_ids,
                       token_type_ids=None) -> np.ndarray:
    """float64 [B, T, hidden]: ``LayerNorm(word + position + token type embeddings)``."""
    w = weights
    ids = np.atleast_2d(np.asarray(input_ids, dtype=np.int64))
    t = ids.shape[1]
    types = np.zeros_like(ids) if token_type_ids is None else np.atleast_2d(np.asarray(token_type_ids, dtype=np.int64))
    h = (_vec(w, "embeddings.word_embeddings.weight")[ids] + _vec(w, "embeddings.position_embeddings.weight")[:t][None]
         + _vec(w, "embeddings.token_type_embeddings.weight")[types])
    return layernorm_ref(h, _vec(w, "embeddings.LayerNorm.weight"), _vec(w, "embeddings.LayerNorm.bias"),
                         spec.layer_norm_eps)


def encoder_blocks(spec: EncoderSpec, weights: Mapping[str, np.ndarray], x, attention_mask=None) -> np.ndarray:
    """Every encoder layer over embedded inputs ``x`` [B, T, hidden] (padded keys, mask 0, are
    never attended); float64 [B, T, hidden]."""
    s, w = spec, weights
    h = np.asarray(x, dtype=np.float64)
    if h.ndim == 2:
        h = h[None]
    b, t, _ = h.shape
    mask = np.ones((b, t), dtype=bool) if attention_mask is None else \
        np.atleast_2d(np.asarray(attention_mask)).astype(bool)
    act = gelu_ref if s.hidden_act == "gelu" else gelu_tanh_ref
    hd = s.head_dim
    for i in range(s.num_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (_linear(h, w, p + f"attention.self.{n}", True).reshape(b, t, s.heads, hd)
                   for n in ("query", "key", "value"))
        scores = np.einsum("bthd,bchd->bhtc", q, k) / math.sqrt(hd)
        scores = np.where(mask[:, None, None, :], scores, -np.inf)
        o = np.einsum("bhtc,bchd->bthd", _softmax(scores), v).reshape(b, t, s.hidden_size)
        h = layernorm_ref(h + _linear(o, w, p + "attention.output.dense", True),
                          _vec(w, p + "attention.output.LayerNorm.weight"),
                          _vec(w, p + "attention.output.LayerNorm.bias"), s.layer_norm_eps)
        inter = act(_linear(h, w, p + "intermediate.dense", True))
        h = layernorm_ref(h + _linear(inter, w, p + "output.dense", True), _vec(w, p + "output.LayerNorm.weight"),
                          _vec(w, p + "output.LayerNorm.bias"), s.layer_norm_eps)
    return h


def encoder_forward(spec: EncoderSpec, weights: Mapping[str, np.ndarray], input_ids, attention_mask=None,
                    token_type_ids=None) -> np.ndarray:
    """Last hidden states float64 [B, T, hidden] of a BERT encoder for ``input_ids`` [B, T]
    (``attention_mask`` [B, T] of 0/1, default all ones; padded keys are never attended)."""
    return encoder_blocks(spec, weights, encoder_embeddings(spec, weights, input_ids, token_type_ids), attention_mask)


def pool(hidden, attention_mask=None, *, mode: str = "mean", normalize: bool = False) -> np.ndarray:
    """Sentence embeddings [B, hidden] from hidden states [B, T, hidden] as sentence-transformers'
    Pooling (+ Normalize) modules compute them: ``mean`` over valid tokens, ``cls`` (token 0),
    ``max`` over valid tokens."""
    if mode not in POOLINGS:
        raise ValueError(f"pooling mode must be one of {POOLINGS}, got {mode!r}")
    h = np.asarray(hidden, dtype=np.float64)
    mask = np.ones(h.shape[:2], dtype=bool) if attention_mask is None else \
        np.atleast_2d(np.asarray(attention_mask)).astype(bool)
    if mode == "cls":
        out = h[:, 0]
    elif mode == "max":
        out = np.where(mask[..., None], h, -np.inf).max(axis=1)
    else:
        m = mask[..., None].astype(np.float64)
        out = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out
