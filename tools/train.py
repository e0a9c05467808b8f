"""Train a detector, segmentor or classifier from an OpenMMLab config on mmengine's runner.

Examples::

    python tools/train.py configs/toy/mask-rcnn_r18_fpn_toy-shapes.py
    python tools/train.py CONFIG --resume                 # continue from the latest checkpoint
    python tools/train.py CONFIG --resume work_dirs/x/iter_200.pth
    bash tools/dist_train.sh CONFIG 8                     # 8 processes on one machine
"""
import argparse
import os.path as osp
import sys
import warnings

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
# setuptools' notice, raised once per importing package of the stack: nothing a user can act on
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

from mmattn.utils.tools import (add_common_args, auto_resume_checkpoint,  # noqa: E402
                                build_runner, checked_checkpoint, load_config,
                                require_accelerator_for_amp)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='train config file')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint; without a path, from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training (CUDA)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the real batch size '
                        '(needs auto_scale_lr in the config)')
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)

    if args.amp:
        require_accelerator_for_amp()
        opt_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if opt_type == 'OptimWrapper':
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
        elif opt_type != 'AmpOptimWrapper':
            raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, got {opt_type}')

    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ValueError('--auto-scale-lr needs `auto_scale_lr = dict(enable=False, '
                             'base_batch_size=...)` in the config')
        cfg.auto_scale_lr.enable = True

    # resumption verifies the checkpoint first (see README, "Fault tolerance"): without a path
    # the newest intact one, with a path that one or a one-line error
    warnings = []
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = auto_resume_checkpoint(cfg.work_dir, warnings)
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = checked_checkpoint(args.resume, '--resume', True, cfg.work_dir)

    runner = build_runner(cfg)
    for message in warnings:
        runner.logger.warning(message)
    runner.train()


if __name__ == '__main__':
    main()
