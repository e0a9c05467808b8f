"""Converts an official ELSA-Swin checkpoint (github.com/damo-cv/ELSA) to mmattn.

Accepted inputs: a timm classification checkpoint (``state_dict_ema`` / ``state_dict`` / ``model``
container or a bare state dict, keys optionally prefixed ``module.``) and the mmdet 2.11 / mmseg
0.11 detection and segmentation checkpoints of the official repository (keys under
``backbone.``).

Outputs, saved as ``{'state_dict': ..., 'meta': ...}``:

* classification -> an mmpretrain ``ImageClassifier`` (``ELSASwin`` with ``out_indices=(3,)``,
  ``GlobalAveragePooling`` neck, ``LinearClsHead``): ``backbone.*``, ``norm`` -> ``backbone.norm3``,
  ``head`` -> ``head.fc``. It loads with ``strict=True`` and initialises detection/segmentation
  backbones through ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
* detection/segmentation -> the same full-model dict with the backbone converted; the necks and
  heads are passed through unchanged (their mmdet 2.x / mmseg 0.x layout is not converted).

Rules (spec ``elsa_swin.md`` section 10): ELSA blocks keep their names, ``ghost_head`` loses its
singleton axis (``[1, C, k, k] -> [C, k, k]``, ``[2, 1, C, k, k] -> [2, C, k, k]``); in the Swin
blocks of the last stage ``pre_proj`` (rows v, q, k) becomes ``qkv`` (rows q, k, v),
``post_proj`` becomes ``proj``, the head-major table ``rb`` (H, 169) becomes
``relative_position_bias_table = rb.flip(-1).T`` (169, H) and ``relative_id`` is dropped.

Example::

    python tools/model_converters/elsa2mmattn.py elsa_swin_tiny.pth elsa-swin-t_in1k.pth
"""
import argparse
import os.path as osp
import pickle
import re
import sys
from collections import OrderedDict
from typing import Dict, Mapping, Tuple

import torch

_SWIN_ATTN = re.compile(r'^(?P<block>layers\.\d+\.blocks\.\d+\.)attn\.'
                        r'(?P<name>rb|relative_id|pre_proj\.weight|pre_proj\.bias|'
                        r'post_proj\.weight|post_proj\.bias)$')
_GHOST = re.compile(r'^layers\.\d+\.blocks\.\d+\.attn\.ghost_head$')


def unwrap_checkpoint(checkpoint: Mapping, use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The model state dict of an official checkpoint, ``module.`` prefixes stripped.

    Takes ``state_dict_ema`` (when ``use_ema``), else ``state_dict``, else ``model``, else the
    mapping itself; everything else (optimizer, amp, meta, epoch, args) is dropped.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'checkpoint must be a mapping, got {type(checkpoint).__name__}')
    keys = (['state_dict_ema'] if use_ema else []) + ['state_dict', 'model']
    state = next((checkpoint[k] for k in keys if isinstance(checkpoint.get(k), Mapping)),
                 checkpoint)
    out = OrderedDict()
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise TypeError(f'{key!r} is a {type(value).__name__}, not a tensor: the file is not '
                            'an ELSA state dict or container')
        out[key[len('module.'):] if key.startswith('module.') else key] = value
    return out


def _swin_blocks(state: Mapping[str, torch.Tensor]) -> set:
    return {m['block'] for m in map(_SWIN_ATTN.match, state) if m and m['name'] == 'rb'}


def convert_backbone(state: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Official ELSA-Swin backbone keys (no prefix) -> mmattn ``ELSASwin`` keys."""
    swin_blocks = _swin_blocks(state)
    out = OrderedDict()
    for key, value in state.items():
        m = _SWIN_ATTN.match(key)
        if m and m['block'] in swin_blocks:
            block, name = m['block'], m['name']
            if name == 'relative_id':
                continue
            if name == 'rb':
                out[block + 'attn.relative_position_bias_table'] = value.flip(-1).t().contiguous()
            elif name.startswith('pre_proj'):
                v, q, k = value.chunk(3, dim=0)
                out[block + 'attn.qkv.' + name.split('.')[1]] = torch.cat([q, k, v]).contiguous()
            else:
                out[block + 'attn.proj.' + name.split('.')[1]] = value
        elif _GHOST.match(key):
            if value.dim() == 4 and value.shape[0] == 1:
                value = value[0]
            elif value.dim() == 5 and value.shape[:2] == (2, 1):
                value = value[:, 0]
            else:
                raise ValueError(f'{key}: expected shape (1, C, k, k) or (2, 1, C, k, k), got '
                                 f'{tuple(value.shape)}')
            out[key] = value.contiguous()
        else:
            out[key] = value
    return out


def convert_elsa(checkpoint: Mapping, use_ema: bool = True
                 ) -> Tuple['OrderedDict[str, torch.Tensor]', Dict[str, int]]:
    """Converts an official checkpoint (any container) to an mmattn full-model state dict.

    Returns:
        tuple: the state dict and a summary ``{'kind', 'backbone', 'passed_through'}`` with the
        kind (``'classification'`` or ``'dense'``) and key counts.
    """
    state = unwrap_checkpoint(checkpoint, use_ema)
    if any(k.startswith('backbone.') for k in state):
        if not any(k.startswith('backbone.layers.') for k in state):
            raise ValueError('the checkpoint has a backbone but no ELSA-Swin keys '
                             '(backbone.layers.*): not an ELSA detector or segmentor')
        backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
        others = OrderedDict((k, v) for k, v in state.items() if not k.startswith('backbone.'))
        out = OrderedDict(('backbone.' + k, v) for k, v in convert_backbone(backbone).items())
        out.update(others)
        return out, dict(kind='dense', backbone=len(backbone), passed_through=len(others))
    if not any(k.startswith('layers.') for k in state):
        raise ValueError('no ELSA-Swin keys (layers.*, or backbone.layers.*) in the checkpoint')
    out = OrderedDict()
    for key, value in convert_backbone(state).items():
        if key.startswith('norm.'):
            out['backbone.norm3.' + key[len('norm.'):]] = value
        elif key.startswith('head.'):
            out['head.fc.' + key[len('head.'):]] = value
        else:
            out['backbone.' + key] = value
    return out, dict(kind='classification', backbone=len(state), passed_through=0)


def load_official(path: str, unsafe: bool = False) -> Mapping:
    """``torch.load`` with timm's ``args`` Namespace and numpy scalars allow-listed."""
    if unsafe:
        return torch.load(path, map_location='cpu', weights_only=False)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from mmattn.utils import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        raise SystemExit(f'{path} holds objects that weights_only loading refuses ({err}); if you '
                         'trust the file, rerun with --unsafe-load') from err


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='official ELSA checkpoint')
    parser.add_argument('dst', help='output mmattn checkpoint')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='load with weights_only=False (only for a file you trust that holds '
                        'objects beyond tensors, argparse Namespaces and numpy scalars)')
    parser.add_argument('--no-ema', action='store_true',
                        help='take state_dict even when state_dict_ema exists (ELSA-Swin-B '
                        'reaches its published 84.0 with the EMA weights)')
    args = parser.parse_args(argv)
    checkpoint = load_official(args.src, args.unsafe_load)
    state, info = convert_elsa(checkpoint, use_ema=not args.no_ema)
    torch.save({'state_dict': state, 'meta': dict(converted_from=args.src, **info)}, args.dst)
    print(f'{args.src} ({info["kind"]}): {info["backbone"]} backbone keys converted, '
          f'{info["passed_through"]} other keys passed through unchanged -> {args.dst}')


if __name__ == '__main__':
    main()
