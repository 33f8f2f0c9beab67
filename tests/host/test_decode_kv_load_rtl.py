"""A KV cache loaded straight into a sequence's pages (``ModelSequence.load_kv``) decodes on the
Verilator co-simulation exactly as the golden program says, with full and sink + window
attention, under the calibrated memory model too."""
from __future__ import annotations

import numpy as np
import pytest


from test_blocks import LLAMA, build_llama
from test_blocks_rtl import dev  # noqa: F401 - the co-sim device of test_blocks_rtl (one design for both)

pytestmark = pytest.mark.rtl


@pytest.mark.parametrize("opts", [{}, {"window": 8, "sink": 2}])
def test_a_loaded_cache_decodes_on_the_cosim_like_the_golden_program(dev, opts):
    rng = np.random.default_rng(50)
    att = dev.layout.config.engine("attention")
    prog, *_ = build_llama(dev, rng, kv_pages=2 * att.max_context // att.page_tokens, **opts)   # two sequences
    seq = prog.sequence()
    L = prog.max_context - 3
    shape = (prog.num_layers, L, LLAMA.kv_heads, LLAMA.head_dim)
    seq.load_kv(rng.normal(0, 0.5, shape), rng.normal(0, 0.5, shape))
    for model in ("ideal", "calibrated"):
        dev.sim.set_memory_model(model)
        x = rng.normal(0, 1, LLAMA.hidden)
        golden = prog.golden_decode_step(x, seq)
        assert np.array_equal(prog.decode_step(x, seq), golden), model
    dev.sim.set_memory_model("ideal")
    saved = seq.save_kv()
    other = prog.sequence()
    other.load_kv(state=saved)
    x = rng.normal(0, 1, LLAMA.hidden)
    assert np.array_equal(prog.decode_step(x, other), prog.decode_step(x, seq))
    prog.close()
