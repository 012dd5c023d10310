"""`skd bench reproduce`: the paper's comparison (Xu et al., ICLR 2025, CONTRACT.md §7) at tiny scale.

Public: ReproConfig, QUICK, SCHEMA, STUDY_METHODS, K_METHODS, CORRECTING, INITS, parse_regime(name) -> int,
parse_ks(text), variants(cfg), variant_name(method, k), init_seed_of(cfg, seed), init_seeds(cfg), plan(cfg) -> dict,
check_config(cfg), study_teacher_config(run_dir, task), Study, run(cfg, *, on_event=None, teacher_stage=None) -> dict.
The summary, the markdown and the plots are skd.core.studies.reproduce_report.

Grid: regime (the paper's "1k" / "100" training prompt sets: the first 1,000 / 100 `arith` train
problems after the seed-20 shuffle) x student init (weak: briefly SFT'd; strong: SFT'd for many more
steps on the regime's data, the paper's "task-SFT init") x seed x method, where `skd` is swept over K
(K = V, the whole vocabulary, is on-policy KD exactly, CONTRACT.md §1). `sft` continues the init's
SFT on the regime's ground truth for the same steps (the no-teacher baseline). Every run starts from its
(regime, init, seed) checkpoint and uses the same prompts, steps, optimizer and schedule (CONTRACT.md §4).

A seed sets the student's initial weights (the `tiny-student` preset re-initialised with preset seed +
seed, so seed 0 is the demo's student), the init SFT's and the distillation's data order and sampling
generators. The prompt sets and the test problems are fixed (data seed 20, as the paper's sets are).
With `init_seed` set, every seed's runs start from the one init trained with that seed, so the
seeds differ only in the distillation's data order and sampling: the spread of the inits then
leaves the seed-to-seed std of every method.

Measured per run: held-out test accuracy (greedy, exact match), the per-step correction rate from
metrics.jsonl (CONTRACT.md §7, last claim), and the student as a greedy speculative-decoding draft of
the teacher (acceptance rate, teacher passes per generated token; CONTRACT.md §7, fourth claim).

Caching (skd.core.studies.engine; a rerun or an interrupted study resumes where it stopped):
  teacher       <run_dir>/teacher-full                  the demo's teacher stage (demo.ensure_teacher)
                                                        with the preset's full recipe (700 steps, 96.6%),
                                                        not the demo's shortened one
  inits         <run_dir>/reproduce/<regime>/<init>/seed<s>/init   recipe.txt stamp, like the demo
  each run      <run_dir>/reproduce/<regime>/<init>/seed<s>/<variant>/result.json  (config stamp; a run
                whose result.json holds the same stamp and status "ok" is skipped; failed runs are retried);
                from a shared init (init_seed i): <run_dir>/reproduce/<regime>/<init>/seed<s>-init<i>/<variant>
Outputs (--output-dir): reproduce.json (every run's raw numbers, config, wall times, versions),
reproduce.md (mean ± std table), accuracy.png, correction_rate.png.
"""
from __future__ import annotations

import dataclasses
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skd.core.errors import SkdError
from skd.core.overrides import with_overrides
from skd.core.studies.engine import (Emit, cached_result, cached_sft, config_stamp, read_metrics, sft_done,
                                     write_json_atomic)
from skd.core.studies.measure import draft_stats, graded_score, prompt_ids, task_scores
from skd.core.studies.report import correction_summary

SCHEMA = "skd-reproduce-v1"
STUDY_METHODS = ("sft", "supervised", "on-policy", "imitkd", "two-stage", "skd", "speckd", "adaswitch")
K_METHODS = ("skd", "speckd")   # swept over --ks (SpecKD's gate is the same top-K test)
CORRECTING = ("skd", "adaswitch")   # methods in which the teacher writes some tokens (a correction rate)
INITS = ("weak", "mid", "strong")


