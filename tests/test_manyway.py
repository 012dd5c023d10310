"""Tests for core/manyway.py: generated answers are valid, other valid orders are accepted, common
corruptions are not, graded scores, solution counts, disjoint splits, determinism (also across
hash seeds), and the character budget and alphabet."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import random
import subprocess
import sys

import pytest

from skd.core import arith, manyway
from skd.core.errors import SkdError
from skd.core.manyway import (PRESETS, ManywaySpec, Problem, check_solution, count_solutions,
                              format_line, generate, make_split, parse_question, score)
from skd.core.metrics import extract_gsm8k_answer
from skd.core.tokenizer import CHARACTERS

_N = 150  # problems per preset and check: enough to meet groups, losses and both layouts


def _rows(preset: str, n: int = _N, seed: int = 0) -> list[dict]:
    return generate(PRESETS[preset], n, seed)


def _solve(problem: Problem, rng: random.Random, columns: bool) -> str:
    """A valid solution built here, independently of the generator: products first (factors in a
    random order), then the gains summed as a running total in a shuffled order (each sum's
    operands in a random order), then one loss taken away, or several summed and taken away."""
    lines, gains = [], list(problem.gains)
    for k, m in problem.groups:
        a, b = (k, m) if rng.random() < 0.5 else (m, k)
        lines.append(format_line(a, "*", b, columns))
        gains.append(k * m)
    rng.shuffle(gains)
    total = gains[0]
    for g in gains[1:]:
        a, b = (total, g) if rng.random() < 0.5 else (g, total)
        lines.append(format_line(a, "+", b, columns))
        total += g
    losses = list(problem.losses)
    rng.shuffle(losses)
    if losses:
        lost = losses[0]
        for x in losses[1:]:
            lines.append(format_line(lost, "+", x, columns))
            lost += x
        lines.append(format_line(total, "-", lost, columns))
        total -= lost
    assert total == problem.total
    return "\n".join(lines + [f"#### {total}"])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_generated_answer_is_valid(preset):
    rows = _rows(preset)
    for row in rows:
        result = check_solution(row["question"], row["answer"])
        assert result["is_valid"] and result["graded"] == 1.0 and result["answer_correct"], row
        problem = parse_question(row["question"])
        assert extract_gsm8k_answer(row["answer"]) == str(problem.total)
        assert result["lines"] == result["needed_lines"] == problem.needed_lines
    assert score([r["answer"] for r in rows], rows) == {"valid": 1.0, "graded": 1.0,
                                                         "answer_correct": 1.0, "n": len(rows)}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_other_valid_orders_are_valid(preset):
    rng, differ = random.Random(5), 0
    rows = _rows(preset)
    for row in rows:
        problem = parse_question(row["question"])
        for columns in (True, False):  # column work is optional for the checker, right or absent
            other = _solve(problem, rng, columns)
            assert check_solution(problem, other)["is_valid"], (row["question"], other)
            differ += other != row["answer"]
    assert differ > len(rows)  # the constructed orders are mostly not the generated one


def test_every_order_of_three_gains_is_valid_and_counted():
    problem = Problem(gains=(17, 45, 8), groups=(), losses=())
    seen = set()
    for (x, y, z) in itertools.permutations(problem.gains):
        for swap1, swap2 in itertools.product((False, True), repeat=2):
            a, b = (y, x) if swap1 else (x, y)
            c, d = (z, x + y) if swap2 else (x + y, z)
            text = "\n".join([format_line(a, "+", b, True), format_line(c, "+", d, True), "#### 70"])
            assert check_solution(problem, text)["is_valid"], text
            seen.add(text)
    assert len(seen) == count_solutions(problem) == 12
    assert count_solutions(problem, commute=False) == 3
    assert manyway.solution_entropy(problem) == pytest.approx(3.5849625, abs=1e-6)  # log2 12


def test_small_counts():
    assert count_solutions(Problem((3, 5), (), ())) == 2  # 3+5, 5+3
    assert count_solutions(Problem((3, 5), (), ()), commute=False) == 1
    assert count_solutions(Problem((7,), ((2, 6),), ())) == 4  # 2*6 or 6*2, then 7+12 or 12+7
    # 20-9 then 11+5 or 5+11; 20+5 or 5+20 then 25-9; 5-9 is not allowed
    assert count_solutions(Problem((20, 5), (), (9,))) == 2 + 2
    assert count_solutions(Problem((4, 5), (), (9,))) == 2  # only (4+5)-9 in either order


def test_line_interpretations_are_all_followed():
    # "12+30" can merge the two gains or the two losses: both readings must stay open
    problem = Problem(gains=(12, 30, 50), groups=(), losses=(12, 30))
    both = ["12+30=42", "12+30=42", "42+50=92", "92-42=50", "#### 50"]
    assert check_solution(problem, "\n".join(both))["is_valid"]
    losses_first = ["30+12=42", "50-42=8", "12+8=20", "20+30=50", "#### 50"]
    assert check_solution(problem, "\n".join(losses_first))["is_valid"]


def _corrupt_cases():
    problem = Problem(gains=(35, 18), groups=((3, 12),), losses=(9,))  # total 80
    good = ["3*12=36", "35+18=53", "53+36=89", "89-9=80", "#### 80"]
    return problem, good, {
        "wrong arithmetic": ["3*12=36", "35+18=52", "52+36=88", "88-9=79", "#### 79"],
        "wrong arithmetic, right final": ["3*12=36", "35+18=54", "53+36=89", "89-9=80", "#### 80"],
        "quantity used twice": ["3*12=36", "35+18=53", "53+36=89", "89+18=107", "107-9=98",
                                "#### 98"],
        "quantity missing": ["3*12=36", "35+36=71", "71-9=62", "#### 62"],
        "missing with the right final": ["3*12=36", "35+36=71", "71-9=62", "#### 80"],
        "wrong final": good[:-1] + ["#### 81"],
        "no final": good[:-1],
        "two finals": good + ["#### 80"],
        "a group factor used as a number": ["35+18=53", "53+12=65", "65*3=195", "#### 195"],
        "loss larger than the gain": ["9-35=-26", "3*12=36", "#### 80"],
        "loss added": ["3*12=36", "35+18=53", "53+36=89", "89+9=98", "#### 98"],
        "a number not in the problem": ["3*12=36", "35+19=54", "54+36=90", "90-9=81", "#### 81"],
        "wrong column work": ["3*12: 2*3=6+0=6 1*3=3+0=3 =36", "35+18: 5+8+0=13 3+1+0=4 =53",
                              "53+36=89", "89-9=80", "#### 80"],
        "leading zero": ["3*12=36", "35+18=053", "53+36=89", "89-9=80", "#### 80"],
        "not a line": ["3*12=36", "so then 35+18=53", "53+36=89", "89-9=80", "#### 80"],
    }


def test_corruptions_are_invalid():
    problem, good, cases = _corrupt_cases()
    assert check_solution(problem, "\n".join(good))["is_valid"]
    for name, lines in cases.items():
        result = check_solution(problem, "\n".join(lines))
        assert not result["is_valid"], name
        assert result["graded"] < 1.0, name


def test_graded_scores():
    problem, good, cases = _corrupt_cases()
    graded = {name: check_solution(problem, "\n".join(lines))["graded"] for name, lines in cases.items()}
    assert graded["wrong final"] == pytest.approx(4 / 5)
    assert graded["no final"] == pytest.approx(4 / 5)
    # a wrong line whose result is then used correctly: only that line (and the final) lose
    assert graded["wrong arithmetic"] == pytest.approx(3 / 5)
    assert graded["quantity missing"] == pytest.approx(3 / 5)  # 3 right of 4 needed, final wrong
    assert graded["quantity used twice"] == pytest.approx(3 / 6)  # 5 written, one reuses 18
    assert check_solution(problem, "")["graded"] == 0.0
    assert check_solution(problem, "#### 80") == {
        "is_valid": False, "graded": 1 / 5, "answer_correct": True, "valid_lines": 0, "lines": 0,
        "needed_lines": 4, "answer": "80"}
    outputs = ["\n".join(good), "\n".join(cases["wrong final"])]
    assert score(outputs, [problem, problem]) == {"valid": 0.5, "graded": pytest.approx(0.9),
                                                   "answer_correct": 0.5, "n": 2}


def test_splits_are_disjoint_and_follow_the_hash_buckets():
    for preset in ("default", "wide", "short"):
        spec = PRESETS[preset]
        signatures = {}
        for split in manyway.SPLITS:
            rows = make_split(spec, split, 200)
            sigs = {parse_question(r["question"]).signature for r in rows}
            assert len(sigs) == len(rows)  # one problem per computation
            assert all(arith.split_of(s) == split for s in sigs)
            signatures[split] = sigs
        for a, b in itertools.combinations(manyway.SPLITS, 2):
            assert not signatures[a] & signatures[b], (preset, a, b)
    # the signature ignores the order and wording of the question
    assert Problem((3, 5), ((2, 7),), (1,)).signature == Problem((5, 3), ((7, 2),), (1,)).signature


def test_determinism_by_seed():
    spec = PRESETS["default"]
    assert generate(spec, 60, 3) == generate(spec, 60, 3)
    assert generate(spec, 60, 3) != generate(spec, 60, 4)
    assert generate(spec, 30, 3) == generate(spec, 60, 3)[:30]  # a prefix of larger draws
    other = dataclasses.replace(spec, commute=False)
    assert generate(other, 60, 3) != generate(spec, 60, 3)


def test_same_problems_under_another_hash_seed():
    code = ("import hashlib, json; from skd.core import manyway as m; "
            "rows = m.generate(m.get_preset('wide'), 80, 9); "
            "print(hashlib.sha256(json.dumps(rows).encode()).hexdigest())")
    here = hashlib.sha256(json.dumps(generate(PRESETS["wide"], 80, 9)).encode()).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == here


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_lengths_and_characters(preset):
    spec = PRESETS[preset]
    allowed = set(CHARACTERS)
    for row in _rows(preset, seed=1):
        text = row["question"] + row["answer"]
        assert set(text) <= allowed and text.isascii()
        assert len(row["question"]) + len(row["answer"]) <= spec.max_chars <= 240
        problem = parse_question(row["question"])
        # any valid solution fits, not only the one drawn
        assert len(row["question"]) + manyway.longest_answer(problem, spec.columns) <= spec.max_chars
        assert "\n\n" not in row["answer"] and row["answer"].count("####") == 1
        assert set(row) == {"question", "answer"}


def test_presets_have_many_forms():
    for preset, spec in PRESETS.items():
        for row in _rows(preset, n=60):
            problem = parse_question(row["question"])
            assert count_solutions(problem) >= count_solutions(problem, commute=False) \
                >= spec.min_orders, row


def test_column_layout_matches_arith():
    assert format_line(37, "+", 48, True) == "37+48: " + arith.column_work("37+48") + " =85"
    assert format_line(37, "+", 48, False) == "37+48=85"
    assert format_line(52, "-", 17, True).endswith(" =35")


def test_bad_input():
    with pytest.raises(SkdError):
        ManywaySpec(min_terms=4, max_terms=3)
    with pytest.raises(SkdError):
        ManywaySpec(max_losses=3, max_terms=3)
    with pytest.raises(SkdError):
        ManywaySpec(digits=2, max_value=50)
    with pytest.raises(SkdError):
        ManywaySpec(min_orders=0)
    with pytest.raises(SkdError):
        manyway.get_preset("nope")
    with pytest.raises(SkdError):
        parse_question("Ann has 37 pens. She buys 4 bags of 12. How many now?")
    with pytest.raises(SkdError):
        generate(PRESETS["easy"], 5, 0, split="dev")
    with pytest.raises(SkdError):
        score(["#### 1"], [])
    with pytest.raises(SkdError):
        ManywaySpec(split_cap=-1)
    assert ManywaySpec(**PRESETS["wide"].to_dict()) == PRESETS["wide"]
    assert ManywaySpec(**PRESETS["short"].to_dict()) == PRESETS["short"]


def test_split_cap_shrinks_splits_in_proportion_and_keeps_old_stamps():
    spec = PRESETS["short"]
    sizes = {split: len(make_split(spec, split)) for split in ("validation", "test")}
    assert sizes == {"validation": spec.split_cap * 500 // 50_000, "test": spec.split_cap * 1_000 // 50_000}
    assert len(make_split(spec, "test", 30)) == 30  # an explicit smaller n still wins
    # no cap: the spec's dict (and so every task cache stamp made from it) has no split_cap key
    assert "split_cap" not in PRESETS["default"].to_dict() and PRESETS["short"].to_dict()["split_cap"] == 12_000


def test_short_preset_is_one_digit_facts():
    for row in _rows("short", n=80):
        problem = parse_question(row["question"])
        assert not problem.groups and all(1 <= q <= 9 for q in problem.gains + problem.losses)
        assert 3 <= len(problem.gains) + len(problem.losses) <= 5
        assert check_solution(problem, row["answer"])["is_valid"]
