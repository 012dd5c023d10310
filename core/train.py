"""The one training loop: SFT and every distillation method of SKD_SPEC.md section 4.

Public: train(cfg, *, on_event=None) -> dict; TokenizedExample; tokenize_examples(...);
build_training_batch(...); distill_loss(...); resolve_device(...); save_checkpoint(...).

Per optimizer step (B = batch_size sequences):
  1. sample  — build the B training sequences of the method (ground truth, student samples, SKD
               interleaved samples, or a per-prompt / per-batch mix), all B at once;
  2. teacher — teacher logits at every response position: reused from the SKD verification passes
               (SKD_SPEC 3, last point), else one no-grad teacher forward;
  3. loss    — the student forward + divergence (or cross-entropy) per micro-batch, divided ONCE by
               the count of the whole batch (tokens, or sequences for the paper's per-sequence mean),
               so 1 x 8 equals 4 x 2 accumulation exactly;
  4. step    — clip 1.0, AdamW, linear decay to 0 (paper setup, SKD_SPEC 5).
Telemetry per step goes to metrics.jsonl and to `on_event` (the CLI's live progress bar).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from skd.core import losses
from skd.core.config import RunConfig, SampleConfig, run_config_to_dict
from skd.core.errors import SkdError
from skd.core.sampling import PROV_PROMPT, PROV_TEACHER, Samples, sample

DISTILL_METHODS = ("skd", "supervised", "on-policy", "imitkd", "two-stage", "mixed-skd", "gkd")
CE_METHODS = ("sft", "seqkd")


@dataclass(frozen=True)
class TokenizedExample:
    prompt_ids: list[int]
    response_ids: list[int]   # ground-truth response, EOS appended


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise SkdError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SkdError(f"device {name!r} requested but CUDA is not available", "use --*-device cpu")
    return dev


def tokenize_examples(examples, tokenizer, render_prompt: Callable, *, max_length: int | None = None):
    """Prompt text -> ids through the chat template; response ids + EOS."""
    out = []
    eos = tokenizer.eos_token_id
    if eos is None:
        raise SkdError("the tokenizer has no EOS token", "use a tokenizer with an eos_token")
    templated = bool(getattr(tokenizer, "chat_template", None))
    for ex in examples:
        text = render_prompt(ex, tokenizer)
        # A rendered chat template already carries BOS and friends.
        p = tokenizer(text, add_special_tokens=not templated)["input_ids"]
        r = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [eos]
        if not p:
            raise SkdError("a prompt tokenised to zero tokens", "check the data's prompt field")
        if max_length is not None and len(p) >= max_length:
            raise SkdError(f"a prompt has {len(p)} tokens, the model's context is {max_length}",
                           "shorten the prompts (or filter the data), or use a model with a longer context")
        out.append(TokenizedExample(p, r))
    return out


def _model_context(model) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(model.config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _ground_truth_samples(batch: list[TokenizedExample], pad_id: int, max_new_tokens: int) -> Samples:
    B = len(batch)
    resp = [ex.response_ids[:max_new_tokens] for ex in batch]
    P = torch.tensor([len(ex.prompt_ids) for ex in batch])
    n = torch.tensor([len(r) for r in resp])
    L = int((P + n).max())
    tokens = torch.full((B, L), pad_id, dtype=torch.long)
    prov = torch.zeros(B, L, dtype=torch.int8)
    for b, (ex, r) in enumerate(zip(batch, resp)):
        ids = ex.prompt_ids + r
        tokens[b, : len(ids)] = torch.tensor(ids)
        prov[b, : len(ex.prompt_ids)] = PROV_PROMPT
        prov[b, len(ex.prompt_ids): len(ids)] = PROV_TEACHER  # not sampled: ground truth
    pos = torch.arange(L)[None]
    lengths = P + n
    attn = (pos < lengths[:, None]).long()
    return Samples(tokens=tokens, attention_mask=attn, response_mask=attn.bool() & (pos >= P[:, None]),
                   provenance=prov, prompt_lengths=P, lengths=lengths, teacher_logits=None,
                   proposed=0, accepted=0, replaced=0, generated=int(n.sum()), rounds=0, row_rounds=0)


def _merge(parts: list[tuple[list[int], Samples]], B: int, pad_id: int) -> Samples:
    """Put per-source Samples back into the original batch order (rows listed in each part)."""
    if len(parts) == 1 and parts[0][0] == list(range(B)):
        return parts[0][1]
    L = max(s.tokens.shape[1] for _, s in parts)
    tokens = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    rmask = torch.zeros(B, L, dtype=torch.bool)
    prov = torch.zeros(B, L, dtype=torch.int8)
    P = torch.zeros(B, dtype=torch.long)
    lengths = torch.zeros(B, dtype=torch.long)
    tl = None
    if any(s.teacher_logits is not None for _, s in parts):
        if not all(s.teacher_logits is not None for _, s in parts):
            tl = None  # mixed sources: the loop runs one teacher pass for everything
        else:
            R = max(s.teacher_logits.shape[1] for _, s in parts)
            ref = parts[0][1].teacher_logits
            tl = ref.new_zeros(B, R, ref.shape[2])
    for rows, s in parts:
        idx = torch.tensor(rows)
        w = s.tokens.shape[1]
        tokens[idx, :w] = s.tokens
        attn[idx, :w] = s.attention_mask
        rmask[idx, :w] = s.response_mask
        prov[idx, :w] = s.provenance
        P[idx] = s.prompt_lengths
        lengths[idx] = s.lengths
        if tl is not None:
            tl[idx.to(tl.device), : s.teacher_logits.shape[1]] = s.teacher_logits
    keys = ("proposed", "accepted", "replaced", "generated", "rounds", "row_rounds")
    tot = {k: sum(getattr(s, k) for _, s in parts) for k in keys}
    return Samples(tokens=tokens, attention_mask=attn, response_mask=rmask, provenance=prov,
                   prompt_lengths=P, lengths=lengths, teacher_logits=tl, **tot)


def build_training_batch(method: str, batch: list[TokenizedExample], *, step: int, total_steps: int,
                         teacher, student, scfg: SampleConfig, gens: dict, tokenizer, pad_id: int,
                         vocab_size: int, gkd_lambda: float) -> Samples:
    """The B training sequences of `method` (SKD_SPEC section 4)."""
    B = len(batch)
    coin = gens["method"]
    if method in ("sft", "seqkd", "supervised"):
        use = ["gt"] * B
    elif method == "on-policy":
        use = ["student"] * B
    elif method == "skd":
        use = ["skd"] * B
    elif method == "imitkd":   # per prompt, 50/50 (released code: "mixed")
        use = ["student" if torch.rand((), generator=coin) < 0.5 else "gt" for _ in range(B)]
    elif method == "mixed-skd":
        use = ["skd" if torch.rand((), generator=coin) < 0.5 else "gt" for _ in range(B)]
    elif method == "two-stage":  # released code: "mixed_train" — ground truth first, then on-policy
        use = ["gt" if step < total_steps // 2 else "student"] * B
    elif method == "gkd":        # GKD (Agarwal et al. 2024): on-policy batch with probability lambda
        use = ["student" if torch.rand((), generator=coin) < gkd_lambda else "gt"] * B
    else:
        raise SkdError(f"unknown method {method!r}", "see skd distill --help")

    parts = []
    gt_rows = [i for i, u in enumerate(use) if u == "gt"]
    if gt_rows:
        parts.append((gt_rows, _ground_truth_samples([batch[i] for i in gt_rows], pad_id, scfg.max_new_tokens)))
    for mode in ("student", "skd"):
        rows = [i for i, u in enumerate(use) if u == mode]
        if not rows:
            continue
        cfg = SampleConfig(**{**scfg.__dict__, "mode": mode})
        was_training = student.training
        student.eval()
        s = sample(teacher, student, [batch[i].prompt_ids for i in rows], cfg,
                   student_generator=gens["student"], teacher_generator=gens["teacher"],
                   tokenizer=tokenizer, pad_token_id=pad_id, vocab_size=vocab_size)
        student.train(was_training)
        parts.append((rows, s))
    return _merge(parts, B, pad_id)


def _positions(s: Samples):
    """Masks selecting, row-major, the logits rows that predict response tokens."""
    pred = torch.zeros_like(s.response_mask)
    pred[:, :-1] = s.response_mask[:, 1:]     # position t predicts token t + 1
    n = s.response_lengths
    R = int(n.max()) if n.numel() else 0
    ridx = torch.arange(R)[None, :] < n[:, None]  # response index i < length of that response
    return pred, ridx


def distill_loss(student, s: Samples, teacher_flat: torch.Tensor | None, rows: torch.Tensor, *,
                 divergence: Callable | None, vocab_size: int, weights_per_row: torch.Tensor,
                 autocast_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised (sum, count) of one micro-batch `rows` of the training batch `s`."""
    dev = next(student.parameters()).device
    tokens = s.tokens[rows].to(dev)
    attn = s.attention_mask[rows].to(dev)
    pred, _ = _positions(s)
    pred = pred[rows]
    Lm = int(s.lengths[rows].max())
    tokens, attn, pred = tokens[:, :Lm], attn[:, :Lm], pred[:, :Lm].to(dev)
    ctx = (torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype is not None
           else torch.autocast(dev.type, enabled=False))
    with ctx:
        logits = student(input_ids=tokens, attention_mask=attn).logits[..., :vocab_size]
    student_flat = logits[pred]                                          # [N, V]
    w = weights_per_row[rows].to(dev)[:, None].expand_as(pred)[pred]     # [N]
    if divergence is None:  # cross-entropy on the response tokens (sft / seqkd)
        labels = torch.zeros_like(tokens)
        labels[:, :-1] = tokens[:, 1:]
        return losses.cross_entropy(student_flat, labels[pred], w)
    return divergence(student_flat, teacher_flat.to(dev), w)


