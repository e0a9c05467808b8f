// CPU entry points of two-dimensional neighbourhood attention (mmattn::na2d_*).
//
// The op layout is (B, heads, H, W, D) for q, k, v, out and (B, heads, H, W, k*k) for
// logits/attn; out, d_q, d_k and d_v take the memory layout of q, k, v (empty_like), logits and
// d_attn are contiguous. The kernels read the padded, W-contiguous "strip" layout (na2d_kernels.h;
// any input strides are accepted, reduced precision is computed in fp32): each thread copies the
// q/k/v/d_out rows it reads into its own ring of strip rows, and the entry points copy the k*k
// weights of the backward passes into whole-tensor strips. They run the vectorised row kernels
// of the CPU capability ATen reports (AVX512, AVX2 or the generic DEFAULT build of the same
// code), parallel over the (B, heads, H) rows with at::parallel_for. Each output element is
// written by one thread in a fixed order, and the reductions over pixels (d_rpb, d_rpe) are
// summed in a fixed order, so results are bit-identical from run to run. The exception is the
// tables' gradients of na2d_split_rpe_train_backward, whose sums over the queries are inner
// dimensions of ATen's bmm: their order is the BLAS library's (identical across runs and thread
// counts in test_cpu_kernels.py).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../common/window.h"
#include "../ops.h"
#include "cpu_utils.h"
#include "na2d_kernels.h"

namespace mmattn {
namespace cpu {

namespace {

CpuBuild na2d_build_for(CpuBuild build, const char* request, bool split) {
  const std::string req = request ? request : "";
  CpuBuild want;
  if (req.empty() || req == "auto") {
    want = build == CpuBuild::AVX512 && split ? CpuBuild::AVX2 : build;
  } else if (req == "avx512") {
    want = CpuBuild::AVX512;
  } else if (req == "avx2") {
    want = CpuBuild::AVX2;
  } else if (req == "default") {
    want = CpuBuild::DEFAULT;
  } else {
    TORCH_CHECK(false, "MMATTN_NA2D_KERNELS must be auto, avx512, avx2 or default, got '", req,
                "'");
  }
  // a request can lower the build, never raise it above ATen's capability
  return static_cast<int>(want) < static_cast<int>(build) ? want : build;
}

}  // namespace

// na2d's kernel build: cpu_build(), except on CPUs whose AVX-512 instructions run as two 256-bit
// halves (AMD Zen 4), where the AVX2 build runs: it does the same arithmetic per cycle there,
// and (likely, not profiled) its shifted 32-byte window loads split cache lines less often than
// 64-byte ones (issue case on a 2-core Zen 4, one thread: 5.1 ms against 8.5-8.8 ms; README,
// "Benchmarks").
// MMATTN_NA2D_KERNELS=auto|avx512|avx2|default chooses (lowering only), read once.
CpuBuild na2d_build() {
  static const CpuBuild build = na2d_build_for(cpu_build(), std::getenv("MMATTN_NA2D_KERNELS"),
                                               avx512_split_into_256_bit_halves());
  return build;
}

const char* na2d_cpu_kernels() { return cpu_build_name(na2d_build()); }

namespace {

// Calls the row kernel `fn` of the capability in use over all rows, in parallel.
template <typename T>
struct Kernels {
  using Fn = void (*)(const StripGeometry&, const Na2dBuffers<T>&, int64_t, int64_t);
  using PlaneFn = void (*)(const T*, int64_t, int64_t, T*, int64_t, int64_t, int64_t, int64_t);
  Fn fused, logits, aggregate, inverse, softmax_grad;
  PlaneFn transpose_to_strip;
};

template <typename T>
Kernels<T> kernels() {
  const CpuBuild build = na2d_build();
#if defined(MMATTN_HAVE_AVX512)
  if (build == CpuBuild::AVX512)
    return {&AVX512::fused_rows, &AVX512::logits_rows, &AVX512::aggregate_rows,
            &AVX512::inverse_rows, &AVX512::softmax_grad_rows, &AVX512::transpose_to_strip};
#endif
#if defined(MMATTN_HAVE_AVX2)
  if (build == CpuBuild::AVX2)
    return {&AVX2::fused_rows, &AVX2::logits_rows, &AVX2::aggregate_rows, &AVX2::inverse_rows,
            &AVX2::softmax_grad_rows, &AVX2::transpose_to_strip};
#endif
  return {&DEFAULT::fused_rows, &DEFAULT::logits_rows, &DEFAULT::aggregate_rows,
          &DEFAULT::inverse_rows, &DEFAULT::softmax_grad_rows, &DEFAULT::transpose_to_strip};
}

template <typename T>
void run_rows(typename Kernels<T>::Fn fn, const StripGeometry& g, const Na2dBuffers<T>& p) {
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) { fn(g, p, begin, end); });
}

StripGeometry strip_geometry(const Tensor& x, int64_t kernel_size, int64_t dilation, bool clamp) {
  StripGeometry g{x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), kernel_size, dilation,
                  clamp, 0, 0};
  g.P = (kernel_size / 2) * dilation;
  g.Wp = 2 * g.P + (g.W + 15) / 16 * 16;
  return g;
}

