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

// epi(b0 + b, sum_c a[c*Wp] * (m[c*Wp + b*step] + e[b*D + c]))   for b < NB: the epilogue
// (LogitsStore) takes each sum from its register.
template <typename T, int NB, bool RPE, typename Epi>
inline void dot_block(const T* a, const T* m, const T* e, int64_t D, int64_t Wp, int64_t step,
                      int64_t b0, const Epi& epi) {
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
  // unrolled: a loop over s[b] would keep s in memory, stored at every step of the loop above
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) epi(b0 + b, s[b]);
}

template <typename T, bool RPE, typename Epi>
inline void dots(const T* a, const T* m, const T* e, int64_t D, int64_t Wp, int64_t step, int nb,
                 int64_t b0, const Epi& epi) {
  switch (nb) {
    case 1: return dot_block<T, 1, RPE>(a, m, e, D, Wp, step, b0, epi);
    case 2: return dot_block<T, 2, RPE>(a, m, e, D, Wp, step, b0, epi);
    case 3: return dot_block<T, 3, RPE>(a, m, e, D, Wp, step, b0, epi);
    case 4: return dot_block<T, 4, RPE>(a, m, e, D, Wp, step, b0, epi);
    case 5: return dot_block<T, 5, RPE>(a, m, e, D, Wp, step, b0, epi);
    case 6: return dot_block<T, 6, RPE>(a, m, e, D, Wp, step, b0, epi);
    case 7: return dot_block<T, 7, RPE>(a, m, e, D, Wp, step, b0, epi);
    default: return dot_block<T, 8, RPE>(a, m, e, D, Wp, step, b0, epi);
  }
}

// dot_block for two query rows that share the key row m (rows i and i + dilation, at window
// rows a and a - 1): each loaded key vector feeds both rows' FMAs. Every accumulator sees the
// same operations in the same order as in dot_block, so the results are identical.
template <typename T, int NB, bool RPE, typename Epi>
inline void dot_block2(const T* a0, const T* a1, const T* m, const T* e0, const T* e1, int64_t D,
                       int64_t Wp, int64_t step, int64_t b0, const Epi& epi0, const Epi& epi1) {
  using V = Vectorized<T>;
  V s0[NB], s1[NB];
  for (int b = 0; b < NB; ++b) s0[b] = s1[b] = V(T(0));
  for (int64_t c = 0; c < D; ++c) {
    const V av0 = V::loadu(a0 + c * Wp), av1 = V::loadu(a1 + c * Wp);
    const T* row = m + c * Wp;
    for (int b = 0; b < NB; ++b) {
      const V kv = in_register(V::loadu(row + b * step));
      if constexpr (RPE) {
        s0[b] = at::vec::fmadd(av0, kv + V(e0[b * D + c]), s0[b]);
        s1[b] = at::vec::fmadd(av1, kv + V(e1[b * D + c]), s1[b]);
      } else {
        s0[b] = at::vec::fmadd(av0, kv, s0[b]);
        s1[b] = at::vec::fmadd(av1, kv, s1[b]);
      }
    }
  }
#pragma GCC unroll 8  // see dot_block
  for (int b = 0; b < NB; ++b) epi0(b0 + b, s0[b]), epi1(b0 + b, s1[b]);
}

// Register block of the two-row kernels: 2 x 8 accumulators need 32 vector registers (AVX512);
// with 16 (AVX2 and narrower) the blocks are 4 wide.
template <typename T>
constexpr int pair_block() {
  return Vectorized<T>::size() * sizeof(T) >= 64 ? kBlock : kBlock / 2;
}

template <typename T, bool RPE, typename Epi>
inline void dots2(const T* a0, const T* a1, const T* m, const T* e0, const T* e1, int64_t D,
                  int64_t Wp, int64_t step, int nb, int64_t b0, const Epi& epi0, const Epi& epi1) {
  switch (nb) {
    case 1: return dot_block2<T, 1, RPE>(a0, a1, m, e0, e1, D, Wp, step, b0, epi0, epi1);
    case 2: return dot_block2<T, 2, RPE>(a0, a1, m, e0, e1, D, Wp, step, b0, epi0, epi1);
    case 3: return dot_block2<T, 3, RPE>(a0, a1, m, e0, e1, D, Wp, step, b0, epi0, epi1);
    case 4: return dot_block2<T, 4, RPE>(a0, a1, m, e0, e1, D, Wp, step, b0, epi0, epi1);
    case 5: return dot_block2<T, 5, RPE>(a0, a1, m, e0, e1, D, Wp, step, b0, epi0, epi1);
    case 6: return dot_block2<T, 6, RPE>(a0, a1, m, e0, e1, D, Wp, step, b0, epi0, epi1);
    case 7: return dot_block2<T, 7, RPE>(a0, a1, m, e0, e1, D, Wp, step, b0, epi0, epi1);
    default: return dot_block2<T, 8, RPE>(a0, a1, m, e0, e1, D, Wp, step, b0, epi0, epi1);
  }
}

// Two taps of the same key (or value) vector m: weight w0 of the first query row, w1 of the second.
template <typename T>
struct Tap2 {
  const T* w0;
  const T* w1;
  const T* m;
  const T* e0 = nullptr;  // rpe of the slot of each row, (D,), or nullptr
  const T* e1 = nullptr;
};

// Element offsets that the gathers add to every tap's weight (w, w0, w1) and key/value (m)
// pointer. The kernels build a row's taps once, at query (or key) column 0, and gather each
// vector j0 of the row with the shift {j0, j0} (weights in the strip layout) or {0, j0} (the
// fused kernel's per-vector weights): the same pointers as taps built per vector, without
// rebuilding k*k taps for every vector (callgrind: 4% of the fused kernel's instructions at
// D = 8).
struct TapShift {
  int64_t w, m;
};

// acc0[c] += sum over taps w0 * m[(c0 + c)*Wp], acc1[c] += ... w1 ..., for c < NC; each loaded
// m vector feeds both rows, in the order of gather_block.
// ZERO1: acc1 starts from zero instead.
template <typename T, int NC, bool RPE, bool ZERO1 = false>
inline void gather2_block(const Tap2<T>* taps, int64_t n, TapShift sh, int64_t c0, int64_t Wp,
                          Vectorized<T>* acc0, Vectorized<T>* acc1) {
  using V = Vectorized<T>;
  V s0[NC], s1[NC];
  for (int c = 0; c < NC; ++c) s0[c] = acc0[c], s1[c] = ZERO1 ? V(T(0)) : acc1[c];
  const int64_t mo = sh.m + c0 * Wp;
  for (int64_t t = 0; t < n; ++t) {
    const V w0 = V::loadu(taps[t].w0 + sh.w), w1 = V::loadu(taps[t].w1 + sh.w);
    const T* m = taps[t].m + mo;
    for (int c = 0; c < NC; ++c) {
      const V mv = in_register(V::loadu(m + c * Wp));
      if constexpr (RPE) {
        s0[c] = at::vec::fmadd(w0, mv + V(taps[t].e0[c0 + c]), s0[c]);
        s1[c] = at::vec::fmadd(w1, mv + V(taps[t].e1[c0 + c]), s1[c]);
      } else {
        s0[c] = at::vec::fmadd(w0, mv, s0[c]);
        s1[c] = at::vec::fmadd(w1, mv, s1[c]);
      }
    }
  }
  for (int c = 0; c < NC; ++c) acc0[c] = s0[c], acc1[c] = s1[c];
}

// always inlined (into gather_pair): with TapShift, gcc stopped inlining it and its calls made
// SASA's first-stage call 5% slower
template <typename T, bool RPE = false, bool ZERO1 = false>
__attribute__((always_inline)) inline void gather2(const Tap2<T>* taps, int64_t n, TapShift sh,
                                                   int64_t c0, int64_t Wp, int nc,
                                                   Vectorized<T>* acc0, Vectorized<T>* acc1) {
  switch (nc) {
    case 1: return gather2_block<T, 1, RPE, ZERO1>(taps, n, sh, c0, Wp, acc0, acc1);
    case 2: return gather2_block<T, 2, RPE, ZERO1>(taps, n, sh, c0, Wp, acc0, acc1);
    case 3: return gather2_block<T, 3, RPE, ZERO1>(taps, n, sh, c0, Wp, acc0, acc1);
    case 4: return gather2_block<T, 4, RPE, ZERO1>(taps, n, sh, c0, Wp, acc0, acc1);
    case 5: return gather2_block<T, 5, RPE, ZERO1>(taps, n, sh, c0, Wp, acc0, acc1);
    case 6: return gather2_block<T, 6, RPE, ZERO1>(taps, n, sh, c0, Wp, acc0, acc1);
    case 7: return gather2_block<T, 7, RPE, ZERO1>(taps, n, sh, c0, Wp, acc0, acc1);
    default: return gather2_block<T, 8, RPE, ZERO1>(taps, n, sh, c0, Wp, acc0, acc1);
  }
}

