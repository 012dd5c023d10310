"""One on-policy distillation step: TRL's DistillationTrainer against skd's on-policy and SKD steps.

Public: ROWS, TRL_ROWS (what each row measures), TRL_TRAINERS, trl_version() -> str | None,
trl_trainer(choice) -> (kind | None, skip line | None), prompt_ids(tokenizer, text) -> list[int],
run(pair, prompts, cfg) -> dict.

The same work on every side: the same student weights (each row trains its own copy, loaded from
the same folder), the same teacher weights, batch cfg.train_batch_size, the same prompts in the same
order (repeat r trains on prompts [r*B, (r+1)*B) of a cycle), at most cfg.max_new_tokens new tokens
(EOS ends a response; no stop strings), sampling at cfg.temperature with top-p 1 and no top-k,
forward KL(teacher || student) at temperature 1 averaged over the batch's response tokens, AdamW at
cfg.lr (betas 0.9 / 0.999, eps 1e-6, no weight decay; one optimizer object built alike for every
row), gradients clipped to norm 1, linear decay. Rows (ROWS):
  trl_on_policy       trl.DistillationTrainer (fully on-policy; beta 0 is its forward KL; its
                      temperature divides both models' logits in the loss, 1 leaves them as they are):
                      one optimizer step of Trainer.train(), read between the on_step_begin and
                      on_step_end callbacks (student generate(), teacher and student forwards, the
                      chunked divergence, backward, clipping, AdamW, scheduler), device-synced clock.
                      Activation checkpointing off (TRL's default is on: recomputation is not the same
                      work) and mixed precision only as --dtype says (TRL's default is bf16). Where trl
                      has no DistillationTrainer (or with --trl-trainer gkd): the experimental GKDTrainer
                      with lmbda 1 (every batch on-policy) and beta 0, timed the same way;
  skd_on_policy       what `skd distill --method on-policy` runs per step: skd.core.batches.sample_rank_batch
                      (student samples, then one teacher pass), skd.core.objective.accumulate_gradients,
                      clipping, AdamW, scheduler;
  skd_skd_gamma_*     the same with --method skd (interleaved SKD samples, top-K cfg.k; the teacher
                      logits of the verification passes are the loss targets), --gamma auto and 5;
  skd_skd_gamma_auto_student_led  --gamma auto --no-teacher-led: student-led rounds only, beside the
                      default auto row, so the teacher-led rounds' effect is measured side by side;
  skd_skd_gamma_auto_priced  --gamma auto with --teacher-prices measured in this run (per pass width).
The repeats are interleaved: TRL's training loop drives, and after each of its steps (outside its
clock) every skd row takes its step of the same repeat; step 0 is everyone's warm-up. Medians.
The SKD rows also report the per-token acceptance (kept / tested tokens, the unsmoothed form of
rules.acceptance_estimate) beside the reported kept / drafted rate, and the section ends with the floor of each SKD row
(skd.benchmarks.peer_floor), from forward prices measured before the timed steps on the first
batch; the row skd_skd_gamma_auto_priced runs --gamma auto with those prices per pass width.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import warnings

import torch

from skd.benchmarks.peer_floor import floors
from skd.core.forward_prices import forward_costs, prices_from_costs
from skd.core.timing import ForwardClock, clock

ROWS = {
    "trl_on_policy": "TRL DistillationTrainer: one Trainer.train() optimizer step (on_step_begin -> on_step_end): "
                     "student generate(), teacher + student forwards, chunked forward KL, backward, clip, AdamW",
    "skd_on_policy": "skd distill --method on-policy: sample_rank_batch (student samples + one teacher pass), "
                     "accumulate_gradients (forward KL), clip, AdamW",
    "skd_skd_gamma_auto": "skd distill --method skd --gamma auto: interleaved SKD samples (teacher logits of the "
                          "verification passes reused as targets), accumulate_gradients, clip, AdamW",
    "skd_skd_gamma_auto_student_led": "skd distill --method skd --gamma auto --no-teacher-led: as gamma auto, "
                                      "student-led rounds only",
    "skd_skd_gamma_5": "skd distill --method skd --gamma 5: as gamma auto, a fixed draft length of 5",
    "skd_skd_gamma_auto_priced": "skd distill --method skd --gamma auto --teacher-prices <measured>: as gamma "
                                 "auto, each teacher pass priced per width from this run's measured forward ms",
}
TRL_ROWS = {"distillation": ROWS["trl_on_policy"],
            "gkd": "TRL GKDTrainer, lmbda 1, beta 0: one Trainer.train() optimizer step "
                   "(on_step_begin -> on_step_end): "
                   "student generate(), teacher + student forwards (full logits), forward KL, backward, clip, AdamW"}
SKD_ROWS = {"skd_on_policy": ("on-policy", "auto", True), "skd_skd_gamma_auto": ("skd", "auto", True),
            "skd_skd_gamma_auto_student_led": ("skd", "auto", False),
            "skd_skd_gamma_5": ("skd", 5, True), "skd_skd_gamma_auto_priced": ("skd", "auto", True)}
# name: (method, gamma, teacher-led rounds allowed)
PRICED = "skd_skd_gamma_auto_priced"   # the row whose --gamma auto gets the measured teacher prices
TRL_TRAINERS = ("auto", "distillation", "gkd")


def trl_version() -> str | None:
    """The installed trl's version (read from its metadata: nothing is imported), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl")
    except PackageNotFoundError:
        return None