at::ScalarType compute_type(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A (B, heads, H, W, C) tensor in the compute dtype, any strides, for the kernels' own rings.
template <typename T>
OpRows<T> op_rows(const Tensor& x) {
  OpRows<T> o;
  o.data = x.data_ptr<T>();
  for (int d = 0; d < 5; ++d) o.st[d] = x.stride(d);
  return o;
}

// (B, heads, H, W, C), any strides -> zero-padded strip layout (B, heads, H, C, Wp): one pass,
// parallel over the (B, heads, H) planes, each plane's padding zeroed next to its copy.
template <typename T>
void copy_to_strip(const Tensor& x, Tensor& s, const StripGeometry& g) {
  const int64_t C = x.size(4), Wp = g.Wp, P = g.P, W = g.W;
  const OpRows<T> src = op_rows<T>(x);
  T* dst = s.data_ptr<T>();
  const auto to_plane = kernels<T>().transpose_to_strip;
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      to_plane(src.plane(g, row), src.st[3], src.st[4], dst + row * C * Wp, C, P, W, Wp);
  });
}

// The memory of an entry point's strips and other temporaries, reused from call to call by the
// calling thread (thread_scratch). `slot` (0..kScratchSlots-1) is the buffer's place in its entry
// point; a buffer never outlives the call (what is returned is a copy, a reduction or a new
// tensor), and every use rewrites the part it reads (strip copies write their padding too;
// accumulators are zeroed).
constexpr int kScratchSlots = 6;
struct StripScratch;

Tensor strip_buffer(int slot, at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t n = 1;
  for (const int64_t s : sizes) n *= s;
  return thread_scratch<StripScratch, kScratchSlots>(slot, n, opts).narrow(0, 0, n).view(sizes);
}

// The zeroed per-row d_rpb partials (B, heads, H, R, R) of the backward kernels, in scratch
// slot `slot`; undefined when d_rpb is not asked for.
Tensor rpb_partials(bool with_rpb, const StripGeometry& g, const at::TensorOptions& opts,
                    int slot) {
  if (!with_rpb) return Tensor();
  return strip_buffer(slot, {g.B, g.heads, g.H, g.R(), g.R()}, opts).zero_();
}

// x in the compute dtype (reduced precision in fp32), any strides.
Tensor in_compute_type(const Tensor& x) {
  return x.scalar_type() == compute_type(x) ? x : x.to(compute_type(x));
}

Tensor to_strip(const Tensor& x_in, const StripGeometry& g, int slot) {
  const Tensor x = in_compute_type(x_in);
  Tensor s = strip_buffer(slot, {g.B, g.heads, g.H, x.size(4), g.Wp}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "na2d_to_strip", [&] {
    copy_to_strip<scalar_t>(x, s, g);
  });
  return s;
}

// Strip layout (B, heads, H, C, Wp) -> (B, heads, H, W, C) of dtype `dtype`.
Tensor from_strip(const Tensor& s, const StripGeometry& g, at::ScalarType dtype) {
  Tensor out = at::empty({g.B, g.heads, g.H, g.W, s.size(3)}, s.options().dtype(dtype));
  out.copy_(s.narrow(4, g.P, g.W).transpose(3, 4));
  return out;
}

// Zeroes the weights the vector kernels must not use: invalid slots ('mask'), and the clamped
// border columns ('clamp'), which the kernels' per-query fix-ups read from the op layout.
template <typename T>
void mask_weights(const StripGeometry& g, T* w_s) {
  const int64_t k = g.k, r = g.r(), kk = g.kk();
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const AxisWindow wi = query_window(row % g.H, g.H, k, g.d, g.clamp);
      for (int64_t a = 0; a < k; ++a) {
        const bool row_valid = tap_coord(wi, a, g.d) >= 0;
        for (int64_t b = 0; b < k; ++b) {
          T* w = w_s + (row * kk + a * k + b) * g.Wp + g.P;
          int64_t lo, hi;  // the valid columns [lo, hi)
          if (!row_valid) {
            lo = hi = 0;
          } else if (g.clamp) {
            lo = g.P, hi = g.W - g.P;
          } else {
            const int64_t shift = (b - r) * g.d;
            lo = std::clamp<int64_t>(-shift, 0, g.W), hi = std::clamp<int64_t>(g.W - shift, 0, g.W);
          }
          hi = std::max(lo, hi);
          std::fill(w, w + lo, T(0));
          std::fill(w + hi, w + g.W, T(0));
        }
      }
    }
  });
}

// d_rpe = scale * sum over the queries of d_logits[t] q[c]: one small GEMM per (batch, head, row),
// (k*k, W) x (W, D) from the strips' image columns and q in the op layout (compute dtype), then
// a sum over batches and rows in a fixed order.
Tensor rpe_grad(const Tensor& ds_s, const Tensor& q, const StripGeometry& g, double scale) {
  const Tensor part = at::bmm(ds_s.view({g.rows(), g.kk(), g.Wp}).narrow(2, g.P, g.W),
                              q.reshape({g.rows(), g.W, g.D}));
  return (part.view({g.B, g.heads, g.H, g.kk(), g.D}).sum({0, 2}) * scale)
      .view({g.heads, g.k, g.k, g.D});
}

// The separable form of a contiguous rpe (heads, k, k, D), when it has one (na2d_kernels.h):
// every channel c of every head depends on the window row a only (rpe[h, a, b, c] ==
// rpe[h, a, 0, c] for all a, b: it goes to rpe_a) or on the window column b only (rpe_b), as
// with SASA's concatenated row and column tables. `tables`: (2, heads, k, D), [rpe_a, rpe_b],
// with zeros in the other table's channels, so rpe = rpe_a + rpe_b exactly; `ranges`: (heads, 2,
// 2) int64, the channels [lo, hi) that hold each table's channels (lo = hi when it has none).
// Both undefined when the rpe is not separable (and for NaN entries, which compare unequal).
struct SeparableRpe {
  Tensor tables, ranges;
};

