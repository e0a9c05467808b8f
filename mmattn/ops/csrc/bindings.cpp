// Operator schemas of the `mmattn` torch.library namespace, the host-side argument checks, and
// the Python module entry point of mmattn._C. Kernels register themselves for the CPU and CUDA
// dispatch keys in cpu/*.cpp and cuda/*.cu; fake (meta) kernels and autograd are registered from
// Python (mmattn/ops/neighborhood.py, mmattn/ops/ghost_head.py, mmattn/ops/grouped_conv.py).
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <utility>

#include "cpu/capability.h"
#include "cpu/grouped_conv_kernels.h"
#include "cpu/na2d_kernels.h"
#include "ops.h"

namespace mmattn {

namespace {

// What both grouped_conv2d entry points (`op`) ask of x and of the other tensor `other`
// (weight, or the output gradient), after their shape checks; `pair` names the two tensors in
// the message.
void check_grouped_conv_dtypes(const char* op, const Tensor& x, const Tensor& other,
                               const char* pair) {
  TORCH_CHECK(other.scalar_type() == x.scalar_type() && other.device() == x.device(), op, ": ",
              pair, " must share dtype and device");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": float32 or float64 only, got ", x.scalar_type());
}

}  // namespace

void check_grouped_conv(const Tensor& x, const Tensor& weight, const OptTensor& bias,
                        const char* op, const char* x_name) {
  TORCH_CHECK(x.dim() == 4, op, ": ", x_name, " must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == x.size(1) && weight.size(1) >= 1 &&
                  x.size(1) % weight.size(1) == 0 && weight.size(2) == weight.size(3) &&
                  weight.size(2) % 2 == 1,
              op, ": weight must be (C, C/groups, k, k) with k odd, got ", weight.sizes(),
              " for ", x_name, " ", x.sizes());
  const std::string pair = std::string(x_name) + " and weight";
  check_grouped_conv_dtypes(op, x, weight, pair.c_str());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1) &&
                    bias->scalar_type() == x.scalar_type() && bias->device() == x.device(),
                op, ": bias must be (C,) of ", x_name, "'s dtype and device, got ",
                bias->sizes());
  }
}

void check_grouped_conv_weight_grad(const Tensor& grad, const Tensor& x, int64_t kernel_size,
                                    int64_t group_width) {
  TORCH_CHECK(x.dim() == 4, "grouped_conv2d_weight_grad: x must be (B, C, H, W), got ",
              x.sizes());
  TORCH_CHECK(grad.sizes() == x.sizes(), "grouped_conv2d_weight_grad: grad must have the shape ",
              "of x ", x.sizes(), ", got ", grad.sizes());
  check_grouped_conv_dtypes("grouped_conv2d_weight_grad", x, grad, "grad and x");
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1,
              "grouped_conv2d_weight_grad: kernel_size must be odd and >= 1, got ", kernel_size);
  TORCH_CHECK(group_width >= 1 && x.size(1) % group_width == 0,
              "grouped_conv2d_weight_grad: group_width must divide the ", x.size(1),
              " channels, got ", group_width);
}

void check_na2d_qkv(const Tensor& q, const Tensor& k, int64_t kernel_size, int64_t dilation,
                    bool clamp) {
  TORCH_CHECK(q.dim() == 5, "na2d: q must be (B, heads, H, W, D), got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes(), "na2d: k must have the shape of q ", q.sizes(), ", got ",
              k.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && k.device() == q.device(),
              "na2d: q and k must share dtype and device");
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, "na2d: kernel_size must be odd and >= 1");
  TORCH_CHECK(dilation >= 1, "na2d: dilation must be >= 1");
  if (clamp) {
    TORCH_CHECK(q.size(2) / dilation >= kernel_size && q.size(3) / dilation >= kernel_size,
                "na2d: border='clamp' needs H // dilation >= kernel_size and "
                "W // dilation >= kernel_size");
  }
}

