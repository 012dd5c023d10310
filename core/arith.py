"""Synthetic multi-step arithmetic word problems in GSM8K's format (a built-in stand-in for the
paper's GSM8K task, CONTRACT.md §6, small enough for tiny CPU models).

Public: ArithSpec (frozen difficulty knobs), PRESETS / get_preset(name), generate(spec, n, seed,
split=None) -> [{"question", "answer"}], make_split(spec, split, n=None), split_of(signature),
distinct_problems(draw, n, split, ...) (the dedup/split loop shared with other generators),
SPLITS, SPLIT_SIZES.

A problem starts from one number and applies `steps` operations, each stated in one short sentence:
    question: "Ann has 37 pens. She buys 4 bags of 12. She sells 15. How many now?"
    answer:   "4*12=48\n37+48=85\n85-15=70\n#### 70"
with optional GSM8K calculator annotations ("4*12=<<4*12=48>>48"). Only printable ASCII is used.
Splits are disjoint by construction: each computation (start number, operations, operands) hashes
to a fixed bucket (test 5%, validation 5%, train 90%) and a split only keeps problems of its own
bucket, so no test computation ever appears in train, whatever the seeds and sizes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Callable

from skd.core.errors import SkdError

OPS = ("+", "-", "*", "/")
# Bumped whenever the text a spec produces changes, so cached models trained on the old text are
# not reused (tasks.Task.fingerprint).
FORMAT_VERSION = 2
SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 50_000, "validation": 500, "test": 1_000}  # train: "plenty" for a teacher
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}  # fixed: a split is the same on every run
_BUCKETS = {"test": range(0, 5), "validation": range(5, 10), "train": range(10, 100)}

# Short, ASCII-only template pieces (every extra character costs a char-level model time).
_NAMES = (("Ann", "she"), ("Ben", "he"), ("Cal", "he"), ("Dee", "she"), ("Eva", "she"),
          ("Gus", "he"), ("Ivy", "she"), ("Jay", "he"), ("Kim", "she"), ("Leo", "he"),
          ("Max", "he"), ("Nia", "she"), ("Raj", "he"), ("Sam", "he"), ("Tia", "she"),
          ("Zoe", "she"))
_ITEMS = ("apples", "pens", "cards", "coins", "eggs", "books", "shells", "stamps", "beads", "cups")
_ADD = ("{P} buys {x} more.", "{P} finds {x} more.", "{P} gets {x} more.")
_SUB = ("{P} sells {x}.", "{P} gives away {x}.", "{P} loses {x}.")
_MUL = ("Now {p} has {k} times as many.", "Then {p} has {k} times as many.")
_DIV = ("{P} splits them into {k} equal piles and keeps one.",)
_GROUPS = ("{P} buys {k} bags of {m}.", "{P} gets {k} boxes of {m}.")
_QUESTION = "How many now?"


@dataclass(frozen=True)
class ArithSpec:
    """Difficulty knobs of the generator. Defaults = the "default" preset."""

    min_steps: int = 2  # fewest operations per problem: 2+ makes it multi-step
    max_steps: int = 3  # most operations; each adds a line to reason through (and ~20 chars)
    ops: tuple[str, ...] = ("+", "-", "*")  # "/" (exact division) is in the "hard" preset
    digits: int = 2  # max digits of the start number and of +/- operands; carries need >= 2
    mul_digits: int = 1  # max digits of multipliers/divisors: short products (3x3-digit ones
    #                      were not learnable by small CPU models in minutes, measured)
    groups: bool = True  # "buys 4 bags of 12": a product feeding a sum, GSM8K's commonest pattern
    max_value: int = 9_999  # cap on every intermediate result, keeps numbers <= 4 digits
    reasoning: bool = True  # one line per computation before "####"; False: "#### n" only (harder)
    annotate: bool = False  # GSM8K "<<a*b=c>>" annotations: faithful format, but doubles lines
    columns: bool = False  # work each +, - and x1-digit product column by column, units first,
    #                        carries written out ("37+48: 7+8+0=15 3+4+1=8 =85"): one-digit facts
    #                        a small char-level model learns fast, where "37+48=85" is slow
    max_chars: int = 200  # question + answer limit, so tiny models train on short sequences

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if not 1 <= self.min_steps <= self.max_steps <= 12:
            raise SkdError(f"arith: need 1 <= min_steps <= max_steps <= 12, got "
                           f"{self.min_steps}..{self.max_steps}", "fix the step range")
        if not self.ops or any(op not in OPS for op in self.ops) or len(set(self.ops)) != len(self.ops):
            raise SkdError(f"arith: ops must be distinct choices from {OPS}, got {self.ops}",
                           "pass e.g. ops=('+', '-', '*')")
        if self.groups and not {"+", "*"} <= set(self.ops):
            raise SkdError("arith: groups=True states a product feeding a sum, so it needs "
                           "both '+' and '*' in ops", "add them or set groups=False")
        if not 1 <= self.digits <= 6 or not 1 <= self.mul_digits <= 3:
            raise SkdError(f"arith: digits must be 1..6 and mul_digits 1..3, got "
                           f"{self.digits}, {self.mul_digits}", "pick smaller operands")
        if self.max_value < 10 ** self.digits:
            raise SkdError(f"arith: max_value {self.max_value} must be at least "
                           f"10**digits = {10 ** self.digits}", "raise max_value or lower digits")
        if self.columns and self.annotate:
            raise SkdError("arith: columns and annotate both rewrite the computation lines",
                           "set one of them")
        if self.max_chars < 60:
            raise SkdError(f"arith: max_chars {self.max_chars} is too small for any problem",
                           "use max_chars >= 60")

    def to_dict(self) -> dict:
        """JSON-ready form (saved with runs); ArithSpec(**d) rebuilds it."""
        return dataclasses.asdict(self)


PRESETS: dict[str, ArithSpec] = {
    # 1-2 additions/subtractions of 2-digit numbers: a smoke test; small students learn it too.
    "easy": ArithSpec(min_steps=1, max_steps=2, ops=("+", "-"), groups=False, max_value=999),
    # 2-3 steps with carries and 2x1-digit products, worked column by column: the intended
    # teacher/student gap.
    "default": ArithSpec(min_steps=2, max_steps=2, columns=True, max_chars=240),
    # 3-4 steps, 3-digit operands, exact division too: for stronger teachers or longer budgets.
    "hard": ArithSpec(min_steps=3, max_steps=4, ops=("+", "-", "*", "/"), digits=3,
                      max_value=99_999),
}


def get_preset(name: str) -> ArithSpec:
    """The named ArithSpec ("easy", "default", "hard")."""
    if name not in PRESETS:
        raise SkdError(f"unknown arith preset '{name}'", f"use one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def split_of(signature: str) -> str:
    """The split ("train" / "validation" / "test") a computation belongs to, fixed by a hash of its
    signature (stable across processes and Python versions, unlike hash())."""
    bucket = int.from_bytes(hashlib.blake2b(signature.encode(), digest_size=8).digest(), "big") % 100
    return next(name for name, members in _BUCKETS.items() if bucket in members)


def _digits(n: int) -> list[int]:
    """Decimal digits of n >= 0, units first."""
    return [int(c) for c in reversed(str(n))]


def column_work(expr: str) -> str | None:
    """The column-by-column working of "a+b", "a-b" (a >= b) or a product with a one-digit factor,
    units column first, or None for anything else (division, wider products).

        37+48 -> "7+8+0=15 3+4+1=8"      column: digit + digit + carry in = sum
        52-17 -> "2-7-0=-5+10=5 5-1-1=3" a negative column difference borrows: plus 10
        4*12  -> "2*4=8+0=8 1*4=4+0=4"   a digit of the wider factor times the one-digit one,
                                         then the carry in (two small steps, not one)
    The result is read back from the last column's value, then the units of the earlier
    columns from last to first, leading zeros dropped."""
    m = re.fullmatch(r"(\d+)([+*-])(\d+)", expr)
    if m is None:
        return None
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    cols, carry = [], 0
    if op == "*":
        if min(a, b) > 9:
            return None
        big, k = (a, b) if b <= 9 else (b, a)
        for d in _digits(big):
            p = d * k + carry
            cols.append(f"{d}*{k}={d * k}+{carry}={p}")  # the product fact, then the carry added
            carry = p // 10
        return " ".join(cols)
    da, db = _digits(a), _digits(b)
    if op == "-" and a < b:
        return None
    for i in range(max(len(da), len(db))):
        x = da[i] if i < len(da) else 0
        y = db[i] if i < len(db) else 0
        if op == "+":
            s = x + y + carry
            cols.append(f"{x}+{y}+{carry}={s}")
            carry = s // 10
        else:  # the borrow is decided after the column's difference is written, not before it
            d = x - y - carry
            cols.append(f"{x}-{y}-{carry}={d}" if d >= 0 else f"{x}-{y}-{carry}={d}+10={d + 10}")
            carry = 1 if d < 0 else 0
    return " ".join(cols)


def _line(expr: str, value: int, spec: ArithSpec) -> str:
    if spec.annotate:
        return f"{expr}=<<{expr}={value}>>{value}"
    if spec.columns:
        work = column_work(expr)
        if work is not None:
            return f"{expr}: {work} ={value}"
    return f"{expr}={value}"


def _one_step(rng: random.Random, spec: ArithSpec, value: int):
    """One operation applied to `value`: (sentence template, template args, computed lines as
    (expr, result) pairs, new value, signature part), or None when the drawn op does not fit."""
    kinds = list(spec.ops) + (["g"] if spec.groups else [])
    kind = rng.choice(kinds)
    top = 10 ** spec.digits  # operands below this
    mtop = 10 ** spec.mul_digits
    if kind == "+":
        x = rng.randrange(1, top)
        new = value + x
        lines, args, sig = [(f"{value}+{x}", new)], {"x": x}, f"+{x}"
        template = rng.choice(_ADD)
    elif kind == "-":
        if value < 2:
            return None
        x = rng.randrange(1, min(value, top))  # 1 <= x < value: the count stays positive
        new = value - x
        lines, args, sig = [(f"{value}-{x}", new)], {"x": x}, f"-{x}"
        template = rng.choice(_SUB)
    elif kind == "*":
        k = rng.randrange(2, max(mtop, 3))
        new = value * k
        lines, args, sig = [(f"{value}*{k}", new)], {"k": k}, f"*{k}"
        template = rng.choice(_MUL)
    elif kind == "/":
        divisors = [k for k in range(2, max(mtop, 3)) if value % k == 0 and value // k >= 1]
        if not divisors:
            return None
        k = rng.choice(divisors)
        new = value // k
        lines, args, sig = [(f"{value}/{k}", new)], {"k": k}, f"/{k}"
        template = rng.choice(_DIV)
    else:  # "g": k groups of m, added
        k, m = rng.randrange(2, max(mtop, 3)), rng.randrange(2, top)
        new = value + k * m
        lines, args, sig = [(f"{k}*{m}", k * m), (f"{value}+{k * m}", new)], {"k": k, "m": m}, \
            f"+{k}x{m}"
        template = rng.choice(_GROUPS)
    if new > spec.max_value:
        return None
    return template, args, lines, new, sig


def _problem(rng: random.Random, spec: ArithSpec) -> tuple[str, dict] | None:
    """One problem as (signature, {"question", "answer"}), or None if it came out too long."""
    name, pronoun = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    steps = rng.randrange(spec.min_steps, spec.max_steps + 1)
    value = rng.randrange(2, 10 ** spec.digits)
    sentences, lines, signature = [f"{name} has {value} {item}."], [], [str(value)]
    for _ in range(steps):
        for _attempt in range(20):
            step = _one_step(rng, spec, value)
            if step is not None:
                break
        else:
            return None
        template, args, step_lines, value, sig = step
        sentences.append(template.format(P=pronoun.capitalize(), p=pronoun, **args))
        lines.extend(_line(expr, result, spec) for expr, result in step_lines)
        signature.append(sig)
    question = " ".join(sentences + [_QUESTION])
    answer = "\n".join((lines if spec.reasoning else []) + [f"#### {value}"])
    if len(question) + len(answer) > spec.max_chars:
        return None
    return ";".join(signature), {"question": question, "answer": answer}


def generate(spec: ArithSpec, n: int, seed: int, *, split: str | None = None) -> list[dict]:
    """`n` distinct problems (one per computation) drawn from random.Random(seed), as
    [{"question": str, "answer": str}], deterministic in (spec, n, seed, split). With `split`,
    only computations of that split's bucket are kept (see split_of)."""
    if n < 0:
        raise SkdError(f"arith: cannot generate {n} problems", "pass n >= 0")
    if split is not None and split not in SPLITS:
        raise SkdError(f"arith: unknown split '{split}'", f"use one of: {', '.join(SPLITS)}")
    rng = random.Random(f"skd-arith|{seed}|{json.dumps(spec.to_dict(), sort_keys=True)}")

    def draw():
        drawn = _problem(rng, spec)
        return None if drawn is None else (drawn[0], lambda: drawn[1])

    return distinct_problems(draw, n, split, what="arith",
                             widen="ask for fewer problems or widen the spec (more steps, digits or ops)")


