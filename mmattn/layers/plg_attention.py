"""Parallel local-global self-attention (PLG-SA) and the PLG block.

Papers: N. Ebert, D. Stricker, O. Wasenmueller, "PLG-ViT: Vision Transformer with Parallel Local
and Global Self-Attention", Sensors 2023, 23(7), 3447, doi 10.3390/s23073447; N. Ebert,
L. Reichardt, D. Stricker, O. Wasenmueller, "Light-Weight Vision Transformer with Parallel Local
and Global Self-Attention", arXiv 2307.09120 (ITSC 2023). No official code is public; the module
internals and key names are mmattn's (``specs/plg_vit.md`` D3).

The channels are split into a local group (first ``local_dim`` channels) and a global group.
The local group runs non-overlapping window attention (:class:`mmattn.layers.WindowMSA` without
its own projection, through :func:`mmattn.layers.shifted_window_attention` with shift 0); the
global group is pooled to one ``G' x G'`` window (``G' = min(G, H, W)``; adaptive max + average
pooling, or max only), attended with a relative position bias and upsampled back bilinearly. Both
results are concatenated and projected by one shared ``proj``. The global attention matrix is
``(G'^2, G'^2)`` whatever the input size; ``global_attn.attn_drop`` receives it, so a forward hook
there captures it. Under ``torch.export`` the global branch keeps ``G'`` symbolic (size-generic
pooling from :mod:`mmattn.ops.export`), so one dynamic ONNX file serves every input size.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath

from .blocks import TokenBlock
from .ccf_ffn import CCFFFN, CCFFFNPlus
from .window_attention import WindowMSA, relative_position_index, shifted_window_attention

GLOBAL_POOLS = ('max+avg', 'max')


def _export_max_pool(x: torch.Tensor, size) -> torch.Tensor:
    """Adaptive max pooling to ``size x size`` through mmattn's size-generic decomposition."""
    from mmattn.ops.export import adaptive_max_pool2d
    return adaptive_max_pool2d(x, (size, size))[0]


def _export_avg_pool(x: torch.Tensor, size) -> torch.Tensor:
    """Adaptive average pooling to ``size x size`` through mmattn's size-generic decomposition."""
    from mmattn.ops.export import adaptive_avg_pool2d
    return adaptive_avg_pool2d(x, (size, size))


