"""AXI4 and AXI4-Lite interface signatures with the AMBA member names.

Members are named as in the AXI specification (``awaddr``, ``arvalid`` ...) so
that a top-level port flattens to ``m_axi_data_arvalid``. Directions are from
the manager's (master's) point of view: ``Out`` is driven by the manager.
"""
from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI4Signature", "AXI4LiteSignature", "RESP_OKAY", "BURST_INCR"]

RESP_OKAY = 0b00
RESP_SLVERR = 0b10
RESP_DECERR = 0b11
BURST_INCR = 0b01


class AXI4Signature(wiring.Signature):
    """Full AXI4 manager interface: IDs, bursts, cache/prot/qos/region, no user signals."""

    def __init__(self, *, addr_width: int, data_width: int, id_width: int):
        for name, value, allowed in (("addr_width", addr_width, range(12, 65)),
                                     ("id_width", id_width, range(1, 17))):
            if not isinstance(value, int) or value not in allowed:
                raise ValueError(f"{name} must be an int in [{allowed.start}, {allowed.stop - 1}], got {value!r}")
        if data_width not in (32, 64, 128, 256, 512, 1024):
            raise ValueError(f"data_width must be one of 32..1024 (power of two), got {data_width!r}")
        self._addr_width, self._data_width, self._id_width = addr_width, data_width, id_width
        members = {}
        for ch in ("aw", "ar"):
            members.update({
                f"{ch}id": Out(id_width), f"{ch}addr": Out(addr_width), f"{ch}len": Out(8),
                f"{ch}size": Out(3), f"{ch}burst": Out(2), f"{ch}lock": Out(1), f"{ch}cache": Out(4),
                f"{ch}prot": Out(3), f"{ch}qos": Out(4), f"{ch}region": Out(4),
                f"{ch}valid": Out(1), f"{ch}ready": In(1),
            })
        members.update({
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })
        super().__init__(members)

    @property
    def addr_width(self):
        return self._addr_width

    @property
    def data_width(self):
        return self._data_width

    @property
    def id_width(self):
        return self._id_width

    def __eq__(self, other):
        return (isinstance(other, AXI4Signature) and other.addr_width == self.addr_width
                and other.data_width == self.data_width and other.id_width == self.id_width)

    def __repr__(self):
        return f"AXI4Signature(addr_width={self.addr_width}, data_width={self.data_width}, id_width={self.id_width})"


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite manager interface (the host side drives it; kernels use ``In(...)``)."""

    def __init__(self, *, addr_width: int, data_width: int = 32):
        if data_width not in (32, 64):
            raise ValueError(f"data_width must be 32 or 64, got {data_width!r}")
        if not isinstance(addr_width, int) or not 4 <= addr_width <= 64:
            raise ValueError(f"addr_width must be an int in [4, 64], got {addr_width!r}")
        self._addr_width, self._data_width = addr_width, data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    @property
    def addr_width(self):
        return self._addr_width

    @property
    def data_width(self):
        return self._data_width

    def __eq__(self, other):
        return (isinstance(other, AXI4LiteSignature) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self.addr_width}, data_width={self.data_width})"
