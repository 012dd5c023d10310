"""Evaluation-time generation: batched greedy decoding against batch-size-1 decoding.

Public: run(model, *, task, n_prompts, batch_size, max_new_tokens, device, dtype, seed) -> dict.
Both variants decode the same prompts with skd.core.evaluation.generate (KV cache, ragged prompts,
stop strings); only the batch size differs. The outputs must be identical (greedy), which is
checked, so the comparison is like for like.
"""
from __future__ import annotations

import torch

from skd.benchmarks.common import load_model_and_tokenizer, task_prompts, timed
from skd.core.environment import env_info
from skd.core.evaluation import generate


def run(model: str, *, task: str = "arith", n_prompts: int = 64, batch_size: int = 32, max_new_tokens: int = 64,
        device: str = "cpu", dtype: str = "float32", seed: int = 20, batch1_prompts: int | None = None) -> dict:
    dev = torch.device(device)
    m, tok = load_model_and_tokenizer(model, device, dtype)
    prompts, task_obj = task_prompts(task, tok, n_prompts, seed=seed)
    stops = tuple(task_obj.eval_stop_strings)
    p1 = prompts[: batch1_prompts or len(prompts)]
    gen = lambda ps, bs: generate(m, tok, ps, batch_size=bs, max_new_tokens=max_new_tokens, stop_strings=stops)
    gen(prompts[:batch_size], batch_size)  # warm-up
    batched, t_b = timed(lambda: gen(prompts, batch_size), dev)
    single, t_1 = timed(lambda: gen(p1, 1), dev)
    n_b, n_1 = sum(map(len, batched)), sum(map(len, single))
    res = {"batched": {"prompts": len(prompts), "batch_size": batch_size, "tokens": n_b, "seconds": t_b,
                       "tokens_per_s": n_b / t_b},
           "batch1": {"prompts": len(p1), "batch_size": 1, "tokens": n_1, "seconds": t_1, "tokens_per_s": n_1 / t_1}}
    return {"bench": "generation", "env": env_info(dev),
            "config": {"model": model, "task": task, "n_prompts": len(prompts), "batch_size": batch_size,
                       "max_new_tokens": max_new_tokens, "dtype": dtype},
            "results": res, "outputs_identical": batched[: len(p1)] == single,
            "ratios": {"batched_over_batch1_tokens_per_s": res["batched"]["tokens_per_s"] / res["batch1"]["tokens_per_s"]}}
