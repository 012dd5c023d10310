"""Tests for core/graded.py: arith partial credit on hand-made outputs (right, one wrong digit, a wrong
carry, unchained lines, garbage), on every preset's reference answers and on seeded one-digit
mutations of them; teacher_relative on a tiny teacher (greedy continuations agree, log-probability
recomputed by hand, ragged batches equal rows scored one at a time)."""
from __future__ import annotations

import dataclasses
import math
import random

import pytest

from skd.core.arith import PRESETS, generate
from skd.core.graded import arith_graded, arith_partial_credit, teacher_relative

# The "default" preset's worked form: 3 lines of 2 + 1, 3 + 1 and 3 + 1 steps, plus the final: 12.
COLUMNS = ("7*71: 1*7=7+0=7 7*7=49+0=49 =497\n"
           "44+497: 4+7+0=11 4+9+1=14 0+4+1=5 =541\n"
           "541*9: 1*9=9+0=9 4*9=36+0=36 5*9=45+3=48 =4869\n"
           "#### 4869")


def test_a_fully_right_column_answer_scores_one():
    r = arith_partial_credit(COLUMNS)
    assert r == {"score": 1.0, "steps": 12, "steps_right": 12, "lines": 3, "lines_right": 3,
                 "chain_checked": 2, "chained": 2, "chain_share": 1.0, "final_right": True}


def test_one_wrong_column_digit_costs_exactly_one_step():
    # 9 -> 8 in the tens column: that column has the wrong digit (its own sum 4+8+1=13 holds and
    # implies the same carry), the next column and the line's result stay right.
    r = arith_partial_credit(COLUMNS.replace("4+9+1=14", "4+8+1=13"))
    assert (r["steps_right"], r["steps"], r["lines_right"]) == (11, 12, 2)
    assert r["score"] == pytest.approx(11 / 12)
    # A wrong product fact inside a column is one step too.
    r = arith_partial_credit(COLUMNS.replace("4*9=36+0=36", "4*9=35+0=35"))
    assert r["score"] == pytest.approx(11 / 12)


def test_a_wrong_carry_is_one_wrong_column_and_errors_stay_local():
    # Carry 0 instead of 1; its own sum holds, and the next column's carry in is the one that
    # column's written inputs (4, 9, 0) imply, so it is right.
    r = arith_partial_credit(COLUMNS.replace("4+9+1=14", "4+9+0=13"))
    assert (r["steps_right"], r["steps"]) == (11, 12)
    # Carried through to a wrong result (531): 2 wrong steps in that line; the next line works on
    # 531 rightly and chains from it, and the final copies its result.
    wrong = ("7*71: 1*7=7+0=7 7*7=49+0=49 =497\n"
             "44+497: 4+7+0=11 4+9+0=13 0+4+1=5 =531\n"
             "531*9: 1*9=9+0=9 3*9=27+0=27 5*9=45+2=47 =4779\n"
             "#### 4779")
    r = arith_partial_credit(wrong)
    assert (r["steps_right"], r["steps"], r["lines_right"]) == (10, 12, 2)
    assert r["chain_share"] == 1.0 and r["final_right"]


def test_borrows_must_be_written_out():
    right = "31-8: 1-8-0=-7+10=3 3-0-1=2 =23\n#### 23"
    assert arith_partial_credit(right)["score"] == 1.0
    assert arith_partial_credit(right.replace("=-7+10=3", "=-7"))["steps_right"] == 3  # of 4
    assert arith_partial_credit(right.replace("3-0-1=2", "3-0-0=3"))["steps_right"] == 3  # borrow lost


def test_missing_and_extra_columns_are_wrong_steps():
    missing = arith_partial_credit("44+497: 4+7+0=11 4+9+1=14 =541\n#### 541")
    assert (missing["steps_right"], missing["steps"]) == (4, 5)
    extra = arith_partial_credit("31-8: 1-8-0=-7+10=3 3-0-1=2 0-0-0=0 =23\n#### 23")
    assert (extra["steps_right"], extra["steps"]) == (4, 5)


def test_a_right_line_that_does_not_chain_keeps_its_steps_but_lowers_the_chain_share():
    r = arith_partial_credit("4*12=48\n37+49=86\n#### 86")  # 37+49: right, but not from 48
    assert r["score"] == 1.0 and r["lines_right"] == 2
    assert (r["chain_checked"], r["chained"], r["chain_share"]) == (1, 0, 0.0)
    # The same with column work.
    r = arith_partial_credit(COLUMNS.replace("541*9: 1*9=9+0=9 4*9=36+0=36 5*9=45+3=48 =4869",
                                             "542*9: 2*9=18+0=18 4*9=36+1=37 5*9=45+3=48 =4878")
                             .replace("#### 4869", "#### 4878"))
    assert r["score"] == 1.0 and r["chain_share"] == 0.5


