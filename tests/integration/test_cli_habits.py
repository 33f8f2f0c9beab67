"""CLI habits: data on stdout, talk on stderr, --json is pure JSON, bad input exits 2 without a
traceback (issue 8: `hbmforge init --board u280 > my.yaml && hbmforge validate my.yaml`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hbmforge.config import parse_config

from cli_helpers import invoke
from designs import tiny_attention_config_dict

HBMFORGE = Path(sys.executable).with_name("hbmforge")


def _clean_failure(res, *words):
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output and res.stdout == ""
    for w in words:
        assert w in res.stderr, res.stderr


def test_init_redirected_to_a_file_then_validate_works_in_a_shell(tmp_path):
    if not HBMFORGE.exists():
        pytest.skip("the hbmforge script is not installed next to this Python")
    res = subprocess.run(f"'{HBMFORGE}' init --board u280 > my.yaml && '{HBMFORGE}' validate my.yaml",
                         shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout
    assert parse_config(yaml.safe_load((tmp_path / "my.yaml").read_text())).board == "u280"


def test_init_without_output_prints_only_the_config():
    res = invoke("init", "--board", "kv260", "--name", "edge")
    assert res.exit_code == 0 and res.stderr == ""
    cfg = parse_config(yaml.safe_load(res.stdout))
    assert (cfg.board, cfg.name) == ("kv260", "edge")


def test_init_with_output_writes_the_file_and_talks_on_stderr(tmp_path):
    res = invoke("init", "--board", "u280", "-o", tmp_path / "a.yaml")
    assert res.exit_code == 0 and res.stdout == "" and "wrote" in res.stderr
    assert parse_config(yaml.safe_load((tmp_path / "a.yaml").read_text())).board == "u280"


@pytest.mark.parametrize("args", [("boards", "--json"), ("validate", "{cfg}", "--json"), ("schema",)])
def test_json_output_is_pure_json_on_stdout(args, tiny_yaml):
    res = invoke(*[a.format(cfg=tiny_yaml) for a in args])
    assert res.exit_code == 0
    json.loads(res.stdout)                              # the whole of stdout, nothing else
    assert res.stderr == ""


def test_gen_reports_on_stderr_and_keeps_stdout_empty(tiny_yaml, tmp_path):
    res = invoke("gen", tiny_yaml, "-o", tmp_path / "out", "--no-lint", "--no-package")
    assert res.exit_code == 0, res.output
    assert res.stdout == "" and "wrote" in res.stderr


def test_config_that_is_not_utf8_is_a_clean_error(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00version: 1\n")
    _clean_failure(invoke("validate", p), "not UTF-8")


def test_yaml_scalar_the_parser_rejects_is_a_clean_error(tmp_path):
    p = tmp_path / "huge.yaml"
    p.write_text("version: " + "9" * 5000 + "\n")
    _clean_failure(invoke("validate", p), "not valid YAML")


def test_config_that_is_a_directory_is_a_clean_error(tmp_path):
    _clean_failure(invoke("validate", tmp_path), "is a directory")


def test_gen_into_a_path_whose_package_dir_is_a_file_fails_before_generating(tiny_yaml, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "package").write_text("not a directory")
    _clean_failure(invoke("gen", tiny_yaml, "-o", out, "--no-lint"), "package")
    assert not (out / "tiny.v").exists()


def test_gen_into_a_file_is_a_clean_error(tiny_yaml, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    _clean_failure(invoke("gen", tiny_yaml, "-o", f, "--no-lint", "--no-package"), "not a directory")


@pytest.mark.parametrize("flags, word", [(("--m", "4065", "--k", "128", "--n", "99999999"), "elements"),
                                         (("--m", "99999999999", "--k", "128", "--n", "64"), "elements"),
                                         (("--m", "0",), "--m must be a positive integer"),
                                         (("--k", "100",), "--k must be a multiple"),
                                         (("--wbits", "3",), "--wbits must be one of"),
                                         (("--timeout", "0",), "--timeout")])
def test_run_flags_out_of_range_fail_before_any_build(tiny_yaml, flags, word):
    _clean_failure(invoke("run", tiny_yaml, "--layer", "linear", *flags), word)


@pytest.mark.parametrize("flags, word", [(("--ctx", "0"), "--ctx must be a positive integer"),
                                         (("--kv-bits", "5"), "--kv-bits must be one of"),
                                         (("--window", "-1"), "--window must be an integer >= 0"),
                                         (("--ctx", "65"), "exceeds the engine's max_context"),
                                         (("--q-heads", "3", "--kv-heads", "2"), "--q-heads 3 must be a multiple")])
def test_attention_flags_out_of_range_are_clean_errors(tmp_path, flags, word):
    p = tmp_path / "attn.yaml"
    p.write_text(yaml.safe_dump(tiny_attention_config_dict()))
    _clean_failure(invoke("run", p, "--layer", "attention", "--ctx", "32", *flags), word)


def test_attention_on_a_design_without_attention_is_a_clean_error(tiny_yaml):
    _clean_failure(invoke("run", tiny_yaml, "--layer", "attention"), "no attention engine")


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf"])
def test_estimate_timeout_out_of_range_fails_before_yosys(tiny_yaml, value):
    _clean_failure(invoke("estimate", tiny_yaml, "--timeout", value), "--timeout must be a finite number")


@pytest.mark.parametrize("flags, word", [(("--m", "0"), "--m must be a positive integer"),
                                         (("--k", "100"), "--k must be a multiple"),
                                         (("--board", "nope"), "unknown board")])
def test_quickstart_bad_flags_fail_before_writing_anything(tmp_path, flags, word):
    out = tmp_path / "qs"
    _clean_failure(invoke("quickstart", "--dir", out, *flags), word)
    assert not out.exists()