// acc[c] (+)= sum over taps w * (m[(c0 + c)*Wp] + e[c0 + c])   for c < NC; ACC: add to acc
// instead of starting from zero
template <typename T, int NC, bool RPE, bool ACC = false>
inline void gather_block(const Tap<T>* taps, int64_t n, TapShift sh, int64_t c0, int64_t Wp,
                         Vectorized<T>* acc) {
  using V = Vectorized<T>;
  V s[NC];
  for (int c = 0; c < NC; ++c) s[c] = ACC ? acc[c] : V(T(0));
  const int64_t mo = sh.m + c0 * Wp;
  for (int64_t t = 0; t < n; ++t) {
    const V wv = V::loadu(taps[t].w + sh.w);
    const T* m = taps[t].m + mo;
    for (int c = 0; c < NC; ++c) {
      V mv = V::loadu(m + c * Wp);
      if constexpr (RPE) mv = mv + V(taps[t].e[c0 + c]);
      s[c] = at::vec::fmadd(wv, mv, s[c]);
    }
  }
  for (int c = 0; c < NC; ++c) acc[c] = s[c];
}

template <typename T, bool RPE, bool ACC = false>
inline void gather(const Tap<T>* taps, int64_t n, TapShift sh, int64_t c0, int64_t Wp, int nc,
                   Vectorized<T>* acc) {
  switch (nc) {
    case 1: return gather_block<T, 1, RPE, ACC>(taps, n, sh, c0, Wp, acc);
    case 2: return gather_block<T, 2, RPE, ACC>(taps, n, sh, c0, Wp, acc);
    case 3: return gather_block<T, 3, RPE, ACC>(taps, n, sh, c0, Wp, acc);
    case 4: return gather_block<T, 4, RPE, ACC>(taps, n, sh, c0, Wp, acc);
    case 5: return gather_block<T, 5, RPE, ACC>(taps, n, sh, c0, Wp, acc);
    case 6: return gather_block<T, 6, RPE, ACC>(taps, n, sh, c0, Wp, acc);
    case 7: return gather_block<T, 7, RPE, ACC>(taps, n, sh, c0, Wp, acc);
    default: return gather_block<T, 8, RPE, ACC>(taps, n, sh, c0, Wp, acc);
  }
}

