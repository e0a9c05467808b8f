"""Benchmark mmattn's compiled ops against their plain-PyTorch (unfold) references (for
``grouped_conv2d``: ATen's convolution).

For each op and shape: forward (inference, no grad) and forward+backward time, median of
``--repeats`` runs after ``--warmup`` runs, and peak memory above the inputs; then the ratios
reference / compiled. Both sides are measured in the same run, on the same inputs, and their
repeats are interleaved (round r runs every implementation once), so that machine drift hits
both alike.

Roofline: each case's FLOPs (the multiply-adds of its attention products, 2 FLOPs each; the
backward counted as twice the forward) give the achieved GFLOP/s, printed beside the machine's
fp32 GEMM rate (a 1024x1024 ``torch.mm``) measured in the same run, interleaved with the cases,
and their ratio: the fraction of what the machine's matrix unit sustains.

Per round: each round times every implementation and the GEMM once, so the figures of one
round share the machine's state. Beside the ratios of the medians the script prints the median
and quartiles of the per-round rooflines (the case's rate in round r over the GEMM rate in round
r) and speedups (``*_paired`` in the JSON): the quartiles show how far one run can be trusted.

Peak memory: on CUDA, torch's peak allocator statistics. On CPU, the growth of the resident-set
high-water mark (Linux VmHWM, reset through /proc/self/clear_refs) over one call, measured in a
child process with a fixed glibc mmap threshold so that freed buffers leave the resident set;
timings are taken in this process, with the default allocator behaviour, for both sides alike.

Examples::

    python tools/analysis_tools/benchmark_ops.py                  # the issue's reference shapes
    python tools/analysis_tools/benchmark_ops.py --json out.json
    python tools/analysis_tools/benchmark_ops.py --device cuda --dtype float16
"""
import argparse
import json
import os.path as osp
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmattn.ops import concat_relative_embedding  # noqa: E402
from mmattn.ops import (ghost_head_aggregate, ghost_head_aggregate_reference,  # noqa: E402
                        grouped_conv2d, has_compiled_ops, na2d, na2d_reference)
from mmattn.utils.benchmark import (cpu_memory_env, interleaved_times,  # noqa: E402
                                    paired_ratios, peak_mib)


def cpu_kernels() -> str:
    """The builds of mmattn's vectorised CPU kernels in use (AVX512, AVX2 or DEFAULT): ATen's
    capability, and na2d's where it differs (AVX2 on CPUs that split AVX-512, or as
    MMATTN_NA2D_KERNELS says)."""
    from mmattn import _C
    build, na2d_build = _C.cpu_kernels(), _C.na2d_cpu_kernels()
    return build if build == na2d_build else f'{build} (na2d: {na2d_build})'


@dataclass
class Case:
    """One op on one shape; ``make`` returns the inputs, ``run``/``ref`` call op and reference."""
    name: str
    make: Callable[..., Dict[str, torch.Tensor]]
    run: Callable[..., torch.Tensor]
    ref: Callable[..., torch.Tensor]
    flops: float  # of the forward; forward+backward counts 3x


