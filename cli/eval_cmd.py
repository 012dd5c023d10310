"""`skd eval`: options -> EvalConfig -> skd.core.evaluate_models.evaluate_models, with progress bars.

Public: eval_cmd (click command `eval`). Defaults and ranges are EvalConfig's; scoring, the model loop
and the files written (predictions.jsonl + metrics.json per model) are the core function's.
"""
from __future__ import annotations

import click

from skd.cli.options import field_option, given_values
from skd.cli.threads import set_threads, threads_option
from skd.core.config import DTYPES
from skd.core.evaluate_models import EvalConfig
from skd.core.metrics import GRADERS


def _option(name: str, *decls: str, **kw):
    return field_option(EvalConfig, name, *decls, **kw)


@click.command("eval")
@_option("models", "--model", required=True,
         help="Model to score (alias, hub id or folder); repeat to compare several in one table.")
@_option("task", help="Task from the registry.")
@_option("data", type=click.Path(dir_okay=False), help="Local JSON/JSONL/CSV file.")
@_option("fields", "--field", help="Field overrides, e.g. 'prompt=question,answer=answer'.")
@_option("split", help="Split to score (hub / built-in data).")
@_option("limit", help="Score the first N examples after a seeded shuffle.")
@_option("batch_size")
@_option("max_new_tokens", help="Default: the task's (paper's) budget.")
@_option("temperature", help="0 = greedy (the paper).")
@_option("top_p")
@_option("seed")
@_option("dtype", choices=DTYPES)
@_option("device")
@_option("trust_remote_code")
@_option("output_dir", type=click.Path())
@_option("teacher", help="Also report how this teacher (same tokenizer) judges each model's own outputs: "
         "its mean log-probability per response token and its top-1 agreement.")
@_option("grader", choices=GRADERS, show_default=False,
         help="How accuracy compares a final answer with the reference: exact (the same value: '#### 5.00' and "
              "'#### $4,200' are 5 and 4200, 41.996 is not 42, every minus sign counts) or paper (the paper's "
              "lenient grader: within a relative 1e-4, and reference/100 or reference*100 count too, so "
              "'#### 0.42' is right for 42).  [default: the task's: exact for gsm8k and arith, paper for the "
              "held-out math sets]")
@threads_option
def eval_cmd(**params):
    """Score models on a task the way the paper does (greedy decoding, the task's metric).

    \b
    GSM8K: three scores of the same outputs.
      accuracy          skd's: the number after the last '####', compared exactly
                        (--grader paper: the paper's lenient grader).
      strict_match      lm-evaluation-harness's gsm8k 'strict-match': the first '#### <number>'.
      flexible_extract  lm-evaluation-harness's gsm8k 'flexible-extract': the last number.
    Compare with a published table that ran lm-evaluation-harness's `gsm8k` task: strict_match
    when it reports strict-match or gives no filter (harness versions before Feb 2024 had only
    that rule), flexible_extract when it says flexible-extract. Only the grading is the
    harness's: skd prompts zero-shot with the paper's 'Q: ... A:' through the chat template,
    the harness 5-shot with 'Question: ... Answer:', so a harness run can still differ.

    \b
    Examples:
      skd eval --task gsm8k --model runs/skd-gsm8k/final --model gemma-7b-it
      skd eval --task gsm8k --data ../shared/data/gsm8k/test.jsonl --model smollm2-135m-gguf --limit 50
      skd eval --task arith --model runs/teacher/final --model runs/student/final
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from skd.core.evaluate_models import evaluate_models, metric_columns
    from skd.core.tasks import get_task

    set_threads(params.pop("threads"))   # before any model loads; a process setting, not in metrics.json
    cfg = EvalConfig(**given_values(params))
    console = Console(stderr=True)
    shown = {"progress": None, "task": None, "examples": 0}

    def on_event(kind: str, p: dict) -> None:
        if kind == "data":
            shown["examples"] = p["examples"]
        elif kind == "model":
            progress = Progress(TextColumn(f"[bold blue]{p['name']}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[tps]}"),
                                TimeElapsedColumn(), console=console)
            progress.start()
            shown["progress"], shown["task"] = progress, progress.add_task(p["name"], total=p["examples"], tps="")
        elif kind == "batch":
            shown["progress"].update(shown["task"], advance=p["prompts"], tps=f"{p['tokens_per_s']:.0f} tok/s")
        elif kind == "scored" and shown["progress"] is not None:
            shown["progress"].stop()
            shown["progress"] = None

    try:
        rows = evaluate_models(cfg, on_event=on_event)
    finally:
        if shown["progress"] is not None:
            shown["progress"].stop()
    keys = metric_columns(get_task(cfg.task), rows)
    table = Table(title=f"{cfg.task} · {cfg.split} · {shown['examples']} examples")
    table.add_column("model")
    for k in keys + ["tokens/s"]:
        table.add_column(k, justify="right")
    for r in rows:
        vals = [r.get(k) for k in keys]
        table.add_row(r["model"], *[f"{v:.4f}" if isinstance(v, float) else str(v) for v in vals],
                      f"{r['tokens_per_s']:.0f}")
    Console().print(table)
    console.print(f"wrote {cfg.output_dir}/…/predictions.jsonl and metrics.json")
