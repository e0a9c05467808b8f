"""Castling-MViTv2: MViTv2 hierarchy with multi-scale linear-angular attention.

Paper: H. You et al., "Castling-ViT: Compressing Self-Attention via Switching Towards
Linear-Angular Attention During Vision Transformer Inference", arXiv 2211.10526 (CVPR 2023);
base network: Y. Li et al., "MViTv2: Improved Multiscale Vision Transformers for Classification
and Detection", arXiv 2112.01526. Official Castling code (attention module only):
github.com/GATECH-EIC/Castling-ViT, commit c7b75c1b. Specification: ``specs/castling_vit.md`` (D4).

The layout reproduces mmpretrain's ``MViT`` (tiny/small/base) with the attention replaced by
:class:`mmattn.layers.MultiScaleLinearAngularAttention` and without the decomposed relative
position tables (``rel_pos_h``/``rel_pos_w``); all other parameter names are mmpretrain's
(``patch_embed.projection``, ``blocks.i.norm1/attn.qkv/attn.pool_q/attn.norm_q/.../attn.proj/
norm2/mlp.fc1/mlp.fc2/proj``, ``norm0..3``).
"""
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule

from mmattn.layers import Mlp, MultiScaleLinearAngularAttention
from mmattn.layers.linear_angular_attention import pool_tokens

from ._checks import lookup_arch
from .castling_vit import PatchEmbed, check_attn_args


