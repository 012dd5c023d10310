"""Sparse teacher targets (top-N log-probs + one tail bucket) and the loss temperature.

The references are plain torch under autograd in float64, written from the definitions: the bucketed
distributions (kept tokens + tail) for a sparse teacher, T^2 D(softmax(t / T) || softmax(z / T)) for
a temperature.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from skd.core import losses
from skd.core.errors import SkdError
from skd.core.sparse_teacher import SparseTeacher
from helpers import divergence_of_probs

# (name, beta, alpha): every divergence, the skews at a non-default alpha too.
CASES = [("fkl", 0.5, 0.1), ("rkl", 0.5, 0.1), ("jsd", 0.5, 0.1), ("jsd", 0.2, 0.1), ("jsd-normalized", 0.3, 0.1),
         ("tvd", 0.5, 0.1), ("skew-fkl", 0.5, 0.1), ("skew-fkl", 0.5, 0.3), ("skew-rkl", 0.5, 0.1),
         ("skew-rkl", 0.5, 0.3)]
IDS = [f"{n}-b{b}-a{a}" for n, b, a in CASES]

def bucketed_reference(name, student, sparse: SparseTeacher, beta=0.5, alpha=0.1, temperature=1.0):
    """Per row: D over the N + 1 buckets, the student's tail = 1 - its kept probabilities (autograd)."""
    q = torch.softmax(student / temperature, -1)
    idx = sparse.indices.long()
    q_kept = q.gather(-1, idx)
    tail_mask = torch.ones_like(q, dtype=torch.bool).scatter(-1, idx, False)
    q_tail = (q * tail_mask).sum(-1, keepdim=True)
    p = sparse.bucket_logprobs().exp()
    return temperature ** 2 * divergence_of_probs(name, p, torch.cat([q_kept, q_tail], -1), beta, alpha)


