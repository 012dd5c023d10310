"""Staged verification (rules.staging_pays, KVStream.forward_rows, the sampler's _Staged): a round scores
every row's first drafted position, then the later positions of the rows that kept it. The samples,
provenance, kept teacher logits and counts are those of one whole pass; the teacher computes fewer
row-positions; the decision follows the cost model."""
from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from helpers import noisy_copy, sampler_generators, split_test_pair

import skd.core.kvcache as KV
import skd.core.rules as rules
from skd.core.kvcache import KVStream
from skd.core.presets import tiny_model
from skd.core.rules import staging_pays, verify_fixed_tokens
from skd.core.sampling import SampleConfig, sample
from skd.core.speculative import speculative_generate

V = 40
PROMPTS = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21, 22, 30], [4, 4, 4], [7], [9, 9, 2, 3, 1]]
NO_EOS = -1


@contextlib.contextmanager
def _body_tokens(teacher):
    """Row-positions the teacher's decoder computes inside the block, one entry per call."""
    seen = []
    hook = teacher.get_decoder().register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["input_ids"].numel()), with_kwargs=True)
    try:
        yield seen
    finally:
        hook.remove()


@pytest.fixture
def stage_tiny(monkeypatch):
    """Let the tiny test models stage wherever a row may stop early: the real decision, with no parameter
    floor and no fixed cost per pass."""
    monkeypatch.setattr(rules, "STAGED_MIN_PARAMS", 0)
    monkeypatch.setattr(rules, "STAGED_FIXED_TOKENS_CPU", 0)


# --------------------------------------------------------------------------- the decision

def test_staging_pays_follows_the_cost_model():
    assert not staging_pays(0.01, 32, 5, None)            # no fixed cost known: never
    assert not staging_pays(0.01, 32, 1, 32.0)            # one position: nothing to stage
    assert staging_pays(0.01, 32, 5, 32.0)                # weak draft, many rows: the later positions are rare
    assert not staging_pays(0.9, 32, 5, 32.0)             # most rows go on: the second pass is nearly whole
    assert staging_pays(0.001, 1, 5, 32.0)                # one row, kept once in a thousand
    assert not staging_pays(0.5, 1, 5, 32.0)              # one row, a coin flip: a second pass half the time
    a, rows, w, f = 0.3, 8, 4, 32.0                       # the inequality itself, both sides
    assert staging_pays(a, rows, w, f) == ((1 - (1 - a) ** rows) * f < rows * (w - 1) * (1 - a))


def test_verify_fixed_tokens_only_for_large_models_on_a_cpu():
    big = rules.STAGED_MIN_PARAMS
    assert verify_fixed_tokens(big, "cpu") == rules.STAGED_FIXED_TOKENS_CPU
    assert verify_fixed_tokens(big - 1, "cpu") is None
    assert verify_fixed_tokens(big, "cuda") is None


# --------------------------------------------------------------------------- forward_rows

@pytest.mark.parametrize("growing", [True, False])
def test_forward_rows_gives_the_whole_pass_logits_and_cache(growing, monkeypatch):
    """Rows run alone get the logits of a pass over every row; the others get holes; later passes see the
    same cache either way (in-place layers, and the masked fallback when they are off)."""
    if not growing:
        monkeypatch.setattr(KV, "use_growing_layers", lambda cache, extra: None)
    model = tiny_model("llama", V, seed=3, dtype=torch.float64)
    whole, part = KVStream(model, V), KVStream(model, V)
    prefix = [[5, 9, 12], [8], [11, 14, 6, 20], [3, 3]]
    for s in (whole, part):
        s.prefill(prefix, 0)
    layer_type = type(part.cache.layers[0])
    assert (layer_type is KV.growing_layer_class()) is growing
    ids = torch.tensor([[3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14]])
    rows = torch.tensor([2, 0])
    ref = whole.forward(ids)
    out = part.forward_rows(rows, ids[rows])
    torch.testing.assert_close(out, ref[rows], rtol=0, atol=1e-12)
    lazy = part.forward_rows(rows, ids[rows, :1], head=False)   # the deferred output layer too
    ref2 = whole.forward(ids[:, :1])
    torch.testing.assert_close(lazy.at(torch.tensor([1, 0]), 0), ref2[rows[[1, 0]], 0], rtol=0, atol=1e-12)
    # rows 1 and 3 got holes: drop the slots the whole stream gave them, then both caches agree
    gone = torch.tensor([0, 4, 0, 4])
    whole.invalidate_tail(gone)
    part.invalidate_tail(gone)   # the holes stay holes; only valid slots move next_pos
    assert torch.equal(part.next_pos, whole.next_pos) and torch.equal(part.slot_mask, whole.slot_mask)
    nxt = torch.tensor([[1], [2], [3], [4]])
    torch.testing.assert_close(part.forward(nxt), whole.forward(nxt), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- sampling

def _run(teacher, student, cfg):
    with _body_tokens(teacher) as seen:
        out = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **sampler_generators())
    return out, sum(seen)


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("gamma,keep_bonus,semantics", [(4, False, "paper"), (4, True, "paper"), (3, False, "code"),
                                                        (1, True, "paper"), ("auto", False, "paper")])
