"""Speed, peak memory, parameters and FLOPs of the backbones of configs, against the first one.

Every config's ``model.backbone`` is built (random weights; any ``init_cfg`` is dropped) and
measured in the same run on the same input: parameters, multiply-accumulates of one image
(mmengine's analysis with mmattn's op handles), inference time (eval mode, no grad) and training
time (train mode, forward + backward) as the median of ``--repeats`` runs after ``--warmup``, and
the peak memory of each (on CPU in a child process, see ``mmattn/utils/benchmark.py``). The
first config is the baseline: every row also gets its ratios to it.

Configs are files or stock configs as ``codebase::path``. Examples::

    # ELSA-Swin-T against Swin-T, ImageNet resolution
    python tools/analysis_tools/benchmark_backbones.py \\
        mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py \\
        configs/elsa_swin/elsa-swin-t_8xb128_in1k.py --shape 224
    # dense prediction at 512x512, JSON output
    python tools/analysis_tools/benchmark_backbones.py \\
        mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py \\
        configs/elsa_swin/elsa-swin-t_upernet_8xb2-160k_ade20k-512x512.py --shape 512 --json out.json
"""
import argparse
import json
import os.path as osp
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Callable, List, Tuple

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmattn.utils.benchmark import cpu_memory_env, median_seconds, peak_mib  # noqa: E402
from mmattn.utils.tools import load_config  # noqa: E402


@dataclass
class Row:
    config: str
    backbone: str
    params_m: float
    gmac: float
    infer_ms: float
    infer_mib: float
    train_ms: float
    train_mib: float


def build_backbone(config: str) -> torch.nn.Module:
    """``model.backbone`` of ``config`` through its codebase's registry, without pretrained
    weights (``init_cfg`` and the model's ``pretrained`` are dropped)."""
    from mmengine.registry import MODELS
    cfg = load_config(config, None, 'none', None)
    backbone_cfg = cfg.model.backbone.copy()
    backbone_cfg.pop('init_cfg', None)
    backbone_cfg.pop('pretrained', None)
    return MODELS.build(backbone_cfg)


def workloads(model: torch.nn.Module, x: torch.Tensor) -> Tuple[Callable[[], None], ...]:
    """(inference, training step) closures on ``x``."""

    def infer():
        model.eval()
        with torch.no_grad():
            model(x)

    def train():
        model.train()
        outs = model(x)
        outs = outs if isinstance(outs, (tuple, list)) else (outs, )
        sum(o.float().square().mean() for o in outs).backward()
        model.zero_grad(set_to_none=True)

    return infer, train


def peak_memory_here(config: str, shape: Tuple[int, int], batch: int,
                     device: torch.device) -> List[float]:
    """Peak MiB of (inference, training step), measured in this process."""
    model = build_backbone(config).to(device)
    x = torch.randn(batch, 3, *shape, device=device)
    return [peak_mib(fn, device) for fn in workloads(model, x)]


def memory_probe(config: str, shape: Tuple[int, int], batch: int,
                 device: torch.device) -> List[float]:
    """Peak MiB of (inference, training step); on CPU in one child process (module doc)."""
    if device.type == 'cuda':
        return peak_memory_here(config, shape, batch, device)
    out = subprocess.run(
        [sys.executable, __file__, config, '--memory-probe', '--shape', *map(str, shape),
         '--batch', str(batch), '--device', str(device)],
        env=cpu_memory_env(), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(config: str, shape: Tuple[int, int], batch: int, device: torch.device, warmup: int,
            repeats: int, flops: bool) -> Row:
    model = build_backbone(config).to(device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gmac = float('nan')
    if flops:
        from mmengine.analysis import get_model_complexity_info
        model.eval()
        gmac = get_model_complexity_info(model, input_shape=(3, *shape), show_table=False,
                                         show_arch=False)['flops'] / 1e9
    x = torch.randn(batch, 3, *shape, device=device)
    infer, train = workloads(model, x)
    infer_s = median_seconds(infer, device, warmup, repeats)
    train_s = median_seconds(train, device, warmup, repeats)
    infer_mib, train_mib = memory_probe(config, shape, batch, device)
    return Row(config, type(model).__name__, params, gmac, infer_s * 1e3, infer_mib,
               train_s * 1e3, train_mib)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+', help='the first one is the baseline')
    parser.add_argument('--shape', type=int, nargs='+', default=[224],
                        help='input height and width (one value: square)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--memory-probe', action='store_true',
                        help=argparse.SUPPRESS)  # internal: the CPU memory child process
    args = parser.parse_args(argv)
    if len(args.shape) not in (1, 2) or min(args.shape) < 1:
        parser.error(f'--shape takes 1 or 2 positive values, got {args.shape}')
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error('--batch and --repeats must be >= 1, --warmup >= 0')
    shape = tuple((args.shape * 2)[:2])
    device = torch.device(args.device)
    if args.memory_probe:
        print(json.dumps(peak_memory_here(args.configs[0], shape, args.batch, device)))
        return {}

    print(f'device={device} threads={torch.get_num_threads()} input {args.batch}x3x{shape[0]}x'
          f'{shape[1]}, median of {args.repeats} (warm-up {args.warmup})', flush=True)
    rows = []
    for config in args.configs:
        rows.append(measure(config, shape, args.batch, device, args.warmup, args.repeats,
                            not args.no_flops))
        print(f'  measured {config}', flush=True)
    base = rows[0]
    header = (f'{"config":60s} {"params M":>9s} {"GMAC":>7s} {"infer ms":>9s} {"MiB":>7s} '
              f'{"train ms":>9s} {"MiB":>7s}  ratios to the first: infer / train time, '
              'train memory')
    print(header)
    ratios = []
    for r in rows:
        ratio = dict(config=r.config, infer_time=r.infer_ms / base.infer_ms,
                     train_time=r.train_ms / base.train_ms,
                     train_memory=r.train_mib / max(base.train_mib, 1e-9))
        ratios.append(ratio)
        name = r.config if len(r.config) <= 60 else '...' + r.config[-57:]
        print(f'{name:60s} {r.params_m:9.2f} {r.gmac:7.2f} {r.infer_ms:9.1f} {r.infer_mib:7.0f} '
              f'{r.train_ms:9.1f} {r.train_mib:7.0f}  {ratio["infer_time"]:.2f}x / '
              f'{ratio["train_time"]:.2f}x, {ratio["train_memory"]:.2f}x')
    result = dict(device=str(device), threads=torch.get_num_threads(), batch=args.batch,
                  shape=list(shape), rows=[asdict(r) for r in rows], ratios=ratios)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'wrote {args.json}')
    return result


if __name__ == '__main__':
    main()
