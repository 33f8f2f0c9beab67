"""The vector engine from Python (host/vector.py) on the golden device: each op against float math
within the datasheet's bounds, the device result equal to the golden run, bad input refused."""
from __future__ import annotations

import math

import numpy as np
import pytest

from designs import tiny_vector_config_dict
from golden_kernel import GoldenDevice
from hbmforge.config import parse_config
from hbmforge.host.vector import Vector
from hbmforge.layout import DesignLayout


@pytest.fixture
def vec():
    with GoldenDevice(DesignLayout(parse_config(tiny_vector_config_dict()))) as dev:
        yield Vector(dev)


def _erf(x):
    return np.vectorize(math.erf)(x)


def test_each_op_tracks_float_and_equals_the_golden_run(vec):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (5, 32))
    b = rng.normal(0, 2, (5, 32))
    gamma, beta = rng.uniform(0.5, 1.5, 32), rng.normal(0, 0.2, 32)
    cases = {
        "rmsnorm": ((x, gamma), x / np.sqrt((x * x).mean(1, keepdims=True) + 1e-5) * gamma, 1e-4),
        "layernorm": ((x, gamma, beta), (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True) * gamma + beta, 1e-4),
        "gelu": ((x,), 0.5 * x * (1 + _erf(x / math.sqrt(2))), 4e-4),
        "silu": ((x,), x / (1 + np.exp(-x)), 4e-4),
        "add": ((x, b), x + b, 2 ** -16),
        "swiglu": ((x, b), x / (1 + np.exp(-x)) * b, 4e-3),
    }
    for op, (args, ref, tol) in cases.items():
        got = getattr(vec, op)(*args)
        assert np.array_equal(got, vec.golden(op, *args)), op
        assert np.max(np.abs(got - ref)) <= tol * max(1.0, float(np.abs(ref).max())), (op, np.max(np.abs(got - ref)))


def test_rope_rotates_adjacent_pairs_by_position(vec):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (3, 32))
    got = vec.rope(x, positions=np.arange(4, 7), theta=10000.0)
    hd = 16
    inv = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(4, 7)[:, None, None] * inv[None, None, :]
    h = x.reshape(3, 2, hd // 2, 2)
    ref = np.stack([h[..., 0] * np.cos(ang) - h[..., 1] * np.sin(ang),
                    h[..., 0] * np.sin(ang) + h[..., 1] * np.cos(ang)], -1).reshape(3, 32)
    assert np.max(np.abs(got - ref)) < 1e-3
    assert np.array_equal(got, vec.golden("rope", x, positions=np.arange(4, 7)))


def test_quantize_gives_int8_rows_with_absmax_scales(vec):
    rng = np.random.default_rng(2)
    x = rng.normal(0, 3, (6, 16))
    q, scale = vec.quantize(x)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    assert np.allclose(scale, np.abs(x).max(1) / 127, rtol=2 ** -15)
    assert np.max(np.abs(q * scale[:, None] - x) / scale[:, None]) <= 0.5 + 127 * 2 ** -15 + 1e-9


def test_bad_arguments_are_named(vec):
    with pytest.raises(ValueError, match="multiple of 8"):
        vec.silu(np.zeros((2, 12)))
    with pytest.raises(ValueError, match="beyond int32"):
        vec.add(np.full((1, 8), 1e5), np.zeros((1, 8)))
    with pytest.raises(ValueError, match="same shape"):
        vec.add(np.zeros((1, 8)), np.zeros((2, 8)))
    with pytest.raises(ValueError, match="consecutive"):
        vec.rope(np.zeros((2, 16)), positions=[0, 2])
    with pytest.raises(ValueError, match="gamma must have 8"):
        vec.rmsnorm(np.zeros((1, 8)), np.ones(9))
    with pytest.raises(ValueError, match="one of the Vector ops"):
        vec.golden("close")
