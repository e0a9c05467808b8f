"""End to end through tools/train.py, tools/test.py, dist_train.sh and mim on the toy data.

Each run trains a few iterations from random initialisation on a tiny generated dataset; the
tests check the evaluation metrics, checkpoints, resumption and the tools' outputs, not accuracy.
"""
import glob
import os
import os.path as osp
import pickle
import re
import shutil
import socket
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(ROOT, 'configs', 'toy')
DET = osp.join(TOY, 'mask-rcnn_r18_fpn_toy-shapes.py')
SEG = osp.join(TOY, 'upernet_r18_toy-shapes-128x128.py')
CLS = osp.join(TOY, 'resnet18_toy-shapes.py')

from _toy import last_scalars, run, short_schedule, toy_configs, train  # noqa: E402

# every toy config trains 2 iterations through tools/train.py and evaluates; the metrics
# expected of each codebase
METRICS = {'mmdet': ('coco/bbox_mAP', ), 'mmseg': ('mIoU', ), 'mmpretrain': ('accuracy/top1', )}
TOY_CONFIGS = toy_configs()


@pytest.mark.parametrize('config', sorted(TOY_CONFIGS), ids=osp.basename)
def test_train_and_evaluate(workspace, tmp_path, config):
    scope = TOY_CONFIGS[config]
    keys = METRICS[scope] + (('coco/segm_mAP', ) if 'mask-rcnn' in osp.basename(config) else ())
    train(config, tmp_path, workspace, *short_schedule(2))
    metrics = last_scalars(tmp_path)
    for key in keys:
        assert key in metrics, f'{key} not evaluated: {sorted(metrics)}'
        assert 0.0 <= metrics[key] <= 100.0
    assert osp.isfile(tmp_path / 'iter_2.pth')


def make_state_recorder():
    """An mmengine hook recording the iteration and optimizer state right after resumption."""
    import copy

    from mmengine.hooks import Hook

    class StateRecorder(Hook):
        priority = 'VERY_LOW'
        iter, state = None, None

        def before_train(self, runner):
            self.iter = runner.iter
            self.state = copy.deepcopy(runner.optim_wrapper.state_dict())

    return StateRecorder()


def test_resume_restores_iteration_and_optimizer(workspace, tmp_path):
    # "interrupted" after 2 iterations
    from mmattn.utils import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    train(DET, tmp_path, workspace, *short_schedule(2))
    saved = torch.load(tmp_path / 'iter_2.pth', map_location='cpu')  # weights_only=True
    assert saved['meta']['iter'] == 2

    # resume in-process to inspect the runner right after loading the checkpoint
    from mmattn.utils.tools import build_runner, load_config
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        opts = {'train_cfg.max_iters': 4, 'train_cfg.val_interval': 4,
                'default_hooks.checkpoint.interval': 2}
        cfg = load_config(DET, opts, 'none', str(tmp_path))
        cfg.resume = True
        runner = build_runner(cfg)
        recorder = make_state_recorder()
        runner.register_hook(recorder)
        runner.train()
    finally:
        os.chdir(cwd)
    assert recorder.iter == 2
    expected = saved['optimizer']['state']
    got = recorder.state['state']
    assert expected.keys() == got.keys() and len(got) > 0
    for index, state in expected.items():
        for name, value in state.items():
            assert torch.equal(got[index][name], value), (index, name)
    assert torch.load(tmp_path / 'iter_4.pth', map_location='cpu')['meta']['iter'] == 4

    # and through the command line: --resume picks up iter_4 and continues to 6
    proc = train(DET, tmp_path, workspace, '--resume', *short_schedule(6, 2))
    assert 'resumed epoch: 0, iter: 4' in proc.stdout + proc.stderr
    assert osp.isfile(tmp_path / 'iter_6.pth')


def test_resume_refuses_forbidden_pickle(workspace, tmp_path):
    evil = tmp_path / 'evil.pth'
    # a checkpoint whose pickle calls os.system: refused by weights_only, never executed
    torch.save({'state_dict': {}, 'meta': {'iter': 0}, 'x': _Evil()}, evil)
    proc = train(CLS, tmp_path / 'run', workspace, '--resume', str(evil), *short_schedule(2),
                 check=False)
    assert proc.returncode != 0
    assert 'Weights only load failed' in proc.stderr
    assert 'system' in proc.stderr
    assert not (tmp_path / 'pwned').exists()


class _Evil:

    def __reduce__(self):
        return (os.system, ('touch pwned', ))


def test_test_tool_show_dir_and_out(workspace, tmp_path):
    train(DET, tmp_path, workspace, *short_schedule(2))
    vis, out = tmp_path / 'vis', tmp_path / 'preds.pkl'
    run([sys.executable, osp.join(ROOT, 'tools', 'test.py'), DET, str(tmp_path / 'iter_2.pth'),
         '--work-dir', str(tmp_path), '--show-dir', str(vis), '--out', str(out)], workspace)
    assert len(glob.glob(str(vis / '**' / '*.png'), recursive=True)) == 4  # 4 val images
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 4 and 'pred_instances' in preds[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_dist_train_two_cpu_processes(workspace, tmp_path):
    proc = run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), CLS, '2', '--work-dir',
                str(tmp_path), *short_schedule(2)], workspace,
               env={'PYTHON': sys.executable, 'PORT': str(free_port()), 'OMP_NUM_THREADS': '1'})
    log = proc.stdout + proc.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log, log[-3000:]
    assert osp.isfile(tmp_path / 'iter_2.pth')
    assert 'accuracy/top1' in last_scalars(tmp_path)


def test_mim_train(workspace, tmp_path):
    mim = shutil.which('mim', path=osp.dirname(sys.executable))
    if mim is None:
        pytest.skip('openmim is not installed')
    run([mim, 'train', 'mmdet', DET, '--work-dir', str(tmp_path), *short_schedule(2)],
        workspace)
    assert osp.isfile(tmp_path / 'iter_2.pth')
    assert 'coco/bbox_mAP' in last_scalars(tmp_path)


def test_demo_smoke(workspace, tmp_path):
    """`make demo`'s script on its default (ELSA-Swin) config, shortened to 2 iterations."""
    proc = run([sys.executable, osp.join(ROOT, 'tools', 'demo.py'), '--max-iters', '2',
                '--work-dir', str(tmp_path), '--data-root', str(workspace / 'data' / 'toy')],
               workspace)
    assert 'mask-rcnn_elsa-swin-toy_fpn_toy-shapes.py' in proc.stdout
    assert re.search(r'\[demo\] bbox mAP \d\.\d{3} \| segm mAP \d\.\d{3} \| [1-9]\d* pictures',
                     proc.stdout), proc.stdout[-2000:]
    assert glob.glob(str(tmp_path / 'vis' / '**' / '*.png'), recursive=True)
