"""``scale_stream: inline`` on the Verilator co-simulation: Linear layers and raw programs bit for bit
against the golden models (the descriptor-level model reads the scales from the same stripes)."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.encodings import OutMode
from hbmforge.host import Linear, ProgramBuilder, open_device
from hbmforge.host.packing import pack_activations, pack_requant, pack_weights, unpack_output
from hbmforge.numerics.program import SparseMemory, execute

pytestmark = pytest.mark.rtl

TINY_INLINE = {"version": 1, "name": "tiny_inline", "board": "u280", "clock_mhz": 300,
               "axi": {"data_width": 64, "id_width": 4, "max_burst_beats": 16, "max_outstanding": 4},
               "engines": [{"kind": "matmul", "name": "mm0", "rows": 2, "lanes": 16, "weight_ports": 2,
                            "weight_bits": [2, 4, 8, "ternary"], "group_size": 16, "scale_bits": 16,
                            "max_k": 64, "scale_stream": "inline"}]}


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    with open_device(parse_config(TINY_INLINE), build_dir=tmp_path_factory.mktemp("tiny_inline"),
                     progress=False) as d:
        yield d


@pytest.mark.parametrize("bits", [2, 4, 8, "ternary"])
def test_linear_with_inline_scales_equals_the_golden_model(dev, bits):
    rng = np.random.default_rng(7 if bits == "ternary" else bits)
    w = rng.standard_normal((11, 150))                        # K 160 padded: three slices of 64
    with Linear.from_float(w, bits=bits, device=dev) as lin:
        for m in (1, 5):
            xq = rng.integers(-128, 128, (m, 150))
            assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
        mult, shift = rng.integers(1, 1 << 20, 11), rng.integers(10, 30, 11)
        assert np.array_equal(lin.forward_int(xq, requant=(mult, shift)), lin.golden_int(xq, requant=(mult, shift)))


def test_program_with_inline_scales_matches_the_descriptor_golden_model(dev):
    lay = dev.layout
    rng = np.random.default_rng(3)
    mem = SparseMemory()
    bufs = []

    def put(data, port="data", nbytes=None):
        buf = dev.alloc(nbytes or max(data.nbytes, 1), port)
        bufs.append(buf)
        if data.nbytes:
            dev.write(buf, data)
            mem.write(buf.address, data.tobytes())
        return buf

    prog = ProgramBuilder(dev)
    jobs = []
    for m, k, n, wbits, mode in ((1, 48, 7, 2, OutMode.INT32), (6, 128, 5, 4, OutMode.INT8),
                                 (3, 64, 9, "ternary", OutMode.INT32)):
        x = rng.integers(-128, 128, (m, k))
        lo, hi = (-1, 1) if wbits == "ternary" else (-(1 << (wbits - 1)), (1 << (wbits - 1)) - 1)
        w = rng.integers(lo, hi + 1, (n, k))
        s = rng.integers(0, 1 << 16, (n, k // 16))
        y = put(np.zeros(0, np.uint8), nbytes=lay.matmul.out_bytes(m, n, mode))
        extra = {}
        if mode == OutMode.INT8:
            extra["q"] = put(pack_requant(rng.integers(1, 1 << 24, n), rng.integers(24, 48, n), lay))
        if k > lay.matmul.k_slice:
            extra["p"] = put(np.full(lay.matmul.partial_bytes(m, n, k, mode), 0xA5, np.uint8))
        prog.matmul(m=m, k=k, n=n, wbits=wbits, x=put(pack_activations(x, lay)), y=y, out_mode=mode,
                    out_shift=10, w=[put(st, f"w{i}") for i, st in enumerate(pack_weights(w, wbits, lay, scales=s))],
                    **extra)
        jobs.append((y, m, n, mode))
    pbuf = put(np.frombuffer(prog.to_bytes(), np.uint8))
    golden = execute(mem, pbuf.address, len(prog), lay)
    assert golden.ok, golden.detail
    dev.run(pbuf, len(prog), timeout=120)
    for y, m, n, mode in jobs:
        nbytes = lay.matmul.out_bytes(m, n, mode)
        got = unpack_output(dev.read(y, nbytes), m, n, mode, lay)
        want = unpack_output(mem.read(y.address, nbytes), m, n, mode, lay)
        assert np.array_equal(got, want)
    assert dev.read_reg("STATUS") == 0
    for b in bufs:
        dev.free(b)


@pytest.mark.slow          # a build of its own and ~5 CPU-minutes; the golden-device twin is in test_blocks.py
def test_decoder_blocks_with_inline_scales_equal_the_golden_program(tmp_path_factory):
    """host/blocks packs every projection's scales into its stripes (s_addr 0): prefill and decode
    steps on the co-sim equal the golden program, which reads the scales from the same stripes."""
    from designs import tiny_vector_config_dict
    from test_blocks import LLAMA, assert_steps_equal_golden, build_llama

    cfg = tiny_vector_config_dict("tiny_vec_inline")
    cfg["engines"][0]["scale_stream"] = "inline"
    with open_device(parse_config(cfg), build_dir=tmp_path_factory.mktemp("tiny_vec_inline"), progress=False) as d:
        assert d.layout.matmul.inline_scales
        rng = np.random.default_rng(12)
        prog, *_ = build_llama(d, rng, layers=2)
        assert_steps_equal_golden(prog, rng.normal(0, 1, (7, LLAMA.hidden)), prefill=5)
        prog.close()