class GlobalWindowAttention(nn.Module):
    """Self-attention over one pooled ``G' x G'`` window, upsampled back to the map.

    Args:
        dim (int): channels of the global group.
        num_heads (int): heads; must divide ``dim``.
        global_size (int): pooled window side ``G`` (clamped to ``min(G, H, W)``). Defaults to 7.
        pool (str): ``'max+avg'`` (sum of adaptive max and average pooling, PLG-ViT) or ``'max'``
            (LW PLG-ViT). Defaults to ``'max+avg'``.
        qkv_bias (bool): bias of ``qkv``. Defaults to True.
        attn_drop (float): dropout on the attention. Defaults to 0.
    """

    def __init__(self, dim: int, num_heads: int, global_size: int = 7, pool: str = 'max+avg',
                 qkv_bias: bool = True, attn_drop: float = 0.) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f'num_heads ({num_heads}) must be positive and divide the global '
                             f'channels ({dim})')
        if global_size < 1:
            raise ValueError(f'global_size must be >= 1, got {global_size}')
        if pool not in GLOBAL_POOLS:
            raise ValueError(f'pool must be one of {GLOBAL_POOLS}, got {pool!r}')
        self.dim, self.num_heads, self.global_size, self.pool = dim, num_heads, global_size, pool
        self.scale = (dim // num_heads)**-0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * global_size - 1)**2, num_heads))
        self.register_buffer('relative_position_index', relative_position_index(global_size),
                             persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)

    def _bias(self, size: int) -> torch.Tensor:
        """``(heads, size^2, size^2)`` bias of a ``size x size`` grid (``size <= G``): the
        top-left block of the ``G x G`` index has the same offsets, shifted by ``G - 1``."""
        index = self.relative_position_index
        pos = torch.arange(size, device=index.device)  # no branch on size: exports stay dynamic
        ids = (pos[:, None] * self.global_size + pos[None, :]).flatten()
        index = index[ids][:, ids]
        n = size * size
        bias = self.relative_position_bias_table[index.reshape(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: channels-last ``(B, H, W, C_g)``; returns the same shape."""
        b, h, w, c = x.shape
        if torch.compiler.is_exporting():
            # keep G' = min(G, H, W) symbolic: Python's min and the aten pooling ops would fix it
            size = torch.sym_min(self.global_size, torch.sym_min(h, w))
            max_pool, avg_pool = _export_max_pool, _export_avg_pool
        else:
            # under torch.jit.trace (FLOP analysis) h and w are 0-d tensors: the pooling needs ints
            size = min(self.global_size, int(h), int(w))
            max_pool, avg_pool = F.adaptive_max_pool2d, F.adaptive_avg_pool2d
        fmap = x.permute(0, 3, 1, 2)
        pooled = max_pool(fmap, size)
        if self.pool == 'max+avg':
            pooled = pooled + avg_pool(fmap, size)
        n = size * size
        tokens = pooled.flatten(2).transpose(1, 2)  # (B, G'^2, C_g)
        qkv = self.qkv(tokens).view(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self._bias(size).unsqueeze(0)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(2, 3).reshape(b, c, size, size)
        # also when size == h == w (the identity): no branch on sizes, so exports stay dynamic
        out = F.interpolate(out, size=(h, w), mode='bilinear', align_corners=False)
        return out.permute(0, 2, 3, 1)


class PLGAttention(nn.Module):
    """PLG-SA on a channels-last map ``(B, H, W, C)``.

    Args:
        dim (int): channels ``C``.
        local_dim (int): channels ``C_l`` of the local branch (the first ones); the global branch
            gets ``C - C_l``. Both must be positive.
        local_heads (int): heads of the local branch; must divide ``C_l``.
        global_heads (int): heads of the global branch; must divide ``C - C_l``.
        window_size (int): local window side. Defaults to 7.
        global_size (int): pooled global window side ``G``. Defaults to 7.
        global_pool (str): ``'max+avg'`` or ``'max'``. Defaults to ``'max+avg'``.
        qkv_bias (bool): biases of both ``qkv``. Defaults to True.
        attn_drop (float): attention dropout of both branches. Defaults to 0.
        proj_drop (float): dropout after ``proj``. Defaults to 0.
        mask_padding (bool): mask the zero-padded tokens of the local windows out as keys; the
            spec (D3) lets them take part, as Swin does. Defaults to False.
    """

    def __init__(self, dim: int, local_dim: int, local_heads: int, global_heads: int,
                 window_size: int = 7, global_size: int = 7, global_pool: str = 'max+avg',
                 qkv_bias: bool = True, attn_drop: float = 0., proj_drop: float = 0.,
                 mask_padding: bool = False) -> None:
        super().__init__()
        if not 0 < local_dim < dim:
            raise ValueError(f'local_dim must be in (0, dim={dim}), got {local_dim}')
        self.dim, self.local_dim, self.mask_padding = dim, local_dim, mask_padding
        self.local_attn = WindowMSA(local_dim, local_heads, window_size, qkv_bias,
                                    attn_drop=attn_drop, with_proj=False)
        self.global_attn = GlobalWindowAttention(dim - local_dim, global_heads, global_size,
                                                 global_pool, qkv_bias, attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f'x must be (B, H, W, {self.dim}), got {tuple(x.shape)}')
        x_local, x_global = x[..., :self.local_dim].contiguous(), x[..., self.local_dim:]
        local = shifted_window_attention(x_local, self.local_attn, 0, self.mask_padding)
        out = torch.cat([local, self.global_attn(x_global)], dim=-1)
        return self.proj_drop(self.proj(out))


class PLGBlock(TokenBlock):
    """Pre-norm PLG block on tokens ``(B, H*W, C)``:
    ``x + DropPath(PLG-SA(norm1(x)))``, then ``x + DropPath(FFN(norm2(x)))``.

    Args:
        dim (int): channels ``C``.
        local_dim (int): channels of the local branch.
        local_heads (int): local heads.
        global_heads (int): global heads.
        window_size (int): local window side. Defaults to 7.
        global_size (int): global pooled window side. Defaults to 7.
        global_pool (str): ``'max+avg'`` or ``'max'``. Defaults to ``'max+avg'``.
        ffn (str): ``'ccf'`` (CCF-FFN, alpha 4) or ``'ccf+'`` (CCF-FFN+, alpha 3).
            Defaults to ``'ccf'``.
        qkv_bias (bool): biases of ``qkv``. Defaults to True.
        drop (float): dropout after ``proj`` and the FFN. Defaults to 0.
        attn_drop (float): attention dropout. Defaults to 0.
        drop_path (float): stochastic depth rate. Defaults to 0.
        norm_eps (float): LayerNorm epsilon. Defaults to 1e-5.
        mask_padding (bool): see :class:`PLGAttention`. Defaults to False.
        with_cp (bool): activation checkpointing. Defaults to False.
    """
    FFNS = {'ccf': CCFFFN, 'ccf+': CCFFFNPlus}

    def __init__(self, dim: int, local_dim: int, local_heads: int, global_heads: int,
                 window_size: int = 7, global_size: int = 7, global_pool: str = 'max+avg',
                 ffn: str = 'ccf', qkv_bias: bool = True, drop: float = 0.,
                 attn_drop: float = 0., drop_path: float = 0., norm_eps: float = 1e-5,
                 mask_padding: bool = False, with_cp: bool = False) -> None:
        super().__init__()
        if ffn not in self.FFNS:
            raise ValueError(f'ffn must be one of {sorted(self.FFNS)}, got {ffn!r}')
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = PLGAttention(dim, local_dim, local_heads, global_heads, window_size,
                                 global_size, global_pool, qkv_bias, attn_drop, drop,
                                 mask_padding)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.ffn = self.FFNS[ffn](dim, drop=drop)

    def _inner(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        y = self.attn(self.norm1(x).view(b, hw_shape[0], hw_shape[1], c))
        x = x + self.drop_path(y.reshape(b, n, c))
        return x + self.drop_path(self.ffn(self.norm2(x), hw_shape))