template <typename T>
SeparableRpe separable_rpe(const Tensor& rpe) {
  const int64_t heads = rpe.size(0), k = rpe.size(1), D = rpe.size(3);
  const T* e = rpe.data_ptr<T>();
  auto at_ = [&](int64_t h, int64_t a, int64_t b, int64_t c) {
    return e[((h * k + a) * k + b) * D + c];
  };
  // channel (h, c) depends on the window row only (only_a) or the column only (only_b): the
  // comparisons run along the contiguous channels (vectorised by the compiler; the test runs on
  // every call, 25k comparisons for SASA's last stage)
  std::vector<char> in_a(heads * D);  // channel (h, c) goes to rpe_a
  std::vector<char> only_a(D), only_b(D);
  for (int64_t h = 0; h < heads; ++h) {
    std::fill(only_a.begin(), only_a.end(), 1);
    std::fill(only_b.begin(), only_b.end(), 1);
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) {
        const T* x = e + ((h * k + a) * k + b) * D;
        const T* xa = e + (h * k + a) * k * D;  // (a, 0)
        const T* xb = e + (h * k * k + b) * D;  // (0, b)
        for (int64_t c = 0; c < D; ++c) {
          only_a[c] &= static_cast<char>(x[c] == xa[c]);
          only_b[c] &= static_cast<char>(x[c] == xb[c]);
        }
      }
    for (int64_t c = 0; c < D; ++c) {
      if (!only_a[c] && !only_b[c]) return {};
      in_a[h * D + c] = only_a[c];
    }
  }
  SeparableRpe sep{at::zeros({2, heads, k, D}, rpe.options()),
                   at::empty({heads, 2, 2}, rpe.options().dtype(at::kLong))};
  T* ea = sep.tables.data_ptr<T>();
  T* eb = ea + heads * k * D;
  int64_t* range = sep.ranges.data_ptr<int64_t>();
  for (int64_t h = 0; h < heads; ++h) {
    int64_t* ra = range + h * 4;  // [lo_a, hi_a, lo_b, hi_b]
    ra[0] = ra[2] = D, ra[1] = ra[3] = 0;
    for (int64_t c = 0; c < D; ++c) {
      const bool to_a = in_a[h * D + c];
      int64_t* r = ra + (to_a ? 0 : 2);
      r[0] = std::min(r[0], c), r[1] = std::max(r[1], c + 1);
      for (int64_t t = 0; t < k; ++t) {
        if (to_a)
          ea[(h * k + t) * D + c] = at_(h, t, 0, c);
        else
          eb[(h * k + t) * D + c] = at_(h, 0, t, c);
      }
    }
    for (int i = 0; i < 2; ++i) ra[2 * i] = std::min(ra[2 * i], ra[2 * i + 1]);  // empty: lo=hi
  }
  return sep;
}

// Sets the rpe of the logits kernels: the separable tables when rpe has that form, else rpe.
// `sep` keeps the tables alive for the call.
template <typename T>
void set_rpe(Na2dBuffers<T>& p, const OptTensor& rpe, SeparableRpe& sep) {
  if (!rpe.has_value()) return;
  sep = separable_rpe<T>(*rpe);
  if (sep.tables.defined()) {
    p.rpe_a = sep.tables.data_ptr<T>();
    p.rpe_b = p.rpe_a + sep.tables[0].numel();
    p.rpe_range = sep.ranges.data_ptr<int64_t>();
  } else {
    p.rpe = rpe->data_ptr<T>();
  }
}

// An output like `like` (the memory layout of the corresponding input, e.g. SASA's q/k/v views of
// a (B, heads, D, H, W) conv output), in the compute dtype; the fake kernels use empty_like too.
Tensor output_like(const Tensor& like) {
  return at::empty_like(like, like.options().dtype(compute_type(like)));
}

template <typename T>
void set_out(Na2dBuffers<T>& p, const Tensor& out) {
  p.out = out.data_ptr<T>();
  for (int d = 0; d < 5; ++d) p.os[d] = out.stride(d);
}

template <typename T>
const T* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
const T* ptr(const OptTensor& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// d_q = scale * d_logits (k + rpe), with the d_rpb partials when rpb_part is defined, and
// d_k = scale * d_logits^T q, from d_logits in the strip layout (w_s, invalid slots zero; w: the
// op layout for the 'clamp' fix-ups, or null) and q, k in the op layout (compute dtype).
template <typename T>
void logits_backward(const Kernels<T>& kn, const StripGeometry& g, const T* w_s, const T* w,
                     const Tensor& q, const Tensor& k, const OptTensor& rpe, const Tensor& dq,
                     const Tensor& dk, const Tensor& rpb_part, double scale) {
  Na2dBuffers<T> pq;
  pq.w_s = w_s, pq.w = w, pq.k_op = op_rows<T>(k), pq.rpe = ptr<T>(rpe);
  set_out(pq, dq);
  pq.rpb_part = rpb_part.defined() ? rpb_part.data_ptr<T>() : nullptr;
  pq.scale = static_cast<T>(scale);
  run_rows<T>(kn.aggregate, g, pq);
  Na2dBuffers<T> pk;
  pk.w_s = w_s, pk.w = w, pk.src_op = op_rows<T>(q);
  set_out(pk, dk);
  pk.scale = pq.scale;
  run_rows<T>(kn.inverse, g, pk);
}

// The d_rpb and d_rpe outputs in the dtype of `like` (empty when not asked for).
std::tuple<Tensor, Tensor> extras_grads(const Tensor& rpb_part, const OptTensor& rpe,
                                        const Tensor& ds_s, const Tensor& q,
                                        const StripGeometry& g, double scale, const Tensor& like) {
  const auto dtype = like.scalar_type();
  Tensor drpb = rpb_part.defined() ? rpb_part.sum({0, 2}).to(dtype) : none_like(like);
  Tensor drpe = rpe.has_value() ? rpe_grad(ds_s, q, g, scale).to(dtype) : none_like(like);
  return {drpb, drpe};
}

}  // namespace

