"""Low-bit matmul engine generator (int8 activations x int2/int4/int8/ternary weights).

:class:`~.engine.MatmulEngine` implements ``MatmulEngineSignature`` (docs/architecture.md
§6) bit-exactly with :mod:`hbmforge.numerics.matmul` (§5). Modules, in dataflow order:

* ``geometry`` - the engine's constants and the *pass* record (a K slice over a chunk of rows);
* ``sequencer`` - takes a job, sizes its passes and buffers (``DesignLayout.matmul``), issues
  every DMA command as early as the readers take them, sends ``done`` after the last
  ``out_done``;
* ``inline`` - with ``scale_stream: inline``, split the combined stripe words into weight words
  and scale words (the scales travel in the weight stripes);
* ``unpack`` / ``gearbox`` - zip the ``P`` weight stripes, cut ``L``-lane chunks (split or
  gather per weight width), and the scale / parameter word streams into items;
* ``wtile`` - the weight ring: ``2 x tile_n`` columns of decoded weights and group scales, so
  every row block of a chunk reuses one fetch;
* ``partials`` / ``actbuf`` - the ``act`` words: split-K partial sums to a queue, activations to
  the activation ring of row blocks (more rows at smaller K);
* ``colparams`` - requant parameters and bias of two weight tiles;
* ``scheduler`` - the loop nest (tile, row block, column, K chunk), ring bookkeeping and the
  fire condition;
* ``array`` / ``tlmm`` - ``R x L`` products and the per-group adder trees (modulo
  ``2^sum_bits`` with a +128 activation offset), or the ternary table lookup;
* ``accum`` - group partials x scale mantissa into ``acc_bits`` column accumulators;
* ``requant`` - bias or partial sums added, then the INT32 / INT8 / raw int64 output stage
  (all arithmetic at most 64 bits wide);
* ``pack`` - R results per column into the blocked Y (or partial-sum) word stream, zero padded;
* ``testing`` - §4 packers and an amaranth.sim bench that serves the DMA streams.

Timing: one fire per cycle whenever the weight line, the row block, and at a column's last
fire the column's parameters, partial sums and output credit are there. A column leaves the
array ``MatmulEngine.latency`` cycles after its last fire (13 on the starter config); a column
FIFO of ``fifo_depth`` entries gives the array credit, so back-pressure on ``out_data`` only ever
stalls the array.
"""