def test_skd_samples_are_those_of_one_pass(split, gamma, keep_bonus, semantics, stage_tiny, monkeypatch):
    """Tokens, provenance, kept teacher logits and counts equal the one-pass verification's (with the
    output layer put off or not); the teacher's body computes fewer row-positions."""
    if not split:
        monkeypatch.setattr(KV, "split_head", lambda model: None)
    teacher, student = split_test_pair(V)
    kw = dict(mode="skd", k=3, gamma=gamma, keep_bonus=keep_bonus, semantics=semantics, max_new_tokens=24,
              keep_teacher_logits=True, student_temperature=1.0, teacher_temperature=1.0)
    staged, staged_tokens = _run(teacher, student, SampleConfig(**kw))
    ref, ref_tokens = _run(teacher, student, SampleConfig(staged_verify=False, **kw))
    assert staged.responses() == ref.responses()
    assert torch.equal(staged.provenance, ref.provenance)
    torch.testing.assert_close(staged.teacher_logits, ref.teacher_logits, rtol=0, atol=1e-12)
    assert (staged.proposed, staged.accepted, staged.replaced, staged.rounds) == \
        (ref.proposed, ref.accepted, ref.replaced, ref.rounds)
    assert staged.draft_lengths == ref.draft_lengths
    assert 0 < ref.accepted < ref.proposed                      # some drafts kept, some rejected
    if ref.draft_lengths and max(ref.draft_lengths) + keep_bonus > 1:
        assert staged_tokens < ref_tokens
    else:                                                       # one position per pass: nothing to stage
        assert staged_tokens == ref_tokens


def test_tiny_models_do_not_stage_by_default():
    """Under STAGED_MIN_PARAMS (per-call overhead dominates) the sampler keeps one pass per round."""
    teacher, student = split_test_pair(V)
    kw = dict(mode="skd", k=3, gamma=4, max_new_tokens=16, student_temperature=1.0, teacher_temperature=1.0)
    on, on_tokens = _run(teacher, student, SampleConfig(**kw))
    off, off_tokens = _run(teacher, student, SampleConfig(staged_verify=False, **kw))
    assert on_tokens == off_tokens and on.responses() == off.responses()


def test_a_batch_whose_first_tokens_are_all_rejected_stops_after_one_position(stage_tiny):
    """K = 0 rejects every drafted token: each round's verification is one position per row."""
    teacher, student = split_test_pair(V)
    cfg = SampleConfig(mode="skd", k=0, gamma=5, max_new_tokens=12, student_temperature=1.0, teacher_temperature=1.0)
    calls = []
    with _body_tokens(teacher) as seen:
        out = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **sampler_generators())
        calls = list(seen)
    assert out.accepted == 0 and all(r == 12 for r in out.response_lengths.tolist())
    assert calls[1:] == [len(PROMPTS)] * out.rounds             # after the prefill: one position per row
    ref = sample(teacher, student, PROMPTS, dataclasses.replace(cfg, staged_verify=False),
                 eos_token_id=NO_EOS, vocab_size=V, **sampler_generators())
    assert out.responses() == ref.responses()


def test_greedy_speculative_decoding_stages_and_stays_the_teachers_output(stage_tiny):
    teacher, _ = split_test_pair(V)
    draft = noisy_copy(teacher, noise=2.0)
    kw = dict(gamma=4, max_new_tokens=20, eos_token_id=NO_EOS, vocab_size=V)
    with _body_tokens(teacher) as seen:
        out, stats = speculative_generate(teacher, draft, PROMPTS, **kw)
    greedy = sample(teacher, draft, PROMPTS, SampleConfig(mode="teacher", max_new_tokens=20, teacher_temperature=0.0),
                    eos_token_id=NO_EOS, vocab_size=V).responses()
    assert out == greedy
    assert 0 < stats.accepted < stats.drafted
    assert len(seen) > stats.rounds + 1                           # some rounds ran a second stage
