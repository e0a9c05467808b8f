"""Castling-DeiT: plain ViT (DeiT layout) with linear-angular attention.

Paper: H. You et al., "Castling-ViT: Compressing Self-Attention via Switching Towards
Linear-Angular Attention During Vision Transformer Inference", arXiv 2211.10526 (CVPR 2023).
Official code (attention module only): github.com/GATECH-EIC/Castling-ViT, commit c7b75c1b.
Specification: ``specs/castling_vit.md`` (D3).

The layout reproduces mmpretrain's ``VisionTransformer`` (DeiT-T/S/B) with every attention
replaced by :class:`mmattn.layers.LinearAngularAttention`; parameter names outside
``layers.i.attn.dconv`` are mmpretrain's (``patch_embed.projection``, ``cls_token``,
``pos_embed``, ``layers.i.ln1/attn.qkv/attn.proj/ln2/ffn.layers.0.0/ffn.layers.1``, final
``ln1``), so a softmax DeiT checkpoint of mmpretrain initialises everything but the conv taps
(``tools/model_converters/softmax2castling.py``). The CastlingMViT layout is in
:mod:`mmattn.backbones.castling_mvit`.
"""
import math
from typing import Dict, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.logging import print_log
from mmengine.model import BaseModule

from mmattn.layers import LinearAngularAttention
from mmattn.layers.blocks import fused_mlp

from ._checks import lookup_arch


def resize_pos_embed(pos_embed: torch.Tensor, src_shape: Tuple[int, int],
                     dst_shape: Tuple[int, int], mode: str = 'bicubic',
                     num_extra_tokens: int = 1) -> torch.Tensor:
    """Resizes a ``(1, extra + Hs*Ws, C)`` position table to ``(1, extra + Hd*Wd, C)``
    (the patch part interpolated as an image, the extra tokens' rows kept; mmpretrain's rule)."""
    if tuple(src_shape) == tuple(dst_shape):
        return pos_embed
    extra, grid = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    c = grid.shape[-1]
    grid = grid.reshape(1, src_shape[0], src_shape[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(dst_shape), mode=mode, align_corners=False)
    grid = grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)
    return torch.cat([extra, grid], dim=1)


