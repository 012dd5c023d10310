// rows_linear: y[M, N] = x[M, K] @ weight[N, K]^T (+ bias[N]) for a few rows M on the CPU, and
// rows_linear_q8: the same against int8 weights with one float32 scale per weight row,
// y[m, n] = scale[n] * (x[m] . qweight[n]) (+ bias[n]).
//
// Public (declared in ops.h): rows_linear_cpu, rows_linear_q8_cpu, rows_linear_portable,
// rows_linear_q8_portable, rows_linear_vectorised (the input checks, check_rows_linear and
// check_rows_linear_q8, live with the other ops' checks in ops_cpu.cpp).
//
// Why: a decoding pass multiplies a handful of rows (batch x new positions) by every weight of
// the model. BLAS GEMM first packs the weight into its blocked layout, and with few rows that
// packing, a full read and write of the weight, costs more than the product: on 2 AVX2 cores
// SmolLM2-135M's 49,152 x 576 output layer takes 20 ms at 4 rows in MKL, while reading the
// weight once takes under 4 ms. This kernel streams each group of four weight rows once from
// memory and multiplies them into every input row while they sit in L1.
//
// Why int8: at one to a few rows the product is bound by reading the weight from memory, so a
// weight stored in a quarter of the bytes is read in about a quarter of the time. A draft model
// for speculative decoding can take that rounding (its proposals are only proposals: the
// target's verification decides every output token), which makes a distilled draft cheap
// enough to pay at batch 1 (skd/core/int8_draft.py).
//
// Numerics: each output is one float32 dot product, accumulated in 8 lanes over k in order
// (fused multiply-add; an int8 weight is converted to float32 exactly before it), the lanes
// summed in a fixed tree, then the k % 8 tail fused in order, then (int8) the row's scale
// multiplied in, and the bias last. So a row's result depends on that row alone: not on M, on
// the other rows, on N's split across threads or on the thread count. It differs from BLAS only by rounding
// (tests/test_rows_linear.py bounds both against a float64 product).
//
// x86-64 CPUs with AVX2 and FMA (checked at run time) take the vector path; others a scalar
// loop with the same results up to rounding, which exists for correctness, not speed
// (skd/core/decode_linear.py routes layers here only where the vector path runs).
#include "ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SKD_ROWS_LINEAR_X86 1
#endif

namespace skd {
namespace {

#ifdef SKD_ROWS_LINEAR_X86
__attribute__((target("avx2,fma"))) inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 hi = _mm_movehdup_ps(s);
  s = _mm_add_ps(s, hi);
  hi = _mm_movehl_ps(hi, s);
  return _mm_cvtss_f32(_mm_add_ss(s, hi));
}

// Eight weights as float32: a float load, or eight int8 sign-extended and converted (exact).
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
__attribute__((target("avx2,fma"))) inline __m256 load8(const int8_t* w) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
}

// R rows of x (stride K) against C consecutive weight rows w (stride K): outputs y[r * N + c].
// R x C accumulators, each one output's 8 lanes over k in order. R = 3, C = 4 keeps 12 of the 16
// ymm registers for sums and loads 7 vectors per 12 multiply-adds, so the loop is bound by the
// FMA units rather than by loads (two weight rows against one x row, as an earlier version did,
// loads 3 vectors per 2 multiply-adds and ran at about half the FMA rate).
// `scale` (int8 weights) holds the C rows' scales; nullptr for float32 weights.
template <int R, int C, typename W>
__attribute__((target("avx2,fma"))) inline void tile(const float* x, const W* w, const float* scale,
                                                     float* y, int64_t K, int64_t N, const W* ahead) {
  constexpr int64_t kLine = 64 / sizeof(W);   // weights per 64-byte cache line
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    if (ahead && k % kLine == 0)
      for (int c = 0; c < C; ++c) _mm_prefetch(reinterpret_cast<const char*>(ahead + c * K + k), _MM_HINT_T1);
    __m256 wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load8(w + c * K + k);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * K + k);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(wv[c], xv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float s = sum8(acc[r][c]);
      // The tail in fused multiply-adds, written out, in a file built with -ffp-contract=off
      // (CMakeLists.txt): the float and int8 tiles round alike. Earlier builds left the tail to
      // the compiler, which fused some of it and not the rest; their results are the same bit
      // for bit where K is a multiple of 8 (every model skd has measured), not always otherwise.
      for (int64_t t = k; t < K; ++t) s = std::fma(static_cast<float>(w[c * K + t]), x[r * K + t], s);
      y[r * N + c] = scale ? s * scale[c] : s;
    }
}

// Rows [0, M) of x against C weight rows, three rows of x at a time.
// `ahead`: the next group's weight rows (nullptr for none), prefetched during the first tile.
template <int C, typename W>
__attribute__((target("avx2,fma"))) inline void rows_by(const float* x, const W* w, const float* scale,
                                                        float* y, int64_t M, int64_t K, int64_t N,
                                                        const W* ahead) {
  int64_t r = 0;
  for (; r + 3 <= M; r += 3, ahead = nullptr) tile<3, C>(x + r * K, w, scale, y + r * N, K, N, ahead);
  if (M - r == 2) tile<2, C>(x + r * K, w, scale, y + r * N, K, N, ahead);
  else if (M - r == 1) tile<1, C>(x + r * K, w, scale, y + r * N, K, N, ahead);
}

