"""Steadiness of a long training run: resident memory must stay flat once the run has warmed up.

Public: run(steps=1000, *, method, batch_size, max_new_tokens, warmup, save_every, eval_every,
threads, seed, output_dir) -> dict; rss_bytes() -> int.

A tiny-model distillation (skd.core.presets.tiny_model teacher 2x64 / student 1x32 on the char
tokenizer, arithmetic prompts) runs `steps` optimizer steps through skd.core.train.train, with
periodic checkpoints and validation, so every code path of a real run is exercised. The resident
set size (RSS, /proc/self/statm) is read after every step; the headline is its growth between
step `warmup` (allocator pools, caches and the first checkpoint are in place by then) and the last
step, which must stay under 5 %. No gc.collect() is forced: what a user's run would hold is measured.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from skd.core.environment import env_info
from skd.core.timing import clock

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process (Linux: the second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _examples(tokenizer, n: int, seed: int):
    from skd.core.data import TokenizedExample

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a, b = (int(x) for x in torch.randint(0, 1000, (2,), generator=g))
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}?"}],
                                               add_generation_prompt=True, tokenize=False)
        answer = f"{a} + {b} = {a + b}\n#### {a + b}"
        out.append(TokenizedExample(tokenizer(prompt)["input_ids"],
                                    tokenizer(answer)["input_ids"] + [tokenizer.eos_token_id]))
    return out


def run(steps: int = 1000, *, method: str = "skd", batch_size: int = 8, max_new_tokens: int = 32,
        warmup: int = 100, save_every: int = 250, eval_every: int = 100, threads: int | None = 1,
        seed: int = 20, output_dir: str | None = None) -> dict:
    """Train `steps` steps and report RSS at step `warmup` and at the end (growth must be < 5 %)."""
    from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
    from skd.core.presets import tiny_model
    from skd.core.tokenizer import build_char_tokenizer
    from skd.core.train import train

    if not 0 < warmup < steps:
        raise ValueError(f"warmup {warmup} must be in (0, steps={steps})")
    if threads is not None:
        torch.set_num_threads(threads)
    tok = build_char_tokenizer()
    V = len(tok)
    teacher = tiny_model("llama", V, seed=seed, hidden=64, layers=2)
    student = tiny_model("llama", V, seed=seed + 1, hidden=32, layers=1)
    train_ex, val_ex = _examples(tok, 512, seed), _examples(tok, 16, seed + 1)

    trace: list[tuple[int, int]] = []          # (step, RSS bytes) after every step

    def on_event(kind: str, payload: dict) -> None:
        if kind == "step":
            trace.append((payload["step"], rss_bytes()))

    tmp = None
    if output_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="skd-steadiness-")
        output_dir = tmp.name
    cfg = RunConfig(model=ModelConfig(), data=DataConfig(val_limit=len(val_ex)),
                    train=TrainConfig(method=method, max_steps=steps, batch_size=batch_size, lr=1e-4,
                                      save_every=save_every, eval_every=eval_every, seed=seed,
                                      output_dir=str(Path(output_dir) / "run"), overwrite=True),
                    sample=SampleConfig(max_new_tokens=max_new_tokens))
    rss_start = rss_bytes()
    t0 = clock(next(student.parameters()).device)
    try:
        summary = train(cfg, on_event=on_event, models=(teacher, student, tok), examples=(train_ex, val_ex))
    finally:
        if tmp is not None:
            tmp.cleanup()
    seconds = clock(next(student.parameters()).device) - t0
    by_step = dict(trace)
    at_warmup, at_end = by_step[warmup], by_step[steps]
    after = [r for s, r in trace if s >= warmup]
    growth = (at_end - at_warmup) / at_warmup
    mib = lambda b: b / 2**20
    return {
        "benchmark": "steadiness",
        "env": env_info(torch.device("cpu")),
        "config": {"steps": steps, "method": method, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                   "warmup": warmup, "save_every": save_every, "eval_every": eval_every, "seed": seed,
                   "teacher": "tiny_model llama 2x64", "student": "tiny_model llama 1x32"},
        "rss_mib": {"before_training": mib(rss_start), "at_warmup": mib(at_warmup), "at_end": mib(at_end),
                    "max_after_warmup": mib(max(after)), "min_after_warmup": mib(min(after))},
        "growth": growth,                          # (end - warmup) / warmup; the bar is < 0.05
        "steady": growth < 0.05,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "final_loss": (summary.get("last") or {}).get("loss"),
        "trace_mib": [(s, round(mib(r), 2)) for s, r in trace[:: max(1, steps // 100)]] + [(steps, round(mib(at_end), 2))],
    }
