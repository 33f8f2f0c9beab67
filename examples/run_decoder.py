"""Generate text with a LLaMA-family checkpoint on the simulated accelerator.

    python examples/run_decoder.py [CONFIG] [CHECKPOINT_DIR] [PROMPT]

Without CHECKPOINT_DIR a small random LLaMA checkpoint sized to the design is written to a
temporary directory (random weights: the text is gibberish, the mechanics are real). Every
decode step runs all blocks, the final norm and the LM head as one device program; each step is
also run on the golden model (bit-exact check) and the tokens are compared with the float model
of the same checkpoint. A second turn continues the same session (its KV cache is reused).
"""
import sys
import tempfile

from hbmforge.host import Model, open_device
from hbmforge.host.models.synthetic import design_sized, write_llama

config = sys.argv[1] if len(sys.argv) > 1 else "examples/u280_model.yaml"
checkpoint = sys.argv[2] if len(sys.argv) > 2 else None
prompt = sys.argv[3] if len(sys.argv) > 3 else "The quick brown fox"

with open_device(config, backend="sim") as dev, tempfile.TemporaryDirectory() as tmp:
    if checkpoint is None:
        checkpoint = write_llama(tmp, num_layers=2, **design_sized(dev.layout, heads=8))
        print(f"random LLaMA checkpoint: {checkpoint}")
    model = Model.from_pretrained(checkpoint, device=dev, quant={"weights": "int8", "kv_bits": 8},
                                  max_context=128, progress=print)
    with model, model.session() as chat:
        for turn in (prompt, " and then"):
            print(f"\n>>> {turn!r}\n", end="")
            out = model.generate(turn, max_new_tokens=12, session=chat, verify=True, stop_tokens=(),
                                 on_token=lambda e: print(e.text, end="", flush=True))
            print(f"\n{len(out.tokens)} tokens, prefill {out.prefill_cycles:,} cycles, "
                  f"{out.cycles_per_token:,.0f} cycles/token, {out.host_round_trips} host round trips, "
                  f"golden mismatches {out.golden_mismatches} in {out.golden_checked} runs")
        history = chat.tokens
    # the float model of the same checkpoint, fed the same history, picks the same greedy tokens?
    ref = model.reference()
    n_prompt = len(model.tokenizer.encode(prompt))
    greedy = ref.generate_greedy(history[:n_prompt], 12)
    same = sum(a == b for a, b in zip(greedy, history[n_prompt:n_prompt + 12]))
    print(f"first turn: {same}/12 tokens equal to the float model's greedy tokens")
