"""Swin (shifted-)window multi-head self-attention (Liu et al., arXiv 2103.14030).

* :class:`WindowMSA`: attention inside ``w x w`` windows with a learned relative position bias
  (``qkv`` in q, k, v order, ``proj``, table ``relative_position_bias_table`` of shape
  ``((2w-1)^2, heads)`` indexed by Swin's ``coords[i] - coords[j]``; the index is a non-persistent
  buffer, so it never appears in checkpoints).
* :func:`shifted_window_attention`: pad to window multiples, cyclic shift, Swin's -100 region
  mask, window partition, attention, reverse, crop.
* :class:`SwinBlock`: the pre-norm residual block of ELSA-Swin's last stage.

OpenMMLab configs key on the table's name to exempt it from weight decay.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath

from .blocks import Mlp, TokenBlock


def relative_position_index(window_size: int) -> torch.Tensor:
    """Swin's ``(w*w, w*w)`` index: ``(dr + w - 1) * (2w - 1) + (dc + w - 1)``, ``d = i - j``."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size),
                                        indexing='ij')).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + window_size - 1
    return rel[0] * (2 * window_size - 1) + rel[1]


class WindowMSA(nn.Module):
    """Multi-head self-attention within windows of ``window_size**2`` tokens.

    Args:
        dim (int): channels.
        num_heads (int): heads; must divide ``dim``.
        window_size (int): window side ``w``.
        qkv_bias (bool): bias of ``qkv``. Defaults to True.
        qk_scale (float, optional): logit scale; None gives ``head_dim ** -0.5``.
        attn_drop (float): dropout on the attention. Defaults to 0.
        proj_drop (float): dropout after ``proj``. Defaults to 0.
        with_proj (bool): build the output projection ``proj``; False returns the heads'
            concatenated outputs (a branch whose projection is shared, e.g. PLG-ViT's local
            branch). Defaults to True.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.,
                 proj_drop: float = 0., with_proj: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f'num_heads ({num_heads}) must be positive and divide dim ({dim})')
        if window_size < 1:
            raise ValueError(f'window_size must be >= 1, got {window_size}')
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        self.scale = qk_scale or (dim // num_heads)**-0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1)**2, num_heads))
        self.register_buffer('relative_position_index', relative_position_index(window_size),
                             persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim) if with_proj else nn.Identity()
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x``: ``(num_windows * B, w*w, C)``; ``mask``: ``(num_windows, w*w, w*w)`` or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))


def _shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Swin's mask for a padded ``hp x wp`` map: -100 between tokens of different regions.

    The regions are Swin's three bands per axis (``[0, -window)``, ``[-window, -shift)``,
    ``[-shift, end)``), numbered from index comparisons rather than by slice assignment, which
    exports to ONNX with dynamic sizes (the slice-scatter translation does not).
    """
    def bands(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - window).long() + (i >= n - shift).long()

    region = (bands(hp)[:, None] * 3 + bands(wp)[None, :]).to(torch.float32)
    ids = window_partition(region[None, :, :, None], window).view(-1, window * window)
    diff = ids[:, None, :] - ids[:, :, None]
    return diff.masked_fill(diff != 0, -100.).masked_fill(diff == 0, 0.)


def _padding_mask(h: int, w: int, hp: int, wp: int, window: int, shift: int,
                  device: torch.device) -> torch.Tensor:
    """``(num_windows, w*w, w*w)`` mask of a map padded from ``h x w`` to ``hp x wp`` (rolled by
    ``-shift``): -1e4 on the padded keys, 0 elsewhere (finite, so an all-padding query row stays
    finite; those rows are cropped)."""
    rows, cols = torch.arange(hp, device=device) < h, torch.arange(wp, device=device) < w
    valid = (rows[:, None] & cols[None, :]).to(torch.float32)[None, :, :, None]
    if shift > 0:
        valid = torch.roll(valid, shifts=(-shift, -shift), dims=(1, 2))
    keys = window_partition(valid, window).reshape(-1, 1, window * window)
    return ((1. - keys) * -1e4).expand(-1, window * window, -1)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C) -> (B * H/w * W/w, w, w, C)``."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition` for an ``h x w`` map."""
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def shifted_window_attention(x: torch.Tensor, attn: WindowMSA, shift: int,
                             mask_padding: bool = False) -> torch.Tensor:
    """Swin's (shifted-)window attention on a channels-last map ``(B, H, W, C)``.

    The map is zero-padded at the bottom/right to multiples of the window, rolled by ``-shift``
    (with the region mask when ``shift > 0``), attended per window, rolled back and cropped.
    With ``mask_padding`` the padded tokens are also masked out as keys (-1e4 on their logits);
    by default they take part in the attention as Swin's do.
    """
    b, h, w, c = x.shape
    window = attn.window_size
    # padded sizes as ceil(h / window) * window: an expression the exporter's symbolic shapes
    # simplify (h + (-h) % window does not, and dynamic ONNX exports of deep models stall on it)
    hp, wp = (h + window - 1) // window * window, (w + window - 1) // window * window
    pad_b, pad_r = hp - h, wp - w
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    mask = None
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        mask = _shift_mask(hp, wp, window, shift, x.device).to(x.dtype)
    if mask_padding and (pad_b or pad_r):
        pad_mask = _padding_mask(h, w, hp, wp, window, shift, x.device).to(x.dtype)
        mask = pad_mask if mask is None else mask + pad_mask
    windows = window_partition(x, window).reshape(-1, window * window, c)
    x = window_reverse(attn(windows, mask).view(-1, window, window, c), window, hp, wp)
    if shift > 0:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x[:, :h, :w].contiguous()


class SwinBlock(TokenBlock):
    """Pre-norm Swin block on tokens ``(B, H*W, C)``; odd blocks use ``shift = window // 2``.

    Args:
        dim (int): channels.
        num_heads (int): heads.
        window_size (int): window side. Defaults to 7.
        shift (bool): shifted windows (``window // 2``). Defaults to False.
        pad_small_map (bool): keep the shift on maps no larger than the window (dense-prediction
            behaviour, maps padded to the window); False drops the shift there, as Swin's
            classifier does. Defaults to True.
        mlp_ratio (float): MLP hidden width over ``dim``. Defaults to 4.
        qkv_bias (bool): bias of ``qkv``. Defaults to True.
        qk_scale (float, optional): logit scale; None gives ``head_dim ** -0.5``.
        drop (float): dropout after ``proj`` and the MLP layers. Defaults to 0.
        attn_drop (float): dropout on the attention. Defaults to 0.
        drop_path (float): stochastic depth rate. Defaults to 0.
        with_cp (bool): activation checkpointing. Defaults to False.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift: bool = False,
                 pad_small_map: bool = True, mlp_ratio: float = 4., qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0., attn_drop: float = 0.,
                 drop_path: float = 0., with_cp: bool = False) -> None:
        super().__init__()
        self.shift_size = window_size // 2 if shift else 0
        self.pad_small_map, self.with_cp = pad_small_map, with_cp
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowMSA(dim, num_heads, window_size, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def _inner(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        shift = self.shift_size
        if not self.pad_small_map and min(hw_shape) <= self.attn.window_size:
            shift = 0
        y = shifted_window_attention(self.norm1(x).view(b, hw_shape[0], hw_shape[1], c),
                                     self.attn, shift)
        x = x + self.drop_path(y.view(b, n, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))
