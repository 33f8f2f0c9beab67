"""VECTOR descriptor rules: the command processor's RTL form gives the same code as the host/golden
form on valid descriptors with edge and random fields (several faults at once, so the order
counts), with and without an attention engine in the design; every rule is hit."""
from __future__ import annotations

import random

import pytest

from designs import tiny_vector_config_dict
from hbmforge.config import parse_config
from hbmforge.encodings import ErrorCode, Opcode, VectorIn, VectorNorm, VectorOut
from sim_helpers import rtl_check_codes
from hbmforge.layout import DesignLayout

U64 = (1 << 64) - 1


def _valid(lay) -> dict:
    w = lay.word_bytes
    d = {n: 0 for n in lay.fields_for(Opcode.VECTOR)[1:]}
    d.update(m=3, dim=4 * w, a_fmt=VectorIn.ACC32, a_addr=64 * w, a_stride=32 * w, a_scale=8 * w, a_cols=16 * w,
             norm=VectorNorm.RMS, gamma_addr=24 * w, eps_q=1 << 20, eps_shift=4, norm_shift=20,
             out_fmt=VectorOut.ACT8, y_addr=128 * w, y_scale=256 * w)
    if lay.attention is not None:
        d.update(out_fmt=VectorOut.KV, kv_bits=8, port=1, pos0=5, bt_addr=512 * w, pool=1024 * w,
                 consts_addr=40 * w, rope=1, rope_addr=48 * w, dim=lay.attention.head_dim * 2)
    d["op"] = int(Opcode.VECTOR)
    assert lay.validate_descriptor(d) == (ErrorCode.NONE, ""), lay.validate_descriptor(d)
    return d


def _hp_layout():
    """Head-parallel attention, 8 KV ports: kv_groups 0, 1, 2 or 4."""
    cfg = tiny_vector_config_dict("tiny_vec_hp4")
    cfg["engines"][1].update(rows=4, kv_ports=8, head_parallel=True)
    return DesignLayout(parse_config(cfg))


@pytest.mark.parametrize("attention", [True, False, "head_parallel"])
def test_rtl_vector_checks_agree_with_the_host_checks(attention):
    lay = _hp_layout() if attention == "head_parallel" else \
        DesignLayout(parse_config(tiny_vector_config_dict(attention=attention)))
    w = lay.word_bytes
    rng = random.Random(7 + int(bool(attention)) + 10 * (attention == "head_parallel"))
    edges = sorted({0, 1, 2, 3, 4, 5, 7, 8, w - 1, w, w + 1, 16, 31, 32, 33, 64, 127, 128, 255, 256, 257,
                    lay.config.engine("vector").max_dim, 64, 65, (1 << 32) - 1, 1 << 32, U64, 1 << 40})
    names = lay.fields_for(Opcode.VECTOR)[1:]
    descs = []
    for _ in range(600):
        d = _valid(lay)
        if attention == "head_parallel" and rng.random() < 0.5:      # a valid append over port groups
            d.update(kv_groups=rng.choice([2, 4]), dim=lay.attention.head_dim * 4, port=rng.choice([1, 2]))
        for n in rng.sample(names, rng.randrange(0, 4)):
            r = rng.random()
            d[n] = rng.choice(edges) if r < 0.6 else (rng.randrange(0, 8) if r < 0.85 else rng.getrandbits(64))
        descs.append(d)
    got = rtl_check_codes(lay, Opcode.VECTOR, descs)
    want = [int(lay.validate_descriptor(d)[0]) for d in descs]
    assert got == want
    rules = {int(c) for c in lay.family_of(Opcode.VECTOR).errors} - ({0} if attention else {int(ErrorCode.VEC_KV)})
    assert set(want) >= rules | {0}, set(want)             # every rule that can fail here is hit


def test_kv_groups_rules_name_the_field_and_the_allowed_values():
    lay = _hp_layout()
    d = _valid(lay)
    hd = lay.attention.head_dim
    d.update(kv_groups=4, dim=4 * hd, port=1)
    assert lay.validate_descriptor(d) == (ErrorCode.NONE, "")
    for bad in (dict(kv_groups=3), dict(kv_groups=8), dict(kv_groups=4, port=3),     # w2 + 2 x 3 = w8: no such port
                dict(kv_groups=4, dim=2 * hd), dict(kv_groups=2, dim=3 * hd)):
        code, why = lay.validate_descriptor({**d, **bad})
        assert code == ErrorCode.VEC_KV, (bad, code)
        assert "kv_groups one of [0, 1, 2, 4]" in why and f"kv_groups {bad['kv_groups']}" in why
    # a one-pool design allows no port groups
    plain = DesignLayout(parse_config(tiny_vector_config_dict()))
    code, why = plain.validate_descriptor({**_valid(plain), "kv_groups": 2})
    assert code == ErrorCode.VEC_KV and "kv_groups one of [0, 1]" in why
