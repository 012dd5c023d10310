"""Sampling ops of SKD: the Python face of the C++/CUDA kernels and their pure-torch references.

Public: topk_rank_accept, accept_prefix, splice, speculative_accept, rows_linear, rows_linear_q8,
backend, rows_linear_vectorised, and `reference` (the same ops in plain torch: reference.topk_rank_accept,
...; also as ref_* functions).
Shape letters: N rows, V vocab, K top-k, B batch, D draft length, L sequence capacity.
Importing this module imports the compiled extension `skd._C` (which registers torch.ops.skd.*)
and each op runs it; if that import fails, the references run instead and one warning says so
(SKD_REQUIRE_EXT=1 makes it an ImportError). Both paths give bit-identical results and raise
the same errors for bad input (tests/test_ops.py), except rows_linear and rows_linear_q8 (float32
products, CPU only), whose kernels and references (F.linear, i.e. BLAS) agree up to float32
rounding: each sums its products in its own order (tests/test_rows_linear.py,
tests/test_int8_draft.py).
"""
from __future__ import annotations

import os
import warnings
from types import ModuleType, SimpleNamespace

import torch

__all__ = [
    "accept_prefix",
    "backend",
    "reference",
    "rows_linear",
    "rows_linear_q8",
    "rows_linear_vectorised",
    "splice",
    "speculative_accept",
    "topk_rank_accept",
]

PROV_STUDENT = 2  # provenance code of a drafted token kept by the teacher test
PROV_TEACHER = 3  # provenance code of a token sampled from the teacher

_BUILD_HINT = (
    "build it against the installed torch with `pip install --no-build-isolation .` "
    "(or `-e .`) from the repository root"
)

# ---- input checks: the same order, exception types and texts as cpp/ops_cpu.cpp -------------
# ValueError for shapes, devices and values; TypeError for dtypes (TORCH_CHECK_VALUE / _TYPE).

_FLOAT16_32 = (torch.float32, torch.bfloat16, torch.float16)
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _expect_dim(op: str, name: str, t: torch.Tensor, dim: int, letters: str) -> None:
    if t.dim() != dim:
        raise ValueError(f"{op}: {name} must be {dim}-D {letters}, got shape {list(t.shape)}")


def _expect_dtype(op: str, name: str, t: torch.Tensor, allowed: tuple, text: str) -> None:
    if t.dtype not in allowed:
        raise TypeError(f"{op}: {name} must be {text}, got {t.dtype}")


def _expect_same_dtype(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor):
    if t.dtype != ref.dtype:
        raise TypeError(
            f"{op}: {name} must have the same dtype as {ref_name} ({ref.dtype}), got {t.dtype}"
        )


def _expect_shape(op: str, name: str, t: torch.Tensor, expected: list, what: str) -> None:
    if list(t.shape) != list(expected):
        raise ValueError(
            f"{op}: {name} must have shape {list(expected)} ({what}), got {list(t.shape)}"
        )


def _expect_device(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor):
    if t.device != ref.device:
        raise ValueError(
            f"{op}: {name} must be on the same device as {ref_name} ({ref.device}), got {t.device}"
        )


def _expect_int_k(op: str, k) -> None:
    # torch.ops would reject a float k too, but with a RuntimeError about the schema.
    if not isinstance(k, (int, torch.SymInt)) or isinstance(k, bool):
        raise TypeError(f"{op}: k must be an int, got {type(k).__name__}")