def accumulate_gradients(student, s: Samples, teacher_flat: torch.Tensor | None, *, divergence,
                         micro_batch_size: int, loss_norm: str, vocab_size: int, autocast_dtype=None) -> float:
    """Backward over the batch in micro-batches; the loss is divided ONCE by the whole batch's count.

    Returns the normalised loss. Gradients accumulate into .grad (the caller zeroes them).
    """
    B = s.tokens.shape[0]
    w_rows = _sequence_weights(s, loss_norm)
    _, ridx = _positions(s)
    total_count = float((w_rows[:, None] * ridx).sum())
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), ridx.sum(1).cumsum(0)])
    loss_sum = 0.0
    for lo in range(0, B, micro_batch_size):
        rows = torch.arange(lo, min(B, lo + micro_batch_size))
        tf = teacher_flat[offsets[lo]: offsets[rows[-1] + 1]] if teacher_flat is not None else None
        lsum, _ = distill_loss(student, s, tf, rows, divergence=divergence, vocab_size=vocab_size,
                               weights_per_row=w_rows, autocast_dtype=autocast_dtype)
        if total_count > 0:
            (lsum / total_count).backward()
        loss_sum += float(lsum.detach())
    return loss_sum / total_count if total_count > 0 else 0.0


def _teacher_flat(teacher, s: Samples, vocab_size: int) -> torch.Tensor:
    """Teacher logits [N, V] at the response-predicting positions, row-major (one no-grad pass or reuse)."""
    _, ridx = _positions(s)
    if s.teacher_logits is not None:
        return s.teacher_logits[:, : ridx.shape[1]][ridx.to(s.teacher_logits.device)]
    dev = next(teacher.parameters()).device
    pred, _ = _positions(s)
    with torch.no_grad():
        logits = teacher(input_ids=s.tokens.to(dev), attention_mask=s.attention_mask.to(dev)).logits
    return logits[..., :vocab_size][pred.to(dev)]


