"""Checks that a CUDA build of ``mmattn._C`` registers CPU and CUDA kernels for every op.

Loads the shared library with ``torch.ops.load_library`` (no ``import mmattn``, so the CPU build
in the repository is not picked up instead) and asks the dispatcher whether each
``mmattn::<op>`` has a kernel for the ``CPU`` and ``CUDA`` dispatch keys. Needs no GPU.

Usage:
    python tools/check_cuda_ops.py PATH/TO/mmattn/_C.cpython-*.so

Exits non-zero, naming the ops and keys without a kernel, when any is missing.
"""
import argparse
import sys

import torch

OPS = (
    'na2d_qk',
    'na2d_qk_backward',
    'na2d_av',
    'na2d_av_backward',
    'na2d_fused',
    'ghost_head_aggregate',
    'ghost_head_aggregate_backward',
)
KEYS = ('CPU', 'CUDA')
# ops with a CPU kernel only: the fused training pass of the CPU kernels, whose saved
# probabilities are in their strip layout (CUDA training runs na2d_qk -> softmax -> na2d_av);
# ELSA's grouped convolution, which runs cuDNN's convolution on GPUs; and ELSA's two inference
# fusions, the softmax inside the ghost aggregation and the grouped convolution of q * k with its
# GELU, and SASA's na2d from its two relative-embedding tables, in inference and training (CUDA
# runs their compositions)
CPU_ONLY = ('na2d_fused_train', 'na2d_fused_train_backward', 'grouped_conv2d',
            'grouped_conv2d_weight_grad', 'ghost_head_softmax_aggregate', 'hadamard_conv_gelu',
            'na2d_split_rpe', 'na2d_split_rpe_train', 'na2d_split_rpe_train_backward')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('library', help='path of the built mmattn/_C*.so')
    args = parser.parse_args()

    if torch.version.cuda is None:
        print(f'torch {torch.__version__} has no CUDA support; the CUDA kernels of a '
              'FORCE_CUDA=1 build cannot be checked with it', file=sys.stderr)
        return 2
    torch.ops.load_library(args.library)
    print(f'loaded {args.library}')
    print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), '
          f'GPU available: {torch.cuda.is_available()}')

    missing = []
    width = max(len(op) for op in OPS + CPU_ONLY) + len('mmattn::')
    print(f'{"op":<{width}}  ' + '  '.join(f'{k:<4}' for k in KEYS))
    for op in OPS + CPU_ONLY:
        name = f'mmattn::{op}'
        keys = ('CPU', ) if op in CPU_ONLY else KEYS
        if not torch._C._dispatch_has_kernel(name):
            # The schema itself is absent (the library did not register the namespace).
            print(f'{name:<{width}}  ' + '  '.join(f'{"--":<4}' for _ in KEYS))
            missing.extend(f'{name} [{key}]' for key in keys)
            continue
        marks = []
        for key in KEYS:
            if key not in keys:
                marks.append('n/a')
                continue
            ok = torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
            marks.append('yes' if ok else 'NO')
            if not ok:
                missing.append(f'{name} [{key}]')
        print(f'{name:<{width}}  ' + '  '.join(f'{m:<4}' for m in marks))

    if missing:
        print('missing kernels: ' + ', '.join(missing), file=sys.stderr)
        return 1
    print(f'all {len(OPS)} ops have {" and ".join(KEYS)} kernels; the CPU-only ops '
          f'{", ".join(CPU_ONLY)} have their CPU kernels')
    return 0


if __name__ == '__main__':
    sys.exit(main())
