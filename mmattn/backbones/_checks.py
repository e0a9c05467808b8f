"""Argument checks shared by the backbones (one message per mistake, naming the argument)."""
from typing import Sequence, Tuple


def check_stage_args(out_indices: Sequence[int], frozen_stages: int,
                     num_stages: int = 4) -> Tuple[int, ...]:
    """Validates ``out_indices`` (non-empty subset of the stages) and ``frozen_stages``
    (``-1`` to ``num_stages``); returns ``out_indices`` as a tuple."""
    out_indices = tuple(out_indices)
    stages = tuple(range(num_stages))
    if not out_indices or any(not isinstance(i, int) or i not in stages for i in out_indices):
        raise ValueError(f'out_indices must be a non-empty subset of {stages}, '
                         f'got {out_indices!r}')
    if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_stages:
        raise ValueError(f'frozen_stages must be an int in [-1, {num_stages}], '
                         f'got {frozen_stages!r}')
    return out_indices
