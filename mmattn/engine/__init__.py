"""Training-loop components: hooks, optimizer-wrapper constructors and param schedulers.

``HOOKS``, ``OPTIM_WRAPPER_CONSTRUCTORS`` and ``PARAM_SCHEDULERS`` map registry names to classes;
the adapters register them all.
"""
from typing import Dict

from .aux_loss import BackboneAuxLossHook
from .castling_switch import CastlingSwitchHook
from .safe_checkpoint import SafeCheckpointHook
from .schedulers import PARAM_SCHEDULERS, TimmCosineLR

HOOKS: Dict[str, type] = {
    'SafeCheckpointHook': SafeCheckpointHook,
    # the stock name too, so that default_hooks.checkpoint of every config is crash-safe
    'CheckpointHook': SafeCheckpointHook,
    'BackboneAuxLossHook': BackboneAuxLossHook,
    'CastlingSwitchHook': CastlingSwitchHook,
}
OPTIM_WRAPPER_CONSTRUCTORS: Dict[str, type] = {}

__all__ = ['HOOKS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'TimmCosineLR', 'BackboneAuxLossHook',
           'CastlingSwitchHook', 'SafeCheckpointHook']
