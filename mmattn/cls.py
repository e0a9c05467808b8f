"""Registers mmattn's backbones, hooks and optimizer constructors into mmpretrain.

Use it from any mmpretrain config::

    custom_imports = dict(imports=['mmattn.cls'], allow_failed_imports=False)
"""
from mmpretrain.registry import (HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, PARAM_SCHEDULERS,
                         TRANSFORMS)

from ._adapter import register_components

register_components(MODELS, HOOKS, OPTIM_WRAPPER_CONSTRUCTORS, TRANSFORMS, PARAM_SCHEDULERS)
