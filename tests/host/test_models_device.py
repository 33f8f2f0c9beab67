"""Models from checkpoint directories on devices: the golden device (the CPU golden program
behind the kernel's register interface) for breadth, the Verilator co-simulation for the real
path. Every step is compared with the golden program bit for bit (``verify=True``) and with the
float model of the same checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

from designs import tiny_vector_config_dict
from golden_kernel import GoldenDevice
from hbmforge.config import parse_config
from hbmforge.flows.model_runner import decoder_accuracy
from hbmforge.host import Model, open_device
from hbmforge.host.errors import DeviceTimeoutError
from hbmforge.host.models import DecoderModel, EncoderModel
from hbmforge.host.models.synthetic import design_sized, write_bert, write_llama
from hbmforge.layout import DesignLayout
from hbmforge.numerics.reference import cosine

#: the co-sim design of these tests and of tests/integration/test_cli_model.py (one build, shared
#: through the default design and Verilator caches)
MODEL_DESIGN = "tiny_vec_model"


@pytest.fixture(scope="module")
def layout():
    return DesignLayout(parse_config(tiny_vector_config_dict(MODEL_DESIGN)))


@pytest.fixture
def gdev(layout):
    with GoldenDevice(layout) as d:
        yield d


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, layout):
    root = tmp_path_factory.mktemp("ckpt")
    shape = design_sized(layout)
    return {
        "llama": write_llama(root / "llama", num_layers=2, **shape),
        "qwen2": write_llama(root / "qwen2", num_layers=2, architecture="Qwen2ForCausalLM", tie_word_embeddings=True,
                             shards=2, dtype="bfloat16", seed=3, **shape),
        "bert": write_bert(root / "bert", num_layers=2, **design_sized(layout, "bert")),
        "bert_cls": write_bert(root / "bert_cls", num_layers=1, prefix="bert.", pooling="cls", normalize=False,
                               seed=5, **design_sized(layout, "bert")),
    }


def _generate_and_check(model: DecoderModel, prompt, n: int, *, min_cos: float):
    out = model.generate(prompt, n, stop_tokens=(), verify=True, output_logits=True)
    assert out.golden_checked == 1 + (n - 1) and out.golden_mismatches == 0
    acc = decoder_accuracy(model, out.prompt_tokens, out)
    assert acc["logits_cosine_min"] >= min_cos, acc
    return out, acc


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_decoders_generate_bit_exact_with_the_golden_program_and_close_to_float(gdev, ckpts, name):
    with Model.from_pretrained(ckpts[name], device=gdev) as model:
        assert isinstance(model, DecoderModel)
        out, acc = _generate_and_check(model, "Hello there", 8, min_cos=0.99)
        assert acc["greedy_agreement"] >= 0.75
        assert out.host_round_trips == out.prefill_runs + 7          # one start per decode step
        assert out.text == model.tokenizer.decode(out.tokens)
    assert gdev.live_buffers() == []                                    # closing frees every buffer


def test_low_bit_recipes_and_kv4_run_and_stay_near_float(gdev, ckpts):
    recipe = {"weights": "int4", "kv_bits": 4, "lm_head": "int8",
              "rules": [{"match": "layers.0.*", "weights": "int8"}]}
    with Model.from_pretrained(ckpts["llama"], device=gdev, quant=recipe) as model:
        assert model.program.kv_bits == 4
        layer0 = model.program.layers[0].qkv.bits, model.program.layers[1].qkv.bits
        assert layer0 == (8, 4)
        _generate_and_check(model, [0, 70, 80, 90], 6, min_cos=0.95)


def test_a_session_continues_on_the_device_as_one_long_prompt_would(gdev, ckpts):
    with Model.from_pretrained(ckpts["llama"], device=gdev, max_context=48) as model:
        s = model.session()
        a = model.generate([0, 72, 105], 4, session=s, stop_tokens=())
        b = model.generate([33, 33], 4, session=s, stop_tokens=())
        whole = model.generate([0, 72, 105] + a.tokens + [33, 33], 4, stop_tokens=())
        assert b.tokens == whole.tokens and s.cached == 3 + 4 + 2 + 3
        assert b.prefill_runs == 1 and b.token_cycles[0] > 0


def test_a_device_failure_mid_generation_leaves_the_session_and_device_as_before(gdev, ckpts, monkeypatch):
    with Model.from_pretrained(ckpts["llama"], device=gdev, max_context=32) as model:
        s = model.session()
        model.generate([0, 50, 60], 3, session=s, stop_tokens=())
        before = (list(s.tokens), s.cached, s._seq.length, s._seq.pages, model.program.free_pages)
        real_run, calls = gdev.run, []

        def flaky(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise DeviceTimeoutError("injected: the kernel did not finish")
            return real_run(*args, **kwargs)

        monkeypatch.setattr(gdev, "run", flaky)
        with pytest.raises(DeviceTimeoutError, match="injected"):
            model.generate([70], 6, session=s, stop_tokens=())
        assert (list(s.tokens), s.cached, s._seq.length, s._seq.pages, model.program.free_pages) == before
        monkeypatch.setattr(gdev, "run", real_run)
        again = model.generate([70], 6, session=s, stop_tokens=(), verify=True)
        assert again.golden_mismatches == 0


def test_the_cache_limit_holds_on_the_device(gdev, ckpts):
    with Model.from_pretrained(ckpts["llama"], device=gdev, max_context=16) as model:
        with pytest.raises(ValueError, match="prompt of 17 token"):
            model.generate(list(range(17)), 1)
        s = model.session()
        model.generate(list(range(10)), 7, session=s, stop_tokens=())
        assert s.cached == 16
        with pytest.raises(ValueError, match="KV cache is full"):
            model.generate([], 1, session=s)
        assert s._seq.length == 16


@pytest.mark.parametrize("name", ["bert", "bert_cls"])
def test_encoders_embed_bit_exact_with_the_golden_program_and_close_to_float(gdev, ckpts, name):
    texts = ["the quick brown fox", "hello world", "a small model on a device", "the cat sat"]
    with Model.from_pretrained(ckpts[name], device=gdev) as model:
        assert isinstance(model, EncoderModel)
        emb = model.encode(texts, verify=True)
        assert model.golden_mismatches == 0 and len(model.last_encode) == 4
        assert np.all(cosine(emb, model.reference(texts)) > 0.99)
        if model.spec.normalize:
            np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_an_intermediate_width_off_the_k_alignment_is_zero_padded_on_the_device(gdev, layout, tmp_path, arch):
    # LLaMA-2-7B's 11008 on a 4096-lane design: gate/up (fc_in) compute the real columns, the
    # activation pass runs over the width padded to k_align (the extra columns read x 0) and
    # down (fc_out) takes K padded with zero weights; every step still equals the golden program
    # and tracks the float model of the checkpoint
    shape = design_sized(layout, arch)
    word, align = layout.word_bytes, layout.matmul.k_align
    inter = shape["intermediate_size"] - word
    assert inter % align and inter % word == 0
    shape["intermediate_size"] = inter
    if arch == "llama":
        with Model.from_pretrained(write_llama(tmp_path / "m", num_layers=2, **shape), device=gdev) as model:
            up, down = model.program.layers[0].up, model.program.layers[0].down
            assert (up.n, down.k) == (2 * inter, layout.matmul.pad_k(inter))     # gate/up unpadded, down's K padded
            _generate_and_check(model, "Hello there", 5, min_cos=0.99)
    else:
        texts = ["the quick brown fox", "hello world"]
        with Model.from_pretrained(write_bert(tmp_path / "m", num_layers=2, **shape), device=gdev) as model:
            emb = model.encode(texts, verify=True)
            assert model.golden_mismatches == 0
            assert np.all(cosine(emb, model.reference(texts)) > 0.99)


def _narrow_heads(layout, arch):
    """A checkpoint shape whose heads are 3/4 (llama) or 1/2 (bert) of the engine's head_dim."""
    shape, hd = design_sized(layout, arch), layout.attention.head_dim
    if arch == "llama":
        return {**shape, "head_dim": hd * 3 // 4}
    return {**shape, "heads": shape["hidden_size"] // (hd // 2)}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "bert"])
def test_heads_narrower_than_the_engines_are_zero_padded_on_the_device(gdev, layout, tmp_path, arch):
    # BitNet b1.58 large (96), Phi-3 mini (96), OpenLLaMA 3B (100), all-MiniLM-L6 (32) on a design
    # whose engine is wider: each head widened with zeros, exact but for the device's quantization,
    # so it tracks the float model as closely as a model of the engine's own head size does
    shape, hd = _narrow_heads(layout, "bert" if arch == "bert" else "llama"), layout.attention.head_dim
    if arch == "bert":
        texts = ["the quick brown fox", "hello world", "a small model on a device"]
        with Model.from_pretrained(write_bert(tmp_path / "m", num_layers=2, seed=7, **shape), device=gdev) as model:
            assert model.spec.head_dim == hd // 2 and model.program.layers[0].qkv.n == 3 * shape["heads"] * hd
            emb = model.encode(texts, verify=True)
            assert model.golden_mismatches == 0
            assert np.all(cosine(emb, model.reference(texts)) > 0.9995)     # 1 / sqrt(HD) instead: < 0.9993
        return
    extra = {"architecture": "Qwen2ForCausalLM", "seed": 5} if arch == "qwen2" else {"seed": 4}
    with Model.from_pretrained(write_llama(tmp_path / "m", num_layers=2, **extra, **shape), device=gdev) as model:
        heads = shape["q_heads"] + 2 * shape["kv_heads"]
        assert model.spec.head_dim == hd * 3 // 4 and model.program.layers[0].qkv.n == heads * hd
        # the scores keep the model's 1 / sqrt(head_dim), not the engine's
        assert model.program._cfg.softmax_scale == pytest.approx((hd * 3 // 4) ** -0.5)
        _generate_and_check(model, [0, 5, 6, 7, 8, 9, 10, 11], 8, min_cos=0.999)


# -- the Verilator co-simulation --------------------------------------------------------------------

@pytest.fixture(scope="module")
def cosim():
    with open_device(parse_config(tiny_vector_config_dict(MODEL_DESIGN)), progress=False) as d:
        yield d


@pytest.mark.rtl
def test_a_decoder_checkpoint_generates_on_the_cosim(cosim, ckpts):
    with Model.from_pretrained(ckpts["qwen2"], device=cosim) as model:
        s = model.session()
        out, acc = _generate_and_check(model, "Hi", 6, min_cos=0.99)
        assert all(c > 0 for c in out.token_cycles)
        a = model.generate("Hi", 3, session=s, stop_tokens=(), verify=True)
        b = model.generate("!", 3, session=s, stop_tokens=(), verify=True)
        assert a.golden_mismatches == b.golden_mismatches == 0
        assert [st for st in (model.program.last_step,)][0].host_round_trips == 1


@pytest.mark.rtl
def test_an_encoder_checkpoint_embeds_on_the_cosim(cosim, ckpts):
    texts = ["the quick brown fox jumps", "hello world"]
    with Model.from_pretrained(ckpts["bert"], device=cosim) as model:
        emb = model.encode(texts, verify=True)
        assert model.golden_mismatches == 0
        assert np.all(cosine(emb, model.reference(texts)) > 0.99)
        assert all(st.host_round_trips == 1 and st.cycles > 0 for st in model.last_encode)


def test_sessions_share_the_kv_pools_that_max_sequences_sizes(gdev, ckpts):
    with Model.from_pretrained(ckpts["llama"], device=gdev, max_context=32, max_sequences=2) as model:
        a, b, c = model.session(), model.session(), model.session()
        model.generate(list(range(5, 20)), 10, session=a, stop_tokens=())
        model.generate(list(range(5, 20)), 10, session=b, stop_tokens=())
        free = model.program.free_pages
        with pytest.raises(ValueError, match=r"KV pools have 4 free page\(s\) of 4 tokens, this call needs 8 more"):
            model.generate(list(range(5, 30)), 8, session=c, stop_tokens=())
        assert model.program.free_pages == free and c.cached == 0
        a.close()
        out = model.generate(list(range(5, 30)), 8, session=c, stop_tokens=(), verify=True)
        assert out.golden_mismatches == 0


@pytest.mark.rtl
def test_an_intermediate_width_off_the_k_alignment_runs_on_the_cosim(cosim, layout, tmp_path):
    shape = design_sized(layout)
    shape["intermediate_size"] -= layout.word_bytes            # off k_align: padded on the device
    with Model.from_pretrained(write_llama(tmp_path / "m", num_layers=1, **shape), device=cosim) as model:
        _generate_and_check(model, "Hi", 4, min_cos=0.99)


@pytest.mark.rtl
def test_heads_narrower_than_the_engines_run_on_the_cosim(cosim, layout, tmp_path):
    shape = _narrow_heads(layout, "llama")
    with Model.from_pretrained(write_llama(tmp_path / "m", num_layers=1, seed=4, **shape), device=cosim) as model:
        _generate_and_check(model, "Hi", 4, min_cos=0.999)
