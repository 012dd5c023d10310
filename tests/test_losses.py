"""Tests for skd.core.losses: values, gradients, chunking, masking, dtypes, memory (CONTRACT.md §3).

The reference below is the textbook formula under plain autograd in float64, written independently
of the chunked analytic-gradient implementation it checks.
"""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from skd.core import losses
from skd.core.errors import SkdError
from skd.core.losses import (
    DIVERGENCES, cross_entropy, default_chunk_size, divergence_per_token, fkl, get_divergence, jsd,
    jsd_normalized, rkl, skew_fkl, skew_rkl,
)
from helpers import divergence_of_probs

# (name, beta, alpha): every divergence, jsd at an interior beta and skews at a non-default alpha.
CASES = [("fkl", 0.5, 0.1), ("rkl", 0.5, 0.1), ("jsd", 0.5, 0.1), ("jsd", 0.2, 0.1),
         ("jsd-normalized", 0.5, 0.1), ("jsd-normalized", 0.2, 0.1),
         ("tvd", 0.5, 0.1), ("skew-fkl", 0.5, 0.1), ("skew-fkl", 0.5, 0.3),
         ("skew-rkl", 0.5, 0.1), ("skew-rkl", 0.5, 0.3)]
CASE_IDS = [f"{n}-b{b}-a{a}" for n, b, a in CASES]


def reference_per_token(name, student, teacher, beta=0.5, alpha=0.1):
    """Plain formulas on probabilities, differentiable by autograd."""
    return divergence_of_probs(name, teacher.softmax(-1), student.softmax(-1), beta, alpha)


def make_inputs(shape=(2, 5, 7), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = (2 * torch.randn(*shape, generator=g)).to(dtype).requires_grad_()
    teacher = (2 * torch.randn(*shape, generator=g)).to(dtype)
    mask = torch.rand(*shape[:-1], generator=g) > 0.3
    mask.view(-1)[0] = True  # at least one kept position
    return student, teacher, mask


def loss_and_grad(name, beta, alpha, student, teacher, weights, chunk_size=None):
    total, count = get_divergence(name, beta=beta, alpha=alpha, chunk_size=chunk_size)(
        student, teacher, weights)
    (grad,) = torch.autograd.grad(total, student)
    return total.detach(), count, grad


# ---------------------------------------------------------------------------------- values


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=CASE_IDS)
def test_matches_reference_values_and_gradients(name, beta, alpha):
    student, teacher, mask = make_inputs()
    total, count, grad = loss_and_grad(name, beta, alpha, student, teacher, mask, chunk_size=3)
    ref = (reference_per_token(name, student, teacher, beta, alpha) * mask).sum()
    (ref_grad,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(total, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert count.item() == mask.sum().item()


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=CASE_IDS)
def test_divergence_of_a_distribution_with_itself_is_zero(name, beta, alpha):
    student, _, mask = make_inputs()
    total, _, grad = loss_and_grad(name, beta, alpha, student, student.detach().clone(), mask)
    assert abs(total.item()) < 1e-12
    assert grad.abs().max().item() < 1e-12


# p = teacher, q = student, as explicit probabilities on V = 3.
P, Q = (0.5, 0.3, 0.2), (0.2, 0.5, 0.3)


def _kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def _mix(w, a, b):
    return [w * x + (1 - w) * y for x, y in zip(a, b)]


HAND = {
    # 0.5 ln(2.5) + 0.3 ln(0.6) + 0.2 ln(2/3)
    ("fkl", 0.5, 0.1):
        0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.5) + 0.2 * math.log(0.2 / 0.3),
    ("rkl", 0.5, 0.1):
        0.2 * math.log(0.2 / 0.5) + 0.5 * math.log(0.5 / 0.3) + 0.3 * math.log(0.3 / 0.2),
    # m = (0.35, 0.4, 0.25); normalized: scaled by 1 / (0.5 * 0.5)
    ("jsd", 0.5, 0.1): 0.5 * _kl(P, (0.35, 0.4, 0.25)) + 0.5 * _kl(Q, (0.35, 0.4, 0.25)),
    ("jsd-normalized", 0.5, 0.1): (0.5 * _kl(P, (0.35, 0.4, 0.25)) + 0.5 * _kl(Q, (0.35, 0.4, 0.25))) / 0.25,
    ("tvd", 0.5, 0.1): 0.5 * (0.3 + 0.2 + 0.1),
    # m = 0.1 p + 0.9 q = (0.23, 0.48, 0.29)
    ("skew-fkl", 0.5, 0.1): _kl(P, (0.23, 0.48, 0.29)),
    # m = 0.1 q + 0.9 p = (0.47, 0.32, 0.21)
    ("skew-rkl", 0.5, 0.1): _kl(Q, (0.47, 0.32, 0.21)),
}


