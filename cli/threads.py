"""`--threads N`: torch's CPU threads for this process (skd sft / distill / eval).

Public: threads_option (the click option, dest `threads`), set_threads(threads).

A process setting, not a run setting: it is not part of RunConfig / EvalConfig, run_config.json or a
--config file, and --resume does not compare it. It can still change results in the last bits: torch
splits a CPU reduction (a sum, a mean) across its threads, so sums come out in another order at
another thread count; CPU runs are bit for bit reproducible at a fixed --threads.
"""
from __future__ import annotations

import click

threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="torch CPU threads of this process (torch.set_num_threads), set before any model loads. Not saved "
         "with the run: CPU sums are split across threads, so bit-identical reruns and resumes on the CPU "
         "need the same --threads.  [default: torch's: OMP_NUM_THREADS if set, else one per physical core]")


def set_threads(threads: int | None) -> None:
    """torch.set_num_threads(threads) unless None (torch's own default stays)."""
    if threads is None:
        return
    import torch  # only when asked: --help stays free of torch

    torch.set_num_threads(threads)
