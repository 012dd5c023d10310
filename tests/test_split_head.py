"""The output layer put off in verification passes (skd.core.split_head, KVStream.forward(head=False),
the sampler's accept_by_position): which models split, that body + head give the model's logits, and
that sampling with the split gives the samples of the whole-model pass while the teacher's output
layer sees fewer rows."""
from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import noisy_copy, sampler_generators, split_test_pair

import skd.core.kvcache as KV
from skd.core.kvcache import KVStream
from skd.core.presets import tiny_model
from skd.core.rules import SpeculativeRule
from skd.core.sampling import SampleConfig, sample
from skd.core.speculative import speculative_generate
from skd.core.split_head import PositionLogits, split_head

V = 40
PROMPTS = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21, 22, 30], [4, 4, 4]]
NO_EOS = -1


@pytest.mark.parametrize("arch,splits", [("llama", True), ("qwen2", True), ("gemma", True),
                                         ("gpt2", False), ("gemma2", False)])
def test_which_models_split(arch, splits):
    """The listed model types split; gpt2 (not listed) and gemma2 (soft-capped logits) keep the whole pass."""
    model = tiny_model(arch, V, seed=1, dtype=torch.float64)
    assert (split_head(model) is not None) is splits
    assert KVStream(model, V).defers_head is splits


def test_a_logit_soft_cap_or_scale_in_the_config_keeps_the_whole_pass():
    model = tiny_model("llama", V, seed=1, dtype=torch.float64)
    assert split_head(model) is not None
    model.config.final_logit_softcapping = 30.0
    assert split_head(model) is None
    model.config.final_logit_softcapping = None
    model.config.logit_scale = 0.5
    assert split_head(model) is None


def test_a_stream_that_cannot_split_says_so():
    stream = KVStream(tiny_model("gpt2", V, seed=1, dtype=torch.float64), V)
    stream.prefill([[5, 6]], 0)
    with pytest.raises(ValueError, match="cannot be put off"):
        stream.forward(torch.tensor([[7]]), head=False)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_position_logits_are_the_whole_pass_logits(arch):
    """The same cache and the same logits whether the pass runs the whole model or the body, with the
    output layer then run on chosen (row, position) pairs."""
    model = tiny_model(arch, V, seed=3, dtype=torch.float64)
    whole, split = KVStream(model, V), KVStream(model, V)
    rows = [[5, 9, 12], [8], [11, 14, 6, 20]]
    for s in (whole, split):
        s.prefill(rows, 0)
    ids = torch.tensor([[3, 4, 5], [6, 7, 8], [9, 10, 11]])
    ref = whole.forward(ids)
    lazy = split.forward(ids, head=False)
    assert isinstance(lazy, PositionLogits) and tuple(lazy.shape) == (3, 3)
    r, p = torch.tensor([0, 2, 1, 2]), torch.tensor([2, 0, 1, 1])
    torch.testing.assert_close(lazy.at(r, p), ref[r, p], rtol=0, atol=1e-12)
    torch.testing.assert_close(lazy.at(torch.tensor([1, 0]), 2), ref[[1, 0], 2], rtol=0, atol=1e-12)
    nxt = torch.tensor([[1], [2], [3]])   # the caches grew alike
    torch.testing.assert_close(split.forward(nxt), whole.forward(nxt), rtol=0, atol=1e-12)


def _whole_pass(monkeypatch):
    monkeypatch.setattr(KV, "split_head", lambda model: None)


@contextlib.contextmanager
def _head_rows(teacher):
    """Rows the teacher's output layer multiplies inside the block, one entry per call (the prefill's
    one column included)."""
    seen = []
    hook = teacher.get_output_embeddings().register_forward_hook(lambda mod, a, out: seen.append(a[0][..., 0].numel()))
    try:
        yield seen
    finally:
        hook.remove()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("gamma,keep_bonus,semantics", [(1, False, "paper"), (4, False, "paper"),
                                                        (4, True, "paper"), (3, False, "code"), ("auto", False, "paper")])
