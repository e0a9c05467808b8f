"""CPU latency of ONNX Runtime against PyTorch eager for configs' exported models.

Each config's model is exported as ``tools/deployment/pytorch2onnx.py`` does (static shape), then
PyTorch (eval, no grad) and ONNX Runtime run the same random input, their repeats interleaved,
and the median latencies and their ratio are printed. Both use ``--threads`` threads.

Example::

    python tools/analysis_tools/benchmark_onnx.py configs/elsa_swin/elsa-swin-t_8xb128_in1k.py \\
        configs/sasa_resnet/sasa-resnet-50_8xb128_in1k.py --shape 224 224
"""
import argparse
import json
import os.path as osp
import sys
import tempfile
import warnings

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'deployment'))
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+', help='config files (or codebase::path)')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--json', help='write the rows to this file')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import onnxruntime as ort
    import torch
    from pytorch2onnx import build_model

    from mmattn.utils.benchmark import interleaved_medians
    from mmattn.utils.onnx_export import export_onnx, exportable
    torch.set_num_threads(args.threads)
    rows = []
    for config in args.configs:
        model, scope = build_model(config)
        net = exportable(model, scope).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(net, osp.join(tmp, 'model.onnx'), tuple(args.shape), dynamic=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
            x = torch.randn(args.batch, 3, *args.shape)
            feed = {session.get_inputs()[0].name: x.numpy()}

            def eager():
                with torch.no_grad():
                    net(x)

            times = interleaved_medians({'torch': eager, 'onnx': lambda: session.run(None, feed)},
                                        args.warmup, args.repeats)
        row = dict(config=config, torch_ms=times['torch'] * 1e3, onnx_ms=times['onnx'] * 1e3,
                   ratio=times['onnx'] / times['torch'])
        rows.append(row)
        print(f'{osp.basename(config)}: PyTorch {row["torch_ms"]:.1f} ms, ONNX Runtime '
              f'{row["onnx_ms"]:.1f} ms, ONNX/PyTorch {row["ratio"]:.2f}x '
              f'(batch {args.batch}, {args.shape[0]}x{args.shape[1]}, {args.threads} threads)')
    result = dict(shape=args.shape, batch=args.batch, threads=args.threads, rows=rows)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