def _check_topk_rank_accept(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> None:
    op = "skd.topk_rank_accept"
    _expect_dim(op, "logits", logits, 2, "[N, V]")
    _expect_dtype(op, "logits", logits, _FLOAT16_32, "float32, bfloat16 or float16")
    _expect_dtype(op, "tokens", tokens, (torch.int64,), "int64")
    _expect_shape(op, "tokens", tokens, [logits.shape[0]], f"[N] from logits {list(logits.shape)}")
    _expect_device(op, "tokens", tokens, "logits", logits)
    _expect_int_k(op, k)
    if k < 0:
        raise ValueError(f"{op}: k must be >= 0, got {k}")


def _check_accept_prefix(accepted: torch.Tensor, draft_len: torch.Tensor) -> None:
    op = "skd.accept_prefix"
    _expect_dim(op, "accepted", accepted, 2, "[B, D]")
    _expect_dtype(op, "accepted", accepted, (torch.bool,), "bool")
    _expect_dtype(op, "draft_len", draft_len, (torch.int64,), "int64")
    _expect_shape(
        op, "draft_len", draft_len, [accepted.shape[0]], f"[B] from accepted {list(accepted.shape)}"
    )
    _expect_device(op, "draft_len", draft_len, "accepted", accepted)


def _check_splice(seq, length, draft, n_accept, replacement, provenance, finished) -> None:
    op = "skd.splice"
    _expect_dim(op, "seq", seq, 2, "[B, L]")
    _expect_dtype(op, "seq", seq, (torch.int64,), "int64")
    _expect_dim(op, "draft", draft, 2, "[B, D]")
    _expect_dtype(op, "draft", draft, (torch.int64,), "int64")
    B = seq.shape[0]
    from_seq = f"from seq {list(seq.shape)}"
    _expect_shape(op, "draft", draft, [B, draft.shape[1]], f"[B, D], B {from_seq}")
    for name, t in (("length", length), ("n_accept", n_accept), ("replacement", replacement)):
        _expect_dtype(op, name, t, (torch.int64,), "int64")
        _expect_shape(op, name, t, [B], f"[B] {from_seq}")
    _expect_dtype(op, "provenance", provenance, (torch.int8, torch.uint8), "int8 or uint8")
    _expect_shape(op, "provenance", provenance, [B, seq.shape[1]], f"[B, L] {from_seq}")
    _expect_dtype(op, "finished", finished, (torch.bool,), "bool")
    _expect_shape(op, "finished", finished, [B], f"[B] {from_seq}")
    for name, t in (
        ("length", length),
        ("draft", draft),
        ("n_accept", n_accept),
        ("replacement", replacement),
        ("provenance", provenance),
        ("finished", finished),
    ):
        _expect_device(op, name, t, "seq", seq)


def _check_speculative_accept(p_target, q_draft, draft, u) -> None:
    op = "skd.speculative_accept"
    _expect_dim(op, "q_draft", q_draft, 3, "[B, D, V]")
    _expect_dtype(op, "q_draft", q_draft, _FLOATS, "float32, float64, bfloat16 or float16")
    B, D, V = q_draft.shape
    from_q = f"from q_draft {list(q_draft.shape)}"
    _expect_dim(op, "p_target", p_target, 3, "[B, D+1, V]")
    if p_target.shape[1] != D:  # the bonus row (D+1) is optional: it is not read here
        _expect_shape(op, "p_target", p_target, [B, D + 1, V], f"[B, D+1, V] or [B, D, V] {from_q}")
    _expect_same_dtype(op, "p_target", p_target, "q_draft", q_draft)
    _expect_dtype(op, "draft", draft, (torch.int64,), "int64")
    _expect_shape(op, "draft", draft, [B, D], f"[B, D] {from_q}")
    _expect_same_dtype(op, "u", u, "q_draft", q_draft)
    _expect_shape(op, "u", u, [B, D], f"[B, D] {from_q}")
    _expect_device(op, "p_target", p_target, "q_draft", q_draft)
    _expect_device(op, "draft", draft, "q_draft", q_draft)
    _expect_device(op, "u", u, "q_draft", q_draft)


def _check_rows_operands(op: str, wname: str, x: torch.Tensor, weight: torch.Tensor, wtype, wtext: str) -> None:
    _expect_dim(op, "x", x, 2, "[M, K]")
    _expect_dtype(op, "x", x, (torch.float32,), "float32")
    _expect_dim(op, wname, weight, 2, "[N, K]")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: {wname} must have K = {x.shape[1]} columns (from x {list(x.shape)}), "
                         f"got shape {list(weight.shape)}")
    _expect_dtype(op, wname, weight, (wtype,), wtext)
    if weight.device != x.device:
        raise ValueError(f"{op}: {wname} must be on the same device as x")


