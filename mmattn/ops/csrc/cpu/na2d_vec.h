// Vectorised row kernels of na2d on the strip layout (see na2d_kernels.h).
//
// Included once per CPU capability by a translation unit that defines CPU_CAPABILITY (and the
// matching CPU_CAPABILITY_AVX2 / CPU_CAPABILITY_AVX512 with the compiler flags), so that
// at::vec::Vectorized<T> is the 8/16-lane (or the generic) vector of that capability.
//
// A vector holds L consecutive queries of one row. For window row a and column b the logits of
// the L queries are sum_c q[c][j0:j0+L] * k_row(a)[c][j0 + (b - k/2)*d : ...+L], one FMA per
// (c, b) with k/2-shifted unaligned loads; the aggregation out[c] += p_t * v[c][shifted] is the
// same shape. Register blocks: up to 8 window columns (logits) or 8 channels (aggregation) per
// pass over the other axis, so each loaded query or weight vector feeds 8 FMAs.
//
// Determinism: every output element is written by one thread, with a fixed order of operations
// that does not depend on the thread count.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../common/window.h"
#include "na2d_kernels.h"
#include "vec_common.h"

namespace mmattn {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {
constexpr int kBlock = 8;

template <typename T>
struct Tap {
  const T* w;  // L weights (one per query lane)
  const T* m;  // channel 0 of the L shifted key/value columns; channel c at m + c * Wp
  const T* e;  // rpe of the slot, (D,), or nullptr
};

// acc[b] = sum_c a[c*Wp] * (m[c*Wp + b*step] + e[b*D + c])   for b < NB
template <typename T, int NB, bool RPE>
inline void dot_block(const T* a, const T* m, const T* e, int64_t D, int64_t Wp, int64_t step,
                      Vectorized<T>* acc) {
  using V = Vectorized<T>;
  V s[NB];
  for (int b = 0; b < NB; ++b) s[b] = V(T(0));
  for (int64_t c = 0; c < D; ++c) {
    const V av = V::loadu(a + c * Wp);
    const T* row = m + c * Wp;
    for (int b = 0; b < NB; ++b) {
      V kv = V::loadu(row + b * step);
      if constexpr (RPE) kv = kv + V(e[b * D + c]);
      s[b] = at::vec::fmadd(av, kv, s[b]);
    }
  }
  for (int b = 0; b < NB; ++b) acc[b] = s[b];
}

template <typename T, bool RPE>
inline void dots(const T* a, const T* m, const T* e, int64_t D, int64_t Wp, int64_t step, int nb,
                 Vectorized<T>* acc) {
  switch (nb) {
    case 1: return dot_block<T, 1, RPE>(a, m, e, D, Wp, step, acc);
    case 2: return dot_block<T, 2, RPE>(a, m, e, D, Wp, step, acc);
    case 3: return dot_block<T, 3, RPE>(a, m, e, D, Wp, step, acc);
    case 4: return dot_block<T, 4, RPE>(a, m, e, D, Wp, step, acc);
    case 5: return dot_block<T, 5, RPE>(a, m, e, D, Wp, step, acc);
    case 6: return dot_block<T, 6, RPE>(a, m, e, D, Wp, step, acc);
    case 7: return dot_block<T, 7, RPE>(a, m, e, D, Wp, step, acc);
    default: return dot_block<T, 8, RPE>(a, m, e, D, Wp, step, acc);
  }
}

// acc[c] = sum over taps w * (m[(c0 + c)*Wp] + e[c0 + c])   for c < NC
template <typename T, int NC, bool RPE>
inline void gather_block(const Tap<T>* taps, int64_t n, int64_t c0, int64_t Wp,
                         Vectorized<T>* acc) {
  using V = Vectorized<T>;
  V s[NC];
  for (int c = 0; c < NC; ++c) s[c] = V(T(0));
  for (int64_t t = 0; t < n; ++t) {
    const V wv = V::loadu(taps[t].w);
    const T* m = taps[t].m + c0 * Wp;
    for (int c = 0; c < NC; ++c) {
      V mv = V::loadu(m + c * Wp);
      if constexpr (RPE) mv = mv + V(taps[t].e[c0 + c]);
      s[c] = at::vec::fmadd(wv, mv, s[c]);
    }
  }
  for (int c = 0; c < NC; ++c) acc[c] = s[c];
}

template <typename T, bool RPE>
inline void gather(const Tap<T>* taps, int64_t n, int64_t c0, int64_t Wp, int nc,
                   Vectorized<T>* acc) {
  switch (nc) {
    case 1: return gather_block<T, 1, RPE>(taps, n, c0, Wp, acc);
    case 2: return gather_block<T, 2, RPE>(taps, n, c0, Wp, acc);
    case 3: return gather_block<T, 3, RPE>(taps, n, c0, Wp, acc);
    case 4: return gather_block<T, 4, RPE>(taps, n, c0, Wp, acc);
    case 5: return gather_block<T, 5, RPE>(taps, n, c0, Wp, acc);
    case 6: return gather_block<T, 6, RPE>(taps, n, c0, Wp, acc);
    case 7: return gather_block<T, 7, RPE>(taps, n, c0, Wp, acc);
    default: return gather_block<T, 8, RPE>(taps, n, c0, Wp, acc);
  }
}

template <typename T>
inline Vectorized<T> vexp(const Vectorized<T>& x) {
  if constexpr (std::is_same_v<T, float>) return x.exp_u20();
  else return x.exp();
}

// Lanes j0..j0+L-1 whose tap at column offset `shift` lies in [0, W): an all-ones mask.
template <typename T>
inline Vectorized<T> column_mask(int64_t j0, int64_t shift, int64_t W) {
  using V = Vectorized<T>;
  const V col = V::arange(static_cast<T>(j0 + shift), static_cast<T>(1));
  return (col >= V(T(0))) & (col < V(static_cast<T>(W)));
}

// Writes channels [c0, c0+nc) of lanes [0, nv) of the accumulators, times `mul`, at query j0 of
// an output row with column stride sw and channel stride sc: vector stores when the columns are
// contiguous (sw == 1), else one element at a time.
template <typename T>
inline void store_out(const Vectorized<T>* acc, int nc, const Vectorized<T>& mul, int64_t nv,
                      T* out_row, int64_t j0, int64_t c0, int64_t sw, int64_t sc, T* tmp) {
  using V = Vectorized<T>;
  if (sw == 1) {
    for (int c = 0; c < nc; ++c) (acc[c] * mul).store(out_row + (c0 + c) * sc + j0, nv);
    return;
  }
  for (int c = 0; c < nc; ++c) (acc[c] * mul).store(tmp + c * V::size());
  for (int64_t l = 0; l < nv; ++l)
    for (int c = 0; c < nc; ++c) out_row[(j0 + l) * sw + (c0 + c) * sc] = tmp[c * V::size() + l];
}

// The output row of query (or key) row `row`: out + b*s0 + h*s1 + i*s2.
template <typename T>
inline T* out_row_of(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t row) {
  const int64_t bh = row / g.H, i = row % g.H;
  return p.out + (bh / g.heads) * p.os[0] + (bh % g.heads) * p.os[1] + i * p.os[2];
}

struct RowInfo {
  int64_t row, bh, i, h;
  AxisWindow wi;
};

inline RowInfo row_info(const StripGeometry& g, int64_t row) {
  RowInfo r;
  r.row = row;
  r.bh = row / g.H;
  r.i = row % g.H;
  r.h = r.bh % g.heads;
  r.wi = query_window(r.i, g.H, g.k, g.d, g.clamp);
  return r;
}

// Channel c of strip-layout plane `plane` at image column j.
template <typename T>
inline const T* strip_col(const T* s, int64_t plane, int64_t C, const StripGeometry& g,
                          int64_t j) {
  return s + plane * C * g.Wp + g.P + j;
}

// Zeroes the padding columns of the C strip-layout rows at `row` (column 0 of the image): the
// P columns on the left, and those from W to the end of each row.
template <typename T>
inline void zero_padding(const StripGeometry& g, T* row, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    std::fill(row + c * g.Wp - g.P, row + c * g.Wp, T(0));
    std::fill(row + c * g.Wp + g.W, row + (c + 1) * g.Wp - g.P, T(0));
  }
}

// Logits of query (row, j) for every slot, per query (the clamped border columns): `lg`, kk.
template <typename T>
void query_logits(const StripGeometry& g, const Na2dBuffers<T>& p, const RowInfo& ri, int64_t j,
                  T* lg) {
  const T *q_s = p.q_s, *k_s = p.k_s;
  const int64_t k = g.k, R = g.R();
  const AxisWindow wj = query_window(j, g.W, k, g.d, g.clamp);
  const T* q = strip_col(q_s, ri.row, g.D, g, j);
  for (int64_t a = 0; a < k; ++a) {
    const int64_t ki = tap_coord(ri.wi, a, g.d);
    for (int64_t b = 0; b < k; ++b) {
      const int64_t kj = tap_coord(wj, b, g.d);
      if (ki < 0 || kj < 0) {
        lg[a * k + b] = p.invalid;
        continue;
      }
      const T* kc = strip_col(k_s, ri.bh * g.H + ki, g.D, g, kj);
      const T* e = p.rpe ? p.rpe + ((ri.h * k + a) * k + b) * g.D : nullptr;
      T s = 0;
      for (int64_t c = 0; c < g.D; ++c) s += q[c * g.Wp] * (kc[c * g.Wp] + (e ? e[c] : T(0)));
      s *= p.scale;
      if (p.rpb)
        s += p.rpb[(ri.h * R + rpb_index(ri.wi, a, k)) * R + rpb_index(wj, b, k)];
      lg[a * k + b] = s;
    }
  }
}

// o[c * sc] = mul * sum over the valid slots of query (row, j) of w[slot] * m[key(slot)][c]
// (per query: the clamped border columns), and the d_rpb partials of the row from w.
template <typename T>
void query_aggregate(const StripGeometry& g, const RowInfo& ri, int64_t j, const T* w,
                     const T* m_s, T mul, T* o, int64_t sc, T* rpb_part) {
  const int64_t k = g.k, R = g.R();
  const AxisWindow wj = query_window(j, g.W, k, g.d, g.clamp);
  for (int64_t c = 0; c < g.D; ++c) o[c * sc] = 0;
  for (int64_t a = 0; a < k; ++a) {
    const int64_t ki = tap_coord(ri.wi, a, g.d);
    for (int64_t b = 0; b < k; ++b) {
      const int64_t kj = tap_coord(wj, b, g.d);
      if (ki < 0 || kj < 0) continue;
      const T wt = w[a * k + b];
      const T* mc = strip_col(m_s, ri.bh * g.H + ki, g.D, g, kj);
      for (int64_t c = 0; c < g.D; ++c) o[c * sc] += wt * mc[c * g.Wp];
      if (rpb_part) rpb_part[rpb_index(ri.wi, a, k) * R + rpb_index(wj, b, k)] += wt;
    }
  }
  for (int64_t c = 0; c < g.D; ++c) o[c * sc] *= mul;
}

// Logits of the L queries j0.. of one row into lg[t*L + lane]; invalid slots get p.invalid.
template <typename T>
void strip_logits(const StripGeometry& g, const Na2dBuffers<T>& p, const RowInfo& ri,
                  int64_t j0, T* lg) {
  const T *q_s = p.q_s, *k_s = p.k_s;
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t k = g.k, r = g.r(), R = g.R();
  const int64_t nv = std::min<int64_t>(L, g.W - j0);
  const bool masked = !g.clamp && (j0 - g.P < 0 || j0 + nv - 1 + g.P >= g.W);
  const T* q = strip_col(q_s, ri.row, g.D, g, j0);
  const V vscale(p.scale), vinvalid(p.invalid);
  V acc[kBlock];
  for (int64_t a = 0; a < k; ++a) {
    const int64_t ki = tap_coord(ri.wi, a, g.d);
    if (ki < 0) {
      for (int64_t b = 0; b < k; ++b) vinvalid.store(lg + (a * k + b) * L);
      continue;
    }
    const T* kr = strip_col(k_s, ri.bh * g.H + ki, g.D, g, j0 - g.P);
    const T* rpe = p.rpe ? p.rpe + (ri.h * k + a) * k * g.D : nullptr;
    const T* rpb = p.rpb ? p.rpb + (ri.h * R + rpb_index(ri.wi, a, k)) * R + r
                                        : nullptr;
    for (int64_t b0 = 0; b0 < k; b0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, k - b0));
      if (rpe)
        dots<T, true>(q, kr + b0 * g.d, rpe + b0 * g.D, g.D, g.Wp, g.d, nb, acc);
      else
        dots<T, false>(q, kr + b0 * g.d, nullptr, g.D, g.Wp, g.d, nb, acc);
      for (int bb = 0; bb < nb; ++bb) {
        const int64_t b = b0 + bb;
        V x = acc[bb] * vscale;
        if (rpb) x = x + V(rpb[b]);
        if (masked) x = V::blendv(vinvalid, x, column_mask<T>(j0, (b - r) * g.d, g.W));
        x.store(lg + (a * k + b) * L);
      }
    }
  }
}

