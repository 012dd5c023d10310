"""GSM8K-style word problems made in code, for benches that must run without the hub or a data folder.

Public: problems(n, *, seed, exclude=()) -> list[Example] (gsm8k-format answers, "#### <number>").
Templates with seeded numbers: the same seed gives the same problems on every machine, a different
seed other ones (`exclude` drops problems already used, so a training set and a measurement set
never share a question). The prompts go through the gsm8k task's template ("Q: ... \\n\\nA:").
"""
from __future__ import annotations

import random

NAMES = ("Ava", "Ben", "Chloe", "Dan", "Ella", "Finn", "Grace", "Hugo", "Iris", "Jack", "Maya", "Omar")


def _apples(r, name):
    a, b, c = r.randint(3, 30), r.randint(2, 6), r.randint(3, 12)
    return (f"{name} has {a} apples and buys {b} bags with {c} apples in each. "
            f"How many apples does {name} have now?",
            f"{b} bags hold {b}*{c}={b * c} apples.\n{a}+{b * c}={a + b * c}", a + b * c)


def _bakery(r, name):
    b, c = r.randint(5, 40), r.randint(2, 7)
    a = b + r.randint(3, 25)
    return (f"A bakery bakes {a} loaves a day and sells {b} of them. The rest go to a shelter. "
            f"How many loaves does the shelter get in {c} days?",
            f"Each day {a}-{b}={a - b} loaves are left.\n{a - b}*{c}={(a - b) * c}", (a - b) * c)


def _pages(r, name):
    a = r.randint(5, 30)
    b = 3 * a + r.randint(10, 200)
    return (f"{name} reads {a} pages on Monday and twice as many on Tuesday. The book has {b} pages. "
            "How many pages are left to read?",
            f"Tuesday: 2*{a}={2 * a} pages, so {a}+{2 * a}={3 * a} in all.\n{b}-{3 * a}={b - 3 * a}", b - 3 * a)


def _train(r, name):
    a, b, c, d = r.randint(20, 90), r.randint(2, 5), r.randint(20, 90), r.randint(1, 4)
    return (f"A train runs at {a} miles per hour for {b} hours, then at {c} miles per hour for {d} hours. "
            "How many miles does it travel?",
            f"{a}*{b}={a * b} and {c}*{d}={c * d}.\n{a * b}+{c * d}={a * b + c * d}", a * b + c * d)


def _savings(r, name):
    a, b, d = r.randint(10, 30), r.randint(10, 40), r.randint(2, 8)
    c = r.randint(20, a * b - 10)
    return (f"{name} earns ${a} an hour and works {b} hours a week. Rent is ${c} a week. "
            f"How much money does {name} save in {d} weeks?",
            f"Pay: {a}*{b}={a * b} a week, {a * b}-{c}={a * b - c} saved.\n{a * b - c}*{d}={(a * b - c) * d}",
            (a * b - c) * d)


def _pencils(r, name):
    b, c = r.randint(5, 20), r.randint(2, 6)
    a = b + r.randint(4, 20)
    return (f"A class has {a} students and {b} of them are boys. Each girl brings {c} pencils. "
            "How many pencils do the girls bring?",
            f"There are {a}-{b}={a - b} girls.\n{a - b}*{c}={(a - b) * c}", (a - b) * c)


def _legs(r, name):
    a, b = r.randint(2, 30), r.randint(2, 40)
    return (f"A farm has {a} cows and {b} chickens. How many legs do the animals have in total?",
            f"Cows: 4*{a}={4 * a}, chickens: 2*{b}={2 * b}.\n{4 * a}+{2 * b}={4 * a + 2 * b}", 4 * a + 2 * b)


def _change(r, name):
    a, b, c = r.randint(2, 6), r.randint(2, 9), r.randint(1, 5)
    cost = a * b + c
    d = next(x for x in (10, 20, 50, 100) if x > cost)
    return (f"{name} buys {a} notebooks at ${b} each and a pen for ${c}, and pays with a ${d} bill. "
            f"How much change does {name} get?",
            f"Cost: {a}*{b}+{c}={cost}.\n{d}-{cost}={d - cost}", d - cost)


TEMPLATES = (_apples, _bakery, _pages, _train, _savings, _pencils, _legs, _change)


def problems(n: int, *, seed: int, exclude=()):
    """n distinct problems (skd.core.tasks.Example, gsm8k format), cycling through the templates; none has
    the question of an example in `exclude`."""
    from skd.core.tasks import Example

    r = random.Random(seed)
    seen = {e.prompt_text for e in exclude}
    out = []
    while len(out) < n:
        make = TEMPLATES[len(out) % len(TEMPLATES)]
        question, steps, answer = make(r, r.choice(NAMES))
        if question in seen:
            continue
        seen.add(question)
        out.append(Example(prompt_text=question, response=f"{steps}\n#### {answer}", reference=str(answer),
                           meta={"source": f"skd.benchmarks.peer_prompts seed {seed}",
                                 "template": make.__name__.lstrip("_")}))
    return out
