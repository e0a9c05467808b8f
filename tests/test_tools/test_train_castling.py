"""CastlingSwitchHook end to end: the toy Castling-DeiT classifier through tools/train.py logs the
annealed branch weight on schedule (1 -> 0 over the first half), the trained checkpoint gives the
same outputs with the branch code disabled, and a run resumed mid-anneal continues the schedule."""
import os.path as osp
import shutil

import pytest
import torch

from _toy import ROOT, scalars, short_schedule, train

CFG = osp.join(ROOT, 'configs', 'toy', 'castling-deit-toy_toy-shapes.py')
ITERS = 8
# CastlingSwitchHook(start=0, end=0.5): alpha = 1 - p / 0.5 with p = iter / 8 before each
# iteration; the logger records it after the iteration as step iter + 1
EXPECTED = {1: 1., 2: .75, 3: .5, 4: .25, 5: 0., 6: 0., 7: 0., 8: 0.}


def _schedule(iters=ITERS):
    return short_schedule(iters) + ['default_hooks.checkpoint.max_keep_ckpts=-1']


def _alphas(work_dir):
    return {r['step']: r['castling_alpha'] for r in scalars(work_dir) if 'castling_alpha' in r}


@pytest.fixture(scope='module')
def full_run(workspace, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('castling_full')
    train(CFG, work_dir, workspace, *_schedule())
    return work_dir


def test_alpha_follows_the_schedule(full_run):
    alphas = _alphas(full_run)
    assert alphas.keys() == EXPECTED.keys()
    for step, alpha in EXPECTED.items():
        assert alphas[step] == pytest.approx(alpha), step
    assert osp.isfile(full_run / f'iter_{ITERS}.pth')


def test_checkpoint_evaluates_identically_without_the_branch(full_run):
    import mmattn.cls  # noqa: F401
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules

    from mmattn.layers import LinearAngularAttention
    from mmattn.utils import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    register_all_modules(init_default_scope=True)
    state = torch.load(full_run / f'iter_{ITERS}.pth', map_location='cpu')['state_dict']
    cfg = Config.fromfile(CFG)
    models = {}
    for sparse_reg in (True, False):
        cfg.model.backbone.sparse_reg = sparse_reg
        models[sparse_reg] = MODELS.build(cfg.model)
        models[sparse_reg].load_state_dict(state, strict=True)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        on, off = (models[s].eval()(x, mode='tensor') for s in (True, False))
        assert torch.equal(on, off)
        # the same weights with the branch running (train mode, alpha 1, every softmax entry
        # kept) give other outputs: the comparison above can fail
        branch = models[True].train()
        for m in branch.modules():
            if isinstance(m, LinearAngularAttention):
                m.sparse_weight, m.sparse_threshold = 1., 0.
        assert branch.backbone.layers[0].attn.branch_active()
        assert not torch.allclose(branch(x, mode='tensor'), off)


def test_resume_mid_anneal_continues_the_schedule(full_run, workspace, tmp_path):
    shutil.copy(full_run / 'iter_2.pth', tmp_path / 'iter_2.pth')
    proc = train(CFG, tmp_path, workspace, '--resume', str(tmp_path / 'iter_2.pth'),
                 *_schedule())
    assert 'resumed epoch: 0, iter: 2' in proc.stdout + proc.stderr
    alphas = _alphas(tmp_path)
    assert sorted(alphas) == list(range(3, ITERS + 1))
    for step in alphas:
        assert alphas[step] == pytest.approx(EXPECTED[step]), step
    assert alphas[3] == pytest.approx(0.5)  # mid-anneal, not restarted at 1