template <typename T>
void fused_rows_impl(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t r0, int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t k = g.k, kk = g.kk(), r = g.r(), D = g.D;
  const T ninf = -std::numeric_limits<T>::infinity();
  Scratch<T> lg(kk * L), tmp(kBlock * L), one(kk);
  Scratch<Tap<T>> taps(kk);
  V acc[kBlock];
  for (int64_t row = r0; row < r1; ++row) {
    const RowInfo ri = row_info(g, row);
    T* out_row = out_row_of<T>(g, p, row);
    T* attn_row = p.attn_s ? p.attn_s + row * kk * g.Wp + g.P : nullptr;
    const int64_t sw = p.os[3], sc = p.os[4];
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      const int64_t nv = std::min<int64_t>(L, g.W - j0);
      strip_logits<T>(g, p, ri, j0, lg.data());
      if (p.bias) {
        const T* bias = p.bias + (row * g.W + j0) * kk;
        for (int64_t l = 0; l < nv; ++l)
          for (int64_t t = 0; t < kk; ++t) lg[t * L + l] += bias[l * kk + t];
      }
      V m(ninf);
      for (int64_t t = 0; t < kk; ++t) m = at::vec::maximum(m, V::loadu(lg.data() + t * L));
      V sum(T(0));
      int64_t n = 0;
      for (int64_t a = 0; a < k; ++a) {
        const int64_t ki = tap_coord(ri.wi, a, g.d);
        for (int64_t b = 0; b < k; ++b) {
          T* w = lg.data() + (a * k + b) * L;
          const V x = V::loadu(w);
          // exp(-inf - m) is 0 for a masked slot; the blend keeps it exactly 0.
          const V e = V::blendv(V(T(0)), vexp<T>(x - m), x != V(ninf));
          e.store(w);
          sum = sum + e;
          if (ki >= 0) taps[n++] = {w, strip_col(p.v_s, ri.bh * g.H + ki, D, g, j0 + (b - r) * g.d),
                                    nullptr};
        }
      }
      const V inv = V(T(1)) / sum;
      for (int64_t c0 = 0; c0 < D; c0 += kBlock) {
        const int nc = static_cast<int>(std::min<int64_t>(kBlock, D - c0));
        gather<T, false>(taps.data(), n, c0, g.Wp, nc, acc);
        store_out<T>(acc, nc, inv, nv, out_row, j0, c0, sw, sc, tmp.data());
      }
      if (attn_row)  // the probabilities, for the backward pass ('mask' only)
        for (int64_t t = 0; t < kk; ++t)
          (V::loadu(lg.data() + t * L) * inv).store(attn_row + t * g.Wp + j0, nv);
    }
    if (attn_row) zero_padding<T>(g, attn_row, kk);
    if (!g.clamp) continue;
    for (int64_t j = 0; j < g.W; ++j) {  // clamped border columns, per query
      if (!g.border_col(j)) continue;
      query_logits<T>(g, p, ri, j, one.data());
      if (p.bias)
        for (int64_t t = 0; t < kk; ++t) one[t] += p.bias[(row * g.W + j) * kk + t];
      T mx = ninf, l = 0;
      for (int64_t t = 0; t < kk; ++t) mx = std::max(mx, one[t]);
      for (int64_t t = 0; t < kk; ++t) l += (one[t] = one[t] == ninf ? T(0) : std::exp(one[t] - mx));
      query_aggregate<T>(g, ri, j, one.data(), p.v_s, T(1) / l, out_row + j * sw, sc, nullptr);
    }
  }
}

