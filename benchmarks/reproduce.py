"""`skd bench reproduce`: the paper's comparison (Xu et al., ICLR 2025, SKD_SPEC section 7) at tiny scale.

Public: ReproConfig, QUICK, parse_regime(name) -> int, parse_ks(text) -> tuple[str, ...],
plan(cfg) -> dict, run(cfg, *, on_event=None, teacher_stage=None) -> dict, aggregate(runs, cfg) -> list[dict],
render_markdown(result) -> str.

Grid: regime (the paper's "1k" / "100" training prompt sets: the first 1,000 / 100 `arith` train
problems after the seed-20 shuffle) x student init (weak: briefly SFT'd; strong: SFT'd for many more
steps on the regime's data, the paper's "task-SFT init") x seed x method, where `skd` is swept over K
(K = V, the whole vocabulary, is on-policy KD exactly, SKD_SPEC section 1). `sft` continues the init's
SFT on the regime's ground truth for the same steps (the no-teacher baseline). Every run starts from its
(regime, init, seed) checkpoint and uses the same prompts, steps, optimizer and schedule (section 4).

A seed sets the student's initial weights (the `tiny-student` preset re-initialised with preset seed +
seed, so seed 0 is the demo's student), the init SFT's and the distillation's data order and sampling
generators. The prompt sets and the test problems are fixed (data seed 20, as the paper's sets are).

Measured per run: held-out test accuracy (greedy, exact match), the per-step correction rate from
metrics.jsonl (section 7, last claim), and the student as a greedy speculative-decoding draft of the
teacher (acceptance rate, teacher passes per generated token; section 7, fourth claim).

Caching (a rerun or an interrupted study resumes where it stopped):
  teacher       <run_dir>/teacher-full                  the demo's teacher stage (skd.core.demo.ensure_teacher)
                                                        with the preset's full recipe (700 steps, 96.6%),
                                                        not the demo's shortened one
  inits         <run_dir>/reproduce/<regime>/<init>/seed<s>/init   recipe.txt stamp, like the demo
  each run      <run_dir>/reproduce/<regime>/<init>/seed<s>/<variant>/result.json  (config stamp; a run
                whose result.json holds the same stamp and status "ok" is skipped; failed runs are retried)
Outputs (--output-dir): reproduce.json (every run's raw numbers, config, wall times, versions),
reproduce.md (mean ± std table), accuracy.png, correction_rate.png.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from skd.benchmarks.common import cached_result as _cached, write_json_atomic as _write_json
from skd.core.errors import SkdError

SCHEMA = "skd-reproduce-v1"
STUDY_METHODS = ("sft", "supervised", "on-policy", "imitkd", "two-stage", "skd")
INITS = ("weak", "strong")
Emit = Callable[[str, dict], None]


@dataclass(frozen=True)
class ReproConfig:
    run_dir: str = "runs/demo"                    # beside the demo's stages (its own teacher-full/)
    output_dir: str = "benchmarks/results/reproduce"
    task: str = "arith"
    teacher: str | None = None                    # a checkpoint folder instead of the demo's teacher stage
    methods: tuple[str, ...] = STUDY_METHODS
    regimes: tuple[str, ...] = ("1k", "100")      # the paper's two training-set sizes
    inits: tuple[str, ...] = INITS
    ks: tuple[str, ...] = ("1", "3", "25", "V")   # SKD top-K sweep; "V" = the vocabulary size (on-policy KD)
    seeds: tuple[int, ...] = (0, 1, 2)
    weak_steps: int = 300                         # SFT on the prompt set alone, ~0% accuracy (the demo: 400)
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
    dtype: str = "bfloat16"                       # fp32 master weights, bf16 autocast (demo)
    device: str = "cpu"
    data_seed: int = 20                           # paper seed: fixes the prompt sets and test problems
    quick: bool = False                           # smoke scale: the demo's --quick teacher recipe

    def stamp(self, *fields: str, **extra: Any) -> str:
        d = dataclasses.asdict(self)
        payload = {**{f: d[f] for f in fields}, **extra, "schema": SCHEMA}
        if "task" in fields:  # a change of the built-in generator's format invalidates cached runs
            from skd.core.tasks import get_task

            payload["task_data"] = get_task(self.task).fingerprint()
        return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


# Smoke scale for --quick (numbers mean nothing); explicit CLI options still override these.
QUICK = dict(regimes=("1k", "100"), ks=("1", "V"), seeds=(0,), weak_steps=2, strong_steps=4, distill_steps=3,
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


def _variants(cfg: ReproConfig) -> list[tuple[str, str | None]]:
    """(method, K label) for each run of one (regime, init, seed) cell: `skd` once per K."""
    out: list[tuple[str, str | None]] = []
    for m in cfg.methods:
        out.extend([(m, k) for k in cfg.ks] if m == "skd" else [(m, None)])
    return out


def variant_name(method: str, k: str | None) -> str:
    return method if k is None else f"{method}-k{k}"


def plan(cfg: ReproConfig) -> dict:
    """Counts shown before the study starts."""
    cells = len(cfg.regimes) * len(cfg.inits) * len(cfg.seeds)
    variants = _variants(cfg)
    init_steps = {"weak": cfg.weak_steps, "strong": cfg.strong_steps}
    return {"cells": cells, "variants": [variant_name(m, k) for m, k in variants], "runs": cells * len(variants),
            "inits": cells, "distill_steps_total": cells * len(variants) * cfg.distill_steps,
            "init_steps_total": len(cfg.regimes) * len(cfg.seeds) * sum(init_steps[i] for i in cfg.inits)}


# --------------------------------------------------------------------------- small helpers

def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1); std is None below two values."""
    vals = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) >= 2 else None, "n": len(vals), "values": vals}


