"""`skd eval`: score one or more models on a task; predictions.jsonl + metrics.json per model."""
from __future__ import annotations

import click


@click.command("eval")
@click.option("--model", "models", multiple=True, required=True,
              help="Model to score (alias, hub id or folder); repeat to compare several in one table.")
@click.option("--task", default="arith", show_default=True, help="Task from the registry.")
@click.option("--data", type=click.Path(dir_okay=False), default=None, help="Local JSON/JSONL/CSV file.")
@click.option("--field", default=None, help="Field overrides, e.g. 'prompt=question,answer=answer'.")
@click.option("--split", default="test", show_default=True, help="Split to score (hub / built-in data).")
@click.option("--limit", type=int, default=None, help="Score the first N examples after a seeded shuffle.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-new-tokens", type=int, default=None, help="Default: the task's (paper's) budget.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy (the paper).")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=20, show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16", "float64"]), default="auto",
              show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--trust-remote-code", is_flag=True)
@click.option("--output-dir", type=click.Path(), default="runs/eval", show_default=True)
def eval_cmd(models, task, data, field, split, limit, batch_size, max_new_tokens, temperature, top_p, seed,
             dtype, device, trust_remote_code, output_dir):
    """Score models on a task the way the paper does (greedy decoding, the task's metric).

    \b
    Examples:
      skd eval --task gsm8k --model runs/skd-gsm8k/final --model gemma-7b-it
      skd eval --task gsm8k --data ../shared/data/gsm8k/test.jsonl --model smollm2-135m-gguf --limit 50
      skd eval --task arith --model runs/teacher/final --model runs/student/final
    """
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from skd.core import models as model_lib
    from skd.core.errors import SkdError
    from skd.core.evaluation import evaluate_model
    from skd.core.tasks import get_task
    from skd.core.checkpoint import atomic_write_text
    from skd.core.torch_names import parse_device

    if batch_size < 1:
        raise SkdError(f"--batch-size must be >= 1 (got {batch_size})", "pass --batch-size 32")
    if limit is not None and limit <= 0:
        raise SkdError(f"--limit must be > 0 (got {limit})", "pass a positive number of examples")
    if temperature < 0:
        raise SkdError(f"--temperature must be >= 0 (got {temperature})", "0 is greedy")
    out_root = Path(output_dir)
    if out_root.exists() and not out_root.is_dir():
        raise SkdError(f"output directory {out_root} is a file", "pass another --output-dir")
    t = get_task(task)
    examples = t.load(split, data_path=data, fields=field, limit=limit, seed=seed)
    dev = parse_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    console = Console(stderr=True)
    rows = []
    for name in models:
        model = model_lib.load_model(name, dtype=dtype, device=str(dev), trust_remote_code=trust_remote_code)
        tok = model_lib.load_tokenizer(name, trust_remote_code=trust_remote_code)
        with Progress(TextColumn(f"[bold blue]{name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[tps]}"), TimeElapsedColumn(), console=console) as progress:
            pid = progress.add_task(name, total=len(examples), tps="")
            state = {"tokens": 0}
            import time
            t0 = time.perf_counter()

            def on_batch(n, ntok):
                state["tokens"] += ntok
                progress.update(pid, advance=n, tps=f"{state['tokens'] / (time.perf_counter() - t0):.0f} tok/s")

            metrics, preds = evaluate_model(model, tok, t, examples, batch_size=batch_size,
                                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                            seed=seed, on_batch=on_batch)
        sub = out_root / (name.strip("/").replace("/", "__") if len(models) > 1 else "")
        metrics = {"model": name, "task": task, "split": split, **metrics}
        atomic_write_text(sub / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in preds))
        atomic_write_text(sub / "metrics.json", json.dumps(metrics, indent=2))
        rows.append(metrics)
        del model
    keys = [t.metric] + [k for k in ("accuracy", "rougeL", "rouge1", "rouge2", "bleu", "chrf", "comet")
                         if k != t.metric and any(k in r and r[k] is not None for r in rows)]
    table = Table(title=f"{task} · {split} · {len(examples)} examples")
    table.add_column("model")
    for k in keys + ["tokens/s"]:
        table.add_column(k, justify="right")
    for r in rows:
        vals = [r.get(k) for k in keys]
        table.add_row(r["model"], *[f"{v:.4f}" if isinstance(v, float) else str(v) for v in vals],
                      f"{r['tokens_per_s']:.0f}")
    Console().print(table)
    console.print(f"wrote {out_root}/…/predictions.jsonl and metrics.json")
