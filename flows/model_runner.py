"""Run a model from a Hugging Face checkpoint on a device: what ``hbmforge run CONFIG --model DIR``
does, and the accuracy measurements of benchmarks/model.py.

Decoders: load, generate (tokens handed to ``on_text`` as they come), report per-token cycles,
the device's host round trips per token and, with ``reference=True``, the error against the float
model of the same checkpoint: teacher-forced (the float model reads the device's tokens), the
cosine of the two logit vectors at every generated position and the fraction of positions where
both pick the same greedy token. Encoders: embeddings of each text, and with ``reference=True``
their cosine with the float model's.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from hbmforge.numerics.reference import cosine

__all__ = ["ModelRunError", "run_decoder", "run_encoder", "decoder_accuracy", "open_model"]


class ModelRunError(RuntimeError):
    """The model could not be run on the device (device error, timeout)."""


def _say(console, message: str) -> None:
    if console is not None:
        console.print(message, highlight=False, soft_wrap=True)


def open_model(config, model_dir, *, quant=None, max_context: int | None = None, console=None,
               backend_options: dict | None = None, timeout: float = 600.0):
    """(device, model): open the sim device of ``config`` and load the checkpoint onto it."""
    from hbmforge.host import DeviceError, Model, open_device
    from hbmforge.host.models import load_recipe
    from hbmforge.host.models.model import inspect_checkpoint

    recipe = load_recipe(quant)                     # a bad recipe or checkpoint is refused before the build
    inspect_checkpoint(model_dir)
    _say(console, "opening the device (building or reusing the Verilator model) ...")
    try:
        dev = open_device(config, backend="sim", **(backend_options or {}))
    except DeviceError as err:
        raise ModelRunError(f"could not open the sim device: {err}") from None
    try:
        model = Model.from_pretrained(model_dir, device=dev, quant=recipe, max_context=max_context, timeout=timeout,
                                      progress=(lambda m: _say(console, f"  {m}")) if console is not None else None)
    except BaseException:
        dev.close()
        raise
    return dev, model


def decoder_accuracy(model, prompt: list[int], gen) -> dict:
    """Teacher-forced comparison of a generation (made with ``output_logits=True``) with the float
    model: per position the logits cosine and whether the float model's greedy token is the
    device's; plus the free-running agreement (the longest common prefix of greedy tokens)."""
    ref = model.reference()
    logits, cache = ref.forward(prompt)
    rows = [logits[-1]]
    for tok in gen.tokens[:-1]:
        logits, cache = ref.forward([tok], cache)
        rows.append(logits[-1])
    ref_logits = np.stack(rows)
    dev_logits = np.stack(gen.logits).astype(np.float64)
    cos = cosine(dev_logits, ref_logits)
    agree = np.argmax(ref_logits, axis=1) == np.asarray(gen.tokens)
    free = ref.generate_greedy(prompt, len(gen.tokens))
    prefix = next((i for i, (a, b) in enumerate(zip(free, gen.tokens)) if a != b), len(gen.tokens))
    return {"logits_cosine_mean": float(cos.mean()), "logits_cosine_min": float(cos.min()),
            "greedy_agreement": float(agree.mean()), "free_running_common_prefix": int(prefix),
            "reference_tokens": free}


def run_decoder(config, model_dir, *, prompt, max_new_tokens: int = 32, quant=None, do_sample: bool = False,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                max_context: int | None = None, verify: bool = False, reference: bool = False,
                on_text: Callable[[str], None] | None = None, on_token=None, console=None,
                backend_options: dict | None = None, timeout: float = 600.0) -> dict:
    """Generate from ``prompt`` (text, or a list of token ids) on the sim device; the report dict."""
    from hbmforge.host import DeviceError

    dev, model = open_model(config, model_dir, quant=quant, max_context=max_context, console=console,
                            backend_options=backend_options, timeout=timeout)
    try:
        if not isinstance(prompt, str) and model.tokenizer is None and prompt is None:
            raise ValueError("prompt is required")
        if isinstance(prompt, str) and model.tokenizer is None:
            raise ValueError(f"{model_dir} has no tokenizer.json: give the prompt as token ids")
        prompt_ids = model.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

        def token(event):
            if on_text is not None and event.text:
                on_text(event.text)
            if on_token is not None:
                on_token(event)

        _say(console, f"prefill of {len(prompt_ids)} prompt tokens, then up to {max_new_tokens} decode steps ...")
        t0 = time.perf_counter()
        try:
            gen = model.generate(prompt_ids, max_new_tokens, do_sample=do_sample, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed, on_token=token, verify=verify,
                                 output_logits=reference)
        except DeviceError as err:
            raise ModelRunError(f"device error: {err}") from None
        wall = time.perf_counter() - t0
        acc = decoder_accuracy(model, prompt_ids, gen) if reference else None
        cfg = dev.layout.config
        steps = len(gen.tokens)
        report = {
            "model": str(model_dir), "architecture": model.spec.architecture, "layers": model.spec.num_layers,
            "hidden": model.spec.hidden_size, "recipe": model.recipe.describe(), "board": cfg.board,
            "clock_mhz": cfg.clock, "prompt_tokens": len(prompt_ids), "new_tokens": steps, "tokens": gen.tokens,
            "text": gen.text, "stop_reason": gen.stop_reason, "prefill_cycles": gen.prefill_cycles,
            "token_cycles": gen.token_cycles, "cycles_per_token": gen.cycles_per_token,
            "tokens_per_second_at_clock": (cfg.clock * 1e6 / gen.cycles_per_token) if gen.cycles_per_token else None,
            "host_round_trips_per_token": (gen.host_round_trips - gen.prefill_runs) / max(steps - 1, 1)
            if steps > 1 else None,
            "golden_checked": gen.golden_checked if verify else None,
            "golden_mismatches": gen.golden_mismatches if verify else None,
            "sim_wall_seconds": wall,
        }
        if acc is not None:
            report.update({k: v for k, v in acc.items() if k != "reference_tokens"})
        return report
    finally:
        model.close()
        dev.close()


