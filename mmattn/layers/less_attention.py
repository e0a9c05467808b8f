"""Less-attention layers of LaViT: vanilla and less-attention (VA / LA) attention, the attention
transformations Theta (keys) and Psi (queries), the attention residual between stages, the block
and the diagonality-preserving (DP) loss term.

Paper: S. Zhang, H. Liu, S. Lin, K. He, "You Only Need Less Attention at Each Stage in Vision
Transformers", CVPR 2024, arXiv 2406.00427. No official code is public; this is the mmattn design
of ``specs/lavit.md`` (decisions L2-L6), which makes every learned tensor independent of the
input size.

Layout. Attention logits are *held* as ``(B, heads, n, N)`` (key-major, ``n = pool_size**2``
pooled keys, ``N = H * W`` queries), which is the image ``(B, heads * n, H, W)`` with channel
``head * n + key`` that Psi, the DP pooling and the attention residual read without a copy. The
public interfaces exchange them as ``(B, heads, N, n)`` (query-major), a transposed view of the
same memory.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath

from .blocks import Mlp

HwShape = Tuple[int, int]


def _check_heads(dim: int, num_heads: int) -> None:
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f'num_heads must be a positive int, got {num_heads!r}')
    if not isinstance(dim, int) or dim < 1 or dim % num_heads:
        raise ValueError(f'dim must be a positive multiple of num_heads ({num_heads}), '
                         f'got {dim!r}')


def _check_pool(pool_size: int) -> None:
    if not isinstance(pool_size, int) or pool_size < 2:
        raise ValueError(f'pool_size must be an int >= 2, got {pool_size!r}')


class PooledTokens(nn.Module):
    """Keys/values source of spec L2 (the PVT v2 "li" path):
    ``GELU(LN(Conv1x1(AdaptiveAvgPool2d(P)(u))))``, ``P * P`` tokens in row-major cell order.

    The ``sr`` convolution and ``norm`` live in the attention module (state-dict names of PVT);
    this helper only runs them.
    """

    def __init__(self, pool_size: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.act = nn.GELU()

    def forward(self, u: torch.Tensor, hw_shape: HwShape, sr: nn.Conv2d,
                norm: nn.LayerNorm) -> torch.Tensor:
        b, _, c = u.shape
        img = u.transpose(1, 2).reshape(b, c, *hw_shape)
        z = sr(self.pool(img)).flatten(2).transpose(1, 2)  # (B, P*P, C)
        return self.act(norm(z))


class KeyMixing(nn.Module):
    """Theta of spec L4: ``Theta(S)[..., j] = sum_i (I + dTheta)[j, i] S[..., i] + b[j]`` along
    the key axis, shared by heads, queries and images. Stored as the deviation ``weight_delta``
    from the identity (zero at initialisation: Theta starts as the identity)."""

    def __init__(self, num_keys: int) -> None:
        super().__init__()
        self.num_keys = num_keys
        self.weight_delta = nn.Parameter(torch.zeros(num_keys, num_keys))
        self.bias = nn.Parameter(torch.zeros(num_keys))

    def reset_parameters(self) -> None:
        """Identity start (spec L4)."""
        nn.init.zeros_(self.weight_delta)
        nn.init.zeros_(self.bias)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits``: key-major ``(B, heads, n, N)``; returns the same shape."""
        b, h, n, length = logits.shape
        x = logits.reshape(b * h, n, length, 1)
        mixed = F.conv2d(x, self.weight_delta[:, :, None, None], self.bias)  # 1x1: key mixing
        return (x + mixed).view(b, h, n, length)


class QueryMixing(nn.Module):
    """Psi of spec L4: a 3x3 depth-wise convolution over the query grid (stride 1, zero padding
    1) of the logits seen as the image ``(B, heads * n, H, W)``, kernel ``delta + weight_delta``
    (``delta`` the centred unit impulse) and bias, one per channel ``head * n + key``."""

    def __init__(self, num_heads: int, num_keys: int) -> None:
        super().__init__()
        self.channels = num_heads * num_keys
        self.weight_delta = nn.Parameter(torch.zeros(self.channels, 1, 3, 3))
        self.bias = nn.Parameter(torch.zeros(self.channels))

    def reset_parameters(self) -> None:
        """Identity start (spec L4)."""
        nn.init.zeros_(self.weight_delta)
        nn.init.zeros_(self.bias)

    def forward(self, logits: torch.Tensor, hw_shape: HwShape) -> torch.Tensor:
        """``logits``: key-major ``(B, heads, n, N)``; returns the same shape."""
        b, h, n, length = logits.shape
        img = logits.reshape(b, h * n, *hw_shape)
        mixed = F.conv2d(img, self.weight_delta, self.bias, padding=1, groups=self.channels)
        return (img + mixed).view(b, h, n, length)


