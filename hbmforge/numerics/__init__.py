"""Bit-exact golden models (NumPy) for every engine, and the quantizers the host uses.

The RTL is tested against these functions bit for bit; separate tests bound
their error against float math.
"""
from .fixed import rshift_round, saturate
from .quant import (
    ActQuant,
    GroupQuant,
    RequantErrorBound,
    WEIGHT_FORMATS,
    dyadic_multiplier,
    encode_group_scales,
    quantize_activations_per_token,
    quantize_activations_per_tensor,
    quantize_weights_groupwise,
    requant_error_bound,
    storage_range,
    weight_format,
    weight_range,
)
from .matmul import matmul_accumulate, matmul_int32, matmul_int8, matmul_reference_float

__all__ = [
    "rshift_round", "saturate",
    "ActQuant", "GroupQuant", "RequantErrorBound", "WEIGHT_FORMATS", "dyadic_multiplier",
    "encode_group_scales", "requant_error_bound", "storage_range", "weight_format", "weight_range",
    "quantize_activations_per_token", "quantize_activations_per_tensor", "quantize_weights_groupwise",
    "matmul_accumulate", "matmul_int32", "matmul_int8", "matmul_reference_float",
]
