"""rows_linear_q8 (cpp/rows_linear_cpu.cpp, int8 weights) against its reference, and int8 drafts
(skd.core.int8_draft) in speculative decoding: the target's greedy output whatever the draft's precision."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from helpers import assert_within_dot_bound

from skd.core import ops
from skd.core.decode_linear import ENV_SWITCH, MAX_ROWS
from skd.core.int8_draft import Int8Linear, quantize_draft
from skd.core.models import weight_bytes
from skd.core.presets import tiny_model
from skd.core.sampling import SampleConfig, sample
from skd.core.speculative import speculative_generate

needs_ext = pytest.mark.skipif(ops.backend() == "reference", reason="skd._C is not built")
needs_vector = pytest.mark.skipif(not ops.rows_linear_vectorised(), reason="no AVX2/FMA path on this CPU")


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _quantized(N, K, seed):
    """int8[N, K] values over the whole range (both ends included) and positive float32 scales."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int64).to(torch.int8)
    if N and K:
        q[0, 0], q[-1, -1] = -127, 127
    return q, torch.rand(N, generator=g) * 0.05 + 1e-3


SHAPES = [(1, 576, 1536), (4, 576, 49), (3, 7, 5), (5, 8, 2), (2, 9, 3), (8, 64, 17), (16, 33, 65),
          (1, 1, 1), (7, 40, 13), (100, 576, 7), (50, 2000, 6), (32, 1536, 577)]


@needs_ext
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_the_kernel_and_portable_loop_agree_with_the_reference(M, K, N):
    from skd import _C

    x = _rand(M, K, seed=M * 1000 + K)
    q, s = _quantized(N, K, seed=N * 7 + K)
    assert_within_dot_bound(ops.rows_linear_q8(x, q, s), x, q, row_scale=s)
    assert_within_dot_bound(ops.ref_rows_linear_q8(x, q, s), x, q, row_scale=s)
    assert_within_dot_bound(_C.rows_linear_q8_portable(x, q, s), x, q, row_scale=s)
    b = _rand(N, seed=3)
    assert_within_dot_bound(ops.rows_linear_q8(x, q, s, b), x, q, b, row_scale=s)
    torch.testing.assert_close(ops.rows_linear_q8(x, q, s, b), ops.ref_rows_linear_q8(x, q, s, b),
                               rtol=1e-4, atol=1e-4)


@needs_ext
def test_scale_one_gives_rows_linear_on_the_same_values_bit_for_bit():
    """The int8 path converts each weight exactly and sums in the float path's order."""
    x = _rand(5, 300, seed=11)
    q, _ = _quantized(37, 300, seed=12)
    assert torch.equal(ops.rows_linear_q8(x, q, torch.ones(37)), ops.rows_linear(x, q.to(torch.float32)))


@needs_ext
def test_a_rows_result_depends_on_that_row_alone_and_not_on_threads():
    x = _rand(13, 200, seed=7)
    q, s = _quantized(301, 200, seed=8)
    full = ops.rows_linear_q8(x, q, s)
    for m in range(13):
        assert torch.equal(ops.rows_linear_q8(x[m:m + 1], q, s), full[m:m + 1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(ops.rows_linear_q8(x, q, s), full)
    finally:
        torch.set_num_threads(threads)


@needs_ext
def test_edge_shapes_and_strided_inputs():
    q, s = _quantized(6, 5, seed=1)
    assert ops.rows_linear_q8(torch.zeros(0, 5), q, s).shape == (0, 6)
    assert ops.rows_linear_q8(_rand(3, 5, seed=2), q[:0], s[:0]).shape == (3, 0)
    x = _rand(9, 4, seed=5).t()                       # [4, 9], not contiguous
    qq, ss = _quantized(40, 18, seed=6)
    qs, sc = qq[::2, :9], ss[::2]                     # [20, 9] and [20], strided
    assert not x.is_contiguous() and not qs.is_contiguous() and not sc.is_contiguous()
    assert torch.equal(ops.rows_linear_q8(x, qs, sc), ops.rows_linear_q8(x.contiguous(), qs.contiguous(),
                                                                         sc.contiguous()))


@needs_ext
@pytest.mark.parametrize("x,q,s,b,exc,text", [
    (torch.zeros(4), torch.zeros(3, 4, dtype=torch.int8), torch.ones(3), None, ValueError,
     "x must be 2-D [M, K], got shape [4]"),
    (torch.zeros(2, 4), torch.zeros(3, 4), torch.ones(3), None, TypeError, "qweight must be int8, got torch.float32"),
    (torch.zeros(2, 4), torch.zeros(3, 5, dtype=torch.int8), torch.ones(3), None, ValueError,
     "qweight must have K = 4 columns (from x [2, 4]), got shape [3, 5]"),
    (torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.int8), torch.ones(4), None, ValueError,
     "scale must have shape [3] (N from qweight), got shape [4]"),
    (torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.int8), torch.ones(3, dtype=torch.float64), None, TypeError,
     "scale must be float32 like x, got torch.float64"),
    (torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.int8), torch.ones(3), torch.zeros(2), ValueError,
     "bias must have shape [3] (N from qweight), got shape [2]"),
])
def test_bad_input_raises_the_same_error_from_kernel_and_reference(x, q, s, b, exc, text):
    for fn in (ops.rows_linear_q8, ops.ref_rows_linear_q8):
        with pytest.raises(exc, match=f"skd.rows_linear_q8: {re.escape(text)}"):
            fn(x, q, s, b)