@pytest.mark.parametrize("key", list(HAND), ids=[k[0] for k in HAND])
def test_hand_computed_value(key):
    name, beta, alpha = key
    assert _mix(0.1, P, Q) == pytest.approx([0.23, 0.48, 0.29])  # the literals above
    assert _mix(0.1, Q, P) == pytest.approx([0.47, 0.32, 0.21])
    student = torch.tensor([Q], dtype=torch.float64).log()  # logits = log-probs (+ any constant)
    teacher = torch.tensor([P], dtype=torch.float64).log() + 3.0
    loss = get_divergence(name, beta=beta, alpha=alpha)
    total, count = loss(student, teacher, torch.ones(1, dtype=torch.bool))
    assert total.item() == pytest.approx(HAND[key], rel=1e-12)
    assert count.item() == 1.0


def test_tvd_hand_value_is_point_three():
    student = torch.tensor([Q]).log()
    teacher = torch.tensor([P]).log()
    total, _ = losses.tvd(student, teacher, torch.ones(1, dtype=torch.bool))
    assert total.item() == pytest.approx(0.3, abs=1e-6)


# ---------------------------------------------------------------------- jsd / skew endpoints


@pytest.mark.parametrize("divergence", [jsd, jsd_normalized])
def test_jsd_endpoints_are_fkl_and_rkl_exactly(divergence):
    student, teacher, mask = make_inputs(dtype=torch.float32)
    for beta, other in ((0.0, fkl), (1.0, rkl)):
        a, ca = divergence(student, teacher, mask, beta=beta)
        b, cb = other(student, teacher, mask)
        (ga,) = torch.autograd.grad(a, student)
        (gb,) = torch.autograd.grad(b, student)
        assert torch.equal(a, b) and torch.equal(ca, cb) and torch.equal(ga, gb)


def test_jsd_normalized_is_continuous_at_both_endpoints():
    # The 1 / (beta (1 - beta)) scaling: near the ends jsd-normalized approaches fkl / rkl, not 0.
    student, teacher, mask = make_inputs()
    f, _, gf = loss_and_grad("fkl", 0.0, 0.1, student, teacher, mask)
    r, _, gr = loss_and_grad("rkl", 0.0, 0.1, student, teacher, mask)
    j0, _, gj0 = loss_and_grad("jsd-normalized", 1e-7, 0.1, student, teacher, mask)
    j1, _, gj1 = loss_and_grad("jsd-normalized", 1 - 1e-7, 0.1, student, teacher, mask)
    torch.testing.assert_close(j0, f, rtol=1e-5, atol=0)
    torch.testing.assert_close(j1, r, rtol=1e-5, atol=0)
    torch.testing.assert_close(gj0, gf, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gj1, gr, rtol=1e-4, atol=1e-6)


def test_jsd_vanishes_towards_the_ends_and_is_normalized_times_beta_one_minus_beta():
    # TRL's value: beta * KL(p || m) + (1 - beta) * KL(q || m) -> 0 as beta -> 0 or 1 (the exact ends
    # are dispatched to fkl / rkl), and beta (1 - beta) times the normalized one in between.
    student, teacher, mask = make_inputs()
    f, _, _ = loss_and_grad("fkl", 0.0, 0.1, student, teacher, mask)
    near0, _, _ = loss_and_grad("jsd", 1e-7, 0.1, student, teacher, mask)
    torch.testing.assert_close(near0, 1e-7 * f, rtol=1e-5, atol=0)
    for beta in (0.1, 0.5, 0.8):
        j, _, gj = loss_and_grad("jsd", beta, 0.1, student, teacher, mask)
        n, _, gn = loss_and_grad("jsd-normalized", beta, 0.1, student, teacher, mask)
        torch.testing.assert_close(j, beta * (1 - beta) * n, rtol=1e-12, atol=0)
        torch.testing.assert_close(gj, beta * (1 - beta) * gn, rtol=1e-10, atol=1e-14)


