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


def test_toy_detector_learns(workspace, tmp_path):
    """20 iterations (warm-up shortened to 5) take the toy Mask R-CNN well above an untrained
    one. Measured once on this data (seed 0): untrained (1 iteration at lr 0) bbox / segm mAP
    0.000 / 0.000; after 20 iterations 0.074 / 0.084. The threshold sits between them."""
    train(DET, tmp_path, workspace, '--cfg-options', 'train_cfg.max_iters=20',
          'train_cfg.val_interval=20', 'default_hooks.checkpoint.interval=20',
          'param_scheduler.0.end=5')
    metrics = last_scalars(tmp_path)
    assert metrics['coco/bbox_mAP'] > 0.02 and metrics['coco/segm_mAP'] > 0.02, metrics


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


# the Castling-DeiT toy classifier (LayerNorm, no BatchNorm or dropout) with a deterministic
# pipeline: the global batch of two DDP processes is then exactly one process's doubled batch
DDP_CONFIG = """
_base_ = {base!r}
train_dataloader = dict(batch_size={batch}, dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'), dict(type='ResizeEdge', scale=64, edge='short'),
    dict(type='PackInputs')]))
"""


def _weights(path):
    from mmattn.utils import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    return torch.load(path, map_location='cpu')['state_dict']


def test_dist_train_two_cpu_processes_equals_one_with_the_doubled_batch(workspace, tmp_path):
    """dist_train.sh with 2 processes x batch 2 (gloo) gives the weights of one process with
    batch 4 after 3 AdamW steps (InfiniteSampler: rank r takes every other index of the same
    permutation, so the global batches are the same samples; DDP averages the gradients). One
    process with batch 2 ends elsewhere, so the comparison can fail."""
    base = osp.join(TOY, 'castling-deit-toy_toy-shapes.py')
    configs = {}
    for batch in (2, 4):
        configs[batch] = tmp_path / f'ddp-b{batch}.py'
        configs[batch].write_text(DDP_CONFIG.format(base=base, batch=batch))
    proc = run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), str(configs[2]), '2',
                '--work-dir', str(tmp_path / 'ddp'), *short_schedule(3, 3)], workspace,
               env={'PYTHON': sys.executable, 'PORT': str(free_port()), 'OMP_NUM_THREADS': '1'})
    log = proc.stdout + proc.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log, log[-3000:]
    assert 'accuracy/top1' in last_scalars(tmp_path / 'ddp')
    train(str(configs[4]), tmp_path / 'one-b4', workspace, *short_schedule(3, 3))
    train(str(configs[2]), tmp_path / 'one-b2', workspace, *short_schedule(3, 3))
    ddp = _weights(tmp_path / 'ddp' / 'iter_3.pth')
    one = _weights(tmp_path / 'one-b4' / 'iter_3.pth')
    half = _weights(tmp_path / 'one-b2' / 'iter_3.pth')
    assert ddp.keys() == one.keys()
    worst = max(float((ddp[k] - one[k]).abs().max()) for k in ddp)
    moved = max(float((one[k] - half[k]).abs().max()) for k in one)
    assert worst < 1e-5, f'DDP differs from the doubled batch by {worst}'
    assert moved > 100 * max(worst, 1e-7), f'batch 2 vs 4 differ by {moved} only'


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
    pictures = sorted(glob.glob(str(tmp_path / 'vis' / '**' / '*.png'), recursive=True))
    assert len(pictures) == 4
    _assert_ground_truth_boxes_drawn(pictures, workspace / 'data' / 'toy' / 'coco')


def _assert_ground_truth_boxes_drawn(pictures, coco_root):
    """Each picture is [ground truth | prediction] side by side; in the ground-truth panel the
    outline of every annotated box differs from the raw image (drawn), and most pixels away
    from all boxes do not (nothing drawn there)."""
    import json

    import mmcv
    import numpy as np
    with open(coco_root / 'annotations' / 'instances_val.json') as f:
        ann = json.load(f)
    for picture in pictures:
        name = osp.basename(picture)
        (info, ) = [i for i in ann['images'] if i['file_name'] == name]
        raw = mmcv.imread(str(coco_root / 'val' / name)).astype(int)
        pic = mmcv.imread(picture).astype(int)
        h, w = raw.shape[:2]
        assert pic.shape == (h, 2 * w, 3), pic.shape
        changed = np.abs(pic[:, :w] - raw).sum(-1) > 30
        away = np.ones((h, w), bool)
        boxes = [a['bbox'] for a in ann['annotations'] if a['image_id'] == info['id']]
        assert boxes
        for x, y, bw, bh in boxes:
            x1, y1 = int(x), int(y)
            x2, y2 = min(int(x + bw), w - 1), min(int(y + bh), h - 1)
            band = lambda a: slice(max(a - 1, 0), a + 2)  # noqa: E731  (the line's width)
            edges = [changed[band(y1), x1:x2 + 1].any(0), changed[band(y2), x1:x2 + 1].any(0),
                     changed[y1:y2 + 1, band(x1)].any(1), changed[y1:y2 + 1, band(x2)].any(1)]
            drawn = np.concatenate(edges).mean()
            assert drawn > 0.8, f'{name}: box {(x, y, bw, bh)} outline drawn on {drawn:.0%} only'
            away[max(y1 - 8, 0):y2 + 3, max(x1 - 3, 0):x2 + 4] = False  # label above the box
        away_changed = changed[away].mean()
        assert away_changed < 0.1, f'{name}: {away_changed:.0%} changed away from the boxes'
