"""Registration of the ``mmattn::`` operators: schemas, CPU kernels, fake kernels and autograd
(``torch.library.opcheck``), and the fallback when the extension cannot be imported."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmattn.ops import has_compiled_ops

OPS = ('na2d_qk', 'na2d_qk_backward', 'na2d_av', 'na2d_av_backward', 'na2d_fused',
       'na2d_split_rpe', 'na2d_split_rpe_train', 'na2d_split_rpe_train_backward',
       'na2d_fused_train', 'na2d_fused_train_backward', 'ghost_head_aggregate',
       'ghost_head_aggregate_backward', 'ghost_head_softmax_aggregate', 'grouped_conv2d',
       'grouped_conv2d_weight_grad', 'hadamard_conv_gelu')

REPO_ROOT = Path(__file__).resolve().parents[2]
needs_ext = pytest.mark.skipif(not has_compiled_ops(), reason='mmattn._C is not built')


@needs_ext
@pytest.mark.parametrize('name', OPS)
def test_cpu_kernel_registered(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f'mmattn::{name}', 'CPU')


def _t(*shape, grad=False):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)


def _opcheck_cases():
    ks, d = 3, 2
    q, k, v = _t(1, 2, 6, 7, 3, grad=True), _t(1, 2, 6, 7, 3, grad=True), _t(1, 2, 6, 7, 3,
                                                                                grad=True)
    rpb, rpe, bias = _t(2, 5, 5, grad=True), _t(2, 3, 3, 3, grad=True), _t(1, 2, 6, 7, 9)
    attn = torch.rand(1, 2, 6, 7, 9, dtype=torch.float64, requires_grad=True)
    grad_logits, grad_out = _t(1, 2, 6, 7, 9), _t(1, 2, 6, 7, 3)
    gv, gattn = _t(2, 6, 5, 6, grad=True), torch.rand(2, 3, 9, 5, 6, dtype=torch.float64,
                                                       requires_grad=True)
    gmul, gadd = _t(6, 3, 3, grad=True), _t(6, 3, 3, grad=True)
    parent = torch.randn(1, 16, 5, 6).contiguous(memory_format=torch.channels_last)
    split_qkv, split_tables = [_t(1, 2, 6, 7, 4) for _ in range(3)], [_t(2, 3, 2) for _ in range(2)]
    ops = torch.ops.mmattn
    return [
        ('na2d_qk-mask-rpb+rpe', ops.na2d_qk.default, (q, k, rpb, rpe, ks, d, False, 0.5)),
        ('na2d_qk-clamp-rpb', ops.na2d_qk.default, (q, k, rpb, None, ks, 1, True, 0.5)),
        ('na2d_qk_backward', ops.na2d_qk_backward.default,
         (grad_logits, q.detach(), k.detach(), rpe.detach(), ks, d, False, 0.5, True)),
        ('na2d_av-mask', ops.na2d_av.default, (attn, v, ks, d, False)),
        ('na2d_av-clamp', ops.na2d_av.default, (attn, v, ks, 1, True)),
        ('na2d_av_backward', ops.na2d_av_backward.default,
         (grad_out, attn.detach(), v.detach(), ks, d, False)),
        ('na2d_fused', ops.na2d_fused.default,
         (q.detach(), k.detach(), v.detach(), rpb.detach(), rpe.detach(), bias, ks, d, False,
          0.5)),
        # inference only (no autograd): SASA's row and column tables, (heads, k, D/2); D = 4
        ('na2d_split_rpe', ops.na2d_split_rpe.default,
         (_t(1, 2, 6, 7, 4), _t(1, 2, 6, 7, 4), _t(1, 2, 6, 7, 4), _t(2, 3, 2), _t(2, 3, 2), ks,
          d, 1.0)),
        ('na2d_split_rpe_train', ops.na2d_split_rpe_train.default,
         (_t(1, 2, 6, 7, 4, grad=True), _t(1, 2, 6, 7, 4, grad=True), _t(1, 2, 6, 7, 4, grad=True),
          _t(2, 3, 2, grad=True), _t(2, 3, 2, grad=True), ks, d, 0.5)),
        ('na2d_split_rpe_train_backward', ops.na2d_split_rpe_train_backward.default,
         (_t(1, 2, 6, 7, 4), *split_qkv,
          ops.na2d_split_rpe_train(*split_qkv, *split_tables, ks, d, 0.5)[1], *split_tables, ks,
          d, 0.5)),
        ('na2d_fused_train-rpb+rpe', ops.na2d_fused_train.default, (q, k, v, rpb, rpe, ks, d, 0.5)),
        ('na2d_fused_train-plain', ops.na2d_fused_train.default, (q, k, v, None, None, 3, 1, 0.5)),
        ('na2d_fused_train_backward', ops.na2d_fused_train_backward.default,
         (grad_out, q.detach(), k.detach(), v.detach(),
          ops.na2d_fused_train(q.detach(), k.detach(), v.detach(), rpb.detach(), rpe.detach(), ks,
                               d, 0.5)[1], rpe.detach(), ks, d, 0.5, True)),
        ('ghost_head_aggregate', ops.ghost_head_aggregate.default, (gv, gattn, gmul, gadd, 3, 2)),
        ('ghost_head_aggregate-plain', ops.ghost_head_aggregate.default,
         (gv, gattn, None, None, 3, 1)),
        ('ghost_head_aggregate_backward', ops.ghost_head_aggregate_backward.default,
         (_t(2, 6, 5, 6), gv.detach(), gattn.detach(), gmul.detach(), gadd.detach(), 3, 2, True,
          True)),
        # inference only (no autograd), like na2d_fused
        ('ghost_head_softmax_aggregate', ops.ghost_head_softmax_aggregate.default,
         (gv.detach(), _t(2, 3, 9, 5, 6), _t(27), None, gadd.detach(), 3, 2)),
        # inference only, float32 slices of a channels-last map (the row kernel's domain)
        ('hadamard_conv_gelu', ops.hadamard_conv_gelu.default,
         (parent[:, :8], parent[:, 8:], _t(8, 4, 3, 3).float(), _t(8).float())),
    ]


@needs_ext
@pytest.mark.parametrize('case', range(18), ids=[c[0] for c in _opcheck_cases()])
def test_opcheck(case):
    # schema, fake kernel vs real kernel, autograd registration, AOT dispatch (dynamic shapes)
    name, op, args = _opcheck_cases()[case]
    if name == 'hadamard_conv_gelu':
        from mmattn.ops.grouped_conv import kernel_runs_here
        if not kernel_runs_here():
            pytest.skip('the grouped convolution row kernel does not run on this CPU')
    torch.library.opcheck(op, args)


def test_fallback_when_extension_is_missing():
    # mmattn._C made unimportable: import works, the functions use the reference and say so once
    code = textwrap.dedent('''
        import logging, sys
        sys.modules['mmattn._C'] = None  # `from mmattn import _C` raises ImportError
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)
        logging.getLogger('mmattn').addHandler(Keep())
        import torch
        import mmattn.ops as ops
        assert not ops.has_compiled_ops()
        assert not hasattr(torch.ops.mmattn, 'na2d_qk')  # nothing registered
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, 2, 5, 6, 4, dtype=torch.float64, requires_grad=True)
                   for _ in range(3))
        rpb = torch.randn(2, 5, 5, dtype=torch.float64)
        for _ in range(2):
            out = ops.na2d(q, k, v, 3, 2, 'mask', rpb=rpb)
            torch.testing.assert_close(out, ops.na2d_reference(q, k, v, 3, 2, 'mask', rpb=rpb))
            out.sum().backward()
            x, a = torch.randn(1, 4, 5, 6), torch.rand(1, 2, 9, 5, 6)
            torch.testing.assert_close(ops.ghost_head_aggregate(x, a, kernel_size=3),
                                       ops.ghost_head_aggregate_reference(x, a, kernel_size=3))
        warnings = [r for r in records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in records]
        assert 'reference' in warnings[0].getMessage()
        print('ok')
    ''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH')) if p))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith('ok')
