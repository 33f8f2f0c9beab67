"""Heads narrower than the attention engine's, zero-padded to it (hbmforge.host.models.heads):
the widened float model is the same function as the checkpoint's, so the padding is exact."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.host.models import hf
from hbmforge.host.models.checkpoint import Checkpoint
from hbmforge.host.models.fit import projections
from hbmforge.host.models.heads import HeadPadding
from hbmforge.host.models.synthetic import write_llama
from hbmforge.numerics.reference import DecoderReference, decoder_weight_shapes


@pytest.mark.parametrize("model_dim, device_dim, bias", [(12, 16, False), (6, 16, True), (96, 128, False),
                                                         (16, 16, False)])
def test_widened_heads_compute_the_checkpoints_float_model(tmp_path, model_dim, device_dim, bias):
    ck = Checkpoint(write_llama(tmp_path / "m", hidden_size=64, q_heads=4, kv_heads=2, head_dim=model_dim,
                                qkv_bias=bias, seed=model_dim))
    spec = hf.decoder_spec(ck.config)
    pad = HeadPadding(model_dim, device_dim)
    read = pad.tensor_reader(projections(spec), ck.tensor)
    wide = pad.decoder_spec(spec)
    assert wide.head_dim == device_dim
    want = DecoderReference(spec, {n: ck.tensor(n) for n in decoder_weight_shapes(spec)})
    got = DecoderReference(wide, {n: read(n) for n in decoder_weight_shapes(wide)})
    ids = [0, 7, 70, 80, 90, 100, 3, 5, 9, 11]
    a, cache_a = want.forward(ids)
    b, cache_b = got.forward(ids)
    np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)
    # the widened KV cache holds the model's K/V at the slots, zeros elsewhere
    slots = pad.slots()
    np.testing.assert_allclose(cache_b.k[1][..., slots], cache_a.k[1], rtol=1e-10, atol=1e-12)
    rest = np.setdiff1d(np.arange(device_dim), slots)
    assert not np.any(cache_b.k[1][..., rest]) and not np.any(cache_b.v[1][..., rest])


def test_rotate_half_pairs_stay_pairs_with_the_models_frequencies():
    pad = HeadPadding(96, 128)
    s = pad.slots()
    assert list(s[:48]) == list(range(48)) and list(s[48:]) == list(range(64, 112))
    assert np.all(s[48:] - s[:48] == 64)                     # (i, i + 48) -> (i, i + 64): the engine's pairs
    inv = np.linspace(1.0, 0.01, 48)
    wide = np.asarray(pad.inv_freq(inv))
    assert wide.shape == (64,) and np.array_equal(wide[:48], inv) and not np.any(wide[48:])
    assert pad.softmax_scale == pytest.approx(96 ** -0.5)
    rows = pad.rows(3)
    assert rows.shape == (288,) and rows[96] == 128 and rows[-1] == 3 * 128 - 17


@pytest.mark.parametrize("model_dim, device_dim", [(17, 16), (0, 16)])
def test_a_head_that_does_not_fit_is_refused(model_dim, device_dim):
    with pytest.raises(ValueError, match=f"a head of {model_dim} does not fit the engine's head_dim {device_dim}"):
        HeadPadding(model_dim, device_dim)
