"""Token-level distillation losses: divergences D(teacher || student), cross-entropy (CONTRACT.md §3).

Public: fkl, rkl, jsd, jsd_normalized, tvd, skew_fkl, skew_rkl, cross_entropy, DIVERGENCES, get_divergence,
divergence_per_token, default_chunk_size. Shapes: N positions, V vocabulary; [B, T, V] logits with
[B, T] weights (B batch, T time) are flattened to N = B * T. Every loss has one signature and one
contract: (student_logits[N, V], teacher_logits[N, V] or labels[N], weights[N]) -> (sum, count),
sum = sum_n weights[n] * d_n and count = sum_n weights[n]; the training loop divides, once.

The teacher of a divergence is dense logits [N, V] or a skd.core.sparse_teacher.SparseTeacher [N]
(top-N log-probs + a tail bucket): the student's distribution is then collapsed onto the same N + 1
buckets. `temperature` T divides both sides' logits and multiplies the loss by T^2 (Hinton et al.);
T = 1 (the default) runs exactly the untempered code.
"""
from __future__ import annotations

import functools
import math
import numbers
from types import MappingProxyType
from typing import Callable

import torch

from skd.core.errors import SkdError
from skd.core.sparse_teacher import SparseTeacher

# ~5 fp32 temporaries of [C, V] live at once inside a chunk; 2M elements (8 MiB each) keeps them under
# a third of the gradient buffer at Gemma's V = 256,000 (8 positions per chunk; V = 32,000 -> 65).
_CHUNK_ELEMENTS = 1 << 21
_MAX_CHUNK_POSITIONS = 1024  # small vocabularies: enough rows per chunk to keep kernels busy

DEFAULT_BETA = 0.5  # GKD's generalized-JSD default (Agarwal et al. 2024); also TRL's default
DEFAULT_ALPHA = 0.1  # skew coefficient of DistiLLM (Ko et al. 2024)

