"""Shared set-up of ``tools/train.py`` and ``tools/test.py`` for mmdet, mmseg and mmpretrain configs."""
import copy
import os
import os.path as osp
import re
import sys
from typing import List, Optional

from mmengine.config import Config, DictAction

from .checkpoint import allow_mmengine_checkpoints

# default_scope of a config -> the adapter that registers mmattn into that codebase
ADAPTERS = {'mmdet': 'mmattn.det', 'mmseg': 'mmattn.seg', 'mmpretrain': 'mmattn.cls'}


def add_common_args(parser) -> None:
    """Arguments shared by train.py and test.py (OpenMMLab names and meanings)."""
    parser.add_argument('--work-dir', help='directory for logs and checkpoints '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, e.g. train_cfg.max_iters=100 '
        'optim_wrapper.optimizer.lr=0.01 (lists as a=[1,2] or a="[(1,2),(3,4)]")')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher for distributed runs')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(config: str, cfg_options: Optional[dict], launcher: str,
                work_dir: Optional[str], need_data: bool = True) -> Config:
    """Reads ``config`` (a file, or ``codebase::path`` for a stock config such as
    ``mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``), applies ``--cfg-options``, the
    launcher and the work dir; with ``need_data``, makes missing toy data
    (:func:`ensure_toy_data`)."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = '0'
    allow_mmengine_checkpoints()
    if '::' in config and not osp.isfile(config):
        from mmengine.hub import get_config
        cfg = get_config(config)
    elif not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config}')
    else:
        cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    import_adapter(cfg)
    if need_data:
        ensure_toy_data(cfg)
    return cfg


def import_adapter(cfg: Config) -> None:
    """Imports the mmattn adapter of the config's codebase (if the config did not list it).

    This registers mmattn's modules into the codebase and the codebase's own modules into its
    registries, so that a config needs nothing but its ``default_scope``.
    """
    import importlib
    scope = cfg.get('default_scope')
    if scope not in ADAPTERS:
        raise ValueError(f"config default_scope must be one of {sorted(ADAPTERS)}, got {scope!r}")
    importlib.import_module(ADAPTERS[scope])
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.utils import register_all_modules
    elif scope == 'mmseg':
        from mmseg.utils import register_all_modules
    else:
        from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)


def build_runner(cfg: Config):
    """``Runner.from_cfg``, or the config's ``runner_type`` from the RUNNERS registry.

    Distributed runs without CUDA (``--launcher pytorch`` on CPU) use gloo.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from mmattn.engine.cpu_ddp import setup_cpu_distributed
    setup_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def require_accelerator_for_amp() -> None:
    """``--amp`` uses mmengine's AmpOptimWrapper, which needs a CUDA/NPU/MLU device."""
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError('--amp (mixed precision) needs a CUDA device; this machine has none. '
                           'Train without --amp on CPU.')