// The aggregation of a pair of rows (ri0, ri1 of for_row_pairs) over channels [c0, c0 + nc),
// nc <= kBlock: acc0 = row 0's own taps (taps0), then the shared ones (taps2); acc1 = taps2,
// then row 1's own taps (taps1): each row's taps in the order of its one-row pass, so the sums
// are identical. The single-row taps run kBlock channels wide (kBlock independent FMA chains),
// the shared ones in slices of pair_block() channels (2 x pair_block() chains).
template <typename T, bool RPE>
inline void gather_pair(const Tap<T>* taps0, int64_t n0, const Tap2<T>* taps2, int64_t n2,
                        const Tap<T>* taps1, int64_t n1, TapShift sh, int64_t c0, int64_t Wp,
                        int nc, Vectorized<T>* acc0, Vectorized<T>* acc1) {
  constexpr int NB = pair_block<T>();
  gather<T, RPE>(taps0, n0, sh, c0, Wp, nc, acc0);  // from zero
  for (int cc = 0; cc < nc; cc += NB)  // acc1 from zero
    gather2<T, RPE, true>(taps2, n2, sh, c0 + cc, Wp, std::min(NB, nc - cc), acc0 + cc,
                          acc1 + cc);
  gather<T, RPE, true>(taps1, n1, sh, c0, Wp, nc, acc1);
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
// contiguous (sw == 1); for channel-contiguous rows (sc == 1, the op layout) a full block of
// kBlock channels and L queries goes through ATen's transpose_mxn (AVX2: the 8 x 8 shuffle
// kernel; AVX-512: its masked 16 x 16 one); anything else one element at a time. `tmp`: kBlock * L.
template <typename T>
inline void store_out(const Vectorized<T>* acc, int nc, const Vectorized<T>& mul, int64_t nv,
                      T* out_row, int64_t j0, int64_t c0, int64_t sw, int64_t sc, T* tmp) {
  using V = Vectorized<T>;
  constexpr int L = V::size();
  if (sw == 1) {
    for (int c = 0; c < nc; ++c) (acc[c] * mul).store(out_row + (c0 + c) * sc + j0, nv);
    return;
  }
  for (int c = 0; c < nc; ++c) (acc[c] * mul).store(tmp + c * L);
  if (sc == 1 && nc == kBlock && nv == L) {
    at::vec::transpose_mxn<T, kBlock, L>(tmp, L, out_row + j0 * sw + c0, sw);
    return;
  }
  for (int64_t l = 0; l < nv; ++l)
    for (int c = 0; c < nc; ++c) out_row[(j0 + l) * sw + (c0 + c) * sc] = tmp[c * L + l];
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

// Channel 0 of strip row `plane` at image column j (channel c: + c * Wp).
template <typename T>
inline const T* strip_col(const StripRows<T>& s, int64_t plane, int64_t j) {
  return s(plane) + j;
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

// transpose_to_strip (na2d_kernels.h). W-contiguous planes (sj == 1: SASA's views of a
// convolution output) row by row, by vectors where a row holds one (W >= L), else element by
// element; channel-contiguous ones (sc == 1, the op layout) in 8 x 8 tiles through ATen's
// transpose_mxn (AVX2: eight loads, 24 shuffles, eight stores; AVX-512: its masked 16 x 16
// kernel; the generic build and double: element by element), with the columns and channels left
// over, and planes of any other strides, element by element. The element loops are kept as
// loops: gcc's memset/memcpy calls for them cost more on these short rows (perf, SASA's
// first-stage call: 5.4% -> 4.3% of the samples).
template <typename T>
MMATTN_NO_LIBCALL_LOOPS void transpose_to_strip_impl(const T* in, int64_t sj, int64_t sc, T* out,
                                                     int64_t C, int64_t P, int64_t W,
                                                     int64_t Wp) {
  using V = Vectorized<T>;
  constexpr int64_t TB = 8, L = V::size();
  if (sj == 1 && W >= L) {
    // a vector of zeros at each L columns of the padding (the last one ending at Wp: both stay
    // inside the row), then the row's W values, the last vector ending at column W; the zeros
    // that land on data columns are overwritten by the copy (callgrind, SASA's first-stage call:
    // 2.4 -> 1.5 instructions per copied element, padding included)
    for (int64_t c = 0; c < C; ++c) {
      T* row = out + c * Wp;
      const T* src = in + c * sc;
      for (int64_t j = 0; j < P; j += L) V(T(0)).store(row + std::min(j, Wp - L));
      for (int64_t j = P + W; j < Wp; j += L) V(T(0)).store(row + std::min(j, Wp - L));
      int64_t j = 0;
      for (; j + L <= W; j += L) V::loadu(src + j).store(row + P + j);
      if (j < W) V::loadu(src + W - L).store(row + P + W - L);
    }
    return;
  }
  for (int64_t c = 0; c < C; ++c) {
    T* row = out + c * Wp;
    for (int64_t j = 0; j < P; ++j) row[j] = T(0);
    for (int64_t j = P + W; j < Wp; ++j) row[j] = T(0);
  }
  out += P;
  if (sj == 1) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < W; ++j) out[c * Wp + j] = in[c * sc + j];
    return;
  }
  const int64_t W8 = sc == 1 ? W / TB * TB : 0, C8 = C / TB * TB;
  for (int64_t j0 = 0; j0 < W8; j0 += TB) {
    for (int64_t c0 = 0; c0 < C8; c0 += TB)
      at::vec::transpose_mxn<T, TB, TB>(in + j0 * sj + c0, sj, out + c0 * Wp + j0, Wp);
    for (int64_t c = C8; c < C; ++c)
      for (int64_t j = j0; j < j0 + TB; ++j) out[c * Wp + j] = in[j * sj + c];
  }
  for (int64_t j = W8; j < W; ++j)
    for (int64_t c = 0; c < C; ++c) out[c * Wp + j] = in[j * sj + c * sc];
}

// Memory kept by the calling thread from call to call (a fresh buffer of a few hundred KiB can
// be a fresh mmap, faulted in and zeroed on every call): get(n) returns at least n elements, the
// same buffer while n does not grow. No std::vector/unique_ptr: see Scratch.
template <typename T>
class ThreadBuffer {
 public:
  ThreadBuffer() = default;
  ThreadBuffer(const ThreadBuffer&) = delete;
  ThreadBuffer& operator=(const ThreadBuffer&) = delete;
  ~ThreadBuffer() { aligned_free(p_); }
  T* get(int64_t n) {
    if (n > n_) {
      aligned_free(p_);
      p_ = aligned_alloc_of<T>(n);
      n_ = n;
    }
    return p_;
  }

 private:
  T* p_ = nullptr;
  int64_t n_ = 0;
};

// The smallest power of two >= n.
inline int64_t pow2_at_least(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// A per-thread ring of strip rows of one op-layout D-channel input (OpRows): load(r) copies plane
// row r (its (W, D) plane, transpose_to_strip) into slot r % n unless the slot holds it already.
// The caller loads every row a step reads before the step, and the rows of one step span at most
// n plane rows, so that a load never evicts a row in use; rows are loaded in ascending order,
// each once while it stays in use. The constructor points `rows` (the kernel's StripRows of the
// input) at the ring. `slot`: which of the thread's ring buffers (one per input of a kernel).
template <typename T>
class StripRing {
 public:
  StripRing(const OpRows<T>& src, StripRows<T>& rows, const StripGeometry& g, int64_t n,
            int slot)
      : src_(src), g_(g), n_(n) {
    thread_local ThreadBuffer<T> data[3];
    thread_local ThreadBuffer<int64_t> held[3];
    TORCH_INTERNAL_ASSERT(src.data != nullptr && n > 0 && (n & (n - 1)) == 0);
    buf_ = data[slot].get(n_ * g.D * g.Wp);
    held_ = held[slot].get(n_);
    for (int64_t s = 0; s < n_; ++s) held_[s] = -1;
    rows = {buf_ + g_.P, n_ - 1, g_.D * g_.Wp};
  }
  StripRing(const StripRing&) = delete;
  StripRing& operator=(const StripRing&) = delete;

  void load(int64_t r) {
    const int64_t s = r & (n_ - 1);
    if (held_[s] == r) return;
    transpose_to_strip_impl<T>(src_.plane(g_, r), src_.st[3], src_.st[4],
                               buf_ + s * g_.D * g_.Wp, g_.D, g_.P, g_.W, g_.Wp);
    held_[s] = r;
  }

 private:
  const OpRows<T>& src_;
  const StripGeometry& g_;
  int64_t n_;
  T* buf_ = nullptr;
  int64_t* held_ = nullptr;
};

// Ring sizes. A step is one row or a pair (i, i + d) of for_row_pairs: its query rows span d + 1
// plane rows, its windows k*d + 1; the query rows that see one key row span (k-1)*d + 1 rows
// ('mask') or up to (2k-2)*d + 1 ('clamp': shifted windows), a pair of key rows d more.
inline int64_t query_ring(const StripGeometry& g) { return pow2_at_least(g.d + 1); }
inline int64_t window_ring(const StripGeometry& g) { return pow2_at_least(g.k * g.d + 1); }
inline int64_t inverse_ring(const StripGeometry& g) {
  return pow2_at_least((g.clamp ? 2 * g.k - 1 : g.k) * g.d + 1);
}

// Loads query row ri and the key rows of its window: q into `q` (or null), keys into `a` and `b`
// (or null).
template <typename T>
inline void load_window(const StripGeometry& g, const RowInfo& ri, StripRing<T>* q,
                        StripRing<T>* a, StripRing<T>* b) {
  if (q) q->load(ri.row);
  for (int64_t t = 0; t < g.k; ++t) {
    const int64_t ki = tap_coord(ri.wi, t, g.d);
    if (ki < 0) continue;
    if (a) a->load(ri.bh * g.H + ki);
    if (b) b->load(ri.bh * g.H + ki);
  }
}

// Logits of query (row, j) for every slot, per query (the clamped border columns): `lg`, kk.
template <typename T>
void query_logits(const StripGeometry& g, const Na2dBuffers<T>& p, const RowInfo& ri, int64_t j,
                  T* lg) {
  const StripRows<T>& q_s = p.q_s;
  const StripRows<T>& k_s = p.k_s;
  const int64_t k = g.k, R = g.R();
  const AxisWindow wj = query_window(j, g.W, k, g.d, g.clamp);
  const T* q = strip_col(q_s, ri.row, j);
  for (int64_t a = 0; a < k; ++a) {
    const int64_t ki = tap_coord(ri.wi, a, g.d);
    for (int64_t b = 0; b < k; ++b) {
      const int64_t kj = tap_coord(wj, b, g.d);
      if (ki < 0 || kj < 0) {
        lg[a * k + b] = p.invalid;
        continue;
      }
      const T* kc = strip_col(k_s, ri.bh * g.H + ki, kj);
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
                     const StripRows<T>& m_s, T mul, T* o, int64_t sc, T* rpb_part) {
  const int64_t k = g.k, R = g.R();
  const AxisWindow wj = query_window(j, g.W, k, g.d, g.clamp);
  for (int64_t c = 0; c < g.D; ++c) o[c * sc] = 0;
  for (int64_t a = 0; a < k; ++a) {
    const int64_t ki = tap_coord(ri.wi, a, g.d);
    for (int64_t b = 0; b < k; ++b) {
      const int64_t kj = tap_coord(wj, b, g.d);
      if (ki < 0 || kj < 0) continue;
      const T wt = w[a * k + b];
      const T* mc = strip_col(m_s, ri.bh * g.H + ki, kj);
      for (int64_t c = 0; c < g.D; ++c) o[c * sc] += wt * mc[c * g.Wp];
      if (rpb_part) rpb_part[rpb_index(ri.wi, a, k) * R + rpb_index(wj, b, k)] += wt;
    }
  }
  for (int64_t c = 0; c < g.D; ++c) o[c * sc] *= mul;
}

// Whether the lanes of the query vector at j0 have taps outside the map ('mask' border).
inline bool masked_vector(const StripGeometry& g, int64_t j0, int64_t L) {
  const int64_t nv = std::min<int64_t>(L, g.W - j0);
  return !g.clamp && (j0 - g.P < 0 || j0 + nv - 1 + g.P >= g.W);
}

// The border masks of the query vector at j0 for the window columns b (column_mask, k vectors
// into out[b*L + lane]), or null when none of its taps leaves the map.
template <typename T>
inline const T* column_masks(const StripGeometry& g, int64_t j0, T* out) {
  constexpr int64_t L = Vectorized<T>::size();
  if (!masked_vector(g, j0, L)) return nullptr;
  for (int64_t b = 0; b < g.k; ++b) column_mask<T>(j0, (b - g.r()) * g.d, g.W).store(out + b * L);
  return out;
}

// The epilogue of the logits blocks (dot_block, dot_block2) for window row a of the L queries
// j0.. of one row: scale, the separable rpe terms, rpb and the border mask on the logit of window
// column b, stored into lg[(a*k + b)*L + lane], while the sum is still in a register.
// `sep`: the separable rpe terms of the row's query vector (separable_rpe_terms), or null;
// `cmask`: the vector's column_masks, or null.
template <typename T>
struct LogitsStore {
  using V = Vectorized<T>;
  static constexpr int64_t L = V::size();
  T* lg;           // window row a's logits
  const T* sep_a;  // the row term of `sep`, or null
  const T* sep_b;  // the column terms of `sep`, or null
  const T* rpb;    // rpb of window row a at window column 0 (offset -r), or null
  const T* cmask;
  T scale, invalid;

  __attribute__((always_inline)) LogitsStore(const StripGeometry& g, const Na2dBuffers<T>& p,
                                             const RowInfo& ri, int64_t a, const T* cmask_,
                                             T* lg_, const T* sep)
      : lg(lg_ + a * g.k * L),
        sep_a(sep ? sep + a * L : nullptr),
        sep_b(sep ? sep + g.k * L : nullptr),
        rpb(p.rpb ? p.rpb + (ri.h * g.R() + rpb_index(ri.wi, a, g.k)) * g.R() + g.r() : nullptr),
        cmask(cmask_),
        scale(p.scale),
        invalid(p.invalid) {}

  // The constants are loaded here, not held in vector registers across the blocks' loops: with
  // them held, gcc spilled the accumulators inside the loops (one store per FMA pair).
  __attribute__((always_inline)) inline void operator()(int64_t b, V acc) const {
    // explicit FMAs: gcc's own contraction of a multiply and an add can differ between the
    // inlined copies of the one-row and row-pair kernels (seen: other bits with other thread
    // counts), so the arithmetic is spelled out
    const V vscale(scale);
    V x = sep_b ? at::vec::fmadd(acc, vscale, V::loadu(sep_a) + V::loadu(sep_b + b * L))
                : rpb ? at::vec::fmadd(acc, vscale, V(rpb[b])) : acc * vscale;
    if (sep_b && rpb) x = x + V(rpb[b]);
    if (cmask) x = V::blendv(V(invalid), x, V::loadu(cmask + b * L));
    x.store(lg + b * L);
  }
};

// epi(b, sum_{c < n} q[c*Wp] * tab[b*D + c])   for b < NB: the L queries' dot products with NB
// rows of a (., D) table, over its first n channels, handed over as in dot_block.
template <typename T, int NB, typename Epi>
inline void table_block(const T* q, const T* tab, int64_t n, int64_t D, int64_t Wp,
                        const Epi& epi) {
  using V = Vectorized<T>;
  V s[NB];
  for (int b = 0; b < NB; ++b) s[b] = V(T(0));
  for (int64_t c = 0; c < n; ++c) {
    const V qv = V::loadu(q + c * Wp);
    for (int b = 0; b < NB; ++b) s[b] = at::vec::fmadd(qv, V(tab[b * D + c]), s[b]);
  }
#pragma GCC unroll 8  // see dot_block
  for (int b = 0; b < NB; ++b) epi(b, s[b]);
}

template <typename T, typename Epi>
inline void table_dots(const T* q, const T* tab, int64_t n, int64_t D, int64_t Wp, int nb,
                       const Epi& epi) {
  switch (nb) {
    case 1: return table_block<T, 1>(q, tab, n, D, Wp, epi);
    case 2: return table_block<T, 2>(q, tab, n, D, Wp, epi);
    case 3: return table_block<T, 3>(q, tab, n, D, Wp, epi);
    case 4: return table_block<T, 4>(q, tab, n, D, Wp, epi);
    case 5: return table_block<T, 5>(q, tab, n, D, Wp, epi);
    case 6: return table_block<T, 6>(q, tab, n, D, Wp, epi);
    case 7: return table_block<T, 7>(q, tab, n, D, Wp, epi);
    default: return table_block<T, 8>(q, tab, n, D, Wp, epi);
  }
}

// The separable rpe's logit terms of the L queries at q (head h): sep[a*L + lane] =
// scale * q . rpe_a[h, a] and sep[(k + b)*L + lane] = scale * q . rpe_b[h, b], 2k vectors; null
// when the rpe is not separable (na2d_kernels.h). The logit of slot (a, b) is then
// scale * q . k + sep[a] + sep[k + b].
template <typename T>
const T* separable_rpe_terms(const StripGeometry& g, const Na2dBuffers<T>& p, int64_t h,
                             const T* q, T* sep) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  if (!p.rpe_a) return nullptr;
  const int64_t k = g.k, D = g.D;
  const V vscale(p.scale);
  for (int t = 0; t < 2; ++t) {
    const int64_t lo = p.rpe_range[(h * 2 + t) * 2], hi = p.rpe_range[(h * 2 + t) * 2 + 1];
    const T* tab = (t == 0 ? p.rpe_a : p.rpe_b) + h * k * D + lo;
    for (int64_t a0 = 0; a0 < k; a0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, k - a0));
      T* out = sep + (t * k + a0) * L;
      table_dots<T>(q + lo * g.Wp, tab + a0 * D, hi - lo, D, g.Wp, nb,
                    [&](int b, V x) { (x * vscale).store(out + b * L); });
    }
  }
  return sep;
}

// The scratch of strip_logits and strip_logits2 (elements, L lanes): the separable rpe terms of
// two rows (2k vectors each), then the column masks (k vectors) from logits_mask_offset on.
inline int64_t logits_mask_offset(const StripGeometry& g, int64_t L) { return 4 * g.k * L; }
inline int64_t logits_scratch_size(const StripGeometry& g, int64_t L) {
  return logits_mask_offset(g, L) + g.k * L;
}

// Logits of the L queries j0.. of one row into lg[t*L + lane]; invalid slots get p.invalid.
// `scratch`: logits_scratch_size elements.
template <typename T>
void strip_logits(const StripGeometry& g, const Na2dBuffers<T>& p, const RowInfo& ri,
                  int64_t j0, T* lg, T* scratch) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t k = g.k;
  const T* cmask = column_masks<T>(g, j0, scratch + logits_mask_offset(g, L));
  const T* q = strip_col(p.q_s, ri.row, j0);
  const T* terms = separable_rpe_terms<T>(g, p, ri.h, q, scratch);
  const V vinvalid(p.invalid);
  for (int64_t a = 0; a < k; ++a) {
    const int64_t ki = tap_coord(ri.wi, a, g.d);
    if (ki < 0) {
      for (int64_t b = 0; b < k; ++b) vinvalid.store(lg + (a * k + b) * L);
      continue;
    }
    const T* kr = strip_col(p.k_s, ri.bh * g.H + ki, j0 - g.P);
    const T* rpe = p.rpe ? p.rpe + (ri.h * k + a) * k * g.D : nullptr;
    const LogitsStore<T> epi(g, p, ri, a, cmask, lg, terms);
    for (int64_t b0 = 0; b0 < k; b0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, k - b0));
      if (rpe)
        dots<T, true>(q, kr + b0 * g.d, rpe + b0 * g.D, g.D, g.Wp, g.d, nb, b0, epi);
      else
        dots<T, false>(q, kr + b0 * g.d, nullptr, g.D, g.Wp, g.d, nb, b0, epi);
    }
  }
}