def lm_like_logits(rows, vocab, *, seed=0, dtype=torch.float64, scale=2.0):
    """Peaked rows: a Zipf-like base (-1.5 log rank, ranks shuffled per row) plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.argsort(torch.rand(rows, vocab, generator=g), -1).to(dtype) + 1
    return (-1.5 * ranks.log() + scale * 0.3 * torch.randn(rows, vocab, generator=g, dtype=dtype))


def student_teacher(rows=7, vocab=19, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    teacher = lm_like_logits(rows, vocab, seed=seed)
    student = (teacher + torch.randn(rows, vocab, generator=g, dtype=torch.float64)).requires_grad_()
    weights = torch.rand(rows, generator=g, dtype=torch.float64) + 0.5
    weights[1] = 0.0
    return student, teacher, weights


def loss_grad(fn, student, teacher, weights):
    total, count = fn(student, teacher, weights)
    (grad,) = torch.autograd.grad(total, student)
    return total.detach(), count, grad


# ---------------------------------------------------------------------------- the representation


@pytest.mark.parametrize("n", [1, 4, 18, 19, 50])
def test_every_sparse_row_kept_probabilities_plus_tail_sum_to_one(n):
    _, teacher, _ = student_teacher()
    for dtype in (torch.float64, torch.float32):
        st = SparseTeacher.from_logits(teacher.to(dtype), n)
        assert st.logprobs.dtype == dtype and st.indices.dtype == torch.int32 and st.shape == (7,)
        total = st.logprobs.double().exp().sum(-1) + st.tail_logprob.double().exp()
        torch.testing.assert_close(total, torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-6)
        assert st.num_kept == min(n, 19)
        if n >= 19:
            assert bool((st.tail_logprob == -math.inf).all())   # an empty tail is -inf
    lp = torch.log_softmax(teacher, -1)
    st = SparseTeacher.from_logits(teacher, 4)
    vals, idx = lp.topk(4, -1)
    torch.testing.assert_close(st.logprobs, vals, rtol=0, atol=0)
    assert torch.equal(st.indices.long(), idx)
    assert bool((st.logprobs[:, :-1] >= st.logprobs[:, 1:]).all())     # largest first
    rest = lp.scatter(-1, idx, -math.inf).logsumexp(-1)
    torch.testing.assert_close(st.tail_logprob, rest, rtol=0, atol=1e-15)


def test_tail_stays_accurate_when_it_is_far_below_float_eps():
    # Mass 1e-12 outside the top 2: 1 - sum(kept) is 0 in fp32 (and inexact in fp64), the tail is not.
    logits = torch.tensor([[0.0, 0.0, -28.0, -28.0, -28.0]])
    st = SparseTeacher.from_logits(logits, 2)
    expected = math.log(3 * math.exp(-28.0)) - math.log(2 + 3 * math.exp(-28.0))
    assert st.tail_logprob.item() == pytest.approx(expected, rel=1e-6)


def test_from_logits_divides_by_the_temperature_and_records_it():
    _, teacher, _ = student_teacher()
    st = SparseTeacher.from_logits(teacher, 5, temperature=2.0)
    ref = SparseTeacher.from_logits(teacher / 2.0, 5)
    assert st.temperature == 2.0 and ref.temperature == 1.0
    torch.testing.assert_close(st.logprobs, ref.logprobs, rtol=0, atol=1e-15)
    assert torch.equal(st.indices, ref.indices)


def test_slicing_masking_assignment_cat_and_device():
    _, teacher, _ = student_teacher(rows=6)
    st = SparseTeacher.from_logits(teacher.reshape(2, 3, 19), 4)
    assert st.shape == (2, 3) and len(st) == 2 and st.nbytes == 2 * 3 * (4 * 8 + 4 * 4 + 8)
    flat = SparseTeacher.from_logits(teacher, 4)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    picked = st[mask]
    assert picked.shape == (4,)
    assert torch.equal(picked.logprobs, flat.logprobs[mask.reshape(-1)])
    part = flat[1:4]
    assert torch.equal(part.tail_logprob, flat.tail_logprob[1:4]) and part.vocab_size == 19
    off = torch.tensor([1, 4])
    assert torch.equal(flat[off[0]: off[1]].indices, part.indices)        # tensor offsets, as objective slices
    both = SparseTeacher.cat([flat[:2], flat[2:]])
    assert torch.equal(both.logprobs, flat.logprobs) and torch.equal(both.indices, flat.indices)
    buf = flat.new_zeros(2, 5)
    buf[torch.tensor([1]), :3] = flat[None, :3]
    assert torch.equal(buf.logprobs[1, :3], flat.logprobs[:3]) and bool((buf.logprobs[0] == 0).all())
    moved = flat.to("cpu")
    assert moved.device.type == "cpu" and torch.equal(moved.tail_logprob, flat.tail_logprob)
    with pytest.raises(ValueError, match="differ"):
        SparseTeacher.cat([flat, SparseTeacher.from_logits(teacher, 3)])


# ---------------------------------------------------------------------------- the sparse loss


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=IDS)
def test_sparse_loss_and_gradient_equal_autograd_through_the_bucketed_reference(name, beta, alpha):
    student, teacher, weights = student_teacher()
    for n in (1, 3, 8):
        st = SparseTeacher.from_logits(teacher, n)
        total, count, grad = loss_grad(losses.get_divergence(name, beta=beta, alpha=alpha, chunk_size=3),
                                       student, st, weights)
        ref = (bucketed_reference(name, student, st, beta, alpha) * weights).sum()
        (ref_grad,) = torch.autograd.grad(ref, student)
        torch.testing.assert_close(total, ref.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
        assert count.item() == pytest.approx(weights.sum().item())
        assert bool((grad[1] == 0).all())                                  # weight-0 row


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=IDS)
def test_sparse_path_at_n_equal_v_matches_the_dense_loss(name, beta, alpha):
    student, teacher, weights = student_teacher()
    fn = losses.get_divergence(name, beta=beta, alpha=alpha, chunk_size=4)
    dense = loss_grad(fn, student.float().detach().requires_grad_(), teacher.float(), weights.float())
    sparse = loss_grad(fn, student.float().detach().requires_grad_(), SparseTeacher.from_logits(teacher.float(), 19),
                       weights.float())
    torch.testing.assert_close(sparse[0], dense[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sparse[2], dense[2], rtol=1e-6, atol=1e-6)
    d64 = loss_grad(fn, student, teacher, weights)
    s64 = loss_grad(fn, student, SparseTeacher.from_logits(teacher, 19), weights)
    torch.testing.assert_close(s64[0], d64[0], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(s64[2], d64[2], rtol=1e-12, atol=1e-14)


def test_sparse_gradient_equals_central_differences_float64():
    student, teacher, weights = student_teacher(rows=4, vocab=9)
    st = SparseTeacher.from_logits(teacher, 3)
    z0 = student.detach()
    for name in ("fkl", "rkl", "jsd", "skew-rkl"):
        fn = losses.get_divergence(name, chunk_size=3)
        _, _, grad = loss_grad(fn, student, st, weights)
        numeric = torch.zeros_like(z0)
        for i in range(z0.numel()):
            e = torch.zeros_like(z0).view(-1)
            e[i] = 1e-6
            e = e.view_as(z0)
            numeric.view(-1)[i] = (fn(z0 + e, st, weights)[0] - fn(z0 - e, st, weights)[0]) / 2e-6
        torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)


def test_sparse_loss_is_at_most_the_dense_one_and_approaches_it_with_n():
    """Data-processing inequality of f-divergences: merging outcomes never increases them."""
    student, teacher, weights = student_teacher(rows=5, vocab=40)
    dense = losses.fkl(student, teacher, weights)[0].item()
    values = [losses.fkl(student, SparseTeacher.from_logits(teacher, n), weights)[0].item() for n in (1, 4, 16, 39)]
    assert all(v <= dense + 1e-12 for v in values)
    assert values[-1] == pytest.approx(dense, rel=0.05) and values[-1] > values[0]


def test_sparse_loss_with_bf16_student_and_no_grad_path():
    student, teacher, weights = student_teacher()
    st = SparseTeacher.from_logits(teacher.float(), 5)
    z = student.detach().bfloat16().requires_grad_()
    total, _ = losses.fkl(z, st, weights.float())
    (grad,) = torch.autograd.grad(total, z)
    assert total.dtype == torch.float32 and grad.dtype == torch.bfloat16
    with torch.no_grad():
        total2, _ = losses.fkl(z, st, weights.float())
    assert torch.equal(total.detach(), total2)
    per_token = losses.divergence_per_token(student.detach(), SparseTeacher.from_logits(teacher, 5), "fkl")
    ref = bucketed_reference("fkl", student.detach(), SparseTeacher.from_logits(teacher, 5))
    torch.testing.assert_close(per_token, ref, rtol=1e-12, atol=1e-12)


def test_sparse_teacher_must_match_the_student_and_the_temperature():
    student, teacher, weights = student_teacher()
    with pytest.raises(ValueError, match="must match student_logits"):
        losses.fkl(student, SparseTeacher.from_logits(teacher[:, :10], 3), weights)
    with pytest.raises(ValueError, match="must match student_logits"):
        losses.fkl(student, SparseTeacher.from_logits(teacher[:5], 3), weights)
    with pytest.raises(SkdError, match="built at temperature 1, the loss runs at 2"):
        losses.fkl(student, SparseTeacher.from_logits(teacher, 3), weights, temperature=2.0)


# ---------------------------------------------------------------------------- loss temperature


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=IDS)
def test_temperature_one_is_the_untempered_loss_bit_for_bit(name, beta, alpha):
    student, teacher, weights = student_teacher()
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        z = student.detach().to(dtype).requires_grad_()
        plain = loss_grad(losses.get_divergence(name, beta=beta, alpha=alpha), z, teacher.to(dtype), weights)
        for t in (1.0, 1):
            at_one = loss_grad(losses.get_divergence(name, beta=beta, alpha=alpha, temperature=t), z,
                               teacher.to(dtype), weights)
            assert torch.equal(plain[0], at_one[0]) and torch.equal(plain[2], at_one[2])
        direct = loss_grad(lambda *a: losses.DIVERGENCES[name](*a, temperature=1.0, **(
            {"beta": beta} if name.startswith("jsd") else {"alpha": alpha} if name.startswith("skew") else {})),
            z, teacher.to(dtype), weights)
        assert torch.equal(plain[0], direct[0]) and torch.equal(plain[2], direct[2])


@pytest.mark.parametrize("name,beta,alpha", CASES, ids=IDS)
@pytest.mark.parametrize("temperature", [2.0, 0.5])
def test_temperature_matches_t_squared_times_the_softened_divergence(name, beta, alpha, temperature):
    student, teacher, weights = student_teacher()
    total, _, grad = loss_grad(losses.get_divergence(name, beta=beta, alpha=alpha, temperature=temperature,
                                                     chunk_size=3), student, teacher, weights)
    p, q = torch.softmax(teacher / temperature, -1), torch.softmax(student / temperature, -1)
    ref = (temperature ** 2 * divergence_of_probs(name, p, q, beta, alpha) * weights).sum()
    (ref_grad,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(total, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    per_token = losses.divergence_per_token(student.detach(), teacher, name, beta=beta, alpha=alpha,
                                            temperature=temperature)
    torch.testing.assert_close((per_token * weights).sum(), ref.detach(), rtol=1e-12, atol=1e-12)


def test_fkl_at_t2_is_t_squared_kl_of_the_softened_distributions():
    """The option's convention in one line: T^2 * KL(softmax(t / T) || softmax(z / T))."""
    student, teacher, weights = student_teacher()
    T = 2.0
    total, _, grad = loss_grad(losses.get_divergence("fkl", temperature=T), student, teacher, weights)
    lp, lq = torch.log_softmax(teacher / T, -1), torch.log_softmax(student / T, -1)
    ref = (T ** 2 * (lp.exp() * (lp - lq)).sum(-1) * weights).sum()
    (ref_grad,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(total, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "tvd", "skew-fkl", "skew-rkl"])
