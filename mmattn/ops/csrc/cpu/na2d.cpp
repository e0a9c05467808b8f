// CPU kernels of two-dimensional neighbourhood attention (mmattn::na2d_*).
//
// Layout: q, k, v, out are contiguous (B, heads, H, W, D); logits/attn are (B, heads, H, W, k*k).
// Every kernel is parallel over the (B, heads, H) rows with at::parallel_for; each row is written
// by one thread only, and reductions over pixels go through per-row partial buffers summed in a
// fixed order, so results are bit-identical from run to run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <limits>

#include "../common/arith.h"
#include "../common/window.h"
#include "../ops.h"
#include "cpu_utils.h"

namespace mmattn {
namespace cpu {
namespace {

struct Geometry {
  int64_t B, heads, H, W, D, k, d;
  bool clamp;
  int64_t rows() const { return B * heads * H; }
  int64_t kk() const { return k * k; }
  int64_t R() const { return 2 * k - 1; }
};

Geometry geometry(const Tensor& x, int64_t kernel_size, int64_t dilation, bool clamp) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), kernel_size, dilation, clamp};
}

// logits[b,h,i,j,a*k+b'] = scale * q . (k[p] + rpe[h,a,b']) + rpb[h, offset]; -inf when invalid.
template <typename T>
void qk_forward(const T* q, const T* key, const T* rpb, const T* rpe, T* out, const Geometry g,
                T scale) {
  const int64_t kk = g.kk(), R = g.R(), D = g.D;
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / g.H, i = row % g.H, h = bh % g.heads;
      const AxisWindow wi = query_window(i, g.H, g.k, g.d, g.clamp);
      const T* kmap = key + bh * g.H * g.W * D;
      for (int64_t j = 0; j < g.W; ++j) {
        const AxisWindow wj = query_window(j, g.W, g.k, g.d, g.clamp);
        const T* qp = q + (row * g.W + j) * D;
        T* op = out + (row * g.W + j) * kk;
        for (int64_t a = 0; a < g.k; ++a) {
          const int64_t ki = tap_coord(wi, a, g.d);
          for (int64_t b = 0; b < g.k; ++b) {
            const int64_t kj = tap_coord(wj, b, g.d);
            if (ki < 0 || kj < 0) {
              op[a * g.k + b] = -std::numeric_limits<T>::infinity();
              continue;
            }
            T s = dot<T>(qp, kmap + (ki * g.W + kj) * D, D);
            if (rpe) s += dot<T>(qp, rpe + ((h * g.k + a) * g.k + b) * D, D);
            s *= scale;
            if (rpb) s += rpb[(h * R + rpb_index(wi, a, g.k)) * R + rpb_index(wj, b, g.k)];
            op[a * g.k + b] = s;
          }
        }
      }
    }
  });
}

// d_q, and per-row partial sums of d_rpb (rows, R, R) and d_rpe (rows, k, k, D).
template <typename T>
void qk_backward_query(const T* grad, const T* q, const T* key, const T* rpe, T* dq, T* rpb_part,
                       T* rpe_part, const Geometry g, T scale) {
  const int64_t kk = g.kk(), R = g.R(), D = g.D;
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / g.H, i = row % g.H, h = bh % g.heads;
      const AxisWindow wi = query_window(i, g.H, g.k, g.d, g.clamp);
      const T* kmap = key + bh * g.H * g.W * D;
      for (int64_t j = 0; j < g.W; ++j) {
        const AxisWindow wj = query_window(j, g.W, g.k, g.d, g.clamp);
        const T* qp = q + (row * g.W + j) * D;
        const T* gp = grad + (row * g.W + j) * kk;
        T* dqp = dq + (row * g.W + j) * D;
        for (int64_t a = 0; a < g.k; ++a) {
          const int64_t ki = tap_coord(wi, a, g.d);
          if (ki < 0) continue;
          for (int64_t b = 0; b < g.k; ++b) {
            const int64_t kj = tap_coord(wj, b, g.d);
            if (kj < 0) continue;
            const T gl = gp[a * g.k + b];
            axpy<T>(dqp, gl * scale, kmap + (ki * g.W + kj) * D, D);
            if (rpe) {
              axpy<T>(dqp, gl * scale, rpe + ((h * g.k + a) * g.k + b) * D, D);
              axpy<T>(rpe_part + (row * kk + a * g.k + b) * D, gl * scale, qp, D);
            }
            if (rpb_part) rpb_part[(row * R + rpb_index(wi, a, g.k)) * R + rpb_index(wj, b, g.k)] += gl;
          }
        }
      }
    }
  });
}

