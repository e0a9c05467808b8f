// Vectorised row kernels of ELSA's ghost-head aggregation (see ghost_kernels.h):
//
//   out[b,c,i,j] = sum_{u,v} x[b,c,i+(u-r)d,j+(v-r)d] * (attn[b,g,u*k+v,i,j] * M[c,u,v] + S[c,u,v])
//
// Included once per CPU capability (like na2d_vec.h). Inner loops run along the contiguous W
// axis with at::vec::Vectorized<T> and a masked tail; each output plane (or channel of d_M, d_S) is
// written by one thread in a fixed order, so results are bit-identical from run to run.
#pragma once
#include <algorithm>
#include <cstring>

#include "ghost_kernels.h"
#include "vec_common.h"

namespace mmattn {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// Each tap (u, v) is applied to a whole (H, W) plane at once, as one loop over the flattened
// plane: a tap reads the plane shifted by du*W + dv, and mask_v (1 where column j + dv lies inside
// [0, W), else 0) removes the reads that wrap into the neighbouring row. One long loop per tap
// instead of one short loop per (row, tap) keeps the vector units busy on small maps.

// The flattened range [n0, n1) of the positions whose tap at row offset du and plane shift
// `shift` lies inside the plane.
inline void tap_span(const GhostGeometry& g, int64_t du, int64_t shift, int64_t& n0,
                     int64_t& n1) {
  const int64_t HW = g.H * g.W;
  n0 = std::max<int64_t>(std::max<int64_t>(0, -du) * g.W, -shift);
  n1 = std::min<int64_t>(std::min<int64_t>(g.H, g.H - du) * g.W, HW - shift);
}

// y[n] += x[n] * (a[n] * m + s) * mask[n],  n < len; kMask false: a tap with column offset 0,
// whose mask is all ones.
template <typename T, bool kMask>
inline void weighted_span(T* y, const T* x, const T* a, const T* mask, T m, T s, int64_t len) {
  using V = Vectorized<T>;
  const V vm(m), vs(s);
  int64_t n = 0;
  for (; n + V::size() <= len; n += V::size()) {
    V w = at::vec::fmadd(V::loadu(a + n), vm, vs);
    if constexpr (kMask) w = w * V::loadu(mask + n);
    at::vec::fmadd(V::loadu(x + n), w, V::loadu(y + n)).store(y + n);
  }
  if (n < len) {
    const int64_t c = len - n;
    const V w = at::vec::fmadd(V::loadu(a + n, c), vm, vs) * V::loadu(mask + n, c);
    at::vec::fmadd(V::loadu(x + n, c), w, V::loadu(y + n, c)).store(y + n, c);
  }
}

template <typename T>
inline void weighted_span(T* y, const T* x, const T* a, const T* mask, T m, T s, int64_t len,
                          bool wraps) {
  if (wraps)
    weighted_span<T, true>(y, x, a, mask, m, s, len);
  else
    weighted_span<T, false>(y, x, a, mask, m, s, len);
}

// The forward (out[n] += x[n + shift] * w[n]) and d_x (dx[n + shift] += grad[n] * w[n]) over
// the (b, c) planes [r0, r1): the same taps, read or written at the shift.
template <typename T, bool kTranspose>
void tap_planes(const GhostGeometry& g, const GhostBuffers<T>& p, const T* src, int64_t r0,
                int64_t r1) {
  const int64_t kk = g.kk(), HW = g.H * g.W;
  for (int64_t bc = r0; bc < r1; ++bc) {
    const int64_t b = bc / g.C, c = bc % g.C, grp = c / g.cpg();
    T* out = p.out + bc * HW;
    std::memset(out, 0, sizeof(T) * HW);
    for (int64_t s = 0; s < kk; ++s) {
      const int64_t u = s / g.k, v = s % g.k, du = (u - g.r()) * g.d, off = (v - g.r()) * g.d;
      const int64_t shift = du * g.W + off;
      int64_t n0, n1;
      tap_span(g, du, shift, n0, n1);
      if (n1 <= n0) continue;
      const T m = p.mul ? p.mul[c * kk + s] : T(1), a = p.add ? p.add[c * kk + s] : T(0);
      const T* attn = p.attn + ((b * g.G + grp) * kk + s) * HW + n0;
      const T* mask = p.masks + v * HW + n0;
      const T* x = src + bc * HW + n0;
      if (kTranspose)
        weighted_span<T>(out + n0 + shift, x, attn, mask, m, a, n1 - n0, off != 0);
      else
        weighted_span<T>(out + n0, x + shift, attn, mask, m, a, n1 - n0, off != 0);
    }
  }
}

template <typename T>
void forward_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0, int64_t r1) {
  tap_planes<T, false>(g, p, p.x, r0, r1);
}

