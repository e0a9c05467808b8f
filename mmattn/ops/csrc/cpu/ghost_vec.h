// Vectorised kernels of ELSA's ghost-head aggregation (see ghost_kernels.h):
//
//   out[b,c,i,j] = sum_{u,v} x[b,c,i+(u-r)d,j+(v-r)d] * (attn[b,g,u*k+v,i,j] * M[c,u,v] + S[c,u,v])
//
// Included once per CPU capability (like na2d_vec.h). Work items are bands of kBandRows output
// rows of one (batch, head group), or blocks of kGhostItemChannels channels of one (batch, head
// group) for the ghost-tensor gradients. An item first copies the rows of x (or d_out) it reads
// into zero-padded scratch planes (pad r*d on every side), so that every tap is an unmasked,
// shifted load and the image border needs no test. d_x is the forward's aggregation of d_out
// with the taps mirrored. The inference forward of softmax(logits + bias) (no attention tensor)
// first takes the softmax of its band's logits into a band buffer, then aggregates from it.
//
// Register blocks: the forward keeps the outputs of CB channels x NV vectors of one row in
// registers over all k*k taps, and each loaded attention vector feeds the CB channels; d_attn
// keeps up to kTaps taps of one vector in registers over the group's channels, and each loaded
// d_out vector feeds those taps; the ghost gradients keep CB channels x 2 taps of lane-wise sums
// in registers over a band's rows, and each attention vector feeds the CB channels. Each output
// element is written by one thread, with an order of operations that does not depend on the
// thread count: results are bit-identical from run to run and across thread counts.
//
// GCC keeps a block of Vectorized accumulators in memory (one store per FMA) when it cannot tell
// that their loop runs at least once; the `__builtin_unreachable()` guards before such loops say
// so, and the row tails run in a loop of their own after the full vectors for the same reason.
#pragma once
#include <algorithm>
#include <cstring>

#include "ghost_kernels.h"
#include "vec_common.h"

namespace mmattn {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

constexpr int kChannels = 4;  // CB: channels per register block of the aggregation
constexpr int kTaps = 8;      // taps per register block of d_attn
// NV: vectors per row chunk of the aggregation (32 vector registers with AVX-512, else 16)
constexpr int kMaxVectors = sizeof(Vectorized<float>) >= 64 ? 4 : 2;

// Zero-padded copies of output rows [i0, i0 + rows) and their k*k-tap neighbourhood: row t of a
// plane holds image row i0 - pad + t at columns pad..pad+W-1 (zeros elsewhere).
struct PadPlanes {
  int64_t pad, Wp, rows, plane;  // padding, padded width, padded rows, floats per plane
  PadPlanes(const GhostGeometry& g, int64_t band_rows)
      : pad(g.r() * g.d), Wp(g.W + 2 * g.r() * g.d), rows(band_rows + 2 * g.r() * g.d),
        plane(rows * Wp) {}
  // Scratch size for n planes, with room for the chunk tails' reads past the last row.
  template <typename T>
  int64_t floats(int64_t n) const {
    return n * plane + kMaxVectors * Vectorized<T>::size() + Wp;
  }
};

// The padded planes of n channels: src is channel 0's pixel (0, 0), channels cs apart, pixels ps
// apart. NCHW (ps == 1): each plane's rows are copied whole; channels-last (cs == 1): the n
// channels of a pixel are read together, each pixel's cache line once.
template <typename T>
void pad_planes(const GhostGeometry& g, const PadPlanes& pp, const T* src, int64_t cs,
                int64_t ps, int64_t n, int64_t i0, T* dst) {
  for (int64_t t = 0; t < pp.rows; ++t) {
    const int64_t i = i0 - pp.pad + t;
    for (int64_t c = 0; c < n; ++c) {
      T* row = dst + c * pp.plane + t * pp.Wp;
      if (i < 0 || i >= g.H) {
        std::memset(row, 0, sizeof(T) * pp.Wp);
        continue;
      }
      std::memset(row, 0, sizeof(T) * pp.pad);
      if (ps == 1) std::memcpy(row + pp.pad, src + c * cs + i * g.W, sizeof(T) * g.W);
      std::memset(row + pp.pad + g.W, 0, sizeof(T) * pp.pad);
    }
    if (ps == 1 || i < 0 || i >= g.H) continue;
    const T* s = src + i * g.W * ps;
    T* d = dst + t * pp.Wp + pp.pad;
    for (int64_t j = 0; j < g.W; ++j)
      for (int64_t c = 0; c < n; ++c) d[c * pp.plane + j] = s[j * ps + c * cs];
  }
}

template <typename T>
void zero_fill(T* p, int64_t n) {
  std::memset(p, 0, sizeof(T) * n);
}

// One band item: batch b, head group grp, output rows [i0, i0 + rows).
struct BandItem {
  int64_t b, grp, i0, rows;
};

inline BandItem band_item(const GhostGeometry& g, int64_t item) {
  const int64_t band = item % g.bands(), bg = item / g.bands();
  const int64_t i0 = band * kBandRows;
  return {bg / g.G, bg % g.G, i0, std::min<int64_t>(kBandRows, g.H - i0)};
}

// Offsets of the k*k taps in a padded plane: tap s = u*k + v reads row + u*d, column + v*d.
inline void tap_offsets(const GhostGeometry& g, const PadPlanes& pp, int64_t* off) {
  for (int64_t s = 0; s < g.kk(); ++s) off[s] = (s / g.k) * g.d * pp.Wp + (s % g.k) * g.d;
}

// The aggregation of one chunk of NV vectors at column j0 of band row t, for CB channels:
//   out[c][t][j] = sum_s xpad[c][t + u*d][j + v*d] * (attn(s)[t][j] * mul[c][s] + add[c][s])
// with attn(s) = attn + s * tap_stride (xpad, attn and out at the chunk). kTail: only the first
// `tail` lanes of the last vector lie inside the row (its attention is loaded masked, the other
// lanes are not stored). kMul false: no M (mul is not read), and each tap's weight is
// attn + S, an addition, where attn * 1 + S took an FMA: the same bits, and on CPUs whose
// additions run on their own units (AMD Zen) half the FMA units' work.
template <typename T, int CB, int NV, bool kTail, bool kMul>
inline void aggregate_chunk(const GhostGeometry& g, const PadPlanes& pp, const int64_t* off,
                            const T* xpad, const T* attn, int64_t tap_stride, const T* mul,
                            const T* add, T* out, int64_t out_plane, int64_t tail) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t kk = g.kk();
  const Lanes<T> lanes(kTail ? tail : 1);
  if (kk < 1) __builtin_unreachable();
  V acc[CB][NV];
  for (int c = 0; c < CB; ++c)
    for (int n = 0; n < NV; ++n) acc[c][n] = V(T(0));
  for (int64_t s = 0; s < kk; ++s) {
    const T* ar = attn + s * tap_stride;
    V a[NV];
    for (int n = 0; n < NV; ++n)
      a[n] = in_register(kTail && n == NV - 1 ? lanes.load(ar + n * L) : V::loadu(ar + n * L));
    const T* xs = xpad + off[s];
    for (int c = 0; c < CB; ++c) {
      const V sv(add[c * kk + s]);
      const V m(kMul ? mul[c * kk + s] : T(1));
      for (int n = 0; n < NV; ++n) {
        const V w = kMul ? at::vec::fmadd(a[n], m, sv) : a[n] + sv;
        acc[c][n] = at::vec::fmadd(V::loadu(xs + c * pp.plane + n * L), w, acc[c][n]);
      }
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int n = 0; n < NV; ++n) {
      if (kTail && n == NV - 1)
        lanes.store(acc[c][n], out + c * out_plane + n * L);
      else
        acc[c][n].store(out + c * out_plane + n * L);
    }
}

// The row's last chunk: `nv` vectors, the last of them with `tail` lanes (0: a full vector).
template <typename T, int CB, int NV, bool kMul>
inline void aggregate_last_chunk(const GhostGeometry& g, const PadPlanes& pp, const int64_t* off,
                                 const T* xpad, const T* attn, int64_t tap_stride, const T* mul,
                                 const T* add, T* out, int64_t out_plane, int64_t nv,
                                 int64_t tail) {
  if constexpr (NV > 1) {
    if (nv < NV)
      return aggregate_last_chunk<T, CB, NV - 1, kMul>(g, pp, off, xpad, attn, tap_stride, mul,
                                                       add, out, out_plane, nv, tail);
  }
  if (tail == 0)
    aggregate_chunk<T, CB, NV, false, kMul>(g, pp, off, xpad, attn, tap_stride, mul, add, out,
                                            out_plane, 0);
  else
    aggregate_chunk<T, CB, NV, true, kMul>(g, pp, off, xpad, attn, tap_stride, mul, add, out,
                                           out_plane, tail);
}

// Rows [0, rows) of the band for CB channels; xpad: their padded planes (PadPlanes), attn: tap 0
// at band row 0, column 0, rows attn_row apart; out: channel 0 at band row 0; mul: null for no M.
template <typename T, int CB, bool kMul>
void aggregate_band_as(const GhostGeometry& g, const PadPlanes& pp, const int64_t* off,
                    const T* xpad, const T* attn, int64_t tap_stride, int64_t attn_row,
                    const T* mul, const T* add, T* out, int64_t rows) {
  constexpr int64_t L = Vectorized<T>::size(), chunk = kMaxVectors * L;
  const int64_t HW = g.H * g.W;
  const int64_t full = g.W / chunk * chunk, rest = g.W - full;
  for (int64_t t = 0; t < rows; ++t) {
    const T* xt = xpad + t * pp.Wp;
    const T* at = attn + t * attn_row;
    T* ot = out + t * g.W;
    for (int64_t j0 = 0; j0 < full; j0 += chunk)
      aggregate_chunk<T, CB, kMaxVectors, false, kMul>(g, pp, off, xt + j0, at + j0, tap_stride,
                                                       mul, add, ot + j0, HW, 0);
    if (rest > 0)
      aggregate_last_chunk<T, CB, kMaxVectors, kMul>(g, pp, off, xt + full, at + full,
                                                     tap_stride, mul, add, ot + full, HW,
                                                     (rest + L - 1) / L, rest % L);
  }
}

template <typename T, int CB>
void aggregate_band(const GhostGeometry& g, const PadPlanes& pp, const int64_t* off,
                    const T* xpad, const T* attn, int64_t tap_stride, int64_t attn_row,
                    const T* mul, const T* add, T* out, int64_t rows) {
  if (mul)
    aggregate_band_as<T, CB, true>(g, pp, off, xpad, attn, tap_stride, attn_row, mul, add, out,
                                   rows);
  else
    aggregate_band_as<T, CB, false>(g, pp, off, xpad, attn, tap_stride, attn_row, mul, add, out,
                                    rows);
}

// What the aggregation items of one thread share: the padded planes of kChannels channels and
// the taps' offsets in them.
template <typename T>
struct AggregateScratch {
  PadPlanes pp;
  Scratch<T> xpad;
  Scratch<int64_t> off;
  explicit AggregateScratch(const GhostGeometry& g)
      : pp(g, kBandRows), xpad(pp.floats<T>(kChannels)), off(g.kk()) {
    zero_fill(xpad.data(), pp.floats<T>(kChannels));
    tap_offsets(g, pp, off.data());
  }
};

// The aggregation of one band item over all channels of its group, reading x from `src`
// (forward: x; d_x: d_out; batch, channel and pixel strides in `ss`) and the attention of tap s
// at band row t from attn + s * tap_stride + t * attn_row.
template <typename T>
void aggregate_item(const GhostGeometry& g, AggregateScratch<T>& sc, const BandItem& it,
                    const T* src, const MapStrides& ss, const T* attn, int64_t tap_stride,
                    int64_t attn_row, const T* mul, const T* add, T* out) {
  const PadPlanes& pp = sc.pp;
  T* xpad = sc.xpad.data();
  const int64_t* off = sc.off.data();
  const int64_t HW = g.H * g.W, kk = g.kk();
  const int64_t c_end = (it.grp + 1) * g.cpg();
  for (int64_t c0 = it.grp * g.cpg(); c0 < c_end; c0 += kChannels) {
    const int64_t cb = std::min<int64_t>(kChannels, c_end - c0);
    pad_planes(g, pp, src + it.b * ss.b + c0 * ss.c, ss.c, ss.p, cb, it.i0, xpad);
    T* o = out + (it.b * g.C + c0) * HW + it.i0 * g.W;
    const T *m = mul ? mul + c0 * kk : nullptr, *a = add + c0 * kk;
    if (cb == kChannels) {
      aggregate_band<T, kChannels>(g, pp, off, xpad, attn, tap_stride, attn_row, m, a, o,
                                   it.rows);
    } else {
      for (int64_t c = 0; c < cb; ++c)
        aggregate_band<T, 1>(g, pp, off, xpad + c * pp.plane, attn, tap_stride, attn_row,
                             m ? m + c * kk : nullptr, a + c * kk, o + c * HW, it.rows);
    }
  }
}

template <typename T>
void forward_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0, int64_t r1) {
  AggregateScratch<T> sc(g);
  const int64_t HW = g.H * g.W;
  for (int64_t item = r0; item < r1; ++item) {
    const BandItem it = band_item(g, item);
    const T* attn = p.attn + (it.b * g.G + it.grp) * g.kk() * HW + it.i0 * g.W;
    aggregate_item(g, sc, it, p.x, p.xs, attn, HW, g.W, p.mul, p.add, p.out);
  }
}

