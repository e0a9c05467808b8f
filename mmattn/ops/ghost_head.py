"""ELSA's ghost-head neighbourhood aggregation, ``mmattn.ops.ghost_head_aggregate``."""
from typing import Optional

import torch

from ._checks import check_ghost, check_like, check_shape, check_tensor
from ._ext import capturing_graph, cpu_inference_runs, has_compiled_ops
from .reference import ghost_head_aggregate_reference


def ghost_head_aggregate(v: torch.Tensor, attn: torch.Tensor,
                         ghost_mul: Optional[torch.Tensor] = None,
                         ghost_add: Optional[torch.Tensor] = None, kernel_size: int = 7,
                         dilation: int = 1) -> torch.Tensor:
    """Filters every channel with its head's per-pixel ``k x k`` attention (ELSA).

    With ``r = (k - 1) / 2`` and channel ``c`` in head ``g = c // (C / G)``::

        out[b, c, i, j] = sum_{u, v} x[b, c, i + (u - r) d, j + (v - r) d]
                          * (attn[b, g, u*k + v, i, j] * M[c, u, v] + S[c, u, v])

    Taps outside the image contribute zero; ``attn`` is used as given (no renormalisation).

    Args:
        v (Tensor): ``(B, C, H, W)`` values.
        attn (Tensor): ``(B, G, k*k, H, W)`` attention of each of ``G`` heads.
        ghost_mul (Tensor, optional): ``(C, k, k)`` static multiplier ``M``; ``None`` = ones.
        ghost_add (Tensor, optional): ``(C, k, k)`` static filter ``S``; ``None`` = zeros.
        kernel_size (int): odd window size. Defaults to 7.
        dilation (int): tap spacing. Defaults to 1.

    Returns:
        Tensor: ``(B, C, H, W)``.
    """
    check_ghost(v, attn, ghost_mul, ghost_add, kernel_size, dilation)
    if not has_compiled_ops():
        return ghost_head_aggregate_reference(v, attn, ghost_mul, ghost_add, kernel_size, dilation)
    ghost_mul = None if ghost_mul is None else ghost_mul.contiguous()
    ghost_add = None if ghost_add is None else ghost_add.contiguous()
    # (not under a trace: the identity is for autograd only, and a traced graph would show it as
    # a Python op that FLOP counters and exporters do not know)
    if (v.device.type == 'cpu' and torch.is_grad_enabled() and v.requires_grad
            and v.stride(1) == 1 and v.shape[1] > 1 and not v.is_contiguous()
            and not capturing_graph()):
        v = _ChannelsLastGrad.apply(v)
    return torch.ops.mmattn.ghost_head_aggregate(v.contiguous(), attn.contiguous(), ghost_mul,
                                                 ghost_add, kernel_size, dilation)


