"""--gamma auto: the adaptive draft length of the SKD sampler and of speculative decoding.

The rule (skd.core.rules.adaptive_gamma) against a brute-force evaluation of its formula; the sampler's
identities still hold under it (K >= V is on-policy sampling and K = 0 teacher sampling, token for token;
greedy speculative decoding is the teacher's greedy output); kept student tokens still pass the top-K test;
the draft length falls to 1 for a student whose tokens are rejected and rises for one whose are kept.
"""
import pytest
import torch
from helpers import chi_square, law_pair, skd_law

from skd.core.rules import adaptive_gamma
from skd.core.sampling import PROV_STUDENT, SampleConfig, sample
from skd.core.speculative import speculative_generate

V = 40
PROMPTS = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21, 22, 30]]
NO_EOS = -1
BASE = dict(max_new_tokens=20, student_temperature=0.9, student_top_p=0.95, teacher_temperature=0.8,
            teacher_top_p=0.95, gamma="auto", gamma_max=6)


def _gens():
    return dict(student_generator=torch.Generator().manual_seed(100),
                teacher_generator=torch.Generator().manual_seed(200))


def _run(pair, mode, **kw):
    teacher, student = pair
    return sample(teacher, student, PROMPTS, SampleConfig(mode=mode, **{**BASE, **kw}), eos_token_id=NO_EOS,
                  vocab_size=V, **_gens())


