"""LaViT: the Less-Attention Vision Transformer on the PVT v1 hierarchy (mmattn design).

Paper: S. Zhang, H. Liu, S. Lin, K. He, "You Only Need Less Attention at Each Stage in Vision
Transformers", CVPR 2024, arXiv 2406.00427. The authors published no code and no weights; this
is the mmattn design of ``specs/lavit.md`` (decisions L1-L10), which keeps the published
elements (vanilla-attention layers at the start of each stage, less-attention layers that
transform the previous attention, the attention residual between stages, the
diagonality-preserving loss) and makes every learned tensor independent of the input size (keys
and values pooled to a fixed ``P x P`` grid, Psi a convolution over the query grid). Results are
"mmattn LaViT", not a reproduction of the paper's numbers.

Base hierarchy: PVT v1 (W. Wang et al., ICCV 2021, arXiv 2102.12122, github.com/whai362/PVT);
state-dict names follow its ``classification/pvt.py`` where a tensor has the same role.

Not to be confused with mmpretrain's ``LeViT`` (a different model; the names differ in one
letter), nor with the unrelated projects LaVIT (jy0205/LaVIT) and LaViT (arXiv 2601.10129).
"""
import math
import warnings
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmattn.layers import AttentionResidual, LaViTAttentionLA, LaViTBlock

from ._checks import check_stage_args, lookup_arch

HwShape = Tuple[int, int]


