"""`skd sft` and `skd distill`: options -> RunConfig -> skd.core.train.train, with a live progress bar.

Public: sft, distill (click commands). Every option is one run setting (skd.core.config.FLAT_KEYS),
its default and range those of the config dataclass; `--config run.yaml` supplies values too (flat
option names, or sections model/data/train/sample), checked like the options of the same name;
options given on the command line override the file. The layering is skd.core.run_options'.
"""
from __future__ import annotations

import os
import sys

import click

from skd.cli.options import AUTO_OR_INT, config_file_values, given_values, setting_option
from skd.cli.threads import set_threads, threads_option
from skd.core.config import (DIVERGENCE_NAMES, DTYPES, LOSS_NORMS, METHODS, SEMANTICS, SPECKD_VERIFICATIONS,
                             SWITCH_DIVERGENCES)
from skd.core.config import REPORT_TO
from skd.core.run_options import SFT_MODEL, distill_run_config, sft_run_config


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
        setting_option("task", help="Task from the registry (arith, gsm8k, dialogsum, flores-as-en, ...)."),
        setting_option("data", type=click.Path(dir_okay=False),
                       help="Local JSON/JSONL/CSV training file instead of the hub dataset."),
        setting_option("field", help="Field overrides, e.g. 'prompt=question,answer=answer'."),
        setting_option("limit", help="Training examples (the paper's regimes: 1000 and 100)."),
        setting_option("data_seed", help="Seed of the data order and of the --limit subset (paper: 20)."),
        setting_option("val_data", type=click.Path(dir_okay=False), help="Local validation file."),
        setting_option("val_limit", help="Validation examples scored every --eval-every steps (0: none)."),
        setting_option("dtype", choices=DTYPES,
                       help="Compute dtype (auto: bf16 on CUDA, fp32 on CPU). With bf16/fp16 the trained model keeps "
                            "fp32 master weights loaded at full precision from what is stored, and computes under "
                            "autocast."),
        setting_option("student_device", help="auto, cpu, cuda, cuda:N."),
        setting_option("trust_remote_code", help="Allow model code from the hub (off: never run it)."),
        setting_option("lr", help="AdamW learning rate (paper 1e-5)."),
        setting_option("adam_beta1", help="AdamW beta1."),
        setting_option("adam_beta2", help="AdamW beta2."),
        setting_option("adam_eps", help="AdamW eps (paper 1e-6)."),
        setting_option("weight_decay"),
        setting_option("warmup_steps", help="Linear warm-up (paper: none)."),
        setting_option("grad_clip", help="Gradient-norm clip (0: off)."),
        setting_option("epochs", help="Passes over the training set."),
        setting_option("max_steps", help="Optimizer steps (overrides --epochs)."),
        setting_option("batch_size", help="Sequences per optimizer step (the global batch, split across processes)."),
        setting_option("micro_batch_size", help="Sequences per forward/backward (gradient accumulation)."),
        setting_option("group_by_length", "--group-by-length/--no-group-by-length",
                       help="Batch examples of similar length together (less padding; batches still in random order)."),
        setting_option("deterministic", "--deterministic/--no-deterministic",
                       help="Deterministic kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG, "
                            "no cuDNN autotuning): on a GPU a resumed run then matches an uninterrupted one "
                            "bit for bit (CPU runs are deterministic anyway); slower on a GPU."),
        setting_option("loss_norm", choices=LOSS_NORMS,
                       help="sequence: per-sequence token mean, then mean (paper); token: global token mean."),
        setting_option("max_new_tokens", help="Response budget (sampling) and truncation of ground-truth responses."),
        setting_option("eval_every", help="Validation loss every N steps (0: off)."),
        setting_option("save_every", help="Checkpoint every N steps (0: off)."),
        setting_option("keep_checkpoints", help="Rolling step checkpoints kept (final is always kept)."),
        setting_option("seed", help="Seed (paper: 20)."),
        setting_option("output_dir", type=click.Path(), show_default=False,
                       help="Run directory (default runs/<method>-<task>)."),
        setting_option("overwrite", help="Replace another run's checkpoints in --output-dir."),
        setting_option("resume", help="Continue the run in --output-dir from its latest complete checkpoint "
                                      "(same options); with no checkpoint there yet, start a fresh run and say so."),
        setting_option("fsdp", help="Multi-process runs: shard the student's weights, gradients and AdamW state with "
                                    "FSDP, one unit per decoder layer, instead of replicating them (DDP); sampling "
                                    "runs through the sharded student in lockstep. The teacher is replicated."),
        setting_option("sample_chunk",
                       help="Sequences sampled with one seeded generator pair (default: the per-process batch). "
                            "Equal values draw the same sequences at any process count."),
        setting_option("lora_r", help="Train LoRA adapters of this rank instead of every student weight (needs "
                                      "skd[peft]); step checkpoints hold the adapters (PEFT format), final/ a merged "
                                      "Hugging Face folder plus final/adapter/."),
        setting_option("lora_alpha", help="LoRA scale: the update is alpha / r * B A."),
        setting_option("lora_dropout", help="Dropout on the adapters' input in the training forward."),
        setting_option("lora_target_modules", default_text="the attention and MLP projections of the architecture "
                                                           "(q/k/v/o, gate/up/down; gpt2: c_attn, c_proj, c_fc; "
                                                           "others: every linear layer but the head)",
                       help="Module names to adapt, repeatable or comma-separated."),
        # Logging and memory: neither changes what is trained.
        setting_option("report_to", choices=REPORT_TO,
                       help="Also send metrics.jsonl's scalars (it stays the source of truth) and the run config to "
                            "TensorBoard (<output-dir>/tensorboard) or W&B (<output-dir>/wandb; offline unless "
                            "WANDB_MODE or WANDB_API_KEY say otherwise). Optional extras: pip install "
                            "'skd[tensorboard]' / 'skd[wandb]'. May change on --resume."),
        setting_option("gradient_checkpointing", "--gradient-checkpointing/--no-gradient-checkpointing",
                       help="Recompute the student's activations during backward instead of keeping them: less "
                            "memory, a slower step, the same loss and gradients. Only the training forward "
                            "checkpoints; sampling keeps its KV cache."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="YAML/JSON file of option values (flat option names, or sections model/data/train/"
                          "sample), checked like the options; command-line options override it."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


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
        if kind == "notice":  # e.g. --resume with no checkpoint yet: a fresh run, said in one line
            console.print(p["message"], soft_wrap=True)
        elif kind == "start":  # every input was checked: a failure before this prints only the error line
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
            if "switch_rate" in p:   # adaswitch: rows handed to the teacher, and the teacher's share of tokens
                info += f" · switched {p['switch_rate']:.2f} · teacher {p['correction_rate']:.2f}"
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
@setting_option("model", default_text=SFT_MODEL, help="Model to fine-tune: alias, hub id or local folder.")
@_common_options
@threads_option
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
    set_threads(params.pop("threads"))   # a process setting, not a run setting: never in the RunConfig
    _run(sft_run_config(given_values(params), config_file_values(ctx, params["config_file"])))


@click.command(cls=_AliasHelp)
@setting_option("method", choices=tuple(m for m in METHODS if m != "sft"),
                help="Where training sequences come from: skd (interleaved), supervised, on-policy, imitkd, "
                     "two-stage, mixed-skd, gkd, speckd (on-policy samples, loss only on tokens inside the "
                     "teacher's top --k), adaswitch (the student, then the teacher once their divergence jumps), "
                     "seqkd.")
@setting_option("student", help="Student: alias, hub id or folder.")
@setting_option("teacher", help="Teacher: alias, hub id or folder.")
@setting_option("teacher_device", help="auto, cpu, cuda, cuda:N (cpu: the teacher's forwards run on the CPU beside a "
                                        "GPU student; every verification and teacher pass then crosses the bus).")
@setting_option("teacher_dtype", choices=DTYPES, default_text="--dtype",
                help="The teacher's weights dtype, independent of the student's (e.g. a bf16 7B teacher beside an "
                     "fp32-master 2B student on one GPU).")
@setting_option("k", help="SKD: teacher top-K a student token must be in.")
@setting_option("gamma", type=AUTO_OR_INT,
                help="SKD: student draft length per round: auto (each round's from the acceptance so far and the "
                     "teacher/student size ratio, the length with the most tokens per unit of cost; 1 for a weak "
                     "student) or a fixed N (the released code: 5). The sequences' distribution does not depend "
                     "on it; the exact tokens of a seed do.")
@setting_option("gamma_max", help="SKD with --gamma auto: the longest draft.")
@setting_option("teacher_prices", type=click.STRING, default_text="the teacher / student weight-byte ratio",
                help="SKD with --gamma auto: the price of a teacher pass over 1, 2, ... positions in one-position "
                     "student forwards, comma-separated (longer passes take the last), or measure: timed on "
                     "this machine before the first step (a few seconds to a minute) and kept in the "
                     "checkpoints, so --resume reuses them. Measured prices differ between machines and runs, "
                     "and so do the draft lengths and the exact tokens of a seed.")
@setting_option("teacher_led", "--teacher-led/--no-teacher-led", default_text="teacher-led",
                help="SKD with --gamma auto: a round may be teacher-led where that costs less (a weak student): the "
                     "teacher writes up to --gamma-max tokens ahead, the student's proposals at those positions are "
                     "tested in one pass, and the round keeps them up to the first kept proposal that differs. Same "
                     "token law as student-led rounds; other exact tokens of a seed. --no-teacher-led: student-led "
                     "rounds only.")
@setting_option("staged_verify", "--staged-verify/--no-staged-verify", default_text="staged-verify",
                help="SKD and speculative decoding: where it costs less (a large teacher on a CPU, a draft kept "
                     "rarely), a verification scores every row's first drafted token first and the later ones only "
                     "for the rows that kept it. Same logits at every tested position. --no-staged-verify: one pass.")
@setting_option("semantics", choices=SEMANTICS,
                help="paper: rank test on the raw teacher; code: as the released code (processed teacher).")
@setting_option("keep_bonus", help="SKD: keep the teacher's bonus token on full acceptance.")
@setting_option("student_temperature", help="Student drafting temperature (0: greedy).")
@setting_option("student_top_p")
@setting_option("teacher_temperature", help="Teacher replacement temperature (0: greedy).")
@setting_option("teacher_top_p")
@setting_option("teacher_top_k", help="Only for --semantics code.")
@setting_option("stop", help="Stop string added to the task's own (repeatable); with --no-task-stops, the only ones. "
                             "run_config.json lists the resolved set under resolved.stop_strings.")
@setting_option("task_stops", "--task-stops/--no-task-stops", default_text="task-stops",
                help="Also stop at the task's own stop strings (--no-task-stops: only at --stop, or at EOS and "
                     "--max-new-tokens when none is given).")
@setting_option("divergence", choices=DIVERGENCE_NAMES, default_text="fkl; jsd for --method gkd",
                help="Token-level divergence, at --loss-temperature (default 1; p teacher, q student). jsd: the "
                     "generalised JSD of GKD as TRL computes it, beta KL(p||m) + (1-beta) KL(q||m) with m = beta p + (1-beta) q; "
                     "jsd-normalized: that divided by beta (1-beta), which tends to FKL / RKL at the ends. "
                     "--method gkd takes jsd (its default) or jsd-normalized only.")
@setting_option("beta", help="Generalised JSD beta (0 FKL, 1 RKL).")
@setting_option("alpha", help="Skew of skew-fkl / skew-rkl.")
@setting_option("gkd_lambda", help="gkd: probability of an on-policy batch.")
@setting_option("speckd_verification", choices=SPECKD_VERIFICATIONS,
                help="speckd: the student proposal tested against the teacher's top --k at each position: the "
                     "token it sampled (sampled: SpecKD's non-greedy verification) or its argmax (greedy).")
@setting_option("rejected_weight", help="speckd: loss weight of a token that fails the test (0: masked out, "
                                        "SpecKD's default; 1: on-policy KD).")
@setting_option("switch_threshold", help="adaswitch: a row switches to the teacher at the first position whose "
                                         "divergence is >= this times its mean over the last --switch-window "
                                         "positions (0: the teacher from the second token; inf: never).")
@setting_option("switch_window", help="adaswitch: positions in the running mean of the divergence.")
@setting_option("switch_divergence", choices=SWITCH_DIVERGENCES,
                help="adaswitch: divergence of the switch test, on the raw logits (jsd at beta 0.5).")
@setting_option("teacher_topk", default_text="dense, all V logits",
                help="Keep only the teacher's top-N log-probabilities per position plus one tail bucket holding "
                     "the rest of its mass (the scheme of TRL's server-side distillation, verl and NeMo RL); the "
                     "student's distribution is collapsed onto the same N+1 buckets and the divergence taken "
                     "there. Stored teacher targets then cost N+1 values and N ids per position instead of V. "
                     "N = V is exactly the dense loss; N > V is refused. The validation loss stays dense.")
@setting_option("loss_temperature",
                help="Temperature T of the divergence only (sampling has its own): teacher and student logits "
                     "are divided by T and the loss is multiplied by T^2 (Hinton et al. 2015), which keeps "
                     "gradient magnitudes comparable across T. 1 is the plain divergence; the validation loss "
                     "uses the same T.")
@_common_options
@threads_option
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
    set_threads(params.pop("threads"))   # a process setting, not a run setting: never in the RunConfig
    _run(distill_run_config(given_values(params), config_file_values(ctx, params["config_file"])))