# (d [C], grad [C, V] or None) for one chunk: d_n and, when asked, d d_n / d student_logits[n].
ChunkFn = Callable[[torch.Tensor, torch.Tensor, bool], "tuple[torch.Tensor, torch.Tensor | None]"]
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def default_chunk_size(vocab_size: int) -> int:
    """Positions per chunk so that one [C, V] fp32 temporary stays near 8 MiB."""
    return max(1, min(_MAX_CHUNK_POSITIONS, _CHUNK_ELEMENTS // max(1, vocab_size)))


# --------------------------------------------------------------------------------------------
# Per-chunk kernels. Inputs are log-probabilities lq (student) and lp (teacher), [C, V], in the
# compute dtype (fp32, or fp64 when an input is fp64). Each returns d [C] and, when need_grad,
# the gradient of d_n with respect to the student LOGITS of row n, [C, V]. Gradients are analytic:
# for q = softmax(z) and any D(q), dD/dz = q * (g - <q, g>) with g = dD/dq, so each kernel forms
# qg = q * g (zero where q = 0) and calls _through_softmax. Conventions: 0 * log(0 / x) = 0; a
# term x * log(x / 0) with x > 0 is +inf (the divergence is infinite there, not NaN).
# --------------------------------------------------------------------------------------------


def _x_log_ratio(x: torch.Tensor, lx: torch.Tensor, ly: torch.Tensor) -> torch.Tensor:
    """Elementwise x * (log x - log y) with x = exp(lx), taking 0 where x == 0 (0 log 0 = 0)."""
    return torch.where(x > 0, x * (lx - ly), 0.0)


def _through_softmax(q: torch.Tensor, qg: torch.Tensor) -> torch.Tensor:
    """Chain rule through softmax: q * (g - <q, g>) given q and qg = q * g (both [C, V])."""
    return qg - q * qg.sum(-1, keepdim=True)


def _log_mix(la: torch.Tensor, lb: torch.Tensor, w: float) -> torch.Tensor:
    """log(w * a + (1 - w) * b) from log a, log b; exactly lb at w = 0 and exactly la at w = 1."""
    if w == 0.0:
        return lb
    if w == 1.0:
        return la
    return torch.logaddexp(la + math.log(w), lb + math.log1p(-w))


def _fkl_kernel(lq, lp, need_grad):
    # KL(p || q) = sum_v p (log p - log q); d/dz = q - p (CONTRACT.md §3, "kl" in the released code).
    p = lp.exp()
    d = _x_log_ratio(p, lp, lq).sum(-1)
    return d, (lq.exp() - p if need_grad else None)


def _rkl_kernel(lq, lp, need_grad):
    # KL(q || p) = sum_v q (log q - log p); g = log q - log p + 1, the constant cancels in softmax.
    # Where p_v = 0 < q_v the divergence is +inf (correct, not clipped); that row's gradient is
    # undefined and _chunked_sum zeroes it.
    q = lq.exp()
    terms = _x_log_ratio(q, lq, lp)  # q * (g - 1): the dropped q * 1 maps to 0 through softmax
    d = terms.sum(-1)
    return d, (_through_softmax(q, terms) if need_grad else None)


def _jsd_kernel(lq, lp, need_grad, *, beta, normalized):
    # Generalized JSD of GKD (Agarwal et al. 2024, "On-policy distillation of language models", Eq. 1):
    #   J_beta = beta * KL(p || m) + (1 - beta) * KL(q || m),  m = beta * p + (1 - beta) * q,
    # the value TRL's GKD computes. J_beta -> 0 at both ends (J ~ beta * KL(p||q) as beta -> 0,
    # ~ (1 - beta) * KL(q||p) as beta -> 1); `normalized` returns J_beta / (beta * (1 - beta)),
    # which tends to KL(p||q) and KL(q||p), continuous on [0, 1]. Either way the exact endpoints
    # are dispatched to fkl / rkl (as TRL does).
    # Gradient: dJ/dq = (1 - beta) * (log q - log m) (the m-terms cancel), hence
    #   dJ/dz = (1 - beta) * q * (u - <q, u>) with u = log q - log m, and the normalized one / beta.
    lm = _log_mix(lp, lq, beta)
    p, q = lp.exp(), lq.exp()
    kl_pm = _x_log_ratio(p, lp, lm).sum(-1)
    qu = _x_log_ratio(q, lq, lm)
    kl_qm = qu.sum(-1)
    if normalized:
        d = (beta * kl_pm + (1.0 - beta) * kl_qm) / (beta * (1.0 - beta))
        return d, (_through_softmax(q, qu) / beta if need_grad else None)
    d = beta * kl_pm + (1.0 - beta) * kl_qm
    return d, (_through_softmax(q, qu) * (1.0 - beta) if need_grad else None)


def _tvd_kernel(lq, lp, need_grad):
    # Total variation 0.5 * sum_v |p - q|; subgradient g = 0.5 * sign(q - p) (0 where q == p).
    p, q = lp.exp(), lq.exp()
    diff = q - p
    d = 0.5 * diff.abs().sum(-1)
    return d, (_through_softmax(q, 0.5 * q * diff.sign()) if need_grad else None)


def _skew_fkl_kernel(lq, lp, need_grad, *, alpha):
    # Skew forward KL of DistiLLM (Ko et al. 2024): KL(p || m), m = alpha * p + (1 - alpha) * q.
    # g = -(1 - alpha) * p / m, so qg = -(1 - alpha) * q p / m, formed in log space (q may
    # underflow while p / m <= 1 / alpha stays bounded).
    lm = _log_mix(lp, lq, alpha)
    p, q = lp.exp(), lq.exp()
    d = _x_log_ratio(p, lp, lm).sum(-1)
    if not need_grad:
        return d, None
    qpm = torch.where(p > 0, (lq + lp - lm).exp(), 0.0)
    return d, _through_softmax(q, -(1.0 - alpha) * qpm)


def _skew_rkl_kernel(lq, lp, need_grad, *, alpha):
    # Skew reverse KL of DistiLLM (Ko et al. 2024): KL(q || m), m = alpha * q + (1 - alpha) * p.
    # g = log q - log m + 1 - alpha * q / m; the +1 cancels through softmax.
    lm = _log_mix(lq, lp, alpha)
    q = lq.exp()
    qu = _x_log_ratio(q, lq, lm)
    d = qu.sum(-1)
    if not need_grad:
        return d, None
    if alpha > 0.0:  # q / m <= 1 / alpha; at alpha = 0 the term vanishes (and q / p may be inf)
        qu = qu - alpha * torch.where(q > 0, (2.0 * lq - lm).exp(), 0.0)
    return d, _through_softmax(q, qu)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 inside the loss (CONTRACT.md §3); fp64 stays fp64 so gradcheck sees full precision."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _teacher_values(t) -> torch.Tensor:
    """The tensor whose dtype stands for the teacher: dense logits, or a sparse teacher's log-probs."""
    return t.logprobs if isinstance(t, SparseTeacher) else t


def _bucketed(kernel, lq: torch.Tensor, t: SparseTeacher, need_grad: bool):
    """The kernel on the N + 1 buckets of a sparse teacher chunk t [C]: its N kept tokens and the tail.

    Every divergence of DIVERGENCES (KL both ways, generalised JSD, TVD, both skew KLs) is an
    f-divergence, a sum over outcomes of a function of (p_v, q_v); it is therefore well defined on
    the coarser distributions over the N + 1 buckets, where it is the divergence the loss optimises
    (by the data-processing inequality at most the full one; equal when N >= V, the tail then empty).
    The student's buckets are q at the kept ids and q_tail = sum of q over the other ids.

    Gradient. With Q_b the bucket probabilities, the kernel returns G_b = dD/dy_b for Q = softmax(y);
    as dQ_b/dz_v = [v in b] q_v - Q_b q_v, dD/dz_v = (q_v / Q_b(v)) G_b(v): G_v for a kept token
    and (q_v / q_tail) G_tail for a tail token, the ratio formed in log space (0 where q_tail = 0).
    `lq` [C, V] is consumed (overwritten in place): no extra [C, V] temporary.
    """
    idx = t.indices.long()
    lq_kept = lq.gather(-1, idx)
    rest = lq.scatter_(-1, idx, -torch.inf)          # log q over the tail tokens, -inf at the kept ones
    lq_tail = rest.logsumexp(-1)
    d, g_b = kernel(torch.cat([lq_kept, lq_tail[:, None]], -1), t.bucket_logprobs().to(lq.dtype), need_grad)
    if not need_grad:
        return d, None
    # exp(log q_v - log q_tail); an empty student tail (-inf) has only -inf entries: subtract +inf -> 0.
    denom = torch.where(lq_tail == -torch.inf, torch.inf, lq_tail)
    grad = rest.sub_(denom[:, None]).exp_().mul_(g_b[:, -1:])
    grad.scatter_(-1, idx, g_b[:, :-1])
    return d, grad


def _divergence_chunk(kernel, z: torch.Tensor, t, need_grad: bool, *, temperature: float = 1.0):
    """One chunk: student logits z [C, V] and teacher logits t [C, V] (or a SparseTeacher [C]) -> kernel.

    At temperature T != 1 both logits are divided by T and d is multiplied by T^2 (Hinton et al. 2015,
    "Distilling the knowledge in a neural network": the gradient of the softened loss scales as
    1 / T^2, the factor keeps its magnitude comparable across T); the gradient with respect to z is
    then T^2 * (1 / T) * dD/d(z / T). A sparse teacher's log-probs are already at T (checked once,
    in _flatten). T = 1 runs none of it: bit for bit the untempered loss.
    """
    dtype = _compute_dtype(z, _teacher_values(t))
    zc = z.to(dtype)
    if temperature != 1.0:
        zc = zc / temperature
    lq = torch.log_softmax(zc, dim=-1)
    if isinstance(t, SparseTeacher):
        d, grad = _bucketed(kernel, lq, t, need_grad)
    else:
        tc = t.to(dtype)
        if temperature != 1.0:
            tc = tc / temperature
        lp = torch.log_softmax(tc, dim=-1)  # -inf teacher logits give p = 0 exactly
        d, grad = kernel(lq, lp, need_grad)
    if temperature != 1.0:
        d = d * (temperature * temperature)
        if grad is not None:
            grad = grad.mul_(temperature)
    return d, grad


def _cross_entropy_chunk(z: torch.Tensor, y: torch.Tensor, need_grad: bool):
    """One chunk: -log q[y]; d/dz = q - onehot(y)."""
    lq = torch.log_softmax(z.to(_compute_dtype(z)), dim=-1)
    d = -lq.gather(-1, y[:, None]).squeeze(-1)
    if not need_grad:
        return d, None
    grad = lq.exp()
    grad.scatter_add_(-1, y[:, None], torch.full_like(d[:, None], -1.0))
    return d, grad


# --------------------------------------------------------------------------------------------
# The one chunking helper and the autograd Function around it.
# --------------------------------------------------------------------------------------------


def _chunks(n: int, chunk_size: int):
    """(start, stop) of consecutive chunks of positions covering range(n): THE chunking rule."""
    return ((start, min(start + chunk_size, n)) for start in range(0, n, chunk_size))


def _chunked_sum(student, target, weights, chunk_fn: ChunkFn, chunk_size: int, grad_out):
    """sum_n weights[n] * d_n over chunks of positions; fills grad_out [N, V] when given.

    Rows with weight 0 contribute exactly 0 to the sum and get gradient 0 even when their logits
    are garbage (NaN, all -inf). Rows whose d is not finite (RKL with p = 0 < q) keep their
    inf/NaN in the sum, so the caller sees it, and get gradient 0. No host syncs.
    """
    total = torch.zeros((), dtype=weights.dtype, device=student.device)
    for start, stop in _chunks(student.shape[0], chunk_size):
        w = weights[start:stop]
        d, grad = chunk_fn(student[start:stop], target[start:stop], grad_out is not None)
        keep = w != 0
        total = total + torch.where(keep, w * d, 0.0).sum()
        if grad_out is not None:
            grad.mul_(w[:, None]).masked_fill_(~(keep & torch.isfinite(d))[:, None], 0.0)
            grad_out[start:stop].copy_(grad)  # cast to the student's dtype (bf16 stays bf16)
    return total


class _ChunkedLoss(torch.autograd.Function):
    """Forward computes the loss AND its gradient chunk by chunk into one [N, V] buffer in the
    student's dtype; backward scales that buffer. Nothing chunk-sized is saved for backward, so
    the extra memory is one student-sized buffer plus one chunk of fp32 temporaries (a plain
    chunk loop under autograd would keep every chunk's fp32 intermediates alive).

    The buffer is scaled in place and handed over (no second [N, V] allocation), so backward runs
    once per forward: a second backward through the same node (retain_graph=True) raises.
    `reusable=True` keeps the buffer and returns a scaled copy instead (used by gradcheck).
    """

    @staticmethod
    def forward(ctx, student, target, weights, chunk_fn, chunk_size, reusable):
        grad_buf = torch.empty(student.shape, dtype=student.dtype, device=student.device)
        total = _chunked_sum(student, target, weights, chunk_fn, chunk_size, grad_buf)
        ctx.grad_buf = grad_buf  # not a saved input/output: plain attribute, freed on hand-over
        ctx.reusable = reusable
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        grad_buf = ctx.grad_buf
        if grad_buf is None:
            raise RuntimeError(
                "skd.core.losses: backward ran twice through one loss node; its gradient buffer "
                "is consumed by the first backward (recompute the loss instead of retain_graph)"
            )
        if ctx.reusable:
            grad = grad_buf * grad_total.to(grad_buf.dtype)
        else:
            ctx.grad_buf = None
            grad = grad_buf.mul_(grad_total.to(grad_buf.dtype))
        return grad, None, None, None, None, None


def _flatten(student_logits, target, weights, *, target_is_labels: bool, temperature: float = 1.0):
    """[..., V] logits, [...] weights (and [..., V] teacher logits, a [...] SparseTeacher or [...] labels)
    -> 2-D/1-D."""
    if student_logits.dim() < 2:
        raise ValueError(
            f"student_logits must be [N, V] or [B, T, V], got {tuple(student_logits.shape)}")
    if not student_logits.is_floating_point():
        raise ValueError(f"student_logits must be floating point, got {student_logits.dtype}")
    lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    if weights.shape != lead:
        raise ValueError(
            f"weights {tuple(weights.shape)} must match student_logits "
            f"{tuple(student_logits.shape)} without the vocabulary dimension, i.e. {tuple(lead)}"
        )
    if not (weights.dtype == torch.bool or weights.is_floating_point()):
        raise ValueError(f"weights must be a bool mask or float weights, got {weights.dtype}")
    if weights.requires_grad:
        raise ValueError("weights must not require grad: they are constants of the loss")
    if target_is_labels:
        if target.shape != lead:
            raise ValueError(f"labels {tuple(target.shape)} must have shape {tuple(lead)} "
                             f"to match student_logits {tuple(student_logits.shape)}")
        if target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(f"labels must be integer token ids, got {target.dtype}")
        # Labels at weight-0 positions (e.g. -100 padding) are never read; 0 keeps gather in range.
        target = torch.where(weights != 0, target, 0).reshape(-1).long()
    elif isinstance(target, SparseTeacher):
        if target.shape != lead or target.vocab_size != vocab:
            raise ValueError(f"sparse teacher of {tuple(target.shape)} positions over {target.vocab_size} tokens "
                             f"must match student_logits {tuple(student_logits.shape)}")
        if target.temperature != temperature:
            raise SkdError(f"the sparse teacher targets were built at temperature {target.temperature:g}, "
                           f"the loss runs at {temperature:g}",
                           "build them with SparseTeacher.from_logits(logits, n, temperature=<the loss temperature>)")
        target = target.flatten()
    else:
        if target.shape != student_logits.shape:
            raise ValueError(f"teacher_logits {tuple(target.shape)} must match student_logits "
                             f"{tuple(student_logits.shape)} (cut both to the shared vocabulary)")
        if not target.is_floating_point():
            raise ValueError(f"teacher_logits must be floating point, got {target.dtype}")
        target = target.detach().reshape(-1, vocab)  # the teacher is frozen: never a gradient
    # reshape is a view for contiguous [B, T, V]; a non-viewable slice (logits[:, :-1]) is copied,
    # so pass full logits and zero the unwanted positions in weights instead.
    return student_logits.reshape(-1, vocab), target, weights.reshape(-1)


def _check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise SkdError(f"loss chunk size must be a positive integer, got {chunk_size!r}",
                       "pass e.g. 64, or leave it unset to size chunks from the vocabulary")


def _reduce(student_logits, target, weights, chunk_fn: ChunkFn, chunk_size, *,
            target_is_labels: bool = False, temperature: float = 1.0, _reusable: bool = False):
    """Flatten, run the one chunk loop (through the Function when the student needs a gradient)."""
    _check_chunk_size(chunk_size)
    student, target, weights = _flatten(student_logits, target, weights,
                                        target_is_labels=target_is_labels, temperature=temperature)
    chunk = chunk_size or default_chunk_size(student.shape[-1])
    dtype = (_compute_dtype(student) if target_is_labels
             else _compute_dtype(student, _teacher_values(target)))
    weights = weights.to(dtype)
    if torch.is_grad_enabled() and student.requires_grad:
        total = _ChunkedLoss.apply(student, target, weights, chunk_fn, chunk, _reusable)
    else:  # no gradient wanted: skip the gradient work and the [N, V] buffer
        with torch.no_grad():
            total = _chunked_sum(student, target, weights, chunk_fn, chunk, None)
    return total, weights.sum()


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_unit(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise SkdError(f"{name} must be a number in [0, 1], got {value!r}",
                       f"pass {name} between 0 and 1 inclusive")
    return float(value)


def _check_temperature(value) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value <= 0):
        raise SkdError(f"loss temperature must be a finite number > 0, got {value!r}",
                       "pass e.g. 1 (the plain divergence) or 2")
    return float(value)


def _kernel_for(kind: str, *, beta: float = DEFAULT_BETA, alpha: float = DEFAULT_ALPHA):
    """Validated per-chunk kernel (lq, lp, need_grad) for one divergence name."""
    if kind not in DIVERGENCES:
        raise SkdError(f"unknown divergence {kind!r}", f"use one of: {', '.join(DIVERGENCES)}")
    beta, alpha = _check_unit("beta", beta), _check_unit("alpha", alpha)
    if kind in ("jsd", "jsd-normalized"):
        # Endpoints are FKL and RKL exactly (CONTRACT.md §3), not limits evaluated numerically.
        if beta == 0.0:
            return _fkl_kernel
        if beta == 1.0:
            return _rkl_kernel
        return functools.partial(_jsd_kernel, beta=beta, normalized=kind == "jsd-normalized")
    if kind == "skew-fkl":
        return functools.partial(_skew_fkl_kernel, alpha=alpha)
    if kind == "skew-rkl":
        return functools.partial(_skew_rkl_kernel, alpha=alpha)
    return {"fkl": _fkl_kernel, "rkl": _rkl_kernel, "tvd": _tvd_kernel}[kind]


def _divergence(kind, student_logits, teacher_logits, weights, chunk_size, temperature=1.0, **params):
    temperature = _check_temperature(temperature)
    chunk_fn = functools.partial(_divergence_chunk, _kernel_for(kind, **params), temperature=temperature)
    return _reduce(student_logits, teacher_logits, weights, chunk_fn, chunk_size, temperature=temperature)


def fkl(student_logits, teacher_logits, weights, *, chunk_size=None, temperature=1.0):
    """Forward KL(p_teacher || q_student) per position -> (weighted sum, sum of weights)."""
    return _divergence("fkl", student_logits, teacher_logits, weights, chunk_size, temperature)


def rkl(student_logits, teacher_logits, weights, *, chunk_size=None, temperature=1.0):
    """Reverse KL(q_student || p_teacher); +inf at a position where p = 0 < q."""
    return _divergence("rkl", student_logits, teacher_logits, weights, chunk_size, temperature)


def jsd(student_logits, teacher_logits, weights, *, beta=DEFAULT_BETA, chunk_size=None, temperature=1.0):
    """Generalized JSD of GKD (Eq. 1), TRL's `generalized_jsd_loss` value; beta = 0 is fkl, 1 is rkl.

    For 0 < beta < 1, with p the teacher, q the student and m = beta p + (1 - beta) q:
        d = beta KL(p || m) + (1 - beta) KL(q || m).
    It vanishes as beta approaches either end, where fkl / rkl are used exactly (as TRL does);
    `jsd_normalized` is the same value divided by beta (1 - beta), continuous on [0, 1].
    """
    return _divergence("jsd", student_logits, teacher_logits, weights, chunk_size, temperature, beta=beta)


def jsd_normalized(student_logits, teacher_logits, weights, *, beta=DEFAULT_BETA, chunk_size=None,
                   temperature=1.0):
    """Generalized JSD divided by beta (1 - beta): tends to fkl as beta -> 0 and rkl as beta -> 1.

    d = [beta KL(p || m) + (1 - beta) KL(q || m)] / (beta (1 - beta)), m = beta p + (1 - beta) q:
    `jsd` times 1 / (beta (1 - beta)) (4x at beta = 0.5). In fp32 the scaled value loses about
    eps / min(beta, 1 - beta) in absolute accuracy; for beta within 1e-3 of an end pass fp64
    logits or use the end itself.
    """
    return _divergence("jsd-normalized", student_logits, teacher_logits, weights, chunk_size, temperature,
                       beta=beta)


def tvd(student_logits, teacher_logits, weights, *, chunk_size=None, temperature=1.0):
    """Total variation 0.5 * sum_v |p - q| per position."""
    return _divergence("tvd", student_logits, teacher_logits, weights, chunk_size, temperature)


def skew_fkl(student_logits, teacher_logits, weights, *, alpha=DEFAULT_ALPHA, chunk_size=None,
             temperature=1.0):
    """DistiLLM skew forward KL(p || alpha p + (1 - alpha) q); alpha = 0 is fkl, 1 gives 0."""
    return _divergence("skew-fkl", student_logits, teacher_logits, weights, chunk_size, temperature,
                       alpha=alpha)


def skew_rkl(student_logits, teacher_logits, weights, *, alpha=DEFAULT_ALPHA, chunk_size=None,
             temperature=1.0):
    """DistiLLM skew reverse KL(q || alpha q + (1 - alpha) p); alpha = 0 is rkl, 1 gives 0."""
    return _divergence("skew-rkl", student_logits, teacher_logits, weights, chunk_size, temperature,
                       alpha=alpha)


def cross_entropy(student_logits, labels, weights, *, chunk_size=None):
    """-log q_student[label] per position (SFT / SeqKD) -> (weighted sum, sum of weights).

    Labels at weight-0 positions are ignored (-100 is fine there); an out-of-range label at a
    weighted position is an indexing error, as in torch.nn.functional.cross_entropy.
    """
    return _reduce(student_logits, labels, weights, _cross_entropy_chunk, chunk_size,
                   target_is_labels=True)


# Name -> loss; the names are those of CONTRACT.md §3 and of the CLI / config.
DIVERGENCES: "MappingProxyType[str, Loss]" = MappingProxyType({
    "fkl": fkl,
    "rkl": rkl,
    "jsd": jsd,
    "jsd-normalized": jsd_normalized,
    "tvd": tvd,
    "skew-fkl": skew_fkl,
    "skew-rkl": skew_rkl,
})


def get_divergence(name: str, *, beta: float = DEFAULT_BETA, alpha: float = DEFAULT_ALPHA,
                   chunk_size: int | None = None, temperature: float = 1.0) -> Loss:
    """The loss `(student_logits, teacher, weights) -> (sum, count)` for a divergence name.

    The teacher is dense logits [N, V] or a SparseTeacher [N] built at the same `temperature`.
    beta is read by "jsd" / "jsd-normalized" only, alpha by "skew-fkl" / "skew-rkl" only; both are
    validated always. temperature T: both distributions at logits / T, the loss times T^2.
    """
    _kernel_for(name, beta=beta, alpha=alpha)  # validates name, beta and alpha
    _check_chunk_size(chunk_size)
    temperature = _check_temperature(temperature)
    params = {"jsd": {"beta": beta}, "jsd-normalized": {"beta": beta}, "skew-fkl": {"alpha": alpha},
              "skew-rkl": {"alpha": alpha}}
    return functools.partial(DIVERGENCES[name], chunk_size=chunk_size, temperature=temperature,
                             **params.get(name, {}))


def divergence_per_token(student_logits, teacher_logits, kind: str = "fkl", *,
                         beta: float = DEFAULT_BETA, alpha: float = DEFAULT_ALPHA,
                         chunk_size: int | None = None, temperature: float = 1.0) -> torch.Tensor:
    """d_n for every position, shaped like the logits without V ([N] or [B, T]); no gradient.

    For logging and validation. Unmasked: rows of padding may hold anything, mask them yourself.
    The teacher may be a SparseTeacher; temperature as in get_divergence (d_n includes the T^2).
    """
    _check_chunk_size(chunk_size)
    kernel = _kernel_for(kind, beta=beta, alpha=alpha)
    temperature = _check_temperature(temperature)
    ones = torch.ones(student_logits.shape[:-1], dtype=torch.bool, device=student_logits.device)
    student, teacher, _ = _flatten(student_logits, teacher_logits, ones, target_is_labels=False,
                                   temperature=temperature)
    chunk = chunk_size or default_chunk_size(student.shape[-1])
    dtype = _compute_dtype(student, _teacher_values(teacher))
    out = torch.empty(student.shape[0], dtype=dtype, device=student.device)
    with torch.no_grad():
        for start, stop in _chunks(student.shape[0], chunk):
            d, _ = _divergence_chunk(kernel, student[start:stop], teacher[start:stop], False,
                                     temperature=temperature)
            out[start:stop] = d
    return out.reshape(student_logits.shape[:-1])
