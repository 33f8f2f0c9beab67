"""Building co-simulation libraries: cache hits, rebuilds on RTL change, concurrent builders."""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import uuid
from pathlib import Path

import pytest

from hbmforge.sim.build import BuildOptions, build_library, design_sources
from hbmforge.sim.cache import BuildCache, cache_root
from hbmforge.sim.cosim import CoSim

from sim_fixture import FIXTURE_MANIFEST, FIXTURE_RTL

pytestmark = pytest.mark.rtl


def test_cache_hit_is_fast(fixture_build):
    again = build_library(FIXTURE_RTL, FIXTURE_MANIFEST, progress=False)
    assert again.cache_hit
    assert again.library == fixture_build.library
    assert again.seconds < 1.0
    assert again.stage_seconds.get("compile and link", 0) > 0      # the record of the original build


def test_design_dir_is_a_valid_input(tmp_path, fixture_build):
    shutil.copy(FIXTURE_RTL, tmp_path / "fixture.v")
    shutil.copy(FIXTURE_MANIFEST, tmp_path / "manifest.json")
    (tmp_path / "unrelated_tb.v").write_text("module tb; endmodule\n")
    paths, manifest = design_sources(tmp_path)
    assert [p.name for p in paths] == ["fixture.v"] and manifest["kernel"] == "fixture"
    assert build_library(tmp_path, progress=False).library == fixture_build.library   # same content, same key


def _isolated_cache(tmp_path: Path) -> Path:
    """A private cache root that still has the shared Verilator runtime objects (saves ~15 s)."""
    root = tmp_path / "cache"
    runtime = cache_root() / "runtime"
    if runtime.is_dir():
        shutil.copytree(runtime, root / "runtime", ignore=shutil.ignore_patterns(".locks", ".tmp"))
    return root


def _build_in_process(rtl: str, root: str, out: "mp.Queue") -> None:
    res = build_library(rtl, FIXTURE_MANIFEST, progress=False, cache=BuildCache("cosim", Path(root)))
    out.put((str(res.library), res.cache_hit, res.key))


def test_rtl_change_rebuilds_once_for_concurrent_builders(tmp_path, fixture_build):
    rtl = tmp_path / "fixture.v"
    rtl.write_text(FIXTURE_RTL.read_text() + f"\n// edited {uuid.uuid4()}\n")
    root = _isolated_cache(tmp_path)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(str(rtl), str(root), q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    libs, hits, keys = zip(*results)
    assert sorted(hits) == [False, True]                 # one built, the other waited and reused it
    assert len(set(libs)) == 1 and len(set(keys)) == 1
    assert keys[0] != fixture_build.key                  # the edit changed the key
    with CoSim(libs[0]) as sim:
        assert sim.reg_read("ID") == 0x48424D46
    info = json.loads((Path(libs[0]).parent / "build_info.json").read_text())
    assert info["options"] == BuildOptions(opt="-O2", opt_slow="-O1").to_json()   # "auto" resolved: small design


def test_build_errors_show_the_compiler_output(tmp_path):
    bad = tmp_path / "fixture.v"
    bad.write_text("module fixture(input wire ap_clk); syntax error here endmodule\n")
    from hbmforge.sim.build import BuildError
    with pytest.raises(BuildError, match=r"verilator.*failed[\s\S]*fixture\.v:1"):
        build_library(bad, FIXTURE_MANIFEST, progress=False, cache=BuildCache("cosim", tmp_path / "c"))


def test_auto_opt_is_O1_only_for_large_rtl():
    from hbmforge.sim.build import LARGE_RTL_BYTES
    auto = BuildOptions()
    small, large = auto.for_rtl(LARGE_RTL_BYTES), auto.for_rtl(LARGE_RTL_BYTES + 1)
    assert (small.opt, small.opt_slow, small.verilate_jobs) == ("-O2", "-O1", 1)
    assert (large.opt, large.opt_slow, large.verilate_jobs) == ("-O1", "-O0", auto.jobs)
    assert "--verilate-jobs" not in small.verilator_flags()
    assert large.verilator_flags()[large.verilator_flags().index("--verilate-jobs") + 1] == str(auto.jobs)
    assert "verilate_jobs" not in small.to_json()          # small designs keep their cache keys
    explicit = BuildOptions(opt="-O3", opt_slow="-O2", verilate_jobs=1).for_rtl(10 * LARGE_RTL_BYTES)
    assert (explicit.opt, explicit.opt_slow, explicit.verilate_jobs) == ("-O3", "-O2", 1)   # explicit choices stay


@pytest.mark.parametrize("field, value", [("jobs", 0), ("jobs", 1.5), ("jobs", True), ("verilate_jobs", -1),
                                          ("verilate_jobs", "2")])
def test_build_options_reject_bad_job_counts(field, value):
    with pytest.raises(ValueError, match=f"BuildOptions.{field} must be an int"):
        BuildOptions(**{field: value})
