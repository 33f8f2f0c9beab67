"""int2 and ternary weights: quantizers, the host packer, the golden decoder and the test packer agree."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.generators.matmul import testing as tpack
from hbmforge.host.packing import pack_weights, unpack_weights
from hbmforge.encodings import WeightFormat
from hbmforge.layout import DesignLayout
from hbmforge.numerics import (quantize_weights_groupwise, storage_range, weight_format, weight_range)
from hbmforge.numerics.program import _read_weights

from designs import tiny_config_dict


def _lay(packing="2bit", ports=2, data_width=64, bits=(2, "ternary", 4, 8)):
    cfg = tiny_config_dict(weight_bits=list(bits), weight_ports=ports, ternary_packing=packing)
    cfg["axi"]["data_width"] = data_width
    return DesignLayout(parse_config(cfg))


def _golden_decode(stripes, n, k, code, lay):
    """The descriptor-level golden decoder (hbmforge.numerics.program) on the packed stripes."""
    mem, d = {}, {"n": n, "k": k, "wbits": code}
    from hbmforge.numerics.program import SparseMemory
    sm = SparseMemory(mem)
    for p, s in enumerate(stripes):
        d[f"w_addr{p}"] = 0x10000 * (p + 1)
        sm.write(d[f"w_addr{p}"], bytes(s))
    return _read_weights(sm, d, lay)


# -- formats and ranges ---------------------------------------------------------------------

def test_format_ranges():
    assert weight_range(2) == (-2, 1) and storage_range(2) == (-2, 1)
    assert weight_range("ternary") == storage_range("ternary") == (-1, 1)
    assert weight_range(4) == (-7, 7) and storage_range(4) == (-8, 7)
    assert weight_format(3) == "ternary" and weight_format(8) == 8
    for bad in (1, 3.5, "int2", True, 16):
        with pytest.raises(ValueError, match="weight format must be one of 2, 4, 8, 'ternary'"):
            weight_format(bad)


def test_int2_uses_the_whole_range_and_beats_symmetric_ternary():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 512))
    q2 = quantize_weights_groupwise(w, 2, 128)
    qt = quantize_weights_groupwise(w, "ternary", 128)
    assert set(np.unique(q2.q)) == {-2, -1, 0, 1}
    assert set(np.unique(qt.q)) == {-1, 0, 1}
    err = lambda q: np.linalg.norm(q.dequantize() - w) / np.linalg.norm(w)   # noqa: E731
    assert err(q2) < 0.40 < err(qt) < 0.53          # measured: int2 ~0.38, ternary absmean ~0.51


def test_ternary_absmean_scale_is_the_group_mean_magnitude():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 256)) * np.array([[0.1], [1.0], [3.0], [0.01]])
    gq = quantize_weights_groupwise(w, "ternary", 64)
    absmean = np.abs(w.reshape(4, 4, 64)).mean(axis=2)
    np.testing.assert_allclose(gq.scales, absmean)
    expect = np.clip(np.rint(w / np.repeat(absmean, 64, axis=1)), -1, 1)
    np.testing.assert_array_equal(gq.q, expect)
    gt = quantize_weights_groupwise(w, "ternary", 64, ternary_scale="tensor")
    np.testing.assert_allclose(gt.scales, np.abs(w).mean())


@pytest.mark.parametrize("bits", [2, "ternary"])
def test_quantizers_refuse_bad_input(bits):
    with pytest.raises(ValueError, match="group_size 48 must divide K = 64"):
        quantize_weights_groupwise(np.ones((2, 64)), bits, 48)
    with pytest.raises(ValueError, match="2 NaN/Inf"):
        quantize_weights_groupwise(np.array([[np.nan, np.inf] + [0.0] * 14]), bits, 16)
    with pytest.raises(ValueError, match="bits must be one of 2, 4, 8, 'ternary', got 3.0"):
        quantize_weights_groupwise(np.ones((2, 64)), 3.0, 16)
    with pytest.raises(ValueError, match="ternary_scale"):
        quantize_weights_groupwise(np.ones((2, 64)), bits, 16, ternary_scale="row")


# -- packing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("packing", ["2bit", "5trit"])
@pytest.mark.parametrize("fmt", [2, "ternary", 4, 8])
@pytest.mark.parametrize("ports", [1, 2])
def test_host_packer_round_trips_and_matches_golden_and_test_packer(fmt, packing, ports):
    lay = _lay(packing, ports)
    rng = np.random.default_rng(ports)
    lo, hi = storage_range(fmt)
    n, k = 7, 48                                           # n*k = 336: not a multiple of 5 or of a word
    w = rng.integers(lo, hi + 1, (n, k))
    w[0] = lo
    w[-1] = hi
    stripes = pack_weights(w, fmt, lay)
    kp = lay.matmul.pad_k(k)
    wp = np.zeros((n, kp), dtype=np.int64)
    wp[:, :k] = w
    code = WeightFormat.code(fmt)
    assert [s.nbytes for s in stripes] == [lay.matmul.weight_port_bytes(n, kp, code)] * ports
    np.testing.assert_array_equal(unpack_weights(stripes, n, kp, fmt, lay), wp)
    np.testing.assert_array_equal(unpack_weights(stripes, n, kp, code, lay), wp)
    np.testing.assert_array_equal(_golden_decode(stripes, n, kp, code, lay), wp)
    ref = tpack.pack_weights(wp, code, ports, 64, ternary_packing=packing)
    assert [bytes(s) for s in stripes] == ref


def test_ternary_codes_and_five_trit_bytes_by_hand():
    lay2 = _lay("2bit", ports=1)
    w = np.zeros((1, 16), dtype=np.int64)
    w[0, :4] = [0, 1, -1, 1]
    assert pack_weights(w, "ternary", lay2)[0][0] == 0b01_11_01_00
    lay5 = _lay("5trit", ports=1)
    w[0, :10] = [-1, 0, 1, 0, 0, 1, 1, 1, 1, 1]
    raw = pack_weights(w, "ternary", lay5)[0]
    assert raw[0] == 0 * 1 + 1 * 3 + 2 * 9 + 1 * 27 + 1 * 81
    assert raw[1] == 242                                    # all +1
    assert raw[2] == 121 and raw[3] == 121 and raw[4] == 0   # zero weights; then the zero-padded word
    assert lay5.matmul.weight_port_bytes(1, 16, 3) == 8            # ceil(16/5) = 4 bytes -> one 64-bit word


def test_reserved_encodings_decode_to_zero():
    lay2 = _lay("2bit", ports=1)
    raw = np.zeros(lay2.matmul.weight_port_bytes(1, 16, 3), dtype=np.uint8)
    raw[0] = 0b10_10_01_10                                  # reserved, reserved, +1, reserved
    got = unpack_weights([raw], 1, 16, "ternary", lay2)
    assert list(got[0, :4]) == [0, 1, 0, 0]
    np.testing.assert_array_equal(_golden_decode([raw], 1, 16, 3, lay2), got)
    lay5 = _lay("5trit", ports=1)
    raw = np.zeros(lay5.matmul.weight_port_bytes(1, 16, 3), dtype=np.uint8)
    raw[:4] = [243, 255, 242, 0]
    got = unpack_weights([raw], 1, 16, "ternary", lay5)
    assert list(got[0]) == [0] * 10 + [1] * 5 + [-1]
    np.testing.assert_array_equal(_golden_decode([raw], 1, 16, 3, lay5), got)


def test_packer_refuses_out_of_range_and_unsupported_formats():
    lay = _lay("2bit", ports=1)
    with pytest.raises(ValueError, match=r"ternary weights has 1 value\(s\) outside \[-1, 1\]"):
        pack_weights(np.array([[2] + [0] * 15]), "ternary", lay)
    with pytest.raises(ValueError, match=r"int2 weights has 2 value\(s\) outside \[-2, 1\]"):
        pack_weights(np.array([[-3, 2] + [0] * 14]), 2, lay)
    only4 = _lay(bits=(4,), ports=1)
    for bad in (2, "ternary", 3, 5, "int4", True):
        with pytest.raises(ValueError, match=r"wbits must be one of the engine's weight_bits \[4\]"):
            pack_weights(np.zeros((1, 16), dtype=np.int8), bad, only4)
