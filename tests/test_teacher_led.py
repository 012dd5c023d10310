"""Teacher-led rounds of the SKD sampler (--gamma auto, rules.plan_round): the teacher writes ahead, the
student's proposals are tested after it.

Every position must still follow CONTRACT.md §2's law (chi-square against the exact law, with every round
teacher-led and with the two kinds alternating); K = 0 is still teacher sampling token for token; the kept
teacher logits still equal a fresh teacher forward on the final sequences (the caches' holes are right);
provenance, counts, EOS, budgets and stop strings behave as in student-led rounds; and the planner picks
the kind and length with the most expected tokens per unit of cost (brute force).
"""
import copy

import pytest
import torch
from helpers import chi_square, law_pair, skd_law

from skd.core import sampling
from skd.core.rules import (mismatch_estimate, plan_round, process_logits, round_tokens, student_price,
                            teacher_price)
from skd.core.sampling import PROV_STUDENT, PROV_TEACHER, SampleConfig, sample

V = 40
PROMPTS = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21, 22, 30]]
NO_EOS = -1
BASE = dict(max_new_tokens=20, student_temperature=0.9, student_top_p=0.95, teacher_temperature=0.8,
            teacher_top_p=0.95, gamma="auto", gamma_max=6)


def _gens(s=100, t=200):
    return dict(student_generator=torch.Generator().manual_seed(s),
                teacher_generator=torch.Generator().manual_seed(t))


def _force(monkeypatch, plans):
    """Make the sampler's planner return plans[i % len(plans)] in round i: (teacher-led, length)."""
    calls = []

    def fake(*args):
        calls.append(args)
        return plans[(len(calls) - 1) % len(plans)]

    monkeypatch.setattr(sampling, "plan_round", fake)
    return calls


# --------------------------------------------------------------------------- the planner

@pytest.mark.parametrize("a", [0.0, 0.01, 0.1, 0.4, 0.8, 1.0])
@pytest.mark.parametrize("m", [0.2, 1.0])
@pytest.mark.parametrize("cost", [0.5, 2.4, (2.48, 2.82, 3.21, 3.24, 3.77, 3.93, 3.93, 4.66)])
def test_plan_round_maximises_expected_tokens_per_cost(a, m, cost):
    """Brute force over both kinds of round: a student-led draft of g (the tested prefix, then the teacher's
    token at the first rejection; g + teacher_price(g)) and a teacher-led run of n positions, each breaking
    with probability a*m (n teacher_price(1) + student_price(n)), summed over the outcomes."""
    def sl(g):
        tokens = sum((k + 1) * a ** k * (1 - a) for k in range(g)) + g * a ** g
        return tokens / (g + teacher_price(cost, g))

    def tl(n):
        b = a * m
        tokens = sum((k + 1) * (1 - b) ** k * b for k in range(n)) + n * (1 - b) ** n
        return tokens / (n * teacher_price(cost, 1) + student_price(cost, n))

    led, length = plan_round(a, m, cost, 8, False, True)
    best = max(max(sl(g) for g in range(1, 9)), max(tl(n) for n in range(1, 9)))
    got = tl(length) if led else sl(length)
    assert got == pytest.approx(best, rel=1e-9)
    if led:   # a teacher-led round only when it beats every student-led one
        assert tl(length) > max(sl(g) for g in range(1, 9)) * (1 + 1e-12)
    assert plan_round(a, m, cost, 8, True, True)[0] is False      # with the bonus token: never teacher-led
    assert plan_round(a, m, cost, 8, False, False)[0] is False    # not allowed: never


def test_plan_round_lets_the_teacher_lead_a_weak_student_only():
    prices = (2.48, 2.82, 3.21, 3.24, 3.77, 3.93, 3.93, 4.66)   # SmolLM2 teacher / 8-layer student, a CPU
    assert plan_round(0.012, 1.0, prices, 8, False, True)[0] is True
    assert plan_round(0.8, 1.0, prices, 8, False, True)[0] is False
    assert plan_round(0.5, 1.0, 2.4, 8, False, True)[0] is False     # the first round (a coin-flip prior)
    led, n = plan_round(0.0, 1.0, 2.4, 8, False, True)
    assert led and n == 8                                              # nothing breaks: the longest run
    assert round_tokens(1.0, 8) == 8.0