@needs_ext
def test_the_fake_gives_the_shape_for_compiled_graphs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = torch.ops.skd.rows_linear_q8(torch.empty(3, 8), torch.empty(5, 8, dtype=torch.int8), torch.empty(5), None)
    assert tuple(y.shape) == (3, 5) and y.dtype == torch.float32


# ---- Int8Linear and quantize_draft ----------------------------------------------------------

def test_quantization_is_within_half_a_step_of_every_weight_and_keeps_zero_rows():
    lin = torch.nn.Linear(70, 9, bias=True)
    with torch.no_grad():
        lin.weight.copy_(_rand(9, 70, seed=20))
        lin.weight[4].zero_()
    q = Int8Linear(lin)
    err = (q.dequantized() - lin.weight).abs()
    assert torch.all(err <= q.scale[:, None] / 2 + 1e-7)
    assert q.scale[4] == 1 and torch.all(q.qweight[4] == 0)
    assert int(q.qweight.abs().amax(1)[0]) == 127       # a row's largest weight is the end of the range
    assert q.weight_buffer_bytes() == 9 * 70 + 9 * 4


@pytest.mark.parametrize("rows", [1, 5, MAX_ROWS, MAX_ROWS + 1, 80])
def test_the_kernel_and_dequantized_paths_give_the_same_layer(rows, monkeypatch):
    """Few rows take the kernel (where it runs), wide inputs the dequantized product: the same values."""
    lin = torch.nn.Linear(48, 30)
    q = Int8Linear(lin)
    x = _rand(rows, 48, seed=rows)
    with torch.no_grad():
        y = q(x.view(1, rows, 48))
        ref = torch.nn.functional.linear(x, q.dequantized(), q.bias).view(1, rows, 30)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(ENV_SWITCH, "0")   # the switch off: the dequantized path for every width
    with torch.no_grad():
        torch.testing.assert_close(Int8Linear(lin)(x.view(1, rows, 48)), ref, rtol=1e-5, atol=1e-5)


def test_the_layer_is_inference_only():
    q = Int8Linear(torch.nn.Linear(8, 4))
    with pytest.raises(RuntimeError, match="inference-only"):
        q(torch.zeros(2, 8, requires_grad=True))


V = 40
PROMPTS = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21, 22, 30]]
NO_EOS = -1


def test_quantize_draft_replaces_every_linear_and_cuts_the_weight_bytes():
    m = tiny_model("llama", V, seed=3, hidden=64)
    before = weight_bytes(m)
    n_linear = sum(type(x) is torch.nn.Linear for x in m.modules())
    assert quantize_draft(m) == n_linear > 0
    assert not any(type(x) is torch.nn.Linear for x in m.modules())
    assert not any(p.requires_grad for p in m.parameters())
    assert weight_bytes(m) < before


@pytest.mark.parametrize("gamma", [1, 3, "auto"])
def test_an_int8_draft_leaves_greedy_speculative_output_the_teachers(sharp_pair64, gamma):
    teacher, student = sharp_pair64
    ref = sample(teacher, None, PROMPTS, SampleConfig(mode="teacher", teacher_temperature=0, max_new_tokens=20),
                 eos_token_id=NO_EOS, vocab_size=V).responses()
    for draft in (student, teacher):   # the teacher's own int8 copy: a close draft, mostly accepted
        d = copy.deepcopy(draft)
        quantize_draft(d)
        got, stats = speculative_generate(teacher, d, PROMPTS, gamma=gamma, max_new_tokens=20,
                                          eos_token_id=NO_EOS, vocab_size=V)
        assert got == ref
    assert stats.acceptance_rate > 0.8   # the teacher's int8 copy proposes the teacher's tokens
