// CUDA kernels of the skd ops (compiled only when CMake sets SKD_WITH_CUDA).
//
// Public (declared in ops.h): topk_rank_accept_cuda, accept_prefix_cuda, splice_cuda,
// speculative_accept_cuda. Shape letters: N rows, V vocab, B batch, D draft length,
// L sequence capacity. Semantics and input checks are the CPU ones (ops_cpu.cpp, the reference
// in skd/core/ops.py); results are bit-identical. Every kernel runs on the current stream and
// nothing here synchronises with the host: data-dependent cases (out-of-range ids, lengths)
// are clipped or rejected on the device instead of raising.
#include "ops.h"
#include "splice_row.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
// c10's stream API is what at::cuda::getCurrentCUDAStream forwards to; ATen/cuda/CUDAContext.h
// would also pull in cuBLAS / cuSPARSE / cuSOLVER headers that these kernels do not need.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

namespace skd {
namespace {

// ---- topk_rank_accept -----------------------------------------------------------------------
//
// One block per row. Threads stream the row in 16-byte words (4 fp32 or 8 bf16/fp16 values),
// kUnroll independent loads in flight each, and count entries greater than the token's value.
// After every tile the block adds its counts to a shared total and stops once it reaches k:
// a rejected token (the common case) usually ends the scan within the first tiles.

// 512 threads x 4 loads x 16 B = 32 KiB in flight per block: with one block per row and only
// tens of rows (one SKD verification step), each SM must keep many loads outstanding to
// approach HBM bandwidth.
constexpr int kThreads = 512;

constexpr int kUnroll = 4;
constexpr int kWarp = 32;

__device__ __forceinline__ unsigned warp_sum(unsigned v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// fp32: plain float compares; NaN > x is false, so NaNs never count.
struct ScanF32 {
  using raw_t = float;
  using key_t = float;
  static constexpr int kVec = 4;  // values per 16-byte word
  __device__ static key_t key(raw_t v) { return v; }
  __device__ static bool finite(raw_t v) { return isfinite(v); }
  __device__ static unsigned count1(raw_t v, key_t x) { return v > x; }
  __device__ static unsigned count4(uint4 w, key_t x) {
    return (__uint_as_float(w.x) > x) + (__uint_as_float(w.y) > x) + (__uint_as_float(w.z) > x) +
           (__uint_as_float(w.w) > x);
  }
};

// bf16 / fp16 as order-preserving 16-bit keys (ops.h), two per 32-bit word with the SIMD video
// intrinsics: key > x and key <= key(+inf) (the second test drops NaNs above +inf).
template <int16_t kInfKey>
struct Scan16 {
  using raw_t = uint16_t;
  using key_t = int16_t;
  static constexpr int kVec = 8;
  __device__ static key_t key(raw_t v) { return order_key16(v); }
  __device__ static bool finite(raw_t v) {
    const int16_t kv = order_key16(v);
    return kv < kInfKey && kv > -kInfKey;
  }
  __device__ static unsigned count1(raw_t v, key_t x) {
    const int16_t kv = order_key16(v);
    return (kv > x) & (kv <= kInfKey);
  }
  // Two keys per word: negate the magnitude of each half whose sign bit is set.
  __device__ static unsigned count_word(uint32_t w, uint32_t xx, uint32_t inf2) {
    const uint32_t mag = w & 0x7FFF7FFFu;
    const uint32_t neg = ((w >> 15) & 0x00010001u) * 0xFFFFu;  // 0xFFFF in each negative half
    const uint32_t keys = __vsub2(mag ^ neg, neg);
    const uint32_t hit = __vcmpgts2(keys, xx) & __vcmples2(keys, inf2);  // 0xFFFF per hit
    return __popc(hit) >> 4;
  }
  __device__ static unsigned count4(uint4 w, key_t x) {
    const uint32_t xx = static_cast<uint32_t>(static_cast<uint16_t>(x)) * 0x00010001u;
    const uint32_t inf2 = static_cast<uint32_t>(static_cast<uint16_t>(kInfKey)) * 0x00010001u;
    return count_word(w.x, xx, inf2) + count_word(w.y, xx, inf2) + count_word(w.z, xx, inf2) +
           count_word(w.w, xx, inf2);
  }
};

template <typename Scan>
__global__ void __launch_bounds__(kThreads)
    topk_rank_accept_kernel(const typename Scan::raw_t* __restrict__ logits, int64_t row_stride,
                            const int64_t* __restrict__ tokens, int64_t tok_stride, int64_t V,
                            int64_t k, bool* __restrict__ out) {
  using raw_t = typename Scan::raw_t;
  const int64_t n = blockIdx.x;
  const raw_t* row = logits + n * row_stride;
  const int64_t t = tokens[n * tok_stride];
  // Every thread reads the same token and value, so these exits are uniform per block and
  // no thread is left waiting at a barrier below.
  if (t < 0 || t >= V) {
    if (threadIdx.x == 0) out[n] = false;  // out-of-range ids are never accepted
    return;
  }
  const raw_t xv = row[t];
  if (!Scan::finite(xv) || k == 0 || k >= V) {
    if (threadIdx.x == 0) out[n] = Scan::finite(xv) && k >= V && k > 0;
    return;
  }
  const auto x = Scan::key(xv);
  const unsigned limit = static_cast<unsigned>(k);  // 0 < k < V <= INT32_MAX here

  __shared__ unsigned s_count;
  if (threadIdx.x == 0) s_count = 0;
  __syncthreads();

  // Values before the first 16-byte boundary of the row, then whole words, then the tail.
  const auto addr = reinterpret_cast<uintptr_t>(row);
  const int64_t head = clamp64(static_cast<int64_t>(((16 - (addr & 15)) & 15) / sizeof(raw_t)), 0, V);
  unsigned local = 0;
  if (threadIdx.x < head) local += Scan::count1(row[threadIdx.x], x);
  const int64_t n_words = (V - head) / Scan::kVec;
  const uint4* words = reinterpret_cast<const uint4*>(row + head);
  const int lane = threadIdx.x % kWarp;
  unsigned reported = 0;
  bool done = false;
  for (int64_t base = 0; base < n_words; base += static_cast<int64_t>(kThreads) * kUnroll) {
    uint4 w[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + u * kThreads + threadIdx.x;
      if (j < n_words) w[u] = __ldg(words + j);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + u * kThreads + threadIdx.x < n_words) local += Scan::count4(w[u], x);
    }
    const unsigned delta = warp_sum(local - reported);
    reported = local;
    if (lane == 0 && delta) atomicAdd(&s_count, delta);
    __syncthreads();
    done = s_count >= limit;
    __syncthreads();  // all threads read s_count before anyone adds to it again: same decision
    if (done) break;
  }
  if (!done) {
    for (int64_t i = head + n_words * Scan::kVec + threadIdx.x; i < V; i += kThreads) {
      local += Scan::count1(row[i], x);
    }
    const unsigned delta = warp_sum(local - reported);
    if (lane == 0 && delta) atomicAdd(&s_count, delta);
    __syncthreads();
  }
  if (threadIdx.x == 0) out[n] = s_count < limit;
}

template <typename Scan>
void launch_topk(const at::Tensor& logits, const at::Tensor& tokens, int64_t k, at::Tensor& out) {
  const int64_t N = logits.size(0), V = logits.size(1);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  topk_rank_accept_kernel<Scan><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
      reinterpret_cast<const typename Scan::raw_t*>(logits.data_ptr()), logits.stride(0),
      tokens.data_ptr<int64_t>(), tokens.stride(0), V, k, out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- per-row kernels: accept_prefix, splice, speculative_accept -------------------------------
// B is small and D <= a few dozen: one thread per row, the same sequential loop as the CPU.

constexpr int kRowThreads = 128;

unsigned row_blocks(int64_t B) { return static_cast<unsigned>((B + kRowThreads - 1) / kRowThreads); }

__global__ void accept_prefix_kernel(const bool* __restrict__ acc, int64_t as0, int64_t as1,
                                     const int64_t* __restrict__ draft_len, int64_t dls, int64_t B,
                                     int64_t D, int64_t* __restrict__ out) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  const int64_t len = clamp64(draft_len[b * dls], 0, D);
  int64_t i = 0;
  while (i < len && acc[b * as0 + i * as1]) ++i;
  out[b] = i;
}

// One thread per row; the row's work is splice_row (splice_row.h), the code the CPU runs too.
template <typename prov_t>
__global__ void splice_kernel(const SpliceArgs<prov_t> args) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b < args.B) splice_row(args, b);
}

