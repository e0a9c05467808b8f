// CPU entry points of mmattn::grouped_conv2d and of its weight gradient
// (mmattn::grouped_conv2d_weight_grad, below): ELSA's k x k grouped convolution (attn.0, 4 or 8
// channels per group, stride 1, 'same' zero padding, no dilation) on a channels-last map
// (grouped_conv_kernels.h). float32 with GW == 4, C % 8 == 0 and k in {3, 5, 7, 9} runs the AVX2
// row kernel where gconv_vectorised() (the AVX2 build, or AVX-512 run as 256-bit halves); anything
// else (float64, other shapes, other builds) a scalar loop with the same sum order. Parallel over
// the (B, H) output rows, each output written by one thread: results are bit-identical from run
// to run and across thread counts. The output is channels-last, as mkldnn's convolution of a
// channels-last input.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../ops.h"
#include "capability.h"
#include "cpu_utils.h"
#include "grouped_conv_kernels.h"

namespace mmattn {
namespace cpu {
namespace {

struct WeightGradScratch;  // thread_scratch's tag of the weight gradient's per-thread scratch

// The reference loop of the row kernel: the same (u, input column, t) order per output.
template <typename T>
void gconv_rows_scalar(const GConvGeometry& g, const T* x, const T* w, const T* bias, T* out,
                       int64_t begin, int64_t end) {
  const int64_t H = g.H, W = g.W, C = g.C, K = g.K, GW = g.GW, R = K / 2;
  for (int64_t rr = begin; rr < end; ++rr) {
    const int64_t b = rr / H, i = rr % H;
    for (int64_t j = 0; j < W; ++j) {
      for (int64_t o = 0; o < C; ++o) {
        const int64_t c0 = o / GW * GW;
        T acc = bias ? bias[o] : T(0);
        for (int64_t u = 0; u < K; ++u) {
          const int64_t row = i + u - R;
          if (row < 0 || row >= H) continue;
          for (int64_t v = 0; v < K; ++v) {
            const int64_t col = j + v - R;
            if (col < 0 || col >= W) continue;
            const T* px = x + ((b * H + row) * W + col) * C + c0;
            for (int64_t t = 0; t < GW; ++t) acc += px[t] * w[((o * GW + t) * K + u) * K + v];
          }
        }
        out[((b * H + i) * W + j) * C + o] = acc;
      }
    }
  }
}

// The weight gradient's reference loop, any group width: per output channel o (one task each),
// dw[o, t, u, v] and db[o] summed over (b, i, j) in that order.
template <typename T>
void gconv_weight_grad_scalar(const GConvGeometry& g, const T* grad, const T* x, T* dw, T* db,
                              int64_t begin, int64_t end) {
  const int64_t B = g.B, H = g.H, W = g.W, C = g.C, K = g.K, GW = g.GW, R = K / 2;
  for (int64_t o = begin; o < end; ++o) {
    const int64_t c0 = o / GW * GW;
    for (int64_t t = 0; t < GW; ++t)
      for (int64_t u = 0; u < K; ++u)
        for (int64_t v = 0; v < K; ++v) {
          T acc = 0;
          for (int64_t b = 0; b < B; ++b)
            for (int64_t i = std::max<int64_t>(0, R - u); i < std::min(H, H + R - u); ++i)
              for (int64_t j = std::max<int64_t>(0, R - v); j < std::min(W, W + R - v); ++j)
                acc += grad[((b * H + i) * W + j) * C + o] *
                       x[((b * H + i + u - R) * W + j + v - R) * C + c0 + t];
          dw[((o * GW + t) * K + u) * K + v] = acc;
        }
    if (db) {
      T acc = 0;
      for (int64_t p = 0; p < B * H * W; ++p) acc += grad[p * C + o];
      db[o] = acc;
    }
  }
}

// The row kernel's weights: wp[cb, u, v, t, l] = w[8*cb + l, t, u, v], one 8-lane vector per
// (tap, group input), packed by a plain loop (ATen's strided copy of the 5-d permutation took
// 43 us for ELSA-Swin-T's 256 channels, a fifth of the convolution). weight: contiguous float.
Tensor pack_weight(const Tensor& weight) {
  const int64_t C = weight.size(0), GW = weight.size(1), KK = weight.size(2) * weight.size(3);
  Tensor wp = at::empty({C / 8, weight.size(2), weight.size(3), GW, 8}, weight.options());
  const float* w = weight.data_ptr<float>();
  float* d = wp.data_ptr<float>();
  for (int64_t o = 0; o < C; ++o)
    for (int64_t t = 0; t < GW; ++t)
      for (int64_t uv = 0; uv < KK; ++uv)
        d[((o / 8 * KK + uv) * GW + t) * 8 + o % 8] = w[(o * GW + t) * KK + uv];
  return wp;
}

}  // namespace

bool gconv_vectorised() {
#ifdef MMATTN_HAVE_AVX2
  static const bool vectorised = [] {
    const CpuBuild build = cpu_build();
    return build == CpuBuild::AVX2 ||
           (build == CpuBuild::AVX512 && avx512_split_into_256_bit_halves());
  }();
  return vectorised;
#else
  return false;
#endif
}

bool gconv_kernel_covers(int64_t channels, int64_t kernel_size, int64_t group_width) {
  const GConvGeometry g{1, 1, 1, channels, kernel_size, group_width};
  return gconv_vec_supported(g) && gconv_vectorised();
}

Tensor grouped_conv2d_cpu(const Tensor& x_in, const Tensor& weight_in, const OptTensor& bias_in) {
  check_grouped_conv(x_in, weight_in, bias_in);
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const int64_t GW = weight_in.size(1), K = weight_in.size(2);
  const GConvGeometry g{B, H, W, C, K, GW};
  // (B, H, W, C) memory; a no-op for the channels-last maps ELSA hands over
  const Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor weight = weight_in.contiguous();
  const OptTensor bias = bias_in.has_value() ? OptTensor(bias_in->contiguous()) : bias_in;
  Tensor out = at::empty({B, C, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
#ifdef MMATTN_HAVE_AVX2
  if (x.scalar_type() == at::kFloat && gconv_kernel_covers(C, K, GW)) {
    const Tensor wp = pack_weight(weight);
    const float *xp = x.data_ptr<float>(), *wpp = wp.data_ptr<float>();
    const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
    float* op = out.data_ptr<float>();
    at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
      AVX2::gconv_rows(g, xp, wpp, bp, op, begin, end);
    });
    return out;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grouped_conv2d_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *wp = weight.data_ptr<scalar_t>();
    const scalar_t* bp = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
      gconv_rows_scalar<scalar_t>(g, xp, wp, bp, op, begin, end);
    });
  });
  return out;
}