def test_temperature_with_a_sparse_teacher_matches_the_bucketed_reference(name):
    student, teacher, weights = student_teacher()
    T = 2.5
    st = SparseTeacher.from_logits(teacher, 4, temperature=T)
    total, _, grad = loss_grad(losses.get_divergence(name, temperature=T, chunk_size=2), student, st, weights)
    ref = (bucketed_reference(name, student, st, temperature=T) * weights).sum()
    (ref_grad,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(total, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, True, "2"])
def test_bad_temperatures_are_refused(bad):
    student, teacher, weights = student_teacher()
    with pytest.raises(SkdError, match="loss temperature must be a finite number > 0"):
        losses.get_divergence("fkl", temperature=bad)
    with pytest.raises(SkdError, match="loss temperature must be a finite number > 0"):
        losses.fkl(student, teacher, weights, temperature=bad)


# ---------------------------------------------------------------------------- sampling, batches, the loop

V = 103  # the char tokenizer's vocabulary


def _pair(dtype=torch.float32):
    from skd.core.presets import tiny_model

    teacher = tiny_model("llama", V, seed=1, dtype=dtype, hidden=32, layers=2)
    student = tiny_model("llama", V, seed=2, dtype=dtype, hidden=16, layers=1)
    teacher.requires_grad_(False)
    return teacher, student


