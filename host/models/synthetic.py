"""Checkpoints with random weights in the Hugging Face layout, for tests, examples and benchmarks.

:func:`write_llama` writes what ``LlamaForCausalLM.save_pretrained`` (or Qwen2's) writes:
``config.json``, ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` shards with
``model.safetensors.index.json``), ``generation_config.json`` and a byte-level BPE
``tokenizer.json`` (every byte is a token, so any text round-trips). :func:`write_bert` writes a
BERT encoder as sentence-transformers ships one: the same files plus ``modules.json`` and
``1_Pooling/config.json``, with a WordPiece ``tokenizer.json``.

Weights are Gaussian with trained-model scales: linear layers ``N(0, 1/fan_in)``, embeddings
``N(0, 1)`` (BERT: 0.1), norm gains ``1 + N(0, 0.1)``, biases ``N(0, 0.02)``; the same seed gives
the same checkpoint.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hbmforge.numerics.reference import DecoderSpec, EncoderSpec, decoder_weight_shapes, encoder_weight_shapes
from .hf import fused_tensors

__all__ = ["write_llama", "write_bert", "random_weights", "byte_tokenizer", "wordpiece_tokenizer",
           "BYTE_TOKENIZER_VOCAB", "DTYPES", "design_sized"]

#: bos, eos, unk + the 256 byte symbols of the byte-level pre-tokenizer
BYTE_TOKENIZER_VOCAB = 259
DTYPES = ("float32", "float16", "bfloat16")
_ST_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0, *, embed_std: float = 1.0) -> dict[str, np.ndarray]:
    """float32 tensors for ``shapes`` (name -> shape), scaled as the module docstring says."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("bias"):
            a = 0.02 * rng.standard_normal(shape)
        elif len(shape) == 1:
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif "embed" in name:
            a = embed_std * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[1])
        out[name] = a.astype(np.float32)
    return out


