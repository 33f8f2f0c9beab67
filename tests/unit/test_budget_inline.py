"""The analytic budget counts the inline-scale hardware (the combined-word register and buffer)."""
from __future__ import annotations

from hbmforge.budget import estimate_resources
from hbmforge.config import load_config
from hbmforge.layout import DesignLayout


def test_inline_scales_add_two_combined_words_of_registers_and_a_demux():
    cfg = load_config("examples/u280_llm512.yaml")
    assert cfg.matmul.scale_stream == "inline"
    data_cfg = cfg.model_copy(deep=True)
    data_cfg.engines[0] = data_cfg.engines[0].model_copy(update={"scale_stream": "data"})
    inline, data = (estimate_resources(DesignLayout(c)) for c in (cfg, data_cfg))
    combined = cfg.matmul.weight_ports * cfg.data_width
    assert inline.ff - data.ff == 2 * combined          # the register and the adapter buffer
    assert inline.lut - data.lut == combined
    assert (inline.dsp, inline.bram36) == (data.dsp, data.bram36)
