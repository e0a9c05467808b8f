"""``mmattn.ops.grouped_conv2d``: ELSA's k x k grouped convolution against ``F.conv2d``.

The compiled kernel (``mmattn::grouped_conv2d``) covers float32 maps with 4 channels per group,
``C % 8 == 0`` and k in 3..9; the AVX2 row kernel computes 8 output columns per block, so widths
that are not multiples of 8 take its narrower last block. It runs with the AVX2 build and on CPUs
that split AVX-512 into 256-bit halves; elsewhere, and in float64, the op runs its scalar loop
(and ``grouped_conv2d`` calls ``F.conv2d``). The capability builds (DEFAULT: the scalar loop in
float32 too) are compared in ``test_cpu_kernels.py``.
"""
import pytest
import torch
import torch.nn.functional as F

from mmattn.ops import grouped_conv2d, has_compiled_ops
from mmattn.ops.grouped_conv import _use_kernel, kernel_runs_here

pytestmark = pytest.mark.skipif(not has_compiled_ops(), reason='mmattn._C is not built')


def _conv_ref(x, weight, bias, dilation=1):
    k = weight.shape[-1]
    return F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(),
                    padding=(k // 2) * dilation, dilation=dilation,
                    groups=x.shape[1] // weight.shape[1])


def _inputs(B, C, H, W, k, gw=4, bias=True, dtype=torch.float32, channels_last=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(C, gw, k, k, generator=g, dtype=dtype) / k
    b = torch.randn(C, generator=g, dtype=dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize('k', [3, 5, 7, 9])
@pytest.mark.parametrize('W', [1, 5, 8, 13, 20], ids=lambda w: f'W{w}')
def test_float32_kernel_matches_conv2d(k, W):
    """Every block width (8 columns, and 1-7 for the last block), windows wider than the map,
    two batches, 16 and 24 channels (two and three 8-channel blocks)."""
    for C, bias in ((16, True), (24, False)):
        x, w, b = _inputs(2, C, 6, W, k, bias=bias, seed=k * 100 + W)
        assert _use_kernel(x, w, 1) == kernel_runs_here()
        ref = _conv_ref(x, w, b)
        for out in (torch.ops.mmattn.grouped_conv2d(x, w, b), grouped_conv2d(x, w, b)):
            assert out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_kernel_runs_with_avx2_and_split_avx512(splits_avx512):
    """The row kernel runs with the AVX2 build and where AVX-512 is two 256-bit halves (the
    CPUs it was measured faster than mkldnn on); the same rule as na2d's build choice."""
    from mmattn import _C
    build = _C.cpu_kernels()
    assert kernel_runs_here() == (build == 'AVX2' or (build == 'AVX512' and splits_avx512))


def test_nchw_input_gives_the_same_values():
    x, w, b = _inputs(1, 16, 9, 11, 7, channels_last=False)
    assert x.is_contiguous()
    out = grouped_conv2d(x, w, b)
    torch.testing.assert_close(out, grouped_conv2d(x.contiguous(memory_format=torch.channels_last),
                                                   w, b), rtol=0, atol=0)
    torch.testing.assert_close(out.double(), _conv_ref(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('gw', [4, 8, 2])
def test_float64_op_matches_conv2d_and_gradcheck(gw):
    """The op's scalar loop (float64, any group width) and its autograd (ATen's convolution
    backward) against F.conv2d."""
    x, w, b = _inputs(2, 8, 5, 6, 3, gw=gw, dtype=torch.float64)
    out = torch.ops.mmattn.grouped_conv2d(x, w, b)
    torch.testing.assert_close(out, _conv_ref(x, w, b), rtol=1e-12, atol=1e-12)
    args = (x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_())
    assert torch.autograd.gradcheck(torch.ops.mmattn.grouped_conv2d, args)
    args = (x.clone().requires_grad_(), w.clone().requires_grad_(), None)
    assert torch.autograd.gradcheck(torch.ops.mmattn.grouped_conv2d, args)


def test_float32_gradients_match_conv2d():
    x, w, b = _inputs(2, 16, 7, 10, 7)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
    out, ref = grouped_conv2d(xs, ws, bs), _conv_ref(xr, wr, br)
    g = torch.randn_like(ref)
    out.backward(g.float())
    ref.backward(g)
    for a, r in ((xs.grad, xr.grad), (ws.grad, wr.grad), (bs.grad, br.grad)):
        torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('case', ['gw8', 'dilation', 'c12', 'float64', 'k11'])
def test_outside_the_kernels_domain_runs_conv2d(case):
    k, dilation, dtype, gw, C = 7, 1, torch.float32, 4, 16
    if case == 'gw8':
        gw = 8
    elif case == 'dilation':
        dilation = 2
    elif case == 'c12':
        C = 12
    elif case == 'float64':
        dtype = torch.float64
    else:
        k = 11
    x, w, b = _inputs(1, C, 9, 10, k, gw=gw, dtype=dtype)
    assert not _use_kernel(x, w, dilation)
    out = grouped_conv2d(x, w, b, dilation)
    torch.testing.assert_close(out.double(), _conv_ref(x, w, b, dilation), rtol=1e-5, atol=1e-5)


def test_results_do_not_depend_on_thread_count():
    x, w, b = _inputs(2, 32, 11, 19, 7)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 3):
            torch.set_num_threads(n)
            outs.append(grouped_conv2d(x, w, b))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_opcheck():
    x, w, b = _inputs(1, 8, 4, 5, 3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.mmattn.grouped_conv2d.default,
                          (x.requires_grad_(), w.requires_grad_(), b.requires_grad_()))


def test_graph_capture_sees_conv2d():
    """Under torch.export (ONNX) the kernel is not called: the program holds ATen's convolution."""
    x, w, b = _inputs(2, 16, 8, 8, 7)

    class M(torch.nn.Module):
        def forward(self, x):
            return grouped_conv2d(x, w, b)

    program = torch.export.export(M(), (x, ), strict=False)
    graph = str(program.graph)
    assert 'mmattn' not in graph and 'conv' in graph


@pytest.mark.parametrize('shapes', [((2, 16, 5), (16, 4, 3, 3)), ((1, 16, 5, 5), (16, 4, 3)),
                                    ((1, 18, 5, 5), (18, 4, 3, 3))], ids=str)
def test_bad_shapes_name_the_arguments(shapes):
    xs, ws = shapes
    with pytest.raises(ValueError, match='x must be .* and weight'):
        grouped_conv2d(torch.randn(*xs), torch.randn(*ws))


def test_op_checks_its_arguments():
    x = torch.randn(1, 16, 5, 5)
    with pytest.raises(RuntimeError, match='k odd'):
        torch.ops.mmattn.grouped_conv2d(x, torch.randn(16, 4, 4, 4), None)
    with pytest.raises(RuntimeError, match='bias must be'):
        torch.ops.mmattn.grouped_conv2d(x, torch.randn(16, 4, 3, 3), torch.randn(8))
    with pytest.raises(RuntimeError, match='share dtype'):
        torch.ops.mmattn.grouped_conv2d(x, torch.randn(16, 4, 3, 3).double(), None)
