"""Every encoding the RTL and the host share, as ``amaranth.lib.enum`` types with a shape.

A descriptor field or a STATUS code carries its meaning: ``Opcode.MATMUL`` compares equal to
the integer the hardware sees (``IntEnum``), casts to its shape in Amaranth, and names itself
in messages. A new engine family adds its opcode and its error codes here; codes are unique
across families, so one STATUS value always means one thing.
"""
from __future__ import annotations

from amaranth.lib import enum

__all__ = ["Opcode", "ErrorCode", "OutMode", "WeightFormat", "CopyMode", "NetMode", "describe_error"]


class Opcode(enum.IntEnum, shape=8):
    """Descriptor slot 0."""

    END = 0          # stop the program cleanly
    MATMUL = 1       # one matmul layer (hbmforge.engines.matmul)
    ATTENTION = 2    # one attention call (hbmforge.engines.attention)
    COPY = 3         # copy or fill a buffer on any port (hbmforge.engines.copy)
    ALLREDUCE = 5    # all-reduce a buffer through the aggregation switch (hbmforge.engines.network)
    # reserved for the families being added (keep the numbers when you add the member):
    # 4 VECTOR (hbmforge.engines.vector),
    # 6 and 7 for the memory family (tile cache, oblivious map: hbmforge.engines.memory)


class ErrorCode(enum.IntEnum, shape=8):
    """STATUS bits 15:8. The shell's codes first, then each family's (docs/architecture.md §3)."""

    NONE = 0
    BAD_OPCODE = 1       # shell: an opcode no engine of this design runs
    BAD_WBITS = 2        # matmul: a weight format the engine does not accept
    BAD_K = 3            # matmul: K == 0, K > max_k or K % k_align != 0
    BAD_SHAPE = 4        # matmul: M or N zero or wider than 32 bits
    AXI_RESP = 5         # shell: SLVERR/DECERR on any port
    BAD_OUT_MODE = 6     # matmul: unknown out_mode, or a shift out of range
    MISALIGNED = 7       # any: an address not aligned to the port word
    BAD_HEAD_DIM = 8     # attention: head_dim differs from the engine's
    BAD_HEADS = 9        # attention: kv_heads/q_per_kv zero or too many query heads
    BAD_KV_BITS = 10     # attention: unsupported KV width
    BAD_CONTEXT = 11     # attention: n_q/ctx_len out of range
    BAD_MASK = 12        # attention: window/sink out of range
    BAD_PORT = 13        # copy: a port index the design does not have, or a port that cannot be written
    BAD_LENGTH = 14      # copy: zero bytes, not whole words, or more than one DMA transfer
    BAD_COPY_MODE = 15   # copy: unknown mode
    OVERLAP = 16         # copy: source and destination ranges overlap
    BAD_NET_MODE = 40    # network: unknown all-reduce mode
    BAD_NET_JOB = 41     # network: job id or epoch out of range
    BAD_NET_WORKER = 42  # network: worker id or member set out of range, or the worker not a member
    BAD_NET_LENGTH = 43  # network: zero bytes, not whole words, or too many packets
    BAD_NET_WINDOW = 44  # network: window zero or above the engine's
    BAD_NET_TIMEOUT = 45 # network: timeout or retries zero or out of range
    NET_TIMEOUT = 46     # network (run time): a packet got no answer after every retransmission
    NET_COLLISION = 47   # network (run time): the switch holds this job for another member set or op
    NET_STALE = 48       # network (run time): the switch has another epoch for this job (reset it)
    NET_MISMATCH = 49    # network (run time): the members disagree on a block's offset or length
    # reserved ranges for the families being added (add members in your range only):
    # 20-29 vector, 30-39 memory (tile cache, oblivious map),
    # 50-54 matmul extensions (bias, split K, sparsity), 55-59 attention extensions


