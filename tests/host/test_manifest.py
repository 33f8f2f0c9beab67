"""Manifest loading: offsets come from the file, bad manifests are refused with a reason."""
from __future__ import annotations

import json

import pytest

from hbmforge.host import Manifest, ManifestError


def test_round_trip_through_a_file_keeps_offsets(tmp_path, tiny_layout):
    data = dict(tiny_layout.to_json(), top="tiny", verilog=["tiny.v"], generator_version="0.1.0")
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    m = Manifest.load(tmp_path)
    assert m.path == tmp_path / "manifest.json"
    assert m.register("STATUS").offset == 0x110
    assert m.register("W1_BYTES_READ").offset == 0x160
    assert m.field_offset("w_addr1") == 8 * 12
    assert m.port_names == ("data", "w0", "w1")
    assert m.hash64 == tiny_layout.hash64
    assert m.engine.k_align == tiny_layout.matmul.k_align == 16
    assert m.verilog == ["tiny.v"] and m.top == "tiny"
    assert m.descriptor.error_text(7) == "address not aligned to the port word"


def test_layout_rebuilt_from_the_manifest_matches_the_original(tiny_layout):
    m = Manifest(tiny_layout.to_json())
    lay = m.layout
    assert lay is not tiny_layout
    for args in [(3, 64, 4), (17, 256, 8)]:
        assert lay.matmul.weight_port_bytes(args[0], args[1], args[2]) == tiny_layout.matmul.weight_port_bytes(*args)
    assert lay.matmul.out_bytes(5, 7, 0) == tiny_layout.matmul.out_bytes(5, 7, 0)
    assert lay.descriptor_bytes == tiny_layout.descriptor_bytes


def test_an_incompatible_descriptor_layout_is_refused(tiny_layout):
    data = tiny_layout.to_json()
    data["descriptor"]["bytes"] = 200
    with pytest.raises(ManifestError, match="descriptor bytes: manifest 200"):
        Manifest(data).layout


def test_missing_fields_are_named(tiny_layout):
    data = tiny_layout.to_json()
    del data["registers"]
    with pytest.raises(ManifestError, match="missing 'registers'"):
        Manifest(data)


def test_unknown_names_list_what_exists(tiny_layout):
    m = Manifest.from_layout(tiny_layout)
    with pytest.raises(ValueError, match="no register 'FOO'.*CTRL"):
        m.register("FOO")
    with pytest.raises(ValueError, match="no port 'w7'.*data, w0, w1"):
        m.port("w7")


def test_unreadable_or_invalid_files_are_reported(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        Manifest.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path / "bad.json")
    with pytest.raises(TypeError, match="cannot make a manifest from int"):
        Manifest.load(3)