class PatchEmbed(nn.Module):
    """``projection`` conv (mmcv's ``PatchEmbed`` key name); ``padding='corner'`` zero-pads the
    right/bottom to a multiple of the stride first, an int pads symmetrically in the conv."""

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int, stride: int,
                 padding: Union[int, str] = 'corner') -> None:
        super().__init__()
        self.stride, self.corner = stride, padding == 'corner'
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size, stride,
                                    padding=0 if self.corner else padding)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        if self.corner:
            s = self.stride
            x = F.pad(x, (0, (-x.shape[-1]) % s, 0, (-x.shape[-2]) % s))
        x = self.projection(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class FFN(nn.Module):
    """mmcv's two-layer FFN key layout: ``layers.0.0`` (Linear), GELU, ``layers.1`` (Linear).
    CPU inference runs :func:`mmattn.layers.blocks.fused_mlp` where nothing can tell it from
    the modules."""

    def __init__(self, embed_dims: int, feedforward_channels: int, drop: float = 0.) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.GELU(),
                          nn.Dropout(drop)),
            nn.Linear(feedforward_channels, embed_dims), nn.Dropout(drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TorchScript skips this block; a rebuilt self.layers runs as it is
        if not torch.jit.is_scripting() and len(self.layers) == 3 and isinstance(
                self.layers[0], nn.Sequential) and len(self.layers[0]) == 3:
            first, fc2, drop2 = self.layers
            fc1, act, drop1 = first
            out = fused_mlp(x, fc1, act, fc2, (drop1, drop2), containers=(self.layers, first))
            if out is not None:
                return out
        return self.layers(x)


class CastlingEncoderLayer(nn.Module):
    """Pre-norm ViT layer: ``x + attn(ln1(x))`` then ``x + ffn(ln2(x))`` (mmpretrain names)."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 drop_rate: float = 0., drop_path_rate: float = 0., qkv_bias: bool = True,
                 with_cp: bool = False, **attn_kwargs) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.ln1 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.attn = LinearAngularAttention(embed_dims, num_heads, qkv_bias=qkv_bias,
                                           proj_drop=drop_rate, **attn_kwargs)
        self.ln2 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.ffn = FFN(embed_dims, feedforward_channels, drop_rate)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _inner(self, x: torch.Tensor, hw_shape: Tuple[int, int],
               num_extra_tokens: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.ln1(x), hw_shape, num_extra_tokens))
        return x + self.drop_path(self.ffn(self.ln2(x)))

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int],
                num_extra_tokens: int = 1) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner, x, hw_shape, num_extra_tokens,
                                 use_reentrant=False)
        return self._inner(x, hw_shape, num_extra_tokens)


def check_attn_args(dconv_mode: str, sparse_reg: bool, sparse_threshold: float,
                    res_kernel_size: int, norm_eps: float) -> dict:
    """Validates the attention options shared by both Castling backbones; returns them."""
    if not isinstance(sparse_reg, bool):
        raise TypeError(f'sparse_reg must be a bool, got {sparse_reg!r}')
    return dict(dconv_mode=dconv_mode, sparse_reg=sparse_reg,
                sparse_threshold=sparse_threshold, res_kernel_size=res_kernel_size,
                norm_eps=norm_eps)


class CastlingViT(BaseModule):
    """Castling-DeiT-T/S/B backbone (mmpretrain ``VisionTransformer`` layout, D3).

    Args:
        arch (str | dict): ``'deit-tiny'``/``'deit-t'``, ``'deit-small'``/``'deit-s'``,
            ``'deit-base'``/``'deit-b'`` or a dict with ``embed_dims``, ``num_layers``,
            ``num_heads``, ``feedforward_channels``. Defaults to ``'deit-tiny'``.
        img_size (int | tuple): size the position table is built for. Defaults to 224.
        patch_size (int): patch embedding kernel and stride. Defaults to 16.
        in_channels (int): image channels. Defaults to 3.
        out_indices (int | Sequence[int]): layers to return (negative from the end).
            Defaults to -1.
        drop_rate (float): dropout after the position embedding, projections and FFN layers.
        drop_path_rate (float): stochastic depth, linear from 0 over the layers. Defaults to 0.
        qkv_bias (bool): bias of ``qkv``. Defaults to True (DeiT).
        final_norm (bool): ``ln1`` after the last layer. Defaults to True.
        out_type (str): ``'cls_token'`` (B, C), ``'featmap'`` (B, C, H, W), ``'avg_featmap'``
            (B, C; through ``ln2``) or ``'raw'`` (B, L, C). Defaults to ``'cls_token'``.
        with_cls_token (bool): prepend the class token. Defaults to True.
        frozen_stages (int): ``n > 0`` freezes the patch embedding, position table, class token
            and layers ``< n`` (and ``ln1`` when ``n`` is the depth); mmpretrain's semantics.
        interpolate_mode (str): position-table resizing mode. Defaults to ``'bicubic'``.
        dconv_mode (str): ``'seq1d'`` (official) or ``'spatial2d'``. Defaults to ``'seq1d'``.
        sparse_reg (bool): training-time masked-softmax branch. Defaults to False.
        sparse_threshold (float): branch threshold. Defaults to 0.02.
        res_kernel_size (int): taps of the ``'seq1d'`` conv. Defaults to 9.
        norm_eps (float): eps of the attention's L2 normalisations. Defaults to 1e-6.
        with_cp (bool): activation checkpointing per layer. Defaults to False.
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=...,
            prefix='backbone.')``.
    """
    arch_zoo: Dict[str, dict] = {
        **dict.fromkeys(['deit-t', 'deit-tiny'], dict(embed_dims=192, num_layers=12,
                                                      num_heads=3, feedforward_channels=768)),
        **dict.fromkeys(['deit-s', 'deit-small'], dict(embed_dims=384, num_layers=12,
                                                       num_heads=6, feedforward_channels=1536)),
        **dict.fromkeys(['deit-b', 'deit-base'], dict(embed_dims=768, num_layers=12,
                                                      num_heads=12, feedforward_channels=3072)),
    }
    OUT_TYPES = ('raw', 'cls_token', 'featmap', 'avg_featmap')

    def __init__(self, arch: Union[str, dict] = 'deit-tiny', img_size: Union[int, tuple] = 224,
                 patch_size: int = 16, in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1, drop_rate: float = 0.,
                 drop_path_rate: float = 0., qkv_bias: bool = True, final_norm: bool = True,
                 out_type: str = 'cls_token', with_cls_token: bool = True,
                 frozen_stages: int = -1, interpolate_mode: str = 'bicubic',
                 dconv_mode: str = 'seq1d', sparse_reg: bool = False,
                 sparse_threshold: float = 0.02, res_kernel_size: int = 9,
                 norm_eps: float = 1e-6, with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = arch = self._parse_arch(arch)
        self.embed_dims, self.num_layers = arch['embed_dims'], arch['num_layers']
        if out_type not in self.OUT_TYPES:
            raise ValueError(f'out_type must be one of {self.OUT_TYPES}, got {out_type!r}')
        if out_type == 'cls_token' and not with_cls_token:
            raise ValueError("with_cls_token must be True when out_type='cls_token'")
        self.out_type, self.with_cls_token = out_type, with_cls_token
        self.num_extra_tokens = 1 if with_cls_token else 0
        self.out_indices = self._check_out_indices(out_indices, self.num_layers)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_layers:
            raise ValueError(f'frozen_stages must be an int in [-1, {self.num_layers}], '
                             f'got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        attn_kwargs = check_attn_args(dconv_mode, sparse_reg, sparse_threshold,
                                      res_kernel_size, norm_eps)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.interpolate_mode = interpolate_mode

        self.patch_embed = PatchEmbed(in_channels, self.embed_dims, patch_size, patch_size)
        self.patch_resolution = tuple(math.ceil(s / patch_size) for s in img_size)
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims)) \
            if with_cls_token else None
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + self.num_extra_tokens, self.embed_dims))
        self._register_load_state_dict_pre_hook(self._prepare_pos_embed)
        self.drop_after_pos = nn.Dropout(drop_rate)

        rates = [drop_path_rate * i / max(self.num_layers - 1, 1) for i in range(self.num_layers)]
        self.layers = nn.ModuleList([
            CastlingEncoderLayer(self.embed_dims, arch['num_heads'],
                                 arch['feedforward_channels'], drop_rate, rate, qkv_bias,
                                 with_cp, **attn_kwargs) for rate in rates])
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = nn.LayerNorm(self.embed_dims, eps=1e-6)
        if out_type == 'avg_featmap':
            self.ln2 = nn.LayerNorm(self.embed_dims, eps=1e-6)
        self._freeze_stages()

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            return lookup_arch(arch, cls.arch_zoo, ())
        arch = lookup_arch(arch, cls.arch_zoo,
                           ('embed_dims', 'num_layers', 'num_heads', 'feedforward_channels'))
        if arch['embed_dims'] % arch['num_heads']:
            raise ValueError(f"arch['num_heads'] ({arch['num_heads']}) must divide "
                             f"arch['embed_dims'] ({arch['embed_dims']})")
        return dict(arch)

    @staticmethod
    def _check_out_indices(out_indices: Union[int, Sequence[int]],
                           num_layers: int) -> Tuple[int, ...]:
        indices = (out_indices, ) if isinstance(out_indices, int) else tuple(out_indices)
        if not indices or any(not isinstance(i, int) or not -num_layers <= i < num_layers
                              for i in indices):
            raise ValueError(f'out_indices must be a non-empty set of layer indices in '
                             f'[-{num_layers}, {num_layers - 1}], got {out_indices!r}')
        return tuple(sorted({i % num_layers for i in indices}))

    def _prepare_pos_embed(self, state_dict, prefix, *args, **kwargs) -> None:
        """Resizes a checkpoint's position table to this model's (and drops its class-token row
        when this model has none)."""
        name = prefix + 'pos_embed'
        if name not in state_dict:
            return
        table = state_dict[name]
        if not self.with_cls_token and table.shape[1] == self.pos_embed.shape[1] + 1:
            table = table[:, 1:]
        if table.shape != self.pos_embed.shape:
            side = int(math.sqrt(table.shape[1] - self.num_extra_tokens))
            print_log(f'Resize the pos_embed shape from {tuple(table.shape)} to '
                      f'{tuple(self.pos_embed.shape)}.', logger='current')
            table = resize_pos_embed(table, (side, side), self.patch_resolution,
                                     self.interpolate_mode, self.num_extra_tokens)
        state_dict[name] = table

    def init_weights(self) -> None:
        """mmpretrain's DeiT scheme: Linear truncated normal (std 0.02, bias 0), FFN Linear
        Xavier-uniform (bias N(0, 1e-6)), LayerNorm (1, 0), position table truncated normal
        (0.02), class token 0, conv taps at the PyTorch default; a ``Pretrained`` ``init_cfg``
        loads weights instead."""
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            super().init_weights()
            return
        super().init_weights()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for layer in self.layers:
            for m in layer.ffn.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.normal_(m.bias, std=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=.02)

    def no_weight_decay(self) -> Set[str]:
        """``pos_embed`` and ``cls_token`` (DeiT recipes exempt them from weight decay)."""
        return {'pos_embed', 'cls_token'} if self.with_cls_token else {'pos_embed'}

    def _freeze_stages(self) -> None:
        if self.frozen_stages <= 0:
            return
        params = [self.pos_embed] + ([self.cls_token] if self.cls_token is not None else [])
        modules = [self.patch_embed, self.drop_after_pos]
        modules += [self.layers[i] for i in range(self.frozen_stages)]
        if self.frozen_stages == self.num_layers:
            modules += [getattr(self, n) for n in ('ln1', 'ln2') if hasattr(self, n)]
        for m in modules:
            m.eval()
            params += list(m.parameters())
        for p in params:
            p.requires_grad = False

    def train(self, mode: bool = True) -> 'CastlingViT':
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        b = x.shape[0]
        x, hw = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + resize_pos_embed(self.pos_embed, self.patch_resolution, hw,
                                 self.interpolate_mode, self.num_extra_tokens)
        x = self.drop_after_pos(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, hw, self.num_extra_tokens)
            if i == self.num_layers - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                outs.append(self._format_output(x, hw))
        return tuple(outs)

    def _format_output(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        if self.out_type == 'raw':
            return x
        if self.out_type == 'cls_token':
            return x[:, 0]
        patches = x[:, self.num_extra_tokens:]
        if self.out_type == 'featmap':
            return patches.reshape(x.shape[0], *hw, -1).permute(0, 3, 1, 2).contiguous()
        return self.ln2(patches.mean(dim=1))
