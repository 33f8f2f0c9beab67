"""DesignLayout.from_manifest: the one contract reader refuses every manifest that disagrees
with the config it embeds, naming the field (issue 8, bad-input class 4)."""
from __future__ import annotations

import copy
import json

import pytest

from hbmforge.config import parse_config, starter_config
from hbmforge.layout import LAYOUT_VERSION, DesignLayout, ManifestError
from hbmforge.manifest import read_manifest

from designs import tiny_attention_config_dict


@pytest.fixture(scope="module")
def manifest():
    cfg = tiny_attention_config_dict()
    cfg["engines"].append({"kind": "copy"})
    lay = DesignLayout(parse_config(cfg))
    return {**lay.to_json(), "top": lay.kernel, "verilog": f"{lay.kernel}.v", "generator": "hbmforge",
            "generator_version": "0.1.0"}


def _edited(manifest, edit):
    m = copy.deepcopy(manifest)
    edit(m)
    return m


def test_an_unedited_manifest_gives_back_its_layout(manifest):
    lay = DesignLayout.from_manifest(manifest)
    assert lay.to_json() == {k: v for k, v in manifest.items() if k not in ("top", "verilog", "generator",
                                                                              "generator_version")}
    assert json.loads(json.dumps(manifest)) == manifest and DesignLayout.from_manifest(json.loads(json.dumps(manifest)))


def _set(path, value):
    def edit(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, field", [
    (_set(("design_hash",), "0" * 64), "design_hash"),
    (_set(("hash64",), "0x0000000000000001"), "hash64"),
    (_set(("config_hash",), "f" * 64), "config_hash"),
    (_set(("registers", 4, "offset"), 0x14), r"registers\[4\]\.offset"),
    (_set(("registers", 0, "access"), "rw"), r"registers\[0\]\.access"),
    (_set(("ports", 1, "channel"), 9), r"ports\[1\]\.channel"),
    (_set(("descriptor", "bytes"), 64), r"descriptor\.bytes"),
    (_set(("descriptor", "opcodes", "COPY"), 7), r"descriptor\.opcodes\.COPY"),
    (_set(("descriptor", "formats", "MATMUL", 2, "offset"), 24), r"descriptor\.formats\.MATMUL\[2\]\.offset"),
    (_set(("engines", 0, "rows"), 8), r"engines\[0\]\.rows"),
    (_set(("engines", 1, "head_dim"), 32), r"engines\[1\]\.head_dim"),
    (_set(("config", "engines", 0, "rows"), 4), "config_hash"),     # a consistent-looking edit of the config
    (_set(("clock_mhz",), 250.0), "clock_mhz"),
    (_set(("kernel_id",), 1), "kernel_id"),
])
def test_an_edited_manifest_is_refused_naming_the_field(manifest, edit, field):
    with pytest.raises(ManifestError, match=field):
        DesignLayout.from_manifest(_edited(manifest, edit))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("registers"), "field 'registers' is missing"),
    (lambda m: m.pop("config"), "field 'config' is missing"),
    (lambda m: m.pop("layout_version"), "layout_version is missing"),
    (_set(("layout_version",), LAYOUT_VERSION + 1), "regenerate the design"),
    (_set(("layout_version",), "2.0"), "not an integer"),
    (_set(("surprise",), 1), r"unknown field\(s\) \['surprise'\]"),
    (_set(("config", "engines", 0, "lanes"), 24), r"engines\.0\.lanes"),
    (_set(("config", "board"), "nope"), "board must be one of"),
    (_set(("config",), "not a mapping"), "expected a mapping"),
    (lambda m: m["registers"].pop(), r"registers"),
])
def test_a_malformed_manifest_is_a_manifest_error_not_a_key_error(manifest, edit, message):
    with pytest.raises(ManifestError, match=message):
        DesignLayout.from_manifest(_edited(manifest, edit))


@pytest.mark.parametrize("bad", [None, [], "text", 3])
def test_a_manifest_that_is_not_an_object_is_refused(bad):
    with pytest.raises(ManifestError, match="JSON object"):
        DesignLayout.from_manifest(bad)


def test_read_manifest_names_unreadable_and_invalid_files(tmp_path, manifest):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(tmp_path / "none.json")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    design = read_manifest(tmp_path)
    assert design.layout.kernel == manifest["kernel"] and design.verilog_path == tmp_path / manifest["verilog"]
    with pytest.raises(TypeError, match="design manifest"):
        read_manifest(3.5)


def test_starter_manifest_round_trips_for_every_board():
    for board in ("u280", "u55c", "kv260", "zcu102"):
        lay = DesignLayout(parse_config(starter_config(board)))
        assert DesignLayout.from_manifest(json.loads(lay.manifest_json())).design_hash == lay.design_hash
