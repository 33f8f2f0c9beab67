"""What every engine family states once, for the RTL, the golden model and the host alike.

An :class:`EngineFamily` names its config ``kind``, its opcode(s), the u64 descriptor slots of
each opcode, the DMA channels its engine uses (:class:`Channels`), and its descriptor
:class:`Check` rules. A check is written once as a function of the descriptor fields and a
small operator set (:class:`IntOps` here, an Amaranth one in ``hbmforge.generators``), so the
command processor's RTL, ``hbmforge.numerics.program`` and ``host.ProgramBuilder`` reject the
same descriptors with the same code, in the same order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..encodings import ErrorCode, Opcode

__all__ = ["Check", "IntOps", "Channels", "StreamPort", "FamilyRegister", "EngineFamily", "first_error"]


@dataclass(frozen=True)
class Check:
    """One descriptor rule: ``fails(fields, ops)`` is true when the descriptor breaks it.

    ``fields`` maps slot names to values (ints on the host, Amaranth values in RTL);
    ``ops`` supplies what plain operators cannot express for both (see :class:`IntOps`).
    ``why(fields)`` explains a failure on the host.
    """

    code: ErrorCode
    fails: Callable[[Mapping[str, Any], Any], Any]
    why: Callable[[Mapping[str, int]], str]


class IntOps:
    """The check operators on Python integers (the RTL twin lives in ``hbmforge.generators``)."""

    @staticmethod
    def not_(x) -> bool:
        return not x

    @staticmethod
    def any_(*xs) -> bool:
        return any(xs)

    @staticmethod
    def one_of(value: int, choices) -> bool:
        return value in [int(c) for c in choices]

    @staticmethod
    def misaligned(value: int, align: int) -> bool:
        return value % align != 0

    @staticmethod
    def low(value: int, bits: int) -> int:
        return value & ((1 << bits) - 1)


def first_error(checks, fields: Mapping[str, int]) -> tuple[ErrorCode, str]:
    """``(code, why)`` of the first failing check, ``(ErrorCode.NONE, "")`` if all pass."""
    for check in checks:
        if check.fails(fields, IntOps):
            return check.code, check.why(fields)
    return ErrorCode.NONE, ""


@dataclass(frozen=True)
class StreamPort:
    """A top-level AXI4-Stream port the engine owns (docs/architecture.md §6).

    Direction ``"in"``: the kernel gets ``s_axis_<name>`` (``tdata``, ``tlast``, ``tvalid``,
    ``tready``) and the engine member of that name is an ``In`` stream; ``"out"``:
    ``m_axis_<name>``. Unlike the DMA channels, a stream port is wired to its engine at all
    times (not only while it runs a job): packets may arrive whenever the peer sends them.
    """

    name: str
    direction: str          # "in" or "out"
    data_width: int

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name.isidentifier() and self.name.islower()):
            raise ValueError(f"stream port name must be a lower-case identifier, got {self.name!r}")
        if self.direction not in ("in", "out"):
            raise ValueError(f"stream port direction must be 'in' or 'out', got {self.direction!r}")
        if isinstance(self.data_width, bool) or not isinstance(self.data_width, int) or self.data_width < 8 \
                or self.data_width % 8:
            raise ValueError(f"stream port data_width must be a multiple of 8 bits, got {self.data_width!r}")

    @property
    def prefix(self) -> str:
        """The Verilog prefix of its signals: ``s_axis_<name>`` or ``m_axis_<name>``."""
        return f"{'s' if self.direction == 'in' else 'm'}_axis_{self.name}"


@dataclass(frozen=True)
class FamilyRegister:
    """A read-only control register a family adds (its engine drives the value).

    The layout places family registers after the shell's, in family order; the engine's
    signature has an ``Out`` member named ``name.lower()`` that drives it.
    """

    name: str
    width: int              # 32 or 64
    description: str

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name.isidentifier() and self.name.isupper()):
            raise ValueError(f"register name must be an upper-case identifier, got {self.name!r}")
        if self.width not in (32, 64):
            raise ValueError(f"register width must be 32 or 64, got {self.width!r}")


@dataclass(frozen=True)
class Channels:
    """The DMA channels an engine drives (docs/architecture.md §6).

    * ``data_readers``: names of its readers on the ``data`` port, in order; reader ``i``
      of every engine shares the port's reader ``i`` (ARID ``i + 1``; ARID 0 fetches
      descriptors);
    * ``data_writer``: it writes on the ``data`` port (``out_*`` members);
    * ``stream_readers``/``stream_writers``: it reads/writes ports ``w0 .. w<n-1>``;
    * ``streams``: top-level AXI4-Stream ports it owns (:class:`StreamPort`), for example a
      network link; the kernel exposes each one under its own prefix;
    * ``resident``: stream ports (``i`` of ``w<i>``) whose reader and writer it drives at all
      times, not only while it runs a job (a cache filling lines while another engine runs);
      no other engine reaches them, except
    * ``interposes``: resident ports whose channels it serves to the other engines: their
      ``w_cmd[i]``/``w_data[i]``/``sw_*[i]`` reach its ``via_*[j]`` members (``j`` = position in
      ``interposes``) and it decides where the words go (a tile cache in front of the port);
    * ``prefetch``: words of read-ahead: it reads its stream ports through readers of its own
      (ARID 1, a FIFO this deep, background readers beside the others' reader), connected at all
      times, and
    * ``early_during``: the kinds of engine during whose job it takes its next job, if that is the
      next descriptor (its stream reads then run while they run; its data-port traffic waits
      until it is the active engine). At most one engine of a design has a ``prefetch``.
    """

    data_readers: tuple[str, ...] = ()
    data_writer: bool = False
    stream_readers: int = 0
    stream_writers: int = 0
    streams: tuple[StreamPort, ...] = ()
    resident: tuple[int, ...] = ()
    interposes: tuple[int, ...] = ()
    prefetch: int = 0
    early_during: tuple[str, ...] = ()

    def __post_init__(self):
        if self.prefetch and (self.resident or not self.stream_readers):
            raise ValueError("a prefetch needs stream readers of the engine's own and no resident ports")
        if self.early_during and not self.prefetch:
            raise ValueError("early_during needs a prefetch (the early job's stream readers)")
        for i in self.resident:
            if not (i < self.stream_readers and i < self.stream_writers):
                raise ValueError(f"resident stream port w{i} must be one the engine reads and writes")
        if not set(self.interposes) <= set(self.resident):
            raise ValueError(f"interposed ports {self.interposes} must be resident ({self.resident})")


class EngineFamily:
    """The contract of one engine family; subclasses fill in the class attributes and methods."""

    #: the config ``kind`` of this family's engines
    kind: str = ""
    #: the opcodes its engine runs
    opcodes: tuple[Opcode, ...] = ()
    #: the error codes its checks can give (besides the shell's), run-time ones included
    errors: tuple[ErrorCode, ...] = ()
    #: the codes its engine may end a job with at run time (``EngineSignature.fault``)
    runtime_errors: tuple[ErrorCode, ...] = ()

    def fields(self, layout, opcode: Opcode) -> tuple[str, ...]:
        """u64 descriptor slots after ``op``, in order."""
        raise NotImplementedError

    def checks(self, layout, opcode: Opcode) -> tuple[Check, ...]:
        """The descriptor rules, first failing one wins."""
        raise NotImplementedError

    def channels(self, layout) -> Channels:
        raise NotImplementedError

    def registers(self, layout) -> tuple[FamilyRegister, ...]:
        """Read-only registers the family adds to the control map (counters, status)."""
        return ()

    def max_mac_inc(self, layout) -> int:
        """The largest MAC_OPS increment of one cycle (0: the engine does no MACs)."""
        return 0

    def macs_per_cycle(self, layout) -> int:
        """Peak MACs per cycle, the denominator of MAC utilization (0: no MACs)."""
        return 0

    def manifest(self, layout) -> dict:
        """The family's entry in the manifest's ``engines`` list (after ``kind`` and ``name``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<engine family {self.kind!r} ({', '.join(o.name for o in self.opcodes)})>"
