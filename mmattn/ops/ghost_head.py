"""ELSA's ghost-head neighbourhood aggregation, ``mmattn.ops.ghost_head_aggregate``."""
from typing import Optional

import torch

from ._checks import check_ghost
from ._ext import has_compiled_ops
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
    return torch.ops.mmattn.ghost_head_aggregate(v.contiguous(), attn.contiguous(), ghost_mul,
                                                 ghost_add, kernel_size, dilation)


def _register() -> None:
    """Fake kernels and autograd of ``mmattn::ghost_head_aggregate`` (once, on first import)."""
    lib = torch.library

    @lib.register_fake('mmattn::ghost_head_aggregate')
    def _fake(v, attn, ghost_mul, ghost_add, kernel_size, dilation):
        return torch.empty_like(v)

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
