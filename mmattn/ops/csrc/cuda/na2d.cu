// CUDA kernels of two-dimensional neighbourhood attention (mmattn::na2d_*).
//
// The same computations as cpu/na2d.cpp (which the tests verify against the plain-PyTorch
// reference), with the window arithmetic, dot products, weighted accumulations and the online
// softmax step taken from csrc/common, so the two backends share their math.
//
// Layout: q, k, v, out are contiguous (B, heads, H, W, D); logits/attn are (B, heads, H, W, k*k)
//         with row-major window slot a*k + b; rpb (heads, 2k-1, 2k-1); rpe (heads, k, k, D).
// Types:  fp16, bf16, fp32, fp64 inputs; every sum runs in at::acc_type<scalar_t, true> (fp32 for
//         the 16-bit types) and is rounded to the input dtype once, when it is stored.
// Work:   one thread per output element (grid-stride loops, 64-bit indices); the gradients that
//         reduce over pixels (d_rpb, d_rpe) use one block per output element and a shared-memory
//         tree, no atomics, so every result is deterministic. The fused inference kernel gives
//         one warp to each query and keeps no k*k logits buffer (online softmax).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "../common/arith.h"
#include "../common/window.h"
#include "../ops.h"
#include "cuda_utils.cuh"

namespace mmattn {
namespace gpu {
namespace {

struct Geometry {
  int64_t B, heads, H, W, D, k, d;
  bool clamp;
  MMATTN_HD int64_t queries() const { return B * heads * H * W; }
  MMATTN_HD int64_t kk() const { return k * k; }
  MMATTN_HD int64_t R() const { return 2 * k - 1; }
};

Geometry geometry(const Tensor& x, int64_t kernel_size, int64_t dilation, bool clamp) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), kernel_size, dilation, clamp};
}

// A pixel of a (B, heads, H, W) map from its linear index (b*heads + h)*H*W + i*W + j.
struct Pixel {
  int64_t bh, h, i, j;
};

__device__ __forceinline__ Pixel pixel_at(int64_t index, const Geometry& g) {
  Pixel p;
  p.j = index % g.W;
  const int64_t row = index / g.W;
  p.i = row % g.H;
  p.bh = row / g.H;
  p.h = p.bh % g.heads;
  return p;
}

// Offset of the D-vector of pixel (i, j) in the map of (batch, head) bh.
__device__ __forceinline__ int64_t vec_offset(int64_t bh, int64_t i, int64_t j, const Geometry& g) {
  return ((bh * g.H + i) * g.W + j) * g.D;
}

// Offset of the rpe vector of window slot (a, b) of head h.
__device__ __forceinline__ int64_t rpe_offset(int64_t h, int64_t a, int64_t b, const Geometry& g) {
  return ((h * g.k + a) * g.k + b) * g.D;
}

// Offset of the rpb entry of window slot (a, b) of head h.
__device__ __forceinline__ int64_t rpb_offset(int64_t h, const AxisWindow& wi, int64_t a,
                                              const AxisWindow& wj, int64_t b, const Geometry& g) {
  const int64_t R = g.R();
  return (h * R + rpb_index(wi, a, g.k)) * R + rpb_index(wj, b, g.k);
}

// The tap of window `w` whose rpb index is `r`, or -1 when there is none or it lies outside the
// image (rpb_index grows with the tap, so at most one tap matches).
__device__ __forceinline__ int64_t tap_of_rpb_index(const AxisWindow& w, int64_t r,
                                                    const Geometry& g) {
  for (int64_t a = 0; a < g.k; ++a)
    if (rpb_index(w, a, g.k) == r) return tap_coord(w, a, g.d) >= 0 ? a : -1;
  return -1;
}

#define MMATTN_GRID_STRIDE(idx, n)                                                   \
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < (n); \
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x)

