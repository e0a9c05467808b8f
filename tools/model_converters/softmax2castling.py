"""Converts a softmax DeiT / MViTv2 classifier checkpoint into a Castling-ViT initialisation.

Castling-ViT (H. You et al., arXiv 2211.10526, CVPR 2023; github.com/GATECH-EIC/Castling-ViT)
keeps the softmax attention's ``qkv``/``proj`` and adds one depthwise conv per layer (``dconv``).
mmattn's ``CastlingViT`` / ``CastlingMViT`` use mmpretrain's parameter names, so an mmpretrain
``VisionTransformer`` (DeiT) or ``MViT`` classifier initialises everything except ``dconv``
(spec ``specs/castling_vit.md`` D5). This tool makes that explicit and loadable with
``strict=True`` into the matching mmattn classifier:

* unwraps ``state_dict`` / ``model`` containers and ``module.`` prefixes;
* ``--src-format timm`` renames a timm DeiT (``blocks.`` -> ``layers.``, ``norm1/2`` ->
  ``ln1/2``, ``mlp.fc1`` -> ``ffn.layers.0.0``, ``mlp.fc2`` -> ``ffn.layers.1``,
  ``patch_embed.proj`` -> ``patch_embed.projection``, final ``norm.`` -> ``ln1.``, ``head.`` ->
  ``head.layers.head.``) and adds the ``backbone.`` prefix;
* drops, and lists: ``dist_token``, ``head_dist`` / ``head.layers.head_dist`` and the distillation
  row of ``pos_embed`` (distilled DeiT), ``rel_pos_h`` / ``rel_pos_w`` (MViTv2), and the head when
  it does not have 1000 classes;
* adds one ``dconv.weight`` per layer, ``[h, 1, k, 1]`` (``seq1d``) or ``[h, 1, 3, 3]``
  (``spatial2d``), zeros by default (the converted network then computes exactly the
  linear-angular attention of the softmax weights; the taps still get gradients) or PyTorch's
  Conv2d default with ``--dconv-init default``. Heads: MViTv2 ``C / d`` with ``d`` from
  ``pool_q``; DeiT ``C / --head-dim`` (64 for DeiT-T/S/B).

Output: ``{'state_dict': ..., 'meta': {...}}`` with the source, the options and the dropped and
added keys.

Example::

    python tools/model_converters/softmax2castling.py deit-tiny_in1k.pth castling-deit-t_init.pth \\
        --model deit
    python tools/model_converters/softmax2castling.py mvitv2-tiny_3rdparty_in1k.pth \\
        castling-mvitv2-t_init.pth --model mvit
"""
import argparse
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch
import torch.nn as nn

_TIMM_RENAMES = [
    (re.compile(r'^blocks\.'), 'layers.'),
    (re.compile(r'\.norm1\.'), '.ln1.'),
    (re.compile(r'\.norm2\.'), '.ln2.'),
    (re.compile(r'\.mlp\.fc1\.'), '.ffn.layers.0.0.'),
    (re.compile(r'\.mlp\.fc2\.'), '.ffn.layers.1.'),
    (re.compile(r'^patch_embed\.proj\.'), 'patch_embed.projection.'),
    (re.compile(r'^norm\.'), 'ln1.'),
]
_QKV = {'deit': re.compile(r'^backbone\.(layers\.\d+)\.attn\.qkv\.weight$'),
        'mvit': re.compile(r'^backbone\.(blocks\.\d+)\.attn\.qkv\.weight$')}