def _bf16_bytes(a: np.ndarray) -> bytes:
    """float32 -> bfloat16 bytes, round to nearest even (as torch does)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


def _save_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """Write a safetensors file (the format is a JSON header plus raw little-endian data; written
    here directly so that bfloat16, which NumPy lacks, is covered too)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        a = tensors[name]
        raw = _bf16_bytes(a) if dtype == "bfloat16" else np.ascontiguousarray(a, dtype=dtype).tobytes()
        header[name] = {"dtype": _ST_DTYPE[dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for raw in blobs:
            f.write(raw)


def _save_weights(directory: Path, tensors: dict[str, np.ndarray], shards: int, dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if shards == 1:
        _save_safetensors(directory / "model.safetensors", tensors, dtype)
        return
    names = sorted(tensors)
    parts = [names[i::shards] for i in range(shards)]
    weight_map, total = {}, 0
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        _save_safetensors(directory / fname, {n: tensors[n] for n in part}, dtype)
        for n in part:
            weight_map[n] = fname
            total += tensors[n].size * (4 if dtype == "float32" else 2)
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges: ``<s>`` 0 (prepended, as LLaMA's), ``</s>`` 1,
    ``<unk>`` 2, bytes 3..258."""
    from tokenizers import Tokenizer, decoders, models, processors
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    for i, ch in enumerate(sorted(ByteLevel.alphabet())):
        vocab[ch] = 3 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.add_special_tokens(["<s>", "</s>", "<unk>"])
    return tok


_WORDS = ("the a an of to in is was it that for on with as by at from this be are or his her they we you "
          "model device memory token run fast slow small large cat dog sat mat sentence embedding hello world "
          "quick brown fox jumps over lazy red green blue day night sun moon water fire tree house car").split()


def wordpiece_tokenizer(vocab_size: int):
    """A lower-casing BERT WordPiece tokenizer: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3,
    ``[MASK]`` 4, then letters, digits, ``##`` pieces and common words, up to ``vocab_size``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    pieces = specials + chars + ["##" + c for c in chars] + list(_WORDS)
    if vocab_size < len(specials) + 2 * len(chars):
        raise ValueError(f"vocab_size must be >= {len(specials) + 2 * len(chars)} for the WordPiece "
                         f"tokenizer, got {vocab_size}")
    pieces = list(dict.fromkeys(pieces))[:vocab_size]
    pieces += [f"[unused{i}]" for i in range(vocab_size - len(pieces))]
    tok = Tokenizer(models.WordPiece(vocab={p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(specials)
    return tok


def write_llama(directory, *, vocab_size: int = BYTE_TOKENIZER_VOCAB, hidden_size: int = 64,
                intermediate_size: int = 128, num_layers: int = 2, q_heads: int = 4, kv_heads: int = 2,
                head_dim: int | None = None, architecture: str = "LlamaForCausalLM", qkv_bias: bool | None = None,
                tie_word_embeddings: bool = False, rope_theta: float = 10000.0, rms_norm_eps: float = 1e-6,
                max_positions: int = 2048, shards: int = 1, dtype: str = "float32", seed: int = 0,
                tokenizer: bool = True, config_overrides: dict | None = None,
                drop: tuple[str, ...] = (), reshape: dict | None = None) -> Path:
    """A random LLaMA-family decoder checkpoint in ``directory``; returns its path.

    ``architecture``: ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` (QKV bias on by default) or
    ``Phi3ForCausalLM`` (q/k/v and gate/up stored fused, as Phi-3 checkpoints hold them).
    ``config_overrides`` patches config.json; ``drop`` leaves tensors out and ``reshape``
    (name -> shape) writes a tensor with a wrong shape (for bad-checkpoint tests).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    qwen = architecture == "Qwen2ForCausalLM"
    qkv_bias = qwen if qkv_bias is None else qkv_bias
    hd = head_dim or hidden_size // q_heads
    spec = DecoderSpec(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_layers=num_layers, q_heads=q_heads, kv_heads=kv_heads, head_dim=hd,
                       rms_norm_eps=rms_norm_eps, rope_theta=rope_theta, qkv_bias=qkv_bias,
                       o_bias=qkv_bias and not qwen, mlp_bias=False, tie_word_embeddings=tie_word_embeddings,
                       max_positions=max_positions, architecture=architecture)
    phi3 = architecture == "Phi3ForCausalLM"
    config = {"architectures": [architecture], "model_type": "qwen2" if qwen else "phi3" if phi3 else "llama",
              "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
              "num_hidden_layers": num_layers, "num_attention_heads": q_heads, "num_key_value_heads": kv_heads,
              "head_dim": hd, "hidden_act": "silu", "max_position_embeddings": max_positions,
              "rms_norm_eps": rms_norm_eps, "rope_theta": rope_theta, "rope_scaling": None,
              "tie_word_embeddings": tie_word_embeddings, "bos_token_id": 0, "eos_token_id": 1,
              "torch_dtype": dtype, "initializer_range": 0.02}
    if qwen:
        config.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": num_layers})
    elif phi3:
        config.update({"sliding_window": None, "original_max_position_embeddings": max_positions,
                       "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0, "pad_token_id": 2})
    else:
        config.update({"attention_bias": qkv_bias, "mlp_bias": False, "pretraining_tp": 1})
    config.update(config_overrides or {})
    tensors = random_weights(decoder_weight_shapes(spec), seed)
    for fused, parts in fused_tensors(spec).items():
        tensors[fused] = np.concatenate([tensors.pop(name) for name in parts])
    _finish(d, config, tensors, drop, reshape, shards, dtype, seed)
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}, indent=2))
    if tokenizer:
        byte_tokenizer().save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}, indent=2))
    return d


def write_bert(directory, *, vocab_size: int = 160, hidden_size: int = 64, intermediate_size: int = 128,
               num_layers: int = 2, heads: int = 4, max_positions: int = 64, type_vocab_size: int = 2,
               layer_norm_eps: float = 1e-12, hidden_act: str = "gelu", pooling: str | None = "mean",
               normalize: bool = True, prefix: str = "", shards: int = 1, dtype: str = "float32", seed: int = 0,
               tokenizer: bool = True, config_overrides: dict | None = None, drop: tuple[str, ...] = (),
               reshape: dict | None = None) -> Path:
    """A random BERT encoder checkpoint as sentence-transformers ships one (``pooling`` None: a
    plain ``BertModel`` without the sentence-transformers files). ``prefix="bert."`` names the
    tensors as ``BertForMaskedLM`` does."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    spec = EncoderSpec(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_layers=num_layers, heads=heads, layer_norm_eps=layer_norm_eps,
                       max_positions=max_positions, type_vocab_size=type_vocab_size)
    config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocab_size,
              "hidden_size": hidden_size, "intermediate_size": intermediate_size, "num_hidden_layers": num_layers,
              "num_attention_heads": heads, "hidden_act": hidden_act, "max_position_embeddings": max_positions,
              "type_vocab_size": type_vocab_size, "layer_norm_eps": layer_norm_eps,
              "position_embedding_type": "absolute", "pad_token_id": 0, "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "torch_dtype": dtype}
    config.update(config_overrides or {})
    tensors = {prefix + n: w for n, w in random_weights(encoder_weight_shapes(spec), seed, embed_std=0.1).items()}
    _finish(d, config, tensors, drop, reshape, shards, dtype, seed)
    if pooling is not None:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
        (d / "modules.json").write_text(json.dumps(modules, indent=2))
        (d / "1_Pooling").mkdir(exist_ok=True)
        (d / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": hidden_size, "pooling_mode_cls_token": pooling == "cls",
             "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
             "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
        (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_positions,
                                                                 "do_lower_case": False}))
    if tokenizer:
        wordpiece_tokenizer(vocab_size).save(str(d / "tokenizer.json"))
    return d


def _finish(d: Path, config: dict, tensors: dict, drop, reshape, shards: int, dtype: str, seed: int) -> None:
    for name in drop:
        tensors.pop(name)
    rng = np.random.default_rng(seed + 1)
    for name, shape in (reshape or {}).items():
        tensors[name] = rng.standard_normal(shape).astype(np.float32)
    (d / "config.json").write_text(json.dumps(config, indent=2))
    _save_weights(d, tensors, shards, dtype)


def design_sized(layout, arch: str = "llama", *, heads: int = 4, kv_heads: int = 2, mlp_ratio: int = 2) -> dict:
    """Shape keyword arguments for :func:`write_llama` (``arch="llama"``) or :func:`write_bert`
    (``"bert"``) that a design's block programs hold: head_dim the attention engine's, every row
    (hidden, KV heads x head_dim, MLP) a multiple of the matmul's ``k_align`` and within its
    ``max_k`` and the vector engine's ``max_dim``; at least ``heads``/``kv_heads`` heads where
    that allows, an MLP of ``mlp_ratio`` x hidden."""
    hd = layout.attention.head_dim
    vec = layout.config.engine("vector")
    align = math.lcm(layout.matmul.k_align, layout.word_bytes)
    row_limit = min(vec.max_dim if vec is not None else 1 << 16, layout.mm.max_k)
    unit = max(1, -(-align // hd))                   # heads per aligned row
    kv = -(-max(kv_heads, 1) // unit) * unit if arch == "llama" else unit
    heads = -(-max(heads, kv) // kv) * kv
    while heads > kv and heads * hd * mlp_ratio > row_limit:
        heads -= kv
    hidden = heads * hd
    shape = {"hidden_size": hidden, "intermediate_size": min(mlp_ratio * hidden, row_limit // align * align)}
    if arch == "bert":
        return {**shape, "heads": heads}
    return {**shape, "q_heads": heads, "kv_heads": kv}
