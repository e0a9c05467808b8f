// AVX2 kernels of mmattn::grouped_conv2d (the row kernel), of its weight gradient and of
// mmattn::hadamard_conv_gelu (the row kernel on q * k, GELU at the store)
// (grouped_conv_kernels.h); built with setup.py's AVX2 flags. AVX2 + FMA intrinsics, and
// vec_common.h's exp for the GELU: AVX-512 machines run this build too. No std:: containers or
// algorithms here: their inline instances, compiled with AVX2, could be merged with other
// translation units' (vec_common.h).
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include <immintrin.h>

#include "../grouped_conv_kernels.h"
#include "../vec_common.h"

namespace mmattn {
namespace cpu {
namespace AVX2 {
namespace {

// The t-th input of each group of the 8 output channels 8*cb .. 8*cb+7 (two groups of 4) in
// every lane of that group: lanes 0-3 x[8*cb + t], lanes 4-7 x[8*cb + 4 + t] (vpermilps within
// each 128-bit half of the loaded channel vector).
struct GroupInputs {
  __m256 v[4];
  inline void load(const float* px) { spread(_mm256_loadu_ps(px)); }
  // the Hadamard product q * k of the pixel's 8 channels
  inline void load(const float* pq, const float* pk) {
    spread(_mm256_mul_ps(_mm256_loadu_ps(pq), _mm256_loadu_ps(pk)));
  }
  inline void spread(__m256 xv) {
    v[0] = _mm256_permute_ps(xv, 0x00);
    v[1] = _mm256_permute_ps(xv, 0x55);
    v[2] = _mm256_permute_ps(xv, 0xAA);
    v[3] = _mm256_permute_ps(xv, 0xFF);
  }
};

// GELU(x) = x / 2 * (1 + erf(x / sqrt 2)), erf by Abramowitz and Stegun 7.1.26 (absolute error
// below 1.5e-7, the formula of ATen's vectorised erf) with vec_common.h's exp.
inline __m256 gelu(__m256 x) {
  const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
  const __m256 sign = _mm256_and_ps(z, _mm256_set1_ps(-0.f));
  const __m256 a = _mm256_xor_ps(z, sign);  // |z|
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.f),
                                 _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a,
                                                 _mm256_set1_ps(1.f)));
  __m256 r = _mm256_fmadd_ps(_mm256_set1_ps(1.061405429f), t, _mm256_set1_ps(-1.453152027f));
  r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(1.421413741f));
  r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(-0.284496736f));
  r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(0.254829592f));
  const __m256 neg_a = _mm256_xor_ps(a, _mm256_set1_ps(-0.f));
  const __m256 e = vexp<float>(Vectorized<float>(_mm256_mul_ps(neg_a, a)));  // exp(-z^2)
  // erf(|z|) = 1 - r t exp(-z^2), with z's sign
  const __m256 erf_abs = _mm256_fnmadd_ps(_mm256_mul_ps(r, t), e, _mm256_set1_ps(1.f));
  const __m256 erf = _mm256_xor_ps(erf_abs, sign);
  return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)),
                       _mm256_add_ps(_mm256_set1_ps(1.f), erf));
}

// P consecutive output columns j0 .. j0+P-1 of row i, output channels 8*cb .. 8*cb+7. The input
// columns c = j0 - r .. j0 + P - 1 + r are loaded once each and feed every output column whose
// window holds them (output column j0 + p sees c at window column c - j0 - p + r, known at
// compile time once the loops are unrolled); rows and columns
// outside the image are skipped (zero padding). The sum order per output is fixed (u, then c,
// then t), whatever the block width, so the result of a column does not depend on its block.
// kFused (hadamard_conv_gelu): the input is x * x2 (two maps of pixel stride g.xs()), and the
// outputs leave through GELU.
template <int P, int K, bool kFused>
inline void block(const GConvGeometry& g, const float* x, const float* x2, const float* wp,
                  const float* bias, float* out, int64_t i, int64_t j0, int64_t cb) {
  constexpr int R = K / 2;
  const int64_t H = g.H, W = g.W, C = g.C, XS = g.xs();
  __m256 acc[P];
  const __m256 bv = bias ? _mm256_loadu_ps(bias + cb * 8) : _mm256_setzero_ps();
  for (int p = 0; p < P; ++p) acc[p] = bv;
  for (int u = 0; u < K; ++u) {
    const int64_t row = i + u - R;
    if (row < 0 || row >= H) continue;
    const float* xr = x + row * W * XS + cb * 8;
    const float* xr2 = kFused ? x2 + row * W * XS + cb * 8 : nullptr;
    const float* wu = wp + (cb * K + u) * K * 4 * 8;
#pragma GCC unroll 32
    for (int s = 0; s < P + K - 1; ++s) {
      const int64_t c = j0 + s - R;
      if (c < 0 || c >= W) continue;
      GroupInputs in;
      if constexpr (kFused)
        in.load(xr + c * XS, xr2 + c * XS);
      else
        in.load(xr + c * XS);
      // t outer, p inner: consecutive FMAs go to different accumulators (each accumulator's
      // chain of dependent FMAs would otherwise stall on the FMA latency)
#pragma GCC unroll 4
      for (int t = 0; t < 4; ++t) {
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) {
          const int v = s - p;  // window column of input column c for output column j0 + p
          if (v < 0 || v >= K) continue;
          acc[p] = _mm256_fmadd_ps(in.v[t], _mm256_loadu_ps(wu + (v * 4 + t) * 8), acc[p]);
        }
      }
    }
  }
  float* o = out + (i * W + j0) * C + cb * 8;
  for (int p = 0; p < P; ++p) _mm256_storeu_ps(o + p * C, kFused ? gelu(acc[p]) : acc[p]);
}