// d_x: the transpose of the forward, plane by plane of x.
template <typename T>
void backward_x_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0, int64_t r1) {
  tap_planes<T, true>(g, p, p.grad, r0, r1);
}

// One pass per (b, group, s) plane computes t = grad[b,c] * x[b,c] shifted (masked) for the
// group's channels and from it
//   d_attn[b,g,s] = sum_c t * M[c,s]
// and, when the ghost tensors need gradients, the batch-b partial sums
//   part_M[b,c,s] = sum_n t * attn[b,g,s],  part_S[b,c,s] = sum_n t
// which the entry point adds over b in a fixed order (d_M, d_S).
template <typename T>
void backward_attn_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0,
                        int64_t r1) {
  using V = Vectorized<T>;
  const int64_t kk = g.kk(), HW = g.H * g.W;
  const bool filters = p.part_mul != nullptr;
  for (int64_t plane = r0; plane < r1; ++plane) {  // (b, group, s)
    const int64_t bg = plane / kk, s = plane % kk, b = bg / g.G, grp = bg % g.G;
    const int64_t u = s / g.k, v = s % g.k, du = (u - g.r()) * g.d, off = (v - g.r()) * g.d;
    const int64_t shift = du * g.W + off;
    T* da = p.dattn + plane * HW;
    std::memset(da, 0, sizeof(T) * HW);
    int64_t n0, n1;
    tap_span(g, du, shift, n0, n1);
    const int64_t len = std::max<int64_t>(0, n1 - n0);
    const T* at = p.attn + plane * HW + n0;
    const T* mk = p.masks + v * HW + n0;
    const bool wraps = off != 0;  // a tap with column offset 0 has an all-ones mask
    for (int64_t c = grp * g.cpg(); c < (grp + 1) * g.cpg(); ++c) {
      const T m = p.mul ? p.mul[c * kk + s] : T(1);
      const int64_t base = (b * g.C + c) * HW;
      const T* gr = p.grad + base + n0;
      const T* xs = p.x + base + n0 + shift;
      T* y = da + n0;
      const V vm(m);
      V sm(T(0)), sa(T(0));
      int64_t n = 0;
      for (; n + V::size() <= len; n += V::size()) {
        V t = V::loadu(gr + n) * V::loadu(xs + n);
        if (wraps) t = t * V::loadu(mk + n);
        at::vec::fmadd(t, vm, V::loadu(y + n)).store(y + n);
        if (filters) {
          sa = sa + t;
          sm = at::vec::fmadd(t, V::loadu(at + n), sm);
        }
      }
      if (n < len) {
        const int64_t cnt = len - n;
        const V t = V::loadu(gr + n, cnt) * V::loadu(xs + n, cnt) * V::loadu(mk + n, cnt);
        at::vec::fmadd(t, vm, V::loadu(y + n, cnt)).store(y + n, cnt);
        if (filters) {
          sa = sa + t;
          sm = at::vec::fmadd(t, V::loadu(at + n, cnt), sm);
        }
      }
      if (filters) {
        p.part_mul[(b * g.C + c) * kk + s] = lane_sum<T>(sm);
        p.part_add[(b * g.C + c) * kk + s] = lane_sum<T>(sa);
      }
    }
  }
}

}  // namespace

#define MMATTN_GHOST_KERNEL_DEFS(T)                                                          \
  void ghost_forward_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0,      \
                          int64_t r1) {                                                      \
    forward_rows<T>(g, p, r0, r1);                                                           \
  }                                                                                          \
  void ghost_backward_x_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0,   \
                             int64_t r1) {                                                   \
    backward_x_rows<T>(g, p, r0, r1);                                                        \
  }                                                                                          \
  void ghost_backward_attn_rows(const GhostGeometry& g, const GhostBuffers<T>& p,            \
                                int64_t r0, int64_t r1) {                                    \
    backward_attn_rows<T>(g, p, r0, r1);                                                     \
  }

MMATTN_GHOST_KERNEL_DEFS(float)
MMATTN_GHOST_KERNEL_DEFS(double)
#undef MMATTN_GHOST_KERNEL_DEFS

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmattn
