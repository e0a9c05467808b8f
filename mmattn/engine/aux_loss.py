"""``BackboneAuxLossHook``: adds a backbone's auxiliary losses to the model's loss dict.

Used by LaViT's diagonality-preserving loss (``specs/lavit.md`` L6; S. Zhang et al., "You Only
Need Less Attention at Each Stage in Vision Transformers", CVPR 2024, arXiv 2406.00427). A
backbone that computes extra losses in its training forward exposes them through
``get_aux_losses() -> Dict[str, Tensor]`` (and clears them). The hook wraps the ``loss`` method
of the runner's model (unwrapped from DDP-style wrappers) once, before training: the wrapper
calls the original ``loss`` and merges the backbone's losses into the returned dict. This works
for mmpretrain classifiers, mmdet detectors and mmseg segmentors without forking their classes,
because each of them runs the backbone inside ``loss()``; the keys contain ``loss``, so mmengine
sums them into the total and logs them like every other loss.
"""
import functools
import logging
from typing import Any, Callable, Dict

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

_WRAPPED = '_mmattn_aux_loss_wrapped'


def merge_aux_losses(losses: Dict[str, Any], aux: Dict[str, Any]) -> Dict[str, Any]:
    """``losses`` updated with ``aux``; a key present in both raises ``KeyError``.

    mmpretrain's heads call their loss ``loss``. mmengine's ``parse_losses`` logs the total of
    all ``*loss*`` entries under ``loss`` and then lets an entry of that name overwrite it, so
    the logged total would miss the auxiliary losses; when ``aux`` is not empty such an entry is
    therefore renamed ``loss_cls`` (the optimised total is the same either way).
    """
    if not aux:
        return losses
    clash = sorted(set(losses) & set(aux))
    if clash:
        raise KeyError(f'the backbone\'s auxiliary losses {clash} collide with the model\'s '
                       f'own losses')
    if 'loss' in losses:
        if 'loss_cls' in losses or 'loss_cls' in aux:
            raise KeyError("the model returns both 'loss' and 'loss_cls'; cannot rename 'loss'")
        losses = {('loss_cls' if k == 'loss' else k): v for k, v in losses.items()}
    losses.update(aux)
    return losses


def add_backbone_aux_losses(model: nn.Module) -> bool:
    """Wraps ``model.loss`` so that it also returns ``model.backbone.get_aux_losses()``.

    Args:
        model (nn.Module): an OpenMMLab model (a DDP-style wrapper is unwrapped).

    Returns:
        bool: True if ``model.loss`` is wrapped (now or before), False if the model has no
        ``loss`` method or its backbone no ``get_aux_losses``.
    """
    if is_model_wrapper(model):
        model = model.module
    backbone = getattr(model, 'backbone', None)
    if not callable(getattr(model, 'loss', None)) or \
            not callable(getattr(backbone, 'get_aux_losses', None)):
        return False
    if getattr(model, _WRAPPED, False):
        return True
    original: Callable = model.loss

    @functools.wraps(original)
    def loss_with_aux(*args, **kwargs):
        losses = original(*args, **kwargs)
        return merge_aux_losses(losses, model.backbone.get_aux_losses())

    model.loss = loss_with_aux
    setattr(model, _WRAPPED, True)
    return True


class BackboneAuxLossHook(Hook):
    """Adds the backbone's auxiliary losses (``get_aux_losses()``, e.g. LaViT's ``loss_dp``)
    to the losses of the runner's model, from ``before_train`` on.

    Config::

        custom_hooks = [dict(type='BackboneAuxLossHook')]

    A model whose backbone has no ``get_aux_losses`` is left unchanged (with a warning).
    """
    priority = 'NORMAL'

    def before_train(self, runner) -> None:
        if not add_backbone_aux_losses(runner.model):
            print_log('BackboneAuxLossHook: the model has no loss() or its backbone no '
                      'get_aux_losses(); nothing to add', logger='current',
                      level=logging.WARNING)
