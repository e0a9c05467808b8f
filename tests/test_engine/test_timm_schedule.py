"""The ELSA ImageNet schedule against timm's ``CosineLRScheduler`` (the official cls/train.py).

The oracle is a plain-Python transcription of timm's scheduler as the official run used it
(``t_initial=300, warmup_t=20, warmup_lr_init=1e-6, lr_min=1e-5, t_in_epochs=True``,
``cycle_limit=1``, 300 + 10 cool-down epochs, ``lr_scheduler.step(epoch + 1)`` after each epoch),
structured as timm's code is (warm-up steps per group, cycle index, ``t_curr``, ``t_i``), not as
mmattn's implementation.
"""
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmattn.engine import TimmCosineLR

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ELSA_T = osp.join(ROOT, 'configs', 'elsa_swin', 'elsa-swin-t_8xb128_in1k.py')


class TimmCosineOracle:
    """timm.scheduler.CosineLRScheduler._get_lr for one cycle (cycle_mul=1, decay_rate=1)."""

    def __init__(self, base_values, t_initial, lr_min, warmup_t, warmup_lr_init, cycle_limit=1):
        self.base_values, self.t_initial, self.lr_min = base_values, t_initial, lr_min
        self.warmup_t, self.warmup_lr_init, self.cycle_limit = warmup_t, warmup_lr_init, cycle_limit
        self.warmup_steps = [(v - warmup_lr_init) / warmup_t for v in base_values]

    def get_lr(self, t):
        if t < self.warmup_t:
            return [self.warmup_lr_init + t * s for s in self.warmup_steps]
        i = math.floor(t / self.t_initial)
        t_i = self.t_initial
        t_curr = t - self.t_initial * i
        if i < self.cycle_limit:
            return [self.lr_min + 0.5 * (v - self.lr_min) * (1 + math.cos(math.pi * t_curr / t_i))
                    for v in self.base_values]
        return [self.lr_min for _ in self.base_values]


def _config_lrs(epochs=310):
    """The lr of every epoch under the ELSA-T config's param_scheduler, stepped as mmengine's
    ParamSchedulerHook steps by-epoch schedulers (once after each training epoch)."""
    import mmattn.cls  # noqa: F401  (registers TimmCosineLR into mmpretrain)
    from mmpretrain.registry import PARAM_SCHEDULERS
    cfg = Config.fromfile(ELSA_T)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))],
                                  lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer))
                  for s in cfg.param_scheduler]
    assert not any(s.get('convert_to_iter_based') for s in cfg.param_scheduler)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        for s in schedulers:
            s.step()
    return cfg, lrs


def test_elsa_imagenet_schedule_is_timms_at_every_epoch():
    cfg, lrs = _config_lrs()
    assert cfg.train_cfg.max_epochs == 310
    oracle = TimmCosineOracle([1e-3], t_initial=300, lr_min=1e-5, warmup_t=20,
                              warmup_lr_init=1e-6)
    for epoch, lr in enumerate(lrs):
        assert lr == pytest.approx(oracle.get_lr(epoch)[0], abs=1e-9, rel=0), epoch
    # the checkpoints, and the shape of the schedule
    assert lrs[0] == pytest.approx(1e-6, abs=1e-12)
    assert lrs[20] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi / 15)))
    assert lrs[300] == lrs[309] == pytest.approx(1e-5)


def test_the_old_warm_up_prefix_schedule_would_fail_the_oracle():
    """mmengine's LinearLR + CosineAnnealingLR(begin=20, T_max=280) is the schedule this replaces:
    it differs from timm's by more than the tolerance (so the comparison above can fail)."""
    oracle = TimmCosineOracle([1e-3], t_initial=300, lr_min=1e-5, warmup_t=20,
                              warmup_lr_init=1e-6)
    prefix = [1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * (e - 20) / 280))
              for e in range(20, 300)]
    assert max(abs(a - oracle.get_lr(e)[0]) for a, e in zip(prefix, range(20, 300))) > 1e-5


def test_timm_cosine_lr_checks_its_arguments():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match='warmup_t'):
        TimmCosineLR(opt, t_initial=10, warmup_t=10)
    with pytest.raises(ValueError, match='t_initial'):
        TimmCosineLR(opt, t_initial=0)
    with pytest.raises(ValueError, match='by_epoch'):
        TimmCosineLR(opt, t_initial=10, by_epoch=False)


def test_resume_continues_the_schedule():
    """A scheduler restored from its state dict at epoch 150 gives the uninterrupted lrs."""
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        return opt, TimmCosineLR(opt, t_initial=300, warmup_t=20, warmup_lr_init=1e-6,
                                 lr_min=1e-5, end=310)
    opt, sched = make()
    for _ in range(150):
        opt.step()
        sched.step()
    state, lr150 = sched.state_dict(), opt.param_groups[0]['lr']
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    opt2.param_groups[0]['lr'] = lr150  # the optimizer's own state restores its lr
    for _ in range(5):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt2.param_groups[0]['lr'] == opt.param_groups[0]['lr']
