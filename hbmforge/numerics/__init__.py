"""Bit-exact golden models (NumPy) for every engine, and the quantizers the host uses.

The RTL is tested against these functions bit for bit; separate tests bound
their error against float math.
"""
from .fixed import rshift_round, saturate
from .quant import (
    ActQuant,
    GroupQuant,
    dyadic_multiplier,
    encode_group_scales,
    quantize_activations_per_token,
    quantize_activations_per_tensor,
    quantize_weights_groupwise,
)
from .matmul import matmul_accumulate, matmul_int32, matmul_int8, matmul_reference_float

__all__ = [
    "rshift_round", "saturate",
    "ActQuant", "GroupQuant", "dyadic_multiplier", "encode_group_scales",
    "quantize_activations_per_token", "quantize_activations_per_tensor", "quantize_weights_groupwise",
    "matmul_accumulate", "matmul_int32", "matmul_int8", "matmul_reference_float",
]
