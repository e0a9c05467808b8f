// Helpers of the CPU entry points.
#pragma once
#include <ATen/ATen.h>

#include "../ops.h"

namespace mmattn {
namespace cpu {

// The CPU kernels run in fp32 or fp64: reduced-precision inputs are computed in fp32.
inline Tensor compute_dtype(const Tensor& t) {
  const auto s = t.scalar_type();
  return (s == at::kBFloat16 || s == at::kHalf) ? t.to(at::kFloat).contiguous() : t.contiguous();
}

inline OptTensor compute_dtype(const OptTensor& t) {
  return t.has_value() ? OptTensor(compute_dtype(*t)) : t;
}

template <typename scalar_t>
const scalar_t* data_or_null(const OptTensor& t) {
  return t.has_value() ? t->data_ptr<scalar_t>() : nullptr;
}

// A flat tensor of at least n elements of opts' dtype, held by the calling thread in slot `slot`
// (0..Slots-1) of `Owner` (a tag type per user, so that two users never share memory) and kept
// from call to call: a fresh buffer of a few hundred KiB is a fresh mmap whose pages the kernel
// faults in and zeroes on every call, which took about as long as na2d's D=32 kernel itself
// (README, "Benchmarks"). The same memory comes back while n does not grow; each thread keeps
// the largest buffer it has used per slot and dtype (float or double, the kernels' compute
// dtypes) until it exits. The contents are undefined: a user writes every element it reads.
template <typename Owner, int Slots>
Tensor thread_scratch(int slot, int64_t n, const at::TensorOptions& opts) {
  TORCH_INTERNAL_ASSERT(slot >= 0 && slot < Slots && n >= 0 && opts.device().is_cpu() &&
                        (opts.dtype() == at::kFloat || opts.dtype() == at::kDouble));
  thread_local Tensor cache[Slots][2];
  Tensor& t = cache[slot][opts.dtype() == at::kDouble ? 1 : 0];
  if (!t.defined() || t.numel() < n) t = at::empty({n}, opts);
  return t;
}

}  // namespace cpu
}  // namespace mmattn