// Outputs [n0, n1) of every row. x is taken in blocks of rows that stay in L2 (~192 KB) while
// every weight row of the span passes through L1 once per block: one block, so one read of the
// weight from memory, up to 84 rows at K = 576 and 30 at K = 1536.
template <typename W>
__attribute__((target("avx2,fma"))) void span_avx2(const float* x, const W* w, const float* scale,
                                                   float* y, int64_t M, int64_t K, int64_t N,
                                                   int64_t n0, int64_t n1) {
  constexpr int64_t kBlockFloats = 192 * 1024 / 4;  // ~192 KB of x rows per block
  const int64_t block = std::max<int64_t>(3, kBlockFloats / std::max<int64_t>(1, K) / 3 * 3);
  for (int64_t m0 = 0; m0 < M; m0 += block) {
    const int64_t mb = std::min(block, M - m0);
    const float* xb = x + m0 * K;
    float* yb = y + m0 * N;
    int64_t n = n0;
    const auto sc = [&](int64_t at) { return scale ? scale + at : nullptr; };
    // Each group's first tile prefetches the next group of four weight rows (whole groups only):
    // with the hardware prefetcher alone the kernel read SmolLM2's output layer at 4-8 rows at
    // about half the speed of a plain sum over it (15 against 30 GB/s on 2 AVX2 cores).
    for (; n + 4 <= n1; n += 4)
      rows_by<4>(xb, w + n * K, sc(n), yb + n, mb, K, N, n + 8 <= n1 ? w + (n + 4) * K : nullptr);
    switch (n1 - n) {
      case 3: rows_by<3>(xb, w + n * K, sc(n), yb + n, mb, K, N, static_cast<const W*>(nullptr)); break;
      case 2: rows_by<2>(xb, w + n * K, sc(n), yb + n, mb, K, N, static_cast<const W*>(nullptr)); break;
      case 1: rows_by<1>(xb, w + n * K, sc(n), yb + n, mb, K, N, static_cast<const W*>(nullptr)); break;
      default: break;
    }
  }
}

bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

// The portable path: the same 8-lane order without vector instructions.
template <typename W>
void span_scalar(const float* x, const W* w, const float* scale, float* y, int64_t M, int64_t K,
                 int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const W* wn = w + n * K;
    for (int64_t r = 0; r < M; ++r) {
      const float* xr = x + r * K;
      float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t k = 0;
      for (; k + 8 <= K; k += 8)
        for (int j = 0; j < 8; ++j) lane[j] += static_cast<float>(wn[k + j]) * xr[k + j];
      // the tree of sum8: (l0+l4)+(l1+l5), (l2+l6)+(l3+l7), then their sum
      float s = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
      for (int64_t t = k; t < K; ++t) s += static_cast<float>(wn[t]) * xr[t];
      y[r * N + n] = scale ? s * scale[n] : s;
    }
  }
}

bool vector_path() {
#ifdef SKD_ROWS_LINEAR_X86
  return has_avx2_fma();
#else
  return false;
#endif
}

// The product on checked inputs: float32 weights (scale empty) or int8 weights with their row
// scales; `vector` picks the AVX2/FMA path (only where vector_path()).
at::Tensor rows_product(const at::Tensor& x_in, const at::Tensor& weight_in,
                        const c10::optional<at::Tensor>& scale_in,
                        const c10::optional<at::Tensor>& bias, bool vector) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor scale = scale_in.has_value() ? scale_in->contiguous() : at::Tensor();
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* xp = x.data_ptr<float>();
  const float* sp = scale.defined() ? scale.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // Threads split N in spans of whole groups of four weight rows (the vector path's unit). A
  // span must hold at least 256K multiply-adds (64K weights at 4 rows, 8K at 32): below that a
  // thread costs more than it saves (a 256 x 96 layer at 16 rows took 39 us on two threads
  // against 22 us in BLAS), while a fixed 64K-weight minimum left a 256 x 256 layer at 32 rows
  // on one thread, at half BLAS's speed.
  const int64_t quads = (N + 3) / 4;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, 4 * K * M));
  const auto run = [&](const auto* wp) {
    at::parallel_for(0, quads, grain, [&](int64_t q0, int64_t q1) {
      const int64_t n0 = 4 * q0, n1 = std::min(N, 4 * q1);
#ifdef SKD_ROWS_LINEAR_X86
      if (vector) {
        span_avx2(xp, wp, sp, yp, M, K, N, n0, n1);
        return;
      }
#endif
      span_scalar(xp, wp, sp, yp, M, K, N, n0, n1);
    });
  };
  if (sp) run(weight.data_ptr<int8_t>());
  else run(weight.data_ptr<float>());
  if (bias.has_value()) y.add_(*bias);
  return y;
}

}  // namespace

at::Tensor rows_linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias) {
  check_rows_linear(x, weight, bias);
  return rows_product(x, weight, c10::nullopt, bias, vector_path());
}

at::Tensor rows_linear_q8_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                              const c10::optional<at::Tensor>& bias) {
  check_rows_linear_q8(x, qweight, scale, bias);
  return rows_product(x, qweight, scale, bias, vector_path());
}

at::Tensor rows_linear_portable(const at::Tensor& x, const at::Tensor& weight) {
  check_rows_linear(x, weight, c10::nullopt);
  return rows_product(x, weight, c10::nullopt, c10::nullopt, false);
}

at::Tensor rows_linear_q8_portable(const at::Tensor& x, const at::Tensor& qweight,
                                   const at::Tensor& scale) {
  check_rows_linear_q8(x, qweight, scale, c10::nullopt);
  return rows_product(x, qweight, scale, c10::nullopt, false);
}

bool rows_linear_vectorised() { return vector_path(); }

}  // namespace skd