class LaViTAttentionVA(nn.Module):
    """Vanilla attention of spec L3: ``S = Q K^T / sqrt(d)`` (+ the attention residual ``R``),
    ``softmax`` over the ``P * P`` pooled keys, ``A V``, output projection. Hands its logits
    ``S`` (residual included) to the next layer.

    Args:
        dim (int): token width ``C``.
        num_heads (int): heads (head dim ``C / heads``).
        pool_size (int): side ``P`` of the pooled key/value grid. Defaults to 7.
        qkv_bias (bool): biases of ``q`` and ``kv``. Defaults to True.
        proj_drop (float): dropout after ``proj``. Defaults to 0.
    """

    def __init__(self, dim: int, num_heads: int, pool_size: int = 7, qkv_bias: bool = True,
                 proj_drop: float = 0.) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        _check_pool(pool_size)
        self.dim, self.num_heads, self.pool_size = dim, num_heads, pool_size
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.sr = nn.Conv2d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pooled = PooledTokens(pool_size)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, hw_shape: HwShape,
                residual: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: normalised tokens ``(B, N, C)``; ``residual``: ``(B, heads, N, P*P)`` added to
        the logits before the softmax.

        Returns:
            tuple: output ``(B, N, C)``, logits ``(B, heads, N, P*P)`` and the attention
            ``softmax(logits)`` ``(B, heads, N, P*P)`` (query-major views).
        """
        b, length, c = x.shape
        h, d = self.num_heads, self.head_dim
        z = self.pooled(x, hw_shape, self.sr, self.norm)
        q = (self.q(x) * self.scale).view(b, length, h, d).permute(0, 2, 3, 1)  # (B, h, d, N)
        k, v = self.kv(z).view(b, -1, 2, h, d).permute(2, 0, 3, 1, 4)  # (B, h, n, d) each
        logits = k @ q  # key-major (B, h, n, N)
        if residual is not None:
            logits = logits + residual.transpose(-2, -1)
        attn = logits.softmax(dim=-2)
        out = (attn.transpose(-2, -1) @ v).transpose(1, 2).reshape(b, length, c)
        out = self.proj_drop(self.proj(out))
        return out, logits.transpose(-2, -1), attn.transpose(-2, -1)


class LaViTAttentionLA(nn.Module):
    """Less attention of spec L4: no query or key projection; the logits are the previous
    layer's logits transformed, ``S_l = Psi(Theta(S_{l-1}))``; ``softmax`` over the keys, times
    this layer's own values ``V = z W_v + b_v`` from its pooled tokens, output projection.

    Args:
        dim (int): token width ``C``.
        num_heads (int): heads; must match the previous layer's.
        pool_size (int): side ``P`` of the pooled key/value grid. Defaults to 7.
        qkv_bias (bool): bias of ``v``. Defaults to True.
        proj_drop (float): dropout after ``proj``. Defaults to 0.
    """

    def __init__(self, dim: int, num_heads: int, pool_size: int = 7, qkv_bias: bool = True,
                 proj_drop: float = 0.) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        _check_pool(pool_size)
        self.dim, self.num_heads, self.pool_size = dim, num_heads, pool_size
        self.head_dim = dim // num_heads
        num_keys = pool_size * pool_size
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.sr = nn.Conv2d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pooled = PooledTokens(pool_size)
        self.theta = KeyMixing(num_keys)
        self.psi = QueryMixing(num_heads, num_keys)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def reset_transforms(self) -> None:
        """Identity start of Theta and Psi (spec L4)."""
        self.theta.reset_parameters()
        self.psi.reset_parameters()

    def forward(self, x: torch.Tensor, hw_shape: HwShape, prev_logits: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: normalised tokens ``(B, N, C)``; ``prev_logits``: ``(B, heads, N, P*P)``.

        Returns:
            tuple: output ``(B, N, C)``, logits and attention, both ``(B, heads, N, P*P)``.
        """
        b, length, c = x.shape
        h, d, n = self.num_heads, self.head_dim, self.pool_size**2
        if prev_logits.shape != (b, h, length, n):
            raise ValueError(f'prev_logits must be (B, heads, N, P*P) = {(b, h, length, n)}, '
                             f'got {tuple(prev_logits.shape)}')
        z = self.pooled(x, hw_shape, self.sr, self.norm)
        v = self.v(z).view(b, n, h, d).transpose(1, 2)  # (B, h, n, d)
        logits = self.psi(self.theta(prev_logits.transpose(-2, -1)), hw_shape)  # key-major
        attn = logits.softmax(dim=-2)
        out = (attn.transpose(-2, -1) @ v).transpose(1, 2).reshape(b, length, c)
        out = self.proj_drop(self.proj(out))
        return out, logits.transpose(-2, -1), attn.transpose(-2, -1)


