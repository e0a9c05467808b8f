"""Output layouts of the CPU na2d ops: every output shaped like q, k or v (out, d_q, d_k, d_v) is
allocated with ``empty_like`` of that input (``output_like`` in na2d.cpp, the fake kernels in
neighborhood.py), which for a view that is not dense (SASA's q/k/v, channel slices of one
convolution output) gives a dense tensor in the view's stride order, whatever the batch. The
layer's permute back to (B, C, H, W) is then a view in the convolution's own format: NCHW, or
channels-last (SASA-ResNet's large-map stages in inference). Values are checked against the
float64 reference ``na2d_reference``; the fake kernels against the real ops' strides.
"""
import pytest
import torch

import mmattn.ops._ext as ext
from mmattn.ops import concat_relative_embedding, na2d, na2d_reference, na2d_split_rpe

from _na2d import FP64_TOL

needs_ops = pytest.mark.skipif(not ext.has_compiled_ops(), reason='mmattn._C is not built')
HEADS, D, KS = 2, 6, 3
LAYOUTS = {  # name: (batch, memory format of the (B, 3 C, H, W) map q/k/v are sliced from)
    'nchw-batch1': (1, torch.contiguous_format),
    'nchw-batch2': (2, torch.contiguous_format),
    'channels-last-batch1': (1, torch.channels_last),
    'channels-last-batch2': (2, torch.channels_last),
}


def qkv_views(layout, H=5, W=7, requires_grad=False):
    """q, k, v as SASAAttention makes them: (B, heads, H, W, D) views of one conv output."""
    B, fmt = LAYOUTS[layout]
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(B, 3 * HEADS * D, H, W, generator=g, dtype=torch.float64)
    qkv = qkv.contiguous(memory_format=fmt).requires_grad_(requires_grad)
    views = [t.view(B, HEADS, D, H, W).permute(0, 1, 3, 4, 2)
             for t in qkv.split(HEADS * D, dim=1)]
    return qkv, views


def tables():
    g = torch.Generator().manual_seed(4)
    return [torch.randn(HEADS, KS, D // 2, generator=g, dtype=torch.float64) for _ in range(2)]


def as_map(t):
    """(B, heads, H, W, D) -> (B, C, H, W), as SASAAttention hands the output on."""
    B, heads, H, W, d = t.shape
    return t.permute(0, 1, 4, 2, 3).reshape(B, heads * d, H, W)


def assert_conv_layout(t, layout):
    fmt = LAYOUTS[layout][1]
    m = as_map(t)
    assert m.is_contiguous(memory_format=fmt), (layout, t.stride())
    assert m.data_ptr() == t.data_ptr()  # the permute back is a view, no copy


def dense_in_stride_order(t):
    """The strides of a dense tensor shaped like ``t`` with its dimensions in the order of
    ``t``'s strides, largest first."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    strides, step = [0] * t.dim(), 1
    for d in reversed(order):
        strides[d], step = step, step * t.shape[d]
    return tuple(strides)


def test_empty_like_keeps_the_stride_order_of_views():
    """What the ops rely on, on strides worked out by hand for (2, 2, 5, 7, 6) views: torch's
    empty_like of a view that is not dense keeps the view's dimension order (it would be a
    transposing copy per call if a torch release fell back to contiguous)."""
    _, (q, _, _) = qkv_views('channels-last-batch2')
    assert q.stride() == (1260, 6, 252, 36, 1)  # a slice of (B, H, W, 3 C) memory
    # dense (B, H, W, heads, D) memory: B 420, H 84, W 12, heads 6, D 1
    assert torch.empty_like(q).stride() == dense_in_stride_order(q) == (420, 6, 84, 12, 1)
    _, (q, _, _) = qkv_views('nchw-batch2')
    assert q.stride() == (1260, 210, 7, 1, 35)  # a slice of (B, 3 C, H, W) memory
    # dense (B, heads, D, H, W) memory: B 420, heads 210, D 35, H 7, W 1
    assert torch.empty_like(q).stride() == dense_in_stride_order(q) == (420, 210, 7, 1, 35)


@needs_ops
@pytest.mark.parametrize('layout', LAYOUTS)
def test_inference_ops_write_the_input_layout(layout):
    _, (q, k, v) = qkv_views(layout)
    rel_h, rel_w = tables()
    rpe = concat_relative_embedding(rel_h, rel_w)
    expect = na2d_reference(q, k, v, KS, rpe=rpe, scale=1.0)
    with torch.no_grad():
        split = na2d_split_rpe(q, k, v, KS, rel_h, rel_w, scale=1.0)
        fused = na2d(q, k, v, KS, rpe=rpe, scale=1.0)
    for out in (split, fused):
        torch.testing.assert_close(out, expect, **FP64_TOL)
        assert out.stride() == dense_in_stride_order(q)
        assert_conv_layout(out, layout)


@needs_ops
@pytest.mark.parametrize('path', ['split-train', 'fused-train', 'three-ops'])
@pytest.mark.parametrize('layout', LAYOUTS)
def test_training_outputs_and_gradients_take_the_input_layout(layout, path):
    """Forward output and d_q/d_k/d_v (seen by hooks on the views) of the three CPU training
    paths: na2d_split_rpe_train, na2d_fused_train (na2d with the table), na2d_qk -> softmax ->
    na2d_av (border 'clamp', no rpe); values and gradients against the float64 reference."""
    qkv, views = qkv_views(layout, requires_grad=True)
    ref_qkv, ref_views = qkv_views(layout, requires_grad=True)
    rel_h, rel_w = tables()
    rpe = concat_relative_embedding(rel_h, rel_w)
    border = 'clamp' if path == 'three-ops' else 'mask'
    rpe = None if path == 'three-ops' else rpe  # rpe needs border 'mask'
    grads = []
    for t in views:
        t.register_hook(lambda g: grads.append(g))
    if path == 'split-train':
        out = na2d_split_rpe(*views, KS, rel_h, rel_w, scale=1.0)
    else:
        out = na2d(*views, KS, border=border, rpe=rpe, scale=1.0)
    ref = na2d_reference(*ref_views, KS, border=border, rpe=rpe, scale=1.0)
    torch.testing.assert_close(out, ref, **FP64_TOL)
    if path != 'three-ops':  # the three-op path's output is na2d_av's, in v's layout
        assert_conv_layout(out, layout)
    else:
        assert out.stride() == dense_in_stride_order(views[2])
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(qkv.grad, ref_qkv.grad, **FP64_TOL)
    assert len(grads) == 3
    for grad, t in zip(grads, views):
        assert grad.stride() == dense_in_stride_order(t)
        assert_conv_layout(grad, layout)


@needs_ops
@pytest.mark.parametrize('layout', ['nchw-batch2', 'channels-last-batch2'])
def test_fake_kernels_give_the_real_strides(layout):
    """Under FakeTensorMode the ops' fake kernels (what torch.compile and export plan with) return
    the strides the CPU kernels write."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    _, (q, k, v) = qkv_views(layout)
    rel_h, rel_w = tables()
    ops = torch.ops.mmattn
    calls = {
        'na2d_split_rpe': lambda *a: ops.na2d_split_rpe(*a[:3], *a[3:5], KS, 1, 1.0),
        'na2d_split_rpe_train': lambda *a: ops.na2d_split_rpe_train(*a[:3], *a[3:5], KS, 1,
                                                                    1.0)[0],
    }
    for name, call in calls.items():
        real = call(q, k, v, rel_h, rel_w)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = call(*(mode.from_tensor(t) for t in (q, k, v, rel_h, rel_w)))
        assert fake.stride() == real.stride(), name
