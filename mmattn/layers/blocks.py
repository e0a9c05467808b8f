"""Pieces shared by the transformer blocks: timm's MLP and the token-block base class."""
from typing import Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp


class Mlp(nn.Module):
    """``fc1 -> GELU -> Dropout -> fc2 -> Dropout`` (timm's ``Mlp``; official key names)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TokenBlock(nn.Module):
    """Base of the blocks on tokens ``(B, H*W, C)`` of an ``hw_shape`` map: checks the input and
    runs the subclass's ``_inner`` under activation checkpointing when ``with_cp`` is set."""
    with_cp: bool = False

    def _inner(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != hw_shape[0] * hw_shape[1]:
            raise ValueError(f'x must be (B, {hw_shape[0]}*{hw_shape[1]}, C), '
                             f'got {tuple(x.shape)}')
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner, x, hw_shape, use_reentrant=False)
        return self._inner(x, hw_shape)
