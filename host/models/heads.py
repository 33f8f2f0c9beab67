"""Heads narrower than the attention engine's: each head zero-padded to the engine's ``head_dim``.

A design's attention engine has one head size (a power of two); published checkpoints have
others (96 in BitNet b1.58 large and Phi-3 mini, 100 in OpenLLaMA 3B, 32 in all-MiniLM-L6).
Such a model runs with every head widened to the engine's: q/k/v rows and ``o_proj``'s input
columns of each head are placed in an engine-wide head, the rest are zeros. That is exact,
not an approximation: zero q/k dimensions add 0 to every score, zero v dimensions give output
columns that ``o_proj``'s zero columns drop, and the scores keep the model's
``1 / sqrt(head_dim)``. RoPE rotates Hugging Face's pairs ``(i, i + hd/2)``; they go to
``(i, HD/2 + i)`` with the model's frequencies, and the padded pairs rotate zeros. What it
costs: q/k/v/o weight bytes, KV cache bytes and attention work grow by ``HD / hd``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from hbmforge.numerics.reference import DecoderSpec

__all__ = ["HeadPadding", "ATTENTION_PROJECTIONS"]

#: the projections whose rows (q/k/v) or input columns (o) are per head
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class HeadPadding:
    """A model's ``model_dim``-wide heads in the engine's ``device_dim``-wide ones."""

    model_dim: int
    device_dim: int

    def __post_init__(self):
        if not 1 <= self.model_dim <= self.device_dim:
            raise ValueError(f"a head of {self.model_dim} does not fit the engine's head_dim {self.device_dim}")

    @property
    def padded(self) -> bool:
        return self.model_dim != self.device_dim

    @property
    def softmax_scale(self) -> float:
        """The model's score factor, which the engine-wide head must keep."""
        return 1.0 / math.sqrt(self.model_dim)

    def slots(self) -> np.ndarray:
        """``[model_dim]``: where each of a head's dimensions sits in the engine-wide head (the
        rotate-half pairs ``(i, i + hd/2)`` at ``(i, HD/2 + i)``)."""
        j = np.arange(self.model_dim)
        half = self.model_dim // 2
        return np.where(j < half, j, self.device_dim // 2 + j - half)

    def rows(self, heads: int) -> np.ndarray:
        """``[heads * model_dim]``: the engine-wide rows of a projection's per-head rows."""
        return (np.arange(heads)[:, None] * self.device_dim + self.slots()[None, :]).reshape(-1)

    def pad_rows(self, w: np.ndarray, heads: int) -> np.ndarray:
        """q/k/v weights ``[heads * hd, K]`` (or biases ``[heads * hd]``) -> ``[heads * HD, ...]``."""
        out = np.zeros((heads * self.device_dim,) + w.shape[1:], dtype=w.dtype)
        out[self.rows(heads)] = w
        return out

    def pad_columns(self, w: np.ndarray, heads: int) -> np.ndarray:
        """``o_proj`` weights ``[N, heads * hd]`` -> ``[N, heads * HD]``."""
        out = np.zeros((w.shape[0], heads * self.device_dim), dtype=w.dtype)
        out[:, self.rows(heads)] = w
        return out

    def inv_freq(self, inv: np.ndarray) -> tuple[float, ...]:
        """The model's RoPE inverse frequencies ``[hd / 2]`` as the engine-wide head's ``[HD / 2]``
        (the padded pairs hold zeros, so any frequency would do: 0)."""
        out = np.zeros(self.device_dim // 2)
        out[:self.model_dim // 2] = inv
        return tuple(float(v) for v in out)

    def tensor_reader(self, projections, read: Callable[[str], np.ndarray]) -> Callable[[str], np.ndarray]:
        """``read`` (checkpoint tensor by name) with the attention projections' weights and
        biases of ``projections`` (:func:`.fit.projections` of the model) widened."""
        if not self.padded:
            return read
        how = {}
        for p in projections:
            if p.name in ATTENTION_PROJECTIONS:
                heads = (p.in_features if p.name == "o_proj" else p.out_features) // self.model_dim
                how[p.module + ".weight"] = ("columns" if p.name == "o_proj" else "rows", heads)
                if p.name != "o_proj":
                    how[p.module + ".bias"] = ("rows", heads)

        def widened(name: str) -> np.ndarray:
            t = read(name)
            if name not in how:
                return t
            kind, heads = how[name]
            return self.pad_columns(t, heads) if kind == "columns" else self.pad_rows(t, heads)
        return widened

    def decoder_spec(self, spec: DecoderSpec) -> DecoderSpec:
        """The float model of the widened heads: the same function as ``spec``'s over
        :meth:`tensor_reader`'s tensors (what the tests hold the padding to)."""
        return replace(spec, head_dim=self.device_dim, softmax_scale=self.softmax_scale,
                       rope_inv_freq=self.inv_freq(spec.inv_freq()))

    def block_options(self, spec) -> dict:
        """The :class:`hbmforge.host.blocks.BlockConfig` fields of the engine-wide heads."""
        if not self.padded:
            return {"head_dim": self.device_dim}
        opts = {"head_dim": self.device_dim, "softmax_scale": self.softmax_scale}
        if isinstance(spec, DecoderSpec):
            opts["rope_inv_freq"] = self.inv_freq(spec.inv_freq())
        return opts
