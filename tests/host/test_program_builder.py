"""ProgramBuilder: descriptors laid out per the manifest, bad layers refused on the host."""
from __future__ import annotations

import pytest

from hbmforge.host import ProgramBuilder
from hbmforge.host.program import decode_program
from hbmforge.encodings import Opcode, OutMode


def matmul_args(dev_or_addrs, **overrides):
    args = dict(m=3, k=32, n=4, wbits=4, x=0x1000, s=0x2000, y=0x3000, w=[0x10_000, 0x20_000])
    args.update(overrides)
    return args


def test_fields_land_at_the_manifest_offsets(tiny_layout):
    prog = ProgramBuilder(tiny_layout)
    prog.matmul(**matmul_args(None, out_shift=5))
    prog.end()
    raw = prog.to_bytes()
    assert len(raw) == 2 * tiny_layout.descriptor_bytes == prog.nbytes
    d0, d1 = decode_program(raw, tiny_layout)
    assert d0["op"] == Opcode.MATMUL and d1["op"] == Opcode.END
    assert (d0["m"], d0["k"], d0["n"], d0["wbits"], d0["out_shift"]) == (3, 32, 4, 4, 5)
    assert (d0["x_addr"], d0["w_addr1"], d0["q_addr"]) == (0x1000, 0x20_000, 0)
    off = tiny_layout.field_offset("y_addr", Opcode.MATMUL)
    assert int.from_bytes(raw[off:off + 8], "little") == 0x3000


@pytest.mark.parametrize("overrides, match", [
    ({"k": 24}, "k 24, must be a multiple of 16"),
    ({"k": 4112}, r"k 4112, must be a multiple of 16 in \[1, 4096\] \(16 slices of 256\)"),
    ({"k": 512}, r"k 512 is above one pass \(256\): the engine splits it and needs p, a scratch buffer of 512 bytes"),
    ({"m": 0}, r"m 0, n 4, each must be in \[1, "),
    ({"wbits": 2}, r"wbits 2, engine accepts codes \[4, 8\]"),
    ({"x": 0x1004}, "x_addr 0x1004 not a multiple of 8"),
    ({"w": [0x10_000, 0x20_001]}, r"w_addr1 0x20001 not a multiple of 8"),
    ({"w": [0x10_000]}, "one weight stripe per weight port"),
    ({"out_mode": "int4"}, "out_mode must be one of"),
    ({"out_shift": 64}, r"out_shift 64 > 63"),
    ({"out_mode": "int8"}, "needs q"),
    ({"s": None}, "s is required"),
    ({"m": 2.0}, "m must be an integer"),
])
def test_invalid_matmuls_are_refused_with_the_reason(tiny_layout, overrides, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ProgramBuilder(tiny_layout).matmul(**matmul_args(None, **overrides))


def test_int8_mode_takes_q_and_ignores_out_shift(tiny_layout):
    prog = ProgramBuilder(tiny_layout)
    prog.matmul(**matmul_args(None, out_mode="int8", q=0x4000, out_shift=99))
    d = prog.descriptors[0]
    assert (d["out_mode"], d["q_addr"], d["out_shift"]) == (OutMode.INT8, 0x4000, 0)


def test_buffers_are_checked_for_port_and_size(golden_dev):
    lay = golden_dev.layout
    x = golden_dev.alloc(lay.matmul.act_bytes(3, 32))
    s = golden_dev.alloc(lay.matmul.scale_bytes(4, 32))
    y = golden_dev.alloc(lay.matmul.out_bytes(3, 4, 0))
    w = [golden_dev.alloc(lay.matmul.weight_port_bytes(4, 32, 4), f"w{i}") for i in range(2)]
    prog = ProgramBuilder(golden_dev)
    prog.matmul(m=3, k=32, n=4, wbits=4, x=x, s=s, y=y, w=w)
    assert prog.descriptors[0]["w_addr1"] == w[1].address
    with pytest.raises(ValueError, match="buffer too small"):
        prog.matmul(m=3, k=32, n=4, wbits=8, x=x, s=s, y=y, w=w)
    with pytest.raises(ValueError, match="x must be a buffer on port 'data', got one on port 'w0'"):
        prog.matmul(m=3, k=32, n=4, wbits=4, x=w[0], s=s, y=y, w=w)
    with pytest.raises(ValueError, match=r"w\[0\] must be a buffer on port 'w0'"):
        prog.matmul(m=3, k=32, n=4, wbits=4, x=x, s=s, y=y, w=[w[1], w[0]])
    golden_dev.free(x)
    with pytest.raises(ValueError, match="was freed"):
        prog.matmul(m=3, k=32, n=4, wbits=4, x=x, s=s, y=y, w=w)
    assert len(prog) == 1                                # refused descriptors are not appended


def test_unchecked_descriptors_only_need_known_fields(tiny_layout):
    prog = ProgramBuilder(tiny_layout)
    prog.unchecked(op=7, k=3)
    assert decode_program(prog.to_bytes(), tiny_layout)[0]["op"] == 7
    with pytest.raises(ValueError, match="no descriptor field 'bogus'"):
        prog.unchecked(bogus=1)


@pytest.mark.parametrize("rows, extra, match", [
    (2, {}, r"error code 21.*res_out 1: 0, or 1 with a norm and out_fmt ACT8 on a design of one row per block "
            r"\(this one has 2\)"),
    (1, {"res_out": 2}, r"error code 21.*res_out 2"),
    (1, {"norm": 0}, r"error code 21.*res_out 1"),
    (1, {"res_addr": 12345}, r"error code 7.*res_addr 0x3039 not a multiple of 8"),
    (1, {"res_addr": "small"}, r"res_addr: buffer too small, this descriptor reads/writes 256 bytes"),
])
def test_res_out_is_refused_where_the_engine_cannot_write_it(rows, extra, match):
    """res_out (the residual add's RES32 beside the next norm's int8 rows) needs a norm, ACT8 rows and one
    row per block; its address is checked like every other."""
    from designs import tiny_vector_config_dict
    from golden_kernel import GoldenDevice
    from hbmforge.config import parse_config
    from hbmforge.encodings import VectorIn, VectorNorm, VectorOut
    from hbmforge.layout import DesignLayout

    cfg = tiny_vector_config_dict()
    cfg["engines"][0]["rows"] = rows
    lay = DesignLayout(parse_config(cfg))
    with GoldenDevice(lay) as d:
        fields = dict(m=1, dim=64, a_fmt=VectorIn.RES32, a_addr=d.alloc(1024), a_stride=rows * 256,
                      norm=VectorNorm.RMS, eps_q=1, gamma_addr=d.alloc(256), out_fmt=VectorOut.ACT8, y_addr=d.alloc(64),
                      y_scale=d.alloc(64), y_stride=rows * 256, res_out=1, res_addr=d.alloc(rows * 256))
        fields.update(extra)
        if fields["res_addr"] == "small":
            fields["res_addr"] = d.alloc(64)
        with pytest.raises(ValueError, match=match):
            ProgramBuilder(lay).vector(**fields)
