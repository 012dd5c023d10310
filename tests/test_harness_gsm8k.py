"""GSM8K's three scores side by side: lm-evaluation-harness's strict-match and flexible-extract
(core/harness_gsm8k.py) and skd's own accuracy under its exact default and the paper's lenient grader.

The references are hand-made GSM8K-style solutions (worked steps with <<calculator>> notes, a last
line "#### N"); the real test set is read from ../shared/data when it is there.
"""
import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from skd.core import harness_gsm8k as harness
from skd.core.errors import SkdError
from skd.core.tasks import get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_TEST = DATA / "gsm8k" / "test.jsonl"


def _solution(answer: str) -> str:
    """A GSM8K-style worked solution ending in '#### answer' (the format of the dataset's answer field)."""
    return (f"Tom buys 3 boxes of 7 pens, so 3 * 7 = <<3*7=21>>21 pens.\n"
            f"He gives 21 - 5 = <<21-5=16>>16 away.\n#### {answer}")


# output, reference answer -> strict-match, flexible-extract, skd exact (default), skd paper (lenient)
TABLE = [
    ("#### 42", "42", 1, 1, 1, 1),
    ("#### 42.", "42", 1, 1, 1, 1),                      # the harness drops one trailing "."
    ("#### $42", "42", 0, 1, 1, 1),                      # strict needs a digit right after "#### "
    ("#### 4,200", "4200", 1, 1, 1, 1),                  # commas are dropped by both sides
    ("#### 4,200", "4,200", 1, 1, 1, 1),
    ("#### 5.00", "5", 0, 0, 1, 1),                      # the harness compares strings
    ("The answer is 42", "42", 0, 1, 0, 0),              # no "####": only the last-number rule reads it
    ("#### 42 apples", "42", 1, 1, 1, 1),
    ("#### 42 apples, then 7 pears", "42", 1, 0, 1, 1),  # trailing text: flexible takes the last number
    ("6 * 7 = 42.\n#### 42\nQ: a new question with 13 cows", "42", 1, 0, 1, 1),
    ("#### 4200", "42", 0, 0, 0, 1),                     # the paper's grader: 42 * 100 counts
    ("#### 0.42", "42", 0, 0, 0, 1),                     # ... and 42 / 100
    ("#### 41.996", "42", 0, 0, 0, 1),                   # ... and a relative 1e-4
    ("41.996", "42", 0, 0, 0, 0),                        # (skd reads only the number after "####")
    ("#### -5", "-5", 1, 1, 1, 1),
    ("#### \u22125", "-5", 0, 0, 1, 1),                  # U+2212 MINUS SIGN: skd reads -5, the harness no number
    ("#### \u22125", "5", 0, 1, 0, 0),                   # ... and its last-number rule reads 5
    ("#### \u20135", "-5", 0, 0, 1, 1),                  # an en dash as minus
    ("#### 18\n#### 19", "18", 1, 0, 0, 0),              # strict: the first marker; skd: the last
    ("no number at all", "42", 0, 0, 0, 0),
]


@pytest.mark.parametrize("output,answer,strict,flexible,exact,paper", TABLE)
def test_each_output_under_the_four_rules(output, answer, strict, flexible, exact, paper):
    task = get_task("gsm8k")
    reference = _solution(answer)
    got = (harness.strict_match(output, reference), harness.flexible_match(output, reference),
           task.correct(output, reference), task.correct(output, reference, "paper"))
    assert tuple(map(int, got)) == (strict, flexible, exact, paper)
    # the final answer alone scores the same as the solution it was read from
    assert task.correct(output, task.final_answer(reference)) == got[2]


def test_score_reports_the_harness_scores_beside_accuracy():
    task = get_task("gsm8k")
    outputs = [o for o, *_ in TABLE]
    references = [_solution(a) for _, a, *_ in TABLE]
    n = len(TABLE)
    expected = {key: sum(row[i] for row in TABLE) / n
                for key, i in (("strict_match", 2), ("flexible_extract", 3), ("accuracy", 4))}
    scores = task.score(outputs, references)
    assert {k: scores[k] for k in expected} == pytest.approx(expected)
    assert scores["n"] == n and task.grader == "exact"
    assert task.score(outputs, references, grader="paper")["accuracy"] == pytest.approx(sum(r[5] for r in TABLE) / n)
    # the arith tasks share the format but not the harness scores
    assert "strict_match" not in get_task("arith").score(outputs, references)


