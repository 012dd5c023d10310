"""`skd sft` and `skd distill`: options -> RunConfig -> skd.core.train.train, with a live progress bar.

Every option maps to one config field (OPTION_FIELDS). `--config run.yaml` supplies values too
(nested sections model/data/train/sample, or flat option names); options given on the command
line override the file.
"""
from __future__ import annotations

import os
import sys

import click

# option name -> (config section, field)
OPTION_FIELDS = {
    "teacher": ("model", "teacher"), "student": ("model", "student"), "model": ("model", "student"),
    "dtype": ("model", "dtype"), "teacher_device": ("model", "teacher_device"),
    "student_device": ("model", "student_device"), "trust_remote_code": ("model", "trust_remote_code"),
    "task": ("data", "task"), "data": ("data", "data"), "field": ("data", "fields"), "limit": ("data", "limit"),
    "val_data": ("data", "val_data"), "val_limit": ("data", "val_limit"),
    "method": ("train", "method"), "divergence": ("train", "divergence"), "beta": ("train", "beta"),
    "alpha": ("train", "alpha"), "gkd_lambda": ("train", "gkd_lambda"), "loss_norm": ("train", "loss_norm"),
    "lr": ("train", "lr"), "adam_eps": ("train", "adam_eps"), "weight_decay": ("train", "weight_decay"),
    "warmup_steps": ("train", "warmup_steps"), "grad_clip": ("train", "grad_clip"), "epochs": ("train", "epochs"),
    "max_steps": ("train", "max_steps"), "batch_size": ("train", "batch_size"),
    "micro_batch_size": ("train", "micro_batch_size"), "group_by_length": ("train", "group_by_length"),
    "deterministic": ("train", "deterministic"),
    "eval_every": ("train", "eval_every"),
    "save_every": ("train", "save_every"), "keep_checkpoints": ("train", "keep_checkpoints"),
    "seed": ("train", "seed"), "output_dir": ("train", "output_dir"), "overwrite": ("train", "overwrite"),
    "resume": ("train", "resume"), "fsdp": ("train", "fsdp"), "sample_chunk": ("train", "sample_chunk"),
    "k": ("sample", "k"), "gamma": ("sample", "gamma"), "semantics": ("sample", "semantics"),
    "keep_bonus": ("sample", "keep_bonus"), "student_temperature": ("sample", "student_temperature"),
    "student_top_p": ("sample", "student_top_p"), "teacher_temperature": ("sample", "teacher_temperature"),
    "teacher_top_p": ("sample", "teacher_top_p"), "teacher_top_k": ("sample", "teacher_top_k"),
    "max_new_tokens": ("sample", "max_new_tokens"), "stop": ("sample", "stop_strings"),
}


class _AliasHelp(click.Command):
    """Appends the model aliases to --help (imported lazily: only when help is shown)."""

    def format_epilog(self, ctx, formatter):
        super().format_epilog(ctx, formatter)
        try:
            from skd.core.hub import describe_aliases
            text = describe_aliases()
        except Exception as e:  # help must never crash
            text = f"(aliases unavailable: {e})"
        with formatter.section("Model aliases"):
            for line in text.splitlines():
                formatter.write(f"  {line}\n")