def trl_trainer(choice: str = "auto") -> tuple[str | None, str | None]:
    """(the TRL trainer to time: "distillation" or "gkd", None) or (None, the line saying why the row is skipped).

    auto: DistillationTrainer where trl has it, else the experimental GKDTrainer (run with lmbda 1)."""
    v = trl_version()
    if v is None:
        return None, "TRL rows skipped: trl is not installed (pip install 'skd[peers]')"
    tried = []
    for kind in (("distillation", "gkd") if choice == "auto" else (choice,)):
        try:
            _trl_classes(kind)
            return kind, None
        except ImportError as err:
            tried.append(f"{kind}: {err}")
    return None, f"TRL rows skipped: trl {v} has no usable trainer ({'; '.join(tried)}); pip install -U 'skd[peers]'"


def _trl_classes(kind: str):
    """(Config, Trainer) of TRL's on-policy trainer `kind` (ImportError when this trl has none)."""
    if kind == "distillation":
        from trl import DistillationConfig, DistillationTrainer

        return DistillationConfig, DistillationTrainer
    try:
        with warnings.catch_warnings():   # "experimental API" notice: the row says which trainer it timed
            warnings.simplefilter("ignore")
            from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        from trl import GKDConfig, GKDTrainer   # trl before 1.0 kept it at the top level
    return GKDConfig, GKDTrainer


def prompt_ids(tokenizer, text: str) -> list[int]:
    """One user turn through the chat template, tokenised the way TRL's trainer tokenises its prompts."""
    enc = tokenizer.apply_chat_template(conversation=[[{"role": "user", "content": text}]], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)
    return list(enc["input_ids"][0])


def _optimizer(model, cfg, total_steps: int):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.999),
                            eps=1e-6, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (total_steps - s) / total_steps))
    return opt, sched


