// CPU kernels of the skd ops and the input checks every backend shares.
//
// Public (declared in ops.h): check_topk_rank_accept, check_accept_prefix, check_splice,
// check_rows_linear, check_rows_linear_q8, check_speculative_accept, topk_rank_accept_cpu, accept_prefix_cpu, splice_cpu,
// speculative_accept_cpu. Shape letters: N rows, V vocab, B batch, D draft length,
// L sequence capacity. The semantics are defined by the pure-torch references in
// skd/core/ops.py; tests compare both bit for bit.
#include "ops.h"
#include "splice_row.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace skd {
namespace {

// ---- texts of dtypes and shapes in error messages, as Python prints them ----------------------

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << s;  // "[4, 10]", the same text as str(list(t.shape)) in Python
  return os.str();
}

// ---- messages shared with the Python reference (keep the texts in sync with core/ops.py) ----

void expect_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                const char* letters) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", letters,
                    ", got shape ", shape_str(t.sizes()));
}

void expect_dtype(const char* op, const char* name, const at::Tensor& t,
                  std::initializer_list<at::ScalarType> allowed, const char* allowed_text) {
  const bool ok = std::find(allowed.begin(), allowed.end(), t.scalar_type()) != allowed.end();
  TORCH_CHECK_TYPE(ok, op, ": ", name, " must be ", allowed_text, ", got ",
                   dtype_name(t.scalar_type()));
}

void expect_same_dtype(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name,
                   " must have the same dtype as ", ref_name, " (",
                   dtype_name(ref.scalar_type()), "), got ", dtype_name(t.scalar_type()));
}

// `what` says where the expected shape comes from, e.g. "[N] from logits [4, 10]".
void expect_shape(const char* op, const char* name, const at::Tensor& t,
                  std::vector<int64_t> expected, const std::string& what) {
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(expected), op, ": ", name,
                    " must have shape ", shape_str(expected), " (", what, "), got ",
                    shape_str(t.sizes()));
}

void expect_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                   const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name,
                    " must be on the same device as ", ref_name, " (", ref.device().str(),
                    "), got ", t.device().str());
}

}  // namespace

// ---- checks -------------------------------------------------------------------------------

void check_topk_rank_accept(const at::Tensor& logits, const at::Tensor& tokens, int64_t k) {
  const char* op = "skd.topk_rank_accept";
  expect_dim(op, "logits", logits, 2, "[N, V]");
  expect_dtype(op, "logits", logits, {at::kFloat, at::kBFloat16, at::kHalf},
               "float32, bfloat16 or float16");
  expect_dtype(op, "tokens", tokens, {at::kLong}, "int64");
  expect_shape(op, "tokens", tokens, {logits.size(0)},
               "[N] from logits " + shape_str(logits.sizes()));
  expect_device(op, "tokens", tokens, "logits", logits);
  TORCH_CHECK_VALUE(k >= 0, op, ": k must be >= 0, got ", k);
}

void check_accept_prefix(const at::Tensor& accepted, const at::Tensor& draft_len) {
  const char* op = "skd.accept_prefix";
  expect_dim(op, "accepted", accepted, 2, "[B, D]");
  expect_dtype(op, "accepted", accepted, {at::kBool}, "bool");
  expect_dtype(op, "draft_len", draft_len, {at::kLong}, "int64");
  expect_shape(op, "draft_len", draft_len, {accepted.size(0)},
               "[B] from accepted " + shape_str(accepted.sizes()));
  expect_device(op, "draft_len", draft_len, "accepted", accepted);
}

void check_splice(const at::Tensor& seq, const at::Tensor& length, const at::Tensor& draft,
                  const at::Tensor& n_accept, const at::Tensor& replacement,
                  const at::Tensor& provenance, const at::Tensor& finished) {
  const char* op = "skd.splice";
  expect_dim(op, "seq", seq, 2, "[B, L]");
  expect_dtype(op, "seq", seq, {at::kLong}, "int64");
  expect_dim(op, "draft", draft, 2, "[B, D]");
  expect_dtype(op, "draft", draft, {at::kLong}, "int64");
  const int64_t B = seq.size(0);
  const std::string from_seq = "from seq " + shape_str(seq.sizes());
  expect_shape(op, "draft", draft, {B, draft.size(1)}, "[B, D], B " + from_seq);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"length", length},
                                {"n_accept", n_accept},
                                {"replacement", replacement}}) {
    expect_dtype(op, name, t, {at::kLong}, "int64");
    expect_shape(op, name, t, {B}, "[B] " + from_seq);
  }
  expect_dtype(op, "provenance", provenance, {at::kChar, at::kByte}, "int8 or uint8");
  expect_shape(op, "provenance", provenance, {B, seq.size(1)}, "[B, L] " + from_seq);
  expect_dtype(op, "finished", finished, {at::kBool}, "bool");
  expect_shape(op, "finished", finished, {B}, "[B] " + from_seq);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"length", length},
                                {"draft", draft},
                                {"n_accept", n_accept},
                                {"replacement", replacement},
                                {"provenance", provenance},
                                {"finished", finished}}) {
    expect_device(op, name, t, "seq", seq);
  }
}

