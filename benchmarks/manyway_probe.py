"""Calibration probe for core/manyway.py (no model is trained): per preset, how many valid
solutions a problem has, the entropy of the answer distribution, the character lengths, and at how
many answer characters more than one next character is valid (where a teacher's soft target
carries more than the reference; 0% on arith).

Public: probe(preset, n) -> dict, main(). Run: python -m skd.benchmarks.manyway_probe [n [preset ...]]
(default n = 2000: the first n problems of each preset's train split, every preset; seconds per preset).
The valid next lines are enumerated here by a second, independent reading of the rules, and its
solution counts are checked against manyway.count_solutions.
"""
from __future__ import annotations

import math
import statistics
import sys
from collections import Counter

from skd.core import manyway


def _moves(state: tuple, columns: bool) -> list[tuple[str, tuple]]:
    """(line text, next state) for every valid line; state = sorted (sign, value...) items."""
    out, items = [], list(state)

    def without(*idx: int) -> list:
        return [x for i, x in enumerate(items) if i not in idx]

    def line(a: int, op: str, b: int) -> str:
        return manyway.format_line(a, op, b, columns)

    for i, x in enumerate(items):
        if x[0] == "*":
            for a, b in {(x[1], x[2]), (x[2], x[1])}:
                out.append((line(a, "*", b), tuple(sorted(without(i) + [("+", a * b)]))))
        for j in range(i + 1, len(items)):
            y = items[j]
            if x[0] == y[0] != "*":
                for a, b in {(x[1], y[1]), (y[1], x[1])}:
                    out.append((line(a, "+", b), tuple(sorted(without(i, j) + [(x[0], a + b)]))))
            for p, q in ((x, y), (y, x)):
                if (p[0], q[0]) == ("+", "-") and p[1] >= q[1]:
                    out.append((line(p[1], "-", q[1]),
                                tuple(sorted(without(i, j) + [("+", p[1] - q[1])]))))
    return out


def _next(states: frozenset, columns: bool) -> dict[str, frozenset]:
    nxt: dict[str, set] = {}
    for state in states:
        for text, after in _moves(state, columns):
            nxt.setdefault(text, set()).add(after)
    return {text: frozenset(s) for text, s in nxt.items()}


def _count(states: frozenset, columns: bool) -> int:
    nxt = _next(states, columns)
    return sum(_count(s, columns) for s in nxt.values()) if nxt else 1


def _start(p: manyway.Problem) -> frozenset:
    items = [("+", v) for v in p.gains] + [("-", v) for v in p.losses] + [("*", *g) for g in p.groups]
    return frozenset([tuple(sorted(items))])


def _branching(p: manyway.Problem, answer: str, columns: bool) -> tuple[int, int, list[int]]:
    """(answer chars, chars with > 1 valid next char, the number of valid next chars there),
    walking the drawn answer: at each char, the valid next lines sharing the line's prefix."""
    states, chars, branched, widths = _start(p), 0, 0, []
    for row in answer.split("\n"):
        nxt = _next(states, columns)
        options = list(nxt) or [row]  # the "#### n" line: nothing left to choose
        for i in range(len(row) + 1):  # the + 1: the newline that ends the row
            ahead = {(o + "\n")[i] for o in options if o[:i] == row[:i]}
            chars += 1
            if len(ahead) > 1:
                branched += 1
                widths.append(len(ahead))
        states = nxt.get(row, states)
    return chars, branched, widths


def _quantiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    at = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {"mean": statistics.fmean(xs), "min": xs[0], "p50": at(0.5), "p90": at(0.9), "max": xs[-1]}


def probe(preset: str, n: int) -> dict:
    """Statistics of the first `n` train problems of `preset`."""
    spec = manyway.get_preset(preset)
    rows = manyway.make_split(spec, "train", n)
    problems = [manyway.parse_question(r["question"]) for r in rows]
    counts = [manyway.count_solutions(p) for p in problems]
    checked = [(c, p) for c, p in zip(counts, problems) if c <= 2_000]  # the slow second count
    assert all(_count(_start(p), spec.columns) == c for c, p in checked)
    bits = [manyway.solution_entropy(p, spec.commute) for p in problems]
    walks = [_branching(p, r["answer"], spec.columns) for p, r in zip(problems, rows)]
    return {
        "preset": preset, "n": n, "counts_checked": len(checked),
        "terms": dict(sorted(Counter(len(p.gains) + len(p.groups) + len(p.losses)
                                     for p in problems).items())),
        "with_group": sum(bool(p.groups) for p in problems) / n,
        "with_loss": sum(bool(p.losses) for p in problems) / n,
        "lines": _quantiles([p.needed_lines for p in problems]),
        "solutions": _quantiles(counts),
        "solutions_geomean": 2 ** statistics.fmean(math.log2(c) for c in counts),
        "orders": _quantiles([manyway.count_solutions(p, commute=False) for p in problems]),
        "entropy_bits": _quantiles(bits),
        "entropy_bits_orders_only": _quantiles([manyway.solution_entropy(p, False) for p in problems]),
        "branching_chars": sum(w[1] for w in walks) / sum(w[0] for w in walks),
        "branching_width": statistics.fmean(x for w in walks for x in w[2]),
        "question_chars": _quantiles([len(r["question"]) for r in rows]),
        "answer_chars": _quantiles([len(r["answer"]) for r in rows]),
        "total_chars": _quantiles([len(r["question"]) + len(r["answer"]) for r in rows]),
        "longest_valid": max(len(r["question"]) + manyway.longest_answer(p, spec.columns)
                             for p, r in zip(problems, rows)),
        "longest_valid_answer": max(manyway.longest_answer(p, spec.columns) for p in problems),
        "all_answers_valid": manyway.score([r["answer"] for r in rows], rows)["valid"],
    }


def _fmt(q: dict) -> str:
    return (f"mean {q['mean']:.1f}, median {q['p50']:.4g}, p90 {q['p90']:.4g}, "
            f"min {q['min']:.4g}, max {q['max']:.4g}")


def main() -> None:
    """Print the probe for every preset, or for the presets named after n."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for preset in sys.argv[2:] or manyway.PRESETS:
        r = probe(preset, n)
        print(f"## {preset} (n={n}; second count agreed on {r['counts_checked']})")
        print(f"terms per problem: {r['terms']}; with a group {r['with_group']:.0%}, "
              f"with a loss {r['with_loss']:.0%}")
        print(f"computation lines: {_fmt(r['lines'])}")
        print(f"valid solutions: {_fmt(r['solutions'])}; geometric mean {r['solutions_geomean']:.1f}")
        print(f"orders (operand order within a line aside): {_fmt(r['orders'])}")
        print(f"entropy (bits) of the answer distribution: {_fmt(r['entropy_bits'])}")
        print(f"  orders only: {_fmt(r['entropy_bits_orders_only'])}")
        print(f"answer chars with > 1 valid next char: {r['branching_chars']:.1%} "
              f"(mean {r['branching_width']:.2f} valid chars there)")
        print(f"question chars: {_fmt(r['question_chars'])}")
        print(f"answer chars: {_fmt(r['answer_chars'])}")
        print(f"question+answer chars: {_fmt(r['total_chars'])}")
        print(f"question + longest valid answer: max {r['longest_valid']} (longest valid answer "
              f"alone {r['longest_valid_answer']})")
        print(f"generated answers valid: {r['all_answers_valid']:.0%}")
        print()


if __name__ == "__main__":
    main()
