"""Training batches hold the sequences of the source each method names (CONTRACT.md §4).

Supervised batches are the ground truth; on-policy batches are the student's own samples, token
for token what sample() draws from the student alone with the same generator; per-row mixes put
each source's rows back in place.
"""
import torch

from skd.core.batches import build_training_batch
from skd.core.config import SampleConfig
from skd.core.presets import tiny_model
from skd.core.sampling import PROV_PROMPT, PROV_STUDENT, PROV_TEACHER, sample
from helpers import addition_examples

V = 103  # the char tokenizer's vocabulary
SCFG = SampleConfig(max_new_tokens=8, gamma=3, k=5)


def _pair():
    teacher = tiny_model("llama", V, seed=1, hidden=32, layers=2)
    student = tiny_model("llama", V, seed=2, hidden=16, layers=1)
    teacher.requires_grad_(False)
    return teacher, student


def _gens(seed: int) -> dict:
    return {"student": torch.Generator().manual_seed(seed), "teacher": torch.Generator().manual_seed(seed + 1),
            "method": torch.Generator().manual_seed(seed + 2)}


def _batch(method, batch, teacher, student, tok, seed=1, sources=None):
    return build_training_batch(method, batch, step=0, total_steps=10, teacher=teacher, student=student, scfg=SCFG,
                                gens=_gens(seed), tokenizer=tok, pad_id=0, vocab_size=V, gkd_lambda=0.5,
                                sources=sources)


def _student_alone(student, prompts, tok, seed=1):
    """What the student samples on its own (no teacher at all) with the student generator of _gens(seed)."""
    cfg = SampleConfig(**{**SCFG.__dict__, "mode": "student"})
    return sample(None, student, prompts, cfg, student_generator=torch.Generator().manual_seed(seed),
                  teacher_generator=torch.Generator().manual_seed(seed + 1), tokenizer=tok, pad_token_id=0,
                  vocab_size=V)


def _prompts(s):
    return [s.tokens[b, : int(s.prompt_lengths[b])].tolist() for b in range(s.tokens.shape[0])]


def _responses(s):
    return [s.tokens[b][s.response_mask[b]].tolist() for b in range(s.tokens.shape[0])]


def test_supervised_batch_is_the_tokenized_ground_truth(char_tokenizer):
    teacher, student = _pair()
    batch = addition_examples(char_tokenizer, 6)
    s = _batch("supervised", batch, teacher, student, char_tokenizer)
    assert _prompts(s) == [ex.prompt_ids for ex in batch]
    assert _responses(s) == [ex.response_ids[: SCFG.max_new_tokens] for ex in batch]
    assert (s.provenance[s.response_mask] == PROV_TEACHER).all()     # not sampled
    assert s.proposed == s.accepted == s.replaced == 0


def test_on_policy_batch_is_the_students_own_samples_not_the_ground_truth(char_tokenizer):
    teacher, student = _pair()
    batch = addition_examples(char_tokenizer, 6)
    s = _batch("on-policy", batch, teacher, student, char_tokenizer)
    ref = _student_alone(student, [ex.prompt_ids for ex in batch], char_tokenizer)
    assert torch.equal(s.tokens, ref.tokens) and torch.equal(s.response_mask, ref.response_mask)
    assert _prompts(s) == [ex.prompt_ids for ex in batch]
    assert (s.provenance[s.response_mask] == PROV_STUDENT).all()
    gt = [ex.response_ids[: SCFG.max_new_tokens] for ex in batch]
    assert all(r != g for r, g in zip(_responses(s), gt))           # an untrained student does not know the sums
    # the teacher plays no part, and another student generator draws other sequences (the match is not vacuous)
    other_teacher = tiny_model("llama", V, seed=7, hidden=32, layers=2)
    assert torch.equal(_batch("on-policy", batch, other_teacher, student, char_tokenizer).tokens, s.tokens)
    assert _responses(_batch("on-policy", batch, teacher, student, char_tokenizer, seed=5)) != _responses(s)


def test_per_row_mix_puts_ground_truth_and_student_rows_in_place(char_tokenizer):
    teacher, student = _pair()
    batch = addition_examples(char_tokenizer, 6)
    sources = ["gt", "student", "student", "gt", "student", "gt"]
    s = _batch("imitkd", batch, teacher, student, char_tokenizer, sources=sources)
    rows = [i for i, u in enumerate(sources) if u == "student"]
    ref = _responses(_student_alone(student, [batch[i].prompt_ids for i in rows], char_tokenizer))
    got = _responses(s)
    assert _prompts(s) == [ex.prompt_ids for ex in batch]
    for i, u in enumerate(sources):
        want = ref[rows.index(i)] if u == "student" else batch[i].response_ids[: SCFG.max_new_tokens]
        assert got[i] == want, i
        prov = s.provenance[i][s.response_mask[i]]
        assert (prov == (PROV_STUDENT if u == "student" else PROV_TEACHER)).all(), i
    assert (s.provenance[s.attention_mask.bool() & ~s.response_mask] == PROV_PROMPT).all()