// rows_linear's and rows_linear_q8's extra texts (K from x, the shapes of scale and bias,
// devices) are their own; all match core/ops.py.
namespace {
void check_rows_operands(const char* op, const char* wname, const at::Tensor& x,
                         const at::Tensor& weight, at::ScalarType wtype, const char* wtext) {
  expect_dim(op, "x", x, 2, "[M, K]");
  expect_dtype(op, "x", x, {at::kFloat}, "float32");
  expect_dim(op, wname, weight, 2, "[N, K]");
  TORCH_CHECK_VALUE(weight.size(1) == x.size(1), op, ": ", wname, " must have K = ", x.size(1),
                    " columns (from x ", shape_str(x.sizes()), "), got shape ", shape_str(weight.sizes()));
  expect_dtype(op, wname, weight, {wtype}, wtext);
  TORCH_CHECK_VALUE(weight.device() == x.device(), op, ": ", wname, " must be on the same device as x");
}

// A per-output vector (bias, scale): shape [N] from the weight, float32, x's device.
void check_row_vector(const char* op, const char* name, const at::Tensor& t, const char* wname,
                      const at::Tensor& weight, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == weight.size(0), op, ": ", name,
                    " must have shape [", weight.size(0), "] (N from ", wname, "), got shape ",
                    shape_str(t.sizes()));
  expect_dtype(op, name, t, {at::kFloat}, "float32 like x");
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " must be on the same device as x");
}
}  // namespace

void check_rows_linear(const at::Tensor& x, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias) {
  const char* op = "skd.rows_linear";
  check_rows_operands(op, "weight", x, weight, at::kFloat, "float32 like x");
  if (bias.has_value()) check_row_vector(op, "bias", *bias, "weight", weight, x);
}

void check_rows_linear_q8(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                          const c10::optional<at::Tensor>& bias) {
  const char* op = "skd.rows_linear_q8";
  check_rows_operands(op, "qweight", x, qweight, at::kChar, "int8");
  check_row_vector(op, "scale", scale, "qweight", qweight, x);
  if (bias.has_value()) check_row_vector(op, "bias", *bias, "qweight", qweight, x);
}

void check_speculative_accept(const at::Tensor& p_target, const at::Tensor& q_draft,
                              const at::Tensor& draft, const at::Tensor& u) {
  const char* op = "skd.speculative_accept";
  expect_dim(op, "q_draft", q_draft, 3, "[B, D, V]");
  expect_dtype(op, "q_draft", q_draft, {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf},
               "float32, float64, bfloat16 or float16");
  const int64_t B = q_draft.size(0), D = q_draft.size(1), V = q_draft.size(2);
  const std::string from_q = "from q_draft " + shape_str(q_draft.sizes());
  expect_dim(op, "p_target", p_target, 3, "[B, D+1, V]");
  // The bonus row (D+1) is optional: it is not read here.
  if (p_target.size(1) != D) {
    expect_shape(op, "p_target", p_target, {B, D + 1, V}, "[B, D+1, V] or [B, D, V] " + from_q);
  }
  expect_same_dtype(op, "p_target", p_target, "q_draft", q_draft);
  expect_dtype(op, "draft", draft, {at::kLong}, "int64");
  expect_shape(op, "draft", draft, {B, D}, "[B, D] " + from_q);
  expect_same_dtype(op, "u", u, "q_draft", q_draft);
  expect_shape(op, "u", u, {B, D}, "[B, D] " + from_q);
  expect_device(op, "p_target", p_target, "q_draft", q_draft);
  expect_device(op, "draft", draft, "q_draft", q_draft);
  expect_device(op, "u", u, "q_draft", q_draft);
}

// ---- topk_rank_accept -----------------------------------------------------------------------
//
// A token is in the top-k of its row iff its logit x is finite and #{v : l_v > x} < k (ties at
// the boundary are inside; CONTRACT.md §2). One pass over the row, no sort. The count is
// checked against k once per block so the inner loop stays a branch-free, vectorisable
// compare-and-add; the scan stops as soon as k larger entries were seen (the common reject).