// The softmax over the taps of one vector of pixels (`lanes` of it when kTail), with the bias
// bias[s] (when not null) added to tap s's logits first:
//   dst[s] = exp(z[s] - max z) / sum_s' exp(z[s'] - max z),  z[s] = logits[s] + bias[s]
// logits: tap 0 at the vector, taps tap_stride apart; dst: taps dst_stride apart. vexp clamps
// its argument at -87, so a -inf logit among finite ones weighs exp(-87) / sum (< 2e-38 of the
// largest weight) instead of 0; NaN propagates, and all -inf logits give NaN, as torch.softmax.
template <typename T, bool kTail>
inline void softmax_vector(int64_t kk, const T* logits, int64_t tap_stride, const T* bias, T* dst,
                           int64_t dst_stride, const Lanes<T>& lanes) {
  using V = Vectorized<T>;
  auto z = [&](int64_t s) {
    const T* p = logits + s * tap_stride;
    const V x = kTail ? lanes.load(p) : V::loadu(p);
    return bias ? x + V(bias[s]) : x;
  };
  V mx = z(0);
  for (int64_t s = 1; s < kk; ++s) mx = at::vec::maximum(mx, z(s));
  V sum(T(0));
  for (int64_t s = 0; s < kk; ++s) {
    const V e = vexp<T>(z(s) - mx);
    sum = sum + e;
    e.store(dst + s * dst_stride);  // dst rows have room for a whole vector (softmax_band)
  }
  const V inv = V(T(1)) / sum;
  for (int64_t s = 0; s < kk; ++s) {
    T* p = dst + s * dst_stride;
    (V::loadu(p) * inv).store(p);
  }
}

