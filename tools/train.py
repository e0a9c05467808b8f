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

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from mmattn.utils.tools import (add_common_args, build_runner, load_config,  # noqa: E402
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

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume checkpoint not found: {args.resume}')
        cfg.resume = True
        cfg.load_from = args.resume

    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    main()