Tensor na2d_qk_cpu(const Tensor& q_in, const Tensor& k_in, const OptTensor& rpb_in,
                   const OptTensor& rpe_in, int64_t kernel_size, int64_t dilation, bool clamp,
                   double scale) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, clamp);
  check_na2d_extras(q_in, rpb_in, rpe_in, std::nullopt, kernel_size, clamp);
  const StripGeometry g = strip_geometry(q_in, kernel_size, dilation, clamp);
  const Tensor q = in_compute_type(q_in), k = in_compute_type(k_in);
  const OptTensor rpb = compute_dtype(rpb_in), rpe = compute_dtype(rpe_in);
  Tensor out_s = strip_buffer(2, {g.B, g.heads, g.H, g.kk(), g.Wp}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_qk_cpu", [&] {
    Na2dBuffers<scalar_t> p;
    p.q_op = op_rows<scalar_t>(q), p.k_op = op_rows<scalar_t>(k);
    p.rpb = ptr<scalar_t>(rpb);
    SeparableRpe sep;
    set_rpe(p, rpe, sep);
    p.out = out_s.data_ptr<scalar_t>();
    p.scale = static_cast<scalar_t>(scale);
    p.invalid = -std::numeric_limits<scalar_t>::infinity();
    run_rows<scalar_t>(kernels<scalar_t>().logits, g, p);
  });
  return from_strip(out_s, g, q_in.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor, Tensor> na2d_qk_backward_cpu(
    const Tensor& grad_in, const Tensor& q_in, const Tensor& k_in, const OptTensor& rpe_in,
    int64_t kernel_size, int64_t dilation, bool clamp, double scale, bool with_rpb) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, clamp);
  check_na2d_attn(grad_in, q_in, kernel_size);
  check_na2d_extras(q_in, std::nullopt, rpe_in, std::nullopt, kernel_size, clamp);
  const StripGeometry g = strip_geometry(q_in, kernel_size, dilation, clamp);
  const Tensor q = in_compute_type(q_in), k = in_compute_type(k_in),
               w_s = to_strip(grad_in, g, 2);
  const Tensor grad = clamp ? compute_dtype(grad_in) : Tensor();  // the border fix-ups' input
  const OptTensor rpe = compute_dtype(rpe_in);
  const auto opts = q.options();
  Tensor dq = output_like(q_in), dk = output_like(k_in);
  Tensor rpb_part = rpb_partials(with_rpb, g, opts, 3);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_qk_backward_cpu", [&] {
    mask_weights<scalar_t>(g, w_s.data_ptr<scalar_t>());
    logits_backward<scalar_t>(kernels<scalar_t>(), g, w_s.data_ptr<scalar_t>(),
                              ptr<scalar_t>(grad), q, k, rpe, dq, dk, rpb_part, scale);
  });
  const auto dtype = q_in.scalar_type();
  const auto [drpb, drpe] = extras_grads(rpb_part, rpe, w_s, q, g, scale, q_in);
  return {dq.to(dtype), dk.to(dtype), drpb, drpe};
}

Tensor na2d_av_cpu(const Tensor& attn_in, const Tensor& v_in, int64_t kernel_size,
                   int64_t dilation, bool clamp) {
  check_na2d_qkv(v_in, v_in, kernel_size, dilation, clamp);
  check_na2d_attn(attn_in, v_in, kernel_size);
  const StripGeometry g = strip_geometry(v_in, kernel_size, dilation, clamp);
  const Tensor w_s = to_strip(attn_in, g, 0), v = in_compute_type(v_in);
  const Tensor attn = clamp ? compute_dtype(attn_in) : Tensor();
  Tensor out = output_like(v_in);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_av_cpu", [&] {
    mask_weights<scalar_t>(g, w_s.data_ptr<scalar_t>());
    Na2dBuffers<scalar_t> p;
    p.w_s = w_s.data_ptr<scalar_t>(), p.w = ptr<scalar_t>(attn), p.k_op = op_rows<scalar_t>(v);
    set_out(p, out);
    run_rows<scalar_t>(kernels<scalar_t>().aggregate, g, p);
  });
  return out.to(v_in.scalar_type());
}

