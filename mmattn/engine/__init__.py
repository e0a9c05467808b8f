"""Training-loop components: hooks and optimizer-wrapper constructors.

``HOOKS`` and ``OPTIM_WRAPPER_CONSTRUCTORS`` map registry names to classes; the adapters
register them all.
"""
from typing import Dict

HOOKS: Dict[str, type] = {}
OPTIM_WRAPPER_CONSTRUCTORS: Dict[str, type] = {}

__all__ = ['HOOKS', 'OPTIM_WRAPPER_CONSTRUCTORS']
