"""The one training loop: SFT and every distillation method of CONTRACT.md §4, on 1..W processes.

Public: train(cfg, *, on_event=None, models=None, examples=None) -> dict; TrainingInterrupted;
deterministic_kernels(on); TIMING_KEYS (the clock readings among the metrics). The loop's parts live in their own
rooms: skd.core.data (examples, their order), skd.core.batches (the method's sequences),
skd.core.objective (teacher targets, loss, validation loss), skd.core.rundir (the output folder),
skd.core.reporting (metrics.jsonl's scalars also sent to TensorBoard / W&B),
skd.core.gradient_checkpointing (the training forward recomputes its activations in backward).

Per optimizer step (B = batch_size sequences in the global batch, W processes, b = B / W each):
  1. data    — the next B indices of one deterministic global stream (a seeded permutation per
               epoch, crossing epoch boundaries, nothing dropped); process r takes rows [r*b, (r+1)*b);
  2. sample  — the b training sequences of the method (ground truth, student samples, SKD
               interleaved samples, or a per-prompt / per-batch mix), in chunks of C rows;
  3. teacher — teacher logits at every response position: reused from the SKD verification passes
               (CONTRACT.md §3, last point), else one no-grad teacher forward per chunk;
  4. loss    — the student forward + divergence (or cross-entropy) per micro-batch, divided ONCE by
               the count of the whole GLOBAL batch (all-reduced before dividing), so 1 x 8, 4 x 2
               accumulation and 2 processes x 4 are the same step;
  5. step    — DDP / FSDP sum the gradients, clip 1.0, AdamW, linear decay to 0 (CONTRACT.md §5).
Rank 0 writes metrics.jsonl, checkpoints and summary.json; `on_event` feeds the CLI's progress bar.

Randomness — why W processes give the run of 1 process. No generator carries state from one
step to the next: the method's coins (which rows are ground truth / student / SKD samples) come
from a generator seeded by (seed, step) and are drawn for the whole global batch on every
process; sequences are sampled in chunks of C consecutive global rows (C = train.sample_chunk,
default the per-process batch b), chunk c with student / teacher generators seeded by
(seed, step, c). sample() draws one uniform per row of its call, so a chunk is the smallest unit
that can be recreated on its own; a chunk never spans processes, so the sequences depend on C
but not on W: equal C gives equal runs at any process count (and default C = b makes the
largest batches per sample() call). Exact resume therefore needs no sampler state: the step
number regenerates it; checkpoints still carry the Python / torch / CUDA / NumPy global states.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
from pathlib import Path
from typing import Callable

import torch

from skd.core import checkpoint as ckpt
from skd.core import distributed, losses
from skd.core.batches import RNG_SCHEME, derive_seed, sample_rank_batch, sequence_sources
from skd.core.config import MEASURE_PRICES, RunConfig, SampleConfig, resolve_dtype, run_config_to_dict
from skd.core.data import ExampleStream, tokenize_examples
from skd.core.errors import SkdError
from skd.core.forward_prices import measure_teacher_prices
from skd.core.gating import speckd_gate
from skd.core.gradient_checkpointing import disable_gradient_checkpointing, enable_gradient_checkpointing
from skd.core.objective import CE_METHODS, accumulate_gradients, evaluate_loss
from skd.core.reporting import reporter_for
from skd.core.rundir import check_output_dir, prepare_output_dir, prune_checkpoints
from skd.core.timing import ForwardClock, clock
from skd.core.torch_names import fast_compute_dtype, parse_device


# The methods whose sequences the student drafts and the teacher verifies (SampleConfig mode "skd"):
# the ones --gamma auto and --teacher-prices act on.
DRAFTING_METHODS = ("skd", "mixed-skd")


def _fmt_prices(prices) -> str:
    return ", ".join(f"{p:.2f}" for p in prices)


# The metrics.jsonl keys that are clock readings (they differ between otherwise identical runs).
TIMING_KEYS = ("tokens_per_s", "time_sampling", "time_teacher", "time_loss_backward", "time_step", "elapsed",
               "sampling_forward_share", "time_in_forward", "time_in_backward", "model_time_share")


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM stopped training; a checkpoint of the last completed step was saved first."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"{signal.Signals(signum).name} received: stopped after step {step}"
                         + (f", saved {checkpoint}" if checkpoint else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def _model_context(model) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(model.config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


# --------------------------------------------------------------------------- signals

class _StopRequests:
    """SIGINT / SIGTERM become a request honoured at the end of the current step (a second Ctrl-C
    stops at once). Handlers are only installed from the main thread and restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self._old: dict = {}

    def _handle(self, signum, _frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


# --------------------------------------------------------------------------- the loop

def train(cfg: RunConfig, *, on_event: Callable[[str, dict], None] | None = None,
          models=None, examples=None) -> dict:
    """Run one training job; returns the summary dict (also written to summary.json).

    `models` = (teacher, student, tokenizer) and `examples` = (train, validation) lists of
    TokenizedExample may be passed in (tests, benchmarks); otherwise they are loaded from cfg.
    Under torchrun / accelerate launch (WORLD_SIZE > 1) every process calls this; see the module
    docstring for how the work is split. Raises SkdError for bad input, TrainingInterrupted after
    SIGINT / SIGTERM (with a checkpoint saved).
    """
    tc = cfg.train
    with deterministic_kernels(tc.deterministic):
        dist = distributed.init_from_env(tc.batch_size, fsdp=tc.fsdp, device=cfg.model.student_device,
                                         micro_batch_size=tc.micro_batch_size, sample_chunk=tc.sample_chunk)
        try:
            return _Run(cfg, dist, on_event, models, examples).run()
        finally:
            dist.close()


@contextlib.contextmanager
def deterministic_kernels(on: bool):
    """--deterministic: torch's deterministic algorithms (an op without one raises instead of running
    a nondeterministic kernel), cuBLAS with a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS
    starts: it must be set before the process's first matrix product on the GPU, which train() is when
    it runs from the command line) and no cuDNN autotuning. The previous settings come back after."""
    if not on:
        yield
        return
    import os

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]


