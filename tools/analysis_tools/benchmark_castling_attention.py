"""Inference time of one Castling-ViT linear-angular attention layer against softmax attention,
as the number of tokens grows (Castling-ViT, arXiv 2211.10526; spec ``specs/castling_vit.md`` 5).

For each grid side ``s`` in ``--sides`` (default 14, 28, 56, 112: 196 to 12,544 tokens) both
layers run on ``(batch, s*s, dim)`` tokens in eval mode without gradients, in the same process:

* ``castling``: :class:`mmattn.layers.LinearAngularAttention` (``seq1d`` conv, branch off, as at
  inference): ``O(L C d)`` beyond the projections;
* ``softmax``: the same ``qkv``/``proj`` around ``softmax(q k^T / sqrt(d)) v``, through
  ``F.scaled_dot_product_attention`` (``--softmax-impl sdpa``, what mmpretrain uses) or the
  explicit L x L product (``explicit``): ``O(L^2 C)``;
* ``projections``: the ``qkv`` and ``proj`` Linear layers alone, a purely token-linear workload
  that shows how much linear cost grows per step on the machine (caches, memory bandwidth).

It prints the times (the minimum of ``--repeats`` interleaved runs by default) and, for each
step to the next side (4x the tokens), the time ratio;
linear cost means about 4x, and the ratio to the projections' growth (1.0: as linear as a pure
Linear layer on this machine). ``--check`` exits with status 1 unless every castling ratio is at
most ``--max-ratio`` (default 5; ``--relative``: the castling ratio over the projections' ratio,
times 4). Example::

    python tools/analysis_tools/benchmark_castling_attention.py --dim 192 --heads 3 --check
"""
import argparse
import json
import os.path as osp
import statistics
import sys
import time
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmattn.layers import LinearAngularAttention  # noqa: E402