template <typename T>
void logits_rows_impl(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t r0, int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t kk = g.kk();
  Scratch<T> lg(kk * L), one(kk);
  for (int64_t row = r0; row < r1; ++row) {
    const RowInfo ri = row_info(g, row);
    T* out = p.out + row * kk * g.Wp + g.P;  // strip layout (kk, Wp)
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      strip_logits<T>(g, p, ri, j0, lg.data());
      for (int64_t t = 0; t < kk; ++t) V::loadu(lg.data() + t * L).store(out + t * g.Wp + j0);
    }
    if (!g.clamp) continue;
    for (int64_t j = 0; j < g.W; ++j) {
      if (!g.border_col(j)) continue;
      query_logits<T>(g, p, ri, j, one.data());
      for (int64_t t = 0; t < kk; ++t) out[t * g.Wp + j] = one[t];
    }
  }
}

template <typename T>
void aggregate_rows_impl(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t r0,
                         int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t k = g.k, kk = g.kk(), r = g.r(), R = g.R(), D = g.D;
  Scratch<T> tmp(kBlock * L);
  Scratch<Tap<T>> taps(kk);
  const V vscale(p.scale);
  V acc[kBlock];
  for (int64_t row = r0; row < r1; ++row) {
    const RowInfo ri = row_info(g, row);
    T* out_row = out_row_of<T>(g, p, row);
    const int64_t sw = p.os[3], sc = p.os[4];
    const T* w_row = p.w_s + row * kk * g.Wp + g.P;
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      const int64_t nv = std::min<int64_t>(L, g.W - j0);
      int64_t n = 0;
      for (int64_t a = 0; a < k; ++a) {
        const int64_t ki = tap_coord(ri.wi, a, g.d);
        if (ki < 0) continue;
        for (int64_t b = 0; b < k; ++b)
          taps[n++] = {w_row + (a * k + b) * g.Wp + j0,
                       strip_col(p.k_s, ri.bh * g.H + ki, D, g, j0 + (b - r) * g.d),
                       p.rpe ? p.rpe + ((ri.h * k + a) * k + b) * D : nullptr};
      }
      for (int64_t c0 = 0; c0 < D; c0 += kBlock) {
        const int nc = static_cast<int>(std::min<int64_t>(kBlock, D - c0));
        if (p.rpe)
          gather<T, true>(taps.data(), n, c0, g.Wp, nc, acc);
        else
          gather<T, false>(taps.data(), n, c0, g.Wp, nc, acc);
        store_out<T>(acc, nc, vscale, nv, out_row, j0, c0, sw, sc, tmp.data());
      }
    }
    if (p.rpb_part) {  // sum of the (masked) weights of each slot over the row's queries
      T* part = p.rpb_part + row * R * R;
      for (int64_t a = 0; a < k; ++a) {
        const int64_t ki = tap_coord(ri.wi, a, g.d);
        if (ki < 0) continue;
        const int64_t ia = rpb_index(ri.wi, a, k);
        for (int64_t b = 0; b < k; ++b) {
          const T* w = w_row + (a * k + b) * g.Wp;
          V s(T(0));
          for (int64_t j0 = 0; j0 < g.W; j0 += L) s = s + V::loadu(w + j0);
          part[ia * R + b + r] += lane_sum<T>(s);
        }
      }
    }
    if (!g.clamp) continue;
    for (int64_t j = 0; j < g.W; ++j)  // clamped border columns (zeroed in w_s)
      if (g.border_col(j))
        query_aggregate<T>(g, ri, j, p.w + (row * g.W + j) * kk, p.k_s, p.scale,
                           out_row + j * sw, sc, p.rpb_part ? p.rpb_part + row * R * R : nullptr);
  }
}

