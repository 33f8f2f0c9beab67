"""hbmforge: generators, verification and a host runtime for quantized-NN accelerators on HBM FPGAs."""
__version__ = "0.1.0"
