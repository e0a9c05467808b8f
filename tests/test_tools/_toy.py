"""Helpers of the end-to-end tests: run the tools on the toy data in a subprocess, read the logs.

Test files in this folder import them (``from _toy import train, ...``); the ``workspace``
fixture (a folder with tiny toy data in which the configs' relative paths resolve) is in
``conftest.py``.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys
from typing import Dict

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(ROOT, 'configs', 'toy')

# the codebase of a toy config, from its file name (known before parsing it: the `mmdet::`
# style bases need the codebase installed): detectors start with their model's name,
# segmentors end with the crop size, everything else is a classifier
_DETECTOR = re.compile(r'^(mask-rcnn|cascade-mask-rcnn|retinanet)_')
_SEGMENTOR = re.compile(r'-\d+x\d+\.py$')


def load_tool(name: str, folder: str = 'analysis_tools'):
    """The module of ``tools/<folder>/<name>.py`` (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(
        name, osp.join(ROOT, 'tools', folder, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scope_of(path: str) -> str:
    """``'mmdet'``, ``'mmseg'`` or ``'mmpretrain'`` for a toy config file."""
    name = osp.basename(path)
    if _DETECTOR.match(name):
        return 'mmdet'
    if _SEGMENTOR.search(name):
        return 'mmseg'
    return 'mmpretrain'


def toy_configs() -> Dict[str, str]:
    """Every toy config file mapped to its codebase."""
    return {p: scope_of(p) for p in sorted(glob.glob(osp.join(TOY, '*.py')))}


def short_schedule(iters: int, ckpt_interval: int = 1) -> list:
    """``--cfg-options`` for ``iters`` iterations, validation at the end, a log line per iter."""
    return ['--cfg-options', f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'default_hooks.checkpoint.interval={ckpt_interval}',
            'default_hooks.logger.interval=1']


def run(args, cwd, check=True, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Runs a command; with ``check`` a non-zero exit fails with the ends of its output."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED='1', **(env or {})))
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(map(str, args))} failed ({proc.returncode}):\n'
                             f'{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}')
    return proc


def train(config, work_dir, cwd, *extra, **kwargs) -> subprocess.CompletedProcess:
    """``tools/train.py config --work-dir work_dir *extra`` in ``cwd``."""
    return run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
                str(work_dir), *extra], cwd, **kwargs)


def scalars(work_dir) -> list:
    """Every logged record of the latest run in ``work_dir`` (mmengine's vis_data/scalars.json)."""
    logs = sorted(glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json')))
    assert logs, f'no scalars.json under {work_dir}'
    with open(logs[-1]) as f:
        return [json.loads(line) for line in f]


def last_scalars(work_dir) -> dict:
    """The last logged value of every metric of the latest run in ``work_dir``."""
    metrics = {}
    for record in scalars(work_dir):
        metrics.update(record)
    return metrics
