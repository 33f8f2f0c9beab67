"""Descriptor checks for ATTENTION, in the order of :func:`hbmforge.attention_layout.validate_attention`."""
from __future__ import annotations

from amaranth.hdl import Cat

from ...attention_layout import MAX_HEADS, AttnError

__all__ = ["attention_checks"]


def attention_checks(fields: dict, layout) -> list:
    """``[(cond, code), ...]``: ``cond`` true when the descriptor fails that check; the first
    failing check wins. ``fields`` maps each ATTENTION field name to its u64 slot value."""
    att = layout.config.attention
    align_bits = layout.word_bytes.bit_length() - 1
    kvh, grp = fields["kv_heads"], fields["q_per_kv"]
    heads = kvh[:11] * grp[:11]                     # only looked at when both are <= MAX_HEADS
    n_q, ctx = fields["n_q"], fields["ctx_len"]
    win, sink = fields["window"], fields["sink"]

    def misaligned(v):
        return v[:align_bits].any() if align_bits else 0

    addr_bad = 0
    for name in ("q_addr", "bt_addr", "k_pool", "v_pool", "o_addr"):
        addr_bad = addr_bad | misaligned(fields[name])
    return [
        (fields["head_dim"] != att.head_dim, AttnError.BAD_HEAD_DIM),
        ((kvh == 0) | (grp == 0) | (kvh > MAX_HEADS) | (grp > MAX_HEADS) | (heads > MAX_HEADS),
         AttnError.BAD_HEADS),
        (~Cat(*(fields["kv_bits"] == b for b in att.kv_bits)).any(), AttnError.BAD_KV_BITS),
        ((n_q == 0) | (ctx == 0) | (ctx > att.max_context) | (n_q > ctx), AttnError.BAD_CONTEXT),
        ((win > att.max_context) | (sink > att.max_context) | ((sink != 0) & (win == 0)), AttnError.BAD_MASK),
        (addr_bad, AttnError.MISALIGNED),
    ]