std::tuple<Tensor, Tensor> na2d_av_backward_cpu(const Tensor& grad_in, const Tensor& attn_in,
                                                const Tensor& v_in, int64_t kernel_size,
                                                int64_t dilation, bool clamp) {
  check_na2d_qkv(v_in, grad_in, kernel_size, dilation, clamp);
  check_na2d_attn(attn_in, v_in, kernel_size);
  const StripGeometry g = strip_geometry(v_in, kernel_size, dilation, clamp);
  const Tensor go = in_compute_type(grad_in), v = in_compute_type(v_in),
               w_s = to_strip(attn_in, g, 2);
  const Tensor attn = clamp ? compute_dtype(attn_in) : Tensor();
  Tensor dattn_s = strip_buffer(3, {g.B, g.heads, g.H, g.kk(), g.Wp}, v.options());
  Tensor dv = output_like(v_in);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_av_backward_cpu", [&] {
    mask_weights<scalar_t>(g, w_s.data_ptr<scalar_t>());
    const Kernels<scalar_t> kn = kernels<scalar_t>();
    Na2dBuffers<scalar_t> p;
    p.q_op = op_rows<scalar_t>(go), p.k_op = op_rows<scalar_t>(v);
    p.out = dattn_s.data_ptr<scalar_t>();
    run_rows<scalar_t>(kn.logits, g, p);
    Na2dBuffers<scalar_t> pv;
    pv.w_s = w_s.data_ptr<scalar_t>(), pv.w = ptr<scalar_t>(attn);
    pv.src_op = op_rows<scalar_t>(go);
    set_out(pv, dv);
    run_rows<scalar_t>(kn.inverse, g, pv);
  });
  const auto dtype = v_in.scalar_type();
  return {from_strip(dattn_s, g, dtype), dv.to(dtype)};
}

// The inference kernel on q, k, v with rpb and bias (undefined: none) and the rpe that
// set_rpe_(p, sep) puts into p (sep: a SeparableRpe that keeps its tables alive for the call).
template <typename SetRpe>
Tensor run_fused(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                 const OptTensor& rpb_in, const OptTensor& bias_in, const StripGeometry& g,
                 double scale, SetRpe&& set_rpe_) {
  const Tensor q = in_compute_type(q_in), k = in_compute_type(k_in), v = in_compute_type(v_in);
  const OptTensor rpb = compute_dtype(rpb_in), bias = compute_dtype(bias_in);
  Tensor out = output_like(q_in);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_fused_cpu", [&] {
    Na2dBuffers<scalar_t> p;  // the kernel copies the strip rows it reads (per-thread rings)
    p.q_op = op_rows<scalar_t>(q), p.k_op = op_rows<scalar_t>(k), p.v_op = op_rows<scalar_t>(v);
    p.rpb = ptr<scalar_t>(rpb), p.bias = ptr<scalar_t>(bias);
    SeparableRpe sep;
    set_rpe_(p, sep);
    set_out(p, out);
    p.scale = static_cast<scalar_t>(scale);
    p.invalid = -std::numeric_limits<scalar_t>::infinity();
    run_rows<scalar_t>(kernels<scalar_t>().fused, g, p);
  });
  return out.to(q_in.scalar_type());
}

Tensor na2d_fused_cpu(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                      const OptTensor& rpb_in, const OptTensor& rpe_in, const OptTensor& bias_in,
                      int64_t kernel_size, int64_t dilation, bool clamp, double scale) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, clamp);
  check_na2d_qkv(q_in, v_in, kernel_size, dilation, clamp);
  check_na2d_extras(q_in, rpb_in, rpe_in, bias_in, kernel_size, clamp);
  const StripGeometry g = strip_geometry(q_in, kernel_size, dilation, clamp);
  const OptTensor rpe = compute_dtype(rpe_in);
  return run_fused(q_in, k_in, v_in, rpb_in, bias_in, g, scale,
                   [&](auto& p, SeparableRpe& sep) { set_rpe(p, rpe, sep); });
}

// SASA's rpe, rpe[h, a, b] = concat(rel_h[h, a], rel_w[h, b]) (rel_h, rel_w: (heads, k, D/2),
// any strides), in the separable form of the logits kernels: rpe_a is rel_h in the channels
// [0, D/2), rpe_b rel_w in [D/2, D), zeros elsewhere.
template <typename T>
SeparableRpe split_rpe_tables(const Tensor& rel_h, const Tensor& rel_w) {
  const int64_t heads = rel_h.size(0), k = rel_h.size(1), half = rel_h.size(2), D = 2 * half;
  SeparableRpe sep{at::empty({2, heads, k, D}, rel_h.options()),
                   at::empty({heads, 2, 2}, rel_h.options().dtype(at::kLong))};
  const auto rh = rel_h.accessor<T, 3>(), rw = rel_w.accessor<T, 3>();
  T* ea = sep.tables.data_ptr<T>();
  T* eb = ea + heads * k * D;
  int64_t* range = sep.ranges.data_ptr<int64_t>();
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t t = 0; t < k; ++t) {
      T* a = ea + (h * k + t) * D;
      T* b = eb + (h * k + t) * D;
      for (int64_t c = 0; c < half; ++c) {
        a[c] = rh[h][t][c], a[half + c] = T(0);
        b[c] = T(0), b[half + c] = rw[h][t][c];
      }
    }
    int64_t* r = range + h * 4;  // [lo_a, hi_a, lo_b, hi_b]
    r[0] = 0, r[1] = half, r[2] = half, r[3] = D;
  }
  return sep;
}

