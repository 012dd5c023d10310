"""How much of a study's seed-to-seed spread comes from its test set: every student of a `skd bench
reproduce` record scored problem by problem, and each method's variance over seeds split in two.

Public: per_problem_scores(model, tokenizer, task, examples, *, max_new_tokens, batch_size) -> list[float];
split_variance(scores) -> dict; run(record_path, *, eval_examples, key) -> dict.
Run: python -m skd.benchmarks.eval_noise RECORD.json OUT.json [--eval-examples N] [--threads T]

Why: a study reports each method's mean and std over training seeds of a score averaged over n test
problems. A student's score on one problem is all-or-little, so part of that std can be which problems
each seed's model happens to get right rather than how good the model is. With S[s, p] the score of
seed s on problem p (one score a cell, the problems the same for every seed), the variance over seeds
of the n-problem mean estimates sigma_model^2 + sigma_sp^2 / n, where sigma_sp^2 is the variance of
the seed-by-problem residual S[s, p] - S[s, .] - S[., p] + S[., .] (the two-way layout without
replication): sigma_eval = sqrt(sigma_sp^2 / n) is the part the finite test set contributes, and
sigma_model what more problems would leave.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def per_problem_scores(model, tokenizer, task, examples, *, max_new_tokens: int, batch_size: int = 64,
                       key: str = "graded") -> list[float]:
    """Greedy outputs of `model` on `examples` (as the studies decode them), each scored on its own with
    the task's metric `key` (manyway: its share of valid lines)."""
    from skd.core.evaluation import evaluate_model

    _, preds = evaluate_model(model, tokenizer, task, examples, batch_size=batch_size, max_new_tokens=max_new_tokens)
    out = []
    for ex, pred in zip(examples, preds):
        out.append(float(task.score([pred["output"]], [task.score_reference(ex)])[key]))
    return out


def split_variance(scores: list[list[float]]) -> dict:
    """scores[s][p] (seeds x problems, n_s >= 2, n_p >= 2): the variance over seeds of the mean score and
    its two parts (see the module doc)."""
    import torch

    S = torch.tensor(scores, dtype=torch.float64)
    n_s, n_p = S.shape
    m_s, c_p, grand = S.mean(1), S.mean(0), S.mean()
    seed_var = float(m_s.var(unbiased=True))
    resid = S - m_s[:, None] - c_p[None, :] + grand
    sp_var = float((resid ** 2).sum()) / ((n_s - 1) * (n_p - 1))
    eval_var = sp_var / n_p
    return {"seeds": n_s, "problems": n_p, "means": m_s.tolist(), "mean": float(grand),
            "seed_std": seed_var ** 0.5, "eval_std": eval_var ** 0.5,
            "model_std": max(seed_var - eval_var, 0.0) ** 0.5,
            "eval_share_of_seed_variance": eval_var / seed_var if seed_var > 0 else None}


def run(record_path: str, *, eval_examples: int | None = None, key: str = "graded") -> dict:
    """Score every init and run of the reproduce record at `record_path` (their checkpoints must still
    exist) on the first `eval_examples` test problems (default: the record's), problem by problem, and
    split each (cell, method)'s variance over seeds; also SKD minus each baseline, seed by seed."""
    import torch

    from skd.core import models as model_lib
    from skd.core.tasks import get_task

    rec = json.loads(Path(record_path).read_text())
    cfg = rec["config"]
    task = get_task(cfg["task"])
    n = eval_examples or cfg["eval_examples"]
    examples = task.load("test", limit=n, seed=cfg["data_seed"])
    tok = None
    groups: dict[tuple, dict[int, list[float]]] = {}
    entries = [(("init", r["regime"], r["init"], None), r["seed"], r["path"]) for r in rec["inits"]
               if r.get("status") == "ok"]
    entries += [((r["variant"], r["regime"], r["init"], r.get("k")), r["seed"], r["checkpoint"]) for r in rec["runs"]
                if r.get("status") == "ok"]
    for group, seed, path in entries:
        if tok is None:
            tok = model_lib.load_tokenizer(path)
        model = model_lib.load_model(path, dtype="float32").eval()
        with torch.no_grad():
            groups.setdefault(group, {})[seed] = per_problem_scores(model, tok, task, examples,
                                                                    max_new_tokens=cfg["max_new_tokens"], key=key)
        del model
    cells = []
    for (variant, regime, init, k), by_seed in groups.items():
        seeds = sorted(by_seed)
        row = {"variant": variant, "regime": regime, "init": init, "k": k, "seed_list": seeds,
               "per_problem": [by_seed[s] for s in seeds]}
        if len(seeds) >= 2:
            row.update(split_variance(row["per_problem"]))
        cells.append(row)
    return {"record": str(record_path), "task": cfg["task"], "key": key, "eval_examples": len(examples),
            "cells": cells, "paired": _paired(groups)}


def _paired(groups: dict) -> list[dict]:
    """SKD (each K) minus each baseline of its cell, seed by seed, on the same problems."""
    means = {g: {s: statistics.fmean(v) for s, v in by_seed.items()} for g, by_seed in groups.items()}
    out = []
    for (variant, regime, init, k), skd in means.items():
        if not variant.startswith("skd"):
            continue
        for (other, r2, i2, _), base in means.items():
            if (r2, i2) != (regime, init) or other.startswith("skd"):
                continue
            seeds = sorted(set(skd) & set(base))
            if not seeds:
                continue
            sk, bs = [skd[s] for s in seeds], [base[s] for s in seeds]
            diffs = [a - b for a, b in zip(sk, bs)]
            rec = {"skd": variant, "k": k, "baseline": other, "regime": regime, "init": init, "seeds": seeds,
                   "differences": diffs, "mean_difference": statistics.fmean(diffs),
                   "ahead": sum(d > 0 for d in diffs)}
            if len(seeds) >= 2:
                rec.update(std_sum=statistics.stdev(sk) + statistics.stdev(bs),
                           paired_std=statistics.stdev(diffs))
                rec["separated"] = abs(rec["mean_difference"]) > rec["std_sum"]
            out.append(rec)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("record")
    ap.add_argument("output")
    ap.add_argument("--eval-examples", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run(args.record, eval_examples=args.eval_examples)
    Path(args.output).write_text(json.dumps(result, indent=1))
    for c in result["cells"]:
        if "seed_std" in c:
            print(f"{c['regime']}/{c['init']} {c['variant']}: mean {c['mean']:.4f}, seed std {c['seed_std']:.4f}, "
                  f"eval std {c['eval_std']:.4f} ({c['eval_share_of_seed_variance']:.0%} of the variance), "
                  f"model std {c['model_std']:.4f}")
    for p in result["paired"]:
        print(f"{p['skd']} - {p['baseline']}: {p['mean_difference']:+.4f}, ahead in {p['ahead']} of "
              f"{len(p['seeds'])}" + (f", std sum {p['std_sum']:.4f}, paired std {p['paired_std']:.4f}"
                                      if "std_sum" in p else ""))


if __name__ == "__main__":
    main()