// ---------------------------------------------------------------------------------------------
// na2d_qk: logits[query, a*k+b] = scale * q . (k[p] + rpe[h,a,b]) + rpb[h, offset]; -inf when the
// tap is outside the image. One thread per (query, slot).
template <typename scalar_t>
__global__ void qk_forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ key,
                                  const scalar_t* __restrict__ rpb,
                                  const scalar_t* __restrict__ rpe, scalar_t* __restrict__ out,
                                  const Geometry g, const at::acc_type<scalar_t, true> scale) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t kk = g.kk(), n = g.queries() * kk;
  MMATTN_GRID_STRIDE(idx, n) {
    const int64_t query = idx / kk, slot = idx % kk, a = slot / g.k, b = slot % g.k;
    const Pixel p = pixel_at(query, g);
    const AxisWindow wi = query_window(p.i, g.H, g.k, g.d, g.clamp);
    const AxisWindow wj = query_window(p.j, g.W, g.k, g.d, g.clamp);
    const int64_t ki = tap_coord(wi, a, g.d), kj = tap_coord(wj, b, g.d);
    if (ki < 0 || kj < 0) {
      out[idx] = static_cast<scalar_t>(-std::numeric_limits<acc_t>::infinity());
      continue;
    }
    const scalar_t* qp = q + query * g.D;
    acc_t s = dot<acc_t>(qp, key + vec_offset(p.bh, ki, kj, g), g.D);
    if (rpe) s += dot<acc_t>(qp, rpe + rpe_offset(p.h, a, b, g), g.D);
    s *= scale;
    if (rpb) s += static_cast<acc_t>(rpb[rpb_offset(p.h, wi, a, wj, b, g)]);
    out[idx] = static_cast<scalar_t>(s);
  }
}

// na2d_qk backward, d_q[query, c] = sum over valid slots of scale * d_logits * (k[p] + rpe)[c].
// One thread per (query, channel).
template <typename scalar_t>
__global__ void qk_backward_query_kernel(const scalar_t* __restrict__ grad,
                                         const scalar_t* __restrict__ key,
                                         const scalar_t* __restrict__ rpe,
                                         scalar_t* __restrict__ dq, const Geometry g,
                                         const at::acc_type<scalar_t, true> scale) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t kk = g.kk(), n = g.queries() * g.D;
  MMATTN_GRID_STRIDE(idx, n) {
    const int64_t query = idx / g.D, c = idx % g.D;
    const Pixel p = pixel_at(query, g);
    const AxisWindow wi = query_window(p.i, g.H, g.k, g.d, g.clamp);
    const AxisWindow wj = query_window(p.j, g.W, g.k, g.d, g.clamp);
    const scalar_t* gp = grad + query * kk;
    acc_t acc = 0;
    for (int64_t a = 0; a < g.k; ++a) {
      const int64_t ki = tap_coord(wi, a, g.d);
      if (ki < 0) continue;
      for (int64_t b = 0; b < g.k; ++b) {
        const int64_t kj = tap_coord(wj, b, g.d);
        if (kj < 0) continue;
        const acc_t w = static_cast<acc_t>(gp[a * g.k + b]) * scale;
        axpy<acc_t>(&acc, w, key + vec_offset(p.bh, ki, kj, g) + c, 1);  // one channel of axpy
        if (rpe) axpy<acc_t>(&acc, w, rpe + rpe_offset(p.h, a, b, g) + c, 1);
      }
    }
    dq[idx] = static_cast<scalar_t>(acc);
  }
}