_ERROR_TEXT = {
    ErrorCode.NONE: "none",
    ErrorCode.BAD_OPCODE: "unknown opcode",
    ErrorCode.BAD_WBITS: "unsupported weight bits",
    ErrorCode.BAD_K: "K out of range or not aligned",
    ErrorCode.BAD_SHAPE: "M or N is zero",
    ErrorCode.AXI_RESP: "AXI error response",
    ErrorCode.BAD_OUT_MODE: "bad output mode or shift",
    ErrorCode.MISALIGNED: "address not aligned to the port word",
    ErrorCode.BAD_HEAD_DIM: "head_dim differs from the attention engine's",
    ErrorCode.BAD_HEADS: "kv_heads or q_per_kv zero, or more than 1024 query heads",
    ErrorCode.BAD_KV_BITS: "unsupported kv_bits",
    ErrorCode.BAD_CONTEXT: "n_q or ctx_len zero, n_q > ctx_len, or ctx_len above max_context",
    ErrorCode.BAD_MASK: "window or sink above max_context, or sink without a window",
    ErrorCode.BAD_PORT: "port index out of range or not writable",
    ErrorCode.BAD_LENGTH: "length zero, not whole words, or above one DMA transfer",
    ErrorCode.BAD_COPY_MODE: "unknown copy mode",
    ErrorCode.OVERLAP: "source and destination overlap",
    ErrorCode.BAD_NET_MODE: "unknown all-reduce mode",
    ErrorCode.BAD_NET_JOB: "job id or epoch out of range",
    ErrorCode.BAD_NET_WORKER: "worker id or member set out of range, or the worker is not a member",
    ErrorCode.BAD_NET_LENGTH: "all-reduce length zero, not whole words, or too many packets",
    ErrorCode.BAD_NET_WINDOW: "window zero or above the engine's",
    ErrorCode.BAD_NET_TIMEOUT: "timeout or retries out of range",
    ErrorCode.NET_TIMEOUT: "a packet got no answer after every retransmission (a member never joined)",
    ErrorCode.NET_COLLISION: "the switch holds this job id for another member set or op",
    ErrorCode.NET_STALE: "the switch has another epoch for this job (reset the job)",
    ErrorCode.NET_MISMATCH: "the members disagree on a block's offset or length",
}


def describe_error(code: int) -> str:
    """The meaning of a STATUS error code (what the manifest's ``error_codes`` lists)."""
    try:
        return _ERROR_TEXT[ErrorCode(code)]
    except ValueError:
        return f"unknown error code {code}"


class OutMode(enum.IntEnum, shape=1):
    """MATMUL ``out_mode``."""

    INT32 = 0     # sat32(rshift_round(acc, out_shift))
    INT8 = 1      # sat8(rshift_round(acc * mult[n], shift[n]))


class WeightFormat(enum.IntEnum, shape=4):
    """MATMUL ``wbits``: the integer width, or 3 for ternary (log2(3) ~ 1.58 bits)."""

    INT2 = 2
    TERNARY = 3
    INT4 = 4
    INT8 = 8

    @classmethod
    def from_config(cls, fmt) -> "WeightFormat":
        """Config/host format (2, 4, 8 or 'ternary') -> descriptor code."""
        if fmt == "ternary":
            return cls.TERNARY
        if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt in (2, 4, 8):
            return cls(fmt)
        raise ValueError(f"weight format must be one of 2, 4, 8, 'ternary', got {fmt!r}")

    @classmethod
    def code(cls, fmt) -> int:
        """``from_config`` as a plain int (descriptor slot value)."""
        return int(cls.from_config(fmt))

    @property
    def config_name(self):
        """The config/host spelling: 2, 4, 8 or 'ternary'."""
        return "ternary" if self is WeightFormat.TERNARY else int(self)

    @staticmethod
    def name_of(code: int):
        """Descriptor code (int or member) -> config/host format."""
        return WeightFormat(code).config_name

    @property
    def lane_bits(self) -> int:
        """Signed width of one decoded weight (ternary decodes to a 2-bit -1/0/+1)."""
        return 2 if self is WeightFormat.TERNARY else int(self)


class CopyMode(enum.IntEnum, shape=1):
    """COPY ``mode``."""

    COPY = 0      # read ``bytes`` at src, write them at dst
    FILL = 1      # write ``bytes`` of the repeated 64-bit ``value`` at dst


class NetMode(enum.IntEnum, shape=2):
    """ALLREDUCE ``mode`` (and, SUM or MAX, the ``op`` of every data packet)."""

    SUM = 0       # int32 lanes added modulo 2**32 (associative: any arrival order, one result)
    MAX = 1       # signed int32 lane maximum (the hosts agree on per-block exponents with it)
    RESET = 2     # forget the job's slots: endpoint versions and the switch's state, new ``epoch``
