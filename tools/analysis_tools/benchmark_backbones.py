"""Speed, peak memory, parameters and FLOPs of the backbones of configs, against the first one.

Every config's ``model.backbone`` is built (random weights; any ``init_cfg`` is dropped) and
measured in the same run on the same input: parameters, multiply-accumulates of one image
(mmengine's analysis with mmattn's op handles), inference time (eval mode, no grad) and training
time (train mode, forward + backward) as the median of ``--repeats`` runs after ``--warmup``, the
repeats of all configs interleaved (round r runs every config once, so machine drift hits the
baseline and the others alike), and the peak memory of each (on CPU in a child process, see
``mmattn/utils/benchmark.py``). The first config is the baseline: every row also gets its ratios
to it (of the medians), and the median and quartiles of its per-round ratios (round r's time over
the baseline's time in round r: both sides of each ratio share the machine's state, so these
scatter less than the medians' ratio, and the quartiles show how far one run can be trusted;
``infer_paired`` and ``train_paired`` in the JSON).

With ``--all`` it measures every registered mmattn backbone variant (from ``BACKBONES`` and the
arch tables: a family added there is included with no edit here) beside the OpenMMLab
backbones of similar size (mmpretrain Swin-T/S/B, ResNet-50, DeiT-T/S/B, MViTv2-T; mmdet
PVT-T/S/M), and writes ``results.json`` (one row per model), ``results.md`` and ``results.png``
(throughput against GMAC, one colour per family, references in grey) to ``--out-dir``. Per
model: parameters, GMAC (strict: an operator without a FLOP handle is an error), throughput
(images/s at ``--throughput-batch``), latency at batch 1, training-step time at batch 1 and its
peak memory; the three timings' repeats are interleaved. ``--quick`` takes the smallest variant
of each family and Swin-T and ResNet-50 only. ``tools/analysis_tools/benchmark_report.py``
turns the JSON into the README tables.

Configs are files or stock configs as ``codebase::path``. Examples::

    # ELSA-Swin-T against Swin-T, ImageNet resolution
    python tools/analysis_tools/benchmark_backbones.py \\
        mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py \\
        configs/elsa_swin/elsa-swin-t_8xb128_in1k.py --shape 224
    # dense prediction at 512x512, JSON output
    python tools/analysis_tools/benchmark_backbones.py \\
        mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py \\
        configs/elsa_swin/elsa-swin-t_upernet_8xb2-160k_ade20k-512x512.py --shape 512 --json out.json
    # every family and variant against the references; a subset in minutes
    python tools/analysis_tools/benchmark_backbones.py --all --out-dir work_dirs/bench
    python tools/analysis_tools/benchmark_backbones.py --all --quick --out-dir work_dirs/bench-quick
    python tools/analysis_tools/benchmark_backbones.py --all ELSASwin SASAResNet-50 --quick
"""
import argparse
import json
import os.path as osp
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
# setuptools' notice, raised once per importing package of the stack: nothing a user can act on
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
# the timed training step runs LaViT's forward without the training loop's aux-loss hook
warnings.filterwarnings('ignore', message='LaViT: the diagonality-preserving loss')

from mmattn.utils.benchmark import (cpu_memory_env, interleaved_medians,  # noqa: E402
                                    interleaved_times, paired_ratios, peak_mib)
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
    # per-round ratios to the first config: (median, lower quartile, upper quartile)
    infer_paired: List[float] = field(default_factory=list)
    train_paired: List[float] = field(default_factory=list)


def short_name(config: str, width: int = 60) -> str:
    """``config`` cut to its last ``width`` characters (with a leading '...') for the tables."""
    return config if len(config) <= width else '...' + config[-(width - 3):]


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


