"""Shared pieces of the timing benchmarks: model and prompt loading, timing.

Public: load_model_and_tokenizer(name, device, dtype), task_prompts(task, tokenizer, n, split, seed,
data) -> (prompt ids, task), timed(fn, device) -> (result, seconds).
The environment record stored with every result is skd.core.environment.env_info; plots are
written with skd.core.studies.report.save_plot.
"""
from __future__ import annotations

import time
from typing import Callable

import torch


def load_model_and_tokenizer(name: str, device: str = "cpu", dtype: str = "float32"):
    from skd.core import models

    model = models.load_model(name, dtype=dtype, device=device)
    model.eval()
    model.requires_grad_(False)
    return model, models.load_tokenizer(name)


def task_prompts(task_name: str, tokenizer, n: int, split: str = "test", seed: int = 20,
                 data: str | None = None) -> tuple[list[list[int]], object]:
    """Prompt token ids of n examples of a task, rendered through the chat template."""
    from skd.core.tasks import get_task
    from skd.core.data import tokenize_examples

    task = get_task(task_name)
    examples = task.load(split, data_path=data, limit=n, seed=seed)
    return [t.prompt_ids for t in tokenize_examples(examples, tokenizer, task.render_prompt)], task


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """fn() and its wall seconds (CUDA: synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0
