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

 private:
  U* p_;
};

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
