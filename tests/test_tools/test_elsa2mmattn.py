"""Official ELSA-Swin checkpoints -> mmattn (``tools/model_converters/elsa2mmattn.py``).

Approach (specs/elsa_swin.md sections 9, 10 and 14 V2):

* **Key tables.** :func:`official_key_table` writes down the official key names and shapes of
  spec sections 9.2-9.4 from the formulas there (it is checked against the spec's own shape rows
  and parameter counts). A synthetic checkpoint with exactly those keys is converted and must load
  into the mmpretrain classifier of the ELSA-Swin-T config with ``strict=True``; every converted
  tensor must equal what the rules of spec section 10 give (:func:`expected_conversion`). S and B
  are compared as key sets and shapes (shape-only ``meta`` checkpoints, ``strict=True`` loads
  with ``assign=True``).
* **Equivalence.** :class:`RefELSASwin` is an independent model in the *official* layout, written
  from the formulas of spec sections 2, 4, 5 and 8: unfold aggregation with a ``(1, C, 7, 7)``
  ghost head, stage-4 attention with ``pre_proj`` rows ordered v, q, k, a head-major ``rb`` table
  read through the key-minus-query ``relative_id`` buffer, Swin's -100 shift mask, dense-mode
  padding to multiples of 4 / 2 / 7 and an always-shifted odd stage-4 block. Its random weights
  are saved in every official container form, converted, loaded into mmattn with ``strict=True``
  and the outputs compared in float64: classifier logits at 224x224 and dense feature maps at
  sizes that are not multiples of 4, 8, 16, 32 or 224.
* **CLI** round trip through ``main`` and an mmengine ``Pretrained`` ``init_cfg``; **errors** for
  files that are not ELSA checkpoints.

Numerical comparisons use a small architecture (:data:`SMALL`) to keep the file fast on a CPU.
"""
import argparse
import importlib.util
import math
import os.path as osp
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmattn.backbones import ELSASwin

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs', 'elsa_swin')
CONVERTER = osp.join(ROOT, 'tools', 'model_converters', 'elsa2mmattn.py')

KERNEL = 7  # ELSA window (spec 2.4)
WINDOW = 7  # stage-4 Swin window
TAPS = KERNEL * KERNEL
# a small arch that still exercises dim_qk rounding (10 -> 12, 20, 42 -> 44), several heads and
# an odd (shifted) stage-4 block
SMALL = dict(embed_dims=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), group_width=4)
NUM_CLASSES = 10
# spec 6.1
ARCHS = {
    't': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), group_width=4),
    's': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), group_width=8),
    'b': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), group_width=8),
}
# spec 6.3: (classifier with a 1000-class head, dense backbone with norm0..3)
PARAM_COUNTS = {'t': (29_140_978, 28_373_322), 's': (52_874_626, 52_106_970),
                'b': (92_682_464, 91_659_256)}
# float64 on both sides: the implementations differ only in summation order (observed ~1e-15
# relative), so these bounds, much tighter than the spec's fp32 ones (O5), still leave seven
# orders of magnitude of margin while catching small deviations such as a LayerNorm eps change
LOGIT_ATOL = 1e-8
MAP_RTOL, MAP_ATOL = 1e-8, 1e-8


def _load_converter():
    """Imports ``tools/model_converters/elsa2mmattn.py`` (``tools`` is not a package)."""
    spec = importlib.util.spec_from_file_location('elsa2mmattn', CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


elsa2mmattn = _load_converter()


# --------------------------------------------------------------------------------------------
# Spec section 9: the official key tables
# --------------------------------------------------------------------------------------------
def official_dim_qk(dim: int, group_width: int) -> int:
    """Spec 2.3: ``floor(dim / 3) * 2`` rounded up to a multiple of ``group_width``."""
    return -(-(dim // 3 * 2) // group_width) * group_width


def official_key_table(arch: dict, dense: bool = False,
                       num_classes: int = 1000) -> 'OrderedDict[str, Tuple[int, ...]]':
    """Official state-dict keys and shapes of spec sections 9.2-9.4.

    Args:
        arch (dict): ``embed_dims``, ``depths``, ``num_heads``, ``group_width``.
        dense (bool): the detection/segmentation backbone (``norm0..3``, no ``norm``/``head``)
            instead of the classifier.
        num_classes (int): rows of ``head``.

    Returns:
        OrderedDict: key -> shape (``relative_id`` is the int64 buffer of 2401 entries).
    """
    e, gw = arch['embed_dims'], arch['group_width']
    table = OrderedDict()

    def add(prefix, **shapes):
        for name, shape in shapes.items():
            table[prefix + name.replace('__', '.')] = tuple(shape)

    add('patch_embed.', proj__weight=(e, 3, 4, 4), proj__bias=(e, ), norm__weight=(e, ),
        norm__bias=(e, ))
    for i in range(3):
        d, h = e * 2**i, arch['num_heads'][i]
        q = official_dim_qk(d, gw)
        for j in range(arch['depths'][i]):
            p = f'layers.{i}.blocks.{j}.'
            add(p, norm1__weight=(d, ), norm1__bias=(d, ))
            table[p + 'attn.pre_proj.weight'] = (2 * q + d, d, 1, 1)
            table[p + 'attn.pre_proj.bias'] = (2 * q + d, )
            table[p + 'attn.attn.0.weight'] = (q, gw, KERNEL, KERNEL)
            table[p + 'attn.attn.0.bias'] = (q, )
            table[p + 'attn.attn.2.weight'] = (TAPS * h, q, 1, 1)
            table[p + 'attn.attn.2.bias'] = (TAPS * h, )
            table[p + 'attn.ghost_head'] = (1, d, KERNEL, KERNEL)
            add(p, attn__post_proj__weight=(d, d), attn__post_proj__bias=(d, ),
                norm2__weight=(d, ), norm2__bias=(d, ), mlp__fc1__weight=(4 * d, d),
                mlp__fc1__bias=(4 * d, ), mlp__fc2__weight=(d, 4 * d), mlp__fc2__bias=(d, ))
        add(f'layers.{i}.downsample.', norm__weight=(4 * d, ), norm__bias=(4 * d, ),
            reduction__weight=(2 * d, 4 * d))
    big, heads = 8 * e, arch['num_heads'][3]
    for j in range(arch['depths'][3]):
        add(f'layers.3.blocks.{j}.', norm1__weight=(big, ), norm1__bias=(big, ),
            attn__rb=(heads, (2 * WINDOW - 1)**2), attn__relative_id=(WINDOW**4, ),
            attn__pre_proj__weight=(3 * big, big), attn__pre_proj__bias=(3 * big, ),
            attn__post_proj__weight=(big, big), attn__post_proj__bias=(big, ),
            norm2__weight=(big, ), norm2__bias=(big, ), mlp__fc1__weight=(4 * big, big),
            mlp__fc1__bias=(4 * big, ), mlp__fc2__weight=(big, 4 * big), mlp__fc2__bias=(big, ))
    if dense:
        for i in range(4):
            add(f'norm{i}.', weight=(e * 2**i, ), bias=(e * 2**i, ))
    else:
        add('', norm__weight=(big, ), norm__bias=(big, ), head__weight=(num_classes, big),
            head__bias=(num_classes, ))
    return table


def official_relative_id(window: int = WINDOW) -> torch.Tensor:
    """Spec 4: flattened ``(w*w, w*w)`` index of ``coords[key] - coords[query]``, int64."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing='ij')
    rows, cols = rows.flatten(), cols.flatten()
    d_row = rows[None, :] - rows[:, None]  # [query i, key j] = row_j - row_i
    d_col = cols[None, :] - cols[:, None]
    return ((d_row + window - 1) * (2 * window - 1) + (d_col + window - 1)).flatten()


def synthetic_checkpoint(table: Mapping[str, Tuple[int, ...]], seed: int = 0,
                         device: str = 'cpu') -> 'OrderedDict[str, torch.Tensor]':
    """Random float tensors with the shapes of ``table``; ``relative_id`` is the official index.

    Args:
        table (Mapping): key -> shape, e.g. from :func:`official_key_table`.
        seed (int): random seed.
        device (str): ``'meta'`` gives shape-only tensors.
    """
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in table.items():
        if key.endswith('relative_id'):
            state[key] = official_relative_id().to(device)
        elif device == 'meta':
            state[key] = torch.empty(shape, device='meta')
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


def expected_conversion(state: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """The mmattn classifier state dict the rules of spec 10 / 17 (O1) give for ``state``.

    ``ghost_head`` loses its leading singleton axis; stage-4 ``pre_proj`` rows v, q, k become
    ``qkv`` rows q, k, v, ``post_proj`` becomes ``proj``, ``rb`` (H, 169) becomes
    ``relative_position_bias_table = rb.flip(-1).T`` and ``relative_id`` is dropped; ``norm``
    becomes ``backbone.norm3``, ``head`` becomes ``head.fc`` and everything else gets
    ``backbone.``.
    """
    out = OrderedDict()
    for key, value in state.items():
        stage4 = key.startswith('layers.3.')
        if key in ('norm.weight', 'norm.bias'):
            out['backbone.norm3.' + key.split('.')[-1]] = value
        elif key.startswith('head.'):
            out['head.fc.' + key.split('.')[-1]] = value
        elif key.endswith('attn.ghost_head'):
            out['backbone.' + key] = value[0]
        elif stage4 and key.endswith('attn.relative_id'):
            continue
        elif stage4 and key.endswith('attn.rb'):
            out['backbone.' + key[:-2] + 'relative_position_bias_table'] = value.flip(-1).t()
        elif stage4 and '.attn.pre_proj.' in key:
            v, q, k = value.chunk(3, dim=0)
            out['backbone.' + key.replace('pre_proj', 'qkv')] = torch.cat([q, k, v])
        elif stage4 and '.attn.post_proj.' in key:
            out['backbone.' + key.replace('post_proj', 'proj')] = value
        else:
            out['backbone.' + key] = value
    return out


def _numel(shape: Tuple[int, ...]) -> int:
    return math.prod(shape)


# --------------------------------------------------------------------------------------------
# Independent reference model in the official layout (spec sections 2, 4, 5, 8)
# --------------------------------------------------------------------------------------------
class RefELSA(nn.Module):
    """Official ELSA attention, scale 1, gamma = 1, unfold aggregation (spec 2.2, 2.5, 3.3a).

    Args:
        dim (int): channels.
        num_heads (int): heads.
        group_width (int): channels per group of ``attn.0``.
        lam (int): 0 (ELSA-Swin: ``ghost_head`` = S of shape (1, C, 7, 7)) or 1 (``ghost_head``
            = (O, S) of shape (2, 1, C, 7, 7)).
    """

    def __init__(self, dim: int, num_heads: int, group_width: int, lam: int = 0) -> None:
        super().__init__()
        self.dim, self.num_heads, self.lam = dim, num_heads, lam
        self.dim_qk = official_dim_qk(dim, group_width)
        self.pre_proj = nn.Conv2d(dim, 2 * self.dim_qk + dim, 1)
        self.attn = nn.Sequential(
            nn.Conv2d(self.dim_qk, self.dim_qk, KERNEL, padding=KERNEL // 2,
                      groups=self.dim_qk // group_width),
            nn.GELU(),
            nn.Conv2d(self.dim_qk, TAPS * num_heads, 1))
        shape = (2, 1, dim, KERNEL, KERNEL) if lam else (1, dim, KERNEL, KERNEL)
        self.ghost_head = nn.Parameter(torch.zeros(shape))  # (O, S) or S
        self.post_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        b, h, w, c = x.shape
        g = self.num_heads
        qkv = self.pre_proj(x.permute(0, 3, 1, 2))  # channels q, k, v
        qk = self.dim_qk
        q, k, v = qkv[:, :qk], qkv[:, qk:2 * qk], qkv[:, 2 * qk:]
        logits = self.attn(q * k)  # Hadamard input, scale 1 (spec 2.4)
        attn = logits.reshape(b * g, TAPS, h * w).softmax(dim=1)  # all 49 taps, zero padded too
        cols = F.unfold(v.reshape(b * g, c // g, h, w), KERNEL, padding=KERNEL // 2)
        cols = cols.view(b * g, c // g, TAPS, h * w)
        def per_head(matrix):  # (1, C, k, k) -> (B * G, C / G, K, 1), the official expand
            return matrix.expand(b, c, KERNEL, KERNEL).reshape(b * g, c // g, TAPS, 1)

        if self.lam:
            mul, add = per_head(self.ghost_head[0]**self.lam), per_head(self.ghost_head[1])
        else:
            mul, add = 1., per_head(self.ghost_head)  # O ** 0 = 1
        filters = attn[:, None] * mul + add
        out = (cols * filters).sum(dim=2).view(b, c, h, w)
        return self.post_proj(out.permute(0, 2, 3, 1))


class RefMlp(nn.Module):
    """timm ``Mlp``: ``fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class RefELSABlock(nn.Module):
    """Pre-norm residual ELSA block (spec 2.7)."""

    def __init__(self, dim: int, num_heads: int, group_width: int, lam: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RefELSA(dim, num_heads, group_width, lam)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = RefMlp(dim)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int], dense: bool) -> torch.Tensor:
        b, n, c = x.shape
        x = x + self.attn(self.norm1(x).view(b, hw[0], hw[1], c)).reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class RefWindowAttention(nn.Module):
    """Official stage-4 attention: ``pre_proj`` rows v, q, k, head-major ``rb`` (spec 4)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads)**-0.5
        self.rb = nn.Parameter(torch.zeros(num_heads, (2 * WINDOW - 1)**2))
        self.register_buffer('relative_id', official_relative_id())  # persistent, as official
        self.pre_proj = nn.Linear(dim, 3 * dim)
        self.post_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``x``: ``(B * windows, 49, C)``; ``mask``: ``(windows, 49, 49)`` or None."""
        bw, n, c = x.shape
        heads = self.num_heads
        v, q, k = self.pre_proj(x).view(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.rb[:, self.relative_id].view(heads, n, n)[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, heads, n, n)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.post_proj(out)


def ref_shift_mask(hp: int, wp: int, shift: int) -> torch.Tensor:
    """Swin's region mask for a padded ``hp x wp`` map: -100 across regions, 0 within.

    Regions along each axis: ``[0, n - w)``, ``[n - w, n - shift)``, ``[n - shift, n)``.
    """
    def region(n):
        idx = torch.arange(n)
        return (idx >= n - WINDOW).long() + (idx >= n - shift).long()

    ids = region(hp)[:, None] * 3 + region(wp)[None, :]
    ids = ids.view(hp // WINDOW, WINDOW, wp // WINDOW, WINDOW).permute(0, 2, 1, 3)
    ids = ids.reshape(-1, WINDOW * WINDOW)
    same = ids[:, :, None] == ids[:, None, :]
    return torch.where(same, 0., -100.).double()


class RefSwinBlock(nn.Module):
    """Official stage-4 Swin block (spec 4, 8).

    Classification (fixed 224 input): the 7x7 map equals the window, so there is no shift.
    Dense prediction: pad to multiples of 7 at the bottom/right, odd blocks always shift by 3.
    """

    def __init__(self, dim: int, num_heads: int, shifted: bool) -> None:
        super().__init__()
        self.shift_size = WINDOW // 2 if shifted else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RefWindowAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = RefMlp(dim)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int], dense: bool) -> torch.Tensor:
        b, n, c = x.shape
        h, w = hw
        shift = self.shift_size
        if not dense:
            assert (h, w) == (WINDOW, WINDOW), 'the reference classifier is defined at 224 only'
            shift = 0  # Swin's rule: no shift when the map is no larger than the window
        y = self.norm1(x).view(b, h, w, c)
        y = F.pad(y, (0, 0, 0, (-w) % WINDOW, 0, (-h) % WINDOW))
        hp, wp = y.shape[1], y.shape[2]
        mask = None
        if shift:
            y = torch.roll(y, (-shift, -shift), dims=(1, 2))
            mask = ref_shift_mask(hp, wp, shift).to(y.dtype)
        nh, nw = hp // WINDOW, wp // WINDOW
        win = y.view(b, nh, WINDOW, nw, WINDOW, c).permute(0, 1, 3, 2, 4, 5)
        win = self.attn(win.reshape(-1, WINDOW * WINDOW, c), mask)
        y = win.view(b, nh, nw, WINDOW, WINDOW, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if shift:
            y = torch.roll(y, (shift, shift), dims=(1, 2))
        x = x + y[:, :h, :w].reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class RefPatchMerging(nn.Module):
    """Spec 5: ``cat[x(0::2,0::2), x(1::2,0::2), x(0::2,1::2), x(1::2,1::2)]``, LN, Linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]):
        b, _, c = x.shape
        x = x.view(b, hw[0], hw[1], c)
        x = F.pad(x, (0, 0, 0, hw[1] % 2, 0, hw[0] % 2))
        x0, x1 = x[:, 0::2, 0::2], x[:, 1::2, 0::2]
        x2, x3 = x[:, 0::2, 1::2], x[:, 1::2, 1::2]
        x = torch.cat([x0, x1, x2, x3], dim=-1)
        out_hw = (x.shape[1], x.shape[2])
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c))), out_hw


class RefPatchEmbed(nn.Module):
    """Conv 4x4 stride 4 and LayerNorm (spec 5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, 4)
        self.norm = nn.LayerNorm(dim)


class RefStage(nn.Module):
    """``blocks`` and an optional ``downsample`` (official ``BasicLayer``)."""

    def __init__(self, blocks, downsample: Optional[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class RefELSASwin(nn.Module):
    """ELSA-Swin in the official layout: the classifier (``norm``, ``head``) or the dense
    backbone (``norm0..3``, any input size), spec sections 1, 5 and 8."""

    def __init__(self, arch: dict, dense: bool, num_classes: int = NUM_CLASSES,
                 lam: int = 0) -> None:
        super().__init__()
        self.dense = dense
        e, depths, heads = arch['embed_dims'], arch['depths'], arch['num_heads']
        self.patch_embed = RefPatchEmbed(e)
        self.layers = nn.ModuleList()
        for i in range(4):
            d = e * 2**i
            if i < 3:
                blocks = [RefELSABlock(d, heads[i], arch['group_width'], lam)
                          for _ in range(depths[i])]
                self.layers.append(RefStage(blocks, RefPatchMerging(d)))
            else:
                blocks = [RefSwinBlock(d, heads[i], j % 2 == 1) for j in range(depths[i])]
                self.layers.append(RefStage(blocks, None))
        if dense:
            for i in range(4):
                self.add_module(f'norm{i}', nn.LayerNorm(e * 2**i))
        else:
            self.norm = nn.LayerNorm(8 * e)
            self.head = nn.Linear(8 * e, num_classes)

    def forward(self, img: torch.Tensor):
        """Logits ``(B, classes)`` or a list of four NCHW maps."""
        if self.dense:
            img = F.pad(img, (0, (-img.shape[-1]) % 4, 0, (-img.shape[-2]) % 4))
        else:
            assert img.shape[-2:] == (224, 224)
        x = self.patch_embed.proj(img)
        hw = (x.shape[2], x.shape[3])
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        outs = []
        for i, stage in enumerate(self.layers):
            for block in stage.blocks:
                x = block(x, hw, self.dense)
            if self.dense:
                y = getattr(self, f'norm{i}')(x)
                outs.append(y.view(y.shape[0], hw[0], hw[1], -1).permute(0, 3, 1, 2))
            if stage.downsample is not None:
                x, hw = stage.downsample(x, hw)
        if self.dense:
            return outs
        return self.head(self.norm(x).mean(dim=1))


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random non-trivial weights: LayerNorm affine around (1, 0), fan-in scaled weights,
    non-zero biases, a large ghost matrix ``S`` and relative position table."""
    gen = torch.Generator().manual_seed(seed)

    def randn_like(p, std, mean=0.):
        return torch.randn(p.shape, generator=gen, dtype=p.dtype) * std + mean

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(randn_like(m.weight, 0.2, 1.))
                m.bias.copy_(randn_like(m.bias, 0.2))
            elif isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                gain = 3. if name.endswith('attn.attn.2') else 1.  # peaky ELSA attention
                m.weight.copy_(randn_like(m.weight, gain * fan_in**-0.5))
                if m.bias is not None:
                    m.bias.copy_(randn_like(m.bias, 0.1))
            elif isinstance(m, RefELSA):
                m.ghost_head.copy_(randn_like(m.ghost_head, 0.1))
                if m.lam:
                    m.ghost_head[0].copy_(randn_like(m.ghost_head[0], 1.))  # O ~ N(0, 1)
            elif isinstance(m, RefWindowAttention):
                m.rb.copy_(randn_like(m.rb, 1.))
    return model


def make_reference(dense: bool, seed: int, lam: int = 0) -> RefELSASwin:
    """A float64, eval-mode :class:`RefELSASwin` of the :data:`SMALL` arch."""
    return randomize_(RefELSASwin(SMALL, dense, lam=lam).double(), seed).eval()


# --------------------------------------------------------------------------------------------
# mmattn-side models and shared fixtures
# --------------------------------------------------------------------------------------------
def build_classifier(variant: str = 't', arch=None,
                     num_classes: Optional[int] = None) -> nn.Module:
    """The mmpretrain ``ImageClassifier`` of ``configs/elsa_swin/elsa-swin-<variant>_...py``.

    Args:
        variant (str): ``'t'``, ``'s'`` or ``'b'`` (the config file).
        arch (dict, optional): overrides the backbone arch (and the head's ``in_channels``).
        num_classes (int, optional): overrides the head's classes.
    """
    pytest.importorskip('mmpretrain')
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules

    import mmattn.cls  # noqa: F401

    register_all_modules()
    cfg = Config.fromfile(osp.join(CONFIGS, f'elsa-swin-{variant}_8xb128_in1k.py'))
    if arch is not None:
        cfg.model.backbone.arch = arch
        cfg.model.head.in_channels = 8 * arch['embed_dims']
    if num_classes is not None:
        cfg.model.head.num_classes = num_classes
    return MODELS.build(cfg.model)


def shapes(state: Mapping[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    """key -> shape."""
    return {k: tuple(v.shape) for k, v in state.items()}


def assert_same_tensors(actual: Mapping[str, torch.Tensor],
                        expected: Mapping[str, torch.Tensor]) -> None:
    """Same key set, and every tensor bit-identical (shape, dtype and values)."""
    assert set(actual) == set(expected), (sorted(set(actual) - set(expected)),
                                          sorted(set(expected) - set(actual)))
    for key, value in expected.items():
        assert actual[key].shape == value.shape, key
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def add_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> 'OrderedDict':
    return OrderedDict((prefix + k, v) for k, v in state.items())


@pytest.fixture(scope='module')
def cls_refs():
    """Two reference classifiers (different weights) and their logits on a fixed 224 batch."""
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 224, 224, generator=gen, dtype=torch.float64)
    refs = {name: make_reference(dense=False, seed=seed) for name, seed in (('a', 1), ('b', 2))}
    with torch.no_grad():
        logits = {name: ref(img) for name, ref in refs.items()}
    states = {name: ref.state_dict() for name, ref in refs.items()}
    return img, states, logits


@pytest.fixture(scope='module')
def small_classifier():
    """mmpretrain classifier from the T config with the :data:`SMALL` arch, float64, eval."""
    return build_classifier('t', SMALL, NUM_CLASSES).double().eval()


# images whose sizes are multiples of none of 4, 8, 16, 32, 224; the second one gives a 2x3
# stage-4 map (padded to 7x7 and still shifted), the first an 8x11 map (two windows per axis)
DENSE_SIZES = [(1, 225, 333), (2, 61, 93)]


@pytest.fixture(scope='module')
def dense_ref():
    """A dense reference backbone, its state dict and its feature maps at :data:`DENSE_SIZES`."""
    ref = make_reference(dense=True, seed=3)
    gen = torch.Generator().manual_seed(4)
    imgs = [torch.randn(size[0], 3, *size[1:], generator=gen, dtype=torch.float64)
            for size in DENSE_SIZES]
    with torch.no_grad():
        maps = [ref(img) for img in imgs]
    return ref.state_dict(), imgs, maps


# --------------------------------------------------------------------------------------------
# 1. Key tables
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('variant', sorted(ARCHS))
def test_official_key_table_matches_spec(variant):
    """The test's own §9 table agrees with the spec's parameter counts (6.3) and its shape
    rows (6.2)."""
    cls_table = official_key_table(ARCHS[variant])
    dense_table = official_key_table(ARCHS[variant], dense=True)

    def count(table):  # parameters only: the relative_id buffer is excluded (spec 6.3)
        return sum(_numel(s) for k, s in table.items() if not k.endswith('relative_id'))

    assert (count(cls_table), count(dense_table)) == PARAM_COUNTS[variant]
    rows = {'t': ((224, 96, 1, 1), (64, 4, 7, 7), (147, 64, 1, 1), (192, 384), (24, 169)),
            's': ((224, 96, 1, 1), (64, 8, 7, 7), (147, 64, 1, 1), (192, 384), (24, 169)),
            'b': ((304, 128, 1, 1), (88, 8, 7, 7), (196, 88, 1, 1), (256, 512), (32, 169))}
    assert (cls_table['layers.0.blocks.1.attn.pre_proj.weight'],
            cls_table['layers.0.blocks.1.attn.attn.0.weight'],
            cls_table['layers.0.blocks.1.attn.attn.2.weight'],
            cls_table['layers.0.downsample.reduction.weight'],
            cls_table['layers.3.blocks.1.attn.rb']) == rows[variant]
    assert 'layers.3.downsample.reduction.weight' not in cls_table


def test_tiny_checkpoint_loads_strict_into_t_config():
    """A full-size synthetic ELSA-Swin-T checkpoint converts, loads with ``strict=True`` into
    the classifier of the T config, and every tensor is what the spec 10 rules give."""
    official = synthetic_checkpoint(official_key_table(ARCHS['t']), seed=0)
    assert official['layers.3.blocks.0.attn.relative_id'].dtype == torch.int64
    converted, info = elsa2mmattn.convert_elsa({'state_dict': official})
    assert info['kind'] == 'classification' and info['passed_through'] == 0

    model = build_classifier('t')
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    expected = expected_conversion(official)
    assert_same_tensors(converted, expected)
    loaded = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    # the transformations of spec 10.1 on one block, spelled out
    qkv = loaded['backbone.layers.3.blocks.1.attn.qkv.weight']
    pre = official['layers.3.blocks.1.attn.pre_proj.weight']
    assert torch.equal(qkv[:768], pre[768:1536]) and torch.equal(qkv[1536:], pre[:768])
    table = loaded['backbone.layers.3.blocks.1.attn.relative_position_bias_table']
    rb = official['layers.3.blocks.1.attn.rb']
    assert table.shape == (169, 24) and torch.equal(table[0], rb[:, 168])


@pytest.mark.parametrize('variant', sorted(ARCHS))
def test_key_sets_and_shapes_all_variants(variant):
    """Classifier and dense-backbone key tables of T/S/B convert to exactly the key sets and
    shapes of the mmattn models; the converted shape-only tensors load with ``strict=True``."""
    official = synthetic_checkpoint(official_key_table(ARCHS[variant]), device='meta')
    converted, _ = elsa2mmattn.convert_elsa(official)
    model = build_classifier(variant)
    assert shapes(converted) == shapes(model.state_dict())
    model.load_state_dict(converted, strict=True, assign=True)

    dense_official = synthetic_checkpoint(official_key_table(ARCHS[variant], dense=True),
                                          device='meta')
    det = add_prefix(dense_official, 'backbone.')
    det['neck.lateral_convs.0.conv.weight'] = torch.empty(256, 96, 1, 1, device='meta')
    converted, info = elsa2mmattn.convert_elsa({'state_dict': det})
    assert info == dict(kind='dense', backbone=len(dense_official), passed_through=1)
    assert converted.pop('neck.lateral_convs.0.conv.weight').shape == (256, 96, 1, 1)
    backbone = ELSASwin(variant)
    assert shapes(converted) == shapes(add_prefix(backbone.state_dict(), 'backbone.'))
    backbone.load_state_dict({k[len('backbone.'):]: v for k, v in converted.items()},
                             strict=True, assign=True)


def test_reference_model_has_the_official_layout():
    """The reference model's state dicts are exactly the §9 tables (so its checkpoints are
    official-format files)."""
    for dense in (False, True):
        state = RefELSASwin(SMALL, dense).state_dict()
        assert shapes(state) == dict(official_key_table(SMALL, dense, NUM_CLASSES))
        assert state['layers.3.blocks.0.attn.relative_id'].dtype == torch.int64


# --------------------------------------------------------------------------------------------
# 2. Equivalence with the official-layout reference (spec 14 V2)
# --------------------------------------------------------------------------------------------
def _cls_containers(states):
    """Official classification containers (spec 9.1): name -> (checkpoint, use_ema, ref)."""
    a, b = states['a'], states['b']
    module_a = add_prefix(a, 'module.')
    return {
        'state_dict': ({'state_dict': a, 'epoch': 3}, True, 'a'),
        'ema_default': ({'state_dict_ema': a, 'state_dict': b}, True, 'a'),
        'ema_off': ({'state_dict_ema': b, 'state_dict': a}, False, 'a'),
        'model': ({'model': a}, True, 'a'),
        'raw': (a, True, 'a'),
        'raw_module': (module_a, True, 'a'),
        'state_dict_module': ({'state_dict': module_a}, True, 'a'),
        'ema_module': ({'state_dict_ema': add_prefix(b, 'module.'), 'state_dict': module_a,
                        'optimizer': {'state': {}, 'param_groups': []}}, True, 'b'),
    }


CLS_FORMS = ['state_dict', 'ema_default', 'ema_off', 'model', 'raw', 'raw_module',
             'state_dict_module', 'ema_module']


@pytest.mark.parametrize('form', CLS_FORMS)
def test_classifier_logits_match_reference(form, cls_refs, small_classifier):
    """Each classification container converts to weights that make the mmpretrain classifier
    (T config, ``pad_small_map=False``) reproduce the reference logits at 224x224."""
    img, states, logits = cls_refs
    checkpoint, use_ema, which = _cls_containers(states)[form]
    converted, info = elsa2mmattn.convert_elsa(checkpoint, use_ema=use_ema)
    assert info['kind'] == 'classification' and info['passed_through'] == 0
    small_classifier.load_state_dict(converted, strict=True)
    with torch.no_grad():
        out = small_classifier(img, mode='tensor')
    expected = logits[which]
    assert out.shape == expected.shape == (2, NUM_CLASSES)
    assert (logits['a'] - logits['b']).abs().max() > 1e-2  # the two references differ
    err = (out - expected).abs().max().item()
    assert err < LOGIT_ATOL, f'max abs logit error {err:.3g}'


def _dense_containers(state):
    """Official detection/segmentation full-model containers: name -> (checkpoint, extras)."""
    gen = torch.Generator().manual_seed(5)
    det_extra = OrderedDict([
        ('neck.lateral_convs.0.conv.weight', torch.randn(8, 16, 1, 1, generator=gen)),
        ('neck.fpn_convs.0.conv.bias', torch.randn(8, generator=gen)),
        ('rpn_head.rpn_conv.weight', torch.randn(8, 8, 3, 3, generator=gen)),
        ('roi_head.bbox_head.fc_cls.weight', torch.randn(81, 32, generator=gen)),
        # a non-backbone key that looks like an ELSA key must not be touched either
        ('roi_head.layers.0.blocks.0.attn.ghost_head', torch.randn(1, 4, 7, 7, generator=gen)),
    ])
    seg_extra = OrderedDict([
        ('decode_head.conv_seg.weight', torch.randn(150, 8, 1, 1, generator=gen)),
        ('auxiliary_head.conv_seg.bias', torch.randn(150, generator=gen)),
    ])
    det = OrderedDict(add_prefix(state, 'backbone.'), **det_extra)
    seg = OrderedDict(add_prefix(state, 'backbone.'), **seg_extra)
    meta = dict(epoch=12, mmdet_version='2.11.0', CLASSES=('a', 'b'))
    return {
        'det': ({'state_dict': det, 'meta': meta, 'optimizer': {'state': {}}, 'amp': {}},
                det_extra),
        'det_module': ({'state_dict': add_prefix(det, 'module.'), 'meta': meta}, det_extra),
        'seg': ({'state_dict': seg, 'meta': meta}, seg_extra),
        'seg_raw': (seg, seg_extra),
    }


def assert_dense_maps_match(model: nn.Module, converted: Mapping[str, torch.Tensor], imgs,
                            ref_maps) -> None:
    """Loads the ``backbone.`` part of ``converted`` into ``model`` with ``strict=True`` and
    compares its four float64 maps with the reference maps for every image."""
    model = model.double().eval()
    model.load_state_dict({k[len('backbone.'):]: v for k, v in converted.items()}, strict=True)
    for img, expected in zip(imgs, ref_maps):
        with torch.no_grad():
            outs = model(img)
        assert len(outs) == 4
        for i, (out, ref) in enumerate(zip(outs, expected)):
            assert out.shape == ref.shape, (i, out.shape, ref.shape)
            torch.testing.assert_close(out, ref, rtol=MAP_RTOL, atol=MAP_ATOL,
                                       msg=lambda m: f'{tuple(img.shape)}, out {i}: {m}')


@pytest.mark.parametrize('form', ['det', 'det_module', 'seg', 'seg_raw'])
def test_dense_maps_match_reference(form, dense_ref):
    """Detection/segmentation full-model checkpoints: the backbone converts to weights that
    make the dense ``ELSASwin`` reproduce the reference maps (padding, shifted stage 4, mask),
    the other keys pass through unchanged and are counted."""
    state, imgs, ref_maps = dense_ref
    checkpoint, extras = _dense_containers(state)[form]
    converted, info = elsa2mmattn.convert_elsa(checkpoint)
    assert info == dict(kind='dense', backbone=len(state), passed_through=len(extras))
    for key, value in extras.items():
        assert converted.pop(key) is value, key  # passed through unchanged
    assert all(k.startswith('backbone.') for k in converted)

    assert_dense_maps_match(ELSASwin(SMALL, out_indices=(0, 1, 2, 3)), converted, imgs, ref_maps)


def test_dense_maps_match_reference_with_both_ghost_matrices(dense_ref):
    """lam = 1, gamma = 1: the official (2, 1, C, 7, 7) ghost head becomes (2, C, 7, 7)
    (spec 10 C5) and still reproduces the reference."""
    _, imgs, _ = dense_ref
    ref = make_reference(dense=True, seed=6, lam=1)
    state = ref.state_dict()
    assert state['layers.2.blocks.1.attn.ghost_head'].shape == (2, 1, 64, 7, 7)
    with torch.no_grad():
        ref_maps = [ref(img) for img in imgs]
    converted, _ = elsa2mmattn.convert_elsa({'state_dict': add_prefix(state, 'backbone.')})
    assert torch.equal(converted['backbone.layers.2.blocks.1.attn.ghost_head'],
                       state['layers.2.blocks.1.attn.ghost_head'][:, 0])
    assert_dense_maps_match(ELSASwin(SMALL, lam=1), converted, imgs, ref_maps)


# --------------------------------------------------------------------------------------------
# 3. CLI
# --------------------------------------------------------------------------------------------
def test_cli_and_pretrained_init_cfg(tmp_path, cls_refs, capsys):
    """``main`` reads a timm container with ``args``/``epoch`` and writes a ``weights_only``
    file whose backbone part initialises a dense ``ELSASwin`` through ``init_cfg``."""
    _, states, _ = cls_refs
    # released files are float32
    states = {name: OrderedDict((k, v.float() if v.is_floating_point() else v)
                                for k, v in state.items()) for name, state in states.items()}
    src, dst = str(tmp_path / 'elsa_swin_small.pth'), str(tmp_path / 'converted.pth')
    official = {'state_dict': states['b'], 'state_dict_ema': states['a'], 'epoch': 299,
                'args': argparse.Namespace(model='elsa_swin_tiny', model_ema=True, lr=1e-3)}
    torch.save(official, src)
    elsa2mmattn.main([src, dst])
    assert dst in capsys.readouterr().out

    saved = torch.load(dst, map_location='cpu', weights_only=True)
    assert saved['meta']['kind'] == 'classification'
    expected = expected_conversion(states['a'])  # EMA weights by default
    assert_same_tensors(saved['state_dict'], expected)
    no_ema = str(tmp_path / 'converted_no_ema.pth')
    elsa2mmattn.main([src, no_ema, '--no-ema'])
    assert_same_tensors(torch.load(no_ema, weights_only=True)['state_dict'],
                        expected_conversion(states['b']))

    model = ELSASwin(SMALL, out_indices=(0, 1, 2, 3),
                     init_cfg=dict(type='Pretrained', checkpoint=dst, prefix='backbone.'))
    model.init_weights()
    loaded = model.state_dict()
    backbone = {k[len('backbone.'):]: v for k, v in expected.items() if k.startswith('backbone.')}
    untouched = {f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias')}
    assert set(loaded) == set(backbone) | untouched
    for key, value in backbone.items():
        assert torch.equal(loaded[key], value), key
    for i in range(3):
        norm = getattr(model, f'norm{i}')
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


# --------------------------------------------------------------------------------------------
# 4. Errors
# --------------------------------------------------------------------------------------------
NOT_ELSA = {
    'resnet_classifier': {'state_dict': {'conv1.weight': torch.zeros(64, 3, 7, 7),
                                         'fc.weight': torch.zeros(1000, 2048)}},
    'resnet_detector': {'state_dict': {'backbone.conv1.weight': torch.zeros(64, 3, 7, 7),
                                       'neck.lateral_convs.0.conv.weight': torch.zeros(4, 4)}},
}


@pytest.mark.parametrize('name', [
    'resnet_classifier',
    'resnet_detector',
])
def test_error_without_elsa_keys(name):
    """Checkpoints of other models are refused instead of converted to garbage."""
    with pytest.raises(ValueError, match='ELSA'):
        elsa2mmattn.convert_elsa(NOT_ELSA[name])


@pytest.mark.parametrize('shape', [(16, 7, 7), (2, 16, 7, 7), (1, 1, 16, 7, 7)])
def test_error_ghost_head_shape(shape):
    """A ghost head that is neither (1, C, k, k) nor (2, 1, C, k, k) is refused."""
    official = synthetic_checkpoint(official_key_table(SMALL), device='meta')
    official['layers.1.blocks.0.attn.ghost_head'] = torch.empty(shape, device='meta')
    with pytest.raises(ValueError, match='ghost_head'):
        elsa2mmattn.convert_elsa({'state_dict': official})


def test_error_non_tensor_value():
    """Non-tensor entries in the state dict raise ``TypeError``."""
    official = synthetic_checkpoint(official_key_table(SMALL), device='meta')
    official['layers.0.blocks.0.attn.ghost_head'] = [[0.] * 7] * 7
    with pytest.raises(TypeError, match='ghost_head'):
        elsa2mmattn.convert_elsa({'state_dict': official})
    # a training container that is not unwrapped (no state_dict/model) is not a state dict
    with pytest.raises(TypeError):
        elsa2mmattn.convert_elsa({'weights': OrderedDict(official), 'epoch': 3})