constexpr int kCols = 8;  // output columns per register block (8 accumulators)

template <int K, bool kFused>
void row(const GConvGeometry& g, const float* x, const float* x2, const float* wp,
         const float* bias, float* out, int64_t i) {
  for (int64_t cb = 0; cb < g.C / 8; ++cb) {
    int64_t j0 = 0;
    for (; j0 + kCols <= g.W; j0 += kCols)
      block<kCols, K, kFused>(g, x, x2, wp, bias, out, i, j0, cb);
    switch (g.W - j0) {  // the last columns, as one narrower block
      case 7: block<7, K, kFused>(g, x, x2, wp, bias, out, i, j0, cb); break;
      case 6: block<6, K, kFused>(g, x, x2, wp, bias, out, i, j0, cb); break;
      case 5: block<5, K, kFused>(g, x, x2, wp, bias, out, i, j0, cb); break;
      case 4: block<4, K, kFused>(g, x, x2, wp, bias, out, i, j0, cb); break;
      case 3: block<3, K, kFused>(g, x, x2, wp, bias, out, i, j0, cb); break;
      case 2: block<2, K, kFused>(g, x, x2, wp, bias, out, i, j0, cb); break;
      case 1: block<1, K, kFused>(g, x, x2, wp, bias, out, i, j0, cb); break;
      default: break;
    }
  }
}

template <int K, bool kFused>
void rows(const GConvGeometry& g, const float* x, const float* x2, const float* wp,
          const float* bias, float* out, int64_t begin, int64_t end) {
  const int64_t plane = g.H * g.W * g.C;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / g.H;
    row<K, kFused>(g, x + b * g.xb(), kFused ? x2 + b * g.xb() : nullptr, wp, bias,
                   out + b * plane, r % g.H);
  }
}

template <bool kFused>
void rows_of(const GConvGeometry& g, const float* x, const float* x2, const float* wp,
             const float* bias, float* out, int64_t begin, int64_t end) {
  switch (g.K) {
    case 3: return rows<3, kFused>(g, x, x2, wp, bias, out, begin, end);
    case 5: return rows<5, kFused>(g, x, x2, wp, bias, out, begin, end);
    case 7: return rows<7, kFused>(g, x, x2, wp, bias, out, begin, end);
    case 9: return rows<9, kFused>(g, x, x2, wp, bias, out, begin, end);
    default: return;  // outside gconv_vec_supported: the entry points never call it
  }
}

// The weight gradient (gconv_weight_grad_blocks). xe: the block's 8 input channels of one image
// as GroupInputs vectors, 4 per pixel ((H + 2r) x (W + 2r) pixels, a zero border of r), so that
// every (window row u, window column v, group input t) reads one vector per output pixel.
// VB window columns v0 .. v0+VB-1 of window row u: VB x 4 accumulators over the image's pixels,
// each FMA reading its x vector from memory; the image's sums go to dst (first image) or are
// added to it (the others). The border's zeros are multiplied in like the image's values, so a
// non-finite gradient at a pixel whose window leaves the map gives NaN in the taps that reach
// the border (a convolution's zero padding skipped would leave them finite).
template <int VB>
inline void weight_grad_block(const float* gb, const float* xe, int64_t H, int64_t W, int64_t C,
                              int64_t Wp, int64_t u, int64_t v0, float* dst, bool accumulate) {
  __m256 acc[VB][4];
  for (int vv = 0; vv < VB; ++vv)
    for (int t = 0; t < 4; ++t) acc[vv][t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < H; ++i) {
    const float* gr = gb + i * W * C;
    const float* xr = xe + ((i + u) * Wp + v0) * 32;
    for (int64_t j = 0; j < W; ++j) {
      const __m256 gv = _mm256_loadu_ps(gr + j * C);
      const float* xp = xr + j * 32;
#pragma GCC unroll 4
      for (int vv = 0; vv < VB; ++vv)
#pragma GCC unroll 4
        for (int t = 0; t < 4; ++t)
          acc[vv][t] = _mm256_fmadd_ps(gv, _mm256_loadu_ps(xp + (vv * 4 + t) * 8), acc[vv][t]);
    }
  }
  for (int vv = 0; vv < VB; ++vv)
    for (int t = 0; t < 4; ++t) {
      float* d = dst + (vv * 4 + t) * 8;
      _mm256_storeu_ps(d, accumulate ? _mm256_add_ps(_mm256_loadu_ps(d), acc[vv][t])
                                     : acc[vv][t]);
    }
}

