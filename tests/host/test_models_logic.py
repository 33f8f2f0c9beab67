"""The model layer's own logic (sessions, sampling, stop tokens, text, checks, rollback, pooling)
over a NumPy stand-in of the device program.

The stand-in (:class:`FloatProgram`) has the interface of hbmforge.host.blocks.ModelProgram and
computes the float reference model, so these tests check what the model layer does with a
program's results, not the device; tests/host/test_models_device.py runs the real programs.
"""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.host.blocks import StepStats
from hbmforge.host.errors import DeviceTimeoutError
from hbmforge.host.models.checkpoint import Checkpoint
from hbmforge.host.models import hf
from hbmforge.host.models.model import DecoderModel, EncoderModel, Session, SessionError
from hbmforge.host.models.sampling import choose_token, sampling
from hbmforge.host.models.synthetic import write_bert, write_llama
from hbmforge.host.models.tokenizer import TextTokenizer
from hbmforge.numerics.reference import (DecoderCache, DecoderReference, decoder_weight_shapes, encoder_blocks,
                                         encoder_weight_shapes)


class FakeSeq:
    def __init__(self):
        self.cache = DecoderCache()
        self.freed = False

    @property
    def length(self) -> int:
        return self.cache.length

    def truncate(self, n: int) -> None:
        self.cache = DecoderCache([k[:n] for k in self.cache.k], [v[:n] for v in self.cache.v])

    def free(self) -> None:
        self.freed = True


class FloatProgram:
    """ModelProgram's interface over the float reference; ``fail_on`` makes call number N raise
    after it changed the sequence (the worst case for the caller's rollback)."""

    def __init__(self, spec, weights, *, encoder: bool = False, fail_on: int | None = None):
        self.spec, self.w, self.encoder = spec, weights, encoder
        self.ref = None if encoder else DecoderReference(spec, weights)
        self.fail_on = fail_on
        self.calls = 0
        self.seqs: list[FakeSeq] = []
        self.last_step: StepStats | None = None
        self.closed = False

    def sequence(self) -> FakeSeq:
        s = FakeSeq()
        self.seqs.append(s)
        return s

    def _compute(self, x, seq, valid_len=None):
        if self.encoder:
            return encoder_blocks(self.spec, self.w, x[None])[0], seq.cache
        return self.ref.forward_embeddings(x, seq.cache)

    def prefill(self, x, seq, *, valid_len=None):
        assert not seq.freed
        self.calls += 1
        y, seq.cache = self._compute(np.asarray(x), seq, valid_len)
        if self.calls == self.fail_on:
            raise DeviceTimeoutError("injected device failure")
        self.last_step = StepStats(tokens=len(x), descriptors=3, host_round_trips=1, cycles=1000 + 10 * len(x))
        return y.astype(np.float32)

    def decode_step(self, x, seq):
        return self.prefill(np.asarray(x)[None], seq)[0]

    def golden_prefill(self, x, seq, *, valid_len=None):
        return self._compute(np.asarray(x), seq, valid_len)[0].astype(np.float32)

    def golden_decode_step(self, x, seq):
        return self.golden_prefill(np.asarray(x)[None], seq)[0]

    def close(self):
        self.closed = True


def _weights(ckpt, spec, prefix=""):
    shapes = decoder_weight_shapes(spec) if not hasattr(spec, "heads") else encoder_weight_shapes(spec)
    return {n: ckpt.tensor(prefix + n) for n in shapes}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("llama"), num_layers=2, hidden_size=64, q_heads=4, kv_heads=2)


def decoder(llama_dir, *, max_context=48, fail_on=None, **options) -> DecoderModel:
    ck = Checkpoint(llama_dir)
    spec = hf.decoder_spec(ck.config)
    prog = FloatProgram(spec, _weights(ck, spec), fail_on=fail_on)
    return DecoderModel(spec, prog, embeddings=ck.tensor("model.embed_tokens.weight"),
                        stop_tokens=hf.stop_token_ids(ck), tokenizer=TextTokenizer(ck.tokenizer_path),
                        max_context=max_context, checkpoint=ck, **options)


PROMPT = [0, 72, 101, 108, 108, 111]


