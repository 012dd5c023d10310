"""Synthetic word problems whose worked solutions have many valid forms, checked for validity.

Public: ManywaySpec, PRESETS / get_preset(name), Problem, parse_question(question),
generate(spec, n, seed, split=None) -> [{"question", "answer"}], make_split(spec, split, n=None),
count_solutions, solution_entropy, longest_answer, format_line, check_solution(question_or_problem,
output) -> dict, score(outputs, problems) -> dict, SPLITS, SPLIT_SIZES, FORMAT_VERSION.

Why (CONTRACT.md §1). On `arith` every problem has ONE worked solution, so a teacher SFT'd on it
is near one-hot on that reference: its soft targets add little to the ground truth, and a
student token that leaves the reference is always an error. Here a problem is a set of
quantities to combine; each line combines two quantities available at that point (a group's
two factors, two gains, two losses, or a gain minus a loss no larger than it), every quantity is
used exactly once, and any order and grouping is right. "Ada has 35, 3 bags of 12 and 18 pens.
She sells 9. How many now?" has 240 valid solutions (30 orders, a sum's operands either way):
    3*12: 2*3=6+0=6 1*3=3+0=3 =36         | or 35+18=53, 3*12=36, 53-9=44, 44+36=80 (no column
    18+36: 8+6+0=14 1+3+1=5 =54           |    work: the checker takes lines with or without it)
    35-9: 5-9-0=-4+10=6 3-0-1=2 =26       |
    26+54: 6+4+0=10 2+5+1=8 =80           | ...
    #### 80
The `answer` is one valid solution drawn at random, each line uniformly among the valid next
lines, so a teacher trained on it learns a distribution over orders:
  - at the start of a line its soft targets spread over every valid next step (several
    references at once), which supervised KD passes on and SFT on one sample does not;
  - a student that takes another valid step than the ground truth's is on a prefix the teacher
    knows, so on-policy feedback stays reliable there, and SKD's top-K test keeps such tokens while
    it replaces wrong digits: a weak student's sample can be partly right and partly repaired;
  - supervised KD trains only on the reference's order, a prefix the student may never produce.
Outputs are scored by validity (check_solution), not by matching one reference. Lines can be
worked column by column (arith.column_work), the format that made tiny char-level models learn
arithmetic (benchmarks/results/arith_calibration.md). Splits follow arith: a problem's
computation (its multiset of quantities) hashes to a bucket (arith.split_of), so no test
computation appears in train under any order, wording, seed or size.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from skd.core import arith
from skd.core.errors import SkdError
from skd.core.metrics import extract_gsm8k_answer, normalize_number

FORMAT_VERSION = 1  # bumped whenever the text a spec produces changes (task cache stamps)
SPLITS = arith.SPLITS
SPLIT_SIZES = arith.SPLIT_SIZES

_NAMES = (("Ada", "she"), ("Bob", "he"), ("Eli", "he"), ("Fay", "she"), ("Hal", "he"),
          ("Ida", "she"), ("Jon", "he"), ("Lia", "she"), ("Ned", "he"), ("Ora", "she"),
          ("Pat", "he"), ("Uma", "she"))
_ITEMS = ("apples", "pens", "cards", "coins", "eggs", "books", "shells", "stamps", "beads", "cups")
_GROUP_WORDS = ("bags", "boxes", "packs")
_LOSS_VERBS = ("gives away", "sells", "loses")
_QUESTION = "How many now?"
_GROUP_RE = re.compile(r"(\d+) (?:" + "|".join(_GROUP_WORDS) + r") of (\d+)")
_SENTENCE_RE = re.compile(r"[A-Z][a-z]+ has (.+?) [a-z]+\.(?: (?:She|He) (?:"
                          + "|".join(_LOSS_VERBS) + r") (.+?)\.)? " + re.escape(_QUESTION))
_LINE_RE = re.compile(r"(\d+)([-+*])(\d+)(?:: (.*?) =|=)(-?\d+)")


@dataclass(frozen=True)
class ManywaySpec:
    """Difficulty knobs of the generator. Defaults = the "default" preset."""

    min_terms: int = 3  # fewest quantities per problem (a group "3 bags of 12" is one)
    max_terms: int = 3  # most quantities; each adds a line or two and multiplies the orders
    max_groups: int = 1  # most "k bags of m" terms: a product that must come before its use
    max_losses: int = 1  # most subtracted terms: "a-b" needs a gain a >= b, which prunes orders
    digits: int = 2  # max digits of loose quantities and group sizes (group counts are 2..9)
    columns: bool = True  # each line worked column by column (arith.column_work), units first
    commute: bool = True  # the answer writes a+b or b+a (k*m or m*k) at random; False: the larger
    #                       operand first (and k*m) -- the checker accepts both orders either way
    min_orders: int = 2  # fewest distinct orders (operand order within a line aside): problems
    #                      with one order only (e.g. both gains below the loss) are drawn again
    max_value: int = 9_999  # cap on the sum of the gains, so every intermediate stays below it
    max_chars: int = 240  # question + the LONGEST valid answer: any valid solution fits
    split_cap: int = 0  # > 0: the train split holds at most this many problems (50,000 by default)
    #                     and the others shrink in proportion; for specs with few distinct
    #                     computations (one-digit quantities)

    def __post_init__(self) -> None:
        if not 2 <= self.min_terms <= self.max_terms <= 6:
            raise SkdError(f"manyway: need 2 <= min_terms <= max_terms <= 6, got "
                           f"{self.min_terms}..{self.max_terms}", "fix the term range")
        if not 0 <= self.max_groups <= self.max_terms or not 0 <= self.max_losses < self.max_terms:
            raise SkdError(f"manyway: max_groups must be 0..max_terms and max_losses "
                           f"0..max_terms-1, got {self.max_groups}, {self.max_losses}",
                           "lower max_groups / max_losses")
        if not 1 <= self.digits <= 4 or self.max_value < 10 ** self.digits:
            raise SkdError(f"manyway: digits must be 1..4 with max_value >= 10**digits, got "
                           f"{self.digits}, {self.max_value}", "pick smaller operands")
        if self.split_cap < 0:
            raise SkdError(f"manyway: split_cap must be >= 0, got {self.split_cap}", "use 0 (no cap) or more")
        if self.min_orders < 1 or self.max_chars < 60:
            raise SkdError(f"manyway: need min_orders >= 1 and max_chars >= 60, got "
                           f"{self.min_orders}, {self.max_chars}", "raise them")

    def to_dict(self) -> dict:
        """JSON-ready form (saved with runs and in task cache stamps); ManywaySpec(**d) rebuilds it.
        split_cap is left out when 0, so specs without a cap keep the stamps they had before it
        existed."""
        d = dataclasses.asdict(self)
        if not d["split_cap"]:
            del d["split_cap"]
        return d


PRESETS: dict[str, ManywaySpec] = {
    # three gains, no column work: 12 valid solutions each; a smoke test.
    "easy": ManywaySpec(max_groups=0, max_losses=0, columns=False, max_chars=160),
    # three quantities, at most one group and one loss, column work: answers about as long as
    # arith's default (2-3 worked lines), the intended teacher/student gap.
    "default": ManywaySpec(),
    # 3-4 quantities, column work: longer answers, many more orders.
    "hard": ManywaySpec(max_terms=4),
    # 4-5 quantities, up to two groups and two losses, no column work (it would not fit 240
    # chars): thousands of valid solutions, for stronger models or longer budgets.
    "wide": ManywaySpec(min_terms=4, max_terms=5, max_groups=2, max_losses=2, columns=False),
    # one-digit quantities, 3-5 of them, up to two losses, no groups, no column work: short answers
    # (~31 chars) whose lines are one-digit facts a 0.24M student can learn, with a median of ~200
    # valid solutions per problem. Only ~15,000 distinct computations exist, hence the cap
    # (train 12,000, validation 120, test 240).
    "short": ManywaySpec(min_terms=3, max_terms=5, max_groups=0, max_losses=2, digits=1, columns=False,
                         max_value=99, max_chars=140, split_cap=12_000),
}


def get_preset(name: str) -> ManywaySpec:
    """The named ManywaySpec ("easy", "default", "hard", "wide", "short")."""
    if name not in PRESETS:
        raise SkdError(f"unknown manyway preset '{name}'", f"use one of: {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class Problem:
    """The quantities of one problem: loose gains, groups (count, size) and losses."""

    gains: tuple[int, ...]
    groups: tuple[tuple[int, int], ...]
    losses: tuple[int, ...]

    @property
    def total(self) -> int:
        """The right final answer."""
        return sum(self.gains) + sum(k * m for k, m in self.groups) - sum(self.losses)

    @property
    def needed_lines(self) -> int:
        """Computation lines of every valid solution: one per group, one per merge."""
        return 2 * len(self.groups) + len(self.gains) + len(self.losses) - 1

    @property
    def signature(self) -> str:
        """The computation, independent of the order and wording of the question."""
        groups = sorted(tuple(sorted(g)) for g in self.groups)
        return (f"manyway|+{sorted(self.gains)}|*{groups}|-{sorted(self.losses)}").replace(" ", "")


def parse_question(question: str) -> Problem:
    """The Problem a generated question states (the inverse of the question template)."""
    m = _SENTENCE_RE.fullmatch(question.strip())
    if m is None:
        raise SkdError(f"manyway: not a question of this generator: {question[:80]!r}",
                       "pass a question made by skd.core.manyway.generate")
    kept = _GROUP_RE.sub("", m.group(1))
    groups = tuple((int(k), int(s)) for k, s in _GROUP_RE.findall(m.group(1)))
    losses = tuple(int(x) for x in re.findall(r"\d+", m.group(2) or ""))
    return Problem(tuple(int(x) for x in re.findall(r"\d+", kept)), groups, losses)


# ---- solutions as moves between states ------------------------------------------------------
# A state is the sorted tuple of quantities still available: ("+", v) a gain or a sum of gains,
# ("-", v) a loss or a sum of losses, ("*", k, m) a group not yet multiplied out. A line "a op b"
# can fit a state in more than one way (two equal sums, one of gains, one of losses), so the
# search follows the set of states a prefix of lines can have led to.

def _start(problem: Problem) -> tuple:
    items = [("+", v) for v in problem.gains] + [("-", v) for v in problem.losses]
    return tuple(sorted(items + [("*", k, m) for k, m in problem.groups]))


def _take(state: tuple, *wanted: tuple) -> list | None:
    """The state's items without `wanted` (a multiset), or None when they are not all there."""
    rest = list(state)
    for item in wanted:
        if item not in rest:
            return None
        rest.remove(item)
    return rest


