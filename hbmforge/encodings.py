"""Every encoding the RTL and the host share, as ``amaranth.lib.enum`` types with a shape.

A descriptor field or a STATUS code carries its meaning: ``Opcode.MATMUL`` compares equal to
the integer the hardware sees (``IntEnum``), casts to its shape in Amaranth, and names itself
in messages. A new engine family adds its opcode and its error codes here; codes are unique
across families, so one STATUS value always means one thing.
"""
from __future__ import annotations

from amaranth.lib import enum

__all__ = ["Opcode", "ErrorCode", "OutMode", "WeightFormat", "BiasMode", "AttentionMode", "CopyMode", "NetMode", "VectorIn", "VectorOut",
           "VectorAct", "VectorCombine", "VectorNorm", "CacheAction", "OmapAction", "OmapOp", "OmapStatus",
           "describe_error"]


class Opcode(enum.IntEnum, shape=8):
    """Descriptor slot 0."""

    END = 0          # stop the program cleanly
    MATMUL = 1       # one matmul layer (hbmforge.engines.matmul)
    ATTENTION = 2    # one attention call (hbmforge.engines.attention)
    COPY = 3         # copy or fill a buffer on any port (hbmforge.engines.copy)
    VECTOR = 4       # row-wise/element-wise ops between layers (hbmforge.engines.vector)
    ALLREDUCE = 5    # all-reduce a buffer through the aggregation switch (hbmforge.engines.network)
    CACHE = 6        # tile cache: configure, prefetch, flush, invalidate, stats (hbmforge.engines.memory)
    OMAP = 7         # oblivious map: a batch of queries, a bulk load, the format sweep (hbmforge.engines.memory)


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
    VEC_SHAPE = 20       # vector: m or dim zero, dim above max_dim or not whole int8 words
    VEC_FORMAT = 21      # vector: unknown or unsupported input/output format, activation, combine, norm, rope
    VEC_NORM = 22        # vector: eps or norm shift out of range
    VEC_KV = 23          # vector: KV width, pool port or positions out of range
    BAD_NET_MODE = 40    # network: unknown all-reduce mode
    BAD_NET_JOB = 41     # network: job id or epoch out of range
    BAD_NET_WORKER = 42  # network: worker id or member set out of range, or the worker not a member
    BAD_NET_LENGTH = 43  # network: zero bytes, not whole words, or too many packets
    BAD_NET_WINDOW = 44  # network: window zero or above the engine's, or inflight zero or above window
    BAD_NET_TIMEOUT = 45 # network: timeout or retries zero or out of range
    NET_TIMEOUT = 46     # network (run time): a packet got no answer after every retransmission
    NET_COLLISION = 47   # network (run time): the switch holds this job for another member set or op
    NET_STALE = 48       # network (run time): the switch has another epoch for this job (reset it)
    NET_MISMATCH = 49    # network (run time): the members disagree on a block's offset or length
    BAD_BIAS = 50        # matmul: unknown bias mode, or bias_shift out of range
    BAD_CACHE_ACTION = 30  # memory: unknown cache action, or the design has no tile cache
    BAD_CACHE_RANGE = 31   # memory: a cache range or store not line-aligned, empty or too large
    BAD_OMAP_ACTION = 32   # memory: unknown oblivious-map action, or the design has no oblivious map
    BAD_OMAP_COUNT = 33    # memory: oblivious-map record count zero or above the engine's limit
    OMAP_TAMPERED = 34     # memory (run time): a host page failed authentication (tampered or replayed)
    OMAP_STASH_FULL = 35   # memory (run time): the stash has no free node (an overflow event)
    OMAP_CORRUPT = 36      # memory (run time): the trusted state does not hold an entry where it says
    OMAP_BAD_STATE = 37    # memory (run time): the control block's geometry is not one this engine runs
    BAD_ATTN_MODE = 55   # attention: unknown mode, valid_len out of range, or a mask the mode forbids
    # reserved ranges for the families being added (add members in your range only):
    # 24-29 vector, 38-39 memory,
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
    ErrorCode.VEC_SHAPE: "m or dim zero, dim above max_dim or not whole int8 words",
    ErrorCode.VEC_FORMAT: "unknown or unsupported vector format, activation, combine, norm, rope or res_out",
    ErrorCode.VEC_NORM: "eps or norm shift out of range",
    ErrorCode.VEC_KV: "KV width, pool port or positions out of range",
    ErrorCode.BAD_NET_MODE: "unknown all-reduce mode",
    ErrorCode.BAD_NET_JOB: "job id or epoch out of range",
    ErrorCode.BAD_NET_WORKER: "worker id or member set out of range, or the worker is not a member",
    ErrorCode.BAD_NET_LENGTH: "all-reduce length zero, not whole words, or too many packets",
    ErrorCode.BAD_NET_WINDOW: "window zero or above the engine's, or inflight zero or above the window",
    ErrorCode.BAD_NET_TIMEOUT: "timeout or retries out of range",
    ErrorCode.NET_TIMEOUT: "a packet got no answer after every retransmission (a member never joined)",
    ErrorCode.NET_COLLISION: "the switch holds this job id for another member set or op",
    ErrorCode.NET_STALE: "the switch has another epoch for this job (reset the job)",
    ErrorCode.NET_MISMATCH: "the members disagree on a block's offset or length",
    ErrorCode.BAD_BIAS: "unknown bias mode, or bias_shift out of range",
    ErrorCode.BAD_CACHE_ACTION: "unknown cache action, or the design has no tile cache",
    ErrorCode.BAD_CACHE_RANGE: "cache range or store not line-aligned, empty or too large",
    ErrorCode.BAD_OMAP_ACTION: "unknown oblivious-map action, or the design has no oblivious map",
    ErrorCode.BAD_OMAP_COUNT: "oblivious-map record count zero or above the engine's limit",
    ErrorCode.OMAP_TAMPERED: "a host page of the oblivious map failed authentication (tampered or replayed); "
                             "the query returned nothing",
    ErrorCode.OMAP_STASH_FULL: "the oblivious map's stash has no free node (an overflow event)",
    ErrorCode.OMAP_CORRUPT: "the oblivious map's trusted state does not hold an entry where it says",
    ErrorCode.OMAP_BAD_STATE: "the oblivious map's control block describes a geometry this engine does not run",
    ErrorCode.BAD_ATTN_MODE: "unknown attention mode, valid_len above ctx_len (or set in causal mode), "
                             "or a window/sink with bidirectional attention",
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