def _skd_batch(teacher, student, tok, batch, *, topk=None, temperature=1.0, method="skd", seed=1):
    from skd.core.batches import build_training_batch
    from skd.core.config import SampleConfig

    scfg = SampleConfig(max_new_tokens=8, gamma=3, k=5, target_topk=topk, target_temperature=temperature)
    gens = {"student": torch.Generator().manual_seed(seed), "teacher": torch.Generator().manual_seed(seed + 1),
            "method": torch.Generator().manual_seed(seed + 2)}
    return build_training_batch(method, batch, step=0, total_steps=10, teacher=teacher, student=student, scfg=scfg,
                                gens=gens, tokenizer=tok, pad_id=0, vocab_size=V, gkd_lambda=0.5)


def _assert_same_sparse(a: SparseTeacher, b: SparseTeacher):
    assert (a.num_kept, a.vocab_size, a.temperature, a.shape) == (b.num_kept, b.vocab_size, b.temperature, b.shape)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.tail_logprob, b.tail_logprob, rtol=0, atol=1e-6)


def test_sampler_keeps_sparse_targets_and_never_allocates_the_dense_buffer(char_tokenizer, monkeypatch):
    from helpers import addition_examples

    from skd.core.batches import response_positions, teacher_logits_flat

    teacher, student = _pair()
    batch = addition_examples(char_tokenizer, 4)
    real_zeros = torch.zeros

    def sampled_with_zeros_spy(**kw):
        """The batch, and whether a [B, R, V] zeros buffer was allocated while sampling it."""
        shapes = []

        def spy(*size, **zkw):
            shapes.append(tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size)
            return real_zeros(*size, **zkw)

        monkeypatch.setattr(torch, "zeros", spy)
        try:
            s = _skd_batch(teacher, student, char_tokenizer, batch, **kw)
        finally:
            monkeypatch.undo()
        return s, (4, 8, V) in shapes

    dense, dense_buffer = sampled_with_zeros_spy()
    sparse, sparse_buffer = sampled_with_zeros_spy(topk=4, temperature=2.0)
    assert dense_buffer and not sparse_buffer
    assert torch.equal(sparse.tokens, dense.tokens)               # the storage does not change the samples
    assert isinstance(sparse.teacher_logits, SparseTeacher) and sparse.teacher_logits.logprobs.shape == (4, 8, 4)
    _, ridx = response_positions(dense)
    flat = teacher_logits_flat(teacher, sparse, V, topk=4, temperature=2.0)
    _assert_same_sparse(flat, SparseTeacher.from_logits(dense.teacher_logits[:, : ridx.shape[1]][ridx], 4, 2.0))
    # ... and both equal a fresh teacher pass, converted
    fresh = dataclasses.replace(dense, teacher_logits=None)
    _assert_same_sparse(flat, teacher_logits_flat(teacher, fresh, V, topk=4, temperature=2.0))
    with pytest.raises(ValueError, match="top-4 teacher targets at temperature 2"):
        teacher_logits_flat(teacher, sparse, V, topk=8, temperature=2.0)