// Visits, for key (pi, pj), every query (qi, qj) whose window holds it, with the window slot.
template <typename F>
inline void for_each_inverse(int64_t pi, int64_t pj, const Geometry& g, F&& visit) {
  const InverseRange ri = inverse_range(pi, g.H, g.k, g.d, g.clamp);
  const InverseRange rj = inverse_range(pj, g.W, g.k, g.d, g.clamp);
  for (int64_t iq = ri.lo; iq <= ri.hi; ++iq) {
    const int64_t a = inverse_tap(ri, iq, g.k, g.clamp);
    if (a < 0) continue;
    const int64_t qi = inverse_coord(ri, iq, g.d);
    for (int64_t jq = rj.lo; jq <= rj.hi; ++jq) {
      const int64_t b = inverse_tap(rj, jq, g.k, g.clamp);
      if (b < 0) continue;
      visit(qi, inverse_coord(rj, jq, g.d), a * g.k + b);
    }
  }
}

// out[key] += weight(query, slot) * src[query] over the inverse neighbourhood of each key:
// d_k (weight = scale * d_logits, src = q) and d_v (weight = attn, src = d_out).
template <typename T>
void inverse_accumulate(const T* weight, const T* src, T* out, const Geometry g, T scale) {
  const int64_t kk = g.kk(), D = g.D;
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / g.H, pi = row % g.H;
      const int64_t base = bh * g.H * g.W;
      for (int64_t pj = 0; pj < g.W; ++pj) {
        T* op = out + (row * g.W + pj) * D;
        for_each_inverse(pi, pj, g, [&](int64_t qi, int64_t qj, int64_t slot) {
          const int64_t qidx = base + qi * g.W + qj;
          axpy<T>(op, scale * weight[qidx * kk + slot], src + qidx * D, D);
        });
      }
    }
  });
}

// out[b,h,i,j] = sum over valid slots attn[.., slot] * v[key(slot)]
template <typename T>
void av_forward(const T* attn, const T* v, T* out, const Geometry g) {
  const int64_t kk = g.kk(), D = g.D;
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / g.H, i = row % g.H;
      const AxisWindow wi = query_window(i, g.H, g.k, g.d, g.clamp);
      const T* vmap = v + bh * g.H * g.W * D;
      for (int64_t j = 0; j < g.W; ++j) {
        const AxisWindow wj = query_window(j, g.W, g.k, g.d, g.clamp);
        const T* ap = attn + (row * g.W + j) * kk;
        T* op = out + (row * g.W + j) * D;
        std::memset(op, 0, sizeof(T) * D);
        for (int64_t a = 0; a < g.k; ++a) {
          const int64_t ki = tap_coord(wi, a, g.d);
          if (ki < 0) continue;
          for (int64_t b = 0; b < g.k; ++b) {
            const int64_t kj = tap_coord(wj, b, g.d);
            if (kj < 0) continue;
            axpy<T>(op, ap[a * g.k + b], vmap + (ki * g.W + kj) * D, D);
          }
        }
      }
    }
  });
}

// d_attn[.., slot] = d_out . v[key(slot)], zero on invalid slots.
template <typename T>
void av_backward_attn(const T* grad, const T* v, T* dattn, const Geometry g) {
  const int64_t kk = g.kk(), D = g.D;
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / g.H, i = row % g.H;
      const AxisWindow wi = query_window(i, g.H, g.k, g.d, g.clamp);
      const T* vmap = v + bh * g.H * g.W * D;
      for (int64_t j = 0; j < g.W; ++j) {
        const AxisWindow wj = query_window(j, g.W, g.k, g.d, g.clamp);
        const T* gp = grad + (row * g.W + j) * D;
        T* dp = dattn + (row * g.W + j) * kk;
        for (int64_t a = 0; a < g.k; ++a) {
          const int64_t ki = tap_coord(wi, a, g.d);
          for (int64_t b = 0; b < g.k; ++b) {
            const int64_t kj = tap_coord(wj, b, g.d);
            dp[a * g.k + b] = (ki < 0 || kj < 0) ? T(0) : dot<T>(gp, vmap + (ki * g.W + kj) * D, D);
          }
        }
      }
    }
  });
}