def _check_row_vector(op: str, name: str, t: torch.Tensor, wname: str, weight: torch.Tensor, x: torch.Tensor) -> None:
    """A per-output vector (bias, scale): shape [N] from the weight, float32, x's device."""
    if t.dim() != 1 or t.shape[0] != weight.shape[0]:
        raise ValueError(f"{op}: {name} must have shape [{weight.shape[0]}] (N from {wname}), "
                         f"got shape {list(t.shape)}")
    _expect_float32_beside(op, name, t, x)


def _check_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    op = "skd.rows_linear"
    _check_rows_operands(op, "weight", x, weight, torch.float32, "float32 like x")
    if bias is not None:
        _check_row_vector(op, "bias", bias, "weight", weight, x)


def _check_rows_linear_q8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                          bias: torch.Tensor | None) -> None:
    op = "skd.rows_linear_q8"
    _check_rows_operands(op, "qweight", x, qweight, torch.int8, "int8")
    _check_row_vector(op, "scale", scale, "qweight", qweight, x)
    if bias is not None:
        _check_row_vector(op, "bias", bias, "qweight", qweight, x)


def _expect_float32_beside(op: str, name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    _expect_dtype(op, name, t, (torch.float32,), "float32 like x")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} must be on the same device as x")


# ---- references: the definition of each op (vectorised, no host syncs) ------------------------


