// Helpers of the CUDA entry points and kernels: launch geometry, block and warp reductions.
//
// Reductions are deterministic: a fixed assignment of elements to threads and a fixed tree, no
// atomics, so repeated runs give the same bits (as on the CPU).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "../ops.h"

namespace mmattn {
namespace gpu {

// Threads of a block; a power of two (block_sum's tree relies on it) and a multiple of the warp.
constexpr int kThreads = 256;
constexpr int kWarp = 32;
// Grid cap; kernels use grid-stride loops, so any element count is covered.
constexpr int64_t kMaxBlocks = 65536;

// Blocks for one thread per element (grid-stride beyond the cap). n must be > 0.
inline unsigned int blocks_for(int64_t n, int64_t threads = kThreads) {
  return static_cast<unsigned int>(std::min<int64_t>((n + threads - 1) / threads, kMaxBlocks));
}

// Blocks for one block per output element of a reduction (grid-stride beyond the cap).
inline unsigned int blocks_for_reduction(int64_t n_out) {
  return static_cast<unsigned int>(std::min<int64_t>(n_out, kMaxBlocks));
}

template <typename scalar_t>
const scalar_t* data_or_null(const OptTensor& t) {
  return t.has_value() ? t->data_ptr<scalar_t>() : nullptr;
}

inline OptTensor contiguous(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->contiguous()) : t;
}

// Sum of `v` over the block (blockDim.x == kThreads), returned to every thread. `shm` holds
// kThreads elements. Every thread of the block must call it (block-uniform control flow).
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shm) {
  shm[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) shm[threadIdx.x] += shm[threadIdx.x + s];
    __syncthreads();
  }
  const acc_t total = shm[0];
  __syncthreads();  // shm may be reused right after
  return total;
}

// Sum of `v` over the 32 lanes of a warp, returned to every lane. The xor butterfly adds the same
// two operands in every lane of a pair (a + b == b + a exactly), so all lanes get the same bits.
// All 32 lanes must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace gpu
}  // namespace mmattn
