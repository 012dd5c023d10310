"""Every skd op (skd.core.ops) against its pure-torch reference, exactly (torch.equal).

Covers topk_rank_accept, accept_prefix, splice, speculative_accept and backend(): random inputs
and edge cases (K = 0, 1, V-1, V, V+5; ties; +-inf / NaN; out-of-range ids; bf16 / fp16; strided
logits; B = 1 and 3; D = 1; finished rows; EOS in the draft; capacity), torch.library.opcheck,
identical validation errors from both paths, and the fallback when skd._C cannot be imported.
Shape letters: N rows, V vocab, B batch, D draft length, L sequence capacity.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from skd.core import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LOW_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HAS_EXT = ops.backend() != "reference"


def native(name: str, device: str):
    """The compiled kernel itself (not the routing wrapper), or skip when it is not built."""
    if not HAS_EXT:
        pytest.skip("skd._C is not built")
    if device == "cuda" and ops.backend() != "cuda":
        pytest.skip("skd._C was built without CUDA kernels")
    return getattr(torch.ops.skd, name)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- backend ----------------------------------------------------------------------------------


def test_backend_is_the_compiled_extension():
    if os.environ.get("SKD_ALLOW_REFERENCE"):
        pytest.skip("SKD_ALLOW_REFERENCE is set")
    expected = "cuda" if ops._C is not None and ops._C.cuda_built() else "cpp"
    assert ops.backend() == expected
    if torch.version.cuda is None:
        assert ops.backend() == "cpp"


def test_public_ops_route_to_the_compiled_kernels_when_built():
    if not HAS_EXT:
        pytest.skip("skd._C is not built")
    assert ops._native(torch.empty(1))


# ---- topk_rank_accept -------------------------------------------------------------------------


def check_topk(logits: torch.Tensor, tokens: torch.Tensor, k: int, device: str) -> torch.Tensor:
    got = native("topk_rank_accept", device)(logits, tokens, k)
    want = ops.reference.topk_rank_accept(logits, tokens, k)
    assert got.dtype == torch.bool and got.shape == tokens.shape
    assert torch.equal(got, want), (k, got, want)
    assert torch.equal(ops.topk_rank_accept(logits, tokens, k), want)
    return got


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("N,V", [(1, 1), (3, 7), (5, 300), (17, 4099)])
def test_topk_matches_reference_for_every_k(device, dtype, N, V):
    g = gen(N * 1000 + V)
    logits = torch.randn(N, V, generator=g).to(dtype).to(device)
    # Tokens at every rank, plus the row argmax (always in) and argmin.
    tokens = torch.randint(0, V, (N,), generator=g).to(device)
    tokens[0] = logits[0].argmax()
    tokens[-1] = logits[-1].argmin()
    for k in sorted({0, 1, 2, 25, V - 1, V, V + 5} - {-1}):
        check_topk(logits, tokens, k, device)


@pytest.mark.parametrize("device", DEVICES)
def test_topk_agrees_with_sorting_when_values_are_distinct(device):
    N, V = 3, 257
    g = gen(1)
    logits = torch.stack([torch.randperm(V, generator=g) for _ in range(N)]).float().to(device)
    tokens = torch.randint(0, V, (N,), generator=g).to(device)
    for k in (1, 5, 128, 256, 257):
        members = (torch.topk(logits, k, dim=1).indices == tokens[:, None]).any(1)
        assert torch.equal(check_topk(logits, tokens, k, device), members)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_topk_ties_at_the_kth_value_count_as_inside(device, dtype):
    row = torch.tensor([[5.0, 5.0, 5.0, 1.0, 1.0, 0.0]], dtype=dtype, device=device)
    logits = row.expand(3, -1)
    tokens = torch.tensor([2, 4, 5], device=device)  # value 5 (0 greater), 1 (3 greater), 0 (5)
    expected = {
        0: [False, False, False],
        1: [True, False, False],
        3: [True, False, False],
        4: [True, True, False],
        5: [True, True, False],
        6: [True, True, True],
    }
    for k, want in expected.items():
        assert check_topk(logits, tokens, k, device).tolist() == want


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_topk_minus_zero_ties_with_plus_zero(device, dtype):
    logits = torch.tensor([[0.0, -0.0, -1.0], [-0.0, 0.0, -1.0]], dtype=dtype, device=device)
    tokens = torch.tensor([1, 0], device=device)
    assert check_topk(logits, tokens, 1, device).tolist() == [True, True]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_topk_inf_and_nan(device, dtype):
    inf, nan = float("inf"), float("nan")
    logits = torch.tensor(
        [
            [1.0, nan, nan, 0.5],  # NaNs elsewhere never count as greater
            [1.0, inf, 0.5, 0.2],  # +inf elsewhere does
            [1.0, -inf, 0.5, 0.2],  # -inf elsewhere does not
            [nan, 1.0, 0.5, 0.2],  # NaN at the token: never accepted
            [inf, 1.0, 0.5, 0.2],  # +inf at the token: not finite, never accepted
            [-inf, 1.0, 0.5, 0.2],  # -inf at the token: never accepted
            [-inf, -inf, -inf, 0.0],  # finite token among -infs
        ],
        dtype=dtype,
        device=device,
    )
    tokens = torch.tensor([0, 0, 0, 0, 0, 0, 3], device=device)
    assert check_topk(logits, tokens, 1, device).tolist() == [
        True, False, True, False, False, False, True
    ]
    assert check_topk(logits, tokens, 2, device).tolist() == [
        True, True, True, False, False, False, True
    ]
    assert check_topk(logits, tokens, 4, device).tolist() == [
        True, True, True, False, False, False, True
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_topk_every_bit_pattern_including_negative_nan_and_subnormals(device, dtype):
    # Random raw bits hit every class: +-0, subnormals, +-inf, NaNs with either sign.
    g = gen(7)
    N, V = 64, 513
    if dtype == torch.float32:
        bits = torch.randint(-(2**31), 2**31, (N, V), generator=g, dtype=torch.int64)
        logits = bits.to(torch.int32).view(torch.float32)
        special = torch.tensor([0x7FC00000, -0x400000, 0x7F800000, -0x800000, 0, -(2**31), 1])
        logits[:, :7] = special.to(torch.int32).view(torch.float32)
    else:
        bits = torch.randint(-(2**15), 2**15, (N, V), generator=g, dtype=torch.int64)
        logits = bits.to(torch.int16).view(dtype)
        inf_bits = 0x7F80 if dtype == torch.bfloat16 else 0x7C00
        special = torch.tensor([inf_bits + 1, -1, inf_bits, inf_bits - 0x10000, 0, -0x8000, 1])
        logits[:, :7] = special.to(torch.int16).view(dtype)
    logits = logits.to(device)
    tokens = torch.randint(0, V, (N,), generator=g).to(device)
    tokens[:8] = torch.arange(8)  # tokens on the special values themselves
    for k in (1, 3, 100, 256, 512, 513):
        check_topk(logits, tokens, k, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_topk_out_of_range_tokens_are_never_accepted(device, dtype):
    V = 6
    logits = torch.randn(5, V, generator=gen(3)).to(dtype).to(device)
    tokens = torch.tensor([-1, V, V + 100, -(2**62), 2**62], device=device)
    for k in (0, 1, V, V + 5, 2**40):
        assert not check_topk(logits, tokens, k, device).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_topk_strided_logits(device, dtype):
    g = gen(11)
    B, T, V = 3, 4, 1000
    full = torch.randn(B, T, V, generator=g).to(dtype).to(device)
    tokens = torch.randint(0, V, (B,), generator=g).to(device)
    views = {
        "row-strided slice": full[:, 2, :],
        "every other column": full[:, 1, ::2],
        "transposed": torch.randn(V, B, generator=g).to(dtype).to(device).t(),
    }
    for name, logits in views.items():
        toks = tokens.clamp(max=logits.shape[1] - 1)
        for k in (1, 25, 499):
            got = check_topk(logits, toks, k, device)
            assert torch.equal(got, ops.reference.topk_rank_accept(logits.contiguous(), toks, k)), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_topk_long_rows_split_across_threads(device, dtype):
    # N=1 and N=2 with long rows take the row-splitting path of the CPU kernel; put the values
    # greater than the token in different pieces so each piece's partial count matters.
    V = 140_003  # 4 pieces of 35,001 for N=1 on 2 threads, 2 pieces for N=2
    g = gen(5)
    logits = (torch.rand(2, V, generator=g) - 2.0).to(dtype).to(device)  # all in [-2, -1)
    spots = torch.tensor([7, 40_000, 80_000, 120_000, V - 1])  # one per piece, two in the last
    logits[:, spots] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=dtype, device=device)
    for token in (40_000, V - 1, 3):  # 3, 0 and 5 entries greater
        tokens = torch.tensor([token, token], device=device)
        for k in (1, 3, 4, 5, 6):
            check_topk(logits[:1], tokens[:1], k, device)
            check_topk(logits, tokens, k, device)


@pytest.mark.parametrize("device", DEVICES)
def test_topk_empty_inputs(device):
    check_topk(torch.empty(0, 5, device=device), torch.empty(0, dtype=torch.long, device=device), 2, device)
    got = check_topk(torch.empty(2, 0, device=device), torch.zeros(2, dtype=torch.long, device=device), 2, device)
    assert not got.any()


# ---- accept_prefix ----------------------------------------------------------------------------


def check_prefix(accepted, draft_len, device):
    got = native("accept_prefix", device)(accepted, draft_len)
    want = ops.reference.accept_prefix(accepted, draft_len)
    assert got.dtype == torch.int64
    assert torch.equal(got, want), (got, want)
    assert torch.equal(ops.accept_prefix(accepted, draft_len), want)
    return got


@pytest.mark.parametrize("device", DEVICES)
def test_accept_prefix_cases(device):
    T, F = True, False
    accepted = torch.tensor([[T, T, F, T], [T, T, T, T], [F, T, T, T], [T, T, T, F]], device=device)
    draft_len = torch.tensor([4, 3, 4, 9], device=device)
    assert check_prefix(accepted, draft_len, device).tolist() == [2, 3, 0, 3]
    # draft_len is clipped to [0, D]
    draft_len = torch.tensor([-3, 0, 1, 100], device=device)
    assert check_prefix(accepted, draft_len, device).tolist() == [0, 0, 0, 3]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,D", [(1, 1), (3, 1), (3, 5), (1, 0), (64, 7)])
def test_accept_prefix_random(device, B, D):
    g = gen(B * 10 + D)
    for p in (0.2, 0.8, 1.0):
        accepted = (torch.rand(B, D, generator=g) < p).to(device)
        draft_len = torch.randint(-1, D + 2, (B,), generator=g).to(device)
        check_prefix(accepted, draft_len, device)
        check_prefix(accepted.t().contiguous().t() if D else accepted, draft_len, device)


# ---- splice -----------------------------------------------------------------------------------


def run_splice(state, draft, n_accept, replacement, eos_id, device):
    """Run the native kernel and the reference on copies of `state`; assert equal; return it."""
    got = {k: v.clone() for k, v in state.items()}
    want = {k: v.clone() for k, v in state.items()}
    native("splice", device)(got["seq"], got["length"], draft, n_accept, replacement,
                             got["provenance"], got["finished"], eos_id)
    ops.reference.splice(want["seq"], want["length"], draft, n_accept, replacement,
                         want["provenance"], want["finished"], eos_id)
    for key in state:
        assert torch.equal(got[key], want[key]), (key, got[key], want[key])
    routed = {k: v.clone() for k, v in state.items()}
    ops.splice(routed["seq"], routed["length"], draft, n_accept, replacement,
               routed["provenance"], routed["finished"], eos_id)
    for key in state:
        assert torch.equal(routed[key], want[key]), key
    return got


def make_state(seq, length, finished, device, prov_dtype=torch.int8):
    seq = torch.tensor(seq, device=device)
    provenance = (seq != 0).to(prov_dtype)  # 1 = prompt, 0 = pad (written by the caller)
    return {
        "seq": seq,
        "length": torch.tensor(length, device=device),
        "provenance": provenance,
        "finished": torch.tensor(finished, device=device),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prov_dtype", [torch.int8, torch.uint8])
def test_splice_semantics(device, prov_dtype):
    EOS = 9
    L = 6
    state = make_state(
        [[7, 0, 0, 0, 0, 0],  # accepts 2 drafts + teacher token
         [7, 0, 0, 0, 0, 0],  # EOS inside the draft: stop right after it, drop the rest
         [7, 7, 7, 7, 0, 0],  # capacity: 1 draft + teacher would need 2 slots, only 2 left
         [7, 7, 0, 0, 0, 0],  # finished row: never written
         [7, 0, 0, 0, 0, 0],  # all drafts accepted, no teacher token (-1)
         [7, 0, 0, 0, 0, 0],  # nothing accepted: teacher token only, and it is EOS
         [7, 7, 7, 7, 7, 7]],  # already full but not marked finished
        [1, 1, 4, 2, 1, 1, 6],
        [False, False, False, True, False, False, False],
        device, prov_dtype)
    draft = torch.tensor([[4, 5, 6], [4, EOS, 6], [4, 5, 6], [4, 5, 6],
                          [4, 5, 6], [4, 5, 6], [4, 5, 6]], device=device)
    n_accept = torch.tensor([2, 3, 3, 3, 3, 0, 1], device=device)
    replacement = torch.tensor([8, 8, 8, 8, -1, EOS, 8], device=device)
    got = run_splice(state, draft, n_accept, replacement, EOS, device)
    assert got["seq"].tolist() == [
        [7, 4, 5, 8, 0, 0],
        [7, 4, EOS, 0, 0, 0],
        [7, 7, 7, 7, 4, 5],
        [7, 7, 0, 0, 0, 0],
        [7, 4, 5, 6, 0, 0],
        [7, EOS, 0, 0, 0, 0],
        [7, 7, 7, 7, 7, 7],
    ]
    assert got["provenance"].tolist() == [
        [1, 2, 2, 3, 0, 0],
        [1, 2, 2, 0, 0, 0],
        [1, 1, 1, 1, 2, 2],
        [1, 1, 0, 0, 0, 0],
        [1, 2, 2, 2, 0, 0],
        [1, 3, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    assert got["length"].tolist() == [4, 3, 6, 2, 4, 2, 6]
    assert got["finished"].tolist() == [False, True, True, True, False, True, True]


@pytest.mark.parametrize("device", DEVICES)
def test_splice_without_eos_id_writes_eos_tokens_as_plain_tokens(device):
    state = make_state([[7, 0, 0, 0]], [1], [False], device)
    draft = torch.tensor([[9, 9]], device=device)
    got = run_splice(state, draft, torch.tensor([2], device=device),
                     torch.tensor([9], device=device), -1, device)
    assert got["seq"].tolist() == [[7, 9, 9, 9]]
    assert got["length"].tolist() == [4] and got["finished"].tolist() == [True]  # capacity


@pytest.mark.parametrize("device", DEVICES)
def test_splice_clips_out_of_range_lengths_and_counts(device):
    state = make_state([[7, 0, 0, 0], [7, 7, 0, 0], [7, 0, 0, 0]], [-2, 9, 1], [False] * 3, device)
    draft = torch.tensor([[4, 5], [4, 5], [4, 5]], device=device)
    got = run_splice(state, draft, torch.tensor([1, 1, 7], device=device),
                     torch.tensor([8, 8, -5], device=device), 3, device)
    assert got["seq"].tolist() == [[4, 8, 0, 0], [7, 7, 0, 0], [7, 4, 5, 0]]
    assert got["length"].tolist() == [2, 4, 3]
    assert got["finished"].tolist() == [False, True, False]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,D,L", [(1, 1, 4), (3, 1, 5), (3, 5, 12), (64, 5, 40)])
def test_splice_random(device, B, D, L):
    g = gen(B * 100 + D * 10 + L)
    vocab = 6  # small, so EOS (= 2) shows up often inside drafts and as the replacement
    for trial in range(8):
        length = torch.randint(-1, L + 2, (B,), generator=g)
        seq = torch.randint(3, vocab, (B, L), generator=g)
        seq[torch.arange(L)[None, :] >= length.clamp(0, L)[:, None]] = 0
        state = {
            "seq": seq.to(device),
            "length": length.to(device),
            "provenance": (seq != 0).to(torch.int8).to(device),
            "finished": (torch.rand(B, generator=g) < 0.25).to(device),
        }
        draft = torch.randint(0, vocab, (B, D), generator=g).to(device)
        n_accept = torch.randint(-1, D + 2, (B,), generator=g).to(device)
        replacement = torch.randint(-1, vocab, (B,), generator=g).to(device)
        eos_id = 2 if trial % 4 else -1
        run_splice(state, draft, n_accept, replacement, eos_id, device)


@pytest.mark.parametrize("device", DEVICES)
def test_splice_writes_through_strided_views(device):
    B, L, D = 3, 6, 2
    buf = torch.zeros(B, L + 3, dtype=torch.long, device=device)
    prov_buf = torch.zeros(B, L + 3, dtype=torch.int8, device=device)
    state = {"seq": buf[:, :L], "length": torch.tensor([0, 2, 5], device=device),
             "provenance": prov_buf[:, :L], "finished": torch.zeros(B, dtype=torch.bool, device=device)}
    draft = torch.tensor([[4, 5], [4, 5], [4, 5]], device=device)
    seq, length = state["seq"], state["length"]
    ops.splice(seq, length, draft, torch.tensor([2, 1, 2], device=device),
               torch.tensor([8, 8, 8], device=device), state["provenance"], state["finished"], -1)
    assert buf[:, L:].eq(0).all()  # the views' neighbours are untouched
    assert seq.tolist() == [[4, 5, 8, 0, 0, 0], [0, 0, 4, 8, 0, 0], [0, 0, 0, 0, 0, 4]]
    state = {"seq": torch.zeros(B, L, dtype=torch.long, device=device), "length": torch.tensor([0, 2, 5], device=device),
             "provenance": torch.zeros(B, L, dtype=torch.int8, device=device),
             "finished": torch.zeros(B, dtype=torch.bool, device=device)}
    run_splice(state, draft.t().contiguous().t(), torch.tensor([2, 1, 2], device=device),
               torch.tensor([8, 8, 8], device=device), -1, device)


# ---- speculative_accept -----------------------------------------------------------------------


def check_spec(p, q, draft, u, device):
    got = native("speculative_accept", device)(p, q, draft, u)
    want = ops.reference.speculative_accept(p, q, draft, u)
    assert got.dtype == torch.int64
    assert torch.equal(got, want), (got, want)
    assert torch.equal(ops.speculative_accept(p, q, draft, u), want)
    return got


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_DTYPES + [torch.float64])
@pytest.mark.parametrize("B,D,V", [(1, 1, 5), (3, 1, 7), (3, 5, 50), (64, 5, 33)])
def test_speculative_accept_random(device, dtype, B, D, V):
    g = gen(B + D + V)
    p = torch.softmax(torch.randn(B, D + 1, V, generator=g) * 2, -1).to(dtype).to(device)
    q = torch.softmax(torch.randn(B, D, V, generator=g) * 2, -1).to(dtype).to(device)
    draft = torch.randint(0, V, (B, D), generator=g).to(device)
    u = torch.rand(B, D, generator=g).to(dtype).to(device)
    check_spec(p, q, draft, u, device)
    check_spec(p[:, :D], q, draft, u, device)  # without the bonus row
    # Ties: p exactly equal to the rounded product u * q must reject, in every dtype.
    idx = draft.unsqueeze(-1)
    p_tie = p.clone()
    p_tie[:, :D].scatter_(2, idx, (u * q.gather(2, idx).squeeze(-1)).unsqueeze(-1))
    assert check_spec(p_tie, q, draft, u, device).eq(0).all()
    # Strided inputs.
    check_spec(p.transpose(0, 1).contiguous().transpose(0, 1), q[:, :, :], draft, u.t().contiguous().t(), device)


@pytest.mark.parametrize("device", DEVICES)
def test_speculative_accept_cases(device):
    V = 4
    p = torch.tensor([[[0.1, 0.2, 0.3, 0.4]] * 3] * 4, device=device)  # [4, 3, 4]
    q = torch.tensor([[[0.0, 0.5, 0.25, 0.25]] * 2] * 4, device=device)  # [4, 2, 4]
    draft = torch.tensor([[2, 3], [1, 2], [0, 0], [3, V]], device=device)
    u = torch.tensor([[0.99, 0.99], [0.5, 0.1], [0.99, 0.0], [0.0, 0.0]], device=device)
    # row 0: p >= q for both: all accepted; row 1: 0.5*0.5 >= 0.2 rejects the first;
    # row 2: q == 0 < p accepts whatever u is; row 3: out-of-range id rejects.
    assert check_spec(p, q, draft, u, device).tolist() == [2, 0, 2, 1]
    zeros = torch.zeros_like(p)
    assert check_spec(zeros, q, draft, u, device).tolist() == [0, 0, 0, 0]  # p == 0 never accepts


# ---- opcheck (schemas, fake tensors, torch.compile) --------------------------------------------


def opcheck_args(device):
    g = gen(0)
    logits = torch.randn(3, 11, generator=g).to(device)
    tokens = torch.tensor([0, 5, 10], device=device)
    B, L, D = 3, 8, 2
    splice_args = (
        torch.zeros(B, L, dtype=torch.long, device=device),
        torch.tensor([0, 7, 2], device=device),
        torch.tensor([[4, 5], [4, 5], [1, 5]], device=device),
        torch.tensor([2, 1, 0], device=device),
        torch.tensor([5, -1, 4], device=device),
        torch.zeros(B, L, dtype=torch.int8, device=device),
        torch.tensor([False, False, True], device=device),
        1,
    )
    p = torch.softmax(torch.randn(B, D + 1, 6, generator=g), -1).to(device)
    q = torch.softmax(torch.randn(B, D, 6, generator=g), -1).to(device)
    return {
        "topk_rank_accept": (logits, tokens, 3),
        "accept_prefix": (torch.tensor([[True, False], [True, True], [False, True]], device=device),
                          torch.tensor([2, 2, 1], device=device)),
        "splice": splice_args,
        "speculative_accept": (p, q, torch.tensor([[0, 1], [2, 3], [4, 5]], device=device),
                               torch.rand(B, D, generator=g).to(device)),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["topk_rank_accept", "accept_prefix", "splice", "speculative_accept"])
def test_opcheck(device, name):
    op = native(name, device)
    torch.library.opcheck(op.default, opcheck_args(device)[name])


def test_ops_work_under_torch_compile():
    if not HAS_EXT:
        pytest.skip("skd._C is not built")
    args = opcheck_args("cpu")

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(logits, tokens, seq, length, draft, n_accept, replacement, provenance, finished):
        ok = ops.topk_rank_accept(logits, tokens, 3)
        ops.splice(seq, length, draft, n_accept, replacement, provenance, finished, 1)
        return ok

    splice_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args["splice"]]
    want_state = [a.clone() if isinstance(a, torch.Tensor) else a for a in args["splice"]]
    ok = step(*args["topk_rank_accept"][:2], *splice_args[:7])
    ops.reference.splice(*want_state)
    assert torch.equal(ok, ops.reference.topk_rank_accept(*args["topk_rank_accept"]))
    for got, want in zip(splice_args[:7], want_state[:7]):
        assert torch.equal(got, want)


# ---- validation: same exception type and text from both paths -----------------------------------


def bad_inputs():
    x = torch.randn(4, 10)
    t = torch.tensor([0, 1, 2, 3])
    B, L, D = 2, 5, 3
    seq, length = torch.zeros(B, L, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    draft, n, rep = torch.zeros(B, D, dtype=torch.long), torch.ones(B, dtype=torch.long), torch.ones(B, dtype=torch.long)
    prov, fin = torch.zeros(B, L, dtype=torch.int8), torch.zeros(B, dtype=torch.bool)
    p, q = torch.rand(B, D + 1, 7), torch.rand(B, D, 7)
    u = torch.rand(B, D)
    meta = torch.device("meta")
    return [
        ("topk_rank_accept", (x[0], t, 3), ValueError, "logits must be 2-D [N, V], got shape [10]"),
        ("topk_rank_accept", (x.double(), t, 3), TypeError, "logits must be float32, bfloat16 or float16, got torch.float64"),
        ("topk_rank_accept", (x, t.int(), 3), TypeError, "tokens must be int64, got torch.int32"),
        ("topk_rank_accept", (x, t[:3], 3), ValueError, "tokens must have shape [4] ([N] from logits [4, 10]), got [3]"),
        ("topk_rank_accept", (x, t, -1), ValueError, "k must be >= 0, got -1"),
        ("topk_rank_accept", (x, t.to(meta), 3), ValueError, "tokens must be on the same device as logits (cpu), got meta"),
        ("accept_prefix", (torch.ones(2, 3, dtype=torch.bool), torch.ones(3, dtype=torch.long)), ValueError, "draft_len must have shape [2]"),
        ("accept_prefix", (torch.ones(2, 3), torch.ones(2, dtype=torch.long)), TypeError, "accepted must be bool, got torch.float32"),
        ("accept_prefix", (torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.long)), ValueError, "accepted must be 2-D [B, D]"),
        ("splice", (seq, length, draft, n, rep, prov.long(), fin, 1), TypeError, "provenance must be int8 or uint8, got torch.int64"),
        ("splice", (seq, length, draft[:1], n, rep, prov, fin, 1), ValueError, "draft must have shape [2, 3] ([B, D], B from seq [2, 5]), got [1, 3]"),
        ("splice", (seq, length, draft, n[:1], rep, prov, fin, 1), ValueError, "n_accept must have shape [2]"),
        ("splice", (seq, length, draft, n, rep.int(), prov, fin, 1), TypeError, "replacement must be int64, got torch.int32"),
        ("splice", (seq, length, draft, n, rep, prov[:, :4], fin, 1), ValueError, "provenance must have shape [2, 5]"),
        ("splice", (seq, length, draft, n, rep, prov, fin.long(), 1), TypeError, "finished must be bool"),
        ("splice", (seq, length, draft, n, rep, prov, fin.to(meta), 1), ValueError, "finished must be on the same device as seq"),
        ("speculative_accept", (p, q, draft, u.double()), TypeError, "u must have the same dtype as q_draft (torch.float32), got torch.float64"),
        ("speculative_accept", (p.half(), q, draft, u), TypeError, "p_target must have the same dtype as q_draft"),
        ("speculative_accept", (p[:, :, :6], q, draft, u), ValueError, "p_target must have shape [2, 4, 7] ([B, D+1, V] or [B, D, V] from q_draft [2, 3, 7]), got [2, 4, 6]"),
        ("speculative_accept", (p, q, draft[:, :2], u), ValueError, "draft must have shape [2, 3]"),
        ("speculative_accept", (p, q.long(), draft, u), TypeError, "q_draft must be float32, float64, bfloat16 or float16, got torch.int64"),
        ("speculative_accept", (p, q, draft, u[:, :1]), ValueError, "u must have shape [2, 3]"),
    ]


@pytest.mark.parametrize("case", bad_inputs(), ids=lambda c: f"{c[0]}:{c[3][:40]}")
def test_validation_errors_are_the_same_from_both_paths(case):
    name, args, exc, pattern = case
    paths = {"reference": getattr(ops.reference, name), "public": getattr(ops, name)}
    if HAS_EXT:
        paths["native"] = getattr(torch.ops.skd, name)
    messages = {}
    for path, fn in paths.items():
        with pytest.raises(exc, match=re.escape(f"skd.{name}: {pattern}")) as info:
            fn(*args)
        messages[path] = str(info.value)
    assert len(set(messages.values())) == 1, messages


@pytest.mark.parametrize("k", [2.0, True, "3"])
def test_topk_k_must_be_an_int(k):
    x, t = torch.randn(2, 3), torch.tensor([0, 1])
    for fn in (ops.topk_rank_accept, ops.reference.topk_rank_accept):
        with pytest.raises(TypeError, match="skd.topk_rank_accept: k must be an int"):
            fn(x, t, k)


# ---- the fallback when skd._C cannot be imported -----------------------------------------------

_FALLBACK_SCRIPT = textwrap.dedent(
    """
    import os, sys, warnings
    import torch
    sys.modules["skd._C"] = None  # makes `from skd import _C` raise ImportError

    os.environ["SKD_REQUIRE_EXT"] = "1"
    try:
        import skd.core.ops
    except ImportError as err:
        assert "SKD_REQUIRE_EXT=1" in str(err) and "--no-build-isolation" in str(err), err
    else:
        raise AssertionError("SKD_REQUIRE_EXT=1 did not raise")
    assert "skd.core.ops" not in sys.modules

    del os.environ["SKD_REQUIRE_EXT"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from skd.core import ops
        x = torch.randn(2, 5)
        t = x.argmax(1)
        for _ in range(3):
            assert ops.topk_rank_accept(x, t, 1).all()
    msgs = [str(w.message) for w in caught if "skd._C" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "--no-build-isolation" in msgs[0], msgs
    assert ops.backend() == "reference"
    print("OK")
    """
)


def test_missing_extension_warns_once_and_require_ext_raises():
    env = {k: v for k, v in os.environ.items() if k != "SKD_REQUIRE_EXT"}
    out = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]


# ---- the kernel benchmark and `skd bench kernels` (tiny sizes: a smoke test, not a timing) ------


def test_kernel_benchmark_returns_medians_and_ratios():
    from skd.benchmarks import kernels

    result = kernels.run(rows=3, vocab=600, dtypes=("float32", "float16"), repeats=2, warmup=1, k=700)
    assert result["device"] == "cpu" and result["threads"] >= 1 and result["torch"] == torch.__version__
    for name in ("float32", "float16"):
        r = result["topk_rank_accept"][name]
        assert r["agree"]
        assert {"reference", "torch_topk", "amax"} <= set(r["median_ms"])
        if HAS_EXT:
            assert r["ratios"]["kernel/amax"] > 0
    assert set(result["small_ops"]["median_ms"]) == {"accept_prefix", "splice", "speculative_accept"}


def test_bench_kernels_cli_writes_json(tmp_path):
    import json

    from click.testing import CliRunner

    from skd.cli.bench import bench

    out = tmp_path / "sub" / "kernels.json"
    res = CliRunner().invoke(bench, ["kernels", "--rows", "2", "--vocab", "300", "--dtype", "bfloat16",
                                     "--repeats", "1", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "kernel/amax" in res.output
    data = json.loads(out.read_text())
    assert data["config"]["rows"] == 2 and list(data["topk_rank_accept"]) == ["bfloat16"]
    assert [p.name for p in out.parent.iterdir()] == ["kernels.json"]  # no temporary left behind
    if not torch.cuda.is_available():
        res = CliRunner().invoke(bench, ["kernels", "--device", "cuda"])
        assert res.exit_code == 2 and "CUDA is not available" in res.output
