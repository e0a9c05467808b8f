// CUDA kernels of ELSA's ghost-head neighbourhood aggregation (mmattn::ghost_head_aggregate).
//
//   out[b,c,i,j] = sum_{u,v} x[b,c,i+(u-r)d,j+(v-r)d] * (attn[b,g,u*k+v,i,j] * M[c,u,v] + S[c,u,v])
//
// The same computations as cpu/ghost_head.cpp, with the tap weight taken from
// csrc/common/arith.h (ghost_weight). Taps outside the image contribute zero.
//
// Layout: x, out (B, C, H, W); attn (B, G, k*k, H, W); M, S (C, k, k), broadcast over the batch
//         (read in place, never expanded). Channel c belongs to head g = c / (C / G).
// Types:  fp16, bf16, fp32, fp64 inputs; sums run in at::acc_type<scalar_t, true> and are
//         rounded to the input dtype once, when stored.
// Work:   one thread per output element (grid-stride loops, 64-bit indices; consecutive threads
//         run along the contiguous W axis); d_M and d_S use one block per (c, tap) with a
//         shared-memory tree over (b, i, j), no atomics, so every result is deterministic.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/arith.h"
#include "../ops.h"
#include "cuda_utils.cuh"

namespace mmattn {
namespace gpu {
namespace {

struct GhostGeometry {
  int64_t B, C, G, H, W, k, d;
  MMATTN_HD int64_t kk() const { return k * k; }
  MMATTN_HD int64_t r() const { return k / 2; }
  MMATTN_HD int64_t cpg() const { return C / G; }  // channels per head
  MMATTN_HD int64_t HW() const { return H * W; }
};

GhostGeometry ghost_geometry(const Tensor& v, const Tensor& attn, int64_t k, int64_t d) {
  return {v.size(0), v.size(1), attn.size(1), v.size(2), v.size(3), k, d};
}

// Offset of attn[b, grp, s, i, j].
__device__ __forceinline__ int64_t attn_offset(int64_t b, int64_t grp, int64_t s, int64_t i,
                                               int64_t j, const GhostGeometry& g) {
  return ((b * g.G + grp) * g.kk() + s) * g.HW() + i * g.W + j;
}

// Tap weight attn * M + S of channel c, tap s, with M = 1 and S = 0 when absent.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t tap_weight(scalar_t attn, const scalar_t* mul,
                                            const scalar_t* add, int64_t c, int64_t s,
                                            const GhostGeometry& g) {
  const acc_t m = mul ? static_cast<acc_t>(mul[c * g.kk() + s]) : acc_t(1);
  const acc_t a = add ? static_cast<acc_t>(add[c * g.kk() + s]) : acc_t(0);
  return ghost_weight<acc_t>(static_cast<acc_t>(attn), m, a);
}

#define MMATTN_GRID_STRIDE(idx, n)                                                   \
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < (n); \
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Forward: one thread per output element (b, c, i, j); taps in the order of the CPU kernel.
template <typename scalar_t>
__global__ void ghost_forward_kernel(const scalar_t* __restrict__ x,
                                     const scalar_t* __restrict__ attn,
                                     const scalar_t* __restrict__ mul,
                                     const scalar_t* __restrict__ add, scalar_t* __restrict__ out,
                                     const GhostGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t HW = g.HW(), n = g.B * g.C * HW;
  MMATTN_GRID_STRIDE(idx, n) {
    const int64_t j = idx % g.W, i = (idx / g.W) % g.H, bc = idx / HW;
    const int64_t c = bc % g.C, b = bc / g.C, grp = c / g.cpg();
    const scalar_t* xmap = x + bc * HW;
    acc_t acc = 0;
    for (int64_t u = 0; u < g.k; ++u) {
      const int64_t ii = i + (u - g.r()) * g.d;
      if (ii < 0 || ii >= g.H) continue;
      for (int64_t v = 0; v < g.k; ++v) {
        const int64_t jj = j + (v - g.r()) * g.d;
        if (jj < 0 || jj >= g.W) continue;
        const int64_t s = u * g.k + v;
        const acc_t w = tap_weight<scalar_t, acc_t>(attn[attn_offset(b, grp, s, i, j, g)], mul,
                                                    add, c, s, g);
        acc += static_cast<acc_t>(xmap[ii * g.W + jj]) * w;
      }
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// d_x, the transpose of the forward: d_x[b,c,pi,pj] = sum over the outputs (i, j) that read
// (pi, pj) at tap (u, v) of grad[b,c,i,j] * (attn[b,g,s,i,j] * M[c,s] + S[c,s]).
// One thread per element of d_x.
template <typename scalar_t>
__global__ void ghost_backward_x_kernel(const scalar_t* __restrict__ grad,
                                        const scalar_t* __restrict__ attn,
                                        const scalar_t* __restrict__ mul,
                                        const scalar_t* __restrict__ add,
                                        scalar_t* __restrict__ dx, const GhostGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t HW = g.HW(), n = g.B * g.C * HW;
  MMATTN_GRID_STRIDE(idx, n) {
    const int64_t pj = idx % g.W, pi = (idx / g.W) % g.H, bc = idx / HW;
    const int64_t c = bc % g.C, b = bc / g.C, grp = c / g.cpg();
    const scalar_t* gmap = grad + bc * HW;
    acc_t acc = 0;
    for (int64_t u = 0; u < g.k; ++u) {
      const int64_t i = pi - (u - g.r()) * g.d;  // the output row that reads row pi at tap u
      if (i < 0 || i >= g.H) continue;
      for (int64_t v = 0; v < g.k; ++v) {
        const int64_t j = pj - (v - g.r()) * g.d;
        if (j < 0 || j >= g.W) continue;
        const int64_t s = u * g.k + v;
        const acc_t w = tap_weight<scalar_t, acc_t>(attn[attn_offset(b, grp, s, i, j, g)], mul,
                                                    add, c, s, g);
        acc += static_cast<acc_t>(gmap[i * g.W + j]) * w;
      }
    }
    dx[idx] = static_cast<scalar_t>(acc);
  }
}

// d_attn[b,g,s,i,j] = sum over the channels c of head g of grad[b,c,i,j] * x[b,c,tap] * M[c,s];
// zero when the tap lies outside the image. One thread per element of d_attn.
template <typename scalar_t>
__global__ void ghost_backward_attn_kernel(const scalar_t* __restrict__ grad,
                                           const scalar_t* __restrict__ x,
                                           const scalar_t* __restrict__ mul,
                                           scalar_t* __restrict__ dattn, const GhostGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t HW = g.HW(), kk = g.kk(), n = g.B * g.G * kk * HW;
  MMATTN_GRID_STRIDE(idx, n) {
    const int64_t j = idx % g.W, i = (idx / g.W) % g.H, s = (idx / HW) % kk, bg = idx / (kk * HW);
    const int64_t b = bg / g.G, grp = bg % g.G;
    const int64_t u = s / g.k, v = s % g.k;
    const int64_t ii = i + (u - g.r()) * g.d, jj = j + (v - g.r()) * g.d;
    acc_t acc = 0;
    if (ii >= 0 && ii < g.H && jj >= 0 && jj < g.W) {
      for (int64_t c = grp * g.cpg(); c < (grp + 1) * g.cpg(); ++c) {
        const acc_t m = mul ? static_cast<acc_t>(mul[c * kk + s]) : acc_t(1);
        const int64_t map = (b * g.C + c) * HW;
        acc += static_cast<acc_t>(grad[map + i * g.W + j]) *
               static_cast<acc_t>(x[map + ii * g.W + jj]) * m;
      }
    }
    dattn[idx] = static_cast<scalar_t>(acc);
  }
}

// d_M[c,s] = sum_{b,i,j} grad * x[tap] * attn and d_S[c,s] = sum_{b,i,j} grad * x[tap].
// One block per (c, s); threads stride over (b, i, j); two shared-memory trees.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    ghost_backward_filters_kernel(const scalar_t* __restrict__ grad,
                                  const scalar_t* __restrict__ x,
                                  const scalar_t* __restrict__ attn, scalar_t* __restrict__ dmul,
                                  scalar_t* __restrict__ dadd, const GhostGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  __shared__ acc_t shm[kThreads];
  const int64_t HW = g.HW(), kk = g.kk(), n_out = g.C * kk, n_red = g.B * HW;
  for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
    const int64_t c = o / kk, s = o % kk, grp = c / g.cpg();
    const int64_t u = s / g.k, v = s % g.k;
    acc_t sm = 0, sa = 0;
    for (int64_t t = threadIdx.x; t < n_red; t += blockDim.x) {
      const int64_t b = t / HW, i = (t % HW) / g.W, j = t % g.W;
      const int64_t ii = i + (u - g.r()) * g.d, jj = j + (v - g.r()) * g.d;
      if (ii < 0 || ii >= g.H || jj < 0 || jj >= g.W) continue;
      const int64_t map = (b * g.C + c) * HW;
      const acc_t prod = static_cast<acc_t>(grad[map + i * g.W + j]) *
                         static_cast<acc_t>(x[map + ii * g.W + jj]);
      sa += prod;
      sm += prod * static_cast<acc_t>(attn[attn_offset(b, grp, s, i, j, g)]);
    }
    // Block-uniform branches: dmul / dadd are kernel arguments.
    if (dmul) {
      sm = block_sum(sm, shm);
      if (threadIdx.x == 0) dmul[o] = static_cast<scalar_t>(sm);
    }
    if (dadd) {
      sa = block_sum(sa, shm);
      if (threadIdx.x == 0) dadd[o] = static_cast<scalar_t>(sa);
    }
  }
}

#undef MMATTN_GRID_STRIDE

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points; same signatures, checks and return conventions as cpu/ghost_head.cpp.

Tensor ghost_head_aggregate_cuda(const Tensor& v_in, const Tensor& attn_in,
                                 const OptTensor& mul_in, const OptTensor& add_in,
                                 int64_t kernel_size, int64_t dilation) {
  check_ghost(v_in, attn_in, mul_in, add_in, kernel_size, dilation);
  const c10::cuda::CUDAGuard guard(v_in.device());
  const Tensor v = v_in.contiguous(), attn = attn_in.contiguous();
  const OptTensor mul = contiguous(mul_in), add = contiguous(add_in);
  const GhostGeometry g = ghost_geometry(v, attn, kernel_size, dilation);
  Tensor out = at::empty(v.sizes(), v.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, v.scalar_type(), "ghost_head_aggregate_cuda", [&] {
        ghost_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
            v.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), data_or_null<scalar_t>(mul),
            data_or_null<scalar_t>(add), out.data_ptr<scalar_t>(), g);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> ghost_head_aggregate_backward_cuda(
    const Tensor& grad_in, const Tensor& v_in, const Tensor& attn_in, const OptTensor& mul_in,
    const OptTensor& add_in, int64_t kernel_size, int64_t dilation, bool with_mul, bool with_add) {
  check_ghost(v_in, attn_in, mul_in, add_in, kernel_size, dilation);
  TORCH_CHECK(grad_in.sizes() == v_in.sizes(), "ghost_head_aggregate_backward: grad must match v");
  TORCH_CHECK(grad_in.scalar_type() == v_in.scalar_type() && grad_in.device() == v_in.device(),
              "ghost_head_aggregate_backward: grad must share dtype and device with v");
  const c10::cuda::CUDAGuard guard(v_in.device());
  const Tensor grad = grad_in.contiguous(), v = v_in.contiguous(), attn = attn_in.contiguous();
  const OptTensor mul = contiguous(mul_in), add = contiguous(add_in);
  const GhostGeometry g = ghost_geometry(v, attn, kernel_size, dilation);
  Tensor dv = at::empty(v.sizes(), v.options()), dattn = at::empty(attn.sizes(), attn.options());
  Tensor dmul = with_mul ? at::empty({g.C, g.k, g.k}, v.options()) : none_like(v_in);
  Tensor dadd = with_add ? at::empty({g.C, g.k, g.k}, v.options()) : none_like(v_in);
  const int64_t n_filters = g.C * g.kk();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, v.scalar_type(), "ghost_head_aggregate_backward_cuda", [&] {
        const scalar_t* m = data_or_null<scalar_t>(mul);
        if (dv.numel() > 0) {
          ghost_backward_x_kernel<scalar_t><<<blocks_for(dv.numel()), kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), m, data_or_null<scalar_t>(add),
              dv.data_ptr<scalar_t>(), g);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (dattn.numel() > 0) {
          ghost_backward_attn_kernel<scalar_t><<<blocks_for(dattn.numel()), kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), m, dattn.data_ptr<scalar_t>(), g);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if ((with_mul || with_add) && n_filters > 0) {
          ghost_backward_filters_kernel<scalar_t>
              <<<blocks_for_reduction(n_filters), kThreads, 0, stream>>>(
                  grad.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                  with_mul ? dmul.data_ptr<scalar_t>() : nullptr,
                  with_add ? dadd.data_ptr<scalar_t>() : nullptr, g);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return {dv, dattn, dmul, dadd};
}

}  // namespace gpu
}  // namespace mmattn

TORCH_LIBRARY_IMPL(mmattn, CUDA, m) {
  m.impl("ghost_head_aggregate", &mmattn::gpu::ghost_head_aggregate_cuda);
  m.impl("ghost_head_aggregate_backward", &mmattn::gpu::ghost_head_aggregate_backward_cuda);
}
