"""Registers mmattn's backbones, hooks and optimizer constructors into mmsegmentation.

Use it from any mmsegmentation config::

    custom_imports = dict(imports=['mmattn.seg'], allow_failed_imports=False)
"""
from mmseg.registry import (HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, PARAM_SCHEDULERS,
                         TRANSFORMS)

from ._adapter import register_components

register_components(MODELS, HOOKS, OPTIM_WRAPPER_CONSTRUCTORS, TRANSFORMS, PARAM_SCHEDULERS)
