"""A tensor-parallel decoder block across the devices of a :class:`~hbmforge.host.cluster.Cluster`,
bit-exact with the same block on one device.

    blk = TensorParallelBlock(cluster, cfg, weights)   # a llama BlockConfig and its BlockWeights
    seq = blk.sequence()                               # KV pages on every device (its heads only)
    h = blk.prefill(x, seq)                            # float [T, hidden]: TransformerBlock(dev, cfg,
    h1 = blk.decode_step(x1, seq)                      #   weights).prefill(x, seq), bit for bit
    blk.last_step                                      # TensorParallelStep: cycles, network, ...

Device ``d`` of ``N`` holds a contiguous ``1/N`` of the query heads and of the KV heads (``kv_heads``
must divide by ``N``), of the intermediate columns and of the hidden columns; the residual stream
``h`` lives on every device. Each device runs one program per step (started together); the
gathers are ALLREDUCE SUMs on the device of buffers zeroed outside the device's own columns::

    h -> RMSNorm -> xa (int8 rows + per-token scales: the same on every device)
      -> QKV of my heads (the full matrix's output shift) -> Q records, K/V of my KV heads
         appended to my KV pages -> attention of my heads, one descriptor per token so its rows
         land in that token's full row of o -> all-gather o
      -> int8 rows of the whole o row -> o_proj, my hidden columns -> all-gather -> h += deq(y)
    h -> RMSNorm -> xa -> gate and up, my intermediate columns -> all-gather
      -> SiLU(gate) * up -> int8 rows of the whole row -> down_proj, my hidden columns
      -> all-gather -> h += deq(y)

Why gathers and not Megatron's two all-reduces (row-split o_proj and down_proj): the vector
engine quantizes each token's row to int8 with that row's maximum, which a device holding a slice
of the row does not see, and a row-split matmul rounds each partial with the output shift; both
would make the result differ from one device. Gathering whole rows costs more bytes on the links
(``T x (heads*head_dim + 2*intermediate + 2*hidden) x 4`` per layer instead of ``2 x T x hidden x 4``)
and repeats the vector work of the full rows on every device; every matmul and the attention are
split.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hbmforge.encodings import AttentionMode, NetMode, VectorAct, VectorCombine, VectorIn, VectorNorm, VectorOut
from hbmforge.memory_map import golden_scratch
from hbmforge.numerics import vector as V
from hbmforge.numerics.attention import kv_head_scale, pack_block_table
from hbmforge.numerics.encoded import EncodedWeights
from hbmforge.numerics.network import GoldenFabric
from hbmforge.numerics.program import SparseMemory

from .blocks import (F_ACT, BlockConfig, BlockProgramError, BlockWeights, ModelProgram, ModelSequence, _int32,
                     _interleave_rows, _Layer, _Matmul, _stack, _take_rows)
from .checks import check_int, check_timeout
from .cluster import Cluster, ClusterError, ClusterProgram
from .errors import DeviceRunError
from .linear import choose_out_shift
from .packing import engine_format, pack_scales, pack_weights
from .tp import split_even

__all__ = ["TensorParallelBlock", "TensorParallelSequence", "TensorParallelStep"]


@dataclass
class TensorParallelStep:
    """What one step cost on the cluster."""

    tokens: int = 0
    descriptors: int = 0               # per device
    allreduces: int = 0                # per device
    allreduce_bytes: int = 0           # per device (each all-reduce's buffer)
    cycles: int = 0                    # the slowest device's CYCLES
    network_cycles: int = 0
    elapsed_s: float = 0.0
    counters: dict = field(default_factory=dict)


@dataclass
class _ShardLayer(_Layer):
    gate: _Matmul = None               # the device's gate columns (``up`` holds its up columns)


def _out_shift(enc: EncodedWeights, lay) -> int:
    """The output shift one device uses for this matrix (ModelProgram._matmul's bound)."""
    q = enc.q.astype(np.int64)
    n, kp = q.shape
    g = lay.mm.group_size
    col_l1 = int((np.abs(q.reshape(n, kp // g, g)).sum(axis=2) * enc.mantissas.astype(np.int64)).sum(axis=1).max())
    return choose_out_shift(127 * col_l1, lay.matmul.widths.max_out_shift)


def _rows(enc: EncodedWeights, order) -> EncodedWeights:
    return _take_rows(enc, np.asarray(order, dtype=np.int64))


class _Shard(ModelProgram):
    """Device ``index``'s part of the block: a ModelProgram whose layers hold only its heads and
    columns, with the single-device output shifts and the full-row tables."""

    def __init__(self, device, config: BlockConfig, blocks, *, parts: dict, **options):
        self._parts = parts
        super().__init__(device, config, blocks, **options)

    def _part(self, enc: EncodedWeights, order) -> _Matmul:
        """The rows ``order`` of ``enc`` on the device, with the whole matrix's output shift."""
        lay = self._lay
        part = _rows(enc, order)
        bits = engine_format(part.bits, lay, "bits")
        w = [self._upload(s, f"w{i}") for i, s in enumerate(pack_weights(part.q.astype(np.int8), bits, lay))]
        s = self._upload(pack_scales(part.mantissas.astype(np.uint16), lay))
        return _Matmul(n=part.q.shape[0], k=part.q.shape[1], bits=bits, w=w, s=s, out_shift=_out_shift(enc, lay),
                       row_scale=np.asarray(part.row_scale, float))

    def _whole(self, enc: EncodedWeights) -> _Matmul:
        """Only the column constants of the whole matrix (its rows are not on this device)."""
        return _Matmul(n=enc.q.shape[0], k=enc.q.shape[1], bits=enc.bits, w=[], s=None,
                       out_shift=_out_shift(enc, self._lay), row_scale=np.asarray(enc.row_scale, float))

    def _build_layer(self, i, enc, norms, biases, ranges) -> _ShardLayer:
        cfg, att, lay = self._cfg, self._att, self._lay
        hd, qh, kvh, I = cfg.head_dim, cfg.heads, cfg.kv_heads, cfg.intermediate
        Fh = cfg.residual_frac_bits
        (h0, h1), (k0, k1) = self._parts["heads"], self._parts["kv_heads"]
        (i0, i1), (c0, c1) = self._parts["intermediate"], self._parts["hidden"]
        nq, nk = qh * hd, kvh * hd
        oq, ok = _interleave_rows(qh, hd), _interleave_rows(kvh, hd)
        qkv_all = _stack(_take_rows(enc["q_proj"], oq), _take_rows(enc["k_proj"], ok), enc["v_proj"])
        mine_q, mine_k = np.arange(h0 * hd, h1 * hd), np.arange(k0 * hd, k1 * hd)
        qkv = self._part(qkv_all, np.concatenate([mine_q, nq + mine_k, nq + nk + mine_k]))
        o = self._part(enc["o_proj"], np.arange(c0, c1))
        gu_all = _stack(enc["gate_proj"], enc["up_proj"])
        gate, up = self._part(gu_all, np.arange(i0, i1)), self._part(gu_all, np.arange(I + i0, I + i1))
        down = self._part(enc["down_proj"], np.arange(c0, c1))
        o_all, gu, down_all = self._whole(enc["o_proj"]), self._whole(gu_all), self._whole(enc["down_proj"])
        k_scale = kv_head_scale(ranges[0], self.kv_bits)
        v_scale = kv_head_scale(ranges[1], self.kv_bits)
        nq_l, nk_l = len(mine_q), len(mine_k)
        t = {"q_cols": self._table(qkv.columns(F_ACT, F_ACT, 0, nq_l)),
             "k_cols": self._table(qkv.columns(F_ACT, F_ACT, nq_l, nq_l + nk_l)),
             "v_cols": self._table(qkv.columns(F_ACT, F_ACT, nq_l + nk_l, nq_l + 2 * nk_l))}
        qb, kb, vb = biases.get("q_proj"), biases.get("k_proj"), biases.get("v_proj")
        for name, b in (("q_bias", None if qb is None else qb[oq][mine_q]),
                        ("k_bias", None if kb is None else kb[ok][mine_k]),
                        ("v_bias", None if vb is None else vb[mine_k])):
            if b is not None:
                t[name] = self._table(_int32(name, b, F_ACT))
        W8 = lay.word_bytes
        t["q_consts"] = self._upload(np.asarray(V.qrec_constants(k_scale[k0:k1], qh // kvh, head_dim=hd,
                                                                 frac_bits=F_ACT), "<u8").tobytes()
                                     + bytes(-(h1 - h0) * 8 % W8))
        for name, hs in (("k_consts", k_scale[k0:k1]), ("v_consts", v_scale[k0:k1])):
            consts = [int(c) for c in V.kv_constants(hs, self.kv_bits, frac_bits=F_ACT)]
            t[name] = self._upload(np.asarray(consts, "<u8").tobytes() + bytes(-(k1 - k0) * 8 % W8))
        # the whole rows: every device runs the vector ops of the full rows after a gather
        t["att_cols"] = self._table(V.column_multipliers(np.repeat(v_scale, qh // kvh * hd) * 2.0 ** (F_ACT - 8)))
        t["o_cols"] = self._table(o_all.columns(F_ACT, Fh))
        t["gate_cols"] = self._table(gu.columns(F_ACT, F_ACT, 0, I))
        t["up_cols"] = self._table(gu.columns(F_ACT, F_ACT, I, 2 * I))
        t["down_cols"] = self._table(down_all.columns(F_ACT, Fh))
        for name, key in (("o_proj", "o_bias"), ("down_proj", "down_bias")):
            if name in biases:
                t[key] = self._table(_int32(f"{name} bias", biases[name], Fh))
        consts = {"norm1": self._norm_tables(norms[0], VectorNorm.RMS, out_frac=F_ACT),
                  "norm2": self._norm_tables(norms[1], VectorNorm.RMS, out_frac=F_ACT)}
        pool = self.num_pages * att.page_bytes(self.kv_bits, k1 - k0)
        k_pool = self._dev.alloc(pool, "w0")
        self._owned.append(k_pool)
        v_pool = self._dev.alloc(pool, f"w{att.kv_ports - 1}")
        self._owned.append(v_pool)
        return _ShardLayer(qkv=qkv, o=o, up=up, down=down, tables=t, consts=consts, k_pool=k_pool, v_pool=v_pool,
                           k_scale=k_scale[k0:k1], v_scale=v_scale[k0:k1], gate=gate)

    def _snapshot(self, seq: ModelSequence, pages) -> SparseMemory:
        """The base snapshot with this device's KV pools (its KV heads only)."""
        dev = self._dev
        if self._static_pages is None:
            base = SparseMemory()
            for buf in self._static:
                base.write(buf.address, dev.read(buf))
            self._static_pages = base.pages
        mem = SparseMemory(dict(self._static_pages))
        (k0, k1) = self._parts["kv_heads"]
        page_bytes = self._att.page_bytes(self.kv_bits, k1 - k0)
        for L in self.layers:
            for pool in (L.k_pool, L.v_pool):
                for pg in pages:
                    mem.write(pool.address + pg * page_bytes, dev.read(pool, page_bytes, pg * page_bytes))
        return mem

    # -- buffers and the program of one step --------------------------------------------------------
    def _gathers(self, T: int) -> dict:
        """Byte offsets and sizes of one layer's gather buffers: o rows, o_proj, gate|up, down_proj."""
        cfg, vg = self._cfg, self._vg
        blocked = lambda n: vg.blocks(T) * vg.rows * n * 4          # noqa: E731
        sizes = {"o": T * cfg.heads * cfg.head_dim * 4, "y_o": blocked(cfg.hidden),
                 "y_gu": blocked(2 * cfg.intermediate), "y_down": blocked(cfg.hidden)}
        out, off = {}, 0
        for name, n in sizes.items():
            out[name] = (off, n)
            off += n
        out["layer"] = (0, off)
        return out

    def _sizes(self, T: int) -> dict:
        cfg, vg, att = self._cfg, self._vg, self._att
        R = vg.rows
        (h0, h1), (k0, k1) = self._parts["heads"], self._parts["kv_heads"]
        hd = cfg.head_dim
        widest = max(cfg.hidden, cfg.intermediate, cfg.heads * hd)
        sizes = {"h": vg.blocks(T) * R * cfg.hidden * 4, "xa": T * widest, "xs_a": vg.scale_bytes(T),
                 "xb": T * widest, "xs_b": vg.scale_bytes(T), "yqkv": vg.blocks(T) * R * (h1 - h0 + 2 * (k1 - k0)) * hd * 4,
                 "qrec": T * (h1 - h0) * att.q_record_bytes,
                 "gather": len(self.layers) * self._gathers(T)["layer"][1]}
        scratch = max([self._partial_bytes(T, L.qkv) for L in self.layers]
                      + [self._partial_bytes(R, mm) for L in self.layers for mm in (L.o, L.gate, L.up, L.down)])
        if scratch:
            sizes["partial"] = scratch
        return sizes

    def tp_program(self, T: int, pos0: int, seq: ModelSequence, a: dict, allreduce) -> ClusterProgram:
        cfg, vg, att = self._cfg, self._vg, self._att
        R = vg.rows
        hd, qh, kvh, H, I = cfg.head_dim, cfg.heads, cfg.kv_heads, cfg.hidden, cfg.intermediate
        (h0, h1), (k0, k1) = self._parts["heads"], self._parts["kv_heads"]
        (i0, _), (c0, _) = self._parts["intermediate"], self._parts["hidden"]
        nq, nq_l, nk_l = qh * hd, (h1 - h0) * hd, (k1 - k0) * hd
        nqkv_l = nq_l + 2 * nk_l
        p = ClusterProgram(self._dev)
        blk = lambda n: R * n * 4                                    # noqa: E731  (row block stride)
        res = dict(a_fmt=VectorIn.RES32, a_addr=a["h"], a_stride=blk(H))
        gat = self._gathers(T)

        def t(layer, name):
            return layer.tables[name].address

        def placed(mm: _Matmul, x: int, k: int, y: int, n_all: int, col0: int) -> None:
            """My columns of a matmul, each row block where it goes in the whole blocked output."""
            for b in range(vg.blocks(T)):
                mb = min(R, T - b * R)
                split = {"p": a["partial"]} if self._partial_bytes(mb, mm) else {}
                p.matmul(m=mb, k=mm.k, n=mm.n, wbits=mm.bits, x=x + b * R * k, s=mm.s,
                         y=y + (b * n_all + col0) * R * 4, w=mm.w, out_shift=mm.out_shift, **split)

        for li, L in enumerate(self.layers):
            g = {name: a["gather"] + li * gat["layer"][1] + off for name, (off, _) in gat.items() if name != "layer"}
            p.vector(m=T, dim=H, **res, **self._norm_fields(L.consts["norm1"]), out_fmt=VectorOut.ACT8,
                     y_addr=a["xa"], y_scale=a["xs_a"])
            split = {"p": a["partial"]} if self._partial_bytes(T, L.qkv) else {}
            p.matmul(m=T, k=L.qkv.k, n=L.qkv.n, wbits=L.qkv.bits, x=a["xa"], s=L.qkv.s, y=a["yqkv"], w=L.qkv.w,
                     out_shift=L.qkv.out_shift, **split)
            acc = dict(a_fmt=VectorIn.ACC32, a_stride=blk(nqkv_l), a_scale=a["xs_a"])
            rope = dict(rope=1, rope_addr=self._rope.address)
            p.vector(m=T, dim=nq_l, **acc, a_addr=a["yqkv"], a_cols=t(L, "q_cols"), **self._bias(L, "q_bias"),
                     **rope, pos0=pos0, out_fmt=VectorOut.QREC, y_addr=a["qrec"], consts_addr=t(L, "q_consts"))
            for col0, which, pool, port in ((nq_l, "k", L.k_pool, 1), (nq_l + nk_l, "v", L.v_pool, att.kv_ports)):
                p.vector(m=T, dim=nk_l, **acc, a_addr=a["yqkv"] + blk(col0), a_cols=t(L, f"{which}_cols"),
                         **self._bias(L, f"{which}_bias"), **(rope if which == "k" else {}), pos0=pos0,
                         out_fmt=VectorOut.KV, consts_addr=t(L, f"{which}_consts"), kv_bits=self.kv_bits,
                         bt_addr=seq._bt.address, pool=pool.address, port=port)
            for tok in range(T):                  # each token's rows of my heads into its full row of o
                p.attention(head_dim=hd, kv_heads=k1 - k0, q_per_kv=qh // kvh, n_q=1, ctx_len=pos0 + tok + 1,
                            window=0, sink=0, kv_bits=self.kv_bits,
                            q_addr=a["qrec"] + tok * (h1 - h0) * att.q_record_bytes, bt_addr=seq._bt.address,
                            k_pool=L.k_pool.address, v_pool=L.v_pool.address,
                            o_addr=g["o"] + (tok * nq + h0 * hd) * 4, mode=AttentionMode.CAUSAL, valid_len=0)
            allreduce(p, g["o"], gat["o"][1])
            p.vector(m=T, dim=nq, a_fmt=VectorIn.ROWS32, a_addr=g["o"], a_stride=nq * 4, a_cols=t(L, "att_cols"),
                     out_fmt=VectorOut.ACT8, y_addr=a["xb"], y_scale=a["xs_b"])
            placed(L.o, a["xb"], nq, g["y_o"], H, c0)
            allreduce(p, g["y_o"], gat["y_o"][1])
            self._residual(p, T, L, "o_cols", "o_bias", dict(a, y=g["y_o"]), a["xs_b"], H, None)
            p.vector(m=T, dim=H, **res, **self._norm_fields(L.consts["norm2"]), out_fmt=VectorOut.ACT8,
                     y_addr=a["xa"], y_scale=a["xs_a"])
            placed(L.gate, a["xa"], H, g["y_gu"], 2 * I, i0)
            placed(L.up, a["xa"], H, g["y_gu"], 2 * I, I + i0)
            allreduce(p, g["y_gu"], gat["y_gu"][1])
            p.vector(m=T, dim=I, a_fmt=VectorIn.ACC32, a_addr=g["y_gu"], a_stride=blk(2 * I), a_scale=a["xs_a"],
                     a_cols=t(L, "gate_cols"), act=VectorAct.SILU, b_fmt=VectorIn.ACC32, b_addr=g["y_gu"] + blk(I),
                     b_stride=blk(2 * I), b_cols=t(L, "up_cols"), combine=VectorCombine.MUL,
                     out_fmt=VectorOut.ACT8, y_addr=a["xb"], y_scale=a["xs_b"])
            placed(L.down, a["xb"], I, g["y_down"], H, c0)
            allreduce(p, g["y_down"], gat["y_down"][1])
            self._residual(p, T, L, "down_cols", "down_bias", dict(a, y=g["y_down"]), a["xs_b"], H, None)
        return p


class TensorParallelSequence:
    """One sequence of a :class:`TensorParallelBlock`: the same KV pages on every device."""

    def __init__(self, block: "TensorParallelBlock", parts: list[ModelSequence]):
        self._blk, self.parts = block, parts
        self._freed = False

    @property
    def length(self) -> int:
        return self.parts[0].length

    def __len__(self) -> int:
        return self.length

    @property
    def freed(self) -> bool:
        return self._freed

    def free(self) -> None:
        """Give the pages back on every device (a second free is a no-op)."""
        for s in self.parts:
            s.free()
        self._freed = True

    def truncate(self, length: int) -> None:
        length = check_int("length", length, 0, self.length)
        for s in self.parts:
            s.truncate(length)

    def __repr__(self) -> str:
        return f"TensorParallelSequence({'freed' if self._freed else f'{self.length} tokens'}, {len(self.parts)} devices)"


class TensorParallelBlock:
    """LLaMA decoder blocks split across every device of ``cluster`` (heads, KV heads, intermediate
    and hidden columns), bit-exact with :class:`~hbmforge.host.blocks.TransformerBlock` on one
    device. ``weights``: one BlockWeights or a list (one per layer); ``job``: the cluster job id
    its gathers use; other options as :class:`~hbmforge.host.blocks.ModelProgram` (``kv_bits``,
    ``max_context``, ``kv_pages``, ``kv_ranges``, ``timeout``)."""

    def __init__(self, cluster: Cluster, config: BlockConfig, weights, *, job: int = 0, **options):
        if not isinstance(cluster, Cluster):
            raise TypeError(f"cluster must be a hbmforge.host.Cluster, got {type(cluster).__name__}")
        cluster._check_open()
        if not isinstance(config, BlockConfig):
            raise TypeError(f"config must be a BlockConfig, got {type(config).__name__}")
        cfg = config.checked()
        if cfg.arch != "llama":
            raise BlockProgramError(f"tensor-parallel blocks are decoders (arch 'llama'), got arch {cfg.arch!r}")
        layers = [weights] if isinstance(weights, BlockWeights) else list(weights) if isinstance(
            weights, (list, tuple)) else None
        if not layers:
            raise TypeError("weights must be a BlockWeights or a non-empty list of them (one per layer)")
        self._job = check_int("job", job, 0, cluster.jobs - 1)
        self.timeout = check_timeout(options.get("timeout", 600.0))
        n = cluster.size
        lay = cluster.layout
        W8, R = lay.word_bytes, lay.mm.rows
        if cfg.kv_heads % n:
            raise BlockProgramError(f"kv_heads {cfg.kv_heads} must divide among the {n} devices (each holds whole "
                                    "KV heads and their query heads)")
        align = max(1, W8 // int(np.gcd(W8, R * 4)))          # columns whose blocked rows fill whole words
        parts = []
        spans = {"intermediate": self._even(cfg.intermediate, n, align, "intermediate"),
                 "hidden": self._even(cfg.hidden, n, align, "hidden")}
        qh_l, kv_l = cfg.heads // n, cfg.kv_heads // n
        for d in range(n):
            parts.append({"heads": (d * qh_l, (d + 1) * qh_l), "kv_heads": (d * kv_l, (d + 1) * kv_l),
                          **{k: v[d] for k, v in spans.items()}})
        if (qh_l * cfg.head_dim) % W8 or (kv_l * cfg.head_dim) % W8:
            raise BlockProgramError(f"a device's heads ({qh_l} x {cfg.head_dim}) and KV heads ({kv_l} x "
                                    f"{cfg.head_dim}) must fill whole {W8}-byte port words")
        self._cluster, self._cfg, self._parts = cluster, cfg, parts
        self._shards: list[_Shard] = []
        self.last_step: TensorParallelStep | None = None
        try:
            for d, dev in enumerate(cluster.devices):
                self._shards.append(_Shard(dev, cfg, layers, parts=parts[d], **options))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _even(total: int, parts: int, align: int, what: str) -> list[tuple[int, int]]:
        if total // align < parts or total % align:
            raise BlockProgramError(f"{what} {total} does not split into {parts} parts of whole {align}-column units")
        return split_even(total, parts, align)

    # -- properties ---------------------------------------------------------------------------------
    @property
    def config(self) -> BlockConfig:
        return self._cfg

    @property
    def parts(self) -> list[dict]:
        """Per device: ``[start, end)`` of its heads, KV heads, intermediate and hidden columns."""
        return [dict(p) for p in self._parts]

    @property
    def num_layers(self) -> int:
        return len(self._shards[0].layers)

    # -- sequences and steps ---------------------------------------------------------------------------
    def sequence(self) -> TensorParallelSequence:
        self._check_open()
        made = []
        try:
            for s in self._shards:
                made.append(s.sequence())
        except BaseException:
            for m in made:
                m.free()
            raise
        return TensorParallelSequence(self, made)

    def prefill(self, x, seq: TensorParallelSequence) -> np.ndarray:
        """``T`` tokens (float ``[T, hidden]``) through the blocks; float ``[T, hidden]``."""
        return self._step(x, seq, one=False, golden=False)

    def decode_step(self, x, seq: TensorParallelSequence) -> np.ndarray:
        """One token (float ``[hidden]``); float ``[hidden]``."""
        return self._step(x, seq, one=True, golden=False)

    def golden_prefill(self, x, seq: TensorParallelSequence) -> np.ndarray:
        """:meth:`prefill` computed by every device's golden model on a copy of its memory, the
        gathers by :class:`hbmforge.numerics.network.GoldenFabric` (nothing on the devices changes)."""
        return self._step(x, seq, one=False, golden=True)

    def golden_decode_step(self, x, seq: TensorParallelSequence) -> np.ndarray:
        return self._step(x, seq, one=True, golden=True)

    def _check_seq(self, seq) -> TensorParallelSequence:
        if not isinstance(seq, TensorParallelSequence):
            raise TypeError(f"seq must be a TensorParallelSequence from block.sequence(), got {type(seq).__name__}")
        if seq._blk is not self:
            raise ValueError("this sequence belongs to another tensor-parallel block")
        if seq._freed:
            raise ValueError("this sequence was freed; make a new one with block.sequence()")
        for shard, part in zip(self._shards, seq.parts):
            shard._check_seq(part)
        return seq

    def _step(self, x, seq, *, one: bool, golden: bool) -> np.ndarray:
        self._check_open()
        lead = self._shards[0]
        x = lead._inputs(x, one)
        seq = self._check_seq(seq)
        cfg, cl = self._cfg, self._cluster
        T, pos0 = x.shape[0], seq.length
        if pos0 + T > lead.max_context:
            raise BlockProgramError(f"the sequence would hold {pos0 + T} tokens ({pos0} + {T}); max_context is "
                                    f"{lead.max_context}")
        P = lead._att.page_tokens
        new_pages = -(-(pos0 + T) // P) - len(seq.parts[0]._pages)
        if new_pages > len(lead._free_pages):
            raise BlockProgramError(f"the KV pools have {len(lead._free_pages)} free pages, the sequence needs "
                                    f"{new_pages} more ({pos0} + {T} tokens, {P} tokens per page)")
        x_raw = V.pack_blocked(_int32("x", x, cfg.residual_frac_bits), lead._vg.rows)
        sizes = lead._sizes(T)
        W8 = cl.layout.word_bytes
        window = cl.layout.config.engine("network").window
        members = (1 << cl.size) - 1
        plans = {}
        for d, (shard, part) in enumerate(zip(self._shards, seq.parts)):
            pages = list(part._pages) + shard._free_pages[:new_pages]
            if golden:
                bufs = None
                addrs = golden_scratch([*sizes, "program"])
            else:
                bufs = shard._work.reserve(sizes)
                addrs = {k: b.address for k, b in bufs.items()}

            def allreduce(prog, addr, nbytes, d=d):
                prog.allreduce(addr, mode=NetMode.SUM, job=self._job, worker=d, members=members,
                               epoch=cl.epoch(self._job), window=window, timeout=cl.timeout_cycles,
                               retries=cl.retries, inflight=min(cl.inflight, window), nbytes=nbytes)

            prog = shard.tp_program(T, pos0, part, addrs, allreduce)
            plans[d] = (pages, bufs, prog, addrs)
        bt_raw = {d: pack_block_table(np.asarray(plan[0], np.uint32), W8) for d, plan in plans.items()}
        if golden:
            return self._golden(plans, bt_raw, x_raw, seq, T, one)
        started = time.monotonic()
        try:
            for d, (shard, part) in enumerate(zip(self._shards, seq.parts)):
                bufs = plans[d][1]
                shard.device.write(part._bt, bt_raw[d])
                shard.device.write(bufs["h"], x_raw)
                shard.device.write(bufs["gather"], bytes(bufs["gather"].nbytes))
            run = cl.run_programs({d: plan[2] for d, plan in plans.items()}, timeout=self.timeout)
            outs = [shard._outputs(lambda name, off, n, s=shard, b=plans[d][1]: s.device.read(b[name], n, off),
                                   T, False, one) for d, shard in enumerate(self._shards)]
        except BaseException as err:
            for shard, part in zip(self._shards, seq.parts):
                if not shard.device.closed:
                    try:
                        old = part._pages
                        shard.device.write(part._bt, pack_block_table(np.asarray(old, np.uint32), W8)
                                           if old else bytes(W8))
                    except Exception:
                        pass
            if isinstance(err, ClusterError):
                cl._recover(self._job, 60.0)
            raise
        for d, (shard, part) in enumerate(zip(self._shards, seq.parts)):
            del shard._free_pages[:new_pages]
            part._pages, part._length = plans[d][0], pos0 + T
        self._same(outs)
        self.last_step = TensorParallelStep(
            tokens=T, descriptors=len(plans[0][2]), allreduces=4 * self.num_layers,
            allreduce_bytes=self.num_layers * lead._gathers(T)["layer"][1], cycles=run.cycles,
            network_cycles=run.network_cycles, elapsed_s=time.monotonic() - started, counters=run.counters)
        return outs[0]

    def _golden(self, plans, bt_raw, x_raw, seq, T, one) -> np.ndarray:
        runs, mems = [], []
        for d, (shard, part) in enumerate(zip(self._shards, seq.parts)):
            pages, _, prog, addrs = plans[d]
            mem = shard._snapshot(part, pages)
            mem.write(part._bt.address, bt_raw[d])
            mem.write(addrs["h"], x_raw)
            mem.write(addrs["program"], prog.to_bytes())
            runs.append((mem, addrs["program"], len(prog)))
            mems.append(mem)
        results = GoldenFabric(timeout=self.timeout).run(runs, self._cluster.layout)
        for d, res in enumerate(results):
            if not res.ok:
                raise DeviceRunError(f"device {d}'s golden program failed at descriptor {res.error_index}: "
                                     f"{res.detail}")
        outs = [shard._outputs(lambda name, off, n, m=mems[d], a=plans[d][3]: m.read(a[name] + off, n), T, False, one)
                for d, shard in enumerate(self._shards)]
        self._same(outs)
        return outs[0]

    @staticmethod
    def _same(outs) -> None:
        for d in range(1, len(outs)):
            if not np.array_equal(outs[d], outs[0]):
                raise RuntimeError(f"device {d} holds a different block output than device 0")

    # -- lifetime ---------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if not self._shards or getattr(self, "_closed", False):
            raise ValueError("this tensor-parallel block was closed; its weights are no longer on the devices")
        self._cluster._check_open()

    def close(self) -> None:
        """Free the weights, tables, KV pools and sequences on every device."""
        for s in self._shards:
            s.close()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        c = self._cfg
        return (f"TensorParallelBlock({self.num_layers if self._shards else 0} layers, hidden {c.hidden}, heads "
                f"{c.heads}/{c.kv_heads}, devices={self._cluster.size})")