@dataclass(frozen=True)
class ReproConfig:
    run_dir: str = "runs/demo"                    # beside the demo's stages (its own teacher-full/)
    output_dir: str = "benchmarks/results/reproduce"
    task: str = "arith"
    teacher: str | None = None                    # a checkpoint folder instead of the demo's teacher stage
    methods: tuple[str, ...] = STUDY_METHODS[:6]    # the paper's methods; speckd / adaswitch when asked for
    regimes: tuple[str, ...] = ("1k", "100")      # the paper's two training-set sizes
    inits: tuple[str, ...] = ("weak", "strong")
    init_regime: str | None = None                # the prompt set every init is SFT'd on; None: the cell's own
    ks: tuple[str, ...] = ("1", "3", "25", "V")   # SKD top-K sweep; "V" = the vocabulary size (on-policy KD)
    seeds: tuple[int, ...] = (0, 1, 2)
    init_seed: int | None = None                  # every seed starts from this seed's init (None: its own)
    weak_steps: int = 300                         # SFT on the prompt set alone, ~0% accuracy (the demo: 400)
    mid_steps: int = 600                          # between the two: a student that is partly right
    strong_steps: int = 1000                      # 3.3x longer on the same data: the "task-SFT" start
    init_lr: float = 1e-3                         # tiny models from scratch (demo), not the paper's 1e-5
    distill_steps: int = 100
    batch_size: int = 16
    lr: float = 5e-4                              # demo's distillation lr (tiny models need far more than 1e-5)
    gamma: int = 5                                # SKD draft length (released code)
    eval_examples: int = 300                      # held-out test problems per model
    spec_prompts: int = 64                        # test prompts decoded speculatively per student
    spec_gamma: int = 4
    max_new_tokens: int = 176                     # arith answers (columns worked) are <= 159 characters
    dtype: str = "auto"                           # fp32 master weights; bf16 autocast where native (as the demo)
    device: str = "cpu"
    data_seed: int = 20                           # paper seed: fixes the prompt sets and test problems
    quick: bool = False                           # smoke scale: the demo's --quick teacher recipe
    report_only: bool = False                     # write the report from finished stages; train and measure nothing

    def __post_init__(self):
        from skd.core.torch_names import resolve_compute_dtype

        object.__setattr__(self, "dtype", resolve_compute_dtype(self.dtype, self.device))

    def stamp(self, *fields: str, **extra: Any) -> str:
        """The study's stamp of `fields` and `extra` (engine.config_stamp under this study's SCHEMA)."""
        return config_stamp(self, *fields, schema=SCHEMA, **extra)


# Smoke scale for --quick (numbers mean nothing); explicit CLI options still override these.
QUICK = dict(regimes=("1k", "100"), ks=("1", "V"), seeds=(0,), weak_steps=2, mid_steps=3, strong_steps=4, distill_steps=3,
             batch_size=4, eval_examples=8, spec_prompts=4, max_new_tokens=24, dtype="float32")


def parse_regime(name: str) -> int:
    """'1k' -> 1000, '100' -> 100, '2.5k' -> 2500: the number of training prompts of a regime."""
    text = name.strip().lower()
    try:
        n = float(text[:-1]) * 1000 if text.endswith("k") else float(text)
    except ValueError:
        n = float("nan")
    if not math.isfinite(n) or n < 1 or n != int(n):
        raise SkdError(f"bad data regime {name!r}", "use a number of training prompts such as 1k or 100")
    return int(n)


def parse_ks(text: str) -> tuple[str, ...]:
    """'1,5,25,V' -> ('1', '5', '25', 'V'); each an integer >= 1 or V (the vocabulary size)."""
    ks = tuple(dict.fromkeys(k.strip().upper() if k.strip().upper() == "V" else k.strip()
                             for k in text.split(",") if k.strip()))
    for k in ks:
        if k != "V" and not (k.isdigit() and int(k) >= 1):
            raise SkdError(f"bad K {k!r} in --ks {text!r}", "use integers >= 1 or V, e.g. --ks 1,5,25,V")
    if not ks:
        raise SkdError("--ks is empty", "e.g. --ks 1,5,25,V")
    return ks