def _common_options(f):
    opts = [
        click.option("--task", default="arith", show_default=True,
                     help="Task from the registry (arith, gsm8k, dialogsum, flores-as-en, ...)."),
        click.option("--data", type=click.Path(dir_okay=False), default=None,
                     help="Local JSON/JSONL/CSV training file instead of the hub dataset."),
        click.option("--field", default=None, help="Field overrides, e.g. 'prompt=question,answer=answer'."),
        click.option("--limit", type=int, default=1000, show_default=True,
                     help="Training examples (the paper's regimes: 1000 and 100)."),
        click.option("--val-data", type=click.Path(dir_okay=False), default=None, help="Local validation file."),
        click.option("--val-limit", type=int, default=64, show_default=True,
                     help="Validation examples scored every --eval-every steps (0: none)."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16", "float64"]),
                     default="auto", show_default=True, help="Weights dtype (auto: bf16 on CUDA, fp32 on CPU)."),
        click.option("--student-device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N."),
        click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off: never run it)."),
        click.option("--lr", type=float, default=1e-5, show_default=True, help="AdamW learning rate (paper 1e-5)."),
        click.option("--adam-eps", type=float, default=1e-6, show_default=True, help="AdamW eps (paper 1e-6)."),
        click.option("--weight-decay", type=float, default=0.0, show_default=True),
        click.option("--warmup-steps", type=int, default=0, show_default=True, help="Linear warm-up (paper: none)."),
        click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Gradient-norm clip (0: off)."),
        click.option("--epochs", type=float, default=3.0, show_default=True, help="Passes over the training set."),
        click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides --epochs)."),
        click.option("--batch-size", type=int, default=8, show_default=True, help="Sequences per optimizer step (the global batch, split across processes)."),
        click.option("--micro-batch-size", type=int, default=None,
                     help="Sequences per forward/backward (gradient accumulation)."),
        click.option("--group-by-length/--no-group-by-length", default=False, show_default=True,
                     help="Batch examples of similar length together (less padding; batches still in random order)."),
        click.option("--deterministic/--no-deterministic", default=False, show_default=True,
                     help="Deterministic kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG, "
                          "no cuDNN autotuning): on a GPU a resumed run then matches an uninterrupted one "
                          "bit for bit (CPU runs are deterministic anyway); slower on a GPU."),
        click.option("--loss-norm", type=click.Choice(["sequence", "token"]), default="sequence", show_default=True,
                     help="sequence: per-sequence token mean, then mean (paper); token: global token mean."),
        click.option("--max-new-tokens", type=int, default=256, show_default=True,
                     help="Response budget (sampling) and truncation of ground-truth responses."),
        click.option("--eval-every", type=int, default=25, show_default=True,
                     help="Validation loss every N steps (0: off)."),
        click.option("--save-every", type=int, default=25, show_default=True, help="Checkpoint every N steps (0: off)."),
        click.option("--keep-checkpoints", type=int, default=2, show_default=True,
                     help="Rolling step checkpoints kept (final is always kept)."),
        click.option("--seed", type=int, default=20, show_default=True, help="Seed (paper: 20)."),
        click.option("--output-dir", type=click.Path(), default=None,
                     help="Run directory (default runs/<method>-<task>)."),
        click.option("--overwrite", is_flag=True, help="Replace another run's checkpoints in --output-dir."),
        click.option("--resume", is_flag=True,
                     help="Continue the run in --output-dir from its latest complete checkpoint (same options)."),
        click.option("--fsdp", is_flag=True,
                     help="Multi-process runs: shard the student's weights, gradients and AdamW state with FSDP, "
                          "one unit per decoder layer, instead of replicating them (DDP); sampling runs through "
                          "the sharded student in lockstep. The teacher is replicated."),
        click.option("--sample-chunk", type=int, default=None,
                     help="Sequences sampled with one seeded generator pair (default: the per-process batch). "
                          "Equal values draw the same sequences at any process count."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="YAML/JSON file of option values; command-line options override it."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _build_config(ctx: click.Context, params: dict, fixed: dict, recipe: dict | None = None):
    """Defaults < `recipe` (a preset's own defaults) < config file < explicit command-line options;
    `fixed` always wins."""
    from click.core import ParameterSource

    from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
    from skd.core.errors import SkdError

    sections = {"model": {}, "data": {}, "train": {}, "sample": {}}
    for name, value in (recipe or {}).items():
        sec, field = OPTION_FIELDS[name]
        sections[sec][field] = value
    file_values: dict = {}
    if params.get("config_file"):
        file_values = _read_config_file(params["config_file"])
    for key, value in file_values.items():
        if key in sections and isinstance(value, dict):
            sections[key].update(value)
            continue
        name = key.replace("-", "_")
        if name not in OPTION_FIELDS:
            raise SkdError(f"unknown key {key!r} in {params['config_file']}",
                           "use option names (e.g. max-steps) or sections model/data/train/sample")
        sec, field = OPTION_FIELDS[name]
        sections[sec][field] = value
    for name, value in params.items():
        if name not in OPTION_FIELDS:
            continue
        src = ctx.get_parameter_source(name)
        sec, field = OPTION_FIELDS[name]
        if src == ParameterSource.COMMANDLINE or field not in sections[sec]:
            sections[sec][field] = value
    for (sec, field), value in fixed.items():
        sections[sec][field] = value
    if "stop_strings" in sections["sample"]:
        sections["sample"]["stop_strings"] = tuple(sections["sample"]["stop_strings"] or ())
    if sections["data"].get("limit") == 0:
        raise SkdError("--limit must be > 0 (got 0)", "pass a positive number of examples, e.g. --limit 1000")
    tr = sections["train"]
    if not tr.get("output_dir"):
        tr["output_dir"] = f"runs/{tr.get('method', 'skd')}-{sections['data'].get('task', 'arith')}"
    return RunConfig(model=ModelConfig(**sections["model"]), data=DataConfig(**sections["data"]),
                     train=TrainConfig(**tr), sample=SampleConfig(**sections["sample"]))


def _read_config_file(path: str) -> dict:
    import json

    from skd.core.errors import SkdError

    text = open(path).read()
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:
        raise SkdError(f"cannot parse {path}: {str(e).splitlines()[0]}", "fix the YAML/JSON syntax") from e
    if not isinstance(data, dict):
        raise SkdError(f"{path} must hold a mapping of option names to values", "see skd distill --help")
    return data


def _run(cfg) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from transformers.utils import logging as hf_logging

    from skd.core.train import TrainingInterrupted, train

    hf_logging.disable_progress_bar()  # transformers' per-load bars would interleave with ours
    # Under torchrun only the first process draws the progress bar and the table.
    main_process = os.environ.get("RANK", "0") in ("", "0")
    console = Console(stderr=True, quiet=not main_process)
    progress = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=False)
    task_id = None

    def on_event(kind: str, p: dict):
        nonlocal task_id
        if kind == "start":  # every input was checked: a failure before this prints only the error line
            console.print(f"[bold]skd[/] {cfg.train.method} · task {cfg.data.task} · student {cfg.model.student}"
                          + (f" · teacher {cfg.model.teacher}" if cfg.train.method not in ("sft", "seqkd") else "")
                          + (f" · {p['world_size']} processes" if p.get("world_size", 1) > 1 else "")
                          + f" → {cfg.train.output_dir}")
            progress.start()
            task_id = progress.add_task(p["method"], total=p["total_steps"], completed=p.get("start_step", 0),
                                        info=f"resumed from {p['resumed_from']}" if p.get("resumed_from") else "")
        elif kind == "step":
            info = f"loss {p['loss']:.4f}"
            if p.get("proposed"):
                info += f" · corr {p['correction_rate']:.2f} · acc {p['acceptance_rate']:.2f}"
            if "val_loss" in p:
                info += f" · val {p['val_loss']:.4f}"
            info += f" · {p['tokens_per_s']:.0f} tok/s"
            progress.update(task_id, completed=p["step"], info=info)

    try:
        summary = train(cfg, on_event=on_event)
    except TrainingInterrupted as e:
        progress.stop()
        console.print(f"[bold yellow]stopped:[/] {e} — continue with the same command and --resume", soft_wrap=True)
        sys.exit(e.exit_code)
    finally:
        progress.stop()  # started by the "start" event: an input error never draws an empty bar
    if not main_process:
        return summary
    last = summary.get("last") or {}
    table = Table(title=f"{cfg.train.method} finished in {summary['wall_time_s']:.1f}s")
    for col in ("steps", "final loss", "val loss", "correction rate", "acceptance", "checkpoint"):
        table.add_column(col)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))
    table.add_row(str(summary["steps"]), fmt(last.get("loss")), fmt(last.get("val_loss")),
                  fmt(last.get("correction_rate")) if last.get("proposed") or last.get("replaced") else "-",
                  fmt(last.get("acceptance_rate")) if last.get("proposed") else "-", summary["final_checkpoint"])
    Console().print(table)
    return summary


