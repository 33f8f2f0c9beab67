"""The generated kernel on the Verilator co-simulation, bit for bit against the golden models.

Each scenario writes the same operands to the sim device and to a SparseMemory
at the same addresses, runs the same program on both (the RTL and
hbmforge.numerics.program.execute) and compares output bytes, STATUS,
DESC_DONE and the traffic counters.
"""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.host import DeviceRunError, DeviceTimeoutError, Linear, ProgramBuilder, open_device
from hbmforge.host.packing import pack_activations, pack_bias, pack_requant, pack_scales, pack_weights
from hbmforge.encodings import ErrorCode, OutMode
from hbmforge.numerics.program import SparseMemory, execute

pytestmark = pytest.mark.rtl

TINY = {"version": 1, "name": "tiny_host", "board": "u280", "clock_mhz": 300,
        "axi": {"data_width": 64, "id_width": 4, "max_burst_beats": 16, "max_outstanding": 4},
        "engines": [{"kind": "matmul", "name": "mm0", "rows": 2, "lanes": 16, "weight_ports": 2,
                     "weight_bits": [4, 8], "group_size": 16, "scale_bits": 16, "max_k": 256}]}


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    with open_device(parse_config(TINY), build_dir=tmp_path_factory.mktemp("tiny_host"), progress=False) as d:
        yield d


class Mirror:
    """Buffers on the device and the same bytes at the same addresses in a golden memory."""

    def __init__(self, dev):
        self.dev, self.mem, self.bufs = dev, SparseMemory(), []

    def put(self, data: np.ndarray, port: str = "data", nbytes: int | None = None):
        buf = self.dev.alloc(nbytes or max(data.nbytes, 1), port)
        self.bufs.append(buf)
        if data.nbytes:
            self.dev.write(buf, data)
            self.mem.write(buf.address, data.tobytes())
        return buf

    def free(self):
        for b in self.bufs:
            self.dev.free(b)


