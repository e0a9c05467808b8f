"""SASA-ResNet: ResNet with every bottleneck 3x3 convolution replaced by stand-alone
self-attention.

Paper: P. Ramachandran, N. Parmar, A. Vaswani, I. Bello, A. Levskaya, J. Shlens, "Stand-Alone
Self-Attention in Vision Models", NeurIPS 2019, arXiv 1906.05909. There is no official code or
checkpoint (google-research/google-research holds only a README); this is a re-implementation
from the paper whose parameter counts and FLOPs match its Table 1. Specification:
``specs/sasa_resnet.md``.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmattn.layers import SASAAttention, SASAStem
from mmattn.ops._ext import eager_cpu_inference

from ._checks import check_stage_args


class SASABottleneck(BaseModule):
    """1x1 reduce -> SA(k, heads) [-> 2x2 avg-pool] -> 1x1 expand, with the residual.

    With ``attention=False`` the block keeps ResNet's 3x3 convolution (``conv2``) instead.
    """
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, attention: bool = True,
                 kernel_size: int = 7, num_heads: int = 8, norm_cfg: dict = dict(type='BN'),
                 with_cp: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        out_channels = width * self.expansion
        self.with_cp = with_cp
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, width)[1]
        if attention:
            self.attn = SASAAttention(width, num_heads, kernel_size, stride)
        else:
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = build_norm_layer(norm_cfg, width)[1]
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = build_norm_layer(norm_cfg, out_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                build_norm_layer(norm_cfg, out_channels)[1])

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attn(out) if hasattr(self, 'attn') else self.conv2(out)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        out += identity  # bn3 output, not needed by its backward
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(self._inner, x, use_reentrant=False)
        else:
            out = self._inner(x)
        return self.relu(out)


class ConvStem(nn.Module):
    """ResNet stem: 7x7/2 convolution, BN, ReLU, 3x3/2 max-pool (a channels-last output on the
    CPU)."""

    def __init__(self, out_channels: int = 64, in_channels: int = 3,
                 norm_cfg: dict = dict(type='BN')) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 7, 2, 3, bias=False)
        self.bn = build_norm_layer(norm_cfg, out_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != 'cpu':
            return self.pool(self.relu(self.bn(self.conv(x))))
        # On CPU the stem runs channels-last, and its output stays so (the backbone sets each
        # stage's layout): ATen's NCHW max-pool takes 3.5 ms on the (64, 112, 112) map at
        # 224x224 against 0.2 ms channels-last (2 threads), and mkldnn's convolution writes its
        # channels-last output without a reorder. The same values (max-pool and BN are per
        # channel); the README has the figures.
        x = x.contiguous(memory_format=torch.channels_last)
        return self.pool(self.relu(self.bn(self.conv(x))))


class SASAResNet(BaseModule):
    """SASA-ResNet-26/38/50 backbone with a convolutional or a spatially-aware attention stem.

    Args:
        depth (int): 26, 38 or 50 (blocks per stage [1,2,4,1], [2,3,5,2], [3,4,6,3]).
        stem (str): ``'conv'`` or ``'attention'``. Defaults to ``'conv'``.
        kernel_size (int): attention window. Defaults to 7.
        num_heads (int): heads of the bottleneck attention. Defaults to 8.
        stem_mixtures (int): value mixtures of the attention stem. Defaults to 4.
        stem_heads (int): heads of the attention stem. Defaults to 4.
        base_channels (int): width of the first stage (64 in the paper). Defaults to 64.
        attn_stages (Sequence[bool]): per stage, attention (True) or ResNet's 3x3 conv (False).
        in_channels (int): image channels. Defaults to 3.
        out_indices (Sequence[int]): stages whose outputs are returned (strides 4/8/16/32).
        frozen_stages (int): -1 freezes nothing, 0 the stem, n the stem and stages 1..n.
        norm_cfg (dict): norm layers config. Defaults to BN.
        norm_eval (bool): keep BN layers in eval mode during training. Defaults to False.
        with_cp (bool): activation checkpointing of every bottleneck. Defaults to False.
        zero_init_residual (bool): start every block's last BN at gamma = 0. Defaults to True.
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.

    The outputs are NCHW-contiguous. Inside, on the CPU, the stem and the large-map stages of
    inference run channels-last (:meth:`stage_layout`), so forward hooks on the stem, the stages
    or their blocks can see channels-last tensors there (``view`` across channels and pixels
    needs a ``reshape``).
    """
    arch_settings: Dict[int, Tuple[int, int, int, int]] = {
        26: (1, 2, 4, 1),
        38: (2, 3, 5, 2),
        50: (3, 4, 6, 3),
    }
    stems = ('conv', 'attention')
    #: the smallest output map (pixels) of a stage run channels-last (``stage_layout``)
    channels_last_min_pixels: int = 28 * 28

    def __init__(self, depth: int, stem: str = 'conv', kernel_size: int = 7, num_heads: int = 8,
                 stem_mixtures: int = 4, stem_heads: int = 4, base_channels: int = 64,
                 attn_stages: Sequence[bool] = (True, True, True, True), in_channels: int = 3,
                 out_indices: Sequence[int] = (3, ), frozen_stages: int = -1,
                 norm_cfg: dict = dict(type='BN', requires_grad=True), norm_eval: bool = False,
                 with_cp: bool = False, zero_init_residual: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if depth not in self.arch_settings:
            raise ValueError(f'depth must be one of {sorted(self.arch_settings)}, got {depth!r}')
        if stem not in self.stems:
            raise ValueError(f'stem must be one of {self.stems}, got {stem!r}')
        if len(attn_stages) != 4:
            raise ValueError(f'attn_stages needs 4 entries (one per stage), got {attn_stages!r}')
        out_indices = check_stage_args(out_indices, frozen_stages)
        self.depth, self.out_indices = depth, out_indices
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self.zero_init_residual = zero_init_residual

        if stem == 'conv':
            self.stem = ConvStem(base_channels, in_channels, norm_cfg)
        else:
            self.stem = SASAStem(base_channels, stem_heads, stem_mixtures, in_channels, norm_cfg)
        channels = base_channels
        self.layer_names = []
        for i, blocks in enumerate(self.arch_settings[depth]):
            width = base_channels * 2**i
            layer = []
            for j in range(blocks):
                layer.append(SASABottleneck(
                    channels, width, stride=2 if (j == 0 and i > 0) else 1,
                    attention=bool(attn_stages[i]), kernel_size=kernel_size,
                    num_heads=num_heads, norm_cfg=norm_cfg, with_cp=with_cp))
                channels = width * SASABottleneck.expansion
            self.add_module(f'layer{i + 1}', nn.Sequential(*layer))
            self.layer_names.append(f'layer{i + 1}')
        self.out_channels = tuple(base_channels * 2**i * SASABottleneck.expansion
                                  for i in range(4))
        self._freeze_stages()

    def init_weights(self) -> None:
        if self.init_cfg is not None:
            super().init_weights()
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (_BatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # the attention layers' own scheme (S1, S4) over the above
            if isinstance(m, (SASAAttention, SASAStem)):
                m.reset_parameters()
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, SASABottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def _freeze_stages(self) -> None:
        modules = [self.stem] + [getattr(self, n) for n in self.layer_names]
        for m in modules[:self.frozen_stages + 1]:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def stage_layout(self, stage: int, x: torch.Tensor) -> torch.memory_format:
        """Memory format that stage ``stage`` (0-based) runs in for the input ``x``.

        Channels-last on the CPU where the stage builds no autograd graph (inference, frozen
        stages) and its output map has at least ``channels_last_min_pixels`` pixels; NCHW
        otherwise (training, small maps, other devices, graph capture). On this project's
        2-core machine oneDNN's convolutions, most of SASA-ResNet's time, are faster
        channels-last on large maps and slower on small ones: stage by stage (eval, batch 1,
        channels-last against NCHW) 0.79x (stage 1, 56x56), 0.73x (stage 2, 56 -> 28),
        1.05x (stage 3, 28 -> 14), 1.54x (stage 4, 14 -> 7); at 512x512 input 0.89x
        (stage 3, 64 -> 32) and 1.02x (stage 4, 32 -> 16). A training step gained nothing
        at 224x224 and lost 6% at 512x512 (the layout conversions of the gradients and a
        slower BN backward), so training stays NCHW. The README has the figures. Every layer
        of the block is layout-agnostic: ``na2d`` reads the channel-contiguous q/k/v views
        and writes its output in their layout.
        """
        # eager_cpu_inference first (capture, device, a graph through x): no shape checks under
        # export; then the stage's own parameters, only where grad mode is on
        layer = getattr(self, self.layer_names[stage])
        if not eager_cpu_inference(x) or (torch.is_grad_enabled() and any(
                p.requires_grad for p in layer.parameters())):
            return torch.contiguous_format
        stride = 1 if stage == 0 else 2
        pixels = -(-x.shape[-2] // stride) * -(-x.shape[-1] // stride)
        if pixels >= self.channels_last_min_pixels:
            return torch.channels_last
        return torch.contiguous_format

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.stem(x)
        outs = []
        layout = self.stage_layout(0, x)
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x.contiguous(memory_format=layout))
            if i + 1 < len(self.layer_names):
                layout = self.stage_layout(i + 1, x)
            if i in self.out_indices:
                out = x.contiguous()  # NCHW whatever the stage ran in
                if layout == torch.contiguous_format:
                    x = out  # the next stage's input too: one copy, not two
                outs.append(out)
        return tuple(outs)

    def train(self, mode: bool = True) -> 'SASAResNet':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