// Sets the logits kernels' rpe to the separable form of SASA's tables (split_rpe_tables); `sep`
// keeps them alive for the call.
template <typename T>
void set_split_rpe(Na2dBuffers<T>& p, const Tensor& rel_h, const Tensor& rel_w,
                   SeparableRpe& sep) {
  sep = split_rpe_tables<T>(rel_h, rel_w);
  p.rpe_a = sep.tables.data_ptr<T>();
  p.rpe_b = p.rpe_a + sep.tables[0].numel();
  p.rpe_range = sep.ranges.data_ptr<int64_t>();
}

namespace {
// What the na2d_split_rpe entry points check and prepare alike: q, k, v and the two tables
// (check_na2d_split_rpe), the strip geometry, and the tables in the compute dtype.
struct SplitRpeArgs {
  StripGeometry g;
  Tensor rel_h, rel_w;
};

SplitRpeArgs split_rpe_args(const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& rel_h, const Tensor& rel_w, int64_t kernel_size,
                            int64_t dilation) {
  check_na2d_qkv(q, k, kernel_size, dilation, false);
  check_na2d_qkv(q, v, kernel_size, dilation, false);
  check_na2d_split_rpe(q, rel_h, rel_w, kernel_size);
  return {strip_geometry(q, kernel_size, dilation, false), in_compute_type(rel_h),
          in_compute_type(rel_w)};
}
}  // namespace

// mmattn::na2d_split_rpe (inference, no autograd): na2d_fused with border 'mask', no rpb or bias,
// and SASA's rpe given by its two tables. The kernels take the tables' separable form built
// directly from them: no (heads, k, k, D) table is concatenated, and no separability test runs.
Tensor na2d_split_rpe_cpu(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                          const Tensor& rel_h_in, const Tensor& rel_w_in, int64_t kernel_size,
                          int64_t dilation, double scale) {
  const SplitRpeArgs a = split_rpe_args(q_in, k_in, v_in, rel_h_in, rel_w_in, kernel_size,
                                         dilation);
  return run_fused(q_in, k_in, v_in, std::nullopt, std::nullopt, a.g, scale,
                   [&](auto& p, SeparableRpe& sep) { set_split_rpe(p, a.rel_h, a.rel_w, sep); });
}

// The fused training kernel on q, k, v with rpb (undefined: none) and the rpe that
// set_rpe_(p, sep) puts into p, as run_fused: the output and the probabilities in the strip
// layout (B, heads, H, k*k, Wp).
template <typename SetRpe>
std::tuple<Tensor, Tensor> run_fused_train(const Tensor& q_in, const Tensor& k_in,
                                           const Tensor& v_in, const OptTensor& rpb_in,
                                           const StripGeometry& g, double scale,
                                           SetRpe&& set_rpe_) {
  const Tensor q = in_compute_type(q_in), k = in_compute_type(k_in), v = in_compute_type(v_in);
  const OptTensor rpb = compute_dtype(rpb_in);
  Tensor out = output_like(q_in);
  Tensor attn_s = at::empty({g.B, g.heads, g.H, g.kk(), g.Wp}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_fused_train_cpu", [&] {
    Na2dBuffers<scalar_t> p;  // the kernel copies the strip rows it reads (per-thread rings)
    p.q_op = op_rows<scalar_t>(q), p.k_op = op_rows<scalar_t>(k), p.v_op = op_rows<scalar_t>(v);
    p.rpb = ptr<scalar_t>(rpb);
    SeparableRpe sep;
    set_rpe_(p, sep);
    p.attn_s = attn_s.data_ptr<scalar_t>();
    set_out(p, out);
    p.scale = static_cast<scalar_t>(scale);
    p.invalid = -std::numeric_limits<scalar_t>::infinity();
    run_rows<scalar_t>(kernels<scalar_t>().fused, g, p);
  });
  return {out.to(q_in.scalar_type()), attn_s};
}

// The fused training pass (CPU only, border 'mask', no bias): the inference kernel, which also
// writes the probabilities in the strip layout (B, heads, H, k*k, Wp) for the backward pass. It
// replaces na2d_qk -> softmax -> na2d_av, whose logits and probabilities each cross memory in
// the op layout and are transposed to and from the strip layout by every op.
std::tuple<Tensor, Tensor> na2d_fused_train_cpu(const Tensor& q_in, const Tensor& k_in,
                                                const Tensor& v_in, const OptTensor& rpb_in,
                                                const OptTensor& rpe_in, int64_t kernel_size,
                                                int64_t dilation, double scale) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, false);
  check_na2d_qkv(q_in, v_in, kernel_size, dilation, false);
  check_na2d_extras(q_in, rpb_in, rpe_in, std::nullopt, kernel_size, false);
  const StripGeometry g = strip_geometry(q_in, kernel_size, dilation, false);
  const OptTensor rpe = compute_dtype(rpe_in);
  return run_fused_train(q_in, k_in, v_in, rpb_in, g, scale,
                         [&](auto& p, SeparableRpe& sep) { set_rpe(p, rpe, sep); });
}

// The training pass of na2d_split_rpe (CPU only): na2d_fused_train with SASA's two tables, as
// na2d_split_rpe_cpu takes them.
std::tuple<Tensor, Tensor> na2d_split_rpe_train_cpu(const Tensor& q_in, const Tensor& k_in,
                                                    const Tensor& v_in, const Tensor& rel_h_in,
                                                    const Tensor& rel_w_in, int64_t kernel_size,
                                                    int64_t dilation, double scale) {
  const SplitRpeArgs a = split_rpe_args(q_in, k_in, v_in, rel_h_in, rel_w_in, kernel_size,
                                         dilation);
  return run_fused_train(q_in, k_in, v_in, std::nullopt, a.g, scale,
                         [&](auto& p, SeparableRpe& sep) {
                           set_split_rpe(p, a.rel_h, a.rel_w, sep);
                         });
}

