"""Golden model of the whole kernel at descriptor level: memory in, memory out.

:func:`execute` interprets a descriptor program the way the command processor
and the matmul engine do (docs/architecture.md §3-§5): fetch each descriptor,
validate it with the hardware's error codes, read the operands from memory in
the device layouts, run :mod:`hbmforge.numerics.matmul`, write Y in the
blocked layout (and, for K split into slices, the int64 partial sums the engine leaves in its
``p_addr`` scratch). It is the bit-exact oracle for the co-simulation and the RTL
tests, and a cross-check of the host packers: it decodes memory with its own
code written from the layout text (bit streams, explicit index formulas),
never by calling the packers in reverse.

Validation order when a descriptor has several faults (lowest check first):
opcode, weight bits, K, M/N (zero or above 32 bits), output mode/shift, bias, address
alignment (a misaligned program address fails descriptor 0); AXI errors
(an operand range outside the memory) are detected before anything is
written, so a failing descriptor leaves Y untouched here (the RTL may have
written part of it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..encodings import BiasMode, ErrorCode, Opcode, OutMode, WeightFormat
from ..layout import DesignLayout
from ..engines.matmul import SPARSE24
from .matmul import add_bias, matmul_accumulate, matmul_int8, matmul_int32
from .sparse import decode_sparse24_stream

__all__ = ["execute", "ProgramResult", "SparseMemory", "MemoryAccessError", "EngineFault"]


class MemoryAccessError(Exception):
    """An access outside the memory: the hardware sees SLVERR/DECERR (ErrorCode.AXI_RESP)."""


class EngineFault(Exception):
    """An engine ended its job with a run-time error of its family (``JobDone``-time code)."""

    def __init__(self, code: ErrorCode, detail: str = ""):
        super().__init__(detail or str(code))
        self.code, self.detail = code, detail


class SparseMemory:
    """A 64-bit byte-addressed memory of 4 KiB pages made on first write; other bytes read 0.

    ``pages`` maps page number -> ``bytearray(PAGE)``; pass a dict to share it.
    """

    PAGE = 4096

    def __init__(self, pages: dict | None = None):
        self.pages = {} if pages is None else pages

    def write(self, addr: int, data) -> None:
        data = memoryview(bytes(data) if not isinstance(data, (bytes, bytearray, memoryview)) else data).cast("B")
        pos = 0
        while pos < len(data):
            page, off = divmod(addr + pos, self.PAGE)
            take = min(self.PAGE - off, len(data) - pos)
            buf = self.pages.get(page)
            if buf is None:
                buf = self.pages[page] = bytearray(self.PAGE)
            buf[off:off + take] = data[pos:pos + take]
            pos += take

    def read(self, addr: int, n: int) -> bytes:
        out = bytearray(n)
        pos = 0
        while pos < n:
            page, off = divmod(addr + pos, self.PAGE)
            take = min(self.PAGE - off, n - pos)
            buf = self.pages.get(page)
            if buf is not None:
                out[pos:pos + take] = buf[off:off + take]
            pos += take
        return bytes(out)

    def check(self, addr: int, n: int) -> None:
        if addr < 0 or addr + n > 1 << 64:
            raise MemoryAccessError(f"[{addr:#x}, {addr + n:#x}) is outside the 64-bit address space")


class _FlatMemory:
    """A bytearray-like object (bytearray, writable memoryview, uint8 array) mapped at address 0."""

    def __init__(self, data):
        self.mem = memoryview(data).cast("B")

    def check(self, addr: int, n: int) -> None:
        if addr < 0 or addr + n > len(self.mem):
            raise MemoryAccessError(f"[{addr:#x}, {addr + n:#x}) is outside the {len(self.mem)}-byte memory")

    def read(self, addr: int, n: int) -> bytes:
        self.check(addr, n)
        return bytes(self.mem[addr:addr + n])

    def write(self, addr: int, data) -> None:
        data = bytes(data)
        self.check(addr, len(data))
        self.mem[addr:addr + len(data)] = data


def _as_memory(memory):
    if isinstance(memory, dict):
        return SparseMemory(memory)
    if hasattr(memory, "read") and hasattr(memory, "write"):
        return memory
    if isinstance(memory, np.ndarray):
        if memory.dtype != np.uint8 or memory.ndim != 1:
            raise TypeError(f"an array memory must be 1-D uint8, got {memory.dtype} {memory.shape}")
        return _FlatMemory(memory)
    if isinstance(memory, (bytearray, memoryview)):
        return _FlatMemory(memory)
    raise TypeError(f"memory must be a dict of pages, a bytearray-like object or have read/write "
                    f"methods, got {type(memory).__name__}")


def _check_range(mem, addr: int, n: int) -> None:
    check = getattr(mem, "check", None)
    if check is not None:
        check(addr, n)


@dataclass
class ProgramResult:
    """What a run leaves in the status registers, plus the traffic it implies."""

    descriptors_done: int = 0
    error: int = ErrorCode.NONE
    error_index: int = 0
    mac_ops: int = 0                                                  # MAC_OPS (valid rows x K x N)
    weight_bytes_read: list[int] = field(default_factory=list)        # per stream port w<i>
    bytes_written: list[int] = field(default_factory=list)            # per port, manifest order
    detail: str = ""                                                  # why a descriptor failed

    @property
    def output_bytes_written(self) -> int:
        """Bytes the engines wrote on the data port."""
        return self.bytes_written[0] if self.bytes_written else 0

    @property
    def status(self) -> int:
        """The STATUS register value: bit0 error, bits 15:8 code, bits 31:16 descriptor index."""
        if self.error == ErrorCode.NONE:
            return 0
        return 1 | (self.error << 8) | ((self.error_index & 0xFFFF) << 16)

    @property
    def ok(self) -> bool:
        return self.error == ErrorCode.NONE


def _read_slice_words(mem, d: dict[str, int], layout: DesignLayout, offset: int, ks: int) -> np.ndarray:
    """One K slice's combined words ``[words, P * word_bytes]`` (word ``c`` of every stripe, stripe 0
    first) from the stripes at ``w_addr<p> + offset``."""
    n, code = d["n"], d["wbits"]
    ports, wb = layout.mm.weight_ports, layout.word_bytes
    port_bytes = layout.matmul.slice_weight_port_bytes(n, ks, code)
    words = port_bytes // wb
    stripes = [np.frombuffer(mem.read(d[f"w_addr{p}"] + offset, port_bytes), dtype=np.uint8).reshape(words, wb)
               for p in range(ports)]
    return np.concatenate(stripes, axis=1)


def _read_slice_weights(mem, d: dict[str, int], layout: DesignLayout, offset: int, ks: int) -> np.ndarray:
    """Decode one K slice's [n, ks] weights from its stripes (at ``w_addr<p> + offset``), literally:
    words -> bytes/bits (byte 0 = least significant), stripe words concatenated with stripe 0 in
    the low bits, then by format:

    * int2/int4/int8 (codes 2, 4, 8): element i = stream bits [i*b, (i+1)*b), two's complement;
    * ternary, '2bit' packing (code 3): 2-bit code i: 00 -> 0, 01 -> +1, 11 -> -1, 10 -> 0;
    * ternary, '5trit' packing: byte j holds elements 5j .. 5j+4; element 5j+t is
      (byte // 3**t) % 3 - 1 for a byte < 243, and 0 for a byte >= 243;
    * 2:4 sparse (code | SPARSE24): :func:`hbmforge.numerics.sparse.decode_sparse24_stream`.
    """
    n, code = d["n"], d["wbits"]
    words = _read_slice_words(mem, d, layout, offset, ks)
    if layout.matmul.inline_scales:        # inline: the weight words only
        words = words[layout.matmul.inline_positions(n, ks, code)[1]]
    stream_bytes = words.reshape(-1)                                          # combined words, in order
    count = n * ks
    if code & SPARSE24:                     # 2:4 sparse: 2 values + two 2-bit indexes per 4 elements
        base = code & ~SPARSE24
        bits = 2 if base == WeightFormat.TERNARY else base
        stream = np.unpackbits(stream_bytes, bitorder="little")
        return decode_sparse24_stream(stream, count, bits, base == WeightFormat.TERNARY).reshape(n, ks)
    if code == WeightFormat.TERNARY and layout.mm.ternary_packing == "5trit":
        b = stream_bytes[: -(-count // 5)].astype(np.int16)
        trits = np.stack([(b // 3 ** t) % 3 - 1 for t in range(5)], axis=1)  # [bytes, 5], t = 0 first
        trits[b >= 243, :] = 0
        return trits.reshape(-1)[:count].reshape(n, ks)
    bits = 2 if code == WeightFormat.TERNARY else code
    stream = np.unpackbits(stream_bytes, bitorder="little")                   # LSB of byte 0 first
    elems = stream[: count * bits].reshape(count, bits)                      # bit j of element i
    value = np.zeros(count, dtype=np.int16)
    for j in range(bits):
        value |= elems[:, j].astype(np.int16) << j
    if code == WeightFormat.TERNARY:
        value = np.array([0, 1, 0, -1], dtype=np.int16)[value]               # 10 is reserved: 0
    else:
        value -= (value >= (1 << (bits - 1))).astype(np.int16) << bits       # two's complement
    return value.reshape(n, ks)


def _read_weights(mem, d: dict[str, int], layout: DesignLayout) -> np.ndarray:
    """W [n, k]: its K slices (each a whole-word stream of [n, k_slice] weights, the last one
    shorter) one after the other in every stripe."""
    geom, k = layout.matmul, d["k"]
    parts, offset = [], 0
    for sl in range(geom.slices(k)):
        ks = geom.slice_k(k, sl)
        parts.append(_read_slice_weights(mem, d, layout, offset, ks))
        offset += geom.slice_weight_port_bytes(d["n"], ks, d["wbits"])
    return np.concatenate(parts, axis=1)


def _read_scales(mem, d: dict[str, int], layout: DesignLayout) -> np.ndarray:
    """S [n, k/G]: per K slice ``[n, ks/G]`` u16 little-endian mantissas, each slice whole words
    (at ``s_addr``; with ``scale_stream: inline`` the slice's scale words in the weight stripes,
    :meth:`~hbmforge.engines.matmul.MatmulGeometry.inline_positions`)."""
    geom, mm, k, n = layout.matmul, layout.mm, d["k"], d["n"]
    if geom.inline_scales:
        parts, offset = [], 0
        for sl in range(geom.slices(k)):
            ks = geom.slice_k(k, sl)
            groups = ks // mm.group_size
            words = _read_slice_words(mem, d, layout, offset, ks)[list(geom.inline_positions(n, ks, d["wbits"])[0])]
            raw = words.reshape(-1)[:n * groups * 2].view("<u2")
            parts.append((raw.astype(np.int64) & ((1 << mm.scale_bits) - 1)).reshape(n, groups))
            offset += geom.slice_weight_port_bytes(n, ks, d["wbits"])
        return np.concatenate(parts, axis=1)
    parts, addr = [], d["s_addr"]
    for sl in range(geom.slices(k)):
        groups = geom.slice_k(k, sl) // mm.group_size
        raw = np.frombuffer(mem.read(addr, n * groups * 2), dtype="<u2")
        parts.append((raw.astype(np.int64) & ((1 << mm.scale_bits) - 1)).reshape(n, groups))
        addr += geom.slice_scale_bytes(n, geom.slice_k(k, sl))
    return np.concatenate(parts, axis=1)


def _write_output(mem, y: np.ndarray, d: dict[str, int], layout: DesignLayout) -> int:
    """Blocked Y: result (m, n) goes to element ((m // R) * N + n) * R + m % R; pads are zero."""
    m, n = y.shape
    rows = layout.mm.rows
    ebytes = 4 if d["out_mode"] == OutMode.INT32 else 1
    total = layout.matmul.out_bytes(m, n, d["out_mode"])
    out = np.zeros(total // ebytes, dtype="<i4" if ebytes == 4 else "i1")
    mi, ni = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    out[((mi // rows) * n + ni) * rows + mi % rows] = y
    mem.write(d["y_addr"], out.view(np.uint8).tobytes())
    return total


def _write_partials(mem, acc: np.ndarray, d: dict[str, int], layout: DesignLayout) -> int:
    """The split-K scratch as the engine leaves it: per chunk q (region ``p_addr + q * stride``), the
    int64 partial sums in fire order: tile, row block of the chunk, column of the tile, row of the
    block (rows past M are 0; each region zero-padded to a word). Returns bytes written per slice."""
    geom, rows = layout.matmul, layout.mm.rows
    m, n = acc.shape
    cb = geom.chunk_blocks(m, n, d["k"], d["out_mode"])
    stride, tile = geom.partial_stride(m, n, d["k"], d["out_mode"]), geom.tile_n
    blocks = geom.row_blocks(m)
    full = np.zeros((blocks * rows, n), dtype=object)
    full[:m] = acc
    written = 0
    for q in range(geom.chunks(m, n, d["k"], d["out_mode"])):
        region = []
        for t0 in range(0, n, tile):
            for b in range(q * cb, min(blocks, (q + 1) * cb)):
                region.append(full[b * rows:(b + 1) * rows, t0:t0 + tile].T.reshape(-1))
        vals = np.concatenate(region)
        raw = b"".join(int(v).to_bytes(8, "little", signed=True) for v in vals)
        raw += bytes(geom.round_words(len(raw)) - len(raw))
        mem.write(d["p_addr"] + q * stride, raw)
        written += len(raw)
    return written


def _run_matmul(mem, d: dict[str, int], layout: DesignLayout, result: ProgramResult) -> None:
    mm, geom = layout.mm, layout.matmul
    m, k, n, wbits, mode = d["m"], d["k"], d["n"], d["wbits"], d["out_mode"]
    bias_on = d.get("bias", 0) == BiasMode.INT32
    g = mm.group_size
    ranges = [(d["x_addr"], m * k)]
    if not geom.inline_scales:              # inline: s_addr is ignored
        ranges.append((d["s_addr"], geom.scale_bytes(n, k)))
    ranges.append((d["y_addr"], geom.out_bytes(m, n, mode)))
    ranges += [(d[f"w_addr{p}"], geom.weight_port_bytes(n, k, wbits)) for p in range(mm.weight_ports)]
    if mode == OutMode.INT8:
        ranges.append((d["q_addr"], geom.requant_bytes(n)))
    if bias_on:
        ranges.append((d["b_addr"], geom.bias_bytes(n)))
    slices = geom.slices(k)
    if slices > 1:
        ranges.append((d["p_addr"], geom.partial_bytes(m, n, k, mode)))
    for addr, nbytes in ranges:
        _check_range(mem, addr, nbytes)

    x = np.frombuffer(mem.read(d["x_addr"], m * k), dtype=np.int8).reshape(m, k)
    w = _read_weights(mem, d, layout)
    s = _read_scales(mem, d, layout)
    bias = None
    if bias_on:
        bias = np.frombuffer(mem.read(d["b_addr"], n * 4), dtype="<i4").astype(np.int64)
    bshift = d.get("bias_shift", 0)
    if slices > 1:              # the scratch holds the sum of every slice but the last (and the bias)
        kp = (slices - 1) * geom.k_slice
        partial = add_bias(matmul_accumulate(x[:, :kp], w[:, :kp], s[:, :kp // g], g), bias, bias_shift=bshift)
        result.bytes_written[0] += (slices - 1) * _write_partials(mem, partial, d, layout)
    if mode == OutMode.INT32:
        y = matmul_int32(x, w, s, g, d["out_shift"], bias=bias, bias_shift=bshift)
    else:
        q = np.frombuffer(mem.read(d["q_addr"], n * 8), dtype="<u8")
        mult = np.array([int(v) & 0xFFFF_FFFF for v in q], dtype=np.int64)
        mult = np.where(mult >= 1 << 31, mult - (1 << 32), mult)
        shift = np.array([(int(v) >> 32) & 0x7F for v in q], dtype=np.int64)
        y = matmul_int8(x, w, s, g, mult, shift, bias=bias, bias_shift=bshift)
    result.bytes_written[0] += _write_output(mem, y, d, layout)
    result.mac_ops += m * k * n
    chunks = geom.chunks(m, n, k, mode)
    for p in range(mm.weight_ports):
        result.weight_bytes_read[p] += chunks * geom.weight_port_bytes(n, k, wbits)


def _run_attention(mem, d: dict[str, int], layout: DesignLayout, result: ProgramResult) -> None:
    from .attention import run_attention

    stats = run_attention(mem, d, layout)
    result.bytes_written[0] += stats["bytes_written"]
    result.mac_ops += stats["mac_ops"]
    for p, nbytes in enumerate(stats.get("kv_bytes_read", ())):
        if p < len(result.weight_bytes_read):
            result.weight_bytes_read[p] += nbytes


def _run_copy(mem, d: dict[str, int], layout: DesignLayout, result: ProgramResult) -> None:
    from .copy import run_copy

    run_copy(mem, d)
    result.bytes_written[d["dst_port"]] += d["bytes"]
    if d["mode"] == 0 and d["src_port"] > 0:
        result.weight_bytes_read[d["src_port"] - 1] += d["bytes"]


def _run_vector(mem, d: dict[str, int], layout: DesignLayout, result: ProgramResult) -> None:
    from .vector import run_vector

    stats = run_vector(mem, d, layout)
    for p, nbytes in enumerate(stats["bytes_written"]):
        result.bytes_written[p] += nbytes
    for p, nbytes in enumerate(stats["stream_bytes_read"]):
        result.weight_bytes_read[p] += nbytes


def _run_allreduce(mem, d: dict[str, int], layout: DesignLayout, result: ProgramResult, network=None) -> None:
    from .network import run_allreduce_descriptor

    run_allreduce_descriptor(mem, d, layout, network)
    if d["mode"] != 2:                                # SUM/MAX write the buffer back; RESET writes nothing
        result.bytes_written[0] += d["bytes"]


def _run_memory(mem, d: dict[str, int], layout: DesignLayout, result: ProgramResult) -> None:
    from ..encodings import CacheAction, Opcode
    from ..engines.memory import cache_geometry, omap_geometry
    from .memory import TileCacheModel
    from .omap import OmapFault, run_omap

    port = layout.config.engine("memory").port
    if d["op"] == Opcode.OMAP:
        try:
            run = run_omap(mem, d, omap_geometry(layout))
        except OmapFault as err:
            raise EngineFault(err.code, err.detail) from None
        result.bytes_written[0] += run.bytes_written - run.host_bytes_written
        result.bytes_written[1 + port] += run.host_bytes_written
        result.weight_bytes_read[port] += run.host_bytes_read
        return
    # CACHE: the cache is transparent to what the engines read, so the program model keeps the
    # coherent memory; a TileCacheModel attached to the memory (``memory.tile_cache``) is run
    # for the actions (the benches feed it the commands the other engines' traffic gave the cache)
    model = getattr(mem, "tile_cache", None)
    if model is None:
        model = TileCacheModel(cache_geometry(layout), memory=mem)
        try:
            mem.tile_cache = model
        except AttributeError:
            pass
    action, addr, nbytes = d["action"], d["addr"], d["bytes"]
    if action == CacheAction.CONFIGURE:
        model.configure(addr, nbytes, d["store_addr"])
    elif action == CacheAction.PREFETCH:
        model.prefetch(addr, nbytes)
    elif action == CacheAction.FLUSH:
        model.flush(addr, nbytes)
    elif action == CacheAction.INVALIDATE:
        model.invalidate(addr, nbytes)
    else:
        _check_range(mem, addr, model.geometry.stats_bytes)
        mem.write(addr, model.stats_bytes())
        result.bytes_written[0] += model.geometry.stats_bytes


#: family kind -> golden runner of one validated descriptor
_RUNNERS = {"matmul": _run_matmul, "attention": _run_attention, "copy": _run_copy, "vector": _run_vector,
            "network": _run_allreduce, "memory": _run_memory}


def execute(memory, program_addr: int, count: int, layout: DesignLayout, *, network=None) -> ProgramResult:
    """Run ``count`` descriptors at ``program_addr`` against ``memory`` like the kernel does.

    ``memory``: a dict of 4 KiB pages (page number -> bytearray), a bytearray-like
    object mapped at address 0, or any object with ``read(addr, n)`` and
    ``write(addr, data)`` (raising :class:`MemoryAccessError` for unmapped bytes).
    Returns the STATUS/DESC_DONE the kernel would report; never raises for a
    bad descriptor (that is an error code, as on hardware).

    ``network``: what ALLREDUCE descriptors reduce with (``hbmforge.numerics.network``:
    an object with ``allreduce(mem, d, layout)``); without one a device is alone and an
    all-reduce waits for a switch that never answers (NET_TIMEOUT), as on hardware.
    """
    mem = _as_memory(memory)
    runners = dict(_RUNNERS, network=lambda *a: _run_allreduce(*a, network=network))
    result = ProgramResult(weight_bytes_read=[0] * layout.config.stream_ports,
                           bytes_written=[0] * len(layout.ports))
    dbytes = layout.descriptor_bytes
    if count and program_addr % layout.addr_align:
        result.error, result.detail = ErrorCode.MISALIGNED, f"program address {program_addr:#x} not word aligned"
        return result
    for i in range(count):
        try:
            _check_range(mem, program_addr + i * dbytes, dbytes)
            d = layout.decode_descriptor(mem.read(program_addr + i * dbytes, dbytes))
        except MemoryAccessError as err:
            result.error, result.error_index, result.detail = ErrorCode.AXI_RESP, i, str(err)
            return result
        if d["op"] == Opcode.END:
            return result
        code, why = layout.validate_descriptor(d)
        if code != ErrorCode.NONE:
            result.error, result.error_index, result.detail = code, i, why
            return result
        try:
            runners[layout.family_of(d["op"]).kind](mem, d, layout, result)
        except MemoryAccessError as err:
            result.error, result.error_index, result.detail = ErrorCode.AXI_RESP, i, str(err)
            return result
        except EngineFault as err:
            result.error, result.error_index, result.detail = err.code, i, err.detail
            return result
        result.descriptors_done += 1
    return result
