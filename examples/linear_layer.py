"""Run a quantized Linear layer on the simulated accelerator and compare with float.

    python examples/linear_layer.py [examples/u280_small.yaml]
"""
import sys

import numpy as np

from hbmforge.host import Linear, open_device

config = sys.argv[1] if len(sys.argv) > 1 else "examples/u280_small.yaml"
rng = np.random.default_rng(0)
w = (rng.standard_normal((512, 1024)) / 32).astype(np.float32)    # [N, K]
x = rng.standard_normal((8, 1024)).astype(np.float32)             # [M, K]

with open_device(config, backend="sim") as dev:                     # Verilator co-simulation
    for bits in (8, 4):
        lin = Linear.from_float(w, bits=bits, device=dev)
        y = lin(x)
        ref = x @ w.T
        c = dev.counters()
        print(f"int{bits}: {c['cycles']} cycles, MAC utilization {c['mac_utilization']:.3f}, "
              f"{c['bytes_read']} B read, {c['bytes_written']} B written, "
              f"rel. error vs float {np.linalg.norm(y - ref) / np.linalg.norm(ref):.4f}")
        lin.close()
