"""Enhanced local self-attention (ELSA, Zhou et al., arXiv 2112.12786).

* :class:`ELSAAttention`: Hadamard attention (``q * k`` through a grouped ``k x k`` conv, GELU and
  a 1x1 conv to ``k*k`` logits per head, softmax over all taps including zero-padded ones) and
  the ghost head (static per-channel matrices ``M`` and ``S``, exponent ``lam``, weight
  ``gamma``), aggregated by :func:`mmattn.ops.ghost_head_aggregate`.
* :class:`ELSABlock`: the pre-norm residual block (``norm1 -> ELSA -> DropPath``, ``norm2 -> MLP
  -> DropPath``) of ELSA-Swin stages 0-2.

Module and parameter names follow the official implementation (github.com/damo-cv/ELSA,
f3b7ac7a), so converted official checkpoints load with ``strict=True``. Specification:
``specs/elsa_swin.md`` sections 2 and 3.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn.bricks import DropPath

from mmattn.ops import (capturing_graph, ghost_head_aggregate, ghost_head_softmax_aggregate,
                        grouped_conv2d, hadamard_conv_gelu)
from mmattn.ops.ghost_head import softmax_fusion_runs
from mmattn.ops.grouped_conv import hadamard_conv_gelu_runs

from .blocks import Mlp, TokenBlock


def round_dim_qk(dim: int, dim_qk: Optional[int], group_width: int) -> int:
    """Official ``dim_qk`` rule: default ``floor(dim / 3) * 2``, rounded up to ``group_width``."""
    if dim_qk is None:
        dim_qk = dim // 3 * 2
    return int(math.ceil(dim_qk / group_width) * group_width)


def pointwise_conv_nchw(x: torch.Tensor, conv: nn.Conv2d,
                        with_bias: bool = True) -> torch.Tensor:
    """``conv(x)`` for a 1x1 ``conv`` (one group, stride 1, no padding), with a contiguous (NCHW)
    result; ``with_bias=False`` leaves the bias out (the caller adds it).

    On CPU, a channels-last ``x`` goes through one batched GEMM, ``W @ x_b^T + bias``, that writes
    the logits channel-major: the head softmax over the taps (dim 2 of ``(B, G, k*k, H, W)``) and
    the ghost op then read them without a copy, where mkldnn's channels-last output cost a copy
    before the softmax and another after it (2 threads, 64 -> 147 channels at 56x56: 1.5 ms
    against 2.9 ms for the 1x1 conv and the softmax). Anything else (another device, other
    layouts, groups, a trace for FLOP counting or export) calls ``conv``.
    """
    B, C, H, W = x.shape
    bias = conv.bias if with_bias else None
    if (capturing_graph() or x.device.type != 'cpu' or conv.groups != 1
            or conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0)
            or x.is_contiguous()
            or not x.is_contiguous(memory_format=torch.channels_last)):
        return conv(x) if with_bias else conv._conv_forward(x, conv.weight, None)
    weight = conv.weight.view(conv.out_channels, C).expand(B, -1, -1)
    tokens = x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # a view of the channels-last memory
    if bias is None:
        out = torch.bmm(weight, tokens.transpose(1, 2))
    else:
        out = torch.baddbmm(bias.view(1, -1, 1), weight, tokens.transpose(1, 2))
    return out.view(B, conv.out_channels, H, W)


class ELSAAttention(nn.Module):
    """ELSA attention on channels-last maps ``(B, H, W, C)``.

    Args:
        dim (int): channels ``C`` (also the value width).
        num_heads (int): heads ``G``; must divide ``dim``.
        kernel_size (int): odd window ``k``. Defaults to 7.
        dim_qk (int, optional): width of q and k; default ``floor(dim / 3) * 2``. Always rounded up
            to a multiple of ``group_width``.
        dilation (int): tap spacing. Defaults to 1.
        qkv_bias (bool): bias of ``pre_proj``. Defaults to True.
        qk_scale (float, optional): scale of ``q * k``; None gives ``(dim / num_heads) ** -0.5``.
            Defaults to 1 (ELSA-Swin).
        attn_drop (float): dropout on the softmaxed attention. Defaults to 0.
        proj_drop (float): dropout after ``post_proj``. Defaults to 0.
        group_width (int): channels per group of the ``k x k`` conv ``attn.0``. Defaults to 8.
        groups (int): groups of the 1x1 conv ``attn.2``. Defaults to 1.
        lam (int): exponent of the multiplicative ghost matrix ``O``; 0 disables it.
            Defaults to 0 (ELSA-Swin).
        gamma (float): weight of the additive ghost matrix ``S``; 0 disables it. Defaults to 1.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7,
                 dim_qk: Optional[int] = None, dilation: int = 1, qkv_bias: bool = True,
                 qk_scale: Optional[float] = 1.0, attn_drop: float = 0.,
                 proj_drop: float = 0., group_width: int = 8, groups: int = 1, lam: int = 0,
                 gamma: float = 1.) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f'num_heads ({num_heads}) must be positive and divide dim ({dim})')
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size}')
        if dilation < 1:
            raise ValueError(f'dilation must be >= 1, got {dilation}')
        if group_width < 1:
            raise ValueError(f'group_width must be >= 1, got {group_width}')
        if not isinstance(lam, int) or isinstance(lam, bool):
            raise TypeError(f'lam must be an int (a fractional power of the N(0, 1) matrix O '
                            f'gives NaN), got {lam!r}')
        taps = kernel_size * kernel_size
        if (taps * num_heads) % groups != 0 or dim_qk is not None and dim_qk < 1:
            raise ValueError(f'groups ({groups}) must divide kernel_size**2 * num_heads '
                             f'({taps * num_heads}) and dim_qk must be positive')
        self.dim, self.num_heads = dim, num_heads
        self.kernel_size, self.dilation = kernel_size, dilation
        self.dim_qk = round_dim_qk(dim, dim_qk, group_width)
        if self.dim_qk % groups != 0:
            raise ValueError(f'groups ({groups}) must divide dim_qk ({self.dim_qk})')
        self.scale = qk_scale if qk_scale else (dim / num_heads)**-0.5
        self.lam, self.gamma = lam, gamma

        self.pre_proj = nn.Conv2d(dim, 2 * self.dim_qk + dim, 1, bias=qkv_bias)
        self.attn = nn.Sequential(
            nn.Conv2d(self.dim_qk, self.dim_qk, kernel_size, padding=(kernel_size // 2) * dilation,
                      dilation=dilation, groups=self.dim_qk // group_width),
            nn.GELU(),
            nn.Conv2d(self.dim_qk, taps * num_heads, 1, groups=groups))
        self.attn_drop = nn.Dropout(attn_drop)
        # (C, k, k) for one ghost matrix, (2, C, k, k) = (O, S) for both; None for neither
        shape = (dim, kernel_size, kernel_size)
        num_ghost = int(lam != 0) + int(gamma != 0)
        self.ghost_head = (nn.Parameter(torch.empty((2, ) + shape if num_ghost == 2 else shape))
                           if num_ghost else None)
        self.post_proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_ghost_head()

    def reset_ghost_head(self) -> None:
        """``O ~ N(0, 1)``, ``S ~`` truncated normal (std 0.02), as the official module."""
        if self.ghost_head is None:
            return
        with torch.no_grad():
            if self.lam != 0 and self.gamma != 0:
                self.ghost_head[0].normal_()
                nn.init.trunc_normal_(self.ghost_head[1], std=.02, a=-2., b=2.)
            elif self.lam != 0:
                self.ghost_head.normal_()
            else:
                nn.init.trunc_normal_(self.ghost_head, std=.02, a=-2., b=2.)

    def ghost_tensors(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The op's ``(ghost_mul, ghost_add)`` = ``(O ** lam, gamma * S)``, None when disabled."""
        if self.ghost_head is None:
            return None, None
        if self.lam != 0 and self.gamma != 0:
            mul, add = self.ghost_head[0], self.ghost_head[1]
        elif self.lam != 0:
            mul, add = self.ghost_head, None
        else:
            mul, add = None, self.ghost_head
        if mul is not None and self.lam != 1:
            mul = mul**self.lam
        if add is not None and self.gamma != 1:
            add = add * self.gamma
        return mul, add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f'x must be (B, H, W, {self.dim}), got {tuple(x.shape)}')
        b, h, w, _ = x.shape
        q, k, v = self.pre_proj(x.permute(0, 3, 1, 2)).split(
            [self.dim_qk, self.dim_qk, self.dim], dim=1)
        # attn.0 through grouped_conv2d: mmattn's CPU kernel where it is faster than mkldnn's.
        # In inference on the CPU, with attn.1 the exact GELU, one pass takes the product q * k,
        # the convolution (the scale folded into its weights) and the GELU (hadamard_conv_gelu;
        # module hooks on attn.1 do not fire there, nor on attn.2 in the fused aggregation)
        conv, act = self.attn[0], self.attn[1]
        if (type(act) is nn.GELU and act.approximate == 'none'
                and hadamard_conv_gelu_runs(q, k, conv.weight, conv.bias, self.dilation)):
            weight = conv.weight if self.scale == 1 else conv.weight * self.scale
            hidden = hadamard_conv_gelu(q, k, weight, conv.bias, self.dilation)
        else:
            hadamard = q * k if self.scale == 1 else q * k * self.scale
            hidden = act(grouped_conv2d(hadamard, conv.weight, conv.bias, self.dilation))
        mul, add = self.ghost_tensors()
        # the ops take one dtype: everything follows v (autocast regions mix dtypes)
        dtype = v.dtype
        mul = None if mul is None else mul.to(dtype)
        add = None if add is None else add.to(dtype)
        proj = self.attn[2]
        bias = None if proj.bias is None else proj.bias.to(dtype)
        if ((not self.training or self.attn_drop.p == 0)
                and softmax_fusion_runs(v, hidden, proj.weight, bias, mul, add)):
            # inference: the softmax (and the logits' bias) inside the aggregation kernel
            logits = pointwise_conv_nchw(hidden, proj, with_bias=False)
            out = ghost_head_softmax_aggregate(
                v, logits.view(b, self.num_heads, -1, h, w).to(dtype), bias, mul, add,
                self.kernel_size, self.dilation)
        else:
            logits = pointwise_conv_nchw(hidden, proj)
            attn = self.attn_drop(logits.view(b, self.num_heads, -1, h, w).softmax(dim=2))
            out = ghost_head_aggregate(v, attn.to(dtype), mul, add, self.kernel_size,
                                       self.dilation)
        return self.proj_drop(self.post_proj(out.permute(0, 2, 3, 1)))

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, dim_qk={self.dim_qk}, '
                f'kernel_size={self.kernel_size}, lam={self.lam}, gamma={self.gamma}, '
                f'scale={self.scale:g}')


class ELSABlock(TokenBlock):
    """Pre-norm ELSA block on tokens ``(B, H*W, C)`` of a map of size ``hw_shape``.

    Args:
        dim (int): channels.
        num_heads (int): heads.
        mlp_ratio (float): hidden width of the MLP over ``dim``. Defaults to 4.
        drop (float): dropout after the MLP layers and ``post_proj``. Defaults to 0.
        drop_path (float): stochastic depth rate. Defaults to 0.
        with_cp (bool): activation checkpointing of the block. Defaults to False.
        **attn_kwargs: :class:`ELSAAttention` arguments (``kernel_size``, ``dim_qk``,
            ``qkv_bias``, ``qk_scale``, ``attn_drop``, ``group_width``, ``groups``, ``lam``,
            ``gamma``, ``dilation``); anything else raises ``TypeError``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., drop: float = 0.,
                 drop_path: float = 0., with_cp: bool = False, **attn_kwargs) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ELSAAttention(dim, num_heads, proj_drop=drop, **attn_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def _inner(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        y = self.attn(self.norm1(x).view(b, hw_shape[0], hw_shape[1], c)).view(b, n, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))
