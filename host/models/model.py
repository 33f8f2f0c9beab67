"""A Hugging Face checkpoint on the device: :meth:`Model.from_pretrained`, generation, encoding.

    model = Model.from_pretrained("ckpt/", device=dev, quant="int8")       # DecoderModel or EncoderModel
    out = model.generate("The quick brown", max_new_tokens=16)             # greedy; out.text, out.tokens
    s = model.session()                                                    # a KV cache kept across calls
    model.generate("Hello", 8, session=s); model.generate(" again", 8, session=s)
    emb = encoder.encode(["a sentence", "another"])                        # [2, hidden], pooled

Dataflow of a decode step: the host looks up the token's embedding (float), the device runs
every block, the final norm and the LM head as ONE descriptor program (:class:`ModelProgram`
of :mod:`hbmforge.host.blocks`: one start, one wait), the host reads the logits and picks the
next token (:mod:`.sampling`). Encoders: the host adds the word, position and token-type
embeddings and applies the embedding LayerNorm (float), the device runs all blocks as one
prefill per sentence, the host pools (mean/CLS/max over the valid tokens) and normalizes.

Every argument of :meth:`DecoderModel.generate` and :meth:`EncoderModel.encode` is checked
(token ids against the vocabulary, lengths against the KV cache) before the first device
run; a call that fails later (a device error) truncates each sequence it touched back to
the length it had, so the device and every session are as before.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from hbmforge.numerics.encoded import EncodedWeights, quantize_weights_encoded
from hbmforge.numerics.reference import (DecoderReference, DecoderSpec, EncoderSpec, decoder_weight_shapes,
                                         encoder_embeddings, encoder_forward, encoder_weight_shapes, pool)

from ..checks import check_bool, check_int, check_timeout
from ..device import Device, check_device
from . import hf
from .checkpoint import Checkpoint, CheckpointError
from .fit import (ModelFitError, Projection, check_fit, context_limit, head_padding, projection_format,
                  projections)
from .heads import HeadPadding
from .recipe import QuantRecipe, engine_bits, load_recipe
from .sampling import Sampling, choose_token, sampling
from .tokenizer import StreamDecoder, TextTokenizer

__all__ = ["Model", "DecoderModel", "EncoderModel", "Session", "Generation", "TokenEvent", "SessionError",
           "block_config", "quantize_blocks", "inspect_checkpoint"]

DEFAULT_PREFILL_CHUNK = 64


class SessionError(ValueError):
    """A session that is closed, belongs to another model, or whose cache is full."""


@dataclass
class TokenEvent:
    """One generated token as it comes (the ``on_token`` callback gets these)."""

    index: int                  # 0 for the first new token
    token: int
    text: str                   # the text it completes ("" while a multi-byte character is open)
    cycles: int                 # device cycles of the run that produced its logits
    elapsed_s: float


@dataclass
class Generation:
    """What :meth:`DecoderModel.generate` produced and what it cost."""

    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    text: str | None = None
    stop_reason: str = "max_new_tokens"          # "stop_token", "max_new_tokens"
    prefill_cycles: int = 0
    prefill_runs: int = 0
    token_cycles: list[int] = field(default_factory=list)     # per token: the run that produced its logits
    elapsed_s: float = 0.0
    host_round_trips: int = 0
    golden_checked: int = 0                      # runs compared with the golden program (verify=True)
    golden_mismatches: int = 0
    logits: list = field(default_factory=list)   # output_logits=True: float32 [vocab] each token came from

    @property
    def cycles_per_token(self) -> float:
        """Mean device cycles of the decode steps (the first token comes from the prefill)."""
        decode = self.token_cycles[1:]
        return float(np.mean(decode)) if decode else 0.0


class Session:
    """One sequence's KV cache on the device and its token history, reused across
    :meth:`DecoderModel.generate` calls. ``tokens``: every token of the conversation so far;
    the cache holds all but the last generated one (fed at the start of the next call)."""

    def __init__(self, model: "DecoderModel", seq):
        self._model = model
        self._seq = seq
        self.tokens: list[int] = []
        self.cached = 0
        self._closed = False

    @property
    def pending(self) -> list[int]:
        return self.tokens[self.cached:]

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def room(self) -> int:
        """Tokens the cache can still take."""
        return self._model.max_context - self.cached

    def close(self) -> None:
        """Give the sequence's KV pages back."""
        if not self._closed:
            self._closed = True
            free = getattr(self._seq, "free", None)
            if free is not None:
                free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.cached} cached, {len(self.pending)} pending"
        return f"Session({len(self.tokens)} tokens, {state})"


