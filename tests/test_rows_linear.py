"""rows_linear (cpp/rows_linear_cpu.cpp) against its reference F.linear, and the routing of decoding
passes' linear layers to it (skd.core.decode_linear)."""
from __future__ import annotations

import pytest
import torch
from helpers import assert_within_dot_bound

from skd.core import ops
from skd.core import decode_linear
from skd.core.decode_linear import ENV_SWITCH, MAX_ROWS, DecodeLinears
from skd.core.presets import tiny_model
from skd.core.sampling import SampleConfig, sample

needs_ext = pytest.mark.skipif(ops.backend() == "reference", reason="skd._C is not built")
needs_vector = pytest.mark.skipif(not ops.rows_linear_vectorised(), reason="no AVX2/FMA path on this CPU")


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


SHAPES = [(1, 576, 1536), (4, 576, 49), (3, 7, 5), (5, 8, 2), (2, 9, 3), (8, 64, 17), (16, 33, 65),
          (17, 16, 4), (33, 100, 9), (1, 1, 1), (4, 1536, 576),
          # the vector path's tiles: 3 rows x 4 weight rows, rows in blocks that fit L2 (84 rows at
          # K = 576, 24 at K = 2000): remainders of 1-2 rows and 1-3 weight rows, several blocks
          (7, 40, 13), (100, 576, 7), (50, 2000, 6), (32, 1536, 577)]


@needs_ext
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_the_kernel_agrees_with_the_reference_within_float32_rounding(M, K, N):
    x, w = _rand(M, K, seed=M * 1000 + K), _rand(N, K, seed=N * 7 + K)
    y = ops.rows_linear(x, w)
    assert_within_dot_bound(y, x, w)
    assert_within_dot_bound(ops.ref_rows_linear(x, w), x, w)  # the bound is one BLAS meets too
    torch.testing.assert_close(y, ops.ref_rows_linear(x, w), rtol=1e-4, atol=1e-4)
    b = _rand(N, seed=3)
    assert_within_dot_bound(ops.rows_linear(x, w, b), x, w, b)


@needs_ext
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_the_portable_loop_agrees_with_the_reference(M, K, N):
    from skd import _C

    x, w = _rand(M, K, seed=M + K), _rand(N, K, seed=N + 2 * K)
    assert_within_dot_bound(_C.rows_linear_portable(x, w), x, w)


@needs_ext
def test_edge_shapes_and_values():
    w = _rand(6, 5, seed=1)
    assert ops.rows_linear(torch.zeros(0, 5), w).shape == (0, 6)
    assert ops.rows_linear(_rand(3, 5, seed=2), torch.zeros(0, 5)).shape == (3, 0)
    assert torch.equal(ops.rows_linear(torch.zeros(2, 0), torch.zeros(4, 0)), torch.zeros(2, 4))
    x = _rand(3, 5, seed=4)
    x[1, 2] = float("inf")
    x[2, 0] = float("nan")
    y, r = ops.rows_linear(x, w), ops.ref_rows_linear(x, w)
    assert torch.equal(torch.isnan(y), torch.isnan(r)) and torch.equal(torch.isinf(y), torch.isinf(r))
    torch.testing.assert_close(y[0], r[0])


@needs_ext
def test_strided_inputs_give_the_contiguous_result():
    x, w = _rand(9, 4, seed=5).t(), _rand(40, 12, seed=6)[::2, :9]  # x [4, 9] transposed, w [20, 9] strided
    assert not x.is_contiguous() and not w.is_contiguous()
    assert torch.equal(ops.rows_linear(x, w), ops.rows_linear(x.contiguous(), w.contiguous()))


@needs_ext
def test_a_rows_result_depends_on_that_row_alone():
    """Whatever the other rows, how many there are, or how many threads split the outputs."""
    x, w = _rand(13, 200, seed=7), _rand(301, 200, seed=8)
    full = ops.rows_linear(x, w)
    for m in range(13):
        assert torch.equal(ops.rows_linear(x[m:m + 1], w), full[m:m + 1])
    assert torch.equal(ops.rows_linear(x[3:10], w), full[3:10])
    # across the kernel's blocks of rows (24 rows at K = 2000)
    xl, wl = _rand(53, 2000, seed=9), _rand(11, 2000, seed=10)
    wide = ops.rows_linear(xl, wl)
    for m in (0, 23, 24, 25, 47, 52):
        assert torch.equal(ops.rows_linear(xl[m:m + 1], wl), wide[m:m + 1])
    assert torch.equal(ops.rows_linear(xl[20:30], wl), wide[20:30])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(ops.rows_linear(x, w), full)
    finally:
        torch.set_num_threads(threads)


