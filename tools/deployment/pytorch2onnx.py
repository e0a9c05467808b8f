"""Export a config's model to ONNX (standard operators only) and check it with ONNX Runtime.

What is exported: a classification config's whole classifier (image -> logits), a segmentation
config's whole EncoderDecoder (image -> logits at the image size), a detection config's backbone
and neck (image -> feature maps). The input is the preprocessed (normalised) image. mmattn's ops
are decomposed into standard operators, so the file runs in a stock ONNX Runtime.

Examples::

    python tools/deployment/pytorch2onnx.py configs/elsa_swin/elsa-swin-t_8xb128_in1k.py \\
        --shape 224 224 --out elsa-swin-t.onnx --verify
    python tools/deployment/pytorch2onnx.py CONFIG CKPT --shape 512 512 --dynamic --verify
"""
import argparse
import os.path as osp
import sys
import time
import warnings

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

from mmattn.utils.tools import checked_checkpoint, load_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (or codebase::path of a stock config)')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint (default: random weights)')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'),
                        help='input size of the export (default: 224 224)')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width: one file for every size')
    parser.add_argument('--out', default=None, help='ONNX file (default: <config name>.onnx)')
    parser.add_argument('--verify', action='store_true',
                        help='compare ONNX Runtime with PyTorch on random inputs (a second size '
                        'too with --dynamic); exit non-zero above --tolerance')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest allowed |ONNX - PyTorch| over the largest |PyTorch| output')
    parser.add_argument('--cfg-options', nargs='+', default=None,
                        help='override config entries, e.g. model.backbone.arch=s')
    return parser.parse_args(argv)


def build_model(config: str, checkpoint=None, cfg_options=None):
    """The config's model (eval mode) and codebase scope, with ``checkpoint`` loaded."""
    import torch
    from mmengine.config import DictAction
    from mmengine.registry import MODELS
    from mmengine.runner import load_checkpoint
    options = None
    if cfg_options:
        ns = argparse.Namespace()
        DictAction(option_strings=[], dest='opts')(None, ns, cfg_options)
        options = ns.opts
    cfg = load_config(config, options, 'none', None, need_data=False)
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        load_checkpoint(model, checked_checkpoint(checkpoint, 'the', resume=False),
                        map_location='cpu', logger='silent')
    elif 'SyncBN' not in str(cfg.model):
        import logging

        from mmengine.logging import MMLogger
        torch.manual_seed(0)
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)  # init_weights logs every parameter's initialiser
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
    return model.eval(), cfg.default_scope


def main(argv=None) -> dict:
    args = parse_args(argv)
    from mmattn.utils.onnx_export import (compare, example_sizes, export_onnx, exportable,
                                          onnx_domains)
    model, scope = build_model(args.config, args.checkpoint, args.cfg_options)
    out = args.out or osp.splitext(osp.basename(args.config.split('::')[-1]))[0] + '.onnx'
    start = time.perf_counter()
    net = exportable(model, scope)
    try:
        export_onnx(net, out, tuple(args.shape), dynamic=args.dynamic)
    except ValueError as e:
        raise SystemExit(f'pytorch2onnx.py: error: {e}')
    size_mb = sum(osp.getsize(p) for p in (out, out + '.data') if osp.exists(p)) / 2**20
    domains = onnx_domains(out)
    print(f'[pytorch2onnx] {out}: {size_mb:.1f} MB, {"dynamic" if args.dynamic else "static"} '
          f'shape, exported in {time.perf_counter() - start:.1f} s; operator domains: {domains}')
    result = dict(out=out, domains=domains, rows=[])
    if args.verify:
        result['rows'] = compare(net, out, example_sizes(tuple(args.shape), args.dynamic))
        worst = max(r['rel'] for r in result['rows'])
        for row in result['rows']:
            print(f'[pytorch2onnx] verify {row["size"][0]}x{row["size"][1]}: max |ONNX - '
                  f'PyTorch| {row["max_abs"]:.3g} ({row["rel"]:.3g} of the output scale)')
        if worst > args.tolerance:
            raise SystemExit(f'pytorch2onnx.py: error: ONNX Runtime differs from PyTorch by '
                             f'{worst:.3g} of the output scale (tolerance {args.tolerance})')
        print(f'[pytorch2onnx] verified: within {args.tolerance} of the output scale')
    return result


if __name__ == '__main__':
    main()