def variants(cfg: ReproConfig) -> list[tuple[str, str | None]]:
    """(method, K label) for each run of one (regime, init, seed) cell: `skd` and `speckd` once per K."""
    out: list[tuple[str, str | None]] = []
    for m in cfg.methods:
        out.extend([(m, k) for k in cfg.ks] if m in K_METHODS else [(m, None)])
    return out


def variant_name(method: str, k: str | None) -> str:
    """A run's name within its cell: the method, with its K for `skd` / `speckd` ('skd-k3', 'speckd-kV')."""
    return method if k is None else f"{method}-k{k}"


class NotRun(Exception):
    """A stage that --report-only finds unfinished (reported as "not run", never trained)."""


def init_sft_steps(cfg: ReproConfig, init: str) -> int:
    """SFT steps of a student init ('weak', 'mid' or 'strong')."""
    return {"weak": cfg.weak_steps, "mid": cfg.mid_steps, "strong": cfg.strong_steps}[init]


def init_prompts(cfg: ReproConfig, regime: str) -> int:
    """How many training prompts a student init of `regime`'s cell is SFT'd on: the cell's own regime,
    or cfg.init_regime for every cell (the same seed-`data_seed` shuffle, so "100" is a prefix of "1k")."""
    return parse_regime(cfg.init_regime or regime)


def init_seed_of(cfg: ReproConfig, seed: int) -> int:
    """The seed of the init a training seed starts from: cfg.init_seed when set, else the seed itself."""
    return seed if cfg.init_seed is None else cfg.init_seed


def init_seeds(cfg: ReproConfig) -> tuple[int, ...]:
    """The distinct init seeds the study trains (one when init_seed is set), in first-use order."""
    return tuple(dict.fromkeys(init_seed_of(cfg, s) for s in cfg.seeds))


def plan(cfg: ReproConfig) -> dict:
    """Counts shown before the study starts."""
    cells = len(cfg.regimes) * len(cfg.inits) * len(cfg.seeds)
    runs = variants(cfg)
    init_steps = {i: init_sft_steps(cfg, i) for i in INITS}
    n_inits = len(cfg.regimes) * len(cfg.inits) * len(init_seeds(cfg))
    return {"cells": cells, "variants": [variant_name(m, k) for m, k in runs], "runs": cells * len(runs),
            "inits": n_inits, "distill_steps_total": cells * len(runs) * cfg.distill_steps,
            "init_steps_total": len(cfg.regimes) * len(init_seeds(cfg)) * sum(init_steps[i] for i in cfg.inits)}


def check_config(cfg: ReproConfig) -> None:
    """Raise SkdError for an empty grid axis, an unknown method or init, or a bad regime."""
    for name in ("methods", "regimes", "inits", "seeds"):
        if not getattr(cfg, name):
            raise SkdError(f"--{name} is empty", "pass at least one value, see 'skd bench reproduce --help'")
    for m in cfg.methods:
        if m not in STUDY_METHODS:
            raise SkdError(f"unknown study method {m!r}", f"use some of: {', '.join(STUDY_METHODS)}")
    for i in cfg.inits:
        if i not in INITS:
            raise SkdError(f"unknown student init {i!r}", f"use some of: {', '.join(INITS)}")
    for r in (*cfg.regimes, *([cfg.init_regime] if cfg.init_regime else [])):
        parse_regime(r)
    if cfg.init_seed is not None and (isinstance(cfg.init_seed, bool) or not isinstance(cfg.init_seed, int)
                                      or cfg.init_seed < 0):
        raise SkdError(f"bad init seed {cfg.init_seed!r}", "use an integer >= 0, e.g. --init-seed 0")
    from skd.core.tasks import get_task

    get_task(cfg.task)   # one line naming the registered tasks when --task is unknown


def study_teacher_config(run_dir: str, task: str):
    """The demo's teacher stage with tiny-teacher's full SFT recipe (`skd sft --model tiny-teacher`):
    the demo shortens it to fit its 10 minutes; the study wants the strong teacher."""
    from skd.core.presets import PRESET_SFT_RECIPES
    from skd.core.studies.demo import DemoConfig

    return DemoConfig(run_dir=run_dir, task=task, teacher_steps=PRESET_SFT_RECIPES["tiny-teacher"]["max_steps"],
                      teacher_folder="teacher-full")


