"""The embedded default model: a tiny Llama built locally (random weights, a locally trained tokenizer).

Nothing is downloaded: the tokenizer is trained with ``tokenizers`` on text that ships with
Python, the weights are drawn from a seeded generator. Built once and cached on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_MODEL_VERSION = "v2"
VOCAB_SIZE = 512
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def default_cache_dir() -> Path:
    root = os.environ.get("NESTEDFP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nestedfp")
    return Path(root)


def _training_text() -> list[str]:
    """Local English-ish text: the Zen of Python plus stdlib docstrings."""
    import codecs
    import this  # noqa: F401  (prints the Zen on import; we only need its text)
    import collections, functools, itertools, json as json_mod, os as os_mod, pathlib, re, string, textwrap

    lines = [codecs.decode(this.s, "rot13")]
    for mod in (collections, functools, itertools, json_mod, os_mod, pathlib, re, string, textwrap):
        for name in dir(mod):
            doc = getattr(getattr(mod, name), "__doc__", None)
            if isinstance(doc, str):
                lines.append(doc)
    return lines


def _build_tokenizer(out: Path) -> None:
    import contextlib
    import io

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    with contextlib.redirect_stdout(io.StringIO()):
        text = _training_text()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(out)


def _build_weights(out: Path, seed: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="float16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                # Realistic linear weights: Gaussian std 0.02 plus a few heavy-tailed outliers.
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                n_out = max(1, p.numel() // 2000)
                idx = torch.randint(0, p.numel(), (n_out,), generator=gen)
                p.view(-1)[idx] = torch.randn(n_out, generator=gen) * 0.3
        # Weights beyond FP8's range exercise both outcomes: layer 0's down_proj has no tiny
        # values, so an exact power-of-two pre-scale nests it; layer 1's has tiny values that
        # a pre-scale would push into FP16 subnormals, so it stays plain FP16.
        outliers = torch.tensor([3.0, -5.5, 2.25, 7.0])
        w0 = model.model.layers[0].mlp.down_proj.weight
        w0.copy_(w0.sign() * w0.abs().clamp_min(2.0**-10))
        w0.view(-1)[:4] = outliers
        model.model.layers[1].mlp.down_proj.weight.view(-1)[:4] = outliers
    model.half().save_pretrained(out, safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    cfg["torch_dtype"] = cfg.get("torch_dtype") or "float16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def ensure_tiny_model(path: str | os.PathLike | None = None, seed: int = 0) -> str:
    """Return the path of the tiny Llama, building it atomically the first time."""
    target = Path(path) if path else default_cache_dir() / f"tiny-llama-{TINY_MODEL_VERSION}-seed{seed}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        _build_tokenizer(tmp)
        _build_weights(tmp, seed)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


if __name__ == "__main__":
    print(ensure_tiny_model())


def dummy_weights_model_dir(config_dir: str | os.PathLike, out: str | os.PathLike) -> str:
    """A servable model dir for ``load_format="dummy"`` runs: the config plus a word-level tokenizer.

    Benchmarks on GPU boxes have architecture configs but no weights or tokenizer; the OpenAI
    layer still needs a tokenizer whose vocabulary covers every id the model can emit. ``config.json``
    is written last, so its presence means the directory is complete.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    cfg = json.loads((Path(config_dir) / "config.json").read_text())  # before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(_SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(_SPECIAL), cfg["vocab_size"])})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", chat_template=CHAT_TEMPLATE
    ).save_pretrained(out)
    cfg.update(bos_token_id=1, eos_token_id=2)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return str(out)