// Inference: logits, softmax and aggregation in one pass with an online softmax per query.
template <typename T>
void fused_forward(const T* q, const T* key, const T* v, const T* rpb, const T* rpe, const T* bias,
                   T* out, const Geometry g, T scale) {
  const int64_t kk = g.kk(), R = g.R(), D = g.D;
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / g.H, i = row % g.H, h = bh % g.heads;
      const AxisWindow wi = query_window(i, g.H, g.k, g.d, g.clamp);
      const T* kmap = key + bh * g.H * g.W * D;
      const T* vmap = v + bh * g.H * g.W * D;
      for (int64_t j = 0; j < g.W; ++j) {
        const AxisWindow wj = query_window(j, g.W, g.k, g.d, g.clamp);
        const T* qp = q + (row * g.W + j) * D;
        T* op = out + (row * g.W + j) * D;
        std::memset(op, 0, sizeof(T) * D);
        T m = -std::numeric_limits<T>::infinity(), l = 0, rescale, weight;
        for (int64_t a = 0; a < g.k; ++a) {
          const int64_t ki = tap_coord(wi, a, g.d);
          if (ki < 0) continue;
          for (int64_t b = 0; b < g.k; ++b) {
            const int64_t kj = tap_coord(wj, b, g.d);
            if (kj < 0) continue;
            T s = dot<T>(qp, kmap + (ki * g.W + kj) * D, D);
            if (rpe) s += dot<T>(qp, rpe + ((h * g.k + a) * g.k + b) * D, D);
            s *= scale;
            if (rpb) s += rpb[(h * R + rpb_index(wi, a, g.k)) * R + rpb_index(wj, b, g.k)];
            if (bias) s += bias[(row * g.W + j) * kk + a * g.k + b];
            online_softmax_step<T>(s, m, l, rescale, weight);
            if (rescale != T(1))
              for (int64_t c = 0; c < D; ++c) op[c] *= rescale;
            axpy<T>(op, weight, vmap + (ki * g.W + kj) * D, D);
          }
        }
        const T inv = T(1) / l;
        for (int64_t c = 0; c < D; ++c) op[c] *= inv;
      }
    }
  });
}

}  // namespace

Tensor na2d_qk_cpu(const Tensor& q_in, const Tensor& k_in, const OptTensor& rpb_in,
                   const OptTensor& rpe_in, int64_t kernel_size, int64_t dilation, bool clamp,
                   double scale) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, clamp);
  check_na2d_extras(q_in, rpb_in, rpe_in, std::nullopt, kernel_size, clamp);
  const Tensor q = compute_dtype(q_in), k = compute_dtype(k_in);
  const OptTensor rpb = compute_dtype(rpb_in), rpe = compute_dtype(rpe_in);
  const Geometry g = geometry(q, kernel_size, dilation, clamp);
  Tensor out = at::empty({g.B, g.heads, g.H, g.W, g.kk()}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_qk_cpu", [&] {
    qk_forward<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), data_or_null<scalar_t>(rpb),
                         data_or_null<scalar_t>(rpe), out.data_ptr<scalar_t>(), g,
                         static_cast<scalar_t>(scale));
  });
  return out.to(q_in.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor, Tensor> na2d_qk_backward_cpu(
    const Tensor& grad_in, const Tensor& q_in, const Tensor& k_in, const OptTensor& rpe_in,
    int64_t kernel_size, int64_t dilation, bool clamp, double scale, bool with_rpb) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, clamp);
  check_na2d_attn(grad_in, q_in, kernel_size);
  check_na2d_extras(q_in, std::nullopt, rpe_in, std::nullopt, kernel_size, clamp);
  const Tensor grad = compute_dtype(grad_in), q = compute_dtype(q_in), k = compute_dtype(k_in);
  const OptTensor rpe = compute_dtype(rpe_in);
  const Geometry g = geometry(q, kernel_size, dilation, clamp);
  Tensor dq = at::zeros_like(q), dk = at::zeros_like(k);
  Tensor rpb_part = with_rpb ? at::zeros({g.B, g.heads, g.H, g.R(), g.R()}, q.options()) : Tensor();
  Tensor rpe_part = rpe.has_value() ? at::zeros({g.B, g.heads, g.H, g.kk(), g.D}, q.options())
                                    : Tensor();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_qk_backward_cpu", [&] {
    const auto s = static_cast<scalar_t>(scale);
    qk_backward_query<scalar_t>(
        grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
        data_or_null<scalar_t>(rpe), dq.data_ptr<scalar_t>(),
        with_rpb ? rpb_part.data_ptr<scalar_t>() : nullptr,
        rpe.has_value() ? rpe_part.data_ptr<scalar_t>() : nullptr, g, s);
    inverse_accumulate<scalar_t>(grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                                 dk.data_ptr<scalar_t>(), g, s);
  });
  const auto dtype = q_in.scalar_type();
  Tensor drpb = with_rpb ? rpb_part.sum({0, 2}).to(dtype) : none_like(q_in);
  Tensor drpe = rpe.has_value()
                    ? rpe_part.sum({0, 2}).view({g.heads, g.k, g.k, g.D}).to(dtype)
                    : none_like(q_in);
  return {dq.to(dtype), dk.to(dtype), drpb, drpe};
}