// The softmax over the taps of one band item's rows: logits (tap 0 at band row 0, taps HW
// apart, rows W apart) and bias (the group's k*k values, or null) to dst, k*k planes of
// kBandRows rows of Ws floats (Ws: W rounded up to whole vectors, so the tail vector's lanes
// past W land in the row's padding).
template <typename T>
void softmax_band(const GhostGeometry& g, const T* logits, const T* bias, int64_t rows,
                  int64_t Ws, T* dst) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t HW = g.H * g.W, full = g.W / L * L, plane = kBandRows * Ws;
  const Lanes<T> lanes(full < g.W ? g.W - full : 1);
  for (int64_t t = 0; t < rows; ++t) {
    const T* lt = logits + t * g.W;
    T* dt = dst + t * Ws;
    for (int64_t j0 = 0; j0 < full; j0 += L)
      softmax_vector<T, false>(g.kk(), lt + j0, HW, bias, dt + j0, plane, lanes);
    if (full < g.W)
      softmax_vector<T, true>(g.kk(), lt + full, HW, bias, dt + full, plane, lanes);
  }
}

// The forward of softmax(logits + bias) over the taps: each band item takes the softmax of its
// rows' logits into a band buffer (kept in the L1/L2 caches) and aggregates from there, so the
// attention never makes a trip through memory. The bits equal those of ghost_forward_rows on
// the buffer's attention.
template <typename T>
void forward_softmax_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0,
                          int64_t r1) {
  constexpr int64_t L = Vectorized<T>::size();
  AggregateScratch<T> sc(g);
  const int64_t HW = g.H * g.W, kk = g.kk(), Ws = (g.W + L - 1) / L * L;
  Scratch<T> attn(kk * kBandRows * Ws);
  for (int64_t item = r0; item < r1; ++item) {
    const BandItem it = band_item(g, item);
    const T* logits = p.attn + (it.b * g.G + it.grp) * kk * HW + it.i0 * g.W;
    softmax_band(g, logits, p.attn_bias ? p.attn_bias + it.grp * kk : nullptr, it.rows, Ws,
                 attn.data());
    aggregate_item(g, sc, it, p.x, p.xs, attn.data(), kBandRows * Ws, Ws, p.mul, p.add, p.out);
  }
}

