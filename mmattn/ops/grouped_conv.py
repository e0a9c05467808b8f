"""ELSA's grouped ``k x k`` convolution on CPU, ``mmattn.ops.grouped_conv2d``.

ELSA's Hadamard attention filters ``q * k`` with a ``k x k`` convolution of 4 (ELSA-Swin) or 8
channels per group (``attn.0``). With 4, mkldnn runs it at 65-70 GFLOP/s on the 2-core AVX-512
machine (AMD EPYC Zen 4); ``mmattn::grouped_conv2d`` keeps 8 output channels x 8 output columns
in registers and runs it at 90-100 GFLOP/s, 0.68-0.75x of mkldnn's time at ELSA-Swin-T's map
sizes (README, "Compiled ops"). Its input gradient is the same op on the output gradient (with
each group's weights transposed and flipped), and its weight and bias gradients are
``mmattn::grouped_conv2d_weight_grad``, whose AVX2 kernel holds 3 window columns x 4 group inputs
of 8 output channels in registers over the image's pixels; a differentiable backward
(``create_graph=True``) is ATen's ``convolution_backward``. Outside the kernels' domain (see
:func:`grouped_conv2d`) the op and its gradients run scalar loops: :func:`grouped_conv2d` sends
such shapes to ``F.conv2d`` instead of the op.
"""
import functools
from typing import Optional

import torch
import torch.nn.functional as F

from ._ext import capturing_graph, has_compiled_ops


_VECTORISED: Optional[bool] = None  # mmattn._C.grouped_conv_vectorised(), read once


def kernel_runs_here() -> bool:
    """Whether this CPU runs the row kernel: the AVX2 build, or AVX-512 executed as two 256-bit
    halves (AMD Zen 4), where it was measured faster than mkldnn. With full-width AVX-512 units
    (not measured) mkldnn's AVX-512 convolution keeps the job."""
    global _VECTORISED
    if _VECTORISED is None:
        from mmattn import _C
        _VECTORISED = bool(_C.grouped_conv_vectorised())
    return _VECTORISED


@functools.lru_cache(maxsize=None)
def _kernel_covers(channels: int, kernel_size: int, group_width: int) -> bool:
    """The C++ entry point's own test (``mmattn._C.grouped_conv_kernel_covers``): C % 8 == 0,
    4 channels per group (with 8, mkldnn's kernel is as fast), k in 3..9, on a CPU where the
    kernel runs (:func:`kernel_runs_here`)."""
    from mmattn import _C
    return bool(_C.grouped_conv_kernel_covers(channels, kernel_size, group_width))


