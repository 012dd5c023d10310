"""The training objective over a batch of Samples (CONTRACT.md §3): loss, gradients, validation loss.

Public: CE_METHODS (methods trained with cross-entropy, no teacher); sequence_weights(s, norm) -> [B] (with
per-token weights, Samples.loss_weights, when a method sets them);
distill_loss(...) -> (sum, count) of one micro-batch; accumulate_gradients(...) -> float (the one place
the loss is normalised); evaluate_loss(...) -> float (the validation loss on ground-truth responses).
"""
from __future__ import annotations

from typing import Callable

import torch

from skd.core import distributed, losses
from skd.core.batches import ground_truth_samples, response_positions, teacher_logits_flat
from skd.core.data import TokenizedExample
from skd.core.position_logits import logits_at
from skd.core.sampling import Samples
from skd.core.timing import clock

CE_METHODS = ("sft", "seqkd")


def distill_loss(student, s: Samples, teacher_flat: torch.Tensor | None, rows: torch.Tensor, *,
                 divergence: Callable | None, vocab_size: int, weights_per_row: torch.Tensor,
                 autocast_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised (sum, count) of one micro-batch `rows` of the training batch `s`."""
    dev = next(student.parameters()).device
    tokens = s.tokens[rows].to(dev)
    attn = s.attention_mask[rows].to(dev)
    pred, _ = response_positions(s)
    pred = pred[rows]
    Lm = int(s.lengths[rows].max())
    tokens, attn, pred = tokens[:, :Lm], attn[:, :Lm], pred[:, :Lm].to(dev)
    ctx = (torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype is not None
           else torch.autocast(dev.type, enabled=False))
    with ctx:   # the output layer only on the columns that predict a response token
        student_flat = logits_at(student, tokens, attn, pred, vocab_size)   # [N, V]
    w = weights_per_row[rows].to(dev)[:, None].expand_as(pred)[pred]     # [N]
    if s.loss_weights is not None:   # per-token weights (SpecKD's gate), moved to the predicting position
        lw = torch.zeros(len(rows), Lm, dtype=w.dtype, device=dev)
        lw[:, :-1] = s.loss_weights[rows][:, 1:Lm].to(dev, w.dtype)
        w = w * lw[pred]
    if divergence is None:  # cross-entropy on the response tokens (sft / seqkd)
        labels = torch.zeros_like(tokens)
        labels[:, :-1] = tokens[:, 1:]
        return losses.cross_entropy(student_flat, labels[pred], w)
    return divergence(student_flat, teacher_flat.to(dev), w)


def accumulate_gradients(student, s: Samples, teacher_flat: torch.Tensor | None, *, divergence,
                         micro_batch_size: int, loss_norm: str, vocab_size: int, autocast_dtype=None,
                         dist: distributed.Dist | None = None, timings: dict | None = None) -> float:
    """Backward over the batch in micro-batches; the loss is divided ONCE by the GLOBAL batch's count.

    The one place the loss is normalised. With `dist` (several processes) the count is summed over
    the processes before dividing, and each process's loss is scaled by the world size because
    DDP / FSDP average gradients: the result is the gradient of (sum over all W*b rows) / (count of
    all W*b rows), exactly what one process with the whole batch computes. Returns the normalised
    global loss. Gradients accumulate into .grad (the caller zeroes them).
    """
    B = s.tokens.shape[0]
    world = dist.world_size if dist is not None else 1
    dev = next(student.parameters()).device
    w_rows = sequence_weights(s, loss_norm)
    _, ridx = response_positions(s)
    # The count the weights stand for, as an exact integer (a float32 sum of 1/n over n positions is
    # not exactly 1, and would make the count depend on how rows are split across processes).
    n = s.response_lengths
    if s.loss_weights is not None:   # weighted tokens: the count is their total weight
        n_w = _response_weight(s)
        local_count = float(n_w.double().sum()) if loss_norm == "token" else float(int((n_w > 0).sum()))
    else:
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
                t0 = clock(dev) if timings is not None else 0.0
                (loss * world if world > 1 else loss).backward()
                if timings is not None:   # synced: the backward's own time, for the compute share
                    timings["backward"] = timings.get("backward", 0.0) + clock(dev) - t0
        loss_sum += float(lsum.detach())
    if dist is not None:
        loss_sum = dist.sum_floats([loss_sum])[0]
    return loss_sum / total_count if total_count > 0 else 0.0


def _response_weight(s: Samples) -> torch.Tensor:
    """[B] the summed per-token loss weights of each response (its length when every weight is 1)."""
    return (s.loss_weights * s.response_mask).sum(1)


def sequence_weights(s: Samples, norm: str) -> torch.Tensor:
    """Per-row loss weights: 1 per token ("token") or 1 / response length ("sequence").

    With per-token weights (s.loss_weights) "sequence" divides by the row's summed weight instead: the
    weighted mean over the tokens the loss keeps (a row whose tokens are all masked out contributes 0)."""
    n = s.response_lengths.float() if s.loss_weights is None else _response_weight(s)
    if norm == "token":
        return torch.ones_like(n)
    # Per-sequence token mean, then mean over sequences (the released code's reduction).
    return torch.where(n > 0, 1.0 / n.clamp(min=1), torch.zeros_like(n))


@torch.no_grad()
def evaluate_loss(student, teacher, examples: list[TokenizedExample], *, divergence, vocab_size: int,
                  pad_id: int, batch_size: int, max_new_tokens: int, autocast_dtype=None) -> float:
    """Token-mean divergence (or cross-entropy) on ground-truth responses: the validation loss."""
    was = student.training
    student.eval()
    tot = cnt = 0.0
    for lo in range(0, len(examples), batch_size):
        s = ground_truth_samples(examples[lo: lo + batch_size], pad_id, max_new_tokens)
        tf = teacher_logits_flat(teacher, s, vocab_size) if divergence is not None else None
        w = torch.ones(s.tokens.shape[0])
        lsum, c = distill_loss(student, s, tf, torch.arange(s.tokens.shape[0]), divergence=divergence,
                               vocab_size=vocab_size, weights_per_row=w, autocast_dtype=autocast_dtype)
        tot += float(lsum)
        cnt += float(c)
    student.train(was)
    return tot / cnt if cnt else float("nan")
