"""host.checks.real_array takes Python and NumPy real scalars as 0-d arrays (kv_ranges=[(8.0, 8.0)]
used to be refused), and still refuses bools, complex numbers and NaN with named errors."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.host.checks import real_array


@pytest.mark.parametrize("value", [2.5, 3, np.float32(2.0), np.int64(4)])
def test_real_scalars_are_0d_arrays(value):
    out = real_array("r", value, ndim=(0, 1))
    assert out.shape == () and out.dtype == np.float64 and out == float(value)


@pytest.mark.parametrize("value, err, text", [(True, TypeError, "dtype bool"), (1 + 2j, TypeError, "complex"),
                                              (float("nan"), ValueError, "NaN"), ("8", TypeError, "str")])
def test_other_scalars_are_refused_by_name(value, err, text):
    with pytest.raises(err, match=text):
        real_array("kv_ranges[0] k", value, ndim=(0, 1))


def test_a_scalar_where_a_vector_is_needed_names_the_shape():
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        real_array("x", 1.0, ndim=(1,))