// The backward passes of the fused training pass, short of the d_rpb and d_rpe reductions:
// d_logits in the strip layout (B, heads, H, k*k, Wp) into `ds_s` from the saved probabilities
// (softmax_grad: dP = d_out . v), then d_v = P^T d_out, d_k = d_logits^T q (the inverse
// neighbourhood), and d_q = d_logits (k + rpe) (rpe: undefined for none), with the d_rpb
// partials when rpb_part is defined. q, k, v, go: the op-layout inputs in the compute dtype;
// `op` names the caller in errors.
namespace {
void fused_train_grads(const char* op, const Tensor& go, const Tensor& q, const Tensor& k,
                       const Tensor& v, const Tensor& attn_s_in, const OptTensor& rpe,
                       const StripGeometry& g, double scale, const Tensor& ds_s, const Tensor& dq,
                       const Tensor& dk, const Tensor& dv, const Tensor& rpb_part) {
  TORCH_CHECK(attn_s_in.sizes() == at::IntArrayRef({g.B, g.heads, g.H, g.kk(), g.Wp}) &&
                  attn_s_in.is_contiguous() && attn_s_in.scalar_type() == q.scalar_type(),
              op, ": attn_s must be the contiguous (B, heads, H, k*k, Wp) probabilities of the "
              "training pass, got ", attn_s_in.sizes());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_fused_train_backward_cpu", [&] {
    const Kernels<scalar_t> kn = kernels<scalar_t>();
    const scalar_t* attn_s = attn_s_in.data_ptr<scalar_t>();
    Na2dBuffers<scalar_t> ps;  // d_logits
    ps.q_op = op_rows<scalar_t>(go), ps.k_op = op_rows<scalar_t>(v), ps.w_s = attn_s;
    ps.out = ds_s.data_ptr<scalar_t>();
    run_rows<scalar_t>(kn.softmax_grad, g, ps);
    Na2dBuffers<scalar_t> pv;  // d_v
    pv.w_s = attn_s, pv.src_op = op_rows<scalar_t>(go);
    set_out(pv, dv);
    run_rows<scalar_t>(kn.inverse, g, pv);
    logits_backward<scalar_t>(kn, g, ds_s.data_ptr<scalar_t>(), nullptr, q, k, rpe, dq, dk,
                              rpb_part, scale);  // d_q, d_rpb partials, d_k
  });
}
}  // namespace

// Backward of na2d_fused_train (fused_train_grads), with d_rpb and d_rpe as in
// na2d_qk_backward.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> na2d_fused_train_backward_cpu(
    const Tensor& grad_in, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
    const Tensor& attn_s_in, const OptTensor& rpe_in, int64_t kernel_size, int64_t dilation,
    double scale, bool with_rpb) {
  check_na2d_qkv(q_in, k_in, kernel_size, dilation, false);
  check_na2d_qkv(q_in, v_in, kernel_size, dilation, false);
  check_na2d_qkv(q_in, grad_in, kernel_size, dilation, false);
  check_na2d_extras(q_in, std::nullopt, rpe_in, std::nullopt, kernel_size, false);
  const StripGeometry g = strip_geometry(q_in, kernel_size, dilation, false);
  const Tensor q = in_compute_type(q_in), k = in_compute_type(k_in), v = in_compute_type(v_in),
               go = in_compute_type(grad_in);
  const OptTensor rpe = compute_dtype(rpe_in);
  const auto opts = q.options();
  Tensor ds_s = strip_buffer(4, {g.B, g.heads, g.H, g.kk(), g.Wp}, opts);
  Tensor dq = output_like(q_in), dk = output_like(k_in), dv = output_like(v_in);
  Tensor rpb_part = rpb_partials(with_rpb, g, opts, 5);
  fused_train_grads("na2d_fused_train_backward", go, q, k, v, attn_s_in, rpe, g, scale, ds_s, dq,
                    dk, dv, rpb_part);
  const auto dtype = q_in.scalar_type();
  const auto [drpb, drpe] = extras_grads(rpb_part, rpe, ds_s, q, g, scale, q_in);
  return {dq.to(dtype), dk.to(dtype), dv.to(dtype), drpb, drpe};
}

namespace {
// The strip-layout d_logits (rows, k*k, Wp) summed over the window columns, rows[h, a, query] =
// sum_b ds[query, a*k + b], and over the window rows, cols[h, b, query] = sum_a ds[query, a*k +
// b]: (heads, k, B*H*W) each, the queries (b, i, j) of head h in order, as the GEMMs of the
// backward take them. One pass over ds, parallel over its (B, heads, H) rows.
template <typename T>
void window_sums(const T* ds, const StripGeometry& g, T* rows, T* cols) {
  const int64_t k = g.k, kk = g.kk(), W = g.W, Wp = g.Wp, n = g.B * g.H * W;
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % g.H, h = (r / g.H) % g.heads, b = r / (g.H * g.heads);
      const int64_t query0 = (b * g.H + i) * W;  // of the row's first query
      const T* d = ds + r * kk * Wp + g.P;
      for (int64_t t = 0; t < k; ++t) {
        std::fill_n(rows + (h * k + t) * n + query0, W, T(0));
        std::fill_n(cols + (h * k + t) * n + query0, W, T(0));
      }
      for (int64_t a = 0; a < k; ++a) {
        T* ra = rows + (h * k + a) * n + query0;
        for (int64_t c = 0; c < k; ++c) {
          const T* x = d + (a * k + c) * Wp;
          T* cc = cols + (h * k + c) * n + query0;
          for (int64_t w = 0; w < W; ++w) ra[w] += x[w], cc[w] += x[w];
        }
      }
    }
  });
}
}  // namespace