def test_merge_samples_puts_sparse_rows_in_place(char_tokenizer):
    from helpers import addition_examples

    from skd.core.batches import merge_samples, response_positions, teacher_logits_flat

    teacher, student = _pair()
    batch = addition_examples(char_tokenizer, 4)
    a_d, b_d = (_skd_batch(teacher, student, char_tokenizer, batch[i:i + 2], seed=s) for i, s in ((0, 1), (2, 5)))
    a_s, b_s = (_skd_batch(teacher, student, char_tokenizer, batch[i:i + 2], seed=s, topk=3)
                for i, s in ((0, 1), (2, 5)))
    dense = merge_samples([([0, 2], a_d), ([1, 3], b_d)], 4, 0)
    sparse = merge_samples([([0, 2], a_s), ([1, 3], b_s)], 4, 0)
    assert isinstance(sparse.teacher_logits, SparseTeacher) and torch.equal(sparse.tokens, dense.tokens)
    _, ridx = response_positions(dense)
    _assert_same_sparse(teacher_logits_flat(teacher, sparse, V, topk=3),
                        SparseTeacher.from_logits(dense.teacher_logits[:, : ridx.shape[1]][ridx], 3))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_path_forced_at_n_equal_v_gives_the_dense_gradients(char_tokenizer, temperature):
    from helpers import addition_examples

    from skd.core.batches import teacher_logits_flat
    from skd.core.objective import accumulate_gradients

    teacher, student = _pair()
    batch = addition_examples(char_tokenizer, 4)
    div = losses.get_divergence("fkl", temperature=temperature)
    results = []
    for topk, mb in ((None, 4), (V, 4), (V, 2)):   # micro-batches of 2 slice the sparse targets by row offsets
        s = _skd_batch(teacher, student, char_tokenizer, batch, topk=topk, temperature=temperature)
        tf = teacher_logits_flat(teacher, s, V, topk=topk, temperature=temperature)
        assert isinstance(tf, SparseTeacher) == (topk is not None)
        student.zero_grad(set_to_none=True)
        loss = accumulate_gradients(student, s, tf, divergence=div, micro_batch_size=mb, loss_norm="sequence",
                                    vocab_size=V)
        results.append((loss, [p.grad.clone() for p in student.parameters()]))
    (l0, g0), *rest = results
    for loss, grads in rest:
        assert loss == pytest.approx(l0, rel=1e-6, abs=1e-7)
        for a, b in zip(grads, g0):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _run_cfg(out, **train_kw):
    from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig

    t = dict(method="skd", max_steps=3, batch_size=2, eval_every=0, save_every=1, lr=1e-3, output_dir=str(out))
    t.update(train_kw)
    return RunConfig(model=ModelConfig(), data=DataConfig(val_limit=0), train=TrainConfig(**t),
                     sample=SampleConfig(max_new_tokens=5, gamma=2, k=5))


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