// d_x is the aggregation of d_out with the mirrored taps: tap s' = k*k - 1 - s, of offset
// (-du, -dv), weighs d_out[i - du, j - dv] with attn[s][i - du, j - dv] (M and S mirrored by the
// entry point). The item gathers those attention rows into a band buffer (zero where
// [i - du, j - dv] lies outside the image) and runs the forward's aggregation on it.
template <typename T>
void mirrored_attention(const GhostGeometry& g, const T* attn, const BandItem& it, T* dst) {
  const int64_t HW = g.H * g.W, kk = g.kk();
  for (int64_t sp = 0; sp < kk; ++sp) {
    const int64_t s = kk - 1 - sp;
    const int64_t du = (sp / g.k - g.r()) * g.d, dv = (sp % g.k - g.r()) * g.d;
    const int64_t j0 = std::max<int64_t>(0, -dv), j1 = std::min<int64_t>(g.W, g.W - dv);
    for (int64_t t = 0; t < it.rows; ++t) {
      T* row = dst + (sp * kBandRows + t) * g.W;
      const int64_t i = it.i0 + t + du;
      if (i < 0 || i >= g.H || j1 <= j0) {
        std::memset(row, 0, sizeof(T) * g.W);
        continue;
      }
      std::memset(row, 0, sizeof(T) * j0);
      std::memcpy(row + j0, attn + s * HW + i * g.W + j0 + dv, sizeof(T) * (j1 - j0));
      std::memset(row + j1, 0, sizeof(T) * (g.W - j1));
    }
  }
}

template <typename T>
void backward_x_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0, int64_t r1) {
  AggregateScratch<T> sc(g);
  const int64_t HW = g.H * g.W, band = kBandRows * g.W;
  Scratch<T> mirrored(g.kk() * band);  // the band's mirrored attention (rows read masked)
  for (int64_t item = r0; item < r1; ++item) {
    const BandItem it = band_item(g, item);
    mirrored_attention(g, p.attn + (it.b * g.G + it.grp) * g.kk() * HW, it, mirrored.data());
    aggregate_item(g, sc, it, p.grad, g.nchw(), mirrored.data(), band, g.W, p.mul, p.add, p.out);
  }
}

// Calls f.template operator()<N>() with N = n, for n in [1, kTaps].
template <typename F>
inline void with_taps(int64_t n, F&& f) {
  switch (n) {
    case 1: return f.template operator()<1>();
    case 2: return f.template operator()<2>();
    case 3: return f.template operator()<3>();
    case 4: return f.template operator()<4>();
    case 5: return f.template operator()<5>();
    case 6: return f.template operator()<6>();
    case 7: return f.template operator()<7>();
    default: return f.template operator()<kTaps>();
  }
}

// d_attn of NT taps at one vector (`lanes` of it when kTail), summed over the group's channels:
//   d_attn[s][j] = sum_c d_out[c][j] * xpad[c][j + shift] * M[c][s]
// grad: channel 0 at the vector, channel stride HW; xr: channel 0's padded row at the vector's
// first tap, channel stride `plane`, taps d apart; mul: channel 0's first tap, or null for no M
// (ELSA-Swin): then one FMA per channel and tap instead of a product, a broadcast and an FMA.
template <typename T, int NT, bool kTail>
inline void attn_grad_vector(int64_t channels, const T* grad, int64_t HW, const T* xr,
                             int64_t plane, int64_t d, const T* mul, int64_t kk, T* da,
                             const Lanes<T>& lanes) {
  using V = Vectorized<T>;
  V acc[NT];
  for (int n = 0; n < NT; ++n) acc[n] = V(T(0));
  if (mul) {
    for (int64_t c = 0; c < channels; ++c) {
      const V gv = in_register(kTail ? lanes.load(grad + c * HW) : V::loadu(grad + c * HW));
      const T* x = xr + c * plane;
      const T* m = mul + c * kk;
      for (int n = 0; n < NT; ++n)
        acc[n] = at::vec::fmadd(gv * V::loadu(x + n * d), V(m[n]), acc[n]);
    }
  } else {
    for (int64_t c = 0; c < channels; ++c) {
      const V gv = in_register(kTail ? lanes.load(grad + c * HW) : V::loadu(grad + c * HW));
      const T* x = xr + c * plane;
      for (int n = 0; n < NT; ++n) acc[n] = at::vec::fmadd(gv, V::loadu(x + n * d), acc[n]);
    }
  }
  for (int n = 0; n < NT; ++n) {
    if (kTail)
      lanes.store(acc[n], da + n * HW);
    else
      acc[n].store(da + n * HW);
  }
}

