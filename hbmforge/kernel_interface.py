"""The kernel as tools outside hbmforge see it: XRT arguments and register bit fields.

Vitis (kernel.xml), XRT (``kernel.group_id(arg)``), Vivado IP packaging and
PYNQ (``register_map``) each describe the same ``s_axi_control`` window in
their own vocabulary. Everything here is derived from a manifest (the dict
``DesignLayout.to_json()`` returns), so the packaging templates and the host
backends number the arguments identically.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = [
    "ARG_WINDOW",
    "ARG_WINDOWS",
    "CONTROL_RANGE",
    "KernelArg",
    "kernel_args",
    "pointer_arg_of_port",
    "compute_unit",
    "register_fields",
    "pynq_access",
    "pynq_registers",
]

from .layout import WIDE_ARGS_BASE, WIDE_COUNTERS_BASE

# ap_ctrl_hs: arguments start after CTRL/GIE/IER/ISR; the status block starts at 0x100.
ARG_WINDOW = (0x10, 0x100)
#: where the arguments are: ARG_WINDOW, and for designs of more than CLASSIC_MAX_PORTS ports
#: the w<i> pointers above the status block (hbmforge.layout: WIDE_ARGS_BASE + 8i)
ARG_WINDOWS = (ARG_WINDOW, (WIDE_ARGS_BASE, WIDE_COUNTERS_BASE))
CONTROL_RANGE = 0x1000          # 12-bit s_axi_control address space

# Pointer arguments that do not carry the name of the port they address.
_POINTER_PORT = {"program": "data"}


@dataclass(frozen=True)
class KernelArg:
    """One kernel argument: what kernel.xml lists and ``xrt::kernel`` numbers."""

    index: int
    name: str
    offset: int
    size: int                   # bytes: 8 for pointers and u64, 4 for u32
    port: str | None            # memory port a pointer binds (data, w0, ...); None for scalars

    @property
    def is_pointer(self) -> bool:
        return self.port is not None

    @property
    def interface(self) -> str:
        """The AXI interface kernel.xml names for this argument."""
        return f"m_axi_{self.port}" if self.port else "s_axi_control"


def kernel_args(manifest: Mapping[str, Any]) -> tuple[KernelArg, ...]:
    """The kernel's arguments in offset order, each pointer bound to exactly one port.

    A 64-bit argument is a pointer when it is named after a port (``w0``) or
    listed in ``_POINTER_PORT`` (``program`` addresses the data port). Every
    port must be bound by one pointer: that binding is how Vitis places a
    port in its HBM bank and how XRT allocates buffers next to it.
    """
    ports = [p["name"] for p in manifest["ports"]]
    regs = sorted((r for r in manifest["registers"]
                   if any(lo <= int(r["offset"]) < hi for lo, hi in ARG_WINDOWS)),
                  key=lambda r: int(r["offset"]))
    args = []
    for i, r in enumerate(regs):
        width = int(r["width"])
        port = _POINTER_PORT.get(r["name"], r["name"] if r["name"] in ports else None)
        if port is not None and width != 64:
            raise ValueError(f"argument {r['name']!r} binds port {port!r} but is {width}-bit; "
                             "pointers are 64-bit")
        args.append(KernelArg(i, r["name"], int(r["offset"]), width // 8, port))
    bound = [a.port for a in args if a.port]
    unbound = [p for p in ports if p not in bound]
    doubled = sorted({p for p in bound if bound.count(p) > 1})
    if unbound or doubled:
        raise ValueError(f"every memory port needs exactly one pointer argument; "
                         f"unbound: {unbound}, bound twice: {doubled}")
    return tuple(args)


def pointer_arg_of_port(manifest: Mapping[str, Any], port: str) -> KernelArg:
    """The argument whose buffer bank is the bank of ``port``."""
    for a in kernel_args(manifest):
        if a.port == port:
            return a
    names = [p["name"] for p in manifest["ports"]]
    raise ValueError(f"no port {port!r} on {manifest['kernel']}; ports: {', '.join(names)}")


def compute_unit(manifest: Mapping[str, Any]) -> str:
    """The one compute unit v++ instantiates (link.cfg ``nk=``) and XRT opens."""
    return f"{manifest['kernel']}_1"


# Bit fields of the fixed ap_ctrl_hs registers (docs/architecture.md §2):
# name -> [(field, bit offset, bit width, access, description)].
_FIELDS = {
    "CTRL": [
        ("AP_START", 0, 1, "read-write", "write 1 to start; cleared when the run is accepted"),
        ("AP_DONE", 1, 1, "read-only", "set at the end of a run; clear on read"),
        ("AP_IDLE", 2, 1, "read-only", "kernel idle"),
        ("AP_READY", 3, 1, "read-only", "ready for the next start; clear on read"),
        ("AUTO_RESTART", 7, 1, "read-write", "accepted and stored"),
    ],
    "GIE": [("Enable", 0, 1, "read-write", "global interrupt enable")],
    "IER": [("CHAN0_INT_EN", 0, 1, "read-write", "interrupt on ap_done"),
            ("CHAN1_INT_EN", 1, 1, "read-write", "interrupt on ap_ready")],
    "ISR": [("CHAN0_INT_ST", 0, 1, "read-write", "ap_done interrupt pending; write 1 to toggle"),
            ("CHAN1_INT_ST", 1, 1, "read-write", "ap_ready interrupt pending; write 1 to toggle")],
    "STATUS": [("ERROR", 0, 1, "read-only", "the last run stopped on a bad descriptor"),
               ("CODE", 8, 8, "read-only", "error code (manifest descriptor.error_codes)"),
               ("INDEX", 16, 16, "read-only", "index of the failing descriptor")],
}


def register_fields(name: str) -> list[tuple[str, int, int, str, str]]:
    """Bit fields of a register, empty for plain values."""
    return list(_FIELDS.get(name, []))


def pynq_access(access: str) -> str:
    """Manifest access code -> the IP-XACT/PYNQ word (read-write, read-only)."""
    return "read-only" if access in ("ro", "cor") else "read-write"


def pynq_registers(manifest: Mapping[str, Any]) -> dict[str, dict]:
    """The registers in the form of PYNQ's ``ip_dict[...]['registers']``.

    This is what ``RegisterMap.create_subclass`` takes; the simulated overlay's
    .hwh and the board backend both build ``register_map`` from it.
    """
    regs = {}
    for r in sorted(manifest["registers"], key=lambda r: int(r["offset"])):
        fields = {f: {"bit_offset": off, "bit_width": width, "access": acc, "description": desc}
                  for f, off, width, acc, desc in register_fields(r["name"])}
        regs[r["name"]] = {"address_offset": int(r["offset"]), "size": int(r["width"]),
                           "access": pynq_access(r["access"]),
                           "description": r.get("description", ""), "fields": fields}
    return regs