// d_logits of the fused training pass: ds[t] = P[t] * (dP[t] - sum_t' P[t'] dP[t']), with
// dP[t] = d_out . v[t] (the logits kernel with q_s = d_out strips, k_s = v strips) and P the
// saved probabilities (w_s), all in the strip layout ('mask' only; invalid slots have P = 0).
template <typename T>
void softmax_grad_rows_impl(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t r0,
                            int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t kk = g.kk();
  Scratch<T> lg(kk * L);
  for (int64_t row = r0; row < r1; ++row) {
    const RowInfo ri = row_info(g, row);
    const T* pr = p.w_s + row * kk * g.Wp + g.P;
    T* out = p.out + row * kk * g.Wp + g.P;
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      strip_logits<T>(g, p, ri, j0, lg.data());
      V s(T(0));
      for (int64_t t = 0; t < kk; ++t)
        s = at::vec::fmadd(V::loadu(pr + t * g.Wp + j0), V::loadu(lg.data() + t * L), s);
      for (int64_t t = 0; t < kk; ++t)
        ((V::loadu(lg.data() + t * L) - s) * V::loadu(pr + t * g.Wp + j0))
            .store(out + t * g.Wp + j0);
    }
    zero_padding<T>(g, out, kk);
  }
}

template <typename T>
void inverse_rows_impl(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t r0, int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t k = g.k, kk = g.kk(), r = g.r(), D = g.D;
  // With border 'clamp' up to 2k-1 query rows share a key row (windows shifted at the border).
  Scratch<T> tmp(kBlock * L);
  Scratch<Tap<T>> taps((2 * k - 1) * k);
  Scratch<int64_t> qrows(2 * k - 1), qslots(2 * k - 1);
  const V vscale(p.scale);
  V acc[kBlock];
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t bh = row / g.H, pi = row % g.H;
    // the query rows whose window holds key row pi, with their window row a
    const InverseRange rr = inverse_range(pi, g.H, k, g.d, g.clamp);
    int64_t nr = 0;
    for (int64_t iq = rr.lo; iq <= rr.hi; ++iq) {
      const int64_t a = inverse_tap(rr, iq, k, g.clamp);
      if (a < 0) continue;
      qrows[nr] = bh * g.H + inverse_coord(rr, iq, g.d);
      qslots[nr++] = a;
    }
    T* out_row = out_row_of<T>(g, p, row);
    const int64_t sw = p.os[3], sc = p.os[4];
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      const int64_t nv = std::min<int64_t>(L, g.W - j0);
      int64_t n = 0;
      for (int64_t x = 0; x < nr; ++x)
        for (int64_t b = 0; b < k; ++b) {
          const int64_t col = j0 - (b - r) * g.d;  // the query that sees key j0 at column b
          taps[n++] = {p.w_s + (qrows[x] * kk + qslots[x] * k + b) * g.Wp + g.P + col,
                       strip_col(p.src_s, qrows[x], D, g, col), nullptr};
        }
      for (int64_t c0 = 0; c0 < D; c0 += kBlock) {
        const int nc = static_cast<int>(std::min<int64_t>(kBlock, D - c0));
        gather<T, false>(taps.data(), n, c0, g.Wp, nc, acc);
        store_out<T>(acc, nc, vscale, nv, out_row, j0, c0, sw, sc, tmp.data());
      }
    }
    if (!g.clamp) continue;
    // queries in clamped border columns (zeroed in w_s) scatter into this key row
    for (int64_t x = 0; x < nr; ++x) {
      for (int64_t j = 0; j < g.W; ++j) {
        if (!g.border_col(j)) continue;
        const AxisWindow wj = query_window(j, g.W, k, g.d, g.clamp);
        const T* w = p.w + (qrows[x] * g.W + j) * kk + qslots[x] * k;
        const T* src = strip_col(p.src_s, qrows[x], D, g, j);
        for (int64_t b = 0; b < k; ++b) {
          const int64_t kj = tap_coord(wj, b, g.d);
          if (kj < 0) continue;
          const T wt = p.scale * w[b];
          T* o = out_row + kj * sw;
          for (int64_t c = 0; c < D; ++c) o[c * sc] += wt * src[c * g.Wp];
        }
      }
    }
  }
}

}  // namespace

#define MMATTN_NA2D_KERNEL_DEFS(T)                                                           \
  void fused_rows(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t r0, int64_t r1) { \
    fused_rows_impl<T>(g, p, r0, r1);                                                        \
  }                                                                                          \
  void logits_rows(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t r0, int64_t r1) { \
    logits_rows_impl<T>(g, p, r0, r1);                                                       \
  }                                                                                          \
  void aggregate_rows(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t r0,           \
                      int64_t r1) {                                                          \
    aggregate_rows_impl<T>(g, p, r0, r1);                                                    \
  }                                                                                          \
  void inverse_rows(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t r0,             \
                    int64_t r1) {                                                            \
    inverse_rows_impl<T>(g, p, r0, r1);                                                      \
  }                                                                                          \
  void softmax_grad_rows(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t r0,        \
                         int64_t r1) {                                                       \
    softmax_grad_rows_impl<T>(g, p, r0, r1);                                                 \
  }

MMATTN_NA2D_KERNEL_DEFS(float)
MMATTN_NA2D_KERNEL_DEFS(double)
#undef MMATTN_NA2D_KERNEL_DEFS

int64_t vector_lanes_float() { return Vectorized<float>::size(); }

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmattn
