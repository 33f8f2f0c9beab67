"""`hbmforge run CONFIG --model DIR`: text generation and sentence embeddings from checkpoint
directories on the co-sim (tokens on stdout as they come, progress and figures on stderr), and
one-line errors for bad flags and bad checkpoints."""
from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import invoke
from designs import tiny_vector_config_dict
from hbmforge.config import parse_config
from hbmforge.host.models.synthetic import design_sized, write_bert, write_llama
from hbmforge.layout import DesignLayout

#: the design of tests/host/test_models_device.py: one co-sim build for both
MODEL_DESIGN = "tiny_vec_model"


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "model.yaml"
    p.write_text(yaml.safe_dump(tiny_vector_config_dict(MODEL_DESIGN)))
    return p


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    lay = DesignLayout(parse_config(tiny_vector_config_dict(MODEL_DESIGN)))
    root = tmp_path_factory.mktemp("ckpt")
    return {"llama": write_llama(root / "llama", num_layers=2, **design_sized(lay)),
            "bert": write_bert(root / "bert", num_layers=1, **design_sized(lay, "bert"))}


@pytest.mark.rtl
def test_run_model_generates_text_with_per_token_cycles(model_yaml, ckpts):
    res = invoke("run", model_yaml, "--model", ckpts["llama"], "--prompt", "Hello", "--max-new-tokens", 5,
                 "--verify", "--reference", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["new_tokens"] == 5 and len(r["token_cycles"]) == 5 and min(r["token_cycles"]) > 0
    assert r["golden_mismatches"] == 0 and r["golden_checked"] == 5
    assert r["host_round_trips_per_token"] == 1
    assert r["logits_cosine_min"] > 0.99
    # without --json: the text streams to stdout, the report goes to stderr
    res = invoke("run", model_yaml, "--model", ckpts["llama"], "--prompt", "Hello", "--max-new-tokens", 5)
    assert res.exit_code == 0, res.output
    assert res.stdout.rstrip("\n") == r["text"]
    assert "cycles per token" in res.stderr and "per-token cycles" in res.stderr


@pytest.mark.rtl
def test_run_model_encodes_texts(model_yaml, ckpts):
    res = invoke("run", model_yaml, "--model", ckpts["bert"], "--encode", "the quick brown fox", "hello world",
                 "--verify", "--reference", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(r["embeddings"]) == 2 and len(r["embeddings"][0]) == 64
    assert r["golden_mismatches"] == 0 and min(r["embedding_cosine"]) > 0.99


@pytest.mark.parametrize("args, message", [
    (("--prompt", "hi"), "need --model"),
    (("--model", "{llama}"), "--prompt TEXT"),
    (("--model", "{llama}", "--prompt", "x", "--encode", "a"), "not both"),
    (("--model", "{llama}", "stray"), "unexpected argument"),
    (("--model", "{llama}", "--prompt", "x", "--quant", "int3"), "--quant"),
    (("--model", "{llama}", "--prompt", "x", "--kv-cache-bits", 5), "--kv-cache-bits must be 4 or 8"),
    (("--model", "{missing}", "--prompt", "x"), "not a directory"),
])
def test_run_model_rejects_bad_flags_in_one_line(model_yaml, ckpts, tmp_path, args, message):
    args = [str(a).format(llama=ckpts["llama"], missing=tmp_path / "nope") for a in args]
    res = invoke("run", model_yaml, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_run_model_names_what_a_bad_checkpoint_lacks(model_yaml, tmp_path):
    d = write_llama(tmp_path / "bad", hidden_size=64, intermediate_size=128, q_heads=4, kv_heads=2,
                    drop=("model.norm.weight",))
    res = invoke("run", model_yaml, "--model", d, "--prompt", "x")
    assert res.exit_code == 2, res.output
    assert "no tensor 'model.norm.weight'" in res.output and "Traceback" not in res.output