template <typename scalar_t>
__global__ void speculative_accept_kernel(const scalar_t* __restrict__ p, int64_t ps0,
                                          int64_t ps1, int64_t ps2,
                                          const scalar_t* __restrict__ q, int64_t qs0,
                                          int64_t qs1, int64_t qs2,
                                          const int64_t* __restrict__ draft, int64_t ds0,
                                          int64_t ds1, const scalar_t* __restrict__ u,
                                          int64_t us0, int64_t us1, int64_t B, int64_t D,
                                          int64_t V, int64_t* __restrict__ out) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  int64_t i = 0;
  for (; i < D; ++i) {
    const int64_t x = draft[b * ds0 + i * ds1];
    if (x < 0 || x >= V) break;
    // The product rounded to scalar_t, as torch's elementwise mul does (opmath, then one
    // rounding), compared after an exact widening: bit-identical to the CPU and the reference.
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t uq = static_cast<opmath_t>(static_cast<scalar_t>(
        static_cast<opmath_t>(u[b * us0 + i * us1]) * static_cast<opmath_t>(q[b * qs0 + i * qs1 + x * qs2])));
    if (!(uq < static_cast<opmath_t>(p[b * ps0 + i * ps1 + x * ps2]))) break;
  }
  out[b] = i;
}

}  // namespace