def _apply(state: tuple, a: int, op: str, b: int, result: int) -> set[tuple]:
    """Every state after the line "a op b = result" when a and b are available in `state`."""
    if op == "*":
        options = [(("*", a, b), "+")] + ([(("*", b, a), "+")] if a != b else [])
        rests = [(_take(state, g), sign) for g, sign in options]
    elif op == "+":
        rests = [(_take(state, (s, a), (s, b)), s) for s in "+-"]
    else:  # a gain minus a loss no larger than it: the count never goes below zero
        rests = [(_take(state, ("+", a), ("-", b)), "+")] if a >= b else []
    return {tuple(sorted(rest + [(sign, result)])) for rest, sign in rests if rest is not None}


def _candidates(state: tuple, commute: bool) -> set[tuple[int, str, int]]:
    """Every line (a, op, b) that fits `state`, operands in both orders when `commute`."""
    out = set()
    values = [item for item in state if item[0] != "*"]
    for item in state:
        if item[0] == "*":
            out.add((item[1], "*", item[2]))
            if commute:
                out.add((item[2], "*", item[1]))
    for i, (si, a) in enumerate(values):
        for sj, b in values[i + 1:]:
            if si == sj:
                out.add((max(a, b), "+", min(a, b)))
                if commute:
                    out.add((min(a, b), "+", max(a, b)))
            elif (si, sj) == ("+", "-") and a >= b or (si, sj) == ("-", "+") and b >= a:
                out.add((a, "-", b) if si == "+" else (b, "-", a))
    return out


