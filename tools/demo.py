"""The demo: train and evaluate a Mask R-CNN on the embedded toy shapes dataset, on CPU.

Generates the toy data (if missing), trains the demo config, evaluates COCO bbox and segm AP on
the toy validation split and writes pictures of the predictions to ``work_dirs/demo/vis/``.

    python tools/demo.py [--config CONFIG] [--work-dir work_dirs/demo] [--max-iters N]
"""
import argparse
import glob
import os
import os.path as osp
import shutil
import sys
import time
import warnings

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
# setuptools' notice, raised once per importing package of the stack: nothing a user can act on
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

from mmattn.utils.tools import build_runner, enable_visualization, load_config  # noqa: E402

DEMO_CONFIG = osp.join(ROOT, 'configs', 'toy', 'mask-rcnn_elsa-swin-toy_fpn_toy-shapes.py')


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEMO_CONFIG)
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data', 'toy'))
    parser.add_argument('--max-iters', type=int, help='shorten the schedule (smoke tests)')
    args = parser.parse_args(argv)
    start = time.time()

    if not osp.isfile(osp.join(args.data_root, 'coco', 'annotations', 'instances_val.json')):
        sys.path.insert(0, osp.join(ROOT, 'tools', 'dataset_converters'))
        from make_toy_shapes import make_toy_shapes
        print(f'[demo] generating the toy dataset in {args.data_root}', flush=True)
        make_toy_shapes(args.data_root, parts=('coco', ))

    coco = osp.join(args.data_root, 'coco') + '/'
    options = {
        'train_dataloader.dataset.data_root': coco,
        'val_dataloader.dataset.data_root': coco,
        'test_dataloader.dataset.data_root': coco,
        'val_evaluator.ann_file': coco + 'annotations/instances_val.json',
        'test_evaluator.ann_file': coco + 'annotations/instances_val.json',
    }
    if args.max_iters:
        options.update({'train_cfg.max_iters': args.max_iters,
                        'train_cfg.val_interval': args.max_iters})

    print(f'[demo] training {osp.relpath(args.config, ROOT)} (logs in {args.work_dir})', flush=True)
    cfg = load_config(args.config, options, 'none', args.work_dir)
    runner = build_runner(cfg)
    runner.train()

    vis_dir = osp.join(osp.abspath(args.work_dir), 'vis')
    shutil.rmtree(vis_dir, ignore_errors=True)
    cfg = load_config(args.config, options, 'none', args.work_dir)
    cfg.load_from = osp.join(args.work_dir, f'iter_{cfg.train_cfg.max_iters}.pth')
    enable_visualization(cfg, vis_dir)
    metrics = build_runner(cfg).test()

    pictures = sorted(glob.glob(osp.join(vis_dir, '**', '*.png'), recursive=True) +
                      glob.glob(osp.join(vis_dir, '**', '*.jpg'), recursive=True))
    print(f'[demo] bbox mAP {metrics["coco/bbox_mAP"]:.3f} | segm mAP '
          f'{metrics["coco/segm_mAP"]:.3f} | {len(pictures)} pictures in {vis_dir} | '
          f'{time.time() - start:.0f} s')
    return metrics


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    main()
