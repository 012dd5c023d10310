"""`skd bench`: time skd's kernels and print / save the numbers.

Public: bench (click group) with subcommands `kernels` (skd.benchmarks.kernels), `rows-linear`
(skd.benchmarks.rows_linear), `speculative`
(skd.benchmarks.speculative), `sampling` (skd.benchmarks.sampling), `distill`
(skd.benchmarks.distill), `generation`, `steadiness`, `peers` (skd.benchmarks.peers: skd against TRL's
on-policy trainer and transformers' assisted generation), `reproduce` (skd.benchmarks.reproduce: the
paper's comparison at tiny scale) and `real-model` (skd.benchmarks.real_model: the comparison with
SmolLM2-135M-Instruct on GSM8K).
torch and the benchmark modules are imported inside the subcommand so `skd --help` stays instant.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from skd.benchmarks.peer_pair import DRAFT_PRICES, DRAFT_RECIPES


def _write_atomically(path: Path, text: str) -> None:
    """Write text to path via a temporary file in the same folder and os.replace (no torn files)."""
    from skd.core.checkpoint import atomic_write_text  # imports torch: only when a bench runs

    atomic_write_text(path, text)


# Options several timing commands share.
_DEVICE = click.option("--device", default="cpu", show_default=True)
_DTYPE = click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
                      show_default=True)
_OUTPUT = click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None)


def _fmt(value: float | None, digits: int = 3) -> str:
    from skd.core.studies.report import fmt_num

    return fmt_num(value, digits, missing="-")


@click.group()
def bench():
    """Measure skd's speed against the baselines users would otherwise run.

    Each subcommand prints a table and can save the full result (device, versions, threads,
    config, medians) as one JSON line, so that only like is compared with like.

    \b
    Examples:
      skd bench kernels
      skd bench rows-linear
      skd bench speculative --teacher runs/teacher/final --student runs/skd/final
      skd bench sampling --batch-size 32
      skd bench distill --output runs/bench/distill.json
      skd bench peers --quick
      skd bench reproduce --quick
      skd bench real-model --quick
    """


@bench.command("kernels")
@click.option("--rows", type=click.IntRange(min=1), default=40, show_default=True,
              help="Positions verified at once (N): B prompts x gamma drafts.")
@click.option("--vocab", type=click.IntRange(min=1), default=256_000, show_default=True,
              help="Vocabulary size V (Gemma: 256,000).")
@click.option("--dtype", "dtypes", type=click.Choice(["float32", "bfloat16", "float16"]), multiple=True,
              default=("float32", "bfloat16"), show_default=True, help="Logits dtype; repeat for several.")
@click.option("--k", type=click.IntRange(min=0), default=25, show_default=True, help="Top-K of the test (paper: 25).")
@click.option("--repeats", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed calls per variant (after warm-up); medians are reported.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch and the kernels (default: torch's setting).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the result as one JSON line to this file (atomically).")
def kernels(rows, vocab, dtypes, k, repeats, device, threads, output):
    """Time the top-K rank test, its reference, torch.topk and amax on one logits tensor.

    The tokens tested are each row's argmax, so they are always accepted and the scan never
    exits early: the kernel's worst case. amax is a single read of the tensor, the memory floor.
    accept_prefix, splice and speculative_accept are timed at B=64, D=5.

    \b
    Examples:
      skd bench kernels
      skd bench kernels --rows 8 --vocab 32000 --dtype float16 --repeats 50
      skd bench kernels --device cuda --output runs/bench/kernels-cuda.json
    """
    import torch
    from rich.console import Console
    from rich.table import Table

    from skd.benchmarks import kernels as kernels_bench

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available to this torch build; use --device cpu",
                                 param_hint="--device")
    try:
        torch.device(device)
    except RuntimeError as err:
        raise click.BadParameter(str(err), param_hint="--device") from err

    console = Console()
    with console.status(f"timing topk_rank_accept on [{rows}, {vocab}] ({', '.join(dtypes)}) ..."):
        result = kernels_bench.run(rows=rows, vocab=vocab, dtypes=tuple(dtypes), repeats=repeats,
                                   device=device, k=k, threads=threads)

    console.print(f"device {result['device']} ({result['device_name']}), torch {result['torch']}, "
                  f"{result['threads']} threads, ops backend [bold]{result['backend']}[/]")
    table = Table(title=f"topk_rank_accept, logits [{rows}, {vocab}], K={k}: median ms")
    for col in ("dtype", "kernel", "kernel (reject)", "reference", "torch.topk", "amax"):
        table.add_column(col, justify="left" if col == "dtype" else "right")
    ratios = Table(title="ratios of medians (targets: kernel/amax <= 1.5, topk/kernel >= 5)")
    for col in ("dtype", "kernel/amax", "topk/kernel", "reference/kernel", "agree"):
        ratios.add_column(col, justify="left" if col == "dtype" else "right")
    for name, r in result["topk_rank_accept"].items():
        ms, ratio = r["median_ms"], r["ratios"]
        table.add_row(name, _fmt(ms.get("kernel")), _fmt(ms.get("kernel_reject")), _fmt(ms["reference"]),
                      _fmt(ms["torch_topk"]), _fmt(ms["amax"]))
        ratios.add_row(name, _fmt(ratio["kernel/amax"], 2), _fmt(ratio["topk/kernel"], 1),
                       _fmt(ratio["reference/kernel"], 1), "yes" if r["agree"] else "[red]NO[/]")
    console.print(table)
    console.print(ratios)
    console.print(f"[dim]{result['config']['tokens']}[/]")

    small = result["small_ops"]
    cfg = small["config"]
    table = Table(title=f"µs per call, B={cfg['B']} D={cfg['D']} V={cfg['V']}")
    for col in ("op", "kernel", "reference"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for op, ms in small["median_ms"].items():
        kernel_us = ms["kernel"] * 1e3 if "kernel" in ms else None
        table.add_row(op, _fmt(kernel_us, 1), _fmt(ms["reference"] * 1e3, 1))
    console.print(table)

    gpu = result.get("gpu_timing")
    if gpu:  # CUDA only: device time per call and the share of the measured copy bandwidth
        table = Table(title=f"device time (CUDA events) · copy bandwidth {gpu['copy_bandwidth']['GBps']:.0f} GB/s")
        for col in ("dtype", "kernel µs", "amax µs", "kernel GB/s", "of copy bw (target >= 0.6)", "fits in L2"):
            table.add_column(col, justify="left" if col == "dtype" else "right")
        for name, g in gpu["topk_rank_accept"].items():
            table.add_row(name, _fmt(g["us"].get("kernel"), 1), _fmt(g["us"].get("amax"), 1),
                          _fmt(g["GBps"].get("kernel"), 0), _fmt(g["fraction_of_copy"].get("kernel"), 2),
                          str(g["fits_in_l2"]))
        console.print(table)

    if output is not None:
        _write_atomically(output, json.dumps(result) + "\n")
        console.print(f"wrote {output}")


@bench.command("rows-linear")
@click.option("--shape", "shapes", multiple=True, metavar="NxK",
              help="A weight shape, out x in features; repeat for several  [default: SmolLM2-135M's five]")
@click.option("--rows", "rows", default="1,4,16,32,64", show_default=True,
              help="Comma-separated row counts (batch x new positions).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed samples per variant, interleaved; medians are reported.")
@click.option("--stream-mb", type=click.IntRange(min=1), default=256, show_default=True,
              help="Megabytes of weight copies each sample cycles through (so they come from memory).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch and the kernel (default: torch's setting).")
@_OUTPUT
def rows_linear(shapes, rows, repeats, stream_mb, threads, output):
    """Time the rows_linear kernel against BLAS on a decoding pass's weight shapes (CPU).

    Decoding passes with at most skd.core.decode_linear.MAX_ROWS rows run their linear layers
    on this kernel; this prints, per shape and row count, the median ms of each with the
    weights streamed from memory, BLAS's time over the kernel's, and how far the kernel's
    output is from BLAS's.

    \b
    Examples:
      skd bench rows-linear
      skd bench rows-linear --shape 4096x4096 --rows 1,8,32 --threads 8 --output runs/bench/rows.json
    """
    from rich.console import Console
    from rich.table import Table

    from skd.benchmarks import rows_linear as rows_bench
    from skd.core.decode_linear import MAX_ROWS

    def parse_shape(text: str) -> tuple[int, int]:
        parts = text.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise click.BadParameter(f"{text!r} is not NxK with positive integers, e.g. 576x1536",
                                     param_hint="--shape")
        return int(parts[0]), int(parts[1])

    try:
        row_counts = tuple(int(r) for r in rows.split(","))
    except ValueError:
        raise click.BadParameter(f"{rows!r} is not a comma-separated list of integers, e.g. 1,4,16",
                                 param_hint="--rows") from None
    if not row_counts or min(row_counts) < 1:
        raise click.BadParameter(f"row counts must be >= 1, got {rows!r}", param_hint="--rows")
    shape_list = tuple(parse_shape(s) for s in shapes) or rows_bench.SMOLLM2_SHAPES

    console = Console()
    with console.status("timing rows_linear against F.linear ..."):
        result = rows_bench.run(shapes=shape_list, rows=row_counts, repeats=repeats, stream_mb=stream_mb,
                                threads=threads)
    console.print(f"{result['device_name']}, torch {result['torch']}, {result['threads']} threads, "
                  f"ops backend [bold]{result['backend']}[/]")
    if not result["vectorised"]:
        console.print("[yellow]the kernel's vector path does not run here (no AVX2/FMA or no compiled "
                      "extension): decoding passes keep BLAS, and these rows time the fallback[/]")
    table = Table(title=f"ms per call, weights from memory (>= {stream_mb} MB a sample), medians of {repeats}; "
                        f"decoding passes route <= {MAX_ROWS} rows to the kernel")
    for col in ("N x K", "rows", "BLAS", "rows_linear", "BLAS / rows_linear", "max rel diff"):
        table.add_column(col, justify="left" if col == "N x K" else "right")
    for c in result["cases"]:
        table.add_row(f"{c['N']} x {c['K']}", str(c["rows"]), _fmt(c["median_ms"]["blas"]),
                      _fmt(c["median_ms"]["rows_linear"]), f"{c['blas_over_rows_linear']:.2f}x",
                      f"{c['max_rel_diff']:.1e}")
    console.print(table)
    _emit(result, output)
    if output is not None:
        console.print(f"wrote {output}")


def _emit(result: dict, output: Path | None) -> None:
    if output is not None:
        _write_atomically(output, json.dumps(result) + "\n")


def _short(name: str) -> str:
    """A model name short enough for a table cell: the last two parts of a path."""
    parts = Path(name).parts
    return "/".join(parts[-2:]) if len(parts) > 2 else name


def _throughput_table(title: str, result: dict):
    """One row per variant of result["results"]: prompts, batch, tokens, seconds, tokens/s."""
    from rich.table import Table

    table = Table(title=title, caption=_device_line(result))
    for col in ("variant", "prompts", "batch", "tokens", "seconds", "tok/s"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for name, r in result["results"].items():
        table.add_row(name, str(r["prompts"]), str(r["batch_size"]), str(r["tokens"]), _fmt(r["seconds"], 2),
                      f"{r['tokens_per_s']:.0f}")
    return table


def _device_line(result: dict) -> str:
    from skd.core.environment import env_line

    return env_line(result["env"])


@bench.command("speculative")
@click.option("--teacher", default="tiny-teacher", show_default=True, help="Target model.")
@click.option("--student", "students", multiple=True, default=("tiny-student",), show_default=True,
              help="Draft model; repeat to compare several.")
@click.option("--task", default="arith", show_default=True, help="Prompts come from this task's test split.")
@click.option("--data", type=click.Path(dir_okay=False), default=None, help="Local file for the task's prompts.")
@click.option("--prompts", "n_prompts", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--gamma", "gammas", default="1,2,4,8", show_default=True, help="Draft lengths, comma-separated.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0: greedy (outputs must equal the teacher's); > 0: Leviathan sampling.")
@_DEVICE
@_DTYPE
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="JSON result file.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG of speedup and acceptance against gamma (default: next to --output).")
@click.option("--int8", is_flag=True, help="Also measure an int8 copy of each student as draft (its linear layers' "
              "weights in int8, one scale per row; the outputs stay the teacher's).")
def speculative(teacher, students, task, data, n_prompts, batch_size, gammas, max_new_tokens, temperature, device,
                dtype, output, plot, int8):
    """Measure each student as a speculative-decoding draft for the teacher.

    Reports acceptance, accepted tokens per round, teacher passes per token, tokens/s and the
    speedup over teacher-alone decoding of the same prompts, all measured in this run.

    \b
    Examples:
      skd bench speculative
      skd bench speculative --teacher runs/teacher/final --student runs/skd/final --student runs/sup/final
      skd bench speculative --student runs/skd/final --int8 --gamma 1,2,3
    """
    from rich.console import Console
    from rich.table import Table

    from skd.benchmarks import speculative as spec
    from skd.core.errors import SkdError

    try:
        gl = tuple(int(g) for g in gammas.split(","))
    except ValueError:
        raise SkdError(f"--gamma must be comma-separated integers (got {gammas!r})", "e.g. --gamma 1,2,4,8")
    if not gl or min(gl) < 1:
        raise SkdError(f"every gamma must be >= 1 (got {gammas!r})", "e.g. --gamma 1,2,4,8")
    result = spec.run(teacher, list(students), task=task, n_prompts=n_prompts, batch_size=batch_size, gammas=gl,
                      max_new_tokens=max_new_tokens, temperature=temperature, device=device, dtype=dtype, data=data,
                      int8=int8)
    base = result["teacher_alone"]
    table = Table(title=f"speculative decoding · teacher alone {base['tokens_per_s']:.0f} tok/s",
                  caption=_device_line(result))
    # acc/rnd: accepted draft tokens per round; T/tok: teacher passes per generated token; =T: greedy
    # outputs identical to the teacher's own.
    for col in ("student", "γ", "accept", "acc/rnd", "tok/rnd", "T/tok", "tok/s", "speedup", "=T"):
        table.add_column(col, justify="right" if col != "student" else "left")
    for r in result["results"]:
        match = "-" if r["outputs_match_teacher"] is None else ("yes" if r["outputs_match_teacher"] else "NO")
        table.add_row(_short(r["student"]), str(r["gamma"]), _fmt(r["acceptance_rate"]), _fmt(r["mean_accepted_per_round"], 2),
                      _fmt(r["tokens_per_round"], 2), _fmt(r["teacher_forwards_per_token"]),
                      f"{r['tokens_per_s']:.0f}", f"{r['speedup']:.2f}x", match)
    Console().print(table)
    _emit(result, output)
    png = plot or (output.with_suffix(".png") if output is not None else None)
    if png is not None:
        spec.plot(result, str(png))
    if temperature == 0 and not all(r["outputs_match_teacher"] for r in result["results"]):
        raise SkdError("greedy speculative outputs differ from the teacher's own greedy outputs",
                       "this is a bug in skd: please report it with the JSON output")


@bench.command("sampling")
@click.option("--teacher", default="tiny-teacher", show_default=True)
@click.option("--student", default="tiny-student", show_default=True)
@click.option("--task", default="arith", show_default=True)
@click.option("--prompts", "n_prompts", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch1-prompts", type=click.IntRange(min=1), default=None,
              help="Prompts for the two slow batch-1 loops (default: all).")
@click.option("--k", type=click.IntRange(min=0), default=25, show_default=True)
@click.option("--gamma", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@_DEVICE
@_DTYPE
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs of every variant, interleaved; the median counts.")
@_OUTPUT
def sampling(teacher, student, task, n_prompts, batch_size, batch1_prompts, k, gamma, max_new_tokens, device, dtype,
             repeats, output):
    """Compare the batched SKD sampler with the released code's per-prompt loop (generate()-drafted,
    as the authors run it), our own sampler at batch 1, and student-only sampling.

    \b
    Examples:
      skd bench sampling --batch-size 32
    """
    from rich.console import Console

    from skd.benchmarks import sampling as smp

    result = smp.run(teacher, student, task=task, n_prompts=n_prompts, batch_size=batch_size, k=k, gamma=gamma,
                     max_new_tokens=max_new_tokens, device=device, dtype=dtype, batch1_prompts=batch1_prompts,
                     repeats=repeats)
    Console().print(_throughput_table("sampling throughput", result))
    acc = {k_: r["acceptance_rate"] for k_, r in result["results"].items() if r.get("acceptance_rate") is not None}
    Console().print("acceptance rate: " + ", ".join(f"{k_} {v:.3f}" for k_, v in acc.items()))
    for k_, v in result["ratios"].items():
        Console().print(f"{k_}: {v:.2f}x")
    _emit(result, output)


@bench.command("distill")
@click.option("--teacher", default="tiny-teacher", show_default=True)
@click.option("--student", default="tiny-student", show_default=True)
@click.option("--method", "methods", multiple=True,
              default=("supervised", "on-policy", "skd", "imitkd", "gkd", "sft"), show_default=True)
@click.option("--task", default="arith", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True, help="Timed steps per method.")
@click.option("--memory-vocab", type=click.IntRange(min=2), default=256_000, show_default=True,
              help="Vocabulary of the chunked-vs-unchunked divergence memory test.")
@click.option("--memory-positions", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--sparse-positions", type=click.IntRange(min=1), default=32, show_default=True,
              help="Positions of the sparse-teacher test (at --memory-vocab).")
@click.option("--sparse-topk", "sparse_topks", type=click.IntRange(min=1), multiple=True, default=(16, 64, 256),
              show_default=True, help="N of the sparse-teacher test (--teacher-topk); repeat for several.")
@click.option("--gradient-checkpointing", "checkpointing", is_flag=True,
              help="Also measure one training step's student forward+backward with and without "
                   "--gradient-checkpointing, side by side (peak memory, time, their ratios).")
@click.option("--checkpointing-model", default="tiny-teacher", show_default=True,
              help="The student of that comparison (the larger tiny preset: its activations dominate).")
@click.option("--checkpointing-positions", type=click.IntRange(min=2), default=256, show_default=True,
              help="Tokens per row of that comparison (x --batch-size rows).")
@_DEVICE
@_DTYPE
@_OUTPUT
def distill(teacher, student, methods, task, batch_size, max_new_tokens, steps, memory_vocab, memory_positions,
            sparse_positions, sparse_topks, checkpointing, checkpointing_model, checkpointing_positions, device, dtype,
            output):
    """Time one distillation step per method (sampling / teacher / loss+backward), the loss's memory,
    what --teacher-topk N saves in stored teacher targets and costs in loss accuracy, and (with
    --gradient-checkpointing) the activation memory that checkpointing saves.

    \b
    Examples:
      skd bench distill
      skd bench distill --method skd --method on-policy --batch-size 16
      skd bench distill --method sft --gradient-checkpointing
    """
    from rich.console import Console
    from rich.table import Table

    from skd.benchmarks import distill as dst

    result = dst.run(teacher, student, methods=methods, task=task, batch_size=batch_size,
                     max_new_tokens=max_new_tokens, steps=steps, device=device, dtype=dtype)
    mem = dst.divergence_memory(memory_positions, memory_vocab, device=device)
    table = Table(title=f"distillation step · batch {batch_size}", caption=_device_line(result))
    # CPU: growth of the resident set over the step; memory freed by an earlier method and reused
    # does not show, so only the first method's number is a peak (CUDA: the allocator's peak).
    mem_col = "peak MB" if str(device).startswith("cuda") else "RSS growth MB"
    for col in ("method", "sampling s", "teacher s", "loss+bwd s", "step s", "tok/s", mem_col):
        table.add_column(col, justify="right" if col != "method" else "left")
    for r in result["results"]:
        table.add_row(r["method"], _fmt(r["sampling_s"]), _fmt(r["teacher_s"]), _fmt(r["loss_backward_s"]),
                      _fmt(r["step_s"]), f"{r['tokens_per_s']:.0f}", f"{r['peak_memory_bytes'] / 2**20:.0f}")
    console = Console()
    console.print(table)
    for k_, v in result["ratios"].items():
        console.print(f"{k_}: {v:.2f}x")
    mt = Table(title=f"FKL loss+backward memory · {memory_positions} x {memory_vocab} fp32 logits "
                     f"({mem['config']['logits_bytes'] / 2**20:.0f} MB each)")
    for col in ("variant", "peak extra MB", "/ student logits", "/ student+teacher logits"):
        mt.add_column(col, justify="right" if col != "variant" else "left")
    for name, r in mem["results"].items():
        mt.add_row(name, f"{r['peak_extra_bytes'] / 2**20:.0f}", _fmt(r["over_student_logits"], 2),
                   _fmt(r["over_both_logits"], 2))
    console.print(mt)
    sparse = dst.sparse_teacher_memory(sparse_positions, memory_vocab, sparse_topks, device=device)
    sc = sparse["config"]
    st = Table(title=f"sparse teacher targets (--teacher-topk N) · {sparse_positions} x {memory_vocab} fp32 logits",
               caption=f"teacher logits: {sc['teacher_logits']} (entropy {sc['teacher_entropy_nats']:.2f} nats, "
                       f"top-1 p {sc['teacher_top1_prob']:.2f}); errors: sparse FKL loss, its gradient norm and "
                       "gradient against the dense ones; tail mass: the teacher's, outside its top N")
    # Relative errors in percent: FKL value, gradient norm, gradient vector (||g_sparse - g_dense|| / ||g_dense||).
    for col in ("N", "dense MB", "sparse KB", "ratio", "tail mass", "FKL err", "|grad| err", "grad err"):
        st.add_column(col, justify="right")
    pct = lambda x: f"{100 * x:.3g}%"  # noqa: E731
    for r in sparse["results"]:
        st.add_row(str(r["n"]), f"{r['dense_bytes'] / 2**20:.1f}", f"{r['sparse_bytes'] / 2**10:.1f}",
                   f"{r['dense_over_sparse']:.0f}x", f"{r['teacher_tail_mass']:.3f}", pct(r["fkl_rel_error"]),
                   pct(r["grad_norm_rel_error"]), pct(r["grad_rel_error"]))
    console.print(st)
    extra = {}
    if checkpointing:
        extra["gradient_checkpointing"] = gcm = dst.checkpointing_memory(
            checkpointing_model, batch_size=batch_size, positions=checkpointing_positions, device=device, dtype=dtype)
        ct = Table(title=f"gradient checkpointing · {checkpointing_model} · {batch_size} x {checkpointing_positions} "
                         f"tokens, one student forward+backward", caption=gcm["note"])
        for col in ("checkpointing", "peak MB", "forward+backward s"):
            ct.add_column(col, justify="right" if col != "checkpointing" else "left")
        for name, r in gcm["results"].items():
            ct.add_row(name, f"{r['peak_bytes'] / 2**20:.1f}", _fmt(r["forward_backward_s"]))
        console.print(ct)
        ratios = gcm["ratios"]
        console.print(f"peak memory with / without: {_fmt(ratios['peak_on_over_off'], 2)}x · "
                      f"time with / without: {_fmt(ratios['time_on_over_off'], 2)}x")
    _emit({**result, "divergence_memory": mem, "sparse_teacher": sparse, **extra}, output)


@bench.command("generation")
@click.option("--model", default="tiny-teacher", show_default=True)
@click.option("--task", default="arith", show_default=True)
@click.option("--prompts", "n_prompts", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch1-prompts", type=click.IntRange(min=1), default=None,
              help="Prompts for the slow batch-1 pass (default: all).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@_DEVICE
@_DTYPE
@_OUTPUT
def generation(model, task, n_prompts, batch_size, batch1_prompts, max_new_tokens, device, dtype, output):
    """Compare batched greedy generation (what `skd eval` runs) with batch-size-1 generation.

    \b
    Examples:
      skd bench generation --model runs/teacher/final --batch-size 32
    """
    from rich.console import Console

    from skd.benchmarks import generation as gen

    result = gen.run(model, task=task, n_prompts=n_prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                     device=device, dtype=dtype, batch1_prompts=batch1_prompts)
    console = Console()
    console.print(_throughput_table("evaluation generation (greedy)", result))
    console.print(f"batched / batch-1 tokens/s: {result['ratios']['batched_over_batch1_tokens_per_s']:.2f}x · "
                  f"outputs identical: {result['outputs_identical']}")
    _emit(result, output)


@bench.command("steadiness")
@click.option("--steps", type=click.IntRange(min=2), default=1000, show_default=True, help="Optimizer steps.")
@click.option("--warmup", type=click.IntRange(min=1), default=100, show_default=True,
              help="Step whose memory is the baseline (pools and caches are in place by then).")
@click.option("--method", type=click.Choice(["skd", "supervised", "on-policy", "imitkd", "mixed-skd", "gkd"]),
              default="skd", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--save-every", type=click.IntRange(min=0), default=250, show_default=True,
              help="Checkpoints during the run (their writes are part of what must stay flat).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="torch CPU threads.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result (with the RSS trace) as one JSON line.")
def steadiness(steps, warmup, method, batch_size, max_new_tokens, save_every, threads, output):
    """Check that resident memory stays flat over a long tiny-model distillation run.

    RSS (/proc/self/statm) is read after every step; the run passes when it grows by less than 5%
    between step --warmup and the last step.

    \b
    Examples:
      skd bench steadiness
      skd bench steadiness --steps 2000 --output runs/bench/steadiness.json
    """
    from rich.console import Console
    from rich.table import Table

    from skd.benchmarks import steadiness as st

    if warmup >= steps:
        raise click.BadParameter(f"must be below --steps ({steps})", param_hint="--warmup")
    result = st.run(steps, method=method, batch_size=batch_size, max_new_tokens=max_new_tokens, warmup=warmup,
                    save_every=save_every, threads=threads)
    rss = result["rss_mib"]
    table = Table(title=f"resident memory over {steps} {method} steps ({result['steps_per_s']:.1f} steps/s)",
                  caption=_device_line(result))
    for col in ("before training", f"step {warmup}", f"step {steps}", "max after warm-up", "growth", "steady"):
        table.add_column(col, justify="right")
    table.add_row(f"{rss['before_training']:.1f} MiB", f"{rss['at_warmup']:.1f} MiB", f"{rss['at_end']:.1f} MiB",
                  f"{rss['max_after_warmup']:.1f} MiB", f"{100 * result['growth']:+.2f}%",
                  "yes" if result["steady"] else "NO (>= 5%)")
    Console().print(table)
    _emit(result, output)


@bench.command("peers")
@click.option("--quick", is_flag=True, help="Tiny presets, a few prompts, tokens and repeats: checks the whole path "
              "in seconds; numbers mean nothing. Options given explicitly still apply.")
@click.option("--teacher", default=None, help="Model folder or preset  [default: SmolLM2-135M-Instruct; --quick "
              "tiny-teacher]")
@click.option("--student", default=None, help="Model folder or preset  [default: the teacher pruned to "
              "--student-layers layers; --quick tiny-student]")
@click.option("--student-layers", type=click.IntRange(min=1), default=None, help="[default: 8]")
@click.option("--draft", default=None, help="Model folder of a trained draft for the draft rows, instead of the "
              "draft skd distils (cached)  [default: that draft]")
@click.option("--draft-recipe", type=click.Choice(DRAFT_RECIPES), default=None,
              help="How skd distils the draft: teacher-greedy (supervised KD on the teacher's own greedy "
                   "responses to the training prompts) or skd (skd distill --method skd on them)  "
                   "[default: teacher-greedy]")
@click.option("--draft-int8", is_flag=True, help="Also measure an int8 copy of each draft (its linear layers' "
              "weights in int8, one scale per row: a quarter of the bytes a decoding pass reads).")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Cache of the pruned student and the distilled draft  [default: runs/peers; --quick "
                   "runs/peers-quick]")
@click.option("--prompts", "n_prompts", type=click.IntRange(min=1), default=None,
              help="Measurement prompts (GSM8K-style, made in code)  [default: 16]")
@click.option("--train-batch-size", type=click.IntRange(min=1), default=None,
              help="Sequences per distillation step  [default: 4]")
@click.option("--batch-size", type=click.IntRange(min=2), default=None,
              help="The batched decoding and sampling rows  [default: 8]")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="[default: 64]")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Sampling temperature of the distillation steps and the sampler rows  [default: 1]")
@click.option("--k", type=click.IntRange(min=0), default=None, help="SKD top-K  [default: 25]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate of the timed steps  [default: 1e-5]")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Timed repeats per row, interleaved; medians  [default: 3]")
@click.option("--draft-gamma", default=None, help="speculative_generate's draft length: auto or N  [default: auto]")
@click.option("--draft-prices", type=click.Choice(DRAFT_PRICES), default=None,
              help="What --draft-gamma auto prices a teacher pass at: weights, the teacher / draft weight-byte ratio "
                   "at every width, or measure, passes of 1 to gamma_max + 1 positions timed on this machine, per "
                   "draft and batch size, before the timed rows (skd.core.forward_prices).  [default: weights]")
@click.option("--sampler-gamma", type=click.IntRange(min=1), default=None, help="[default: 5]")
@click.option("--batch1-prompts", type=click.IntRange(min=1), default=None,
              help="Prompts of the one-prompt-at-a-time sampler rows (their tokens/s is a rate; the first N "
                   "prompts)  [default: all]")
@click.option("--distill-steps", type=click.IntRange(min=1), default=None,
              help="Training steps of the distilled draft  [default: 150]")
@click.option("--distill-lr", type=click.FloatRange(min=0, min_open=True), default=None, help="[default: 2e-4]")
@click.option("--distill-batch-size", type=click.IntRange(min=1), default=None, help="[default: 8]")
@click.option("--distill-prompts", type=click.IntRange(min=1), default=None,
              help="Its training prompts (none of them a measurement prompt)  [default: 384]")
@click.option("--sections", default=None, help="Comma-separated, of: distill, draft, sampler  [default: all]")
@click.option("--trl/--no-trl", default=True, show_default=True, help="The TRL row (when trl is installed).")
@click.option("--trl-trainer", type=click.Choice(["auto", "distillation", "gkd"]), default="auto", show_default=True,
              help="auto: DistillationTrainer where trl has it, else GKDTrainer with lmbda 1.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="[default: 20]")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@_OUTPUT
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG of tokens/s per row (default: next to --output).")
def peers(quick, teacher, student, student_layers, draft, draft_recipe, draft_int8, run_dir, n_prompts, train_batch_size,
          batch_size, max_new_tokens, temperature, k, lr, repeats, draft_gamma, draft_prices, sampler_gamma, batch1_prompts,
          distill_steps,
          distill_lr, distill_batch_size, distill_prompts, sections, trl, trl_trainer, seed, device, dtype, threads, output,
          plot):
    """Compare skd with TRL's on-policy distillation and transformers' assisted generation, side by side.

    One teacher/student pair, the same prompts, one run, repeats interleaved, medians:
    a distillation step of TRL's DistillationTrainer against `skd distill --method on-policy` and
    `--method skd` (same batch, lengths, temperature, forward KL); greedy assisted generation (B = 1)
    against speculative_generate at B = 1 and batched and the teacher alone (outputs must equal the
    teacher's greedy output); the authors' per-prompt SKD loop against the batched sampler. TRL is
    optional (pip install 'skd[peers]'); without it its row is skipped.

    \b
    Examples:
      skd bench peers --quick
      skd bench peers --output runs/bench/peers.json
      skd bench peers --device cuda --dtype bfloat16 --repeats 5 --output runs/bench/peers-gpu.json
    """
    import torch
    from rich.console import Console
    from rich.markup import escape

    from skd.benchmarks import peers as prs
    from skd.core.errors import SkdError
    from skd.core.overrides import with_overrides

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available to this torch build; use --device cpu", param_hint="--device")
    if threads is not None:
        torch.set_num_threads(threads)
    if draft_gamma is not None and draft_gamma != "auto":
        if not draft_gamma.isdigit():
            raise SkdError(f"--draft-gamma must be auto or a number (got {draft_gamma!r})", "e.g. --draft-gamma 4")
        draft_gamma = int(draft_gamma)
    given = dict(teacher=teacher, student=student, student_layers=student_layers, draft=draft, prompts=n_prompts,
                 train_batch_size=train_batch_size, batch_size=batch_size, max_new_tokens=max_new_tokens,
                 temperature=temperature, k=k, lr=lr, repeats=repeats, draft_gamma=draft_gamma,
                 draft_prices=draft_prices, sampler_gamma=sampler_gamma, batch1_prompts=batch1_prompts, distill_steps=distill_steps, distill_lr=distill_lr,
                 distill_batch_size=distill_batch_size, distill_prompts=distill_prompts, draft_recipe=draft_recipe, seed=seed,
                 sections=tuple(s.strip() for s in sections.split(",") if s.strip()) if sections is not None else None)
    base = prs.PeersConfig(quick=quick, run_dir=run_dir or ("runs/peers-quick" if quick else "runs/peers"),
                           trl=trl, trl_trainer=trl_trainer, device=device, dtype=dtype, draft_int8=draft_int8)
    cfg = with_overrides(base, prs.QUICK if quick else None, given)
    console = Console(width=max(Console().width, 120))   # the row names are long: wrapped tables are unreadable
    err = Console(stderr=True)

    def on_event(kind: str, p: dict) -> None:
        if kind == "section":
            err.print(f"[bold]{p['name']}[/]: {p['what']} ...")
        elif kind == "stage":
            resumed = " (resumed)" if p.get("resume") else ""
            err.print(escape(f"  training {p['stage']}: {p['steps']} steps{resumed}"))
        elif kind == "cached":
            err.print(escape(f"  {p['stage']}: cached ({p['path']})"))

    result = prs.run(cfg, on_event=on_event)
    _print_peers(console, result)
    _emit(result, output)
    png = plot or (output.with_suffix(".png") if output is not None else None)
    if png is not None and prs.plot(result, str(png)):
        console.print(escape(f"wrote {png}"))
    if output is not None:
        console.print(escape(f"wrote {output}"))


def _print_peers(console, result: dict) -> None:
    """The peers result as tables: one per section, its ratios, and what each row measures."""
    from rich.markup import escape
    from rich.table import Table

    env, secs = result["env"], result["sections"]
    console.print(escape(f"machine: {env['device_name']} ({env['device']}), {env['cpu_count']} CPUs, {env['threads']} "
                         f"torch threads · torch {env['torch']} · transformers {env['transformers']} · trl "
                         f"{env['trl'] or 'not installed'} · ops {env['ops_backend']}"))
    console.print(escape(f"pair: teacher {result['pair']['teacher']} · student {result['pair']['student']} · "
                         f"{result['prompts']['count']} GSM8K-style prompts made in code"))

    def explain(rows: dict) -> None:
        for name, r in rows.items():
            console.print(f"[dim]  {escape(name)}: {escape(r['measures'])}[/]")

    def ratios(sec: dict) -> None:
        for name, v in sec["ratios"].items():
            console.print(f"  {escape(name)}: {v:.2f}x")

    if "distill" in secs:
        sec = secs["distill"]
        st = sec["settings"]
        table = Table(title=f"distillation step · batch {st['batch_size']}, <= {st['max_new_tokens']} new tokens, "
                            f"T {st['temperature']:g}, forward KL · median of {st['timed_steps']}")
        for col in ("row", "step s", "tok/step", "tok/s", "sampling s", "fwd share", "teacher s", "update s",
                    "accept", "draft len", "led"):
            table.add_column(col, justify="left" if col == "row" else "right")
        for name, r in sec["results"].items():
            table.add_row(name, _fmt(r["step_s"]), f"{r['tokens_per_step']:.0f}", f"{r['tokens_per_s']:.0f}",
                          _fmt(r.get("sampling_s")), _fmt(r.get("sampling_forward_share"), 2),
                          _fmt(r.get("teacher_s")), _fmt(r.get("update_s")),
                          _fmt(r.get("acceptance_rate")), _fmt(r.get("mean_draft_length"), 2),
                          _fmt(r.get("teacher_led_share"), 2))
        console.print(table)
        console.print("  fwd share: the share of the sampling time spent inside model forwards; draft len: the "
                      "mean length of the student-led rounds; led: the share of rounds that were teacher-led")
        if sec["skipped"]:
            console.print(escape(sec["skipped"]))
        ratios(sec)
        floor = sec.get("floor")
        if floor:
            ms = floor["forward_ms"]
            t = ms["teacher"]
            s_ms = ms["student"]
            console.print(escape(f"  forward ms at batch {floor['batch_size']}: student, 1 / {len(s_ms)} positions "
                                 + " / ".join(f"{x:.1f}" for x in (s_ms[:1] + s_ms[1:][-1:]))
                                 + f"; teacher, 1 / 2 / 3 / {len(t)} positions "
                                 + " / ".join(f"{x:.1f}" for x in (t[:3] + t[-1:]))))
            for name, f in floor["rows"].items():
                plan = f.get("best_plan") or f"g{f['best_gamma']}"     # records before teacher-led rounds
                plan = (f"student-led draft of {plan[1:]}" if plan[0] == "g" else f"teacher-led round of {plan[1:]}")
                line = (f"  floor of {name}: per-token acceptance {f['per_token_acceptance']:.3f}, best plan "
                        f"{plan}: {f['floor_step_s']:.2f} s per step")
                if "floor_over_trl" in f:
                    line += (f" = {f['floor_over_trl']:.2f}x TRL's step (measured {f['measured_over_floor']:.2f}x the "
                             f"floor)")
                    for t, need in f.get("acceptance_for_target", {}).items():
                        line += f"; {t}x TRL's needs a per-token acceptance of " + (
                            f">= {need:.2f}" if need is not None else "more than 1 (unreachable)")
                console.print(escape(line))
        explain(sec["results"])
    if "draft" in secs:
        sec = secs["draft"]
        table = Table(title=f"greedy decoding with a draft · <= {sec['settings']['max_new_tokens']} new tokens · "
                            f"gamma {sec['settings']['gamma']} · =T: outputs identical to the teacher's greedy output")
        for col in ("row", "batch", "tokens", "seconds", "tok/s", "accept", "T/tok", "T-only", "=T"):
            table.add_column(col, justify="left" if col == "row" else "right")
        for name, r in sec["results"].items():
            same = ("yes" if r["outputs_match_teacher"]
                    else f"[red]NO ({r['prompts_matching_teacher']}/{r['prompts']})[/]")
            table.add_row(escape(name), str(r["batch_size"]), str(r["tokens"]), _fmt(r["seconds"], 2),
                          f"{r['tokens_per_s']:.0f}",
                          _fmt(r.get("acceptance_rate")), _fmt(r.get("teacher_forwards_per_token")),
                          _fmt(r.get("teacher_only_round_share"), 2), same)
        console.print(table)
        console.print("  T/tok: teacher passes per token; T-only: share of rounds without a draft (gamma auto)")
        for name, info in sec.get("drafts", {}).items():
            console.print(escape(f"  draft {name}: predicts {info['teacher_forced_match']:.3f} of the teacher's greedy "
                                 f"tokens from the teacher's prefix; drafting pays above an acceptance of "
                                 f"{info['break_even_acceptance']:.2f} (teacher / draft weight bytes "
                                 f"{info['cost_ratio']:.2f})"))
        d = sec.get("distilled_draft")
        if d is not None:
            how = ("supervised KD on the teacher's greedy responses" if d["recipe"] == "teacher-greedy"
                   else "skd distill --method skd")
            console.print(escape(f"  skd-distilled draft: {d['steps']} steps of {how} (lr {d['lr']:g}, batch "
                                 f"{d['batch_size']}, {d['prompts']} prompts){', cached' if d['cached'] else ''}: "
                                 f"{d['checkpoint']}"))
        else:
            console.print(escape(f"  given draft (--draft): {sec['given_draft']['path']}"))
        ratios(sec)
        explain(sec["results"])
    if "sampler" in secs:
        sec = secs["sampler"]
        table = Table(title=f"SKD sampling · K {sec['settings']['k']}, gamma {sec['settings']['gamma']}")
        for col in ("row", "prompts", "batch", "tokens", "seconds", "tok/s", "accept", "fwd share"):
            table.add_column(col, justify="left" if col == "row" else "right")
        for name, r in sec["results"].items():
            table.add_row(name, str(r["prompts"]), str(r["batch_size"]), str(r["tokens"]), _fmt(r["seconds"], 2),
                          f"{r['tokens_per_s']:.0f}", _fmt(r.get("acceptance_rate")), _fmt(r.get("forward_share"), 2))
        console.print(table)
        console.print("  fwd share: the share of the row's wall time spent inside model forwards")
        ratios(sec)
        explain(sec["results"])
    console.print(f"[dim]{escape(_device_line(result))} · {result['wall_s']:.0f} s in all[/]")
