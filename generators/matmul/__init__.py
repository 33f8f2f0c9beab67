"""Low-bit matmul engine generator (int8/int4 weights x int8 activations)."""
