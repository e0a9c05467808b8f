// Interface between the na2d CPU entry points (na2d.cpp) and their vectorised row kernels
// (na2d_vec.h), which are compiled once per CPU capability (DEFAULT, AVX2, AVX512) and picked at
// run time from ATen's capability (at::native::get_cpu_capability(), ATEN_CPU_CAPABILITY).
//
// Strip layout. The kernels read q, k, v, d_out (and the k*k weights of the backward passes) in
// a "strip" layout: per (batch, head, row) plane a (C, Wp) block, C = D or k*k, W-contiguous, with
// P = (k/2)*dilation zero columns on the left and at least P on the right, and Wp - 2P a multiple
// of 16 (the widest vector). The D-channel inputs come in the op layout, and each thread copies
// the rows it is about to read into a small ring of such blocks (StripRows, OpRows), so each
// row crosses memory once and is read from cache by the k rows whose windows hold it; the k*k
// weights are whole-tensor strip copies (na2d.cpp: to_strip). A vector of L consecutive queries
// j0..j0+L-1 then reads the keys of window column b with one unaligned load at column
// P + j0 + (b - k/2)*dilation, for every d. This holds for every query whose window is not
// shifted by the border, that is for all of them with border 'mask' (taps outside the map are
// masked) and for the columns [P, W - P) with border 'clamp'; the few clamped border columns are
// computed per query ("scalar fix-ups").
#pragma once
#include <cstdint>

#include "capability.h"

// gcc turns zero-fill and copy loops into memset/memcpy calls, which cost more than the loop on
// the short rows of the strip layout (na2d.cpp: padded_row); this attribute keeps the loops.
#if defined(__GNUC__) && !defined(__clang__)
#define MMATTN_NO_LIBCALL_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define MMATTN_NO_LIBCALL_LOOPS
#endif

