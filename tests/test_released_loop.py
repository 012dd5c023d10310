"""The released code's per-prompt procedure (skd.benchmarks.released_loop), the baseline of
`skd bench sampling`: it must be a real SKD sampler, or the bench's ratio would mean nothing.

With greedy settings it writes the same tokens as skd.core.sampling.sample, for K = 0 (all
teacher), a mixed K and K = V (all student), with and without the bonus token, with EOS and with
stop strings; in sampling mode it keeps the same statistics (counts add up) and is reproducible.
"""
import json

import pytest
import torch
from click.testing import CliRunner

from skd.benchmarks.released_loop import released_loop_sample
from skd.cli.main import main
from skd.core.presets import tiny_model
from skd.core.sampling import SampleConfig, sample


@pytest.fixture(scope="module")
def setup():
    from skd.core.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    V = len(tok)
    teacher = tiny_model("llama", 128, seed=3, dtype=torch.float64, hidden=32, layers=2)  # padded logits
    student = tiny_model("llama", V, seed=4, dtype=torch.float64, hidden=16, layers=1)
    prompts = [tok("Q: 1+2=")["input_ids"], tok("Q: 3")["input_ids"], tok("Q: 12*7-5=")["input_ids"]]
    return teacher, student, tok, V, prompts


def _greedy(**kw):
    return SampleConfig(mode="skd", student_temperature=0, teacher_temperature=0, **kw)


@pytest.mark.parametrize("k,keep_bonus,gamma,semantics", [(0, False, 3, "paper"), (4, False, 3, "paper"),
                                                          (4, True, 2, "paper"), (200, False, 5, "paper"),
                                                          (4, False, 3, "code")])
def test_greedy_equals_the_batched_sampler(setup, k, keep_bonus, gamma, semantics):
    teacher, student, tok, V, prompts = setup
    cfg = _greedy(k=k, gamma=gamma, keep_bonus=keep_bonus, max_new_tokens=23, semantics=semantics)
    ours = sample(teacher, student, prompts, cfg, tokenizer=tok, vocab_size=V, eos_token_id=-1)
    theirs, st = released_loop_sample(teacher, student, prompts, cfg, tokenizer=tok, vocab_size=V, eos_token_id=-1)
    assert theirs == ours.responses()
    assert all(len(r) == 23 for r in theirs)
    assert (st["accepted"], st["proposed"], st["replaced"], st["generated"]) == \
        (ours.accepted, ours.proposed, ours.replaced, ours.generated)
    assert st["teacher_forwards"] == st["student_generate_calls"] == st["rounds"]


def test_greedy_equals_the_batched_sampler_with_eos_and_stop_strings(setup):
    teacher, student, tok, V, prompts = setup
    free = sample(teacher, student, prompts, _greedy(k=4, gamma=3, max_new_tokens=30), tokenizer=tok,
                  vocab_size=V, eos_token_id=-1).responses()
    # EOS: a token row 0 writes but row 1 does not (early on); stop string: two characters of row 1
    eos = next(t for t in free[0][5:] if t not in free[1][:13])
    stop = tok.decode(free[1][10:12])
    cfg = _greedy(k=4, gamma=3, max_new_tokens=30, stop_strings=(stop,))
    ours = sample(teacher, student, prompts, cfg, tokenizer=tok, vocab_size=V, eos_token_id=eos).responses()
    theirs, _ = released_loop_sample(teacher, student, prompts, cfg, tokenizer=tok, vocab_size=V, eos_token_id=eos)
    assert theirs == ours
    assert theirs[0][-1] == eos and len(theirs[0]) < 30
    assert stop in tok.decode(theirs[1]) and len(theirs[1]) < 30


def test_sampling_mode_counts_add_up_and_repeat(setup):
    teacher, student, tok, V, prompts = setup
    cfg = SampleConfig(mode="skd", k=6, gamma=4, max_new_tokens=20, student_temperature=1.0, student_top_p=1.0,
                       teacher_temperature=1.0, teacher_top_p=1.0)
    a, st = released_loop_sample(teacher, student, prompts, cfg, tokenizer=tok, vocab_size=V, eos_token_id=-1, seed=7)
    b, _ = released_loop_sample(teacher, student, prompts, cfg, tokenizer=tok, vocab_size=V, eos_token_id=-1, seed=7)
    c, _ = released_loop_sample(teacher, student, prompts, cfg, tokenizer=tok, vocab_size=V, eos_token_id=-1, seed=8)
    assert a == b and a != c
    assert st["generated"] == sum(map(len, a)) == 60
    assert st["generated"] == st["accepted"] + st["replaced"]   # no bonus tokens by default
    assert 0 < st["accepted"] < st["proposed"]


def test_bench_sampling_on_tiny_models(tmp_path):
    out = tmp_path / "s.json"
    r = CliRunner().invoke(main, ["bench", "sampling", "--prompts", "3", "--batch-size", "3", "--max-new-tokens", "8",
                                  "--repeats", "1", "--output", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"skd_batched", "released_loop", "skd_batch1", "student_only", "skd_batched_auto"}
    assert res["results"]["released_loop"]["batch_size"] == 1
    for x in res["results"].values():
        assert x["tokens"] > 0 and x["tokens_per_s"] > 0
    for name in ("skd_batched", "released_loop", "skd_batch1", "skd_batched_auto"):
        assert 0 <= res["results"][name]["acceptance_rate"] <= 1
    assert res["results"]["student_only"]["acceptance_rate"] is None
    assert set(res["ratios"]) == {"skd_batched_over_released_loop", "skd_batched_over_batch1",
                                  "skd_batched_over_student_only", "skd_batched_auto_over_released_loop"}
    assert "skd_batched_over_released_loop" in r.output