void check_na2d_attn(const Tensor& attn, const Tensor& v, int64_t kernel_size) {
  TORCH_CHECK(v.dim() == 5, "na2d: v must be (B, heads, H, W, D), got ", v.sizes());
  TORCH_CHECK(attn.dim() == 5 && attn.size(0) == v.size(0) && attn.size(1) == v.size(1) &&
                  attn.size(2) == v.size(2) && attn.size(3) == v.size(3) &&
                  attn.size(4) == kernel_size * kernel_size,
              "na2d: attn must be (B, heads, H, W, kernel_size**2), got ", attn.sizes());
  TORCH_CHECK(attn.scalar_type() == v.scalar_type() && attn.device() == v.device(),
              "na2d: attn and v must share dtype and device");
}

void check_na2d_extras(const Tensor& q, const OptTensor& rpb, const OptTensor& rpe,
                       const OptTensor& bias, int64_t kernel_size, bool clamp) {
  const int64_t heads = q.size(1), k = kernel_size;
  if (rpb.has_value()) {
    TORCH_CHECK(rpb->sizes() == at::IntArrayRef({heads, 2 * k - 1, 2 * k - 1}),
                "na2d: rpb must be (heads, 2k-1, 2k-1), got ", rpb->sizes());
    TORCH_CHECK(rpb->scalar_type() == q.scalar_type() && rpb->device() == q.device(),
                "na2d: rpb must share dtype and device with q");
  }
  if (rpe.has_value()) {
    TORCH_CHECK(!clamp, "na2d: rpe needs border='mask'");
    TORCH_CHECK(rpe->sizes() == at::IntArrayRef({heads, k, k, q.size(4)}),
                "na2d: rpe must be (heads, k, k, D), got ", rpe->sizes());
    TORCH_CHECK(rpe->scalar_type() == q.scalar_type() && rpe->device() == q.device(),
                "na2d: rpe must share dtype and device with q");
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->sizes() == at::IntArrayRef({q.size(0), heads, q.size(2), q.size(3), k * k}),
                "na2d: bias must be (B, heads, H, W, k*k), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == q.scalar_type() && bias->device() == q.device(),
                "na2d: bias must share dtype and device with q");
  }
}

void check_na2d_split_rpe(const Tensor& q, const Tensor& rel_h, const Tensor& rel_w,
                          int64_t kernel_size) {
  const int64_t D = q.size(4);
  TORCH_CHECK(D % 2 == 0, "na2d_split_rpe: the head dim D of q must be even, got ", D);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"rel_h", &rel_h},
                                {"rel_w", &rel_w}}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef({q.size(1), kernel_size, D / 2}),
                "na2d_split_rpe: ", name, " must be (heads, k, D/2) = (", q.size(1), ", ",
                kernel_size, ", ", D / 2, "), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == q.scalar_type() && t->device() == q.device(),
                "na2d_split_rpe: ", name, " must share dtype and device with q");
  }
}

void check_ghost(const Tensor& v, const Tensor& attn, const OptTensor& mul, const OptTensor& add,
                 int64_t kernel_size, int64_t dilation, const char* op, const char* attn_name) {
  TORCH_CHECK(v.dim() == 4, op, ": v must be (B, C, H, W), got ", v.sizes());
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1,
              op, ": kernel_size must be odd and >= 1");
  TORCH_CHECK(dilation >= 1, op, ": dilation must be >= 1");
  TORCH_CHECK(attn.dim() == 5 && attn.size(0) == v.size(0) && attn.size(1) >= 1 &&
                  v.size(1) % attn.size(1) == 0 && attn.size(2) == kernel_size * kernel_size &&
                  attn.size(3) == v.size(2) && attn.size(4) == v.size(3),
              op, ": ", attn_name, " must be (B, G, k*k, H, W) with G dividing C, got ",
              attn.sizes());
  TORCH_CHECK(attn.scalar_type() == v.scalar_type() && attn.device() == v.device(),
              op, ": v and ", attn_name, " must share dtype and device");
  for (const OptTensor* t : {&mul, &add}) {
    if (t->has_value()) {
      TORCH_CHECK((*t)->sizes() == at::IntArrayRef({v.size(1), kernel_size, kernel_size}),
                  op, ": ghost tensors must be (C, k, k), got ", (*t)->sizes());
      TORCH_CHECK((*t)->scalar_type() == v.scalar_type() && (*t)->device() == v.device(),
                  op, ": ghost tensors must share dtype and device with v");
    }
  }
}