namespace mmattn {
namespace cpu {

// na2d's kernel build: cpu_build() (capability.h), except that it runs the AVX2 build on CPUs
// that split AVX-512 instructions into 256-bit halves (na2d.cpp; MMATTN_NA2D_KERNELS chooses).
CpuBuild na2d_build();
// cpu_build_name(na2d_build()) (mmattn._C.na2d_cpu_kernels()).
const char* na2d_cpu_kernels();

struct StripGeometry {
  int64_t B, heads, H, W, D, k, d;
  bool clamp;
  int64_t P;   // left (and minimum right) zero padding, (k/2)*d
  int64_t Wp;  // padded row length: 2P + W rounded up to 16
  int64_t rows() const { return B * heads * H; }
  int64_t kk() const { return k * k; }
  int64_t r() const { return k / 2; }
  int64_t R() const { return 2 * k - 1; }
  // Clamped window columns (their window is not the centred one), 'clamp' mode only.
  bool border_col(int64_t j) const { return clamp && (j < P || j >= W - P); }
};

// The D-channel strip rows a kernel reads (q, k, v, d_out), in its per-thread ring (na2d_vec.h:
// StripRing) of n slots, n a power of two: plane row r's (D, Wp) block, from column P on, at
// base + (r & mask) * stride, mask = n - 1.
template <typename T>
struct StripRows {
  const T* base = nullptr;
  int64_t mask = 0;
  int64_t stride = 0;
  const T* operator()(int64_t r) const { return base + (r & mask) * stride; }
};

// A D-channel input in the op layout (B, heads, H, W, D) with element strides st, any strides,
// in the compute dtype: each thread copies the rows it reads into its ring (transpose_to_strip)
// as its rows come, so that the input crosses memory once and the strip rows stay in cache,
// instead of a whole-tensor strip copy.
template <typename T>
struct OpRows {
  const T* data = nullptr;
  int64_t st[5] = {0, 0, 0, 0, 0};
  // The (W, C) plane of plane row r (of the B * heads * H rows).
  const T* plane(const StripGeometry& g, int64_t r) const {
    const int64_t i = r % g.H, bh = r / g.H;
    return data + (bh / g.heads) * st[0] + (bh % g.heads) * st[1] + i * st[2];
  }
};

template <typename T>
struct Na2dBuffers {
  // The D-channel inputs in the op layout, those the kernel reads: q, or d_out for d_attn; k, or
  // v (d_attn, av); v of the fused kernel; src: q (d_k) or d_out (d_v).
  OpRows<T> q_op, k_op, v_op, src_op;
  // Their strip rows, set by the kernel (its rings).
  StripRows<T> q_s, k_s, v_s, src_s;
  const T* w_s = nullptr;  // strip layout (rows, k*k, Wp): attn or d_logits, invalid slots zeroed
  const T* w = nullptr;    // (rows, W, k*k): the same weights in the op's layout (fix-ups)
  const T* rpb = nullptr;  // (heads, 2k-1, 2k-1)
  const T* rpe = nullptr;  // (heads, k, k, D)
  // An additively separable rpe of the logits kernels, rpe[h, a, b, c] = rpe_a[h, a, c] +
  // rpe_b[h, b, c] with one of the two terms zero per (h, c) (SASA's concatenated row and column
  // tables): both (heads, k, D), set instead of rpe. q . rpe then costs 2k dot products per
  // query instead of one add per multiply-add of the k*k logits.
  const T* rpe_a = nullptr;
  const T* rpe_b = nullptr;
  // (heads, 2, 2): the channels [lo, hi) outside which rpe_a (index 0) and rpe_b (index 1) of
  // each head are zero, so the dot products skip them (SASA: the two halves of D).
  const int64_t* rpe_range = nullptr;
  const T* bias = nullptr;  // (rows, W, k*k)
  T* attn_s = nullptr;      // strip layout (rows, k*k, Wp): the fused kernel's probabilities
  T* out = nullptr;         // (B, heads, H, W, D) with strides os, or strip layout (rows, k*k, Wp)
  int64_t os[5] = {0, 0, 0, 0, 0};  // strides of out (elements); logits: unused
  T* rpb_part = nullptr;    // (rows, 2k-1, 2k-1) per-row partial sums of d_rpb
  T scale = 1;
  T invalid = 0;  // the logit of an invalid slot: -inf (na2d_qk) or 0 (d_attn)
};

// Kernels over the rows [r0, r1) of the (B*heads*H) query (or key) rows; each writes only its
// rows' outputs.
//   fused:     out = softmax(scale * q.(k + rpe) + rpb + bias) v            (inference)
//   logits:    out_s[t] = scale * q.(k[t] + rpe[t]) + rpb[t], `invalid` on invalid slots
//   aggregate: out = scale * sum_t w[t] (k[t] + rpe[t]), and d_rpb partials from w
//   inverse:   out[key] = scale * sum over the queries that see key: w[query, slot] src[query]
//   softmax_grad: out_s[t] = w_s[t] * (dP[t] - sum_t w_s[t] dP[t]), dP[t] = q_s . k_s[t]
//              (the fused training pass' d_logits; 'mask' only)
//   transpose_to_strip(in, sj, sc, out, C, P, W, Wp): one (W, C) plane with column stride sj
//              and channel stride sc into its C strip rows: out[c*Wp + P + j] = in[j*sj + c*sc],
//              zero columns [0, P) and [P + W, Wp)
#define MMATTN_NA2D_KERNEL_DECLS                                                                \
  void fused_rows(const StripGeometry&, const Na2dBuffers<float>&, int64_t, int64_t);          \
  void fused_rows(const StripGeometry&, const Na2dBuffers<double>&, int64_t, int64_t);         \
  void logits_rows(const StripGeometry&, const Na2dBuffers<float>&, int64_t, int64_t);         \
  void logits_rows(const StripGeometry&, const Na2dBuffers<double>&, int64_t, int64_t);        \
  void aggregate_rows(const StripGeometry&, const Na2dBuffers<float>&, int64_t, int64_t);      \
  void aggregate_rows(const StripGeometry&, const Na2dBuffers<double>&, int64_t, int64_t);     \
  void inverse_rows(const StripGeometry&, const Na2dBuffers<float>&, int64_t, int64_t);        \
  void inverse_rows(const StripGeometry&, const Na2dBuffers<double>&, int64_t, int64_t);       \
  void softmax_grad_rows(const StripGeometry&, const Na2dBuffers<float>&, int64_t, int64_t);   \
  void softmax_grad_rows(const StripGeometry&, const Na2dBuffers<double>&, int64_t, int64_t);  \
  void transpose_to_strip(const float*, int64_t, int64_t, float*, int64_t, int64_t, int64_t,     \
                          int64_t);                                                             \
  void transpose_to_strip(const double*, int64_t, int64_t, double*, int64_t, int64_t, int64_t,   \
                          int64_t);                                                             \
  int64_t vector_lanes_float();

namespace DEFAULT { MMATTN_NA2D_KERNEL_DECLS }
#ifdef MMATTN_HAVE_AVX2
namespace AVX2 { MMATTN_NA2D_KERNEL_DECLS }
#endif
#ifdef MMATTN_HAVE_AVX512
namespace AVX512 { MMATTN_NA2D_KERNEL_DECLS }
#endif

}  // namespace cpu
}  // namespace mmattn
