"""Tests of ``mmattn.ops.na2d`` (two-dimensional neighbourhood attention) on the CPU.

The oracles are, in decreasing order of independence: hand-computed cases (``k = 1``, uniform
attention, a dominant relative-position bias), a pixel loop written from the definitions of
``specs/ops.md`` (:func:`na2d_oracle`, which is also checked against NATTEN's own window
formulas), the plain-PyTorch reference ``mmattn.ops.na2d_reference`` (checked against the
oracle here) and float64 ``torch.autograd.gradcheck``. The op is never compared with itself,
except where bit-identity is the property under test (determinism, non-contiguous input).
"""
import pytest
import torch
import torch.nn.functional as F

import mmattn.ops.neighborhood as neighborhood
from mmattn.ops import na2d, na2d_reference

from _na2d import (BF16_GRAD_TOL, BF16_TOL, FP32_REDUCTION_ATOL_PER_MAX, FP32_REDUCTION_RTOL,
                   FP32_TOL, FP64_TOL, GRADCHECK, na2d_oracle, oracle_axis)

EXTRA_NAMES = ('rpb', 'rpe', 'bias')


def make_inputs(B, heads, H, W, D, ks, extras='', dtype=torch.float64, seed=0,
                requires_grad=False):
    """Random ``q, k, v`` and the optional tensors named in ``extras`` (e.g. ``'rpb+bias'``)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    t = dict(q=rnd(B, heads, H, W, D), k=rnd(B, heads, H, W, D), v=rnd(B, heads, H, W, D))
    t['rpb'] = rnd(heads, 2 * ks - 1, 2 * ks - 1) if 'rpb' in extras else None
    t['rpe'] = rnd(heads, ks, ks, D) if 'rpe' in extras else None
    t['bias'] = rnd(B, heads, H, W, ks * ks) if 'bias' in extras else None
    if requires_grad:
        for x in t.values():
            if x is not None:
                x.requires_grad_(True)
    return t


def call(fn, t, ks, dilation, border, scale=None):
    return fn(t['q'], t['k'], t['v'], ks, dilation, border, rpb=t['rpb'], rpe=t['rpe'],
              bias=t['bias'], scale=scale)


def grad_tensors(t):
    return {name: x for name, x in t.items() if x is not None and x.requires_grad}


def forward_backward(fn, t, ks, dilation, border, grad_out, scale=None):
    """Output and the gradients of ``(out * grad_out).sum()`` w.r.t. every tensor needing grad."""
    out = call(fn, t, ks, dilation, border, scale)
    leaves = grad_tensors(t)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    return out, dict(zip(leaves, grads))


# NATTEN's (v0.14) window formulas in image coordinates, transcribed from
# natten/src/natten/csrc/cpu/natten_cpu_commons.h: the spec's sub-grid definition of 'clamp'
# must reproduce them.
def natten_window_start(index, length, ks, dilation):
    ns = ks // 2
    if dilation <= 1:
        return max(index - ns, 0) + (index + ns >= length) * (length - index - ns - 1)
    ni = index - ns * dilation
    if ni < 0:
        return index % dilation
    if index + ns * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * ns * dilation
        return a + imodd - ks * dilation
    return ni


def natten_pb_start(index, length, ks, dilation):
    ns = ks // 2
    if dilation <= 1:
        return (ns + (index < ns) * (ns - index) + (index + ns >= length) *
                (length - index - 1 - ns))
    if index - ns * dilation < 0:
        return ks - 1 - index // dilation
    if index + ns * dilation >= length:
        return (length - index - 1) // dilation
    return ns


def test_oracle_clamp_window_is_natten():
    checked = 0
    for ks in (1, 3, 5, 7):
        for dilation in (1, 2, 3, 4):
            for length in range(ks * dilation, ks * dilation + 2 * dilation + 6):
                for i in range(length):
                    keys = oracle_axis(i, length, ks, dilation, 'clamp')
                    start = natten_window_start(i, length, ks, dilation)
                    where = (ks, dilation, length, i)
                    assert keys == [start + a * dilation for a in range(ks)], where
                    assert i in keys  # NATTEN: a query is always in its own window
                    # rpb index of the first tap, (key - query) / dilation + k - 1
                    assert (keys[0] - i) // dilation + ks - 1 == natten_pb_start(
                        i, length, ks, dilation), where
                    checked += 1
    assert checked > 1000


def test_oracle_axis_hand_written():
    # L = 7, k = 3, d = 2: groups {0, 2, 4, 6} and {1, 3, 5}
    assert oracle_axis(0, 7, 3, 2, 'mask') == [None, 0, 2]
    assert oracle_axis(5, 7, 3, 2, 'mask') == [3, 5, None]
    assert oracle_axis(0, 7, 3, 2, 'clamp') == [0, 2, 4]
    assert oracle_axis(6, 7, 3, 2, 'clamp') == [2, 4, 6]
    assert oracle_axis(4, 7, 3, 2, 'clamp') == [2, 4, 6]
    assert oracle_axis(5, 7, 3, 2, 'clamp') == [1, 3, 5]
    assert oracle_axis(1, 7, 3, 2, 'clamp') == [1, 3, 5]
    assert oracle_axis(2, 5, 3, 1, 'clamp') == [1, 2, 3]
    assert oracle_axis(4, 5, 3, 1, 'clamp') == [2, 3, 4]


ORACLE_CASES = [
    # (B, heads, H, W, D, k, dilation, border, extras, scale)
    pytest.param(1, 1, 4, 5, 2, 3, 1, 'mask', '', None, id='mask-d1-4x5'),
    pytest.param(1, 1, 4, 5, 2, 3, 1, 'mask', 'rpb+rpe+bias', None, id='mask-d1-4x5-rpb+rpe+bias'),
    pytest.param(1, 1, 4, 5, 2, 3, 2, 'mask', 'rpb+rpe', 0.7, id='mask-d2-4x5-rpb+rpe-scale0.7'),
    pytest.param(1, 1, 2, 3, 2, 5, 1, 'mask', 'rpb+bias', None, id='mask-d1-k5-2x3-rpb+bias'),
    pytest.param(1, 1, 4, 5, 2, 3, 1, 'clamp', '', None, id='clamp-d1-4x5'),
    pytest.param(1, 1, 4, 5, 2, 3, 1, 'clamp', 'rpb+bias', None, id='clamp-d1-4x5-rpb+bias'),
    pytest.param(1, 2, 7, 6, 2, 3, 2, 'clamp', 'rpb', None, id='clamp-d2-7x6-rpb'),
    pytest.param(1, 1, 9, 10, 2, 3, 3, 'clamp', 'rpb+bias', 1.0, id='clamp-d3-9x10-rpb+bias'),
]


@pytest.mark.parametrize('B, heads, H, W, D, ks, dilation, border, extras, scale', ORACLE_CASES)
def test_reference_and_op_match_oracle(B, heads, H, W, D, ks, dilation, border, extras, scale):
    t = make_inputs(B, heads, H, W, D, ks, extras, seed=1)
    expected = call(na2d_oracle, t, ks, dilation, border, scale)
    torch.testing.assert_close(call(na2d_reference, t, ks, dilation, border, scale), expected,
                               **FP64_TOL)
    with torch.no_grad():  # fused inference kernel
        torch.testing.assert_close(call(na2d, t, ks, dilation, border, scale), expected,
                                   **FP64_TOL)
    t = {n: None if x is None else x.requires_grad_() for n, x in t.items()}  # training path
    torch.testing.assert_close(call(na2d, t, ks, dilation, border, scale).detach(), expected,
                               **FP64_TOL)


# --------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('training', [False, True], ids=['fused', 'training'])
@pytest.mark.parametrize('border, dilation', [('mask', 1), ('mask', 2), ('clamp', 3)],
                         ids=['mask-d1', 'mask-d2', 'clamp-d3'])
def test_kernel_size_one_is_identity(border, dilation, training):
    # a window of one tap: the softmax is 1 and out = v, whatever q, k and rpb are
    t = make_inputs(2, 2, 5, 4, 3, 1, 'rpb', requires_grad=training)
    out = call(na2d, t, 1, dilation, border)
    torch.testing.assert_close(out.detach(), t['v'].detach(), **FP64_TOL)


@pytest.mark.parametrize('training', [False, True], ids=['fused', 'training'])
@pytest.mark.parametrize('ks', [3, 5])
@pytest.mark.parametrize('border', ['mask', 'clamp'])
def test_zero_query_averages_the_window(border, ks, training):
    # q = 0: every valid tap gets the same weight, so out is the mean of v over the window
    B, heads, H, W, D = 2, 2, 6, 7, 3
    t = make_inputs(B, heads, H, W, D, ks, requires_grad=training)
    with torch.no_grad():
        t['q'].zero_()
    out = call(na2d, t, ks, 1, border).detach()
    v = t['v'].detach().permute(0, 1, 4, 2, 3).reshape(B * heads * D, 1, H, W)
    r = ks // 2
    if border == 'mask':  # centred windows, only the taps inside the image are averaged
        mean = F.avg_pool2d(v, ks, stride=1, padding=r, count_include_pad=False)
    else:  # clamp: the window of (i, j) is the valid window starting at the clamped corner
        pooled = F.avg_pool2d(v, ks, stride=1)
        rows = [min(max(i - r, 0), H - ks) for i in range(H)]
        cols = [min(max(j - r, 0), W - ks) for j in range(W)]
        mean = pooled[:, :, rows][:, :, :, cols]
    expected = mean.reshape(B, heads, D, H, W).permute(0, 1, 3, 4, 2)
    torch.testing.assert_close(out, expected, **FP64_TOL)


@pytest.mark.parametrize('training', [False, True], ids=['fused', 'training'])
@pytest.mark.parametrize('offset', [(0, 0), (0, 1), (-1, 0), (1, -1)],
                         ids=lambda o: f'offset{o[0]:+d}{o[1]:+d}')
@pytest.mark.parametrize('border, dilation', [('mask', 1), ('mask', 2), ('clamp', 1),
                                              ('clamp', 2)],
                         ids=['mask-d1', 'mask-d2', 'clamp-d1', 'clamp-d2'])
def test_dominant_rpb_entry_selects_that_offset(border, dilation, offset, training):
    # rpb[(key - query) / d + k - 1] = 60 for one offset: each query copies the value of the key
    # at that offset (when the key is in its window); checks the rpb convention and its sign
    ks, H, W = 3, 7, 8
    t = make_inputs(1, 2, H, W, 4, ks, 'rpb', requires_grad=training)
    with torch.no_grad():
        t['q'].mul_(0.1)
        t['rpb'].zero_()
        t['rpb'][:, ks - 1 + offset[0], ks - 1 + offset[1]] = 60.0
    out = call(na2d, t, ks, dilation, border).detach()
    v = t['v'].detach()
    di, dj = offset[0] * dilation, offset[1] * dilation
    checked = 0
    for i in range(H):
        for j in range(W):
            if 0 <= i + di < H and 0 <= j + dj < W:
                torch.testing.assert_close(out[:, :, i, j], v[:, :, i + di, j + dj],
                                           rtol=0, atol=1e-12)
                checked += 1
    assert checked >= (H - dilation) * (W - dilation)


# --------------------------------------------------------------------------------------------
# float64 gradcheck, every mode
# --------------------------------------------------------------------------------------------
def _grad_case(border, dilation, extras, B=1, heads=1, H=6, W=7, D=3, ks=3):
    name = f'{border}-d{dilation}-k{ks}-{H}x{W}-B{B}h{heads}-{extras or "plain"}'
    return pytest.param(B, heads, H, W, D, ks, dilation, border, extras, id=name)


GRADCHECK_CASES = (
    [_grad_case('mask', d, e) for d in (1, 2)
     for e in ('', 'rpb', 'rpe', 'bias', 'rpb+rpe+bias')] +
    [_grad_case('clamp', d, e) for d in (1, 2) for e in ('', 'rpb', 'bias', 'rpb+bias')] + [
        # maps smaller than the window (mask mode)
        _grad_case('mask', 1, 'rpb+rpe+bias', H=2, W=3, ks=5),
        _grad_case('mask', 2, 'rpb', H=3, W=2, D=4),
        _grad_case('mask', 2, 'rpe', H=1, W=5),
        # batch and heads
        _grad_case('mask', 1, 'rpb', B=3),
        _grad_case('clamp', 2, 'rpb+bias', heads=3),
        _grad_case('mask', 2, 'rpe+bias', B=3, heads=3, H=5, W=5),
        _grad_case('clamp', 1, 'rpb', B=3, heads=3, H=5, W=5),
        # k = 5
        _grad_case('mask', 1, 'rpb+rpe', H=7, W=6, D=4, ks=5),
        _grad_case('clamp', 1, 'rpb', H=6, W=7, D=4, ks=5),
    ])


@pytest.mark.parametrize('B, heads, H, W, D, ks, dilation, border, extras', GRADCHECK_CASES)
def test_gradcheck(B, heads, H, W, D, ks, dilation, border, extras, num_threads):
    # through the public API: na2d_fused_train and its backward ('mask' without bias), else
    # na2d_qk -> softmax -> na2d_av, with their backward kernels
    num_threads(1)  # thousands of calls on tiny maps: no parallel-region overhead
    t = make_inputs(B, heads, H, W, D, ks, extras, seed=2, requires_grad=True)
    names = list(grad_tensors(t))

    def fn(*tensors):
        return call(na2d, dict(t, **dict(zip(names, tensors))), ks, dilation, border)

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names), **GRADCHECK)


@pytest.mark.parametrize('frozen', ['rpb', 'q+k', 'v'])
def test_gradcheck_partial_requires_grad(frozen, num_threads):
    num_threads(1)
    # only some inputs need grad (the rpb gradient is skipped when rpb is frozen, etc.)
    t = make_inputs(1, 2, 5, 6, 3, 3, 'rpb+rpe', seed=3, requires_grad=True)
    for name in frozen.split('+'):
        t[name].requires_grad_(False)
    names = list(grad_tensors(t))

    def fn(*tensors):
        return call(na2d, dict(t, **dict(zip(names, tensors))), 3, 1, 'mask')

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names), **GRADCHECK)


def _mask_invalid(x):
    # na2d_qk writes -inf on the taps outside the image; finite differences need finite values
    return x.masked_fill(torch.isinf(x.detach()), 0.0)


@pytest.mark.parametrize('border, dilation, with_rpe', [
    ('mask', 1, True), ('mask', 2, True), ('clamp', 1, False), ('clamp', 2, False)],
    ids=['mask-d1-rpb+rpe', 'mask-d2-rpb+rpe', 'clamp-d1-rpb', 'clamp-d2-rpb'])
def test_gradcheck_raw_ops(border, dilation, with_rpe, num_threads):
    num_threads(1)
    # the two training ops on their own, so that a failure points at one backward kernel
    clamp, ks, scale = border == 'clamp', 3, 0.6
    t = make_inputs(2, 2, 6, 7, 3, ks, 'rpb+rpe' if with_rpe else 'rpb', seed=4,
                    requires_grad=True)

    def qk(q, k, rpb, *rpe):
        rpe = rpe[0] if rpe else None
        return _mask_invalid(torch.ops.mmattn.na2d_qk(q, k, rpb, rpe, ks, dilation, clamp, scale))

    inputs = (t['q'], t['k'], t['rpb']) + ((t['rpe'],) if with_rpe else ())
    assert torch.autograd.gradcheck(qk, inputs, **GRADCHECK)

    attn = torch.rand(2, 2, 6, 7, ks * ks, dtype=torch.float64, requires_grad=True)

    def av(attn, v):
        return torch.ops.mmattn.na2d_av(attn, v, ks, dilation, clamp)

    assert torch.autograd.gradcheck(av, (attn, t['v']), **GRADCHECK)


def test_qk_logits_are_minus_inf_outside_the_image():
    ks, dilation, H, W = 3, 2, 3, 4
    t = make_inputs(1, 1, H, W, 2, ks)
    logits = torch.ops.mmattn.na2d_qk(t['q'], t['k'], None, None, ks, dilation, False, 1.0)
    for i in range(H):
        for j in range(W):
            rows, cols = oracle_axis(i, H, ks, dilation, 'mask'), oracle_axis(j, W, ks, dilation,
                                                                              'mask')
            for a in range(ks):
                for c in range(ks):
                    valid = rows[a] is not None and cols[c] is not None
                    assert torch.isinf(logits[0, 0, i, j, a * ks + c]).item() is not valid


# --------------------------------------------------------------------------------------------
# float32 agreement with the reference on odd shapes, forward and gradients
# --------------------------------------------------------------------------------------------
FP32_CASES = [
    pytest.param(2, 3, 13, 17, 5, 5, 1, 'mask', 'rpb+rpe+bias', id='mask-d1-k5-13x17-rpb+rpe+bias'),
    pytest.param(2, 3, 13, 17, 33, 3, 2, 'clamp', 'rpb+bias', id='clamp-d2-k3-13x17-D33-rpb+bias'),
    pytest.param(2, 2, 31, 9, 8, 3, 2, 'mask', 'rpe', id='mask-d2-k3-31x9-rpe'),
    pytest.param(1, 3, 31, 9, 5, 7, 1, 'clamp', 'rpb', id='clamp-d1-k7-31x9-rpb'),
    pytest.param(2, 2, 31, 9, 4, 7, 1, 'mask', 'bias', id='mask-d1-k7-31x9-bias'),
]


@pytest.mark.parametrize('B, heads, H, W, D, ks, dilation, border, extras', FP32_CASES)
def test_fp32_matches_reference(B, heads, H, W, D, ks, dilation, border, extras):
    t64 = make_inputs(B, heads, H, W, D, ks, extras, seed=5, requires_grad=True)
    t32 = {n: None if x is None else x.detach().float().requires_grad_() for n, x in t64.items()}
    grad_out = torch.randn(B, heads, H, W, D, generator=torch.Generator().manual_seed(6),
                           dtype=torch.float64)
    ref, ref_grads = forward_backward(na2d_reference, t64, ks, dilation, border, grad_out)
    with torch.no_grad():
        fused = call(na2d, t32, ks, dilation, border)
    out, grads = forward_backward(na2d, t32, ks, dilation, border, grad_out.float())
    assert out.dtype == fused.dtype == torch.float32
    torch.testing.assert_close(fused, ref.detach().float(), **FP32_TOL)
    torch.testing.assert_close(out, ref.detach().float(), **FP32_TOL)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        expected = ref_grads[name].float()
        if name in ('rpb', 'rpe'):
            atol = FP32_REDUCTION_ATOL_PER_MAX * expected.abs().max().item()
            torch.testing.assert_close(grad, expected, rtol=FP32_REDUCTION_RTOL, atol=atol,
                                       msg=lambda m: f'd_{name}: {m}')
        else:
            torch.testing.assert_close(grad, expected, **FP32_TOL, msg=lambda m: f'd_{name}: {m}')


@pytest.mark.parametrize('border', ['mask', 'clamp'])
def test_fp32_large_logits_are_stable(border):
    # logits of several hundred: both paths must subtract the running maximum
    t = make_inputs(1, 2, 9, 8, 8, 3, 'rpb', dtype=torch.float64, seed=7)
    t['q'] = t['q'] * 40.0
    expected = call(na2d_reference, t, 3, 1, border).float()
    t32 = {n: None if x is None else x.float() for n, x in t.items()}
    with torch.no_grad():
        fused = call(na2d, t32, 3, 1, border)
    training = call(na2d, dict(t32, rpb=t32['rpb'].requires_grad_()), 3, 1, border).detach()
    for out in (fused, training):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Fused inference path
# --------------------------------------------------------------------------------------------
FUSED_CASES = [
    pytest.param('mask', 1, '', id='mask-d1-plain'),
    pytest.param('mask', 1, 'rpb+rpe+bias', id='mask-d1-rpb+rpe+bias'),
    pytest.param('mask', 2, 'rpe', id='mask-d2-rpe'),
    pytest.param('mask', 2, 'rpb+bias', id='mask-d2-rpb+bias'),
    pytest.param('clamp', 1, 'rpb', id='clamp-d1-rpb'),
    pytest.param('clamp', 2, 'rpb+bias', id='clamp-d2-rpb+bias'),
]


@pytest.mark.parametrize('border, dilation, extras', FUSED_CASES)
def test_fused_matches_training_path_and_reference(border, dilation, extras, record_ops):
    ks = 3
    t = make_inputs(2, 2, 9, 7, 5, ks, extras, dtype=torch.float32, seed=8, requires_grad=True)
    with record_ops() as rec, torch.no_grad():
        fused = call(na2d, t, ks, dilation, border)
    assert rec.mmattn_ops() == ['mmattn::na2d_fused']
    with record_ops() as rec:
        training = call(na2d, t, ks, dilation, border)
    # CPU training: the fused training kernel ('mask' without bias), else the three-op path
    fused_train = border == 'mask' and 'bias' not in extras
    assert rec.mmattn_ops() == (['mmattn::na2d_fused_train'] if fused_train else
                                ['mmattn::na2d_qk', 'mmattn::na2d_av'])
    t64 = {n: None if x is None else x.detach().double() for n, x in t.items()}
    expected = call(na2d_reference, t64, ks, dilation, border).float()
    torch.testing.assert_close(fused, expected, **FP32_TOL)
    torch.testing.assert_close(training.detach(), expected, **FP32_TOL)
    torch.testing.assert_close(fused, training.detach(), **FP32_TOL)


def test_fused_path_under_inference_mode_and_without_grad_inputs(record_ops):
    t = make_inputs(1, 2, 6, 6, 4, 3, 'rpb+rpe+bias', seed=9)
    expected = call(na2d_reference, t, 3, 2, 'mask')
    with record_ops() as rec:
        plain = call(na2d, t, 3, 2, 'mask')  # grad enabled, but nothing requires grad
    with torch.inference_mode():
        inference = call(na2d, t, 3, 2, 'mask')
    assert rec.mmattn_ops() == ['mmattn::na2d_fused']
    torch.testing.assert_close(plain, expected, **FP64_TOL)
    torch.testing.assert_close(inference, expected, **FP64_TOL)


# --------------------------------------------------------------------------------------------
# SASA: q . r through `bias` equals the `rpe` path
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('dilation, ks, scale', [(1, 3, 1.0), (2, 3, None), (1, 5, 0.5)],
                         ids=['d1-k3-scale1', 'd2-k3-default-scale', 'd1-k5-scale0.5'])
def test_rpe_equals_q_dot_r_through_bias(dilation, ks, scale):
    B, heads, H, W, D = 2, 2, 6, 5, 4
    t = make_inputs(B, heads, H, W, D, ks, 'rpe', seed=10, requires_grad=True)
    s = D**-0.5 if scale is None else scale
    grad_out = torch.randn(B, heads, H, W, D, generator=torch.Generator().manual_seed(11),
                           dtype=torch.float64)
    out_rpe, grads_rpe = forward_backward(na2d, t, ks, dilation, 'mask', grad_out, scale)
    # bias[b, h, i, j, a*k + c] = scale * q[b, h, i, j] . rpe[h, a, c]
    bias = s * torch.einsum('bhijd,hacd->bhijac', t['q'], t['rpe']).reshape(B, heads, H, W, -1)
    t_bias = dict(t, rpe=None, bias=bias)
    out_bias = call(na2d, t_bias, ks, dilation, 'mask', scale)
    leaves = [t['q'], t['k'], t['v'], t['rpe']]
    grads_bias = torch.autograd.grad(out_bias, leaves, grad_out)
    torch.testing.assert_close(out_rpe, out_bias, **FP64_TOL)
    for name, grad in zip(('q', 'k', 'v', 'rpe'), grads_bias):
        torch.testing.assert_close(grads_rpe[name], grad, **FP64_TOL,
                                   msg=lambda m: f'd_{name}: {m}')
    with torch.no_grad():
        torch.testing.assert_close(call(na2d, t, ks, dilation, 'mask', scale),
                                   call(na2d, t_bias, ks, dilation, 'mask', scale), **FP64_TOL)


# --------------------------------------------------------------------------------------------
# Non-contiguous inputs, determinism, bfloat16
# --------------------------------------------------------------------------------------------
def _non_contiguous(x):
    """The same values as ``x`` in a non-contiguous view (transposed storage)."""
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize('training', [False, True], ids=['fused', 'training'])
@pytest.mark.parametrize('border, extras', [('mask', 'rpb+rpe+bias'), ('clamp', 'rpb+bias')],
                         ids=['mask-rpb+rpe+bias', 'clamp-rpb+bias'])
def test_non_contiguous_inputs(border, extras, training):
    ks, dilation = 3, 2
    t = make_inputs(2, 2, 7, 6, 4, ks, extras, dtype=torch.float32, seed=12)
    views = {n: None if x is None else _non_contiguous(x) for n, x in t.items()}
    # q, k, v as (B, heads, W, H, D).transpose(2, 3), the layout of a transposed feature map
    for n in ('q', 'k', 'v'):
        views[n] = t[n].transpose(2, 3).contiguous().transpose(2, 3)
    assert not any(x.is_contiguous() for x in views.values() if x is not None)
    if training:
        for tensors in (t, views):
            for x in tensors.values():
                if x is not None:
                    x.requires_grad_(True)
    grad_out = torch.randn(2, 2, 7, 6, 4, generator=torch.Generator().manual_seed(13))
    expected = call(na2d_reference, {n: None if x is None else x.detach().double()
                                     for n, x in t.items()}, ks, dilation, border).float()
    outs = []
    for tensors in (t, views):
        with torch.set_grad_enabled(training):
            out = call(na2d, tensors, ks, dilation, border)
        torch.testing.assert_close(out.detach(), expected, **FP32_TOL)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    if training:
        g_contig = torch.autograd.grad(outs[0], list(grad_tensors(t).values()), grad_out)
        g_view = torch.autograd.grad(outs[1], list(grad_tensors(views).values()), grad_out)
        for a, b in zip(g_contig, g_view):
            assert torch.equal(a, b)


def _fused_and_training_results(shape, extras, dilation, border, seed):
    """The fused output, the training output and every gradient, float32, on fixed inputs."""
    B, heads, H, W, D = shape
    grad_out = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    t = make_inputs(B, heads, H, W, D, 3, extras, dtype=torch.float32, seed=seed + 1,
                    requires_grad=True)
    with torch.no_grad():
        fused = call(na2d, t, 3, dilation, border)
    out, grads = forward_backward(na2d, t, 3, dilation, border, grad_out)
    return [fused, out] + [grads[n] for n in sorted(grads)]


@pytest.mark.parametrize('border', ['mask', 'clamp'])
def test_cpu_determinism(border, num_threads):
    num_threads(4)  # several threads, also on a 2-core machine
    extras = 'rpb+rpe+bias' if border == 'mask' else 'rpb+bias'
    first, second = (_fused_and_training_results((2, 2, 16, 15, 8), extras, 2, border, 14)
                     for _ in range(2))
    assert len(first) == 2 + len(extras.split('+')) + 3
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def _three_op_results(shape, seed):
    """Every output of the CPU ops of the three-op path ('clamp', rpb, dilation 1, k = 3) on
    fixed float32 inputs: na2d_qk, na2d_av, na2d_av_backward, na2d_qk_backward (with d_rpb)."""
    B, heads, H, W, D = shape
    t = make_inputs(B, heads, H, W, D, 3, 'rpb', dtype=torch.float32, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(*shape, generator=g)
    d_logits = torch.randn(B, heads, H, W, 9, generator=g)
    ops = torch.ops.mmattn
    logits = ops.na2d_qk(t['q'], t['k'], t['rpb'], None, 3, 1, True, 0.5)
    attn = logits.softmax(-1)
    return [logits, ops.na2d_av(attn, t['v'], 3, 1, True),
            *ops.na2d_av_backward(grad_out, attn, t['v'], 3, 1, True),
            *ops.na2d_qk_backward(d_logits, t['q'], t['k'], None, 3, 1, True, 0.5, True)]


@pytest.mark.parametrize('border', ['mask', 'clamp'])
def test_cpu_results_do_not_depend_on_thread_count(border, num_threads):
    # The CPU kernels process pairs of rows that share key rows, and the rows left single at the
    # edges of each thread's range one at a time: both must give the same bits. 'mask' without
    # bias runs the fused training op end to end (rpb+rpe). 'clamp' trains through the three-op
    # path, whose softmax backward is torch's: its AVX2 kernel (torch 2.14.1) gives other bits
    # with other thread counts when k*k is not a multiple of 8, so the ops are checked one by one.
    shape = (2, 2, 13, 15, 6)
    results = []
    for threads in (1, 3, 5):
        num_threads(threads)
        if border == 'mask':
            results.append(_fused_and_training_results(shape, 'rpb+rpe', 1, border, 16))
        else:
            results.append(_fused_and_training_results(shape, 'rpb', 1, border, 16)[:1] +
                           _three_op_results(shape, 16))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize('border, extras', [('mask', 'rpb+rpe+bias'), ('clamp', 'rpb')],
                         ids=['mask-rpb+rpe+bias', 'clamp-rpb'])
def test_bf16_runs_close_to_fp32(border, extras):
    ks, dilation = 3, 1
    t = make_inputs(2, 2, 8, 9, 16, ks, extras, dtype=torch.bfloat16, seed=16,
                    requires_grad=True)
    # the fp32 result on the same (exactly upcast) inputs
    t32 = {n: None if x is None else x.detach().float().requires_grad_() for n, x in t.items()}
    grad_out = torch.randn(2, 2, 8, 9, 16, generator=torch.Generator().manual_seed(17)).bfloat16()
    ref, ref_grads = forward_backward(na2d_reference, t32, ks, dilation, border, grad_out.float())
    with torch.no_grad():
        fused = call(na2d, t, ks, dilation, border)
    out, grads = forward_backward(na2d, t, ks, dilation, border, grad_out)
    assert fused.dtype == out.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), ref.detach(), **BF16_TOL)
    torch.testing.assert_close(out.float(), ref.detach(), **BF16_TOL)
    for name, grad in grads.items():
        assert grad.dtype == torch.bfloat16
        scale = ref_grads[name].abs().max().item()  # reductions (d_rpb, d_rpe) are large
        torch.testing.assert_close(grad.float() / scale, ref_grads[name] / scale,
                                   **BF16_GRAD_TOL, msg=lambda m: f'd_{name}: {m}')


# --------------------------------------------------------------------------------------------
# Fallback to the reference when the extension is missing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('border, dilation, extras', [
    ('mask', 2, 'rpb+rpe+bias'), ('clamp', 1, 'rpb+bias')],
    ids=['mask-d2-rpb+rpe+bias', 'clamp-d1-rpb+bias'])
def test_fallback_without_extension(border, dilation, extras, monkeypatch, record_ops,
                                    num_threads):
    num_threads(1)
    monkeypatch.setattr(neighborhood, 'has_compiled_ops', lambda: False)
    t = make_inputs(1, 1, 4, 5, 2, 3, extras, seed=18, requires_grad=True)
    expected = call(na2d_oracle, {n: None if x is None else x.detach() for n, x in t.items()},
                    3, dilation, border)
    with record_ops() as rec:
        out = call(na2d, t, 3, dilation, border)
        with torch.no_grad():
            out_no_grad = call(na2d, t, 3, dilation, border)
    assert rec.mmattn_ops() == []
    torch.testing.assert_close(out.detach(), expected, **FP64_TOL)
    torch.testing.assert_close(out_no_grad, expected, **FP64_TOL)
    names = list(grad_tensors(t))

    def fn(*tensors):
        return call(na2d, dict(t, **dict(zip(names, tensors))), 3, dilation, border)

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names), **GRADCHECK)


def test_fused_path_with_minus_inf_bias_slots():
    """A -inf bias on some slots (a mask) must not turn the fused online softmax into NaN."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 7, 4) for _ in range(3))
    bias = torch.zeros(1, 2, 6, 7, 9)
    bias[..., :4] = float('-inf')  # the first taps of every window masked, the centre kept
    with torch.no_grad():
        fused = na2d(q, k, v, 3, bias=bias)
    ref = na2d_reference(q, k, v, 3, bias=bias)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('border', ['mask', 'clamp'])
def test_fused_path_propagates_nan(dtype, border):
    """A NaN in one key pixel makes every query whose window holds it NaN, and no other query:
    in an interior query vector (whose softmax skips the masking blend) and at the border, as
    torch's softmax in the reference does."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 40, 8, dtype=dtype) for _ in range(3))
    for i, j in ((6, 20), (0, 1)):  # interior, and the map's corner
        kn = k.clone()
        kn[0, 1, i, j, 3] = float('nan')
        with torch.no_grad():
            fused = na2d(q, kn, v, 5, border=border)
        ref = na2d_reference(q, kn, v, 5, border=border)
        assert torch.isnan(ref).any()
        assert torch.equal(torch.isnan(fused), torch.isnan(ref))
        finite = ~torch.isnan(ref)
        torch.testing.assert_close(fused[finite], ref[finite], **FP32_TOL)
