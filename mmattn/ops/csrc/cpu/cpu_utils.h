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

}  // namespace cpu
}  // namespace mmattn