@pytest.mark.parametrize("a", [0.0, 0.05, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("ratio", [0.5, 2.4, 10.0])
@pytest.mark.parametrize("bonus", [False, True])
def test_adaptive_gamma_maximises_expected_tokens_per_cost(a, ratio, bonus):
    def rate(g):   # expected tokens of a round, summed over its outcomes, per unit of cost
        n = g + 1 if bonus else g
        tokens = sum((k + 1) * a ** k * (1 - a) for k in range(g)) + (n * a ** g)
        return tokens / (g + ratio)

    g = adaptive_gamma(a, ratio, 8, bonus)
    assert rate(g) == pytest.approx(max(rate(x) for x in range(1, 9)), rel=1e-9)
    assert all(rate(x) < rate(g) * (1 - 1e-9) for x in range(1, g))   # the shortest of the best


def test_adaptive_gamma_ends():
    assert adaptive_gamma(0.0, 2.4, 8, False) == 1          # nothing is kept: one token per round anyway
    assert adaptive_gamma(1.0, 2.4, 8, False) == 8          # everything is kept: the longest draft
    gs = [adaptive_gamma(a / 100, 2.4, 8, False) for a in range(101)]
    assert gs == sorted(gs)                                  # longer drafts for a better student


def test_auto_with_k_at_least_vocab_is_on_policy_and_drafts_long(sharp_pair64):
    skd = _run(sharp_pair64, "skd", k=V)
    pol = _run(sharp_pair64, "student")
    assert skd.responses() == pol.responses()
    teacher, student = sharp_pair64
    ratio = sum(p.numel() for p in teacher.parameters()) / sum(p.numel() for p in student.parameters())
    assert skd.draft_lengths[0] == adaptive_gamma(0.5, ratio, 6, False)   # the first round: a coin-flip prior
    assert max(skd.draft_lengths) == 6 and skd.draft_lengths[-2] == 6   # acceptance -> 1: the longest draft


def test_auto_with_k_zero_is_teacher_sampling_and_drafts_one(sharp_pair64):
    skd = _run(sharp_pair64, "skd", k=0, teacher_led=False)
    tea = _run(sharp_pair64, "teacher")
    assert skd.responses() == tea.responses()
    assert set(skd.draft_lengths[2:]) == {1}                  # acceptance -> 0: one-token drafts
    # (with teacher-led rounds allowed, the default, the teacher leads instead: tests/test_teacher_led.py)


def test_auto_keeps_only_student_tokens_inside_the_teachers_top_k(sharp_pair64):
    teacher, _ = sharp_pair64
    out = _run(sharp_pair64, "skd", k=3)
    assert len(set(out.draft_lengths)) > 1                    # the length did adapt
    with torch.no_grad():
        logits = teacher(input_ids=out.tokens, attention_mask=out.attention_mask).logits[..., :V]
    for b in range(len(PROMPTS)):
        p, n = int(out.prompt_lengths[b]), int(out.lengths[b])
        for i in range(p, n):
            if out.provenance[b, i] == PROV_STUDENT:
                row = logits[b, i - 1]
                assert int((row > row[out.tokens[b, i]]).sum()) < 3


def test_greedy_speculative_decoding_with_auto_is_the_teachers_greedy_output(sharp_pair64):
    teacher, student = sharp_pair64
    spec, stats = speculative_generate(teacher, student, PROMPTS, gamma="auto", max_new_tokens=20,
                                       eos_token_id=NO_EOS, vocab_size=V)
    greedy = sample(teacher, student, PROMPTS, SampleConfig(mode="teacher", teacher_temperature=0, max_new_tokens=20),
                    eos_token_id=NO_EOS, vocab_size=V).responses()
    assert spec == greedy and stats.drafted > 0


def test_gamma_values_are_checked():
    from skd.core.config import ConfigValueError

    assert SampleConfig(gamma="7").gamma == 7                 # a number from a config file
    for bad in (0, -1, "often", True):
        with pytest.raises(ConfigValueError, match="gamma must be auto or >= 1"):
            SampleConfig(gamma=bad)


def test_auto_prices_a_teacher_forward_by_its_weight_bytes(sharp_pair64):
    """A teacher stored at half the bytes per weight (float32 beside a float64 student here, as bf16 beside
    fp32 in practice) costs half as many student forwards: the first round's length follows the byte ratio."""
    import copy

    from skd.core.models import weight_bytes

    teacher64, student = sharp_pair64
    teacher32 = copy.deepcopy(teacher64).float()
    params = sum(p.numel() for p in teacher64.parameters()) / sum(p.numel() for p in student.parameters())
    bytes_ratio = weight_bytes(teacher32) / weight_bytes(student)
    assert bytes_ratio == pytest.approx(params / 2)
    g_bytes, g_params = adaptive_gamma(0.5, bytes_ratio, 6, False), adaptive_gamma(0.5, params, 6, False)
    assert g_bytes != g_params                       # the two pricings disagree on this pair
    out = _run((teacher32, student), "skd", k=V)
    assert out.draft_lengths[0] == g_bytes


@pytest.mark.parametrize("a", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.4, 10.0])
def test_drafting_pays_when_some_draft_beats_the_teacher_alone(a, ratio):
    from skd.core.rules import drafting_pays

    def rate(g):   # expected tokens per student-forward unit, bonus token kept (speculative decoding)
        return sum((k + 1) * a ** k * (1 - a) for k in range(g)) + (g + 1) * a ** g

    best = max(rate(g) / (g + ratio) for g in range(1, 9))
    assert drafting_pays(a, ratio, 8, True) == (best * ratio > 1.0)   # the teacher alone: 1 token per `ratio`


def test_speculative_auto_stops_drafting_for_a_useless_draft_and_probes(sharp_pair64):
    """The unrelated student's drafts are rejected: after the first round most rounds are the teacher's alone,
    every PROBE_EVERY-th still drafts, and the output stays the teacher's greedy output."""
    from skd.core.sampling import PROBE_EVERY

    teacher, student = sharp_pair64
    n = 2 * PROBE_EVERY + 8
    spec, stats = speculative_generate(teacher, student, PROMPTS, gamma="auto", max_new_tokens=n,
                                       eos_token_id=NO_EOS, vocab_size=V)
    greedy = sample(teacher, None, PROMPTS, SampleConfig(mode="teacher", teacher_temperature=0, max_new_tokens=n),
                    eos_token_id=NO_EOS, vocab_size=V).responses()
    assert spec == greedy
    drafting = stats.rounds - stats.teacher_only_rounds
    assert stats.acceptance_rate < 0.2 and stats.teacher_only_rounds > stats.rounds / 2
    assert drafting >= 3   # the first round and at least two probes


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_teacher_only_rounds_leave_the_drafts_cache_exact(monkeypatch, arch):
    """The teacher as its own draft, with a forced schedule of teacher-only rounds (two of every three): the
    draft must catch up on the tokens it skipped, so every drafted token still equals the teacher's argmax."""
    import itertools

    from skd.core import sampling
    from skd.core.presets import tiny_model

    teacher = tiny_model(arch, V, seed=3, dtype=torch.float64)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(8.0)
    schedule = itertools.cycle([False, False, True])
    monkeypatch.setattr(sampling, "drafting_pays", lambda *a: next(schedule))
    spec, stats = speculative_generate(teacher, teacher, PROMPTS, gamma="auto", max_new_tokens=30,
                                       eos_token_id=NO_EOS, vocab_size=V)
    greedy = sample(teacher, None, PROMPTS, SampleConfig(mode="teacher", teacher_temperature=0, max_new_tokens=30),
                    eos_token_id=NO_EOS, vocab_size=V).responses()
    assert spec == greedy
    assert stats.teacher_only_rounds >= stats.rounds / 2 and stats.drafted > 0
    assert stats.acceptance_rate == 1.0


def test_skd_sampling_never_skips_the_draft(sharp_pair64):
    """SKD's student proposes every token the teacher does not replace: no teacher-only rounds, however
    poor the student (K = 0 rejects every proposal)."""
    out = _run(sharp_pair64, "skd", k=0, max_new_tokens=2 * 16 + 8)
    assert min(out.draft_lengths) >= 1


@pytest.mark.parametrize("gamma", [1, 5, "auto"])
def test_skd_token_law_does_not_depend_on_the_draft_length(gamma):
    """Each position's token follows the same SKD law whatever the draft length (the bonus token is
    discarded, so every token is a student proposal put to the top-K test): `--gamma auto` samples what
    a fixed gamma samples, only at another cost. Chi-square against the exact law of the first two
    positions, computed by enumeration, with a power check against teacher sampling."""
    Vs, k, prompt, N = 8, 3, [1, 6, 7], 6000
    teacher, student = law_pair(Vs)
    r1 = skd_law(teacher, student, [prompt], k, Vs)[0]
    r2 = r1 @ skd_law(teacher, student, [prompt + [x] for x in range(Vs)], k, Vs)
    cfg = SampleConfig(mode="skd", k=k, gamma=gamma, gamma_max=6, max_new_tokens=2, student_temperature=1.0,
                       student_top_p=1.0, teacher_temperature=1.0, teacher_top_p=1.0)
    out = sample(teacher, student, [prompt] * N, cfg, eos_token_id=NO_EOS, vocab_size=Vs,
                 student_generator=torch.Generator().manual_seed(3), teacher_generator=torch.Generator().manual_seed(4))
    x = torch.tensor(out.responses())
    assert 0.05 < out.acceptance_rate < 0.95        # both the kept and the replaced paths are exercised
    crit = {4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}  # chi-square 0.999 quantiles
    for pos, probs in ((0, r1), (1, r2)):
        stat, df = chi_square(torch.bincount(x[:, pos], minlength=Vs).double(), probs, N)
        assert stat < crit[df], f"position {pos}: chi2 {stat:.1f} with {df} dof"
    with torch.no_grad():   # power: the teacher's own law at the first position is rejected by the same test
        p1 = torch.softmax(teacher(torch.tensor([prompt])).logits[0, -1].double(), -1)
    assert (p1 - r1).abs().sum() > 0.1
    draws = torch.multinomial(p1, N, replacement=True, generator=torch.Generator().manual_seed(5))
    stat, df = chi_square(torch.bincount(draws, minlength=Vs).double(), r1, N)
    assert stat > crit[df]


@pytest.mark.parametrize("a, g", [(0.3, 2), (0.8, 5), (0.95, 8)])
def test_acceptance_estimate_recovers_the_per_token_acceptance(a, g):
    """Rounds drawn from the model adaptive_gamma plans with (each drafted token kept with probability a
    until the first rejection): the estimate lands on a, where accepted / drafted reads low."""
    from skd.core.rules import acceptance_estimate

    gen = torch.Generator().manual_seed(0)
    accepted = rejected = drafted = 0
    for _ in range(4000):
        kept = int(torch.cumprod((torch.rand(g, generator=gen) < a).long(), 0).sum())
        accepted, rejected, drafted = accepted + kept, rejected + (kept < g), drafted + g
    assert acceptance_estimate(accepted, rejected) == pytest.approx(a, abs=0.015)
    assert accepted / drafted < a - 0.04          # the reported rate is not an estimate of a
    assert acceptance_estimate(0, 0) == 0.5


def test_auto_plans_with_the_acceptance_estimate(sharp_pair64, monkeypatch):
    """The sampler's draft length is adaptive_gamma of rules.acceptance_estimate of its own counts."""
    from skd.core import sampling

    seen = []
    monkeypatch.setattr(sampling, "acceptance_estimate", lambda acc, rej: seen.append((acc, rej)) or 1.0)
    out = _run(sharp_pair64, "skd", k=3)
    assert len(seen) == len(out.draft_lengths) and set(out.draft_lengths) == {6}   # a = 1: the longest draft
    assert seen[0] == (0, 0) and seen[-1][0] + seen[-1][1] > 0


@pytest.mark.parametrize("a", [0.0, 0.3, 0.7, 0.9, 1.0])
@pytest.mark.parametrize("bonus", [False, True])
def test_adaptive_gamma_with_prices_per_pass_width(a, bonus):
    """A price per pass width: the rule maximises tokens per cost with the pass's own price (g positions,
    g + 1 with the bonus); one price at every width is the same as the single number."""
    from skd.core.rules import drafting_pays, teacher_price

    prices = (1.4, 1.9, 2.1, 2.6, 2.8, 3.3)   # rising with positions, as on a CPU; longer passes: the last

    def rate(g):
        n = g + 1 if bonus else g
        tokens = sum((k + 1) * a ** k * (1 - a) for k in range(g)) + (n * a ** g)
        return tokens / (g + prices[min(n, len(prices)) - 1])

    g = adaptive_gamma(a, prices, 8, bonus)
    assert rate(g) == pytest.approx(max(rate(x) for x in range(1, 9)), rel=1e-9)
    assert teacher_price(prices, 7) == 3.3 and teacher_price(2.4, 7) == 2.4
    assert adaptive_gamma(a, (2.4,) * 9, 8, bonus) == adaptive_gamma(a, 2.4, 8, bonus)
    assert drafting_pays(a, prices, 8, bonus) == (max(rate(x) for x in range(1, 9)) * 1.4 > 1.0)


def test_auto_uses_the_given_teacher_prices(sharp_pair64, monkeypatch):
    from skd.core import sampling
    from skd.core.config import ConfigValueError

    for name in ("adaptive_gamma", "plan_round"):   # without and with teacher-led rounds
        seen = []
        real = getattr(sampling, name)
        monkeypatch.setattr(sampling, name, lambda *args, real=real, seen=seen: seen.append(args) or real(*args))
        _run(sharp_pair64, "skd", k=3, teacher_prices=[1.5, 2.0, 2.5], teacher_led=name == "plan_round")
        assert seen and all((1.5, 2.0, 2.5) in args for args in seen)
    for bad in ([], [1.0, 0.0], [float("nan")]):
        with pytest.raises(ConfigValueError, match="teacher_prices"):
            SampleConfig(teacher_prices=bad)