// Query rows i and i + dilation of one plane whose windows are one key row apart: window row a
// of the second is window row a + 1 of the first, so the two rows read k + 1 key rows, not 2k.
// That holds for every row with border 'mask' and away from the border with 'clamp'. Rows pair as
// (i, i + d) for even i / d.
inline bool leads_pair(const StripGeometry& g, int64_t i) {
  if ((i / g.d) % 2 != 0 || i + g.d >= g.H) return false;
  const AxisWindow w0 = query_window(i, g.H, g.k, g.d, g.clamp);
  const AxisWindow w1 = query_window(i + g.d, g.H, g.k, g.d, g.clamp);
  for (int64_t a = 1; a < g.k; ++a)
    if (tap_coord(w1, a - 1, g.d) != tap_coord(w0, a, g.d)) return false;
  return true;
}

// Runs one(ri) or two(ri, ri2) over the rows [r0, r1): two() for the pairs of leads_pair whose
// rows both lie in the range, one() for the others. The per-element operations are those of
// one(), so results do not depend on how the rows are split between threads.
// `leads(i)` (leads_pair by default) says whether rows i and i + d pair.
template <typename One, typename Two, typename Leads>
inline void for_row_pairs(const StripGeometry& g, int64_t r0, int64_t r1, One&& one, Two&& two,
                          Leads&& leads) {
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t i = row % g.H;
    if ((i / g.d) % 2 == 1 && row - g.d >= r0 && leads(i - g.d)) continue;  // done
    if (row + g.d < r1 && leads(i))
      two(row_info(g, row), row_info(g, row + g.d));
    else
      one(row_info(g, row));
  }
}

template <typename One, typename Two>
inline void for_row_pairs(const StripGeometry& g, int64_t r0, int64_t r1, One&& one, Two&& two) {
  for_row_pairs(g, r0, r1, one, two, [&g](int64_t i) { return leads_pair(g, i); });
}