def _trl_generalized_jsd(student_logits, teacher_logits, labels, beta):
    """TRL's GKD loss written from its definition (GKD Eq. 1), token mean over labels != -100.

    Log-probabilities at temperature 1; beta = 0 is KL(teacher || student), beta = 1 is
    KL(student || teacher); otherwise with log m = logsumexp(log q + log(1 - beta), log p + log beta),
    beta * KL(p || m) + (1 - beta) * KL(q || m), summed over the vocabulary.
    """
    log_q = F.log_softmax(student_logits, dim=-1)
    log_p = F.log_softmax(teacher_logits, dim=-1)

    def kl(log_a, log_b):  # KL(a || b) per position; kl_div(input=log b, target=log a)
        return F.kl_div(log_b, log_a, reduction="none", log_target=True).sum(-1)

    if beta == 0:
        per_token = kl(log_p, log_q)
    elif beta == 1:
        per_token = kl(log_q, log_p)
    else:
        b = torch.tensor(beta, dtype=log_q.dtype)
        log_m = torch.logsumexp(torch.stack([log_q + torch.log1p(-b), log_p + torch.log(b)]), dim=0)
        per_token = beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)
    keep = labels != -100
    return per_token[keep].sum() / keep.sum()


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_equals_trl_generalized_jsd_on_random_logits(beta):
    g = torch.Generator().manual_seed(int(beta * 10) + 3)
    student = 3 * torch.randn(3, 6, 11, generator=g, dtype=torch.float64)
    teacher = 3 * torch.randn(3, 6, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[torch.rand(3, 6, generator=g) < 0.3] = -100
    labels[0, 0] = 1
    total, count = jsd(student, teacher, labels != -100, beta=beta)
    torch.testing.assert_close(total / count, _trl_generalized_jsd(student, teacher, labels, beta),
                               rtol=1e-12, atol=1e-14)


def test_skew_divergences_at_alpha_zero_and_one():
    student, teacher, mask = make_inputs()
    f, _, gf = loss_and_grad("fkl", 0.5, 0.0, student, teacher, mask)
    r, _, gr = loss_and_grad("rkl", 0.5, 0.0, student, teacher, mask)
    sf, _, gsf = loss_and_grad("skew-fkl", 0.5, 0.0, student, teacher, mask)
    sr, _, gsr = loss_and_grad("skew-rkl", 0.5, 0.0, student, teacher, mask)
    torch.testing.assert_close(sf, f, rtol=1e-12, atol=0)
    torch.testing.assert_close(sr, r, rtol=1e-12, atol=0)
    torch.testing.assert_close(gsf, gf, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(gsr, gr, rtol=1e-10, atol=1e-14)
    for name in ("skew-fkl", "skew-rkl"):  # m is the first argument itself: KL = 0
        total, _, grad = loss_and_grad(name, 0.5, 1.0, student, teacher, mask)
        assert total.item() == 0.0 and grad.abs().max().item() < 1e-15


# ------------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=CASE_IDS)
def test_chunked_equals_unchunked(name, beta, alpha):
    student, teacher, mask = make_inputs(dtype=torch.float32)
    n = mask.numel()
    whole, count, grad_whole = loss_and_grad(name, beta, alpha, student, teacher, mask,
                                             chunk_size=n)
    for chunk in (1, 3, n + 7, None):
        total, c, grad = loss_and_grad(name, beta, alpha, student, teacher, mask, chunk_size=chunk)
        torch.testing.assert_close(total, whole, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, grad_whole, rtol=1e-6, atol=1e-7)
        assert torch.equal(c, count)


def test_3d_input_equals_flattened_2d():
    student, teacher, mask = make_inputs()
    total3, count3, grad3 = loss_and_grad("jsd", 0.3, 0.1, student, teacher, mask, chunk_size=4)
    flat = student.detach().reshape(-1, 7).requires_grad_()
    total2, count2, grad2 = loss_and_grad("jsd", 0.3, 0.1, flat, teacher.reshape(-1, 7),
                                          mask.reshape(-1), chunk_size=4)
    assert torch.equal(total3, total2) and torch.equal(count3, count2)
    assert torch.equal(grad3.reshape(-1, 7), grad2)


def test_default_chunk_size_is_sized_from_the_vocabulary():
    assert default_chunk_size(256_000) == 8  # Gemma: 8 x 256k fp32 = 8 MiB per temporary
    assert default_chunk_size(32_000) == 65
    assert default_chunk_size(10) == 1024  # capped
    assert default_chunk_size(1 << 30) == 1


# -------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=CASE_IDS)
def test_gradcheck_float64(name, beta, alpha):
    student, teacher, _ = make_inputs(shape=(4, 5))
    weights = torch.tensor([0.5, 0.0, 1.0, 2.0], dtype=torch.float64)
    chunk_fn = lambda z, t, need_grad: losses._divergence_chunk(  # noqa: E731
        losses._kernel_for(name, beta=beta, alpha=alpha), z, t, need_grad)

    def f(s):  # the Function itself, with a buffer kept for gradcheck's repeated backward
        return losses._reduce(s, teacher, weights, chunk_fn, 3, _reusable=True)[0]

    assert torch.autograd.gradcheck(f, (student,), eps=1e-6, atol=1e-7)


def test_gradcheck_cross_entropy():
    student, _, _ = make_inputs(shape=(4, 5))
    labels = torch.tensor([0, 4, 2, 1])
    weights = torch.tensor([1.0, 0.25, 0.0, 3.0], dtype=torch.float64)

    def f(s):
        return losses._reduce(s, labels, weights, losses._cross_entropy_chunk, 3,
                              target_is_labels=True, _reusable=True)[0]

    assert torch.autograd.gradcheck(f, (student,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_backward_scales_the_buffer_by_the_upstream_gradient(dtype):
    # The training loop divides once: loss = sum / count, so grad_output != 1.
    student, teacher, mask = make_inputs()
    student = student.detach().to(dtype).requires_grad_()
    total, count = jsd(student, teacher, mask, beta=0.3)
    (0.37 * total / count).backward()
    ref_student = student.detach().double().requires_grad_()
    ref = (reference_per_token("jsd", ref_student, teacher, beta=0.3) * mask).sum()
    (0.37 * ref / mask.sum()).backward()
    tol = ({"rtol": 1e-10, "atol": 1e-14} if dtype == torch.float64
           else {"rtol": 1e-2, "atol": 1e-4})
    torch.testing.assert_close(student.grad.double(), ref_student.grad, **tol)


def test_second_backward_through_one_loss_raises():
    student, teacher, mask = make_inputs()
    total, _ = fkl(student, teacher, mask)
    total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        total.backward()


# ------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=CASE_IDS)
def test_weight_zero_positions_contribute_nothing_even_with_garbage_logits(name, beta, alpha):
    student, teacher, mask = make_inputs()
    garbage = teacher.detach().clone()
    garbage[~mask] = float("nan")
    garbage[~mask][:, :1] = float("-inf")
    student_garbage = student.detach().clone()
    student_garbage[~mask] = 1e30
    student_garbage.requires_grad_()
    clean, c1, grad_clean = loss_and_grad(name, beta, alpha, student, teacher, mask, chunk_size=2)
    dirty, c2, grad_dirty = loss_and_grad(name, beta, alpha, student_garbage, garbage, mask,
                                          chunk_size=2)
    assert torch.equal(clean, dirty) and torch.equal(c1, c2)
    assert torch.equal(grad_dirty[mask], grad_clean[mask])
    assert torch.count_nonzero(grad_dirty[~mask]) == 0


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_fully_masked_input_gives_zero_sum_zero_count_zero_gradient(name):
    student, teacher, _ = make_inputs(dtype=torch.float32)
    nothing = torch.zeros(student.shape[:-1], dtype=torch.bool)
    total, count = DIVERGENCES[name](student, teacher, nothing)
    (grad,) = torch.autograd.grad(total, student)
    assert total.item() == 0.0 and count.item() == 0.0
    assert torch.count_nonzero(grad) == 0


def test_float_weights_give_per_sequence_normalisation():
    student, teacher, mask = make_inputs(shape=(3, 6, 5))
    mask[:, 0] = True  # every sequence has at least one response token
    per_sequence = mask.double() / mask.sum(-1, keepdim=True)  # mask / tokens in its sequence
    total, count = skew_rkl(student, teacher, per_sequence, alpha=0.1)
    d = divergence_per_token(student.detach(), teacher, "skew-rkl", alpha=0.1)
    expected = sum(d[b][mask[b]].mean() for b in range(3))  # mean per sequence, summed
    torch.testing.assert_close(total.detach(), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(count, torch.tensor(3.0, dtype=torch.float64), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------- numerics


NEG_INF_FINITE = [c for c in CASES if c[0] != "rkl"]


@pytest.mark.parametrize("name,beta,alpha", NEG_INF_FINITE,
                         ids=[f"{n}-b{b}-a{a}" for n, b, a in NEG_INF_FINITE])
def test_neg_inf_teacher_logits_give_finite_loss_equal_to_zero_probability(name, beta, alpha):
    student, teacher, mask = make_inputs()
    teacher = teacher.clone()
    teacher[..., :3] = float("-inf")  # p = 0 on three of seven tokens, at every position
    total, _, grad = loss_and_grad(name, beta, alpha, student, teacher, mask, chunk_size=4)
    assert torch.isfinite(total) and torch.isfinite(grad).all()
    ref = (reference_per_token(name, student, teacher, beta, alpha) * mask).sum()
    (ref_grad,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(total, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_reverse_kl_with_zero_teacher_probability_is_inf_not_nan():
    # KL(q || p) is +inf when p_v = 0 < q_v: reported as inf (the loop sees it), gradient 0.
    student, teacher, mask = make_inputs()
    teacher = teacher.clone()
    teacher[0, 0, 0] = float("-inf")
    for name, beta in (("rkl", 0.5), ("jsd", 1.0)):
        total, _, grad = loss_and_grad(name, beta, 0.1, student, teacher, mask)
        assert total.item() == math.inf
        assert torch.isfinite(grad).all() and torch.count_nonzero(grad[0, 0]) == 0


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_finite_when_student_probabilities_underflow(name):
    # fp32: q = exp(-200) underflows to 0 while the teacher puts mass there.
    student = torch.tensor([[0.0, -200.0, -300.0], [5.0, -150.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    total, _ = DIVERGENCES[name](student, teacher, torch.ones(2, dtype=torch.bool))
    (grad,) = torch.autograd.grad(total, student)
    assert torch.isfinite(total) and torch.isfinite(grad).all()
    if name == "fkl":  # sum p (log p - log q) with log q from log_softmax, not log(0)
        lq = student.detach().log_softmax(-1)[0]
        assert total.item() > (-(lq[1] + lq[2]) / 3).item() > 100


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=CASE_IDS)
def test_bf16_student_logits_compute_in_fp32_and_return_bf16_gradient(name, beta, alpha):
    student, teacher, mask = make_inputs(dtype=torch.float32)
    student16 = student.detach().to(torch.bfloat16).requires_grad_()
    total16, count16 = get_divergence(name, beta=beta, alpha=alpha)(student16, teacher, mask)
    (total16 / count16).backward()
    assert total16.dtype == torch.float32 and student16.grad.dtype == torch.bfloat16
    exact = student16.detach().float().requires_grad_()  # the same values, in fp32
    total32, count32 = get_divergence(name, beta=beta, alpha=alpha)(exact, teacher, mask)
    (total32 / count32).backward()
    torch.testing.assert_close(total16, total32, rtol=1e-6, atol=1e-6)  # fp32 inside either way
    torch.testing.assert_close(student16.grad.float(), exact.grad, rtol=1e-2, atol=1e-4)


# ------------------------------------------------------------------------ cross-entropy


def test_cross_entropy_equals_torch_sum_on_masked_positions():
    student, _, mask = make_inputs(shape=(2, 6, 11))
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 11, (2, 6), generator=g).masked_fill(~mask, -100)
    total, count = cross_entropy(student, labels, mask, chunk_size=4)
    (grad,) = torch.autograd.grad(total, student)
    ref = F.cross_entropy(student[mask], labels[mask], reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(total.detach(), ref.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)
    assert count.item() == mask.sum().item()


def test_cross_entropy_rejects_out_of_range_label_at_a_weighted_position():
    student, _, _ = make_inputs(shape=(3, 4))
    with pytest.raises(RuntimeError):
        cross_entropy(student, torch.tensor([0, 9, 1]), torch.ones(3, dtype=torch.bool))


# -------------------------------------------------------------------- API and contracts


def test_teacher_never_receives_gradient_and_no_grad_path_matches():
    student, teacher, mask = make_inputs()
    teacher.requires_grad_()
    total, _ = rkl(student, teacher, mask)
    total.backward()
    assert teacher.grad is None and student.grad is not None
    with torch.no_grad():
        plain, _ = rkl(student, teacher, mask)
    frozen, _ = rkl(student.detach(), teacher.detach(), mask)
    assert plain.grad_fn is None and frozen.grad_fn is None
    assert torch.equal(plain, total.detach()) and torch.equal(frozen, total.detach())


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=CASE_IDS)
def test_divergence_per_token_matches_reference(name, beta, alpha):
    student, teacher, _ = make_inputs()
    d = divergence_per_token(student, teacher, name, beta=beta, alpha=alpha, chunk_size=3)
    assert d.shape == (2, 5) and d.grad_fn is None
    torch.testing.assert_close(d, reference_per_token(name, student, teacher, beta, alpha).detach(),
                               rtol=1e-12, atol=1e-12)


def test_get_divergence_binds_its_parameters():
    student, teacher, mask = make_inputs()
    assert torch.equal(get_divergence("jsd", beta=0.3)(student, teacher, mask)[0],
                       jsd(student, teacher, mask, beta=0.3)[0])
    assert torch.equal(get_divergence("skew-fkl", alpha=0.4)(student, teacher, mask)[0],
                       skew_fkl(student, teacher, mask, alpha=0.4)[0])
    assert not torch.equal(jsd(student, teacher, mask, beta=0.3)[0], jsd(student, teacher, mask)[0])


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "kl"}, "fkl, rkl, jsd, jsd-normalized, tvd, skew-fkl, skew-rkl"),
    ({"name": "jsd", "beta": -0.1}, "beta"),
    ({"name": "jsd", "beta": 1.5}, "beta"),
    ({"name": "jsd", "beta": float("nan")}, "beta"),
    ({"name": "skew-fkl", "alpha": 2.0}, "alpha"),
    ({"name": "skew-rkl", "alpha": -1e-9}, "alpha"),
    ({"name": "fkl", "chunk_size": 0}, "chunk size"),
])
def test_get_divergence_rejects_bad_configuration(kwargs, match):
    with pytest.raises(SkdError, match=match):
        get_divergence(**kwargs)


def test_bad_shapes_name_both_shapes():
    student, teacher, mask = make_inputs()
    with pytest.raises(ValueError, match=r"\(2, 5, 6\).*\(2, 5, 7\)"):
        fkl(student, teacher[..., :6], mask)
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 5, 7\)"):
        fkl(student, teacher, mask[:, :4])
    with pytest.raises(ValueError, match="bool mask or float"):
        fkl(student, teacher, mask.long())


# ------------------------------------------------------------------------------- memory

_MEMORY_PROBE = textwrap.dedent("""
    import torch
    from skd.core.losses import fkl
    torch.set_num_threads(1)
    N, V = 256, 32000
    full = N * V * 4  # one fp32 copy of the logits

    def rss(field):  # kB -> bytes, from the kernel's own accounting of this process
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    def reset_peak():  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return rss("VmRSS")

    s = torch.randn(N, V, requires_grad=True); t = torch.randn(N, V)
    w = torch.ones(N, dtype=torch.bool)
    x = s[:8].detach().requires_grad_()  # warm up kernels and thread pools on a small input
    fkl(x, t[:8], w[:8], chunk_size=4)[0].backward()
    (x.log_softmax(-1) * t[:8].softmax(-1)).sum().backward()
    base = reset_peak()
    total, count = fkl(s, t, w, chunk_size=16)
    (total / count).backward()
    ours = rss("VmHWM") - base
    s.grad = None; del total
    base = reset_peak()
    lq, lp = s.log_softmax(-1), t.log_softmax(-1)  # the same loss under plain autograd
    ((lp.exp() * (lp - lq)).sum() / N).backward()
    print(ours / full, (rss("VmHWM") - base) / full)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
def test_chunked_loss_and_backward_allocate_about_one_logits_copy():
    # torch's CPU allocations are invisible to tracemalloc; the process's peak RSS (reset first) sees them.
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True,
                         timeout=60, check=True)
    ours, plain = map(float, out.stdout.split())
    assert plain > 4.0, f"control: plain autograd should need > 4 fp32 copies, measured {plain:.2f}"
    assert ours < 2.25, f"chunked loss + backward used {ours:.2f} fp32 copies of the logits"
