// CPU kernels of ELSA's ghost-head neighbourhood aggregation (mmattn::ghost_head_aggregate).
//
//   out[b,c,i,j] = sum_{u,v} x[b,c,i+(u-r)d,j+(v-r)d] * (attn[b,g,u*k+v,i,j] * M[c,u,v] + S[c,u,v])
//
// Layout: x, out (B, C, H, W); attn (B, G, k*k, H, W); M, S (C, k, k), broadcast over the batch.
// mmattn::ghost_head_softmax_aggregate (inference, no autograd) takes the logits instead of attn
// and the softmax over the taps inside the kernel, band by band.
// The kernels (ghost_vec.h) are vectorised along the contiguous W axis, built per CPU capability
// and picked like na2d's. Each output element is written by one thread; the ghost-tensor
// gradients are reduced per (batch, channel) by one thread each and then over the batch in a
// fixed order, so results are deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "../ops.h"
#include "cpu_utils.h"
#include "ghost_kernels.h"
#include "capability.h"

namespace mmattn {
namespace cpu {
namespace {

template <typename T>
struct GhostKernels {
  using Fn = void (*)(const GhostGeometry&, const GhostBuffers<T>&, int64_t, int64_t);
  Fn forward, forward_softmax, backward_x, backward_attn, backward_ghost;
};

template <typename T>
GhostKernels<T> ghost_kernels() {
  const CpuBuild build = cpu_build();
#if defined(MMATTN_HAVE_AVX512)
  if (build == CpuBuild::AVX512)
    return {&AVX512::ghost_forward_rows, &AVX512::ghost_forward_softmax_rows,
            &AVX512::ghost_backward_x_rows,
            &AVX512::ghost_backward_attn_rows, &AVX512::ghost_backward_ghost_rows};
#endif
#if defined(MMATTN_HAVE_AVX2)
  if (build == CpuBuild::AVX2)
    return {&AVX2::ghost_forward_rows, &AVX2::ghost_forward_softmax_rows,
            &AVX2::ghost_backward_x_rows,
            &AVX2::ghost_backward_attn_rows, &AVX2::ghost_backward_ghost_rows};
#endif
  return {&DEFAULT::ghost_forward_rows, &DEFAULT::ghost_forward_softmax_rows,
          &DEFAULT::ghost_backward_x_rows,
          &DEFAULT::ghost_backward_attn_rows, &DEFAULT::ghost_backward_ghost_rows};
}

template <typename T>
void run(typename GhostKernels<T>::Fn fn, int64_t n, const GhostGeometry& g,
         const GhostBuffers<T>& p) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { fn(g, p, begin, end); });
}

GhostGeometry ghost_geometry(const Tensor& v, const Tensor& attn, int64_t k, int64_t d) {
  return {v.size(0), v.size(1), attn.size(1), v.size(2), v.size(3), k, d};
}

// Whether the float (B, C, H, W) map t is laid out channels-last (channel stride 1, rows of W
// pixels W pixel strides apart), possibly a channel slice of a wider map: pad_planes reads it
// with its pixel stride.
bool channels_last_map(const Tensor& t) {
  const auto s = t.scalar_type();
  return (s == at::kFloat || s == at::kDouble) && t.dim() == 4 && t.stride(1) == 1 &&
         t.stride(3) >= t.size(1) && t.stride(2) == t.size(3) * t.stride(3) &&
         !t.is_contiguous();
}

// S as the kernels read it: (C, k*k), zeros in place of a missing tensor.
Tensor add_or_zeros(const OptTensor& t, const Tensor& v, int64_t kk) {
  if (t.has_value() && t->defined()) return t->reshape({v.size(1), kk}).contiguous();
  return at::zeros({v.size(1), kk}, v.options());
}

// M as the kernels read it: (C, k*k), or none (a null pointer for the kernels) when missing.
OptTensor mul_or_none(const OptTensor& t, const Tensor& v, int64_t kk) {
  if (t.has_value() && t->defined()) return t->reshape({v.size(1), kk}).contiguous();
  return std::nullopt;
}

// The two forwards: the aggregation with the attention `attn_in`, or (softmax) with
// softmax(attn_in + bias_in) over the taps, attn_in holding the logits.
Tensor ghost_forward(const Tensor& v_in, const Tensor& attn_in, const OptTensor& bias_in,
                     const OptTensor& mul_in, const OptTensor& add_in, int64_t kernel_size,
                     int64_t dilation, bool softmax) {
  if (softmax) {
    check_ghost(v_in, attn_in, mul_in, add_in, kernel_size, dilation,
                "ghost_head_softmax_aggregate", "logits");
    check_ghost_logits_bias(attn_in, bias_in);
  } else {
    check_ghost(v_in, attn_in, mul_in, add_in, kernel_size, dilation);
  }
  // the softmax forward reads a channels-last v in place (ELSA's v, a channel slice of the
  // channels-last pre_proj output), without the transposing copy to NCHW
  const bool in_place = softmax && channels_last_map(v_in);
  const Tensor v = in_place ? v_in : compute_dtype(v_in), attn = compute_dtype(attn_in);
  const OptTensor bias = compute_dtype(bias_in), mul = compute_dtype(mul_in),
                  add = compute_dtype(add_in);
  const GhostGeometry g = ghost_geometry(v, attn, kernel_size, dilation);
  Tensor out = at::empty(v.sizes(), v.options());  // NCHW
  const OptTensor m = mul_or_none(mul, v, g.kk());
  const Tensor a = add_or_zeros(add, v, g.kk());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "ghost_head_aggregate_cpu", [&] {
    GhostBuffers<scalar_t> p;
    p.x = v.data_ptr<scalar_t>(), p.attn = attn.data_ptr<scalar_t>();
    p.xs = in_place ? MapStrides{v.stride(0), v.stride(1), v.stride(3)} : g.nchw();
    p.attn_bias = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    p.mul = data_or_null<scalar_t>(m), p.add = a.data_ptr<scalar_t>();
    p.out = out.data_ptr<scalar_t>();
    const GhostKernels<scalar_t> kn = ghost_kernels<scalar_t>();
    run<scalar_t>(softmax ? kn.forward_softmax : kn.forward, g.B * g.G * g.bands(), g, p);
  });
  return out.to(v_in.scalar_type());
}

}  // namespace

