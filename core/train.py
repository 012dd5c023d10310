"""The one training loop: SFT and every distillation method of SKD_SPEC.md section 4, on 1..W processes.

Public: train(cfg, *, on_event=None, models=None, examples=None) -> dict; TrainingInterrupted;
TokenizedExample; tokenize_examples(...); sequence_sources(...); build_training_batch(...);
chunk_generators(...); distill_loss(...); accumulate_gradients(...); evaluate_loss(...);
resolve_device(...); save_checkpoint / atomic_write_text (skd.core.checkpoint, re-exported).

Per optimizer step (B = batch_size sequences in the global batch, W processes, b = B / W each):
  1. data    — the next B indices of one deterministic global stream (a seeded permutation per
               epoch, crossing epoch boundaries, nothing dropped); process r takes rows [r*b, (r+1)*b);
  2. sample  — the b training sequences of the method (ground truth, student samples, SKD
               interleaved samples, or a per-prompt / per-batch mix), in chunks of C rows;
  3. teacher — teacher logits at every response position: reused from the SKD verification passes
               (SKD_SPEC 3, last point), else one no-grad teacher forward per chunk;
  4. loss    — the student forward + divergence (or cross-entropy) per micro-batch, divided ONCE by
               the count of the whole GLOBAL batch (all-reduced before dividing), so 1 x 8, 4 x 2
               accumulation and 2 processes x 4 are the same step;
  5. step    — DDP / FSDP sum the gradients, clip 1.0, AdamW, linear decay to 0 (SKD_SPEC 5).
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
import dataclasses
import hashlib
import json
import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from skd.core import checkpoint as ckpt
from skd.core import distributed, losses
from skd.core.checkpoint import atomic_write_text, save_checkpoint  # noqa: F401  (public API of this module)
from skd.core.config import RunConfig, SampleConfig, run_config_to_dict
from skd.core.errors import SkdError
from skd.core.sampling import PROV_PROMPT, PROV_TEACHER, Samples, sample

DISTILL_METHODS = ("skd", "supervised", "on-policy", "imitkd", "two-stage", "mixed-skd", "gkd")
CE_METHODS = ("sft", "seqkd")
RNG_SCHEME = "seed-step-chunk-v1"   # recorded in checkpoints: how the sampling generators are derived
RUN_FILES = ("final", "checkpoints", "metrics.jsonl", "run_config.json", "summary.json")


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM stopped training; a checkpoint of the last completed step was saved first."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"{signal.Signals(signum).name} received: stopped after step {step}"
                         + (f", saved {checkpoint}" if checkpoint else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


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


def sequence_sources(method: str, B: int, *, step: int, total_steps: int, coin: torch.Generator,
                     gkd_lambda: float) -> list[str]:
    """Where each of the B sequences of a (global) batch comes from: "gt", "student" or "skd"."""
    if method in ("sft", "seqkd", "supervised"):
        return ["gt"] * B
    if method == "on-policy":
        return ["student"] * B
    if method == "skd":
        return ["skd"] * B
    if method == "imitkd":      # per prompt, 50/50 (released code: "mixed")
        return ["student" if u < 0.5 else "gt" for u in torch.rand(B, generator=coin).tolist()]
    if method == "mixed-skd":
        return ["skd" if u < 0.5 else "gt" for u in torch.rand(B, generator=coin).tolist()]
    if method == "two-stage":   # released code: "mixed_train" — ground truth first, then on-policy
        return ["gt" if step < total_steps // 2 else "student"] * B
    if method == "gkd":         # GKD (Agarwal et al. 2024): on-policy batch with probability lambda
        return ["student" if float(torch.rand((), generator=coin)) < gkd_lambda else "gt"] * B
    raise SkdError(f"unknown method {method!r}", "see skd distill --help")


def build_training_batch(method: str, batch: list[TokenizedExample], *, step: int, total_steps: int,
                         teacher, student, scfg: SampleConfig, gens: dict, tokenizer, pad_id: int,
                         vocab_size: int, gkd_lambda: float, sources: list[str] | None = None) -> Samples:
    """The B training sequences of `method` (SKD_SPEC section 4), sampled with gens["student"/"teacher"].

    `sources` (one of "gt" / "student" / "skd" per row) is drawn from gens["method"] when not given.
    """
    B = len(batch)
    use = sources if sources is not None else sequence_sources(
        method, B, step=step, total_steps=total_steps, coin=gens["method"], gkd_lambda=gkd_lambda)
    assert len(use) == B, f"{len(use)} sources for {B} rows"
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


def derive_seed(*keys) -> int:
    """A 63-bit seed from (seed, purpose, step, ...): the same in every process, run and Python."""
    digest = hashlib.blake2b(json.dumps(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def chunk_generators(seed: int, step: int, chunk: int, *, student_device, teacher_device) -> dict:
    """Fresh student / teacher generators of sampling chunk `chunk` (a global index) at `step`."""
    return {"student": torch.Generator(device=student_device).manual_seed(derive_seed(seed, "student", step, chunk)),
            "teacher": torch.Generator(device=teacher_device).manual_seed(derive_seed(seed, "teacher", step, chunk))}


def _sample_rank_batch(method: str, batch: list[TokenizedExample], sources: list[str], *, first_row: int,
                       chunk: int, seed: int, step: int, total_steps: int, teacher, student, scfg: SampleConfig,
                       tokenizer, pad_id: int, vocab_size: int, gkd_lambda: float, need_teacher: bool):
    """This process's b sequences, sampled chunk by chunk (global rows first_row ...), and the teacher
    logits at their response positions. Returns (Samples, teacher_flat [N, V] or None, teacher seconds)."""
    s_dev = next(student.parameters()).device
    t_dev = next(teacher.parameters()).device if teacher is not None else torch.device("cpu")
    parts, flats, t_teacher = [], [], 0.0
    for lo in range(0, len(batch), chunk):
        rows = list(range(lo, min(len(batch), lo + chunk)))
        gens = chunk_generators(seed, step, (first_row + lo) // chunk, student_device=s_dev, teacher_device=t_dev)
        s = build_training_batch(method, [batch[i] for i in rows], step=step, total_steps=total_steps,
                                 teacher=teacher, student=student, scfg=scfg, gens=gens, tokenizer=tokenizer,
                                 pad_id=pad_id, vocab_size=vocab_size, gkd_lambda=gkd_lambda,
                                 sources=[sources[i] for i in rows])
        if need_teacher:
            t0 = time.perf_counter()
            flats.append(_teacher_flat(teacher, s, vocab_size))
            t_teacher += time.perf_counter() - t0
        # The [C, R, V] verification logits are no longer needed: only their response rows (flats) are.
        parts.append((rows, dataclasses.replace(s, teacher_logits=None)))
    # Chunks are consecutive rows, so concatenating their row-major flats gives the merged batch's.
    teacher_flat = (flats[0] if len(flats) == 1 else torch.cat(flats)) if flats else None
    return _merge(parts, len(batch), pad_id), teacher_flat, t_teacher


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
                         micro_batch_size: int, loss_norm: str, vocab_size: int, autocast_dtype=None,
                         dist: distributed.Dist | None = None) -> float:
    """Backward over the batch in micro-batches; the loss is divided ONCE by the GLOBAL batch's count.

    The one place the loss is normalised. With `dist` (several processes) the count is summed over
    the processes before dividing, and each process's loss is scaled by the world size because
    DDP / FSDP average gradients: the result is the gradient of (sum over all W*b rows) / (count of
    all W*b rows), exactly what one process with the whole batch computes. Returns the normalised
    global loss. Gradients accumulate into .grad (the caller zeroes them).
    """
    B = s.tokens.shape[0]
    world = dist.world_size if dist is not None else 1
    w_rows = _sequence_weights(s, loss_norm)
    _, ridx = _positions(s)
    # The count the weights stand for, as an exact integer (a float32 sum of 1/n over n positions is
    # not exactly 1, and would make the count depend on how rows are split across processes).
    n = s.response_lengths
    local_count = float(int(n.sum()) if loss_norm == "token" else int((n > 0).sum()))
    total_count = dist.sum_floats([local_count])[0] if dist is not None else local_count
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), ridx.sum(1).cumsum(0)])
    starts = list(range(0, B, micro_batch_size))
    loss_sum = 0.0
    for i, lo in enumerate(starts):
        rows = torch.arange(lo, min(B, lo + micro_batch_size))
        tf = teacher_flat[offsets[lo]: offsets[rows[-1] + 1]] if teacher_flat is not None else None
        # DDP all-reduces the gradients once, after the last micro-batch.
        with distributed.no_sync(student, skip=i < len(starts) - 1):
            lsum, _ = distill_loss(student, s, tf, rows, divergence=divergence, vocab_size=vocab_size,
                                   weights_per_row=w_rows, autocast_dtype=autocast_dtype)
            if total_count > 0:
                loss = lsum / total_count
                (loss * world if world > 1 else loss).backward()
        loss_sum += float(lsum.detach())
    if dist is not None:
        loss_sum = dist.sum_floats([loss_sum])[0]
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


# --------------------------------------------------------------------------- data, output folder, signals

class _Data:
    """Deterministic endless stream over the examples: a fresh seeded permutation per epoch.

    With `lengths` and `batch` (group by length), each epoch's permutation is cut into pools of
    GROUP_POOL batches, each pool is sorted by length and cut into batches, and the batches of the
    epoch are put in a seeded random order: every batch holds similar lengths (padding in a random
    batch of 32 `arith` examples is ~30% of the tokens), while which examples meet and the batch
    order stay random. The order depends only on (seed, epoch), so resume is exact.

    `cursor` counts the examples handed out (the data position saved in checkpoints)."""

    GROUP_POOL = 50

    def __init__(self, n: int, seed: int, lengths: list[int] | None = None, batch: int = 0):
        self.n, self.seed = n, seed
        self.lengths, self.batch = lengths, batch
        self.cursor = 0
        self._perm: tuple[int, list[int]] | None = None   # (epoch, permutation): one epoch cached

    def _order(self, epoch: int) -> list[int]:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            if self.lengths is not None and self.batch > 1:
                pool = self.batch * self.GROUP_POOL
                batches = []
                for i in range(0, self.n, pool):
                    part = sorted(perm[i: i + pool], key=lambda j: self.lengths[j])   # stable
                    batches += [part[j: j + self.batch] for j in range(0, len(part), self.batch)]
                order = torch.randperm(len(batches), generator=g).tolist()
                # a short batch (a pool's remainder) goes last, so the stream's batches stay aligned
                order.sort(key=lambda b: len(batches[b]) < self.batch)
                perm = [j for b in order for j in batches[b]]
            self._perm = (epoch, perm)
        return self._perm[1]

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            epoch, i = divmod(self.cursor, self.n)
            out.append(self._order(epoch)[i])
            self.cursor += 1
        return out


def _check_output_dir(out: Path, *, overwrite: bool, resume: bool) -> Path | None:
    """Read-only checks of --output-dir before anything is loaded; returns the checkpoint to resume."""
    if out.exists() and not out.is_dir():
        raise SkdError(f"output directory {out} is a file", "pass another --output-dir")
    if resume:
        return ckpt.find_latest_checkpoint(out) if out.is_dir() else None
    if out.is_dir() and any((out / n).exists() for n in ("final", "checkpoints", "metrics.jsonl")) and not overwrite:
        raise SkdError(f"{out} already holds another run's checkpoints",
                       "pass --resume to continue it, --overwrite to replace it, or choose another --output-dir")
    return None


# Options that may change between a run and its resumption: they do not change the trained weights.
_RESUME_FREE = {"train": {"output_dir", "overwrite", "resume", "save_every", "keep_checkpoints", "eval_every",
                          "log_every"},
                "data": {"val_data", "val_limit"}, "model": {"teacher_device", "student_device"}}


def _check_resume_config(cfg: RunConfig, folder: Path) -> None:
    try:
        saved = json.loads((folder / ckpt.RUN_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise SkdError(f"checkpoint {folder} has no readable {ckpt.RUN_CONFIG}",
                       "delete that folder to resume from an earlier checkpoint, or start over with --overwrite") from e
    now = json.loads(json.dumps(run_config_to_dict(cfg)))  # tuples -> lists, as saved
    diffs = [f"{key} {saved.get(sec, {}).get(key)!r} -> {value!r}"
             for sec, fields in now.items() for key, value in fields.items()
             if key not in _RESUME_FREE.get(sec, ()) and saved.get(sec, {}).get(key) != value]
    if diffs:
        raise SkdError(f"--resume: the options differ from the run in {folder.parent if folder.name != 'final' else folder}"
                       f" ({'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''})",
                       f"pass the original options (saved in {folder / ckpt.RUN_CONFIG}), or --overwrite to start over")
    state = ckpt.read_trainer_state(folder) or {}
    if state.get("rng_scheme", RNG_SCHEME) != RNG_SCHEME:
        raise SkdError(f"checkpoint {folder} was written by an skd that samples differently "
                       f"({state.get('rng_scheme')} vs {RNG_SCHEME})", "start over with --overwrite")


def _prepare_output_dir(out: Path, *, overwrite: bool, resume_step: int | None) -> None:
    """Main process only, after every check passed: clear (--overwrite) or trim (--resume) the run."""
    if overwrite:
        for n in RUN_FILES:
            p = out / n
            if p.is_dir():
                ckpt.discard(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    ckpt.remove_stale(out)
    metrics = out / "metrics.jsonl"
    if resume_step is not None and metrics.exists():
        # Lines past the resumed step (and a line torn by a kill) are redone by this run.
        keep = []
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= resume_step:
                keep.append(line + "\n")
        atomic_write_text(metrics, "".join(keep))


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
        resume_from = _check_output_dir(out, overwrite=tc.overwrite, resume=tc.resume)
        if resume_from is not None:
            _check_resume_config(cfg, resume_from)
        found = dist.broadcast_object(str(resume_from) if resume_from is not None else None)
        resume_from = Path(found) if found is not None else None  # rank 0's view decides for all

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
        if models is None:
            s_dev = resolve_device(distributed.resolve_rank_device(mc.student_device, dist))
            t_dev = resolve_device(distributed.resolve_rank_device(mc.teacher_device, dist))
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
                                               trust_remote_code=mc.trust_remote_code, role="student")
                tokenizer = model_lib.load_tokenizer(mc.student, trust_remote_code=mc.trust_remote_code,
                                                     role="student")
        else:
            teacher, student, tokenizer = models
        self.teacher, self.student, self.tokenizer = teacher, student, tokenizer
        self.vocab_size = len(tokenizer)
        # fp32 master weights with bf16/fp16 compute when a half dtype was asked for (SKD_SPEC 5).
        # The half dtype comes from the loaded weights, or from cfg.model.dtype when models are passed in.
        self.autocast_dtype = None
        s_param_dtype = next(student.parameters()).dtype
        half = {"bfloat16": torch.bfloat16, "float16": torch.float16}
        if s_param_dtype in (torch.bfloat16, torch.float16):
            self.autocast_dtype = s_param_dtype
        elif models is not None and mc.dtype in half:
            self.autocast_dtype = half[mc.dtype]
        if self.autocast_dtype is not None:
            student.float()
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
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
        self.scfg = SampleConfig(**{**cfg.sample.__dict__,
                                    "stop_strings": cfg.sample.stop_strings or tuple(task.stop_strings)})

        B = tc.batch_size
        self.local_batch = B // dist.world_size
        self.chunk = tc.sample_chunk or self.local_batch
        self.micro = tc.micro_batch_size or self.local_batch
        self.total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * len(train_ex) / B))
        self.divergence = (None if self.method in CE_METHODS
                           else losses.get_divergence(tc.divergence, beta=tc.beta, alpha=tc.alpha))
        if self.method == "gkd" and tc.divergence == "fkl":
            self.divergence = losses.get_divergence("jsd", beta=tc.beta)  # GKD trains with generalised JSD(beta)

        # ---- the checkpoint to resume from is read whole before anything on disk changes
        resume_state = saved = None
        if resume_from is not None:
            resume_state = ckpt.read_trainer_state(resume_from)
            if resume_state is None:
                raise SkdError(f"checkpoint {resume_from} disappeared while starting", "run the command again")
            saved = ckpt.load_training_state(resume_from)
            ckpt.load_weights(resume_from, student)    # before wrapping: every rank starts from these weights

        # ---- every input is valid: from here on the run folder changes
        if dist.is_main:
            _prepare_output_dir(out, overwrite=tc.overwrite,
                                resume_step=resume_state["step"] if resume_state else (0 if tc.resume else None))
        dist.barrier()

        self.train_model = distributed.wrap_student(student, dist, tc.fsdp)
        self.optimizer = torch.optim.AdamW(self.train_model.parameters(), lr=tc.lr,
                                           betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_eps,
                                           weight_decay=tc.weight_decay)
        total = self.total_steps

        def lr_lambda(step: int) -> float:  # linear warm-up (default none), then linear decay to 0
            if step < tc.warmup_steps:
                return (step + 1) / tc.warmup_steps
            return max(0.0, (total - step) / max(1, total - tc.warmup_steps))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        self.data = (_Data(len(train_ex), tc.seed, [len(e.prompt_ids) + len(e.response_ids) for e in train_ex],
                           tc.batch_size) if tc.group_by_length else _Data(len(train_ex), tc.seed))
        self.state = {"step": 0, "total_steps": total, "data_cursor": 0, "seed": tc.seed,
                      "world_size": dist.world_size, "sample_chunk": self.chunk, "rng_scheme": RNG_SCHEME}
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

    def emit(self, kind: str, payload: dict) -> None:
        if self.dist.is_main:
            self._emit(kind, payload)

    def save(self, path: Path, state: dict, rng: dict | None = None) -> None:
        """Checkpoint on the main process (FSDP: every process takes part in gathering the weights)."""
        sd = distributed.full_state_dict(self.train_model)
        osd = distributed.optimizer_state(self.train_model, self.optimizer)
        if self.dist.is_main:
            save_checkpoint(path, self.student, self.tokenizer, self.cfg, dict(state), scheduler=self.scheduler,
                            state_dict=sd, optimizer_state=osd, rng=rng)
            self.emit("checkpoint", {"path": str(path), "step": state["step"]})
        self.dist.barrier()

    def step_checkpoint(self, state: dict, rng: dict | None = None) -> Path:
        path = self.out / "checkpoints" / f"step-{state['step']:06d}"
        self.save(path, state, rng)
        if self.dist.is_main:
            _prune_checkpoints(self.out / "checkpoints", self.cfg.train.keep_checkpoints)
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

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        dist, out, total_steps = self.dist, self.out, self.total_steps
        first_row = dist.rank * self.local_batch      # this process's rows of every global batch
        start_step = self.state["step"]
        metrics_path = out / "metrics.jsonl"
        first_rec = None
        if dist.is_main:
            atomic_write_text(out / "run_config.json", json.dumps(run_config_to_dict(self.cfg), indent=2))
            if start_step > 0 and metrics_path.exists():
                head = metrics_path.read_text().split("\n", 1)[0]
                first_rec = json.loads(head) if head.strip() else None
        self.emit("start", {"total_steps": total_steps, "start_step": start_step,
                            "train_examples": len(self.train_ex), "val_examples": len(self.val_ex),
                            "method": self.method, "vocab_size": self.vocab_size, "world_size": dist.world_size,
                            "resumed_from": str(self.resume_from) if self.resume_from else None})
        metrics_f = open(metrics_path, "a") if dist.is_main else None
        last_rec = None
        t_start = self.t_start = time.perf_counter()
        try:
            with _StopRequests() as stop:
                for step in range(start_step, total_steps):
                    last_rec = self._step(step, first_row, stop, metrics_f)
                    first_rec = first_rec or last_rec
        finally:
            if metrics_f is not None:
                metrics_f.close()
        final = out / "final"
        self.save(final, self.state)
        summary = {"method": self.method, "steps": self.state["step"], "final_checkpoint": str(final),
                   "wall_time_s": time.perf_counter() - t_start, "world_size": dist.world_size,
                   "resumed_from": str(self.resume_from) if self.resume_from else None,
                   "fsdp_units": distributed.fsdp_units(self.train_model),
                   "first": first_rec, "last": last_rec}
        if dist.is_main:
            atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
        self.emit("end", summary)
        return summary

    def _step(self, step: int, first_row: int, stop: _StopRequests, metrics_f) -> dict:
        tc, dist = self.cfg.train, self.dist
        b = self.local_batch
        t0 = time.perf_counter()
        state_before, rng_before = dict(self.state), ckpt.capture_rng()   # for a stop inside this step
        # ---- 1. data: the global batch's indices; this process's rows [first_row, first_row + b)
        idx = self.data.next(tc.batch_size)
        batch = [self.train_ex[i] for i in idx[first_row: first_row + b]]
        coin = torch.Generator().manual_seed(derive_seed(tc.seed, "method", step))
        sources = sequence_sources(self.method, tc.batch_size, step=step, total_steps=self.total_steps, coin=coin,
                                   gkd_lambda=tc.gkd_lambda)[first_row: first_row + b]
        # ---- 2./3. sample (FSDP: through the sharded student, in lockstep) and teacher logits
        with distributed.full_student(self.train_model, self.dist) as plain:
            s, teacher_flat, t_teacher = _sample_rank_batch(
                self.method, batch, sources, first_row=first_row, chunk=self.chunk, seed=tc.seed, step=step,
                total_steps=self.total_steps, teacher=self.teacher, student=plain, scfg=self.scfg,
                tokenizer=self.tokenizer, pad_id=self.pad_id, vocab_size=self.vocab_size,
                gkd_lambda=tc.gkd_lambda, need_teacher=self.divergence is not None)
        t2 = time.perf_counter()
        # ---- 4. loss over the global batch, normalised once
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = accumulate_gradients(self.train_model, s, teacher_flat, divergence=self.divergence,
                                    micro_batch_size=self.micro, loss_norm=tc.loss_norm, vocab_size=self.vocab_size,
                                    autocast_dtype=self.autocast_dtype, dist=dist if dist.enabled else None)
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
        t3 = time.perf_counter()
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
               "time_step": t3 - t0, "elapsed": t3 - self.t_start}
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


def _prune_checkpoints(folder: Path, keep: int) -> None:
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for p in steps[: max(0, len(steps) - keep)]:
        ckpt.discard(p)


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