// strip_logits of a leads_pair pair of rows (ri0, ri1) at once: lg0 and lg1.
template <typename T>
void strip_logits2(const StripGeometry& g, const Na2dBuffers<T>& p, const RowInfo& ri0,
                   const RowInfo& ri1, int64_t j0, T* lg0, T* lg1, T* scratch) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  constexpr int NB = pair_block<T>();
  const int64_t k = g.k, D = g.D;
  const T* cmask = column_masks<T>(g, j0, scratch + logits_mask_offset(g, L));
  const T* q0 = strip_col(p.q_s, ri0.row, j0);
  const T* q1 = strip_col(p.q_s, ri1.row, j0);
  const T* terms0 = separable_rpe_terms<T>(g, p, ri0.h, q0, scratch);
  const T* terms1 = separable_rpe_terms<T>(g, p, ri1.h, q1, scratch + 2 * k * L);
  const V vinvalid(p.invalid);
  for (int64_t a = 0; a <= k; ++a) {  // key row a of row 0 = key row a - 1 of row 1
    const bool in0 = a < k, in1 = a > 0;
    const int64_t ki = in0 ? tap_coord(ri0.wi, a, g.d) : tap_coord(ri1.wi, a - 1, g.d);
    if (ki < 0) {
      for (int64_t b = 0; b < k; ++b) {
        if (in0) vinvalid.store(lg0 + (a * k + b) * L);
        if (in1) vinvalid.store(lg1 + ((a - 1) * k + b) * L);
      }
      continue;
    }
    const T* kr = strip_col(p.k_s, ri0.bh * g.H + ki, j0 - g.P);
    const T* e0 = p.rpe && in0 ? p.rpe + (ri0.h * k + a) * k * D : nullptr;
    const T* e1 = p.rpe && in1 ? p.rpe + (ri1.h * k + a - 1) * k * D : nullptr;
    if (in0 && in1) {
      const LogitsStore<T> epi0(g, p, ri0, a, cmask, lg0, terms0);
      const LogitsStore<T> epi1(g, p, ri1, a - 1, cmask, lg1, terms1);
      for (int64_t b0 = 0; b0 < k; b0 += NB) {
        const int nb = static_cast<int>(std::min<int64_t>(NB, k - b0));
        if (p.rpe)
          dots2<T, true>(q0, q1, kr + b0 * g.d, e0 + b0 * D, e1 + b0 * D, D, g.Wp, g.d, nb, b0,
                         epi0, epi1);
        else
          dots2<T, false>(q0, q1, kr + b0 * g.d, nullptr, nullptr, D, g.Wp, g.d, nb, b0, epi0,
                          epi1);
      }
      continue;
    }
    const LogitsStore<T> epi = in0 ? LogitsStore<T>(g, p, ri0, a, cmask, lg0, terms0)
                                   : LogitsStore<T>(g, p, ri1, a - 1, cmask, lg1, terms1);
    const T* q = in0 ? q0 : q1;
    const T* e = in0 ? e0 : e1;
    for (int64_t b0 = 0; b0 < k; b0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, k - b0));
      if (e)
        dots<T, true>(q, kr + b0 * g.d, e + b0 * D, D, g.Wp, g.d, nb, b0, epi);
      else
        dots<T, false>(q, kr + b0 * g.d, nullptr, D, g.Wp, g.d, nb, b0, epi);
    }
  }
}

// max(a, b) where neither is NaN; with a NaN, either a or b (the softmax's maximum: a NaN logit
// makes its own exp NaN, and with it the query's sum and output, whatever the maximum).
// at::vec::maximum propagates NaN with two more instructions per call.
template <typename T>
inline Vectorized<T> max_ignoring_nan(const Vectorized<T>& a, const Vectorized<T>& b) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) return _mm512_max_ps(a, b);
  else return _mm512_max_pd(a, b);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) return _mm256_max_ps(a, b);
  else return _mm256_max_pd(a, b);
#else
  return at::vec::maximum(a, b);
#endif
}

// f(t, t % N) for t = 0..n-1 in order, with t % N a constant of the unrolled body, so that the
// N accumulators f indexes by it stay in registers.
template <int N, typename F>
inline void for_chains(int64_t n, F&& f) {
  int64_t t = 0;
  for (; t + N <= n; t += N)
    for (int u = 0; u < N; ++u) f(t + u, u);
  for (int u = 0; u < N - 1; ++u)  // a constant trip count: unrolled, u stays a constant
    if (t + u < n) f(t + u, u);
}

// Whether a slot of the L queries j0.. of row ri is masked (-inf) before the softmax: a window
// row or column outside the map ('mask'), or an additive bias (which may mask slots with -inf).
// Such vectors blend their masked slots to exactly 0. A -inf from anywhere else (an rpb or rpe
// entry, an overflowing q . k) in another vector gets the clamped exp(-87 - ...), ~1e-38 of the
// sum, instead of 0 in the float AVX builds.
template <typename T>
inline bool softmax_masked(const StripGeometry& g, const Na2dBuffers<T>& p, const RowInfo& ri,
                           int64_t j0) {
  if (p.bias || masked_vector(g, j0, Vectorized<T>::size())) return true;
  for (int64_t a = 0; a < g.k; ++a)
    if (tap_coord(ri.wi, a, g.d) < 0) return true;
  return false;
}

// The softmax of the fused kernel on the logits lg of the L queries j0.. of row ri (bias added
// first): lg becomes exp(logit - max), 0 on invalid slots; returns 1 / sum.
template <typename T>
Vectorized<T> softmax_vector(const StripGeometry& g, const Na2dBuffers<T>& p, const RowInfo& ri,
                             int64_t j0, T* lg) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t kk = g.kk();
  const int64_t nv = std::min<int64_t>(L, g.W - j0);
  const T ninf = -std::numeric_limits<T>::infinity();
  const bool masked = softmax_masked<T>(g, p, ri, j0);
  if (p.bias) {
    const T* bias = p.bias + (ri.row * g.W + j0) * kk;
    for (int64_t l = 0; l < nv; ++l)
      for (int64_t t = 0; t < kk; ++t) lg[t * L + l] += bias[l * kk + t];
  }
  // Four independent running maxima and sums (slot t goes to t % 4): a single chain of k*k
  // dependent adds would bound the kernel by the add latency when D is small.
  // The chains are indexed by constants (for_chains): indexed by t % 4, gcc keeps the four
  // vectors on the stack, one store and one reload per slot (perf).
  constexpr int kChains = 4;
  V m[kChains], sum[kChains];
  for (int u = 0; u < kChains; ++u) m[u] = V(ninf), sum[u] = V(T(0));
  for_chains<kChains>(kk, [&](int64_t t, int u) {
    m[u] = max_ignoring_nan(m[u], V::loadu(lg + t * L));
  });
  const V mx = max_ignoring_nan(max_ignoring_nan(m[0], m[1]), max_ignoring_nan(m[2], m[3]));
  // two loops, not one with `if (masked)` in its body: gcc does not hoist that test out of the
  // unrolled chains (callgrind: 1.2% more instructions in the whole D=8 kernel)
  if (masked) {
    for_chains<kChains>(kk, [&](int64_t t, int u) {
      const V x = V::loadu(lg + t * L);
      // a masked slot (-inf): vexp clamps it to exp(-87); the blend makes it exactly 0
      const V e = V::blendv(V(T(0)), vexp<T>(x - mx), x != V(ninf));
      e.store(lg + t * L);
      sum[u] = sum[u] + e;
    });
  } else {
    for_chains<kChains>(kk, [&](int64_t t, int u) {
      const V e = vexp<T>(V::loadu(lg + t * L) - mx);
      e.store(lg + t * L);
      sum[u] = sum[u] + e;
    });
  }
  return V(T(1)) / ((sum[0] + sum[1]) + (sum[2] + sum[3]));
}

// The probabilities of the L queries j0.. (exps lg times inv) into the strip row attn_row.
template <typename T>
inline void store_probabilities(const StripGeometry& g, const T* lg, const Vectorized<T>& inv,
                                int64_t j0, T* attn_row) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  // locals: the stores may alias g as far as the compiler knows, which would reload its fields
  const int64_t nv = std::min<int64_t>(L, g.W - j0), kk = g.kk(), Wp = g.Wp;
  T* dst = attn_row + j0;
  for (int64_t t = 0; t < kk; ++t, dst += Wp) (V::loadu(lg + t * L) * inv).store(dst, nv);
}

// The clamped border columns of the fused kernel's row ri, per query.
template <typename T>
void fused_border_columns(const StripGeometry& g, const Na2dBuffers<T>& p, const RowInfo& ri,
                          T* out_row, T* one) {
  const int64_t kk = g.kk();
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t sw = p.os[3], sc = p.os[4];
  for (int64_t j = 0; j < g.W; ++j) {
    if (!g.border_col(j)) continue;
    query_logits<T>(g, p, ri, j, one);
    if (p.bias)
      for (int64_t t = 0; t < kk; ++t) one[t] += p.bias[(ri.row * g.W + j) * kk + t];
    T mx = ninf, l = 0;
    for (int64_t t = 0; t < kk; ++t) mx = std::max(mx, one[t]);
    for (int64_t t = 0; t < kk; ++t) l += (one[t] = one[t] == ninf ? T(0) : std::exp(one[t] - mx));
    query_aggregate<T>(g, ri, j, one, p.v_s, T(1) / l, out_row + j * sw, sc, nullptr);
  }
}

