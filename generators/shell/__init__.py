"""The XRT-style kernel shell: AXI-Lite control, AXI4 DMA, command processor, counters."""
