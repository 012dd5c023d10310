"""Training batches: the method's sequences (CONTRACT.md §4) and the teacher logits they are scored with.

Public: sequence_sources(method, B, ...) -> ["gt" | "student" | "skd" | "adaswitch", ...]; build_training_batch(method,
batch, ...) -> Samples; sample_rank_batch(...) -> (Samples, teacher_flat, seconds) (one process's rows,
chunk by chunk); ground_truth_samples(batch, pad_id, max_new_tokens) / merge_samples(parts, B, pad_id)
-> Samples; response_positions(s); teacher_logits_flat(teacher, s, vocab_size, *, topk=None, temperature=1.0)
-> [N, V] logits or a SparseTeacher [N];
derive_seed(*keys); chunk_generators(seed, step, chunk, ...); RNG_SCHEME (recorded in checkpoints).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import torch

from skd.core.config import SampleConfig
from skd.core.data import TokenizedExample
from skd.core.errors import SkdError
from skd.core.position_logits import logits_at
from skd.core.sampling import PROV_PROMPT, PROV_TEACHER, Samples, sample
from skd.core.sparse_teacher import SparseTeacher
from skd.core.timing import clock

RNG_SCHEME = "seed-step-chunk-v1"   # recorded in checkpoints: how the sampling generators are derived


def ground_truth_samples(batch: list[TokenizedExample], pad_id: int, max_new_tokens: int) -> Samples:
    """The examples' prompts + ground-truth responses (cut to max_new_tokens) as a Samples batch."""
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


def merge_samples(parts: list[tuple[list[int], Samples]], B: int, pad_id: int) -> Samples:
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
    extras = {}   # per-row extras of the parts ([B, ...] tensors), where every part has them
    for name, fill in (("student_argmax", 0), ("loss_weights", 0.0), ("switch_at", -1)):
        vals = [getattr(s, name) for _, s in parts]
        if all(v is not None for v in vals):
            width = max(v.shape[1] for v in vals) if vals[0].dim() == 2 else None
            extras[name] = torch.full((B, width) if width else (B,), fill, dtype=vals[0].dtype)
    tl = None
    if any(s.teacher_logits is not None for _, s in parts):
        if not all(s.teacher_logits is not None for _, s in parts):
            tl = None  # mixed sources: the loop runs one teacher pass for everything
        else:
            R = max(s.teacher_logits.shape[1] for _, s in parts)
            ref = parts[0][1].teacher_logits
            tl = ref.new_zeros(B, R) if isinstance(ref, SparseTeacher) else ref.new_zeros(B, R, ref.shape[2])
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
        for name, full in extras.items():
            v = getattr(s, name)
            if v.dim() == 2:
                full[idx, : v.shape[1]] = v
            else:
                full[idx] = v
    keys = ("proposed", "accepted", "replaced", "generated", "rounds", "row_rounds")
    tot = {k: sum(getattr(s, k) for _, s in parts) for k in keys}
    rounds = {}
    for name in ("draft_lengths", "teacher_led_lengths"):   # per-round records of the skd parts
        got = [getattr(s, name) for _, s in parts if getattr(s, name) is not None]
        rounds[name] = tuple(g for d in got for g in d) if got else None
    return Samples(tokens=tokens, attention_mask=attn, response_mask=rmask, provenance=prov,
                   prompt_lengths=P, lengths=lengths, teacher_logits=tl, **tot, **extras, **rounds)


def sequence_sources(method: str, B: int, *, step: int, total_steps: int, coin: torch.Generator,
                     gkd_lambda: float) -> list[str]:
    """Where each of the B sequences of a (global) batch comes from: "gt", "student", "skd" or "adaswitch"."""
    if method in ("sft", "seqkd", "supervised"):
        return ["gt"] * B
    if method in ("on-policy", "speckd"):   # SpecKD gates the loss of on-policy samples (skd.core.gating)
        return ["student"] * B
    if method in ("skd", "adaswitch"):
        return [method] * B
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
    """The B training sequences of `method` (CONTRACT.md §4), sampled with gens["student"/"teacher"].

    `sources` (one of "gt" / "student" / "skd" per row) is drawn from gens["method"] when not given.
    """
    B = len(batch)
    use = sources if sources is not None else sequence_sources(
        method, B, step=step, total_steps=total_steps, coin=gens["method"], gkd_lambda=gkd_lambda)
    assert len(use) == B, f"{len(use)} sources for {B} rows"
    parts = []
    gt_rows = [i for i, u in enumerate(use) if u == "gt"]
    if gt_rows:
        parts.append((gt_rows, ground_truth_samples([batch[i] for i in gt_rows], pad_id, scfg.max_new_tokens)))
    for mode in ("student", "skd", "adaswitch"):
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
    return merge_samples(parts, B, pad_id)