@click.command(cls=_AliasHelp)
@click.option("--model", default="tiny-teacher", show_default=True,
              help="Model to fine-tune: alias, hub id or local folder.")
@_common_options
@click.pass_context
def sft(ctx, **params):
    """Fine-tune a model with cross-entropy on a task's responses (SFT; SeqKD with teacher outputs).

    Used to train the teacher (and a task-SFT student initialisation) before distillation.
    `--model tiny-teacher` on an arith task trains with its own recipe unless options say
    otherwise: --limit 50000 --lr 1e-3 --warmup-steps 30 --max-steps 700 --batch-size 32
    --dtype bfloat16 (96.6% test accuracy in ~10 minutes on 2 CPU cores).

    \b
    Examples:
      skd sft --model tiny-teacher --task arith --limit 20000 --epochs 2 --output-dir runs/teacher
      skd sft --model gemma-7b-it --task gsm8k --data gsm8k_train.jsonl --lr 1e-5
    """
    from skd.core.presets import PRESET_SFT_RECIPES

    method = "sft"
    recipe = PRESET_SFT_RECIPES.get(params["model"]) if params["task"].startswith("arith") else None
    if recipe and ctx.get_parameter_source("epochs") == click.core.ParameterSource.COMMANDLINE:
        recipe = {k: v for k, v in recipe.items() if k != "max_steps"}  # --epochs asked for a length
    cfg = _build_config(ctx, params, {("train", "method"): method, ("model", "teacher"): None}, recipe)
    _run(cfg)