# -- generation ---------------------------------------------------------------------------------

def test_greedy_generation_follows_the_programs_logits(llama_dir):
    m = decoder(llama_dir)
    out = m.generate(PROMPT, 12, stop_tokens=())
    assert out.tokens == m.reference().generate_greedy(PROMPT, 12)
    assert out.stop_reason == "max_new_tokens" and len(out.token_cycles) == 12
    assert out.host_round_trips == 1 + 11                # one prefill run, then one run per decode step
    assert out.cycles_per_token == 1010


def test_prompts_longer_than_the_prefill_chunk_run_in_several_chunks(llama_dir):
    m = decoder(llama_dir, prefill_chunk=4)
    out = m.generate(PROMPT + [50, 51, 52], 5, stop_tokens=())
    assert out.prefill_runs == 3
    assert out.tokens == m.reference().generate_greedy(PROMPT + [50, 51, 52], 5)


def test_sampling_is_reproducible_by_seed_and_top_k_1_is_greedy(llama_dir):
    m = decoder(llama_dir)
    kw = dict(do_sample=True, temperature=1.5, top_p=0.95, stop_tokens=())
    a = m.generate(PROMPT, 16, seed=7, **kw).tokens
    assert a == m.generate(PROMPT, 16, seed=7, **kw).tokens
    assert a != m.generate(PROMPT, 16, seed=8, **kw).tokens
    greedy = m.generate(PROMPT, 8, stop_tokens=()).tokens
    assert m.generate(PROMPT, 8, do_sample=True, top_k=1, seed=3, stop_tokens=()).tokens == greedy
    assert m.generate(PROMPT, 8, do_sample=True, top_p=1e-9, seed=3, stop_tokens=()).tokens == greedy


def test_generation_stops_after_a_stop_token_and_keeps_it(llama_dir):
    m = decoder(llama_dir)
    greedy = m.generate(PROMPT, 10, stop_tokens=()).tokens
    stop = greedy[3]
    first = greedy.index(stop)
    out = m.generate(PROMPT, 10, stop_tokens=[stop])
    assert out.tokens == greedy[:first + 1] and out.stop_reason == "stop_token"


def test_a_session_reuses_its_cache_across_calls(llama_dir):
    m = decoder(llama_dir)
    s = m.session()
    a = m.generate(PROMPT, 5, session=s, stop_tokens=())
    b = m.generate([70, 71], 4, session=s, stop_tokens=())
    assert s.tokens == PROMPT + a.tokens + [70, 71] + b.tokens
    assert s.cached == len(s.tokens) - 1                  # the last generated token is fed next time
    # the same as one generation over the whole history: the cache was reused, not recomputed wrongly
    whole = m.generate(PROMPT + a.tokens + [70, 71], 4, stop_tokens=())
    assert b.tokens == whole.tokens
    assert m.program.seqs[0].length == s.cached
    s.close()
    assert m.program.seqs[0].freed


def test_a_call_without_a_session_frees_its_sequence(llama_dir):
    m = decoder(llama_dir)
    m.generate(PROMPT, 3)
    assert all(seq.freed for seq in m.program.seqs)


def test_text_in_and_out_through_the_tokenizer_and_tokens_stream_as_they_come(llama_dir):
    m = decoder(llama_dir)
    events = []
    out = m.generate("Hello, wörld", 10, stop_tokens=(), on_token=events.append)
    assert out.prompt_tokens[0] == 0 and m.tokenizer.decode(out.prompt_tokens) == "Hello, wörld"
    assert [e.token for e in events] == out.tokens and [e.index for e in events] == list(range(10))
    assert "".join(e.text for e in events) == m.tokenizer.decode(out.tokens) == out.text
    assert all(e.cycles > 0 for e in events)


def test_verify_compares_every_run_with_the_golden_program(llama_dir):
    m = decoder(llama_dir)
    out = m.generate(PROMPT, 4, stop_tokens=(), verify=True)
    assert out.golden_checked == 4 and out.golden_mismatches == 0


# -- bad input: clear errors and nothing changed ------------------------------------------------