namespace {

// Elements per early-exit check: 8 KiB of fp32 (L1-resident), and < 32768 so a 16-bit
// per-block counter cannot overflow.
constexpr int64_t kBlock = 2048;
// Split one row across threads only when rows are too few to occupy the pool and each piece
// still streams at least this many elements.
constexpr int64_t kMinSplit = 32768;

// The library is built for the baseline ISA (SSE2 on x86-64); the scans are the only hot loops,
// so they get AVX2 / AVX-512 clones picked at load time by the CPU (GCC/Clang ifunc).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    __GNUC__ >= 12
#define SKD_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define SKD_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SKD_SIMD_CLONES
#endif

// NaN > t is false, so NaNs never count as greater.
SKD_SIMD_CLONES int64_t count_greater(const float* x, int64_t n, float t, int64_t limit) {
  int64_t total = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    int32_t c = 0;
    for (int64_t i = b; i < e; ++i) c += static_cast<int32_t>(x[i] > t);
    total += c;
    if (total >= limit) break;
  }
  return total;
}

// bf16 / fp16 as 16-bit order keys (ops.h): two integer compares per element, 16 lanes per
// 256-bit vector, no float conversion. `kinf` excludes NaNs above +inf.
SKD_SIMD_CLONES int64_t count_greater(const uint16_t* x, int64_t n, int16_t kt, int16_t kinf, int64_t limit) {
  int64_t total = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    uint16_t c = 0;
    for (int64_t i = b; i < e; ++i) {
      const int16_t key = order_key16(x[i]);
      c = static_cast<uint16_t>(c + ((key > kt) & (key <= kinf)));
    }
    total += c;
    if (total >= limit) break;
  }
  return total;
}

template <typename scalar_t>
int64_t count_row_piece(const scalar_t* row, int64_t begin, int64_t end, scalar_t xv,
                        int64_t limit) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return count_greater(row + begin, end - begin, xv, limit);
  } else {
    constexpr int16_t kinf = std::is_same_v<scalar_t, at::BFloat16> ? kBF16InfKey : kF16InfKey;
    return count_greater(reinterpret_cast<const uint16_t*>(row) + begin, end - begin,
                         order_key16(xv.x), kinf, limit);
  }
}

template <typename scalar_t>
void topk_rank_accept_kernel(const at::Tensor& logits, const at::Tensor& tokens, int64_t k,
                             at::Tensor& out) {
  const int64_t N = logits.size(0), V = logits.size(1);
  const int64_t row_stride = logits.stride(0);
  const scalar_t* base = logits.data_ptr<scalar_t>();
  const int64_t* tok = tokens.data_ptr<int64_t>();
  bool* acc = out.data_ptr<bool>();

  // Pieces per row: 1 unless a few long rows would leave threads idle.
  const int64_t threads = at::get_num_threads();
  int64_t pieces = 1;
  if (N < 2 * threads && k > 0 && k < V) {
    pieces = std::clamp<int64_t>((2 * threads + N - 1) / N, 1, std::max<int64_t>(1, V / kMinSplit));
  }
  const int64_t piece_len = (V + pieces - 1) / pieces;
  std::vector<int64_t> counts(static_cast<size_t>(N * pieces), 0);

  // Row status decided before any scan: -1 reject, 1 accept, 0 needs a count.
  auto status = [&](int64_t n, scalar_t& xv) -> int {
    const int64_t t = tok[n];
    if (t < 0 || t >= V) return -1;  // out-of-range ids are never accepted (no error: no sync on CUDA)
    xv = base[n * row_stride + t];
    if (!std::isfinite(static_cast<float>(xv)) || k == 0) return -1;
    if (k >= V) return 1;  // at most V-1 entries can be greater
    return 0;
  };

  const int64_t work = N * pieces;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, piece_len));
  at::parallel_for(0, work, grain, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t n = w / pieces, p = w % pieces;
      scalar_t xv;
      if (status(n, xv) != 0) continue;
      const int64_t begin = p * piece_len, end = std::min(V, begin + piece_len);
      if (begin < end) {
        counts[w] = count_row_piece(base + n * row_stride, begin, end, xv, k);
      }
    }
  });
  for (int64_t n = 0; n < N; ++n) {
    scalar_t xv;
    const int s = status(n, xv);
    int64_t total = 0;
    for (int64_t p = 0; p < pieces; ++p) total += counts[n * pieces + p];
    acc[n] = s > 0 || (s == 0 && total < k);
  }
}

}  // namespace