// out[key, c] = sum over the queries whose window holds the key of
//               scale * weight[query, slot] * src[query, c].
// d_k (weight = d_logits, src = q, scale) and d_v (weight = attn, src = d_out, scale = 1).
// One thread per (key pixel, channel); the queries are visited in the order of the CPU kernel.
template <typename scalar_t>
__global__ void inverse_accumulate_kernel(const scalar_t* __restrict__ weight,
                                          const scalar_t* __restrict__ src,
                                          scalar_t* __restrict__ out, const Geometry g,
                                          const at::acc_type<scalar_t, true> scale) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t kk = g.kk(), n = g.queries() * g.D;
  MMATTN_GRID_STRIDE(idx, n) {
    const int64_t pixel = idx / g.D, c = idx % g.D;
    const Pixel p = pixel_at(pixel, g);
    const InverseRange ri = inverse_range(p.i, g.H, g.k, g.d, g.clamp);
    const InverseRange rj = inverse_range(p.j, g.W, g.k, g.d, g.clamp);
    const int64_t base = p.bh * g.H * g.W;  // first pixel of this (batch, head)
    acc_t acc = 0;
    for (int64_t iq = ri.lo; iq <= ri.hi; ++iq) {
      const int64_t a = inverse_tap(ri, iq, g.k, g.clamp);
      if (a < 0) continue;
      const int64_t qi = inverse_coord(ri, iq, g.d);
      for (int64_t jq = rj.lo; jq <= rj.hi; ++jq) {
        const int64_t b = inverse_tap(rj, jq, g.k, g.clamp);
        if (b < 0) continue;
        const int64_t qidx = base + qi * g.W + inverse_coord(rj, jq, g.d);
        axpy<acc_t>(&acc, scale * static_cast<acc_t>(weight[qidx * kk + a * g.k + b]),
                    src + qidx * g.D + c, 1);
      }
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// d_rpb[h, ri, rj] = sum over (b, i, j) of d_logits at the valid slot whose rpb offset is
// (ri, rj). One block per output element; threads stride over (b, i, j).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    rpb_grad_kernel(const scalar_t* __restrict__ grad, scalar_t* __restrict__ drpb,
                    const Geometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  __shared__ acc_t shm[kThreads];
  const int64_t R = g.R(), kk = g.kk(), HW = g.H * g.W, n_out = g.heads * R * R,
                n_red = g.B * HW;
  for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
    const int64_t h = o / (R * R), ri = (o / R) % R, rj = o % R;
    acc_t acc = 0;
    for (int64_t t = threadIdx.x; t < n_red; t += blockDim.x) {
      const int64_t b = t / HW, i = (t % HW) / g.W, j = t % g.W;
      const int64_t a = tap_of_rpb_index(query_window(i, g.H, g.k, g.d, g.clamp), ri, g);
      if (a < 0) continue;
      const int64_t bb = tap_of_rpb_index(query_window(j, g.W, g.k, g.d, g.clamp), rj, g);
      if (bb < 0) continue;
      const int64_t query = ((b * g.heads + h) * g.H + i) * g.W + j;
      acc += static_cast<acc_t>(grad[query * kk + a * g.k + bb]);
    }
    acc = block_sum(acc, shm);
    if (threadIdx.x == 0) drpb[o] = static_cast<scalar_t>(acc);
  }
}

// d_rpe[h, a, b, c] = sum over (b, i, j) with slot (a, b) valid of scale * d_logits * q[c].
// One block per output element; threads stride over (b, i, j).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    rpe_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ q,
                    scalar_t* __restrict__ drpe, const Geometry g,
                    const at::acc_type<scalar_t, true> scale) {
  using acc_t = at::acc_type<scalar_t, true>;
  __shared__ acc_t shm[kThreads];
  const int64_t kk = g.kk(), HW = g.H * g.W, n_out = g.heads * kk * g.D, n_red = g.B * HW;
  for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
    const int64_t h = o / (kk * g.D), slot = (o / g.D) % kk, c = o % g.D;
    const int64_t a = slot / g.k, bb = slot % g.k;
    acc_t acc = 0;
    for (int64_t t = threadIdx.x; t < n_red; t += blockDim.x) {
      const int64_t b = t / HW, i = (t % HW) / g.W, j = t % g.W;
      if (tap_coord(query_window(i, g.H, g.k, g.d, g.clamp), a, g.d) < 0) continue;
      if (tap_coord(query_window(j, g.W, g.k, g.d, g.clamp), bb, g.d) < 0) continue;
      const int64_t query = ((b * g.heads + h) * g.H + i) * g.W + j;
      axpy<acc_t>(&acc, static_cast<acc_t>(grad[query * kk + slot]) * scale, q + query * g.D + c,
                  1);
    }
    acc = block_sum(acc, shm);
    if (threadIdx.x == 0) drpe[o] = static_cast<scalar_t>(acc);
  }
}

