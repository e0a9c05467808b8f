"""Registers mmattn's backbones, hooks and optimizer constructors into mmdet.

Use it from any mmdet config::

    custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)
"""
from mmdet.registry import (HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, PARAM_SCHEDULERS,
                         TRANSFORMS)

from ._adapter import register_components

register_components(MODELS, HOOKS, OPTIM_WRAPPER_CONSTRUCTORS, TRANSFORMS, PARAM_SCHEDULERS)
