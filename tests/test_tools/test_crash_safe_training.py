"""Crash-safe checkpoints and verified resumption through tools/train.py and tools/test.py.

The fault-injection runs (``_crash_driver.py``) kill training with ``os._exit`` at each point of
the second checkpoint save, for ``max_keep_ckpts`` 1 and 2 and both loop types; resumption must
continue from the newest complete checkpoint with the iteration, optimizer and scheduler state
exactly as saved there. A run with mmengine's stock hook shows what the faults do without it.
"""
import json
import os
import os.path as osp
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from _toy import ROOT, TOY, last_scalars, run, short_schedule, train

CLS = osp.join(TOY, 'resnet18_toy-shapes.py')
FAULTS = ('before-write', 'half-written', 'before-rename', 'after-file', 'after-record')
# the step resumed from when the 2nd save dies there: only once last_checkpoint names the new
# file is it the newest; before that the first checkpoint is (one interval lost at most)
RESUMED_STEP = {'before-write': 1, 'half-written': 1, 'before-rename': 1, 'after-file': 1,
                'after-record': 2}
SCENARIOS = [f'{loop}-{keep}-{fault}' for loop in ('iter', 'epoch') for keep in (1, 2)
             for fault in FAULTS]
STOCK = 'iter-1-half-written-stock'


@pytest.fixture(scope='module')
def crash_runs(workspace, tmp_path_factory):
    from mmattn.utils import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    out = tmp_path_factory.mktemp('crashes')
    run([sys.executable, osp.join(ROOT, 'tests', 'test_tools', '_crash_driver.py'),
         str(workspace), str(out), *SCENARIOS, STOCK], workspace, timeout=900,
        env={'OMP_NUM_THREADS': '1'})
    with open(out / 'results.json') as f:
        return out, json.load(f)


def _assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


@pytest.mark.parametrize('name', SCENARIOS)
def test_killed_during_save_resumes_from_newest_complete_checkpoint(crash_runs, name):
    out, results = crash_runs
    result = results[name]
    loop, fault = name.split('-')[0], name.split('-', 2)[2]
    assert result['crash_code'] == 17, f'the fault did not fire: {result}'
    assert result['resume_code'] == 0, result['resume_log']
    step = RESUMED_STEP[fault]
    prefix = 'epoch' if loop == 'epoch' else 'iter'
    saved = torch.load(out / name / 'after_crash' / f'{prefix}_{step}.pth', map_location='cpu')
    resumed = torch.load(out / name / 'resumed.pth', map_location='cpu')
    counter = 'epoch' if loop == 'epoch' else 'iter'
    assert resumed[counter] == saved['meta'][counter] == step
    assert resumed['iter'] == saved['meta']['iter'] and resumed['epoch'] == saved['meta']['epoch']
    _assert_same(saved['optimizer'], resumed['optimizer'], 'optimizer')
    _assert_same(saved['param_schedulers'], resumed['schedulers'], 'schedulers')
    # the schedule finished; the complete file of an interrupted save is never deleted early
    left = result['left']
    assert f'{prefix}_1.pth' in left or step == 2
    final = out / name / 'work' / f'{prefix}_3.pth'
    assert final.is_file()


def test_stock_hook_loses_every_checkpoint(crash_runs):
    """The same fault with mmengine's CheckpointHook (max_keep_ckpts=1): the first checkpoint is
    deleted before the second is written, which stays truncated; nothing can be resumed."""
    _, results = crash_runs
    result = results[STOCK]
    assert result['crash_code'] == 17
    assert 'iter_1.pth' not in result['left'] and 'iter_2.pth' in result['left']
    assert result['resume_code'] != 0
    assert 'no intact checkpoint' in result['resume_log']


def _train_cls(workspace, work_dir, *extra, check=True):
    return train(CLS, work_dir, workspace, *extra, check=check)


