"""The XRT-style kernel shell: AXI-Lite control, AXI4 DMA, command processor, counters.

* :class:`~.control.ControlSlave` - ap_ctrl_hs registers from the layout's register map
* :class:`~.dma.BurstReader` / :class:`~.dma.BurstWriter` - DmaCommand streams to AXI4 bursts
* :class:`~.port.AxiPort` - several readers and a writer sharing one AXI4 manager
* :class:`~.cmdproc.CommandProcessor` - descriptor fetch, validation and dispatch
* :class:`~.kernel.Kernel` - all of the above around a map opcode -> engine (no engine named here)
"""
from .cmdproc import CommandProcessor
from .control import ControlSlave
from .dma import BurstReader, BurstWriter
from .kernel import Kernel
from .port import AxiPort

__all__ = ["ControlSlave", "BurstReader", "BurstWriter", "AxiPort", "CommandProcessor", "Kernel"]
