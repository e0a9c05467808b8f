"""PLG-ViT and Light-Weight PLG-ViT: vision transformers with parallel local and global
self-attention.

Papers: N. Ebert, D. Stricker, O. Wasenmueller, "PLG-ViT: Vision Transformer with Parallel Local
and Global Self-Attention", Sensors 2023, 23(7), 3447, doi 10.3390/s23073447 (tiny / small /
base); N. Ebert, L. Reichardt, D. Stricker, O. Wasenmueller, "Light-Weight Vision Transformer with
Parallel Local and Global Self-Attention", arXiv 2307.09120 (ITSC 2023; LW-A, LW-R). No official
code or checkpoint is public. Specification: ``specs/plg_vit.md``; the stem and downsampler follow
GC ViT's ``ReduceSize`` arrangement (NVlabs/GCVit, commit 02d58ef2) with a full 3x3 convolution in
the Fused-MBConv.

One implementation serves both papers: the light-weight redesign is a set of arch switches
(``lw_conv``: SiLU, SE 1/8 and the 1x1 stride-2 + depthwise 3x3 reduction; ``ffn='ccf+'``;
``global_pool='max'``; per-stage ``widths``, ``local_heads``, ``global_heads`` and
``split_ratios``; ``expand_channels``: the final 3x3 channel expansion).
"""
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from mmattn.layers import GRN, PLGBlock
from mmattn.layers.plg_attention import GLOBAL_POOLS, GlobalWindowAttention
from mmattn.layers.window_attention import WindowMSA

from ._checks import check_stage_args, lookup_arch


class SqueezeExcite(nn.Module):
    """Global average pool -> ``fc1`` (C -> floor(C * ratio), no bias) -> act -> ``fc2`` (no bias)
    -> sigmoid -> channel scaling, on NCHW maps."""

    def __init__(self, dim: int, ratio: float, act: type) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ValueError(f'the SE width floor({dim} * {ratio}) must be >= 1')
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3)))))
        return x * scale.sigmoid()[:, :, None, None]


class FusedMBConv(nn.Module):
    """Fused-MBConv of expansion 1 on NCHW maps: ``x + pw(SE(act(conv(x))))`` with a full 3x3
    ``conv`` and a 1x1 ``pw`` (both without bias).

    Args:
        dim (int): channels.
        act (type): activation class (``nn.GELU`` or ``nn.SiLU``). Defaults to ``nn.GELU``.
        se_ratio (float): SE width over ``dim``. Defaults to 1/4.
    """

    def __init__(self, dim: int, act: type = nn.GELU, se_ratio: float = 0.25) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.act = act()
        self.se = SqueezeExcite(dim, se_ratio, act)
        self.pw = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(self.se(self.act(self.conv(x))))


class PLGDownsample(nn.Module):
    """CNN-Down on channels-last maps ``(B, H, W, C_in) -> (B, ceil(H/2), ceil(W/2), C_out)``:
    ``norm1`` -> Fused-MBConv -> stride-2 ``reduction`` -> ``norm2``.

    Args:
        in_channels (int): ``C_in``.
        out_channels (int): ``C_out``.
        lw (bool): light-weight version: SiLU, SE 1/8 and ``reduction`` = 1x1 stride-2
            convolution + depthwise 3x3; otherwise GELU, SE 1/4 and a 3x3 stride-2 convolution.
            Defaults to False.
        norm_eps (float): LayerNorm epsilon. Defaults to 1e-5.
    """

    def __init__(self, in_channels: int, out_channels: int, lw: bool = False,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(in_channels, eps=norm_eps)
        self.mbconv = FusedMBConv(in_channels, nn.SiLU if lw else nn.GELU, 0.125 if lw else 0.25)
        if lw:
            self.reduction = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels,
                          bias=False))
        else:
            self.reduction = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1,
                                       bias=False)
        self.norm2 = nn.LayerNorm(out_channels, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x).permute(0, 3, 1, 2)
        x = self.reduction(self.mbconv(x))
        return self.norm2(x.permute(0, 2, 3, 1))