def _teacher_id(path: Path) -> str:
    """Identity of a teacher checkpoint folder for the run stamps: the recipe stamp beside it when the
    demo's teacher stage made it (<folder>/../recipe.txt: a copied stage keeps its identity), else its
    path and newest file time."""
    recipe = Path(path).parent / "recipe.txt"
    if recipe.is_file() and (Path(path).parent / "final") == Path(path):
        return recipe.read_text().strip()
    times = [p.stat().st_mtime_ns for p in Path(path).iterdir() if p.is_file()] if Path(path).is_dir() else [0]
    return f"{Path(path).resolve()}@{max(times, default=0)}"


# --------------------------------------------------------------------------- the study

class Study:
    """The study's shared inputs (teacher, tokenizer, test set) and its stages: inits and runs."""

    def __init__(self, cfg: ReproConfig, emit: Emit, teacher_stage):
        self.cfg, self.emit, self.teacher_stage = cfg, emit, teacher_stage
        self.root = Path(cfg.run_dir) / "reproduce"
        self.timings: dict[str, float] = {}
        self._train_ex: dict[str, list] = {}

    # ---- shared inputs
    def setup(self) -> None:
        from skd.core import models as model_lib
        from skd.core.studies.demo import QUICK_OVERRIDES, TEACHER_RECIPE_FIELDS, ensure_teacher
        from skd.core.tasks import get_task

        cfg = self.cfg
        self.task = get_task(cfg.task)
        if cfg.teacher is not None:
            teacher_dir, wall = Path(cfg.teacher), None
            self.teacher_info = {"source": "checkpoint", "path": str(teacher_dir), "id": _teacher_id(teacher_dir)}
        else:
            demo = with_overrides(study_teacher_config(cfg.run_dir, cfg.task), QUICK_OVERRIDES if cfg.quick else None)
            stage = self.teacher_stage or ensure_teacher
            if cfg.report_only and self.teacher_stage is None and not sft_done(
                    Path(demo.run_dir) / demo.teacher_folder, config_stamp(demo, *TEACHER_RECIPE_FIELDS)):
                raise SkdError("--report-only: the study's teacher has not been trained in this --run-dir",
                               "run the study once without --report-only (or pass --teacher)")
            teacher_dir, wall = stage(demo, self.emit)
            stamp = (Path(teacher_dir).parent / "recipe.txt")
            self.teacher_info = {"source": "demo teacher stage", "path": str(teacher_dir),
                                 "recipe": {f: getattr(demo, f) for f in TEACHER_RECIPE_FIELDS},
                                 "id": stamp.read_text().strip() if stamp.exists() else _teacher_id(teacher_dir)}
        if wall is not None:
            self.timings["teacher_train"] = wall
        self.teacher_dir = Path(teacher_dir)
        self.tok = model_lib.load_tokenizer(str(teacher_dir))
        self.teacher = model_lib.freeze(model_lib.load_model(str(teacher_dir), dtype="float32", device=cfg.device))
        self.vocab = len(self.tok)
        self.test_ex = self.task.load("test", limit=cfg.eval_examples, seed=cfg.data_seed)
        self.spec_prompts = prompt_ids(self.task, self.tok, self.test_ex[: cfg.spec_prompts])
        self.teacher_info["eval"] = self._teacher_eval()

    def train_examples(self, regime: str) -> list:
        """The regime's training prompts, tokenized (once per regime)."""
        from skd.core.data import tokenize_examples

        if regime not in self._train_ex:
            raw = self.task.load("train", limit=parse_regime(regime), seed=self.cfg.data_seed)
            self._train_ex[regime] = tokenize_examples(raw, self.tok, self.task.render_prompt)
        return self._train_ex[regime]

    def k_value(self, k: str | None) -> int | None:
        """A K label as a number: 'V' is the vocabulary size."""
        return None if k is None else (self.vocab if k == "V" else int(k))

    # ---- measurements
    def measure(self, model) -> dict:
        """Held-out accuracy and the model as a greedy speculative draft of the teacher."""
        cfg = self.cfg
        t0 = time.perf_counter()
        scores = task_scores(model, self.tok, self.task, self.test_ex, max_new_tokens=cfg.max_new_tokens)
        t1 = time.perf_counter()
        st = draft_stats(self.teacher, model, self.tok, self.task, self.spec_prompts, gamma=cfg.spec_gamma,
                         max_new_tokens=cfg.max_new_tokens)
        t2 = time.perf_counter()
        return {"test_accuracy": float(scores["accuracy"]), "test_graded": graded_score(scores),
                "test_examples": len(self.test_ex),
                "draft": st.to_dict(), "eval_wall_s": t1 - t0, "spec_wall_s": t2 - t1}

    def _teacher_eval(self) -> dict:
        cfg = self.cfg
        path = self.root / "teacher_eval.json"
        stamp = cfg.stamp("eval_examples", "max_new_tokens", "data_seed", "task", "device", teacher=self.teacher_info["id"])
        hit = cached_result(path, stamp)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        scores = task_scores(self.teacher, self.tok, self.task, self.test_ex, max_new_tokens=cfg.max_new_tokens)
        res = {"stamp": stamp, "status": "ok", "test_accuracy": float(scores["accuracy"]),
               "test_graded": graded_score(scores), "test_examples": len(self.test_ex),
               "wall_s": time.perf_counter() - t0}
        write_json_atomic(path, res)
        return res

    # ---- student initialisations (cached per regime, init, seed)
    def init_stamp(self, regime: str, init: str, seed: int) -> str:
        steps = init_sft_steps(self.cfg, init)
        return self.cfg.stamp("task", "init_lr", "batch_size", "dtype", "data_seed", "max_new_tokens",
                              regime=init_prompts(self.cfg, regime), init=init, steps=steps, seed=seed)

    def ensure_init(self, regime: str, init: str, seed: int) -> dict:
        """SFT a freshly initialised student on the regime's ground truth; then measure it once."""
        from skd.core import models as model_lib
        from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
        from skd.core.presets import PRESETS, build_preset

        cfg = self.cfg
        folder = self.root / regime / init / f"seed{seed}" / "init"
        stamp = self.init_stamp(regime, init, seed)
        steps = init_sft_steps(cfg, init)
        student_seed = PRESETS["tiny-student"]["seed"] + seed
        run = RunConfig(model=ModelConfig(teacher=None, student="tiny-student", dtype=cfg.dtype),
                        data=DataConfig(task=cfg.task, limit=init_prompts(cfg, regime), val_limit=0,
                                        seed=cfg.data_seed),
                        train=TrainConfig(method="sft", lr=cfg.init_lr, max_steps=steps, batch_size=cfg.batch_size,
                                          eval_every=0, save_every=0, seed=seed, output_dir=str(folder),
                                          overwrite=True),
                        sample=SampleConfig(max_new_tokens=cfg.max_new_tokens))
        info: dict = {"regime": regime, "init": init, "seed": seed, "steps": steps, "student_seed": student_seed,
                      "stamp": stamp, "path": str(folder / "final")}
        mpath = folder / "measure.json"
        mstamp = stamp + "/" + cfg.stamp("eval_examples", "spec_prompts", "spec_gamma", "max_new_tokens", "device",
                                         teacher=self.teacher_info["id"])
        if cfg.report_only and not (sft_done(folder, stamp) and cached_result(mpath, mstamp)):
            raise NotRun(f"init {regime}/{init}/seed{seed} not trained yet")
        models = None
        if not sft_done(folder, stamp):   # build the fresh student only when it will be trained
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                fresh = build_preset("tiny-student", Path(tmp) / "fresh", seed=student_seed)
                student = model_lib.load_model(str(fresh), dtype="float32", device=cfg.device)
            models = (None, student, self.tok)
        final, wall = cached_sft(folder, stamp, run, name=f"init {regime}/{init}/seed{seed}", emit=self.emit,
                                 models=models,
                                 examples=(self.train_examples(cfg.init_regime or regime), []) if models else None)
        info["train_wall_s"] = wall
        hit = cached_result(mpath, mstamp)
        if hit is None:
            model = model_lib.load_model(str(final), dtype="float32", device=cfg.device)
            hit = {"stamp": mstamp, "status": "ok", **self.measure(model)}
            write_json_atomic(mpath, hit)
            del model
        info["measure"] = {k: v for k, v in hit.items() if k not in ("stamp", "status")}
        return info

    def run_folder(self, regime: str, init: str, seed: int, method: str, k: str | None) -> Path:
        """Where one run's training output and result.json live (a shared init is named in the folder)."""
        i = init_seed_of(self.cfg, seed)
        cell = f"seed{seed}" if i == seed else f"seed{seed}-init{i}"
        return self.root / regime / init / cell / variant_name(method, k)

    def cached_runs(self) -> int:
        """Runs whose result.json already holds this configuration's stamp (skipped on this run)."""
        n = 0
        for regime in self.cfg.regimes:
            for init in self.cfg.inits:
                for seed in self.cfg.seeds:
                    for method, k in variants(self.cfg):
                        path = self.run_folder(regime, init, seed, method, k) / "result.json"
                        n += cached_result(path, self.run_stamp(regime, init, seed, method, k)) is not None
        return n

    # ---- one distillation run
    def run_stamp(self, regime: str, init: str, seed: int, method: str, k: str | None) -> str:
        return self.cfg.stamp("task", "distill_steps", "batch_size", "lr", "gamma", "eval_examples", "spec_prompts",
                              "spec_gamma", "max_new_tokens", "dtype", "data_seed", "device",
                              init=self.init_stamp(regime, init, init_seed_of(self.cfg, seed)),
                              teacher=self.teacher_info["id"],
                              method=method, k=self.k_value(k), seed=seed)

    def distil(self, regime: str, init: str, seed: int, method: str, k: str | None, init_dir: str) -> dict:
        """One method (with its K) from the cell's init; its curves, wall time and measurements."""
        from skd.core import models as model_lib
        from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig, \
            run_config_to_dict
        from skd.core.train import train

        cfg = self.cfg
        folder = self.run_folder(regime, init, seed, method, k)
        kv = self.k_value(k)
        run = RunConfig(model=ModelConfig(dtype=cfg.dtype),
                        data=DataConfig(task=cfg.task, limit=parse_regime(regime), val_limit=0, seed=cfg.data_seed),
                        train=TrainConfig(method=method, lr=cfg.lr, max_steps=cfg.distill_steps,
                                          batch_size=cfg.batch_size, eval_every=0, save_every=0, seed=seed,
                                          output_dir=str(folder), overwrite=True),
                        sample=SampleConfig(k=kv if kv is not None else SampleConfig.k, gamma=cfg.gamma,
                                            max_new_tokens=cfg.max_new_tokens))
        label = f"{regime}/{init}/seed{seed}/{variant_name(method, k)}"
        student = model_lib.load_model(init_dir, dtype="float32", device=cfg.device)
        t0 = time.perf_counter()
        # `sft` has no teacher: cross-entropy on the regime's ground truth (CONTRACT.md §4, last row).
        train(run, on_event=lambda kind, p: self.emit(f"train:{kind}", {**p, "run": label}),
              models=(None if method == "sft" else self.teacher, student, self.tok),
              examples=(self.train_examples(regime), []))
        train_wall = time.perf_counter() - t0
        steps = read_metrics(folder)
        return {"config": run_config_to_dict(run), "k": kv, "train_wall_s": train_wall, **correction_summary(steps),
                "final_loss": steps[-1]["loss"] if steps else None,
                "checkpoint": str(folder / "final"), **self.measure(student)}


