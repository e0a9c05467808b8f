// AVX2 row kernels of mmattn::grouped_conv2d (grouped_conv_kernels.h); built with setup.py's
// AVX2 flags. Only AVX2 + FMA intrinsics: AVX-512 machines run this build too.
#include <immintrin.h>

#include "../grouped_conv_kernels.h"

namespace mmattn {
namespace cpu {
namespace AVX2 {
namespace {

// The t-th input of each group of the 8 output channels 8*cb .. 8*cb+7 (two groups of 4) in
// every lane of that group: lanes 0-3 x[8*cb + t], lanes 4-7 x[8*cb + 4 + t] (vpermilps within
// each 128-bit half of the loaded channel vector).
struct GroupInputs {
  __m256 v[4];
  inline void load(const float* px) {
    const __m256 xv = _mm256_loadu_ps(px);
    v[0] = _mm256_permute_ps(xv, 0x00);
    v[1] = _mm256_permute_ps(xv, 0x55);
    v[2] = _mm256_permute_ps(xv, 0xAA);
    v[3] = _mm256_permute_ps(xv, 0xFF);
  }
};

// P consecutive output columns j0 .. j0+P-1 of row i, output channels 8*cb .. 8*cb+7. The input
// columns c = j0 - r .. j0 + P - 1 + r are loaded once each and feed every output column whose
// window holds them (output column j0 + p sees c at window column c - j0 - p + r, known at
// compile time once the loops are unrolled); rows and columns
// outside the image are skipped (zero padding). The sum order per output is fixed (u, then c,
// then t), whatever the block width, so the result of a column does not depend on its block.
template <int P, int K>
inline void block(const GConvGeometry& g, const float* x, const float* wp, const float* bias,
                  float* out, int64_t i, int64_t j0, int64_t cb) {
  constexpr int R = K / 2;
  const int64_t H = g.H, W = g.W, C = g.C;
  __m256 acc[P];
  const __m256 bv = _mm256_loadu_ps(bias + cb * 8);
  for (int p = 0; p < P; ++p) acc[p] = bv;
  for (int u = 0; u < K; ++u) {
    const int64_t row = i + u - R;
    if (row < 0 || row >= H) continue;
    const float* xr = x + row * W * C + cb * 8;
    const float* wu = wp + (cb * K + u) * K * 4 * 8;
#pragma GCC unroll 32
    for (int s = 0; s < P + K - 1; ++s) {
      const int64_t c = j0 + s - R;
      if (c < 0 || c >= W) continue;
      GroupInputs in;
      in.load(xr + c * C);
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
  for (int p = 0; p < P; ++p) _mm256_storeu_ps(o + p * C, acc[p]);
}

constexpr int kCols = 8;  // output columns per register block (8 accumulators)

template <int K>
void row(const GConvGeometry& g, const float* x, const float* wp, const float* bias, float* out,
         int64_t i) {
  for (int64_t cb = 0; cb < g.C / 8; ++cb) {
    int64_t j0 = 0;
    for (; j0 + kCols <= g.W; j0 += kCols) block<kCols, K>(g, x, wp, bias, out, i, j0, cb);
    switch (g.W - j0) {  // the last columns, as one narrower block
      case 7: block<7, K>(g, x, wp, bias, out, i, j0, cb); break;
      case 6: block<6, K>(g, x, wp, bias, out, i, j0, cb); break;
      case 5: block<5, K>(g, x, wp, bias, out, i, j0, cb); break;
      case 4: block<4, K>(g, x, wp, bias, out, i, j0, cb); break;
      case 3: block<3, K>(g, x, wp, bias, out, i, j0, cb); break;
      case 2: block<2, K>(g, x, wp, bias, out, i, j0, cb); break;
      case 1: block<1, K>(g, x, wp, bias, out, i, j0, cb); break;
      default: break;
    }
  }
}

template <int K>
void rows(const GConvGeometry& g, const float* x, const float* wp, const float* bias, float* out,
          int64_t begin, int64_t end) {
  const int64_t plane = g.H * g.W * g.C;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / g.H;
    row<K>(g, x + b * plane, wp, bias, out + b * plane, r % g.H);
  }
}

}  // namespace

void gconv_rows(const GConvGeometry& g, const float* x, const float* wp, const float* bias,
                float* out, int64_t begin, int64_t end) {
  switch (g.K) {
    case 3: return rows<3>(g, x, wp, bias, out, begin, end);
    case 5: return rows<5>(g, x, wp, bias, out, begin, end);
    case 7: return rows<7>(g, x, wp, bias, out, begin, end);
    case 9: return rows<9>(g, x, wp, bias, out, begin, end);
    default: break;  // gconv_vec_supported() rules other sizes out
  }
}

}  // namespace AVX2
}  // namespace cpu
}  // namespace mmattn
