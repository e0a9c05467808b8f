// Declarations of mmattn's operator implementations and the host-side argument checks shared by
// the CPU and CUDA entry points. The Python API (mmattn/ops/_checks.py) validates arguments with
// readable ValueErrors first; these checks keep a direct torch.ops.mmattn.* call from reading
// out of bounds.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace mmattn {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Shape checks of the host entry points (TORCH_CHECK, RuntimeError on violation).
void check_na2d_qkv(const Tensor& q, const Tensor& k, int64_t kernel_size, int64_t dilation,
                    bool clamp);
void check_na2d_attn(const Tensor& attn, const Tensor& v, int64_t kernel_size);
void check_na2d_extras(const Tensor& q, const OptTensor& rpb, const OptTensor& rpe,
                       const OptTensor& bias, int64_t kernel_size, bool clamp);
// rel_h, rel_w of na2d_split_rpe (after check_na2d_qkv on q): (heads, k, D/2), D even.
void check_na2d_split_rpe(const Tensor& q, const Tensor& rel_h, const Tensor& rel_w,
                          int64_t kernel_size);
void check_grouped_conv(const Tensor& x, const Tensor& weight, const OptTensor& bias,
                        const char* op = "grouped_conv2d", const char* x_name = "x");
void check_grouped_conv_weight_grad(const Tensor& grad, const Tensor& x, int64_t kernel_size,
                                    int64_t group_width);
void check_ghost(const Tensor& v, const Tensor& attn, const OptTensor& mul, const OptTensor& add,
                 int64_t kernel_size, int64_t dilation, const char* op = "ghost_head_aggregate",
                 const char* attn_name = "attn");
// logits_bias of ghost_head_softmax_aggregate (after check_ghost on v and logits): (G*k*k,).
void check_ghost_logits_bias(const Tensor& logits, const OptTensor& bias);

// An empty tensor stands for "no gradient" in the tuple results of the backward ops.
inline Tensor none_like(const Tensor& t) { return at::empty({0}, t.options()); }

}  // namespace mmattn
