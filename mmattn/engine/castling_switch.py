"""``CastlingSwitchHook``: anneals Castling-ViT's masked-softmax branch to zero during training.

Paper: H. You et al., "Castling-ViT: Compressing Self-Attention via Switching Towards
Linear-Angular Attention During Vision Transformer Inference", arXiv 2211.10526 (CVPR 2023);
the paper's mask regulariser is not public, this hook is mmattn's replacement (spec
``specs/castling_vit.md`` D2).

With training progress ``p`` (``runner.iter / runner.max_iters``, or ``runner.epoch /
runner.max_epochs`` with ``by_epoch=True``), the branch weight is ``alpha = 1`` for
``p <= start``, ``(end - p) / (end - start)`` in between and ``0`` from ``end`` on, where the
hook also sets ``sparse_reg = False`` so that no L x L map is computed any more. ``alpha`` is a
function of the runner's counters only, so a resumed run continues the schedule where it stopped.
"""
from typing import Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmattn.layers import LinearAngularAttention


def castling_alpha(progress: float, start: float, end: float) -> float:
    """The branch weight at training progress ``progress`` in [0, 1] (D2's linear anneal)."""
    if progress >= end:
        return 0.
    if progress <= start:
        return 1.
    return (end - progress) / (end - start)


class CastlingSwitchHook(Hook):
    """Sets ``sparse_weight`` (and finally ``sparse_reg=False``) on every linear-angular
    attention of the model and logs it as ``train/castling_alpha``.

    Args:
        start (float): progress at which the anneal starts. Defaults to 0.
        end (float): progress at which the branch weight reaches 0 and the branch is switched
            off. Defaults to 0.5.
        by_epoch (bool): progress from epochs (updated before each epoch) instead of
            iterations (updated before each iteration). Defaults to False.
    """
    priority = 'NORMAL'

    def __init__(self, start: float = 0., end: float = 0.5, by_epoch: bool = False) -> None:
        for name, value in (('start', start), ('end', end)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f'{name} must be a number in [0, 1], got {value!r}')
        if not 0 <= start <= end <= 1:
            raise ValueError(f'CastlingSwitchHook needs 0 <= start <= end <= 1, '
                             f'got start={start!r}, end={end!r}')
        self.start, self.end, self.by_epoch = float(start), float(end), bool(by_epoch)
        self.alpha: Optional[float] = None

    def progress(self, runner) -> float:
        """Training progress in [0, 1] from the runner's counters."""
        if self.by_epoch:
            return runner.epoch / max(runner.max_epochs, 1)
        return runner.iter / max(runner.max_iters, 1)

    def apply(self, runner) -> float:
        """Computes alpha for the runner's current position and writes it to the model."""
        alpha = castling_alpha(self.progress(runner), self.start, self.end)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for m in model.modules():
            if isinstance(m, LinearAngularAttention):
                m.sparse_weight = alpha
                if alpha == 0.:
                    m.sparse_reg = False
        self.alpha = alpha
        runner.message_hub.update_scalar('train/castling_alpha', alpha)
        return alpha

    def before_train(self, runner) -> None:
        self.apply(runner)

    def before_train_epoch(self, runner) -> None:
        if self.by_epoch:
            self.apply(runner)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.by_epoch:  # keep logging the epoch's value at every iteration
            runner.message_hub.update_scalar('train/castling_alpha', self.alpha)
        else:
            self.apply(runner)
