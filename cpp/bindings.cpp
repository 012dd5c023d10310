// The one binding file of skd._C: op schemas (TORCH_LIBRARY), their CPU / CUDA kernels
// (TORCH_LIBRARY_IMPL) and the pybind11 module `_C`.
//
// Ops, callable as torch.ops.skd.<name> once `skd._C` is imported (shape letters in ops.h):
//   topk_rank_accept, accept_prefix, splice (mutates its (a!)..(d!) arguments),
//   speculative_accept; rows_linear, rows_linear_q8 (CPU only).
// Python module functions: cuda_built() -> bool, rows_linear_vectorised() -> bool,
// rows_linear_portable(x, weight) -> Tensor, rows_linear_q8_portable(x, qweight, scale) -> Tensor.
// Registering through the dispatcher (not plain pybind11 functions) is what makes the ops work
// with torch.compile and fake tensors; their fake implementations live in skd/core/ops.py.
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include "ops.h"

TORCH_LIBRARY(skd, m) {
  // torch points users of the ops at this module when a fake implementation is needed (and
  // checks that the fakes are registered from there).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 6)
  m.set_python_module("skd.core.ops");
#else
  m.impl_abstract_pystub("skd.core.ops");  // the same call under its pre-2.6 name
#endif
  m.def("topk_rank_accept(Tensor logits, Tensor tokens, int k) -> Tensor");
  m.def("accept_prefix(Tensor accepted, Tensor draft_len) -> Tensor");
  m.def(
      "splice(Tensor(a!) seq, Tensor(b!) length, Tensor draft, Tensor n_accept, "
      "Tensor replacement, Tensor(c!) provenance, Tensor(d!) finished, int eos_id) -> ()");
  m.def("speculative_accept(Tensor p_target, Tensor q_draft, Tensor draft, Tensor u) -> Tensor");
  m.def("rows_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("rows_linear_q8(Tensor x, Tensor qweight, Tensor scale, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(skd, CPU, m) {
  m.impl("topk_rank_accept", &skd::topk_rank_accept_cpu);
  m.impl("accept_prefix", &skd::accept_prefix_cpu);
  m.impl("splice", &skd::splice_cpu);
  m.impl("speculative_accept", &skd::speculative_accept_cpu);
  m.impl("rows_linear", &skd::rows_linear_cpu);
  m.impl("rows_linear_q8", &skd::rows_linear_q8_cpu);
}

#ifdef SKD_WITH_CUDA
TORCH_LIBRARY_IMPL(skd, CUDA, m) {
  m.impl("topk_rank_accept", &skd::topk_rank_accept_cuda);
  m.impl("accept_prefix", &skd::accept_prefix_cuda);
  m.impl("splice", &skd::splice_cuda);
  m.impl("speculative_accept", &skd::speculative_accept_cuda);
}
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "skd kernels; the ops are registered as torch.ops.skd.* on import";
  m.def(
      "cuda_built",
      []() {
#ifdef SKD_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "True when this build contains the CUDA kernels.");
  m.def("rows_linear_vectorised", &skd::rows_linear_vectorised,
        "True when rows_linear runs its AVX2/FMA path on this CPU.");
  m.def("rows_linear_portable", &skd::rows_linear_portable,
        "rows_linear's portable scalar loop (no bias), which CPUs without AVX2/FMA run.");
  m.def("rows_linear_q8_portable", &skd::rows_linear_q8_portable,
        "rows_linear_q8's portable scalar loop (no bias), which CPUs without AVX2/FMA run.");
}