void check_ghost_logits_bias(const Tensor& logits, const OptTensor& bias) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == logits.size(1) * logits.size(2),
              "ghost_head_softmax_aggregate: logits_bias must be (G*k*k,) = (",
              logits.size(1) * logits.size(2), ",), got ", bias->sizes());
  TORCH_CHECK(bias->scalar_type() == logits.scalar_type() && bias->device() == logits.device(),
              "ghost_head_softmax_aggregate: logits_bias must share dtype and device with v");
}

}  // namespace mmattn

TORCH_LIBRARY(mmattn, m) {
  m.def("na2d_qk(Tensor q, Tensor k, Tensor? rpb, Tensor? rpe, int kernel_size, int dilation, "
        "bool clamp, float scale) -> Tensor");
  m.def("na2d_qk_backward(Tensor grad, Tensor q, Tensor k, Tensor? rpe, int kernel_size, "
        "int dilation, bool clamp, float scale, bool with_rpb) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("na2d_av(Tensor attn, Tensor v, int kernel_size, int dilation, bool clamp) -> Tensor");
  m.def("na2d_av_backward(Tensor grad, Tensor attn, Tensor v, int kernel_size, int dilation, "
        "bool clamp) -> (Tensor, Tensor)");
  m.def("na2d_fused(Tensor q, Tensor k, Tensor v, Tensor? rpb, Tensor? rpe, Tensor? bias, "
        "int kernel_size, int dilation, bool clamp, float scale) -> Tensor");
  // CPU only, no autograd (inference): na2d_fused with border 'mask' and SASA's rpe given by its
  // row and column tables, rpe[h, a, b] = concat(rel_h[h, a], rel_w[h, b]), (heads, k, D/2) each
  m.def("na2d_split_rpe(Tensor q, Tensor k, Tensor v, Tensor rel_h, Tensor rel_w, "
        "int kernel_size, int dilation, float scale) -> Tensor");
  // CPU only: the fused training pass ('mask', no bias) and its backward; attn_s holds the
  // probabilities in the CPU kernels' strip layout (B, heads, H, k*k, W + 2P rounded up).
  m.def("na2d_fused_train(Tensor q, Tensor k, Tensor v, Tensor? rpb, Tensor? rpe, "
        "int kernel_size, int dilation, float scale) -> (Tensor, Tensor)");
  m.def("na2d_fused_train_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor attn_s, "
        "Tensor? rpe, int kernel_size, int dilation, float scale, bool with_rpb) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // CPU only: the training pass of na2d_split_rpe and its backward (d_q, d_k, d_v, d_rel_h,
  // d_rel_w)
  m.def("na2d_split_rpe_train(Tensor q, Tensor k, Tensor v, Tensor rel_h, Tensor rel_w, "
        "int kernel_size, int dilation, float scale) -> (Tensor, Tensor)");
  m.def("na2d_split_rpe_train_backward(Tensor grad, Tensor q, Tensor k, Tensor v, "
        "Tensor attn_s, Tensor rel_h, Tensor rel_w, int kernel_size, int dilation, float scale) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // CPU only: ELSA's k x k grouped convolution (stride 1, 'same' padding) of a channels-last map.
  m.def("grouped_conv2d(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // its weight and bias gradients (the bias one empty unless with_bias)
  m.def("grouped_conv2d_weight_grad(Tensor grad, Tensor x, int kernel_size, int group_width, "
        "bool with_bias) -> (Tensor, Tensor)");
  // CPU only, no autograd (inference): GELU(grouped_conv2d(q * k, weight, bias)), ELSA's attn.0
  // and attn.1 on the Hadamard product, in one pass
  m.def("hadamard_conv_gelu(Tensor q, Tensor k, Tensor weight, Tensor? bias) -> Tensor");
  m.def("ghost_head_aggregate(Tensor v, Tensor attn, Tensor? ghost_mul, Tensor? ghost_add, "
        "int kernel_size, int dilation) -> Tensor");
  m.def("ghost_head_aggregate_backward(Tensor grad, Tensor v, Tensor attn, Tensor? ghost_mul, "
        "Tensor? ghost_add, int kernel_size, int dilation, bool with_mul, bool with_add) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // CPU only, no autograd (inference): ghost_head_aggregate of softmax(logits + logits_bias)
  // over the taps, the softmax taken band by band inside the kernel
  m.def("ghost_head_softmax_aggregate(Tensor v, Tensor logits, Tensor? logits_bias, "
        "Tensor? ghost_mul, Tensor? ghost_add, int kernel_size, int dilation) -> Tensor");
}

// mmattn._C.cpu_kernels(): which build of the vectorised CPU kernels runs ("AVX512", "AVX2" or
// "DEFAULT"), from ATen's CPU capability (ATEN_CPU_CAPABILITY can lower it); na2d_cpu_kernels():
// na2d's, which is AVX2 on CPUs that split AVX-512 into 256-bit halves (MMATTN_NA2D_KERNELS
// chooses). Importing the module also runs the operator registrations above.
static PyObject* cpu_kernels(PyObject*, PyObject*) {
  return PyUnicode_FromString(mmattn::cpu::cpu_kernels());
}

static PyObject* na2d_cpu_kernels(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(mmattn::cpu::na2d_cpu_kernels());
  } catch (const c10::Error& e) {  // a bad MMATTN_NA2D_KERNELS: ValueError, not an abort
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  }
}

static PyObject* grouped_conv_vectorised(PyObject*, PyObject*) {
  return PyBool_FromLong(mmattn::cpu::gconv_vectorised());
}

// mmattn._C.grouped_conv_kernel_covers(channels, kernel_size, group_width): whether float32 maps
// of that shape run grouped_conv2d's AVX2 kernels on this CPU (the domain the C++ entry points
// test, so that mmattn.ops.grouped_conv2d routes by the same rule).
static PyObject* grouped_conv_kernel_covers(PyObject*, PyObject* args) {
  long long channels = 0, kernel_size = 0, group_width = 0;
  if (!PyArg_ParseTuple(args, "LLL", &channels, &kernel_size, &group_width)) return nullptr;
  return PyBool_FromLong(mmattn::cpu::gconv_kernel_covers(channels, kernel_size, group_width));
}

static PyMethodDef mmattn_c_methods[] = {
    {"cpu_kernels", cpu_kernels, METH_NOARGS,
     "The CPU capability whose kernel build runs: AVX512, AVX2 or DEFAULT."},
    {"na2d_cpu_kernels", na2d_cpu_kernels, METH_NOARGS,
     "The kernel build na2d runs: AVX512, AVX2 or DEFAULT (MMATTN_NA2D_KERNELS chooses)."},
    {"grouped_conv_vectorised", grouped_conv_vectorised, METH_NOARGS,
     "Whether grouped_conv2d's AVX2 row kernel runs on this CPU (else mkldnn's convolution)."},
    {"grouped_conv_kernel_covers", grouped_conv_kernel_covers, METH_VARARGS,
     "grouped_conv_kernel_covers(channels, kernel_size, group_width): whether float32 maps of "
     "that shape run grouped_conv2d's AVX2 kernels on this CPU."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef mmattn_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                             "mmattn compiled operators (torch.ops.mmattn)", -1,
                                             mmattn_c_methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mmattn_c_module); }
