"""The draft diagnostics of `skd bench peers`' draft section: the teacher-forced match rate (a draft
identical to the teacher predicts every one of its greedy tokens; an unrelated one far fewer) and the
break-even acceptance (the boundary where rules.drafting_pays turns true for the pair's cost ratio)."""
import pytest
import torch

from skd.benchmarks.peer_decoding import run
from skd.core.models import weight_bytes
from skd.core.rules import drafting_pays

PROMPTS = [[5, 9, 12, 7], [8, 3, 4]]


class _Tok:
    """What peer_decoding needs of a tokenizer: its length and pad id."""
    pad_token_id = 0

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_draft_diagnostics(sharp_pair64):
    teacher, student = sharp_pair64
    V = teacher.config.vocab_size
    res = run(teacher, {"self": teacher, "student": student}, _Tok(V), PROMPTS, batch_size=2, max_new_tokens=12,
              gamma="auto", repeats=1)
    info = res["drafts"]
    assert info["self"]["teacher_forced_match"] == 1.0
    assert info["student"]["teacher_forced_match"] < 0.9
    assert info["self"]["cost_ratio"] == pytest.approx(1.0)
    ratio = weight_bytes(teacher) / weight_bytes(student)
    a = info["student"]["break_even_acceptance"]
    assert info["student"]["cost_ratio"] == pytest.approx(ratio)
    assert drafting_pays(a, ratio, 8, True) and not drafting_pays(a - 1e-3, ratio, 8, True)
    assert res["results"]["skd_spec_b1/self"]["outputs_match_teacher"]


def test_measured_prices_are_taken_per_draft_and_batch_size_and_keep_the_outputs(sharp_pair64, monkeypatch):
    """--draft-prices measure: prices per pass width for each draft at B = 1 and B = N, passed to
    speculative_generate (gamma auto), recorded; outputs still the teacher's greedy outputs."""
    import skd.core.speculative as spec_mod
    from helpers import spy_keyword

    teacher, student = sharp_pair64
    V = teacher.config.vocab_size
    seen = spy_keyword(monkeypatch, spec_mod, "speculative_generate", "teacher_prices")
    res = run(teacher, {"student": student}, _Tok(V), PROMPTS, batch_size=2, max_new_tokens=8, gamma="auto",
              repeats=1, prices="measure")
    recorded = res["drafts"]["student"]["teacher_prices"]
    assert set(recorded) == {"1", "2"}
    for entry in recorded.values():
        assert len(entry["prices"]) == 9 and all(p > 0 for p in entry["prices"])   # widths 1 .. gamma_max + 1
        assert len(entry["forward_ms"]["teacher"]) == 9 and len(entry["forward_ms"]["student"]) == 1
    assert seen and all(isinstance(tp, tuple) and len(tp) == 9 for tp in seen)
    assert {tuple(e["prices"]) for e in recorded.values()} == set(seen)
    assert res["settings"]["prices"] == "measure"
    assert all(row["outputs_match_teacher"] for name, row in res["results"].items() if "spec" in name)