class SoftmaxAttention(nn.Module):
    """Multi-head softmax self-attention with ``qkv``/``proj`` (the DeiT attention)."""

    def __init__(self, dim: int, num_heads: int, impl: str = 'sdpa') -> None:
        super().__init__()
        if impl not in ('sdpa', 'explicit'):
            raise ValueError(f"impl must be 'sdpa' or 'explicit', got {impl!r}")
        self.num_heads, self.impl = num_heads, impl
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        q, k, v = self.qkv(x).reshape(b, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if self.impl == 'sdpa':
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = ((q * q.shape[-1]**-0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, length, c))


class Projections(nn.Module):
    """Only the ``qkv`` and ``proj`` Linear layers of an attention layer: the token-linear floor
    of both layers (how much a linear cost grows on this machine per step in tokens)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.qkv(x)[..., :x.shape[-1]])


def build_layers(dim: int, heads: int, softmax_impl: str = 'sdpa') -> Dict[str, nn.Module]:
    """The two attention layers (same width and heads) and their projections, in eval mode."""
    torch.manual_seed(0)
    return {'castling': LinearAngularAttention(dim, heads, qkv_bias=True).eval(),
            'softmax': SoftmaxAttention(dim, heads, softmax_impl).eval(),
            'projections': Projections(dim).eval()}


def time_layers(layers: Dict[str, nn.Module], sides: Sequence[int], dim: int, batch: int,
                device: torch.device, warmup: int, repeats: int,
                stat: str = 'min') -> List[dict]:
    """Inference seconds of every layer at every side (``stat`` of ``repeats`` runs after
    ``warmup``); one dict per side. The layers run interleaved, one call each per repeat, so
    that load from other processes hits them alike; ``min`` is the least disturbed run."""
    reduce = {'min': min, 'median': statistics.median}[stat]
    for layer in layers.values():
        layer.to(device)
    rows = []
    for side in sides:
        x = torch.randn(batch, side * side, dim, device=device)
        times = {name: [] for name in layers}
        with torch.no_grad():
            for i in range(warmup + repeats):
                for name, layer in layers.items():
                    if device.type == 'cuda':
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    layer(x)
                    if device.type == 'cuda':
                        torch.cuda.synchronize()
                    if i >= warmup:
                        times[name].append(time.perf_counter() - start)
        rows.append(dict(side=side, tokens=side * side,
                         **{name: reduce(t) for name, t in times.items()}))
    return rows


def growth_ratios(rows: Sequence[dict], name: str) -> List[float]:
    """Time ratios of consecutive rows for layer ``name`` (cost growth per step in tokens)."""
    return [b[name] / a[name] for a, b in zip(rows, rows[1:])]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sides', type=int, nargs='+', default=[14, 28, 56, 112],
                        help='token grid sides (tokens = side^2)')
    parser.add_argument('--dim', type=int, default=192, help='token width (DeiT-T: 192)')
    parser.add_argument('--heads', type=int, default=3, help='heads (DeiT-T: 3)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--softmax-impl', default='sdpa', choices=['sdpa', 'explicit'])
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--stat', default='min', choices=['min', 'median'],
                        help='statistic of the repeats (min: least disturbed by other load)')
    parser.add_argument('--max-ratio', type=float, default=5.)
    parser.add_argument('--relative', action='store_true',
                        help='check the castling growth divided by the projections growth (times '
                        'the token step) instead of the raw growth: discounts cache and memory '
                        'effects that slow every workload of this size')
    parser.add_argument('--check', action='store_true',
                        help='exit 1 unless every castling growth ratio <= --max-ratio')
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    if len(args.sides) < 2 or min(args.sides) < 1 or args.dim % args.heads:
        parser.error('need >= 2 positive --sides and --heads dividing --dim')
    device = torch.device(args.device)
    layers = build_layers(args.dim, args.heads, args.softmax_impl)
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')
    rows = time_layers(layers, args.sides, args.dim, args.batch, device, args.warmup,
                       args.repeats, args.stat)
    print(f'device={device} threads={torch.get_num_threads()} dim={args.dim} heads='
          f'{args.heads} batch={args.batch} softmax={args.softmax_impl}, {args.stat} of '
          f'{args.repeats} interleaved runs (warm-up {args.warmup})')
    print(f'{"side":>5s} {"tokens":>7s} {"castling ms":>12s} {"softmax ms":>11s} '
          f'{"projections ms":>15s} {"softmax/castling":>17s}')
    for r in rows:
        print(f'{r["side"]:5d} {r["tokens"]:7d} {r["castling"] * 1e3:12.2f} '
              f'{r["softmax"] * 1e3:11.2f} {r["projections"] * 1e3:15.2f} '
              f'{r["softmax"] / r["castling"]:17.2f}')
    ratios = {name: growth_ratios(rows, name) for name in layers}
    for name, values in ratios.items():
        steps = ', '.join(f'{a}->{b}: {v:.2f}x' for a, b, v in
                          zip(args.sides, args.sides[1:], values))
        print(f'{name} growth per step ({steps})')
    # growth relative to the token-linear projections: how much faster than a linear workload
    # on this machine the layer grows (1.0 = exactly as linear as the projections)
    relative = {name: [v / p for v, p in zip(values, ratios['projections'])]
                for name, values in ratios.items() if name != 'projections'}
    for name, values in relative.items():
        print(f'{name} growth / projections growth: ' +
              ', '.join(f'{v:.2f}' for v in values))
    token_steps = [(b / a)**2 for a, b in zip(args.sides, args.sides[1:])]
    bound = [args.max_ratio * s / 4 for s in token_steps]  # 5x per 4x tokens, scaled
    checked = [v * s for v, s in zip(relative['castling'], token_steps)] if args.relative \
        else ratios['castling']
    ok = all(v <= m for v, m in zip(checked, bound))
    print(f'castling linear-cost check (<= {args.max_ratio}x per 4x tokens'
          f'{", relative to the projections" if args.relative else ""}): '
          f'{"PASS" if ok else "FAIL"}')
    result = dict(device=str(device), threads=torch.get_num_threads(), dim=args.dim,
                  heads=args.heads, batch=args.batch, softmax_impl=args.softmax_impl,
                  rows=rows, ratios=ratios, relative=relative, ok=ok)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    if args.check and not ok:
        raise SystemExit(1)
    return result


if __name__ == '__main__':
    main()