def synced(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``fn`` followed by a CUDA synchronisation on CUDA devices."""
    def run():
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
    return run


def measure_configs(configs: List[str], shape: Tuple[int, int], batch: int,
                    device: torch.device, warmup: int, repeats: int, flops: bool) -> List[Row]:
    """Rows of every config; the timings of all configs interleaved (round r runs every
    config's inference and training step once), so machine drift hits them alike."""
    prepared, fns = [], {}
    for config in configs:
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
        fns[f'{config}/infer'], fns[f'{config}/train'] = synced(infer, device), synced(train,
                                                                                         device)
        prepared.append((config, type(model).__name__, params, gmac))
        print(f'  built {config}', flush=True)
    series = interleaved_times(fns, warmup, repeats)
    base = prepared[0][0]
    rows = []
    for config, name, params, gmac in prepared:
        infer_mib, train_mib = memory_probe(config, shape, batch, device)
        infer, train = series[f'{config}/infer'], series[f'{config}/train']
        rows.append(Row(config, name, params, gmac, statistics.median(infer) * 1e3, infer_mib,
                        statistics.median(train) * 1e3, train_mib,
                        list(paired_ratios(infer, series[f'{base}/infer'])),
                        list(paired_ratios(train, series[f'{base}/train']))))
    return rows


def entry_memory(spec: dict, shape: Tuple[int, int], device: torch.device,
                 here: bool) -> float:
    """Peak MiB of a training step at batch 1 of a zoo entry (a child process on CPU unless
    ``here``)."""
    if here or device.type == 'cuda':
        from mmattn.utils.backbone_zoo import build
        model = build(spec).to(device)
        return peak_mib(workloads(model, torch.randn(1, 3, *shape, device=device))[1], device)
    out = subprocess.run(
        [sys.executable, __file__, '--memory-probe-spec', json.dumps(spec), '--shape',
         *map(str, shape), '--device', str(device)],
        env=cpu_memory_env(), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_entry(entry: dict, shape: Tuple[int, int], batch: int, device: torch.device,
                  warmup: int, repeats: int, memory_here: bool) -> dict:
    """One ``--all`` row: parameters, strict GMAC of one image, throughput at ``batch``,
    latency and training step at batch 1 (repeats interleaved), training peak memory."""
    from mmattn.ops.flops import strict_flops
    from mmattn.utils.backbone_zoo import build
    model = build(entry['spec']).to(device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    model.eval()
    with torch.no_grad():
        gmac = strict_flops(model, (torch.randn(1, 3, *shape, device=device), )) / 1e9
    one = torch.randn(1, 3, *shape, device=device)
    many = torch.randn(batch, 3, *shape, device=device)
    latency, train = workloads(model, one)
    throughput, _ = workloads(model, many)

    times = interleaved_medians(dict(latency=synced(latency, device),
                                     throughput=synced(throughput, device),
                                     train=synced(train, device)), warmup, repeats)
    return dict(name=entry['name'], family=entry['family'], params_m=round(params, 3),
                gmac=float(f'{gmac:.6g}'), img_per_s=round(batch / times['throughput'], 2),
                latency_ms=round(times['latency'] * 1e3, 2),
                train_ms=round(times['train'] * 1e3, 2),
                peak_mib=round(entry_memory(entry['spec'], shape, device, memory_here), 1),
                shape=[3, *shape], batch=batch)


def write_outputs(rows: List[dict], meta: dict, out_dir: str) -> Dict[str, str]:
    """``results.json`` (meta + rows), ``results.md`` and ``results.png`` in ``out_dir``."""
    import os
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: osp.join(out_dir, f'results.{k}') for k in ('json', 'md', 'png')}
    with open(paths['json'], 'w') as f:
        json.dump(dict(meta, rows=rows), f, indent=1)
    with open(paths['md'], 'w') as f:
        f.write(markdown_table(rows, meta))
    plot(rows, meta, paths['png'])
    return paths


def markdown_table(rows: List[dict], meta: dict) -> str:
    batch = rows[0]['batch'] if rows else meta.get('batch')
    lines = [f'| model | family | params (M) | GMAC | images/s (batch {batch}) | latency (ms) | '
             'training step (ms) | training peak (MiB) |', '|---|---|---|---|---|---|---|---|']
    for r in sorted(rows, key=lambda r: (r['family'] == 'reference', r['family'], r['gmac'])):
        lines.append(f"| {r['name']} | {r['family']} | {r['params_m']:.2f} | {r['gmac']:.2f} | "
                     f"{r['img_per_s']:.1f} | {r['latency_ms']:.1f} | {r['train_ms']:.1f} | "
                     f"{r['peak_mib']:.0f} |")
    return '\n'.join(lines) + '\n'


def plot(rows: List[dict], meta: dict, path: str) -> None:
    """Throughput against GMAC: one colour per mmattn family, references in grey, labelled."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from mmattn.utils.backbone_zoo import REFERENCE_FAMILY
    families = sorted({r['family'] for r in rows if r['family'] != REFERENCE_FAMILY})
    colours = {f: plt.get_cmap('tab10')(i % 10) for i, f in enumerate(families)}
    colours[REFERENCE_FAMILY] = (0.55, 0.55, 0.55, 1.)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    for family in families + [REFERENCE_FAMILY]:
        pts = [r for r in rows if r['family'] == family]
        if not pts:
            continue
        ax.scatter([r['gmac'] for r in pts], [r['img_per_s'] for r in pts], s=40,
                   color=colours[family], label=family, zorder=3)
        for r in pts:
            ax.annotate(r['name'], (r['gmac'], r['img_per_s']), fontsize=7,
                        xytext=(3, 3), textcoords='offset points')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('GMAC (one image, log scale)')
    ax.set_ylabel(f"images / s (batch {rows[0]['batch'] if rows else '?'}, log scale)")
    ax.set_title(f"backbones at {meta['shape'][0]}x{meta['shape'][1]}, {meta['device']}, "
                 f"{meta['threads']} threads")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main_all(args, shape: Tuple[int, int], device: torch.device) -> dict:
    from mmattn.utils.backbone_zoo import select
    try:
        entries = select(args.all, args.quick)
    except ValueError as e:
        raise SystemExit(f'benchmark_backbones.py: error: {e}')
    batch = args.throughput_batch or (4 if args.quick else 8)
    repeats = args.repeats if args.repeats_set else (3 if args.quick else 5)
    print(f'[bench] {len(entries)} backbones, device={device} threads={torch.get_num_threads()}, '
          f'{shape[0]}x{shape[1]}, throughput at batch {batch}, median of {repeats} '
          f'interleaved repeats (warm-up {args.warmup})', flush=True)
    rows, start = [], time.perf_counter()
    for i, entry in enumerate(entries):
        rows.append(measure_entry(entry, shape, batch, device, args.warmup, repeats,
                                  args.memory_here))
        elapsed = time.perf_counter() - start
        r = rows[-1]
        print(f"[bench] {i + 1}/{len(entries)} {r['name']}: {r['params_m']:.2f} M, "
              f"{r['gmac']:.2f} GMAC, {r['img_per_s']:.1f} img/s, {r['latency_ms']:.1f} ms, "
              f"train {r['train_ms']:.1f} ms, {r['peak_mib']:.0f} MiB "
              f"(elapsed {elapsed:.0f} s, ETA {elapsed / (i + 1) * (len(entries) - i - 1):.0f} s)",
              flush=True)
    meta = dict(date=time.strftime('%Y-%m-%d'), device=str(device),
                threads=torch.get_num_threads(), shape=list(shape),
                batch=batch, repeats=repeats, quick=args.quick, seconds=round(
                    time.perf_counter() - start, 1),
                command=' '.join(['python tools/analysis_tools/benchmark_backbones.py',
                                  *args.argv]))
    result = dict(meta, rows=rows)
    if args.out_dir:
        paths = write_outputs(rows, meta, args.out_dir)
        print(f"[bench] wrote {', '.join(paths.values())}")
    print(markdown_table(rows, meta))
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='*', help='the first one is the baseline')
    parser.add_argument('--all', nargs='*', default=None, metavar='NAME',
                        help='every registered mmattn family and variant with the reference '
                        'backbones; or only the named families (ELSASwin) / variants '
                        '(ELSASwin-tiny) and their references')
    parser.add_argument('--quick', action='store_true',
                        help='with --all: the smallest variant per family, Swin-T and ResNet-50')
    parser.add_argument('--out-dir', help='with --all: write results.{json,md,png} here')
    parser.add_argument('--throughput-batch', type=int, default=None,
                        help='with --all: batch of the throughput measurement (default 8, '
                        '--quick 4)')
    parser.add_argument('--memory-here', action='store_true',
                        help='measure peak memory in this process (less exact on CPU; for '
                        'backbones that only exist in this process)')
    parser.add_argument('--shape', type=int, nargs='+', default=[224],
                        help='input height and width (one value: square)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed repeats (default 5; --all --quick: 3)')
    parser.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--memory-probe', action='store_true',
                        help=argparse.SUPPRESS)  # internal: the CPU memory child process
    parser.add_argument('--memory-probe-spec', help=argparse.SUPPRESS)  # same, for --all
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.repeats_set = args.repeats is not None
    args.repeats = 5 if args.repeats is None else args.repeats
    if args.all is None and not args.configs and not args.memory_probe_spec:
        parser.error('give configs, or --all [NAME ...]')
    if len(args.shape) not in (1, 2) or min(args.shape) < 1:
        parser.error(f'--shape takes 1 or 2 positive values, got {args.shape}')
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error('--batch and --repeats must be >= 1, --warmup >= 0')
    shape = tuple((args.shape * 2)[:2])
    device = torch.device(args.device)
    if args.memory_probe:
        print(json.dumps(peak_memory_here(args.configs[0], shape, args.batch, device)))
        return {}
    if args.memory_probe_spec:
        print(json.dumps(entry_memory(json.loads(args.memory_probe_spec), shape, device, True)))
        return {}
    if args.all is not None:
        return main_all(args, shape, device)

    print(f'device={device} threads={torch.get_num_threads()} input {args.batch}x3x{shape[0]}x'
          f'{shape[1]}, median of {args.repeats} interleaved repeats (warm-up {args.warmup})',
          flush=True)
    rows = measure_configs(args.configs, shape, args.batch, device, args.warmup, args.repeats,
                           not args.no_flops)
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
        name = short_name(r.config)
        print(f'{name:60s} {r.params_m:9.2f} {r.gmac:7.2f} {r.infer_ms:9.1f} {r.infer_mib:7.0f} '
              f'{r.train_ms:9.1f} {r.train_mib:7.0f}  {ratio["infer_time"]:.2f}x / '
              f'{ratio["train_time"]:.2f}x, {ratio["train_memory"]:.2f}x')
    if len(rows) > 1:
        print('per-round (paired) time ratios to the first config, median [quartiles]; a round '
              'runs every config once, so machine drift hits both sides of each ratio:')
        for r in rows[1:]:
            name = short_name(r.config)
            (im, il, ih), (tm, tl, th) = r.infer_paired, r.train_paired
            print(f'  {name:60s} infer {im:.2f}x [{il:.2f}-{ih:.2f}], train {tm:.2f}x '
                  f'[{tl:.2f}-{th:.2f}]')
    result = dict(device=str(device), threads=torch.get_num_threads(), batch=args.batch,
                  shape=list(shape), rows=[asdict(r) for r in rows], ratios=ratios)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'wrote {args.json}')
    return result


if __name__ == '__main__':
    main()
