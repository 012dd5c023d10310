"""`skd` command line: a thin click group. Options -> one config -> one core call -> rich output.

Public: main (the click group, entry point `skd`).
User errors (skd.core.errors.SkdError, click usage errors) print one line and exit non-zero;
a traceback only with `skd --debug ...`. Heavy imports (torch, transformers) happen inside the
subcommands so `skd --help` is instant.
"""
from __future__ import annotations

import os
import sys

import click

from skd.cli.bench import bench
from skd.cli.demo_cmd import demo
from skd.cli.eval_cmd import eval_cmd
from skd.cli.study_cmd import real_model, reproduce
from skd.cli.train_cmd import distill, sft


def _versions() -> str:
    from importlib.metadata import version

    import torch
    import transformers

    from skd.core import ops

    return (f"skd {version('skd')}\ntorch {torch.__version__}\ntransformers {transformers.__version__}\n"
            f"ops backend {ops.backend()}")


def _print_version(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    click.echo(_versions())
    ctx.exit()


def _print_error(text: str) -> None:
    """One line on stderr; under torchrun each process names its rank (they may fail differently)."""
    from rich.console import Console
    from rich.markup import escape

    rank = os.environ.get("RANK") if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else None
    prefix = f"[rank {rank}] " if rank is not None else ""
    Console(stderr=True, highlight=False).print(f"{escape(prefix)}[bold red]error:[/] {escape(text)}", markup=True,
                                                soft_wrap=True)


class _Group(click.Group):
    """Turns SkdError into one line on stderr and exit code 2 (traceback only with --debug)."""

    def invoke(self, ctx):
        from skd.core.errors import SkdError

        try:
            return super().invoke(ctx)
        except SkdError as e:
            if ctx.meta.get("skd_debug") or os.environ.get("SKD_DEBUG"):
                raise
            _print_error(str(e))
            sys.exit(2)
        except click.UsageError as e:
            # click's own layout is three lines (usage, hint, error); keep errors to one line.
            if ctx.meta.get("skd_debug") or os.environ.get("SKD_DEBUG"):
                raise
            where = e.ctx.command_path if e.ctx is not None else "skd"
            _print_error(f"{e.format_message()} — see '{where} --help'")
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print skd, torch and transformers versions and the ops backend, then exit.")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def main(ctx, debug: bool):
    """Distil a large language model into a small one with Speculative Knowledge Distillation.

    SKD (Xu et al., ICLR 2025): the student proposes tokens, the teacher replaces those outside
    its top-K, and the student is trained with a token-level divergence on the interleaved
    sequences. All baselines of the paper (supervised KD, on-policy KD, ImitKD, GKD, SeqKD, ...)
    run through the same loop.

    \b
    Examples:
      skd demo
      skd sft --model tiny-teacher --task arith --output-dir runs/teacher
      skd distill --method skd --k 25 --student gemma-2b --teacher gemma-7b-it --task gsm8k
      skd bench kernels
    """
    # Kept on the context (not in os.environ) so one invocation's --debug cannot leak into the next
    # in the same process; SKD_DEBUG=1 in the environment also works.
    ctx.meta["skd_debug"] = debug
    # transformers' own per-file progress bars would interleave with ours.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


main.add_command(sft)
main.add_command(distill)
main.add_command(eval_cmd)
bench.add_command(reproduce)
bench.add_command(real_model)
main.add_command(bench)
main.add_command(demo)

if __name__ == "__main__":
    main()
