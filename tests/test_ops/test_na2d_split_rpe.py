"""Tests of ``mmattn.ops.na2d_split_rpe``: ``na2d`` with border 'mask' and SASA's relative
embedding given by its row and column tables, ``rpe[h, a, b] = concat(rel_h[h, a], rel_w[h, b])``.
On the CPU the ops build the kernels' separable form from the tables: ``mmattn::na2d_split_rpe``
where no gradient is asked for, ``mmattn::na2d_split_rpe_train`` (and its backward, which takes the
tables' gradients from the row and column sums of d_logits) in float32/float64 training;
elsewhere the function calls ``na2d`` with the concatenated table.

Oracles: the pixel loop of ``specs/ops.md`` section 1 (``_na2d.na2d_oracle``) on a table built
here entry by entry, the float64 reference ``na2d_reference`` (checked against the oracle in
``test_na2d.py``) for larger maps, and float64 ``gradcheck`` of the differentiable path. The
every-build check (DEFAULT, AVX2, AVX512) is in ``test_cpu_kernels.py``.
"""
import pytest
import torch

import mmattn.ops._ext as ext
import mmattn.ops.neighborhood as neighborhood
from mmattn.ops import concat_relative_embedding, na2d, na2d_reference, na2d_split_rpe

from _na2d import (BF16_TOL, FP32_REDUCTION_ATOL_PER_MAX, FP32_REDUCTION_RTOL, FP32_TOL, FP64_TOL,
                   GRADCHECK, na2d_oracle)

OP = 'mmattn::na2d_split_rpe'
needs_ops = pytest.mark.skipif(not ext.has_compiled_ops(), reason='mmattn._C is not built')


