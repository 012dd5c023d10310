"""`skd demo`: the paper's comparison in miniature, offline on a CPU, in minutes.

Public: DemoConfig, QUICK_OVERRIDES, TEACHER_RECIPE_FIELDS, SCORE_KEYS, run_demo(cfg, *, on_event=None) -> dict,
ensure_teacher(cfg, emit) (the teacher stage, shared with `skd bench reproduce`), lead_score(scores),
reading(results) (the two lines printed under the table).

Steps (each cached in the run directory by its stamp (skd.core.studies.engine), so a second run
skips what is done and a changed setting redoes only the stages it feeds):
  1. teacher      — SFT of the `tiny-teacher` preset on plenty of built-in task data (default
                    `manyway-short`: word problems with many valid worked solutions);
  2. student init — `tiny-student` SFT'd briefly on the 100 distillation prompts (a weak start:
                    few of its lines are valid);
  3. evaluate     — teacher and init on the test split (greedy), and the teacher's decoding speed;
  4. distil       — from that init, with each method (supervised KD, on-policy KD, SKD) on the
                    same prompts, steps, optimizer and schedule; the lead metric (the task's graded
                    score, else accuracy) on a validation subset every `curve_every` steps (the
                    curves); then the student on the test split and as the speculative-decoding
                    draft of the teacher (greedy, gamma 4).
Writes results.json (with the two-line reading) and curves.png into the run directory.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from skd.core.presets import PRESET_SFT_RECIPES
from skd.core.studies.engine import (Emit, cached_result, cached_sft, config_stamp, read_json, read_metrics,
                                     stage_done, write_json_atomic)
from skd.core.studies.measure import draft_stats, graded_score, prompt_ids, task_scores
from skd.core.studies.report import correction_summary, save_plot

_TEACHER_RECIPE = PRESET_SFT_RECIPES["tiny-teacher"]  # what `skd sft --model tiny-teacher` runs


@dataclass(frozen=True)
class DemoConfig:
    run_dir: str = "runs/demo"
    task: str = "manyway-short"
    methods: tuple[str, ...] = ("supervised", "on-policy", "skd")
    # teacher: plenty of data, trained once (cached); lr for training from scratch, not the paper's 1e-5
    teacher_limit: int = _TEACHER_RECIPE["limit"]
    teacher_steps: int = 500           # the preset's recipe runs 700 (~6 min quiet on manyway-short: graded
    #                                    0.62-0.64); 500 (~270 s) is what fits the demo's 8 minutes
    teacher_folder: str = "teacher"    # <run_dir>/<teacher_folder>; the study trains the full recipe elsewhere
    teacher_batch: int = _TEACHER_RECIPE["batch_size"]
    teacher_lr: float = _TEACHER_RECIPE["lr"]
    teacher_warmup: int = _TEACHER_RECIPE["warmup_steps"]
    # student init and distillation: the paper's small fixed prompt set
    limit: int = 100                   # the study's "100 / weak" cell, where SKD (K = 3) was separated from every
    init_steps: int = 300              # baseline over 3 seeds (benchmarks/results/manyway_prediction.md): 100
    #                                    prompts, a 300-step SFT init (graded ~0.03: few valid lines), 100 steps
    init_lr: float = 1e-3
    distill_steps: int = 100
    distill_lr: float = 5e-4           # tiny models from scratch need far more than the paper's 1e-5
    batch_size: int = 16
    k: int = 3                         # the paper's K = 25 is 0.01% of Gemma's 256k vocabulary; on this
    #                                    103-character vocabulary K = 25 is a quarter of it and rejects
    #                                    almost nothing (correction rate 0.2% for a weak student, against
    #                                    19% at K = 3; benchmarks/results/README.md)
    gamma: int = 5                     # released code default
    max_new_tokens: int = 100          # as the study: manyway-short answers are <= 38 characters, the rest is
    #                                    room for a student that does not stop
    curve_every: int = 25
    curve_examples: int = 64           # validation problems scored for the curves
    eval_examples: int = 200           # test problems scored at the end
    spec_gamma: int = 4
    spec_prompts: int = 32
    dtype: str = "auto"                # fp32 master weights; compute in bf16 autocast where the CPU has native
    #                                    bf16 products (AVX-512), else fp32 (torch_names.fast_compute_dtype):
    #                                    resolved when the config is made, so stamps and results hold the dtype used
    seed: int = 20

    def __post_init__(self):
        from skd.core.torch_names import resolve_compute_dtype

        object.__setattr__(self, "dtype", resolve_compute_dtype(self.dtype, "cpu"))


# `skd demo --quick` (and `skd bench reproduce --quick`): a seconds-long smoke run; numbers mean nothing.
QUICK_OVERRIDES = dict(teacher_limit=2000, teacher_steps=8, teacher_batch=8, init_steps=4, limit=64, distill_steps=4,
                       batch_size=4, max_new_tokens=24, curve_every=2, curve_examples=8, eval_examples=16,
                       spec_prompts=8, dtype="float32")

# The fields that make each cached stage (its stamp): a change of any of them retrains the stage.
TEACHER_RECIPE_FIELDS = ("task", "teacher_limit", "teacher_steps", "teacher_batch", "teacher_lr", "teacher_warmup",
                         "dtype", "seed")
_INIT_RECIPE_FIELDS = ("task", "limit", "init_steps", "batch_size", "init_lr", "dtype", "seed")
_EVAL_FIELDS = ("eval_examples", "curve_examples", "spec_prompts", "max_new_tokens")
_METHOD_FIELDS = ("distill_steps", "distill_lr", "k", "gamma", "curve_every", "spec_gamma")
SCORE_KEYS = ("graded", "partial_credit", "valid", "accuracy", "answered")  # what results.json keeps per model


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
    """One method from the init; returns (student, lead-metric curve on validation, training wall seconds)."""
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
            curve.append((p["step"], lead_score(_scores(cfg, student, tok, task, curve_ex))))

    run = RunConfig(model=ModelConfig(dtype=cfg.dtype), data=DataConfig(task=cfg.task, limit=cfg.limit, val_limit=0),
                    train=TrainConfig(method=method, lr=cfg.distill_lr, max_steps=cfg.distill_steps,
                                      batch_size=cfg.batch_size, eval_every=0, save_every=0, seed=cfg.seed,
                                      output_dir=str(root / method), overwrite=True),
                    sample=SampleConfig(k=cfg.k, gamma=cfg.gamma, max_new_tokens=cfg.max_new_tokens))
    train(run, on_event=on_step, models=(teacher, student, tok), examples=(train_ex, []))
    return student, curve, time.perf_counter() - t0


def _scores(cfg: DemoConfig, model, tok, task, examples) -> dict:
    """The task's scores of `model` on `examples` (greedy), floats only."""
    scores = task_scores(model, tok, task, examples, max_new_tokens=cfg.max_new_tokens)
    return {k: float(v) for k, v in scores.items() if k in SCORE_KEYS and v is not None}


