"""The host reads a design one way: read_manifest -> DesignLayout.from_manifest. Offsets come
from the file; edited, foreign or broken manifests are refused by every device constructor with
a ManifestError naming the field, never a KeyError/TypeError."""
from __future__ import annotations

import copy
import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbmforge.encodings import Opcode
from hbmforge.host import ManifestError, read_manifest
from hbmforge.host.backends.sim import SimDevice
from hbmforge.layout import ManifestError as ContractManifestError

from golden_kernel import FakeCoSim, GoldenDevice


def test_the_host_manifest_error_is_the_contracts():
    assert ManifestError is ContractManifestError


def test_round_trip_through_a_file_keeps_offsets(tmp_path, tiny_layout):
    data = dict(tiny_layout.to_json(), top="tiny", verilog=["tiny.v"], generator_version="0.1.0")
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    design = read_manifest(tmp_path)
    lay = design.layout
    assert design.path == tmp_path / "manifest.json"
    assert lay.reg("STATUS").offset == 0x110
    assert lay.reg("W1_BYTES_READ").offset == 0x160
    assert lay.field_offset("w_addr1", Opcode.MATMUL) == 8 * 16         # op, 14 fixed slots, w_addr0
    assert lay.port_names == ("data", "w0", "w1")
    assert lay.hash64 == tiny_layout.hash64
    assert lay.matmul.k_align == tiny_layout.matmul.k_align == 16
    assert design.data["verilog"] == ["tiny.v"] and design.top == "tiny"
    assert lay.error_text(7) == "address not aligned to the port word"
    with GoldenDevice(tmp_path) as dev:                       # a Device takes the same sources
        assert dev.design.path == design.path and dev.layout.reg("STATUS").offset == 0x110


def test_layout_rebuilt_from_the_manifest_matches_the_original(tiny_layout):
    lay = read_manifest(tiny_layout.to_json()).layout
    assert lay is not tiny_layout
    for args in [(3, 64, 4), (17, 256, 8)]:
        assert lay.matmul.weight_port_bytes(*args) == tiny_layout.matmul.weight_port_bytes(*args)
    assert lay.matmul.out_bytes(5, 7, 0) == tiny_layout.matmul.out_bytes(5, 7, 0)
    assert lay.descriptor_bytes == tiny_layout.descriptor_bytes


def test_an_incompatible_descriptor_layout_is_refused(tiny_layout):
    data = tiny_layout.to_json()
    data["descriptor"]["bytes"] = 200
    with pytest.raises(ManifestError, match="descriptor.bytes is 200"):
        GoldenDevice(data)


def test_missing_fields_are_named(tiny_layout):
    data = tiny_layout.to_json()
    del data["registers"]
    with pytest.raises(ManifestError, match="field 'registers' is missing"):
        GoldenDevice(data)


def test_unknown_names_list_what_exists(golden_dev):
    with pytest.raises(ValueError, match="no register 'FOO'.*CTRL"):
        golden_dev.read_reg("FOO")
    with pytest.raises(ValueError, match="no port 'w7'.*data, w0, w1"):
        golden_dev.alloc(64, "w7")


def test_unreadable_or_invalid_files_are_reported(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        GoldenDevice(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        GoldenDevice(tmp_path / "bad.json")
    with pytest.raises(TypeError, match="got int"):
        GoldenDevice(3)


# -- edited manifests (bad-input class 4) ------------------------------------------------------
def _edits(layout):
    """(what was edited, the manifest, the field the error must name)."""
    base = layout.to_json()
    out = []
    d = copy.deepcopy(base)
    h = d["design_hash"]
    d["design_hash"] = h[:16] + ("f" if h[16] != "f" else "e") + h[17:]     # same first 64 bits (hash64)
    out.append(("design_hash string with the old hash64", d, "design_hash"))
    d = copy.deepcopy(base)
    reg = next(i for i, r in enumerate(d["registers"]) if r["name"] == "STATUS")
    d["registers"][reg]["offset"] += 4
    out.append(("moved register", d, rf"registers\[{reg}\].offset"))
    d = copy.deepcopy(base)
    d["config"]["engines"][0]["rows"] = 4
    out.append(("engine parameter in the embedded config", d, "is .* but its config derives"))
    d = copy.deepcopy(base)
    d["engines"][0]["k_align"] = 32
    out.append(("stated engine parameter", d, r"engines\[0\].k_align"))
    d = copy.deepcopy(base)
    del d["ports"]
    out.append(("missing field", d, "field 'ports' is missing"))
    d = copy.deepcopy(base)
    del d["config"]
    out.append(("missing config", d, "field 'config' is missing"))
    d = copy.deepcopy(base)
    d["layout_version"] = "2.0"
    out.append(("layout_version type", d, "layout_version"))
    return out


@pytest.mark.parametrize("index", range(7))
def test_edited_manifests_are_refused_by_every_device_naming_the_field(tiny_layout, tmp_path, index, monkeypatch):
    what, data, field = _edits(tiny_layout)[index]
    with pytest.raises(ManifestError, match=field):
        GoldenDevice(data)
    fake = FakeCoSim(tiny_layout)
    with pytest.raises(ManifestError, match=field):
        SimDevice(data, fake)
    assert fake.closed                                          # the device owned the co-simulation
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    (tmp_path / "tiny.xclbin").write_bytes(b"xclbin2\0")
    monkeypatch.setitem(sys.modules, "pyxrt", None)             # the manifest is refused before pyxrt
    from hbmforge.host import open_device

    with pytest.raises(ManifestError, match=field):
        open_device(tmp_path, backend="xrt")


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                     max_leaves=6)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_edit_of_a_manifest_is_accepted_unchanged_or_refused_with_a_manifest_error(tiny_layout, data):
    base = tiny_layout.to_json()
    paths = [p for p in _paths(base) if p]
    path = data.draw(st.sampled_from(paths))
    edited = copy.deepcopy(base)
    parent = edited
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_json)
    try:
        dev = GoldenDevice(edited)
    except ManifestError:
        return
    dev.close()
    assert dev.layout.to_json() == base          # accepted only if it still says the same thing
