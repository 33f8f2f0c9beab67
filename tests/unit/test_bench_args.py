"""benchmarks/hbm.py refuses bad arguments with a usage error before generating anything."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, why", [
    (["--boards", "u280,foo"], "unknown board"),
    (["--boards", "u280,u280"], "--boards lists u280 more than once"),
    (["--mib-per-port", "nan"], r"--mib-per-port must be in \(0, 256\]"),
    (["--work", "{file}"], "--work .* not a directory that can be written"),
])
def test_hbm_bench_names_a_bad_argument(tmp_path, argv, why):
    f = tmp_path / "a_file"
    f.write_text("x")
    argv = [a.replace("{file}", str(f)) for a in argv]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hbm.py"), *argv], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert re.search(why, r.stderr), r.stderr
    assert r.stdout == ""
