"""Evaluate a checkpoint of a detector, segmentor or classifier on its config's test set.

Examples::

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --show-dir vis      # save pictures of predictions
    python tools/test.py CONFIG CHECKPOINT --out results.pkl   # dump raw predictions
    python tools/test.py CONFIG CHECKPOINT --tta               # the config's test-time augmentation
    bash tools/dist_test.sh CONFIG CHECKPOINT 8
"""
import argparse
import os.path as osp
import sys
import warnings

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
# setuptools' notice, raised once per importing package of the stack: nothing a user can act on
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

from mmattn.utils.tools import (add_common_args, build_runner,  # noqa: E402
                                checked_checkpoint, enable_tta, enable_visualization,
                                load_config)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='test config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump the predictions to this pickle file (.pkl)')
    parser.add_argument('--show-dir', help='save pictures of the predictions in this directory '
                        '(relative to the work dir unless absolute)')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds per shown image')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation: the config's tta_pipeline and tta_model "
                        '(the ADE20K configs: multi-scale + flip at the papers\' six ratios)')
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    if args.tta:
        try:
            print(enable_tta(cfg, args.config), flush=True)
        except ValueError as e:
            raise SystemExit(f'test.py: error: {e}')
    cfg.load_from = checked_checkpoint(args.checkpoint, 'the', resume=False)
    if args.show or args.show_dir:
        enable_visualization(cfg, args.show_dir, args.show, args.wait_time)
    runner = build_runner(cfg)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl or .pickle file, got {args.out}')
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
