"""Coverage closure bench: what the engine benches do not provoke, driven on purpose.

Run by ``hbmforge verify`` beside the regression (:mod:`hbmforge.flows.verify`):

* every register of the manifest is read (the control slave's read multiplexer);
* every descriptor check of the design fires: for each error code a descriptor rule can give,
  a descriptor is searched by mutating a valid one (a random layer's MATMUL, or an all-zero
  descriptor of the other opcodes) until ``DesignLayout.validate_descriptor`` names that code;
  the RTL must stop with the same code at the same index, as the golden checks do, and a
  descriptor of an opcode the design does not run stops with BAD_OPCODE.

Codes no mutation reaches from those starting points (most run-time codes) are reported in
the log and stay missing bins of the functional coverage.
"""
from __future__ import annotations

import cocotb
import numpy as np

from hbmforge.encodings import ErrorCode, Opcode

from .tb_kernel import SEED, Layer, Program, _bench, _program

_TRIES = 400


def _pool(rng: np.random.Generator, word: int, base: int) -> int:
    choices = [0, 1, 2, 3, word, word + 1, 2 * word, 4096, 1 << 16, (1 << 31), (1 << 32) - word,
               (1 << 32) + word, 1 << 40, base + 1, max(base - 1, 0), base * 2, int(rng.integers(0, 1 << 20))]
    return int(choices[int(rng.integers(len(choices)))])


def _violating(lay, base: dict, code: ErrorCode, rng: np.random.Generator) -> dict | None:
    """A descriptor whose first failing check is ``code``, found by mutating 1-3 fields of ``base``."""
    names = [n for n in base if n != "op"]
    for _ in range(_TRIES):
        d = dict(base)
        for _ in range(int(rng.integers(1, 4))):
            n = names[int(rng.integers(len(names)))]
            d[n] = _pool(rng, lay.addr_align, int(base[n]))
        if lay.validate_descriptor(d)[0] == code:
            return d
    return None


@cocotb.test()
async def test_every_register_reads(dut):
    bench, lay = await _bench(dut, seed_offset=901)
    for reg in lay.registers:
        value = await bench.reg_read(reg.name)
        assert 0 <= value < 1 << reg.width
    assert await bench.reg_read("ID") == lay.kernel_id


@cocotb.test()
async def test_every_descriptor_check_fires_in_rtl_as_in_the_golden_checks(dut):
    bench, lay = await _bench(dut, seed_offset=902)
    rng = np.random.default_rng(SEED + 902)
    bases = {}
    for op in lay.opcodes.values():
        if op == Opcode.END:
            continue
        if op == Opcode.MATMUL:
            bases[op] = Layer(bench, lay, rng).descriptor()
        else:
            bases[op] = {"op": op, **{n: 0 for n in lay.fields_for(op)}}
    fired, unreached = [], []
    cases = [(op, check.code) for op in bases for check in lay.checks(op)]
    unknown = next(o for o in range(1, 256) if o not in [int(v) for v in lay.opcodes.values()])
    for op, code in [*dict.fromkeys(cases), (None, ErrorCode.BAD_OPCODE)]:
        if op is None:
            desc = {"op": unknown}
            want = ErrorCode.BAD_OPCODE
        else:
            desc = _violating(lay, bases[op], code, rng)
            if desc is None:
                unreached.append(f"{Opcode(op).name}:{ErrorCode(code).name}")
                continue
            want = lay.validate_descriptor(desc)[0]
        if op is None:                      # not encodable by the layout: raw bytes
            addr = bench.alloc(lay.descriptor_bytes)
            bench.write(addr, unknown.to_bytes(8, "little") + bytes(lay.descriptor_bytes - 8))
        else:
            prog = Program(lay)
            prog.add(desc, check=False)
            addr = await _program(bench, prog)
        status = await bench.run(addr, 1)
        assert status & 1, f"{ErrorCode(want).name}: the RTL accepted {desc}"
        assert (status >> 8) & 0xFF == want, (f"{desc}: RTL stopped with code {(status >> 8) & 0xFF}, "
                                              f"the golden checks with {int(want)} ({ErrorCode(want).name})")
        assert status >> 16 == 0
        fired.append(ErrorCode(want).name)
    dut._log.info(f"descriptor checks fired in RTL: {sorted(set(fired))}; not reached by mutation: {unreached}")
    assert fired, "no descriptor check fired"