def _use_kernel(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> bool:
    """The compiled kernel's domain: eager CPU float32, no dilation, C output channels and
    square weights, and the shapes its AVX2 kernels cover on this CPU (:func:`_kernel_covers`);
    a trace (FLOP counting, export) or torch.compile sees ``F.conv2d`` instead."""
    if capturing_graph() or not has_compiled_ops() or x.device.type != 'cpu':
        return False
    C, gw, k = x.shape[1], weight.shape[1], weight.shape[2]
    return (x.dtype == torch.float32 and dilation == 1 and weight.dtype == x.dtype
            and weight.shape[0] == C and weight.shape[3] == k and _kernel_covers(C, k, gw))


def grouped_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   dilation: int = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=(k // 2) * dilation, dilation=dilation,
    groups=C // weight.shape[1])`` for a ``(B, C, H, W)`` map and ``(C, C/groups, k, k)`` weights.

    On CPU in float32 with 4 channels per group, ``C % 8 == 0``, ``k`` in 3..9 and no
    dilation it runs ``mmattn::grouped_conv2d`` (channels-last output, as mkldnn's for a
    channels-last input) where :func:`kernel_runs_here`; anything else runs ``F.conv2d``.
    """
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] < 1 or \
            x.shape[1] % weight.shape[1] != 0:
        raise ValueError(f'grouped_conv2d: x must be (B, C, H, W) and weight (C_out, C/groups, '
                         f'k, k), got {tuple(x.shape)} and {tuple(weight.shape)}')
    if not _use_kernel(x, weight, dilation):
        k = weight.shape[-1]
        return F.conv2d(x, weight, bias, padding=(k // 2) * dilation, dilation=dilation,
                        groups=x.shape[1] // weight.shape[1])
    return torch.ops.mmattn.grouped_conv2d(x, weight, bias)


def hadamard_conv_gelu(q: torch.Tensor, k: torch.Tensor, weight: torch.Tensor,
                       bias: Optional[torch.Tensor] = None, dilation: int = 1) -> torch.Tensor:
    """``F.gelu(grouped_conv2d(q * k, weight, bias, dilation))``: ELSA's Hadamard attention up to
    its last 1x1 conv (``attn.0`` and ``attn.1`` on ``q * k``).

    Where no gradient is asked for and :func:`grouped_conv2d` runs its kernel (CPU, float32, 4
    channels per group, no dilation), ``mmattn::hadamard_conv_gelu`` multiplies q and k as the
    row kernel loads them (reading the channel slices of ELSA's channels-last ``pre_proj``
    output in place) and applies GELU as it stores: neither ``q * k`` nor the convolution's
    output goes through memory. Anywhere else it computes the composition, differentiably.
    """
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f'hadamard_conv_gelu: q and k must be (B, C, H, W) of one shape, got '
                         f'{tuple(q.shape)} and {tuple(k.shape)}')
    if not hadamard_conv_gelu_runs(q, k, weight, bias, dilation):
        return F.gelu(grouped_conv2d(q * k, weight, bias, dilation))
    return torch.ops.mmattn.hadamard_conv_gelu(q, k, weight, bias)


def hadamard_conv_gelu_runs(q: torch.Tensor, k: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor], dilation: int) -> bool:
    """Whether :func:`hadamard_conv_gelu` runs its fused op on these arguments: the row
    kernel's domain (:func:`grouped_conv2d`'s), one dtype and device, and no gradient asked for
    (grad mode off, or no tensor that requires one)."""
    if not _use_kernel(q, weight, dilation) or k.dtype != q.dtype or k.device != q.device:
        return False
    if bias is not None and (bias.dtype != q.dtype or bias.device != q.device):
        return False
    return not (torch.is_grad_enabled()
                and any(t is not None and t.requires_grad for t in (q, k, weight, bias)))


def _register() -> None:
    """Fake kernel and autograd of ``mmattn::grouped_conv2d`` (once, on first import)."""
    lib = torch.library

    @lib.register_fake('mmattn::grouped_conv2d')
    def _fake(x, weight, bias):
        return torch.empty_like(x, memory_format=torch.channels_last)

    def setup(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @lib.register_fake('mmattn::hadamard_conv_gelu')
    def _hadamard_fake(q, k, weight, bias):
        return torch.empty_like(q, memory_format=torch.channels_last)

    @lib.register_fake('mmattn::grouped_conv2d_weight_grad')
    def _weight_grad_fake(grad, x, kernel_size, group_width, with_bias):
        C = x.shape[1]
        return (x.new_empty(C, group_width, kernel_size, kernel_size),
                x.new_empty(C if with_bias else 0))

    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        C, gw, k = weight.shape[0], weight.shape[1], weight.shape[-1]
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if torch.is_grad_enabled():
            # a differentiable backward (create_graph=True: double backward, gradient
            # penalties): ATen's, since mmattn::grouped_conv2d_weight_grad has no autograd
            dx, dw, db = torch.ops.aten.convolution_backward(
                grad, x, weight, [C] if ctx.has_bias else None, [1, 1], [k // 2, k // 2],
                [1, 1], False, [0, 0], C // gw, [want_x, want_w, want_b])
            return (dx if want_x else None, dw if want_w else None, db if want_b else None)
        dx = dw = db = None
        if want_x:
            # the input gradient of a stride-1 'same' grouped convolution is the same
            # convolution of the output gradient with each group's weights transposed (in and
            # out channels swapped: both are gw wide) and flipped (taps mirrored)
            w_t = weight.view(C // gw, gw, gw, k, k).transpose(1, 2).flip(-2, -1)
            dx = torch.ops.mmattn.grouped_conv2d(grad, w_t.reshape(C, gw, k, k), None)
        if want_w or want_b:
            dw, db = torch.ops.mmattn.grouped_conv2d_weight_grad(grad, x, k, gw, want_b)
        return dx, dw if want_w else None, db if want_b else None

    lib.register_autograd('mmattn::grouped_conv2d', backward, setup_context=setup)


if has_compiled_ops():
    _register()
