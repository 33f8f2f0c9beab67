"""Low-bit matmul engine generator (int8/int4 weights x int8 activations).

:class:`~.engine.MatmulEngine` implements ``MatmulEngineSignature`` (docs/architecture.md
§6) bit-exactly with :mod:`hbmforge.numerics.matmul` (§5). Modules, in dataflow order:

* ``sequencer`` - takes a job, sizes its buffers (``DesignLayout.*_bytes``), issues every
  DMA command as early as the readers take them, sends ``done`` after ``out_done``;
* ``unpack`` / ``gearbox`` - zip the ``P`` weight stripes, cut ``L``-lane chunks (split or
  gather per weight width), and the scale / requant word streams into items;
* ``actbuf`` - two banks of ``R`` rows x ``max_k`` activations: the next row block loads
  while the current one computes;
* ``scheduler`` - the loop nest (row block, column, K chunk) and the fire condition;
* ``array`` - ``R x L`` products and the per-group adder trees (modulo ``2^sum_bits``
  with a +128 activation offset, see its docstring);
* ``accum`` - group partials x scale mantissa into ``acc_bits`` column accumulators;
* ``requant`` - INT32 / INT8 output stage (all arithmetic at most 64 bits wide);
* ``pack`` - R results per column into the blocked Y word stream, zero padded;
* ``testing`` - §4 packers and an amaranth.sim bench that serves the DMA streams.

Timing: one fire per cycle whenever a weight chunk, the row block's activations, the
group's scale(s), the column's requant parameters (INT8) and output credit are there.
A column leaves the array ``MatmulEngine.latency`` cycles after its last fire (11 on the
starter config, 10 on the 2 x 16 test config); a column FIFO of ``fifo_depth`` entries
gives the array credit, so back-pressure on ``out_data`` only ever stalls the array.
"""