def _value(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


@functools.lru_cache(maxsize=8192)
def _successors(states: frozenset, commute: bool) -> dict[tuple, frozenset]:
    """line -> the set of states it leads to, over every line fitting some state of `states`."""
    out: dict[tuple, set] = {}
    for state in states:
        for a, op, b in _candidates(state, commute):
            out.setdefault((a, op, b), set()).update(_apply(state, a, op, b, _value(a, op, b)))
    return {line: frozenset(nxt) for line, nxt in sorted(out.items())}


@functools.lru_cache(maxsize=16384)
def format_line(a: int, op: str, b: int, columns: bool) -> str:
    """One computation line: "a op b=c", or "a op b: <column work> =c" with `columns`."""
    expr, value = f"{a}{op}{b}", _value(a, op, b)
    work = arith.column_work(expr) if columns else None
    return f"{expr}: {work} ={value}" if work is not None else f"{expr}={value}"


@functools.lru_cache(maxsize=4096)
def _count(states: frozenset, commute: bool) -> int:
    nxt = _successors(states, commute)
    return sum(_count(s, commute) for s in nxt.values()) if nxt else 1


@functools.lru_cache(maxsize=4096)
def _entropy(states: frozenset, commute: bool) -> float:
    nxt = _successors(states, commute)
    if not nxt:
        return 0.0
    return math.log2(len(nxt)) + sum(_entropy(s, commute) for s in nxt.values()) / len(nxt)


@functools.lru_cache(maxsize=4096)
def _longest(states: frozenset, columns: bool) -> int:
    nxt = _successors(states, True)
    return max((len(format_line(*line, columns)) + 1 + _longest(s, columns)
                for line, s in nxt.items()), default=0)


def _at_least(states: frozenset, commute: bool, need: int) -> bool:
    """Whether `states` have `need` or more completions, searching no further than that (no
    state is a dead end: every gain can be summed first and every loss then taken from it)."""
    stack, found = [states], 0
    while stack:
        nxt = _successors(stack.pop(), commute)
        found += not nxt
        if found + len(stack) + len(nxt) >= need:  # each open state has a completion or more
            return True
        stack.extend(nxt.values())
    return False


def _fits(problem: Problem, question: str, spec: ManywaySpec) -> bool:
    """Whether the question and the longest valid answer fit spec.max_chars: first against a
    bound (every sum and difference has at most as many digits as the gains' total), then, only
    when the bound is over, exactly."""
    d, cols = len(str(sum(problem.gains) + sum(k * m for k, m in problem.groups))), spec.columns
    plus, minus = (11 * d + 4, 18 * d + 4) if cols else (3 * d + 2, 3 * d + 2)  # longest lines
    merges, losses = problem.needed_lines - len(problem.groups), len(problem.losses)
    bound = sum(len(format_line(max(g), "*", min(g), cols)) for g in problem.groups) \
        + losses * minus + (merges - losses) * plus + merges + len(problem.groups) \
        + len(f"#### {problem.total}")
    if len(question) + bound <= spec.max_chars:
        return True
    return len(question) + longest_answer(problem, spec.columns) <= spec.max_chars


def count_solutions(problem: Problem, commute: bool = True) -> int:
    """Distinct valid solutions (as line sequences; a+b and b+a count apart when `commute`)."""
    return _count(frozenset([_start(problem)]), commute)


def solution_entropy(problem: Problem, commute: bool = True) -> float:
    """Entropy in bits of the generator's answer distribution for `problem` (each line drawn
    uniformly among the valid next lines; log2 count_solutions when all branches are alike)."""
    return _entropy(frozenset([_start(problem)]), commute)


def longest_answer(problem: Problem, columns: bool) -> int:
    """Characters of the longest valid answer (lines and the "#### n" line)."""
    return _longest(frozenset([_start(problem)]), columns) + len(f"#### {problem.total}")


def _solution(rng: random.Random, problem: Problem, spec: ManywaySpec) -> str:
    states, lines = frozenset([_start(problem)]), []
    while True:
        nxt = _successors(states, spec.commute)
        if not nxt:
            break
        line = rng.choice(list(nxt))
        lines.append(format_line(*line, spec.columns))
        states = nxt[line]
    return "\n".join(lines + [f"#### {problem.total}"])


# ---- generation -----------------------------------------------------------------------------

def _listing(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _question(rng: random.Random, problem: Problem) -> str:
    name, pronoun = rng.choice(_NAMES)
    terms = [str(v) for v in problem.gains]
    terms += [f"{k} {rng.choice(_GROUP_WORDS)} of {m}" for k, m in problem.groups]
    rng.shuffle(terms)
    sentences = [f"{name} has {_listing(terms)} {rng.choice(_ITEMS)}."]
    if problem.losses:
        sentences.append(f"{pronoun.capitalize()} {rng.choice(_LOSS_VERBS)} "
                         f"{_listing([str(v) for v in problem.losses])}.")
    return " ".join(sentences + [_QUESTION])


def _draw(rng: random.Random, spec: ManywaySpec) -> Problem | None:
    top = 10 ** spec.digits
    terms = rng.randrange(spec.min_terms, spec.max_terms + 1)
    n_losses = rng.randrange(0, min(spec.max_losses, terms - 1) + 1)
    n_groups = rng.randrange(0, min(spec.max_groups, terms - n_losses) + 1)
    n_gains = terms - n_losses - n_groups
    gains = tuple(rng.randrange(1, top) for _ in range(n_gains))
    groups = tuple((rng.randrange(2, 10), rng.randrange(2, top)) for _ in range(n_groups))
    if len({tuple(sorted(g)) for g in groups}) < n_groups:
        return None  # two groups with one product fit each other's lines: keep them apart
    have = sum(gains) + sum(k * m for k, m in groups)
    if have > spec.max_value or have < 2:
        return None
    losses = tuple(rng.randrange(1, min(top, have)) for _ in range(n_losses))
    return Problem(gains, groups, losses) if sum(losses) < have else None


def generate(spec: ManywaySpec, n: int, seed: int, *, split: str | None = None) -> list[dict]:
    """`n` distinct problems (one per computation) drawn from random.Random(seed), as
    [{"question", "answer"}] with `answer` one valid solution drawn at random; deterministic in
    (spec, n, seed, split). With `split`, only computations of that split's bucket are kept."""
    if n < 0 or split is not None and split not in SPLITS:
        raise SkdError(f"manyway: cannot generate {n} problems of split {split!r}",
                       f"pass n >= 0 and a split among: {', '.join(SPLITS)} (or none)")
    rng = random.Random(f"skd-manyway|{seed}|{json.dumps(spec.to_dict(), sort_keys=True)}")

    def draw():
        problem = _draw(rng, spec)
        if problem is None:
            return None

        def finish() -> dict | None:
            question = _question(rng, problem)
            if not _fits(problem, question, spec):
                return None
            if spec.min_orders > 1 and not _at_least(frozenset([_start(problem)]), False, spec.min_orders):
                return None
            return {"question": question, "answer": _solution(rng, problem, spec)}

        return problem.signature, finish

    return arith.distinct_problems(draw, n, split, what="manyway",
                                   widen="ask for fewer problems or widen the spec (more terms or digits)")


def make_split(spec: ManywaySpec, split: str, n: int | None = None) -> list[dict]:
    """The fixed `split` of `spec`: generate(spec, n, seed of the split, split=split), with
    n = SPLIT_SIZES[split] by default. Disjoint from the other splits by computation."""
    if split not in SPLITS:
        raise SkdError(f"manyway: unknown split '{split}'", f"use one of: {', '.join(SPLITS)}")
    size = SPLIT_SIZES[split] if n is None else n
    if spec.split_cap:
        size = min(size, spec.split_cap * SPLIT_SIZES[split] // SPLIT_SIZES["train"])
    return generate(spec, size, arith.SPLIT_SEEDS[split], split=split)


# ---- validity checking ----------------------------------------------------------------------

def _as_problem(item: Problem | Mapping[str, Any] | str) -> Problem:
    if isinstance(item, Problem):
        return item
    return parse_question(str(item["question"] if isinstance(item, Mapping) else item))


def _line_ok(line: str) -> tuple[tuple[int, str, int, int] | None, bool]:
    """(a, op, b, written result) read from one line or None, and whether its arithmetic (and its
    column work, when shown) is right."""
    m = _LINE_RE.fullmatch(line)
    if m is None or any(str(int(x)) != x for x in m.group(1, 3, 5)):
        return None, False  # not a line, or "07": not how the numbers are written
    a, op, b, work, shown = m.groups()
    right = _value(int(a), op, int(b)) == int(shown)
    right = right and (work is None or work == arith.column_work(f"{a}{op}{b}"))
    return (int(a), op, int(b), int(shown)), right


def check_solution(question_or_problem: Problem | Mapping[str, Any] | str, output: str) -> dict:
    """Whether `output` is a valid solution of the problem, whatever its order and grouping:
    every line "a op b=c" (column work optional, checked when shown) is right and combines two
    quantities available at that point, every quantity is used exactly once, and the "#### n"
    line (the last, and the only one) states the total. Returns {"is_valid", "graded" (valid
    lines plus a right final answer, over max(lines written, lines needed) + 1; rows after the
    first "####" count as written), "answer_correct", "valid_lines", "lines" (written),
    "needed_lines", "answer" (the number after the last "####", as Task.extract reads it)}.
    After a line with wrong arithmetic its written result stands, so later lines can still count."""
    problem = _as_problem(question_or_problem)
    rows = [row.strip() for row in output.strip().split("\n") if row.strip()]
    finals = [i for i, row in enumerate(rows) if row.startswith("####")]
    work_rows = rows[:finals[0]] if finals else rows
    answer = extract_gsm8k_answer(output)
    answer_correct = answer is not None and answer == normalize_number(problem.total)
    states, valid = frozenset([_start(problem)]), 0
    for row in work_rows:
        parsed, right = _line_ok(row)
        if parsed is None:
            continue
        a, op, b, shown = parsed
        nxt = frozenset(s for state in states for s in _apply(state, a, op, b, shown))
        if nxt:
            states = nxt
            valid += right
    needed = problem.needed_lines
    written = len(rows) - bool(finals)  # rows after the "####" line count as (wrong) lines
    complete = (("+", problem.total),) in states and finals == [len(rows) - 1]
    return {"is_valid": complete and valid == written == needed and answer_correct,
            "graded": (valid + answer_correct) / (max(written, needed) + 1),
            "answer_correct": answer_correct, "valid_lines": valid, "lines": written,
            "needed_lines": needed, "answer": answer}


def score(outputs: Sequence[str], problems: Iterable[Problem | Mapping[str, Any] | str]) -> dict:
    """Corpus scores: {"valid": share of valid solutions, "graded": mean graded score,
    "answer_correct": share with the right final number, "n"}. `problems`: one per output, as
    Problem, question text or {"question": ...} record."""
    problems = list(problems)
    if len(outputs) != len(problems):
        raise SkdError(f"{len(outputs)} outputs but {len(problems)} problems",
                       "pass one problem per output")
    if not outputs:
        raise SkdError("no outputs to score", "pass at least one output")
    checks = [check_solution(p, o) for p, o in zip(problems, outputs)]
    mean = lambda key: sum(c[key] for c in checks) / len(checks)  # noqa: E731
    return {"valid": mean("is_valid"), "graded": mean("graded"),
            "answer_correct": mean("answer_correct"), "n": len(checks)}