def derive_seed(*keys) -> int:
    """A 63-bit seed from (seed, purpose, step, ...): the same in every process, run and Python."""
    digest = hashlib.blake2b(json.dumps(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def chunk_generators(seed: int, step: int, chunk: int, *, student_device, teacher_device) -> dict:
    """Fresh student / teacher generators of sampling chunk `chunk` (a global index) at `step`."""
    return {"student": torch.Generator(device=student_device).manual_seed(derive_seed(seed, "student", step, chunk)),
            "teacher": torch.Generator(device=teacher_device).manual_seed(derive_seed(seed, "teacher", step, chunk))}


def sample_rank_batch(method: str, batch: list[TokenizedExample], sources: list[str], *, first_row: int,
                      chunk: int, seed: int, step: int, total_steps: int, teacher, student, scfg: SampleConfig,
                      tokenizer, pad_id: int, vocab_size: int, gkd_lambda: float, need_teacher: bool,
                      forward_clock=None, timings: dict | None = None):
    """This process's b sequences, sampled chunk by chunk (global rows first_row ...), and the teacher
    logits at their response positions. Returns (Samples, teacher_flat [N, V] (a SparseTeacher [N] when
    scfg.target_topk is set) or None, teacher seconds).

    With a running skd.core.timing.ForwardClock, timings["teacher_pass_forward"] gets the model-forward
    seconds of the teacher passes (so the sampling phase's own forward share can be told apart)."""
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
            t0, f0 = clock(t_dev), forward_clock.seconds if forward_clock is not None else 0.0
            flats.append(teacher_logits_flat(teacher, s, vocab_size, topk=scfg.target_topk,
                                             temperature=scfg.target_temperature))
            t_teacher += clock(t_dev) - t0
            if forward_clock is not None and timings is not None:
                timings["teacher_pass_forward"] = timings.get("teacher_pass_forward", 0.0) + forward_clock.seconds - f0
        # The [C, R, V] verification logits are no longer needed: only their response rows (flats) are.
        parts.append((rows, dataclasses.replace(s, teacher_logits=None)))
    # Chunks are consecutive rows, so concatenating their row-major flats gives the merged batch's.
    cat = SparseTeacher.cat if flats and isinstance(flats[0], SparseTeacher) else torch.cat
    teacher_flat = (flats[0] if len(flats) == 1 else cat(flats)) if flats else None
    return merge_samples(parts, len(batch), pad_id), teacher_flat, t_teacher


def response_positions(s: Samples):
    """(pred [B, L], ridx [B, R]) masks: the logits positions that predict response tokens, and the
    valid response indices; both select row-major, in the same order."""
    pred = torch.zeros_like(s.response_mask)
    pred[:, :-1] = s.response_mask[:, 1:]     # position t predicts token t + 1
    n = s.response_lengths
    R = int(n.max()) if n.numel() else 0
    ridx = torch.arange(R)[None, :] < n[:, None]  # response index i < length of that response
    return pred, ridx


def teacher_logits_flat(teacher, s: Samples, vocab_size: int, *, topk: int | None = None,
                        temperature: float = 1.0) -> torch.Tensor | SparseTeacher:
    """Teacher logits [N, V] at the response-predicting positions, row-major (one no-grad pass or reuse).

    topk=N: the targets as a SparseTeacher [N positions] (top-N log-probs of logits / temperature and a
    tail bucket) instead; sparse logits kept by the sampler are returned as they are (they must have
    that N and temperature), dense ones are converted. topk=None: dense logits (temperature unused).
    """
    _, ridx = response_positions(s)
    if s.teacher_logits is not None:
        flat = s.teacher_logits[:, : ridx.shape[1]][ridx.to(s.teacher_logits.device)]
    else:
        dev = next(teacher.parameters()).device
        pred, _ = response_positions(s)
        with torch.no_grad():
            flat = logits_at(teacher, s.tokens.to(dev), s.attention_mask.to(dev), pred.to(dev), vocab_size)
    if isinstance(flat, SparseTeacher):
        if topk is None or (flat.num_kept, flat.temperature) != (min(topk, flat.vocab_size), float(temperature)):
            raise ValueError(f"the samples hold top-{flat.num_kept} teacher targets at temperature "
                             f"{flat.temperature:g}; asked for topk={topk}, temperature={temperature:g}")
        return flat
    return SparseTeacher.from_logits(flat, topk, temperature) if topk is not None else flat