# -- building the device program ---------------------------------------------------------------

def block_config(spec, head_dim: int | None = None):
    """The :class:`hbmforge.host.blocks.BlockConfig` of an architecture spec; with ``head_dim`` (the
    attention engine's), its heads zero-padded to it (:mod:`.heads`)."""
    from ..blocks import BlockConfig

    heads = HeadPadding(spec.head_dim, head_dim or spec.head_dim).block_options(spec)
    if isinstance(spec, DecoderSpec):
        opts = {"rope_inv_freq": spec.rope_inv_freq, **heads}
        return BlockConfig(arch="llama", hidden=spec.hidden_size, heads=spec.q_heads, kv_heads=spec.kv_heads,
                           intermediate=spec.intermediate_size, norm_eps=spec.rms_norm_eps,
                           rope_theta=spec.rope_theta, qkv_bias=spec.qkv_bias, **opts)
    return BlockConfig(arch="bert", hidden=spec.hidden_size, heads=spec.heads, kv_heads=spec.heads,
                       intermediate=spec.intermediate_size, norm_eps=spec.layer_norm_eps, qkv_bias=True, **heads)


def _quantize(device: Device, w: np.ndarray, fmt: str, recipe: QuantRecipe) -> EncodedWeights:
    lay = device.layout
    return quantize_weights_encoded(w, engine_bits(fmt), lay.mm.group_size, lay.mm.scale_bits,
                                    k_padded=lay.matmul.pad_k(w.shape[1]), ternary_scale=recipe.ternary_scale)


def quantize_blocks(device: Device, spec, recipe: QuantRecipe, tensor: Callable[[str], np.ndarray],
                    progress: Callable[[str], None] | None = None):
    """(BlockWeights per layer, LM head EncodedWeights or None) for ``spec`` with ``recipe``;
    ``tensor(name)`` reads a checkpoint tensor (float32). Heads narrower than the attention
    engine's are zero-padded to it (:mod:`.heads`)."""
    from ..blocks import BlockWeights

    pad = head_padding(spec, device.layout.attention.head_dim)
    tensor = pad.tensor_reader(projections(spec), tensor)
    by_layer: dict[int | None, list[Projection]] = {}
    for proj in projections(spec, pad.device_dim):
        by_layer.setdefault(proj.layer, []).append(proj)
    blocks = []
    for i in range(spec.num_layers):
        if progress is not None:
            progress(f"quantizing layer {i + 1}/{spec.num_layers}")
        enc, biases = {}, {}
        for proj in by_layer[i]:
            enc[proj.name] = _quantize(device, tensor(proj.module + ".weight"), projection_format(recipe, proj), recipe)
            if proj.bias:
                biases[proj.name] = tensor(proj.module + ".bias").astype(np.float64)
        if isinstance(spec, DecoderSpec):
            p = f"model.layers.{i}."
            attn_norm = (tensor(p + "input_layernorm.weight"), None)
            mlp_norm = (tensor(p + "post_attention_layernorm.weight"), None)
        else:
            p = f"encoder.layer.{i}."
            attn_norm = (tensor(p + "attention.output.LayerNorm.weight"), tensor(p + "attention.output.LayerNorm.bias"))
            mlp_norm = (tensor(p + "output.LayerNorm.weight"), tensor(p + "output.LayerNorm.bias"))
        blocks.append(BlockWeights(projections=enc, attn_norm=attn_norm, mlp_norm=mlp_norm, biases=biases))
    head = None
    if None in by_layer:
        proj = by_layer[None][0]
        if progress is not None:
            progress("quantizing the LM head")
        head = _quantize(device, tensor(proj.module + ".weight"), recipe.head_format(), recipe)
    return blocks, head