def study_teacher_config(run_dir: str, task: str):
    """The demo's teacher stage with tiny-teacher's full SFT recipe (`skd sft --model tiny-teacher`):
    the demo shortens it to fit its 10 minutes; the study wants the strong teacher."""
    from skd.core.demo import DemoConfig
    from skd.core.presets import PRESET_SFT_RECIPES

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

class _Study:
    def __init__(self, cfg: ReproConfig, emit: Emit, teacher_stage):
        self.cfg, self.emit, self.teacher_stage = cfg, emit, teacher_stage
        self.root = Path(cfg.run_dir) / "reproduce"
        self.out = Path(cfg.output_dir)
        self.timings: dict[str, float] = {}
        self._train_ex: dict[str, list] = {}

    # ---- shared inputs
    def setup(self) -> None:
        from skd.core import models as model_lib
        from skd.core.demo import TEACHER_RECIPE_FIELDS, QUICK_OVERRIDES, ensure_teacher
        from skd.core.tasks import get_task
        from skd.core.data import tokenize_examples

        cfg = self.cfg
        self.task = get_task(cfg.task)
        if cfg.teacher is not None:
            teacher_dir, wall = Path(cfg.teacher), None
            self.teacher_info = {"source": "checkpoint", "path": str(teacher_dir), "id": _teacher_id(teacher_dir)}
        else:
            demo = study_teacher_config(cfg.run_dir, cfg.task)
            if cfg.quick:
                demo = dataclasses.replace(demo, **QUICK_OVERRIDES)
            stage = self.teacher_stage or ensure_teacher
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
        self.spec_prompts = [t.prompt_ids for t in tokenize_examples(self.test_ex[: cfg.spec_prompts], self.tok,
                                                                     self.task.render_prompt)]
        self.teacher_info["eval"] = self._teacher_eval()

    def train_examples(self, regime: str) -> list:
        from skd.core.data import tokenize_examples

        if regime not in self._train_ex:
            raw = self.task.load("train", limit=parse_regime(regime), seed=self.cfg.data_seed)
            self._train_ex[regime] = tokenize_examples(raw, self.tok, self.task.render_prompt)
        return self._train_ex[regime]

    def k_value(self, k: str | None) -> int | None:
        return None if k is None else (self.vocab if k == "V" else int(k))

    # ---- measurements
    def measure(self, model) -> dict:
        """Held-out accuracy and the model as a greedy speculative draft of the teacher."""
        from skd.core.evaluation import evaluate_model
        from skd.core.speculative import speculative_generate

        cfg = self.cfg
        t0 = time.perf_counter()
        metrics, _ = evaluate_model(model, self.tok, self.task, self.test_ex, batch_size=64,
                                    max_new_tokens=cfg.max_new_tokens)
        t1 = time.perf_counter()
        _, st = speculative_generate(self.teacher, model, self.spec_prompts, gamma=cfg.spec_gamma,
                                     max_new_tokens=cfg.max_new_tokens, tokenizer=self.tok,
                                     stop_strings=tuple(self.task.eval_stop_strings), vocab_size=self.vocab)
        t2 = time.perf_counter()
        return {"test_accuracy": float(metrics["accuracy"]), "test_examples": len(self.test_ex),
                "draft": st.to_dict(), "eval_wall_s": t1 - t0, "spec_wall_s": t2 - t1}

    def _teacher_eval(self) -> dict:
        from skd.core.evaluation import evaluate_model

        cfg = self.cfg
        path = self.root / "teacher_eval.json"
        stamp = cfg.stamp("eval_examples", "max_new_tokens", "data_seed", "task", "device", teacher=self.teacher_info["id"])
        hit = _cached(path, stamp)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        metrics, _ = evaluate_model(self.teacher, self.tok, self.task, self.test_ex, batch_size=64,
                                    max_new_tokens=cfg.max_new_tokens)
        res = {"stamp": stamp, "status": "ok", "test_accuracy": float(metrics["accuracy"]),
               "test_examples": len(self.test_ex), "wall_s": time.perf_counter() - t0}
        _write_json(path, res)
        return res

    # ---- student initialisations (cached per regime, init, seed)
    def init_stamp(self, regime: str, init: str, seed: int) -> str:
        steps = self.cfg.weak_steps if init == "weak" else self.cfg.strong_steps
        return self.cfg.stamp("task", "init_lr", "batch_size", "dtype", "data_seed", "max_new_tokens",
                              regime=parse_regime(regime), init=init, steps=steps, seed=seed)

    def ensure_init(self, regime: str, init: str, seed: int) -> dict:
        """SFT a freshly initialised student on the regime's ground truth; then measure it once."""
        from skd.core import models as model_lib
        from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
        from skd.core.demo import _stage_done, cached_sft
        from skd.core.presets import PRESETS, build_preset

        cfg = self.cfg
        folder = self.root / regime / init / f"seed{seed}" / "init"
        stamp = self.init_stamp(regime, init, seed)
        steps = cfg.weak_steps if init == "weak" else cfg.strong_steps
        student_seed = PRESETS["tiny-student"]["seed"] + seed
        run = RunConfig(model=ModelConfig(teacher=None, student="tiny-student", dtype=cfg.dtype),
                        data=DataConfig(task=cfg.task, limit=parse_regime(regime), val_limit=0, seed=cfg.data_seed),
                        train=TrainConfig(method="sft", lr=cfg.init_lr, max_steps=steps, batch_size=cfg.batch_size,
                                          eval_every=0, save_every=0, seed=seed, output_dir=str(folder),
                                          overwrite=True),
                        sample=SampleConfig(max_new_tokens=cfg.max_new_tokens))
        info: dict = {"regime": regime, "init": init, "seed": seed, "steps": steps, "student_seed": student_seed,
                      "stamp": stamp, "path": str(folder / "final")}
        models = None
        if not _stage_done(folder, stamp):   # build the fresh student only when it will be trained
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                fresh = build_preset("tiny-student", Path(tmp) / "fresh", seed=student_seed)
                student = model_lib.load_model(str(fresh), dtype="float32", device=cfg.device)
            models = (None, student, self.tok)
        final, wall = cached_sft(folder, stamp, run, name=f"init {regime}/{init}/seed{seed}", emit=self.emit,
                                 models=models, examples=(self.train_examples(regime), []) if models else None)
        info["train_wall_s"] = wall
        mpath = folder / "measure.json"
        mstamp = stamp + "/" + cfg.stamp("eval_examples", "spec_prompts", "spec_gamma", "max_new_tokens", "device",
                                         teacher=self.teacher_info["id"])
        hit = _cached(mpath, mstamp)
        if hit is None:
            model = model_lib.load_model(str(final), dtype="float32", device=cfg.device)
            hit = {"stamp": mstamp, "status": "ok", **self.measure(model)}
            _write_json(mpath, hit)
            del model
        info["measure"] = {k: v for k, v in hit.items() if k not in ("stamp", "status")}
        return info

    def cached_runs(self) -> int:
        """Runs whose result.json already holds this configuration's stamp (skipped on this run)."""
        n = 0
        for regime in self.cfg.regimes:
            for init in self.cfg.inits:
                for seed in self.cfg.seeds:
                    for method, k in _variants(self.cfg):
                        path = self.root / regime / init / f"seed{seed}" / variant_name(method, k) / "result.json"
                        n += _cached(path, self.run_stamp(regime, init, seed, method, k)) is not None
        return n

    # ---- one distillation run
    def run_stamp(self, regime: str, init: str, seed: int, method: str, k: str | None) -> str:
        return self.cfg.stamp("task", "distill_steps", "batch_size", "lr", "gamma", "eval_examples", "spec_prompts",
                              "spec_gamma", "max_new_tokens", "dtype", "data_seed", "device",
                              init=self.init_stamp(regime, init, seed), teacher=self.teacher_info["id"],
                              method=method, k=self.k_value(k), seed=seed)

    def distil(self, regime: str, init: str, seed: int, method: str, k: str | None, init_dir: str) -> dict:
        from skd.core import models as model_lib
        from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig, \
            run_config_to_dict
        from skd.core.train import train

        cfg = self.cfg
        folder = self.root / regime / init / f"seed{seed}" / variant_name(method, k)
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
        # `sft` has no teacher: cross-entropy on the regime's ground truth (SKD_SPEC section 4, last row).
        train(run, on_event=lambda kind, p: self.emit(f"train:{kind}", {**p, "run": label}),
              models=(None if method == "sft" else self.teacher, student, self.tok),
              examples=(self.train_examples(regime), []))
        train_wall = time.perf_counter() - t0
        steps = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
        curve = [[m["step"], m["correction_rate"]] for m in steps]
        n = max(1, len(curve) // 10)
        return {"config": run_config_to_dict(run), "k": kv, "train_wall_s": train_wall,
                "correction_curve": curve,
                "correction_rate_start": statistics.fmean(c for _, c in curve[:n]) if curve else None,
                "correction_rate_end": statistics.fmean(c for _, c in curve[-n:]) if curve else None,
                "final_loss": steps[-1]["loss"] if steps else None,
                "checkpoint": str(folder / "final"), **self.measure(student)}


def run(cfg: ReproConfig, *, on_event: Emit | None = None, teacher_stage=None) -> dict:
    """Run (or resume) the study; returns the result dict also written to <output_dir>/reproduce.json.

    teacher_stage(demo_cfg, emit) -> (checkpoint folder, wall seconds or None) replaces the demo's
    teacher stage (tests); by default skd.core.demo.ensure_teacher.
    """
    import torch
    from skd.benchmarks.common import env_info
    from skd.core.train import TrainingInterrupted

    emit = on_event or (lambda kind, payload: None)
    for m in cfg.methods:
        if m not in STUDY_METHODS:
            raise SkdError(f"unknown study method {m!r}", f"use some of: {', '.join(STUDY_METHODS)}")
    for i in cfg.inits:
        if i not in INITS:
            raise SkdError(f"unknown student init {i!r}", "use weak, strong or both")
    for r in cfg.regimes:
        parse_regime(r)
    t_start = time.perf_counter()
    study = _Study(cfg, emit, teacher_stage)
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
            for seed in cfg.seeds:
                try:
                    init_info = study.ensure_init(regime, init, seed)
                    init_info["status"] = "ok"
                except (KeyboardInterrupt, TrainingInterrupted):
                    raise
                except Exception as e:  # recorded, and the cell's runs are recorded as failed too
                    init_info = {"regime": regime, "init": init, "seed": seed, "status": "error",
                                 "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                result["inits"].append(init_info)
                for method, k in _variants(cfg):
                    index += 1
                    rec = _one_run(study, regime, init, seed, method, k, init_info, index, the_plan["runs"])
                    result["runs"].append(rec)
                    _write_outputs(result, cfg, final=False)
    result["timings_s"] = {**study.timings, "total": time.perf_counter() - t_start}
    result["plots"] = _write_outputs(result, cfg, final=True)
    return result


def _one_run(study: _Study, regime: str, init: str, seed: int, method: str, k: str | None, init_info: dict,
             index: int, total: int) -> dict:
    from skd.core.train import TrainingInterrupted

    base = {"regime": regime, "init": init, "seed": seed, "method": method, "k_label": k,
            "k": study.k_value(k), "variant": variant_name(method, k)}
    study.emit("run_start", {**base, "index": index, "total": total})
    folder = study.root / regime / init / f"seed{seed}" / variant_name(method, k)
    if init_info["status"] != "ok":
        rec = {**base, "status": "error", "error": f"student init failed: {init_info['error']}", "cached": False}
        study.emit("run_done", {**rec, "index": index, "total": total})
        return rec
    stamp = study.run_stamp(regime, init, seed, method, k)
    hit = _cached(folder / "result.json", stamp)
    if hit is not None:
        rec = {**hit, "cached": True}
    else:
        try:
            rec = {**base, "stamp": stamp, "status": "ok", **study.distil(regime, init, seed, method, k,
                                                                             init_info["path"])}
        except (KeyboardInterrupt, TrainingInterrupted):
            raise
        except Exception as e:  # honest: the failure is recorded and the study goes on
            rec = {**base, "stamp": stamp, "status": "error", "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()}
        _write_json(folder / "result.json", rec)   # status "error" is retried on the next run
        rec = {**rec, "cached": False}
    study.emit("run_done", {**rec, "index": index, "total": total})
    return rec


# --------------------------------------------------------------------------- aggregation and outputs

def aggregate(runs: list[dict], cfg: ReproConfig, inits: list[dict] | None = None) -> list[dict]:
    """One row per (regime, init, variant) in plan order: mean ± std over the seeds whose run succeeded."""
    rows = []
    for regime in cfg.regimes:
        for init in cfg.inits:
            cell_inits = [i for i in (inits or []) if i["regime"] == regime and i["init"] == init]
            if cell_inits:
                ok = [i for i in cell_inits if i.get("status") == "ok"]
                rows.append(_row(regime, init, "init", None, None, [i["measure"] for i in ok],
                                 len(cell_inits) - len(ok)))
            for method, k in _variants(cfg):
                mine = [r for r in runs if (r["regime"], r["init"], r["variant"]) == (regime, init,
                                                                                      variant_name(method, k))]
                ok = [r for r in mine if r.get("status") == "ok"]
                rows.append(_row(regime, init, method, k, ok[0]["k"] if ok else None, ok, len(mine) - len(ok)))
    return rows


def _row(regime, init, method, k_label, k, ok: list[dict], failed: int) -> dict:
    curves = [r["correction_curve"] for r in ok if r.get("correction_curve")]
    mean_curve = []
    if curves:
        for i in range(min(len(c) for c in curves)):
            mean_curve.append([curves[0][i][0], statistics.fmean(c[i][1] for c in curves)])
    return {"regime": regime, "init": init, "method": method, "k_label": k_label, "k": k,
            "variant": method if k_label is None else variant_name(method, k_label), "n_ok": len(ok),
            "n_failed": failed,
            "test_accuracy": mean_std([r["test_accuracy"] for r in ok]),
            "draft_acceptance": mean_std([r["draft"]["acceptance_rate"] for r in ok]),
            "teacher_passes_per_token": mean_std([r["draft"]["teacher_forwards_per_token"] for r in ok]),
            "correction_rate_start": mean_std([r["correction_rate_start"] for r in ok if "correction_rate_start" in r]),
            "correction_rate_end": mean_std([r["correction_rate_end"] for r in ok if "correction_rate_end" in r]),
            "correction_curve_mean": mean_curve}


def _pm(s: dict, digits: int = 3) -> str:
    if s["mean"] is None:
        return "—"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")


def _claim_ks(cfg: ReproConfig) -> list[str]:
    """The Ks the claims section compares: every swept K but V (which is on-policy KD itself)."""
    if "skd" not in cfg.methods:
        return []
    return [k for k in cfg.ks if k != "V"] or list(cfg.ks)


def render_markdown(result: dict) -> str:
    cfg = ReproConfig(**{**result["config"], **{f: tuple(result["config"][f]) for f in
                                                 ("methods", "regimes", "inits", "ks", "seeds")}})
    env, teacher = result["env"], result["teacher"]
    lines = ["# SKD reproduction study (tiny scale)", "",
             f"Task `{cfg.task}`, teacher `{teacher['path']}` ({teacher['source']}), student `tiny-student`, "
             f"V = {result['vocab_size']}. Device {env['device_name']} ({env['device']}), torch {env['torch']}, "
             f"transformers {env['transformers']}, skd {env['skd']}, ops {env['ops_backend']}, {env['time']}.", "",
             f"Teacher test accuracy: **{teacher['eval']['test_accuracy']:.3f}** on "
             f"{teacher['eval']['test_examples']} held-out problems (greedy, exact match).", "",
             f"Settings: regimes {', '.join(f'{r} ({parse_regime(r)} prompts)' for r in cfg.regimes)}; "
             f"inits weak = {cfg.weak_steps} SFT steps, strong = {cfg.strong_steps} SFT steps (lr {cfg.init_lr}); "
             f"{cfg.distill_steps} distillation steps, batch {cfg.batch_size}, lr {cfg.lr}, linear decay; "
             f"SKD gamma {cfg.gamma}, K in {{{', '.join(cfg.ks)}}} (V = whole vocabulary = on-policy KD); "
             f"seeds {', '.join(map(str, cfg.seeds))}; {cfg.eval_examples} test problems; draft = greedy "
             f"speculative decoding, gamma {cfg.spec_gamma}, {cfg.spec_prompts} prompts. "
             f"Tiny models from scratch: lrs are not the paper's 1e-5 (deviation).", "",
             "Mean ± sample std over seeds (n = successful seeds; `init` = the starting checkpoint, untrained further). "
             "`corr.` = correction rate (teacher replacements / generated tokens), mean of the first and last 10% "
             "of steps (SKD only: the other methods never replace tokens; their per-step zeros are in the JSON).", "",
             "| regime | init | method | K | n | test accuracy | draft acceptance | teacher passes / token | corr. start → end |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["summary"]:
        k = "—" if r["k_label"] is None else (f"V={r['k']}" if r["k_label"] == "V" else r["k_label"])
        corr = "—" if r["method"] != "skd" or r["correction_rate_start"]["mean"] is None else \
            f"{r['correction_rate_start']['mean']:.3f} → {r['correction_rate_end']['mean']:.3f}"
        n = f"{r['n_ok']}" + (f" ({r['n_failed']} failed)" if r["n_failed"] else "")
        lines.append(f"| {r['regime']} | {r['init']} | {r['method']} | {k} | {n} | {_pm(r['test_accuracy'])} | "
                     f"{_pm(r['draft_acceptance'])} | {_pm(r['teacher_passes_per_token'])} | {corr} |")
    lines += ["", *_claims(result["summary"], cfg)]
    failed = [r for r in result["runs"] if r.get("status") != "ok"]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['regime']}/{r['init']}/seed{r['seed']}/{r['variant']}: {r.get('error', '?')}" for r in failed]
    t = result.get("timings_s")
    if t:
        lines += ["", f"Total wall time {t['total']:.0f} s (per-run wall times in reproduce.json)."]
    return "\n".join(lines) + "\n"


def _claims(summary: list[dict], cfg: ReproConfig) -> list[str]:
    """SKD_SPEC section 7, read off the table: differences of means, and whether they exceed the
    sum of the two standard deviations ("separated"); nothing is claimed beyond that."""
    cks = _claim_ks(cfg)
    if not cks:
        return []
    out = ["## The paper's claims (SKD_SPEC section 7), as measured here", "",
           "SKD at each K minus each baseline, test accuracy (separated = |difference| > std_a + std_b; "
           "needs n >= 2 on both sides):", ""]
    by = {(r["regime"], r["init"], r["variant"]): r for r in summary}
    for regime in cfg.regimes:
        for init in cfg.inits:
            for ck in cks:
                skd = by.get((regime, init, variant_name("skd", ck)))
                if skd is None or skd["test_accuracy"]["mean"] is None:
                    continue
                parts = []
                for m in cfg.methods:
                    other = by.get((regime, init, m))
                    if m == "skd" or other is None or other["test_accuracy"]["mean"] is None:
                        continue
                    a, b = skd["test_accuracy"], other["test_accuracy"]
                    d = a["mean"] - b["mean"]
                    sep = "n/a" if a["std"] is None or b["std"] is None else \
                        ("separated" if abs(d) > a["std"] + b["std"] else "within noise")
                    parts.append(f"{m} {d:+.3f} ({sep})")
                corr = skd["correction_rate_start"]["mean"], skd["correction_rate_end"]["mean"]
                trend = "" if None in corr else f"; correction rate {corr[0]:.3f} → {corr[1]:.3f}"
                out.append(f"- {regime} / {init} / K = {ck}: " + ", ".join(parts) + trend)
            ks = [by[(regime, init, variant_name("skd", k))]["test_accuracy"]["mean"] for k in cfg.ks
                  if by.get((regime, init, variant_name("skd", k)))]
            ks = [x for x in ks if x is not None]
            if len(ks) > 1:
                out.append(f"- {regime} / {init}: accuracy over the K sweep {min(ks):.3f} – {max(ks):.3f}")
    return out


def _write_outputs(result: dict, cfg: ReproConfig, *, final: bool) -> dict:
    """reproduce.json and reproduce.md after every run (a long study shows partial results); plots at the end."""
    from skd.core.checkpoint import atomic_write_text

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["summary"] = aggregate(result["runs"], cfg, result["inits"])
    plots = {}
    if final:
        plots = {"accuracy": _plot_accuracy(result, cfg, out / "accuracy.png"),
                 "correction_rate": _plot_correction(result, cfg, out / "correction_rate.png")}
        result["plots"] = plots
    _write_json(out / "reproduce.json", result)
    atomic_write_text(out / "reproduce.md", render_markdown(result))
    return plots


def _grid(plt, cfg: ReproConfig, title: str):
    nr, nc = len(cfg.regimes), len(cfg.inits)
    fig, axes = plt.subplots(nr, nc, figsize=(5.5 * nc, 3.8 * nr), squeeze=False)
    fig.suptitle(title)
    return fig, axes


def _plot_accuracy(result: dict, cfg: ReproConfig, path: Path) -> str | None:
    from skd.benchmarks.common import save_plot

    def draw(plt):
        fig, axes = _grid(plt, cfg, "Held-out test accuracy (mean ± std over seeds)")
        for i, regime in enumerate(cfg.regimes):
            for j, init in enumerate(cfg.inits):
                ax = axes[i][j]
                rows = [r for r in result["summary"] if r["regime"] == regime and r["init"] == init]
                names = [r["variant"] for r in rows]
                means = [r["test_accuracy"]["mean"] or 0.0 for r in rows]
                errs = [r["test_accuracy"]["std"] or 0.0 for r in rows]
                colors = ["tab:red" if r["method"] == "skd" else "tab:gray" if r["method"] == "init" else "tab:blue"
                          for r in rows]
                ax.bar(range(len(rows)), means, yerr=errs, capsize=3, color=colors)
                ax.axhline(result["teacher"]["eval"]["test_accuracy"], color="black", ls="--", lw=0.8,
                           label="teacher")
                ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
                top = max([result["teacher"]["eval"]["test_accuracy"]] + [m + e for m, e in zip(means, errs)])
                ax.set_ylim(0, max(0.05, min(1.0, 1.15 * top)))
                ax.set(title=f"regime {regime} · {init} init", ylabel="test accuracy")
                ax.legend(fontsize=8)
        fig.tight_layout()
        return fig
    return save_plot(path, draw)


def _plot_correction(result: dict, cfg: ReproConfig, path: Path) -> str | None:
    from skd.benchmarks.common import save_plot

    def draw(plt):
        fig, axes = _grid(plt, cfg, "Correction rate per step (mean over seeds): teacher replacements / generated tokens "
                                      "(0 for methods without replacements)")
        for i, regime in enumerate(cfg.regimes):
            for j, init in enumerate(cfg.inits):
                ax = axes[i][j]
                for r in result["summary"]:
                    if r["regime"] != regime or r["init"] != init or not r["correction_curve_mean"]:
                        continue
                    steps, rates = zip(*r["correction_curve_mean"])
                    ax.plot(steps, rates, label=r["variant"], lw=1.5 if r["method"] == "skd" else 1.0,
                            ls="-" if r["method"] == "skd" else ":")
                ax.set(title=f"regime {regime} · {init} init", xlabel="step", ylabel="correction rate",
                       ylim=(-0.02, 1.02))
                ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
    return save_plot(path, draw)