def run(cfg: ReproConfig, *, on_event: Emit | None = None, teacher_stage=None) -> dict:
    """Run (or resume) the study; returns the result dict also written to <output_dir>/reproduce.json.

    teacher_stage(demo_cfg, emit) -> (checkpoint folder, wall seconds or None) replaces the demo's
    teacher stage (tests); by default skd.core.studies.demo.ensure_teacher.
    """
    import torch

    from skd.core.environment import env_info
    from skd.core.studies.reproduce_report import write_outputs
    from skd.core.train import TrainingInterrupted

    emit = on_event or (lambda kind, payload: None)
    check_config(cfg)
    t_start = time.perf_counter()
    study = Study(cfg, emit, teacher_stage)
    the_plan = plan(cfg)
    emit("plan", the_plan)
    study.setup()
    emit("resume", {"cached_runs": study.cached_runs(), "runs": the_plan["runs"]})
    result: dict = {"schema": SCHEMA, "config": dataclasses.asdict(cfg), "plan": the_plan,
                    "env": env_info(torch.device(cfg.device)), "teacher": study.teacher_info, "vocab_size": study.vocab,
                    "inits": [], "runs": []}
    index = 0
    for regime in cfg.regimes:
        for init in cfg.inits:
            cell_inits: dict[int, dict] = {}
            for seed in cfg.seeds:
                i_seed = init_seed_of(cfg, seed)
                if i_seed in cell_inits:          # a shared init: trained and measured once per cell
                    init_info = cell_inits[i_seed]
                else:
                    init_info = _one_init(study, regime, init, i_seed)
                    cell_inits[i_seed] = init_info
                    result["inits"].append(init_info)
                for method, k in variants(cfg):
                    index += 1
                    rec = _one_run(study, regime, init, seed, method, k, init_info, index, the_plan["runs"])
                    result["runs"].append(rec)
                    write_outputs(result, cfg, final=False)
    result["timings_s"] = {**study.timings, "total": time.perf_counter() - t_start}
    result["plots"] = write_outputs(result, cfg, final=True)
    return result