class PLGStem(nn.Module):
    """CNN-Stem (stride 4): ``proj`` (3x3 stride-2 convolution with bias) then ``down``
    (:class:`PLGDownsample` ``C -> C``). NCHW image in, channels-last map out."""

    def __init__(self, in_channels: int, dim: int, lw: bool, norm_eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, stride=2, padding=1)
        self.down = PLGDownsample(dim, dim, lw, norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.proj(x).permute(0, 2, 3, 1))


class PLGStage(nn.Module):
    """Optional ``downsample`` followed by PLG ``blocks``, on channels-last maps."""

    def __init__(self, blocks: List[nn.Module], downsample: Optional[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        for block in self.blocks:
            x = block(x, (h, w))
        return x.view(b, h, w, c)


class ChannelExpand(nn.Module):
    """LW PLG-ViT's final expansion: 3x3 ``conv`` (no bias) -> LayerNorm ``norm`` -> SiLU, on
    NCHW maps."""

    def __init__(self, in_channels: int, out_channels: int, norm_eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.LayerNorm(out_channels, eps=norm_eps)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x).permute(0, 2, 3, 1))
        return self.act(x).permute(0, 3, 1, 2).contiguous()


def _row(widths, depths, local_heads, global_heads, split_ratios, ffn, global_pool, lw_conv,
         expand_channels) -> dict:
    return dict(widths=widths, depths=depths, local_heads=local_heads, global_heads=global_heads,
                split_ratios=split_ratios, ffn=ffn, global_pool=global_pool, lw_conv=lw_conv,
                expand_channels=expand_channels)


class PLGViT(BaseModule):
    """PLG-ViT-T/S/B and LW-PLG-ViT-A/R backbone for classification and dense prediction.

    A CNN stem (stride 4) and three CNN downsamplers feed four stages of PLG blocks (local window
    attention and pooled global attention on two channel groups, then CCF-FFN / CCF-FFN+).
    Outputs are NCHW maps of stride 4, 8, 16, 32 (``ceil(H / stride)`` pixels for any input) with
    ``widths[i]`` channels, each through its LayerNorm ``norm{i}``; with the LW expansion the
    last output instead has ``expand_channels`` channels (``norm3`` -> 3x3 conv -> LN -> SiLU).

    Args:
        arch (str | dict): ``'tiny'``/``'t'``, ``'small'``/``'s'``, ``'base'``/``'b'``, ``'lw-a'``,
            ``'lw-r'`` or a dict with the keys of :attr:`arch_zoo` rows (``widths``, ``depths``,
            ``local_heads``, ``global_heads``, ``split_ratios``, ``ffn``, ``global_pool``,
            ``lw_conv``, ``expand_channels``). Defaults to ``'tiny'``.
        in_channels (int): image channels. Defaults to 3.
        window_size (int): local window side. Defaults to 7.
        global_size (int): global pooled window side ``G``. Defaults to 7.
        with_expand (bool, optional): build the LW expansion conv; None follows the arch
            (``expand_channels`` set). Needs 3 in ``out_indices``. Defaults to None.
        qkv_bias (bool): biases of the ``qkv`` layers. Defaults to True.
        drop_rate (float): dropout after projections and FFNs. Defaults to 0.
        attn_drop_rate (float): attention dropout. Defaults to 0.
        drop_path_rate (float): stochastic depth, linear from 0 over all blocks. Defaults to 0.1.
        norm_eps (float): epsilon of every LayerNorm. Defaults to 1e-5.
        mask_padding (bool): mask zero-padded tokens out of the local windows' keys (the spec
            lets them attend, as Swin's). Defaults to False.
        out_indices (Sequence[int]): stages to return. Defaults to ``(3, )`` (classifier).
        frozen_stages (int): -1 freezes nothing; ``k >= 0`` freezes the stem and stages
            ``0..k-1`` (with their downsamplers and ``norm{i}``; ``k = 4`` also ``expand``).
        with_cp (bool): activation checkpointing of every block. Defaults to False.
        init_cfg (dict, optional): e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
    """
    arch_zoo: Dict[str, dict] = {
        **dict.fromkeys(['t', 'tiny'], _row((64, 128, 256, 512), (3, 4, 16, 4), (1, 2, 4, 8),
                                            (1, 2, 4, 8), (.5, ) * 4, 'ccf', 'max+avg', False,
                                            None)),
        **dict.fromkeys(['s', 'small'], _row((96, 192, 384, 768), (3, 3, 16, 3), (2, 4, 8, 16),
                                             (2, 4, 8, 16), (.5, ) * 4, 'ccf', 'max+avg', False,
                                             None)),
        **dict.fromkeys(['b', 'base'], _row((128, 256, 512, 1024), (3, 3, 16, 3), (2, 4, 8, 16),
                                            (2, 4, 8, 16), (.5, ) * 4, 'ccf', 'max+avg', False,
                                            None)),
        'lw-a': _row((64, 96, 160, 224), (2, 2, 6, 2), (2, 3, 5, 7), (2, 3, 5, 7), (.5, ) * 4,
                     'ccf+', 'max', True, 384),
        'lw-r': _row((48, 96, 160, 256), (1, 1, 5, 2), (1, 2, 5, 8), (2, 4, 5, 8),
                     (1 / 3, 1 / 3, .5, .5), 'ccf+', 'max', True, 384),
    }
    num_stages = 4
    _PER_STAGE = ('widths', 'depths', 'local_heads', 'global_heads', 'split_ratios')

    def __init__(self, arch: Union[str, dict] = 'tiny', in_channels: int = 3,
                 window_size: int = 7, global_size: int = 7, with_expand: Optional[bool] = None,
                 qkv_bias: bool = True, drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1, norm_eps: float = 1e-5, mask_padding: bool = False,
                 out_indices: Sequence[int] = (3, ), frozen_stages: int = -1,
                 with_cp: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        out_indices = check_stage_args(out_indices, frozen_stages)
        for name, value in (('window_size', window_size), ('global_size', global_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        if with_expand is None:
            with_expand = arch['expand_channels'] is not None
        elif not isinstance(with_expand, bool):
            raise TypeError(f'with_expand must be None or a bool, got {with_expand!r}')
        if with_expand and arch['expand_channels'] is None:
            raise ValueError('with_expand=True needs an arch with expand_channels (an int), '
                             f'got expand_channels=None')
        if with_expand and 3 not in out_indices:
            raise ValueError(f'with_expand=True needs 3 in out_indices, got {out_indices!r}')
        self.arch, self.out_indices, self.frozen_stages = arch, out_indices, frozen_stages
        widths, depths = arch['widths'], arch['depths']
        lw = arch['lw_conv']
        self.local_dims = tuple(int(round(r * c)) for r, c in zip(arch['split_ratios'], widths))
        for i, (c, cl) in enumerate(zip(widths, self.local_dims)):
            if not 0 < cl < c:
                raise ValueError(f"stage {i}: split_ratios[{i}]={arch['split_ratios'][i]} gives "
                                 f'{cl} local channels of {c}; both branches need channels')
            for name, dim in (('local_heads', cl), ('global_heads', c - cl)):
                if dim % arch[name][i]:
                    raise ValueError(f'stage {i}: arch[{name!r}][{i}]={arch[name][i]} must '
                                     f'divide the branch channels {dim} (width {c}, local {cl})')

        self.patch_embed = PLGStem(in_channels, widths[0], lw, norm_eps)
        total = sum(depths)  # stochastic depth: linear from 0 to drop_path_rate over all blocks
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        for i in range(self.num_stages):
            blocks = [PLGBlock(widths[i], self.local_dims[i], arch['local_heads'][i],
                               arch['global_heads'][i], window_size, global_size,
                               arch['global_pool'], arch['ffn'], qkv_bias, drop_rate,
                               attn_drop_rate, rate, norm_eps, mask_padding, with_cp)
                      for rate in rates[sum(depths[:i]):sum(depths[:i + 1])]]
            downsample = PLGDownsample(widths[i - 1], widths[i], lw, norm_eps) if i else None
            self.stages.append(PLGStage(blocks, downsample))
        for i in out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(widths[i], eps=norm_eps))
        self.with_expand = with_expand
        if with_expand:
            self.expand = ChannelExpand(widths[3], arch['expand_channels'], norm_eps)
        self.num_features = tuple(widths[:3]) + (
            arch['expand_channels'] if with_expand else widths[3], )
        self._freeze_stages()

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            return lookup_arch(arch, cls.arch_zoo, ())
        arch = lookup_arch(arch, cls.arch_zoo, cls.arch_zoo['tiny'])
        for key in cls._PER_STAGE:
            if not isinstance(arch[key], (list, tuple)) or len(arch[key]) != cls.num_stages:
                raise ValueError(f'arch[{key!r}] needs {cls.num_stages} entries, '
                                 f'got {arch[key]!r}')
            arch[key] = tuple(arch[key])
        for key in ('widths', 'depths', 'local_heads', 'global_heads'):
            if any(not isinstance(v, int) or v < 1 for v in arch[key]):
                raise ValueError(f'arch[{key!r}] must hold positive ints, got {arch[key]!r}')
        if any(not 0 < r < 1 for r in arch['split_ratios']):
            raise ValueError(f"arch['split_ratios'] must lie in (0, 1), "
                             f"got {arch['split_ratios']!r}")
        if arch['ffn'] not in PLGBlock.FFNS:
            raise ValueError(f"arch['ffn'] must be one of {sorted(PLGBlock.FFNS)}, "
                             f"got {arch['ffn']!r}")
        if arch['global_pool'] not in GLOBAL_POOLS:
            raise ValueError(f"arch['global_pool'] must be one of {GLOBAL_POOLS}, "
                             f"got {arch['global_pool']!r}")
        if not isinstance(arch['lw_conv'], bool):
            raise TypeError(f"arch['lw_conv'] must be a bool, got {arch['lw_conv']!r}")
        expand = arch['expand_channels']
        if expand is not None and (not isinstance(expand, int) or expand < 1):
            raise ValueError(f"arch['expand_channels'] must be None or a positive int, "
                             f'got {expand!r}')
        return arch

    def init_weights(self) -> None:
        """Spec D7: Linear truncated normal (std 0.02, bias 0), LayerNorm (1, 0), both relative
        position tables truncated normal (std 0.02), convolutions at the PyTorch default, GRN
        zero; a ``Pretrained`` ``init_cfg`` loads weights instead."""
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
            elif isinstance(m, (WindowMSA, GlobalWindowAttention)):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=.02)
            elif isinstance(m, GRN):
                nn.init.zeros_(m.gamma)
                nn.init.zeros_(m.beta)

    def no_weight_decay(self) -> Set[str]:
        """Names of the relative position tables (timm's convention; the OpenMMLab configs use
        ``custom_keys`` on the same name, and ``flat_decay_mult=0`` for norms and GRN)."""
        return {name for name, _ in self.named_parameters()
                if name.endswith('relative_position_bias_table')}

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        modules = [self.patch_embed]
        for i in range(self.frozen_stages):
            modules.append(self.stages[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        if self.frozen_stages == self.num_stages and self.with_expand:
            modules.append(self.expand)
        for m in modules:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4:
            raise ValueError(f'x must be (B, C, H, W), got {tuple(x.shape)}')
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x).permute(0, 3, 1, 2).contiguous()
                if i == 3 and self.with_expand:
                    out = self.expand(out)
                outs.append(out)
        return tuple(outs)

    def train(self, mode: bool = True) -> 'PLGViT':
        super().train(mode)
        self._freeze_stages()
        return self