template <typename T>
void fused_rows_impl(const StripGeometry& g, const Na2dBuffers<T>& p_in, int64_t r0,
                     int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t k = g.k, kk = g.kk(), r = g.r(), D = g.D;
  // q, k, v in the op layout: per-thread rings of strip rows, each row copied when the first
  // query row that reads it comes. The rows of a step (one query row, or a pair i, i + d) span
  // at most d + 1 query rows and k*d + 1 key rows.
  Na2dBuffers<T> p = p_in;
  StripRing<T> q_ring(p.q_op, p.q_s, g, query_ring(g), 0);
  StripRing<T> k_ring(p.k_op, p.k_s, g, window_ring(g), 1);
  StripRing<T> v_ring(p.v_op, p.v_s, g, window_ring(g), 2);
  auto load = [&](const RowInfo& ri) { load_window<T>(g, ri, &q_ring, &k_ring, &v_ring); };
  Scratch<T> lg0(kk * L), lg1(kk * L), tmp(kBlock * L), one(kk);
  Scratch<T> scratch(logits_scratch_size(g, L));
  Scratch<Tap<T>> taps(kk), taps0(k), taps1(k);
  Scratch<Tap2<T>> taps2(kk);
  V acc0[kBlock], acc1[kBlock];
  const int64_t sw = p.os[3], sc = p.os[4];
  auto attn_row_of = [&](int64_t row) {
    return p.attn_s ? p.attn_s + row * kk * g.Wp + g.P : nullptr;
  };
  auto finish_row = [&](const RowInfo& ri, T* out_row, T* attn_row) {
    if (attn_row) zero_padding<T>(g, attn_row, kk);
    if (g.clamp) fused_border_columns<T>(g, p, ri, out_row, one.data());
  };
  auto value = [&](const RowInfo& ri, int64_t ki, int64_t b, int64_t j0) {
    return strip_col(p.v_s, ri.bh * g.H + ki, j0 + (b - r) * g.d);
  };
  auto one_row = [&](const RowInfo& ri) {
    load(ri);
    T* out_row = out_row_of<T>(g, p, ri.row);
    T* attn_row = attn_row_of(ri.row);
    int64_t n = 0;  // the row's taps at column 0 (TapShift)
    for (int64_t a = 0; a < k; ++a) {
      const int64_t ki = tap_coord(ri.wi, a, g.d);
      if (ki < 0) continue;
      for (int64_t b = 0; b < k; ++b)
        taps[n++] = {lg0.data() + (a * k + b) * L, value(ri, ki, b, 0), nullptr};
    }
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      const int64_t nv = std::min<int64_t>(L, g.W - j0);
      strip_logits<T>(g, p, ri, j0, lg0.data(), scratch.data());
      const V inv = softmax_vector<T>(g, p, ri, j0, lg0.data());
      for (int64_t c0 = 0; c0 < D; c0 += kBlock) {
        const int nc = static_cast<int>(std::min<int64_t>(kBlock, D - c0));
        gather<T, false>(taps.data(), n, {0, j0}, c0, g.Wp, nc, acc0);
        store_out<T>(acc0, nc, inv, nv, out_row, j0, c0, sw, sc, tmp.data());
      }
      if (attn_row) store_probabilities<T>(g, lg0.data(), inv, j0, attn_row);
    }
    finish_row(ri, out_row, attn_row);
  };
  auto two_rows = [&](const RowInfo& ri0, const RowInfo& ri1) {
    load(ri0);
    load(ri1);
    T* out0 = out_row_of<T>(g, p, ri0.row);
    T* out1 = out_row_of<T>(g, p, ri1.row);
    T *attn0 = attn_row_of(ri0.row), *attn1 = attn_row_of(ri1.row);
    // the taps at column 0 (TapShift), in the order of one_row for each row: row 0's window row
    // 0 alone, the shared key rows (row 0's a = 1..k-1, row 1's a - 1), row 1's window row k-1
    // alone
    int64_t n0 = 0, n2 = 0, n1 = 0;
    const int64_t kf = tap_coord(ri0.wi, 0, g.d), kl = tap_coord(ri1.wi, k - 1, g.d);
    for (int64_t b = 0; b < k; ++b) {
      if (kf >= 0) taps0[n0++] = {lg0.data() + b * L, value(ri0, kf, b, 0), nullptr};
      if (kl >= 0)
        taps1[n1++] = {lg1.data() + ((k - 1) * k + b) * L, value(ri1, kl, b, 0), nullptr};
    }
    for (int64_t a = 1; a < k; ++a) {
      const int64_t ki = tap_coord(ri0.wi, a, g.d);
      if (ki < 0) continue;
      for (int64_t b = 0; b < k; ++b)
        taps2[n2++] = {lg0.data() + (a * k + b) * L, lg1.data() + ((a - 1) * k + b) * L,
                       value(ri0, ki, b, 0)};
    }
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      const int64_t nv = std::min<int64_t>(L, g.W - j0);
      strip_logits2<T>(g, p, ri0, ri1, j0, lg0.data(), lg1.data(), scratch.data());
      const V inv0 = softmax_vector<T>(g, p, ri0, j0, lg0.data());
      const V inv1 = softmax_vector<T>(g, p, ri1, j0, lg1.data());
      for (int64_t c0 = 0; c0 < D; c0 += kBlock) {
        const int nc = static_cast<int>(std::min<int64_t>(kBlock, D - c0));
        gather_pair<T, false>(taps0.data(), n0, taps2.data(), n2, taps1.data(), n1, {0, j0}, c0,
                              g.Wp, nc, acc0, acc1);
        store_out<T>(acc0, nc, inv0, nv, out0, j0, c0, sw, sc, tmp.data());
        store_out<T>(acc1, nc, inv1, nv, out1, j0, c0, sw, sc, tmp.data());
      }
      if (attn0) store_probabilities<T>(g, lg0.data(), inv0, j0, attn0);
      if (attn1) store_probabilities<T>(g, lg1.data(), inv1, j0, attn1);
    }
    finish_row(ri0, out0, attn0);
    finish_row(ri1, out1, attn1);
  };
  for_row_pairs(g, r0, r1, one_row, two_rows);
}

template <typename T>
void logits_rows_impl(const StripGeometry& g, const Na2dBuffers<T>& p_in, int64_t r0,
                      int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t kk = g.kk();
  Na2dBuffers<T> p = p_in;  // q_op, k_op: rings (see fused_rows_impl)
  StripRing<T> q_ring(p.q_op, p.q_s, g, query_ring(g), 0);
  StripRing<T> k_ring(p.k_op, p.k_s, g, window_ring(g), 1);
  auto load = [&](const RowInfo& ri) { load_window<T>(g, ri, &q_ring, &k_ring, nullptr); };
  Scratch<T> lg0(kk * L), lg1(kk * L), one(kk), scratch(logits_scratch_size(g, L));
  auto store = [&](int64_t row, int64_t j0, const T* lg) {  // strip layout (kk, Wp)
    T* out = p.out + row * kk * g.Wp + g.P + j0;
    for (int64_t t = 0; t < kk; ++t) V::loadu(lg + t * L).store(out + t * g.Wp);
  };
  auto border = [&](const RowInfo& ri) {
    if (!g.clamp) return;
    T* out = p.out + ri.row * kk * g.Wp + g.P;
    for (int64_t j = 0; j < g.W; ++j) {
      if (!g.border_col(j)) continue;
      query_logits<T>(g, p, ri, j, one.data());
      for (int64_t t = 0; t < kk; ++t) out[t * g.Wp + j] = one[t];
    }
  };
  auto one_row = [&](const RowInfo& ri) {
    load(ri);
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      strip_logits<T>(g, p, ri, j0, lg0.data(), scratch.data());
      store(ri.row, j0, lg0.data());
    }
    border(ri);
  };
  auto two_rows = [&](const RowInfo& ri0, const RowInfo& ri1) {
    load(ri0);
    load(ri1);
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      strip_logits2<T>(g, p, ri0, ri1, j0, lg0.data(), lg1.data(), scratch.data());
      store(ri0.row, j0, lg0.data());
      store(ri1.row, j0, lg1.data());
    }
    border(ri0);
    border(ri1);
  };
  for_row_pairs(g, r0, r1, one_row, two_rows);
}

