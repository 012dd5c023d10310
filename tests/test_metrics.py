"""Tests for core/metrics.py: answer extraction on GSM8K / MATH style text, lenient math equality
(never hanging)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from skd.core import metrics
from skd.core.metrics import (MINUS_SIGNS, answers_equal, exact_equal, extract_boxed, extract_gsm8k_answer,
                              math_equal, normalize_number, numbers_equal)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

GSM8K_ANSWER = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
MATH_SOLUTION = (r"We have $\frac{2}{4} = \boxed{\frac{1}{2}}$ after cancelling, "
                 r"since $\sqrt{4}=2$.")


# ---- extraction -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    (GSM8K_ANSWER, "72"),
    ("#### 1\nthen again\n#### 2", "2"),
    ("so\n#### $1,200.50.", "1200.5"),
    ("#### 18 dollars", "18"),
    ("#### -3", "-3"),
    ("#### 5.0", "5"),
    ("#### 40%", "40"),
])
def test_gsm8k_answer_is_the_number_after_the_last_marker(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_gsm8k_answer_missing_unless_fallback():
    assert extract_gsm8k_answer("She has 3 then 4 apples.") is None
    assert extract_gsm8k_answer("She has 3 then 4 apples.", fallback_last_number=True) == "4"
    assert extract_gsm8k_answer("#### \nlater 9") is None
    assert extract_gsm8k_answer("") is None and extract_gsm8k_answer(None) is None


@pytest.mark.parametrize("text, expected", [
    (MATH_SOLUTION, r"\frac{1}{2}"),
    (r"\boxed{1} and finally \boxed{\dfrac{\sqrt{3}}{2}}", r"\dfrac{\sqrt{3}}{2}"),
    (r"\fbox{7}", "7"),
    (r"so \boxed 5$.", "5"),
    (r"\boxed{unclosed {x}", None),
    ("no box here", None),
])
def test_boxed_keeps_nested_braces_and_takes_the_last_box(text, expected):
    assert extract_boxed(text) == expected  # None: no (complete) box


@pytest.mark.parametrize("value, expected", [
    ("1,000", "1000"),
    ("1{,}000", "1000"),
    ("$18", "18"),
    ("18.", "18"),
    ("7.50", "7.5"),
    ("-0.0", "0"),
    ("+007", "7"),
    (51.0, "51"),
    (1e-5, "0.00001"),
    ("1,2", None),
    ("abc", None),
    (True, None),
])
def test_normalize_number_forms(value, expected):
    assert normalize_number(value) == expected  # None: not a number


# ---- equality -----------------------------------------------------------------------------------

def test_numbers_equal_with_tolerance():
    assert numbers_equal("72", 72.0)
    assert numbers_equal("1,000", "1000")
    assert numbers_equal("3.14159", "3.1416", rel_tol=1e-4)
    assert not numbers_equal("3.14", "3.1416", rel_tol=1e-4)
    assert not numbers_equal("0", "0.00001")
    assert not numbers_equal("x", "1")


@pytest.mark.parametrize("prediction, reference", [
    ("0.5", r"\frac{1}{2}"), (r"\dfrac{1}{2}", "1/2"), ("2/4", r"\frac12"),
    (r"\sqrt{8}", r"2\sqrt{2}"), (r"\frac{\pi}{2}", r"\pi/2"), ("$1,000", "1000"),
    ("50%", "50"), ("0.5", "50"),  # percentage forms count, as the paper's grader
    ("(1,2)", "(1, 2)"), ("x = 5", "5"), ("2x+1", "1+2x"), (r"\text{Tuesday}", "tuesday"),
])
def test_math_equal_accepts_equivalent_forms(prediction, reference):
    assert math_equal(prediction, reference)


@pytest.mark.parametrize("prediction, reference", [
    ("3", "4"), (r"\frac{1}{3}", "0.33"), ("[1,2)", "(1,2)"), ("(1,2)", "(1,2,3)"),
    (None, "1"), ("", "1"), (r"\frac{1}{0}", "1"), ("abc", "abd"),
])
def test_math_equal_rejects_different_answers(prediction, reference):
    assert not math_equal(prediction, reference)


def test_percentage_leniency_can_be_switched_off():
    assert math_equal("0.5", "50") and not math_equal("0.5", "50", include_percentage=False)


@pytest.mark.parametrize("minus", ["-", *MINUS_SIGNS])
def test_every_minus_sign_reads_as_one(minus):
    assert normalize_number(f"{minus}5") == "-5"
    assert extract_gsm8k_answer(f"so\n#### {minus}1,200") == "-1200"
    assert extract_gsm8k_answer(f"it fell by {minus}3 degrees", fallback_last_number=True) == "-3"
    assert math_equal(f"{minus}5", "-5") and not math_equal(f"{minus}5", "5")
    assert exact_equal(f"{minus}\\frac{{1}}{{2}}", "-0.5")
    assert normalize_number("\u20145") is None   # an em dash is punctuation, not a sign


@pytest.mark.parametrize("prediction, reference, exact, paper", [
    ("42", "42", True, True), ("5.00", "5", True, True), ("$4,200", "4200", True, True),
    ("4200", "42", False, True), ("0.42", "42", False, True), ("41.996", "42", False, True),
    ("12345678901234567891", "12345678901234567890", False, True),   # exact: no float rounding either
    ("0.5", "\\frac{1}{2}", True, True), ("(1,2)", "(1, 2)", True, True), ("3", "4", False, False),
    (None, "1", False, False),
])
def test_the_exact_grader_is_the_paper_grader_without_its_tolerances(prediction, reference, exact, paper):
    assert exact_equal(prediction, reference) is exact
    assert answers_equal(prediction, reference, "exact") is exact
    assert answers_equal(prediction, reference, "paper") is paper


def test_math_equal_never_hangs_on_huge_powers():
    start = time.monotonic()
    assert not math_equal("9^{9^{9}}", "1")
    assert not math_equal("9**9**9**9", "2")
    assert not math_equal("x^{99999999}", "x")
    assert time.monotonic() - start < 5


def test_time_limit_works_off_the_main_thread():
    result = {}

    def worker():
        start = time.monotonic()
        try:
            metrics._run_with_time_limit(lambda: time.sleep(3), 0.2)
        except metrics._Timeout:
            result["timed_out_after"] = time.monotonic() - start

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5)
    assert result["timed_out_after"] < 1.5


def test_time_limit_on_the_main_thread_interrupts():
    start = time.monotonic()
    with pytest.raises(metrics._Timeout):
        metrics._run_with_time_limit(lambda: time.sleep(3), 0.2)
    assert time.monotonic() - start < 1.5
    assert metrics._run_with_time_limit(lambda: 41 + 1, 1.0) == 42


@pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file(), reason="no shared GSM8K data")
def test_real_gsm8k_answers_extract_to_the_number_after_the_marker():
    import json

    rows = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").open()]
    assert len(rows) == 1319
    for row in rows:
        after = row["answer"].split("####")[-1].strip().replace(",", "")
        assert extract_gsm8k_answer(row["answer"]) == after
        assert math_equal(extract_gsm8k_answer(row["answer"]), after)
