"""CastlingSwitchHook on a dummy runner: the D2 schedule (spec V4), switch-off, resume,
by_epoch quantisation, model wrappers, argument checks."""
from types import SimpleNamespace

import pytest
import torch.nn as nn
from mmengine.logging import MessageHub

from mmattn.engine import HOOKS, CastlingSwitchHook
from mmattn.layers import LinearAngularAttention


def _runner(it=0, max_iters=1000, epoch=0, max_epochs=10, wrap=False):
    model = nn.Sequential(LinearAngularAttention(16, 2, sparse_reg=True), nn.Linear(16, 16),
                          nn.Sequential(LinearAngularAttention(16, 4, sparse_reg=True)))
    if wrap:  # a DDP-like wrapper: mmengine recognises registered wrappers by type
        from mmengine.model import MMDistributedDataParallel

        class Wrapper(MMDistributedDataParallel):
            def __init__(self, module):
                nn.Module.__init__(self)
                self.module = module
        model = Wrapper(model)
    return SimpleNamespace(iter=it, max_iters=max_iters, epoch=epoch, max_epochs=max_epochs,
                           model=model, message_hub=MessageHub.get_instance('castling_test'))


def _attns(runner):
    model = getattr(runner.model, 'module', runner.model)
    return [m for m in model.modules() if isinstance(m, LinearAngularAttention)]


# spec V4: max_iters 1000, start 0.2, end 0.6
@pytest.mark.parametrize('it,alpha', [(0, 1.), (100, 1.), (200, 1.), (300, 0.75), (400, 0.5),
                                      (450, 0.375), (599, 0.0025), (600, 0.), (999, 0.)])
def test_schedule(it, alpha):
    hook = CastlingSwitchHook(start=0.2, end=0.6)
    runner = _runner(it)
    hook.before_train_iter(runner, batch_idx=it)
    for m in _attns(runner):
        assert m.sparse_weight == pytest.approx(alpha)
        assert m.sparse_reg == (alpha > 0)
    assert runner.message_hub.get_scalar('train/castling_alpha').current() == \
        pytest.approx(alpha)


def test_run_through_the_schedule_and_resume():
    """Iterating from 0 and resuming a fresh model at iter 450 give the same alpha from then
    on: alpha depends on runner.iter only."""
    hook = CastlingSwitchHook(start=0.2, end=0.6)
    runner = _runner()
    hook.before_train(runner)
    seen = {}
    for it in range(0, 1000, 50):
        runner.iter = it
        hook.before_train_iter(runner, it)
        seen[it] = _attns(runner)[0].sparse_weight
    assert _attns(runner)[0].sparse_reg is False
    resumed_hook, resumed = CastlingSwitchHook(start=0.2, end=0.6), _runner(450)
    resumed_hook.before_train(resumed)
    assert _attns(resumed)[0].sparse_weight == pytest.approx(0.375)
    for it in range(450, 1000, 50):
        resumed.iter = it
        resumed_hook.before_train_iter(resumed, it)
        assert _attns(resumed)[0].sparse_weight == pytest.approx(seen[it])


def test_by_epoch_quantises_to_epochs():
    hook = CastlingSwitchHook(start=0., end=0.5, by_epoch=True)
    runner = _runner(it=123, epoch=2, max_epochs=10)
    hook.before_train_epoch(runner)
    assert _attns(runner)[0].sparse_weight == pytest.approx(0.6)
    runner.iter = 999  # iterations inside the epoch do not move alpha
    hook.before_train_iter(runner, 0)
    assert _attns(runner)[0].sparse_weight == pytest.approx(0.6)
    runner.epoch = 5
    hook.before_train_epoch(runner)
    assert all(m.sparse_weight == 0. and not m.sparse_reg for m in _attns(runner))


def test_step_when_start_equals_end():
    hook = CastlingSwitchHook(start=0.3, end=0.3)
    runner = _runner(299)
    hook.before_train_iter(runner, 0)
    assert _attns(runner)[0].sparse_weight == 1.
    runner.iter = 300
    hook.before_train_iter(runner, 0)
    assert _attns(runner)[0].sparse_weight == 0.


def test_reaches_modules_inside_a_wrapper():
    hook = CastlingSwitchHook(start=0., end=0.5)
    runner = _runner(250, wrap=True)
    hook.before_train_iter(runner, 0)
    assert [m.sparse_weight for m in _attns(runner)] == [0.5, 0.5]


def test_registered():
    assert HOOKS['CastlingSwitchHook'] is CastlingSwitchHook


@pytest.mark.parametrize('kwargs,error', [(dict(start=0.6, end=0.2), ValueError),
                                          (dict(start=-0.1), ValueError),
                                          (dict(end=1.5), ValueError),
                                          (dict(start='0'), TypeError)])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match='start|end'):
        CastlingSwitchHook(**kwargs)