// d_attn of one band item: all k*k taps of the band's rows, summed over the group's channels.
template <typename T>
void backward_attn_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0,
                        int64_t r1) {
  constexpr int64_t L = Vectorized<T>::size();
  const PadPlanes pp(g, kBandRows);
  Scratch<T> xpad(pp.floats<T>(g.cpg()));
  zero_fill(xpad.data(), pp.floats<T>(g.cpg()));
  const int64_t HW = g.H * g.W, kk = g.kk(), full = g.W / L * L;
  const Lanes<T> lanes(full < g.W ? g.W - full : 1);
  for (int64_t item = r0; item < r1; ++item) {
    const BandItem it = band_item(g, item);
    const int64_t c0 = it.grp * g.cpg();
    pad_planes(g, pp, p.x + (it.b * g.C + c0) * HW, HW, 1, g.cpg(), it.i0, xpad.data());
    for (int64_t t = 0; t < it.rows; ++t) {
      const T* grad = p.grad + (it.b * g.C + c0) * HW + (it.i0 + t) * g.W;
      T* da_row = p.dattn + (it.b * g.G + it.grp) * kk * HW + (it.i0 + t) * g.W;
      for (int64_t u = 0; u < g.k; ++u)
        for (int64_t v0 = 0; v0 < g.k; v0 += kTaps)
          with_taps(std::min<int64_t>(kTaps, g.k - v0), [&]<int NT>() {
            const int64_t s0 = u * g.k + v0;
            const T* xr = xpad.data() + (t + u * g.d) * pp.Wp + v0 * g.d;
            const T* m = p.mul ? p.mul + c0 * kk + s0 : nullptr;
            T* da = da_row + s0 * HW;
            for (int64_t j0 = 0; j0 < full; j0 += L)
              attn_grad_vector<T, NT, false>(g.cpg(), grad + j0, HW, xr + j0, pp.plane, g.d, m,
                                             kk, da + j0, lanes);
            if (full < g.W)
              attn_grad_vector<T, NT, true>(g.cpg(), grad + full, HW, xr + full, pp.plane, g.d,
                                            m, kk, da + full, lanes);
          });
    }
  }
}

// Channels and taps per register block of the ghost-tensor gradients (2 x CB x NT partial sums
// and NT attention vectors in registers).
constexpr int kGhostChannels = kMaxVectors >= 4 ? 4 : 2;
constexpr int kGhostTaps = 2;

// The lane-wise partial sums of the ghost-tensor gradients of CB channels and NT taps at one
// vector (`lanes` of it when kTail):
//   sa[c][n] += d_out[c] * xpad[c] (shifted to tap n),  sm[c][n] += that * attn[n]
// Each attention vector feeds the CB channels. kMul / kAdd: whether sm / sa are asked for (a
// ghost tensor the caller does not have gets no gradient; ELSA-Swin has S only, so its pass
// skips the attention loads and sm, and sums sa with one FMA per tap: its bits differ from
// those of the pass that computes both, each reproducible).
template <typename T, int CB, int NT, bool kTail, bool kMul, bool kAdd>
inline void ghost_grad_vector(const T* grad, int64_t HW, const T* xr, int64_t plane, int64_t d,
                              const T* attn, const Lanes<T>& lanes, Vectorized<T> (&sm)[CB][NT],
                              Vectorized<T> (&sa)[CB][NT]) {
  using V = Vectorized<T>;
  V a[NT];
  if constexpr (kMul)
    for (int n = 0; n < NT; ++n)
      a[n] = in_register(kTail ? lanes.load(attn + n * HW) : V::loadu(attn + n * HW));
  for (int c = 0; c < CB; ++c) {
    const V gv = in_register(kTail ? lanes.load(grad + c * HW) : V::loadu(grad + c * HW));
    for (int n = 0; n < NT; ++n) {
      // the tail's unused lanes read past the row: masked, so that an infinite pixel there
      // cannot turn the lane sums into NaN (0 * inf)
      const T* x = xr + c * plane + n * d;
      const V xv = kTail ? lanes.load(x) : V::loadu(x);
      if constexpr (kMul) {
        const V prod = gv * xv;
        if constexpr (kAdd) sa[c][n] = sa[c][n] + prod;
        sm[c][n] = at::vec::fmadd(prod, a[n], sm[c][n]);
      } else {
        sa[c][n] = at::vec::fmadd(gv, xv, sa[c][n]);  // S alone: one FMA, no product kept
      }
    }
  }
}

