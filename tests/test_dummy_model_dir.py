"""The servable model dir the GPU benchmarks build from an architecture config (dummy weights)."""

import json

import pytest

from deployments.tiny_model import dummy_weights_model_dir


def test_a_missing_config_leaves_no_directory_behind(tmp_path):
    with pytest.raises(FileNotFoundError):
        dummy_weights_model_dir(tmp_path / "no-such-config", tmp_path / "m")
    assert not (tmp_path / "m").exists()  # a half-written dir would pass for a complete one


def test_the_tokenizer_covers_every_id_and_config_is_complete(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    src = tmp_path / "arch"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": 300}))
    out = dummy_weights_model_dir(src, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["vocab_size"]) == (1, 2, 300)
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 300 and tok.decode([299]) == "w299"