class CastlingMViTBlock(nn.Module):
    """MViTv2 block: ``skip(norm1(x)) + attn(norm1(x))`` then ``x + mlp(norm2(x))``; the skip is
    ``proj`` (channel change) and a max-pool (query stride), as mmpretrain's ``MultiScaleBlock``
    with ``dim_mul_in_attention=True``."""

    def __init__(self, in_dims: int, out_dims: int, num_heads: int, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, drop_path: float = 0.,
                 pool_kernel: Sequence[int] = (3, 3), stride_q: int = 1, stride_kv: int = 1,
                 residual_pooling: bool = True, with_cp: bool = False, **attn_kwargs) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(in_dims, eps=1e-6)
        self.attn = MultiScaleLinearAngularAttention(
            in_dims, out_dims, num_heads, qkv_bias=qkv_bias, pool_kernel=pool_kernel,
            stride_q=stride_q, stride_kv=stride_kv, residual_pooling=residual_pooling,
            **attn_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(out_dims, eps=1e-6)
        self.mlp = Mlp(out_dims, int(out_dims * mlp_ratio))
        self.proj = nn.Linear(in_dims, out_dims) if in_dims != out_dims else None
        self.pool_skip = nn.MaxPool2d(stride_q + 1, stride_q, (stride_q + 1) // 2) \
            if stride_q > 1 else None

    def _inner(self, x: torch.Tensor, hw_shape: Tuple[int, int]):
        x_norm = self.norm1(x)
        x_attn, out_hw = self.attn(x_norm, hw_shape)
        skip = self.proj(x_norm) if self.proj is not None else x
        if self.pool_skip is not None:
            skip, _ = pool_tokens(skip, self.pool_skip, hw_shape)
        x = skip + self.drop_path(x_attn)
        return x + self.drop_path(self.mlp(self.norm2(x))), out_hw

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner, x, hw_shape, use_reentrant=False)
        return self._inner(x, hw_shape)


class CastlingMViT(BaseModule):
    """Castling-MViTv2-T/S/B backbone (mmpretrain ``MViT`` layout without relative positions).

    Outputs ``norm{s}(stage s)`` as NCHW maps with ``embed_dims * 2**s`` channels at strides
    4, 8, 16, 32 (each stride-2 step rounds up), for ``s`` in ``out_scales``.

    Args:
        arch (str | dict): ``'tiny'``/``'t'``, ``'small'``/``'s'``, ``'base'``/``'b'`` or a dict
            with ``embed_dims``, ``num_layers``, ``num_heads`` (of the first stage) and
            ``downscale_indices`` (3 increasing layer indices). Defaults to ``'tiny'``.
        in_channels (int): image channels. Defaults to 3.
        out_scales (int | Sequence[int]): stages to return (0-3, negative from the end).
            Defaults to -1 (the last).
        drop_path_rate (float): stochastic depth, linear from 0 over the blocks. Defaults to 0.
        pool_kernel (Sequence[int]): q/k/v pooling kernel. Defaults to ``(3, 3)``.
        dim_mul (int): channel factor at each downscale block. Defaults to 2.
        head_mul (int): head factor at each downscale block. Defaults to 2.
        adaptive_kv_stride (int): kv pooling stride of the first stage, halved (floor 1) at each
            downscale. Defaults to 4.
        residual_pooling (bool): add the pooled query to the attention output. Defaults to True.
        mlp_ratio (float): MLP hidden width over the block width. Defaults to 4.
        qkv_bias (bool): bias of ``qkv``. Defaults to True.
        frozen_stages (int): ``n >= 0`` freezes the patch embedding and, for ``s < n``, the
            blocks of stage ``s`` and ``norm{s}`` (no MViT convention exists in mmpretrain; this
            is the Swin one). Defaults to -1.
        dconv_mode, sparse_reg, sparse_threshold, res_kernel_size, norm_eps: forwarded to every
            attention (see :class:`mmattn.layers.LinearAngularAttention`).
        with_cp (bool): activation checkpointing per block. Defaults to False.
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=...,
            prefix='backbone.')``.
    """
    arch_zoo: Dict[str, dict] = {
        **dict.fromkeys(['t', 'tiny'], dict(embed_dims=96, num_layers=10, num_heads=1,
                                            downscale_indices=(1, 3, 8))),
        **dict.fromkeys(['s', 'small'], dict(embed_dims=96, num_layers=16, num_heads=1,
                                             downscale_indices=(1, 3, 14))),
        **dict.fromkeys(['b', 'base'], dict(embed_dims=96, num_layers=24, num_heads=1,
                                            downscale_indices=(2, 5, 21))),
    }
    num_scales = 4

    def __init__(self, arch: Union[str, dict] = 'tiny', in_channels: int = 3,
                 out_scales: Union[int, Sequence[int]] = -1, drop_path_rate: float = 0.,
                 pool_kernel: Sequence[int] = (3, 3), dim_mul: int = 2, head_mul: int = 2,
                 adaptive_kv_stride: int = 4, residual_pooling: bool = True,
                 mlp_ratio: float = 4., qkv_bias: bool = True, frozen_stages: int = -1,
                 dconv_mode: str = 'seq1d', sparse_reg: bool = False,
                 sparse_threshold: float = 0.02, res_kernel_size: int = 9,
                 norm_eps: float = 1e-6, with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = arch = self._parse_arch(arch)
        self.embed_dims, self.num_layers = arch['embed_dims'], arch['num_layers']
        self.downscale_indices = tuple(arch['downscale_indices'])
        scales = (out_scales, ) if isinstance(out_scales, int) else tuple(out_scales)
        if not scales or any(not isinstance(s, int) or not -4 <= s < 4 for s in scales):
            raise ValueError(f'out_scales must be a non-empty set of stage indices in [-4, 3], '
                             f'got {out_scales!r}')
        self.out_scales = tuple(sorted({s % 4 for s in scales}))
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_scales:
            raise ValueError(f'frozen_stages must be an int in [-1, {self.num_scales}], '
                             f'got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        attn_kwargs = check_attn_args(dconv_mode, sparse_reg, sparse_threshold,
                                      res_kernel_size, norm_eps)

        self.patch_embed = PatchEmbed(in_channels, self.embed_dims, 7, 4, padding=3)
        rates = [drop_path_rate * i / max(self.num_layers - 1, 1) for i in range(self.num_layers)]
        self.blocks = nn.ModuleList()
        self.stage_of: List[int] = []
        dims, heads, stride_kv, stage = self.embed_dims, arch['num_heads'], adaptive_kv_stride, 0
        for i in range(self.num_layers):
            stride_q, out_dims = 1, dims
            if i in self.downscale_indices:
                heads *= head_mul
                stride_q, stride_kv, out_dims, stage = 2, max(stride_kv // 2, 1), dims * dim_mul, \
                    stage + 1
            self.blocks.append(CastlingMViTBlock(
                dims, out_dims, heads, mlp_ratio, qkv_bias, rates[i], pool_kernel, stride_q,
                stride_kv, residual_pooling, with_cp, **attn_kwargs))
            self.stage_of.append(stage)
            dims = out_dims
        self.num_features = tuple(self.embed_dims * dim_mul**s for s in range(self.num_scales))
        # the last block of each stage emits that stage's output
        self.stage_ends = {i: self.stage_of[i] for i in range(self.num_layers)
                           if i == self.num_layers - 1 or self.stage_of[i + 1] != self.stage_of[i]}
        for s in self.out_scales:
            self.add_module(f'norm{s}', nn.LayerNorm(self.num_features[s], eps=1e-6))
        self._freeze_stages()

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            return lookup_arch(arch, cls.arch_zoo, ())
        arch = lookup_arch(arch, cls.arch_zoo,
                           ('embed_dims', 'num_layers', 'num_heads', 'downscale_indices'))
        idx = tuple(arch['downscale_indices'])
        if len(idx) != cls.num_scales - 1 or list(idx) != sorted(set(idx)) or \
                not 0 < idx[0] or idx[-1] >= arch['num_layers']:
            raise ValueError(f"arch['downscale_indices'] needs 3 increasing layer indices in "
                             f"[1, num_layers - 1], got {arch['downscale_indices']!r}")
        return dict(arch)

    def init_weights(self) -> None:
        """mmpretrain's MViTv2 classifier scheme: Linear truncated normal (std 0.02, bias 0),
        LayerNorm (1, 0), convs at the PyTorch default; ``Pretrained`` loads weights instead."""
        super().init_weights()
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> Set[str]:
        """No position tables exist; norms and biases are exempted through ``paramwise_cfg``."""
        return set()

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        modules = [self.patch_embed]
        modules += [b for b, s in zip(self.blocks, self.stage_of) if s < self.frozen_stages]
        modules += [getattr(self, f'norm{s}') for s in self.out_scales if s < self.frozen_stages]
        for m in modules:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'CastlingMViT':
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x, hw = self.patch_embed(x)
        outs = []
        for i, block in enumerate(self.blocks):
            x, hw = block(x, hw)
            s = self.stage_ends.get(i)
            if s is not None and s in self.out_scales:
                # as mmpretrain's MViT, the normalised map also feeds the next stage
                x = getattr(self, f'norm{s}')(x)
                outs.append(x.transpose(1, 2).reshape(x.shape[0], -1, *hw).contiguous())
        return tuple(outs)