def test_student_price_follows_the_teachers_growth():
    assert student_price(2.4, 7) == 1.0
    assert student_price((2.0, 3.0, 4.0), 2) == 1.5 and student_price((2.0, 3.0, 4.0), 9) == 2.0


def test_mismatch_estimate_starts_at_one_and_tends_to_the_share():
    assert mismatch_estimate(0, 0) == 1.0
    assert mismatch_estimate(30, 99) == pytest.approx(0.31) and mismatch_estimate(2.5, 4) == pytest.approx(0.7)


# --------------------------------------------------------------------------- the sampler

@pytest.mark.parametrize("plans", [[(True, 1)], [(True, 2)], [(True, 3)], [(True, 2), (False, 1)],
                                   [(False, 2), (True, 1)]], ids=["led1", "led2", "led3", "led-then-draft",
                                                                  "draft-then-led"])
def test_teacher_led_rounds_keep_the_skd_token_law(monkeypatch, plans):
    """The first three positions follow CONTRACT.md §2's law exactly (chi-square against the law computed by
    enumeration) when rounds are teacher-led, alone or alternating with student-led ones."""
    Vs, k, prompt, N = 6, 2, [1, 4, 5], 6000
    teacher, student = law_pair(Vs)

    def law(prefixes):
        return skd_law(teacher, student, prefixes, k, Vs)

    r1 = law([prompt])[0]
    l2 = law([prompt + [x] for x in range(Vs)])                                   # [Vs, Vs]
    l3 = law([prompt + [x, y] for x in range(Vs) for y in range(Vs)]).view(Vs, Vs, Vs)
    joint2 = r1[:, None] * l2                                                      # P(x0, x1)
    r2 = joint2.sum(0)
    r3 = (joint2[:, :, None] * l3).sum((0, 1))
    calls = _force(monkeypatch, plans)
    cfg = SampleConfig(mode="skd", k=k, gamma="auto", gamma_max=6, max_new_tokens=3, student_temperature=1.0,
                       student_top_p=1.0, teacher_temperature=1.0, teacher_top_p=1.0)
    out = sample(teacher, student, [prompt] * N, cfg, eos_token_id=NO_EOS, vocab_size=Vs, **_gens(3, 4))
    assert calls and (out.teacher_led_lengths or ())
    x = torch.tensor(out.responses())
    assert x.shape == (N, 3)
    assert 0.05 < out.acceptance_rate < 0.95        # kept and replaced proposals both occur
    crit = {2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}  # chi-square 0.999 quantiles
    for pos, probs in ((0, r1), (1, r2), (2, r3)):
        stat, df = chi_square(torch.bincount(x[:, pos], minlength=Vs).double(), probs, N)
        assert stat < crit[df], f"position {pos}: chi2 {stat:.1f} with {df} dof"
    # power: the teacher's own law at the first position is rejected by the same test
    with torch.no_grad():
        p1 = torch.softmax(teacher(torch.tensor([prompt])).logits[0, -1].double(), -1)
    draws = torch.multinomial(p1, N, replacement=True, generator=torch.Generator().manual_seed(5))
    stat, df = chi_square(torch.bincount(draws, minlength=Vs).double(), r1, N)
    assert stat > crit[df]


@pytest.mark.parametrize("semantics", ["paper", "code"])
def test_k_zero_with_teacher_led_rounds_is_teacher_sampling(sharp_pair64, semantics):
    teacher, student = sharp_pair64
    cfg = SampleConfig(mode="skd", k=0, semantics=semantics, **BASE)
    skd = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
    tea = sample(teacher, student, PROMPTS, SampleConfig(mode="teacher", semantics=semantics, **BASE),
                 eos_token_id=NO_EOS, vocab_size=V, **_gens(s=7))
    assert skd.responses() == tea.responses()
    assert skd.teacher_led_lengths and max(skd.teacher_led_lengths) > 1     # the teacher led, several tokens a round
    assert skd.accepted == 0 and skd.replaced == skd.generated
    torch.testing.assert_close(skd.teacher_logits, tea.teacher_logits, rtol=0, atol=1e-10)


