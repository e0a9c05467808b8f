"""Safe loading of mmengine checkpoints with ``torch.load(weights_only=True)``.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, which unpickles only tensors,
containers, primitive types and an allow-list of globals. mmengine 0.10.7 checkpoints also hold
the message hub's :class:`~mmengine.logging.HistoryBuffer` objects with numpy arrays and scalars
inside, so ``--resume`` and ``load_from`` fail. :func:`allow_mmengine_checkpoints`

* adds exactly those globals (:func:`mmengine_safe_globals`) to torch's allow-list, and
* makes ``HistoryBuffer`` pickle without its default statistics functions. mmengine's
  ``__getstate__`` stores ``HistoryBuffer.min/max/current/mean``, which protocol-2 pickles as
  ``builtins.getattr(HistoryBuffer, 'min')``; allow-listing ``getattr`` would open the door to
  arbitrary attribute access, and ``__setstate__`` re-creates those defaults anyway, so they are
  simply left out (custom statistics registered by users are still saved).

``weights_only`` stays on: a checkpoint that pickles any other global is still refused.
"""
from typing import List

import numpy as np
import torch

_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')


def mmengine_safe_globals() -> List[object]:
    """The globals that mmengine 0.10.x writes into its checkpoints, beyond torch's defaults."""
    from mmengine.logging import HistoryBuffer

    core = getattr(np, '_core', None) or np.core  # numpy 2 / numpy 1
    # numeric and boolean dtypes are rebuilt through their (numpy >= 1.25) dtype classes
    codes = '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']
    dtype_classes = sorted({type(np.dtype(c)) for c in codes}, key=lambda t: t.__name__)
    return [HistoryBuffer, core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray,
            np.dtype, *dtype_classes]


def _history_buffer_getstate(self) -> dict:
    """``HistoryBuffer.__getstate__`` without the default statistics (see module doc)."""
    state = dict(self.__dict__)
    defaults = {name: getattr(type(self), name) for name in _DEFAULT_STATISTICS}
    state['statistics_methods'] = {
        name: fn for name, fn in self._statistics_methods.items() if defaults.get(name) is not fn}
    return state


def allow_mmengine_checkpoints() -> None:
    """Lets mmengine checkpoints load under ``torch.load(weights_only=True)``. Idempotent."""
    from mmengine.logging import HistoryBuffer

    HistoryBuffer.__getstate__ = _history_buffer_getstate
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:  # torch < 2.4: weights_only is opt-in there
        return
    known = set(map(id, torch.serialization.get_safe_globals()))
    add([g for g in mmengine_safe_globals() if id(g) not in known])
