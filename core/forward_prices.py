"""What a forward costs on this machine, measured: the teacher prices `--gamma auto` plans with under
`--teacher-prices measure`, and the forward costs the peers bench builds the SKD step's floor on.

Public: forward_costs(teacher, student,
prompt_rows, *, vocab_size, q_max, student_q_max, repeats, sweeps, pad_id) -> dict; prices_from_costs(costs) ->
tuple; measure_teacher_prices(teacher, student, prompt_rows, *, vocab_size, gamma_max, pad_id) ->
(prices, costs).

Why: `--gamma auto` chooses each round's draft length from the acceptance so far and the price of
a teacher pass in one-position student forwards. The default price is the ratio of the two models'
weight bytes, the same at every pass width: right where a forward of a few positions costs what
reading the weights costs (a GPU at small widths), wrong on a CPU, where a pass over 2-4 positions
costs clearly more than one. Measured prices are taken once, before the first step, on the run's
own prompts, then fixed: the sampler stays deterministic given them, and a resumed run reads them
back from its checkpoint instead of measuring again (a fresh measurement would differ and change
every later draft length, so the resumed run would not be the run it continues).
"""
from __future__ import annotations

import statistics

import torch

from skd.core.kvcache import KVStream
from skd.core.timing import clock

def forward_costs(teacher, student, prompt_rows: list[list[int]], *, vocab_size: int, q_max: int,
                  student_q_max: int = 1, repeats: int = 3, sweeps: int = 3, pad_id: int = 0) -> dict:
    """Median ms of one KV-cached forward of q new positions per row, over the batch prompt_rows:
    {"student": [ms at q = 1, ..., student_q_max], "teacher": [ms at q = 1, ..., q_max]} (entry q - 1 for
    q positions).

    `sweeps` interleaved passes, alternately in one order of the (model, q) cells and in the reverse,
    so a slow spell of a shared machine spreads over every cell instead of skewing a few. In a pass
    each model prefills the prompts once (not timed); each of its cells then runs one untimed forward
    of q positions and `repeats` timed ones, the cache growing by q per forward as a sampler's does.
    Both models run in eval mode without gradients and go back to their modes after."""
    devices = [next(m.parameters()).device for m in (teacher, student)]
    modes = [m.training for m in (teacher, student)]
    models = {"student": (student, list(range(1, student_q_max + 1))), "teacher": (teacher, list(range(1, q_max + 1)))}
    times: dict[tuple[str, int], list[float]] = {(name, q): [] for name, (_, qs) in models.items() for q in qs}
    try:
        teacher.eval()
        student.eval()
        for sweep in range(sweeps):
            forward = sweep % 2 == 0
            for name in (["student", "teacher"] if forward else ["teacher", "student"]):
                model, qs = models[name]
                stream = KVStream(model, vocab_size)
                stream.prefill(prompt_rows, pad_id, reserve=(repeats + 1) * sum(qs))
                for q in (qs if forward else qs[::-1]):
                    ids = torch.full((len(prompt_rows), q), pad_id, dtype=torch.long, device=stream.device)
                    stream.forward(ids)
                    for _ in range(repeats):
                        t0 = clock(*devices)
                        stream.forward(ids)
                        times[(name, q)].append(clock(*devices) - t0)
    finally:
        for model, was_training in zip((teacher, student), modes):
            model.train(was_training)
    return {name: [1000.0 * statistics.median(times[(name, q)]) for q in qs] for name, (_, qs) in models.items()}


def prices_from_costs(costs: dict) -> tuple[float, ...]:
    """The teacher's price per pass width (entry w - 1: w positions) in one-position student forwards."""
    s1 = costs["student"][0]
    return tuple(t / s1 for t in costs["teacher"])


def measure_teacher_prices(teacher, student, prompt_rows: list[list[int]], *, vocab_size: int, gamma_max: int,
                           pad_id: int = 0, repeats: int = 3, sweeps: int = 3) -> tuple[tuple[float, ...], dict]:
    """(prices, costs) for `--teacher-prices measure`: widths 1..gamma_max + 1, enough for any draft
    `--gamma auto` may choose with or without the bonus token (a pass covers the draft, plus one
    position when the bonus is kept)."""
    costs = forward_costs(teacher, student, prompt_rows, vocab_size=vocab_size, q_max=gamma_max + 1,
                          repeats=repeats, sweeps=sweeps, pad_id=pad_id)
    return prices_from_costs(costs), costs