def lead_score(scores: dict) -> float:
    """The number the demo leads with: the task's graded score where it has one, else accuracy."""
    g = graded_score(scores)
    return float(scores["accuracy"]) if g is None else g


def run_demo(cfg: DemoConfig, *, on_event: Emit | None = None) -> dict:
    """Run (or continue) the demo; returns the result also written to <run_dir>/results.json. Every stage
    is cached by its stamp (teacher, init, the teacher/init evaluation, each method), so a rerun only
    redoes what its settings changed."""
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
    init_stamp = config_stamp(cfg, *_INIT_RECIPE_FIELDS)
    init_dir, wall = cached_sft(root / "student_init", init_stamp,
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
    spec_prompts = prompt_ids(task, tok, test_ex[: cfg.spec_prompts])

    base_stamp = config_stamp(cfg, *TEACHER_RECIPE_FIELDS, *_EVAL_FIELDS, init=init_stamp)
    base_path = root / "evaluation.json"
    base = cached_result(base_path, base_stamp)
    if base is None:
        emit("stage", {"stage": "evaluate teacher and init"})
        t0 = time.perf_counter()
        init_model = model_lib.load_model(str(init_dir), dtype="float32")
        base = {"stamp": base_stamp, "status": "ok", "teacher": _scores(cfg, teacher, tok, task, test_ex),
                "init": _scores(cfg, init_model, tok, task, test_ex),
                "init_curve": lead_score(_scores(cfg, init_model, tok, task, curve_ex))}
        del init_model
        greedy = SampleConfig(mode="teacher", teacher_temperature=0, max_new_tokens=cfg.max_new_tokens,
                              stop_strings=tuple(task.eval_stop_strings), keep_teacher_logits=False)
        sample(teacher, None, spec_prompts[:4], greedy, tokenizer=tok, vocab_size=len(tok))  # warm-up, untimed
        t1 = time.perf_counter()
        teacher_out = sample(teacher, None, spec_prompts, greedy, tokenizer=tok, vocab_size=len(tok))
        base["teacher_tokens_per_s"] = teacher_out.generated / (time.perf_counter() - t1)
        write_json_atomic(base_path, base)
        timings["evaluate"] = time.perf_counter() - t0
    else:
        emit("cached", {"stage": "evaluate teacher and init", "path": str(base_path)})

    results = {"config": dataclasses.asdict(cfg), "lead_metric": "graded" if graded_score(base["init"]) is not None
               else "accuracy", "teacher": base["teacher"], "init": base["init"],
               "teacher_tokens_per_s": base["teacher_tokens_per_s"], "methods": {}}
    for method in cfg.methods:
        results["methods"][method] = _method_stage(cfg, method, base_stamp, init_dir, teacher, tok, task, train_ex,
                                                   curve_ex, test_ex, spec_prompts, base, timings, emit)
        emit("method_done", {"method": method, **results["methods"][method]})
    results["timings_s"] = {**timings, "total": time.perf_counter() - t_start}
    results["reading"] = reading(results)
    write_json_atomic(root / "results.json", results)
    results["plot"] = _plot(results, root / "curves.png")
    return results


def _method_stage(cfg: DemoConfig, method: str, base_stamp: str, init_dir: Path, teacher, tok, task, train_ex,
                  curve_ex, test_ex, spec_prompts, base: dict, timings: dict, emit: Emit) -> dict:
    """One method's training and measurements, cached in <run_dir>/<method>/result.json."""
    folder = Path(cfg.run_dir) / method
    stamp = config_stamp(cfg, *_METHOD_FIELDS, method=method, base=base_stamp)
    if stage_done(folder, stamp):
        done = read_json(folder / "result.json")
        emit("cached", {"stage": f"distill {method}", "path": str(folder / "final")})
        return {k: v for k, v in done.items() if k not in ("stamp", "status")}
    student, curve, train_s = _distil(cfg, method, init_dir, teacher, tok, task, train_ex, curve_ex,
                                      base["init_curve"], emit)
    t0 = time.perf_counter()
    corr = correction_summary(read_metrics(folder))
    scores = _scores(cfg, student, tok, task, test_ex)
    t1 = time.perf_counter()
    st = draft_stats(teacher, student, tok, task, spec_prompts, gamma=cfg.spec_gamma,
                     max_new_tokens=cfg.max_new_tokens)
    draft = {**st.to_dict(), "speedup": st.generated / (time.perf_counter() - t1) / base["teacher_tokens_per_s"]}
    out = {"test": scores, "curve": curve, "train_wall_s": train_s,
           "correction_rate_start": corr["correction_rate_start"], "correction_rate_end": corr["correction_rate_end"],
           "correction_curve": corr["correction_curve"], "draft": draft, "checkpoint": str(folder / "final")}
    write_json_atomic(folder / "result.json", {"stamp": stamp, "status": "ok", **out})
    timings[method] = train_s + time.perf_counter() - t0
    return out


def reading(results: dict) -> list[str]:
    """Two lines for a newcomer: what SKD did differently from the baselines and whether it came out
    ahead on the lead metric, then where its correction rate went (only methods that ran are named)."""
    methods, lead = results["methods"], results["lead_metric"]
    k = results["config"]["k"]
    score = {m: lead_score(r["test"]) for m, r in methods.items()}
    others = {m: v for m, v in score.items() if m != "skd"}
    first = (f"SKD trains on the student's own samples with every token outside the teacher's top-{k} replaced by "
             f"the teacher's; supervised KD trains on the reference solutions, on-policy KD on the student's samples "
             f"as they are. {lead} on {results['config']['eval_examples']} test problems: "
             + ", ".join(f"{m} {v:.3f}" for m, v in score.items())
             + f" (teacher {lead_score(results['teacher']):.3f}, init {lead_score(results['init']):.3f})")
    if "skd" in score and others:
        gap = score["skd"] - max(others.values())
        first += ". SKD minus " + ", minus ".join(f"{m} {score['skd'] - v:+.3f}" for m, v in others.items())
        first += (f": SKD ahead of every other method by {gap:.3f}" if gap > 0 else
                  f": SKD is not ahead of every other method ({gap:+.3f} against the best)")
        first += " in this one seed (the study's seeds say how large the noise is)."
    else:
        first += "."
    skd = methods.get("skd")
    if skd is None or skd["correction_rate_start"] is None:
        second = "Correction rate: SKD did not run, so no token was replaced."
    else:
        second = (f"Correction rate (teacher replacements / student tokens) during SKD: "
                  f"{skd['correction_rate_start']:.2f} at the start -> {skd['correction_rate_end']:.2f} at the end"
                  + (": the teacher had to repair less as the student improved."
                     if skd["correction_rate_end"] < skd["correction_rate_start"] else ": it did not fall in this run."))
    return [first, second]


def _plot(results: dict, path: Path) -> str | None:
    lead = results["lead_metric"]

    def draw(plt):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for method, r in results["methods"].items():
            a1.plot(*zip(*r["curve"]), marker="o", label=method)
            steps, corr = zip(*r["correction_curve"]) if r["correction_curve"] else ((), ())
            if any(corr):
                a2.plot(steps, corr, label=method)
        a1.axhline(lead_score(results["teacher"]), color="black", ls="--", lw=0.8, label="teacher")
        a1.set(xlabel="step", ylabel=f"validation {lead}", title=f"{lead.capitalize()} (validation subset)",
               ylim=(0, 1))
        a1.legend(fontsize=8)
        a2.set(xlabel="step", ylabel="teacher replacements / generated tokens", title="Correction rate",
               ylim=(0, 1))
        a2.legend(fontsize=8)
        return fig
    return save_plot(path, draw)
