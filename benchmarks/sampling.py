"""Throughput of the batched SKD sampler against the authors' per-prompt loop and on-policy sampling.

Public: run(teacher, student, *, task, n_prompts, batch_size, k, gamma, max_new_tokens, device,
dtype, seed, batch1_prompts, repeats) -> dict; compare(teacher, student, tokenizer, prompts, *,
batch_size, k, gamma, max_new_tokens, stop_strings, seed, batch1_prompts, repeats, settings)
-> (results, ratios) on models already loaded (skd.benchmarks.peers runs it on its own pair).

Variants, same prompts and settings, in one run:
  skd_batched   — skd.core.sampling.sample, mode skd, B = batch_size (ragged rows, two KV caches);
  released_loop — the released code's procedure, one prompt at a time: a student generate() call
                  drafts gamma tokens from its cropped cache, one teacher forward verifies, the
                  teacher's cache is cropped (skd.benchmarks.released_loop); the loop the target
                  "SKD sampler >= 10x the batch-1 loop" is about;
  skd_batch1    — a stricter baseline: our own sampler at B = 1 (the same per-prompt procedure
                  without generate()'s per-call cost);
  student_only  — on-policy sampling (mode student) at B = batch_size: the cost floor of sampling;
  skd_batched_auto — skd_batched with skd's default draft length (`gamma="auto"`) where the others
                  use the fixed `gamma`; only when the teacher's bonus token is discarded (the
                  default), where every token is a student proposal put to the top-K test and so
                  follows the same law whatever the draft length (tests/test_gamma.py): the same
                  sampling at another cost.
Every variant runs `repeats` times, interleaved (so background load hits them alike); the median
time counts. Reports generated tokens/s of each, the share of its wall time spent inside model
forwards (skd.core.timing.ForwardClock; generate()'s forwards included), the SKD variants'
acceptance rates (drafted tokens kept: the procedures must sample alike), and the ratios.
"""
from __future__ import annotations

import statistics

import torch

from skd.benchmarks.common import load_model_and_tokenizer, task_prompts, timed
from skd.core.environment import env_info
from skd.core.sampling import SampleConfig, sample
from skd.core.timing import ForwardClock


def run(teacher: str, student: str, *, task: str = "arith", n_prompts: int = 32, batch_size: int = 32, k: int = 25,
        gamma: int = 5, max_new_tokens: int = 64, device: str = "cpu", dtype: str = "float32", seed: int = 20,
        batch1_prompts: int | None = None, repeats: int = 3) -> dict:
    dev = torch.device(device)
    t_model, tok = load_model_and_tokenizer(teacher, device, dtype)
    s_model, _ = load_model_and_tokenizer(student, device, dtype)
    prompts, task_obj = task_prompts(task, tok, n_prompts, seed=seed)
    results, ratios = compare(t_model, s_model, tok, prompts, batch_size=batch_size, k=k, gamma=gamma,
                              max_new_tokens=max_new_tokens, stop_strings=tuple(task_obj.stop_strings), seed=seed,
                              batch1_prompts=batch1_prompts, repeats=repeats)
    return {"bench": "sampling", "env": env_info(dev),
            "config": {"teacher": teacher, "student": student, "task": task, "n_prompts": len(prompts),
                       "batch_size": batch_size, "k": k, "gamma": gamma, "max_new_tokens": max_new_tokens,
                       "dtype": dtype, "seed": seed, "repeats": repeats,
                       "batch1_prompts": results["released_loop"]["prompts"]},
            "results": results, "ratios": ratios}


def compare(t_model, s_model, tok, prompts: list[list[int]], *, batch_size: int, k: int, gamma: int,
            max_new_tokens: int, stop_strings: tuple[str, ...] = (), seed: int = 20,
            batch1_prompts: int | None = None, repeats: int = 3, settings: dict | None = None) -> tuple[dict, dict]:
    """The four variants on loaded models, interleaved `repeats` times: (results per variant, ratios).

    `settings`: further SampleConfig fields for every variant (temperatures, top-p); the defaults are
    skd's (the paper's)."""
    from skd.benchmarks.released_loop import released_loop_sample

    dev = next(t_model.parameters()).device
    V = len(tok)
    base = dict(k=k, gamma=gamma, max_new_tokens=max_new_tokens, stop_strings=tuple(stop_strings),
                keep_teacher_logits=True, **(settings or {}))

    def go(mode, ps, bs, **over):
        cfg = SampleConfig(mode=mode, **{**base, **over})
        sg, tg = torch.Generator(device=dev).manual_seed(seed), torch.Generator(device=dev).manual_seed(seed + 1)
        n = proposed = accepted = 0
        for i in range(0, len(ps), bs):
            out = sample(t_model, s_model, ps[i: i + bs], cfg, student_generator=sg, teacher_generator=tg,
                         tokenizer=tok, vocab_size=V)
            n, proposed, accepted = n + out.generated, proposed + out.proposed, accepted + out.accepted
        return n, (accepted / proposed if proposed else None)

    def released(ps):
        _, st = released_loop_sample(t_model, s_model, ps, SampleConfig(mode="skd", **base), tokenizer=tok,
                                     vocab_size=V, seed=seed)
        return st["generated"], st["accepted"] / st["proposed"] if st["proposed"] else None

    go("skd", prompts[:batch_size], batch_size)  # warm-up
    released(prompts[:1])
    ps1 = prompts[: batch1_prompts or len(prompts)]
    variants = {"skd_batched": (lambda: go("skd", prompts, batch_size), len(prompts), batch_size),
                "released_loop": (lambda: released(ps1), len(ps1), 1),
                "skd_batch1": (lambda: go("skd", ps1, 1), len(ps1), 1),
                "student_only": (lambda: go("student", prompts, batch_size), len(prompts), batch_size)}
    if gamma != "auto" and not base.get("keep_bonus", False):
        variants["skd_batched_auto"] = (lambda: go("skd", prompts, batch_size, gamma="auto"), len(prompts),
                                        batch_size)
    runs = {name: [] for name in variants}
    shares = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (fn, _, _) in variants.items():
            with ForwardClock(t_model, s_model) as fwd:   # model forwards, synced, inside the timed call
                runs[name].append(timed(fn, dev))
            shares[name].append(fwd.seconds / max(runs[name][-1][1], 1e-12))
    results = {}
    for name, (_, n_p, bs) in variants.items():
        secs = statistics.median(x[1] for x in runs[name])
        n, acc = runs[name][0][0]   # the same seeds every repeat: the same tokens
        results[name] = {"prompts": n_p, "batch_size": bs, "tokens": n, "seconds": secs, "tokens_per_s": n / secs,
                         "acceptance_rate": acc, "seconds_each": [x[1] for x in runs[name]],
                         "forward_share": statistics.median(shares[name])}
    r = results
    ratios = {"skd_batched_over_released_loop": r["skd_batched"]["tokens_per_s"] / r["released_loop"]["tokens_per_s"],
              "skd_batched_over_batch1": r["skd_batched"]["tokens_per_s"] / r["skd_batch1"]["tokens_per_s"],
              "skd_batched_over_student_only": r["skd_batched"]["tokens_per_s"] / r["student_only"]["tokens_per_s"]}
    if "skd_batched_auto" in r:
        ratios["skd_batched_auto_over_released_loop"] = (r["skd_batched_auto"]["tokens_per_s"]
                                                         / r["released_loop"]["tokens_per_s"])
    return results, ratios
