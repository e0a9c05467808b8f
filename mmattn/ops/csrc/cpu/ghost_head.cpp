// CPU kernels of ELSA's ghost-head neighbourhood aggregation (mmattn::ghost_head_aggregate).
//
//   out[b,c,i,j] = sum_{u,v} x[b,c,i+(u-r)d,j+(v-r)d] * (attn[b,g,u*k+v,i,j] * M[c,u,v] + S[c,u,v])
//
// Layout: x, out (B, C, H, W); attn (B, G, k*k, H, W); M, S (C, k, k), broadcast over the batch.
// Inner loops run along the contiguous W axis. Each output row is written by one thread; the
// ghost-tensor gradients are reduced per channel by one thread each, so results are
// deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../common/arith.h"
#include "../ops.h"
#include "cpu_utils.h"

namespace mmattn {
namespace cpu {
namespace {

struct GhostGeometry {
  int64_t B, C, G, H, W, k, d;
  int64_t kk() const { return k * k; }
  int64_t r() const { return k / 2; }
  int64_t cpg() const { return C / G; }
  // Columns j whose tap j + off lies inside [0, W).
  int64_t j_begin(int64_t off) const { return std::max<int64_t>(0, -off); }
  int64_t j_end(int64_t off) const { return std::min<int64_t>(W, W - off); }
};

template <typename T>
void ghost_forward(const T* x, const T* attn, const T* mul, const T* add, T* out,
                   const GhostGeometry g) {
  const int64_t kk = g.kk(), HW = g.H * g.W;
  at::parallel_for(0, g.B * g.C * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bc = row / g.H, i = row % g.H, b = bc / g.C, c = bc % g.C;
      const int64_t grp = c / g.cpg();
      T* orow = out + row * g.W;
      std::memset(orow, 0, sizeof(T) * g.W);
      for (int64_t u = 0; u < g.k; ++u) {
        const int64_t ii = i + (u - g.r()) * g.d;
        if (ii < 0 || ii >= g.H) continue;
        const T* xrow = x + bc * HW + ii * g.W;
        for (int64_t v = 0; v < g.k; ++v) {
          const int64_t s = u * g.k + v, off = (v - g.r()) * g.d;
          const T m = mul ? mul[c * kk + s] : T(1), a = add ? add[c * kk + s] : T(0);
          const T* arow = attn + ((b * g.G + grp) * kk + s) * HW + i * g.W;
          for (int64_t j = g.j_begin(off); j < g.j_end(off); ++j)
            orow[j] += xrow[j + off] * ghost_weight<T>(arow[j], m, a);
        }
      }
    }
  });
}

// d_x: the transpose of the forward, row by row of x.
template <typename T>
void ghost_backward_x(const T* grad, const T* attn, const T* mul, const T* add, T* dx,
                      const GhostGeometry g) {
  const int64_t kk = g.kk(), HW = g.H * g.W;
  at::parallel_for(0, g.B * g.C * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bc = row / g.H, pi = row % g.H, b = bc / g.C, c = bc % g.C;
      const int64_t grp = c / g.cpg();
      T* dxrow = dx + row * g.W;
      std::memset(dxrow, 0, sizeof(T) * g.W);
      for (int64_t u = 0; u < g.k; ++u) {
        const int64_t i = pi - (u - g.r()) * g.d;  // the query row that reads row pi at tap u
        if (i < 0 || i >= g.H) continue;
        const T* grow = grad + bc * HW + i * g.W;
        for (int64_t v = 0; v < g.k; ++v) {
          const int64_t s = u * g.k + v, off = (v - g.r()) * g.d;
          const T m = mul ? mul[c * kk + s] : T(1), a = add ? add[c * kk + s] : T(0);
          const T* arow = attn + ((b * g.G + grp) * kk + s) * HW + i * g.W;
          // dx[pj] += grad[j] * w[j] with pj = j + off
          T* dxs = dxrow + off;
          for (int64_t j = g.j_begin(off); j < g.j_end(off); ++j)
            dxs[j] += grow[j] * ghost_weight<T>(arow[j], m, a);
        }
      }
    }
  });
}

// d_attn[b,g,s,i,j] = sum_{c in group g} grad[b,c,i,j] * x[b,c,tap] * M[c,s]
template <typename T>
void ghost_backward_attn(const T* grad, const T* x, const T* mul, T* dattn, const GhostGeometry g) {
  const int64_t kk = g.kk(), HW = g.H * g.W;
  at::parallel_for(0, g.B * g.G * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bg = row / g.H, i = row % g.H, b = bg / g.G, grp = bg % g.G;
      for (int64_t s = 0; s < kk; ++s) {
        const int64_t u = s / g.k, v = s % g.k, off = (v - g.r()) * g.d;
        const int64_t ii = i + (u - g.r()) * g.d;
        T* darow = dattn + (bg * kk + s) * HW + i * g.W;
        std::memset(darow, 0, sizeof(T) * g.W);
        if (ii < 0 || ii >= g.H) continue;
        for (int64_t c = grp * g.cpg(); c < (grp + 1) * g.cpg(); ++c) {
          const T m = mul ? mul[c * kk + s] : T(1);
          const T* grow = grad + (b * g.C + c) * HW + i * g.W;
          const T* xrow = x + (b * g.C + c) * HW + ii * g.W + off;
          for (int64_t j = g.j_begin(off); j < g.j_end(off); ++j) darow[j] += grow[j] * xrow[j] * m;
        }
      }
    }
  });
}