def make(B, heads, H, W, D, ks, seed=0, dtype=torch.float64, views=False):
    """q, k, v (``views``: W-contiguous views of a (B, 3 heads D, H, W) map, as SASA passes
    them) and the two (heads, ks, D/2) tables."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    if views:
        qkv = rnd(B, 3 * heads * D, H, W)
        q, k, v = (t.view(B, heads, D, H, W).permute(0, 1, 3, 4, 2)
                   for t in qkv.split(heads * D, dim=1))
    else:
        q, k, v = (rnd(B, heads, H, W, D) for _ in range(3))
    return q, k, v, rnd(heads, ks, D // 2), rnd(heads, ks, D // 2)


def table_by_entries(rel_h, rel_w):
    """The (heads, k, k, D) table of the definition, one window slot at a time."""
    heads, ks, half = rel_h.shape
    rpe = torch.empty(heads, ks, ks, 2 * half, dtype=torch.float64)
    for h in range(heads):
        for a in range(ks):
            for b in range(ks):
                rpe[h, a, b, :half] = rel_h[h, a]
                rpe[h, a, b, half:] = rel_w[h, b]
    return rpe


@needs_ops
@pytest.mark.parametrize('B, heads, H, W, D, ks, dilation, scale, views', [
    pytest.param(1, 2, 6, 7, 4, 3, 1, 1.0, False, id='small'),
    pytest.param(2, 3, 9, 13, 6, 5, 1, None, True, id='D6-13cols-views'),
    pytest.param(1, 2, 11, 7, 10, 3, 2, 0.5, False, id='dilation2-D10'),
    pytest.param(1, 1, 3, 4, 4, 7, 1, 1.0, True, id='map-smaller-than-window'),
    pytest.param(1, 2, 5, 17, 16, 5, 1, 1.0, True, id='D16-17cols'),
])
def test_matches_the_pixel_oracle(B, heads, H, W, D, ks, dilation, scale, views, record_ops):
    q, k, v, rel_h, rel_w = make(B, heads, H, W, D, ks, views=views)
    with record_ops() as rec, torch.no_grad():
        out = na2d_split_rpe(q, k, v, ks, rel_h, rel_w, dilation, scale)
    assert rec.mmattn_ops() == [OP]
    expect = na2d_oracle(q, k, v, ks, dilation, 'mask', rpe=table_by_entries(rel_h, rel_w),
                         scale=scale)
    torch.testing.assert_close(out, expect, **FP64_TOL)
    # the memory layout of q (empty_like), as na2d's outputs: SASA's views stay W-contiguous
    assert out.stride(3) == q.stride(3)


@needs_ops
@pytest.mark.parametrize('heads, H, W, D', [(8, 56, 56, 8), (8, 28, 28, 16), (8, 14, 14, 32),
                                            (8, 7, 7, 64)],
                         ids=['stage1', 'stage2', 'stage3', 'stage4'])
def test_float32_at_sasa_resnet_shapes(heads, H, W, D):
    q, k, v, rel_h, rel_w = make(1, heads, H, W, D, 7, views=True, seed=1)
    expect = na2d_reference(q, k, v, 7, 1, 'mask', rpe=table_by_entries(rel_h, rel_w), scale=1.0)
    with torch.no_grad():
        out = na2d_split_rpe(*(t.float() for t in (q, k, v)), 7, rel_h.float(), rel_w.float(),
                             scale=1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expect, **FP32_TOL)


@needs_ops
@pytest.mark.parametrize('dilation', [1, 2])
def test_same_bits_as_na2d_with_the_concatenated_table(dilation):
    # na2d finds the concatenated table separable and builds the same two tables from it
    q, k, v, rel_h, rel_w = (t.float() for t in make(1, 3, 10, 19, 12, 5, views=True, seed=2))
    with torch.no_grad():
        out = na2d_split_rpe(q, k, v, 5, rel_h, rel_w, dilation, scale=1.0)
        expect = na2d(q, k, v, 5, dilation, rpe=concat_relative_embedding(rel_h, rel_w),
                      scale=1.0)
    assert torch.equal(out, expect)


def test_concat_relative_embedding_is_the_definition():
    *_, rel_h, rel_w = make(1, 3, 2, 2, 6, 5)
    assert torch.equal(concat_relative_embedding(rel_h, rel_w), table_by_entries(rel_h, rel_w))


@needs_ops
def test_strided_tables_and_threads_give_the_same_bits(num_threads):
    q, k, v, rel_h, rel_w = (t.float() for t in make(2, 2, 9, 21, 8, 7, views=True, seed=3))
    with torch.no_grad():
        num_threads(1)
        one = na2d_split_rpe(q, k, v, 7, rel_h, rel_w, scale=1.0)
        num_threads(3)
        three = na2d_split_rpe(q, k, v, 7, rel_h, rel_w, scale=1.0)
        # tables as transposed views (non-contiguous)
        strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (rel_h, rel_w)]
        assert not strided[0].is_contiguous()
        again = na2d_split_rpe(q, k, v, 7, *strided, scale=1.0)
    assert torch.equal(one, three) and torch.equal(one, again)


@needs_ops
def test_bfloat16_is_computed_in_float32():
    q, k, v, rel_h, rel_w = (t.bfloat16() for t in make(1, 2, 8, 11, 8, 5, seed=4))
    with torch.no_grad():
        out = na2d_split_rpe(q, k, v, 5, rel_h, rel_w, scale=1.0)
        qf, kf, vf, hf, wf = (t.float() for t in (q, k, v, rel_h, rel_w))
        expect = na2d_split_rpe(qf, kf, vf, 5, hf, wf, scale=1.0)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expect, **BF16_TOL)


TRAIN_OP = 'mmattn::na2d_split_rpe_train'


@needs_ops
@pytest.mark.parametrize('dilation', [1, 2])
def test_training_op_gradcheck(dilation, record_ops):
    # float64 finite differences of the training op (d_q's rpe share and the tables' gradients
    # from the row and column sums of d_logits); D = 6, with dilation 2 windows wider than the map
    q, k, v, rel_h, rel_w = make(1, 2, 5, 6, 6, 3, seed=5)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, rel_h, rel_w)]

    def fn(q, k, v, rel_h, rel_w):
        return na2d_split_rpe(q, k, v, 3, rel_h, rel_w, dilation=dilation, scale=0.7)

    with record_ops() as rec:
        fn(*inputs).sum().backward()
    assert rec.mmattn_ops() == [TRAIN_OP, TRAIN_OP + '_backward']
    assert torch.autograd.gradcheck(fn, inputs, **GRADCHECK)


@needs_ops
@pytest.mark.parametrize('B, heads, H, W, D, ks, dilation, views', [
    pytest.param(2, 3, 9, 13, 6, 5, 1, True, id='D6-views-B2'),
    pytest.param(1, 2, 11, 7, 10, 3, 2, False, id='dilation2-D10'),
    pytest.param(1, 1, 3, 4, 4, 7, 1, True, id='map-smaller-than-window'),
])
def test_training_gradients_match_the_reference(B, heads, H, W, D, ks, dilation, views):
    q, k, v, rel_h, rel_w = make(B, heads, H, W, D, ks, seed=6, views=views)
    grad_out = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def run(fn, dtype, rpe_of):
        xs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, rel_h, rel_w)]
        out = fn(*xs[:3], ks, dilation, rpe_of(xs[3], xs[4]))
        return [out.double()] + [g.double() for g in
                                 torch.autograd.grad(out, xs, grad_out.to(dtype))]

    expect = run(lambda q, k, v, ks, d, rpe: na2d_reference(q, k, v, ks, d, rpe=rpe, scale=1.0),
                 torch.float64, table_by_entries)
    split = lambda q, k, v, ks, d, tables: na2d_split_rpe(q, k, v, ks, *tables, d, 1.0)  # noqa
    for got, want in zip(run(split, torch.float64, lambda h, w: (h, w)), expect):
        torch.testing.assert_close(got, want, **FP64_TOL)
    for i, (got, want) in enumerate(zip(run(split, torch.float32, lambda h, w: (h, w)), expect)):
        # the tables' gradients are sums over every query: atol scaled with their size
        tol = FP32_TOL if i < 4 else dict(
            rtol=FP32_REDUCTION_RTOL, atol=FP32_REDUCTION_ATOL_PER_MAX * want.abs().max().item())
        torch.testing.assert_close(got, want, **tol)


@needs_ops
def test_training_at_sasa_stage_one_matches_na2d(record_ops):
    # float32 at SASA-ResNet-50's first stage (8 heads of 8 channels, 56x56) on the views of one
    # qkv map: the gradients of the map and the tables against na2d with the concatenated table
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 192, 56, 56, generator=g)
    tables = [torch.randn(8, 7, 4, generator=g) for _ in range(2)]
    grad_out = torch.randn(1, 8, 56, 56, 8, generator=g)
    results = []
    for split in (True, False):
        xs = [t.clone().requires_grad_() for t in [x] + tables]
        q, k, v = (t.view(1, 8, 8, 56, 56).permute(0, 1, 3, 4, 2) for t in xs[0].split(64, 1))
        with record_ops() as rec:
            out = (na2d_split_rpe(q, k, v, 7, xs[1], xs[2], scale=1.0) if split else
                   na2d(q, k, v, 7, rpe=concat_relative_embedding(xs[1], xs[2]), scale=1.0))
        assert (TRAIN_OP in rec.mmattn_ops()) == split
        results.append([out] + list(torch.autograd.grad(out, xs, grad_out)))
    for i, (a, b) in enumerate(zip(*results)):
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale, msg=f'output/grad {i}')


@needs_ops
def test_gradients_of_the_tables_alone(record_ops):
    q, k, v, rel_h, rel_w = make(1, 2, 5, 6, 4, 3, seed=5)
    rel = [t.clone().requires_grad_() for t in (rel_h, rel_w)]
    with record_ops() as rec:
        out = na2d_split_rpe(q, k, v, 3, *rel, scale=0.7)
    assert rec.mmattn_ops() == [TRAIN_OP]
    d_rel = torch.autograd.grad(out.sum(), rel)
    expect = torch.autograd.grad(
        na2d_reference(q, k, v, 3, rpe=concat_relative_embedding(*rel), scale=0.7).sum(), rel)
    for a, b in zip(d_rel, expect):
        torch.testing.assert_close(a, b, **FP64_TOL)


@needs_ops
def test_bfloat16_training_takes_na2d(record_ops):
    # as na2d, which trains reduced precision through na2d_qk -> softmax -> na2d_av
    q, k, v, rel_h, rel_w = (t.bfloat16().requires_grad_() for t in make(1, 2, 5, 6, 4, 3))
    with record_ops() as rec:
        na2d_split_rpe(q, k, v, 3, rel_h, rel_w).float().sum().backward()
    assert TRAIN_OP not in rec.mmattn_ops() and 'mmattn::na2d_qk' in rec.mmattn_ops()
    assert rel_h.grad is not None and rel_h.grad.dtype == torch.bfloat16


@needs_ops
def test_graph_capture_takes_the_composition(monkeypatch, record_ops):
    # a trace (FLOP counting, export) sees na2d, which the exporters and counters know
    monkeypatch.setattr(ext, 'capturing_graph', lambda: True)
    monkeypatch.setattr(neighborhood, 'capturing_graph', lambda: True)
    q, k, v, rel_h, rel_w = make(1, 2, 5, 6, 4, 3, seed=6)
    with record_ops() as rec, torch.no_grad():
        out = na2d_split_rpe(q, k, v, 3, rel_h, rel_w, scale=1.0)
    assert rec.mmattn_ops() == ['mmattn::na2d_fused']
    with record_ops() as rec:  # training: na2d's own training op
        na2d_split_rpe(q, k, v, 3, rel_h.requires_grad_(), rel_w, scale=1.0)
    assert rec.mmattn_ops() == ['mmattn::na2d_fused_train']
    expect = na2d_reference(q, k, v, 3, rpe=table_by_entries(rel_h, rel_w), scale=1.0)
    torch.testing.assert_close(out, expect, **FP64_TOL)


@pytest.mark.parametrize('case, error, match', [
    ('odd-D', ValueError, 'head dim D of q must be even'),
    ('rel_h-shape', ValueError, r'rel_h must have shape \(heads, k, D/2\) = \(2, 3, 2\)'),
    ('rel_w-dtype', TypeError, 'rel_w must have the dtype of q'),
    ('rel_w-not-a-tensor', TypeError, 'rel_w must be a torch.Tensor'),
    ('even-kernel', ValueError, 'kernel_size must be odd'),
])
def test_argument_errors(case, error, match):
    q, k, v, rel_h, rel_w = make(1, 2, 5, 6, 4, 3)
    ks = 3
    if case == 'odd-D':
        q, k, v = (t[..., :3] for t in (q, k, v))
    elif case == 'rel_h-shape':
        rel_h = rel_h[:, :, :1]
    elif case == 'rel_w-dtype':
        rel_w = rel_w.float()
    elif case == 'rel_w-not-a-tensor':
        rel_w = rel_w.tolist()
    else:
        ks = 4
    with pytest.raises(error, match=match):
        na2d_split_rpe(q, k, v, ks, rel_h, rel_w)


@needs_ops
def test_the_op_checks_its_tables():
    # a direct torch.ops call skips the Python checks: the op's own checks name the argument
    q, k, v, rel_h, rel_w = make(1, 2, 5, 6, 4, 3)
    with pytest.raises(RuntimeError, match=r'na2d_split_rpe: rel_w must be \(heads, k, D/2\)'):
        torch.ops.mmattn.na2d_split_rpe(q, k, v, rel_h, rel_w[:1], 3, 1, 1.0)
    with pytest.raises(RuntimeError, match='na2d_split_rpe: the head dim D of q must be even'):
        torch.ops.mmattn.na2d_split_rpe(*(t[..., :3] for t in (q, k, v)), rel_h, rel_w, 3, 1,
                                        1.0)
    with pytest.raises(RuntimeError, match='na2d_split_rpe: rel_h must share dtype'):
        torch.ops.mmattn.na2d_split_rpe(q, k, v, rel_h.float(), rel_w, 3, 1, 1.0)