// ---- host entry points --------------------------------------------------------------------

at::Tensor topk_rank_accept_cuda(const at::Tensor& logits_in, const at::Tensor& tokens,
                                 int64_t k) {
  check_topk_rank_accept(logits_in, tokens, k);
  TORCH_CHECK_VALUE(logits_in.size(0) <= std::numeric_limits<int32_t>::max() &&
                        logits_in.size(1) <= std::numeric_limits<int32_t>::max(),
                    "skd.topk_rank_accept: CUDA supports N and V up to 2^31-1, got logits ",
                    logits_in.sizes());
  const c10::cuda::OptionalCUDAGuard guard(logits_in.device());
  // The vocab axis must be dense for the vector loads; strided rows are fine.
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  at::Tensor out = at::empty({logits.size(0)}, logits.options().dtype(at::kBool));
  if (logits.size(0) == 0) return out;
  switch (logits.scalar_type()) {
    case at::kFloat: launch_topk<ScanF32>(logits, tokens, k, out); break;
    case at::kBFloat16: launch_topk<Scan16<kBF16InfKey>>(logits, tokens, k, out); break;
    case at::kHalf: launch_topk<Scan16<kF16InfKey>>(logits, tokens, k, out); break;
    default: TORCH_CHECK(false, "unreachable: dtype checked above");
  }
  return out;
}

at::Tensor accept_prefix_cuda(const at::Tensor& accepted, const at::Tensor& draft_len) {
  check_accept_prefix(accepted, draft_len);
  const c10::cuda::OptionalCUDAGuard guard(accepted.device());
  const int64_t B = accepted.size(0), D = accepted.size(1);
  at::Tensor out = at::empty({B}, draft_len.options());
  if (B == 0) return out;
  accept_prefix_kernel<<<row_blocks(B), kRowThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      accepted.data_ptr<bool>(), accepted.stride(0), accepted.stride(1),
      draft_len.data_ptr<int64_t>(), draft_len.stride(0), B, D, out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void splice_cuda(at::Tensor& seq, at::Tensor& length, const at::Tensor& draft,
                 const at::Tensor& n_accept, const at::Tensor& replacement, at::Tensor& provenance,
                 at::Tensor& finished, int64_t eos_id) {
  check_splice(seq, length, draft, n_accept, replacement, provenance, finished);
  const c10::cuda::OptionalCUDAGuard guard(seq.device());
  const int64_t B = seq.size(0);
  if (B == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  with_splice_args(seq, length, draft, n_accept, replacement, provenance, finished, eos_id,
                   [&](const auto& args) {
    splice_kernel<<<row_blocks(B), kRowThreads, 0, stream>>>(args);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor speculative_accept_cuda(const at::Tensor& p_target, const at::Tensor& q_draft,
                                   const at::Tensor& draft, const at::Tensor& u) {
  check_speculative_accept(p_target, q_draft, draft, u);
  const c10::cuda::OptionalCUDAGuard guard(q_draft.device());
  const int64_t B = q_draft.size(0), D = q_draft.size(1), V = q_draft.size(2);
  at::Tensor out = at::empty({B}, draft.options());
  if (B == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q_draft.scalar_type(),
                                  "skd_speculative_accept_cuda", [&] {
    speculative_accept_kernel<scalar_t><<<row_blocks(B), kRowThreads, 0, stream>>>(
        p_target.data_ptr<scalar_t>(), p_target.stride(0), p_target.stride(1),
        p_target.stride(2), q_draft.data_ptr<scalar_t>(), q_draft.stride(0), q_draft.stride(1),
        q_draft.stride(2), draft.data_ptr<int64_t>(), draft.stride(0), draft.stride(1),
        u.data_ptr<scalar_t>(), u.stride(0), u.stride(1), B, D, V, out.data_ptr<int64_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace skd
