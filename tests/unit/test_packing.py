"""Host packers against hand-computed bytes (docs §4) and round trips."""
from __future__ import annotations

import time

import numpy as np
import pytest

from hbmforge.config import parse_config, starter_config
from hbmforge.host.packing import (pack_activations, pack_output, pack_requant, pack_scales, pack_weights,
                                   unpack_activations, unpack_output, unpack_requant, unpack_scales,
                                   unpack_weights)
from hbmforge.encodings import OutMode
from hbmforge.layout import DesignLayout


def small_layout(**engine) -> DesignLayout:
    """64-bit words (8 bytes), 2 weight ports, 2 rows, 16 lanes, group 16: k_align 16."""
    eng = {"kind": "matmul", "name": "mm0", "rows": 2, "lanes": 16, "weight_ports": 2,
           "weight_bits": [4, 8], "group_size": 16, "scale_bits": 16, "max_k": 256}
    eng.update(engine)
    return DesignLayout(parse_config({"version": 1, "name": "tiny", "board": "u280", "clock_mhz": 300,
                                      "axi": {"data_width": 64}, "engines": [eng]}))


@pytest.fixture(scope="module")
def lay():
    return small_layout()


def test_int4_weights_put_the_even_element_in_the_low_nibble(lay):
    w = np.array([[1, -2, 3, -4, 5, -6, 7, -8, 0, 1, 2, 3, 4, 5, 6, 7]])
    s0, s1 = pack_weights(w, 4, lay)
    assert bytes(s0) == bytes([0xE1, 0xC3, 0xA5, 0x87, 0x10, 0x32, 0x54, 0x76])
    assert bytes(s1) == bytes(8)          # the second half of the combined word is padding
    assert len(s0) == lay.matmul.weight_port_bytes(1, 16, 4)


def test_combined_words_alternate_between_stripes(lay):
    w = np.arange(32).reshape(2, 16)      # int8 stream = bytes 0..31; combined word = 16 bytes
    s0, s1 = pack_weights(w, 8, lay)
    assert list(s0) == list(range(0, 8)) + list(range(16, 24))
    assert list(s1) == list(range(8, 16)) + list(range(24, 32))


def test_weights_are_padded_along_k_with_zeros(lay):
    w = np.full((1, 10), -1)
    s0, s1 = pack_weights(w, 8, lay)      # K 10 -> 16
    assert list(s0) == [0xFF] * 8
    assert list(s1) == [0xFF, 0xFF] + [0] * 6


def test_activations_are_row_major_with_k_padded(lay):
    x = np.arange(-10, 10, dtype=np.int8).reshape(1, 20)
    raw = pack_activations(x, lay)
    assert raw.nbytes == lay.matmul.act_bytes(1, 32) == 32
    assert list(raw[:20].view(np.int8)) == list(range(-10, 10))
    assert not raw[20:].any()


def test_blocked_output_groups_rows_of_a_block_per_column(lay):
    y = np.array([[0, 1], [10, 11], [20, 21]], dtype=np.int32)      # M=3 rows, R=2
    raw = pack_output(y, OutMode.INT32, lay)
    assert list(raw.view("<i4")) == [0, 10, 1, 11, 20, 0, 21, 0]
    assert np.array_equal(unpack_output(raw, 3, 2, OutMode.INT32, lay), y)
    raw8 = pack_output(y.astype(np.int8), OutMode.INT8, lay)
    assert list(raw8.view(np.int8)) == [0, 10, 1, 11, 20, 0, 21, 0]
    assert np.array_equal(unpack_output(raw8, 3, 2, OutMode.INT8, lay), y.astype(np.int8))


def test_requant_word_is_mult_low_shift_high(lay):
    raw = pack_requant(np.array([-2, 7]), np.array([5, 127]), lay)
    assert bytes(raw[:16]) == bytes([0xFE, 0xFF, 0xFF, 0xFF, 5, 0, 0, 0, 7, 0, 0, 0, 127, 0, 0, 0])
    mult, shift = unpack_requant(raw, 2)
    assert list(mult) == [-2, 7] and list(shift) == [5, 127]


