"""`skd demo`: SFT a tiny teacher, distil a tiny student three ways, compare (skd.core.studies.demo).

Public: demo (the click command). Options -> DemoConfig -> run_demo -> one table.
"""
from __future__ import annotations

import click


@click.command("demo")
@click.option("--run-dir", default="runs/demo", show_default=True, type=click.Path(),
              help="Where models, metrics, results.json and curves.png go (reused: cached stages are skipped).")
@click.option("--method", "methods", multiple=True, default=("supervised", "on-policy", "skd"), show_default=True,
              type=click.Choice(["supervised", "on-policy", "skd", "imitkd", "two-stage", "mixed-skd", "gkd"]),
              help="Distillation methods to compare.")
@click.option("--distill-steps", type=click.IntRange(min=1), default=None, help="Override the recipe's steps.")
@click.option("--quick", is_flag=True, help="A seconds-long smoke run (tiny budgets; numbers mean nothing).")
def demo(run_dir, methods, distill_steps, quick):
    """Show what SKD is for, offline on a CPU, in minutes.

    Trains the tiny teacher on the built-in manyway-short task (word problems with many valid
    worked solutions), SFTs a tiny student briefly on 100 of them (a weak start: few valid lines),
    distils it with supervised KD, on-policy KD and SKD on those prompts, then scores every model on the test
    split (graded: share of valid lines; valid: whole valid solutions) and every student as a
    speculative-decoding draft. Every stage is cached in --run-dir: a rerun re-measures nothing.

    \b
    Examples:
      skd demo
      skd demo --run-dir runs/demo2 --method skd --method imitkd
    """
    from rich.console import Console
    from rich.table import Table

    from skd.core.overrides import with_overrides
    from skd.core.studies.demo import QUICK_OVERRIDES, DemoConfig, lead_score, run_demo
    from skd.core.studies.report import start_end_text
    from skd.core.torch_names import fast_compute_dtype

    cfg = with_overrides(DemoConfig(run_dir=run_dir, methods=tuple(methods)), QUICK_OVERRIDES if quick else None,
                         {"distill_steps": distill_steps})
    console = Console(stderr=True)
    native = fast_compute_dtype("cpu") == "bfloat16"
    console.print(f"[dim]training compute: {cfg.dtype} (fp32 weights); this CPU "
                  + ("has native bf16 products" if native else "has no native bf16 products, where bf16 autocast "
                     "is many times slower than fp32") + "[/]")

    def on_event(kind: str, p: dict):
        if kind == "stage":
            console.print(f"[bold]▶ {p['stage']}[/]" + (f" ({p['steps']} steps)" if "steps" in p else ""))
        elif kind == "cached":
            console.print(f"[dim]✓ {p['stage']}: cached at {p['path']}[/]")
        elif kind.endswith(":step") and (p["step"] % 25 == 0 or p["step"] == 1):
            extra = f" · corr {p['correction_rate']:.2f}" if p.get("proposed") else ""
            console.print(f"  {kind.split(':')[0]} step {p['step']} · loss {p['loss']:.4f}{extra} "
                          f"· {p['elapsed']:.0f}s")

    res = run_demo(cfg, on_event=on_event)
    lead = res["lead_metric"]
    second = "valid" if "valid" in res["init"] else "accuracy"   # whole valid solutions, or exact match
    table = Table(title=f"skd demo · task {cfg.task} · {cfg.limit} distillation prompts · "
                        f"{cfg.eval_examples} test problems")
    for col in ("model", f"{lead} (test)", second, "correction rate start → end", "draft acceptance",
                "draft speedup", "wall time"):
        table.add_column(col, justify="left" if col == "model" else "right")

    def wall(stage: str) -> str:
        return f"{res['timings_s'][stage]:.0f}s" if stage in res["timings_s"] else "cached"

    table.add_row("teacher", f"{lead_score(res['teacher']):.3f}", f"{res['teacher'][second]:.3f}", "-", "-",
                  "1.00x (itself)", wall("teacher"))
    table.add_row("student init", f"{lead_score(res['init']):.3f}", f"{res['init'][second]:.3f}", "-", "-", "-",
                  wall("student_init"))
    for m, r in res["methods"].items():
        corr = (start_end_text(r["correction_rate_start"], r["correction_rate_end"], digits=2, missing="-")
                if m in ("skd", "mixed-skd") else "-")
        table.add_row(m, f"{lead_score(r['test']):.3f}", f"{r['test'][second]:.3f}", corr,
                      f"{r['draft']['acceptance_rate']:.3f}", f"{r['draft']['speedup']:.2f}x", wall(m))
    Console().print(table)
    for line in res["reading"]:
        Console().print(line)
    console.print(f"total {res['timings_s']['total']:.0f}s · {run_dir}/results.json"
                  + (f" · {res['plot']}" if res.get("plot") else ""))
