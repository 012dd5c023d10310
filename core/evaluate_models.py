"""Score one or more models on a task, as `skd eval` does: predictions.jsonl + metrics.json per model.

Public: EvalConfig, evaluate_models(cfg, on_event=None) -> list[dict], metric_columns(task, rows).

Each model is loaded in turn (dtype "auto" through skd.core.config.resolve_dtype), generates greedily
by default (the paper's evaluation, CONTRACT.md §6) and is scored with the task's metric by
skd.core.evaluation.evaluate_model; with several models each gets its own sub-folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from skd.core.config import DTYPES, resolve_dtype
from skd.core.errors import SkdError
from skd.core.metrics import GRADERS
from skd.core.timing import clock

_REPORTED = ("accuracy", "strict_match", "flexible_extract", "partial_credit", "valid", "graded", "rougeL", "rouge1",
             "rouge2", "bleu", "chrf", "comet", "teacher_logprob_per_token", "teacher_top1_agreement")


@dataclass(frozen=True)
class EvalConfig:
    """What `skd eval` scores and how; validated on creation."""

    models: tuple[str, ...] = ()       # aliases, hub ids or folders, scored in turn
    task: str = "arith"
    data: str | None = None            # local JSON/JSONL/CSV file instead of the hub / built-in data
    fields: str | None = None          # "prompt=question,answer=answer" overrides
    split: str = "test"                # split of the hub / built-in data
    limit: int | None = None           # the first N examples after a seeded shuffle (None: all, in order)
    batch_size: int = 32
    max_new_tokens: int | None = None  # None: the task's (paper's) budget
    temperature: float = 0.0           # 0: greedy, as the paper evaluates
    top_p: float = 1.0
    seed: int = 20                     # paper seed: the --limit subset and any sampling
    dtype: str = "auto"                # auto: bf16 on CUDA, fp32 on CPU
    device: str = "auto"               # auto: cuda if available, else cpu
    trust_remote_code: bool = False    # never run hub code unless asked
    output_dir: str = "runs/eval"
    teacher: str | None = None         # also report how this teacher judges each model's own outputs
    grader: str | None = None          # accuracy's answer comparison (metrics.GRADERS); None: the task's

    def __post_init__(self):
        object.__setattr__(self, "models", tuple(self.models))
        checks = [
            (bool(self.models), "no model to score", "pass --model at least once"),
            (self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})", "pass --batch-size 32"),
            (self.limit is None or self.limit > 0, f"--limit must be > 0 (got {self.limit})",
             "pass a positive number of examples"),
            (self.max_new_tokens is None or self.max_new_tokens >= 1,
             f"--max-new-tokens must be >= 1 (got {self.max_new_tokens})", "leave it out for the task's budget"),
            (self.temperature >= 0, f"--temperature must be >= 0 (got {self.temperature})", "0 is greedy"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1] (got {self.top_p})", "1 keeps the whole distribution"),
            (self.dtype in DTYPES, f"unknown dtype {self.dtype!r}", f"use one of: {', '.join(DTYPES)}"),
            (self.grader is None or self.grader in GRADERS, f"unknown grader {self.grader!r}",
             f"use one of: {', '.join(GRADERS)}"),
        ]
        for ok, problem, fix in checks:
            if not ok:
                raise SkdError(problem, fix)


def metric_columns(task, rows: list[dict]) -> list[str]:
    """The metric keys worth a column: the task's headline metric, then the others some row has."""
    return [task.metric] + [k for k in _REPORTED
                            if k != task.metric and any(r.get(k) is not None for r in rows)]


def evaluate_models(cfg: EvalConfig, on_event: Callable[[str, dict], None] | None = None) -> list[dict]:
    """Score every model of `cfg`, writing predictions.jsonl and metrics.json per model; the metrics rows.

    on_event(kind, payload): ("data", {"examples"}) once the examples are read; then per model
    ("model", {"name", "examples"}) before it generates, ("batch", {"name", "prompts", "tokens",
    "tokens_per_s"}) after each generated batch and ("scored", metrics) when its files are written.
    """
    from skd.core import models as model_lib
    from skd.core.checkpoint import atomic_write_text
    from skd.core.evaluation import evaluate_model
    from skd.core.tasks import get_task
    from skd.core.torch_names import parse_device

    emit = on_event or (lambda kind, payload: None)
    out_root = Path(cfg.output_dir)
    if out_root.exists() and not out_root.is_dir():
        raise SkdError(f"output directory {out_root} is a file", "pass another --output-dir")
    task = get_task(cfg.task)
    if cfg.grader is not None and (task.answer_format == "text" or task.manyway_preset is not None):
        raise SkdError(f"--grader compares final answers; task '{cfg.task}' is scored by "
                       f"{'validity' if task.manyway_preset else task.metric}, not by answer accuracy",
                       "drop --grader for this task")
    examples = task.load(cfg.split, data_path=cfg.data, fields=cfg.fields, limit=cfg.limit, seed=cfg.seed)
    emit("data", {"examples": len(examples)})
    dev = parse_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, dev.type)
    judge = None
    if cfg.teacher is not None:
        judge = model_lib.freeze(model_lib.load_model(cfg.teacher, dtype=dtype, device=str(dev),
                                                      trust_remote_code=cfg.trust_remote_code))
    rows = []
    for name in cfg.models:
        model = model_lib.load_model(name, dtype=dtype, device=str(dev), trust_remote_code=cfg.trust_remote_code)
        tok = model_lib.load_tokenizer(name, trust_remote_code=cfg.trust_remote_code)
        emit("model", {"name": name, "examples": len(examples)})
        t0, tokens = clock(dev), 0

        def on_batch(n: int, ntok: int) -> None:
            nonlocal tokens
            tokens += ntok
            emit("batch", {"name": name, "prompts": n, "tokens": tokens,
                           "tokens_per_s": tokens / max(clock(dev) - t0, 1e-9)})

        metrics, preds = evaluate_model(model, tok, task, examples, batch_size=cfg.batch_size,
                                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                        top_p=cfg.top_p, seed=cfg.seed, on_batch=on_batch, teacher=judge,
                                        grader=cfg.grader)
        sub = out_root / (name.strip("/").replace("/", "__") if len(cfg.models) > 1 else "")
        metrics: dict[str, Any] = {"model": name, "task": cfg.task, "split": cfg.split, **metrics}
        atomic_write_text(sub / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in preds))
        atomic_write_text(sub / "metrics.json", json.dumps(metrics, indent=2))
        rows.append(metrics)
        emit("scored", metrics)
        del model
    return rows