Tensor na2d_av_cpu(const Tensor& attn_in, const Tensor& v_in, int64_t kernel_size,
                   int64_t dilation, bool clamp) {
  check_na2d_qkv(v_in, v_in, kernel_size, dilation, clamp);
  check_na2d_attn(attn_in, v_in, kernel_size);
  const Tensor attn = compute_dtype(attn_in), v = compute_dtype(v_in);
  const Geometry g = geometry(v, kernel_size, dilation, clamp);
  Tensor out = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_av_cpu", [&] {
    av_forward<scalar_t>(attn.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                         out.data_ptr<scalar_t>(), g);
  });
  return out.to(v_in.scalar_type());
}

std::tuple<Tensor, Tensor> na2d_av_backward_cpu(const Tensor& grad_in, const Tensor& attn_in,
                                                const Tensor& v_in, int64_t kernel_size,
                                                int64_t dilation, bool clamp) {
  check_na2d_qkv(v_in, grad_in, kernel_size, dilation, clamp);
  check_na2d_attn(attn_in, v_in, kernel_size);
  const Tensor grad = compute_dtype(grad_in), attn = compute_dtype(attn_in),
               v = compute_dtype(v_in);
  const Geometry g = geometry(v, kernel_size, dilation, clamp);
  Tensor dattn = at::empty_like(attn), dv = at::zeros_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_av_backward_cpu", [&] {
    av_backward_attn<scalar_t>(grad.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                               dattn.data_ptr<scalar_t>(), g);
    inverse_accumulate<scalar_t>(attn.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                 dv.data_ptr<scalar_t>(), g, scalar_t(1));
  });
  const auto dtype = v_in.scalar_type();
  return {dattn.to(dtype), dv.to(dtype)};
}

Tensor na2d_fused_cpu(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                      const OptTensor& rpb_in, const OptTensor& rpe_in, const OptTensor& bias_in,
                      int64_t kernel_size, int64_t dilation, bool clamp, double scale) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, clamp);
  check_na2d_qkv(q_in, v_in, kernel_size, dilation, clamp);
  check_na2d_extras(q_in, rpb_in, rpe_in, bias_in, kernel_size, clamp);
  const Tensor q = compute_dtype(q_in), k = compute_dtype(k_in), v = compute_dtype(v_in);
  const OptTensor rpb = compute_dtype(rpb_in), rpe = compute_dtype(rpe_in),
                  bias = compute_dtype(bias_in);
  const Geometry g = geometry(q, kernel_size, dilation, clamp);
  Tensor out = at::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_fused_cpu", [&] {
    fused_forward<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                            data_or_null<scalar_t>(rpb), data_or_null<scalar_t>(rpe),
                            data_or_null<scalar_t>(bias), out.data_ptr<scalar_t>(), g,
                            static_cast<scalar_t>(scale));
  });
  return out.to(q_in.scalar_type());
}

}  // namespace cpu
}  // namespace mmattn

TORCH_LIBRARY_IMPL(mmattn, CPU, m) {
  m.impl("na2d_qk", &mmattn::cpu::na2d_qk_cpu);
  m.impl("na2d_qk_backward", &mmattn::cpu::na2d_qk_backward_cpu);
  m.impl("na2d_av", &mmattn::cpu::na2d_av_cpu);
  m.impl("na2d_av_backward", &mmattn::cpu::na2d_av_backward_cpu);
  m.impl("na2d_fused", &mmattn::cpu::na2d_fused_cpu);
}
