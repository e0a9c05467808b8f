// Interface between the ghost_head_aggregate CPU entry points (ghost_head.cpp) and their
// vectorised row kernels (ghost_vec.h), compiled once per CPU capability like na2d's
// (na2d_kernels.h) and picked with the same run-time choice (cpu_build()).
#pragma once
#include <algorithm>
#include <cstdint>

namespace mmattn {
namespace cpu {

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
struct GhostBuffers {
  const T* x = nullptr;     // v (B, C, H, W)
  const T* attn = nullptr;  // (B, G, k*k, H, W)
  const T* grad = nullptr;  // d_out (B, C, H, W)
  const T* mul = nullptr;   // M (C, k, k) or nullptr (1)
  const T* add = nullptr;   // S (C, k, k) or nullptr (0)
  const T* masks = nullptr;  // (k, H*W): 1 where column j + (v - k/2)*d lies inside [0, W)
  T* out = nullptr;         // forward out, or d_x
  T* dattn = nullptr;
  // (B, C, k*k) per-batch partial sums of d_M and d_S (summed over b by the entry point), or
  // nullptr when the ghost tensors need no gradient
  T* part_mul = nullptr;
  T* part_add = nullptr;
};

// Work items: forward and backward_x: the (B*C) planes of out / d_x; backward_attn: the
// (B*G*k*k) planes of d_attn, with the per-batch partial sums of d_M and d_S.
#define MMATTN_GHOST_KERNEL_DECLS(T)                                                       \
  void ghost_forward_rows(const GhostGeometry&, const GhostBuffers<T>&, int64_t, int64_t);  \
  void ghost_backward_x_rows(const GhostGeometry&, const GhostBuffers<T>&, int64_t,        \
                             int64_t);                                                     \
  void ghost_backward_attn_rows(const GhostGeometry&, const GhostBuffers<T>&, int64_t,     \
                                int64_t);
#define MMATTN_GHOST_KERNEL_DECLS_ALL \
  MMATTN_GHOST_KERNEL_DECLS(float)    \
  MMATTN_GHOST_KERNEL_DECLS(double)

namespace DEFAULT { MMATTN_GHOST_KERNEL_DECLS_ALL }
#ifdef MMATTN_HAVE_AVX2
namespace AVX2 { MMATTN_GHOST_KERNEL_DECLS_ALL }
#endif
#ifdef MMATTN_HAVE_AVX512
namespace AVX512 { MMATTN_GHOST_KERNEL_DECLS_ALL }
#endif

}  // namespace cpu
}  // namespace mmattn