def na2d_case(B: int, heads: int, H: int, W: int, D: int, k: int, border: str = 'mask',
              with_rpb: bool = True, sasa: bool = False) -> Case:
    """``sasa``: SASA's call, rpe and scale 1 on W-contiguous ``(B, heads, H, W, D)`` views of
    a ``(B, 3 * heads * D, H, W)`` convolution output, instead of contiguous inputs."""
    def make(device, dtype):
        g = torch.Generator().manual_seed(0)
        if sasa:
            x = torch.randn(B, 3 * heads * D, H, W, generator=g, dtype=dtype).to(device)
            t = {n: part.view(B, heads, D, H, W).permute(0, 1, 3, 4, 2)
                 for n, part in zip(('q', 'k', 'v'), x.split(heads * D, dim=1))}
            # as SASAAttention builds it: row and column tables concatenated, which the CPU
            # kernels take as separable
            rel_h, rel_w = (0.1 * torch.randn(heads, k, D // 2, generator=g, dtype=dtype)
                            for _ in range(2))
            t['rpe'] = concat_relative_embedding(rel_h, rel_w).contiguous().to(device)
            return t
        t = {n: torch.randn(B, heads, H, W, D, generator=g, dtype=dtype).to(device)
             for n in ('q', 'k', 'v')}
        if with_rpb:
            t['rpb'] = torch.randn(heads, 2 * k - 1, 2 * k - 1, generator=g, dtype=dtype).to(device)
        return t

    extras = ' rpe views' if sasa else (' rpb' if with_rpb else '')
    scale = 1.0 if sasa else None
    return Case(
        name=f'na2d B={B} heads={heads} {H}x{W} D={D} k={k} {border}{extras}',
        make=make,
        flops=2 * 2 * B * heads * H * W * k * k * D,  # q.k and attn.v (rpe not counted)
        run=lambda t: na2d(t['q'], t['k'], t['v'], k, border=border, rpb=t.get('rpb'),
                           rpe=t.get('rpe'), scale=scale),
        ref=lambda t: na2d_reference(t['q'], t['k'], t['v'], k, border=border, rpb=t.get('rpb'),
                                     rpe=t.get('rpe'), scale=scale))


def ghost_case(B: int, C: int, G: int, H: int, W: int, k: int) -> Case:
    def make(device, dtype):
        g = torch.Generator().manual_seed(0)
        return dict(
            v=torch.randn(B, C, H, W, generator=g, dtype=dtype).to(device),
            attn=torch.randn(B, G, k * k, H, W, generator=g, dtype=dtype).softmax(2).to(device),
            mul=torch.randn(C, k, k, generator=g, dtype=dtype).to(device),
            add=torch.randn(C, k, k, generator=g, dtype=dtype).to(device))

    return Case(
        name=f'ghost_head_aggregate B={B} C={C} G={G} {H}x{W} k={k} mul+add',
        make=make,
        flops=2 * 2 * B * C * H * W * k * k,  # the tap weight (attn*M+S) and its product
        run=lambda t: ghost_head_aggregate(t['v'], t['attn'], t['mul'], t['add'], k),
        ref=lambda t: ghost_head_aggregate_reference(t['v'], t['attn'], t['mul'], t['add'], k))


def gconv_case(B: int, C: int, H: int, W: int, k: int) -> Case:
    """ELSA's ``attn.0``: a ``k x k`` convolution of 4 channels per group on a channels-last map;
    the "reference" is ATen's ``F.conv2d`` (mkldnn on CPU), the convolution it replaces."""
    def make(device, dtype):
        g = torch.Generator().manual_seed(0)
        return dict(
            x=torch.randn(B, C, H, W, generator=g, dtype=dtype).to(device).contiguous(
                memory_format=torch.channels_last),
            weight=(torch.randn(C, 4, k, k, generator=g, dtype=dtype) / k).to(device),
            bias=torch.randn(C, generator=g, dtype=dtype).to(device))

    return Case(
        name=f'grouped_conv2d B={B} C={C} {H}x{W} k={k} 4 per group',
        make=make,
        flops=2 * B * C * 4 * k * k * H * W,
        run=lambda t: grouped_conv2d(t['x'], t['weight'], t['bias']),
        ref=lambda t: torch.nn.functional.conv2d(t['x'], t['weight'], t['bias'], padding=k // 2,
                                                 groups=C // 4))


CASES = {
    'na2d': na2d_case(2, 4, 56, 56, 32, 7),
    'na2d-clamp': na2d_case(2, 4, 56, 56, 32, 7, border='clamp'),
    # the shape of SASA-ResNet-50's first stage at 224x224: 8 heads of 8 channels (D < one vector)
    'na2d-sasa': na2d_case(1, 8, 56, 56, 8, 7, with_rpb=False),
    # the same as SASA calls it: rpe, scale 1, views of the q/k/v convolution output
    'na2d-sasa-views': na2d_case(1, 8, 56, 56, 8, 7, sasa=True),
    'ghost': ghost_case(2, 96, 3, 56, 56, 7),
    # ELSA-Swin-T's first stage at 224x224 (dim_qk 64); the reference is mkldnn's convolution
    'gconv': gconv_case(1, 64, 56, 56, 7),
}


@dataclass
class Row:
    case: str
    impl: str
    forward_ms: float
    forward_mib: float
    train_ms: float
    train_mib: float
    forward_gflops: float
    train_gflops: float


def workloads(case: Case, impl: str, device: torch.device, dtype: torch.dtype):
    """The inference and training calls of one implementation on the case's inputs."""
    fn = case.run if impl == 'compiled' else case.ref
    inputs = case.make(device, dtype)

    def forward():
        with torch.no_grad():
            fn(inputs)

    grads = {n: t.clone().requires_grad_() for n, t in inputs.items()}

    def train():
        out = fn(grads)
        out.backward(torch.ones_like(out))
        for t in grads.values():
            t.grad = None

    return forward, train


def probe_memory(key: str, impl: str, device: torch.device, dtype: torch.dtype) -> List[float]:
    """Peak MiB of (forward, forward+backward); on CPU in a child process (see module doc)."""
    if device.type == 'cuda':
        return [peak_mib(fn, device) for fn in workloads(CASES[key], impl, device, dtype)]
    out = subprocess.run([sys.executable, __file__, '--memory-probe', key, impl, '--device',
                          str(device), '--dtype', str(dtype).replace('torch.', '')],
                         env=cpu_memory_env(), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def synced(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    if device.type != 'cuda':
        return fn

    def call():
        fn()
        torch.cuda.synchronize(device)

    return call


def gemm(device: torch.device, n: int = 1024) -> Callable[[], None]:
    """An fp32 n x n matrix product: the machine's reference rate (2 n^3 FLOPs)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    return lambda: torch.mm(a, b)


def bench_cases(keys: List[str], device: torch.device, dtype: torch.dtype, warmup: int,
                repeats: int, impls: Tuple[str, ...] = ('compiled', 'reference')):
    """Rows of every case and implementation, and the GEMM rate (GFLOP/s); all timings of
    the run interleaved with each other."""
    fns = {'gemm': synced(gemm(device), device)}
    for key in keys:
        for impl in impls:
            forward, train = workloads(CASES[key], impl, device, dtype)
            fns[f'{key}/{impl}/forward'] = synced(forward, device)
            fns[f'{key}/{impl}/train'] = synced(train, device)
    series = interleaved_times(fns, warmup, repeats)
    med = {name: statistics.median(t) for name, t in series.items()}
    gemm_gflops = 2 * 1024**3 / med['gemm'] / 1e9
    rows = {}
    for key in keys:
        case = CASES[key]
        for impl in impls:
            fwd_s, train_s = med[f'{key}/{impl}/forward'], med[f'{key}/{impl}/train']
            fwd_mib, train_mib = probe_memory(key, impl, device, dtype)
            rows[key, impl] = Row(case.name, impl, fwd_s * 1e3, fwd_mib, train_s * 1e3,
                                  train_mib, case.flops / fwd_s / 1e9,
                                  3 * case.flops / train_s / 1e9)
    return rows, gemm_gflops, series


def paired_summary(key: str, series: Dict[str, List[float]], impls: Tuple[str, ...]) -> dict:
    """Per-round (paired) figures of a case, each (median, lower quartile, upper quartile): the
    roofline of round r is the case's GFLOP/s in round r over the GEMM rate in round r, and the
    speedup of round r the reference's time over the compiled op's, so drift between rounds
    cancels."""
    flops = CASES[key].flops
    out = {}
    for step, mult in (('forward', 1), ('train', 3)):
        compiled = series[f'{key}/compiled/{step}']
        scale = mult * flops / (2 * 1024**3)  # roofline = scale * t_gemm / t_case
        out[f'{step}_roofline_paired'] = [scale * v for v in paired_ratios(series['gemm'],
                                                                            compiled)]
        if 'reference' in impls:
            out[f'{step}_speedup_paired'] = list(
                paired_ratios(series[f'{key}/reference/{step}'], compiled))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cases', nargs='+', choices=sorted(CASES), default=['na2d', 'ghost'])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32',
                        choices=['float16', 'bfloat16', 'float32', 'float64'])
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--compiled-only', action='store_true',
                        help='time the compiled ops (and the GEMM) without the references, '
                        'whose large allocations and cache traffic slow the compiled side')
    parser.add_argument('--memory-probe', nargs=2, metavar=('CASE', 'IMPL'),
                        help=argparse.SUPPRESS)  # internal: the CPU memory child process
    args = parser.parse_args(argv)
    print(f'CPU kernels: {cpu_kernels()}')
    if not has_compiled_ops():
        raise SystemExit('mmattn._C is not built: nothing to compare (pip install -e .)')
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.memory_probe:
        key, impl = args.memory_probe
        print(json.dumps([peak_mib(fn, device) for fn in workloads(CASES[key], impl, device,
                                                                     dtype)]))
        return

    print(f'device={device} dtype={args.dtype} threads={torch.get_num_threads()} '
          f'median of {args.repeats} (warm-up {args.warmup}), repeats interleaved')
    impls = ('compiled', ) if args.compiled_only else ('compiled', 'reference')
    table, gemm_gflops, series = bench_cases(args.cases, device, dtype, args.warmup,
                                             args.repeats, impls)
    header = (f'{"case":58s} {"impl":9s} {"fwd ms":>9s} {"fwd MiB":>9s} {"f+b ms":>9s} '
              f'{"f+b MiB":>9s} {"fwd GF/s":>9s} {"f+b GF/s":>9s}')
    print(header)
    print('-' * len(header))
    rows: List[Row] = []
    summary = []
    for key in args.cases:
        pair = {impl: table[key, impl] for impl in impls}
        for row in pair.values():
            rows.append(row)
            print(f'{row.case:58s} {row.impl:9s} {row.forward_ms:9.2f} {row.forward_mib:9.1f} '
                  f'{row.train_ms:9.2f} {row.train_mib:9.1f} {row.forward_gflops:9.1f} '
                  f'{row.train_gflops:9.1f}')
        c = pair['compiled']
        paired = paired_summary(key, series, impls)
        if args.compiled_only:
            summary.append(dict(case=c.case, forward_roofline=c.forward_gflops / gemm_gflops,
                                train_roofline=c.train_gflops / gemm_gflops, **paired))
            continue
        r = pair['reference']
        summary.append(dict(case=c.case, forward_speedup=r.forward_ms / c.forward_ms,
                            train_speedup=r.train_ms / c.train_ms,
                            train_memory_ratio=c.train_mib / max(r.train_mib, 1e-9),
                            forward_roofline=c.forward_gflops / gemm_gflops,
                            train_roofline=c.train_gflops / gemm_gflops, **paired))
    print()
    print(f'fp32 GEMM rate (1024x1024 torch.mm, same run): {gemm_gflops:.1f} GFLOP/s')
    print('ratios (reference / compiled for time, compiled / reference for memory; roofline: '
          'compiled GFLOP/s / GEMM rate):')
    def band(values, percent=False):  # (median, lower, upper quartile) as 'm [lo-hi]'
        if percent:
            return '{:.1f}% [{:.1f}-{:.1f}]'.format(*(100 * v for v in values))
        return '{:.2f}x [{:.2f}-{:.2f}]'.format(*values)

    for s in summary:
        if args.compiled_only:
            print(f'  {s["case"]}: roofline forward {100 * s["forward_roofline"]:.1f}%, '
                  f'forward+backward {100 * s["train_roofline"]:.1f}%')
        else:
            print(f'  {s["case"]}: forward {s["forward_speedup"]:.2f}x faster, '
                  f'forward+backward {s["train_speedup"]:.2f}x faster, '
                  f'forward+backward peak memory {s["train_memory_ratio"]:.3f} of the '
                  f'reference; roofline forward {100 * s["forward_roofline"]:.1f}%, '
                  f'forward+backward {100 * s["train_roofline"]:.1f}%')
        line = (f'    per round, median [quartiles]: roofline forward '
                f'{band(s["forward_roofline_paired"], True)}, forward+backward '
                f'{band(s["train_roofline_paired"], True)}')
        if not args.compiled_only:
            line += (f'; speedup forward {band(s["forward_speedup_paired"])}, '
                     f'forward+backward {band(s["train_speedup_paired"])}')
        print(line)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=str(device), dtype=args.dtype, threads=torch.get_num_threads(),
                           cpu_kernels=cpu_kernels(), gemm_gflops=gemm_gflops,
                           rows=[asdict(r) for r in rows], ratios=summary), f, indent=2)
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
