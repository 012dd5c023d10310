"""Graded measures where users see them: arith's partial credit and the manyway tasks in Task.score,
and `evaluate_model(..., teacher=)` reporting how a teacher judges a model's own greedy outputs."""
import pytest

from skd.core.tasks import get_task


def test_arith_score_reports_partial_credit_beside_exact_match():
    task = get_task("arith")
    examples = task.load("test", limit=20)
    answers = [e.response for e in examples]
    full = task.score(answers, [e.reference for e in examples])
    assert full["accuracy"] == 1.0 and full["partial_credit"] == 1.0
    # One wrong digit in the first worked line: the final number may still be right or not, but
    # the partial credit drops below 1 while every other answer keeps full marks.
    first = answers[0].split("\n")
    digit = next(i for i, ch in enumerate(first[0]) if ch.isdigit() and i > first[0].index(":"))
    first[0] = first[0][:digit] + str((int(first[0][digit]) + 1) % 10) + first[0][digit + 1:]
    broken = ["\n".join(first)] + answers[1:]
    scored = task.score(broken, [e.reference for e in examples])
    assert 1 - 1 / 20 <= scored["partial_credit"] < 1.0
    assert task.score([""] * 3, [e.reference for e in examples[:3]])["partial_credit"] == 0.0


def test_manyway_task_counts_any_valid_order_and_refuses_invalid_ones():
    task = get_task("manyway")
    examples = task.load("test", limit=12)
    problems = [e.reference for e in examples]          # the reference is the problem itself
    assert all(e.reference == e.prompt_text for e in examples)
    scores = task.score([e.response for e in examples], problems)
    assert scores["valid"] == 1.0 and scores["graded"] == 1.0 and scores["accuracy"] == 1.0
    assert all(task.correct(e.response, e.reference) for e in examples)
    # Validity is checked against the problem itself: a valid solution of another problem is not one.
    shifted = [e.response for e in examples[1:]] + [examples[0].response]
    assert task.score(shifted, problems)["valid"] == 0.0
    garbage = task.score(["#### 1"] * len(problems), problems)
    assert garbage["valid"] == 0.0 and garbage["accuracy"] < 1.0
    lines = examples[0].response.split("\n")
    twice = "\n".join([lines[0]] + lines)                 # a quantity used twice: not a solution
    assert task.correct(twice, problems[0]) is False


def test_manyway_tasks_are_registered_with_their_own_stamp():
    for name in ("manyway", "manyway-easy", "manyway-hard", "manyway-wide"):
        task = get_task(name)
        assert task.metric == "valid" and '"manyway"' in task.fingerprint()
    assert '"manyway"' not in get_task("arith").fingerprint()


def test_teacher_relative_measures_in_evaluation(tiny_pair):
    from skd.core.evaluation import evaluate_model

    teacher, student, tok = tiny_pair
    task = get_task("arith")
    examples = task.load("test", limit=4)
    m_self, _ = evaluate_model(student, tok, task, examples, batch_size=4, max_new_tokens=12, teacher=student)
    assert m_self["teacher_top1_agreement"] == pytest.approx(1.0)      # greedy outputs = its own argmax
    m, _ = evaluate_model(student, tok, task, examples, batch_size=4, max_new_tokens=12, teacher=teacher)
    assert 0.0 <= m["teacher_top1_agreement"] <= 1.0 and m["teacher_logprob_per_token"] < 0.0
    plain, _ = evaluate_model(student, tok, task, examples, batch_size=4, max_new_tokens=12)
    assert "teacher_top1_agreement" not in plain
    assert {k: v for k, v in m.items() if not k.startswith(("teacher_", "wall", "tokens_per"))} == \
        {k: v for k, v in plain.items() if not k.startswith(("wall", "tokens_per"))}
