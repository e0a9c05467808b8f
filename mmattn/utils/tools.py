"""Shared set-up of ``tools/train.py`` and ``tools/test.py`` for mmdet, mmseg and mmpretrain configs."""
import os
import os.path as osp
from typing import Optional

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
                work_dir: Optional[str]) -> Config:
    """Reads ``config`` (a file, or ``codebase::path`` for a stock config such as
    ``mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``), applies ``--cfg-options``, the
    launcher and the work dir."""
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