def test_the_harness_target_is_the_answer_after_the_last_marker():
    assert harness.harness_text(_solution("1,000")) == "1000"
    assert harness.harness_text("It costs $5.\n#### $5.") == "5"
    assert harness.harness_text("42") == "42"                     # a final answer alone stays as it is
    assert harness.strict_extract("#### 3 and #### 4") == "3"
    assert harness.flexible_extract("nothing") == harness.strict_extract("nothing") == harness.INVALID
    with pytest.raises(SkdError, match="2 outputs but 1 references"):
        harness.harness_scores(["a", "b"], ["1"])


def test_an_unknown_grader_is_refused_in_one_line():
    with pytest.raises(SkdError, match="unknown grader 'loose'"):
        get_task("gsm8k").correct("#### 1", "1", "loose")


def test_the_paper_grader_stays_the_default_of_the_held_out_math_sets():
    for name in ("gsm-plus", "svamp", "asdiv", "math", "ultrainteract-math"):
        assert get_task(name).grader == "paper", name
    svamp = get_task("svamp")
    assert svamp.correct("so \\boxed{0.51}", "51") and not svamp.correct("so \\boxed{0.51}", "51", "exact")
    assert svamp.correct("\\boxed{\u22123}", "-3") and not svamp.correct("\\boxed{\u22123}", "3")
    assert get_task("math").correct("\\boxed{\\dfrac{1}{2}}", "0.5", "exact")   # equal forms stay equal


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval not installed")
def test_the_rules_agree_with_lm_eval_itself():
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    references = [_solution(a) for _, a, *_ in TABLE]
    outputs = [o for o, *_ in TABLE]
    ignore = dict(regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"], ignore_case=True, ignore_punctuation=False)
    for name, flt, ours in (("strict", RegexFilter(r"#### (\-?[0-9\.\,]+)"), harness.strict_match),
                            ("flexible", RegexFilter(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1),
                             harness.flexible_match)):
        picked = [r[0] for r in flt.apply([[o] for o in outputs], [{}] * len(outputs))]
        for o, p, ref in zip(outputs, picked, references):
            theirs = exact_match_hf_evaluate([p], [ref], **ignore)["exact_match"]
            assert bool(theirs) == ours(o, ref), (name, o)


def test_skd_eval_writes_all_three_scores(tmp_path):
    from skd.cli.main import main

    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": _solution(a)}) + "\n"
                            for q, a in (("How many pens?", "16"), ("How many cows?", "-3"))))
    r = CliRunner().invoke(main, ["eval", "--task", "gsm8k", "--data", str(data), "--model", "tiny-student",
                                  "--max-new-tokens", "4", "--grader", "paper", "--output-dir", str(tmp_path / "e")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert {"accuracy", "strict_match", "flexible_extract"} <= set(metrics) and metrics["grader"] == "paper"
    assert "strict_match" in r.output and "flexible_extract" in r.output
    preds = [json.loads(x) for x in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    assert {"strict_match", "flexible_extract"} <= set(preds[0])
    r = CliRunner().invoke(main, ["eval", "--task", "dialogsum", "--model", "tiny-student", "--grader", "exact",
                                  "--output-dir", str(tmp_path / "d")])
    assert r.exit_code != 0 and "--grader compares final answers" in r.output


@pytest.mark.skipif(not REAL_TEST.is_file(), reason="no shared GSM8K data")
def test_real_gsm8k_references_parse_and_score_against_themselves():
    task = get_task("gsm8k")
    examples = task.load("test", data_path=REAL_TEST)
    assert len(examples) == 1319
    for example in examples:
        target = harness.harness_text(example.response)
        assert target.lstrip("-").isdigit(), example.response[-40:]   # every target is an integer
        assert target == example.reference                           # the same answer skd reads
        assert task.score_reference(example) == example.response
    copies = [e.response for e in examples]                          # the reference copied verbatim
    for grader in ("exact", "paper"):
        scores = task.score(copies, [task.score_reference(e) for e in examples], grader=grader)
        assert (scores["accuracy"], scores["strict_match"], scores["flexible_extract"]) == (1.0, 1.0, 1.0)