def distinct_problems(draw: Callable[[], "tuple[str, Callable[[], dict | None]] | None"], n: int,
                      split: str | None, *, what: str, widen: str) -> list[dict]:
    """Up to `n` problems from repeated `draw()` calls, one per computation signature and, with `split`,
    only those of that split's bucket (split_of). `draw()` returns None (nothing drawn) or (signature,
    finish); finish() is called only for a new signature of the right split and returns the record or
    None (rejected). SkdError naming `what` and the fix `widen` when fewer than `n` are found."""
    seen: set[str] = set()
    out: list[dict] = []
    budget = 200 * n + 1_000  # test buckets keep 1 draw in 20; exhausted specs fail, not spin
    while len(out) < n and budget > 0:
        budget -= 1
        drawn = draw()
        if drawn is None:
            continue
        signature, finish = drawn
        if signature in seen or (split is not None and split_of(signature) != split):
            continue
        record = finish()
        if record is None:
            continue
        seen.add(signature)
        out.append(record)
    if len(out) < n:
        raise SkdError(f"{what}: found only {len(out)} distinct problems of {n} for this spec"
                       + (f" in split '{split}'" if split else ""), widen)
    return out


def make_split(spec: ArithSpec, split: str, n: int | None = None) -> list[dict]:
    """The fixed `split` of `spec`: generate(spec, n, SPLIT_SEEDS[split], split=split), with
    n = SPLIT_SIZES[split] by default. Disjoint from the other splits by computation."""
    if split not in SPLITS:
        raise SkdError(f"arith: unknown split '{split}'", f"use one of: {', '.join(SPLITS)}")
    return generate(spec, SPLIT_SIZES[split] if n is None else n, SPLIT_SEEDS[split], split=split)