@click.command(cls=_AliasHelp)
@click.option("--method", type=click.Choice(["skd", "supervised", "on-policy", "imitkd", "two-stage", "mixed-skd",
                                             "gkd", "seqkd"]), default="skd", show_default=True,
              help="Where training sequences come from (SKD_SPEC section 4).")
@click.option("--student", default="tiny-student", show_default=True, help="Student: alias, hub id or folder.")
@click.option("--teacher", default="tiny-teacher", show_default=True, help="Teacher: alias, hub id or folder.")
@click.option("--teacher-device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--k", type=int, default=25, show_default=True, help="SKD: teacher top-K a student token must be in.")
@click.option("--gamma", type=int, default=5, show_default=True, help="SKD: student draft length per round.")
@click.option("--semantics", type=click.Choice(["paper", "code"]), default="paper", show_default=True,
              help="paper: rank test on the raw teacher; code: as the released code (processed teacher).")
@click.option("--keep-bonus", is_flag=True, help="SKD: keep the teacher's bonus token on full acceptance.")
@click.option("--student-temperature", type=float, default=0.5, show_default=True,
              help="Student drafting temperature (0: greedy).")
@click.option("--student-top-p", type=float, default=0.5, show_default=True)
@click.option("--teacher-temperature", type=float, default=0.2, show_default=True,
              help="Teacher replacement temperature (0: greedy).")
@click.option("--teacher-top-p", type=float, default=0.5, show_default=True)
@click.option("--teacher-top-k", type=int, default=50, show_default=True, help="Only for --semantics code.")
@click.option("--stop", multiple=True, help="Extra stop string (repeatable; default: the task's).")
@click.option("--divergence", type=click.Choice(["fkl", "rkl", "jsd", "tvd", "skew-fkl", "skew-rkl"]),
              default="fkl", show_default=True, help="Token-level divergence, at temperature 1.")
@click.option("--beta", type=float, default=0.5, show_default=True, help="Generalised JSD beta (0 FKL, 1 RKL).")
@click.option("--alpha", type=float, default=0.1, show_default=True, help="Skew of skew-fkl / skew-rkl.")
@click.option("--gkd-lambda", type=float, default=0.5, show_default=True,
              help="gkd: probability of an on-policy batch.")
@_common_options
@click.pass_context
def distill(ctx, **params):
    """Distil a teacher into a student with SKD or one of the paper's baselines.

    \b
    Examples:
      skd distill --method skd --k 25 --student runs/student --teacher runs/teacher/final --task arith
      skd distill --method skd --k 25 --student gemma-2b --teacher gemma-7b-it --task gsm8k
      skd distill --method on-policy --student qwen2.5-0.5b-instruct --teacher qwen2.5-7b-instruct
      skd distill --method skd --output-dir runs/skd --resume          # continue after a stop or crash
      torchrun --nproc-per-node 4 -m skd distill --method skd --batch-size 32   # data-parallel (DDP)

    \b
    Several processes (torchrun / accelerate launch): the global --batch-size is split evenly
    across them; the loss is normalised over the global batch; only the first process writes.
    """
    cfg = _build_config(ctx, params, {})
    _run(cfg)
