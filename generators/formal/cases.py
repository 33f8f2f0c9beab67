"""The formal proofs of a design: its control slave and every AXI4 memory port, as generated.

:func:`design_cases` lists one :class:`FormalCase` per part: ``control`` (AXI-Lite slave and
ap_ctrl_hs, the design's own register map) and ``port_<name>`` for each ``m_axi_<name>``, built
with exactly the readers, writer, IDs, widths and AXI limits the kernel gives that port
(:class:`~hbmforge.generators.shell.kernel.Kernel`). ``scale="small"`` keeps each port's
structure (readers, IDs, writer) but shrinks the data width to 32 bits, the address to 16
bits, bursts to 4 beats and the outstanding limit to 2: the same logic with less state, so
deeper bounds fit the CI time; ``scale="full"`` proves the generated parameters.

A design with a network engine adds ``switch`` (the aggregation switch its endpoint talks to,
:class:`~.engines.SwitchHarness`), one with a tile cache adds ``cache``
(:class:`~.engines.CacheHarness`). ``scale="small"`` proves :func:`~.engines.small_switch_geometry`
(2 links, 2 slots, 1 job, 2-word packets) and :func:`~.engines.small_cache_geometry` (2 ways x
2 sets of 2-word lines on 32-bit words); ``scale="full"`` the config's geometry.

The control slave's proof is k-induction and closes (unbounded: its checker counters are tied
to the bus signals by ``*.accounted`` invariants). The others are bounded (BMC): k-induction
does not close there, because credit counters, FIFO levels and tags are internal state the
checker does not see, and unreachable combinations of them stay consistent for any k; the
depth is stated with every result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from hbmforge.layout import DesignLayout

__all__ = ["FormalCase", "design_cases", "SMALL", "DEFAULT_DEPTHS"]

#: the "small" scale's AXI parameters
SMALL = dict(data_width=32, addr_width=16, max_burst_beats=4, max_outstanding=2)
#: default depth per (case kind, scale): k-induction / BMC steps
DEFAULT_DEPTHS = {("control", "small"): 6, ("control", "full"): 6,
                  ("port", "small"): 12, ("port", "full"): 10,
                  ("switch", "small"): 10, ("switch", "full"): 8,
                  ("cache", "small"): 10, ("cache", "full"): 6}
KINDS = ("control", "port", "switch", "cache")


@dataclass(frozen=True)
class FormalCase:
    name: str
    kind: str                   # "control", "port", "switch" or "cache"
    scale: str                  # "small" or "full"
    build: Callable             # () -> harness (an Elaboratable with ``ports``)
    mode: str = "prove"         # k-induction; UNKNOWN -> bounded at ``depth``
    depth: int = 12
    describe: str = ""


def _port_params(layout: DesignLayout, port, scale: str) -> dict:
    from ..shell.kernel import STREAM_READ_ID, WRITE_ID, data_read_ids

    axi = layout.config.axi
    if port.role == "data":
        readers = data_read_ids(layout)
        writer = "out" if port.writes else None
    else:
        readers = {"w": STREAM_READ_ID} if port.reads else {}
        writer = "w" if port.writes else None
    params = dict(data_width=port.data_width, addr_width=port.addr_width, id_width=port.id_width,
                  readers=readers, writer=writer, awid=WRITE_ID, max_burst_beats=axi.max_burst_beats,
                  max_outstanding=axi.max_outstanding)
    if scale == "small":
        params.update(SMALL)
    return params


def design_cases(layout: DesignLayout, *, scale: str = "small", depths: dict | None = None) -> list[FormalCase]:
    """The proofs of ``layout``'s shell and engine protocols (module doc); ``depths`` overrides
    :data:`DEFAULT_DEPTHS` by kind (``{"port": 20}``)."""
    from .shell import ControlHarness, PortHarness

    if not isinstance(layout, DesignLayout):
        raise TypeError(f"layout must be a DesignLayout, got {layout!r}")
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    depths = dict(depths or {})
    unknown = set(depths) - set(KINDS)
    if unknown:
        raise ValueError(f"depths may set {', '.join(map(repr, KINDS))}, got {sorted(unknown)}")

    def depth(kind):
        return depths.get(kind, DEFAULT_DEPTHS[(kind, scale)])

    cases = [FormalCase("control", "control", scale, lambda: ControlHarness(layout), depth=depth("control"),
                        describe="s_axi_control: AXI4-Lite subordinate + ap_ctrl_hs")]
    for port in layout.ports:
        params = _port_params(layout, port, scale)
        if not params["readers"] and params["writer"] is None:
            continue                      # a port no engine uses: every channel tied idle
        what = ", ".join([f"{len(params['readers'])} reader(s)"] + (["a writer"] if params["writer"] else []))
        cases.append(FormalCase(f"port_{port.name}", "port", scale,
                                lambda params=params: PortHarness(**params), mode="bmc", depth=depth("port"),
                                describe=f"m_axi_{port.name}: AXI4 manager, {what}, DMA FIFOs and credits"))
    cases += _engine_cases(layout, scale, depth)
    return cases


def _engine_cases(layout: DesignLayout, scale: str, depth) -> list[FormalCase]:
    from hbmforge.engines.memory import cache_geometry
    from hbmforge.engines.network import SwitchGeometry

    from .engines import CacheHarness, CheckedSwitch, SwitchHarness, small_cache_geometry, small_switch_geometry

    cases = []
    net = layout.config.engine("network")
    if net is not None:
        geom = small_switch_geometry() if scale == "small" else SwitchGeometry(
            ports=2, data_width=layout.config.data_width, packet_words=net.packet_words, slots=net.window,
            jobs=net.jobs)
        cases.append(FormalCase("switch", "switch", scale, lambda: SwitchHarness(switch=CheckedSwitch(geom)),
                                mode="bmc", depth=depth("switch"),
                                describe=f"aggregation switch ({geom.ports} links, {geom.data_width}-bit, "
                                         f"{geom.packet_words}-word packets): links, framing, FIFO room"))
    cache = cache_geometry(layout)
    if cache is not None:
        width = 32 if scale == "small" else 8 * layout.word_bytes
        geom = small_cache_geometry(cache.replacement, cache.write_policy) if scale == "small" else cache
        cases.append(FormalCase("cache", "cache", scale, lambda: CacheHarness(geom, data_width=width),
                                mode="bmc", depth=depth("cache"),
                                describe=f"tile cache ({geom.ways} ways x {geom.sets} sets x {geom.line_bytes} B, "
                                         f"{width}-bit, {geom.replacement}, {geom.write_policy}): streams, "
                                         f"commands, FIFO room, jobs"))
    return cases