// Window columns in blocks of 3 (12 accumulators and the gradient vector: 13 of the 16 AVX2
// registers), then 2: never a block of 1, whose 4 dependent FMA chains would run at half rate.
inline int column_block(int64_t K, int64_t v0) {
  const int64_t left = K - v0;
  return left == 4 || left == 2 ? 2 : 3;
}

// Zeroes xe's border of r pixels (the interior is rewritten for every block and image).
inline void zero_border(float* xe, int64_t H, int64_t W, int64_t R) {
  const int64_t Wp = W + 2 * R;
  const __m256 z = _mm256_setzero_ps();
  auto zero_pixels = [&](int64_t row, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int t = 0; t < 4; ++t) _mm256_storeu_ps(xe + (row * Wp + c) * 32 + t * 8, z);
  };
  for (int64_t row = 0; row < H + 2 * R; ++row) {
    if (row < R || row >= H + R) {
      zero_pixels(row, 0, Wp);
    } else {
      zero_pixels(row, 0, R);
      zero_pixels(row, W + R, Wp);
    }
  }
}

void weight_grad_blocks(const GConvGeometry& g, const float* grad, const float* x, float* dwp,
                        float* db, float* xe, int64_t begin, int64_t end) {
  const int64_t H = g.H, W = g.W, C = g.C, K = g.K, R = K / 2;
  const int64_t Wp = W + 2 * R, plane = H * W * C;
  zero_border(xe, H, W, R);
  for (int64_t cb = begin; cb < end; ++cb) {
    float* dst_cb = dwp + cb * K * K * 32;
    __m256 dbv = _mm256_setzero_ps();
    for (int64_t b = 0; b < g.B; ++b) {
      const float* xb = x + b * plane + cb * 8;
      const float* gb = grad + b * plane + cb * 8;
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) {
          GroupInputs in;
          in.load(xb + (i * W + j) * C);
          float* o = xe + ((i + R) * Wp + j + R) * 32;
          for (int t = 0; t < 4; ++t) _mm256_storeu_ps(o + t * 8, in.v[t]);
        }
      for (int64_t u = 0; u < K; ++u)
        for (int64_t v0 = 0; v0 < K;) {
          const int vb = column_block(K, v0);
          float* dst = dst_cb + (u * K + v0) * 32;
          if (vb == 3)
            weight_grad_block<3>(gb, xe, H, W, C, Wp, u, v0, dst, b > 0);
          else
            weight_grad_block<2>(gb, xe, H, W, C, Wp, u, v0, dst, b > 0);
          v0 += vb;
        }
      if (db)
        for (int64_t p = 0; p < H * W; ++p) dbv = _mm256_add_ps(dbv, _mm256_loadu_ps(gb + p * C));
    }
    if (db) _mm256_storeu_ps(db + cb * 8, dbv);
  }
}

}  // namespace

void gconv_weight_grad_blocks(const GConvGeometry& g, const float* grad, const float* x,
                              float* dwp, float* db, float* xe, int64_t begin, int64_t end) {
  weight_grad_blocks(g, grad, x, dwp, db, xe, begin, end);
}

void gconv_rows(const GConvGeometry& g, const float* x, const float* wp, const float* bias,
                float* out, int64_t begin, int64_t end) {
  rows_of<false>(g, x, nullptr, wp, bias, out, begin, end);
}

void gconv_rows_hadamard_gelu(const GConvGeometry& g, const float* q, const float* k,
                              const float* wp, const float* bias, float* out, int64_t begin,
                              int64_t end) {
  rows_of<true>(g, q, k, wp, bias, out, begin, end);
}

}  // namespace AVX2
}  // namespace cpu
}  // namespace mmattn