// na2d_av: out[query, c] = sum over valid slots of attn[query, slot] * v[p, c].
// One thread per (query, channel).
template <typename scalar_t>
__global__ void av_forward_kernel(const scalar_t* __restrict__ attn, const scalar_t* __restrict__ v,
                                  scalar_t* __restrict__ out, const Geometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t kk = g.kk(), n = g.queries() * g.D;
  MMATTN_GRID_STRIDE(idx, n) {
    const int64_t query = idx / g.D, c = idx % g.D;
    const Pixel p = pixel_at(query, g);
    const AxisWindow wi = query_window(p.i, g.H, g.k, g.d, g.clamp);
    const AxisWindow wj = query_window(p.j, g.W, g.k, g.d, g.clamp);
    const scalar_t* ap = attn + query * kk;
    acc_t acc = 0;
    for (int64_t a = 0; a < g.k; ++a) {
      const int64_t ki = tap_coord(wi, a, g.d);
      if (ki < 0) continue;
      for (int64_t b = 0; b < g.k; ++b) {
        const int64_t kj = tap_coord(wj, b, g.d);
        if (kj < 0) continue;
        axpy<acc_t>(&acc, static_cast<acc_t>(ap[a * g.k + b]), v + vec_offset(p.bh, ki, kj, g) + c,
                    1);
      }
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// na2d_av backward, d_attn[query, slot] = d_out[query] . v[p], zero on invalid slots.
// One thread per (query, slot).
template <typename scalar_t>
__global__ void av_backward_attn_kernel(const scalar_t* __restrict__ grad,
                                        const scalar_t* __restrict__ v,
                                        scalar_t* __restrict__ dattn, const Geometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t kk = g.kk(), n = g.queries() * kk;
  MMATTN_GRID_STRIDE(idx, n) {
    const int64_t query = idx / kk, slot = idx % kk, a = slot / g.k, b = slot % g.k;
    const Pixel p = pixel_at(query, g);
    const int64_t ki = tap_coord(query_window(p.i, g.H, g.k, g.d, g.clamp), a, g.d);
    const int64_t kj = tap_coord(query_window(p.j, g.W, g.k, g.d, g.clamp), b, g.d);
    const acc_t s = (ki < 0 || kj < 0)
                        ? acc_t(0)
                        : dot<acc_t>(grad + query * g.D, v + vec_offset(p.bh, ki, kj, g), g.D);
    dattn[idx] = static_cast<scalar_t>(s);
  }
}

// Inference: logits, softmax and aggregation in one pass, online softmax per query, no k*k
// logits buffer. One warp per query: the lanes split the D channels, each logit's dot product is
// summed over the warp (every lane gets the same bits, so every lane takes the same online
// softmax step), and each lane keeps the running numerator of its channels c = lane + 32t in the
// warp's slice of shared memory (D values of acc_t per warp). Control flow depends only on the
// query, so it is uniform over the warp, as the shuffles need.
template <typename scalar_t>
__global__ void fused_forward_kernel(const scalar_t* __restrict__ q,
                                     const scalar_t* __restrict__ key,
                                     const scalar_t* __restrict__ v,
                                     const scalar_t* __restrict__ rpb,
                                     const scalar_t* __restrict__ rpe,
                                     const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                                     const Geometry g, const at::acc_type<scalar_t, true> scale) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ __align__(sizeof(double)) unsigned char fused_smem[];
  const int64_t warps_per_block = blockDim.x / kWarp;
  const int64_t warp = threadIdx.x / kWarp;
  const int64_t lane = threadIdx.x % kWarp;
  acc_t* num = reinterpret_cast<acc_t*>(fused_smem) + warp * g.D;
  const int64_t kk = g.kk(), D = g.D, n = g.queries();
  for (int64_t query = static_cast<int64_t>(blockIdx.x) * warps_per_block + warp; query < n;
       query += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const Pixel p = pixel_at(query, g);
    const AxisWindow wi = query_window(p.i, g.H, g.k, g.d, g.clamp);
    const AxisWindow wj = query_window(p.j, g.W, g.k, g.d, g.clamp);
    const scalar_t* qp = q + query * D;
    for (int64_t c = lane; c < D; c += kWarp) num[c] = 0;
    acc_t m = -std::numeric_limits<acc_t>::infinity(), l = 0, rescale, weight;
    for (int64_t a = 0; a < g.k; ++a) {
      const int64_t ki = tap_coord(wi, a, g.d);
      if (ki < 0) continue;
      for (int64_t b = 0; b < g.k; ++b) {
        const int64_t kj = tap_coord(wj, b, g.d);
        if (kj < 0) continue;
        const int64_t kv = vec_offset(p.bh, ki, kj, g);
        // dot(q, k[p]) (+ dot(q, rpe[h, a, b])), split over the lanes then summed over the warp.
        acc_t s = 0;
        for (int64_t c = lane; c < D; c += kWarp) s += dot<acc_t>(qp + c, key + kv + c, 1);
        s = warp_sum(s);
        if (rpe) {
          const scalar_t* ep = rpe + rpe_offset(p.h, a, b, g);
          acc_t se = 0;
          for (int64_t c = lane; c < D; c += kWarp) se += dot<acc_t>(qp + c, ep + c, 1);
          s += warp_sum(se);
        }
        s *= scale;
        if (rpb) s += static_cast<acc_t>(rpb[rpb_offset(p.h, wi, a, wj, b, g)]);
        if (bias) s += static_cast<acc_t>(bias[query * kk + a * g.k + b]);
        online_softmax_step<acc_t>(s, m, l, rescale, weight);
        for (int64_t c = lane; c < D; c += kWarp) {
          num[c] *= rescale;
          axpy<acc_t>(num + c, weight, v + kv + c, 1);
        }
      }
    }
    const acc_t inv = acc_t(1) / l;
    for (int64_t c = lane; c < D; c += kWarp)
      out[query * D + c] = static_cast<scalar_t>(num[c] * inv);
  }
}

#undef MMATTN_GRID_STRIDE

template <typename T>
T* ptr(Tensor& t) {
  return t.data_ptr<T>();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points; same signatures, checks and return conventions as cpu/na2d.cpp.

Tensor na2d_qk_cuda(const Tensor& q_in, const Tensor& k_in, const OptTensor& rpb_in,
                    const OptTensor& rpe_in, int64_t kernel_size, int64_t dilation, bool clamp,
                    double scale) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, clamp);
  check_na2d_extras(q_in, rpb_in, rpe_in, std::nullopt, kernel_size, clamp);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const Tensor q = q_in.contiguous(), k = k_in.contiguous();
  const OptTensor rpb = contiguous(rpb_in), rpe = contiguous(rpe_in);
  const Geometry g = geometry(q, kernel_size, dilation, clamp);
  Tensor out = at::empty({g.B, g.heads, g.H, g.W, g.kk()}, q.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "na2d_qk_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    qk_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), data_or_null<scalar_t>(rpb),
        data_or_null<scalar_t>(rpe), out.data_ptr<scalar_t>(), g, static_cast<acc_t>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> na2d_qk_backward_cuda(
    const Tensor& grad_in, const Tensor& q_in, const Tensor& k_in, const OptTensor& rpe_in,
    int64_t kernel_size, int64_t dilation, bool clamp, double scale, bool with_rpb) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, clamp);
  check_na2d_attn(grad_in, q_in, kernel_size);
  check_na2d_extras(q_in, std::nullopt, rpe_in, std::nullopt, kernel_size, clamp);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const Tensor grad = grad_in.contiguous(), q = q_in.contiguous(), k = k_in.contiguous();
  const OptTensor rpe = contiguous(rpe_in);
  const Geometry g = geometry(q, kernel_size, dilation, clamp);
  Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  Tensor drpb = with_rpb ? at::empty({g.heads, g.R(), g.R()}, q.options()) : none_like(q_in);
  Tensor drpe = rpe.has_value() ? at::empty({g.heads, g.k, g.k, g.D}, q.options())
                                : none_like(q_in);
  const int64_t n = g.queries() * g.D;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "na2d_qk_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const auto s = static_cast<acc_t>(scale);
        if (n > 0) {
          qk_backward_query_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), data_or_null<scalar_t>(rpe),
              ptr<scalar_t>(dq), g, s);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          inverse_accumulate_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), ptr<scalar_t>(dk), g, s);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (with_rpb && drpb.numel() > 0) {
          rpb_grad_kernel<scalar_t><<<blocks_for_reduction(drpb.numel()), kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), ptr<scalar_t>(drpb), g);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (rpe.has_value() && drpe.numel() > 0) {
          rpe_grad_kernel<scalar_t><<<blocks_for_reduction(drpe.numel()), kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), ptr<scalar_t>(drpe), g, s);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return {dq, dk, drpb, drpe};
}

