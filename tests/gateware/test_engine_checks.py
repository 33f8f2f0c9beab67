"""One rule set: for every engine family, the command processor's RTL form of the descriptor
checks (``generators.engine.rtl_error_code``) gives the same code as the host/golden form
(``DesignLayout.validate_descriptor``) on edge and random descriptors."""
from __future__ import annotations

import random

import pytest

from hbmforge.config import parse_config
from hbmforge.encodings import ErrorCode, Opcode
from sim_helpers import rtl_check_codes
from hbmforge.layout import DesignLayout

from designs import tiny_attention_config_dict

U64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def layout():
    cfg = tiny_attention_config_dict()
    cfg["engines"].append({"kind": "copy"})
    return DesignLayout(parse_config(cfg))


def _edges(layout) -> list[int]:
    w = layout.word_bytes
    vals = {0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 1023, 1024, 1025,
            4096, w - 1, w, w + 1, 2 * w, (1 << 31), (1 << 32) - 1, 1 << 32, (1 << 32) + w, U64, U64 - w + 1,
            layout.mm.max_k, layout.mm.max_k + layout.matmul.k_align, layout.attention.max_context,
            layout.attention.max_context + 1, 1 << 40}
    return sorted(v & U64 for v in vals)


def _valid(layout, opcode) -> dict:
    w = layout.word_bytes
    if opcode == Opcode.MATMUL:
        d = {"m": 3, "k": layout.matmul.k_align, "n": 4, "wbits": 4, "out_mode": 0, "out_shift": 5,
             "x_addr": 64 * w, "s_addr": 128 * w, "q_addr": 0, "y_addr": 256 * w}
        d.update({f"w_addr{i}": (512 + 64 * i) * w for i in range(layout.mm.weight_ports)})
    elif opcode == Opcode.ATTENTION:
        att = layout.attention
        d = {"head_dim": att.head_dim, "kv_heads": 2, "q_per_kv": 2, "n_q": 1, "ctx_len": 10, "window": 0,
             "sink": 0, "kv_bits": 8, "q_addr": 64 * w, "bt_addr": 128 * w, "k_pool": 4096, "v_pool": 8192,
             "o_addr": 256 * w}
    else:
        d = {"mode": 0, "src_port": 0, "src_addr": 64 * w, "dst_port": 1, "dst_addr": 4096 * w,
             "bytes": 4 * w, "value": 0x1234}
    d = {**{n: 0 for n in layout.fields_for(opcode)[1:]}, **d}      # slots not named are 0
    d["op"] = int(opcode)
    assert layout.validate_descriptor(d) == (ErrorCode.NONE, "")
    return d


def _descriptors(layout, opcode, rng, count=300):
    """Valid descriptors with 0-3 fields changed to an edge value or a random one: several
    faults at once, so the rule order matters."""
    names = layout.fields_for(opcode)[1:]
    edges = _edges(layout)
    out = []
    for _ in range(count):
        d = _valid(layout, opcode)
        for n in rng.sample(names, rng.randrange(0, 4)):
            r = rng.random()
            d[n] = rng.choice(edges) if r < 0.6 else (rng.randrange(0, 64) if r < 0.85 else rng.getrandbits(64))
        out.append(d)
    return out


@pytest.mark.parametrize("opcode", [Opcode.MATMUL, Opcode.ATTENTION, Opcode.COPY])
def test_rtl_checks_agree_with_the_host_checks(layout, opcode):
    rng = random.Random(int(opcode))
    descs = _descriptors(layout, opcode, rng)
    got = rtl_check_codes(layout, opcode, descs)
    want = [int(layout.validate_descriptor(d)[0]) for d in descs]
    assert got == want
    family = layout.family_of(opcode)
    assert set(want) >= {int(ErrorCode.NONE)} | {int(c) for c in family.errors}, set(want)   # every rule hit
