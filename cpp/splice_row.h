// The per-row work of the splice op, written once and run by both backends: the CPU kernel
// (ops_cpu.cpp) calls splice_row from its parallel_for loop, the CUDA kernel (ops_cuda.cu) from
// one thread per row. One copy of the loop is what keeps the two backends bit-identical.
//
// Public: SpliceArgs<prov_t> (raw pointers, strides and sizes of splice's tensors),
// with_splice_args(tensors..., f) (builds the SpliceArgs for the provenance dtype and calls f),
// splice_row(args, b) (host and device).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <type_traits>

#include "ops.h"

namespace skd {

// Element pointers and strides of splice's inputs (shapes as check_splice accepts them) and the
// sizes B, L, D. Plain data, so the CUDA kernel takes it by value as its one argument.
template <typename prov_t>
struct SpliceArgs {
  int64_t* seq;
  int64_t ss0, ss1;
  int64_t* length;
  int64_t ls;
  const int64_t* draft;
  int64_t ds0, ds1;
  const int64_t* n_accept;
  int64_t nas;
  const int64_t* replacement;
  int64_t rps;
  prov_t* prov;
  int64_t ps0, ps1;
  bool* finished;
  int64_t fs;
  int64_t B, L, D, eos_id;
};

// Calls f(SpliceArgs<int8_t>) or f(SpliceArgs<uint8_t>), whichever the provenance dtype is
// (check_splice admits only those two). Host only: it reads the tensors' metadata.
template <typename F>
void with_splice_args(at::Tensor& seq, at::Tensor& length, const at::Tensor& draft,
                      const at::Tensor& n_accept, const at::Tensor& replacement,
                      at::Tensor& provenance, at::Tensor& finished, int64_t eos_id, F&& f) {
  auto args = [&](auto* prov) {
    SpliceArgs<std::remove_pointer_t<decltype(prov)>> a;
    a.seq = seq.data_ptr<int64_t>(); a.ss0 = seq.stride(0); a.ss1 = seq.stride(1);
    a.length = length.data_ptr<int64_t>(); a.ls = length.stride(0);
    a.draft = draft.data_ptr<int64_t>(); a.ds0 = draft.stride(0); a.ds1 = draft.stride(1);
    a.n_accept = n_accept.data_ptr<int64_t>(); a.nas = n_accept.stride(0);
    a.replacement = replacement.data_ptr<int64_t>(); a.rps = replacement.stride(0);
    a.prov = prov; a.ps0 = provenance.stride(0); a.ps1 = provenance.stride(1);
    a.finished = finished.data_ptr<bool>(); a.fs = finished.stride(0);
    a.B = seq.size(0); a.L = seq.size(1); a.D = draft.size(1); a.eos_id = eos_id;
    return a;
  };
  if (provenance.scalar_type() == at::kChar) {
    f(args(provenance.data_ptr<int8_t>()));
  } else {
    f(args(provenance.data_ptr<uint8_t>()));
  }
}

// Row b (skipped when finished): write draft[b, :n_accept[b]] then replacement[b] (none when
// negative) at seq[b, length[b]:], provenance 2 for student and 3 for teacher tokens. Writing
// stops right after an EOS (the row finishes; the rest of the draft and the replacement are
// dropped) or at capacity L (the row finishes). length and n_accept are clipped to [0, L] and
// [0, D]: a kernel cannot raise on data without a device sync, so all backends clip alike.
template <typename prov_t>
SKD_HOST_DEVICE void splice_row(const SpliceArgs<prov_t>& a, int64_t b) {
  if (a.finished[b * a.fs]) return;  // finished rows are never written
  int64_t pos = clamp64(a.length[b * a.ls], 0, a.L);
  const int64_t n = clamp64(a.n_accept[b * a.nas], 0, a.D);
  bool eos = false;
  // Candidates in order: n draft tokens, then the replacement.
  for (int64_t j = 0; j <= n && !eos && pos < a.L; ++j) {
    int64_t token;
    prov_t code;
    if (j < n) {
      token = a.draft[b * a.ds0 + j * a.ds1];
      code = static_cast<prov_t>(kProvStudent);
    } else {
      token = a.replacement[b * a.rps];
      if (token < 0) break;  // -1: no teacher token this round
      code = static_cast<prov_t>(kProvTeacher);
    }
    a.seq[b * a.ss0 + pos * a.ss1] = token;
    a.prov[b * a.ps0 + pos * a.ps1] = code;
    ++pos;
    eos = a.eos_id >= 0 && token == a.eos_id;
  }
  a.length[b * a.ls] = pos;
  if (eos || pos >= a.L) a.finished[b * a.fs] = true;
}

}  // namespace skd