class _SkdRow:
    """One skd row: its student copy, optimizer and the training loop's step functions."""

    def __init__(self, method: str, gamma, teacher_led: bool, *, pair, teacher, tok, cfg, total_steps: int,
                 prices=None):
        from skd.core import losses
        from skd.core import models as model_lib
        from skd.core.config import SampleConfig

        self.method, self.cfg, self.teacher, self.tok, self.total = method, cfg, teacher, tok, total_steps
        self.student = model_lib.load_model(str(pair.student), dtype="float32", device=cfg.device)
        self.student.requires_grad_(True)
        self.opt, self.sched = _optimizer(self.student, cfg, total_steps)
        self.scfg = SampleConfig(k=cfg.k, gamma=gamma, max_new_tokens=cfg.max_new_tokens,
                                 student_temperature=cfg.temperature, student_top_p=1.0,
                                 teacher_temperature=cfg.temperature, teacher_top_p=1.0, stop_strings=(),
                                 teacher_prices=prices, teacher_led=teacher_led)
        self.div = losses.get_divergence("fkl")
        self.autocast = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype)
        self.devices = [next(m.parameters()).device for m in (teacher, self.student)]
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def step(self, step: int, batch) -> dict:
        from skd.core.batches import derive_seed, sample_rank_batch, sequence_sources
        from skd.core.objective import accumulate_gradients

        cfg, B, V = self.cfg, len(batch), len(self.tok)
        fwd, timings = ForwardClock(self.teacher, self.student), {}   # model compute inside the phases (synced)
        t0 = clock(*self.devices)
        coin = torch.Generator().manual_seed(derive_seed(cfg.seed, "method", step))
        sources = sequence_sources(self.method, B, step=step, total_steps=self.total, coin=coin, gkd_lambda=0.5)
        with fwd:
            s, teacher_flat, t_teacher = sample_rank_batch(
                self.method, batch, sources, first_row=0, chunk=B, seed=cfg.seed, step=step, total_steps=self.total,
                teacher=self.teacher, student=self.student, scfg=self.scfg, tokenizer=self.tok, pad_id=self.pad,
                vocab_size=V, gkd_lambda=0.5, need_teacher=True, forward_clock=fwd, timings=timings)
        t1 = clock(*self.devices)
        fwd_sampling = fwd.seconds - timings.get("teacher_pass_forward", 0.0)
        self.student.train()
        self.opt.zero_grad(set_to_none=True)
        with fwd:
            accumulate_gradients(self.student, s, teacher_flat, divergence=self.div, micro_batch_size=B,
                                 loss_norm="token", vocab_size=V, autocast_dtype=self.autocast, timings=timings)
        float(torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0))
        self.opt.step()
        self.sched.step()
        t2 = clock(*self.devices)
        sampling = t1 - t0 - t_teacher
        # The same shares as metrics.jsonl's: forwards while sampling (teacher pass excluded) over the
        # sampling time, and forwards + backward over the whole step.
        return {"seconds": t2 - t0, "sampling_s": sampling, "teacher_s": t_teacher, "update_s": t2 - t1,
                "sampling_forward_share": fwd_sampling / max(sampling, 1e-12),
                "model_time_share": (fwd.seconds + timings.get("backward", 0.0)) / max(t2 - t0, 1e-12),
                "tokens": int(s.response_lengths.sum()), "proposed": s.proposed, "accepted": s.accepted,
                "rejected": s.replaced, "draft_lengths": list(s.draft_lengths or ()),
                "teacher_led_lengths": list(s.teacher_led_lengths or ())}