def unwrap(checkpoint: Mapping) -> 'OrderedDict[str, torch.Tensor]':
    """The tensors of ``state_dict`` / ``model`` (or the mapping itself), ``module.`` stripped."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'checkpoint must be a mapping, got {type(checkpoint).__name__}')
    state = next((checkpoint[k] for k in ('state_dict', 'model')
                  if isinstance(checkpoint.get(k), Mapping)), checkpoint)
    out = OrderedDict()
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise TypeError(f'{key!r} is a {type(value).__name__}, not a tensor: not a state dict')
        out[key[len('module.'):] if key.startswith('module.') else key] = value
    return out


def timm_to_mmpretrain(state: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """timm DeiT keys -> mmpretrain classifier keys (``backbone.*``, ``head.layers.head*``)."""
    out = OrderedDict()
    for key, value in state.items():
        if key.startswith('head_dist.'):
            out['head.layers.head_dist.' + key[len('head_dist.'):]] = value
            continue
        if key.startswith('head.'):
            out['head.layers.head.' + key[len('head.'):]] = value
            continue
        for pattern, repl in _TIMM_RENAMES:
            key = pattern.sub(repl, key)
        out['backbone.' + key] = value
    return out


def convert(state: Mapping[str, torch.Tensor], model: str, dconv_mode: str = 'seq1d',
            res_kernel_size: int = 9, dconv_init: str = 'zeros', head_dim: int = 64,
            num_classes: int = 1000) -> Tuple['OrderedDict[str, torch.Tensor]', List[str],
                                              List[str]]:
    """An mmpretrain-layout softmax classifier state dict -> a Castling classifier state dict.

    Args:
        state: keys ``backbone.*`` (and ``head.*``) of an mmpretrain DeiT or MViTv2 classifier.
        model: ``'deit'`` or ``'mvit'``.
        dconv_mode: ``'seq1d'`` or ``'spatial2d'``.
        res_kernel_size: taps of the ``seq1d`` conv.
        dconv_init: ``'zeros'`` or ``'default'`` (PyTorch's Conv2d init).
        head_dim: per-head width used to count DeiT heads (ignored for MViTv2).
        num_classes: head classes that are kept; another head is dropped.

    Returns:
        tuple: the converted state dict, the dropped keys, the added keys.
    """
    if model not in _QKV:
        raise ValueError(f'model must be one of {sorted(_QKV)}, got {model!r}')
    if dconv_mode not in ('seq1d', 'spatial2d'):
        raise ValueError(f"dconv_mode must be 'seq1d' or 'spatial2d', got {dconv_mode!r}")
    if dconv_init not in ('zeros', 'default'):
        raise ValueError(f"dconv_init must be 'zeros' or 'default', got {dconv_init!r}")
    layers = [m.group(1) for m in map(_QKV[model].match, state) if m]
    if not layers:
        where = 'layers' if model == 'deit' else 'blocks'
        raise ValueError(f'no {model} attention keys (backbone.{where}.N.attn.qkv.weight) in '
                         f'the checkpoint: wrong --model or --src-format?')
    distilled = 'backbone.dist_token' in state
    head_classes = {k: v.shape[0] for k, v in state.items()
                    if k.startswith('head.') and k.endswith('.weight') and v.dim() == 2}
    drop_head = any(n != num_classes for n in head_classes.values())
    out, dropped = OrderedDict(), []
    for key, value in state.items():
        if key.endswith(('rel_pos_h', 'rel_pos_w')) or 'dist_token' in key or \
                'head_dist' in key or (drop_head and key.startswith('head.')):
            dropped.append(key)
            continue
        if key == 'backbone.pos_embed' and distilled:
            value = torch.cat([value[:, :1], value[:, 2:]], dim=1)
        out[key] = value
    added = []
    for layer in layers:
        channels = state[f'backbone.{layer}.attn.qkv.weight'].shape[0] // 3
        if model == 'mvit':
            heads = channels // state[f'backbone.{layer}.attn.pool_q.weight'].shape[0]
        else:
            if channels % head_dim:
                raise ValueError(f'{layer}: width {channels} is not a multiple of '
                                 f'head_dim={head_dim}')
            heads = channels // head_dim
        kernel = (res_kernel_size, 1) if dconv_mode == 'seq1d' else (3, 3)
        conv = nn.Conv2d(heads, heads, kernel, groups=heads, bias=False)
        weight = conv.weight.detach() if dconv_init == 'default' else torch.zeros_like(conv.weight)
        key = f'backbone.{layer}.attn.dconv.weight'
        out[key] = weight.to(state[f'backbone.{layer}.attn.qkv.weight'].dtype).contiguous()
        added.append(key)
    return out, dropped, added


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='softmax classifier checkpoint')
    parser.add_argument('dst', help='output Castling classifier checkpoint')
    parser.add_argument('--model', required=True, choices=['deit', 'mvit'])
    parser.add_argument('--src-format', default='mmpretrain', choices=['mmpretrain', 'timm'])
    parser.add_argument('--dconv-mode', default='seq1d', choices=['seq1d', 'spatial2d'])
    parser.add_argument('--res-kernel-size', type=int, default=9)
    parser.add_argument('--dconv-init', default='zeros', choices=['zeros', 'default'])
    parser.add_argument('--head-dim', type=int, default=64,
                        help='DeiT per-head width used to count heads (64 for DeiT-T/S/B)')
    parser.add_argument('--num-classes', type=int, default=1000,
                        help='a head with another class count is dropped')
    parser.add_argument('--seed', type=int, default=0, help='seed of --dconv-init default')
    args = parser.parse_args(argv)
    if args.src_format == 'timm' and args.model != 'deit':
        parser.error('--src-format timm is only supported for --model deit')
    torch.manual_seed(args.seed)
    state = unwrap(torch.load(args.src, map_location='cpu', weights_only=True))
    if args.src_format == 'timm':
        state = timm_to_mmpretrain(state)
    out, dropped, added = convert(state, args.model, args.dconv_mode, args.res_kernel_size,
                                  args.dconv_init, args.head_dim, args.num_classes)
    meta = dict(converted_from=osp.basename(args.src), src_format=args.src_format,
                options=dict(model=args.model, dconv_mode=args.dconv_mode,
                             res_kernel_size=args.res_kernel_size, dconv_init=args.dconv_init,
                             head_dim=args.head_dim, num_classes=args.num_classes),
                dropped_keys=dropped, added_keys=added)
    torch.save({'state_dict': out, 'meta': meta}, args.dst)
    print(f'{args.src}: {len(out) - len(added)} keys kept, {len(added)} dconv keys added '
          f'({args.dconv_init}), {len(dropped)} dropped' +
          (f': {", ".join(dropped)}' if dropped else '') + f' -> {args.dst}')
    return meta


if __name__ == '__main__':
    main()