def test_scale_mantissas_are_u16_little_endian(lay):
    raw = pack_scales(np.array([[1, 0x1234]]), lay)
    assert raw.nbytes == lay.matmul.scale_bytes(1, 32) == 8
    assert bytes(raw) == bytes([1, 0, 0x34, 0x12, 0, 0, 0, 0])
    assert unpack_scales(raw, 1, 32, lay).tolist() == [[1, 0x1234]]


@pytest.mark.parametrize("wbits", [4, 8])
@pytest.mark.parametrize("ports", [1, 2, 4])
def test_weight_round_trip(wbits, ports):
    lay = small_layout(weight_ports=ports)
    rng = np.random.default_rng(wbits * 10 + ports)
    lo, hi = -(1 << (wbits - 1)), 1 << (wbits - 1)
    for n, k in [(1, 16), (3, 48), (17, 64), (5, 256)]:
        w = rng.integers(lo, hi, (n, k))
        stripes = pack_weights(w, wbits, lay)
        assert len(stripes) == ports
        assert all(s.nbytes == lay.matmul.weight_port_bytes(n, k, wbits) for s in stripes)
        assert np.array_equal(unpack_weights(stripes, n, k, wbits, lay), w)


def test_activation_and_scale_round_trip(lay):
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (5, 48))
    assert np.array_equal(unpack_activations(pack_activations(x, lay), 5, 48, lay), x)
    s = rng.integers(0, 1 << 16, (7, 3))
    assert np.array_equal(unpack_scales(pack_scales(s, lay), 7, 48, lay), s)


@pytest.mark.parametrize("mode", [OutMode.INT32, OutMode.INT8])
def test_output_round_trip_with_partial_last_block(mode):
    lay = small_layout(rows=4)
    rng = np.random.default_rng(4)
    info = np.iinfo(np.int32 if mode == OutMode.INT32 else np.int8)
    y = rng.integers(info.min, info.max, (9, 5), endpoint=True)
    raw = pack_output(y, mode, lay)
    assert raw.nbytes == lay.matmul.out_bytes(9, 5, mode)
    assert np.array_equal(unpack_output(raw, 9, 5, mode, lay), y)
    assert unpack_output(bytes(raw), 9, 5, mode, lay).dtype == (np.int32 if mode == OutMode.INT32 else np.int8)


def test_out_of_range_values_are_refused(lay):
    with pytest.raises(ValueError, match=r"outside \[-8, 7\]"):
        pack_weights(np.array([[8] * 16]), 4, lay)
    with pytest.raises(ValueError, match=r"outside \[-128, 127\]"):
        pack_activations(np.array([[200] * 16]), lay)
    with pytest.raises(ValueError, match=r"outside \[0, 65535\]"):
        pack_scales(np.array([[-1]]), lay)
    with pytest.raises(ValueError, match="weight_bits"):
        pack_weights(np.zeros((1, 16), int), 2, lay)


def test_float_inputs_are_refused_with_the_dtype(lay):
    with pytest.raises(TypeError, match="float64"):
        pack_weights(np.zeros((1, 16)), 4, lay)
    with pytest.raises(TypeError, match="float32"):
        pack_activations(np.zeros((1, 16), np.float32), lay)


def test_unpack_output_refuses_a_short_buffer(lay):
    with pytest.raises(ValueError, match="needs 32"):
        unpack_output(np.zeros(16, np.uint8), 3, 2, OutMode.INT32, lay)


@pytest.mark.parametrize("wbits", [4, 8])
def test_packing_4096_square_is_vectorized(wbits):
    """A per-element Python loop over 16 M weights takes well over 10 s of CPU; the vectorized
    packer about 0.3 s. CPU time of this process, so a loaded machine does not fail it."""
    lay = DesignLayout(parse_config(starter_config("u280")))
    rng = np.random.default_rng(5)
    w = rng.integers(-(1 << (wbits - 1)), 1 << (wbits - 1), (4096, 4096), dtype=np.int8)
    t0 = time.process_time()
    stripes = pack_weights(w, wbits, lay)
    took = time.process_time() - t0
    assert sum(s.nbytes for s in stripes) == 4096 * 4096 * wbits // 8
    assert took < 10.0, f"packing 4096x4096 int{wbits} took {took:.2f} s of CPU: not vectorized?"
    assert np.array_equal(unpack_weights(stripes, 4096, 4096, wbits, lay)[:8], w[:8])