def test_without_teacher_led_rounds_a_rejected_student_drafts_one_token(sharp_pair64):
    teacher, student = sharp_pair64
    out = sample(teacher, student, PROMPTS, SampleConfig(mode="skd", k=0, teacher_led=False, **BASE),
                 eos_token_id=NO_EOS, vocab_size=V, **_gens())
    assert not out.teacher_led_lengths and set(out.draft_lengths[2:]) == {1}
    fixed = sample(teacher, student, PROMPTS, SampleConfig(mode="skd", k=3, **{**BASE, "gamma": 4}),
                   eos_token_id=NO_EOS, vocab_size=V, **_gens())
    assert not fixed.teacher_led_lengths     # a fixed gamma is the released code's procedure: never teacher-led
    bonus = sample(teacher, student, PROMPTS, SampleConfig(mode="skd", k=0, keep_bonus=True, **BASE),
                   eos_token_id=NO_EOS, vocab_size=V, **_gens())
    assert not bonus.teacher_led_lengths


@pytest.mark.parametrize("plans", [[(True, 4)], [(True, 3), (False, 3)], [(False, 2), (True, 5), (True, 1)]])
@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("semantics", ["paper", "code"])
def test_teacher_led_rounds_keep_exact_caches_and_targets(monkeypatch, sharp_pair64, plans, k, semantics):
    """The teacher logits kept as targets equal a fresh teacher forward on the final sequences, and every
    kept student token lies in the teacher's top-K there: both caches hold exactly the committed tokens
    after breaks, chain ends and compactions (90 tokens: many holes)."""
    teacher, student = (copy.deepcopy(m).float() for m in sharp_pair64)
    _force(monkeypatch, plans)
    cfg = SampleConfig(mode="skd", k=k, semantics=semantics,
                       **{**BASE, "max_new_tokens": 90, "student_temperature": 1.0, "student_top_p": 1.0,
                          "teacher_temperature": 1.0, "teacher_top_p": 1.0, "teacher_top_k": 30})
    out = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
    with torch.no_grad():
        fresh = teacher(input_ids=out.tokens, attention_mask=out.attention_mask).logits[..., :V]
    for b in range(len(PROMPTS)):
        p, n = int(out.prompt_lengths[b]), int(out.lengths[b])
        assert n - p == 90
        torch.testing.assert_close(out.teacher_logits[b, : n - p], fresh[b, p - 1: n - 1], rtol=0, atol=1e-5)
        for i in range(p, n):
            if out.provenance[b, i] == PROV_STUDENT:   # code semantics: the test reads the processed teacher
                row = fresh[b, i - 1] if semantics == "paper" else process_logits(fresh[b, i - 1], 1.0, 30, 1.0)
                assert int((row > row[out.tokens[b, i]]).sum()) < k and torch.isfinite(row[out.tokens[b, i]])
    n_student = int((out.provenance == PROV_STUDENT).sum())
    n_teacher = int((out.provenance == PROV_TEACHER).sum())
    assert n_student == out.accepted and n_teacher == out.replaced
    assert out.generated == n_student + n_teacher == 3 * 90
    if k == 20:
        assert out.accepted > 0 and out.replaced > 0


def test_teacher_led_rounds_end_rows_at_eos_and_budget(monkeypatch, sharp_pair64):
    teacher, student = sharp_pair64
    _force(monkeypatch, [(True, 6)])
    cfg = SampleConfig(mode="skd", k=5, **{**BASE, "max_new_tokens": 17})
    probe = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
    assert all(len(r) == 17 for r in probe.responses())                  # budget, not a multiple of 6
    eos = probe.responses()[1][5]
    out = sample(teacher, student, PROMPTS, cfg, eos_token_id=eos, vocab_size=V, **_gens())
    for full, cut in zip(probe.responses(), out.responses()):
        assert cut == (full[: full.index(eos) + 1] if eos in full else full)
    assert out.responses()[1][-1] == eos


def test_greedy_teacher_led_batch_of_three_equals_three_batches_of_one(monkeypatch, sharp_pair64):
    teacher, student = sharp_pair64
    _force(monkeypatch, [(True, 3), (False, 2)])
    cfg = SampleConfig(mode="skd", k=3, gamma="auto", max_new_tokens=14, student_temperature=0, teacher_temperature=0)
    batched = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
    singles = [sample(teacher, student, [p], cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens()).responses()[0]
               for p in PROMPTS]
    assert batched.responses() == singles


