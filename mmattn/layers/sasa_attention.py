"""Stand-alone self-attention layers of SASA (Ramachandran et al., NeurIPS 2019, arXiv 1906.05909).

* :class:`SASAAttention`: the local 7x7 attention that replaces a ResNet 3x3 convolution. Dense
  q/k/v projections, per-head concatenated half-dimension row/column relative embeddings, no
  ``1/sqrt(d)`` scale, centred window with out-of-image taps masked (``na2d`` border 'mask'),
  optional 2x2 average pool after the attention for downsampling blocks.
* :class:`SASAStem`: the spatially-aware attention stem (attention inside non-overlapping 4x4
  blocks with mixture-of-values, BN, ReLU, 4x4 max-pool).

Specification: ``specs/sasa_resnet.md`` (sections S1, S2 and S4).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.logging import print_log
from mmengine.model import BaseModule

from mmattn.ops import capturing_graph, concat_relative_embedding, na2d_split_rpe


def _check_heads(channels: int, num_heads: int) -> int:
    if num_heads < 1 or channels % num_heads != 0:
        raise ValueError(f'num_heads ({num_heads}) must divide channels ({channels})')
    head_dim = channels // num_heads
    if head_dim % 2 != 0:
        raise ValueError(f'the head dim channels/num_heads = {head_dim} must be even (half pairs '
                         'with the row table, half with the column table)')
    return head_dim


def _resize_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """Crops or zero-pads axis 1 of a (heads, k, d) offset table symmetrically around offset 0."""
    old = table.shape[1]
    if size < old:
        start = (old - size) // 2
        return table[:, start:start + size]
    pad = (size - old) // 2
    return F.pad(table, (0, 0, pad, pad))


def _gather_offsets(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = table[..., i, index[i, j]]`` (per-query logits by relative offset)."""
    return table.gather(-1, index.expand(*table.shape[:-1], index.shape[-1]))


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 stride-2 average pool, ceil mode, cells averaged over their in-image pixels only.

    Even maps of a tensor that needs no gradient on CPU are the sum of four strided slices:
    ATen's NCHW ``avg_pool2d`` takes 0.59 ms on (1, 128, 56, 56) against 0.15 ms for the
    slices (2 threads). Their backward is slower than the pool's, so anything else (odd maps,
    gradients, other devices) goes to ``F.avg_pool2d``.
    """
    # graph capture first: under a dynamic export, evaluating H % 2 would fix the maps' parity
    if (capturing_graph() or x.device.type != 'cpu' or x.shape[-2] % 2 or x.shape[-1] % 2
            or (x.requires_grad and torch.is_grad_enabled())):
        return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
    return (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] +
            x[..., 1::2, 1::2]) * 0.25


class SASAAttention(BaseModule):
    """SASA local self-attention over a ``kernel_size x kernel_size`` centred window.

    ``y_ij = sum_ab softmax_ab(q_ij . k_ab + q_ij . r_{a-i,b-j}) v_ab`` per head, with
    ``r = concat(rel_h[a-i], rel_w[b-j])`` and no scaling.

    Args:
        channels (int): input and output channels ``C``.
        num_heads (int): attention heads; ``C / num_heads`` must be even. Defaults to 8.
        kernel_size (int): odd window size. Defaults to 7.
        stride (int): 1, or 2 for a 2x2 average pool (ceil mode) after the attention.
        init_cfg (dict, optional): mmengine initialisation config.
    """

    def __init__(self, channels: int, num_heads: int = 8, kernel_size: int = 7, stride: int = 1,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd and >= 1, got {kernel_size}')
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, got {stride}')
        self.channels, self.num_heads, self.kernel_size = channels, num_heads, kernel_size
        self.head_dim = _check_heads(channels, num_heads)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.rel_h = nn.Parameter(torch.zeros(num_heads, kernel_size, self.head_dim // 2))
        self.rel_w = nn.Parameter(torch.zeros(num_heads, kernel_size, self.head_dim // 2))
        self.stride = stride
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Tables ~ N(0, d^-1/2); Kaiming-normal (fan-in, ReLU) q/k/v with W_Q scaled by d^-1/2."""
        nn.init.normal_(self.rel_h, std=self.head_dim**-0.5)
        nn.init.normal_(self.rel_w, std=self.head_dim**-0.5)
        nn.init.kaiming_normal_(self.qkv.weight, mode='fan_in', nonlinearity='relu')
        with torch.no_grad():
            self.qkv.weight[:self.channels].mul_(self.head_dim**-0.5)

    def init_weights(self) -> None:
        if self.init_cfg is None:
            self.reset_parameters()
        else:
            super().init_weights()

    def relative_embedding(self) -> torch.Tensor:
        """``rpe`` of ``na2d``: (heads, k, k, d), ``rpe[h,u,v] = concat(rel_h[h,u], rel_w[h,v])``.

        Built on every call: a table cached between calls could not see writes through
        ``.data`` (EMA hooks update their model's parameters that way, without a version bump).
        ``forward`` hands ``na2d_split_rpe`` the two tables instead, which builds this table only
        where it falls back to ``na2d`` (fp16/bf16 training, CUDA, traces).
        """
        return concat_relative_embedding(self.rel_h, self.rel_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        # (B, heads, H, W, d) views of the conv output, W-contiguous from an NCHW input and
        # channel-contiguous from a channels-last one (SASAResNet.stage_layout): na2d's CPU
        # kernels read either in place and write their output in the views' layout, so the
        # permute back is a view; gradients (NCHW, the training layout) go back to the conv
        # through one concatenation (split's backward) instead of a transposing copy.
        q, k, v = (t.view(B, self.num_heads, self.head_dim, H, W).permute(0, 1, 3, 4, 2)
                   for t in self.qkv(x).split(self.num_heads * self.head_dim, dim=1))
        out = na2d_split_rpe(q, k, v, self.kernel_size, self.rel_h, self.rel_w, scale=1.0)
        out = out.permute(0, 1, 4, 2, 3).reshape(B, C, H, W)
        return avg_pool_2x2(out) if self.stride == 2 else out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint trained with another kernel_size: crop / zero-pad its tables around 0
        for name in ('rel_h', 'rel_w'):
            key = prefix + name
            if key in state_dict and state_dict[key].dim() == 3 and \
                    state_dict[key].shape[1] != self.kernel_size:
                print_log(f'{key}: kernel size {state_dict[key].shape[1]} in the checkpoint, '
                          f'{self.kernel_size} in the model; table resized around offset 0',
                          logger='current')
                state_dict[key] = _resize_table(state_dict[key], self.kernel_size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SASAStem(BaseModule):
    """Spatially-aware attention stem: 4x4 block attention, BN, ReLU, 4x4 max-pool (stride 4).

    Args:
        out_channels (int): stem width. Defaults to 64.
        num_heads (int): attention heads. Defaults to 4.
        mixtures (int): value mixtures ``M``. Defaults to 4.
        in_channels (int): input channels. Defaults to 3.
        norm_cfg (dict): the BN config.
        init_cfg (dict, optional): mmengine initialisation config.
    """
    block = 4

    def __init__(self, out_channels: int = 64, num_heads: int = 4, mixtures: int = 4,
                 in_channels: int = 3, norm_cfg: dict = dict(type='BN'),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.out_channels, self.num_heads, self.mixtures = out_channels, num_heads, mixtures
        self.head_dim = _check_heads(out_channels, num_heads)
        span = 2 * self.block - 1  # offsets -3..3 inside a block
        self.attn = nn.Module()
        self.attn.qk = nn.Conv2d(in_channels, 2 * out_channels, 1, bias=False)
        self.attn.v = nn.Conv2d(in_channels, mixtures * out_channels, 1, bias=False)
        self.attn.rel_h = nn.Parameter(torch.zeros(num_heads, span, self.head_dim // 2))
        self.attn.rel_w = nn.Parameter(torch.zeros(num_heads, span, self.head_dim // 2))
        self.attn.emb_row = nn.Parameter(torch.zeros(self.block, out_channels))
        self.attn.emb_col = nn.Parameter(torch.zeros(self.block, out_channels))
        self.attn.emb_mix = nn.Parameter(torch.zeros(mixtures, out_channels))
        self.bn = build_norm_layer(norm_cfg, out_channels)[1]
        offsets = torch.arange(self.block)
        # offset index (key - query + 3) of every (query, key) pair of a block, row and column
        rows, cols = offsets.repeat_interleave(self.block), offsets.repeat(self.block)
        self.register_buffer('row_index', rows[None, :] - rows[:, None] + self.block - 1,
                             persistent=False)
        self.register_buffer('col_index', cols[None, :] - cols[:, None] + self.block - 1,
                             persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d = self.head_dim
        for t in (self.attn.rel_h, self.attn.rel_w):
            nn.init.normal_(t, std=d**-0.5)
        for t in (self.attn.emb_row, self.attn.emb_col, self.attn.emb_mix):
            nn.init.normal_(t, std=self.out_channels**-0.5)
        nn.init.kaiming_normal_(self.attn.qk.weight, mode='fan_in', nonlinearity='relu')
        nn.init.kaiming_normal_(self.attn.v.weight, mode='fan_in', nonlinearity='relu')
        with torch.no_grad():
            self.attn.qk.weight[:self.out_channels].mul_(d**-0.5)

    def init_weights(self) -> None:
        if self.init_cfg is None:
            self.reset_parameters()
        else:
            super().init_weights()

    def mixture_weights(self) -> torch.Tensor:
        """``p(a, b, m)``: (4, 4, M), a softmax over the mixtures, shared by all heads."""
        pos = self.attn.emb_row[:, None, :] + self.attn.emb_col[None, :, :]  # (4, 4, C)
        return torch.einsum('abc,mc->abm', pos, self.attn.emb_mix).softmax(-1)

    def _to_blocks(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        """(B, heads*d, Hp, Wp) -> (B, heads, Hb, Wb, 16, d)."""
        B, C, Hp, Wp = t.shape
        s = self.block
        t = t.view(B, heads, C // heads, Hp // s, s, Wp // s, s)
        return t.permute(0, 1, 3, 5, 4, 6, 2).reshape(B, heads, Hp // s, Wp // s, s * s, C // heads)

    def _from_blocks(self, t: torch.Tensor) -> torch.Tensor:
        B, heads, Hb, Wb, _, d = t.shape
        s = self.block
        t = t.view(B, heads, Hb, Wb, s, s, d).permute(0, 1, 6, 2, 4, 3, 5)
        return t.reshape(B, heads * d, Hb * s, Wb * s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        s, C, heads, d = self.block, self.out_channels, self.num_heads, self.head_dim
        pad_h, pad_w = (-H) % s, (-W) % s
        x = F.pad(x, (0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        valid = torch.zeros(1, 1, Hp, Wp, dtype=torch.bool, device=x.device)
        valid[..., :H, :W] = True

        q, k = self.attn.qk(x).split(C, dim=1)
        # spatially-aware values: mixture weights by the pixel's position inside its block
        values = self.attn.v(x).view(B, self.mixtures, C, Hp // s, s, Wp // s, s)
        p = self.mixture_weights().to(values.dtype)  # (a, b, m)
        v = torch.einsum('bmcyaxw,awm->bcyaxw', values, p).reshape(B, C, Hp, Wp)

        qb, kb, vb = (self._to_blocks(t, heads) for t in (q, k, v))  # (B, h, Hb, Wb, 16, d)
        logits = qb @ kb.transpose(-1, -2)  # no 1/sqrt(d) scaling (SASA)
        half = d // 2
        rel_h = qb[..., :half] @ self.attn.rel_h.transpose(-1, -2)[:, None, None]  # (.., 16, 7)
        rel_w = qb[..., half:] @ self.attn.rel_w.transpose(-1, -2)[:, None, None]
        logits = logits + _gather_offsets(rel_h, self.row_index) + _gather_offsets(
            rel_w, self.col_index)
        key_valid = self._to_blocks(valid, 1)[..., 0]  # (1, 1, Hb, Wb, 16)
        logits = logits.masked_fill(~key_valid[..., None, :], float('-inf'))
        out = self._from_blocks(logits.softmax(-1) @ vb)

        # BN on the image's pixels only (its training statistics never see the padding), and
        # -inf padding so that padded pixels never win the max-pool
        out = F.relu(self.bn(out[..., :H, :W]))
        out = F.pad(out, (0, pad_w, 0, pad_h), value=float('-inf'))
        return F.max_pool2d(out, s, s)