def inspect_checkpoint(path) -> tuple[Checkpoint, DecoderSpec | EncoderSpec, str]:
    """(checkpoint, architecture spec, tensor prefix) of a checkpoint directory, with every check
    that needs no device (config fields, tensor names and shapes); CheckpointError otherwise."""
    ckpt = Checkpoint(path)
    arch = hf.parse_architecture(ckpt.config)
    if arch in hf.DECODER_ARCHITECTURES:
        spec, prefix = hf.decoder_spec(ckpt.config), ""
    else:
        pooling, normalize = hf.sentence_pooling(ckpt)
        spec, prefix = hf.encoder_spec(ckpt.config, pooling, normalize), hf.encoder_prefix(ckpt)
    hf.check_tensors(ckpt, spec, prefix)
    return ckpt, spec, prefix


# -- the model ---------------------------------------------------------------------------------

class Model:
    """Base of :class:`DecoderModel` and :class:`EncoderModel`; make one with :meth:`from_pretrained`.

    The constructor takes a built device program (anything with the interface of
    :class:`hbmforge.host.blocks.ModelProgram`), so that the model layer can be used over any
    program that implements it.
    """

    kind = "model"

    def __init__(self, spec, program, *, recipe: QuantRecipe | None = None, tokenizer: TextTokenizer | None = None,
                 max_context: int, checkpoint: Checkpoint | None = None, timeout: float = 600.0,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        self.spec = spec
        self.program = program
        self.recipe = recipe or QuantRecipe()
        self.tokenizer = tokenizer
        self.max_context = check_int("max_context", max_context, 1)
        self.checkpoint = checkpoint
        self.timeout = check_timeout(timeout)
        self.prefill_chunk = check_int("prefill_chunk", prefill_chunk, 1)
        self._closed = False

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, *, device: Device, quant=None, max_context: int | None = None,
                        max_sequences: int = 1, tokenizer: bool = True, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                        timeout: float = 600.0, progress: Callable[[str], None] | None = None) -> "Model":
        """Load the checkpoint directory ``path`` onto ``device``.

        ``quant``: a recipe (:func:`hbmforge.host.models.recipe.load_recipe`: None = int8 weights
        and KV8, a format name, a dict or a YAML file). ``max_context``: tokens one sequence may
        hold (default: the attention engine's, at most the model's max_position_embeddings);
        ``max_sequences``: sequences (sessions) whose KV caches can be full at the same time.
        Everything is checked (config fields, tensor names and shapes, the recipe, what the
        design can hold) before the first weight is quantized or uploaded.
        """
        device = check_device(device)
        tokenizer = check_bool("tokenizer", tokenizer)
        prefill_chunk = check_int("prefill_chunk", prefill_chunk, 1)
        max_sequences = check_int("max_sequences", max_sequences, 1, 1 << 16)
        timeout = check_timeout(timeout)
        if max_context is not None:
            max_context = check_int("max_context", max_context, 1)
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be a callable taking a message, got {type(progress).__name__}")
        say = progress or (lambda msg: None)
        recipe = load_recipe(quant)
        ckpt, spec, prefix = inspect_checkpoint(path)
        model_cls = DecoderModel if isinstance(spec, DecoderSpec) else EncoderModel
        arch = spec.architecture
        recipe.check_rules([p.aliases for p in projections(spec)])
        ctx = context_limit(device, spec, max_context)
        check_fit(device, spec, recipe, ctx, max_sequences)
        tok = None
        if tokenizer and ckpt.tokenizer_path is not None:
            tok = TextTokenizer(ckpt.tokenizer_path, max_length=hf.encoder_max_length(ckpt, spec)
                                if isinstance(spec, EncoderSpec) else None)
            if tok.vocab_size > spec.vocab_size:
                raise CheckpointError(f"tokenizer.json has {tok.vocab_size} tokens, more than the model's vocab_size "
                                      f"{spec.vocab_size}")
        pad = head_padding(spec, device.layout.attention.head_dim)
        widened = f", heads of {pad.model_dim} zero-padded to {pad.device_dim}" if pad.padded else ""
        say(f"{arch}: {spec.num_layers} layers, hidden {spec.hidden_size}, recipe {recipe.describe()}, "
            f"context {ctx}{widened}")
        return model_cls._build(device, ckpt, spec, prefix, recipe, tok, ctx, max_sequences, prefill_chunk,
                                timeout, say)

    @classmethod
    def _build(cls, device, ckpt, spec, prefix, recipe, tok, ctx, sequences, prefill_chunk, timeout, say):
        from ..blocks import ModelProgram

        blocks, head = quantize_blocks(device, spec, recipe, lambda n: ckpt.tensor(prefix + n), say)
        final_norm = (ckpt.tensor("model.norm.weight"), None) if isinstance(spec, DecoderSpec) else None
        say("uploading weights and compiling the step program")
        pages = sequences * -(-ctx // device.layout.attention.page_tokens)
        program = ModelProgram(device, block_config(spec, device.layout.attention.head_dim), blocks, final_norm=final_norm, lm_head=head,
                               kv_bits=recipe.kv_bits, max_context=ctx, kv_pages=pages, timeout=timeout)
        return cls.from_program(spec, program, ckpt=ckpt, prefix=prefix, recipe=recipe, tokenizer=tok,
                                max_context=ctx, prefill_chunk=prefill_chunk, timeout=timeout)

    @classmethod
    def from_program(cls, spec, program, *, ckpt: Checkpoint, prefix: str = "", **options) -> "Model":
        raise NotImplementedError

    # -- common ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this model was closed; its weights are no longer on the device")

    def close(self) -> None:
        """Free the device program (weights, caches, workspaces)."""
        if not self._closed:
            self._closed = True
            close = getattr(self.program, "close", None)
            if close is not None:
                close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _token_ids(self, name: str, ids, *, ndim=(1,)) -> np.ndarray:
        """Integer token ids checked against the vocabulary."""
        try:
            a = np.asarray(ids)
        except (ValueError, TypeError):
            raise TypeError(f"{name} must be token ids (a sequence of ints), got {type(ids).__name__}") from None
        if a.dtype == object or not (np.issubdtype(a.dtype, np.integer) or a.size == 0) \
                or np.issubdtype(a.dtype, np.bool_):
            raise TypeError(f"{name} must be integer token ids, got {a.dtype} values")
        if a.ndim not in ndim:
            raise ValueError(f"{name} must be {' or '.join(f'{d}-D' for d in ndim)} token ids, got shape {a.shape}")
        a = a.astype(np.int64)
        bad = (a < 0) | (a >= self.spec.vocab_size)
        if bad.any():
            raise ValueError(f"{name}: token id {int(a[bad][0])} is outside the vocabulary [0, {self.spec.vocab_size})")
        return a


class DecoderModel(Model):
    """A LLaMA-family decoder on the device (see the module docstring)."""

    kind = "decoder"

    def __init__(self, spec: DecoderSpec, program, *, embeddings: np.ndarray, stop_tokens: Sequence[int] = (),
                 **options):
        super().__init__(spec, program, **options)
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.shape != (spec.vocab_size, spec.hidden_size):
            raise ValueError(f"embeddings must be [vocab_size, hidden] = {(spec.vocab_size, spec.hidden_size)}, "
                             f"got {emb.shape}")
        self.embeddings = emb
        self.stop_tokens = tuple(int(t) for t in stop_tokens)
        self.last_generation: Generation | None = None

    @classmethod
    def from_program(cls, spec, program, *, ckpt: Checkpoint, prefix: str = "", **options) -> "DecoderModel":
        return cls(spec, program, embeddings=ckpt.tensor("model.embed_tokens.weight"),
                   stop_tokens=hf.stop_token_ids(ckpt), checkpoint=ckpt, **options)

    # -- sessions ---------------------------------------------------------------------------
    def session(self) -> Session:
        """A new sequence with its own KV cache pages."""
        self._check_open()
        return Session(self, self.program.sequence())

    def _check_session(self, session) -> Session:
        if not isinstance(session, Session):
            raise TypeError(f"session must be a Session from model.session(), got {type(session).__name__}")
        if session._model is not self:
            raise SessionError("session belongs to another model")
        if session.closed:
            raise SessionError("session was closed; make a new one with model.session()")
        return session

    # -- inputs -----------------------------------------------------------------------------
    def _prompt(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs the checkpoint's tokenizer.json; give token ids instead")
            return self.tokenizer.encode(prompt)
        if prompt is None:
            return []
        ids = self._token_ids("input_ids", prompt, ndim=(1, 2))
        if ids.ndim == 2:
            if ids.shape[0] != 1:
                raise ValueError(f"input_ids must be one sequence ([T] or [1, T]), got shape {ids.shape}; "
                                 "run one generate call (or session) per sequence")
            ids = ids[0]
        return [int(t) for t in ids]

    def _stops(self, stop_tokens) -> frozenset[int]:
        if stop_tokens is None:
            return frozenset(self.stop_tokens)
        if isinstance(stop_tokens, (int, np.integer)) and not isinstance(stop_tokens, bool):
            stop_tokens = [stop_tokens]
        return frozenset(int(t) for t in self._token_ids("stop_tokens", list(stop_tokens)))

    def embed(self, ids) -> np.ndarray:
        """float32 [T, hidden] input embeddings of the token ids."""
        return self.embeddings[np.asarray(ids, dtype=np.int64)]

    def _plan(self, session: Session | None, prompt: list[int], max_new_tokens: int) -> list[int]:
        """The tokens to feed; refuses a call whose tokens cannot fit the cache."""
        cached = 0 if session is None else session.cached
        feed = ([] if session is None else session.pending) + prompt
        ctx = self.max_context
        if not feed:
            raise ValueError("input_ids is empty (and the session has no pending token): give at least one token")
        if cached >= ctx:
            raise SessionError(f"the session's KV cache is full ({ctx} tokens): no further decode step fits; "
                               "start a new session")
        if cached + len(feed) > ctx:
            raise ValueError(f"the prompt of {len(feed)} token(s) does not fit the KV cache: {ctx - cached} of its "
                             f"{ctx} positions are free (max_context {ctx})")
        steps = max(max_new_tokens - 1, 0)
        if cached + len(feed) + steps > ctx:
            room = ctx - cached - len(feed) + 1
            raise ValueError(f"max_new_tokens {max_new_tokens} does not fit the KV cache: after the prompt "
                             f"({cached + len(feed)} of {ctx} positions) at most {room} new token(s) fit")
        self._check_pages(session, cached + len(feed) + steps)
        return feed

    def _check_pages(self, session: Session | None, tokens: int) -> None:
        """The shared KV pools can give the sequence the pages ``tokens`` tokens need (other
        sessions may hold the rest)."""
        free = getattr(self.program, "free_pages", None)
        device = getattr(self.program, "device", None)
        if free is None or device is None:
            return
        per_page = device.layout.attention.page_tokens
        held = 0 if session is None else len(getattr(session._seq, "pages", ()))
        need = -(-tokens // per_page) - held
        if need > free:
            raise SessionError(f"the KV pools have {free} free page(s) of {per_page} tokens, this call needs {need} "
                               f"more ({tokens} tokens in the sequence); other sessions hold the rest: close them, "
                               "or load the model with a larger max_sequences")

    # -- generation -------------------------------------------------------------------------
    def generate(self, input_ids=None, max_new_tokens: int = 32, *, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 stop_tokens=None, session: Session | None = None, on_token: Callable[[TokenEvent], None] | None = None,
                 verify: bool = False, output_logits: bool = False) -> Generation:
        """Generate up to ``max_new_tokens`` tokens after ``input_ids`` (token ids [T] or [1, T], or
        a str when the checkpoint has a tokenizer).

        Greedy by default; ``do_sample=True`` samples with ``temperature``/``top_k``/``top_p`` from a
        generator seeded by ``seed``. Generation stops after a token of ``stop_tokens`` (default:
        the checkpoint's eos ids; ``()`` for none), which is kept in the output. ``session``: a
        :meth:`session` whose cache is reused (its history comes first); without one the call
        uses a fresh sequence and frees it. ``on_token`` is called with a :class:`TokenEvent`
        per token as it comes. ``verify=True`` also runs every step's program on the golden
        model and counts bit mismatches (``Generation.golden_mismatches``); ``output_logits=True``
        keeps the logits each token was chosen from (``Generation.logits``).
        """
        self._check_open()
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
        samp = sampling(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        stops = self._stops(stop_tokens)
        verify = check_bool("verify", verify)
        keep_logits = check_bool("output_logits", output_logits)
        if on_token is not None and not callable(on_token):
            raise TypeError(f"on_token must be a callable taking a TokenEvent, got {type(on_token).__name__}")
        if session is not None:
            session = self._check_session(session)
        prompt = self._prompt(input_ids)
        feed = self._plan(session, prompt, max_new_tokens)
        own = session is None
        sess = self.session() if own else session
        saved = (list(sess.tokens), sess.cached)
        out = Generation(prompt_tokens=list(prompt))
        t0 = time.monotonic()
        try:
            self._run(sess, prompt, feed, max_new_tokens, samp, stops, on_token, verify, keep_logits, out)
        except BaseException:
            if not own:
                self._rollback(sess, *saved)
            raise
        finally:
            if own:
                sess.close()
        out.elapsed_s = time.monotonic() - t0
        if self.tokenizer is not None:
            out.text = self.tokenizer.decode(out.tokens)
        self.last_generation = out
        return out

    def _run(self, sess: Session, prompt, feed, max_new_tokens, samp: Sampling, stops, on_token, verify,
             keep_logits: bool, out: Generation) -> None:
        rng = np.random.default_rng(samp.seed) if samp.do_sample else None
        sess.tokens.extend(prompt)
        logits = None
        for i in range(0, len(feed), self.prefill_chunk):
            chunk = feed[i:i + self.prefill_chunk]
            logits = self._step("prefill", self.embed(chunk), sess, verify, out)
            sess.cached += len(chunk)
            out.prefill_cycles += self._cycles()
            out.prefill_runs += 1
        logits = np.asarray(logits)
        last = logits[-1] if logits.ndim == 2 else logits
        cycles = out.prefill_cycles
        stream = StreamDecoder(self.tokenizer) if self.tokenizer is not None else None
        t_last = time.monotonic()
        for n in range(max_new_tokens):
            if n:
                last = self._step("decode", self.embed([out.tokens[-1]])[0], sess, verify, out)
                sess.cached += 1
                cycles = self._cycles()
            tok = choose_token(last, samp, rng)
            if keep_logits:
                out.logits.append(np.array(last, dtype=np.float32))
            out.tokens.append(tok)
            sess.tokens.append(tok)
            out.token_cycles.append(cycles)
            if on_token is not None:
                now = time.monotonic()
                on_token(TokenEvent(n, tok, stream.push(tok) if stream else "", cycles, now - t_last))
                t_last = now
            if tok in stops:
                out.stop_reason = "stop_token"
                break

    def _step(self, what: str, x: np.ndarray, sess: Session, verify: bool, out: Generation) -> np.ndarray:
        prog = self.program
        golden = None
        if verify:
            golden = prog.golden_prefill(x, sess._seq) if what == "prefill" else prog.golden_decode_step(x, sess._seq)
        y = prog.prefill(x, sess._seq) if what == "prefill" else prog.decode_step(x, sess._seq)
        out.host_round_trips += self._round_trips()
        if golden is not None:
            out.golden_checked += 1
            out.golden_mismatches += int(np.count_nonzero(np.asarray(golden) != np.asarray(y)))
        return np.asarray(y)

    def _cycles(self) -> int:
        st = self.program.last_step
        return int(st.cycles) if st is not None else 0

    def _round_trips(self) -> int:
        st = self.program.last_step
        return int(st.host_round_trips) if st is not None else 1

    def _rollback(self, sess: Session, tokens: list[int], cached: int) -> None:
        """Put a session back as it was before a failed call: truncate its sequence on the device
        to ``cached`` tokens (or, if the program cannot, close the session so that it cannot be
        used with a cache that no longer matches its history)."""
        sess.tokens = tokens
        if sess.cached != cached:
            truncate = getattr(sess._seq, "truncate", None)
            if truncate is None:
                sess.close()
                return
            truncate(cached)
        sess.cached = cached

    # -- float reference ----------------------------------------------------------------------
    def reference(self) -> DecoderReference:
        """The float64 model of the same checkpoint (:mod:`hbmforge.numerics.reference`)."""
        if self.checkpoint is None:
            raise ValueError("this model was not loaded from a checkpoint")
        return DecoderReference(self.spec, {n: self.checkpoint.tensor(n) for n in decoder_weight_shapes(self.spec)})


class EncoderModel(Model):
    """A BERT encoder on the device (see the module docstring)."""

    kind = "encoder"

    EMBEDDINGS = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                  "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias")

    def __init__(self, spec: EncoderSpec, program, *, embeddings: dict, **options):
        """``embeddings``: the checkpoint's embedding tensors by name (:attr:`EMBEDDINGS`, no prefix)."""
        super().__init__(spec, program, **options)
        shapes = encoder_weight_shapes(spec)
        self.embeddings = {}
        for name in self.EMBEDDINGS:
            a = np.asarray(embeddings[name], dtype=np.float64)
            if a.shape != shapes[name]:
                raise ValueError(f"embeddings[{name!r}] must have shape {shapes[name]}, got {a.shape}")
            self.embeddings[name] = a
        self.last_encode: list = []
        self.golden_mismatches = 0

    @classmethod
    def from_program(cls, spec, program, *, ckpt: Checkpoint, prefix: str = "", **options) -> "EncoderModel":
        emb = {n: ckpt.tensor(prefix + n) for n in cls.EMBEDDINGS}
        return cls(spec, program, embeddings=emb, checkpoint=ckpt, **options)

    @property
    def prefix(self) -> str:
        return "" if self.checkpoint is None else hf.encoder_prefix(self.checkpoint)

    def embed(self, ids, token_types=None) -> np.ndarray:
        """float32 [T, hidden]: LayerNorm(word + position + token type embeddings), on the host."""
        return encoder_embeddings(self.spec, self.embeddings, [ids], None if token_types is None
                                  else [token_types])[0].astype(np.float32)

    def _inputs(self, inputs, attention_mask, token_type_ids):
        """(ids [B, T], valid lengths [B], token types [B, T]) checked."""
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
            if self.tokenizer is None:
                raise ValueError("text inputs need the checkpoint's tokenizer.json; give token ids instead")
            if attention_mask is not None:
                raise ValueError("attention_mask applies to token id inputs; texts are padded by the tokenizer")
            ids, mask = self.tokenizer.batch(list(inputs))
        else:
            ids = self._token_ids("input_ids", inputs, ndim=(1, 2))
            if ids.ndim == 1:
                ids = ids[None]
            if attention_mask is not None:
                mask = np.asarray(attention_mask)
                if mask.ndim == 1:
                    mask = mask[None]
                if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
                    raise ValueError(f"attention_mask must be 0/1 of the shape of input_ids {ids.shape}, got "
                                     f"shape {mask.shape}")
            else:
                mask = np.ones_like(ids)
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must hold at least one token per sequence, got shape {ids.shape}")
        lengths = mask.sum(axis=1).astype(np.int64)
        for b, n in enumerate(lengths):
            if n == 0:
                raise ValueError(f"sequence {b} has no valid token (its attention_mask is all 0)")
            if not mask[b, :n].all():
                raise ValueError(f"attention_mask of sequence {b} must be 1s then 0s (right padding)")
        limit = min(self.spec.max_positions, self.max_context)
        if lengths.max() > limit:
            b = int(np.argmax(lengths))
            raise ValueError(f"sequence {b} has {int(lengths[b])} tokens; the encoder takes at most {limit} "
                             f"(max_position_embeddings {self.spec.max_positions}, context {self.max_context})")
        if token_type_ids is None:
            types = np.zeros_like(ids)
        else:
            types = np.asarray(token_type_ids)
            if types.ndim == 1:
                types = types[None]
            if types.shape != ids.shape or not np.issubdtype(types.dtype, np.integer) \
                    or types.min() < 0 or types.max() >= self.spec.type_vocab_size:
                raise ValueError(f"token_type_ids must be integers in [0, {self.spec.type_vocab_size}) of the shape "
                                 f"of input_ids {ids.shape}")
        return ids, lengths, types

    def encode(self, inputs, attention_mask=None, *, token_type_ids=None, normalize: bool | None = None,
               verify: bool = False) -> np.ndarray:
        """Sentence embeddings float32 [B, hidden] of ``inputs``: token ids [B, T] or [T] (with an
        optional 0/1 ``attention_mask``, right padding), or a str / list of str when the
        checkpoint has a tokenizer. Pooling is the checkpoint's (sentence-transformers'
        Pooling module; mean without one); ``normalize`` (default: the checkpoint's Normalize
        module) L2-normalizes. One device run per sentence."""
        self._check_open()
        normalize = self.spec.normalize if normalize is None else check_bool("normalize", normalize)
        verify = check_bool("verify", verify)
        ids, lengths, types = self._inputs(inputs, attention_mask, token_type_ids)
        out = np.zeros((ids.shape[0], self.spec.hidden_size))
        stats, mismatches = [], 0
        for b in range(ids.shape[0]):
            n = int(lengths[b])
            x = self.embed(ids[b, :n], types[b, :n])
            seq = self.program.sequence()
            try:
                golden = self.program.golden_prefill(x, seq, valid_len=n) if verify else None
                h = np.asarray(self.program.prefill(x, seq, valid_len=n), dtype=np.float64)[:n]
            finally:
                free = getattr(seq, "free", None)
                if free is not None:
                    free()
            if golden is not None:
                mismatches += int(np.count_nonzero(np.asarray(golden)[:n] != h))
            stats.append(self.program.last_step)
            out[b] = pool(h[None], mode=self.spec.pooling)[0]
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        self.last_encode = stats
        self.golden_mismatches = mismatches
        return out.astype(np.float32)

    def reference(self, input_ids, attention_mask=None, token_type_ids=None, *, normalize: bool | None = None):
        """float64 pooled embeddings of the same checkpoint (:mod:`hbmforge.numerics.reference`)."""
        if self.checkpoint is None:
            raise ValueError("this model was not loaded from a checkpoint")
        w = {n: self.checkpoint.tensor(self.prefix + n) for n in encoder_weight_shapes(self.spec)}
        ids, lengths, types = self._inputs(input_ids, attention_mask, token_type_ids)
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        h = encoder_forward(self.spec, w, ids, mask, types)
        norm = self.spec.normalize if normalize is None else normalize
        return pool(h, mask, mode=self.spec.pooling, normalize=norm)


# `Model.from_pretrained` dispatches on the architecture; these are what it returns.
__all__ += ["ModelFitError"]
