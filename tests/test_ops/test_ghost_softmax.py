"""Tests of ``mmattn.ops.ghost_head_softmax_aggregate``: ``ghost_head_aggregate`` of the softmax
over the taps of ``logits + logits_bias``, whose CPU kernel takes the softmax band by band where
no gradient is asked for.

Oracles: the pixel loop of ``test_ghost_head.py`` (:func:`ghost_oracle`, from ``specs/ops.md``
section 2) on ``torch.softmax`` of the biased logits, and float64 ``gradcheck`` of the
differentiable path. The every-build check (DEFAULT, AVX2, AVX512) is in ``test_cpu_kernels.py``.
"""
import pytest
import torch

import mmattn.ops.ghost_head as ghost_head
from mmattn.ops import (ghost_head_aggregate, ghost_head_aggregate_reference,
                        ghost_head_softmax_aggregate)

from _ghost import FP32_TOL, FP64_TOL, GRADCHECK, ghost_oracle

FUSED_OP = 'mmattn::ghost_head_softmax_aggregate'
needs_ops = pytest.mark.skipif(not ghost_head.has_compiled_ops(),
                               reason='mmattn._C is not built')


def make(B, C, G, H, W, ks, bias=True, mul=False, add=True, scale=3.0, seed=0,
         dtype=torch.float64):
    """``v``, ``logits`` (scaled: peaked softmaxes), and the optional bias and ghost tensors."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    return dict(v=rnd(B, C, H, W), logits=scale * rnd(B, G, ks * ks, H, W),
                logits_bias=rnd(G * ks * ks) if bias else None,
                ghost_mul=rnd(C, ks, ks) if mul else None,
                ghost_add=rnd(C, ks, ks) if add else None)


def softmaxed(t):
    """The attention the op must aggregate with: softmax over the taps of the biased logits."""
    logits = t['logits']
    if t['logits_bias'] is not None:
        logits = logits + t['logits_bias'].view(1, logits.shape[1], -1, 1, 1)
    return logits.softmax(dim=2)


def fused(t, ks, dilation):
    return ghost_head_softmax_aggregate(t['v'], t['logits'], t['logits_bias'], t['ghost_mul'],
                                        t['ghost_add'], ks, dilation)


def oracle(t, ks, dilation):
    t = {n: None if x is None else x.detach().double() for n, x in t.items()}
    return ghost_oracle(t['v'], softmaxed(t), t['ghost_mul'], t['ghost_add'], ks, dilation)


@needs_ops
@pytest.mark.parametrize('B, C, G, H, W, ks, dilation, bias, mul, add', [
    pytest.param(1, 4, 2, 4, 5, 3, 1, True, False, True, id='narrow-bias-add'),
    pytest.param(2, 3, 3, 9, 13, 3, 2, False, True, False, id='d2-mul-13cols'),
    pytest.param(1, 6, 2, 10, 17, 5, 1, True, True, True, id='bias-mul-add-17cols'),
    pytest.param(1, 2, 1, 3, 9, 7, 1, True, False, False, id='map-smaller-than-window'),
])
def test_inference_kernel_matches_oracle(B, C, G, H, W, ks, dilation, bias, mul, add,
                                         record_ops):
    """float64 against the pixel loop: widths that are not multiples of the vector width (the
    masked last vector of the softmax and of the aggregation), more rows than a band (8), maps
    smaller than the window. The fused op must be the one that ran."""
    t = make(B, C, G, H, W, ks, bias, mul, add, seed=1)
    with torch.no_grad(), record_ops() as rec:
        out = fused(t, ks, dilation)
    assert rec.mmattn_ops() == [FUSED_OP]
    torch.testing.assert_close(out, oracle(t, ks, dilation), **FP64_TOL)


@needs_ops
@pytest.mark.parametrize('layout', ['channels-last', 'slice', 'slice-batch2', 'transposed'])
def test_strided_values(layout):
    """v as ELSA hands it over (a channel slice of a channels-last map, read in place with its
    pixel stride), channels-last, and a layout that is neither (made contiguous first)."""
    B = 2 if layout == 'slice-batch2' else 1
    t = make(B, 6, 2, 9, 13, 3, mul=True, seed=9)
    v = t['v']
    if layout == 'channels-last':
        view = v.contiguous(memory_format=torch.channels_last)
    elif layout.startswith('slice'):
        parent = torch.randn(B, 11, 9, 13, dtype=torch.float64).contiguous(
            memory_format=torch.channels_last)
        parent[:, 3:9] = v
        view = parent[:, 3:9]
        assert view.stride() == (9 * 13 * 11, 1, 13 * 11, 11)
    else:
        view = v.transpose(2, 3).contiguous().transpose(2, 3)
    with torch.no_grad():
        out = fused(dict(t, v=view), 3, 2)
    assert out.is_contiguous()
    torch.testing.assert_close(out, oracle(t, 3, 2), **FP64_TOL)


@needs_ops
@pytest.mark.parametrize('H, W', [(13, 17), (20, 37), (56, 56)])
def test_float32_matches_float64_reference(H, W):
    """ELSA-Swin-T's first stage (56x56, 3 heads of 32 channels, k=7, S only, the 1x1 conv's
    bias) and odd maps, float32 against the float64 reference."""
    t = make(1, 12 if H < 56 else 96, 3, H, W, 7, seed=2, dtype=torch.float32)
    with torch.no_grad():
        out = fused(t, 7, 1)
    t64 = {n: None if x is None else x.double() for n, x in t.items()}
    expect = ghost_head_aggregate_reference(t64['v'], softmaxed(t64), None, t64['ghost_add'], 7, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expect.float(), **FP32_TOL)


@needs_ops
def test_large_and_equal_logits_are_stable():
    """The max is taken out before exp: logits around 1e4 give the softmax of the centred
    logits (no overflow); equal logits give the uniform window."""
    t = make(1, 4, 2, 6, 11, 3, bias=False, seed=3)
    shifted = dict(t, logits=t['logits'] + 1e4)
    with torch.no_grad():
        torch.testing.assert_close(fused(shifted, 3, 1), oracle(t, 3, 1), rtol=1e-9, atol=1e-9)
        flat = dict(t, logits=torch.zeros_like(t['logits']), ghost_add=None)
        uniform = torch.full_like(t['logits'], 1 / 9)
        torch.testing.assert_close(fused(flat, 3, 1),
                                   ghost_oracle(t['v'], uniform, None, None, 3, 1), **FP64_TOL)


@needs_ops
def test_non_finite_logits():
    """A -inf logit weighs (next to) nothing; NaN logits make NaN the outputs of that pixel's
    head only, like torch.softmax followed by the aggregation."""
    t = make(1, 4, 2, 5, 9, 3, bias=False, add=False, seed=4)
    t['logits'][0, 1, 4, 2, 3] = float('-inf')  # head 1, centre tap, pixel (2, 3)
    t['logits'][0, 0, 0, 1, 8] = float('nan')  # head 0, pixel (1, 8)
    with torch.no_grad():
        out = fused(t, 3, 1)
    nan = torch.zeros_like(out, dtype=torch.bool)
    nan[0, :2, 1, 8] = True  # head 0's channels at that pixel
    assert torch.equal(torch.isnan(out), nan)
    expect = oracle(t, 3, 1)
    torch.testing.assert_close(out[~nan], expect[~nan], **FP64_TOL)


@needs_ops
def test_threads_and_repeats_give_the_same_bits(num_threads):
    """Each output is summed by one band item in a fixed order: bit-identical across runs and
    thread counts (20 rows: a short last band)."""
    t = make(2, 12, 3, 20, 21, 5, mul=True, seed=5, dtype=torch.float32)
    results = []
    for threads in (1, 3, 3, 5):
        num_threads(threads)
        with torch.no_grad():
            results.append(fused(t, 5, 2))
    for other in results[1:]:
        assert torch.equal(results[0], other)


@needs_ops
def test_equals_the_unfused_kernel_bit_for_bit(record_ops):
    """The aggregation after the band's softmax is the forward kernel's: on the attention the
    fused kernel computes (its softmax bits), ghost_head_aggregate gives the same bits. The
    attention is rebuilt here from the fused op's output on one-hot v: with v = 1 at one pixel
    and S = 0, output pixel p of a channel is the attention weight p gives that pixel."""
    ks = 3
    t = make(1, 2, 2, 4, 4, ks, mul=False, add=False, seed=6, dtype=torch.float32)
    with torch.no_grad():
        out = fused(t, ks, 1)
        attn = torch.zeros_like(t['logits'])
        for i in range(4):
            for j in range(4):
                v = torch.zeros_like(t['v'])
                v[0, :, i, j] = 1
                probe = fused(dict(t, v=v), ks, 1)  # (1, C, H, W): weight of pixel (i, j)
                for u in range(ks):
                    for w in range(ks):
                        qi, qj = i - (u - 1), j - (w - 1)  # the query reading (i, j) at tap (u, w)
                        if 0 <= qi < 4 and 0 <= qj < 4:
                            attn[0, :, u * ks + w, qi, qj] = probe[0, :, qi, qj]
        expect = ghost_head_aggregate(t['v'], attn, None, None, ks, 1)
    torch.testing.assert_close(attn, softmaxed(t) * (attn != 0), rtol=1e-6, atol=0)
    assert torch.equal(out, expect)


@pytest.mark.parametrize('where', ['grad', 'no-ops'])
def test_differentiable_path_where_gradients_are_asked_for(where, monkeypatch, record_ops):
    """With a gradient asked for (or without the compiled ops) the op is the composition
    softmax -> ghost_head_aggregate, which gradcheck differentiates in float64."""
    if where == 'no-ops':
        monkeypatch.setattr(ghost_head, 'has_compiled_ops', lambda: False)
    elif not ghost_head.has_compiled_ops():
        pytest.skip('mmattn._C is not built')
    t = make(1, 4, 2, 4, 6, 3, mul=True, seed=7)
    for x in t.values():
        x.requires_grad_(True)
    with record_ops() as rec:
        out = fused(t, 3, 1)
    assert FUSED_OP not in rec.mmattn_ops()
    torch.testing.assert_close(out.detach(), oracle(t, 3, 1), **FP64_TOL)
    names = list(t)

    def fn(*tensors):
        return fused(dict(zip(names, tensors)), 3, 1)

    assert torch.autograd.gradcheck(fn, tuple(t.values()), **GRADCHECK)


@needs_ops
def test_fusion_runs_only_without_gradients():
    v = torch.randn(1, 2, 3, 3)
    w = torch.randn(2, requires_grad=True)
    assert ghost_head.softmax_fusion_runs(v, None)
    assert not ghost_head.softmax_fusion_runs(v, w)
    with torch.no_grad():
        assert ghost_head.softmax_fusion_runs(v, w)
    with torch.inference_mode():
        assert ghost_head.softmax_fusion_runs(v, w)


@needs_ops
def test_bf16_runs_close_to_fp32():
    t = make(1, 8, 2, 9, 10, 3, seed=8, dtype=torch.bfloat16)
    with torch.no_grad():
        out = fused(t, 3, 1)
        ref = fused({n: None if x is None else x.float() for n, x in t.items()}, 3, 1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('change, error, match', [
    (dict(logits_bias=torch.zeros(17)), ValueError, r'logits_bias must have shape \(G\*k\*k,\)'),
    (dict(logits_bias=torch.zeros(2, 9)), ValueError, r'logits_bias must have shape \(G\*k\*k,\)'),
    (dict(logits_bias=torch.zeros(18, dtype=torch.float64)), TypeError,
     r'logits_bias must have the dtype of v'),
    (dict(logits_bias=torch.zeros(18, dtype=torch.int64)), TypeError,
     r'logits_bias must be float16, bfloat16, float32 or float64'),
    (dict(logits=torch.zeros(1, 2, 9, 4)), ValueError, r'logits must have shape'),
    (dict(logits=torch.zeros(1, 3, 9, 4, 5)), ValueError, r'logits.shape\[1\] \(heads G\)'),
    (dict(logits=torch.zeros(1, 2, 25, 4, 5)), ValueError, r'logits must have shape'),
])
def test_bad_arguments_name_the_argument(change, error, match):
    args = dict(v=torch.zeros(1, 4, 4, 5), logits=torch.zeros(1, 2, 9, 4, 5),
                logits_bias=torch.zeros(18))
    args.update(change)
    with pytest.raises(error, match=match):
        ghost_head_softmax_aggregate(args['v'], args['logits'], args['logits_bias'],
                                     kernel_size=3)
