"""ELSA-Swin: Swin Transformer with enhanced local self-attention in stages 0-2.

Paper: J. Zhou, P. Wang, F. Wang, Q. Liu, H. Li, R. Jin, "ELSA: Enhanced Local Self-Attention for
Vision Transformer", arXiv 2112.12786 (IJCV 2023: "What Limits the Performance of Local
Self-attention?"). Official code: github.com/damo-cv/ELSA (MIT), commit f3b7ac7a. Specification:
``specs/elsa_swin.md``.

Module names follow the official layout (``patch_embed.proj``, ``layers.i.blocks.j``,
``layers.i.downsample``, ELSA's ``pre_proj`` / ``attn.0`` / ``attn.2`` / ``ghost_head`` /
``post_proj``); the last stage uses :class:`mmattn.layers.WindowMSA` (``qkv``, ``proj``,
``relative_position_bias_table``). ``tools/model_converters/elsa2mmattn.py`` converts official
checkpoints.
"""
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmattn.layers import ELSAAttention, ELSABlock, SwinBlock, WindowMSA

from ._checks import check_stage_args, lookup_arch


class PatchEmbed(nn.Module):
    """``patch x patch`` stride-``patch`` convolution and LayerNorm; pads right/bottom first."""

    def __init__(self, in_channels: int, dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        p = self.patch_size
        h, w = x.shape[-2:]  # pad to ceil(size / p) * p (see shifted_window_attention)
        x = F.pad(x, (0, (w + p - 1) // p * p - w, 0, (h + p - 1) // p * p - h))
        x = self.proj(x)
        hw_shape = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw_shape


class PatchMerging(nn.Module):
    """Official ELSA/Swin merging: ``cat[x(0::2,0::2), x(1::2,0::2), x(0::2,1::2),
    x(1::2,1::2)]``, LayerNorm(4C), Linear 4C -> 2C without bias; odd sizes are zero-padded."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor,
                hw_shape: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        b, _, c = x.shape
        h, w = hw_shape
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, (w + 1) // 2 * 2 - w, 0, (h + 1) // 2 * 2 - h))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        out_hw = (x.shape[1], x.shape[2])
        return self.reduction(self.norm(x.view(b, -1, 4 * c))), out_hw


class ELSASwinStage(nn.Module):
    """``blocks`` (ELSA or Swin blocks) followed by an optional ``downsample``."""

    def __init__(self, blocks: List[nn.Module], downsample: Optional[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]):
        """Returns the stage output (before downsampling), its size, and the downsampled map."""
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.downsample is None:
            return x, hw_shape, x, hw_shape
        down, down_hw = self.downsample(x, hw_shape)
        return x, hw_shape, down, down_hw


class ELSASwin(BaseModule):
    """ELSA-Swin-T/S/B backbone for classification and dense prediction.

    Stages 0-2 use ELSA blocks (7x7 Hadamard attention with ghost head, zero padding, no windows);
    stage 3 uses Swin blocks with (shifted) 7x7 windows. Outputs are NCHW maps of stride
    4, 8, 16, 32 with ``E * 2**i`` channels, each through its own LayerNorm ``norm{i}``.

    Args:
        arch (str | dict): ``'t'``/``'tiny'``, ``'s'``/``'small'``, ``'b'``/``'base'`` or a dict with
            ``embed_dims``, ``depths``, ``num_heads``, ``group_width`` (and optionally ``dim_qk``,
            one value per ELSA stage). Defaults to ``'t'``.
        in_channels (int): image channels. Defaults to 3.
        patch_size (int): patch embedding stride. Defaults to 4.
        kernel_size (int): ELSA window. Defaults to 7.
        window_size (int): Swin window of the last stage. Defaults to 7.
        mlp_ratio (float): MLP hidden width over the stage width. Defaults to 4.
        qkv_bias (bool): biases of ``pre_proj`` and ``qkv``. Defaults to True.
        qk_scale (float, optional): logit scale of the last stage; None gives ``head_dim**-0.5``
            (ELSA stages always use scale 1, as the official model).
        drop_rate (float): dropout after projections and MLP layers. Defaults to 0.
        attn_drop_rate (float): attention dropout. Defaults to 0.
        drop_path_rate (float): stochastic depth, linear from 0 over all blocks. Defaults to 0.1.
        lam (int): ghost-head exponent of ``O``. Defaults to 0 (official ELSA-Swin).
        gamma (float): ghost-head weight of ``S``. Defaults to 1.
        pad_small_map (bool): keep the last stage's shift on maps no larger than the window
            (official dense-prediction behaviour). Classification configs set False (official
            classifier at 224: no shift on the 7x7 map). Defaults to True.
        out_indices (Sequence[int]): stages to return. Defaults to ``(0, 1, 2, 3)``.
        frozen_stages (int): -1 freezes nothing; ``n >= 0`` freezes the patch embedding and, for
            ``i < n``, stage ``i`` and ``norm{i}`` (stock mmdet/mmseg Swin convention).
        with_cp (bool): activation checkpointing of every block. Defaults to False.
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
    """
    arch_zoo: Dict[str, dict] = {
        **dict.fromkeys(['t', 'tiny'], dict(embed_dims=96, depths=(2, 2, 6, 2),
                                            num_heads=(3, 6, 12, 24), group_width=4)),
        **dict.fromkeys(['s', 'small'], dict(embed_dims=96, depths=(2, 2, 18, 2),
                                             num_heads=(3, 6, 12, 24), group_width=8)),
        **dict.fromkeys(['b', 'base'], dict(embed_dims=128, depths=(2, 2, 18, 2),
                                            num_heads=(4, 8, 16, 32), group_width=8)),
    }
    num_stages = 4

    def __init__(self, arch: Union[str, dict] = 't', in_channels: int = 3, patch_size: int = 4,
                 kernel_size: int = 7, window_size: int = 7, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0.1, lam: int = 0,
                 gamma: float = 1., pad_small_map: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 with_cp: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        out_indices = check_stage_args(out_indices, frozen_stages)
        self.arch, self.out_indices, self.frozen_stages = arch, out_indices, frozen_stages
        embed, depths, heads = arch['embed_dims'], arch['depths'], arch['num_heads']
        dim_qk = arch.get('dim_qk') or (None, ) * 3

        self.patch_embed = PatchEmbed(in_channels, embed, patch_size)
        self.drop_after_pos = nn.Dropout(drop_rate)
        total = sum(depths)  # stochastic depth: linear from 0 to drop_path_rate over all blocks
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for i in range(self.num_stages):
            dim = embed * 2**i
            stage_rates = rates[sum(depths[:i]):sum(depths[:i + 1])]
            if i < self.num_stages - 1:
                blocks = [ELSABlock(dim, heads[i], mlp_ratio, drop_rate, rate, with_cp,
                                    kernel_size=kernel_size, dim_qk=dim_qk[i], qkv_bias=qkv_bias,
                                    qk_scale=1., attn_drop=attn_drop_rate,
                                    group_width=arch['group_width'], lam=lam, gamma=gamma)
                          for rate in stage_rates]
                downsample = PatchMerging(dim)
            else:
                blocks = [SwinBlock(dim, heads[i], window_size, shift=j % 2 == 1,
                                    pad_small_map=pad_small_map, mlp_ratio=mlp_ratio,
                                    qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                                    attn_drop=attn_drop_rate, drop_path=rate, with_cp=with_cp)
                          for j, rate in enumerate(stage_rates)]
                downsample = None
            self.layers.append(ELSASwinStage(blocks, downsample))
        self.num_features = tuple(embed * 2**i for i in range(self.num_stages))
        for i in out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))
        self._freeze_stages()

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            return lookup_arch(arch, cls.arch_zoo, ())
        arch = lookup_arch(arch, cls.arch_zoo, ('embed_dims', 'depths', 'num_heads', 'group_width'),
                           ('dim_qk', ))
        for key in ('depths', 'num_heads'):
            if len(arch[key]) != cls.num_stages:
                raise ValueError(f'arch[{key!r}] needs {cls.num_stages} entries, '
                                 f'got {arch[key]!r}')
        if arch.get('dim_qk') is not None and len(arch['dim_qk']) != cls.num_stages - 1:
            raise ValueError(f"arch['dim_qk'] needs one entry per ELSA stage (3), "
                             f"got {arch['dim_qk']!r}")
        return dict(arch)

    def init_weights(self) -> None:
        """Official scheme: Linear truncated normal (std 0.02, bias 0), LayerNorm (1, 0), Conv2d
        at the PyTorch default, ghost matrices per the ELSA module, tables truncated normal;
        a ``Pretrained`` ``init_cfg`` loads weights instead."""
        if self.init_cfg is not None:
            super().init_weights()
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                m.reset_parameters()
            elif isinstance(m, ELSAAttention):
                m.reset_ghost_head()
            elif isinstance(m, WindowMSA):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=.02)

    def no_weight_decay(self) -> Set[str]:
        """Names of the position tables, which Swin recipes exempt from weight decay (timm's
        convention; OpenMMLab configs use ``custom_keys`` on the same name)."""
        return {name for name, _ in self.named_parameters()
                if name.endswith('relative_position_bias_table')}

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        modules = [self.patch_embed, self.drop_after_pos]
        for i in range(self.frozen_stages):
            modules.append(self.layers[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        for m in modules:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x, hw_shape = self.patch_embed(x)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.layers):
            out, out_hw, x, hw_shape = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                outs.append(out.view(-1, *out_hw, self.num_features[i]).permute(0, 3, 1, 2)
                            .contiguous())
        return tuple(outs)

    def train(self, mode: bool = True) -> 'ELSASwin':
        super().train(mode)
        self._freeze_stages()
        return self