at::Tensor topk_rank_accept_cpu(const at::Tensor& logits_in, const at::Tensor& tokens_in,
                                int64_t k) {
  check_topk_rank_accept(logits_in, tokens_in, k);
  // Rows may be strided (e.g. logits[:, t, :] of a [B, T, V] tensor); only the vocab axis
  // must be dense for the vector loop.
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  const at::Tensor tokens = tokens_in.contiguous();
  at::Tensor out = at::empty({logits.size(0)}, logits.options().dtype(at::kBool));
  if (logits.size(0) == 0) return out;
  switch (logits.scalar_type()) {
    case at::kFloat: topk_rank_accept_kernel<float>(logits, tokens, k, out); break;
    case at::kBFloat16: topk_rank_accept_kernel<at::BFloat16>(logits, tokens, k, out); break;
    case at::kHalf: topk_rank_accept_kernel<at::Half>(logits, tokens, k, out); break;
    default: TORCH_CHECK(false, "unreachable: dtype checked above");
  }
  return out;
}

// ---- accept_prefix --------------------------------------------------------------------------

at::Tensor accept_prefix_cpu(const at::Tensor& accepted_in, const at::Tensor& draft_len_in) {
  check_accept_prefix(accepted_in, draft_len_in);
  const at::Tensor accepted = accepted_in.contiguous();
  const at::Tensor draft_len = draft_len_in.contiguous();
  const int64_t B = accepted.size(0), D = accepted.size(1);
  at::Tensor out = at::empty({B}, draft_len.options());
  const bool* a = accepted.data_ptr<bool>();
  const int64_t* dl = draft_len.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, B, std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, D)),
                   [&](int64_t b0, int64_t b1) {
                     for (int64_t b = b0; b < b1; ++b) {
                       const int64_t len = std::clamp<int64_t>(dl[b], 0, D);
                       int64_t i = 0;
                       while (i < len && a[b * D + i]) ++i;
                       o[b] = i;
                     }
                   });
  return out;
}

// ---- splice ---------------------------------------------------------------------------------
//
// The per-row semantics are in splice_row.h (shared with the CUDA kernel); rows are independent,
// so they are split across threads.

void splice_cpu(at::Tensor& seq, at::Tensor& length, const at::Tensor& draft,
                const at::Tensor& n_accept, const at::Tensor& replacement, at::Tensor& provenance,
                at::Tensor& finished, int64_t eos_id) {
  check_splice(seq, length, draft, n_accept, replacement, provenance, finished);
  with_splice_args(seq, length, draft, n_accept, replacement, provenance, finished, eos_id,
                   [](const auto& a) {
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (a.D + 1));
    at::parallel_for(0, a.B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) splice_row(a, b);
    });
  });
}

// ---- speculative_accept -------------------------------------------------------------------
//
// Leviathan et al. 2023, Algorithm 1: accept draft token i (in order) while
// u_i < p_i(x_i) / q_i(x_i). Evaluated as `u * q < p` in the input dtype (the product rounded
// to that dtype, exactly as torch's elementwise mul does), so every backend agrees bit for bit
// and q == 0 needs no special case. Out-of-range draft ids are rejected.

namespace {

template <typename scalar_t>
void speculative_accept_kernel(const at::Tensor& p, const at::Tensor& q, const at::Tensor& draft,
                               const at::Tensor& u, at::Tensor& out) {
  const int64_t B = q.size(0), D = q.size(1), V = q.size(2);
  const scalar_t* pp = p.data_ptr<scalar_t>();
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* up = u.data_ptr<scalar_t>();
  const int64_t* dp = draft.data_ptr<int64_t>();
  const auto ps = p.strides(), qs = q.strides(), us = u.strides(), ds = draft.strides();
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, B, std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, D)),
                   [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t i = 0;
      for (; i < D; ++i) {
        const int64_t x = dp[b * ds[0] + i * ds[1]];
        if (x < 0 || x >= V) break;
        // opmath product (exact for 16-bit inputs), one rounding to scalar_t, exact widening.
        using opmath_t = at::opmath_type<scalar_t>;
        const opmath_t qx = static_cast<opmath_t>(qp[b * qs[0] + i * qs[1] + x * qs[2]]);
        const opmath_t px = static_cast<opmath_t>(pp[b * ps[0] + i * ps[1] + x * ps[2]]);
        const opmath_t ux = static_cast<opmath_t>(up[b * us[0] + i * us[1]]);
        const opmath_t uq = static_cast<opmath_t>(static_cast<scalar_t>(ux * qx));
        if (!(uq < px)) break;
      }
      o[b] = i;
    }
  });
}

}  // namespace

at::Tensor speculative_accept_cpu(const at::Tensor& p_target, const at::Tensor& q_draft,
                                  const at::Tensor& draft, const at::Tensor& u) {
  check_speculative_accept(p_target, q_draft, draft, u);
  at::Tensor out = at::empty({q_draft.size(0)}, draft.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q_draft.scalar_type(),
                                  "skd_speculative_accept", [&] {
                                    speculative_accept_kernel<scalar_t>(p_target, q_draft, draft, u,
                                                                        out);
                                  });
  return out;
}

}  // namespace skd