@pytest.mark.parametrize("kwargs, err, match", [
    (dict(input_ids=[1, 2, 400]), ValueError, "token id 400 is outside the vocabulary"),
    (dict(input_ids=[-1]), ValueError, "outside the vocabulary"),
    (dict(input_ids=[1.5, 2.0]), TypeError, "integer token ids"),
    (dict(input_ids=[[1, 2], [3, 4]]), ValueError, "one sequence"),
    (dict(input_ids=[]), ValueError, "input_ids is empty"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=True), TypeError, "max_new_tokens"),
    (dict(temperature=0), ValueError, "temperature"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_k=-2), ValueError, "top_k"),
    (dict(seed="x"), TypeError, "seed"),
    (dict(stop_tokens=[10**6]), ValueError, "stop_tokens"),
    (dict(on_token=5), TypeError, "on_token"),
    (dict(session="s"), TypeError, "session"),
])
def test_bad_generate_arguments_are_named_before_any_run(llama_dir, kwargs, err, match):
    m = decoder(llama_dir)
    args = {"input_ids": PROMPT, "max_new_tokens": 3, **kwargs}
    with pytest.raises(err, match=match):
        m.generate(args.pop("input_ids"), args.pop("max_new_tokens"), **args)
    assert m.program.calls == 0 and m.program.seqs == []


def test_a_prompt_longer_than_the_kv_cache_is_refused(llama_dir):
    m = decoder(llama_dir, max_context=8)
    s = m.session()
    with pytest.raises(ValueError, match="prompt of 9 token.*does not fit the KV cache"):
        m.generate(list(range(9)), 1, session=s)
    with pytest.raises(ValueError, match="max_new_tokens 4 does not fit.*at most 3"):
        m.generate(list(range(6)), 4, session=s)
    assert m.program.calls == 0 and s.cached == 0 and s.tokens == []


def test_a_decode_step_after_the_cache_is_full_is_refused_and_the_session_stays_usable(llama_dir):
    m = decoder(llama_dir, max_context=8)
    s = m.session()
    out = m.generate(list(range(3, 8)), 4, session=s, stop_tokens=())     # 5 + 3 decode steps = 8 positions
    assert s.cached == 8 and len(s.pending) == 1
    calls = m.program.calls
    with pytest.raises(SessionError, match="KV cache is full"):
        m.generate([], 1, session=s)
    with pytest.raises(SessionError, match="KV cache is full"):
        m.generate([9], 2, session=s)
    assert m.program.calls == calls and s.cached == 8 and s.tokens[-4:] == out.tokens


def test_a_device_failure_mid_generation_rolls_the_session_back(llama_dir):
    m = decoder(llama_dir, fail_on=5)                   # call 1, 2: first call; 3..: second call
    s = m.session()
    m.generate(PROMPT, 2, session=s, stop_tokens=())
    before = (list(s.tokens), s.cached, m.program.seqs[0].length)
    with pytest.raises(DeviceTimeoutError, match="injected"):
        m.generate([40, 41], 6, session=s, stop_tokens=())
    assert (list(s.tokens), s.cached, m.program.seqs[0].length) == before
    # the session goes on exactly as if the failed call had never happened
    m.program.fail_on = None
    again = m.generate([40, 41], 6, session=s, stop_tokens=())
    fresh = decoder(llama_dir)
    fs = fresh.session()
    fresh.generate(PROMPT, 2, session=fs, stop_tokens=())
    assert again.tokens == fresh.generate([40, 41], 6, session=fs, stop_tokens=()).tokens


def test_sessions_are_checked(llama_dir):
    m, other = decoder(llama_dir), decoder(llama_dir)
    s = other.session()
    with pytest.raises(SessionError, match="another model"):
        m.generate(PROMPT, 2, session=s)
    s.close()
    with pytest.raises(SessionError, match="closed"):
        other.generate(PROMPT, 2, session=s)
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.generate(PROMPT, 2)
    assert m.program.closed


def test_a_text_prompt_without_a_tokenizer_is_refused(llama_dir):
    m = decoder(llama_dir)
    m.tokenizer = None
    with pytest.raises(ValueError, match="tokenizer.json"):
        m.generate("hi", 2)


# -- sampling rules ---------------------------------------------------------------------------------