class _Run:
    """One training job: set-up in __init__ (nothing written until every input is checked), then run()."""

    def __init__(self, cfg: RunConfig, dist: distributed.Dist, on_event, models, examples):
        from skd.core import models as model_lib, tasks as task_lib

        tc, dc, mc = cfg.train, cfg.data, cfg.model
        self.cfg, self.dist = cfg, dist
        self._emit = on_event or (lambda kind, payload: None)
        self.method = tc.method
        self.out = out = Path(tc.output_dir)

        # ---- checks that need nothing loaded: fail fast, before minutes of model loading
        resume_from = check_output_dir(out, cfg)
        found = dist.broadcast_object(str(resume_from) if resume_from is not None else None)
        resume_from = Path(found) if found is not None else None  # rank 0's view decides for all
        if resume_from is None and tc.resume:   # e.g. a preempted job's command, stopped before its first save
            self.emit("notice", {"message": f"no checkpoint in {out}: starting a fresh run"})
        self.reporter = reporter_for(tc.report_to, main_process=dist.is_main)   # a missing package fails here

        random.seed(tc.seed)
        torch.manual_seed(tc.seed)
        task = task_lib.get_task(dc.task)
        needs_teacher = self.method not in CE_METHODS
        train_raw = val_raw = None
        if examples is None:  # read the data before the models: a bad file fails in a second, not minutes
            train_raw = task.load("train", data_path=dc.data, fields=dc.fields, limit=dc.limit, seed=dc.seed)
            val_raw = []
            if dc.val_limit and (dc.val_data or dc.data is None):
                val_split = "validation" if "validation" in task.splits else "test"
                val_raw = task.load(val_split, data_path=dc.val_data, fields=dc.fields, limit=dc.val_limit,
                                    seed=dc.seed)
        half = {"bfloat16": torch.bfloat16, "float16": torch.float16}
        compute = mc.dtype
        if models is None:
            s_dev = parse_device(distributed.resolve_rank_device(mc.student_device, dist))
            t_dev = parse_device(distributed.resolve_rank_device(mc.teacher_device, dist))
            compute = resolve_dtype(mc.dtype, s_dev.type)
            # The student is loaded at full precision when it computes in a half dtype: fp32 master weights
            # come from the stored weights, not from a bf16 copy of them (a bf16 load would round every
            # fp32 weight first). The teacher is loaded in --teacher-dtype (default: the compute dtype).
            s_dtype = "float32" if compute in half else compute
            t_dtype = mc.teacher_dtype or compute
            if needs_teacher:
                teacher, student, tokenizer = model_lib.load_pair(
                    mc.teacher, mc.student, dtype=compute, teacher_dtype=t_dtype, student_dtype=s_dtype,
                    teacher_device=str(t_dev), student_device=str(s_dev), trust_remote_code=mc.trust_remote_code)
            else:
                teacher = None
                student = model_lib.load_model(mc.student, dtype=s_dtype, device=str(s_dev),
                                               trust_remote_code=mc.trust_remote_code, role="student")
                tokenizer = model_lib.load_tokenizer(mc.student, trust_remote_code=mc.trust_remote_code,
                                                     role="student")
        else:
            teacher, student, tokenizer = models
        self.teacher, self.student, self.tokenizer = teacher, student, tokenizer
        self.devices = [next(m.parameters()).device for m in (teacher, student) if m is not None]  # synced clocks
        self.vocab_size = len(tokenizer)
        if tc.teacher_topk is not None and tc.teacher_topk > self.vocab_size:
            raise SkdError(f"--teacher-topk {tc.teacher_topk} exceeds the vocabulary size {self.vocab_size}",
                           f"pass at most {self.vocab_size} (that many keeps every logit: the dense loss)")
        k = cfg.sample.k
        if self.method == "speckd" and tc.teacher_topk is not None and tc.teacher_topk < min(k, self.vocab_size):
            raise SkdError(f"--method speckd tests each token against the teacher's top {k} (--k), more than the "
                           f"{tc.teacher_topk} tokens --teacher-topk keeps",
                           f"pass --teacher-topk {min(k, self.vocab_size)} or more, or --k {tc.teacher_topk} or less")
        # fp32 master weights with bf16/fp16 compute when a half dtype was asked for (CONTRACT.md §5).
        # The half dtype comes from the (resolved) --dtype, or from the weights of a student passed in half.
        self.autocast_dtype = None
        s_param_dtype = next(student.parameters()).dtype
        if s_param_dtype in (torch.bfloat16, torch.float16):
            self.autocast_dtype = s_param_dtype
        elif compute in half:
            self.autocast_dtype = half[compute]
        if self.autocast_dtype is not None:
            student.float()
            if (self.autocast_dtype == torch.bfloat16 and next(student.parameters()).device.type == "cpu"
                    and fast_compute_dtype("cpu") != "bfloat16"):
                self.emit("notice", {"message": "bf16 compute on a CPU without native bf16 products (no AVX-512): "
                                                "each step runs many times slower than with --dtype float32"})
        self.dtypes = {"student_weights": str(next(student.parameters()).dtype).replace("torch.", ""),
                       "compute": str(self.autocast_dtype or next(student.parameters()).dtype).replace("torch.", ""),
                       "teacher": (str(next(teacher.parameters()).dtype).replace("torch.", "")
                                   if teacher is not None else None)}
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        # LoRA: adapters injected into the student's own modules (sampling, evaluation and the loss all
        # run through them); only they train.
        self.peft_model = None
        if tc.lora_r > 0:
            from skd.core import lora

            self.peft_model = lora.add_adapters(student, r=tc.lora_r, alpha=tc.lora_alpha, dropout=tc.lora_dropout,
                                                targets=tc.lora_target_modules, base=lora.absolute_base(mc.student))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        if examples is None:
            # A prompt must leave room to answer in both models' context windows.
            contexts = [_model_context(m) for m in (student, teacher) if m is not None]
            ctx = min((c for c in contexts if c is not None), default=None)
            train_ex = tokenize_examples(train_raw, tokenizer, task.render_prompt, max_length=ctx)
            val_ex = tokenize_examples(val_raw, tokenizer, task.render_prompt, max_length=ctx)
        else:
            train_ex, val_ex = examples
        if not train_ex:
            raise SkdError("the training set is empty", "check --data / --limit")
        self.train_ex, self.val_ex = train_ex, val_ex
        from skd.core.stops import resolve_stop_strings   # --stop adds to the task's, --no-task-stops replaces
        stops = resolve_stop_strings(task.stop_strings, cfg.sample.stop_strings, cfg.sample.task_stops)
        # Teacher targets: top-N log-probs + tail (SparseTeacher) at the loss temperature; N = V keeps every
        # logit, which is the dense path itself (no sparse targets are built).
        topk = tc.teacher_topk if tc.teacher_topk is not None and tc.teacher_topk < self.vocab_size else None
        self.scfg = SampleConfig(**{**cfg.sample.__dict__, "stop_strings": stops, "task_stops": False,
                                    "target_topk": topk, "target_temperature": tc.loss_temperature})

        B = tc.batch_size
        self.local_batch = B // dist.world_size
        self.chunk = tc.sample_chunk or self.local_batch
        self.micro = tc.micro_batch_size or self.local_batch
        self.total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * len(train_ex) / B))
        self.divergence = (None if self.method in CE_METHODS
                           else losses.get_divergence(tc.divergence, beta=tc.beta, alpha=tc.alpha,
                                                      temperature=tc.loss_temperature))

        # ---- the checkpoint to resume from is read whole before anything on disk changes
        resume_state = saved = None
        if resume_from is not None:
            resume_state = ckpt.read_trainer_state(resume_from)
            if resume_state is None:
                raise SkdError(f"checkpoint {resume_from} disappeared while starting", "run the command again")
            saved = ckpt.load_training_state(resume_from)
            if self.peft_model is not None:
                from skd.core import lora

                lora.load_adapter_weights(self.peft_model, resume_from)
            else:
                ckpt.load_weights(resume_from, student)    # before wrapping: every rank starts from these weights

        # --teacher-prices measure: the prices --gamma auto plans with, measured here once (rank 0, for all
        # ranks: lockstep sampling needs the same draft lengths everywhere) or read back from the checkpoint
        # resumed, so a resumed run drafts as the run it continues. Kept in every checkpoint's state.
        self.teacher_prices = None
        drafts_auto = self.scfg.gamma == "auto" and self.method in DRAFTING_METHODS
        if self.scfg.teacher_prices is not None and not drafts_auto:
            self.emit("notice", {"message": f"--teacher-prices has no effect here: only --gamma auto with "
                                            f"--method {' / '.join(DRAFTING_METHODS)} chooses draft lengths"})
        if self.scfg.teacher_prices == MEASURE_PRICES:
            if drafts_auto:
                self.teacher_prices = self.measured_prices(resume_state, resume_from)
            self.scfg = SampleConfig(**{**self.scfg.__dict__, "teacher_prices": self.teacher_prices})

        # Only the training forward checkpoints (train mode, gradients on); sampling keeps its KV cache.
        self.checkpointing = tc.gradient_checkpointing
        if self.checkpointing:
            enable_gradient_checkpointing(student)

        # ---- every input is valid: from here on the run folder changes
        if dist.is_main:
            prepare_output_dir(out, overwrite=tc.overwrite,
                                resume_step=resume_state["step"] if resume_state else (0 if tc.resume else None))
        dist.barrier()

        self.train_model = distributed.wrap_student(student, dist, tc.fsdp)
        trainable = [p for p in self.train_model.parameters() if p.requires_grad]   # LoRA: the adapters only
        self.optimizer = torch.optim.AdamW(trainable, lr=tc.lr,
                                           betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_eps,
                                           weight_decay=tc.weight_decay)
        total = self.total_steps

        def lr_lambda(step: int) -> float:  # linear warm-up (default none), then linear decay to 0
            if step < tc.warmup_steps:
                return (step + 1) / tc.warmup_steps
            return max(0.0, (total - step) / max(1, total - tc.warmup_steps))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        lengths = [len(e.prompt_ids) + len(e.response_ids) for e in train_ex] if tc.group_by_length else None
        self.data = ExampleStream(len(train_ex), tc.seed, lengths, tc.batch_size)   # lengths: group by length
        self.state = {"step": 0, "total_steps": total, "data_cursor": 0, "seed": tc.seed,
                      "world_size": dist.world_size, "sample_chunk": self.chunk, "rng_scheme": RNG_SCHEME}
        if self.teacher_prices is not None:
            self.state["teacher_prices"] = list(self.teacher_prices)
        self.resume_from = resume_from
        if resume_from is not None:
            distributed.load_optimizer_state(self.train_model, self.optimizer, saved["optimizer"])
            if saved.get("scheduler") is not None:
                self.scheduler.load_state_dict(saved["scheduler"])
            if saved.get("rng") is not None:
                ckpt.restore_rng(saved["rng"])
            self.data.cursor = int(resume_state["data_cursor"])
            self.state["step"] = int(resume_state["step"])
            self.state["data_cursor"] = self.data.cursor

    # ------------------------------------------------------------------ helpers

    def measured_prices(self, resume_state: dict | None, resume_from: Path | None) -> tuple[float, ...]:
        """--teacher-prices measure: the checkpoint's prices when resuming a run that measured them, else
        measured now on the first sampling chunk's prompts (skd.core.forward_prices); said in one line."""
        stored = (resume_state or {}).get("teacher_prices")
        if stored:
            prices = tuple(float(x) for x in stored)
            self.emit("notice", {"message": f"--teacher-prices measure: the prices measured when the run began "
                                            f"(from {resume_from}): {_fmt_prices(prices)}"})
            return prices
        measured = None
        if self.dist.is_main:
            rows = [ex.prompt_ids for ex in self.train_ex[: self.chunk]]
            t0 = clock(*self.devices)
            prices, costs = measure_teacher_prices(self.teacher, self.student, rows, vocab_size=self.vocab_size,
                                                   gamma_max=self.scfg.gamma_max, pad_id=self.pad_id)
            measured = list(prices)
            self.emit("notice", {"message": f"--teacher-prices measure: a teacher pass over 1, 2, ... positions "
                                            f"costs {_fmt_prices(prices)} one-position student forwards "
                                            f"(student {costs['student'][0]:.1f} ms; measured on {len(rows)} "
                                            f"prompts in {clock(*self.devices) - t0:.1f} s)"})
        return tuple(float(x) for x in self.dist.broadcast_object(measured))

    def emit(self, kind: str, payload: dict) -> None:
        if self.dist.is_main:
            self._emit(kind, payload)

    def save(self, path: Path, state: dict, rng: dict | None = None) -> None:
        """Checkpoint on the main process (FSDP: every process takes part in gathering the weights)."""
        sd = distributed.full_state_dict(self.train_model)
        osd = distributed.optimizer_state(self.train_model, self.optimizer)
        if self.dist.is_main:
            ckpt.save_checkpoint(path, self.student, self.tokenizer, self.cfg, dict(state), scheduler=self.scheduler,
                                 state_dict=sd, optimizer_state=osd, rng=rng,
                                 write_model=self.lora_writer(final=path.name == "final"))
            self.emit("checkpoint", {"path": str(path), "step": state["step"]})
        self.dist.barrier()

    def lora_writer(self, final: bool):
        """How a LoRA run writes the student into a checkpoint folder (None: the full weights, as usual):
        step checkpoints hold the adapters (PEFT format); `final` a merged plain folder plus adapter/."""
        if self.peft_model is None:
            return None
        from skd.core import lora

        def write(folder: Path) -> None:
            if final:
                self.student.save_pretrained(folder, state_dict=lora.merged_state_dict(self.student))
                lora.save_adapters(self.peft_model, folder / lora.ADAPTER_DIR)
            else:
                lora.save_adapters(self.peft_model, folder)
        return write

    def step_checkpoint(self, state: dict, rng: dict | None = None) -> Path:
        path = self.out / "checkpoints" / f"step-{state['step']:06d}"
        self.save(path, state, rng)
        if self.dist.is_main:
            prune_checkpoints(self.out / "checkpoints", self.cfg.train.keep_checkpoints)
        return path

    def weights_finite(self) -> bool:
        bad = sum(int(not bool(torch.isfinite(p).all())) for p in self.train_model.parameters() if p.numel())
        return self.dist.sum_floats([bad])[0] == 0

    def stop_non_finite(self, step: int, what: str, value: float, state: dict, rng: dict) -> None:
        """Stop with the weights of the last good step saved (never a NaN model, never `final`)."""
        self.optimizer.zero_grad(set_to_none=True)
        saved = None
        if step > 0 and self.weights_finite():
            path = self.out / "checkpoints" / f"step-{step:06d}"
            if ckpt.read_trainer_state(path) is None:
                self.step_checkpoint(state, rng)
            saved = path
        where = (f"the weights after step {step} were saved to {saved}" if saved else
                 "no step completed, nothing was saved" if step == 0 else
                 "the weights are no longer finite, nothing new was saved")
        raise SkdError(f"the {what} became non-finite ({value}) at step {step + 1}; {where}",
                       "lower --lr (the paper uses 1e-5) or keep --grad-clip on, and check the data for "
                       "empty or garbled responses")

    def switch_metrics(self, s, first_row: int) -> dict:
        """AdaSwitch: the global batch's switch positions (response index of the first teacher token,
        -1: the student wrote the whole response) and their summary."""
        B = self.cfg.train.batch_size
        code = [0.0] * B   # position + 2 in this process's rows (0: another process's row), summed over all
        for i, p in enumerate(s.switch_at.tolist()):
            code[first_row + i] = float(p + 2)
        positions = [int(c) - 2 for c in self.dist.sum_floats(code)]
        switched = [p for p in positions if p >= 0]
        return {"switch_positions": positions, "switch_rate": len(switched) / B,
                "mean_switch_position": sum(switched) / len(switched) if switched else None}

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        dist, out, total_steps = self.dist, self.out, self.total_steps
        first_row = dist.rank * self.local_batch      # this process's rows of every global batch
        start_step = self.state["step"]
        metrics_path = out / "metrics.jsonl"
        first_rec = None
        # "resolved": what the settings came to for this run (the stop strings sampled with; measured prices)
        resolved = {"stop_strings": list(self.scfg.stop_strings)}
        if self.teacher_prices is not None:   # --teacher-prices measure: what was measured (or read back)
            resolved["teacher_prices"] = list(self.teacher_prices)
        saved = {**run_config_to_dict(self.cfg), "resolved": resolved}
        if dist.is_main:
            ckpt.atomic_write_text(out / "run_config.json", json.dumps(saved, indent=2))
            if start_step > 0 and metrics_path.exists():
                head = metrics_path.read_text().split("\n", 1)[0]
                first_rec = json.loads(head) if head.strip() else None
        self.emit("start", {"total_steps": total_steps, "start_step": start_step,
                            "train_examples": len(self.train_ex), "val_examples": len(self.val_ex),
                            "method": self.method, "vocab_size": self.vocab_size, "world_size": dist.world_size,
                            "dtypes": self.dtypes,
                            "trainable_parameters": sum(p.numel() for p in self.student.parameters() if p.requires_grad),
                            "parameters": sum(p.numel() for p in self.student.parameters()),
                            "resumed_from": str(self.resume_from) if self.resume_from else None})
        metrics_f = open(metrics_path, "a") if dist.is_main else None
        last_rec = None
        t_start = self.t_start = clock(*self.devices)
        try:
            self.reporter.start(out, saved, start_step=start_step)   # the run config as run_config.json has it
            with _StopRequests() as stop:
                for step in range(start_step, total_steps):
                    last_rec = self._step(step, first_row, stop, metrics_f)
                    first_rec = first_rec or last_rec
        finally:
            if metrics_f is not None:
                metrics_f.close()
            self.reporter.close()
            if self.checkpointing:   # a student passed in goes back as it came (trained)
                disable_gradient_checkpointing(self.student)
        final = out / "final"
        self.save(final, self.state)
        summary = {"method": self.method, "steps": self.state["step"], "final_checkpoint": str(final),
                   "wall_time_s": clock(*self.devices) - t_start, "world_size": dist.world_size,
                   "resumed_from": str(self.resume_from) if self.resume_from else None,
                   "fsdp_units": distributed.fsdp_units(self.train_model),
                   "trainable_parameters": sum(p.numel() for p in self.student.parameters() if p.requires_grad),
                   "first": first_rec, "last": last_rec}
        if dist.is_main:
            ckpt.atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
        self.emit("end", summary)
        return summary

    def _step(self, step: int, first_row: int, stop: _StopRequests, metrics_f) -> dict:
        tc, dist = self.cfg.train, self.dist
        b = self.local_batch
        devs = self.devices
        t0 = clock(*devs)
        state_before, rng_before = dict(self.state), ckpt.capture_rng()   # for a stop inside this step
        # ---- 1. data: the global batch's indices; this process's rows [first_row, first_row + b)
        idx = self.data.next(tc.batch_size)
        batch = [self.train_ex[i] for i in idx[first_row: first_row + b]]
        coin = torch.Generator().manual_seed(derive_seed(tc.seed, "method", step))
        sources = sequence_sources(self.method, tc.batch_size, step=step, total_steps=self.total_steps, coin=coin,
                                   gkd_lambda=tc.gkd_lambda)[first_row: first_row + b]
        # ---- 2./3. sample (FSDP: through the sharded student, in lockstep) and teacher logits
        fwd = ForwardClock(self.student, self.teacher)   # model compute inside each phase (synced)
        timings: dict = {}
        with distributed.full_student(self.train_model, self.dist) as plain, fwd:
            s, teacher_flat, t_teacher = sample_rank_batch(
                self.method, batch, sources, first_row=first_row, chunk=self.chunk, seed=tc.seed, step=step,
                total_steps=self.total_steps, teacher=self.teacher, student=plain, scfg=self.scfg,
                tokenizer=self.tokenizer, pad_id=self.pad_id, vocab_size=self.vocab_size,
                gkd_lambda=tc.gkd_lambda, need_teacher=self.divergence is not None, forward_clock=fwd,
                timings=timings)
            if self.method == "speckd":   # the loss keeps only the tokens the teacher's top-K test accepts
                s = speckd_gate(s, teacher_flat, k=self.scfg.k, verification=self.scfg.speckd_verification,
                                rejected_weight=tc.rejected_weight)
        t2 = clock(*devs)
        fwd_sampling = fwd.seconds
        # ---- 4. loss over the global batch, normalised once
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with fwd:
            loss = accumulate_gradients(self.train_model, s, teacher_flat, divergence=self.divergence,
                                        micro_batch_size=self.micro, loss_norm=tc.loss_norm,
                                        vocab_size=self.vocab_size, autocast_dtype=self.autocast_dtype,
                                        dist=dist if dist.enabled else None, timings=timings)
        del teacher_flat
        if not math.isfinite(loss):
            self.stop_non_finite(step, "loss", loss, state_before, rng_before)
        # ---- 5. update (the norm is computed even without clipping: it guards against inf / nan)
        grad_norm = distributed.clip_grad_norm(self.train_model, tc.grad_clip if tc.grad_clip > 0 else math.inf,
                                               dist)
        if not math.isfinite(grad_norm):
            self.stop_non_finite(step, "gradient norm", grad_norm, state_before, rng_before)
        self.optimizer.step()
        self.scheduler.step()
        t3 = clock(*devs)
        self.state.update(step=step + 1, data_cursor=self.data.cursor)

        # One reduction for the step's telemetry and for the stop requests (all processes agree to stop).
        (proposed, accepted, replaced, generated, row_rounds, resp_tokens, n_int, n_term) = dist.sum_floats(
            [s.proposed, s.accepted, s.replaced, s.generated, s.row_rounds, int(s.response_lengths.sum()),
             stop.signum == signal.SIGINT, stop.signum == signal.SIGTERM])
        rec = {"step": step + 1, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
               "grad_norm": grad_norm,
               "correction_rate": replaced / generated if generated else 0.0,
               "acceptance_rate": accepted / proposed if proposed else 0.0,
               "mean_accepted_prefix": accepted / row_rounds if row_rounds else 0.0,
               "generated_tokens": int(generated), "proposed": int(proposed), "accepted": int(accepted),
               "replaced": int(replaced), "response_tokens": int(resp_tokens),
               "tokens_per_s": resp_tokens / max(t3 - t0, 1e-9),
               "time_sampling": t2 - t0 - t_teacher, "time_teacher": t_teacher, "time_loss_backward": t3 - t2,
               "time_step": t3 - t0, "elapsed": t3 - self.t_start,
               # Model compute against everything else: forwards of either model while sampling (the
               # teacher pass excluded), and forwards + backward over the whole step.
               "sampling_forward_share": ((fwd_sampling - timings.get("teacher_pass_forward", 0.0))
                                          / max(t2 - t0 - t_teacher, 1e-12)),
               "time_in_forward": fwd.seconds, "time_in_backward": timings.get("backward", 0.0),
               "model_time_share": (fwd.seconds + timings.get("backward", 0.0)) / max(t3 - t0, 1e-12)}
        if s.switch_at is not None:
            rec.update(self.switch_metrics(s, first_row))
        if self.method in DRAFTING_METHODS:   # decided by the method, so every rank joins the reduction
            # skd's rounds: the mean draft length of the student-led ones (varies under --gamma auto) and the
            # share and mean length of the teacher-led ones (rules.plan_round)
            drafts, led = s.draft_lengths or (), s.teacher_led_lengths or ()
            d_sum, d_n, l_sum, l_n = dist.sum_floats([sum(drafts), len(drafts), sum(led), len(led)])
            if d_n:
                rec["mean_draft_length"] = d_sum / d_n
            rec["teacher_led_share"] = l_n / (d_n + l_n) if d_n + l_n else 0.0
            if l_n:
                rec["mean_teacher_led_length"] = l_sum / l_n
        if self.val_ex and tc.eval_every and ((step + 1) % tc.eval_every == 0 or step + 1 == self.total_steps):
            with distributed.full_student(self.train_model, self.dist) as plain:
                if dist.is_main:
                    rec["val_loss"] = evaluate_loss(plain, self.teacher, self.val_ex, divergence=self.divergence,
                                                    vocab_size=self.vocab_size, pad_id=self.pad_id,
                                                    batch_size=self.micro, max_new_tokens=self.scfg.max_new_tokens,
                                                    autocast_dtype=self.autocast_dtype)
        if metrics_f is not None:
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()
        self.reporter.log(rec["step"], rec)
        self.emit("step", rec)
        last = step + 1 == self.total_steps
        saved = None
        if tc.save_every and (step + 1) % tc.save_every == 0 and not last:
            saved = self.step_checkpoint(self.state)
        if (n_int or n_term) and not last:   # on the last step the final save follows anyway
            signum = signal.SIGINT if n_int else signal.SIGTERM
            if saved is None:
                saved = self.step_checkpoint(self.state)
            raise TrainingInterrupted(signum, step + 1, str(saved))
        return rec