class BiasMode(enum.IntEnum, shape=1):
    """MATMUL ``bias``."""

    NONE = 0      # no bias
    INT32 = 1     # acc += bias[n] << bias_shift (int32 per column, before the output stage)


class AttentionMode(enum.IntEnum, shape=1):
    """ATTENTION ``mode``."""

    CAUSAL = 0          # query at position p sees keys j <= p (and the window/sink mask)
    BIDIRECTIONAL = 1   # every query sees keys j < valid_len (encoders; no window, no sink)


class CopyMode(enum.IntEnum, shape=1):
    """COPY ``mode``."""

    COPY = 0      # read ``bytes`` at src, write them at dst
    FILL = 1      # write ``bytes`` of the repeated 64-bit ``value`` at dst


class NetMode(enum.IntEnum, shape=2):
    """ALLREDUCE ``mode`` (and, SUM or MAX, the ``op`` of every data packet)."""

    SUM = 0       # int32 lanes added modulo 2**32 (associative: any arrival order, one result)
    MAX = 1       # signed int32 lane maximum (the hosts agree on per-block exponents with it)
    RESET = 2     # forget the job's slots: endpoint versions and the switch's state, new ``epoch``


class VectorIn(enum.IntEnum, shape=2):
    """VECTOR ``a_fmt`` / ``b_fmt``: how an input operand sits in memory (docs/architecture.md §9)."""

    NONE = 0      # no operand (``b_fmt`` only)
    RES32 = 1     # int32 fixed point in the matmul's blocked layout, used as it is
    ACC32 = 2     # a matmul's INT32 output (blocked), times the row's scale and the column's multiplier
    ROWS32 = 3    # int32 rows (attention outputs), times the column's multiplier


class VectorOut(enum.IntEnum, shape=2):
    """VECTOR ``out_fmt``."""

    RES32 = 0     # int32 fixed point, blocked (the residual stream)
    ACT8 = 1      # int8 rows + one scale record per row (the next matmul's input)
    QREC = 2      # attention Q records: per (token, head) int8 values, score multiplier and shift
    KV = 3        # appended to the paged KV cache: values and group mantissas of each (token, KV head)


class VectorAct(enum.IntEnum, shape=2):
    """VECTOR ``act``: the activation applied to operand A (after its bias)."""

    NONE = 0
    GELU = 1      # exact-erf GELU (hbmforge.numerics.nonlinear, tail table)
    SILU = 2      # x * sigmoid(x)


class VectorCombine(enum.IntEnum, shape=2):
    """VECTOR ``combine``: how operand B joins A."""

    NONE = 0
    ADD = 1       # a + b (residual add)
    MUL = 2       # a * b (the SwiGLU gate with act SILU)


class VectorNorm(enum.IntEnum, shape=2):
    """VECTOR ``norm``: the row normalization after the element-wise stage."""

    NONE = 0
    RMS = 1       # RMSNorm (gamma)
    LAYER = 2     # LayerNorm (gamma, beta)


class CacheAction(enum.IntEnum, shape=3):
    """CACHE ``action`` (hbmforge.engines.memory)."""

    CONFIGURE = 0     # set the HBM store and the cacheable window; every line invalid, counters kept
    PREFETCH = 1      # fill the lines of [addr, addr + bytes) in the background (no data returned)
    FLUSH = 2         # write the dirty lines of [addr, addr + bytes) back (they stay valid)
    INVALIDATE = 3    # drop the lines of [addr, addr + bytes) without writing them back
    STATS = 4         # write the counters and the tag array to [addr, ...) on the data port


class OmapAction(enum.IntEnum, shape=2):
    """OMAP ``action`` (hbmforge.engines.memory)."""

    QUERY = 0         # run ``count`` query records, one constant-time slot each
    BULK = 1          # insert ``count`` records into the stash (no host traffic)
    FORMAT = 2        # write every host bin once (evicting the stash into it), in bin order


class OmapOp(enum.IntEnum, shape=2):
    """The operation of one oblivious-map query record."""

    NOP = 0           # a dummy query: a random bin is read and written, nothing changes
    GET = 1
    PUT = 2
    DELETE = 3


class OmapStatus(enum.IntEnum, shape=4):
    """The status word of one oblivious-map result record."""

    NOP = 0           # a dummy query
    FOUND = 1         # GET: the value follows
    NOT_FOUND = 2     # GET or DELETE of an absent key
    INSERTED = 3      # PUT of a new key
    UPDATED = 4       # PUT of a present key
    DELETED = 5       # DELETE of a present key
    FULL = 6          # PUT of a new key into a full map (or a full directory bucket): nothing changed