def _trl_trainer(kind: str, pair, prompts: list[tuple[str, list[int], list[int]]], cfg, steps: int, hook):
    """TRL's trainer `kind` over `prompts` in order (batch i = prompts[iB:(i+1)B]). hook(what, step, value)
    gets the synced seconds of each optimizer step ("seconds") and its response tokens ("tokens").
    Returns (trainer, the settings passed to its config)."""
    import dataclasses

    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from skd.core import models as model_lib
    from skd.core.errors import SkdError

    Config, Trainer = _trl_classes(kind)
    teacher = model_lib.freeze(model_lib.load_model(str(pair.teacher), dtype=cfg.dtype, device=cfg.device))
    student = model_lib.load_model(str(pair.student), dtype="float32", device=cfg.device)
    student.requires_grad_(True)
    tok = model_lib.load_tokenizer(str(pair.student))
    dev = next(student.parameters()).device
    B = cfg.train_batch_size

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = clock(dev)

        def on_step_end(self, args, state, control, **kw):
            hook("seconds", state.global_step - 1, clock(dev) - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):   # DistillationTrainer logs its lengths
            if logs and logs.get("completions/mean_length") is not None:
                hook("tokens", state.global_step - 1, round(float(logs["completions/mean_length"]) * B))

    fields = {f.name for f in dataclasses.fields(Config)}
    ckpt = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    settings = dict(per_device_train_batch_size=B, gradient_accumulation_steps=1, max_steps=steps,
                    learning_rate=cfg.lr, max_grad_norm=1.0, beta=0.0, temperature=cfg.temperature,
                    bf16=cfg.dtype == "bfloat16", fp16=cfg.dtype == "float16", use_cpu=dev.type == "cpu",
                    disable_dropout=True, seed=cfg.seed, report_to="none", save_strategy="no",
                    logging_strategy="steps", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
                    **{ckpt: False})
    if kind == "distillation":
        settings.update(top_p=1.0, top_k=0, max_completion_length=cfg.max_new_tokens, shuffle_dataset=False)
        if "lmbda" in fields:   # a version that mixes in off-policy batches: fully on-policy here
            settings["lmbda"] = 1.0
        data = Dataset.from_list([{"prompt": [{"role": "user", "content": t}]} for t, _, _ in prompts])
    else:   # GKD samples with top-p 1 and no top-k itself; lmbda 1: every batch is the student's own samples
        settings.update(lmbda=1.0, seq_kd=False, max_new_tokens=cfg.max_new_tokens,
                        max_length=max(len(p) + len(r) for _, p, r in prompts) + cfg.max_new_tokens)
        # Its collator splits prompt and answer: the ground truth answer is there only to be replaced.
        # An iterable dataset keeps the order (a map-style one would be shuffled by the Trainer's sampler).
        data = Dataset.from_list([{"messages": [{"role": "user", "content": t},
                                                {"role": "assistant",
                                                 "content": tok.decode(r, skip_special_tokens=True)}]}
                                  for t, _, r in prompts]).to_iterable_dataset()

        class Counting(Trainer):
            def training_step(self, model, inputs, num_items_in_batch=None):
                loss = super().training_step(model, inputs, num_items_in_batch)
                # GKD puts the on-policy sequences into `inputs`; -100 marks prompt, padding and after-EOS
                hook("tokens", self.state.global_step, int((inputs["labels"] != -100).sum()))
                return loss
        Trainer = Counting
    args = Config(output_dir=tempfile.mkdtemp(prefix="skd-peers-trl-"), **settings)
    if args.device != dev:
        raise SkdError(f"TRL's trainer would run on {args.device}, the bench on {dev}",
                       "pass --device cuda and pick the GPU with CUDA_VISIBLE_DEVICES, or --device cpu")
    trainer = Trainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok,
                      callbacks=[StepClock()], optimizers=_optimizer(student, cfg, steps))
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer, {k: v for k, v in settings.items() if k not in ("report_to", "save_strategy", "disable_tqdm")}


