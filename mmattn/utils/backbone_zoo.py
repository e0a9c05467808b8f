"""Every registered mmattn backbone variant and the OpenMMLab backbones they are compared with.

Used by ``tools/analysis_tools/benchmark_backbones.py --all``. The mmattn rows come from
``BACKBONES`` and the families' arch tables (:mod:`mmattn.backbones._variants`), so a family or
variant added there is measured with no edit here; the references are the OpenMMLab backbones of
similar size a user would otherwise pick.
"""
from typing import Dict, List, Sequence

import torch

# name, codebase, registry config, the mmattn family it is the natural peer of (Swin with
# pad_small_map: any input size; the same cost at 224)
REFERENCES: List[dict] = [
    dict(name='Swin-T', scope='mmpretrain',
         cfg=dict(type='SwinTransformer', arch='tiny', pad_small_map=True), peer='ELSASwin'),
    dict(name='Swin-S', scope='mmpretrain',
         cfg=dict(type='SwinTransformer', arch='small', pad_small_map=True), peer='ELSASwin'),
    dict(name='Swin-B', scope='mmpretrain',
         cfg=dict(type='SwinTransformer', arch='base', pad_small_map=True), peer='ELSASwin'),
    dict(name='ResNet-50', scope='mmpretrain', cfg=dict(type='ResNet', depth=50),
         peer='SASAResNet'),
    dict(name='DeiT-T', scope='mmpretrain', cfg=dict(type='VisionTransformer', arch='deit-tiny'),
         peer='CastlingViT'),
    dict(name='DeiT-S', scope='mmpretrain', cfg=dict(type='VisionTransformer', arch='deit-small'),
         peer='CastlingViT'),
    dict(name='DeiT-B', scope='mmpretrain', cfg=dict(type='VisionTransformer', arch='deit-base'),
         peer='CastlingViT'),
    dict(name='MViTv2-T', scope='mmpretrain', cfg=dict(type='MViT', arch='tiny'),
         peer='CastlingMViT'),
    dict(name='PVT-T', scope='mmdet', cfg=dict(type='PyramidVisionTransformer',
                                               num_layers=[2, 2, 2, 2]), peer='LaViT'),
    dict(name='PVT-S', scope='mmdet', cfg=dict(type='PyramidVisionTransformer',
                                               num_layers=[3, 4, 6, 3]), peer='LaViT'),
    dict(name='PVT-M', scope='mmdet', cfg=dict(type='PyramidVisionTransformer',
                                               num_layers=[3, 4, 18, 3]), peer='LaViT'),
]
# the references of --quick (the ones with published FLOPs to check the counting against)
QUICK_REFERENCES = ('Swin-T', 'ResNet-50')
REFERENCE_FAMILY = 'reference'


def mmattn_entries() -> List[dict]:
    """One entry per variant of every registered family: ``name`` (``Family-variant``),
    ``family``, ``spec`` (how :func:`build` makes it), ``params`` (count, from the meta device)."""
    from mmattn.backbones import BACKBONES
    from mmattn.backbones._variants import parameter_count, variants
    out = []
    for family, cls in sorted(BACKBONES.items()):
        for variant, kwargs in variants(cls).items():
            out.append(dict(name=f'{family}-{variant}', family=family,
                            spec=dict(kind='mmattn', cls=family, kwargs=kwargs),
                            params=parameter_count(cls, **kwargs)))
    return out


def reference_entries() -> List[dict]:
    return [dict(name=r['name'], family=REFERENCE_FAMILY, peer=r['peer'],
                 spec=dict(kind='registry', scope=r['scope'], cfg=r['cfg'])) for r in REFERENCES]


def select(names: Sequence[str] = (), quick: bool = False) -> List[dict]:
    """The entries to measure.

    Args:
        names: families (``ELSASwin``, case-insensitive) or variants (``ELSASwin-tiny``); empty
            for every family. References come with the families they are peers of.
        quick: the smallest variant of each selected family, and only the references of
            :data:`QUICK_REFERENCES`.

    Raises:
        ValueError: a name that is neither a registered family nor a variant (the message lists
            them).
    """
    ours = mmattn_entries()
    families = {e['family'].lower(): e['family'] for e in ours}
    by_name = {e['name'].lower(): e for e in ours}
    if names:
        chosen, fams = [], set()
        for name in names:
            key = name.lower()
            if key in families:
                fams.add(families[key])
                chosen += [e for e in ours if e['family'] == families[key]]
            elif key in by_name:
                fams.add(by_name[key]['family'])
                chosen.append(by_name[key])
            else:
                raise ValueError(f'{name!r} is neither a registered backbone family '
                                 f'({", ".join(sorted(families.values()))}) nor one of their '
                                 f'variants ({", ".join(e["name"] for e in ours)})')
        ours = [e for e in ours if any(e is c for c in chosen)]
    else:
        fams = set(families.values())
    if quick:
        smallest: Dict[str, dict] = {}
        for e in ours:
            if e['family'] not in smallest or e['params'] < smallest[e['family']]['params']:
                smallest[e['family']] = e
        ours = [e for e in ours if smallest[e['family']] is e]
    refs = [r for r in reference_entries() if r['peer'] in fams and
            (not quick or r['name'] in QUICK_REFERENCES)]
    return ours + refs


def build(spec: dict) -> torch.nn.Module:
    """The backbone an entry's ``spec`` describes (random weights)."""
    if spec['kind'] == 'mmattn':
        from mmattn.backbones import BACKBONES
        return BACKBONES[spec['cls']](**spec['kwargs'])
    if spec['kind'] == 'registry':
        import importlib
        registry = importlib.import_module(f"{spec['scope']}.registry")
        importlib.import_module(f"{spec['scope']}.models")  # registers the backbones
        # in the entry's own scope: a default scope left by an earlier runner (mmdet's, with its
        # own SwinTransformer) would otherwise pick another codebase's class of the same name
        return registry.MODELS.build(dict(spec['cfg'], _scope_=spec['scope']))
    raise ValueError(f"spec kind must be 'mmattn' or 'registry', got {spec['kind']!r}")


__all__ = ['REFERENCES', 'QUICK_REFERENCES', 'REFERENCE_FAMILY', 'mmattn_entries',
           'reference_entries', 'select', 'build']