class AttentionResidual(nn.Module):
    """Attention residual between stages (spec L5): the previous stage's last logits seen as an
    image, a 3x3 depth-wise convolution with stride 2 (``ceil(H / 2)`` rows, as the patch
    embedding), head mixing ``W_mix`` (no bias) and a per-head layer scale ``gamma``.

    Args:
        in_heads (int): heads of the previous stage.
        out_heads (int): heads of this stage.
        pool_size (int): side ``P`` of the key grid. Defaults to 7.
        init_value (float): initial ``gamma``. Defaults to 1e-2.
    """

    def __init__(self, in_heads: int, out_heads: int, pool_size: int = 7,
                 init_value: float = 1e-2) -> None:
        super().__init__()
        for name, value in (('in_heads', in_heads), ('out_heads', out_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        _check_pool(pool_size)
        self.in_heads, self.out_heads, self.num_keys = in_heads, out_heads, pool_size**2
        self.init_value = float(init_value)
        channels = in_heads * self.num_keys
        self.dw = nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels)
        self.pw = nn.Parameter(torch.empty(out_heads, in_heads))
        self.gamma = nn.Parameter(torch.empty(out_heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mean filter, bias 0, head average ``1 / in_heads``, ``gamma = init_value``."""
        nn.init.constant_(self.dw.weight, 1. / 9.)
        nn.init.zeros_(self.dw.bias)
        nn.init.constant_(self.pw, 1. / self.in_heads)
        nn.init.constant_(self.gamma, self.init_value)

    def forward(self, logits: torch.Tensor, in_hw: HwShape) -> Tuple[torch.Tensor, HwShape]:
        """``logits``: ``(B, in_heads, H' * W', P*P)`` on the ``in_hw`` grid.

        Returns:
            tuple: residual ``(B, out_heads, H * W, P*P)`` with ``H = ceil(H' / 2)`` and
            ``W = ceil(W' / 2)``, and ``(H, W)``.
        """
        b, h_in, length, n = logits.shape
        if h_in != self.in_heads or n != self.num_keys or length != in_hw[0] * in_hw[1]:
            raise ValueError(f'logits must be (B, {self.in_heads}, {in_hw[0]}*{in_hw[1]}, '
                             f'{self.num_keys}), got {tuple(logits.shape)}')
        img = logits.transpose(-2, -1).reshape(b, h_in * n, *in_hw)
        img = self.dw(img)
        out_hw = (img.shape[2], img.shape[3])
        mixed = F.conv1d(img.reshape(b, h_in, -1), self.pw[:, :, None])  # (B, out_heads, n*N)
        mixed = mixed * self.gamma[:, None]
        res = mixed.view(b, self.out_heads, n, out_hw[0] * out_hw[1])
        return res.transpose(-2, -1), out_hw


def pool_attention_to_cells(attn: torch.Tensor, hw_shape: HwShape,
                            pool_size: int) -> torch.Tensor:
    """The query axis of ``attn`` ``(B, h, N, n)`` averaged into the ``pool_size**2`` cells of
    the keys (spec L6): returns ``A_bar`` ``(B, h, n, n)``, row = query cell, column = key."""
    b, h, _, n = attn.shape
    img = attn.transpose(-2, -1).reshape(b, h * n, *hw_shape)
    pooled = F.adaptive_avg_pool2d(img, pool_size).view(b, h, n, pool_size * pool_size)
    return pooled.transpose(-2, -1)


def diagonality_loss(attn: torch.Tensor, hw_shape: HwShape, pool_size: int) -> torch.Tensor:
    """Diagonality-preserving term ``L_l`` of one LA layer (spec L6), computed in fp32:

    ``mean |A_bar_ij - A_bar_ji| + mean_i (sum_{j != i} A_bar_ij - (n - 1) A_bar_ii) / (n - 1)``

    with ``A_bar`` from :func:`pool_attention_to_cells`. It lies in ``[-1, 2/n + 1/(n-1)]``;
    minimising it makes ``A_bar`` symmetric and raises its diagonal.

    Args:
        attn (Tensor): post-softmax attention ``(B, h, N, n)``, ``n = pool_size**2``.
        hw_shape (tuple): the query grid ``(H, W)`` with ``H * W = N``.
        pool_size (int): ``P``.

    Returns:
        Tensor: a scalar.
    """
    a_bar = pool_attention_to_cells(attn.float(), hw_shape, pool_size)
    n = a_bar.shape[-1]
    asym = (a_bar - a_bar.transpose(-2, -1)).abs().mean()
    diag = a_bar.diagonal(dim1=-2, dim2=-1)
    off_minus_diag = a_bar.sum(-1) - n * diag  # sum_{j!=i} A_ij - (n-1) A_ii
    return asym + off_minus_diag.mean() / (n - 1)


class LaViTBlock(nn.Module):
    """Pre-norm LaViT block: ``x + DropPath(Attn(LN1(x)))``, ``x + DropPath(MLP(LN2(x)))`` with a
    VA (``vanilla=True``) or LA attention.

    Blocks exchange ``(x, logits, dp_term)``: the DP term is an output (not a side effect), so it
    keeps its gradient under activation checkpointing (``with_cp``, non-reentrant).

    Args:
        dim (int): token width.
        num_heads (int): heads.
        mlp_ratio (float): MLP hidden width over ``dim``.
        vanilla (bool): VA (True) or LA (False) attention.
        pool_size (int): side of the pooled key grid. Defaults to 7.
        qkv_bias (bool): biases of ``q``/``kv``/``v``. Defaults to True.
        drop (float): dropout after ``proj`` and in the MLP. Defaults to 0.
        drop_path (float): stochastic depth of both branches. Defaults to 0.
        with_cp (bool): activation checkpointing. Defaults to False.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, vanilla: bool,
                 pool_size: int = 7, qkv_bias: bool = True, drop: float = 0.,
                 drop_path: float = 0., with_cp: bool = False) -> None:
        super().__init__()
        self.vanilla, self.with_cp, self.pool_size = vanilla, with_cp, pool_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_cls = LaViTAttentionVA if vanilla else LaViTAttentionLA
        self.attn = attn_cls(dim, num_heads, pool_size, qkv_bias, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def _inner(self, x: torch.Tensor, hw_shape: HwShape, logits: Optional[torch.Tensor],
               with_dp: bool):
        y, logits, attn = self.attn(self.norm1(x), hw_shape, logits)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        dp = diagonality_loss(attn, hw_shape, self.pool_size) if with_dp else None
        return x, logits, dp

    def forward(self, x: torch.Tensor, hw_shape: HwShape, logits: Optional[torch.Tensor] = None,
                with_dp: bool = False
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Args:
            x (Tensor): tokens ``(B, H*W, C)``.
            hw_shape (tuple): ``(H, W)``.
            logits (Tensor, optional): VA: the attention residual to add (or None); LA: the
                previous layer's logits ``(B, heads, N, P*P)`` (required).
            with_dp (bool): compute the DP term (LA blocks only).

        Returns:
            tuple: tokens, this layer's logits ``(B, heads, N, P*P)`` and the DP term (a scalar,
            or None when not requested or for VA blocks).
        """
        if x.dim() != 3 or x.shape[1] != hw_shape[0] * hw_shape[1]:
            raise ValueError(f'x must be (B, {hw_shape[0]}*{hw_shape[1]}, C), '
                             f'got {tuple(x.shape)}')
        if not self.vanilla and logits is None:
            raise ValueError('an LA block needs the previous layer\'s logits')
        with_dp = bool(with_dp) and not self.vanilla
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner, x, hw_shape, logits, with_dp, use_reentrant=False)
        return self._inner(x, hw_shape, logits, with_dp)
