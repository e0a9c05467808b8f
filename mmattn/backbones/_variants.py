"""The variants of every registered backbone, read from the families' arch tables.

A family declares its variants as ``arch_zoo`` (``arch='t'``-style keys, aliases allowed) or, like
ResNets, ``arch_settings`` (keyed by ``depth``). Tools and tests that cover "every variant of every
family" go through :func:`variants`, so a family added to ``BACKBONES`` is covered with no edit.
"""
from typing import Dict, Tuple

import torch


def variants(cls: type) -> Dict[str, dict]:
    """``{variant name: constructor kwargs}`` of a backbone class, one entry per distinct row
    (aliases such as ``'t'``/``'tiny'`` collapse to the longest name)."""
    if hasattr(cls, 'arch_zoo'):
        rows: Dict[str, Tuple[str, object]] = {}
        for key, row in cls.arch_zoo.items():
            ident = repr(sorted(row.items())) if isinstance(row, dict) else repr(row)
            if ident not in rows or len(key) > len(rows[ident][0]):
                rows[ident] = (key, row)
        return {key: dict(arch=key) for key, _ in rows.values()}
    if hasattr(cls, 'arch_settings'):
        return {str(depth): dict(depth=depth) for depth in cls.arch_settings}
    raise TypeError(f'{cls.__name__} has neither an arch_zoo nor an arch_settings table')


def parameter_count(cls: type, **kwargs) -> int:
    """Parameters of ``cls(**kwargs)``, built on the meta device (no memory, no init)."""
    with torch.device('meta'):
        model = cls(**kwargs)
    return sum(p.numel() for p in model.parameters())


def smallest_variant(cls: type) -> Tuple[str, dict]:
    """The variant of ``cls`` with the fewest parameters: ``(name, kwargs)``."""
    table = variants(cls)
    name = min(table, key=lambda k: parameter_count(cls, **table[k]))
    return name, table[name]