// Rows [i0, i1) of the sums of CB channels (padded planes xpad) and NT taps from s0 = u*k + v0
// (grad, attn: channel 0's plane and tap s0's plane), added to the lane-wise partial sums
// acc_m, acc_a ([NT][CB] vectors; only those of kMul / kAdd are read and written).
template <typename T, int CB, int NT, bool kMul, bool kAdd>
void ghost_grad_rows(const GhostGeometry& g, const PadPlanes& pp, const T* grad, const T* xpad,
                     const T* attn, int64_t u, int64_t v0, int64_t i0, int64_t i1, T* acc_m,
                     T* acc_a) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t HW = g.H * g.W, full = g.W / L * L;
  const Lanes<T> lanes(full < g.W ? g.W - full : 1);
  if (i1 <= i0) __builtin_unreachable();
  V sm[CB][NT], sa[CB][NT];
  for (int c = 0; c < CB; ++c)
    for (int n = 0; n < NT; ++n) {
      if constexpr (kMul) sm[c][n] = V::loadu(acc_m + (n * CB + c) * L);
      if constexpr (kAdd) sa[c][n] = V::loadu(acc_a + (n * CB + c) * L);
    }
  // the full vectors of the rows, then the rows' tails (two loops keep the block in registers)
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j0 = 0; j0 < full; j0 += L)
      ghost_grad_vector<T, CB, NT, false, kMul, kAdd>(
          grad + i * g.W + j0, HW, xpad + (i + u * g.d) * pp.Wp + v0 * g.d + j0, pp.plane, g.d,
          attn + i * g.W + j0, lanes, sm, sa);
  if (full < g.W)
    for (int64_t i = i0; i < i1; ++i)
      ghost_grad_vector<T, CB, NT, true, kMul, kAdd>(
          grad + i * g.W + full, HW, xpad + (i + u * g.d) * pp.Wp + v0 * g.d + full, pp.plane,
          g.d, attn + i * g.W + full, lanes, sm, sa);
  for (int c = 0; c < CB; ++c)
    for (int n = 0; n < NT; ++n) {
      if constexpr (kMul) sm[c][n].store(acc_m + (n * CB + c) * L);
      if constexpr (kAdd) sa[c][n].store(acc_a + (n * CB + c) * L);
    }
}

// part_M, part_S of CB channels (those of kMul / kAdd): bands of kBandRows rows, all taps per
// band (the band's rows of x, d_out and the attention stay in the L1/L2 caches), the lane-wise
// sums in acc ([2][k*k][CB] vectors) summed over the lanes at the end; out: part + (b*C + c) *
// k*k of channel 0.
template <typename T, int CB, bool kMul, bool kAdd>
void ghost_grad_channels(const GhostGeometry& g, const PadPlanes& pp, const T* grad,
                         const T* xpad, const T* attn, T* acc, T* part_mul, T* part_add) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t HW = g.H * g.W, kk = g.kk();
  T* acc_m = acc;
  T* acc_a = acc + kk * CB * L;
  if constexpr (kMul) zero_fill(acc_m, kk * CB * L);
  if constexpr (kAdd) zero_fill(acc_a, kk * CB * L);
  for (int64_t i0 = 0; i0 < g.H; i0 += kBandRows) {
    const int64_t i1 = std::min<int64_t>(g.H, i0 + kBandRows);
    for (int64_t u = 0; u < g.k; ++u)
      for (int64_t v0 = 0; v0 < g.k; v0 += kGhostTaps) {
        const int64_t s0 = u * g.k + v0, at = s0 * CB * L;
        if (v0 + kGhostTaps <= g.k)
          ghost_grad_rows<T, CB, kGhostTaps, kMul, kAdd>(g, pp, grad, xpad, attn + s0 * HW, u,
                                                         v0, i0, i1, acc_m + at, acc_a + at);
        else
          ghost_grad_rows<T, CB, 1, kMul, kAdd>(g, pp, grad, xpad, attn + s0 * HW, u, v0, i0,
                                                i1, acc_m + at, acc_a + at);
      }
  }
  for (int c = 0; c < CB; ++c)
    for (int64_t s = 0; s < kk; ++s) {
      if constexpr (kMul)
        part_mul[c * kk + s] = lane_sum<T>(Vectorized<T>::loadu(acc_m + (s * CB + c) * L));
      if constexpr (kAdd)
        part_add[c * kk + s] = lane_sum<T>(Vectorized<T>::loadu(acc_a + (s * CB + c) * L));
    }
}

