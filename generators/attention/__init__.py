"""Attention engine generator: decode/prefill attention over a paged int8/int4 KV cache.

:class:`~.engine.AttentionEngine` runs ATTENTION descriptors (hbmforge.engines.attention) bit-exactly
with :func:`hbmforge.numerics.attention.run_attention`. Every sub-block takes one
:class:`~.geometry.DatapathGeometry` (the contract's ``AttentionGeometry`` plus lanes, ring slots and
scale blocks). Modules, in dataflow order:

* ``sequencer`` - tiles (``rows`` query rows of one KV head), Q record reads, the mask's token
  ranges cut into per-page segments, one block-table word per segment, K/V commands;
* ``qload`` - the next tile's Q records into a shadow buffer;
* ``feed`` - one segment's scale words into a small buffer, then value words as unpacked items;
* ``score`` - QK (one K word per cycle for all rows), log2-domain scores, double-buffered page bank,
  block max, and the exp2 probability stage (online-softmax rescale entries per segment);
* ``value`` - PV into a rotating accumulator ring (one V word per cycle), the denominator, and the
  output stage (``acc * reciprocal(l)``) that writes int32 rows;
* ``exp2`` / ``recip`` - the fixed-point units; ``signature`` - the job record and engine
  signature (the descriptor checks live in :mod:`hbmforge.engines.attention`); ``testing`` - the
  amaranth.sim bench with poisoned-memory checks.
"""