def enable_visualization(cfg: Config, show_dir: Optional[str], show: bool = False,
                         wait_time: float = 0) -> None:
    """Turns on the codebase's visualization hook for the test loop (``--show``/``--show-dir``)."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise ValueError('--show/--show-dir need a `visualization` hook in default_hooks')
    scope = cfg.default_scope
    if scope == 'mmpretrain':
        hook.enable = True
        hook.show = show
        hook.wait_time = wait_time
        if show_dir:
            hook.out_dir = show_dir
        return
    hook.draw = True
    hook.show = show
    hook.wait_time = wait_time
    if show_dir:
        if scope == 'mmdet':
            hook.test_out_dir = show_dir
        else:  # mmseg saves through the visualizer
            cfg.visualizer.save_dir = show_dir
            hook.interval = 1


_DEFAULT_TTA_MODELS = {
    'mmseg': dict(type='SegTTAModel'),
    'mmdet': dict(type='DetTTAModel',
                  tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)),
    'mmpretrain': dict(type='AverageClsScoreTTA'),
}


def _describe_tta(pipeline: list) -> str:
    """One line naming the augmented copies a ``tta_pipeline`` makes."""
    from mmattn.datasets.transforms import PAPER_RATIOS, ratio_scales
    parts = []
    for step in pipeline:
        if step.get('type') == 'ScaleRatioFlipAug':
            ratios = step.get('ratios', PAPER_RATIOS)
            scales = ratio_scales(tuple(step['scale']), ratios)
            flips = ['none', 'horizontal'] if step.get('flip', True) else ['none']
            parts.append(f'{len(scales)} scales (ratios {list(ratios)} of {tuple(step["scale"])}, '
                         f'keep-ratio): {scales} x flip {flips} = {len(scales) * len(flips)} '
                         'passes per image')
        elif step.get('type') == 'TestTimeAug':
            stages = [' | '.join(t.get('type', '?') + ''.join(
                f' {k}={t[k]}' for k in ('scale', 'scale_factor', 'prob') if k in t)
                for t in stage) for stage in step['transforms']]
            parts.append('TestTimeAug: ' + ' x '.join(f'[{s}]' for s in stages))
    return '; '.join(parts) or 'no augmentation step found in tta_pipeline'


def enable_tta(cfg: Config, config: str) -> str:
    """Switches the test loop to the config's test-time augmentation (``test.py --tta``), as the
    codebases' own ``tools/test.py`` do: the test set runs ``tta_pipeline`` and the model is
    wrapped in ``tta_model`` (mmseg's SegTTAModel averages the softmax scores of the copies, as
    mmseg 0.x's ``aug_test`` did). Returns a line describing the augmentation, for the log."""
    scope = cfg.get('default_scope')
    data = cfg.test_dataloader.dataset
    while 'dataset' in data:
        data = data.dataset
    note = ''
    if 'tta_pipeline' not in cfg:
        if scope not in ('mmdet', 'mmpretrain'):
            raise ValueError(f'--tta: {config} defines no tta_pipeline (mmattn\'s ADE20K configs '
                             "carry the papers' multi-scale + flip test; add one to this config)")
        # as mmdet's and mmpretrain's own test.py: the test pipeline, flipped and not
        pack = copy.deepcopy(data.pipeline[-1])
        if scope == 'mmdet':
            keys = tuple(pack.get('meta_keys', ('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                'scale_factor')))
            pack['meta_keys'] = keys + tuple(k for k in ('flip', 'flip_direction')
                                             if k not in keys)
        cfg.tta_pipeline = copy.deepcopy(data.pipeline[:-1]) + [dict(
            type='TestTimeAug', transforms=[[dict(type='RandomFlip', prob=0.),
                                             dict(type='RandomFlip', prob=1.)], [pack]])]
        note = ' (the config has no tta_pipeline: its test pipeline with and without a flip)'
    if 'tta_model' not in cfg:
        if scope not in _DEFAULT_TTA_MODELS:
            raise ValueError(f'--tta: {config} defines no tta_model')
        cfg.tta_model = _DEFAULT_TTA_MODELS[scope]
    if scope == 'mmdet' and cfg.model.get('roi_head', {}).get('mask_head') is not None:
        raise ValueError('--tta: mmdet 3.3\'s DetTTAModel merges boxes only; test-time '
                         'augmentation of instance masks (Mask R-CNN) is not supported')
    from mmengine.config import ConfigDict
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    if 'batch_shapes_cfg' in data:
        data.batch_shapes_cfg = None
    data.pipeline = cfg.tta_pipeline
    return f'[tta] {cfg.tta_model.type}: {_describe_tta(cfg.tta_pipeline)}{note}'


def _fail(message: str) -> None:
    """Ends a tool with one clear error line (no traceback)."""
    raise SystemExit(f'{osp.basename(sys.argv[0]) or "mmattn"}: error: {message}')


def checked_checkpoint(path: str, what: str, resume: bool, work_dir: Optional[str] = None) -> str:
    """Returns ``path`` when the checkpoint is intact (for ``resume``, with the keys
    ``Runner.resume`` reads), else ends the tool with one error line naming the file, the problem
    and, for resumption, the intact checkpoints beside it and in ``work_dir``."""
    from .safe_io import RESUME_KEYS, checkpoint_problem, intact_checkpoints
    if '://' in path:  # URLs and remote backends are mmengine's to fetch
        return path
    problem = checkpoint_problem(path, RESUME_KEYS if resume else ())
    if problem is None:
        return path
    message = f'{what} checkpoint {path} is unusable: {problem}.'
    if resume:
        folders = dict.fromkeys(osp.abspath(d) for d in (osp.dirname(path) or '.', work_dir)
                                if d is not None and osp.isdir(d))
        intact = [p for d in folders for p in intact_checkpoints(d)]
        where = ' and '.join(folders) or osp.dirname(osp.abspath(path))
        message += (f' Intact checkpoints: {", ".join(intact)}' if intact else
                    f' No intact checkpoint is in {where}.')
    _fail(message)


def auto_resume_checkpoint(work_dir: str, warnings: List[str]) -> Optional[str]:
    """What ``--resume`` without a path continues from (see
    :func:`mmattn.utils.safe_io.resumable_checkpoint`); warnings go to ``warnings``."""
    from types import SimpleNamespace

    from .safe_io import NoResumableCheckpoint, resumable_checkpoint
    try:
        return resumable_checkpoint(work_dir, SimpleNamespace(warning=warnings.append))
    except NoResumableCheckpoint as e:
        _fail(str(e))


# toy data folders of the configs in configs/toy (``data/toy/<part>``) and the part to make
_TOY_ROOT = re.compile(r'(?:^|/)data/toy/(coco|ade|cls)/?$')


def ensure_toy_data(cfg: Config) -> None:
    """Makes the toy shapes data a toy config reads when it does not exist yet (deterministic,
    seconds; ``tools/dataset_converters/make_toy_shapes.py`` with its defaults), or ends with the
    command that makes it when the generator is not available (installed without the tools)."""
    needed = {}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        data_root = ((cfg.get(loader) or {}).get('dataset') or {}).get('data_root')
        match = _TOY_ROOT.search(str(data_root or '').replace(osp.sep, '/'))
        if match and not osp.isdir(data_root):
            needed[match.group(1)] = osp.dirname(osp.normpath(data_root))
    if not needed:
        return
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    script = osp.join(root, 'tools', 'dataset_converters', 'make_toy_shapes.py')
    for part, out in sorted(needed.items()):
        command = f'python tools/dataset_converters/make_toy_shapes.py --out {out} --parts {part}'
        if not osp.isfile(script):
            _fail(f'the toy data {osp.join(out, part)} does not exist; make it with `{command}` '
                  'from an mmattn checkout')
        import fcntl
        import importlib.util

        from mmengine.logging import print_log
        os.makedirs(out, exist_ok=True)
        with open(osp.join(out, f'.{part}.lock'), 'w') as lock:  # one maker per machine
            fcntl.flock(lock, fcntl.LOCK_EX)
            if osp.isdir(osp.join(out, part)):
                continue
            print_log(f'toy data {osp.join(out, part)} not found: making it (`{command}`)',
                      logger='current')
            spec = importlib.util.spec_from_file_location('make_toy_shapes', script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.make_toy_shapes(out, parts=(part, ))