// Backward of na2d_split_rpe_train. The rpe's share of d_q and the tables' gradients need only
// the d_logits summed over the window columns (rows: (heads, k, B*H*W), one per window row a)
// and over the window rows (cols: one per window column b), not the (heads, k, k, D) d_rpe:
//   d_q[c < D/2]  += scale * sum_a rows[a] rel_h[h, a, c]
//   d_q[c >= D/2] += scale * sum_b cols[b] rel_w[h, b, c - D/2]
//   d_rel_h[h, a, c] = scale * sum over the queries of rows[a] q[c],   c < D/2
//   d_rel_w[h, b, c] = scale * sum over the queries of cols[b] q[D/2 + c]
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> na2d_split_rpe_train_backward_cpu(
    const Tensor& grad_in, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
    const Tensor& attn_s_in, const Tensor& rel_h_in, const Tensor& rel_w_in, int64_t kernel_size,
    int64_t dilation, double scale) {
  const SplitRpeArgs a = split_rpe_args(q_in, k_in, v_in, rel_h_in, rel_w_in, kernel_size,
                                         dilation);
  const StripGeometry& g = a.g;
  const Tensor &rel_h = a.rel_h, &rel_w = a.rel_w;
  check_na2d_qkv(q_in, grad_in, kernel_size, dilation, false);
  const Tensor q = in_compute_type(q_in), k = in_compute_type(k_in), v = in_compute_type(v_in),
               go = in_compute_type(grad_in);
  Tensor ds_s = strip_buffer(4, {g.B, g.heads, g.H, g.kk(), g.Wp}, q.options());
  Tensor dq = output_like(q_in), dk = output_like(k_in), dv = output_like(v_in);
  fused_train_grads("na2d_split_rpe_train_backward", go, q, k, v, attn_s_in, std::nullopt, g,
                    scale, ds_s, dq, dk, dv, Tensor());
  const int64_t half = g.D / 2, n = g.B * g.H * g.W;
  Tensor rows = at::empty({g.heads, g.k, n}, q.options()), cols = at::empty_like(rows);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_window_sums", [&] {
    window_sums<scalar_t>(ds_s.data_ptr<scalar_t>(), g, rows.data_ptr<scalar_t>(),
                          cols.data_ptr<scalar_t>());
  });
  // per head, with the queries as the long dimension: (k, n) x (n, D/2) for the tables'
  // gradients, (n, k) x (k, D/2) for d_q's share; q's halves as (heads, n, D/2) matrices (views
  // for batch 1, copies otherwise)
  auto per_head = [&](const Tensor& x) {  // (B, heads, H, W, C) -> (heads, n, C)
    return x.permute({1, 0, 2, 3, 4}).reshape({g.heads, n, x.size(4)});
  };
  const Tensor drel_h = at::bmm(rows, per_head(q.narrow(4, 0, half))).mul_(scale);
  const Tensor drel_w = at::bmm(cols, per_head(q.narrow(4, half, half))).mul_(scale);
  auto as_op_layout = [&](const Tensor& x) {  // (heads, n, C) -> (B, heads, H, W, C)
    return x.view({g.heads, g.B, g.H, g.W, x.size(2)}).permute({1, 0, 2, 3, 4});
  };
  dq.narrow(4, 0, half).add_(as_op_layout(at::bmm(rows.transpose(1, 2), rel_h)), scale);
  dq.narrow(4, half, half).add_(as_op_layout(at::bmm(cols.transpose(1, 2), rel_w)), scale);
  const auto dtype = q_in.scalar_type();
  return {dq.to(dtype), dk.to(dtype), dv.to(dtype), drel_h.to(rel_h_in.scalar_type()),
          drel_w.to(rel_w_in.scalar_type())};
}

}  // namespace cpu
}  // namespace mmattn

TORCH_LIBRARY_IMPL(mmattn, CPU, m) {
  m.impl("na2d_qk", &mmattn::cpu::na2d_qk_cpu);
  m.impl("na2d_qk_backward", &mmattn::cpu::na2d_qk_backward_cpu);
  m.impl("na2d_av", &mmattn::cpu::na2d_av_cpu);
  m.impl("na2d_av_backward", &mmattn::cpu::na2d_av_backward_cpu);
  m.impl("na2d_fused", &mmattn::cpu::na2d_fused_cpu);
  m.impl("na2d_split_rpe", &mmattn::cpu::na2d_split_rpe_cpu);
  m.impl("na2d_fused_train", &mmattn::cpu::na2d_fused_train_cpu);
  m.impl("na2d_fused_train_backward", &mmattn::cpu::na2d_fused_train_backward_cpu);
  m.impl("na2d_split_rpe_train", &mmattn::cpu::na2d_split_rpe_train_cpu);
  m.impl("na2d_split_rpe_train_backward", &mmattn::cpu::na2d_split_rpe_train_backward_cpu);
}