// d_M[c,s] = sum_{b,i,j} grad * x[tap] * attn,  d_S[c,s] = sum_{b,i,j} grad * x[tap]
template <typename T>
void ghost_backward_filters(const T* grad, const T* x, const T* attn, T* dmul, T* dadd,
                            const GhostGeometry g) {
  const int64_t kk = g.kk(), HW = g.H * g.W;
  at::parallel_for(0, g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t grp = c / g.cpg();
      for (int64_t s = 0; s < kk; ++s) {
        const int64_t u = s / g.k, v = s % g.k, off = (v - g.r()) * g.d;
        T sm = 0, sa = 0;
        for (int64_t b = 0; b < g.B; ++b) {
          for (int64_t i = 0; i < g.H; ++i) {
            const int64_t ii = i + (u - g.r()) * g.d;
            if (ii < 0 || ii >= g.H) continue;
            const T* grow = grad + (b * g.C + c) * HW + i * g.W;
            const T* xrow = x + (b * g.C + c) * HW + ii * g.W + off;
            const T* arow = attn + ((b * g.G + grp) * kk + s) * HW + i * g.W;
            for (int64_t j = g.j_begin(off); j < g.j_end(off); ++j) {
              const T t = grow[j] * xrow[j];
              sa += t;
              sm += t * arow[j];
            }
          }
        }
        if (dmul) dmul[c * kk + s] = sm;
        if (dadd) dadd[c * kk + s] = sa;
      }
    }
  });
}

GhostGeometry ghost_geometry(const Tensor& v, const Tensor& attn, int64_t k, int64_t d) {
  return {v.size(0), v.size(1), attn.size(1), v.size(2), v.size(3), k, d};
}

}  // namespace

Tensor ghost_head_aggregate_cpu(const Tensor& v_in, const Tensor& attn_in, const OptTensor& mul_in,
                                const OptTensor& add_in, int64_t kernel_size, int64_t dilation) {
  check_ghost(v_in, attn_in, mul_in, add_in, kernel_size, dilation);
  const Tensor v = compute_dtype(v_in), attn = compute_dtype(attn_in);
  const OptTensor mul = compute_dtype(mul_in), add = compute_dtype(add_in);
  const GhostGeometry g = ghost_geometry(v, attn, kernel_size, dilation);
  Tensor out = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "ghost_head_aggregate_cpu", [&] {
    ghost_forward<scalar_t>(v.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                            data_or_null<scalar_t>(mul), data_or_null<scalar_t>(add),
                            out.data_ptr<scalar_t>(), g);
  });
  return out.to(v_in.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor, Tensor> ghost_head_aggregate_backward_cpu(
    const Tensor& grad_in, const Tensor& v_in, const Tensor& attn_in, const OptTensor& mul_in,
    const OptTensor& add_in, int64_t kernel_size, int64_t dilation, bool with_mul, bool with_add) {
  check_ghost(v_in, attn_in, mul_in, add_in, kernel_size, dilation);
  TORCH_CHECK(grad_in.sizes() == v_in.sizes(), "ghost_head_aggregate_backward: grad must match v");
  const Tensor grad = compute_dtype(grad_in), v = compute_dtype(v_in),
               attn = compute_dtype(attn_in);
  const OptTensor mul = compute_dtype(mul_in), add = compute_dtype(add_in);
  const GhostGeometry g = ghost_geometry(v, attn, kernel_size, dilation);
  Tensor dv = at::empty_like(v), dattn = at::empty_like(attn);
  Tensor dmul = with_mul ? at::empty({g.C, g.k, g.k}, v.options()) : Tensor();
  Tensor dadd = with_add ? at::empty({g.C, g.k, g.k}, v.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "ghost_head_aggregate_backward_cpu", [&] {
    const scalar_t* m = data_or_null<scalar_t>(mul);
    ghost_backward_x<scalar_t>(grad.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), m,
                               data_or_null<scalar_t>(add), dv.data_ptr<scalar_t>(), g);
    ghost_backward_attn<scalar_t>(grad.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), m,
                                  dattn.data_ptr<scalar_t>(), g);
    if (with_mul || with_add)
      ghost_backward_filters<scalar_t>(grad.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                       attn.data_ptr<scalar_t>(),
                                       with_mul ? dmul.data_ptr<scalar_t>() : nullptr,
                                       with_add ? dadd.data_ptr<scalar_t>() : nullptr, g);
  });
  const auto dtype = v_in.scalar_type();
  return {dv.to(dtype), dattn.to(dtype), with_mul ? dmul.to(dtype) : none_like(v_in),
          with_add ? dadd.to(dtype) : none_like(v_in)};
}

}  // namespace cpu
}  // namespace mmattn

TORCH_LIBRARY_IMPL(mmattn, CPU, m) {
  m.impl("ghost_head_aggregate", &mmattn::cpu::ghost_head_aggregate_cpu);
  m.impl("ghost_head_aggregate_backward", &mmattn::cpu::ghost_head_aggregate_backward_cpu);
}