def _losses(out):
    import json

    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("one_thread")
def test_teacher_topk_v_through_the_loop_is_the_dense_run_bit_for_bit(char_tokenizer, tmp_path, monkeypatch):
    from helpers import addition_examples

    from skd.core.train import train

    ex = (addition_examples(char_tokenizer, 6), [])
    train(_run_cfg(tmp_path / "dense"), models=(*_pair(), char_tokenizer), examples=ex)
    built = []
    real = SparseTeacher.from_logits.__func__
    monkeypatch.setattr(SparseTeacher, "from_logits",
                        classmethod(lambda cls, *a, **kw: built.append(1) or real(cls, *a, **kw)))
    train(_run_cfg(tmp_path / "topv", teacher_topk=V), models=(*_pair(), char_tokenizer), examples=ex)
    assert not built                                              # N = V: no sparse targets at all
    wd, wv = _weights(tmp_path / "dense"), _weights(tmp_path / "topv")
    assert all(torch.equal(wd[k], wv[k]) for k in wd)
    assert _losses(tmp_path / "dense") == _losses(tmp_path / "topv")
    train(_run_cfg(tmp_path / "top4", teacher_topk=4), models=(*_pair(), char_tokenizer), examples=ex)
    assert built                                                  # N < V: sparse targets
    l4 = _losses(tmp_path / "top4")
    assert all(math.isfinite(x) for x in l4) and l4 != _losses(tmp_path / "dense")
    train(_run_cfg(tmp_path / "t1", loss_temperature=1.0), models=(*_pair(), char_tokenizer), examples=ex)
    w1 = _weights(tmp_path / "t1")
    assert all(torch.equal(wd[k], w1[k]) for k in wd)              # T = 1: the untempered run


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method,kw", [("adaswitch", {}), ("speckd", {"rejected_weight": 0.25})])
def test_adaswitch_and_speckd_train_on_sparse_targets(char_tokenizer, tmp_path, method, kw):
    from helpers import addition_examples

    from skd.core.train import train

    ex = (addition_examples(char_tokenizer, 4), [])
    summary = train(_run_cfg(tmp_path / "run", method=method, max_steps=2, teacher_topk=8, loss_temperature=2.0, **kw),
                    models=(*_pair(), char_tokenizer), examples=ex)
    assert summary["steps"] == 2 and all(math.isfinite(x) for x in _losses(tmp_path / "run"))
    if method == "speckd":
        assert summary["last"]["proposed"] > 0


@pytest.mark.usefixtures("one_thread")
def test_teacher_topk_larger_than_the_vocabulary_is_refused_before_anything_is_written(char_tokenizer, tmp_path):
    from helpers import addition_examples

    from skd.core.train import train

    with pytest.raises(SkdError, match=f"--teacher-topk {V + 1} exceeds the vocabulary size {V}"):
        train(_run_cfg(tmp_path / "run", teacher_topk=V + 1), models=(*_pair(), char_tokenizer),
              examples=(addition_examples(char_tokenizer, 2), []))
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("one_thread")
def test_resume_with_teacher_topk_and_loss_temperature_is_bit_identical(char_tokenizer, tmp_path):
    from helpers import addition_examples

    from skd.core import checkpoint as ckpt
    from skd.core.train import train

    ex = (addition_examples(char_tokenizer, 5), addition_examples(char_tokenizer, 2, seed=1))
    kw = dict(method="mixed-skd", teacher_topk=4, loss_temperature=2.0, eval_every=2, keep_checkpoints=3,
              max_steps=4)
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_run_cfg(full, **kw), models=(*_pair(), char_tokenizer), examples=ex)
    train(_run_cfg(cut, **kw), models=(*_pair(), char_tokenizer), examples=ex)
    for name in ("final", "checkpoints/step-000003"):            # as if killed right after step 2's save
        ckpt.discard(cut / name)
    summary = train(_run_cfg(cut, resume=True, **kw), models=(*_pair(), char_tokenizer), examples=ex)
    assert summary["resumed_from"].endswith("step-000002")
    wf, wc = _weights(full), _weights(cut)
    assert all(torch.equal(wf[k], wc[k]) for k in wf)
    assert _losses(full) == _losses(cut)
    with pytest.raises(SkdError, match="options differ.*teacher_topk"):
        train(_run_cfg(cut, resume=True, **{**kw, "teacher_topk": 8}), models=(*_pair(), char_tokenizer),
              examples=ex)


