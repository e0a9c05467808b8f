"""Argument checks shared by the backbones (one message per mistake, naming the argument)."""
from typing import Iterable, Mapping, Sequence, Tuple, Union


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


def lookup_arch(arch: Union[str, dict], zoo: Mapping[str, dict], required: Iterable[str],
                optional: Iterable[str] = ()) -> dict:
    """A copy of ``zoo[arch]`` for a variant name (case-insensitive), or of a custom ``arch``
    dict after checking that it has every ``required`` key and nothing beyond ``optional``.

    Raises:
        ValueError: unknown variant name, missing or unknown keys (all named).
        TypeError: ``arch`` is neither a str nor a dict.
    """
    if isinstance(arch, str):
        if arch.lower() not in zoo:
            raise ValueError(f'arch must be one of {sorted(set(zoo))} or a dict, got {arch!r}')
        return dict(zoo[arch.lower()])
    if not isinstance(arch, dict):
        raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
    required, optional = set(required), set(optional)
    missing, unknown = required - set(arch), set(arch) - required - optional
    if missing or unknown:
        extra = f' (optionally {sorted(optional)})' if optional else ''
        raise ValueError(f'a custom arch needs the keys {sorted(required)}{extra}; missing '
                         f'{sorted(missing)}, unknown {sorted(unknown)}')
    return dict(arch)
