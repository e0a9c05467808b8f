"""Registration of mmattn's components into an OpenMMLab codebase (used by cls/det/seg.py)."""
from typing import Optional

from mmengine.registry import Registry


def register_components(models: Registry, hooks: Optional[Registry] = None,
                        optim_constructors: Optional[Registry] = None,
                        transforms: Optional[Registry] = None,
                        param_schedulers: Optional[Registry] = None) -> None:
    """Registers every mmattn backbone, hook, optimizer constructor, data transform and param
    scheduler into the given registries.

    Also makes mmengine checkpoints loadable under ``torch.load(weights_only=True)`` and adds
    the FLOP handles of mmattn's ops to mmengine's complexity analysis.
    """
    from .backbones import BACKBONES
    from .datasets import TRANSFORMS
    from .engine import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS, PARAM_SCHEDULERS
    from .ops.flops import register_flop_handles
    from .utils import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    register_flop_handles()
    for registry, table in ((models, BACKBONES), (hooks, HOOKS),
                            (optim_constructors, OPTIM_WRAPPER_CONSTRUCTORS),
                            (transforms, TRANSFORMS), (param_schedulers, PARAM_SCHEDULERS)):
        if registry is None:
            continue
        for name, cls in table.items():
            existing = registry.module_dict.get(name)
            if existing is not None and existing is not cls:
                raise KeyError(f'{name} is already registered in {registry.scope}::{registry.name} '
                               f'by another class; mmattn names must be unique')
            registry.register_module(name=name, module=cls, force=True)