def _one_init(study: Study, regime: str, init: str, seed: int) -> dict:
    """One student init, trained or read from its cache; failures are recorded, not raised."""
    from skd.core.train import TrainingInterrupted

    try:
        init_info = study.ensure_init(regime, init, seed)
        init_info["status"] = "ok"
    except (KeyboardInterrupt, TrainingInterrupted):
        raise
    except NotRun as e:     # --report-only: a stage that has not run is reported as such
        init_info = {"regime": regime, "init": init, "seed": seed, "status": "not run", "error": str(e)}
    except Exception as e:  # recorded, and the cell's runs are recorded as failed too
        init_info = {"regime": regime, "init": init, "seed": seed, "status": "error",
                     "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return init_info


def _one_run(study: Study, regime: str, init: str, seed: int, method: str, k: str | None, init_info: dict,
             index: int, total: int) -> dict:
    from skd.core.train import TrainingInterrupted

    base = {"regime": regime, "init": init, "seed": seed, "init_seed": init_seed_of(study.cfg, seed),
            "method": method, "k_label": k,
            "k": study.k_value(k), "variant": variant_name(method, k)}
    study.emit("run_start", {**base, "index": index, "total": total})
    folder = study.run_folder(regime, init, seed, method, k)
    if init_info["status"] != "ok":
        status = "not run" if init_info["status"] == "not run" else "error"
        rec = {**base, "status": status, "error": f"student init: {init_info['error']}", "cached": False}
        study.emit("run_done", {**rec, "index": index, "total": total})
        return rec
    stamp = study.run_stamp(regime, init, seed, method, k)
    hit = cached_result(folder / "result.json", stamp)
    if hit is not None:
        rec = {**hit, "cached": True}
    elif study.cfg.report_only:
        rec = {**base, "status": "not run", "error": "not run yet", "cached": False}
    else:
        try:
            rec = {**base, "stamp": stamp, "status": "ok", **study.distil(regime, init, seed, method, k,
                                                                             init_info["path"])}
        except (KeyboardInterrupt, TrainingInterrupted):
            raise
        except Exception as e:  # honest: the failure is recorded and the study goes on
            rec = {**base, "stamp": stamp, "status": "error", "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()}
        write_json_atomic(folder / "result.json", rec)   # status "error" is retried on the next run
        rec = {**rec, "cached": False}
    study.emit("run_done", {**rec, "index": index, "total": total})
    return rec
