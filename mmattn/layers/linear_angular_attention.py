"""Linear-angular attention of Castling-ViT, with its training-time masked-softmax branch.

Paper: H. You, Y. Xiong, X. Dai, B. Wu, P. Zhang, H. Fan, P. Vajda, Y. Lin, "Castling-ViT:
Compressing Self-Attention via Switching Towards Linear-Angular Attention During Vision
Transformer Inference", arXiv 2211.10526 (CVPR 2023). Official code: the ``LinAngularAttention``
module of github.com/GATECH-EIC/Castling-ViT (Apache-2.0), commit c7b75c1b. Specification:
``specs/castling_vit.md`` (sections 3, D1, D2, D4).

Per head, with ``q^`` and ``k^`` the L2-normalised query and key::

    y = normalize(0.5 * v + (1 / pi) * q^ (k^T v) [+ alpha * (A * [A > tau]) v]) + dconv(v)

where ``A = softmax(q k^T / sqrt(d))`` is the auxiliary branch that only runs in training while
``sparse_reg`` is on and the switch weight ``alpha`` (:attr:`sparse_weight`, set by
:class:`mmattn.engine.CastlingSwitchHook`) is positive. Without the branch the cost is linear in
the number of tokens. Submodule names (``qkv``, ``proj``, ``dconv``) are the official ones.
"""
import contextlib
import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

from mmattn.ops import capturing_graph

DCONV_MODES = ('seq1d', 'spatial2d')


def _fp32_region(x: torch.Tensor):
    """A context with autocast disabled for ``x``'s device when autocast is on there."""
    device = x.device.type
    if device in ('cuda', 'cpu', 'xpu') and torch.is_autocast_enabled(device):
        return torch.autocast(device_type=device, enabled=False)
    return contextlib.nullcontext()


