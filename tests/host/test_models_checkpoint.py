"""Reading Hugging Face checkpoint directories, and refusing what cannot be loaded or run.

Checkpoints are written by the tests (hbmforge.host.models.synthetic): both architectures,
sharded, bfloat16, Qwen2 with QKV bias and tied embeddings, BERT with BertForMaskedLM's prefix,
and broken ones. Design-fit refusals run against a GoldenDevice of a tiny matmul + attention +
vector design; each is raised before anything is quantized or uploaded.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.flows.model_runner import decoder_accuracy
from hbmforge.host import Model
from hbmforge.host.models import CheckpointError, ModelFitError, RecipeError
from hbmforge.host.models import hf
from hbmforge.host.models.checkpoint import Checkpoint
from hbmforge.host.models.heads import HeadPadding
from hbmforge.host.models.recipe import load_recipe
from hbmforge.host.models.synthetic import write_bert, write_llama
from hbmforge.layout import DesignLayout
from hbmforge.numerics import vector as V

from designs import tiny_attention_config_dict
from golden_kernel import GoldenDevice


def model_design(name="tiny_model", *, matmul=None, attention=None, vector=None) -> DesignLayout:
    cfg = tiny_attention_config_dict(name, **(attention or {}))
    cfg["engines"][0].update(matmul or {})
    cfg["engines"].append({"kind": "vector", "max_dim": 256, **(vector or {})})
    return DesignLayout(parse_config(cfg))


@pytest.fixture
def dev():
    with GoldenDevice(model_design()) as d:
        yield d


SMALL = dict(hidden_size=64, intermediate_size=128, q_heads=4, kv_heads=2, num_layers=2)   # head_dim 16


# -- reading --------------------------------------------------------------------------------------

def test_a_sharded_checkpoint_reads_the_same_tensors_as_one_file(tmp_path):
    one = Checkpoint(write_llama(tmp_path / "one", **SMALL))
    three = Checkpoint(write_llama(tmp_path / "three", shards=3, **SMALL))
    assert (tmp_path / "three" / "model.safetensors.index.json").is_file()
    assert len({p.name for p in three._where.values()}) == 3
    assert one.tensor_names == three.tensor_names
    for name in one.tensor_names:
        np.testing.assert_array_equal(one.tensor(name), three.tensor(name))


def test_bfloat16_and_float16_tensors_widen_exactly(tmp_path):
    f32 = Checkpoint(write_llama(tmp_path / "f32", **SMALL))
    for dtype, mantissa in (("bfloat16", 8), ("float16", 11)):
        ck = Checkpoint(write_llama(tmp_path / dtype, dtype=dtype, **SMALL))
        for name in ("model.layers.0.mlp.up_proj.weight", "model.norm.weight"):
            a, b = f32.tensor(name), ck.tensor(name)
            assert b.dtype == np.float32
            np.testing.assert_allclose(b, a, rtol=2.0 ** -mantissa)
            assert not np.array_equal(a, b)                   # really rounded to the narrow type
    bf = Checkpoint(tmp_path / "bfloat16").tensor("model.norm.weight")
    assert np.all(bf.view(np.uint32) & 0xFFFF == 0)           # bf16 values: low 16 bits zero


def test_qwen2_has_qkv_bias_and_ties_its_embeddings(tmp_path):
    ck = Checkpoint(write_llama(tmp_path / "q", architecture="Qwen2ForCausalLM", tie_word_embeddings=True, **SMALL))
    spec = hf.decoder_spec(ck.config)
    assert spec.qkv_bias and not spec.o_bias and spec.tie_word_embeddings
    shapes = hf.check_tensors(ck, spec)
    assert "model.layers.1.self_attn.k_proj.bias" in shapes and "lm_head.weight" not in shapes


def test_transformers_5_rope_parameters_are_read(tmp_path):
    d = write_llama(tmp_path / "m", config_overrides={"rope_theta": None, "rope_scaling": None,
                                                       "rope_parameters": {"rope_type": "default",
                                                                           "rope_theta": 500000.0}}, **SMALL)
    assert hf.decoder_spec(Checkpoint(d).config).rope_theta == 500000.0


def _rewrite(d, tensors=None, **config):
    """Patch a written checkpoint: rename/add tensors (``tensors(dict) -> dict``), set or drop
    (value None) config.json fields, as published checkpoints have them."""
    from safetensors.numpy import load_file, save_file

    if tensors is not None:
        save_file(tensors(load_file(str(d / "model.safetensors"))), str(d / "model.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    for k, v in config.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    return d


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def test_llama3_and_linear_rope_scaling_give_transformers_frequencies(tmp_path):
    d = write_llama(tmp_path / "l3", config_overrides={"rope_scaling": LLAMA3_ROPE, "rope_theta": 10000.0}, **SMALL)
    spec = hf.decoder_spec(Checkpoint(d).config)
    base = 10000.0 ** (-np.arange(0, 16, 2) / 16)                 # head_dim 16
    wavelen = 2 * np.pi / base                                   # 6.3, 19.9, 62.8, 199, ...
    got = np.asarray(spec.rope_inv_freq)
    assert got[0] == base[0]                                     # shorter than 64 / 4: kept
    np.testing.assert_allclose(got[3:], base[3:] / 8)            # longer than 64 / 1: divided by the factor
    smooth = (64 / wavelen[1:3] - 1) / (4 - 1)                   # in between: blended
    np.testing.assert_allclose(got[1:3], (1 - smooth) * base[1:3] / 8 + smooth * base[1:3])
    lin = write_llama(tmp_path / "lin", config_overrides={"rope_scaling": {"type": "linear", "factor": 2.0}}, **SMALL)
    np.testing.assert_allclose(hf.decoder_spec(Checkpoint(lin).config).rope_inv_freq, base / 2)
    dyn = write_llama(tmp_path / "dyn", max_positions=256,
                      config_overrides={"rope_scaling": {"type": "dynamic", "factor": 2.0}}, **SMALL)
    dspec = hf.decoder_spec(Checkpoint(dyn).config)
    assert dspec.rope_inv_freq is None and (dspec.exact_positions, dspec.exact_positions_field) == (256, "rope_scaling")


def test_a_sliding_window_caps_the_context_where_it_would_drop_keys(tmp_path, dev):
    d = write_llama(tmp_path / "mistral", architecture="MistralForCausalLM",
                    config_overrides={"model_type": "mistral", "sliding_window": 24}, **SMALL)
    with Model.from_pretrained(d, device=dev) as model:
        assert model.max_context == 24
    with pytest.raises(ModelFitError, match="max_context 32 exceeds 24, where the model's config.json field "
                                            "'sliding_window' changes its attention"):
        Model.from_pretrained(d, device=dev, max_context=32)
    assert dev.live_buffers() == []


def _fuse_as_phi3(t):
    """A LLaMA checkpoint's tensors as Phi-3 stores them: q, k, v stacked in ``qkv_proj`` and gate,
    up in ``gate_up_proj`` (Phi3Attention / Phi3MLP split them in that order)."""
    out = dict(t)
    for i in range(SMALL["num_layers"]):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        out[a + "qkv_proj.weight"] = np.concatenate([out.pop(a + f"{n}_proj.weight") for n in "qkv"])
        out[m + "gate_up_proj.weight"] = np.concatenate([out.pop(m + f"{n}_proj.weight") for n in ("gate", "up")])
    return out


def test_phi3_fused_projections_read_as_the_llama_ones_they_stack(tmp_path, dev):
    llama = write_llama(tmp_path / "llama", head_dim=12, seed=9, **SMALL)
    phi3 = _rewrite(write_llama(tmp_path / "phi3", head_dim=12, seed=9, **SMALL), _fuse_as_phi3,
                    architectures=["Phi3ForCausalLM"], model_type="phi3", sliding_window=40,
                    original_max_position_embeddings=4096)
    a, b = Checkpoint(llama), Checkpoint(phi3)
    spec = hf.decoder_spec(b.config)
    assert spec.architecture == "Phi3ForCausalLM" and spec.exact_positions == 40
    shapes = hf.check_tensors(b, spec)
    for name in shapes:                                           # q/k/v, gate/up: views of the fused rows
        np.testing.assert_array_equal(b.tensor(name), a.tensor(name), err_msg=name)
    assert b.shape("model.layers.1.self_attn.k_proj.weight") == (24, 64)
    # the synthetic writer stores the same layout, and the device runs it as the LLaMA model
    outs = []
    for d in (llama, phi3, write_llama(tmp_path / "w", architecture="Phi3ForCausalLM", head_dim=12, seed=9, **SMALL)):
        with Model.from_pretrained(d, device=dev, max_context=32) as model:
            out = model.generate([0, 5, 6, 7], 4, stop_tokens=(), verify=True, output_logits=True)
            assert out.golden_mismatches == 0
            outs.append(np.asarray(out.logits))
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_array_equal(outs[2], outs[0])


@pytest.mark.parametrize("change, match", [
    (dict(partial_rotary_factor=0.75), r"'partial_rotary_factor' \(0.75\): RoPE on part of each head"),
    (dict(rope_scaling={"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
     "rope type 'longrope' is not supported"),
])
def test_phi3_variants_the_float_model_does_not_compute_are_refused(tmp_path, change, match):
    d = write_llama(tmp_path / "p", architecture="Phi3ForCausalLM", config_overrides=change, **SMALL)
    with pytest.raises(CheckpointError, match=match):
        hf.decoder_spec(Checkpoint(d).config)


def test_phi3_fused_tensors_of_the_wrong_size_are_refused_naming_them(tmp_path, dev):
    fused = "model.layers.0.mlp.gate_up_proj.weight"
    d = write_llama(tmp_path / "r", architecture="Phi3ForCausalLM", reshape={fused: (200, 64)}, **SMALL)
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.gate_up_proj.weight' has shape \[200, 64\]; "
                                              r"config.json implies 256 rows \(model.layers.0.mlp.gate_proj.weight 128"):
        Model.from_pretrained(d, device=dev)
    d = write_llama(tmp_path / "m", architecture="Phi3ForCausalLM", drop=("model.layers.1.self_attn.qkv_proj.weight",),
                    **SMALL)
    with pytest.raises(CheckpointError, match=r"no tensor 'model.layers.1.self_attn.qkv_proj.weight' \(Phi3ForCausalLM "
                                              r"stores q_proj, k_proj, v_proj in it\)"):
        Model.from_pretrained(d, device=dev)


def test_tensorflow_era_layernorm_names_read_as_weight_and_bias(tmp_path):
    """bert-base-uncased ships ``LayerNorm.gamma``/``.beta`` and an MLM head; transformers renames them."""
    def legacy(t):
        t = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in t.items()}
        return {**t, "cls.predictions.bias": np.zeros(160, np.float32)}
    plain = Checkpoint(write_bert(tmp_path / "new", prefix="bert.", pooling=None))
    old = Checkpoint(_rewrite(write_bert(tmp_path / "old", prefix="bert.", pooling=None), legacy,
                              architectures=["BertForMaskedLM"]))
    spec = hf.encoder_spec(old.config)
    hf.check_tensors(old, spec, "bert.")
    for name in ("bert.embeddings.LayerNorm.weight", "bert.encoder.layer.1.output.LayerNorm.bias"):
        assert name in old and old.shape(name) == plain.shape(name)
        np.testing.assert_array_equal(old.tensor(name), plain.tensor(name))


def test_published_config_quirks_load(tmp_path, dev):
    """Fields as published configs have them: LLaMA 3.2 (llama3 RoPE, tied, eos list, bf16),
    no ``architectures`` (model_type only), an lm_head.weight kept beside tied embeddings,
    numbers as strings, no hidden_act / head_dim, fields we do not use."""
    cases = {
        "llama32": write_llama(tmp_path / "llama32", tie_word_embeddings=True, dtype="bfloat16", config_overrides={
            "rope_scaling": {**LLAMA3_ROPE, "factor": 32.0}, "rope_theta": 500000.0, "eos_token_id": [1, 2],
            "transformers_version": "4.45.0.dev0"}, **SMALL),
        "no_arch": _rewrite(write_llama(tmp_path / "no_arch", **SMALL), architectures=None, hidden_act=None,
                            head_dim=None, rms_norm_eps="1e-5", pretraining_tp=1, use_cache=True),
        "tied_head_kept": _rewrite(write_llama(tmp_path / "tied", tie_word_embeddings=True, **SMALL),
                                   lambda t: {**t, "lm_head.weight": t["model.embed_tokens.weight"]}),
        # Phi-3-mini-4k-instruct's config.json fields (sizes scaled down; its heads of 96 padded here too)
        "phi3_mini": write_llama(tmp_path / "phi3", architecture="Phi3ForCausalLM", dtype="bfloat16", head_dim=12,
                                 config_overrides={
            "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config"}, "bos_token_id": 1, "eos_token_id": 32000,
            "pad_token_id": 32000, "sliding_window": 2047, "rope_scaling": None, "use_cache": True,
            "attention_bias": False, "transformers_version": "4.40.2"}, **SMALL),
    }
    for name, d in cases.items():
        with Model.from_pretrained(d, device=dev) as model:
            out = model.generate([0, 5, 6, 7, 8, 9], 6, stop_tokens=(), verify=True, output_logits=True)
            assert out.golden_mismatches == 0 and len(out.tokens) == 6, name
            # the float model with the scaled frequencies is what the device computes ...
            assert decoder_accuracy(model, out.prompt_tokens, out)["logits_cosine_min"] >= 0.99, name
            # ... and its RoPE table holds them
            ctx, pad = model.max_context, HeadPadding(model.spec.head_dim, dev.layout.attention.head_dim)
            inv = pad.inv_freq(model.spec.inv_freq())               # a padded head's pairs rotate zeros
            want = V.pack_rope_table(V.rope_table(ctx, pad.device_dim, inv_freq=inv), dev.layout.word_bytes)
            assert dev.read(model.program._rope, len(want)) == want, name
    assert dev.live_buffers() == []


def test_bert_with_the_masked_lm_prefix_and_sentence_transformers_pooling(tmp_path):
    ck = Checkpoint(write_bert(tmp_path / "b", prefix="bert.", pooling="cls", normalize=False))
    assert hf.encoder_prefix(ck) == "bert."
    assert hf.sentence_pooling(ck) == ("cls", False)
    spec = hf.encoder_spec(ck.config, *hf.sentence_pooling(ck))
    hf.check_tensors(ck, spec, "bert.")
    plain = Checkpoint(write_bert(tmp_path / "plain", pooling=None))
    assert hf.sentence_pooling(plain) == ("mean", False)


# -- bad checkpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda d: write_llama(d, drop=("model.layers.1.mlp.down_proj.weight",), **SMALL),
     "no tensor 'model.layers.1.mlp.down_proj.weight'"),
    (lambda d: write_llama(d, reshape={"model.layers.0.self_attn.k_proj.weight": (48, 64)}, **SMALL),
     r"'model.layers.0.self_attn.k_proj.weight' has shape \[48, 64\], config.json implies \[32, 64\]"),
    (lambda d: write_llama(d, tie_word_embeddings=False, drop=("lm_head.weight",), **SMALL),
     "no tensor 'lm_head.weight'.*'tie_word_embeddings' is false"),
    (lambda d: write_llama(d, config_overrides={"architectures": ["GPT2LMHeadModel"]}, **SMALL),
     "field 'architectures': 'GPT2LMHeadModel' is not supported"),
    (lambda d: write_llama(d, config_overrides={"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, **SMALL),
     r"field 'rope_scaling': rope type 'yarn' is not supported \(supported: default, linear, dynamic, llama3\)"),
    (lambda d: write_llama(d, config_overrides={"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, **SMALL),
     r"field 'rope_scaling.low_freq_factor' must be a number > 0, got None"),
    (lambda d: write_llama(d, config_overrides={"architectures": None, "model_type": "gpt2"}, **SMALL),
     r"'model_type' 'gpt2' is not one of"),
    (lambda d: write_llama(d, config_overrides={"architectures": ["Qwen3ForCausalLM"]}, **SMALL),
     r"'Qwen3ForCausalLM' is not supported; supported: LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, Phi3ForCausalLM, Bert"),
    (lambda d: write_bert(d, config_overrides={"architectures": ["RobertaModel"]}), r"'RobertaModel' is not supported"),
    (lambda d: write_llama(d, config_overrides={"vocab_size": None}, **SMALL), "field 'vocab_size'"),
    (lambda d: write_llama(d, config_overrides={"quantization_config": {"quant_method": "gptq", "bits": 4}}, **SMALL),
     "field 'quantization_config': a pre-quantized checkpoint \\(quant_method 'gptq'\\) is not read"),
    (lambda d: write_llama(d, architecture="MistralForCausalLM", config_overrides={"sliding_window": 0}, **SMALL),
     "field 'sliding_window': sliding-window attention needs a positive 'sliding_window'"),
    (lambda d: write_llama(d, config_overrides={"hidden_act": "gelu"}, **SMALL), "field 'hidden_act'"),
    (lambda d: write_llama(d, config_overrides={"num_key_value_heads": 3}, **SMALL), "num_key_value_heads"),
    (lambda d: write_llama(d, config_overrides={"num_hidden_layers": "two"}, **SMALL), "field 'num_hidden_layers'"),
    (lambda d: write_llama(d, config_overrides={"hidden_size": True}, **SMALL), "hidden_size"),
    (lambda d: write_llama(d, architecture="Qwen2ForCausalLM", config_overrides={"use_sliding_window": True}, **SMALL),
     "field 'use_sliding_window'"),
    (lambda d: write_bert(d, config_overrides={"position_embedding_type": "relative_key"}),
     "field 'position_embedding_type'"),
    (lambda d: write_bert(d, config_overrides={"is_decoder": True}), "field 'is_decoder'"),
    (lambda d: write_bert(d, drop=("encoder.layer.0.attention.self.query.bias",)),
     "no tensor 'encoder.layer.0.attention.self.query.bias'"),
])
def test_bad_checkpoints_are_refused_naming_the_tensor_or_field(tmp_path, dev, make, match):
    d = make(tmp_path / "m")
    with pytest.raises(CheckpointError, match=match):
        Model.from_pretrained(d, device=dev)
    assert dev.live_buffers() == []


def test_broken_directories_are_refused_naming_the_file(tmp_path, dev):
    with pytest.raises(CheckpointError, match="does not exist"):
        Model.from_pretrained(tmp_path / "nope", device=dev)
    with pytest.raises(CheckpointError, match="a model hub name.*download it first"):
        Model.from_pretrained("TinyLlama/TinyLlama-1.1B-Chat-v1.0", device=dev)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        Model.from_pretrained(tmp_path / "empty", device=dev)
    d = write_llama(tmp_path / "m", **SMALL)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*.safetensors"):
        Model.from_pretrained(d, device=dev)
    d = write_llama(tmp_path / "sh", shards=2, **SMALL)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weight_map names shard 'model-00002-of-00002.safetensors'"):
        Model.from_pretrained(d, device=dev)
    d = write_llama(tmp_path / "bad", **SMALL)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Model.from_pretrained(d, device=dev)
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        Model.from_pretrained(d, device=dev)
    d = write_llama(tmp_path / "garbage", **SMALL)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Model.from_pretrained(d, device=dev)
    with pytest.raises(TypeError, match="path"):
        Model.from_pretrained(5, device=dev)


# -- recipes ------------------------------------------------------------------------------------------

def test_recipes_from_dicts_names_and_yaml_files(tmp_path):
    r = load_recipe({"weights": "int4", "kv_bits": 4, "lm_head": 8,
                     "rules": [{"match": "model.layers.*.mlp.*", "weights": "ternary"},
                               {"match": "layers.0.*", "weights": 2}]})
    assert r.weight_format("model.layers.1.mlp.up_proj", "layers.1.up_proj") == "ternary"
    assert r.weight_format("model.layers.0.self_attn.q_proj", "layers.0.q_proj") == "int2"
    assert r.weight_format("model.layers.1.self_attn.q_proj", "layers.1.q_proj") == "int4"
    assert r.head_format() == "int8" and r.kv_bits == 4
    assert load_recipe("int4").weights == "int4" and load_recipe(None).weights == "int8"
    f = tmp_path / "r.yaml"
    f.write_text("weights: int8\nkv_bits: 8\nrules:\n  - match: '*.down_proj'\n    weights: int4\n")
    assert load_recipe(str(f)).rules[0].weights == "int4"


@pytest.mark.parametrize("quant, match", [
    ({"weights": "int3"}, "field 'weights'"),
    ({"kv_bits": 6}, "field 'kv_bits'"),
    ({"rules": [{"match": "x", "weights": "int4", "bits": 2}]}, "field 'rules.0.bits'"),
    ({"rules": [{"match": "x"}]}, "field 'rules.0.weights'"),
    ({"ternary_scale": "row"}, "field 'ternary_scale'"),
    ({"wieghts": "int4"}, "field 'wieghts'"),
    ("int5", "weight format"),
    ([1, 2], "must be a mapping"),
])
def test_bad_recipes_name_the_field(quant, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(quant)


def test_a_yaml_recipe_that_is_not_yaml_is_refused(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("weights: [int4\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(f)


def test_a_rule_that_matches_no_projection_is_refused(tmp_path, dev):
    d = write_llama(tmp_path / "m", **SMALL)
    with pytest.raises(RecipeError, match=r"'rules.0.match': 'model.layer.\*' matches no projection"):
        Model.from_pretrained(d, device=dev, quant={"rules": [{"match": "model.layer.*", "weights": "int4"}]})


# -- what the design cannot hold -----------------------------------------------------------------------

def test_formats_the_engines_lack_are_refused_naming_the_projection(tmp_path, dev):
    d = write_llama(tmp_path / "m", **SMALL)
    with pytest.raises(ModelFitError, match=r"model.layers.0.mlp.gate_proj is quantized to int2.*\[4, 8\]"):
        Model.from_pretrained(d, device=dev, quant={"rules": [{"match": "*.mlp.*", "weights": "int2"}]})
    with pytest.raises(ModelFitError, match="lm_head is quantized to ternary"):
        Model.from_pretrained(d, device=dev, quant={"lm_head": "ternary"})
    with GoldenDevice(model_design("kv8", attention={"kv_bits": [8]})) as d8:
        with pytest.raises(ModelFitError, match=r"kv_bits 4: the attention engine stores KV at \[8\] bits"):
            Model.from_pretrained(d, device=d8, quant={"kv_bits": 4})


def test_head_dim_k_and_row_widths_are_checked_against_the_engines(tmp_path, dev):
    d = write_llama(tmp_path / "hd", hidden_size=64, q_heads=2, kv_heads=1)          # head_dim 32
    with pytest.raises(ModelFitError, match="head_dim 32 exceeds the attention engine's head_dim 16"):
        Model.from_pretrained(d, device=dev)
    d = write_llama(tmp_path / "k", hidden_size=64, intermediate_size=320, q_heads=4, kv_heads=2)
    with GoldenDevice(model_design("wide", matmul={"split_k": 1}, vector={"max_dim": 512})) as wide:
        with pytest.raises(ModelFitError, match=r"intermediate_size \(padded to k_align\) 320 exceeds the largest K "
                                                r"of one matmul descriptor 256 \(max_k 256 x split_k 1\)"):
            Model.from_pretrained(d, device=wide)
    with pytest.raises(ModelFitError, match=r"intermediate_size \(padded to k_align\) 320 exceeds the vector "
                                            r"engine's max_dim 256"):
        Model.from_pretrained(d, device=dev)
    d = write_llama(tmp_path / "odd", hidden_size=72, intermediate_size=128, q_heads=4, kv_heads=2, head_dim=16)
    with pytest.raises(ModelFitError, match="hidden_size 72 is not a multiple of the matmul's k_align 16"):
        Model.from_pretrained(d, device=dev)
    with GoldenDevice(model_design("nosilu", vector={"activations": ["gelu"]})) as nosilu:
        with pytest.raises(ModelFitError, match="no silu table"):
            Model.from_pretrained(write_llama(tmp_path / "ok", **SMALL), device=nosilu)


def test_a_design_without_the_engines_a_model_needs_is_refused(tmp_path, golden_dev):
    with pytest.raises(ModelFitError, match="has no attention engine"):
        Model.from_pretrained(write_llama(tmp_path / "m", **SMALL), device=golden_dev)


def test_a_model_larger_than_a_ports_memory_is_refused_naming_the_port(tmp_path, dev):
    d = write_llama(tmp_path / "m", **SMALL)
    region = dev._bank_region(dev.layout.port("w1"))
    hog = dev.alloc(region.size - 8192, "w1")                      # leave two pages on w1's bank
    with pytest.raises(ModelFitError, match=r"port\(s\) w1 .* MiB free"):
        Model.from_pretrained(d, device=dev)
    assert dev.live_buffers() == [hog]


def test_max_context_beyond_the_engine_or_the_model_is_refused(tmp_path, dev):
    d = write_llama(tmp_path / "m", max_positions=32, **SMALL)
    with pytest.raises(ModelFitError, match="max_context 100 exceeds the attention engine's max_context 64"):
        Model.from_pretrained(d, device=dev, max_context=100)
    with pytest.raises(ModelFitError, match="max_position_embeddings 32"):
        Model.from_pretrained(d, device=dev, max_context=48)
    with pytest.raises(ValueError, match="max_context"):
        Model.from_pretrained(d, device=dev, max_context=0)


def test_bad_loader_arguments_are_named(tmp_path, dev):
    d = write_llama(tmp_path / "m", **SMALL)
    with pytest.raises(TypeError, match="device"):
        Model.from_pretrained(d, device="sim")
    with pytest.raises(TypeError, match="tokenizer"):
        Model.from_pretrained(d, device=dev, tokenizer="yes")
    with pytest.raises(TypeError, match="progress"):
        Model.from_pretrained(d, device=dev, progress=3)
    with pytest.raises(ValueError, match="timeout"):
        Model.from_pretrained(d, device=dev, timeout=-1)


def test_the_tokenizer_must_fit_the_vocabulary(tmp_path, dev):
    d = write_llama(tmp_path / "m", **SMALL)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["vocab_size"] == 259
    small = write_llama(tmp_path / "small", vocab_size=200, **SMALL)
    with pytest.raises(CheckpointError, match="tokenizer.json has 259 tokens, more than the model's vocab_size 200"):
        Model.from_pretrained(small, device=dev)


def test_sentence_transformers_max_seq_length_truncates_texts(tmp_path, dev):
    d = write_bert(tmp_path / "st", num_layers=1)
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8, "do_lower_case": False}))
    with Model.from_pretrained(d, device=dev) as model:
        assert model.tokenizer.max_length == 8
        ids, mask = model.tokenizer.batch(["the quick brown fox jumps over the lazy dog " * 3])
        assert mask.sum() == 8
        assert model.encode(["the quick brown fox jumps over the lazy dog " * 3]).shape == (1, 64)
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": "long"}))
    with pytest.raises(CheckpointError, match="sentence_bert_config.json field 'max_seq_length'"):
        Model.from_pretrained(d, device=dev)
    assert dev.live_buffers() == []