template <typename T>
void aggregate_rows_impl(const StripGeometry& g, const Na2dBuffers<T>& p_in, int64_t r0,
                         int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t k = g.k, kk = g.kk(), r = g.r(), R = g.R(), D = g.D;
  Na2dBuffers<T> p = p_in;  // k_op: a ring (see fused_rows_impl)
  StripRing<T> k_ring(p.k_op, p.k_s, g, window_ring(g), 0);
  auto load = [&](const RowInfo& ri) { load_window<T>(g, ri, nullptr, &k_ring, nullptr); };
  Scratch<T> tmp(kBlock * L);
  Scratch<Tap<T>> taps(kk), taps0(k), taps1(k);
  Scratch<Tap2<T>> taps2(kk);
  const V vscale(p.scale);
  V acc0[kBlock], acc1[kBlock];
  const int64_t sw = p.os[3], sc = p.os[4];
  auto w_row_of = [&](int64_t row) { return p.w_s + row * kk * g.Wp + g.P; };
  auto tap = [&](const RowInfo& ri, int64_t a, int64_t ki, int64_t b, int64_t j0) {
    return Tap<T>{w_row_of(ri.row) + (a * k + b) * g.Wp + j0,
                  strip_col(p.k_s, ri.bh * g.H + ki, j0 + (b - r) * g.d),
                  p.rpe ? p.rpe + ((ri.h * k + a) * k + b) * D : nullptr};
  };
  auto finish_row = [&](const RowInfo& ri, T* out_row) {
    const int64_t row = ri.row;
    const T* w_row = w_row_of(row);
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
    if (!g.clamp) return;
    for (int64_t j = 0; j < g.W; ++j)  // clamped border columns (zeroed in w_s)
      if (g.border_col(j))
        query_aggregate<T>(g, ri, j, p.w + (row * g.W + j) * kk, p.k_s, p.scale,
                           out_row + j * sw, sc, p.rpb_part ? p.rpb_part + row * R * R : nullptr);
  };
  auto one_row = [&](const RowInfo& ri) {
    load(ri);
    T* out_row = out_row_of<T>(g, p, ri.row);
    int64_t n = 0;  // the row's taps at column 0 (TapShift)
    for (int64_t a = 0; a < k; ++a) {
      const int64_t ki = tap_coord(ri.wi, a, g.d);
      if (ki < 0) continue;
      for (int64_t b = 0; b < k; ++b) taps[n++] = tap(ri, a, ki, b, 0);
    }
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      const int64_t nv = std::min<int64_t>(L, g.W - j0);
      for (int64_t c0 = 0; c0 < D; c0 += kBlock) {
        const int nc = static_cast<int>(std::min<int64_t>(kBlock, D - c0));
        if (p.rpe)
          gather<T, true>(taps.data(), n, {j0, j0}, c0, g.Wp, nc, acc0);
        else
          gather<T, false>(taps.data(), n, {j0, j0}, c0, g.Wp, nc, acc0);
        store_out<T>(acc0, nc, vscale, nv, out_row, j0, c0, sw, sc, tmp.data());
      }
    }
    finish_row(ri, out_row);
  };
  auto two_rows = [&](const RowInfo& ri0, const RowInfo& ri1) {
    load(ri0);
    load(ri1);
    T* out0 = out_row_of<T>(g, p, ri0.row);
    T* out1 = out_row_of<T>(g, p, ri1.row);
    const int64_t kf = tap_coord(ri0.wi, 0, g.d), kl = tap_coord(ri1.wi, k - 1, g.d);
    // the taps at column 0 (TapShift), in the order of one_row for each row (see
    // fused_rows_impl)
    int64_t n0 = 0, n1 = 0, n2 = 0;
    for (int64_t b = 0; b < k; ++b) {
      if (kf >= 0) taps0[n0++] = tap(ri0, 0, kf, b, 0);
      if (kl >= 0) taps1[n1++] = tap(ri1, k - 1, kl, b, 0);
    }
    for (int64_t a = 1; a < k; ++a) {
      const int64_t ki = tap_coord(ri0.wi, a, g.d);
      if (ki < 0) continue;
      for (int64_t b = 0; b < k; ++b) {
        const Tap<T> t0 = tap(ri0, a, ki, b, 0), t1 = tap(ri1, a - 1, ki, b, 0);
        taps2[n2++] = {t0.w, t1.w, t0.m, t0.e, t1.e};
      }
    }
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      const int64_t nv = std::min<int64_t>(L, g.W - j0);
      for (int64_t c0 = 0; c0 < D; c0 += kBlock) {
        const int nc = static_cast<int>(std::min<int64_t>(kBlock, D - c0));
        if (p.rpe)
          gather_pair<T, true>(taps0.data(), n0, taps2.data(), n2, taps1.data(), n1, {j0, j0},
                               c0, g.Wp, nc, acc0, acc1);
        else
          gather_pair<T, false>(taps0.data(), n0, taps2.data(), n2, taps1.data(), n1, {j0, j0},
                                c0, g.Wp, nc, acc0, acc1);
        store_out<T>(acc0, nc, vscale, nv, out0, j0, c0, sw, sc, tmp.data());
        store_out<T>(acc1, nc, vscale, nv, out1, j0, c0, sw, sc, tmp.data());
      }
    }
    finish_row(ri0, out0);
    finish_row(ri1, out1);
  };
  for_row_pairs(g, r0, r1, one_row, two_rows);
}

// d_logits of the fused training pass: ds[t] = P[t] * (dP[t] - sum_t' P[t'] dP[t']), with
// dP[t] = d_out . v[t] (the logits kernel with q_s = d_out strips, k_s = v strips) and P the
// saved probabilities (w_s), all in the strip layout ('mask' only; invalid slots have P = 0).
template <typename T>
void softmax_grad_rows_impl(const StripGeometry& g, const Na2dBuffers<T>& p_in, int64_t r0,
                            int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t kk = g.kk();
  Na2dBuffers<T> p = p_in;  // q_op (d_out), k_op (v): rings (see fused_rows_impl)
  StripRing<T> q_ring(p.q_op, p.q_s, g, query_ring(g), 0);
  StripRing<T> k_ring(p.k_op, p.k_s, g, window_ring(g), 1);
  auto load = [&](const RowInfo& ri) { load_window<T>(g, ri, &q_ring, &k_ring, nullptr); };
  Scratch<T> lg0(kk * L), lg1(kk * L), scratch(logits_scratch_size(g, L));
  auto finish = [&](int64_t row, int64_t j0, const T* lg) {  // lg: dP of the vector at j0
    const T* pr = p.w_s + row * kk * g.Wp + g.P + j0;
    T* out = p.out + row * kk * g.Wp + g.P + j0;
    // four independent chains (slot t to t % 4), as in softmax_vector: one chain of k*k FMAs
    // would be bound by their latency
    V c[4] = {V(T(0)), V(T(0)), V(T(0)), V(T(0))};
    for_chains<4>(kk, [&](int64_t t, int u) {
      c[u] = at::vec::fmadd(V::loadu(pr + t * g.Wp), V::loadu(lg + t * L), c[u]);
    });
    const V s = (c[0] + c[1]) + (c[2] + c[3]);
    for (int64_t t = 0; t < kk; ++t)
      ((V::loadu(lg + t * L) - s) * V::loadu(pr + t * g.Wp)).store(out + t * g.Wp);
  };
  auto one_row = [&](const RowInfo& ri) {
    load(ri);
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      strip_logits<T>(g, p, ri, j0, lg0.data(), scratch.data());
      finish(ri.row, j0, lg0.data());
    }
    zero_padding<T>(g, p.out + ri.row * kk * g.Wp + g.P, kk);
  };
  auto two_rows = [&](const RowInfo& ri0, const RowInfo& ri1) {
    load(ri0);
    load(ri1);
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      strip_logits2<T>(g, p, ri0, ri1, j0, lg0.data(), lg1.data(), scratch.data());
      finish(ri0.row, j0, lg0.data());
      finish(ri1.row, j0, lg1.data());
    }
    zero_padding<T>(g, p.out + ri0.row * kk * g.Wp + g.P, kk);
    zero_padding<T>(g, p.out + ri1.row * kk * g.Wp + g.P, kk);
  };
  for_row_pairs(g, r0, r1, one_row, two_rows);
}