@pytest.mark.usefixtures("one_thread")
def test_a_run_saved_before_these_options_existed_resumes_with_their_defaults(char_tokenizer, tmp_path):
    import json

    from helpers import addition_examples

    from skd.core import checkpoint as ckpt
    from skd.core.train import train

    ex = (addition_examples(char_tokenizer, 4), [])
    out = tmp_path / "run"
    train(_run_cfg(out, max_steps=2), models=(*_pair(), char_tokenizer), examples=ex)
    ckpt.discard(out / "final")
    for f in (out / "run_config.json", out / "checkpoints" / "step-000001" / ckpt.RUN_CONFIG):
        saved = json.loads(f.read_text())
        for key in ("teacher_topk", "loss_temperature"):
            del saved["train"][key]
        f.write_text(json.dumps(saved))
    with pytest.raises(SkdError, match=r"options differ .* \(teacher_topk None -> 4\) "):
        train(_run_cfg(out, max_steps=2, resume=True, teacher_topk=4), models=(*_pair(), char_tokenizer),
              examples=ex)
    summary = train(_run_cfg(out, max_steps=2, resume=True), models=(*_pair(), char_tokenizer), examples=ex)
    assert summary["resumed_from"].endswith("step-000001") and summary["steps"] == 2


@pytest.mark.usefixtures("one_thread")
def test_validation_loss_uses_the_loss_temperature(char_tokenizer, tmp_path):
    import json

    from helpers import addition_examples

    from skd.core.batches import ground_truth_samples, response_positions
    from skd.core.train import train

    T = 2.0
    teacher, student = _pair(torch.float64)
    with torch.no_grad():                     # sharper distributions: T^2 KL at T = 2 differs more from KL
        teacher.lm_head.weight.mul_(8.0)
        student.lm_head.weight.mul_(8.0)
    val = addition_examples(char_tokenizer, 3, seed=1)
    train(_run_cfg(tmp_path / "run", max_steps=1, eval_every=1, loss_temperature=T),
          models=(teacher, student, char_tokenizer), examples=(addition_examples(char_tokenizer, 2), val))
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    # Reference: token mean of T^2 KL(softmax(t / T) || softmax(z / T)) over the ground-truth responses.
    s = ground_truth_samples(val, 0, 5)
    pred, _ = response_positions(s)
    with torch.no_grad():
        t = teacher(input_ids=s.tokens, attention_mask=s.attention_mask).logits[..., :V][pred]
        z = student(input_ids=s.tokens, attention_mask=s.attention_mask).logits[..., :V][pred]

    def kl(a, b):
        return (a.exp() * (a - b)).sum(-1).mean().item()

    ref = T ** 2 * kl(torch.log_softmax(t / T, -1), torch.log_softmax(z / T, -1))
    assert rec["val_loss"] == pytest.approx(ref, rel=1e-9)
    assert rec["val_loss"] != pytest.approx(kl(torch.log_softmax(t, -1), torch.log_softmax(z, -1)), rel=1e-6)


def test_in_topk_is_the_rank_test_of_the_dense_logits():
    from skd.core import ops

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 30, generator=g)
    logits[0, :] = -math.inf
    logits[0, :2] = 0.0                                   # a row with only two finite tokens
    tokens = torch.randint(0, 30, (50,), generator=g)
    tokens[1] = int(logits[1].argmax())
    for n in (1, 4, 12, 30):
        for temperature in (1.0, 2.0):
            st = SparseTeacher.from_logits(logits, n, temperature)
            for k in range(0, n + 1):
                assert torch.equal(st.in_topk(tokens, k), ops.ref_topk_rank_accept(logits, tokens, k)), (n, k)
    with pytest.raises(ValueError, match="k <= N"):
        SparseTeacher.from_logits(logits, 4).in_topk(tokens, 5)


