"""CPU attention without repeated key/value heads in the sampler's passes (kvcache.grouped_query_attention)."""
from __future__ import annotations

import os

import pytest
import torch

from skd.core.kvcache import KVStream, grouped_query_attention
from skd.core.presets import tiny_model

VAR = "TRANSFORMERS_SDPA_FORCE_GQA"
V = 40


@pytest.fixture
def no_var(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)


def test_the_variable_is_set_inside_the_block_on_cpu_only(no_var):
    from transformers.integrations.sdpa_attention import use_gqa_in_sdpa

    k = torch.zeros(1, 2, 4, 8)
    mask = torch.ones(1, 1, 3, 4, dtype=torch.bool)
    assert not use_gqa_in_sdpa(mask, k, k)            # transformers' default with a mask: repeat the heads
    with grouped_query_attention(torch.device("cpu")):
        assert os.environ[VAR] == "1"
        assert use_gqa_in_sdpa(mask, k, k)            # the installed transformers reads the variable
    assert VAR not in os.environ
    with grouped_query_attention(torch.device("meta")):
        assert VAR not in os.environ


def test_a_value_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv(VAR, "0")
    with grouped_query_attention(torch.device("cpu")):
        assert os.environ[VAR] == "0"
    assert os.environ[VAR] == "0"


def test_the_variable_is_removed_when_the_pass_raises(no_var):
    with pytest.raises(RuntimeError):
        with grouped_query_attention(torch.device("cpu")):
            raise RuntimeError("boom")
    assert VAR not in os.environ


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_multi_position_passes_equal_the_repeated_heads_bit_for_bit(arch, monkeypatch):
    """Passes of several positions over a holed, ragged cache: the same logits as transformers' repeat of
    the key/value heads (its path when the variable is "0")."""
    model = tiny_model(arch, V, seed=4, dtype=torch.float32)
    assert model.config.num_key_value_heads < model.config.num_attention_heads   # grouped-query

    def run():
        s = KVStream(model, V)
        s.prefill([[5, 9, 12], [8], [11, 14, 6, 20]], 0)
        out = [s.forward(torch.tensor([[3, 4, 5], [6, 7, 8], [9, 10, 11]]))]
        s.invalidate_tail(torch.tensor([2, 0, 1]))                            # holes, as rejected drafts leave
        out.append(s.forward(torch.tensor([[1, 2], [3, 4], [5, 6]])))
        return out

    monkeypatch.delenv(VAR, raising=False)
    grouped = run()
    monkeypatch.setenv(VAR, "0")
    repeated = run()
    for g, r in zip(grouped, repeated):
        assert torch.equal(g, r)