// Items: blocks of kGhostItemChannels channels of one (batch, group), run kGhostChannels at a
// time; each pads its channels' whole planes of x once. Partials of the ghost tensors whose
// pointer is set (p.part_mul, p.part_add) only.
template <typename T, bool kMul, bool kAdd>
void backward_ghost_items(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0,
                          int64_t r1) {
  static_assert(kGhostItemChannels % kGhostChannels == 0, "whole register blocks per item");
  const PadPlanes pp(g, g.H);
  Scratch<T> xpad(pp.floats<T>(kGhostItemChannels));
  zero_fill(xpad.data(), pp.floats<T>(kGhostItemChannels));
  Scratch<T> acc(2 * g.kk() * kGhostChannels * Vectorized<T>::size());
  const int64_t HW = g.H * g.W, kk = g.kk(), blocks = g.ghost_blocks();
  for (int64_t item = r0; item < r1; ++item) {
    const int64_t bg = item / blocks, b = bg / g.G, grp = bg % g.G;
    const int64_t c0 = grp * g.cpg() + item % blocks * kGhostItemChannels;
    const int64_t cn = std::min<int64_t>(kGhostItemChannels, (grp + 1) * g.cpg() - c0);
    pad_planes(g, pp, p.x + (b * g.C + c0) * HW, HW, 1, cn, 0, xpad.data());
    const T* attn = p.attn + (b * g.G + grp) * kk * HW;
    for (int64_t c = 0; c < cn;) {
      const int64_t bc = b * g.C + c0 + c;
      const T* grad = p.grad + bc * HW;
      const T* xp = xpad.data() + c * pp.plane;
      T* pm = kMul ? p.part_mul + bc * kk : nullptr;
      T* pa = kAdd ? p.part_add + bc * kk : nullptr;
      if (c + kGhostChannels <= cn) {
        ghost_grad_channels<T, kGhostChannels, kMul, kAdd>(g, pp, grad, xp, attn, acc.data(), pm,
                                                           pa);
        c += kGhostChannels;
      } else {
        ghost_grad_channels<T, 1, kMul, kAdd>(g, pp, grad, xp, attn, acc.data(), pm, pa);
        c += 1;
      }
    }
  }
}

template <typename T>
void backward_ghost_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0,
                         int64_t r1) {
  if (p.part_mul && p.part_add) return backward_ghost_items<T, true, true>(g, p, r0, r1);
  if (p.part_mul) return backward_ghost_items<T, true, false>(g, p, r0, r1);
  if (p.part_add) return backward_ghost_items<T, false, true>(g, p, r0, r1);
}

}  // namespace

#define MMATTN_GHOST_KERNEL_DEFS(T)                                                          \
  void ghost_forward_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0,      \
                          int64_t r1) {                                                      \
    forward_rows<T>(g, p, r0, r1);                                                           \
  }                                                                                          \
  void ghost_forward_softmax_rows(const GhostGeometry& g, const GhostBuffers<T>& p,           \
                                  int64_t r0, int64_t r1) {                                  \
    forward_softmax_rows<T>(g, p, r0, r1);                                                   \
  }                                                                                          \
  void ghost_backward_x_rows(const GhostGeometry& g, const GhostBuffers<T>& p, int64_t r0,   \
                             int64_t r1) {                                                   \
    backward_x_rows<T>(g, p, r0, r1);                                                        \
  }                                                                                          \
  void ghost_backward_attn_rows(const GhostGeometry& g, const GhostBuffers<T>& p,            \
                                int64_t r0, int64_t r1) {                                    \
    backward_attn_rows<T>(g, p, r0, r1);                                                     \
  }                                                                                          \
  void ghost_backward_ghost_rows(const GhostGeometry& g, const GhostBuffers<T>& p,           \
                                 int64_t r0, int64_t r1) {                                   \
    backward_ghost_rows<T>(g, p, r0, r1);                                                    \
  }

MMATTN_GHOST_KERNEL_DEFS(float)
MMATTN_GHOST_KERNEL_DEFS(double)
#undef MMATTN_GHOST_KERNEL_DEFS

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmattn
