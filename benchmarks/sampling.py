"""Throughput of the batched SKD sampler against the authors' per-prompt loop and on-policy sampling.

Public: run(teacher, student, *, task, n_prompts, batch_size, k, gamma, max_new_tokens, device,
dtype, seed) -> dict.

Variants, same prompts and settings, in one run:
  skd_batched   — skd.core.sampling.sample, mode skd, B = batch_size (ragged rows, two KV caches);
  skd_batch1    — the released code's procedure (one prompt at a time: student drafts, teacher
                  verifies, per prompt), reproduced with our own sampler at B = 1;
  student_only  — on-policy sampling (mode student) at B = batch_size: the cost floor of sampling.
Reports generated tokens/s of each and the ratios.
"""
from __future__ import annotations

import torch

from skd.benchmarks.common import env_info, load_model_and_tokenizer, task_prompts, timed
from skd.core.sampling import SampleConfig, sample


def run(teacher: str, student: str, *, task: str = "arith", n_prompts: int = 32, batch_size: int = 32, k: int = 25,
        gamma: int = 5, max_new_tokens: int = 64, device: str = "cpu", dtype: str = "float32", seed: int = 20,
        batch1_prompts: int | None = None) -> dict:
    dev = torch.device(device)
    t_model, tok = load_model_and_tokenizer(teacher, device, dtype)
    s_model, _ = load_model_and_tokenizer(student, device, dtype)
    prompts, task_obj = task_prompts(task, tok, n_prompts, seed=seed)
    V = len(tok)
    base = dict(k=k, gamma=gamma, max_new_tokens=max_new_tokens, stop_strings=tuple(task_obj.stop_strings),
                keep_teacher_logits=True)

    def go(mode, ps, bs):
        cfg = SampleConfig(mode=mode, **base)
        sg, tg = torch.Generator(device=dev).manual_seed(seed), torch.Generator(device=dev).manual_seed(seed + 1)
        n = 0
        for i in range(0, len(ps), bs):
            out = sample(t_model, s_model, ps[i: i + bs], cfg, student_generator=sg, teacher_generator=tg,
                         tokenizer=tok, vocab_size=V)
            n += out.generated
        return n

    go("skd", prompts[:batch_size], batch_size)  # warm-up
    results = {}
    for name, mode, ps, bs in (("skd_batched", "skd", prompts, batch_size),
                               ("student_only", "student", prompts, batch_size),
                               ("skd_batch1", "skd", prompts[: batch1_prompts or len(prompts)], 1)):
        n, secs = timed(lambda: go(mode, ps, bs), dev)
        results[name] = {"prompts": len(ps), "batch_size": bs, "tokens": n, "seconds": secs, "tokens_per_s": n / secs}
    r = results
    ratios = {"skd_batched_over_batch1": r["skd_batched"]["tokens_per_s"] / r["skd_batch1"]["tokens_per_s"],
              "skd_batched_over_student_only": r["skd_batched"]["tokens_per_s"] / r["student_only"]["tokens_per_s"]}
    return {"bench": "sampling", "env": env_info(dev),
            "config": {"teacher": teacher, "student": student, "task": task, "n_prompts": len(prompts),
                       "batch_size": batch_size, "k": k, "gamma": gamma, "max_new_tokens": max_new_tokens,
                       "dtype": dtype, "seed": seed},
            "results": results, "ratios": ratios}
