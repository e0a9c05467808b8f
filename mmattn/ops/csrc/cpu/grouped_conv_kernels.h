// Interface between the grouped_conv2d CPU entry points (grouped_conv.cpp: the op and its weight
// gradient) and their AVX2 kernels (isa/grouped_conv_avx2.cpp).
//
// The op: ELSA's k x k grouped convolution (attn.0) on a channels-last map, stride 1, 'same'
// zero padding, C input and C output channels in groups of GW:
//   out[b, i, j, o] = bias[o]
//                     + sum_{u, v, t} x[b, i + u - r, j + v - r, g(o)*GW + t] * w[o, t, u, v]
// with g(o) = o / GW. mkldnn runs these shapes (4 channels per group) at 65-70 GFLOP/s on a
// 2-core AVX-512 machine (Zen 4); the row kernel keeps 8 output channels (two groups of 4) x 8
// output columns in registers and feeds each loaded input vector to up to 4 * 8 FMAs (90-100
// GFLOP/s).
#pragma once
#include <cstdint>

namespace mmattn {
namespace cpu {

struct GConvGeometry {
  int64_t B, H, W, C, K, GW;
  // the input's pixel and batch strides when it is not a dense channels-last map (0: C and
  // H*W*C; hadamard_conv_gelu reads channel slices of a wider channels-last map)
  int64_t XS = 0, XB = 0;
  int64_t rows() const { return B * H; }
  int64_t xs() const { return XS > 0 ? XS : C; }
  int64_t xb() const { return XB > 0 ? XB : H * W * C; }
};

// Whether the AVX2 row kernel runs for float32 on this CPU (grouped_conv.cpp): with the AVX2 build,
// and with the AVX-512 one where AVX-512 runs as two 256-bit halves (AMD Zen 4), where it was
// measured faster than mkldnn; on CPUs with full-width AVX-512 units mkldnn keeps the convolution.
bool gconv_vectorised();
// gconv_vec_supported and gconv_vectorised: the float32 domain of the AVX2 kernels, which
// mmattn.ops.grouped_conv2d also routes by (mmattn._C.grouped_conv_kernel_covers).
bool gconv_kernel_covers(int64_t channels, int64_t kernel_size, int64_t group_width);

// True when the AVX2 kernels (the row kernel and the weight gradient's) cover (C, K, GW):
// C % 8 == 0, GW == 4 (ELSA-Swin-T's width; with 8 channels per group mkldnn's kernel is as
// fast), K in {3, 5, 7, 9}.
inline bool gconv_vec_supported(const GConvGeometry& g) {
  return g.C % 8 == 0 && g.GW == 4 &&
         (g.K == 3 || g.K == 5 || g.K == 7 || g.K == 9);
}

// Floats of the weight-gradient kernel's per-thread scratch: one image's 8 input channels as
// 4 vectors of 8 per pixel, with a zero border of K/2 pixels.
inline int64_t weight_grad_scratch(const GConvGeometry& g) {
  return (g.H + g.K - 1) * (g.W + g.K - 1) * 32;
}

#ifdef MMATTN_HAVE_AVX2
namespace AVX2 {
// Output rows [begin, end) of the (B*H) rows. x, out: (B, H, W, C) contiguous; wp: the packed
// weights (C/8, K, K, 4, 8), wp[cb, u, v, t, l] = w[8*cb + l, t, u, v] (grouped_conv2d_cpu);
// bias: C values, or null when the op has none.
void gconv_rows(const GConvGeometry& g, const float* x, const float* wp, const float* bias,
                float* out, int64_t begin, int64_t end);
// mmattn::hadamard_conv_gelu: GELU of gconv_rows's convolution of q * k, q and k two maps of
// pixel stride g.xs() and batch stride g.xb() (channel slices of one channels-last map, ELSA's
// pre_proj output), channels contiguous; out (B, H, W, C) contiguous.
void gconv_rows_hadamard_gelu(const GConvGeometry& g, const float* q, const float* k,
                              const float* wp, const float* bias, float* out, int64_t begin,
                              int64_t end);
// The weight gradient of the 8-channel blocks [begin, end) of the C/8:
//   dwp[cb, u, v, t, l] = sum_{b, i, j} grad[b, i, j, 8*cb + l]
//                                     * x[b, i + u - r, j + v - r, 8*cb + 4*(l / 4) + t]
// (the packed layout of gconv_rows's weights), and db[8*cb + l] = sum_{b, i, j} grad[b, i, j,
// 8*cb + l] when db is not null. grad, x: (B, H, W, C) contiguous. Each block is one task with a
// fixed sum order (per image over (i, j), then over the images), so the result does not depend
// on the thread count. xe: the calling thread's scratch of weight_grad_scratch(g) floats.
void gconv_weight_grad_blocks(const GConvGeometry& g, const float* grad, const float* x,
                              float* dwp, float* db, float* xe, int64_t begin, int64_t end);
}  // namespace AVX2
#endif

}  // namespace cpu
}  // namespace mmattn