def matmul_operands(mirror, lay, rng, m, k, n, wbits, mode, bias=False):
    x = rng.integers(-128, 128, (m, k))
    w = rng.integers(-(1 << (wbits - 1)), 1 << (wbits - 1), (n, k))
    s = rng.integers(0, 1 << 16, (n, k // lay.mm.group_size))
    bufs = dict(x=mirror.put(pack_activations(x, lay)), s=mirror.put(pack_scales(s, lay)),
                y=mirror.put(np.zeros(0, np.uint8), nbytes=lay.matmul.out_bytes(m, n, mode)),
                w=[mirror.put(stripe, f"w{i}") for i, stripe in enumerate(pack_weights(w, wbits, lay))])
    if mode == OutMode.INT8:
        bufs["q"] = mirror.put(pack_requant(rng.integers(1, 1 << 24, n), rng.integers(24, 48, n), lay))
    if bias:
        bufs["bias"] = mirror.put(pack_bias(rng.integers(-(1 << 31), 1 << 31, n), lay))
    pbytes = lay.matmul.partial_bytes(m, n, k, mode)
    if pbytes:
        bufs["p"] = mirror.put(np.full(pbytes, 0xA5, np.uint8))
    return bufs


def run_both(dev, mirror, prog: ProgramBuilder, count=None, timeout=120.0):
    count = len(prog) if count is None else count
    pbuf = mirror.put(np.frombuffer(prog.to_bytes(), np.uint8))
    golden = execute(mirror.mem, pbuf.address, count, dev.layout)
    try:
        dev.run(pbuf, count, timeout=timeout)
        error = None
    except DeviceRunError as err:
        error = err
    return golden, error


@pytest.mark.parametrize("wbits", [4, 8])
@pytest.mark.parametrize("mode", [OutMode.INT32, OutMode.INT8])
def test_random_matmuls_match_the_golden_program_bit_for_bit(dev, wbits, mode):
    lay = dev.layout
    rng = np.random.default_rng(wbits * 10 + mode)
    for m, k, n in [(1, 16, 1), (3, 48, 5), (5, 128, 7)]:
        mirror = Mirror(dev)
        bufs = matmul_operands(mirror, lay, rng, m, k, n, wbits, mode)
        prog = ProgramBuilder(dev)
        prog.matmul(m=m, k=k, n=n, wbits=wbits, out_mode=mode, out_shift=int(rng.integers(0, 30)), **bufs)
        golden, error = run_both(dev, mirror, prog)
        assert error is None and golden.ok
        nbytes = lay.matmul.out_bytes(m, n, mode)
        assert dev.read(bufs["y"], nbytes) == mirror.mem.read(bufs["y"].address, nbytes), (m, k, n)
        c = dev.counters()
        assert c["mac_ops"] == golden.mac_ops
        assert [c["ports"][f"w{i}"]["bytes_read"] for i in range(2)] == golden.weight_bytes_read
        assert c["ports"]["data"]["bytes_written"] == golden.output_bytes_written
        mirror.free()


def test_a_program_of_several_layers_runs_with_one_start(dev):
    lay = dev.layout
    rng = np.random.default_rng(3)
    mirror = Mirror(dev)
    prog = ProgramBuilder(dev)
    outs = []
    for m, k, n, wbits, mode in [(2, 32, 3, 4, OutMode.INT32), (3, 64, 4, 8, OutMode.INT8)]:
        bufs = matmul_operands(mirror, lay, rng, m, k, n, wbits, mode)
        prog.matmul(m=m, k=k, n=n, wbits=wbits, out_mode=mode, **bufs)
        outs.append((bufs["y"], lay.matmul.out_bytes(m, n, mode)))
    prog.end()
    prog.matmul(m=1, k=16, n=1, wbits=4, **matmul_operands(mirror, lay, rng, 1, 16, 1, 4, OutMode.INT32))
    golden, error = run_both(dev, mirror, prog)
    assert error is None and golden.descriptors_done == 2
    assert dev.read_reg("DESC_DONE") == golden.descriptors_done
    for buf, nbytes in outs:
        assert dev.read(buf, nbytes) == mirror.mem.read(buf.address, nbytes)
    mirror.free()


def test_chunks_tiles_split_k_and_bias_match_the_golden_program(dev):
    """Rows in several chunks of the activation ring, columns in several weight tiles (Y in
    segments), K in two slices through the partial-sum scratch, a bias; counters included."""
    lay = dev.layout
    geom = lay.matmul
    rng = np.random.default_rng(8)
    for m, k, n, wbits, mode, bias_shift in [(40, 336, 20, 8, OutMode.INT8, 3), (37, 96, 18, 4, OutMode.INT32, 0)]:
        mirror = Mirror(dev)
        bufs = matmul_operands(mirror, lay, rng, m, k, n, wbits, mode, bias=True)
        prog = ProgramBuilder(dev)
        prog.matmul(m=m, k=k, n=n, wbits=wbits, out_mode=mode, out_shift=20, bias_shift=bias_shift, **bufs)
        golden, error = run_both(dev, mirror, prog)
        assert error is None and golden.ok, golden.detail
        nbytes = geom.out_bytes(m, n, mode)
        assert dev.read(bufs["y"], nbytes) == mirror.mem.read(bufs["y"].address, nbytes), (m, k, n)
        if "p" in bufs:
            pbytes = geom.partial_bytes(m, n, k, mode)
            assert dev.read(bufs["p"], pbytes) == mirror.mem.read(bufs["p"].address, pbytes)
        c = dev.counters()
        assert c["mac_ops"] == golden.mac_ops
        assert [c["ports"][f"w{i}"]["bytes_read"] for i in range(2)] == golden.weight_bytes_read
        assert c["ports"]["data"]["bytes_written"] == golden.output_bytes_written
        assert geom.chunks(m, n, k, mode) > 1 and geom.tiles(n) > 1
        mirror.free()


def test_linear_with_bias_and_k_above_max_k_on_the_simulation(dev):
    rng = np.random.default_rng(9)
    k = 300
    w = rng.standard_normal((24, k))
    b = rng.standard_normal(24)
    x = rng.standard_normal((6, k))
    with Linear.from_float(w, bits=8, bias=b, device=dev) as lin:
        xq = rng.integers(-128, 128, (6, k))
        assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
        bias = lin.int_bias(float(np.abs(x).max()) / 127)
        mult, shift = rng.integers(1, 1 << 20, 24), rng.integers(20, 40, 24)
        assert np.array_equal(lin.forward_int(xq, requant=(mult, shift), bias=bias),
                              lin.golden_int(xq, requant=(mult, shift), bias=bias))
        ref = x @ w.T + b
        assert np.linalg.norm(lin(x) - ref) / np.linalg.norm(ref) < 0.03
        out_scale = float(np.abs(ref).max()) / 100
        assert np.abs(lin(x, out_scale=out_scale) - ref).max() <= 2 * out_scale


@pytest.mark.parametrize("changes", [{"op": 9}, {"wbits": 2}, {"k": 24}, {"k": 4112}, {"m": 0}, {"n": 0},
                                     {"out_mode": 3}, {"out_shift": 64}, {"x_addr": 4}, {"bias": 2},
                                     {"bias": 1, "bias_shift": 63}])
def test_bad_descriptors_fail_like_the_golden_program(dev, changes):
    lay = dev.layout
    mirror = Mirror(dev)
    bufs = matmul_operands(mirror, lay, np.random.default_rng(4), 2, 16, 2, 4, OutMode.INT32)
    prog = ProgramBuilder(dev)
    prog.matmul(m=2, k=16, n=2, wbits=4, **bufs)
    fields = prog.descriptors[0]
    if "x_addr" in changes:
        changes = {"x_addr": fields["x_addr"] + changes["x_addr"]}
    prog.unchecked(**dict(fields, **changes))
    golden, error = run_both(dev, mirror, prog)
    assert golden.error != ErrorCode.NONE and error is not None
    assert (error.code, error.index, error.descriptors_done) == (golden.error, golden.error_index,
                                                                 golden.descriptors_done)
    assert dev.read_reg("STATUS") == golden.status
    mirror.free()


@pytest.mark.parametrize("bits", [4, 8])
def test_linear_on_the_simulation_equals_the_golden_model(dev, bits):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((9, 40))
    x = rng.standard_normal((5, 40))
    with Linear.from_float(w, bits=bits, device=dev) as lin:
        xq = rng.integers(-128, 128, (5, 40))
        assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
        mult, shift = rng.integers(1, 1 << 20, 9), rng.integers(10, 30, 9)
        assert np.array_equal(lin.forward_int(xq, requant=(mult, shift)), lin.golden_int(xq, requant=(mult, shift)))
        y = lin(x)
        ref = x @ w.T
        assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < (0.03 if bits == 8 else 0.15)
        assert lin.last_run.cycles > 0 and lin.last_run.counters["mac_ops"] == 5 * 48 * 9


def test_a_short_timeout_raises_and_the_run_can_still_finish(dev):
    rng = np.random.default_rng(5)
    with Linear.from_float(rng.standard_normal((256, 256)), bits=8, device=dev) as lin:
        xq = rng.integers(-128, 128, (128, 256))          # ~500k cycles: several wait() chunks
        with pytest.raises(DeviceTimeoutError, match="within 0.001 s"):
            lin.forward_int(xq, timeout=0.001)
        dev.wait(timeout=300)
        assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))


def test_open_device_without_build_dir_reuses_the_cached_library(dev):
    with open_device(TINY, progress=False, read_latency=50) as other:
        assert other.layout.design_hash == dev.layout.design_hash
        assert other.timings["w0"].read_latency == 50
        with Linear.from_float(np.eye(16), bits=8, device=other) as lin:
            assert np.allclose(lin(np.arange(16.0)), np.arange(16.0), atol=0.1)
