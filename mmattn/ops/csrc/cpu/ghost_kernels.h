// Interface between the ghost_head_aggregate CPU entry points (ghost_head.cpp) and their
// vectorised row kernels (ghost_vec.h), compiled once per CPU capability like na2d's
// (na2d_kernels.h) and picked with the same run-time choice (capability.h: cpu_build()).
#pragma once
#include <cstdint>

namespace mmattn {
namespace cpu {

// Output rows per work item of the aggregation and of d_attn.
constexpr int64_t kBandRows = 8;
// Channels per work item of the ghost-tensor gradients.
constexpr int64_t kGhostItemChannels = 4;

// Batch, channel and pixel strides of a (B, C, H, W) map.
struct MapStrides {
  int64_t b, c, p;
};

struct GhostGeometry {
  int64_t B, C, G, H, W, k, d;
  MapStrides nchw() const { return {C * H * W, H * W, 1}; }
  int64_t kk() const { return k * k; }
  int64_t r() const { return k / 2; }
  int64_t cpg() const { return C / G; }
  int64_t bands() const { return (H + kBandRows - 1) / kBandRows; }
  // Blocks of kGhostItemChannels channels per head group (the ghost-gradient work items).
  int64_t ghost_blocks() const { return (cpg() + kGhostItemChannels - 1) / kGhostItemChannels; }
};

template <typename T>
struct GhostBuffers {
  const T* x = nullptr;     // v (B, C, H, W)
  // x's strides as the forwards read it (NCHW contiguous; the inference forward of the softmax
  // also takes channels-last maps, channel stride 1); the backward kernels read x as NCHW
  MapStrides xs{0, 0, 1};
  const T* attn = nullptr;  // (B, G, k*k, H, W); the logits for forward_softmax
  const T* attn_bias = nullptr;  // forward_softmax: (G, k*k) bias of the logits, or null
  const T* grad = nullptr;  // d_out (B, C, H, W)
  // M and S (C, k, k): M null and S zeros when the op was given none; for d_x, mirrored over
  // the taps (M[c, k*k - 1 - s])
  const T* mul = nullptr;
  const T* add = nullptr;
  T* out = nullptr;         // forward out, or d_x
  T* dattn = nullptr;
  // (B, C, k*k) per-batch partial sums of d_M and d_S (summed over b by the entry point), each
  // nullptr when that ghost tensor needs no gradient
  T* part_mul = nullptr;
  T* part_add = nullptr;
};

// Work items: the (B*G*bands()) bands of kBandRows output rows of one (batch, head group), all
// channels of the group, for the forward (ghost_forward_softmax_rows: the forward of
// softmax(logits + bias) over the taps, attn holding the logits), d_x and d_attn;
// backward_ghost: the (B*G*ghost_blocks()) blocks of kGhostItemChannels channels of one group,
// for the per-batch partial sums of d_M and d_S.
#define MMATTN_GHOST_KERNEL_DECLS(T)                                                       \
  void ghost_forward_rows(const GhostGeometry&, const GhostBuffers<T>&, int64_t, int64_t);  \
  void ghost_forward_softmax_rows(const GhostGeometry&, const GhostBuffers<T>&, int64_t,   \
                                  int64_t);                                                \
  void ghost_backward_x_rows(const GhostGeometry&, const GhostBuffers<T>&, int64_t,        \
                             int64_t);                                                     \
  void ghost_backward_attn_rows(const GhostGeometry&, const GhostBuffers<T>&, int64_t,     \
                                int64_t);                                                  \
  void ghost_backward_ghost_rows(const GhostGeometry&, const GhostBuffers<T>&, int64_t,    \
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