def run_encoder(config, model_dir, *, texts, quant=None, normalize: bool | None = None, verify: bool = False,
                reference: bool = False, console=None, backend_options: dict | None = None,
                timeout: float = 600.0) -> dict:
    """Embed ``texts`` on the sim device; the report dict (embeddings included)."""
    from hbmforge.host import DeviceError

    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("encode needs one or more texts")
    dev, model = open_model(config, model_dir, quant=quant, console=console, backend_options=backend_options,
                            timeout=timeout)
    try:
        if model.kind != "encoder":
            raise ValueError(f"{model_dir} holds a {model.spec.architecture} decoder; --encode needs an encoder "
                             "(give --prompt to generate)")
        if model.tokenizer is None:
            raise ValueError(f"{model_dir} has no tokenizer.json: --encode needs one to tokenize the texts")
        _say(console, f"encoding {len(texts)} text(s), one device run each ...")
        t0 = time.perf_counter()
        try:
            emb = model.encode(list(texts), normalize=normalize, verify=verify)
        except DeviceError as err:
            raise ModelRunError(f"device error: {err}") from None
        wall = time.perf_counter() - t0
        cycles = [int(s.cycles) for s in model.last_encode if s is not None]
        cfg = dev.layout.config
        report = {"model": str(model_dir), "architecture": model.spec.architecture, "recipe": model.recipe.describe(),
                  "board": cfg.board, "clock_mhz": cfg.clock, "texts": list(texts),
                  "tokens": [len(model.tokenizer.encode(t)) for t in texts], "pooling": model.spec.pooling,
                  "normalized": model.spec.normalize if normalize is None else normalize,
                  "embeddings": emb.tolist(), "cycles": cycles,
                  "golden_mismatches": model.golden_mismatches if verify else None, "sim_wall_seconds": wall}
        if reference:
            ref = model.reference(list(texts), normalize=normalize)
            report["embedding_cosine"] = [float(c) for c in cosine(emb, ref)]
        return report
    finally:
        model.close()
        dev.close()


# -- the command line -------------------------------------------------------------------------------

_FLAGS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k",
          "top_p": "--top-p", "seed": "--seed", "max_context": "--max-context", "input_ids": "--prompt",
          "kv_bits": "--kv-cache-bits", "timeout": "--timeout"}


def _as_flags(message: str) -> str:
    import re

    names = "|".join(sorted(_FLAGS, key=len, reverse=True))
    return re.sub(rf"(^|(?<=[\s(]))({names})\b", lambda m: _FLAGS[m.group(2)], message)


