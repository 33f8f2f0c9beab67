"""The engine contract on the RTL side: ``EngineSignature`` and the RTL form of descriptor checks.

Every engine family plugs into the kernel the same way (docs/architecture.md §6)::

    command processor --job--> engine --done--> command processor
                               engine <--> DMA channels of its ``Channels`` (hbmforge.engines)
                               engine --busy/stall/mac_inc--> performance counters

The kernel takes a map opcode -> engine and checks each engine's signature against the
channels its family declares, so adding a family touches no shell code.
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Cat, Const, Module, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hbmforge.encodings import ErrorCode
from hbmforge.engines import Channels, FamilyRegister
from hbmforge.mathutil import exact_log2

from .streams import JobDone, dma_command_stream, word_stream

__all__ = ["EngineSignature", "AxiStreamSignature", "RtlOps", "rtl_error_code"]


class AxiStreamSignature(wiring.Signature):
    """AXI4-Stream, source side: ``tdata``, ``tlast``, ``tvalid`` out, ``tready`` in.

    Packets are whole ``tdata`` words (no ``tkeep``); ``tlast`` marks a packet's last word.
    A top-level member ``s_axis_net`` of this signature (flipped) gives the Verilog ports
    ``s_axis_net_tdata`` ... that Vivado infers as an AXI4-Stream interface.
    """

    def __init__(self, data_width: int):
        if isinstance(data_width, bool) or not isinstance(data_width, int) or data_width < 8 or data_width % 8:
            raise ValueError(f"data_width must be a multiple of 8 bits, got {data_width!r}")
        self._data_width = data_width
        super().__init__({"tdata": Out(data_width), "tlast": Out(1), "tvalid": Out(1), "tready": In(1)})

    @property
    def data_width(self) -> int:
        return self._data_width

    def __eq__(self, other):
        return isinstance(other, AxiStreamSignature) and other.data_width == self.data_width

    def __repr__(self):
        return f"AxiStreamSignature({self._data_width})"


class EngineSignature(wiring.Signature):
    """Engine side of the shell/engine contract.

    * ``job`` -> one validated descriptor, as a record of ``job_layout`` (its members are
      descriptor slot names; an array member ``x`` of ``n`` entries takes slots ``x0 .. x<n-1>``;
      a member ``op`` gets the opcode). ``done`` <- one record when the job's outputs are
      written and acknowledged (``error``: an AXI error response was seen).
    * Per data-port reader ``r`` of ``channels.data_readers``: ``r_cmd`` -> DmaCommands,
      ``r_data`` <- exactly ``bytes / word_bytes`` words per command, in order.
    * ``data_writer``: ``out_cmd``/``out_data`` -> and ``out_done`` <- one record per command.
    * ``stream_readers`` ``n``: arrays ``w_cmd[n]``/``w_data[n]`` for ports ``w0 .. w<n-1>``;
      ``stream_writers`` ``n``: ``sw_cmd[n]``/``sw_data[n]``/``sw_done[n]``.
    * ``busy`` (a job is running), ``stall`` (busy but waiting for data or credit) and
      ``mac_inc`` (MACs done this cycle, at most ``max_mac_inc``) feed the counters.
    * Per :class:`~hbmforge.engines.StreamPort` of ``channels.streams``: a member named after its
      prefix, ``s_axis_<name>`` (``In``) or ``m_axis_<name>`` (``Out``), wired to the kernel's
      top-level port of that name at all times.
    * ``channels.interposes`` ``(i, ...)``: arrays ``via_cmd``/``via_data`` (a read channel) and
      ``via_wcmd``/``via_wdata``/``via_wdone`` (a write channel) that serve the other engines'
      ``w_cmd[i]`` ... of each interposed port, entry ``j`` for ``interposes[j]``; the engine's
      own ``w_cmd[i]`` ... of its ``resident`` ports reach the port at all times.
    * ``faults``: an ``Out`` member ``fault`` (an ``ErrorCode``) that the engine holds with
      ``done``: non-zero ends the run with that code (a run-time error of its family).
    * Per :class:`~hbmforge.engines.FamilyRegister` of ``registers``: an ``Out`` member
      ``<name in lower case>`` driving that register, and one ``clear`` input that pulses when
      a run starts (so per-run counters restart, like the shell's).
    """

    def __init__(self, *, job_layout, data_width: int, channels: Channels, max_mac_inc: int = 0,
                 registers=(), faults: bool = False):
        if not isinstance(channels, Channels):
            raise TypeError(f"channels must be a hbmforge.engines.Channels, got {channels!r}")
        if isinstance(data_width, bool) or not isinstance(data_width, int) or data_width < 8:
            raise ValueError(f"data_width must be an int >= 8, got {data_width!r}")
        if isinstance(max_mac_inc, bool) or not isinstance(max_mac_inc, int) or max_mac_inc < 0:
            raise ValueError(f"max_mac_inc must be an int >= 0, got {max_mac_inc!r}")
        registers = tuple(registers)
        if not all(isinstance(r, FamilyRegister) for r in registers):
            raise TypeError(f"registers must be hbmforge.engines.FamilyRegister records, got {registers!r}")
        self._job_layout = data.Layout.cast(job_layout)
        self._data_width, self._channels, self._max_mac_inc = data_width, channels, max_mac_inc
        self._registers = registers
        self._faults = bool(faults)
        members = {"job": In(stream.Signature(self._job_layout)), "done": Out(stream.Signature(JobDone))}
        for name in channels.data_readers:
            members[f"{name}_cmd"] = Out(dma_command_stream())
            members[f"{name}_data"] = In(word_stream(data_width))
        if channels.data_writer:
            members.update(out_cmd=Out(dma_command_stream()), out_data=Out(word_stream(data_width)),
                           out_done=In(stream.Signature(JobDone)))
        n = channels.stream_readers
        if n:
            members.update(w_cmd=Out(dma_command_stream()).array(n),
                           w_data=In(word_stream(data_width)).array(n))
        n = channels.stream_writers
        if n:
            members.update(sw_cmd=Out(dma_command_stream()).array(n),
                           sw_data=Out(word_stream(data_width)).array(n),
                           sw_done=In(stream.Signature(JobDone)).array(n))
        n = len(channels.interposes)
        if n:                   # the other engines' channels of the ports it serves (a cache in front)
            members.update(via_cmd=In(dma_command_stream()).array(n), via_data=Out(word_stream(data_width)).array(n),
                           via_wcmd=In(dma_command_stream()).array(n), via_wdata=In(word_stream(data_width)).array(n),
                           via_wdone=Out(stream.Signature(JobDone)).array(n))
        members.update(busy=Out(1), stall=Out(1), mac_inc=Out(range(max_mac_inc + 1)))
        for port in channels.streams:
            sig = AxiStreamSignature(port.data_width)
            members[port.prefix] = In(sig) if port.direction == "in" else Out(sig)
        for reg in registers:
            name = reg.name.lower()
            if name in members or name == "clear":
                raise ValueError(f"register {reg.name} clashes with the engine member {name!r}")
            members[name] = Out(reg.width)
        if registers:
            members["clear"] = In(1)
        if faults:
            members["fault"] = Out(ErrorCode)
        super().__init__(members)

    @property
    def job_layout(self) -> data.Layout:
        return self._job_layout

    @property
    def data_width(self) -> int:
        return self._data_width

    @property
    def channels(self) -> Channels:
        return self._channels

    @property
    def max_mac_inc(self) -> int:
        return self._max_mac_inc

    @property
    def registers(self) -> tuple:
        return self._registers

    @property
    def faults(self) -> bool:
        return self._faults

    def __eq__(self, other):
        return (isinstance(other, EngineSignature) and other.job_layout == self.job_layout
                and other.data_width == self.data_width and other.channels == self.channels
                and other.max_mac_inc == self.max_mac_inc and other.registers == self.registers
                and other.faults == self.faults)

    def __repr__(self):
        regs = f", registers={[r.name for r in self._registers]}" if self._registers else ""
        regs += ", faults=True" if self._faults else ""
        return (f"EngineSignature(job_layout={self._job_layout!r}, data_width={self._data_width}, "
                f"channels={self._channels!r}, max_mac_inc={self._max_mac_inc}{regs})")


class RtlOps:
    """The check operators of :class:`hbmforge.engines.IntOps` on Amaranth values."""

    @staticmethod
    def _bit(x) -> Value:
        if isinstance(x, (bool, int)):
            return Const(int(bool(x)), 1)
        return Value.cast(x).bool()

    @staticmethod
    def not_(x) -> Value:
        return ~RtlOps._bit(x)

    @staticmethod
    def any_(*xs) -> Value:
        return Cat(*(RtlOps._bit(x) for x in xs)).any()

    @staticmethod
    def one_of(value, choices) -> Value:
        return Cat(*(value == int(c) for c in choices)).any()

    @staticmethod
    def misaligned(value, align: int) -> Value:
        bits = exact_log2(align, "alignment")
        return value[:bits].any() if bits else Const(0, 1)

    @staticmethod
    def low(value, bits: int) -> Value:
        return value[:bits]


def rtl_error_code(m: Module, checks, fields: dict, *, name: str = "check_code") -> Signal:
    """The error code of the first failing check (``ErrorCode.NONE`` if none), combinational."""
    code = Signal(ErrorCode, name=name)
    for check in reversed(checks):              # the last assignment wins: the first check
        with m.If(RtlOps._bit(check.fails(fields, RtlOps))):
            m.d.comb += code.eq(check.code)
    return code