def test_side_products_chain_through_the_next_line():
    r = arith_partial_credit("26-11=15\n3*17=51\n15+51=66\n#### 66")
    assert r["chain_share"] == 1.0
    r = arith_partial_credit("26-11=15\n3*17=51\n16+51=67\n#### 67")  # 16 is not line 1's result
    assert r["score"] == 1.0 and r["chained"] == 1  # line 3 still uses line 2's 51


def test_plain_and_annotated_lines():
    assert arith_partial_credit("4*12=48\n37+48=85\n85-15=70\n#### 70")["score"] == 1.0
    assert arith_partial_credit("4*12=48\n37+48=86\n86-15=71\n#### 71")["steps_right"] == 3  # of 4
    assert arith_partial_credit("456/4=114\n#### 114")["score"] == 1.0
    assert arith_partial_credit("457/4=114\n#### 114")["steps_right"] == 1  # no exact quotient
    note = "4*12=<<4*12=48>>48\n37+48=<<37+48=85>>85\n#### 85"  # 2 + 2 + 1 steps
    assert arith_partial_credit(note)["score"] == 1.0
    assert arith_partial_credit(note.replace("=85>>", "=84>>"))["steps_right"] == 4
    assert arith_partial_credit(note.replace("<<37+48", "<<37+47"))["steps_right"] == 4  # not a copy


def test_the_final_answer_is_a_step():
    assert arith_partial_credit("4*12=48\n37+48=85\n#### 84")["steps_right"] == 2  # of 3
    no_final = arith_partial_credit("4*12=48\n37+48=85")
    assert (no_final["steps_right"], no_final["steps"], no_final["final_right"]) == (2, 3, False)
    # Leading spaces (the text after "A:") and text after the final answer are not held against it.
    assert arith_partial_credit(" 4*12=48\n37+48=85\n#### 85\nQ: Ann has")["score"] == 1.0


@pytest.mark.parametrize("text", ["", "\n\n", "hello world", "Ann has 37 pens.\nHow many?",
                                  "#### 85", "12+=\n#### ", "37+48: banana =\n#### x"])
def test_garbage_and_empty_outputs_score_zero(text):
    r = arith_partial_credit(text)
    assert r["score"] == 0.0 and r["steps_right"] == 0 and not r["final_right"]


def _variants():
    """Every preset as is, with columns on and off, and with calculator annotations."""
    for name, spec in PRESETS.items():
        seen = []
        for change in ({}, {"columns": True, "annotate": False}, {"columns": False},
                       {"columns": False, "annotate": True}):
            variant = dataclasses.replace(spec, **change)
            if variant not in seen:
                seen.append(variant)
                yield pytest.param(variant, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in change.items()) or 'preset'}")


@pytest.mark.parametrize("spec", list(_variants()))
def test_reference_answers_score_one_and_one_digit_mutations_do_not(spec):
    answers = [p["answer"] for p in generate(spec, 200, seed=5)]
    for answer in answers:
        r = arith_partial_credit(answer)
        assert r["score"] == 1.0, answer
        assert r["lines_right"] == r["lines"] and r["final_right"], answer
        assert r["chain_share"] in (1.0, None), answer
    graded = arith_graded(answers)
    assert graded["partial_credit"] == graded["step_accuracy"] == graded["final_consistent"] == 1.0
    rng = random.Random(f"mutate|{spec}")
    for answer in answers:
        places = [i for i, c in enumerate(answer) if c.isdigit()]
        i = rng.choice(places)
        digit = rng.choice([d for d in "0123456789" if d != answer[i]])
        mutated = answer[:i] + digit + answer[i + 1:]
        assert arith_partial_credit(mutated)["score"] < 1.0, (answer, mutated)


@pytest.mark.parametrize("spec", [PRESETS["default"], dataclasses.replace(PRESETS["hard"], columns=True),
                                  dataclasses.replace(PRESETS["hard"], annotate=True)],
                         ids=["default", "hard-columns", "hard-annotate"])
def test_every_single_digit_change_lowers_the_score(spec):
    for answer in (p["answer"] for p in generate(spec, 5, seed=9)):
        for i, c in enumerate(answer):
            if c.isdigit():
                for d in "0123456789".replace(c, ""):
                    mutated = answer[:i] + d + answer[i + 1:]
                    assert arith_partial_credit(mutated)["score"] < 1.0, (answer, mutated)