@needs_ext
@pytest.mark.parametrize("x,w,b,exc,text", [
    (torch.zeros(4), torch.zeros(3, 4), None, ValueError, "x must be 2-D [M, K], got shape [4]"),
    (torch.zeros(2, 4, dtype=torch.float64), torch.zeros(3, 4), None, TypeError,
     "x must be float32, got torch.float64"),
    (torch.zeros(2, 4), torch.zeros(3, 4, 1), None, ValueError, "weight must be 2-D [N, K], got shape [3, 4, 1]"),
    (torch.zeros(2, 4), torch.zeros(3, 5), None, ValueError,
     "weight must have K = 4 columns (from x [2, 4]), got shape [3, 5]"),
    (torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.bfloat16), None, TypeError,
     "weight must be float32 like x, got torch.bfloat16"),
    (torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(4), ValueError,
     "bias must have shape [3] (N from weight), got shape [4]"),
    (torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(3, dtype=torch.float16), TypeError,
     "bias must be float32 like x, got torch.float16"),
])
def test_bad_input_raises_the_same_error_from_kernel_and_reference(x, w, b, exc, text):
    for fn in (ops.rows_linear, ops.ref_rows_linear):
        with pytest.raises(exc, match=f"skd.rows_linear: {__import__('re').escape(text)}"):
            fn(x, w, b)


@needs_ext
def test_the_fake_gives_the_shape_for_compiled_graphs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = torch.ops.skd.rows_linear(torch.empty(3, 8), torch.empty(5, 8), None)
    assert tuple(y.shape) == (3, 5) and y.dtype == torch.float32


# ---- routing: skd.core.decode_linear ----------------------------------------------------------

V = 40


@needs_vector
def test_active_routes_few_rows_outside_autograd_and_restores_every_layer(monkeypatch):
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    monkeypatch.setattr(decode_linear, "MIN_WEIGHTS", 0)   # a tiny model's weights are all small
    model = tiny_model("llama", V, seed=1, hidden=32, layers=2)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    routed = DecodeLinears(model)
    assert routed.routed == len(linears) > 0
    calls = []
    real = ops.rows_linear
    monkeypatch.setattr(ops, "rows_linear", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    few, many = torch.tensor([[5, 9, 12]]), torch.randint(4, V, (1, MAX_ROWS + 1))
    with torch.no_grad():
        base_few, base_many = model(few).logits, model(many).logits
    with torch.no_grad(), routed.active():
        fast_few, fast_many = model(few).logits, model(many).logits
    assert calls and max(calls) <= MAX_ROWS                      # 3 rows: every layer; 17: none
    assert len(calls) == len(linears)
    torch.testing.assert_close(fast_few, base_few, rtol=1e-4, atol=1e-5)
    assert torch.equal(fast_many, base_many)                     # wide inputs keep BLAS, bit for bit
    calls.clear()
    with routed.active():                                         # grad enabled: F.linear, bit for bit
        assert torch.equal(model(few).logits, model(few).logits.detach()) and not calls
    assert all("forward" not in m.__dict__ for m in linears)
    with pytest.raises(RuntimeError, match="boom"), routed.active():
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in linears)


@needs_vector
def test_the_switch_small_weights_other_dtypes_and_lora_layers_stay_on_blas(monkeypatch):
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    assert DecodeLinears(tiny_model("llama", V, seed=1)).routed == 0            # all below MIN_WEIGHTS
    big = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 255))
    assert DecodeLinears(big).routed == 1                                        # 65,536 entries: in
    monkeypatch.setattr(decode_linear, "MIN_WEIGHTS", 0)
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert DecodeLinears(tiny_model("llama", V, seed=1)).routed == 0
    monkeypatch.delenv(ENV_SWITCH)
    assert DecodeLinears(tiny_model("llama", V, seed=1, dtype=torch.float64)).routed == 0

    class Adapter(torch.nn.Linear):  # a subclass keeps its own forward
        pass

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), Adapter(4, 4))
    assert DecodeLinears(net).routed == 1


@needs_vector
@pytest.mark.parametrize("mode", ["skd", "student"])
def test_sampling_runs_the_kernel_and_keeps_its_tokens(mode, monkeypatch):
    """Float32 tiny pair: the sampler's passes run rows_linear, and tokens match the BLAS run's (float32
    rounding moves the logits by ~1e-7, far from any sampling boundary of these seeds)."""
    teacher = tiny_model("llama", V, seed=5, hidden=32, layers=2)
    student = tiny_model("llama", V, seed=6, hidden=16, layers=1)
    cfg = SampleConfig(mode=mode, k=3, gamma="auto", max_new_tokens=16, keep_teacher_logits=True,
                       student_temperature=1.0, student_top_p=1.0, teacher_temperature=1.0, teacher_top_p=1.0)
    prompts = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21]]

    def run():
        return sample(teacher, student, prompts, cfg, eos_token_id=-1, vocab_size=V,
                      student_generator=torch.Generator().manual_seed(1),
                      teacher_generator=torch.Generator().manual_seed(2))

    calls = []
    real = ops.rows_linear
    monkeypatch.setattr(ops, "rows_linear", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(decode_linear, "MIN_WEIGHTS", 0)
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    fast = run()
    assert calls
    n_fast = len(calls)
    monkeypatch.setenv(ENV_SWITCH, "off")
    slow = run()
    assert len(calls) == n_fast                                  # switched off: no kernel call
    assert fast.responses() == slow.responses()
    if mode == "skd":
        torch.testing.assert_close(fast.teacher_logits, slow.teacher_logits, rtol=1e-4, atol=1e-5)