def run_model_command(cfg, model_dir, *, prompt, max_new_tokens, encode, texts, quant, kv_bits, sample,
                      temperature, top_k, top_p, seed, max_context, verify, reference, normalize, as_json,
                      timeout, console, err_console, fail) -> None:
    """``hbmforge run CONFIG --model DIR ...``: checks the flags, runs, prints (data on stdout, talk
    on stderr); ``fail(message, code)`` exits."""
    import json
    import sys
    from pathlib import Path

    from hbmforge.host.models import CheckpointError, ModelFitError, RecipeError, load_recipe

    if model_dir is None:
        fail("--prompt and --encode need --model DIR (a Hugging Face checkpoint directory)")
    if encode and prompt is not None:
        fail("give --prompt (generate with a decoder) or --encode TEXT... (embed with an encoder), not both")
    if texts and not encode:
        fail(f"unexpected argument(s) {texts!r}: texts to embed need --encode")
    if not encode and prompt is None:
        fail("--model needs --prompt TEXT (decoders) or --encode TEXT... (encoders)")
    if encode and not texts:
        fail("--encode needs one or more TEXT arguments")
    if not Path(model_dir).is_dir():
        fail(f"--model {model_dir}: not a directory")
    try:
        recipe = load_recipe(quant)
        if kv_bits is not None:
            if kv_bits not in (4, 8):
                fail(f"--kv-cache-bits must be 4 or 8, got {kv_bits}")
            recipe = recipe.model_copy(update={"kv_bits": kv_bits})
    except RecipeError as err:
        fail(f"--quant: {str(err).removeprefix('quant: ')}")
    talk = None if as_json else err_console
    try:
        if encode:
            report = run_encoder(cfg, model_dir, texts=texts, quant=recipe, normalize=normalize, verify=verify,
                                 reference=reference, console=talk, timeout=timeout)
        else:
            status = err_console.status("generating ...") if not as_json else None

            def shown(event):
                if status is not None:
                    status.update(f"token {event.index + 1}/{max_new_tokens}: {event.cycles:,} cycles")

            def out(text):
                sys.stdout.write(text)
                sys.stdout.flush()

            if status is not None:
                status.start()
            try:
                report = run_decoder(cfg, model_dir, prompt=prompt, max_new_tokens=max_new_tokens, quant=recipe,
                                     do_sample=sample, temperature=temperature, top_k=top_k, top_p=top_p,
                                     seed=seed, max_context=max_context, verify=verify, reference=reference,
                                     on_text=None if as_json else out, on_token=shown, console=talk,
                                     timeout=timeout)
            finally:
                if status is not None:
                    status.stop()
            if not as_json:
                sys.stdout.write("\n")
    except ModelRunError as err:
        fail(str(err), 1)
    except (CheckpointError, ModelFitError, RecipeError) as err:
        fail(f"--model {model_dir}: {err}")
    except (ValueError, TypeError) as err:
        fail(_as_flags(str(err)))
    if as_json:
        sys.stdout.write(json.dumps(report, default=str) + "\n")
        return
    _print_model_report(report, err_console)


def _print_model_report(r: dict, err_console) -> None:
    from rich.table import Table

    t = Table(title=f"{r['architecture']} ({r['recipe']}) on {r['board']} (sim)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    if "token_cycles" in r:
        cyc = r["token_cycles"]
        rows = [("prompt tokens", f"{r['prompt_tokens']}"), ("new tokens", f"{r['new_tokens']} ({r['stop_reason']})"),
                ("prefill cycles", f"{r['prefill_cycles']:,}"),
                ("cycles per token", f"{r['cycles_per_token']:,.0f}" + (f" (min {min(cyc[1:]):,}, max {max(cyc[1:]):,})"
                                                                          if len(cyc) > 1 else "")),
                ("tokens/s at clock", "n/a" if not r["tokens_per_second_at_clock"]
                 else f"{r['tokens_per_second_at_clock']:,.1f} @ {r['clock_mhz']:g} MHz"),
                ("host round trips per token", "n/a" if r["host_round_trips_per_token"] is None
                 else f"{r['host_round_trips_per_token']:g}")]
        if r.get("golden_mismatches") is not None:
            rows.append(("mismatches vs golden model", f"{r['golden_mismatches']} in {r['golden_checked']} runs"))
        if "logits_cosine_mean" in r:
            rows += [("logits cosine vs float (mean/min)",
                      f"{r['logits_cosine_mean']:.4f} / {r['logits_cosine_min']:.4f}"),
                     ("greedy agreement vs float", f"{r['greedy_agreement']:.3f}")]
        rows.append(("per-token cycles", ", ".join(f"{c:,}" for c in cyc)))
    else:
        rows = [("texts", f"{len(r['texts'])} ({', '.join(map(str, r['tokens']))} tokens)"),
                ("pooling", f"{r['pooling']}{' + L2 norm' if r['normalized'] else ''}"),
                ("cycles per text", ", ".join(f"{c:,}" for c in r["cycles"]))]
        if r.get("golden_mismatches") is not None:
            rows.append(("mismatches vs golden model", f"{r['golden_mismatches']}"))
        if "embedding_cosine" in r:
            rows.append(("embedding cosine vs float", ", ".join(f"{c:.4f}" for c in r["embedding_cosine"])))
        for text, e in zip(r["texts"], r["embeddings"]):
            rows.append((text[:40], "[" + ", ".join(f"{v:.3f}" for v in e[:4]) + ", ...]"))
    for name, value in rows:
        t.add_row(name, value)
    err_console.print(t)