def softmax_fusion_runs(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether :func:`ghost_head_softmax_aggregate` of these tensors runs its fused CPU kernel
    (:func:`~mmattn.ops._ext.cpu_inference_runs`). Elsewhere it takes the softmax and calls
    :func:`ghost_head_aggregate`, which autograd differentiates."""
    # this module's has_compiled_ops first: the tests turn the compiled ops off through it
    return has_compiled_ops() and cpu_inference_runs(*tensors)


def ghost_head_softmax_aggregate(v: torch.Tensor, logits: torch.Tensor,
                                 logits_bias: Optional[torch.Tensor] = None,
                                 ghost_mul: Optional[torch.Tensor] = None,
                                 ghost_add: Optional[torch.Tensor] = None, kernel_size: int = 7,
                                 dilation: int = 1) -> torch.Tensor:
    """``ghost_head_aggregate(v, softmax(logits + logits_bias, over the taps), ...)`` (ELSA's
    Hadamard attention after its last 1x1 conv).

    On CPU with no gradient asked for (:func:`softmax_fusion_runs`), one kernel takes the
    softmax of each band of rows into a buffer of its own and aggregates from there: the
    ``(B, G, k*k, H, W)`` attention is never written to memory, and the separate softmax pass
    (about as long as the aggregation at ELSA-Swin-T's first stage) is gone. Elsewhere it
    computes exactly the composition, differentiably.

    Args:
        v (Tensor): ``(B, C, H, W)`` values.
        logits (Tensor): ``(B, G, k*k, H, W)`` attention logits of ``G`` heads.
        logits_bias (Tensor, optional): ``(G*k*k,)`` bias added to the logits of head ``g``
            and tap ``s`` at index ``g*k*k + s`` (a 1x1 conv's bias); None for none.
        ghost_mul, ghost_add, kernel_size, dilation: as :func:`ghost_head_aggregate`.

    Returns:
        Tensor: ``(B, C, H, W)``.
    """
    check_ghost(v, logits, ghost_mul, ghost_add, kernel_size, dilation, attn_name='logits')
    G, kk = logits.shape[1], logits.shape[2]
    if logits_bias is not None:
        check_tensor('logits_bias', logits_bias, 1, '(G*k*k,)')
        check_shape('logits_bias', logits_bias, (G * kk, ), '(G*k*k,)')
        check_like('logits_bias', logits_bias, 'v', v)
    if not softmax_fusion_runs(v, logits, logits_bias, ghost_mul, ghost_add):
        if logits_bias is not None:
            logits = logits + logits_bias.view(1, G, kk, 1, 1)
        return ghost_head_aggregate(v, logits.softmax(dim=2), ghost_mul, ghost_add, kernel_size,
                                    dilation)
    # (a channels-last v, ELSA's slice of the pre_proj output, is read in place)
    return torch.ops.mmattn.ghost_head_softmax_aggregate(
        v, logits.contiguous(), logits_bias,
        None if ghost_mul is None else ghost_mul.contiguous(),
        None if ghost_add is None else ghost_add.contiguous(), kernel_size, dilation)


def channels_last_copy(x: torch.Tensor) -> torch.Tensor:
    """A channels-last copy of the contiguous ``(B, C, H, W)`` tensor ``x``, one 2-D transposing
    copy per image: ATen's blocked transpose, where ``x.contiguous(memory_format=
    torch.channels_last)`` takes its generic strided loop (2 threads: 15.8 ms against 4.7 ms
    for a (1, 224, 128, 128) float tensor; a plain clone takes 1.2 ms)."""
    B, C, H, W = x.shape
    out = torch.empty((B, H * W, C), dtype=x.dtype, device=x.device)
    for b in range(B):
        out[b].copy_(x[b].reshape(C, H * W).t())
    return out.view(B, H, W, C).permute(0, 3, 1, 2)


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose gradient is returned channels-last (``channels_last_copy``).

    ELSA's v is a channel slice of a channels-last convolution output; the op's NCHW d_v would
    make the split's backward concatenate it with the channels-last d_q and d_k into an NCHW
    gradient, which mkldnn's weight gradient then converts back to channels-last (ATen's slow
    strided copy of all the convolution's channels)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:
        return v.view_as(v)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return channels_last_copy(grad.contiguous())


def _register() -> None:
    """Fake kernels and autograd of ``mmattn::ghost_head_aggregate`` (once, on first import)."""
    lib = torch.library

    @lib.register_fake('mmattn::ghost_head_aggregate')
    def _fake(v, attn, ghost_mul, ghost_add, kernel_size, dilation):
        return torch.empty_like(v)

    @lib.register_fake('mmattn::ghost_head_softmax_aggregate')
    def _softmax_fake(v, logits, logits_bias, ghost_mul, ghost_add, kernel_size, dilation):
        return v.new_empty(v.shape)  # contiguous, whatever v's layout

    @lib.register_fake('mmattn::ghost_head_aggregate_backward')
    def _backward_fake(grad, v, attn, ghost_mul, ghost_add, kernel_size, dilation, with_mul,
                       with_add):
        dmul = v.new_empty((v.shape[1], kernel_size, kernel_size)) if with_mul else v.new_empty(0)
        dadd = v.new_empty((v.shape[1], kernel_size, kernel_size)) if with_add else v.new_empty(0)
        return torch.empty_like(v), torch.empty_like(attn), dmul, dadd

    def setup(ctx, inputs, output):
        v, attn, ghost_mul, ghost_add, kernel_size, dilation = inputs
        ctx.save_for_backward(v, attn, ghost_mul, ghost_add)
        ctx.args = (kernel_size, dilation)

    def backward(ctx, grad):
        v, attn, ghost_mul, ghost_add = ctx.saved_tensors
        with_mul = ghost_mul is not None and ctx.needs_input_grad[2]
        with_add = ghost_add is not None and ctx.needs_input_grad[3]
        dv, dattn, dmul, dadd = torch.ops.mmattn.ghost_head_aggregate_backward(
            grad.contiguous(), v, attn, ghost_mul, ghost_add, *ctx.args, with_mul, with_add)
        return dv, dattn, dmul if with_mul else None, dadd if with_add else None, None, None

    lib.register_autograd('mmattn::ghost_head_aggregate', backward, setup_context=setup)


if has_compiled_ops():
    _register()
