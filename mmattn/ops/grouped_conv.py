"""ELSA's grouped ``k x k`` convolution on CPU, ``mmattn.ops.grouped_conv2d``.

ELSA's Hadamard attention filters ``q * k`` with a ``k x k`` convolution of 4 (ELSA-Swin) or 8
channels per group (``attn.0``). With 4, mkldnn runs it at 65-70 GFLOP/s on the 2-core AVX-512
machine (AMD EPYC Zen 4); ``mmattn::grouped_conv2d`` keeps 8 output channels x 8 output columns
in registers and runs it at 90-100 GFLOP/s, 0.68-0.75x of mkldnn's time at ELSA-Swin-T's map
sizes (README, "Compiled ops"). Its gradient is ATen's ``convolution_backward``, the one the
convolution it replaces has.
"""
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


def _use_kernel(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> bool:
    """The compiled kernel's domain: eager CPU float32 on a CPU where it runs
    (:func:`kernel_runs_here`), C % 8 == 0, 4 channels per group (with 8, mkldnn's kernel is as
    fast), k in 3..9, no dilation, C output channels; a trace (FLOP counting, export) or
    torch.compile sees ``F.conv2d`` instead."""
    if capturing_graph() or not has_compiled_ops() or x.device.type != 'cpu':
        return False
    if x.dtype != torch.float32 or not kernel_runs_here():
        return False
    C, gw, k = x.shape[1], weight.shape[1], weight.shape[2]
    return (dilation == 1 and weight.dtype == x.dtype and weight.shape[0] == C and C % 8 == 0
            and gw == 4 and k in (3, 5, 7, 9) and weight.shape[3] == k)


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

    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        k = weight.shape[-1]
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[2]]
        dx, dw, db = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1],
            [k // 2, k // 2], [1, 1], False, [0, 0], x.shape[1] // weight.shape[1], mask)
        return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None)

    lib.register_autograd('mmattn::grouped_conv2d', backward, setup_context=setup)


if has_compiled_ops():
    _register()
