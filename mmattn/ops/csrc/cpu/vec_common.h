// Helpers shared by the per-capability kernel headers (na2d_vec.h, ghost_vec.h). Included inside
// a translation unit that defines CPU_CAPABILITY; everything here has internal linkage, so the
// builds of different capabilities never share a compiled inline function.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <new>
#include <type_traits>

namespace mmattn {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Heap memory of n trivial U (no constructor runs), aligned to a cache line: vector loads from
// it never straddle two lines.
template <typename U>
U* aligned_alloc_of(int64_t n) {
  return static_cast<U*>(::operator new[](n * sizeof(U), std::align_val_t(64)));
}
template <typename U>
void aligned_free(U* p) {
  ::operator delete[](p, std::align_val_t(64));
}

// A heap buffer (no std::vector: its inline members, compiled here with this capability's
// instruction set, must not be merged with the other translation units'), cache-line aligned.
template <typename U>
class Scratch {
 public:
  explicit Scratch(int64_t n) : p_(aligned_alloc_of<U>(n)) {}
  ~Scratch() { aligned_free(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  U* data() { return p_; }
  U& operator[](int64_t i) { return p_[i]; }
  const U& operator[](int64_t i) const { return p_[i]; }

 private:
  U* p_;
};

// v, made to live in a register: a vector that feeds several FMAs is loaded once, instead of
// being folded into each FMA as a memory operand (one load per FMA), which GCC prefers.
#if defined(__GNUC__) && defined(CPU_CAPABILITY_AVX512)
inline Vectorized<float> in_register(Vectorized<float> v) {
  __m512 r = v;
  asm("" : "+v"(r));
  return r;
}
inline Vectorized<double> in_register(Vectorized<double> v) {
  __m512d r = v;
  asm("" : "+v"(r));
  return r;
}
#elif defined(__GNUC__) && defined(CPU_CAPABILITY_AVX2)
inline Vectorized<float> in_register(Vectorized<float> v) {
  __m256 r = v;
  asm("" : "+x"(r));
  return r;
}
inline Vectorized<double> in_register(Vectorized<double> v) {
  __m256d r = v;
  asm("" : "+x"(r));
  return r;
}
#else
template <typename T>
inline Vectorized<T> in_register(const Vectorized<T>& v) {
  return v;
}
#endif

// Loads and stores of a vector's first n lanes (0 < n < the width; the other lanes load as zero
// and are not written), with the mask built once: Vectorized::loadu(p, n) tests n at every call,
// and inside a register-blocked loop that branch makes GCC keep the whole block in memory.
template <typename T>
struct Lanes {  // the generic build
  int64_t n;
  explicit Lanes(int64_t count) : n(count) {}
  Vectorized<T> load(const T* p) const { return Vectorized<T>::loadu(p, n); }
  void store(Vectorized<T> v, T* p) const { v.store(p, n); }
};
#if defined(CPU_CAPABILITY_AVX512)
template <>
struct Lanes<float> {
  __mmask16 m;
  explicit Lanes(int64_t count) : m(static_cast<__mmask16>((1u << count) - 1)) {}
  Vectorized<float> load(const float* p) const { return _mm512_maskz_loadu_ps(m, p); }
  void store(Vectorized<float> v, float* p) const { _mm512_mask_storeu_ps(p, m, v); }
};
template <>
struct Lanes<double> {
  __mmask8 m;
  explicit Lanes(int64_t count) : m(static_cast<__mmask8>((1u << count) - 1)) {}
  Vectorized<double> load(const double* p) const { return _mm512_maskz_loadu_pd(m, p); }
  void store(Vectorized<double> v, double* p) const { _mm512_mask_storeu_pd(p, m, v); }
};
#elif defined(CPU_CAPABILITY_AVX2)
template <>
struct Lanes<float> {
  __m256i m;
  explicit Lanes(int64_t count)
      : m(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))) {}
  Vectorized<float> load(const float* p) const { return _mm256_maskload_ps(p, m); }
  void store(Vectorized<float> v, float* p) const { _mm256_maskstore_ps(p, m, v); }
};
template <>
struct Lanes<double> {
  __m256i m;
  explicit Lanes(int64_t count)
      : m(_mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3))) {}
  Vectorized<double> load(const double* p) const { return _mm256_maskload_pd(p, m); }
  void store(Vectorized<double> v, double* p) const { _mm256_maskstore_pd(p, m, v); }
};
#endif

// exp of the softmax's x - max <= 0 (-inf on invalid slots, which the caller blends to 0).
// AVX-512 and AVX2 float: exp(x) = 2^n exp(r), n = round(x log2 e), r = x - n ln 2 in
// [-ln2/2, ln2/2], exp(r) by the degree-5 polynomial of ATen's exp_u20, and 2^n by vscalefps
// (AVX-512) or built in the exponent field (AVX2; n >= -126 after the clamp, so it stays normal):
// 11 and 12 instructions instead of exp_u20's 18 and 19, since x <= 0 needs no overflow branch.
// x is clamped at -87 (exp > the smallest normal float, so no denormals reach the aggregation);
// NaN propagates (max(c, NaN) is NaN).
template <typename T>
inline Vectorized<T> vexp(const Vectorized<T>& x) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    using V = Vectorized<float>;
#if defined(CPU_CAPABILITY_AVX512)
    const V v = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
#else
    const V v = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
#endif
#if defined(CPU_CAPABILITY_AVX512)
    const V n = (v * V(1.44269504f)).round();
#else
    // n by the magic-number rounding: t = v log2 e + 1.5 * 2^23 + 127 rounds to an integer (its
    // ulp is 1), whose low mantissa bits hold n + 127, the exponent field of 2^n below
    const V t = at::vec::fmadd(v, V(1.44269504f), V(12583039.0f));
    const V n = t - V(12583039.0f);
#endif
    V r = at::vec::fmadd(n, V(-0.693359375f), v);  // ln 2 = hi + lo (Cody-Waite)
    r = at::vec::fmadd(n, V(2.12194440e-4f), r);
    V y = at::vec::fmadd(r, V(0.00828929059f), V(0.0418978221f));
    y = at::vec::fmadd(r, y, V(0.166676521f));
    y = at::vec::fmadd(r, y, V(0.499991506f));
    y = at::vec::fmadd(r, y, V(0.999999701f));
    y = at::vec::fmadd(r, y, V(1.0f));
#if defined(CPU_CAPABILITY_AVX512)
    return _mm512_scalef_ps(y, n);
#else
    // t's bits are those of 1.5 * 2^23 plus n + 127 in 1..127: shifted 23 places, n + 127 is
    // the exponent field and the rest leaves the word
    return y * V(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
#endif
  }
#endif
  if constexpr (std::is_same_v<T, float>) return x.exp_u20();
  else return x.exp();
}

// Sum of a vector's lanes, in lane order.
template <typename T>
inline T lane_sum(const Vectorized<T>& v) {
  T lanes[Vectorized<T>::size()];
  v.store(lanes);
  T s = 0;
  for (int64_t l = 0; l < Vectorized<T>::size(); ++l) s += lanes[l];
  return s;
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace mmattn