class LaViTPatchEmbed(nn.Module):
    """``patch x patch`` stride-``patch`` convolution and LayerNorm (eps 1e-6); the input is
    zero-padded on the bottom and right to a multiple of ``patch`` first (spec L1)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, HwShape]:
        p = self.patch_size
        x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))
        x = self.proj(x)
        hw_shape = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw_shape


class LaViT(BaseModule):
    """LaViT-T/S/B backbone for classification and dense prediction (``specs/lavit.md``).

    Each stage is a patch embedding (stride 4, 2, 2, 2), a resizable absolute position embedding
    and blocks: the first ``num_va`` are vanilla-attention (VA) layers, the others
    less-attention (LA) layers whose logits are ``Psi(Theta(previous logits))``, without query or
    key projections. Keys and values come from tokens pooled to a ``pool_size x pool_size`` grid,
    so every attention matrix is ``(B, heads, N, pool_size**2)`` at any input size. The last
    logits of stage ``m - 1`` reach the first VA layer of stage ``m`` through ``attn_res{m}``.

    In training mode with ``dp_loss_weight > 0`` the backbone also computes the
    diagonality-preserving loss over its LA layers (of the stages that are not frozen);
    :meth:`get_aux_losses` hands it over as ``{'loss_dp': ...}``, and
    :class:`mmattn.engine.BackboneAuxLossHook` adds it to the model's losses.

    Outputs: output ``i`` is ``norm{i+1}`` of stage ``i + 1``, NCHW, with 64 / 128 / 320 / 512
    channels (by default) at strides 4 / 8 / 16 / 32 and ``ceil(H / stride)`` pixels.

    Args:
        arch (str | dict): ``'t'``/``'tiny'``, ``'s'``/``'small'``, ``'b'``/``'base'``, or a dict
            with ``depths`` and optionally ``embed_dims``, ``num_heads``, ``mlp_ratios``,
            ``patch_sizes`` (four entries each). Defaults to ``'s'``.
        img_size (int | tuple): native input size of the position embeddings. Defaults to 224.
        in_channels (int): image channels. Defaults to 3.
        pool_size (int): side ``P`` of the pooled key/value grid. Defaults to 7.
        num_va (int | Sequence[int]): VA layers at the start of each stage (1 to the stage's
            depth). Defaults to 1.
        qkv_bias (bool): biases of ``q``, ``kv`` and ``v``. Defaults to True.
        drop_rate (float): dropout after the position embeddings, projections and MLP layers.
            Defaults to 0.
        drop_path_rate (float): stochastic depth, linear from 0 over all blocks. Defaults to 0.1.
        attn_res_init (float): initial layer scale of the attention residuals. Defaults to 1e-2.
        dp_loss_weight (float): weight of the diagonality-preserving loss; 0 disables it.
            Defaults to 0.1.
        out_indices (Sequence[int]): stages to return (0-based). Defaults to ``(3, )``.
        frozen_stages (int): -1 freezes nothing; 0 freezes ``patch_embed1`` and ``pos_embed1``;
            ``n >= 1`` freezes stages 1..n (patch and position embeddings, blocks, incoming
            ``attn_res``, output norms).
        norm_eval (bool): accepted for interface uniformity; LaViT has no BatchNorm.
        with_cp (bool): activation checkpointing of every block. Defaults to False.
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=...,
            prefix='backbone.')``.
    """
    shared: Dict[str, tuple] = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8),
                                    mlp_ratios=(8, 8, 4, 4), patch_sizes=(4, 2, 2, 2))
    arch_zoo: Dict[str, dict] = {
        **dict.fromkeys(['t', 'tiny'], dict(depths=(2, 2, 2, 2))),
        **dict.fromkeys(['s', 'small'], dict(depths=(3, 4, 6, 3))),
        **dict.fromkeys(['b', 'base'], dict(depths=(3, 4, 18, 3))),
    }
    num_stages = 4

    def __init__(self, arch: Union[str, dict] = 's', img_size: Union[int, Sequence[int]] = 224,
                 in_channels: int = 3, pool_size: int = 7, num_va: Union[int, Sequence[int]] = 1,
                 qkv_bias: bool = True, drop_rate: float = 0., drop_path_rate: float = 0.1,
                 attn_res_init: float = 1e-2, dp_loss_weight: float = 0.1,
                 out_indices: Sequence[int] = (3, ), frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        out_indices = check_stage_args(out_indices, frozen_stages, self.num_stages)
        img_size = self._check_img_size(img_size)
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 2:
            raise ValueError(f'pool_size must be an int >= 2, got {pool_size!r}')
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        if isinstance(dp_loss_weight, bool) or not isinstance(dp_loss_weight, (int, float)):
            raise TypeError(f'dp_loss_weight must be a number, got {dp_loss_weight!r}')
        if dp_loss_weight < 0:
            raise ValueError(f'dp_loss_weight must be >= 0, got {dp_loss_weight!r}')
        if not isinstance(norm_eval, bool):
            raise TypeError(f'norm_eval must be a bool, got {norm_eval!r}')
        depths = arch['depths']
        num_va = self._check_num_va(num_va, depths)

        self.arch, self.out_indices, self.frozen_stages = arch, out_indices, frozen_stages
        self.img_size, self.pool_size, self.num_va = img_size, pool_size, num_va
        self.dp_loss_weight = float(dp_loss_weight)
        self.norm_eval, self.with_cp = norm_eval, with_cp
        self.num_features = tuple(arch['embed_dims'])
        self._aux_loss: Optional[torch.Tensor] = None
        self._warned_uncollected = False

        dims, heads = arch['embed_dims'], arch['num_heads']
        total = sum(depths)  # stochastic depth: linear from 0 to drop_path_rate over all blocks
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.native_grids: List[HwShape] = []
        grid, in_dim = img_size, in_channels
        for i in range(self.num_stages):
            m = i + 1
            p = arch['patch_sizes'][i]
            grid = (math.ceil(grid[0] / p), math.ceil(grid[1] / p))
            self.native_grids.append(grid)
            self.add_module(f'patch_embed{m}', LaViTPatchEmbed(in_dim, dims[i], p))
            pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dims[i]))
            nn.init.trunc_normal_(pos, std=.02)
            self.register_parameter(f'pos_embed{m}', pos)
            if m > 1:
                self.add_module(f'attn_res{m}', AttentionResidual(heads[i - 1], heads[i],
                                                                  pool_size, attn_res_init))
            stage_rates = rates[sum(depths[:i]):sum(depths[:i + 1])]
            self.add_module(f'block{m}', nn.ModuleList([
                LaViTBlock(dims[i], heads[i], arch['mlp_ratios'][i], vanilla=j < num_va[i],
                           pool_size=pool_size, qkv_bias=qkv_bias, drop=drop_rate,
                           drop_path=rate, with_cp=with_cp)
                for j, rate in enumerate(stage_rates)]))
            if i in out_indices:
                self.add_module(f'norm{m}', nn.LayerNorm(dims[i], eps=1e-6))
            in_dim = dims[i]
        self.pos_drop = nn.Dropout(drop_rate)
        self._freeze_stages()

    # ------------------------------------------------------------------ argument checks
    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            return dict(cls.shared, **lookup_arch(arch, cls.arch_zoo, ()))
        allowed = {'depths'} | set(cls.shared)
        arch = dict(cls.shared, **lookup_arch(arch, cls.arch_zoo, ('depths', ), cls.shared))
        for key in sorted(allowed):
            value = arch[key]
            number = (int, float) if key == 'mlp_ratios' else int
            if (not isinstance(value, (list, tuple)) or len(value) != cls.num_stages
                    or any(isinstance(v, bool) or not isinstance(v, number) or v <= 0
                           for v in value)):
                raise ValueError(f'arch[{key!r}] needs {cls.num_stages} positive numbers, '
                                 f'got {value!r}')
            arch[key] = tuple(value)
        for dim, h in zip(arch['embed_dims'], arch['num_heads']):
            if dim % h:
                raise ValueError(f"arch['embed_dims'] {arch['embed_dims']} must be multiples of "
                                 f"arch['num_heads'] {arch['num_heads']}")
        return arch

    @staticmethod
    def _check_img_size(img_size) -> HwShape:
        if isinstance(img_size, int) and not isinstance(img_size, bool):
            img_size = (img_size, img_size)
        if (not isinstance(img_size, (list, tuple)) or len(img_size) != 2
                or any(not isinstance(s, int) or s < 1 for s in img_size)):
            raise ValueError(f'img_size must be a positive int or (height, width), '
                             f'got {img_size!r}')
        return tuple(img_size)

    @classmethod
    def _check_num_va(cls, num_va, depths) -> Tuple[int, ...]:
        if isinstance(num_va, int) and not isinstance(num_va, bool):
            num_va = (num_va, ) * cls.num_stages
        if (not isinstance(num_va, (list, tuple)) or len(num_va) != cls.num_stages
                or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= d
                       for v, d in zip(num_va, depths))):
            raise ValueError(f'num_va must be an int or {cls.num_stages} ints, each between 1 '
                             f'and the stage depth {tuple(depths)}, got {num_va!r}')
        return tuple(num_va)

    # ------------------------------------------------------------------ initialisation
    def init_weights(self) -> None:
        """Linear: truncated normal (std 0.02, bias 0); LayerNorm (1, 0); other convolutions
        normal with std ``sqrt(2 / fan_out)`` (PVT v2); position embeddings truncated normal;
        then the identity start of Theta/Psi and the attention-residual initialisation (spec
        L9). A generic ``init_cfg`` is applied first and the L4/L5 values are re-applied after
        it; a ``Pretrained`` ``init_cfg`` keeps the loaded values."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        if self.init_cfg is not None:
            super().init_weights()
            if any(isinstance(c, dict) and c.get('type') == 'Pretrained' for c in cfgs):
                return
        else:
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Conv2d):
                    k = module.kernel_size
                    fan_out = k[0] * k[1] * module.out_channels // module.groups
                    nn.init.normal_(module.weight, 0, math.sqrt(2. / fan_out))
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            for i in range(self.num_stages):
                nn.init.trunc_normal_(getattr(self, f'pos_embed{i + 1}'), std=.02)
        for module in self.modules():
            if isinstance(module, LaViTAttentionLA):
                module.reset_transforms()
            elif isinstance(module, AttentionResidual):
                module.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Resizes square position embeddings of a checkpoint trained at another ``img_size``
        to this model's native grids (bilinear, ``align_corners=False``)."""
        for i in range(self.num_stages):
            key = f'{prefix}pos_embed{i + 1}'
            ours = getattr(self, f'pos_embed{i + 1}')
            theirs = state_dict.get(key)
            if theirs is None or theirs.shape == ours.shape or theirs.dim() != 3:
                continue
            side = math.isqrt(theirs.shape[1])
            if side * side == theirs.shape[1] and theirs.shape[2] == ours.shape[2]:
                state_dict[key] = self._resize_pos(theirs, (side, side), self.native_grids[i])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @staticmethod
    def _resize_pos(pos: torch.Tensor, src: HwShape, dst: HwShape) -> torch.Tensor:
        c = pos.shape[-1]
        img = pos.reshape(1, src[0], src[1], c).permute(0, 3, 1, 2)
        img = F.interpolate(img, size=dst, mode='bilinear', align_corners=False)
        return img.flatten(2).transpose(1, 2)

    def no_weight_decay(self) -> Set[str]:
        """Position embeddings and attention-residual layer scales (spec 6)."""
        return {name for name, _ in self.named_parameters()
                if name.startswith('pos_embed') or name.endswith('.gamma')}

    # ------------------------------------------------------------------ freezing
    def _stage_modules(self, m: int) -> List[nn.Module]:
        mods = [getattr(self, f'patch_embed{m}'), getattr(self, f'block{m}')]
        for name in (f'attn_res{m}', f'norm{m}'):
            if hasattr(self, name):
                mods.append(getattr(self, name))
        return mods

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        modules: List[nn.Module] = [self.patch_embed1]
        params = [self.pos_embed1]
        for m in range(1, self.frozen_stages + 1):
            modules += self._stage_modules(m)
            params.append(getattr(self, f'pos_embed{m}'))
        for module in modules:
            module.eval()
            params += list(module.parameters())
        for p in params:
            p.requires_grad = False

    def train(self, mode: bool = True) -> 'LaViT':
        super().train(mode)
        self._freeze_stages()
        return self

    # ------------------------------------------------------------------ forward
    def _pos_embed(self, i: int, hw_shape: HwShape) -> torch.Tensor:
        """Stage ``i``'s position embedding on ``hw_shape``, compared with *its own* native
        grid (spec L1; PVT v1 compared every stage with stage 1's size)."""
        pos = getattr(self, f'pos_embed{i + 1}')
        native = self.native_grids[i]
        if tuple(hw_shape) == native:
            return pos
        return self._resize_pos(pos, native, hw_shape)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        with_dp = self.training and self.dp_loss_weight > 0
        if with_dp and self._aux_loss is not None:
            self._aux_loss = None
            if not self._warned_uncollected:
                self._warned_uncollected = True
                warnings.warn('LaViT: the diagonality-preserving loss of the previous training '
                              'forward was never collected and is discarded; add '
                              "dict(type='BackboneAuxLossHook') to custom_hooks (or set "
                              'dp_loss_weight=0)', stacklevel=2)
        outs, dp_terms = [], []
        logits, hw_shape = None, None
        for i in range(self.num_stages):
            m = i + 1
            if i > 0:  # tokens -> image for the next patch embedding
                b, _, c = x.shape
                x = x.transpose(1, 2).reshape(b, c, *hw_shape)
            prev_hw = hw_shape
            x, hw_shape = getattr(self, f'patch_embed{m}')(x)
            x = self.pos_drop(x + self._pos_embed(i, hw_shape))
            residual = None
            if i > 0:
                residual, res_hw = getattr(self, f'attn_res{m}')(logits, prev_hw)
                assert res_hw == hw_shape, (res_hw, hw_shape)
            stage_dp = with_dp and m > self.frozen_stages
            for j, block in enumerate(getattr(self, f'block{m}')):
                extra = (residual if j == 0 else None) if block.vanilla else logits
                x, logits, dp = block(x, hw_shape, extra, with_dp=stage_dp)
                if dp is not None:
                    dp_terms.append(dp)
            if i in self.out_indices:
                out = getattr(self, f'norm{m}')(x)
                outs.append(out.view(-1, *hw_shape, out.shape[-1]).permute(0, 3, 1, 2)
                            .contiguous())
        if dp_terms:
            self._aux_loss = self.dp_loss_weight * torch.stack(dp_terms).mean()
        return tuple(outs)

    def get_aux_losses(self) -> Dict[str, torch.Tensor]:
        """``{'loss_dp': weighted DP loss}`` of the last training forward, then cleared; ``{}``
        in eval mode, with ``dp_loss_weight=0``, or when no LA layer of an unfrozen stage ran."""
        loss, self._aux_loss = self._aux_loss, None
        if loss is None or not self.training:
            return {}
        return {'loss_dp': loss}