def test_corpus_scores():
    right = "4*12=48\n37+48=85\n#### 85"
    half = "4*12=49\n37+49=86\n#### 85"  # 1 of 3 steps right (37+49=86), chained, final wrong
    g = arith_graded([right, half, ""])
    assert g["partial_credit"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert g["step_accuracy"] == pytest.approx(4 / 7)
    assert g["line_accuracy"] == pytest.approx(3 / 4)
    assert g["chain_share"] == 1.0 and g["final_consistent"] == pytest.approx(1 / 3)
    assert g["outputs"] == 3
    assert arith_graded(["37+48=85\n#### 85"])["chain_share"] is None  # nothing to chain
    with pytest.raises(ValueError):
        arith_graded([])


# ---- teacher_relative --------------------------------------------------------------------------

def _greedy(model, prompt: list[int], n: int, vocab: int) -> list[int]:
    """The model's greedy continuation, one full forward per token (no cache, no padding)."""
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1, :vocab]
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def _prompts(tokenizer) -> list[list[int]]:
    texts = ["Q: Ann has 37 pens.", "Q: 4*12", "A:", "Q: Ben finds 9 more. How many now?"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.mark.usefixtures("one_thread")
def test_greedy_continuations_agree_and_the_logprob_is_the_hand_computed_one(tiny_pair64):
    import torch

    teacher, tokenizer, vocab = tiny_pair64.teacher, tiny_pair64.tokenizer, tiny_pair64.vocab_size
    prompts = _prompts(tokenizer)
    responses = [_greedy(teacher, p, n, vocab) for p, n in zip(prompts, (7, 3, 12, 1))]
    r = teacher_relative(teacher, prompts, responses, pad_id=tokenizer.pad_token_id,
                         batch_size=3, vocab_size=vocab)
    assert r["teacher_top1_agreement"] == 1.0 and r["tokens"] == 7 + 3 + 12 + 1
    # One row by hand: log softmax over the tokenizer's columns at each response position.
    p, resp = prompts[0], responses[0]
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor([p + resp])).logits[0, :, :vocab]
    by_hand = sum(float(logits[len(p) - 1 + t, tok] - torch.logsumexp(logits[len(p) - 1 + t], 0))
                  for t, tok in enumerate(resp)) / len(resp)
    one = teacher_relative(teacher, [p], [resp], pad_id=tokenizer.pad_token_id, vocab_size=vocab)
    assert one["teacher_logprob_per_token"] == pytest.approx(by_hand, abs=1e-10)
    assert one["teacher_logprob_per_token"] < 0


@pytest.mark.usefixtures("one_thread")
def test_ragged_batches_equal_rows_scored_one_at_a_time(tiny_pair64):
    teacher, tokenizer, vocab = tiny_pair64.teacher, tiny_pair64.tokenizer, tiny_pair64.vocab_size
    prompts = _prompts(tokenizer)
    rng = random.Random(0)
    eos = tokenizer.eos_token_id
    # Arbitrary (not greedy) responses of ragged lengths, some ending in EOS, one empty.
    responses = [[rng.randrange(3, vocab) for _ in range(n)] + tail
                 for n, tail in ((5, [eos]), (0, []), (11, []), (2, [eos]))]
    pad = tokenizer.pad_token_id
    batched = teacher_relative(teacher, prompts, responses, pad_id=pad, batch_size=4, vocab_size=vocab)
    singles = [teacher_relative(teacher, [p], [r], pad_id=pad, vocab_size=vocab)
               for p, r in zip(prompts, responses)]
    n = sum(s["tokens"] for s in singles)
    assert batched["tokens"] == n == 6 + 0 + 11 + 3  # EOS counted, the empty row adds nothing
    for key in ("teacher_logprob_per_token", "teacher_top1_agreement"):
        expected = sum(s[key] * s["tokens"] for s in singles if s["tokens"]) / n
        assert batched[key] == pytest.approx(expected, abs=1e-10), key
    assert singles[1] == {"teacher_logprob_per_token": None, "teacher_top1_agreement": None,
                          "tokens": 0}
    # Batch size does not matter either, nor the pad id (padding is masked and never scored).
    again = teacher_relative(teacher, prompts, responses, pad_id=7, batch_size=1, vocab_size=vocab)
    assert again["teacher_logprob_per_token"] == pytest.approx(batched["teacher_logprob_per_token"], abs=1e-10)


@pytest.mark.usefixtures("one_thread")
def test_the_vocab_cut_and_float32_teachers(tiny_pair):
    teacher, tokenizer, vocab = tiny_pair.teacher, tiny_pair.tokenizer, tiny_pair.vocab_size
    prompts = _prompts(tokenizer)
    responses = [_greedy(teacher, p, 4, vocab) for p in prompts]
    cut = teacher_relative(teacher, prompts, responses, pad_id=tokenizer.pad_token_id, vocab_size=vocab)
    assert cut["teacher_top1_agreement"] == 1.0
    # Without the cut the teacher's 25 padding columns take part in the softmax: lower log-probs.
    full = teacher_relative(teacher, prompts, responses, pad_id=tokenizer.pad_token_id)
    assert full["teacher_logprob_per_token"] < cut["teacher_logprob_per_token"]
    assert math.isfinite(full["teacher_logprob_per_token"])
    with pytest.raises(ValueError):
        teacher_relative(teacher, prompts, responses, pad_id=0, vocab_size=200)
    with pytest.raises(ValueError):
        teacher_relative(teacher, [[]], [[5]], pad_id=0)
    with pytest.raises(ValueError):
        teacher_relative(teacher, prompts, responses[:1], pad_id=0)
