"""``mmattn.ops.grouped_conv2d``: ELSA's k x k grouped convolution against ``F.conv2d``.

The compiled kernel (``mmattn::grouped_conv2d``, and ``mmattn::grouped_conv2d_weight_grad`` for
its backward) covers float32 maps with 4 channels per group, ``C % 8 == 0`` and k in 3..9; the
AVX2 row kernel computes 8 output columns per block, so widths that are not multiples of 8 take its
narrower last block. It runs with the AVX2 build and on CPUs that split AVX-512 into 256-bit
halves; elsewhere, and in float64, the op runs its scalar loop (and ``grouped_conv2d`` calls
``F.conv2d``). The capability builds (DEFAULT: the scalar loop in
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


def test_python_routes_by_the_entry_points_rule():
    """mmattn.ops.grouped_conv2d asks the C++ entry point which shapes its kernels cover, so the
    two cannot drift apart (a shape the Python side sent to the op but the op did not cover
    would run its scalar loop instead of mkldnn)."""
    from mmattn import _C
    runs = kernel_runs_here()
    for (C, k, gw) in ((16, 7, 4), (8, 3, 4), (24, 9, 4), (256, 5, 4)):
        assert _C.grouped_conv_kernel_covers(C, k, gw) == runs
    for (C, k, gw) in ((12, 7, 4), (16, 7, 8), (16, 11, 4), (16, 1, 4), (16, 7, 2)):
        assert not _C.grouped_conv_kernel_covers(C, k, gw)
        x, w, _ = _inputs(1, C, 5, 5, k, gw=gw, bias=False)
        assert not _use_kernel(x, w, 1)


def test_nchw_input_gives_the_same_values():
    x, w, b = _inputs(1, 16, 9, 11, 7, channels_last=False)
    assert x.is_contiguous()
    out = grouped_conv2d(x, w, b)
    torch.testing.assert_close(out, grouped_conv2d(x.contiguous(memory_format=torch.channels_last),
                                                   w, b), rtol=0, atol=0)
    torch.testing.assert_close(out.double(), _conv_ref(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('gw', [4, 8, 2])
def test_float64_op_matches_conv2d_and_gradcheck(gw):
    """The op's scalar loop (float64, any group width) and its autograd (the op on the output
    gradient, mmattn::grouped_conv2d_weight_grad) against F.conv2d."""
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


def _weight_grad_ref(g, x, w, with_bias):
    """dw (and db) of F.conv2d by float64 autograd."""
    ws = w.double().requires_grad_()
    bs = torch.zeros(w.shape[0], dtype=torch.float64, requires_grad=True)
    _conv_ref(x, ws, bs if with_bias else None).backward(g.double())
    return ws.grad, bs.grad if with_bias else None


@pytest.mark.parametrize('k', [3, 5, 7, 9])
@pytest.mark.parametrize('B,C,H,W', [(1, 8, 6, 13), (2, 16, 5, 4), (3, 24, 1, 9)],
                         ids=lambda v: str(v))
def test_float32_weight_grad_matches_conv2d(B, C, H, W, k):
    """The AVX2 weight-gradient kernel (window columns in blocks of 3 and 2, several images
    summed into one block, maps narrower or shorter than the window) against float64 autograd
    of F.conv2d; bias gradient on and off."""
    x, w, _ = _inputs(B, C, H, W, k, seed=k * 10 + C)
    g = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(k))
    for with_bias in (True, False):
        dw, db = torch.ops.mmattn.grouped_conv2d_weight_grad(g, x, k, 4, with_bias)
        dw_ref, db_ref = _weight_grad_ref(g, x, w, with_bias)
        assert dw.shape == w.shape and dw.dtype == torch.float32
        torch.testing.assert_close(dw.double(), dw_ref, rtol=1e-4, atol=1e-4)
        if with_bias:
            torch.testing.assert_close(db.double(), db_ref, rtol=1e-4, atol=1e-4)
        else:
            assert db.numel() == 0


@pytest.mark.parametrize('gw', [4, 8, 2, 1])
def test_float64_weight_grad_matches_conv2d(gw):
    """The scalar loop (float64, any group width; also the float32 path outside the kernel's
    domain), NCHW inputs."""
    x, w, _ = _inputs(2, 8, 5, 6, 3, gw=gw, dtype=torch.float64, channels_last=False)
    g = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    dw, db = torch.ops.mmattn.grouped_conv2d_weight_grad(g, x, 3, gw, True)
    dw_ref, db_ref = _weight_grad_ref(g, x, w, True)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(db, db_ref, rtol=1e-12, atol=1e-12)


def test_input_grad_is_the_op_with_transposed_flipped_weights():
    """The backward's input gradient runs the forward op on the output gradient: against
    F.conv2d's float64 input gradient with 4 channels per group (the row kernel) and with 2
    (the scalar loop, whose in-group transpose is not the identity either)."""
    for gw in (4, 2):
        x, w, b = _inputs(2, 16, 7, 11, 5, gw=gw)
        xs = x.clone().requires_grad_()
        xr = x.double().requires_grad_()
        g = torch.randn(2, 16, 7, 11, dtype=torch.float64)
        torch.ops.mmattn.grouped_conv2d(xs, w, b).backward(g.float())
        _conv_ref(xr, w, b).backward(g)
        torch.testing.assert_close(xs.grad.double(), xr.grad, rtol=1e-4, atol=1e-4)


def test_weight_grad_scratch_reuse_holds_no_stale_data():
    """The kernel's per-thread scratch (one image's channels with a zero border of k // 2) is
    kept from call to call: a large map with k=9, then smaller ones with k=3 and k=7 (a border
    left from the larger call would add its values), each against the reference."""
    for (B, C, H, W, k) in ((2, 16, 21, 23, 9), (1, 16, 5, 4, 3), (1, 8, 9, 6, 7)):
        x, w, _ = _inputs(B, C, H, W, k, seed=H + k)
        g = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(W))
        dw, db = torch.ops.mmattn.grouped_conv2d_weight_grad(g, x, k, 4, True)
        dw_ref, db_ref = _weight_grad_ref(g, x, w, True)
        torch.testing.assert_close(dw.double(), dw_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(db.double(), db_ref, rtol=1e-4, atol=1e-4)


def test_backward_runs_the_weight_grad_op_and_create_graph_runs_aten():
    """A plain backward calls mmattn::grouped_conv2d_weight_grad; a differentiable one
    (create_graph=True) ATen's convolution_backward, so second derivatives are right
    (gradgradcheck in float64)."""
    from torch.profiler import profile
    x, w, b = _inputs(1, 16, 6, 7, 5)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    with profile() as prof:
        torch.ops.mmattn.grouped_conv2d(xs, ws, bs).square().sum().backward()
    names = {e.name for e in prof.events()}
    assert 'mmattn::grouped_conv2d_weight_grad' in names
    assert 'aten::convolution_backward' not in names
    x, w, b = _inputs(1, 8, 4, 5, 3, dtype=torch.float64)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradgradcheck(torch.ops.mmattn.grouped_conv2d, args)


def test_weight_grad_does_not_depend_on_thread_count():
    x, w, _ = _inputs(2, 32, 11, 19, 7)
    g = torch.randn(2, 32, 11, 19).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 3):
            torch.set_num_threads(n)
            outs.append(torch.ops.mmattn.grouped_conv2d_weight_grad(g, x, 7, 4, True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_weight_grad_opcheck_and_argument_errors():
    x = torch.randn(1, 8, 4, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.mmattn.grouped_conv2d_weight_grad.default,
                          (torch.randn_like(x), x, 3, 4, True))
    op = torch.ops.mmattn.grouped_conv2d_weight_grad
    with pytest.raises(RuntimeError, match='grad must have the shape of x'):
        op(torch.randn(1, 8, 4, 4, dtype=torch.float64), x, 3, 4, True)
    with pytest.raises(RuntimeError, match='kernel_size must be odd'):
        op(torch.randn_like(x), x, 4, 4, True)
    with pytest.raises(RuntimeError, match='group_width must divide the 8 channels, got 3'):
        op(torch.randn_like(x), x, 3, 3, True)
    with pytest.raises(RuntimeError, match='share dtype'):
        op(torch.randn_like(x).float(), x, 3, 4, True)


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


# --------------------------------------------------------------------------------------------
# hadamard_conv_gelu: GELU(grouped_conv2d(q * k)), ELSA's attn.0 and attn.1 in inference
# --------------------------------------------------------------------------------------------
def _qk_slices(B, C, H, W, seed=0, dtype=torch.float32):
    """q and k as ELSA hands them over: channel slices of one channels-last map (pixel stride
    2*C + 3)."""
    g = torch.Generator().manual_seed(seed)
    parent = torch.randn(B, 2 * C + 3, H, W, generator=g, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    return parent[:, :C], parent[:, C + 3:]


def _hadamard_ref(q, k, w, b):
    return F.gelu(_conv_ref(q.double() * k.double(), w, b))


@pytest.mark.parametrize('k', [3, 5, 7, 9])
@pytest.mark.parametrize('B,C,H,W', [(1, 8, 6, 13), (2, 16, 5, 4), (1, 64, 9, 56), (1, 8, 3, 1)],
                         ids=str)
def test_hadamard_conv_gelu_matches_the_composition(B, C, H, W, k):
    """float32 against float64 F.gelu(F.conv2d(q * k)): slices read in place, every narrower last
    block of 8 columns, bias or none; the fused op runs where the row kernel does."""
    from mmattn.ops import hadamard_conv_gelu
    from mmattn.ops.grouped_conv import hadamard_conv_gelu_runs
    q, kk = _qk_slices(B, C, H, W, seed=k)
    _, w, b = _inputs(1, C, 1, 1, k, bias=W != 4, seed=k + 1)
    with torch.no_grad():
        out = hadamard_conv_gelu(q, kk, w, b)
        assert hadamard_conv_gelu_runs(q, kk, w, b, 1) == kernel_runs_here()
        if kernel_runs_here():  # the op itself, not the composition
            torch.testing.assert_close(torch.ops.mmattn.hadamard_conv_gelu(q, kk, w, b), out,
                                       rtol=0, atol=0)
    ref = _hadamard_ref(q, kk, w, b)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.skipif(not kernel_runs_here(), reason='the row kernel does not run on this CPU')
def test_hadamard_conv_gelu_runs_its_op_only_without_gradients(monkeypatch):
    from mmattn.ops import hadamard_conv_gelu
    q, kk = _qk_slices(1, 16, 5, 7)
    _, w, b = _inputs(1, 16, 1, 1, 3)
    calls = []
    op = torch.ops.mmattn.hadamard_conv_gelu

    class Spy:
        def __call__(self, *args):
            calls.append(args)
            return op(*args)

    import mmattn.ops.grouped_conv as gc
    monkeypatch.setattr(gc.torch.ops.mmattn, 'hadamard_conv_gelu', Spy(), raising=False)
    with torch.no_grad():
        fused = hadamard_conv_gelu(q, kk, w, b)
    assert len(calls) == 1
    w.requires_grad_(True)
    out = hadamard_conv_gelu(q, kk, w, b)  # a gradient asked for: the composition
    assert len(calls) == 1 and out.requires_grad
    torch.testing.assert_close(out.detach(), fused, rtol=1e-5, atol=1e-5)
    dw, = torch.autograd.grad(out.sum(), w)
    w64 = w.detach().double().requires_grad_()
    dw_ref, = torch.autograd.grad(_hadamard_ref(q, kk, w64, b).sum(), w64)
    torch.testing.assert_close(dw.double(), dw_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not kernel_runs_here(), reason='the row kernel does not run on this CPU')
def test_hadamard_conv_gelu_layouts_and_extremes():
    """NCHW and mismatched layouts of q and k (made channels-last first), and large outputs:
    GELU(x) = x for x >> 0 and 0 for x << 0, no NaN from exp."""
    from mmattn.ops import hadamard_conv_gelu
    q, kk = _qk_slices(1, 8, 6, 9, seed=3)
    _, w, b = _inputs(1, 8, 1, 1, 5, seed=4)
    ref = _hadamard_ref(q, kk, w, b)
    with torch.no_grad():
        for qv, kv in ((q.contiguous(), kk.contiguous()), (q, kk.contiguous())):
            torch.testing.assert_close(hadamard_conv_gelu(qv, kv, w, b).double(), ref,
                                       rtol=1e-5, atol=1e-5 * ref.abs().max().item())
        big = hadamard_conv_gelu(q, kk, w, b + 1e4)
        torch.testing.assert_close(big.double(), _hadamard_ref(q, kk, w, b + 1e4), rtol=1e-6,
                                   atol=0)
        small = hadamard_conv_gelu(q, kk, w, b - 1e4)
        assert small.abs().max().item() == 0


@pytest.mark.skipif(not kernel_runs_here(), reason='the row kernel does not run on this CPU')
def test_hadamard_conv_gelu_odd_strides_are_copied_not_misread():
    """Inputs the kernel cannot read in place (an expanded batch: batch stride 0; W == 1 with a
    pixel stride of 1, which is_contiguous(channels_last) accepts) are made dense first."""
    q1, k1 = _qk_slices(1, 8, 5, 6, seed=5)
    _, w, b = _inputs(1, 8, 1, 1, 3, seed=6)
    qe, ke = q1.expand(3, -1, -1, -1), k1.expand(3, -1, -1, -1)
    assert qe.stride(0) == 0
    base = torch.randn(2, 5, 8)  # (B, H, C)
    qw = base.permute(0, 2, 1).unsqueeze(-1)  # (2, 8, 5, 1), strides (40, 1, 8, 1)
    kw = (base + 1).permute(0, 2, 1).unsqueeze(-1)
    assert qw.is_contiguous(memory_format=torch.channels_last) and qw.stride(3) == 1
    with torch.no_grad():
        for q, k in ((qe, ke), (qw, kw)):
            out = torch.ops.mmattn.hadamard_conv_gelu(q, k, w, b)
            ref = _hadamard_ref(q, k, w, b)
            torch.testing.assert_close(out.double(), ref, rtol=1e-5,
                                       atol=1e-5 * ref.abs().max().item())


def test_hadamard_conv_gelu_errors():
    from mmattn.ops import hadamard_conv_gelu
    q, kk = _qk_slices(1, 8, 4, 5)
    _, w, _ = _inputs(1, 8, 1, 1, 3)
    with pytest.raises(ValueError, match='q and k must be'):
        hadamard_conv_gelu(q, kk[:, :, :3], w)
    if kernel_runs_here():
        with pytest.raises(RuntimeError, match='hadamard_conv_gelu: float32'):
            torch.ops.mmattn.hadamard_conv_gelu(q.double(), kk.double(), w.double(), None)
        with pytest.raises(RuntimeError, match='k must have the shape'):
            torch.ops.mmattn.hadamard_conv_gelu(q, kk[:1, :, :3], w, None)