def test_speckd_gate_on_sparse_targets_equals_the_dense_gate(sharp_pair64):
    from skd.core.config import SampleConfig
    from skd.core.gating import speckd_gate
    from skd.core.sampling import sample

    teacher, student = sharp_pair64
    prompts = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21, 22, 30]]
    mixed = []
    for verification in ("sampled", "greedy"):
        cfg = SampleConfig(mode="student", max_new_tokens=12, student_temperature=0.9, student_top_p=0.95,
                           speckd_verification=verification)
        s = sample(teacher, student, prompts, cfg, eos_token_id=-1, vocab_size=40,
                   student_generator=torch.Generator().manual_seed(1), teacher_generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            logits = teacher(input_ids=s.tokens, attention_mask=s.attention_mask).logits[..., :40]
        pred = torch.zeros_like(s.response_mask)
        pred[:, :-1] = s.response_mask[:, 1:]
        dense = logits[pred]
        for k, n in ((1, 1), (3, 8), (5, 5)):
            a = speckd_gate(s, dense, k=k, verification=verification, rejected_weight=0.25)
            b = speckd_gate(s, SparseTeacher.from_logits(dense, n, 2.0), k=k, verification=verification,
                            rejected_weight=0.25)
            assert torch.equal(a.loss_weights, b.loss_weights) and torch.equal(a.provenance, b.provenance)
            assert (a.accepted, a.proposed) == (b.accepted, b.proposed)
            mixed.append(0 < a.accepted < a.proposed)
    assert sum(mixed) >= 2                              # the test separates passing and failing tokens


# ---------------------------------------------------------------------------- the command line


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method,extra", [("skd", []), ("on-policy", ["--loss-temperature", "2"])])
def test_distill_with_teacher_topk_end_to_end_on_the_tiny_presets(tmp_path, method, extra):
    import json

    from click.testing import CliRunner

    from skd.cli.main import main

    out = tmp_path / method
    r = CliRunner().invoke(main, ["distill", "--method", method, "--teacher", "tiny-teacher", "--student",
                                  "tiny-student", "--task", "arith", "--limit", "8", "--max-steps", "2",
                                  "--batch-size", "4", "--k", "10", "--max-new-tokens", "12", "--eval-every", "2",
                                  "--val-limit", "4", "--save-every", "0", "--teacher-topk", "4", *extra,
                                  "--output-dir", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["train"]["teacher_topk"] == 4
    assert saved["train"]["loss_temperature"] == (2.0 if "--loss-temperature" in extra else 1.0)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["loss"] >= 0 for m in metrics)
    assert math.isfinite(metrics[-1]["val_loss"])
    if method == "skd":
        assert metrics[0]["proposed"] > 0


# ---------------------------------------------------------------------------- the bench


def test_bench_sparse_teacher_section_measures_bytes_and_errors():
    from skd.benchmarks.distill import sparse_teacher_memory

    res = sparse_teacher_memory(n_positions=4, vocab=2000, topks=(8, 64, 2000))
    rows = {r["n"]: r for r in res["results"]}
    assert set(rows) == {8, 64, 2000}
    assert rows[8]["dense_bytes"] == 4 * 2000 * 4 and rows[8]["sparse_bytes"] == 4 * (8 * 4 + 8 * 4 + 4)
    assert rows[8]["dense_over_sparse"] == pytest.approx(rows[8]["dense_bytes"] / rows[8]["sparse_bytes"])
    assert rows[8]["fkl_rel_error"] > rows[64]["fkl_rel_error"] > rows[2000]["fkl_rel_error"]
    assert rows[2000]["fkl_rel_error"] < 1e-5 and rows[2000]["grad_rel_error"] < 1e-5     # N = V: the dense loss
    assert rows[2000]["teacher_tail_mass"] == 0.0
    assert 0 < res["config"]["teacher_top1_prob"] < 1 and "ln(rank)" in res["config"]["teacher_logits"]