def test_top_k_and_top_p_keep_the_tokens_transformers_keeps():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    rng = np.random.default_rng(0)
    seen = {choose_token(logits, sampling(do_sample=True, top_k=2), rng) for _ in range(400)}
    assert seen == {0, 1}
    # top_p 0.8: 0.5 + 0.2 = 0.7 < 0.8, so the 0.15 token is needed too; 0.1 and 0.05 are dropped
    seen = {choose_token(logits, sampling(do_sample=True, top_p=0.8), rng) for _ in range(600)}
    assert seen == {0, 1, 2}
    counts = np.bincount([choose_token(logits, sampling(do_sample=True), rng) for _ in range(4000)], minlength=5)
    assert np.allclose(counts / 4000, [0.5, 0.2, 0.15, 0.1, 0.05], atol=0.03)
    assert choose_token(logits, sampling(), None) == 0


# -- encoder ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return write_bert(tmp_path_factory.mktemp("bert"), num_layers=2)


def encoder(bert_dir) -> EncoderModel:
    ck = Checkpoint(bert_dir)
    pooling, normalize = hf.sentence_pooling(ck)
    spec = hf.encoder_spec(ck.config, pooling, normalize)
    prog = FloatProgram(spec, _weights(ck, spec), encoder=True)
    return EncoderModel(spec, prog, embeddings={n: ck.tensor(n) for n in EncoderModel.EMBEDDINGS},
                        tokenizer=TextTokenizer(ck.tokenizer_path, max_length=spec.max_positions),
                        max_context=spec.max_positions, checkpoint=ck)


def test_encode_pools_each_sentence_as_the_reference_does(bert_dir):
    m = encoder(bert_dir)
    ids = np.array([[2, 30, 31, 60, 80, 3], [2, 45, 12, 3, 0, 0]])
    mask = (ids != 0).astype(int)
    emb = m.encode(ids, mask)
    ref = m.reference(ids, mask)
    assert emb.shape == (2, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)      # the Normalize module
    raw = m.encode(ids, mask, normalize=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), emb, rtol=1e-5)
    assert all(seq.freed for seq in m.program.seqs) and len(m.last_encode) == 2


def test_encode_takes_text_and_pads_a_batch(bert_dir):
    m = encoder(bert_dir)
    texts = ["the quick brown fox", "hello world", "a sentence embedding"]
    batch = m.encode(texts)
    one = np.stack([m.encode(t)[0] for t in texts])
    np.testing.assert_allclose(batch, one, rtol=1e-6)


@pytest.mark.parametrize("args, err, match", [
    (([[2, 400, 3]],), ValueError, "outside the vocabulary"),
    (([[2, 5, 3]], [[1, 0, 1]]), ValueError, "right padding"),
    (([[2, 5, 3]], [[0, 0, 0]]), ValueError, "no valid token"),
    (([[2, 5, 3]], [[1, 1]]), ValueError, "attention_mask"),
    ((np.zeros((1, 65), int),), ValueError, "at most 64"),
    (([["a"]],), TypeError, "token ids"),
])
def test_bad_encode_inputs_are_refused_before_any_run(bert_dir, args, err, match):
    m = encoder(bert_dir)
    with pytest.raises(err, match=match):
        m.encode(*args)
    assert m.program.calls == 0


def test_output_logits_and_the_float_comparison_of_a_generation(llama_dir):
    from hbmforge.flows.model_runner import decoder_accuracy

    m = decoder(llama_dir)
    out = m.generate(PROMPT, 6, stop_tokens=(), output_logits=True)
    assert len(out.logits) == 6 and out.logits[0].shape == (259,)
    acc = decoder_accuracy(m, PROMPT, out)
    # the stand-in computes the float model itself (in float32): agreement is total
    assert acc["logits_cosine_min"] > 1 - 1e-9 and acc["greedy_agreement"] == 1.0
    assert acc["free_running_common_prefix"] == 6 and acc["reference_tokens"] == out.tokens
    out.logits[3] = -out.logits[3]                         # a wrong step is seen
    assert decoder_accuracy(m, PROMPT, out)["logits_cosine_min"] < 0