def run(pair, prompts: list[tuple[str, list[int], list[int]]], cfg) -> dict:
    """prompts: (user text, prompt ids, ground-truth response ids + EOS) per problem. See the module doc."""
    from skd.core import models as model_lib
    from skd.core.data import TokenizedExample

    B, steps = cfg.train_batch_size, cfg.repeats + 1
    order = [prompts[i % len(prompts)] for i in range(steps * B)]
    batches = [[TokenizedExample(p, r) for _, p, r in order[i * B: (i + 1) * B]] for i in range(steps)]
    kind, skip = trl_trainer(cfg.trl_trainer) if cfg.trl else (None, "TRL rows skipped: --no-trl")
    tok = model_lib.load_tokenizer(str(pair.student))
    teacher = model_lib.freeze(model_lib.load_model(str(pair.teacher), dtype=cfg.dtype, device=cfg.device))
    rows = {name: _SkdRow(m, g, led, pair=pair, teacher=teacher, tok=tok, cfg=cfg, total_steps=steps)
            for name, (m, g, led) in SKD_ROWS.items() if name != PRICED}
    # Forward prices (skd.core.forward_prices), measured on the first batch's prompts before any timed
    # step: the floor's, and the priced row's teacher prices in one-position student forwards.
    gamma_max = rows["skd_skd_gamma_auto"].scfg.gamma_max
    costs = forward_costs(teacher, rows["skd_skd_gamma_auto"].student, [ex.prompt_ids for ex in batches[0]],
                          vocab_size=len(tok), q_max=gamma_max, student_q_max=gamma_max,
                          pad_id=rows["skd_on_policy"].pad)
    prices = prices_from_costs(costs)
    rows[PRICED] = _SkdRow("skd", "auto", True, pair=pair, teacher=teacher, tok=tok, cfg=cfg, total_steps=steps,
                           prices=prices)
    records: dict[str, list[dict]] = {name: [] for name in ([] if skip else ["trl_on_policy"]) + list(rows)}

    def skd_steps(step: int) -> None:
        for name, row in rows.items():
            rec = row.step(step, batches[step])
            if step > 0:
                records[name].append(rec)

    trl_settings = None
    if skip is None:
        trl_seen: dict[int, dict] = {}

        def hook(what: str, step: int, value: float) -> None:
            trl_seen.setdefault(step, {})[what] = value
            if what == "seconds":   # TRL's step `step` is over: the skd rows take theirs, outside its clock
                skd_steps(step)

        with warnings.catch_warnings():   # transformers' deprecation notices about TRL's own calls
            warnings.simplefilter("ignore", FutureWarning)
            trainer, trl_settings = _trl_trainer(kind, pair, order, cfg, steps, hook)
            try:
                trainer.train()
            finally:   # its output folder (nothing is saved there: save_strategy "no")
                shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
        for step in range(1, steps):
            seen = trl_seen.get(step, {})
            records["trl_on_policy"].append({"seconds": seen["seconds"], "tokens": seen.get("tokens", float("nan"))})
        del trainer
    else:
        for step in range(steps):
            skd_steps(step)

    results = {}
    for name, recs in records.items():
        secs = [r["seconds"] for r in recs]
        rates = [r["tokens"] / r["seconds"] for r in recs]
        row = {"measures": TRL_ROWS[kind] if name == "trl_on_policy" else ROWS[name], "steps_timed": len(recs),
               "batch_size": B, "step_s": statistics.median(secs),
               "seconds_each": secs, "tokens_per_step": statistics.median(r["tokens"] for r in recs),
               "tokens_each": [r["tokens"] for r in recs], "tokens_per_s": statistics.median(rates)}
        if name in rows:
            row.update({f"{k}_s": statistics.median(r[f"{k}_s"] for r in recs)
                        for k in ("sampling", "teacher", "update")})
            row.update({k: statistics.median(r[k] for r in recs) for k in ("sampling_forward_share",
                                                                             "model_time_share")})
            proposed, accepted = sum(r["proposed"] for r in recs), sum(r["accepted"] for r in recs)
            drafts = [g for r in recs for g in r["draft_lengths"]]
            led = [n for r in recs for n in r["teacher_led_lengths"]]
            rejected = sum(r["rejected"] for r in recs)
            row.update(method=rows[name].method, gamma=rows[name].scfg.gamma,
                       teacher_led=rows[name].scfg.teacher_led and rows[name].method == "skd",
                       teacher_led_share=len(led) / (len(led) + len(drafts)) if led or drafts else None,
                       mean_teacher_led_length=statistics.fmean(led) if led else None,
                       acceptance_rate=accepted / proposed if proposed else None,
                       per_token_acceptance=accepted / (accepted + rejected) if accepted + rejected else None,
                       mean_draft_length=statistics.fmean(drafts) if drafts else None)
        results[name] = row
    ratios = {}
    if "trl_on_policy" in results:
        trl = results["trl_on_policy"]
        for name in rows:   # both > 1 where skd is faster
            ratios[f"{name}_over_trl_on_policy_tokens_per_s"] = results[name]["tokens_per_s"] / trl["tokens_per_s"]
            ratios[f"trl_on_policy_over_{name}_step_s"] = trl["step_s"] / results[name]["step_s"]
    floor = {"forward_ms": costs, "teacher_prices": prices, "batch_size": B, "rows": floors(results, costs, gamma_max=gamma_max,
                                                                  targets=cfg.floor_targets)}
    return {"results": results, "ratios": ratios, "floor": floor, "trl": trl_version(), "trl_trainer": kind,
            "skipped": skip,
            "trl_settings": trl_settings,
            "settings": {"batch_size": B, "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                         "top_p": 1.0, "top_k": None, "divergence": "forward KL(teacher || student), token mean",
                         "lr": cfg.lr, "optimizer": "AdamW(betas 0.9/0.999, eps 1e-6, wd 0), clip 1.0, linear decay",
                         "k": cfg.k, "stop": "EOS only", "dtype": cfg.dtype, "warmup_steps": 1,
                         "timed_steps": cfg.repeats}}
