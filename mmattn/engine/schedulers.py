"""timm's cosine learning-rate schedule (``CosineLRScheduler``) as an mmengine param scheduler.

The official ELSA (and Swin/DeiT-era timm) ImageNet recipes use timm's scheduler with
``t_in_epochs=True``: the lr is set once per epoch, the cosine is counted from epoch 0 (the
linear warm-up overrides its first epochs instead of being a prefix), and after ``t_initial``
epochs the lr stays at ``lr_min`` for the cool-down epochs. mmengine's ``LinearLR`` +
``CosineAnnealingLR`` pair starts the cosine after the warm-up, which is a different schedule
(about 7 % more total lr over 300 epochs for ELSA's settings). This is an independent
implementation of timm's formula for one cycle (``cycle_limit=1``, no noise, no k-decay).
"""
import math
from typing import Dict, List

from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler


def timm_cosine_lr(epoch: int, base_lr: float, t_initial: int, warmup_t: int = 0,
                   warmup_lr_init: float = 0., lr_min: float = 0.) -> float:
    """The lr of ``epoch`` (0-based) under timm's one-cycle cosine schedule.

    * ``epoch < warmup_t``: linear from ``warmup_lr_init`` (epoch 0) towards ``base_lr``;
    * ``warmup_t <= epoch < t_initial``: ``lr_min + (base_lr - lr_min) * (1 + cos(pi * epoch /
      t_initial)) / 2`` (the phase counted from epoch 0, not from the end of the warm-up);
    * ``epoch >= t_initial``: ``lr_min`` (cool-down).
    """
    if epoch < warmup_t:
        return warmup_lr_init + epoch * (base_lr - warmup_lr_init) / warmup_t
    if epoch >= t_initial:
        return lr_min
    return lr_min + 0.5 * (base_lr - lr_min) * (1 + math.cos(math.pi * epoch / t_initial))


class TimmCosineLR(LRSchedulerMixin, _ParamScheduler):
    """timm's ``CosineLRScheduler(t_initial, warmup_t, warmup_lr_init, lr_min,
    t_in_epochs=True)`` for mmengine (see :func:`timm_cosine_lr`).

    Args:
        optimizer: the wrapped optimizer; each group's configured lr is its ``base_lr``.
        t_initial (int): epochs of the cosine cycle, counted from epoch 0 (300 for ELSA).
        warmup_t (int): linear warm-up epochs. Defaults to 0.
        warmup_lr_init (float): lr of epoch 0 during the warm-up (absolute, as in timm).
            Defaults to 0.
        lr_min (float): lr at the end of the cycle and during the cool-down (absolute).
            Defaults to 0.
        begin (int): first epoch the scheduler acts on. Defaults to 0.
        end (int): epoch it stops at. Defaults to INF.
        by_epoch (bool): must be True (timm's ``t_in_epochs=True``: one update per epoch).
        last_step (int): resume position. Defaults to -1.
        verbose (bool): print each update. Defaults to False.
    """

    def __init__(self, optimizer, t_initial: int, warmup_t: int = 0, warmup_lr_init: float = 0.,
                 lr_min: float = 0., begin: int = 0, end: int = INF, by_epoch: bool = True,
                 last_step: int = -1, verbose: bool = False) -> None:
        if not isinstance(t_initial, int) or t_initial < 1:
            raise ValueError(f't_initial must be a positive int (epochs), got {t_initial!r}')
        if not isinstance(warmup_t, int) or not 0 <= warmup_t < t_initial:
            raise ValueError(f'warmup_t must be an int in [0, t_initial={t_initial}), '
                             f'got {warmup_t!r}')
        if not by_epoch:
            raise ValueError('TimmCosineLR updates once per epoch (timm t_in_epochs=True): '
                             'by_epoch must be True and convert_to_iter_based unset')
        self.t_initial, self.warmup_t = t_initial, warmup_t
        self.warmup_lr_init, self.lr_min = float(warmup_lr_init), float(lr_min)
        super().__init__(optimizer, begin=begin, end=end, last_step=last_step,
                         by_epoch=by_epoch, verbose=verbose)

    def _lr(self, base: float) -> float:
        return timm_cosine_lr(self.last_step, base, self.t_initial, self.warmup_t,
                              self.warmup_lr_init, self.lr_min)

    def _get_value(self) -> List[float]:
        return [self._lr(base) for base in self.base_values]

    def _get_closed_form_lr(self) -> List[float]:
        return self._get_value()


PARAM_SCHEDULERS: Dict[str, type] = {'TimmCosineLR': TimmCosineLR}

__all__ = ['TimmCosineLR', 'timm_cosine_lr', 'PARAM_SCHEDULERS']
