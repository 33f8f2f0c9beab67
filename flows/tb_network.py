"""cocotb tests of the ALLREDUCE engine in a whole kernel: the kernel is one worker of a job whose
switch and other workers are the golden models (hbmforge.numerics.network), behind the kernel's
``s_axis_net``/``m_axis_net`` (cocotbext-axi stream models with random gaps and back-pressure).

Runs with :mod:`hbmforge.flows.tb_kernel` (the same bench: AXI RAM models with random
back-pressure and latency, the AXI rule monitor). Packets are lost, duplicated and held back
(reordered) between the kernel, the switch and the peers; every reduced buffer must be
bit-exact, in the kernel's memory and in every peer, and STATUS, DESC_DONE and the NET_*
counters must agree with what happened.
"""
from __future__ import annotations

import heapq
import os
import random

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource

from hbmforge.encodings import ErrorCode, NetMode, Opcode
from hbmforge.engines.network import EndpointGeometry, Header, PacketType, SwitchGeometry
from hbmforge.numerics.network import GoldenEndpoint, GoldenSwitch, Packet, job_of, reduce_reference

from .tb_kernel import SEED, Layer, Program, _bench, design_has

HAS_NETWORK = design_has("network")
CASES = int(os.environ.get("HBMFORGE_TB_CASES", "4"))
WORKERS = 3
ME = 1