def _poison(bench, port: str, base: int, size: int) -> None:
    """The bus model of ``port`` answers SLVERR for every access to [base, base + size)."""
    read_if, write_if = bench.rams[port]
    read, write = read_if._read, write_if._write

    async def bad_read(address, length):
        if base <= address < base + size:
            raise IOError(f"poisoned read at {address:#x}")
        return await read(address, length)

    async def bad_write(address, data):
        if base <= address < base + size:
            raise IOError(f"poisoned write at {address:#x}")
        return await write(address, data)

    read_if._read, write_if._write = bad_read, bad_write


@cocotb.test()
async def test_axi_error_responses_stop_the_run_with_axi_resp(dut):
    """SLVERR on the descriptor fetch, on an engine read and on an engine write."""
    bench, lay = await _bench(dut, seed_offset=903, busy=0.1)
    rng = np.random.default_rng(SEED + 903)
    bad = bench.alloc(1 << 16)
    _poison(bench, "data", bad, 1 << 16)
    status = await bench.run(bad, 1)                              # the descriptor fetch itself fails
    assert status & 1 and (status >> 8) & 0xFF == ErrorCode.AXI_RESP, f"fetch error: STATUS={status:#x}"
    if Opcode.MATMUL not in lay.opcodes.values():
        return
    for name in ("x_addr", "y_addr"):                            # an engine read, an engine write
        layer = Layer(bench, lay, rng, m=1, n=1)
        desc = layer.descriptor()
        desc[name] = bad
        prog = Program(lay)
        prog.add(desc)
        status = await bench.run(await _program(bench, prog), 1)
        assert status & 1 and (status >> 8) & 0xFF == ErrorCode.AXI_RESP, f"{name} poisoned: STATUS={status:#x}"
        assert status >> 16 == 0
    layer = Layer(bench, lay, rng, m=1, n=1)                      # and the next run is clean
    prog = Program(lay)
    layer.add_to(prog)
    assert await bench.run(await _program(bench, prog), 1) == 0
    layer.check(bench, "run after AXI errors")


@cocotb.test()
async def test_unmapped_registers_read_zero(dut):
    bench, lay = await _bench(dut, seed_offset=904)
    used = {r.offset + 4 * w for r in lay.registers for w in range(r.width // 32)}
    free = [a for a in range(0, 1 << 12, 4) if a not in used]
    for addr in (free[0], free[-1]):
        await bench.ctrl.write_dword(addr, 0xFFFFFFFF)               # ignored
        assert await bench.ctrl.read_dword(addr) == 0
    ctrl = lay.reg("CTRL").offset
    await bench.ctrl.write_dword(ctrl, 1 << 7)                       # auto_restart: stored, read back
    assert (await bench.ctrl.read_dword(ctrl)) & (1 << 7)
    await bench.ctrl.write_dword(ctrl, 0)
    assert not (await bench.ctrl.read_dword(ctrl)) & (1 << 7)


@cocotb.test()
async def test_empty_and_misaligned_programs_and_the_ready_interrupt(dut):
    bench, lay = await _bench(dut, seed_offset=905, busy=0.0)
    addr = bench.alloc(lay.descriptor_bytes)
    await bench.reg_write("IER", 0b11)                               # ap_done and ap_ready events
    assert await bench.run(addr, 0) == 0                            # count 0: done at once, nothing run
    assert await bench.reg_read("DESC_DONE") == 0
    assert await bench.reg_read("ISR") == 0b11
    await bench.reg_write("ISR", 0b11)                               # toggle both back
    assert await bench.reg_read("ISR") == 0
    status = await bench.run(addr + 4, 1)                            # program not word-aligned
    assert status & 1 and (status >> 8) & 0xFF == ErrorCode.MISALIGNED, f"STATUS={status:#x}"


@cocotb.test()
async def test_matmul_row_block_boundaries_run_bit_exact(dut):
    """M at every row-block boundary (one row, one block, whole blocks, a partial last block)
    in one program, each layer checked against the golden model."""
    bench, lay = await _bench(dut, seed_offset=906)
    if Opcode.MATMUL not in lay.opcodes.values():
        return
    rng = np.random.default_rng(SEED + 906)
    rows = lay.mm.rows
    prog = Program(lay)
    layers = [Layer(bench, lay, rng, m=m, n=int(rng.integers(1, 4))) for m in sorted({1, rows, 2 * rows, rows + 1})]
    for layer in layers:
        layer.add_to(prog)
    assert await bench.run(await _program(bench, prog), len(prog)) == 0
    for layer in layers:
        layer.check(bench, f"m={layer.m}")