// GELU(grouped_conv2d(q * k, weight, bias)) for ELSA's inference (no autograd), in the row
// kernel's domain only (float32, gconv_kernel_covers): the Hadamard product is taken as the
// kernel loads its input, from q and k in place when they are channel slices of one
// channels-last map (pixel stride >= C), and GELU as it stores its output, so neither q * k nor
// the convolution's output is written to memory. mmattn.ops.hadamard_conv_gelu calls it.
Tensor hadamard_conv_gelu_cpu(const Tensor& q_in, const Tensor& k_in, const Tensor& weight_in,
                              const OptTensor& bias_in) {
  check_grouped_conv(q_in, weight_in, bias_in, "hadamard_conv_gelu", "q");
  TORCH_CHECK(k_in.sizes() == q_in.sizes() && k_in.scalar_type() == q_in.scalar_type() &&
                  k_in.device() == q_in.device(),
              "hadamard_conv_gelu: k must have the shape, dtype and device of q ", q_in.sizes());
  const int64_t B = q_in.size(0), C = q_in.size(1), H = q_in.size(2), W = q_in.size(3);
  const int64_t GW = weight_in.size(1), K = weight_in.size(2);
  TORCH_CHECK(q_in.scalar_type() == at::kFloat && gconv_kernel_covers(C, K, GW),
              "hadamard_conv_gelu: float32, C % 8 == 0, 4 channels per group and kernel_size "
              "3, 5, 7 or 9 on a CPU where grouped_conv2d's row kernel runs, got ",
              q_in.scalar_type(), ", C=", C, ", group width ", GW, ", k=", K);
  // in place: channels-last rows of W pixels, each image H*W pixels on from the last (channel
  // slices of one channels-last map); anything else (an expanded batch, odd strides of size-1
  // dimensions) is made dense channels-last first, and read with the dense strides
  auto in_place = [&](const Tensor& t) {
    return t.stride(1) == 1 && t.stride(3) >= C && t.stride(2) == W * t.stride(3) &&
           (B == 1 || t.stride(0) == H * W * t.stride(3));
  };
  const bool strided = in_place(q_in) && in_place(k_in) && q_in.strides() == k_in.strides();
  const Tensor q = strided ? q_in : q_in.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor k = strided ? k_in : k_in.contiguous(at::MemoryFormat::ChannelsLast);
  GConvGeometry g{B, H, W, C, K, GW};
  g.XS = strided ? q.stride(3) : C;
  g.XB = H * W * g.XS;
  const Tensor weight = weight_in.contiguous();
  const OptTensor bias = bias_in.has_value() ? OptTensor(bias_in->contiguous()) : bias_in;
  Tensor out = at::empty({B, C, H, W}, q.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
#ifdef MMATTN_HAVE_AVX2
  const Tensor wp = pack_weight(weight);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *wpp = wp.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  at::parallel_for(0, g.rows(), 1, [&](int64_t begin, int64_t end) {
    AVX2::gconv_rows_hadamard_gelu(g, qp, kp, wpp, bp, op, begin, end);
  });
#endif
  return out;
}

// The gradients of grouped_conv2d's weight and bias: dw (C, GW, k, k) and db (C,) (an empty
// tensor when with_bias is false), from the output gradient and the input x, both (B, C, H, W)
// of any layout. The domain of the row kernel runs its AVX2 weight-gradient kernel (one task per
// 8-channel block), anything else the scalar loop (one task per channel); each sum has a fixed
// order, so results are bit-identical from run to run and across thread counts.
std::tuple<Tensor, Tensor> grouped_conv2d_weight_grad_cpu(const Tensor& grad_in,
                                                          const Tensor& x_in, int64_t kernel_size,
                                                          int64_t group_width, bool with_bias) {
  check_grouped_conv_weight_grad(grad_in, x_in, kernel_size, group_width);
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const int64_t GW = group_width, K = kernel_size;
  const GConvGeometry g{B, H, W, C, K, GW};
  const Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor grad = grad_in.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor dw = at::empty({C, GW, K, K}, x.options());
  Tensor db = at::empty({with_bias ? C : 0}, x.options());
  if (B * H * W == 0) {
    dw.zero_(), db.zero_();
    return {dw, db};
  }
#ifdef MMATTN_HAVE_AVX2
  if (x.scalar_type() == at::kFloat && gconv_kernel_covers(C, K, GW)) {
    Tensor dwp = at::empty({C / 8, K, K, GW, 8}, x.options());  // the packed layout
    const float *gp = grad.data_ptr<float>(), *xp = x.data_ptr<float>();
    float* dwpp = dwp.data_ptr<float>();
    float* dbp = with_bias ? db.data_ptr<float>() : nullptr;
    const int64_t scratch = weight_grad_scratch(g);
    at::parallel_for(0, C / 8, 1, [&](int64_t begin, int64_t end) {
      // the worker thread's scratch, kept from call to call
      Tensor xe = thread_scratch<WeightGradScratch, 1>(0, scratch, x.options());
      AVX2::gconv_weight_grad_blocks(g, gp, xp, dwpp, dbp, xe.data_ptr<float>(), begin, end);
    });
    dw.view({C / 8, 8, GW, K, K}).copy_(dwp.permute({0, 4, 3, 1, 2}));
    return {dw, db};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grouped_conv2d_weight_grad_cpu", [&] {
    const scalar_t *gp = grad.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>();
    scalar_t* dwp = dw.data_ptr<scalar_t>();
    scalar_t* dbp = with_bias ? db.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      gconv_weight_grad_scalar<scalar_t>(g, gp, xp, dwp, dbp, begin, end);
    });
  });
  return {dw, db};
}

}  // namespace cpu
}  // namespace mmattn

TORCH_LIBRARY_IMPL(mmattn, CPU, m) {
  m.impl("grouped_conv2d", &mmattn::cpu::grouped_conv2d_cpu);
  m.impl("grouped_conv2d_weight_grad", &mmattn::cpu::grouped_conv2d_weight_grad_cpu);
  m.impl("hadamard_conv_gelu", &mmattn::cpu::hadamard_conv_gelu_cpu);
}