def test_teacher_led_rounds_stop_at_stop_strings(monkeypatch):
    from skd.core.presets import tiny_model
    from skd.core.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    Vt = len(tok)
    teacher = tiny_model("llama", Vt, seed=3, dtype=torch.float64)
    student = tiny_model("llama", Vt, seed=4, dtype=torch.float64, hidden=16, layers=1)
    prompts = [tok("Q: 1+2=")["input_ids"], tok("Q: 3")["input_ids"]]
    _force(monkeypatch, [(True, 5)])
    base = dict(mode="skd", k=10, gamma="auto", max_new_tokens=40, student_temperature=1.0, student_top_p=1.0,
                teacher_temperature=1.0, teacher_top_p=1.0)
    free = sample(teacher, student, prompts, SampleConfig(**base), tokenizer=tok, eos_token_id=NO_EOS, **_gens())
    resp0 = free.responses()[0]
    i = next(i for i in range(5, len(resp0) - 1) if min(resp0[i], resp0[i + 1]) >= 6)   # two plain characters
    stop = tok.decode(resp0[i: i + 2])
    out = sample(teacher, student, prompts, SampleConfig(**base, stop_strings=(stop,)), tokenizer=tok,
                 eos_token_id=NO_EOS, **_gens())
    cut = next(e for e in range(1, len(resp0) + 1) if stop in tok.decode(resp0[:e]))
    assert out.responses()[0] == resp0[:cut]


def test_student_led_rounds_count_the_expected_mismatch_of_their_kept_tokens(monkeypatch, sharp_pair64):
    """A kept token of a student-led round adds 1 - p(token) (p: the teacher's sampling distribution there) to
    the mismatch count that plans teacher-led rounds; no draw is made for it."""
    teacher, student = sharp_pair64
    _force(monkeypatch, [(False, 3)])
    seen = []
    real = sampling.mismatch_estimate
    monkeypatch.setattr(sampling, "mismatch_estimate", lambda mis, kept: seen.append((mis, kept)) or real(mis, kept))
    cfg = SampleConfig(mode="skd", k=V, **{**BASE, "max_new_tokens": 6, "teacher_temperature": 1.0,
                                           "teacher_top_p": 1.0})
    out = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
    assert seen[0] == (0.0, 0) and seen[1][1] == 9                 # round 1 kept 3 tokens in each of 3 rows
    p = torch.softmax(out.teacher_logits[:, :3].double(), -1)
    first = torch.stack([out.tokens[b, len(PROMPTS[b]): len(PROMPTS[b]) + 3] for b in range(3)])
    expected = float((1 - p.gather(2, first[..., None])).sum())
    assert seen[1][0] == pytest.approx(expected, rel=1e-9)
    with_draws = sample(teacher, student, PROMPTS, SampleConfig(mode="skd", k=V, teacher_led=False,
                                                                **{**BASE, "gamma": 3, "max_new_tokens": 6}),
                        eos_token_id=NO_EOS, vocab_size=V, **_gens())
    assert out.responses() == with_draws.responses()               # counting draws nothing
    seen.clear()
    sample(teacher, student, PROMPTS, SampleConfig(mode="skd", k=V, **{**BASE, "max_new_tokens": 60}),
           eos_token_id=NO_EOS, vocab_size=V, **_gens())
    kept = [k for _, k in seen]
    assert kept == sorted(kept) and max(kept) < sampling.MISMATCH_SAMPLES + 9   # counting stops past the cap
    assert kept[-1] == kept[-2] >= sampling.MISMATCH_SAMPLES


def test_a_greedy_teacher_and_top_1_test_leave_nothing_mismatched(monkeypatch, sharp_pair64):
    """K = 1 with a greedy teacher: every kept proposal is the teacher's own token, so the estimate falls
    as 1 / (kept + 1) and teacher-led rounds never break."""
    teacher, student = sharp_pair64
    seen = []
    real = sampling.mismatch_estimate
    monkeypatch.setattr(sampling, "mismatch_estimate", lambda mis, kept: seen.append((mis, kept)) or real(mis, kept))
    cfg = SampleConfig(mode="skd", k=1, **{**BASE, "teacher_temperature": 0.0, "max_new_tokens": 40})
    out = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
    assert all(mis == 0 for mis, _ in seen) and seen[-1][1] == out.accepted > 0
    assert out.teacher_led_lengths