def ref_topk_rank_accept(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """bool[N]: logits[n, tokens[n]] is finite and fewer than k entries of row n are greater.

    Top-K membership without sorting (CONTRACT.md §2): ties at the K-th value are inside,
    NaNs elsewhere never count as greater, ids outside [0, V) are never accepted, k >= V accepts
    every finite token and k == 0 none. Compared in the logits' own dtype.
    """
    _check_topk_rank_accept(logits, tokens, k)
    N, V = logits.shape
    if V == 0:
        return torch.zeros(N, dtype=torch.bool, device=logits.device)
    in_range = (tokens >= 0) & (tokens < V)
    x = logits.gather(1, tokens.clamp(0, V - 1).unsqueeze(1))  # [N, 1]
    n_greater = (logits > x).sum(1)  # NaN > x is False
    return in_range & torch.isfinite(x.squeeze(1)) & (n_greater < k)


def ref_accept_prefix(accepted: torch.Tensor, draft_len: torch.Tensor) -> torch.Tensor:
    """int64[B]: length of the leading run of True in accepted[b, :draft_len[b]] (clipped to [0, D])."""
    _check_accept_prefix(accepted, draft_len)
    B, D = accepted.shape
    within = torch.arange(D, device=accepted.device) < draft_len.clamp(0, D).unsqueeze(1)
    return (accepted & within).to(torch.int64).cumprod(1).sum(1)


def ref_splice(
    seq: torch.Tensor,
    length: torch.Tensor,
    draft: torch.Tensor,
    n_accept: torch.Tensor,
    replacement: torch.Tensor,
    provenance: torch.Tensor,
    finished: torch.Tensor,
    eos_id: int,
) -> None:
    """Append each unfinished row's accepted draft and teacher token in place (CONTRACT.md §2).

    Row b (skipped when finished[b]): write draft[b, :n_accept[b]] (provenance 2) then
    replacement[b] (provenance 3; none when negative, i.e. -1) at seq[b, length[b]:]. Writing
    stops right after an EOS (eos_id >= 0), dropping the rest, or at capacity L; either finishes
    the row. length[b] becomes the new length. length and n_accept are clipped to [0, L] and
    [0, D], the same on every backend (a GPU kernel cannot raise on values without a sync).
    """
    _check_splice(seq, length, draft, n_accept, replacement, provenance, finished)
    B, L = seq.shape
    D = draft.shape[1]
    dev = seq.device
    j = torch.arange(D + 1, device=dev)  # candidate slot: D draft tokens, then the replacement
    n = n_accept.clamp(0, D).unsqueeze(1)  # [B, 1]
    start = length.clamp(0, L).unsqueeze(1)  # [B, 1]
    repl = replacement.unsqueeze(1)  # [B, 1]
    active = ~finished  # [B], taken before finished is updated
    cand = torch.where(j < n, torch.cat([draft, draft.new_zeros(B, 1)], 1), repl)  # [B, D+1]
    keep = ((j < n) | ((j == n) & (repl >= 0))) & active.unsqueeze(1)  # a prefix of each row
    if eos_id >= 0:
        is_eos = keep & (cand == eos_id)
        keep = keep & ((is_eos.cumsum(1) - is_eos.long()) == 0)  # up to and including the 1st EOS
    else:
        is_eos = torch.zeros_like(keep)
    dest = start + j  # [B, D+1]
    keep = keep & (dest < L)
    n_written = keep.sum(1)
    # Dropped slots go to a scratch column L, so scatter never sees two live writes to one index.
    dest = torch.where(keep, dest, L)
    prov = torch.where(j < n, PROV_STUDENT, PROV_TEACHER).to(provenance.dtype)
    seq_ext = torch.cat([seq, seq.new_zeros(B, 1)], 1).scatter_(1, dest, cand)
    prov_ext = torch.cat([provenance, provenance.new_zeros(B, 1)], 1).scatter_(1, dest, prov)
    seq.copy_(seq_ext[:, :L])
    provenance.copy_(prov_ext[:, :L])
    new_length = start.squeeze(1) + n_written
    eos_written = (keep & is_eos).any(1)
    length.copy_(torch.where(active, new_length, length))
    finished.copy_(finished | (active & (eos_written | (new_length >= L))))


def ref_speculative_accept(
    p_target: torch.Tensor, q_draft: torch.Tensor, draft: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """int64[B] in [0, D]: drafts accepted in order while u < p(x)/q(x) (Leviathan et al. 2023).

    Evaluated as `u * q < p` in the input dtype (so q == 0 needs no special case and every
    backend agrees bit for bit); out-of-range draft ids are rejected. p_target may carry the
    bonus row ([B, D+1, V]) or not ([B, D, V]). Resampling the residual is the caller's job.
    """
    _check_speculative_accept(p_target, q_draft, draft, u)
    B, D, V = q_draft.shape
    if V == 0 or D == 0:
        return torch.zeros(B, dtype=torch.int64, device=q_draft.device)
    in_range = (draft >= 0) & (draft < V)
    idx = draft.clamp(0, V - 1).unsqueeze(-1)  # [B, D, 1]
    q_x = q_draft.gather(2, idx).squeeze(-1)
    p_x = p_target[:, :D].gather(2, idx).squeeze(-1)
    ok = in_range & (u * q_x < p_x)
    return ok.to(torch.int64).cumprod(1).sum(1)


def ref_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """float32[M, N]: x[M, K] @ weight[N, K]^T (+ bias[N]), i.e. F.linear."""
    _check_rows_linear(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def ref_rows_linear_q8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """float32[M, N]: scale[n] * (x[M, K] @ qweight[N, K]^T)[:, n] (+ bias[n]); int8 weights, exact in float32."""
    _check_rows_linear_q8(x, qweight, scale, bias)
    y = torch.nn.functional.linear(x, qweight.to(torch.float32)) * scale
    return y if bias is None else y + bias


reference = SimpleNamespace(
    topk_rank_accept=ref_topk_rank_accept,
    accept_prefix=ref_accept_prefix,
    splice=ref_splice,
    speculative_accept=ref_speculative_accept,
    rows_linear=ref_rows_linear,
    rows_linear_q8=ref_rows_linear_q8,
)


# ---- the compiled extension ---------------------------------------------------------------


def _require_ext() -> bool:
    return os.environ.get("SKD_REQUIRE_EXT", "").strip().lower() in ("1", "true", "yes", "on")


def _load_extension() -> tuple[ModuleType | None, BaseException | None]:
    """Import skd._C (which registers torch.ops.skd.*), or say loudly why the reference is used."""
    try:
        from skd import _C
    except (ImportError, OSError) as err:
        if _require_ext():
            raise ImportError(
                f"skd: SKD_REQUIRE_EXT=1 but the compiled extension skd._C failed to import "
                f"({err}); {_BUILD_HINT}"
            ) from err
        warnings.warn(
            f"skd: the compiled extension skd._C failed to import ({err}); using the slower "
            f"pure-torch reference ops. To fix, {_BUILD_HINT}. Set SKD_REQUIRE_EXT=1 to make "
            f"this an error.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, err
    return _C, None


_C, _EXT_ERROR = _load_extension()
_CUDA_BUILT = bool(_C is not None and _C.cuda_built())
_warned_no_cuda_kernels = False


def backend() -> str:
    """Which implementation the ops run: "cuda" (extension with CUDA kernels), "cpp" or "reference"."""
    if _C is None:
        return "reference"
    return "cuda" if _CUDA_BUILT else "cpp"


def _native(t: torch.Tensor) -> bool:
    """True when the compiled kernels handle tensors on t's device."""
    global _warned_no_cuda_kernels
    if _C is None:
        return False
    if t.device.type != "cuda" or _CUDA_BUILT:
        return True
    # A CPU-only build on a GPU machine (e.g. no nvcc at build time): the reference runs on
    # the GPU and is far better than copying to the host, but it must not go unnoticed.
    if _require_ext():
        raise RuntimeError(
            f"skd: SKD_REQUIRE_EXT=1 but skd._C was built without CUDA kernels; rebuild on a "
            f"machine with nvcc (SKD_CUDA=on): {_BUILD_HINT}"
        )
    if not _warned_no_cuda_kernels:
        _warned_no_cuda_kernels = True
        warnings.warn(
            "skd: skd._C was built without CUDA kernels; CUDA tensors use the pure-torch "
            f"reference ops. To fix, rebuild with nvcc on PATH (SKD_CUDA=on): {_BUILD_HINT}.",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


# ---- fake (meta) implementations: shapes only, for torch.compile and FakeTensor ---------------

if _C is not None:

    @torch.library.register_fake("skd::topk_rank_accept")
    def _fake_topk_rank_accept(logits, tokens, k):
        _check_topk_rank_accept(logits, tokens, k)
        return logits.new_empty(logits.shape[:1], dtype=torch.bool)

    @torch.library.register_fake("skd::accept_prefix")
    def _fake_accept_prefix(accepted, draft_len):
        _check_accept_prefix(accepted, draft_len)
        return draft_len.new_empty(accepted.shape[:1])

    @torch.library.register_fake("skd::splice")
    def _fake_splice(seq, length, draft, n_accept, replacement, provenance, finished, eos_id):
        _check_splice(seq, length, draft, n_accept, replacement, provenance, finished)

    @torch.library.register_fake("skd::speculative_accept")
    def _fake_speculative_accept(p_target, q_draft, draft, u):
        _check_speculative_accept(p_target, q_draft, draft, u)
        return draft.new_empty(q_draft.shape[:1])

    @torch.library.register_fake("skd::rows_linear")
    def _fake_rows_linear(x, weight, bias):
        _check_rows_linear(x, weight, bias)
        return x.new_empty((x.shape[0], weight.shape[0]))

    @torch.library.register_fake("skd::rows_linear_q8")
    def _fake_rows_linear_q8(x, qweight, scale, bias):
        _check_rows_linear_q8(x, qweight, scale, bias)
        return x.new_empty((x.shape[0], qweight.shape[0]))


# ---- public ops -----------------------------------------------------------------------------


def topk_rank_accept(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """bool[N]: whether tokens[n] is in the top-k of logits[n] (ties inside; see the reference).

    logits [N, V] float32/bfloat16/float16 (rows may be strided), tokens [N] int64, k >= 0.
    """
    if _native(logits):
        _expect_int_k("skd.topk_rank_accept", k)  # the one check the schema words differently
        return torch.ops.skd.topk_rank_accept(logits, tokens, k)
    return ref_topk_rank_accept(logits, tokens, k)


def accept_prefix(accepted: torch.Tensor, draft_len: torch.Tensor) -> torch.Tensor:
    """int64[B]: leading run of True in accepted[b, :draft_len[b]]; accepted [B, D] bool."""
    if _native(accepted):
        return torch.ops.skd.accept_prefix(accepted, draft_len)
    return ref_accept_prefix(accepted, draft_len)


def splice(seq: torch.Tensor, length: torch.Tensor, draft: torch.Tensor, n_accept: torch.Tensor,
           replacement: torch.Tensor, provenance: torch.Tensor, finished: torch.Tensor, eos_id: int) -> None:
    """In place: append accepted drafts + the teacher token to unfinished rows (see ref_splice).

    seq [B, L] int64, length/n_accept/replacement [B] int64, draft [B, D] int64,
    provenance [B, L] int8/uint8, finished [B] bool; eos_id < 0 means no EOS.
    """
    if _native(seq):
        torch.ops.skd.splice(seq, length, draft, n_accept, replacement, provenance, finished, eos_id)
    else:
        ref_splice(seq, length, draft, n_accept, replacement, provenance, finished, eos_id)


def speculative_accept(
    p_target: torch.Tensor, q_draft: torch.Tensor, draft: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """int64[B]: drafts accepted by the speculative-sampling rule `u * q < p` (see the reference).

    p_target [B, D+1, V] (or [B, D, V]), q_draft [B, D, V], draft [B, D] int64, u [B, D];
    p, q, u share one float dtype.
    """
    if _native(q_draft):
        return torch.ops.skd.speculative_accept(p_target, q_draft, draft, u)
    return ref_speculative_accept(p_target, q_draft, draft, u)


def rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """float32[M, N]: x[M, K] @ weight[N, K]^T (+ bias[N]), the kernel for a few rows on a CPU.

    The compiled kernel streams the weight once instead of packing it as BLAS does (faster when M
    is small: skd.core.decode_linear decides where); CUDA tensors, and builds without the
    extension, run the reference. Results agree with the reference up to float32 rounding.
    """
    if _C is not None and x.device.type == "cpu":
        return torch.ops.skd.rows_linear(x, weight, bias)
    return ref_rows_linear(x, weight, bias)


def rows_linear_q8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """float32[M, N]: scale[n] * (x[M, K] @ qweight[N, K]^T)[:, n] (+ bias[n]), int8 weights, few rows, CPU.

    rows_linear's kernel reading int8 weights (a quarter of float32's bytes; each converted to
    float32 exactly before its multiply-add), for draft models at small batches
    (skd.core.int8_draft). CUDA tensors and builds without the extension run the reference; the
    two agree up to float32 rounding.
    """
    if _C is not None and x.device.type == "cpu":
        return torch.ops.skd.rows_linear_q8(x, qweight, scale, bias)
    return ref_rows_linear_q8(x, qweight, scale, bias)


def rows_linear_vectorised() -> bool:
    """True when rows_linear runs the compiled AVX2/FMA kernel here (else: scalar loop or reference)."""
    return bool(_C is not None and _C.rows_linear_vectorised())
