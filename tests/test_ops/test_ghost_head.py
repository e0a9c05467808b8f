"""Tests of ``mmattn.ops.ghost_head_aggregate`` (ELSA's ghost-head neighbourhood filter), CPU.

Oracles: a pixel loop written from ``specs/ops.md`` section 2 (:func:`ghost_oracle`), depthwise
``F.conv2d`` for spatially constant attention, the plain-PyTorch reference (checked against
both) and float64 ``gradcheck``.
"""
import pytest
import torch
import torch.nn.functional as F

import mmattn.ops.ghost_head as ghost_head
from mmattn.ops import ghost_head_aggregate, ghost_head_aggregate_reference

from _ghost import (BF16_TOL, FP32_REDUCTION_ATOL_PER_MAX, FP32_REDUCTION_RTOL, FP32_TOL,
                    FP64_TOL, GRADCHECK, ghost_oracle)


def make_inputs(B, C, G, H, W, ks, ghosts='', dtype=torch.float64, seed=0,
                requires_grad=False):
    """``v``, a softmax ``attn`` and the ghost tensors named in ``ghosts`` (``'mul+add'``)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    t = dict(v=rnd(B, C, H, W), attn=rnd(B, G, ks * ks, H, W).softmax(2))
    t['ghost_mul'] = rnd(C, ks, ks) if 'mul' in ghosts else None
    t['ghost_add'] = rnd(C, ks, ks) if 'add' in ghosts else None
    t = {n: None if x is None else x.to(dtype) for n, x in t.items()}
    if requires_grad:
        for x in t.values():
            if x is not None:
                x.requires_grad_(True)
    return t


def call(fn, t, ks, dilation):
    return fn(t['v'], t['attn'], t['ghost_mul'], t['ghost_add'], kernel_size=ks,
              dilation=dilation)


def grad_tensors(t):
    return {name: x for name, x in t.items() if x is not None and x.requires_grad}


def forward_backward(fn, t, ks, dilation, grad_out):
    out = call(fn, t, ks, dilation)
    leaves = grad_tensors(t)
    return out, dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), grad_out)))


@pytest.mark.parametrize('B, C, G, H, W, ks, dilation, ghosts', [
    pytest.param(1, 4, 2, 4, 5, 3, 1, '', id='G2-d1-plain'),
    pytest.param(1, 4, 2, 4, 5, 3, 1, 'mul+add', id='G2-d1-mul+add'),
    pytest.param(2, 3, 3, 4, 5, 3, 2, 'mul', id='G3-d2-mul'),
    pytest.param(1, 2, 1, 2, 3, 5, 1, 'add', id='G1-d1-k5-2x3-add'),
])
def test_reference_and_op_match_oracle(B, C, G, H, W, ks, dilation, ghosts):
    t = make_inputs(B, C, G, H, W, ks, ghosts, seed=1)
    expected = call(ghost_oracle, t, ks, dilation)
    torch.testing.assert_close(call(ghost_head_aggregate_reference, t, ks, dilation), expected,
                               **FP64_TOL)
    torch.testing.assert_close(call(ghost_head_aggregate, t, ks, dilation), expected, **FP64_TOL)


@pytest.mark.parametrize('dilation', [1, 2])
@pytest.mark.parametrize('ks', [3, 5])
def test_constant_attention_is_a_depthwise_convolution(ks, dilation):
    # attention that is the same at every pixel makes the op a depthwise conv2d with the weight
    # attn[g, tap] * M[c, tap] + S[c, tap] and zero padding
    B, C, G, H, W = 2, 6, 3, 7, 8
    t = make_inputs(B, C, G, H, W, ks, 'mul+add', seed=2)
    per_tap = t['attn'][:, :, :, :1, :1]  # (B, G, k*k, 1, 1)
    t['attn'] = per_tap.expand(B, G, ks * ks, H, W).contiguous()
    out = call(ghost_head_aggregate, t, ks, dilation)
    for b in range(B):
        a = per_tap[b, :, :, 0, 0].repeat_interleave(C // G, dim=0).view(C, ks, ks)
        weight = (a * t['ghost_mul'] + t['ghost_add'])[:, None]
        expected = F.conv2d(t['v'][b:b + 1], weight, padding=(ks // 2) * dilation,
                            dilation=dilation, groups=C)
        torch.testing.assert_close(out[b:b + 1], expected, **FP64_TOL)


@pytest.mark.parametrize('tap', [(1, 1), (0, 2), (2, 0)], ids=['centre', 'up-right', 'down-left'])
def test_one_hot_attention_shifts_the_map(tap):
    # all the attention on tap (u, w): out[i, j] = v[i + (u - 1) d, j + (w - 1) d], zero outside
    ks, dilation, H, W = 3, 2, 6, 7
    t = make_inputs(1, 4, 2, H, W, ks, seed=3)
    t['attn'] = torch.zeros_like(t['attn'])
    t['attn'][:, :, tap[0] * ks + tap[1]] = 1.0
    out = call(ghost_head_aggregate, t, ks, dilation)
    di, dj = (tap[0] - 1) * dilation, (tap[1] - 1) * dilation
    expected = torch.zeros_like(t['v'])
    rows = slice(max(0, -di), min(H, H - di))
    cols = slice(max(0, -dj), min(W, W - dj))
    expected[:, :, rows, cols] = t['v'][:, :, rows.start + di:rows.stop + di,
                                        cols.start + dj:cols.stop + dj]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# float64 gradcheck
# --------------------------------------------------------------------------------------------
def _grad_case(G, dilation, ghosts, B=2, C=6, H=5, W=6, ks=3):
    name = f'G{G}-d{dilation}-k{ks}-{H}x{W}-B{B}C{C}-{ghosts or "plain"}'
    return pytest.param(B, C, G, H, W, ks, dilation, ghosts, id=name)


GRADCHECK_CASES = [
    _grad_case(G, d, ghosts) for G in (1, 3) for d in (1, 2)
    for ghosts in ('', 'mul', 'add', 'mul+add')
] + [
    _grad_case(2, 1, 'mul+add', B=1, C=4, H=2, W=3, ks=5),  # map smaller than the window
    _grad_case(1, 1, 'mul+add', B=1, C=2, H=6, W=7, ks=5),
]


@pytest.mark.parametrize('B, C, G, H, W, ks, dilation, ghosts', GRADCHECK_CASES)
def test_gradcheck(B, C, G, H, W, ks, dilation, ghosts, num_threads):
    num_threads(1)  # thousands of calls on tiny maps: no parallel-region overhead
    t = make_inputs(B, C, G, H, W, ks, ghosts, seed=4, requires_grad=True)
    names = list(grad_tensors(t))

    def fn(*tensors):
        return call(ghost_head_aggregate, dict(t, **dict(zip(names, tensors))), ks, dilation)

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names), **GRADCHECK)


@pytest.mark.parametrize('frozen', ['ghost_mul', 'ghost_add', 'v', 'attn'])
def test_gradcheck_partial_requires_grad(frozen, num_threads):
    num_threads(1)
    t = make_inputs(1, 4, 2, 5, 5, 3, 'mul+add', seed=5, requires_grad=True)
    t[frozen].requires_grad_(False)
    names = list(grad_tensors(t))

    def fn(*tensors):
        return call(ghost_head_aggregate, dict(t, **dict(zip(names, tensors))), 3, 1)

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names), **GRADCHECK)


# --------------------------------------------------------------------------------------------
# float32 agreement on odd shapes, non-contiguous input, determinism, bfloat16, fallback
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('B, C, G, H, W, ks, dilation, ghosts', [
    pytest.param(2, 12, 3, 13, 17, 7, 1, 'mul+add', id='G3-d1-k7-13x17-mul+add'),
    pytest.param(2, 8, 2, 31, 9, 3, 2, 'mul', id='G2-d2-k3-31x9-mul'),
    pytest.param(1, 5, 1, 31, 9, 5, 1, 'add', id='G1-d1-k5-31x9-add'),
])
def test_fp32_matches_reference(B, C, G, H, W, ks, dilation, ghosts):
    t64 = make_inputs(B, C, G, H, W, ks, ghosts, seed=6, requires_grad=True)
    t32 = {n: None if x is None else x.detach().float().requires_grad_() for n, x in t64.items()}
    grad_out = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(7),
                           dtype=torch.float64)
    ref, ref_grads = forward_backward(ghost_head_aggregate_reference, t64, ks, dilation, grad_out)
    out, grads = forward_backward(ghost_head_aggregate, t32, ks, dilation, grad_out.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.detach().float(), **FP32_TOL)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        expected = ref_grads[name].float()
        if name.startswith('ghost_'):
            atol = FP32_REDUCTION_ATOL_PER_MAX * expected.abs().max().item()
            torch.testing.assert_close(grad, expected, rtol=FP32_REDUCTION_RTOL, atol=atol,
                                       msg=lambda m: f'd_{name}: {m}')
        else:
            torch.testing.assert_close(grad, expected, **FP32_TOL, msg=lambda m: f'd_{name}: {m}')


def test_non_contiguous_inputs():
    ks, dilation = 3, 2
    t = make_inputs(2, 6, 3, 7, 8, ks, 'mul+add', dtype=torch.float32, seed=8)
    views = dict(
        v=t['v'].contiguous(memory_format=torch.channels_last),  # NHWC storage
        attn=t['attn'].transpose(3, 4).contiguous().transpose(3, 4),
        ghost_mul=t['ghost_mul'].transpose(1, 2).contiguous().transpose(1, 2),
        ghost_add=torch.stack([t['ghost_add'], t['ghost_add']], -1)[..., 0],  # strided
    )
    assert not any(x.is_contiguous() for x in views.values())
    for tensors in (t, views):
        for x in tensors.values():
            x.requires_grad_(True)
    expected = call(ghost_head_aggregate_reference,
                    {n: x.detach().double() for n, x in t.items()}, ks, dilation).float()
    grad_out = torch.randn(2, 6, 7, 8, generator=torch.Generator().manual_seed(9))
    out, grads = forward_backward(ghost_head_aggregate, t, ks, dilation, grad_out)
    out_view, grads_view = forward_backward(ghost_head_aggregate, views, ks, dilation, grad_out)
    torch.testing.assert_close(out_view, expected, **FP32_TOL)
    assert torch.equal(out, out_view)
    for name in grads:
        assert torch.equal(grads[name], grads_view[name]), name


def test_cpu_determinism(num_threads):
    num_threads(4)  # several threads, also on a 2-core machine
    grad_out = torch.randn(2, 12, 16, 15, generator=torch.Generator().manual_seed(10))

    def run():
        t = make_inputs(2, 12, 3, 16, 15, 5, 'mul+add', dtype=torch.float32, seed=11,
                        requires_grad=True)
        out, grads = forward_backward(ghost_head_aggregate, t, 5, 2, grad_out)
        return [out] + [grads[n] for n in sorted(grads)]

    first, second = run(), run()
    assert len(first) == 5
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_cpu_results_do_not_depend_on_thread_count(num_threads):
    # Work items are bands of 8 output rows (forward, d_v, d_attn) and blocks of 4 channels (the
    # ghost-tensor gradients); each output is summed by one item in a fixed order, however the
    # items are split between threads. 20 rows: a short last band; 10 channels per head: a
    # block of 2 after two of 4.
    grad_out = torch.randn(2, 20, 20, 21, generator=torch.Generator().manual_seed(12))
    results = []
    for threads in (1, 3, 5):
        num_threads(threads)
        t = make_inputs(2, 20, 2, 20, 21, 5, 'mul+add', dtype=torch.float32, seed=13,
                        requires_grad=True)
        out, grads = forward_backward(ghost_head_aggregate, t, 5, 1, grad_out)
        results.append([out] + [grads[n] for n in sorted(grads)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize('column', [0, 20], ids=['first-column', 'last-column'])
def test_non_finite_values_reach_only_the_taps_that_read_them(column):
    # An infinite v pixel makes d_M, d_S and d_attn non-finite exactly where the reference
    # reads it. The kernels' partial last vector of a row (21 columns: 16 + 5 or 8 + 8 + 5)
    # reads past the row in its unused lanes; those reads must not reach the sums.
    ks, dilation = 5, 1
    t = make_inputs(1, 4, 1, 6, 21, ks, 'mul+add', dtype=torch.float32, seed=14,
                    requires_grad=True)
    with torch.no_grad():
        t['v'][0, 1, 3, column] = float('inf')
    grad_out = torch.randn(1, 4, 6, 21, generator=torch.Generator().manual_seed(15))
    _, grads = forward_backward(ghost_head_aggregate, t, ks, dilation, grad_out)
    _, expected = forward_backward(ghost_head_aggregate_reference, t, ks, dilation, grad_out)
    for name in ('ghost_mul', 'ghost_add', 'attn'):
        finite = torch.isfinite(expected[name])
        assert not finite.all(), name  # the pixel is read by some taps
        assert torch.equal(torch.isfinite(grads[name]), finite), name


def test_bf16_runs_close_to_fp32():
    ks, dilation = 3, 1
    t = make_inputs(2, 8, 2, 9, 10, ks, 'mul+add', dtype=torch.bfloat16, seed=12,
                    requires_grad=True)
    t32 = {n: x.detach().float().requires_grad_() for n, x in t.items()}
    grad_out = torch.randn(2, 8, 9, 10, generator=torch.Generator().manual_seed(13)).bfloat16()
    ref, ref_grads = forward_backward(ghost_head_aggregate_reference, t32, ks, dilation,
                                      grad_out.float())
    out, grads = forward_backward(ghost_head_aggregate, t, ks, dilation, grad_out)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.detach(), **BF16_TOL)
    for name, grad in grads.items():
        assert grad.dtype == torch.bfloat16
        scale = ref_grads[name].abs().max().item()  # d_ghost_* are sums over every pixel
        torch.testing.assert_close(grad.float() / scale, ref_grads[name] / scale, **BF16_TOL,
                                   msg=lambda m: f'd_{name}: {m}')


def test_fallback_without_extension(monkeypatch, record_ops, num_threads):
    num_threads(1)
    monkeypatch.setattr(ghost_head, 'has_compiled_ops', lambda: False)
    t = make_inputs(1, 4, 2, 4, 5, 3, 'mul+add', seed=14, requires_grad=True)
    expected = call(ghost_oracle, {n: x.detach() for n, x in t.items()}, 3, 2)
    with record_ops() as rec:
        out = call(ghost_head_aggregate, t, 3, 2)
    assert rec.mmattn_ops() == []
    torch.testing.assert_close(out.detach(), expected, **FP64_TOL)
    names = list(t)

    def fn(*tensors):
        return call(ghost_head_aggregate, dict(zip(names, tensors)), 3, 2)

    assert torch.autograd.gradcheck(fn, tuple(t.values()), **GRADCHECK)


def test_channels_last_copy_matches_torch():
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    y = ghost_head.channels_last_copy(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, x)


@pytest.mark.skipif(not ghost_head.has_compiled_ops(), reason='mmattn._C is not built')
def test_channels_last_slice_gets_a_channels_last_gradient():
    """ELSA's v is a channel slice of a channels-last convolution output: its gradient comes
    back channels-last, so the split's backward concatenates a channels-last gradient for the
    convolution (an NCHW one costs mkldnn a slow layout conversion), with the reference's
    values."""
    ks = 3
    t = make_inputs(2, 6, 2, 8, 9, ks, 'mul+add', seed=21)
    parent = torch.randn(2, 10, 8, 9, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    grad_out = torch.randn(2, 6, 8, 9, dtype=torch.float64)
    grads = {}
    for name, fn in (('op', ghost_head_aggregate), ('reference', ghost_head_aggregate_reference)):
        v = parent[:, 4:]  # channel stride 1, not contiguous
        out = fn(v, t['attn'], t['ghost_mul'], t['ghost_add'], ks, 1)
        (out * grad_out).sum().backward()
        grads[name] = parent.grad
        parent.grad = None
    assert grads['op'].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grads['op'], grads['reference'], **FP64_TOL)
    assert torch.equal(grads['op'][:, :4], torch.zeros_like(grads['op'][:, :4]))