Tensor na2d_av_cuda(const Tensor& attn_in, const Tensor& v_in, int64_t kernel_size,
                    int64_t dilation, bool clamp) {
  check_na2d_qkv(v_in, v_in, kernel_size, dilation, clamp);
  check_na2d_attn(attn_in, v_in, kernel_size);
  const c10::cuda::CUDAGuard guard(v_in.device());
  const Tensor attn = attn_in.contiguous(), v = v_in.contiguous();
  const Geometry g = geometry(v, kernel_size, dilation, clamp);
  Tensor out = at::empty(v.sizes(), v.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "na2d_av_cuda", [&] {
    av_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        attn.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<Tensor, Tensor> na2d_av_backward_cuda(const Tensor& grad_in, const Tensor& attn_in,
                                                 const Tensor& v_in, int64_t kernel_size,
                                                 int64_t dilation, bool clamp) {
  check_na2d_qkv(v_in, grad_in, kernel_size, dilation, clamp);
  check_na2d_attn(attn_in, v_in, kernel_size);
  const c10::cuda::CUDAGuard guard(v_in.device());
  const Tensor grad = grad_in.contiguous(), attn = attn_in.contiguous(), v = v_in.contiguous();
  const Geometry g = geometry(v, kernel_size, dilation, clamp);
  Tensor dattn = at::empty(attn.sizes(), attn.options()), dv = at::empty(v.sizes(), v.options());
  const int64_t n_attn = dattn.numel(), n_v = dv.numel();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, v.scalar_type(), "na2d_av_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        if (n_attn > 0) {
          av_backward_attn_kernel<scalar_t><<<blocks_for(n_attn), kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), ptr<scalar_t>(dattn), g);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (n_v > 0) {
          inverse_accumulate_kernel<scalar_t><<<blocks_for(n_v), kThreads, 0, stream>>>(
              attn.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), ptr<scalar_t>(dv), g,
              acc_t(1));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return {dattn, dv};
}

Tensor na2d_fused_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                       const OptTensor& rpb_in, const OptTensor& rpe_in, const OptTensor& bias_in,
                       int64_t kernel_size, int64_t dilation, bool clamp, double scale) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, clamp);
  check_na2d_qkv(q_in, v_in, kernel_size, dilation, clamp);
  check_na2d_extras(q_in, rpb_in, rpe_in, bias_in, kernel_size, clamp);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const OptTensor rpb = contiguous(rpb_in), rpe = contiguous(rpe_in), bias = contiguous(bias_in);
  const Geometry g = geometry(q, kernel_size, dilation, clamp);
  Tensor out = at::empty(q.sizes(), q.options());
  const int64_t n_queries = g.queries();
  if (out.numel() == 0) return out;  // also covers D == 0
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "na2d_fused_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        // Shared memory: D running numerators per warp; up to 4 warps a block, fewer for large D.
        constexpr int64_t kMaxShared = 48 * 1024;
        const int64_t per_warp = g.D * static_cast<int64_t>(sizeof(acc_t));
        TORCH_CHECK(per_warp <= kMaxShared, "na2d_fused (CUDA): head dim D=", g.D,
                    " needs more than 48 KiB of shared memory per query; use the training path");
        int64_t warps = 4;
        while (warps > 1 && warps * per_warp > kMaxShared) warps /= 2;
        const unsigned int blocks = blocks_for(n_queries, warps);  // one warp per query
        const unsigned int threads = static_cast<unsigned int>(warps * kWarp);
        const size_t shared = static_cast<size_t>(warps * per_warp);
        fused_forward_kernel<scalar_t><<<blocks, threads, shared, stream>>>(
            q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
            data_or_null<scalar_t>(rpb), data_or_null<scalar_t>(rpe), data_or_null<scalar_t>(bias),
            out.data_ptr<scalar_t>(), g, static_cast<acc_t>(scale));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

}  // namespace gpu
}  // namespace mmattn

TORCH_LIBRARY_IMPL(mmattn, CUDA, m) {
  m.impl("na2d_qk", &mmattn::gpu::na2d_qk_cuda);
  m.impl("na2d_qk_backward", &mmattn::gpu::na2d_qk_backward_cuda);
  m.impl("na2d_av", &mmattn::gpu::na2d_av_cuda);
  m.impl("na2d_av_backward", &mmattn::gpu::na2d_av_backward_cuda);
  m.impl("na2d_fused", &mmattn::gpu::na2d_fused_cuda);
}
