"""AXI4-Lite subordinate and ap_ctrl_hs properties of the control slave (docs/architecture.md §2).

Asserted of the slave:

* ``b.valid_held``/``r.valid_held``: a response, once offered, stays until the host takes it;
  ``r.stable``: RDATA does not change while it waits; ``b.okay``/``r.okay``: every response OKAY;
* ``b.after_write``: a write response only for an address and a data beat both accepted
  (two writes in flight at most, ``aw.in_flight``/``w.in_flight``); ``r.after_read``: a read response only for an accepted address;
* ``ap.start_idle``: ``start`` (a run accepted) only while not busy; ``ap.start_pulse``: it lasts
  one cycle; ``ap.busy_after_start``: busy from the next cycle; ``ap.busy_until_done``: busy
  stays until the kernel's ``done``; ``ap.idle_after_done``: and falls with it.

Assumed of the host (``host.*``): AXI-Lite manager rules (VALID held until READY, address and
data stable meanwhile); of the kernel (``env.done_while_busy``): ``done`` only ends a run.
"""
from __future__ import annotations

from amaranth.hdl import Signal

from ..axi import RESP_OKAY
from .props import Properties

__all__ = ["axi_lite_subordinate_properties", "ap_ctrl_hs_properties"]


def _manager_channel(p: Properties, valid, ready, payload: list, name: str) -> None:
    stalled = p.past(valid & ~ready, name=f"{name}_stalled")
    same = 1
    for i, f in enumerate(payload):
        same = same & (f == p.past(f, name=f"{name}_past{i}"))
    p.assume(f"host.{name}.held", ~stalled | (valid & same), after_first=True)


def axi_lite_subordinate_properties(p: Properties, bus) -> None:
    m = p.m
    _manager_channel(p, bus.awvalid, bus.awready, [bus.awaddr], "aw")
    _manager_channel(p, bus.wvalid, bus.wready, [bus.wdata, bus.wstrb], "w")
    _manager_channel(p, bus.arvalid, bus.arready, [bus.araddr], "ar")
    b_wait = p.past(bus.bvalid & ~bus.bready, name="b_wait")
    r_wait = p.past(bus.rvalid & ~bus.rready, name="r_wait")
    r_data = p.past(bus.rdata, name="r_data_past")
    p.assert_("b.valid_held", ~b_wait | bus.bvalid, after_first=True)
    p.assert_("r.valid_held", ~r_wait | bus.rvalid, after_first=True)
    p.assert_("r.stable", ~r_wait | (bus.rdata == r_data), after_first=True)
    p.assert_("b.okay", ~bus.bvalid | (bus.bresp == RESP_OKAY))
    p.assert_("r.okay", ~bus.rvalid | (bus.rresp == RESP_OKAY))
    aw_due = Signal(range(4), name="aw_due")      # addresses accepted, response not yet taken
    w_due = Signal(range(4), name="w_due")
    ar_due = Signal(range(4), name="ar_due")
    b_hs = bus.bvalid & bus.bready
    r_hs = bus.rvalid & bus.rready
    m.d.sync += [aw_due.eq(aw_due + (bus.awvalid & bus.awready) - b_hs),
                 w_due.eq(w_due + (bus.wvalid & bus.wready) - b_hs),
                 ar_due.eq(ar_due + (bus.arvalid & bus.arready) - r_hs)]
    p.assert_("b.after_write", ~bus.bvalid | ((aw_due != 0) & (w_due != 0)))
    p.assert_("r.after_read", ~bus.rvalid | (ar_due != 0))
    # one write waits for its B while the next address and data may already be taken
    p.assert_("aw.in_flight", aw_due <= 2)
    p.assert_("w.in_flight", w_due <= 2)
    p.assert_("ar.one_in_flight", ar_due <= 1)
    # where each request is: its address/data register is full (READY low) or its response is
    # offered; these equalities make the proof inductive (unbounded)
    p.assert_("aw.accounted", aw_due == (~bus.awready).as_unsigned() + bus.bvalid)
    p.assert_("w.accounted", w_due == (~bus.wready).as_unsigned() + bus.bvalid)
    p.assert_("ar.accounted", ar_due == bus.rvalid)
    p.cover("b.response", b_hs)
    p.cover("r.response", r_hs)


def ap_ctrl_hs_properties(p: Properties, ctl) -> None:
    p.assume("env.done_while_busy", ~ctl.done | ctl.busy)
    started = p.past(ctl.start, name="started")
    was_busy = p.past(ctl.busy & ~ctl.done, name="was_busy")
    finished = p.past(ctl.busy & ctl.done, name="finished")
    p.assert_("ap.start_idle", ~ctl.start | ~ctl.busy)
    p.assert_("ap.start_pulse", ~started | ~ctl.start, after_first=True)
    p.assert_("ap.busy_after_start", ~started | ctl.busy, after_first=True)
    p.assert_("ap.busy_until_done", ~was_busy | ctl.busy, after_first=True)
    p.assert_("ap.idle_after_done", ~finished | ~ctl.busy, after_first=True)
    p.cover("ap.run", finished)
