"""Small designs shared by the tests (importable because tests/ holds the root conftest)."""
from __future__ import annotations


def tiny_config_dict(**engine) -> dict:
    """A small kernel for RTL tests: 64-bit ports, 2 rows x 16 lanes, two weight ports."""
    eng = {"kind": "matmul", "name": "mm0", "rows": 2, "lanes": 16, "weight_ports": 2,
           "weight_bits": [4, 8], "group_size": 16, "scale_bits": 16, "max_k": 256}
    eng.update(engine)
    return {"version": 1, "name": "tiny", "board": "u280", "clock_mhz": 300,
            "axi": {"data_width": 64, "id_width": 4, "max_burst_beats": 16, "max_outstanding": 4},
            "engines": [eng]}


def tiny_attention_config_dict(name: str = "tiny_attn", **attention) -> dict:
    """tiny (64-bit ports) + an attention engine: head_dim 16, rows 4, page_tokens 4, both KV widths."""
    cfg = tiny_config_dict()
    cfg["name"] = name
    eng = {"kind": "attention", "head_dim": 16, "rows": 4, "kv_bits": [4, 8], "kv_group_size": 8,
           "page_tokens": 4, "max_context": 64, "kv_ports": 2}
    eng.update(attention)
    cfg["engines"].append(eng)
    return cfg


def tiny_copy_config_dict(name: str = "tiny_copy", **copy) -> dict:
    """tiny + a COPY/FILL engine (every port writable)."""
    cfg = tiny_config_dict()
    cfg["name"] = name
    cfg["engines"].append({"kind": "copy", "buffer_words": 8, **copy})
    return cfg


def tiny_vector_config_dict(name: str = "tiny_vec", *, attention: bool = True, **vector) -> dict:
    """tiny (+ the tiny attention engine) + a vector engine holding rows of up to 256 elements."""
    cfg = tiny_attention_config_dict(name) if attention else tiny_config_dict()
    cfg["name"] = name
    cfg["engines"].append({"kind": "vector", "max_dim": 256, **vector})
    return cfg


def tiny_sweep_spec_dict(name: str = "tiny_sweep", **top) -> dict:
    """A sweep over tiny: rows {2, 4} x max_k {128, 256} (max_k 128 cannot hold down_proj's k = 256:
    infeasible, as the engine does not split K here: split_k 1), four Linear layers of a small model
    co-simulated per point."""
    spec = {"version": 1, "name": name, "base": tiny_config_dict(split_k=1),
            "parameters": {"engines.0.rows": [2, 4], "engines.0.max_k": [128, 256]},
            "workload": {"model": {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
                                   "num_key_value_heads": 2, "num_hidden_layers": 2},
                         "layers": ["q_proj", "k_proj", "o_proj", "down_proj"], "max_columns": 64},
            "objectives": ["tokens_per_s", "lut"]}
    spec.update(top)
    return spec


def tiny_network_config_dict(name: str = "tiny_net", **network) -> dict:
    """tiny + the ALLREDUCE endpoint: 4-word packets, a window of 4 slots, 2 jobs."""
    cfg = tiny_config_dict()
    cfg["name"] = name
    cfg["engines"].append({"kind": "network", "packet_words": 4, "window": 4, "jobs": 2, **network})
    return cfg


def tiny_memory_config_dict(name: str = "tiny_mem", *, cache: dict | None = None, omap: dict | None = None,
                            **memory) -> dict:
    """tiny + a COPY engine + a memory engine: a 4-set x 2-way cache of 1 KiB lines (w0 backing,
    w2 store) and an oblivious map of 4-slot bins with 8-byte values; ``cache=False``/``omap=False``
    leave one out."""
    cfg = tiny_config_dict()
    cfg["name"] = name
    cfg["engines"].append({"kind": "copy", "buffer_words": 8})
    eng = {"kind": "memory", **memory}
    if cache is not False:
        eng["cache"] = {"line_bytes": 1024, "ways": 2, "sets": 4, "mshrs": 2, **(cache or {})}
    if omap is not False:
        eng["omap"] = {"bin_slots": 4, "value_bytes": 8, "dir_ways": 8, **(omap or {})}
    cfg["engines"].append(eng)
    return cfg