def pool_tokens(x: torch.Tensor, pool: Callable[[torch.Tensor], torch.Tensor],
                hw_shape: Tuple[int, int],
                norm: Optional[nn.Module] = None) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Applies a 2-D pooling module or function to head tokens ``(B, h, H*W, d)`` (or
    ``(B, H*W, C)``).

    Returns the pooled tokens in the input layout and their grid ``(H', W')``; ``norm`` (e.g. a
    LayerNorm over the channels) is applied after pooling, as in MViTv2's attention pooling.
    """
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(1)
    b, h, length, c = x.shape
    if length != hw_shape[0] * hw_shape[1]:
        raise ValueError(f'tokens ({length}) do not match hw_shape {tuple(hw_shape)}')
    x = x.reshape(b * h, hw_shape[0], hw_shape[1], c).permute(0, 3, 1, 2)
    x = pool(x)
    out_hw = (x.shape[-2], x.shape[-1])
    x = x.reshape(b, h, c, -1).transpose(2, 3)
    if norm is not None:
        x = norm(x)
    return (x.squeeze(1) if squeeze else x), out_hw


class SequenceDepthwiseConv(nn.Conv2d):
    """The release's ``Conv2d(h, h, (k, 1), padding=(k // 2, 0), groups=h, bias=False)`` on
    ``v`` viewed as an image ``(B, h, L, d)`` (heads as channels, tokens as height): a 1-D
    depthwise conv along the token sequence, one kernel per head shared over its channels.

    Same parameter (``weight [h, 1, k, 1]``) and result. In eager mode it is computed as ``k``
    shifted multiply-adds on the token-major memory of ``v``: PyTorch's CPU convolution on this
    strided layout (or on a transposed copy) grows much faster than linearly in ``L`` once the
    tensors leave the caches. Under ``torch.jit`` tracing (mmengine's FLOP counter) and
    ``torch.compile`` / ``torch.export`` graph capture the convolution itself runs, so it is
    counted and compiled as one.
    """

    def __init__(self, num_heads: int, kernel_size: int) -> None:
        super().__init__(num_heads, num_heads, (kernel_size, 1), padding=(kernel_size // 2, 0),
                         groups=num_heads, bias=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if capturing_graph():
            return super().forward(v)
        b, h, length, d = v.shape
        taps = self.weight[:, 0, :, 0].to(v.dtype)  # (h, k)
        k = taps.shape[1]
        tokens = F.pad(v.transpose(1, 2), (0, 0, 0, 0, k // 2, k // 2))  # (B, L + k - 1, h, d)
        out = tokens[:, :length] * taps[:, 0].view(1, 1, h, 1)
        for i in range(1, k):
            out.addcmul_(tokens[:, i:i + length], taps[:, i].view(1, 1, h, 1))
        return out.transpose(1, 2)


class LinearAngularAttention(nn.Module):
    """Castling-ViT's linear-angular attention (the official ``LinAngularAttention``).

    Args:
        in_channels (int): token width ``C``; must be divisible by ``num_heads``.
        num_heads (int): heads ``h``. Defaults to 8.
        qkv_bias (bool): bias of ``qkv``. Defaults to False (official default).
        attn_drop (float): accepted for parity with the official module, never applied (the
            official code constructs it but does not use it). Defaults to 0.
        proj_drop (float): dropout after ``proj``. Defaults to 0.
        res_kernel_size (int): taps of the ``'seq1d'`` depthwise sequence conv (odd). Defaults
            to 9 (official).
        sparse_reg (bool): enables the training-time masked-softmax branch. Defaults to False.
        sparse_threshold (float): the branch's hard threshold ``tau`` on the softmax map.
            Defaults to 0.02 (official).
        dconv_mode (str): ``'seq1d'`` (official: ``(k, 1)`` conv over the flattened token
            sequence, one kernel per head shared over its channels) or ``'spatial2d'`` (3x3 conv
            over the ``hw_shape`` grid; extra tokens get a zero conv term). Defaults to ``'seq1d'``.
        norm_eps (float): epsilon of the three L2 normalisations. Defaults to 1e-6.
    """

    def __init__(self, in_channels: int, num_heads: int = 8, qkv_bias: bool = False,
                 attn_drop: float = 0., proj_drop: float = 0., res_kernel_size: int = 9,
                 sparse_reg: bool = False, sparse_threshold: float = 0.02,
                 dconv_mode: str = 'seq1d', norm_eps: float = 1e-6) -> None:
        super().__init__()
        if not isinstance(in_channels, int) or in_channels <= 0:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        if not isinstance(num_heads, int) or num_heads <= 0 or in_channels % num_heads:
            raise ValueError(f'num_heads must be a positive int dividing in_channels '
                             f'({in_channels}), got {num_heads!r}')
        if not isinstance(res_kernel_size, int) or res_kernel_size < 1 or \
                res_kernel_size % 2 == 0:
            raise ValueError(f'res_kernel_size must be a positive odd int, '
                             f'got {res_kernel_size!r}')
        if dconv_mode not in DCONV_MODES:
            raise ValueError(f'dconv_mode must be one of {DCONV_MODES}, got {dconv_mode!r}')
        if not 0. <= sparse_threshold < 1.:
            raise ValueError(f'sparse_threshold must be in [0, 1), got {sparse_threshold!r}')
        if not norm_eps > 0:
            raise ValueError(f'norm_eps must be > 0, got {norm_eps!r}')
        self.in_channels = in_channels
        self.num_heads = num_heads
        self.head_dim = in_channels // num_heads
        self.scale = self.head_dim**-0.5
        self.sparse_reg = bool(sparse_reg)
        self.sparse_threshold = float(sparse_threshold)
        self.dconv_mode = dconv_mode
        self.norm_eps = float(norm_eps)
        self.attn_drop = float(attn_drop)  # not applied, as in the official module

        self.qkv = nn.Linear(in_channels, in_channels * 3, bias=qkv_bias)
        self.proj = nn.Linear(in_channels, in_channels)
        self.proj_drop = nn.Dropout(proj_drop)
        if dconv_mode == 'seq1d':
            self.dconv = SequenceDepthwiseConv(num_heads, res_kernel_size)
        else:
            self.dconv = nn.Conv2d(num_heads, num_heads, 3, padding=1, groups=num_heads,
                                   bias=False)
        self._sparse_weight = 1.0
        self._sparse_weight_set = False
        self._warned = False

    # --- the switch weight (D2) -------------------------------------------------------------
    @property
    def sparse_weight(self) -> float:
        """Weight ``alpha`` in [0, 1] of the masked-softmax branch (a plain float, not state)."""
        return self._sparse_weight

    @sparse_weight.setter
    def sparse_weight(self, value: float) -> None:
        value = float(value)
        if not 0. <= value <= 1.:
            raise ValueError(f'sparse_weight must be in [0, 1], got {value!r}')
        self._sparse_weight = value
        self._sparse_weight_set = True

    def branch_active(self) -> bool:
        """Whether the next forward computes the masked-softmax branch."""
        return self.training and self.sparse_reg and self._sparse_weight > 0

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, num_heads={self.num_heads}, '
                f'dconv_mode={self.dconv_mode!r}, sparse_reg={self.sparse_reg}, '
                f'sparse_threshold={self.sparse_threshold}')

    # --- computation ------------------------------------------------------------------------
    def _split_heads(self, qkv: torch.Tensor) -> Sequence[torch.Tensor]:
        b, length, _ = qkv.shape
        return qkv.reshape(b, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def _angular(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 v_q: torch.Tensor) -> torch.Tensor:
        """Steps 2-5 of D1: ``normalize(0.5 v_q + q^ (k^T v) / pi [+ alpha S v])``.

        ``q`` has the query length, ``k``/``v`` the key length and ``v_q`` is ``v`` on the
        query tokens (``v`` itself unless the key tokens are pooled). Runs in float32 (or
        wider) with autocast off; returns the input dtype.
        """
        sparse_v = None
        if self.branch_active():
            if not self._sparse_weight_set and not self._warned:
                self._warned = True
                print_log('LinearAngularAttention: sparse_reg=True but no CastlingSwitchHook '
                          'has set sparse_weight; the masked-softmax branch keeps weight 1 for '
                          'all of training and is dropped at inference', logger='current',
                          level=30)
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            sparse_v = (attn * (attn > self.sparse_threshold)) @ v
        dtype = torch.promote_types(q.dtype, torch.float32)
        with _fp32_region(q):
            q_hat = F.normalize(q.to(dtype), dim=-1, eps=self.norm_eps)
            k_hat = F.normalize(k.to(dtype), dim=-1, eps=self.norm_eps)
            context = k_hat.transpose(-2, -1) @ v.to(dtype)
            y = 0.5 * v_q.to(dtype) + (q_hat @ context) * (1 / math.pi)
            if sparse_v is not None:
                y = y + self._sparse_weight * sparse_v.to(dtype)
            y = F.normalize(y, dim=-1, eps=self.norm_eps)
        return y.to(q.dtype)

    def _conv(self, v: torch.Tensor, hw_shape: Optional[Tuple[int, int]],
              num_extra_tokens: int) -> torch.Tensor:
        """The depthwise conv term of ``v`` ``(B, h, L, d)`` in the configured mode."""
        if self.dconv_mode == 'seq1d':
            return self.dconv(v)
        if hw_shape is None:
            raise ValueError("dconv_mode='spatial2d' needs hw_shape")
        b, h, length, d = v.shape
        hh, ww = hw_shape
        if length != num_extra_tokens + hh * ww:
            raise ValueError(f'{length} tokens do not match {num_extra_tokens} extra tokens + '
                             f'hw_shape {tuple(hw_shape)}')
        grid = v[:, :, num_extra_tokens:].reshape(b, h, hh, ww, d).permute(0, 4, 1, 2, 3)
        grid = self.dconv(grid.reshape(b * d, h, hh, ww)).reshape(b, d, h, hh * ww)
        out = grid.permute(0, 2, 3, 1)
        if num_extra_tokens:
            out = torch.cat([out.new_zeros(b, h, num_extra_tokens, d), out], dim=2)
        return out

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        b, h, length, d = y.shape
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, length, h * d)))

    def forward(self, x: torch.Tensor, hw_shape: Optional[Tuple[int, int]] = None,
                num_extra_tokens: int = 0) -> torch.Tensor:
        """Args:
            x (Tensor): tokens ``(B, L, C)``.
            hw_shape (tuple, optional): patch grid ``(H, W)``; needed by ``'spatial2d'``.
            num_extra_tokens (int): leading non-patch tokens (class token). Defaults to 0.

        Returns:
            Tensor: ``(B, L, C)``.
        """
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f'x must be (B, L, {self.in_channels}), got {tuple(x.shape)}')
        q, k, v = self._split_heads(self.qkv(x))
        y = self._angular(q, k, v, v) + self._conv(v, hw_shape, num_extra_tokens)
        return self._merge(y)


class MultiScaleLinearAngularAttention(LinearAngularAttention):
    """Linear-angular attention with MViTv2's attention pooling (spec D4).

    q, k and v are pooled by 3x3 depthwise convs over each head's channels (kernel shared across
    heads, ``pool_q``/``pool_k``/``pool_v``) and LayerNorm-ed (``norm_q``/``norm_k``/``norm_v``) as
    in mmpretrain's ``MultiScaleAttention``; ``v`` is resampled to the query grid by adaptive
    average pooling for the per-token terms (``0.5 v`` and the conv), and residual pooling adds
    the pooled query. No relative position tables are built.

    Args:
        in_channels (int): input width ``C_in``.
        out_channels (int): attention width ``C_out`` (``qkv``: ``C_in -> 3 C_out``).
        num_heads (int): heads; must divide ``out_channels``.
        qkv_bias (bool): bias of ``qkv``. Defaults to True (MViTv2).
        pool_kernel (Sequence[int]): pooling kernel. Defaults to ``(3, 3)``.
        stride_q (int): query pooling stride. Defaults to 1.
        stride_kv (int): key/value pooling stride. Defaults to 1.
        residual_pooling (bool): add the pooled query to the output. Defaults to True.
        pool_norm_eps (float): eps of ``norm_q/k/v``. Defaults to 1e-6.
        **kwargs: ``res_kernel_size``, ``sparse_reg``, ``sparse_threshold``, ``dconv_mode``,
            ``norm_eps``, ``proj_drop``, ``attn_drop`` of :class:`LinearAngularAttention`.
    """

    def __init__(self, in_channels: int, out_channels: int, num_heads: int,
                 qkv_bias: bool = True, pool_kernel: Sequence[int] = (3, 3), stride_q: int = 1,
                 stride_kv: int = 1, residual_pooling: bool = True,
                 pool_norm_eps: float = 1e-6, **kwargs) -> None:
        super().__init__(out_channels, num_heads, qkv_bias=qkv_bias, **kwargs)
        if not isinstance(in_channels, int) or in_channels <= 0:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        for name, stride in (('stride_q', stride_q), ('stride_kv', stride_kv)):
            if not isinstance(stride, int) or stride < 1:
                raise ValueError(f'{name} must be a positive int, got {stride!r}')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.qkv = nn.Linear(in_channels, out_channels * 3, bias=qkv_bias)
        d = self.head_dim
        padding = tuple(k // 2 for k in pool_kernel)
        for name, stride in (('q', stride_q), ('k', stride_kv), ('v', stride_kv)):
            self.add_module(f'pool_{name}', nn.Conv2d(d, d, tuple(pool_kernel), stride=stride,
                                                      padding=padding, groups=d, bias=False))
            self.add_module(f'norm_{name}', nn.LayerNorm(d, eps=pool_norm_eps))
        self.residual_pooling = residual_pooling

    def forward(self, x: torch.Tensor,
                hw_shape: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Args:
            x (Tensor): tokens ``(B, H*W, C_in)``.
            hw_shape (tuple): their grid ``(H, W)``.

        Returns:
            tuple: tokens ``(B, H_q*W_q, C_out)`` and the query grid ``(H_q, W_q)``.
        """
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f'x must be (B, L, {self.in_channels}), got {tuple(x.shape)}')
        q, k, v = self._split_heads(self.qkv(x))
        q, q_hw = pool_tokens(q, self.pool_q, hw_shape, self.norm_q)
        k, _ = pool_tokens(k, self.pool_k, hw_shape, self.norm_k)
        v, kv_hw = pool_tokens(v, self.pool_v, hw_shape, self.norm_v)
        v_q = v
        if kv_hw != q_hw:
            v_q, _ = pool_tokens(v, lambda t: F.adaptive_avg_pool2d(t, q_hw), kv_hw)
        y = self._angular(q, k, v, v_q) + self._conv(v_q, q_hw, 0)
        if self.residual_pooling:
            y = y + q
        return self._merge(y), q_hw