Tensor ghost_head_aggregate_cpu(const Tensor& v_in, const Tensor& attn_in, const OptTensor& mul_in,
                                const OptTensor& add_in, int64_t kernel_size, int64_t dilation) {
  return ghost_forward(v_in, attn_in, std::nullopt, mul_in, add_in, kernel_size, dilation, false);
}

// ghost_head_aggregate_cpu of softmax(logits + logits_bias) over the taps (dim 2), with no
// attention tensor: each band item takes the softmax of its rows into a buffer of its own
// (ghost_vec.h, forward_softmax_rows). Inference only (no autograd; mmattn.ops.
// ghost_head_softmax_aggregate calls it where no gradient is needed).
Tensor ghost_head_softmax_aggregate_cpu(const Tensor& v_in, const Tensor& logits_in,
                                        const OptTensor& bias_in, const OptTensor& mul_in,
                                        const OptTensor& add_in, int64_t kernel_size,
                                        int64_t dilation) {
  return ghost_forward(v_in, logits_in, bias_in, mul_in, add_in, kernel_size, dilation, true);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> ghost_head_aggregate_backward_cpu(
    const Tensor& grad_in, const Tensor& v_in, const Tensor& attn_in, const OptTensor& mul_in,
    const OptTensor& add_in, int64_t kernel_size, int64_t dilation, bool with_mul, bool with_add) {
  check_ghost(v_in, attn_in, mul_in, add_in, kernel_size, dilation);
  TORCH_CHECK(grad_in.sizes() == v_in.sizes(), "ghost_head_aggregate_backward: grad must match v");
  const Tensor grad = compute_dtype(grad_in), v = compute_dtype(v_in),
               attn = compute_dtype(attn_in);
  const OptTensor mul = compute_dtype(mul_in), add = compute_dtype(add_in);
  const GhostGeometry g = ghost_geometry(v, attn, kernel_size, dilation);
  Tensor dv = at::empty_like(v), dattn = at::empty_like(attn);
  const OptTensor m = mul_or_none(mul, v, g.kk());
  const Tensor a = add_or_zeros(add, v, g.kk());
  // d_x runs the forward's aggregation with the taps mirrored (ghost_vec.h)
  const OptTensor m_mirror =
      m.has_value() ? OptTensor(m->flip({1}).contiguous()) : OptTensor(std::nullopt);
  const Tensor a_mirror = a.flip({1}).contiguous();
  // (B, C, k, k) per-batch partials of the asked-for gradients, summed over b below
  Tensor dmul, dadd, part_mul, part_add;
  if (with_mul) part_mul = at::empty({g.B, g.C, g.k, g.k}, v.options());
  if (with_add) part_add = at::empty({g.B, g.C, g.k, g.k}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "ghost_head_aggregate_backward_cpu", [&] {
    const GhostKernels<scalar_t> kn = ghost_kernels<scalar_t>();
    GhostBuffers<scalar_t> p;
    p.x = v.data_ptr<scalar_t>(), p.attn = attn.data_ptr<scalar_t>();
    p.grad = grad.data_ptr<scalar_t>();
    p.mul = data_or_null<scalar_t>(m_mirror), p.add = a_mirror.data_ptr<scalar_t>();
    p.out = dv.data_ptr<scalar_t>(), p.dattn = dattn.data_ptr<scalar_t>();
    run<scalar_t>(kn.backward_x, g.B * g.G * g.bands(), g, p);
    // d_attn: no M (null) when the op was given none, instead of multiplying by ones
    p.mul = data_or_null<scalar_t>(m), p.add = a.data_ptr<scalar_t>();
    run<scalar_t>(kn.backward_attn, g.B * g.G * g.bands(), g, p);
    if (with_mul || with_add) {
      p.part_mul = with_mul ? part_mul.data_ptr<scalar_t>() : nullptr;
      p.part_add = with_add ? part_add.data_ptr<scalar_t>() : nullptr;
      run<scalar_t>(kn.backward_ghost, g.B * g.G * g.ghost_blocks(), g, p);
    }
  });
  if (with_mul) dmul = part_mul.sum(0);
  if (with_add) dadd = part_add.sum(0);
  const auto dtype = v_in.scalar_type();
  return {dv.to(dtype), dattn.to(dtype), with_mul ? dmul.to(dtype) : none_like(v_in),
          with_add ? dadd.to(dtype) : none_like(v_in)};
}

}  // namespace cpu
}  // namespace mmattn

TORCH_LIBRARY_IMPL(mmattn, CPU, m) {
  m.impl("ghost_head_aggregate", &mmattn::cpu::ghost_head_aggregate_cpu);
  m.impl("ghost_head_aggregate_backward", &mmattn::cpu::ghost_head_aggregate_backward_cpu);
  m.impl("ghost_head_softmax_aggregate", &mmattn::cpu::ghost_head_softmax_aggregate_cpu);
}
