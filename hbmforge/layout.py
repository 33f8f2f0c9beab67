"""Everything derived from a config that hardware and host must agree on.

The RTL generators, the manifest, the host driver, the co-simulation harness
and the tests all read widths, register offsets, the descriptor format and the
memory layouts from a :class:`DesignLayout`; nothing is hard-coded twice.
See docs/architecture.md for the prose version of this contract.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property

from . import __version__
from .config import AcceleratorConfig, config_hash

__all__ = [
    "KERNEL_ID",
    "LAYOUT_VERSION",
    "Opcode",
    "WeightFormat",
    "ErrorCode",
    "OutMode",
    "Register",
    "PortInfo",
    "MatmulWidths",
    "DesignLayout",
    "derive_layout",
    "rshift_round",
]

KERNEL_ID = 0x48424D46          # "HBMF"
LAYOUT_VERSION = 0x0001_0000    # major.minor of this register/descriptor contract
CTRL_ADDR_WIDTH = 12            # s_axi_control address bits (4 KiB window)


class Opcode:
    END = 0       # stop the program cleanly
    MATMUL = 1    # one matmul layer (see DESCRIPTOR_FIELDS)
    ATTENTION = 2  # one attention tile set (hbmforge.attention_layout.ATTENTION_FIELDS)

    NAMES = {0: "END", 1: "MATMUL", 2: "ATTENTION"}


class WeightFormat:
    """Descriptor ``wbits`` codes: the integer width, or 3 for ternary (log2(3) ~ 1.58 bits)."""

    INT2 = 2
    TERNARY = 3
    INT4 = 4
    INT8 = 8

    @staticmethod
    def code(fmt) -> int:
        """Config/host format (2, 4, 8 or 'ternary') -> descriptor code."""
        if fmt == "ternary":
            return WeightFormat.TERNARY
        if fmt in (2, 4, 8) and not isinstance(fmt, bool):
            return int(fmt)
        raise ValueError(f"weight format must be one of 2, 4, 8, 'ternary', got {fmt!r}")

    @staticmethod
    def name(code: int):
        """Descriptor code -> config/host format."""
        return "ternary" if code == WeightFormat.TERNARY else code


class OutMode:
    INT32 = 0     # sat32(rshift_round(acc, out_shift))
    INT8 = 1      # sat8(rshift_round(acc * mult[n], shift[n]))


class ErrorCode:
    NONE = 0
    BAD_OPCODE = 1
    BAD_WBITS = 2
    BAD_K = 3          # K == 0, K > max_k or K % k_align != 0
    BAD_SHAPE = 4      # M == 0 or N == 0
    AXI_RESP = 5       # SLVERR/DECERR on any port
    BAD_OUT_MODE = 6   # unknown out_mode, or a shift out of range
    MISALIGNED = 7     # an address not aligned to a data-port word

    NAMES = {0: "none", 1: "unknown opcode", 2: "unsupported weight bits",
             3: "K out of range or not aligned", 4: "M or N is zero", 5: "AXI error response",
             6: "bad output mode or shift", 7: "address not aligned to the port word"}


# u64 descriptor fields, in order; then one ``w_addr`` per weight port.
DESCRIPTOR_FIELDS = ("op", "m", "k", "n", "wbits", "out_mode", "out_shift",
                     "x_addr", "s_addr", "q_addr", "y_addr")


def rshift_round(value: int, shift: int) -> int:
    """Arithmetic right shift with round-half-up; the rounding every engine uses."""
    if shift <= 0:
        return value
    return (value + (1 << (shift - 1))) >> shift


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    width: int          # bits: 32 or 64 (64-bit registers span two words, low word first)
    access: str         # "rw", "ro", "rw1s" (ap_start), "cor" (clear on read), "tow" (toggle on write)
    description: str

    def to_json(self) -> dict:
        return {"name": self.name, "offset": self.offset, "width": self.width,
                "access": self.access, "description": self.description}


@dataclass(frozen=True)
class PortInfo:
    name: str           # data, w0, w1, ...
    role: str           # "data" (program, activations, scales, requant, outputs) or "weights"
    channel: int        # memory channel (HBM pseudo-channel or PS HP port)
    data_width: int
    id_width: int
    addr_width: int
    reads: bool
    writes: bool

    @property
    def verilog_prefix(self) -> str:
        return f"m_axi_{self.name}"

    def to_json(self) -> dict:
        return {"name": self.name, "prefix": self.verilog_prefix, "role": self.role,
                "channel": self.channel, "data_width": self.data_width, "id_width": self.id_width,
                "addr_width": self.addr_width, "reads": self.reads, "writes": self.writes}


@dataclass(frozen=True)
class MatmulWidths:
    """Integer widths of the matmul datapath, derived so that no input can overflow."""

    act_bits: int
    max_wbits: int
    lanes: int
    group_size: int
    scale_bits: int
    max_k: int

    @property
    def product_bits(self) -> int:        # signed a x signed w
        return self.act_bits + self.max_wbits

    @property
    def chunk_bits(self) -> int:          # sum of `lanes` products (one array fire)
        return self.product_bits + math.ceil(math.log2(self.lanes))

    @property
    def group_bits(self) -> int:          # sum of `group_size` products: the int32 partial
        return self.product_bits + math.ceil(math.log2(self.group_size))

    @property
    def scaled_bits(self) -> int:         # group partial x unsigned scale mantissa
        return self.group_bits + self.scale_bits

    @property
    def acc_bits(self) -> int:            # sum over max_k / group_size scaled partials
        return self.scaled_bits + max(0, math.ceil(math.log2(self.max_k // self.group_size)))

    @property
    def mult_bits(self) -> int:           # int8-output requant multiplier (signed)
        return 32

    @property
    def requant_bits(self) -> int:        # acc x mult
        return self.acc_bits + self.mult_bits

    @property
    def max_out_shift(self) -> int:       # int32 mode
        return 63

    @property
    def max_requant_shift(self) -> int:   # int8 mode
        return 127

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in (
            "act_bits", "max_wbits", "product_bits", "chunk_bits", "group_bits", "scaled_bits",
            "acc_bits", "mult_bits", "requant_bits", "max_out_shift", "max_requant_shift")}


@dataclass(frozen=True)
class DesignLayout:
    config: AcceleratorConfig
    ports: tuple[PortInfo, ...] = field(init=False)

    def __post_init__(self):
        cfg = self.config
        chans = cfg.port_channels()
        addr_width = 64
        ports = [PortInfo("data", "data", chans["data"], cfg.data_width, cfg.axi.id_width,
                          addr_width, True, True)]
        for i in range(cfg.stream_ports):
            ports.append(PortInfo(f"w{i}", "weights", chans[f"w{i}"], cfg.data_width,
                                  cfg.axi.id_width, addr_width, True, False))
        object.__setattr__(self, "ports", tuple(ports))

    # -- identity ----------------------------------------------------------------------
    @cached_property
    def config_hash(self) -> str:
        return config_hash(self.config)

    @cached_property
    def design_hash(self) -> str:
        """Hash of config + generator version: what the kernel's HASH register holds."""
        return hashlib.sha256(f"{self.config_hash}:hbmforge-{__version__}:{LAYOUT_VERSION:#x}"
                              .encode()).hexdigest()

    @property
    def hash64(self) -> int:
        return int(self.design_hash[:16], 16)

    # -- words and alignment -----------------------------------------------------------
    @property
    def word_bytes(self) -> int:
        return self.config.data_width // 8

    @property
    def mm(self):
        return self.config.matmul

    @property
    def k_align(self) -> int:
        """K (in elements) must be a multiple of this; the host zero-pads."""
        return max(self.mm.lanes, self.mm.group_size, self.word_bytes)

    @property
    def addr_align(self) -> int:
        """Every buffer address in a descriptor must be a multiple of this."""
        return self.word_bytes

    @cached_property
    def widths(self) -> MatmulWidths:
        return MatmulWidths(act_bits=8, max_wbits=max(self.lane_bits(f) for f in self.mm.weight_bits),
                            lanes=self.mm.lanes,
                            group_size=self.mm.group_size, scale_bits=self.mm.scale_bits,
                            max_k=self.mm.max_k)

    # -- control registers -------------------------------------------------------------
    @cached_property
    def registers(self) -> tuple[Register, ...]:
        regs = [
            Register("CTRL", 0x00, 32, "rw1s", "ap_ctrl_hs: bit0 ap_start, bit1 ap_done (COR), bit2 ap_idle, "
                                                "bit3 ap_ready (COR), bit7 auto_restart"),
            Register("GIE", 0x04, 32, "rw", "global interrupt enable (bit0)"),
            Register("IER", 0x08, 32, "rw", "interrupt enable: bit0 ap_done, bit1 ap_ready"),
            Register("ISR", 0x0C, 32, "tow", "interrupt status: bit0 ap_done, bit1 ap_ready (toggle on write)"),
            Register("program", 0x10, 64, "rw", "address of the descriptor program (data port)"),
            Register("count", 0x18, 32, "rw", "descriptors to run (an END opcode stops earlier)"),
        ]
        for i in range(self.config.stream_ports):
            regs.append(Register(f"w{i}", 0x20 + 8 * i, 64, "rw",
                                 f"base of the buffer bound to port w{i} (binds the port to its bank; "
                                 "descriptors carry the addresses used)"))
        status = [
            Register("ID", 0x100, 32, "ro", f"kernel identifier {KERNEL_ID:#010x} ('HBMF')"),
            Register("VERSION", 0x104, 32, "ro", "register/descriptor layout version (major << 16 | minor)"),
            Register("HASH", 0x108, 64, "ro", "first 64 bits of the design hash (manifest 'design_hash')"),
            Register("STATUS", 0x110, 32, "ro", "bit0 error; bits 15:8 error code; bits 31:16 failing descriptor"),
            Register("DESC_DONE", 0x114, 32, "ro", "descriptors completed by the last run"),
            Register("CYCLES", 0x120, 64, "ro", "cycles from ap_start to ap_done of the last run"),
            Register("STALL_CYCLES", 0x128, 64, "ro", "cycles a matmul was running but its array did not fire"),
            Register("MAC_OPS", 0x130, 64, "ro", "multiply-accumulates done on valid rows (K padding included)"),
        ]
        regs += status
        for i, p in enumerate(self.ports):
            base = 0x140 + 0x10 * i
            regs.append(Register(f"{p.name.upper()}_BYTES_READ", base, 64, "ro",
                                 f"bytes read on m_axi_{p.name} in the last run"))
            regs.append(Register(f"{p.name.upper()}_BYTES_WRITTEN", base + 8, 64, "ro",
                                 f"bytes written on m_axi_{p.name} in the last run"))
        return tuple(regs)

    def reg(self, name: str) -> Register:
        for r in self.registers:
            if r.name == name:
                return r
        raise KeyError(f"no register {name!r}")

    # -- descriptors -------------------------------------------------------------------
    @property
    def descriptor_fields(self) -> tuple[str, ...]:
        return DESCRIPTOR_FIELDS + tuple(f"w_addr{i}" for i in range(self.mm.weight_ports))

    @property
    def attention(self):
        """The attention engine's config, or None."""
        return self.config.attention

    @cached_property
    def attention_fields(self) -> tuple[str, ...]:
        """u64 slots of an ATTENTION descriptor (``op`` first); empty without an attention engine."""
        if self.attention is None:
            return ()
        from .attention_layout import ATTENTION_FIELDS

        return ("op",) + tuple(ATTENTION_FIELDS)

    @property
    def error_names(self) -> dict[int, str]:
        """STATUS error code -> meaning, for every opcode the design runs."""
        names = dict(ErrorCode.NAMES)
        if self.attention is not None:
            from .attention_layout import AttnError

            names.update(AttnError.NAMES)
        return names

    @property
    def opcodes(self) -> dict[str, int]:
        ops = {"END": Opcode.END, "MATMUL": Opcode.MATMUL}
        if self.attention is not None:
            ops["ATTENTION"] = Opcode.ATTENTION
        return ops

    def fields_for(self, opcode: int) -> tuple[str, ...]:
        """Descriptor field names of ``opcode`` in slot order."""
        if opcode == Opcode.ATTENTION and self.attention is not None:
            return self.attention_fields
        return self.descriptor_fields

    @property
    def descriptor_bytes(self) -> int:
        raw = 8 * max(len(self.descriptor_fields), len(self.attention_fields))
        return -(-raw // self.word_bytes) * self.word_bytes

    def field_offset(self, name: str, opcode: int = Opcode.MATMUL) -> int:
        return 8 * self.fields_for(opcode).index(name)

    # -- memory layouts (bytes) --------------------------------------------------------
    def pad_k(self, k: int) -> int:
        return -(-k // self.k_align) * self.k_align

    def round_words(self, nbytes: int) -> int:
        return -(-nbytes // self.word_bytes) * self.word_bytes

    @staticmethod
    def lane_bits(fmt) -> int:
        """Signed width of one decoded weight (ternary decodes to a 2-bit -1/0/+1)."""
        return 2 if fmt in ("ternary", WeightFormat.TERNARY) else int(fmt)

    def weight_stream_bytes(self, n: int, k: int, wbits) -> int:
        """Bytes of the packed [n, k] weight stream before striping (``wbits``: code or format).

        Ternary with ``ternary_packing: 5trit`` holds five weights per byte; every other
        format packs ``lane_bits`` per weight.
        """
        if WeightFormat.code(WeightFormat.name(wbits)) == WeightFormat.TERNARY \
                and self.mm.ternary_packing == "5trit":
            return -(-(n * k) // 5)
        return -(-(n * k * self.lane_bits(wbits)) // 8)

    def weight_port_bytes(self, n: int, k: int, wbits) -> int:
        """Bytes each weight port reads for an [n, k] weight matrix (k padded)."""
        combined_bytes = self.mm.weight_ports * self.word_bytes
        words = -(-self.weight_stream_bytes(n, k, wbits) // combined_bytes)
        return words * self.word_bytes

    def scale_bytes(self, n: int, k: int) -> int:
        return self.round_words(n * (k // self.mm.group_size) * 2)

    def requant_bytes(self, n: int) -> int:
        return self.round_words(n * 8)

    def act_bytes(self, m: int, k: int) -> int:
        return self.round_words(m * k)

    def row_blocks(self, m: int) -> int:
        return -(-m // self.mm.rows)

    def out_bytes(self, m: int, n: int, out_mode: int) -> int:
        ebytes = 4 if out_mode == OutMode.INT32 else 1
        return self.round_words(self.row_blocks(m) * n * self.mm.rows * ebytes)

    # -- manifest ----------------------------------------------------------------------
    def to_json(self) -> dict:
        mm = self.mm
        return {
            "kernel": self.config.name,
            "kernel_id": KERNEL_ID,
            "layout_version": LAYOUT_VERSION,
            "config_hash": self.config_hash,
            "design_hash": self.design_hash,
            "hash64": f"{self.hash64:#018x}",
            "board": self.config.board,
            "part": self.config.board_info.part,
            "clock_mhz": self.config.clock,
            "control": {"prefix": "s_axi_control", "addr_width": CTRL_ADDR_WIDTH, "data_width": 32},
            "registers": [r.to_json() for r in self.registers],
            "ports": [p.to_json() for p in self.ports],
            "axi": {"max_burst_beats": self.config.axi.max_burst_beats,
                    "max_outstanding": self.config.axi.max_outstanding},
            "config": self.config.model_dump(mode="json"),
            "descriptor": {
                "bytes": self.descriptor_bytes,
                "fields": [{"name": f, "offset": self.field_offset(f), "bytes": 8}
                           for f in self.descriptor_fields],
                "attention_fields": [{"name": f, "offset": self.field_offset(f, Opcode.ATTENTION),
                                      "bytes": 8} for f in self.attention_fields],
                "opcodes": self.opcodes,
                "out_modes": {"INT32": OutMode.INT32, "INT8": OutMode.INT8},
                "error_codes": {str(k): v for k, v in self.error_names.items()},
            },
            "engines": [{
                "kind": "matmul",
                "name": mm.name,
                "rows": mm.rows,
                "lanes": mm.lanes,
                "weight_ports": mm.weight_ports,
                "weight_bits": list(mm.weight_bits),
                "weight_codes": [WeightFormat.code(f) for f in mm.weight_bits],
                "ternary_packing": mm.ternary_packing,
                "arch": mm.arch,
                "tlmm_group": mm.tlmm_group,
                "group_size": mm.group_size,
                "scale_bits": mm.scale_bits,
                "max_k": mm.max_k,
                "k_align": self.k_align,
                "addr_align": self.addr_align,
                "macs_per_cycle": mm.rows * mm.lanes,
                "widths": self.widths.to_json(),
            }] + ([self.attention_manifest()] if self.attention is not None else []),
        }

    def attention_manifest(self) -> dict:
        att = self.attention
        entry = {"kind": "attention", **att.model_dump(mode="json")}
        from .attention_layout import attention_geometry

        entry["geometry"] = attention_geometry(self).to_json()
        return entry

    def manifest_json(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def derive_layout(cfg: AcceleratorConfig) -> DesignLayout:
    return DesignLayout(cfg)
