"""SpecKD's loss gate (Huang et al., "SpecKD: Speculative Decoding for Effective Knowledge Distillation of
LLMs", arXiv 2510.24021): which of the student's own tokens the distillation loss learns from.

Public: speckd_gate(s, teacher_flat, *, k, verification, rejected_weight) -> Samples.

The sequences are the student's samples, as in on-policy KD. At each response position the student's
proposal is tested against the teacher's distribution at that position: "sampled" (the paper's non-greedy
top-k verification) tests the token the student wrote there, "greedy" (its greedy top-k verification)
tests the student's argmax there. A proposal passes when it is among the teacher's K most likely tokens,
the rank test SKD uses (skd.core.ops.topk_rank_accept, on the raw teacher logits). A token that passes
keeps loss weight 1 and provenance PROV_STUDENT; one that fails gets `rejected_weight` (0 masks it out,
the paper's main form; the paper also allows a small weight) and provenance PROV_REJECTED. Unlike SKD,
no token is replaced: the sequence stays the student's. With K >= V every proposal passes and the loss is
on-policy KD's exactly.
"""
from __future__ import annotations

import dataclasses

import torch

from skd.core import ops
from skd.core.batches import response_positions
from skd.core.errors import SkdError
from skd.core.sampling import PROV_REJECTED, PROV_STUDENT, Samples
from skd.core.sparse_teacher import SparseTeacher


def speckd_gate(s: Samples, teacher_flat: torch.Tensor, *, k: int, verification: str,
                rejected_weight: float) -> Samples:
    """`s` with SpecKD's loss weights, provenance and proposed / accepted counts.

    teacher_flat [N, V]: the teacher's logits at the N response-predicting positions, row-major (the
    order of skd.core.batches.teacher_logits_flat), i.e. row n predicts the n-th response token; or
    the SparseTeacher [N] of --teacher-topk, which holds the ranks needed for k <= its N."""
    _, ridx = response_positions(s)
    if verification == "greedy":
        if s.student_argmax is None:
            raise SkdError("SpecKD's greedy verification needs the student's argmax at each sampled token",
                           "sample the batch with speckd_verification='greedy' (the training loop does)")
        proposals = s.student_argmax[:, : ridx.shape[1]][ridx]
    else:
        proposals = s.tokens[s.response_mask]
    n = proposals.numel()
    if teacher_flat.shape[0] != n:
        raise ValueError(f"teacher_flat has {teacher_flat.shape[0]} rows for {n} response tokens")
    if isinstance(teacher_flat, SparseTeacher):   # --teacher-topk N >= k: the rank test on the kept tokens
        passed = teacher_flat.in_topk(proposals.to(teacher_flat.device), k).cpu()
    else:
        test = teacher_flat if teacher_flat.dtype != torch.float64 else teacher_flat.float()
        passed = ops.topk_rank_accept(test, proposals.to(test.device), k).bool().cpu() if n else \
            torch.zeros(0, dtype=torch.bool)
    weights = torch.zeros(s.tokens.shape, dtype=torch.float32)
    weights[s.response_mask] = torch.where(passed, 1.0, float(rejected_weight))
    prov = s.provenance.clone()
    prov[s.response_mask] = torch.where(passed, PROV_STUDENT, PROV_REJECTED).to(prov.dtype)
    return dataclasses.replace(s, provenance=prov, loss_weights=weights, proposed=n, accepted=int(passed.sum()))