// The query rows (image rows, in ascending order) whose window holds key row pi of its plane,
// with the window row at which each sees it.
struct InverseRows {
  explicit InverseRows(int64_t k) : rows(2 * k - 1), slots(2 * k - 1) {}  // 2k - 1: 'clamp'
  int64_t n = 0;
  Scratch<int64_t> rows, slots;
};

inline void inverse_rows_of(const StripGeometry& g, int64_t pi, InverseRows& out) {
  const InverseRange rr = inverse_range(pi, g.H, g.k, g.d, g.clamp);
  out.n = 0;
  for (int64_t iq = rr.lo; iq <= rr.hi; ++iq) {
    const int64_t a = inverse_tap(rr, iq, g.k, g.clamp);
    if (a < 0) continue;
    out.rows[out.n] = inverse_coord(rr, iq, g.d);
    out.slots[out.n++] = a;
  }
}

// Key rows pi and pi + d share query rows when the list of pi + d starts inside that of pi and
// the rest of pi's list is its prefix: returns the number of pi's leading rows before the shared
// ones, or -1 when the rows do not pair that way.
inline int64_t inverse_split(const InverseRows& l0, const InverseRows& l1) {
  if (l1.n == 0) return -1;
  int64_t p = 0;
  while (p < l0.n && l0.rows[p] != l1.rows[0]) ++p;
  if (p == l0.n || l0.n - p > l1.n) return -1;
  for (int64_t x = p; x < l0.n; ++x)
    if (l0.rows[x] != l1.rows[x - p]) return -1;
  return p;
}

template <typename T>
void inverse_rows_impl(const StripGeometry& g, const Na2dBuffers<T>& p_in, int64_t r0,
                       int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t k = g.k, kk = g.kk(), r = g.r(), D = g.D;
  Na2dBuffers<T> p = p_in;  // src_op: a ring over the query rows (see fused_rows_impl)
  StripRing<T> src_ring(p.src_op, p.src_s, g, inverse_ring(g), 0);
  auto load = [&](const RowInfo& ri, const InverseRows& qr) {
    for (int64_t x = 0; x < qr.n; ++x) src_ring.load(ri.bh * g.H + qr.rows[x]);
  };
  // With border 'clamp' up to 2k-1 query rows share a key row (windows shifted at the border).
  Scratch<T> tmp(kBlock * L);
  Scratch<Tap<T>> taps((2 * k - 1) * k), taps0((2 * k - 1) * k), taps1((2 * k - 1) * k);
  Scratch<Tap2<T>> taps2((2 * k - 1) * k);
  const V vscale(p.scale);
  V acc0[kBlock], acc1[kBlock];
  const int64_t sw = p.os[3], sc = p.os[4];
  // the tap of query row x of `qr` at window column b, for key columns j0..
  auto tap = [&](const InverseRows& qr, int64_t bh, int64_t x, int64_t b, int64_t j0) {
    const int64_t col = j0 - (b - r) * g.d;  // the query that sees key j0 at column b
    const int64_t qrow = bh * g.H + qr.rows[x];
    return Tap<T>{p.w_s + (qrow * kk + qr.slots[x] * k + b) * g.Wp + g.P + col,
                  strip_col(p.src_s, qrow, col), nullptr};
  };
  auto border = [&](const RowInfo& ri, const InverseRows& qr, T* out_row) {
    if (!g.clamp) return;
    // queries in clamped border columns (zeroed in w_s) scatter into this key row
    for (int64_t x = 0; x < qr.n; ++x) {
      const int64_t qrow = ri.bh * g.H + qr.rows[x];
      for (int64_t j = 0; j < g.W; ++j) {
        if (!g.border_col(j)) continue;
        const AxisWindow wj = query_window(j, g.W, k, g.d, g.clamp);
        const T* w = p.w + (qrow * g.W + j) * kk + qr.slots[x] * k;
        const T* src = strip_col(p.src_s, qrow, j);
        for (int64_t b = 0; b < k; ++b) {
          const int64_t kj = tap_coord(wj, b, g.d);
          if (kj < 0) continue;
          const T wt = p.scale * w[b];
          T* o = out_row + kj * sw;
          for (int64_t c = 0; c < D; ++c) o[c * sc] += wt * src[c * g.Wp];
        }
      }
    }
  };
  InverseRows q0(k), q1(k);
  auto one_row = [&](const RowInfo& ri) {
    inverse_rows_of(g, ri.i, q0);
    load(ri, q0);
    T* out_row = out_row_of<T>(g, p, ri.row);
    int64_t n = 0;  // the row's taps at key column 0 (TapShift)
    for (int64_t x = 0; x < q0.n; ++x)
      for (int64_t b = 0; b < k; ++b) taps[n++] = tap(q0, ri.bh, x, b, 0);
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      const int64_t nv = std::min<int64_t>(L, g.W - j0);
      for (int64_t c0 = 0; c0 < D; c0 += kBlock) {
        const int nc = static_cast<int>(std::min<int64_t>(kBlock, D - c0));
        gather<T, false>(taps.data(), n, {j0, j0}, c0, g.Wp, nc, acc0);
        store_out<T>(acc0, nc, vscale, nv, out_row, j0, c0, sw, sc, tmp.data());
      }
    }
    border(ri, q0, out_row);
  };
  auto two_rows = [&](const RowInfo& ri0, const RowInfo& ri1) {
    inverse_rows_of(g, ri0.i, q0);
    inverse_rows_of(g, ri1.i, q1);
    load(ri0, q0);
    load(ri1, q1);
    const int64_t lead = inverse_split(q0, q1), shared = q0.n - lead;
    T* out0 = out_row_of<T>(g, p, ri0.row);
    T* out1 = out_row_of<T>(g, p, ri1.row);
    // the taps at key column 0 (TapShift), in the order of one_row for each row: key row 0's
    // leading query rows, the shared ones, key row 1's trailing ones
    int64_t n0 = 0, n1 = 0, n2 = 0;
    for (int64_t x = 0; x < lead; ++x)
      for (int64_t b = 0; b < k; ++b) taps0[n0++] = tap(q0, ri0.bh, x, b, 0);
    for (int64_t x = 0; x < shared; ++x)
      for (int64_t b = 0; b < k; ++b) {
        const Tap<T> t0 = tap(q0, ri0.bh, lead + x, b, 0), t1 = tap(q1, ri1.bh, x, b, 0);
        taps2[n2++] = {t0.w, t1.w, t0.m};
      }
    for (int64_t x = shared; x < q1.n; ++x)
      for (int64_t b = 0; b < k; ++b) taps1[n1++] = tap(q1, ri1.bh, x, b, 0);
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      const int64_t nv = std::min<int64_t>(L, g.W - j0);
      for (int64_t c0 = 0; c0 < D; c0 += kBlock) {
        const int nc = static_cast<int>(std::min<int64_t>(kBlock, D - c0));
        gather_pair<T, false>(taps0.data(), n0, taps2.data(), n2, taps1.data(), n1, {j0, j0}, c0,
                              g.Wp, nc, acc0, acc1);
        store_out<T>(acc0, nc, vscale, nv, out0, j0, c0, sw, sc, tmp.data());
        store_out<T>(acc1, nc, vscale, nv, out1, j0, c0, sw, sc, tmp.data());
      }
    }
    border(ri0, q0, out0);
    border(ri1, q1, out1);
  };
  InverseRows l0(k), l1(k);
  auto leads = [&](int64_t i) {
    if ((i / g.d) % 2 != 0 || i + g.d >= g.H) return false;
    inverse_rows_of(g, i, l0);
    inverse_rows_of(g, i + g.d, l1);
    return inverse_split(l0, l1) >= 0;
  };
  for_row_pairs(g, r0, r1, one_row, two_rows, leads);
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
  }                                                                                          \
  void transpose_to_strip(const T* in, int64_t sj, int64_t sc, T* out, int64_t C, int64_t P, \
                          int64_t W, int64_t Wp) {                                           \
    transpose_to_strip_impl<T>(in, sj, sc, out, C, P, W, Wp);                                \
  }

MMATTN_NA2D_KERNEL_DEFS(float)
MMATTN_NA2D_KERNEL_DEFS(double)
#undef MMATTN_NA2D_KERNEL_DEFS

int64_t vector_lanes_float() { return Vectorized<float>::size(); }

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmattn
