// Declarations shared by the skd kernels (ops_cpu.cpp, ops_cuda.cu) and their registration
// (bindings.cpp).
//
// Ops (N rows, V vocab, B batch, D draft length, L sequence capacity):
//   topk_rank_accept(logits[N, V], tokens[N], k) -> bool[N]
//   accept_prefix(accepted[B, D], draft_len[B]) -> int64[B]
//   splice(seq[B, L], length[B], draft[B, D], n_accept[B], replacement[B], provenance[B, L],
//          finished[B], eos_id) -> ()   (mutates seq, length, provenance, finished)
//   speculative_accept(p_target[B, D+1 | D, V], q_draft[B, D, V], draft[B, D], u[B, D]) -> int64[B]
// The check_* functions validate inputs once for every backend, so the CPU and CUDA kernels
// raise the same errors as the Python reference in skd/core/ops.py (same type, same text).
#pragma once

#include <ATen/ATen.h>

namespace skd {

// Provenance codes written by splice (0 pad and 1 prompt are written by the caller).
constexpr int8_t kProvStudent = 2;
constexpr int8_t kProvTeacher = 3;

// ---- validation (ops_cpu.cpp) -------------------------------------------------------------
void check_topk_rank_accept(const at::Tensor& logits, const at::Tensor& tokens, int64_t k);
void check_accept_prefix(const at::Tensor& accepted, const at::Tensor& draft_len);
void check_splice(const at::Tensor& seq, const at::Tensor& length, const at::Tensor& draft,
                  const at::Tensor& n_accept, const at::Tensor& replacement,
                  const at::Tensor& provenance, const at::Tensor& finished);
void check_speculative_accept(const at::Tensor& p_target, const at::Tensor& q_draft,
                              const at::Tensor& draft, const at::Tensor& u);
void check_rows_linear(const at::Tensor& x, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias);
void check_rows_linear_q8(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                          const c10::optional<at::Tensor>& bias);

// ---- kernels: <op>_cpu (ops_cpu.cpp) and, with SKD_WITH_CUDA, <op>_cuda (ops_cuda.cu) --------
// Every backend implements every op with the same signature, so the signatures are written once
// here and declared for each backend by pasting its suffix onto the names: the CPU and CUDA
// declarations cannot drift apart, and adding an op means adding one line.
#define SKD_DECLARE_KERNELS(backend)                                                               \
  at::Tensor topk_rank_accept_##backend(const at::Tensor& logits, const at::Tensor& tokens,        \
                                        int64_t k);                                                \
  at::Tensor accept_prefix_##backend(const at::Tensor& accepted, const at::Tensor& draft_len);     \
  void splice_##backend(at::Tensor& seq, at::Tensor& length, const at::Tensor& draft,              \
                        const at::Tensor& n_accept, const at::Tensor& replacement,                 \
                        at::Tensor& provenance, at::Tensor& finished, int64_t eos_id);             \
  at::Tensor speculative_accept_##backend(const at::Tensor& p_target, const at::Tensor& q_draft,   \
                                          const at::Tensor& draft, const at::Tensor& u);

SKD_DECLARE_KERNELS(cpu)
#ifdef SKD_WITH_CUDA
SKD_DECLARE_KERNELS(cuda)
#endif
#undef SKD_DECLARE_KERNELS

// ---- rows_linear (rows_linear_cpu.cpp): CPU only ----------------------------------------------
//   rows_linear(x[M, K], weight[N, K], bias[N]?) -> float32[M, N]
// A few rows against a large weight, for CPU decoding passes. It has no CUDA kernel: on a GPU
// cuBLAS streams the weight without the packing cost this kernel avoids on a CPU.
at::Tensor rows_linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias);
//   rows_linear_q8(x[M, K], qweight[N, K] int8, scale[N], bias[N]?) -> float32[M, N]:
//   scale[n] * (x[m] . qweight[n]) (+ bias[n]), the same kernel reading a quarter of the bytes.
at::Tensor rows_linear_q8_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                              const c10::optional<at::Tensor>& bias);
// The portable scalar loops alone, without bias (tests compare them with the vector path).
at::Tensor rows_linear_portable(const at::Tensor& x, const at::Tensor& weight);
at::Tensor rows_linear_q8_portable(const at::Tensor& x, const at::Tensor& qweight,
                                   const at::Tensor& scale);
// True when rows_linear runs its AVX2/FMA path on this CPU (false: the portable scalar loop).
bool rows_linear_vectorised();

// ---- helpers compiled for host and device -------------------------------------------------
// SKD_HOST_DEVICE marks a header function that both ops_cpu.cpp (host compiler) and
// ops_cuda.cu (nvcc: host and device code) call; for the host compiler it is plain `inline`.
#if defined(__CUDACC__)
#define SKD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SKD_HOST_DEVICE inline
#endif

// v clipped to [lo, hi] (lo <= hi); std::clamp is not callable from device code.
SKD_HOST_DEVICE int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// ---- order-preserving 16-bit keys -----------------------------------------------------------
// bfloat16 and float16 are sign-magnitude: turning the bits into a two's-complement int16
// (negate the magnitude when the sign bit is set) gives an integer whose order is the float
// order, with -0 and +0 both mapped to 0 (they compare equal as floats too). NaNs land above
// +inf (positive sign) or below -inf (negative sign), so "greater than a finite x" is
// `key > kx && key <= key(+inf)`. Branch-free, so it vectorises on CPU and GPU alike.
SKD_HOST_DEVICE int16_t order_key16(uint16_t bits) {
  const int16_t mag = static_cast<int16_t>(bits & 0x7FFF);
  const int16_t neg = static_cast<int16_t>(-static_cast<int16_t>(bits >> 15));  // 0 or -1
  return static_cast<int16_t>((mag ^ neg) - neg);
}

// Bit pattern of +inf: every finite or infinite non-NaN value has key <= this.
constexpr int16_t kBF16InfKey = 0x7F80;
constexpr int16_t kF16InfKey = 0x7C00;

}  // namespace skd
