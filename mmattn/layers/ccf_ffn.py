"""Convolutional feed-forward networks of PLG-ViT and Light-Weight PLG-ViT, and GRN.

* :class:`CCFFFN` (PLG-ViT, N. Ebert, D. Stricker, O. Wasenmueller, Sensors 2023, 23(7), 3447,
  doi 10.3390/s23073447): ``fc1`` (C -> 4C) -> GELU -> depthwise 3x3 ``dwconv`` -> GELU -> ``fc2``.
* :class:`CCFFFNPlus` (Light-Weight PLG-ViT, arXiv 2307.09120): ``alpha = 3``, GRN after the
  depthwise convolution, and the post-activation ``fc1`` features concatenated with the GRN
  output before ``fc2`` (6C -> C).
* :class:`GRN`: Global Response Normalization of ConvNeXt V2 (S. Woo et al., arXiv 2301.00808).

No official PLG-ViT code is public; the layer internals are mmattn's (``specs/plg_vit.md`` D4).
"""
from typing import Tuple

import torch
import torch.nn as nn

from .blocks import Mlp


class GRN(nn.Module):
    """Global Response Normalization on channels-last tensors ``(B, *spatial, D)``.

    ``Gx = ||x||_2`` over the spatial axes per sample and channel, ``Nx = Gx / (mean_c Gx + eps)``,
    ``y = gamma * (x * Nx) + beta + x``; ``gamma`` and ``beta`` start at zero (identity).

    Args:
        dim (int): channels ``D``.
        eps (float): added to the channel mean of ``Gx``. Defaults to 1e-6.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f'dim must be >= 1, got {dim}')
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f'x must be (B, *spatial, D), got {tuple(x.shape)}')
        gx = torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim() - 1)), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


def _check_tokens(x: torch.Tensor, hw_shape: Tuple[int, int]) -> None:
    if x.dim() != 3 or x.shape[1] != hw_shape[0] * hw_shape[1]:
        raise ValueError(f'x must be (B, {hw_shape[0]}*{hw_shape[1]}, C), got {tuple(x.shape)}')


class CCFFFN(Mlp):
    """CCF-FFN on tokens ``(B, H*W, C)``: ``fc2(GELU(dwconv(GELU(fc1(x)))))``.

    ``fc1``, ``act`` and ``fc2`` are :class:`mmattn.layers.Mlp`'s; ``dwconv`` is a depthwise
    3x3 convolution (with bias, zero padding 1) on the ``H x W`` map of the hidden features.

    Args:
        dim (int): channels ``C``.
        mlp_ratio (int): hidden width over ``C`` (``alpha``). Defaults to 4.
        drop (float): dropout after ``fc2`` (0 in every PLG-ViT config). Defaults to 0.
    """

    def __init__(self, dim: int, mlp_ratio: int = 4, drop: float = 0.) -> None:
        if dim < 1 or mlp_ratio < 1:
            raise ValueError(f'dim and mlp_ratio must be >= 1, got {dim} and {mlp_ratio}')
        hidden = dim * mlp_ratio
        super().__init__(dim, hidden, drop)
        self.hidden = hidden
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)

    def _depthwise(self, h: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        """GELU(dwconv(h)) for tokens ``h`` of shape ``(B, H*W, D)``; returns ``(B, H*W, D)``."""
        b, n, d = h.shape
        u = self.dwconv(h.transpose(1, 2).reshape(b, d, *hw_shape))
        return self.act(u.flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        _check_tokens(x, hw_shape)
        h = self.act(self.fc1(x))
        return self.drop(self.fc2(self._depthwise(h, hw_shape)))


class CCFFFNPlus(CCFFFN):
    """CCF-FFN+ on tokens ``(B, H*W, C)``: ``h = GELU(fc1(x))``, ``u = GRN(GELU(dwconv(h)))``,
    ``fc2(concat[h, u])`` with ``fc2`` of input width ``2 * alpha * C``.

    Args:
        dim (int): channels ``C``.
        mlp_ratio (int): hidden width over ``C`` (``alpha``). Defaults to 3.
        drop (float): dropout after ``fc2``. Defaults to 0.
    """

    def __init__(self, dim: int, mlp_ratio: int = 3, drop: float = 0.) -> None:
        super().__init__(dim, mlp_ratio, drop)
        self.grn = GRN(self.hidden)
        self.fc2 = nn.Linear(2 * self.hidden, dim)

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        _check_tokens(x, hw_shape)
        h = self.act(self.fc1(x))
        u = self.grn(self._depthwise(h, hw_shape))
        return self.drop(self.fc2(torch.cat([h, u], dim=-1)))
