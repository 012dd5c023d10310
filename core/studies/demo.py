"""`skd demo`: the paper's comparison in miniature, offline on a CPU, in minutes.

Public: DemoConfig, QUICK_OVERRIDES, TEACHER_RECIPE_FIELDS, run_demo(cfg, *, on_event=None) -> dict,
ensure_teacher(cfg, emit) (the teacher stage, shared with `skd bench reproduce`).

Steps (each cached in the run directory by skd.core.studies.engine, so a second run skips what is done):
  1. teacher      — SFT of the `tiny-teacher` preset on plenty of built-in `arith` data;
  2. student init — `tiny-student` SFT'd briefly on the small distillation set (a weak start,
                    the paper's "1k" regime);
  3. distil       — from that init, with each method (supervised KD, on-policy KD, SKD) on the
                    same prompts, steps, optimizer and schedule; accuracy on a validation subset
                    every `curve_every` steps (the curves);
  4. evaluate     — teacher, init and every student on the test split (greedy, exact match);
  5. draft        — every student as the speculative-decoding draft of the teacher (greedy, gamma 4).
Writes results.json and curves.png into the run directory.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from skd.core.presets import PRESET_SFT_RECIPES
from skd.core.studies.engine import Emit, cached_sft, config_stamp, read_metrics, write_json_atomic
from skd.core.studies.measure import accuracy, draft_stats, prompt_ids
from skd.core.studies.report import correction_summary, save_plot

_TEACHER_RECIPE = PRESET_SFT_RECIPES["tiny-teacher"]  # what `skd sft --model tiny-teacher` runs


@dataclass(frozen=True)
class DemoConfig:
    run_dir: str = "runs/demo"
    task: str = "arith"
    methods: tuple[str, ...] = ("supervised", "on-policy", "skd")
    # teacher: plenty of data, trained once (cached); lr for training from scratch, not the paper's 1e-5
    teacher_limit: int = _TEACHER_RECIPE["limit"]
    teacher_steps: int = 440           # the preset's recipe runs 700 (96.6%, ~11 min); 350 steps gave 21.7%,
    #                                    440 gave 56% (300 test problems): what fits the demo's 10 minutes
    #                                    (benchmarks/results/arith_calibration.md)
    teacher_folder: str = "teacher"    # <run_dir>/<teacher_folder>; the study trains the full recipe elsewhere
    teacher_batch: int = _TEACHER_RECIPE["batch_size"]
    teacher_lr: float = _TEACHER_RECIPE["lr"]
    teacher_warmup: int = _TEACHER_RECIPE["warmup_steps"]
    # student init and distillation: the paper's small fixed prompt set
    limit: int = 1000                  # the "1k" regime
    init_steps: int = 400              # SFT on the 1k set alone (~6 epochs): a weak student, 0% exact
    #                                    answers (60, 300 and 600 steps: 0% too); 1,000 gives 25% (study)
    init_lr: float = 1e-3
    distill_steps: int = 50            # the study's length (100 steps does not fit the time budget)
    distill_lr: float = 5e-4           # tiny models from scratch need far more than the paper's 1e-5
    batch_size: int = 16
    k: int = 3                         # the paper's K = 25 is 0.01% of Gemma's 256k vocabulary; on this
    #                                    103-character vocabulary K = 25 is a quarter of it and rejects
    #                                    almost nothing (correction rate 0.2% for a weak student, against
    #                                    19% at K = 3; benchmarks/results/README.md)
    gamma: int = 5                     # released code default
    max_new_tokens: int = 176          # arith answers (columns worked) are <= 159 characters
    curve_every: int = 25
    curve_examples: int = 64           # validation problems scored for the curves
    eval_examples: int = 200           # test problems scored at the end
    spec_gamma: int = 4
    spec_prompts: int = 32
    dtype: str = "bfloat16"            # CPU: fp32 master weights, bf16 autocast (faster on this CPU)
    seed: int = 20


# `skd demo --quick` (and `skd bench reproduce --quick`): a seconds-long smoke run; numbers mean nothing.
QUICK_OVERRIDES = dict(teacher_limit=2000, teacher_steps=8, teacher_batch=8, init_steps=4, limit=64, distill_steps=4,
                       batch_size=4, max_new_tokens=24, curve_every=2, curve_examples=8, eval_examples=16,
                       spec_prompts=8, dtype="float32")

# The fields that make each cached stage (its stamp): a change of any of them retrains the stage.
TEACHER_RECIPE_FIELDS = ("task", "teacher_limit", "teacher_steps", "teacher_batch", "teacher_lr", "teacher_warmup",
                         "dtype", "seed")
_INIT_RECIPE_FIELDS = ("task", "limit", "init_steps", "batch_size", "init_lr", "dtype", "seed")


def _sft_run(cfg: DemoConfig, folder: Path, model: str, limit: int, steps: int, batch: int, lr: float,
             warmup: int) -> RunConfig:
    return RunConfig(model=ModelConfig(teacher=None, student=model, dtype=cfg.dtype),
                     data=DataConfig(task=cfg.task, limit=limit, val_limit=0, seed=cfg.seed),
                     train=TrainConfig(method="sft", lr=lr, warmup_steps=warmup, max_steps=steps, batch_size=batch,
                                       eval_every=0, save_every=0, seed=cfg.seed, output_dir=str(folder),
                                       overwrite=True),
                     sample=SampleConfig(max_new_tokens=cfg.max_new_tokens))


def ensure_teacher(cfg: DemoConfig, emit: Emit | None = None) -> tuple[Path, float | None]:
    """The demo's teacher stage, shared with `skd bench reproduce`: SFT of `tiny-teacher` on plenty
    of task data into `<run_dir>/<teacher_folder>`, cached by a stamp of the teacher recipe fields.
    Returns (checkpoint folder, training wall seconds or None when cached)."""
    folder = Path(cfg.run_dir) / cfg.teacher_folder
    run = _sft_run(cfg, folder, "tiny-teacher", cfg.teacher_limit, cfg.teacher_steps, cfg.teacher_batch,
                   cfg.teacher_lr, cfg.teacher_warmup)
    return cached_sft(folder, config_stamp(cfg, *TEACHER_RECIPE_FIELDS), run, name="teacher", emit=emit)


def _distil(cfg: DemoConfig, method: str, init_dir: Path, teacher, tok, task, train_ex, curve_ex,
            init_curve: float, emit: Emit) -> tuple[object, list, float]:
    """One method from the init; returns (student, accuracy curve, training wall seconds)."""
    from skd.core import models as model_lib
    from skd.core.train import train

    root = Path(cfg.run_dir)
    emit("stage", {"stage": f"distill {method}", "steps": cfg.distill_steps})
    t0 = time.perf_counter()
    student = model_lib.load_model(str(init_dir), dtype="float32")
    curve = [(0, init_curve)]

    def on_step(kind, p):
        emit(f"{method}:{kind}", p)
        if kind == "step" and p["step"] % cfg.curve_every == 0:
            curve.append((p["step"], accuracy(student, tok, task, curve_ex, max_new_tokens=cfg.max_new_tokens)))

    run = RunConfig(model=ModelConfig(dtype=cfg.dtype), data=DataConfig(task=cfg.task, limit=cfg.limit, val_limit=0),
                    train=TrainConfig(method=method, lr=cfg.distill_lr, max_steps=cfg.distill_steps,
                                      batch_size=cfg.batch_size, eval_every=0, save_every=0, seed=cfg.seed,
                                      output_dir=str(root / method), overwrite=True),
                    sample=SampleConfig(k=cfg.k, gamma=cfg.gamma, max_new_tokens=cfg.max_new_tokens))
    train(run, on_event=on_step, models=(teacher, student, tok), examples=(train_ex, []))
    return student, curve, time.perf_counter() - t0


def run_demo(cfg: DemoConfig, *, on_event: Emit | None = None) -> dict:
    """Run (or continue) the demo; returns the result also written to <run_dir>/results.json."""
    from skd.core import models as model_lib
    from skd.core.sampling import sample
    from skd.core.tasks import get_task
    from skd.core.data import tokenize_examples

    emit = on_event or (lambda kind, payload: None)
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    task = get_task(cfg.task)
    t_start = time.perf_counter()
    timings = {}

    teacher_dir, wall = ensure_teacher(cfg, emit)
    if wall is not None:
        timings["teacher"] = wall
    init_dir, wall = cached_sft(root / "student_init", config_stamp(cfg, *_INIT_RECIPE_FIELDS),
                                _sft_run(cfg, root / "student_init", "tiny-student", cfg.limit, cfg.init_steps,
                                         cfg.batch_size, cfg.init_lr, 0),
                                name="student_init", emit=emit)
    if wall is not None:
        timings["student_init"] = wall

    tok = model_lib.load_tokenizer(str(teacher_dir))
    teacher = model_lib.load_model(str(teacher_dir), dtype="float32")
    model_lib.freeze(teacher)
    curve_ex = task.load("validation", limit=cfg.curve_examples, seed=cfg.seed)
    test_ex = task.load("test", limit=cfg.eval_examples, seed=cfg.seed)
    train_ex = tokenize_examples(task.load("train", limit=cfg.limit, seed=cfg.seed), tok, task.render_prompt)

    results = {"config": dataclasses.asdict(cfg), "methods": {}}
    emit("stage", {"stage": "evaluate teacher and init"})
    results["teacher_accuracy"] = accuracy(teacher, tok, task, test_ex, max_new_tokens=cfg.max_new_tokens)
    init_model = model_lib.load_model(str(init_dir), dtype="float32")
    results["init_accuracy"] = accuracy(init_model, tok, task, test_ex, max_new_tokens=cfg.max_new_tokens)
    init_curve = accuracy(init_model, tok, task, curve_ex, max_new_tokens=cfg.max_new_tokens)
    del init_model

    spec_prompts = prompt_ids(task, tok, test_ex[: cfg.spec_prompts])
    greedy = SampleConfig(mode="teacher", teacher_temperature=0, max_new_tokens=cfg.max_new_tokens,
                          stop_strings=tuple(task.eval_stop_strings), keep_teacher_logits=False)
    sample(teacher, None, spec_prompts[:4], greedy, tokenizer=tok, vocab_size=len(tok))  # warm-up, untimed
    t0 = time.perf_counter()
    teacher_out = sample(teacher, None, spec_prompts, greedy, tokenizer=tok, vocab_size=len(tok))
    teacher_tps = teacher_out.generated / (time.perf_counter() - t0)
    results["teacher_tokens_per_s"] = teacher_tps
    for method in cfg.methods:
        student, curve, train_s = _distil(cfg, method, init_dir, teacher, tok, task, train_ex, curve_ex, init_curve,
                                          emit)
        corr = correction_summary(read_metrics(root / method))
        acc = accuracy(student, tok, task, test_ex, max_new_tokens=cfg.max_new_tokens)
        t1 = time.perf_counter()
        st = draft_stats(teacher, student, tok, task, spec_prompts, gamma=cfg.spec_gamma,
                         max_new_tokens=cfg.max_new_tokens)
        draft = {**st.to_dict(), "speedup": st.generated / (time.perf_counter() - t1) / teacher_tps}
        results["methods"][method] = {
            "test_accuracy": acc, "curve": curve, "train_wall_s": train_s,
            "correction_rate_start": corr["correction_rate_start"], "correction_rate_end": corr["correction_rate_end"],
            "correction_curve": corr["correction_curve"], "draft": draft, "checkpoint": str(root / method / "final")}
        emit("method_done", {"method": method, **results["methods"][method]})
        del student
    results["timings_s"] = {**timings, "total": time.perf_counter() - t_start}
    write_json_atomic(root / "results.json", results)
    results["plot"] = _plot(results, root / "curves.png")
    return results


def _plot(results: dict, path: Path) -> str | None:
    def draw(plt):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for method, r in results["methods"].items():
            a1.plot(*zip(*r["curve"]), marker="o", label=method)
            steps, corr = zip(*r["correction_curve"]) if r["correction_curve"] else ((), ())
            if any(corr):
                a2.plot(steps, corr, label=method)
        a1.axhline(results["teacher_accuracy"], color="black", ls="--", lw=0.8, label="teacher")
        a1.set(xlabel="step", ylabel="validation accuracy", title="Accuracy (exact match)", ylim=(0, 1))
        a1.legend(fontsize=8)
        a2.set(xlabel="step", ylabel="teacher replacements / generated tokens", title="Correction rate",
               ylim=(0, 1))
        a2.legend(fontsize=8)
        return fig
    return save_plot(path, draw)