def test_truncated_and_empty_newest_checkpoint(workspace, tmp_path):
    trained = tmp_path / 'trained'
    _train_cls(workspace, trained, *short_schedule(2))
    for damage in ('truncated', 'empty'):
        work = tmp_path / damage
        shutil.copytree(trained, work)
        (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
        data = (work / 'iter_2.pth').read_bytes()
        data = data[:len(data) // 3] if damage == 'truncated' else b''
        (work / 'iter_2.pth').write_bytes(data)
        bad = tmp_path / f'{damage}.pth'
        bad.write_bytes(data)
        # a named resume of the broken file: one error line naming the intact checkpoints
        proc = _train_cls(workspace, work, '--resume', str(bad), check=False)
        assert proc.returncode != 0
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, proc.stderr[-3000:]
        assert str(bad) in lines[0] and 'unusable' in lines[0] and 'Traceback' not in proc.stderr
        proc = _train_cls(workspace, bad.parent, '--resume', str(bad), check=False)
        assert 'No intact checkpoint' in proc.stderr
        # auto-resume falls back to iter_1 with a warning and finishes the schedule
        proc = _train_cls(workspace, work, '--resume', *short_schedule(3))
        log = proc.stdout + proc.stderr
        assert 'skipped unusable checkpoints' in log and 'iter_2.pth' in log, log[-3000:]
        assert 'resumed epoch: 0, iter: 1' in log
        assert (work / 'iter_3.pth').is_file() and bad.read_bytes() == data  # nothing deleted


def test_test_tool_refuses_corrupt_or_missing_checkpoint(workspace, tmp_path):
    for name, data in (('missing.pth', None), ('empty.pth', b''), ('junk.pth', b'PK\x03\x04xx')):
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        proc = run([sys.executable, osp.join(ROOT, 'tools', 'test.py'), CLS, str(path),
                    '--work-dir', str(tmp_path / 'w')], workspace, check=False)
        assert proc.returncode != 0
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and str(path) in lines[0], proc.stderr[-2000:]
        assert 'Traceback' not in proc.stderr


def test_kill_9_at_a_random_moment_then_resume_finishes(workspace, tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    args = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), CLS, '--work-dir',
            str(tmp_path), *short_schedule(40, 2)]
    proc = subprocess.Popen(args, cwd=workspace, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        deadline = time.time() + 300
        while not (tmp_path / 'last_checkpoint').exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.5))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = train(CLS, tmp_path, workspace, '--resume', *short_schedule(40, 2))
    log = done.stdout + done.stderr
    assert 'resumed epoch' in log or 'Did not find last_checkpoint' not in log, f'seed {seed}'
    assert (tmp_path / 'iter_40.pth').is_file(), f'seed {seed}: {log[-3000:]}'
    assert 'accuracy/top1' in last_scalars(tmp_path)


def test_stock_configs_get_the_safe_hook(workspace):
    """Through mmattn's tools a stock mmpretrain config's CheckpointHook is SafeCheckpointHook."""
    pytest.importorskip('mmpretrain')
    from mmattn.engine import SafeCheckpointHook
    from mmattn.utils.tools import build_runner, load_config
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        cfg = load_config(CLS, None, 'none', str(workspace / 'stock-hook'))
        runner = build_runner(cfg)
    finally:
        os.chdir(cwd)
    assert any(type(h) is SafeCheckpointHook for h in runner.hooks)


def test_toy_config_makes_its_missing_data(tmp_path):
    """A toy config run before make_toy_shapes.py generates its data (the same files as the
    generator's defaults) instead of failing in pycocotools."""
    proc = train(CLS, tmp_path / 'work', tmp_path, *short_schedule(1))
    log = proc.stdout + proc.stderr
    assert 'not found: making it' in log and 'make_toy_shapes.py' in log
    made = sorted(p.name for p in (tmp_path / 'data' / 'toy' / 'cls' / 'val' / 'circle').iterdir())
    assert len(made) == 20  # the generator's default cls_num_val
    assert 'accuracy/top1' in last_scalars(tmp_path / 'work')


def test_save_best_keeps_one_best_and_no_temporaries(workspace, tmp_path):
    """save_best goes through the atomic path: one best checkpoint left (the previous one is
    deleted only after the new one is in place), no temporary files, a resumable latest."""
    proc = _train_cls(workspace, tmp_path, '--cfg-options', 'train_cfg.max_iters=3',
                      'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
                      'default_hooks.checkpoint.save_best=accuracy/top1',
                      'default_hooks.checkpoint.rule=greater', 'default_hooks.logger.interval=1')
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix == '.pth')
    best = [n for n in names if n.startswith('best_')]
    assert len(best) == 1, names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]
    from mmattn.utils.safe_io import RESUME_KEYS, checkpoint_problem
    assert checkpoint_problem(str(tmp_path / best[0])) is None
    assert checkpoint_problem((tmp_path / 'last_checkpoint').read_text(), RESUME_KEYS) is None
    assert 'The best checkpoint' in proc.stdout + proc.stderr