class Network:
    """The golden switch and the peers around the kernel (worker ``ME``), with seeded faults."""

    def __init__(self, dut, lay, *, seed: int, loss: float, dup: float, reorder: float, gaps: float):
        eng = lay.config.engine("network")
        self.width = lay.config.data_width
        self.geom = SwitchGeometry(ports=WORKERS, data_width=self.width, packet_words=eng.packet_words,
                                   slots=eng.window, jobs=eng.jobs)
        self.switch = GoldenSwitch(self.geom)
        eg = EndpointGeometry.of(lay)
        self.peers = {i: GoldenEndpoint(i, eg, self.width) for i in range(WORKERS) if i != ME}
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.dut = dut
        self.cycle = 0
        self.later: list = []
        self.seq = 0
        self.source = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis_net"), dut.ap_clk, dut.ap_rst_n,
                                      reset_active_level=False)
        self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis_net"), dut.ap_clk, dut.ap_rst_n,
                                  reset_active_level=False)
        prng = random.Random(seed + 1)
        self.source.set_pause_generator(iter(lambda: prng.random() < gaps, None))
        self.sink.set_pause_generator(iter(lambda: prng.random() < gaps, None))
        self.absent: set[int] = set()
        cocotb.start_soon(self._run())

    def _fault(self, where: str, port: int, pkt: Packet) -> None:
        if self.rng.random() < self.loss:
            return
        for _ in range(2 if self.rng.random() < self.dup else 1):
            delay = self.rng.randint(1, 200) if self.rng.random() < self.reorder else 0
            self.seq += 1
            heapq.heappush(self.later, (self.cycle + 1 + delay, self.seq, where, port, pkt))

    def inject(self, words: list[int]) -> None:
        """Send raw stream words to the kernel (a forged or malformed packet)."""
        data = b"".join(int(w).to_bytes(self.width // 8, "little") for w in words)
        self.source.send_nowait(AxiStreamFrame(data))

    async def _run(self) -> None:
        wb = self.width // 8
        while True:
            await RisingEdge(self.dut.ap_clk)
            self.cycle += 1
            while not self.sink.empty():
                frame = self.sink.recv_nowait()
                data = bytes(frame.tdata)
                words = [int.from_bytes(data[i:i + wb], "little") for i in range(0, len(data), wb)]
                self._fault("up", ME, Packet.from_words(words, self.width))
            while self.later and self.later[0][0] <= self.cycle:
                _, _, where, port, pkt = heapq.heappop(self.later)
                if where == "up":
                    for d in self.switch.receive(port, pkt):
                        for q in d.ports:
                            self._fault("down", q, d.packet)
                elif port == ME:
                    self.inject(pkt.words(self.width))
                elif port in self.peers and port not in self.absent:
                    self.peers[port].on_packet(pkt, self.cycle)
            for i, ep in self.peers.items():
                if i in self.absent:
                    continue
                if ep.next_deadline() <= self.cycle:
                    ep.on_timer(self.cycle)
                for pkt in ep.take_outbox():
                    self._fault("up", i, pkt)

    def start_peers(self, d: dict, buffers: dict) -> None:
        for i, buf in buffers.items():
            self.peers[i].start(job_of(dict(d, worker=i)), buf, self.cycle)

    async def settle(self, buffers: dict, limit: int = 400_000) -> None:
        """Wait until every started peer is done (their last results may still be on the way)."""
        for _ in range(limit // 16):
            if all(self.peers[i].done for i in buffers):
                return
            await ClockCycles(self.dut.ap_clk, 16)
        raise AssertionError(f"peers {[i for i in buffers if not self.peers[i].done]} did not finish")


def _descriptor(lay, rng: np.random.Generator, addr: int, nbytes: int, job: int, mode) -> dict:
    window = int(rng.integers(1, lay.config.engine("network").window + 1))
    return {"op": Opcode.ALLREDUCE, "mode": mode, "job": job, "worker": ME, "members": (1 << WORKERS) - 1,
            "epoch": 0, "addr": addr, "bytes": nbytes, "window": window, "inflight": int(rng.integers(1, window + 1)),
            "timeout": 300, "retries": 60}


async def _counters(bench) -> dict:
    return {n: await bench.reg_read(n) for n in ("NET_PACKETS", "NET_RETRANSMITS", "NET_RESULTS", "NET_DUPLICATES",
                                                  "NET_BAD_PACKETS", "NET_HEARD")}


@cocotb.test(skip=not HAS_NETWORK)
async def test_network_allreduces_and_matmul_match_golden_under_faults_and_backpressure(dut):
    bench, lay = await _bench(dut, seed_offset=401)
    net = Network(dut, lay, seed=SEED + 401, loss=0.1, dup=0.05, reorder=0.05, gaps=0.3)
    rng = np.random.default_rng(SEED + 401)
    eg = EndpointGeometry.of(lay)
    word = lay.word_bytes
    for case in range(max(3, CASES)):
        # one program: an all-reduce, a matmul (the engines switch), another all-reduce
        prog = Program(lay)
        jobs = []
        for j in range(2):
            nbytes = int(rng.integers(1, 5 * eg.packet_words)) * word
            addr = bench.alloc(nbytes)
            mine = rng.integers(-2**31, 2**31, nbytes // 4).astype(np.int32)
            bench.write(addr, mine.tobytes())
            mode = NetMode.MAX if (case + j) % 4 == 3 else NetMode.SUM
            d = _descriptor(lay, rng, addr, nbytes, (case + j) % eg.jobs, mode)
            peers = {i: rng.integers(-2**31, 2**31, nbytes // 4).astype(np.int32) for i in net.peers}
            want = reduce_reference([peers[0], mine, peers[2]], mode)        # before the peers reduce in place
            jobs.append((d, want, peers))
            prog.add(d)
            if j == 0:
                layer = Layer(bench, lay, rng, out_mode="int32")
                layer.add_to(prog)
        addr = bench.alloc(prog.nbytes)
        bench.write(addr, prog.to_bytes())
        await bench.reg_write("program", addr)
        await bench.reg_write("count", len(prog))
        net.start_peers(jobs[0][0], jobs[0][2])
        await bench.reg_write("CTRL", 1)
        started_second = False
        for _ in range(2_000_000 // 16):
            await ClockCycles(dut.ap_clk, 16)
            if not started_second and all(net.peers[i].done for i in jobs[0][2]):
                net.start_peers(jobs[1][0], jobs[1][2])       # the peers' next descriptor
                started_second = True
            if (await bench.reg_read("CTRL")) & 0b10:
                break
        else:
            raise AssertionError(f"case {case}: the kernel did not finish")
        bench.assert_rules()
        assert await bench.reg_read("STATUS") == 0, f"case {case}: STATUS {await bench.reg_read('STATUS'):#x}"
        assert await bench.reg_read("DESC_DONE") == len(prog)
        await net.settle(jobs[1][2])
        layer.check(bench, f"case {case}: matmul between all-reduces")
        c = await _counters(bench)
        assert c["NET_RESULTS"] == sum(eg.blocks(d["bytes"]) for d, _, _ in jobs), "NET_RESULTS: each block once"
        assert c["NET_PACKETS"] >= c["NET_RESULTS"] and c["NET_BAD_PACKETS"] == 0
        for d, want, peers in jobs:
            got = np.frombuffer(bench.read(d["addr"], d["bytes"]), np.int32)
            assert np.array_equal(got, want), f"case {case}: the kernel's buffer differs from the golden reduction"
            for i, p in peers.items():
                assert np.array_equal(p, want), f"case {case}: peer {i} differs"


@cocotb.test(skip=not HAS_NETWORK)
async def test_network_bad_packets_dropped_and_absent_member_stops_with_net_timeout(dut):
    bench, lay = await _bench(dut, seed_offset=402, busy=0.1)
    net = Network(dut, lay, seed=SEED + 402, loss=0.0, dup=0.0, reorder=0.0, gaps=0.1)
    rng = np.random.default_rng(SEED + 402)
    eg = EndpointGeometry.of(lay)
    # a forged result with a bad check and a stray one while idle: dropped and counted
    forged = Packet(Header(type=PacketType.RESULT, worker=0, count=1, members=7),
                    np.zeros(lay.word_bytes // 4, np.int32))
    words = forged.words(lay.config.data_width)
    net.inject([words[0] ^ 1 << 33] + words[1:])
    net.inject(words)
    await ClockCycles(dut.ap_clk, 200)
    c = await _counters(bench)
    assert (c["NET_BAD_PACKETS"], c["NET_DUPLICATES"]) == (1, 1), c
    nbytes = 2 * eg.packet_bytes
    addr = bench.alloc(nbytes)
    mine = rng.integers(-9, 9, nbytes // 4).astype(np.int32)
    bench.write(addr, mine.tobytes())
    net.absent = {2}                                   # worker 2 never joins
    d = _descriptor(lay, rng, addr, nbytes, 0, NetMode.SUM)
    d.update(timeout=120, retries=3)
    prog = Program(lay)
    prog.add(d)
    paddr = bench.alloc(prog.nbytes)
    bench.write(paddr, prog.to_bytes())
    net.start_peers(d, {0: rng.integers(-9, 9, nbytes // 4).astype(np.int32)})
    status = await bench.run(paddr, 1, timeout_cycles=400_000)
    assert status == (1 | ErrorCode.NET_TIMEOUT << 8), f"STATUS {status:#x}"
    c = await _counters(bench)
    assert c["NET_BAD_PACKETS"] == 0, "counters restart with the run"
    assert c["NET_HEARD"] == 0b011, f"the switch heard {c['NET_HEARD']:#05b}: worker 2 is the one missing"
    assert c["NET_RETRANSMITS"] >= 3
    assert bench.read(addr, nbytes) == mine.tobytes(), "a failed all-reduce changed the buffer"