def _sequence_weights(s: Samples, norm: str) -> torch.Tensor:
    n = s.response_lengths.float()
    if norm == "token":
        return torch.ones_like(n)
    # Per-sequence token mean, then mean over sequences (the released code's reduction).
    return torch.where(n > 0, 1.0 / n.clamp(min=1), torch.zeros_like(n))


# --------------------------------------------------------------------------- checkpoints

def _atomic_dir_write(final: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling folder, then rename: a kill never leaves a half checkpoint."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, student, tokenizer, cfg: RunConfig, state: dict,
                    optimizer=None, scheduler=None, gens: dict | None = None) -> None:
    """HF folder (safetensors + config + tokenizer) + resolved run config + trainer state, atomically."""
    def write(tmp: Path):
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "skd_run_config.json").write_text(json.dumps(run_config_to_dict(cfg), indent=2))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        if optimizer is not None:
            torch.save({"optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "generators": {k: g.get_state() for k, g in (gens or {}).items()},
                        "torch_rng": torch.get_rng_state(),
                        "python_rng": random.getstate()}, tmp / "training_state.pt")
    _atomic_dir_write(path, write)


# --------------------------------------------------------------------------- the loop

class _Data:
    """Deterministic endless stream over the examples: a fresh seeded permutation per epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.cursor = 0

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            epoch, i = divmod(self.cursor, self.n)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            out.append(int(torch.randperm(self.n, generator=g)[i]))
            self.cursor += 1
        return out


def _prepare_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SkdError(f"output directory {out} is a file", "pass another --output-dir")
    if out.is_dir() and any((out / n).exists() for n in ("final", "checkpoints", "metrics.jsonl")):
        if not overwrite:
            raise SkdError(f"{out} already holds another run's checkpoints",
                           "pass --overwrite to replace them, or choose another --output-dir")
        for n in ("final", "checkpoints", "metrics.jsonl", "run_config.json", "summary.json"):
            p = out / n
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def train(cfg: RunConfig, *, on_event: Callable[[str, dict], None] | None = None,
          models=None, examples=None) -> dict:
    """Run one training job; returns the summary dict (also written to summary.json).

    `models` = (teacher, student, tokenizer) and `examples` = (train, validation) lists of
    TokenizedExample may be passed in (tests, benchmarks); otherwise they are loaded from cfg.
    """
    from skd.core import models as model_lib, tasks as task_lib

    tc, dc, mc, scfg = cfg.train, cfg.data, cfg.model, cfg.sample
    emit = on_event or (lambda kind, payload: None)
    method = tc.method
    needs_teacher = method not in CE_METHODS
    out = Path(tc.output_dir)
    _prepare_output_dir(out, tc.overwrite)

    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    task = task_lib.get_task(dc.task)
    if models is None:
        s_dev, t_dev = resolve_device(mc.student_device), resolve_device(mc.teacher_device)
        dtype = mc.dtype
        if dtype == "auto":
            dtype = "bfloat16" if s_dev.type == "cuda" else "float32"
        if needs_teacher:
            teacher, student, tokenizer = model_lib.load_pair(
                mc.teacher, mc.student, dtype=dtype, teacher_device=str(t_dev), student_device=str(s_dev),
                trust_remote_code=mc.trust_remote_code)
        else:
            teacher = None
            student = model_lib.load_model(mc.student, dtype=dtype, device=str(s_dev),
                                           trust_remote_code=mc.trust_remote_code)
            tokenizer = model_lib.load_tokenizer(mc.student, trust_remote_code=mc.trust_remote_code)
    else:
        teacher, student, tokenizer = models
    vocab_size = len(tokenizer)
    # fp32 master weights with bf16/fp16 compute when a half dtype was asked for (SKD_SPEC 5).
    autocast_dtype = None
    s_param_dtype = next(student.parameters()).dtype
    if s_param_dtype in (torch.bfloat16, torch.float16):
        autocast_dtype = s_param_dtype
        student.float()
    if teacher is not None:
        teacher.eval()
        teacher.requires_grad_(False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    if examples is None:
        ctx = _model_context(student)
        train_raw = task.load("train", data_path=dc.data, fields=dc.fields, limit=dc.limit, seed=dc.seed)
        train_ex = tokenize_examples(train_raw, tokenizer, task.render_prompt, max_length=ctx)
        val_ex = []
        if dc.val_limit:
            val_split = "validation" if "validation" in task.splits else "test"
            val_raw = task.load(val_split, data_path=dc.val_data, fields=dc.fields, limit=dc.val_limit, seed=dc.seed) \
                if (dc.val_data or dc.data is None) else []
            val_ex = tokenize_examples(val_raw, tokenizer, task.render_prompt, max_length=ctx)
    else:
        train_ex, val_ex = examples
    if not train_ex:
        raise SkdError("the training set is empty", "check --data / --limit")
    scfg = SampleConfig(**{**scfg.__dict__, "stop_strings": scfg.stop_strings or tuple(task.stop_strings)})

    B = tc.batch_size
    mb = tc.micro_batch_size or B
    total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * len(train_ex) / B))
    divergence = None if method in CE_METHODS else losses.get_divergence(tc.divergence, beta=tc.beta, alpha=tc.alpha)
    if method == "gkd" and tc.divergence == "fkl":
        divergence = losses.get_divergence("jsd", beta=tc.beta)  # GKD trains with generalised JSD(beta)

    optimizer = torch.optim.AdamW(student.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                  eps=tc.adam_eps, weight_decay=tc.weight_decay)

    def lr_lambda(step: int) -> float:  # linear warm-up (default none), then linear decay to 0
        if step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - tc.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    s_dev = next(student.parameters()).device
    gens = {"student": torch.Generator(device=s_dev).manual_seed(tc.seed + 1),
            "teacher": torch.Generator(device=next(teacher.parameters()).device if teacher is not None else "cpu")
            .manual_seed(tc.seed + 2),
            "method": torch.Generator().manual_seed(tc.seed + 3)}
    data = _Data(len(train_ex), tc.seed)

    atomic_write_text(out / "run_config.json", json.dumps(run_config_to_dict(cfg), indent=2))
    metrics_f = open(out / "metrics.jsonl", "a")
    emit("start", {"total_steps": total_steps, "train_examples": len(train_ex), "val_examples": len(val_ex),
                   "method": method, "vocab_size": vocab_size})
    state = {"step": 0, "total_steps": total_steps, "data_cursor": 0}
    history = []
    t_start = time.perf_counter()
    last_good = None
    try:
        for step in range(total_steps):
            t0 = time.perf_counter()
            batch = [train_ex[i] for i in data.next(B)]
            s = build_training_batch(method, batch, step=step, total_steps=total_steps, teacher=teacher,
                                     student=student, scfg=scfg, gens=gens, tokenizer=tokenizer, pad_id=pad_id,
                                     vocab_size=vocab_size, gkd_lambda=tc.gkd_lambda)
            t1 = time.perf_counter()
            teacher_flat = _teacher_flat(teacher, s, vocab_size) if divergence is not None else None
            t2 = time.perf_counter()
            student.train()
            optimizer.zero_grad(set_to_none=True)
            loss = accumulate_gradients(student, s, teacher_flat, divergence=divergence, micro_batch_size=mb,
                                        loss_norm=tc.loss_norm, vocab_size=vocab_size,
                                        autocast_dtype=autocast_dtype)
            if not math.isfinite(loss):
                raise SkdError(f"the loss became non-finite ({loss}) at step {step + 1}",
                               "lower --lr or check the data; the last good checkpoint was kept"
                               + (f" ({last_good})" if last_good else ""))
            grad_norm = (float(torch.nn.utils.clip_grad_norm_(student.parameters(), tc.grad_clip))
                         if tc.grad_clip > 0 else float("nan"))
            optimizer.step()
            scheduler.step()
            t3 = time.perf_counter()
            state.update(step=step + 1, data_cursor=data.cursor)
            rec = {"step": step + 1, "loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                   "correction_rate": s.correction_rate, "acceptance_rate": s.acceptance_rate,
                   "mean_accepted_prefix": s.mean_accepted_prefix, "generated_tokens": s.generated,
                   "proposed": s.proposed, "accepted": s.accepted, "replaced": s.replaced,
                   "response_tokens": int(s.response_lengths.sum()),
                   "tokens_per_s": int(s.response_lengths.sum()) / max(t3 - t0, 1e-9),
                   "time_sampling": t1 - t0, "time_teacher": t2 - t1, "time_loss_backward": t3 - t2,
                   "time_step": t3 - t0, "elapsed": time.perf_counter() - t_start}
            if val_ex and tc.eval_every and ((step + 1) % tc.eval_every == 0 or step + 1 == total_steps):
                rec["val_loss"] = evaluate_loss(student, teacher, val_ex, divergence=divergence,
                                                vocab_size=vocab_size, pad_id=pad_id, batch_size=mb,
                                                max_new_tokens=scfg.max_new_tokens,
                                                autocast_dtype=autocast_dtype)
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()
            history.append(rec)
            emit("step", rec)
            if tc.save_every and (step + 1) % tc.save_every == 0 and step + 1 < total_steps:
                ck = out / "checkpoints" / f"step-{step + 1:06d}"
                save_checkpoint(ck, student, tokenizer, cfg, dict(state), optimizer, scheduler, gens)
                last_good = str(ck)
                _prune_checkpoints(out / "checkpoints", tc.keep_checkpoints)
                emit("checkpoint", {"path": str(ck), "step": step + 1})
    finally:
        metrics_f.close()
    final = out / "final"
    save_checkpoint(final, student, tokenizer, cfg, dict(state), optimizer, scheduler, gens)
    emit("checkpoint", {"path": str(final), "step": state["step"]})
    summary = {"method": method, "steps": state["step"], "final_checkpoint": str(final),
               "wall_time_s": time.perf_counter() - t_start,
               "first": history[0] if history else None, "last": history[-1] if history else None}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    emit("end", summary)
    return summary


def _prune_checkpoints(folder: Path, keep: int) -> None:
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for p in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(p, ignore_errors=True)


@torch.no_grad()
def evaluate_loss(student, teacher, examples: list[TokenizedExample], *, divergence, vocab_size: int,
                  pad_id: int, batch_size: int, max_new_tokens: int, autocast_dtype=None) -> float:
    """Token-mean divergence (or cross-entropy) on ground-truth responses: the validation loss."""
    was = student.training
    student.eval()
    tot = cnt = 0.0
    for lo in range(0, len(examples), batch_size):
        s = _ground_truth_samples(examples[lo: lo + batch_size], pad_id, max_new_tokens)
        tf = _teacher_flat(teacher, s, vocab_size) if divergence is not None else None
        w = torch.ones(s.tokens.shape[0])
        lsum, c = distill_loss(student, s, tf, torch.arange(s.tokens.shape[0]), divergence=divergence,
                               vocab_size=vocab_size, weights_per_row=w, autocast_dtype=autocast_dtype)
        tot += float(lsum)
        cnt += float(c)
    student.train(was)
    return tot / cnt if cnt else float("nan")
