"""In-switch reduction: the aggregation switch and the device-side ALLREDUCE endpoint.

* :class:`~.switch.AggregationSwitch`: N AXI4-Stream ports, a pool of aggregation slots with
  two copies each, per-slot worker bitmaps, int32 sum/max, multicast of finished results,
  several jobs, and the memory-semantic mode (reduce-on-read, multicast store).
* :class:`~.endpoint.NetworkEngine`: the kernel's ALLREDUCE engine (the engine contract's
  ``network`` family) on the kernel's ``s_axis_net``/``m_axis_net`` ports.

The packet format and every rule are in :mod:`hbmforge.engines.network`; the golden models
in :mod:`hbmforge.numerics.network`; docs/engines/network.md is the datasheet.
"""
