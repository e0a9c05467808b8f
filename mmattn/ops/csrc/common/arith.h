// Per-element arithmetic of the CUDA attention kernels (the CPU kernels are written with
// at::vec::Vectorized in cpu/*_vec.h, with the same operations per element).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "macros.h"

namespace mmattn {

// sum_i a[i] * b[i], accumulated in acc_t with four independent partial sums (lets the CPU
// compiler vectorise without -ffast-math; the order is fixed, so results are deterministic).
template <typename acc_t, typename Ta, typename Tb>
MMATTN_HD acc_t dot(const Ta* a, const Tb* b, int64_t n) {
  acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
    s1 += static_cast<acc_t>(a[i + 1]) * static_cast<acc_t>(b[i + 1]);
    s2 += static_cast<acc_t>(a[i + 2]) * static_cast<acc_t>(b[i + 2]);
    s3 += static_cast<acc_t>(a[i + 3]) * static_cast<acc_t>(b[i + 3]);
  }
  for (; i < n; ++i) s0 += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
  return (s0 + s1) + (s2 + s3);
}

// y[i] += alpha * x[i]
template <typename acc_t, typename Ty, typename Tx>
MMATTN_HD void axpy(Ty* y, acc_t alpha, const Tx* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = static_cast<Ty>(static_cast<acc_t>(y[i]) + alpha * static_cast<acc_t>(x[i]));
}

MMATTN_HD float exp_acc(float x) { return ::expf(x); }
MMATTN_HD double exp_acc(double x) { return ::exp(x); }

// One step of the online softmax: folds `logit` into the running maximum `m` and denominator
// `l`. Returns through `rescale` the factor the running numerator must be multiplied by and
// through `weight` the factor of the new value.
template <typename acc_t>
MMATTN_HD void online_softmax_step(acc_t logit, acc_t& m, acc_t& l, acc_t& rescale,
                                   acc_t& weight) {
  if (logit > m) {
    rescale = exp_acc(m - logit);  // m == -inf on the first step: exp(-inf) == 0
    l = l * rescale + 1;
    m = logit;
    weight = 1;
  } else {
    rescale = 1;
    // A -inf logit (e.g. a masking bias) weighs 0; while m is still -inf, exp(logit - m) would
    // be exp(NaN). If every logit is -inf, l stays 0 and the output is NaN, as with softmax.
    weight = logit == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : exp_acc(logit - m);
    l += weight;
  }
}

// Ghost-head tap weight of ELSA: attn * M + S.
template <typename acc_t>
MMATTN_HD acc_t ghost_weight(acc_t attn, acc_t mul, acc_t add) {
  return attn * mul + add;
}

}  // namespace mmattn