def test_skd_samples_are_those_of_the_whole_pass(arch, gamma, keep_bonus, semantics, monkeypatch):
    """Tokens, provenance, kept teacher logits and counts equal the whole-model pass's; the teacher's
    output layer sees fewer rows wherever a draft of more than one token is rejected early."""
    teacher, student = split_test_pair(V, arch)
    cfg = SampleConfig(mode="skd", k=3, gamma=gamma, keep_bonus=keep_bonus, semantics=semantics, max_new_tokens=24,
                       keep_teacher_logits=True, student_temperature=1.0, teacher_temperature=1.0)

    def run():
        with _head_rows(teacher) as seen:
            out = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **sampler_generators())
        return out, sum(seen)

    lazy, lazy_rows = run()
    _whole_pass(monkeypatch)
    ref, ref_rows = run()
    assert lazy.responses() == ref.responses()
    assert torch.equal(lazy.provenance, ref.provenance)
    torch.testing.assert_close(lazy.teacher_logits, ref.teacher_logits, rtol=0, atol=1e-12)
    assert (lazy.proposed, lazy.accepted, lazy.rounds) == (ref.proposed, ref.accepted, ref.rounds)
    assert 0 < ref.accepted < ref.proposed                     # some drafts kept, some rejected
    if gamma != 1:
        assert lazy_rows < ref_rows
    else:                                                       # one position per pass: nothing to put off
        assert lazy_rows == ref_rows


@pytest.mark.parametrize("gamma", [2, 4, "auto"])
def test_greedy_speculative_decoding_is_that_of_the_whole_pass(gamma, monkeypatch):
    """Greedy speculative decoding splits too, and its output is still the teacher's greedy output."""
    teacher, _ = split_test_pair(V)
    student = noisy_copy(teacher)
    kw = dict(gamma=gamma, max_new_tokens=20, eos_token_id=NO_EOS, vocab_size=V)
    with _head_rows(teacher) as seen:
        lazy, lazy_stats = speculative_generate(teacher, student, PROMPTS, **kw)
    greedy = sample(teacher, student, PROMPTS, SampleConfig(mode="teacher", max_new_tokens=20, teacher_temperature=0.0),
                    eos_token_id=NO_EOS, vocab_size=V).responses()
    _whole_pass(monkeypatch)
    with _head_rows(teacher) as ref_seen:
        ref, ref_stats = speculative_generate(teacher, student, PROMPTS, **kw)
    assert lazy == ref == greedy
    assert lazy_stats == ref_stats
    assert 0 < ref_stats.accepted < ref_stats.drafted
    assert sum(seen) < sum(ref_seen)


def test_sampled_speculative_decoding_keeps_the_whole_pass(monkeypatch):
    """The sampling acceptance test (u < p / q) takes the whole draft at once, so only the greedy rule
    tests by position; sampled output is the same with splitting turned off."""
    assert SpeculativeRule(0.0, 1.0, 3).tests_by_position and not SpeculativeRule(1.0, 1.0, 3).tests_by_position
    teacher, student = split_test_pair(V)
    kw = dict(gamma=3, max_new_tokens=16, temperature=1.0, eos_token_id=NO_EOS, vocab_size=V)
    out, _ = speculative_generate(teacher, student, PROMPTS, generator=torch.Generator().manual_seed(7), **kw)
    _whole_pass(monkeypatch)
    ref, _ = speculative_generate(teacher, student, PROMPTS, generator=torch.Generator().manual_seed(7), **kw)
    assert out == ref


def test_forward_clock_counts_split_passes_once_each(monkeypatch):
    """skd.core.timing.ForwardClock times a split pass's body and each deferred output-layer call, and a
    whole-model forward once (its nested body and head are not counted again): the split run has exactly
    one call more per deferred output-layer call than the whole-pass run."""
    from skd.core.timing import ForwardClock

    teacher, student = split_test_pair(V)
    cfg = SampleConfig(mode="skd", k=3, gamma=4, max_new_tokens=16, student_temperature=1.0, teacher_temperature=1.0)
    head_calls = []
    real_at = PositionLogits.at
    monkeypatch.setattr(PositionLogits, "at", lambda self, r, p: head_calls.append(1) or real_at(self, r, p))
    with ForwardClock(teacher) as split_clock:
        split = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **sampler_generators())
    _whole_pass(monkeypatch)
    with ForwardClock(teacher) as whole_clock:
        whole = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **sampler_generators())
    assert split.responses() == whole.responses()
    assert whole_clock.calls == whole.rounds + 1                 # the prefill and one pass per round
    assert head_calls and split_clock.calls == whole_clock.calls + len(head_calls)
    assert split_clock.seconds > 0
