// Helpers shared by the per-capability kernel headers (na2d_vec.h, ghost_vec.h). Included inside
// a translation unit that defines CPU_CAPABILITY; everything here has internal linkage, so the
// builds of different capabilities never share a compiled inline function.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace mmattn {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// A heap buffer (no std::vector: its inline members, compiled here with this capability's
// instruction set, must not be merged with the other translation units').
template <typename U>
class Scratch {
 public:
  explicit Scratch(int64_t n) : p_(new U[n]) {}
  ~Scratch() { delete[] p_; }
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
