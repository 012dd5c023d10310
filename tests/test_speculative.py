"""Speculative decoding: greedy output equals the teacher's greedy output; sampled output follows the
teacher's distribution (chi-square against the exact distribution, with a power check)."""
import pytest
import torch
from helpers import chi_square

from skd.core.presets import tiny_model
from skd.core.sampling import SampleConfig, sample
from skd.core.speculative import speculative_generate

V = 40
PROMPTS = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21, 22, 30]]
NO_EOS = -1


@pytest.fixture
def pair(sharp_pair64):
    return sharp_pair64


@pytest.mark.parametrize("gamma", [1, 2, 4, 7])
@pytest.mark.parametrize("batch", ["one", "three"])
def test_greedy_speculative_equals_teacher_greedy(pair, gamma, batch):
    teacher, student = pair
    prompts = PROMPTS[:1] if batch == "one" else PROMPTS
    ref = sample(teacher, None, prompts, SampleConfig(mode="teacher", teacher_temperature=0, max_new_tokens=20),
                 eos_token_id=NO_EOS, vocab_size=V).responses()
    got, stats = speculative_generate(teacher, student, prompts, gamma=gamma, max_new_tokens=20,
                                      eos_token_id=NO_EOS, vocab_size=V)
    assert got == ref
    assert stats.generated == 20 * len(prompts)
    assert 0 < stats.teacher_forwards_per_token <= 1.0


def test_greedy_with_the_teacher_as_its_own_draft_accepts_everything(pair):
    teacher, _ = pair
    got, stats = speculative_generate(teacher, teacher, PROMPTS, gamma=4, max_new_tokens=20, eos_token_id=NO_EOS,
                                      vocab_size=V)
    assert stats.acceptance_rate == 1.0
    assert stats.teacher_forwards_per_token == pytest.approx(1 / 5, abs=0.05)  # 4 drafted + 1 bonus per pass


def _exact_two_token_distribution(teacher, prompt, temperature):
    """p(x1) and the marginal p(x2) of teacher sampling at `temperature`, by enumeration."""
    with torch.no_grad():
        l1 = teacher(torch.tensor([prompt])).logits[0, -1, :V]
        p1 = torch.softmax(l1.double() / temperature, -1)
        seqs = torch.tensor([prompt + [x] for x in range(V)])
        l2 = teacher(seqs).logits[:, -1, :V]
        p2_given = torch.softmax(l2.double() / temperature, -1)
    return p1, p1 @ p2_given


@pytest.mark.parametrize("gamma", [3, "auto"])
def test_sampled_speculative_output_follows_the_teacher_distribution(monkeypatch, gamma):
    """gamma auto: with a forced schedule that alternates drafting and teacher-only rounds."""
    import itertools

    from skd.core import sampling

    schedule = itertools.cycle([True, False])
    monkeypatch.setattr(sampling, "drafting_pays", lambda *a: next(schedule))
    Vs = 8
    teacher = tiny_model("llama", Vs, seed=11, dtype=torch.float64, hidden=16, layers=1)
    student = tiny_model("llama", Vs, seed=12, dtype=torch.float64, hidden=16, layers=1)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(3.0)
        student.lm_head.weight.mul_(3.0)
    global V
    V_saved, V = V, Vs
    try:
        prompt, T, N = [1, 6, 7], 1.0, 6000
        p1, p2 = _exact_two_token_distribution(teacher, prompt, T)
        gen = torch.Generator().manual_seed(0)
        toks, stats = speculative_generate(teacher, student, [prompt] * N, gamma=gamma, max_new_tokens=2,
                                           temperature=T, generator=gen, eos_token_id=NO_EOS, vocab_size=Vs)
        x = torch.tensor(toks)
        assert 0.05 < stats.acceptance_rate < 0.95  # both the accept and the residual paths are exercised
        assert (stats.teacher_only_rounds > 0) == (gamma == "auto")
        crit = {4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}  # chi-square 0.999 quantiles
        for pos, probs in ((0, p1), (1, p2)):
            counts = torch.bincount(x[:, pos], minlength=Vs).double()
            stat, df = chi_square(counts, probs, N)
            assert stat < crit[df], f"position {pos}: chi2 {stat:.1f} with {df} dof"
        # Power: the student's own first-token distribution is rejected by the same test.
        with torch.no_grad():
            q1 = torch.softmax(student(torch.tensor([prompt])).logits[0, -1].double() / T, -1)
        assert (q1 - p1).abs().sum() > 0.1
        draws = torch.multinomial(q1, N, replacement=True, generator=torch.Generator().manual_seed(1))
        stat, df = chi_square(torch.bincount(draws, minlength=Vs).double(), p1, N)
        assert stat > crit[df]
    finally:
        V = V_saved
