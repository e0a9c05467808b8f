"""CUDA kernels against the CPU kernels (run wherever a GPU is present, skipped elsewhere).

The CPU side runs in float64 on the same (exactly upcast) inputs, so each comparison measures
the CUDA kernels' own error for their dtype.
"""
import pytest
import torch

from mmattn.ops import ghost_head_aggregate, na2d, na2d_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

DEVICE = 'cuda'

# Tolerances of CUDA(dtype) against the float64 CPU result, per dtype.
TOLERANCES = {
    # fp64: other summation orders, a few ulps
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    # fp32: the spec's 1e-5 relative agreement
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    # fp16: 11 significant bits (rounding 4.9e-4) on the output and, in the training path, on the
    # softmax; accumulation in fp32
    torch.float16: dict(rtol=5e-3, atol=5e-3),
    # bf16: 8 significant bits (rounding 3.9e-3), same structure
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}
# Gradients are compared after dividing by their largest entry: d_rpb, d_rpe and the ghost
# gradients are sums over every pixel, and low-precision gradients round relative to that size.
GRAD_TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=4e-2, atol=4e-2),
}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ['fp64', 'fp32', 'fp16', 'bf16']


def _rand(shape, dtype, seed):
    """Random values representable in ``dtype``, on the CPU as float64 and on the GPU."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    return x.double(), x.to(DEVICE)


def _assert_grads_close(grads, expected, dtype):
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        assert grad.dtype == dtype and grad.device.type == DEVICE
        scale = max(expected[name].abs().max().item(), 1e-30)
        torch.testing.assert_close(grad.cpu().double() / scale, expected[name] / scale,
                                   **GRAD_TOLERANCES[dtype], msg=lambda m: f'd_{name}: {m}')


def _backward(out, tensors, grad_out):
    leaves = {n: x for n, x in tensors.items() if x is not None}
    return dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), grad_out)))


NA2D_CASES = [
    pytest.param(2, 3, 13, 17, 8, 3, 1, 'mask', 'rpb+rpe+bias', id='mask-d1-k3-rpb+rpe+bias'),
    pytest.param(2, 3, 13, 17, 33, 5, 2, 'mask', 'rpb+rpe', id='mask-d2-k5-D33-rpb+rpe'),
    pytest.param(1, 2, 3, 4, 16, 7, 1, 'mask', 'rpe+bias', id='mask-k7-3x4-rpe+bias'),
    pytest.param(2, 3, 13, 17, 8, 3, 2, 'clamp', 'rpb+bias', id='clamp-d2-k3-rpb+bias'),
    pytest.param(1, 2, 31, 9, 32, 7, 1, 'clamp', 'rpb', id='clamp-d1-k7-31x9-rpb'),
    pytest.param(2, 2, 9, 11, 4, 3, 3, 'clamp', '', id='clamp-d3-k3-plain'),
]


@pytest.mark.parametrize('dtype', DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize('B, heads, H, W, D, ks, dilation, border, extras', NA2D_CASES)
def test_na2d_cuda_matches_cpu(B, heads, H, W, D, ks, dilation, border, extras, dtype):
    shapes = dict(q=(B, heads, H, W, D), k=(B, heads, H, W, D), v=(B, heads, H, W, D),
                  rpb=(heads, 2 * ks - 1, 2 * ks - 1), rpe=(heads, ks, ks, D),
                  bias=(B, heads, H, W, ks * ks))
    cpu, gpu = {}, {}
    for seed, (name, shape) in enumerate(shapes.items()):
        if name in ('q', 'k', 'v') or name in extras:
            cpu[name], gpu[name] = _rand(shape, dtype, seed)
        else:
            cpu[name] = gpu[name] = None
    grad_cpu, grad_gpu = _rand((B, heads, H, W, D), dtype, 99)

    def run(t):
        return na2d(t['q'], t['k'], t['v'], ks, dilation, border, rpb=t['rpb'], rpe=t['rpe'],
                    bias=t['bias'])

    expected = run(cpu)  # CPU kernels, float64
    with torch.no_grad():
        fused = run(gpu)
    assert fused.dtype == dtype and fused.device.type == DEVICE
    torch.testing.assert_close(fused.cpu().double(), expected, **TOLERANCES[dtype])

    cpu = {n: None if x is None else x.requires_grad_() for n, x in cpu.items()}
    gpu = {n: None if x is None else x.requires_grad_() for n, x in gpu.items()}
    expected = run(cpu)
    expected_grads = _backward(expected, cpu, grad_cpu)
    out = run(gpu)
    torch.testing.assert_close(out.detach().cpu().double(), expected.detach(), **TOLERANCES[dtype])
    _assert_grads_close(_backward(out, gpu, grad_gpu), expected_grads, dtype)


@pytest.mark.parametrize('dtype', DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize('B, C, G, H, W, ks, dilation, ghosts', [
    pytest.param(2, 12, 3, 13, 17, 7, 1, 'mul+add', id='G3-d1-k7-mul+add'),
    pytest.param(2, 8, 2, 31, 9, 3, 2, 'mul', id='G2-d2-k3-mul'),
    pytest.param(1, 4, 1, 2, 3, 5, 1, 'add', id='G1-k5-2x3-add'),
])
def test_ghost_cuda_matches_cpu(B, C, G, H, W, ks, dilation, ghosts, dtype):
    cpu, gpu = {}, {}
    cpu['v'], gpu['v'] = _rand((B, C, H, W), dtype, 0)
    attn = torch.randn(B, G, ks * ks, H, W, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64).softmax(2).to(dtype)
    cpu['attn'], gpu['attn'] = attn.double(), attn.to(DEVICE)
    for seed, name in enumerate(('ghost_mul', 'ghost_add'), 2):
        if name[6:] in ghosts:
            cpu[name], gpu[name] = _rand((C, ks, ks), dtype, seed)
        else:
            cpu[name] = gpu[name] = None
    grad_cpu, grad_gpu = _rand((B, C, H, W), dtype, 99)
    cpu = {n: None if x is None else x.requires_grad_() for n, x in cpu.items()}
    gpu = {n: None if x is None else x.requires_grad_() for n, x in gpu.items()}

    def run(t):
        return ghost_head_aggregate(t['v'], t['attn'], t['ghost_mul'], t['ghost_add'], ks,
                                    dilation)

    expected = run(cpu)
    out = run(gpu)
    assert out.dtype == dtype and out.device.type == DEVICE
    torch.testing.assert_close(out.detach().cpu().double(), expected.detach(), **TOLERANCES[dtype])
    _assert_grads_close(_backward(out, gpu, grad_gpu), _backward(expected, cpu, grad_cpu), dtype)


@pytest.mark.parametrize('name', ['na2d_qk', 'na2d_qk_backward', 'na2d_av', 'na2d_av_backward',
                                  'na2d_fused', 'ghost_head_aggregate',
                                  'ghost_head_aggregate_backward'])
def test_cuda_kernel_registered(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f'mmattn::{name}', 'CUDA')


def test_cuda_determinism():
    # same bits on repeated runs (the CPU promise; on the GPU it holds unless atomics reorder)
    t = {n: torch.randn(2, 2, 16, 15, 8, device=DEVICE, requires_grad=True) for n in 'qkv'}
    rpb = torch.randn(2, 5, 5, device=DEVICE, requires_grad=True)

    def run():
        out = na2d(t['q'], t['k'], t['v'], 3, 2, rpb=rpb)
        return [out] + list(torch.autograd.grad(out.square().sum(), [*t.values(), rpb]))

    first, second = run(), run()
    for a, b in zip(first[:4], second[:4]):  # output, d_q, d_k, d_v: no reduction across threads
        assert torch.equal(a, b)
    torch.testing.assert_close(first[4], second[4], **TOLERANCES[torch.float32])


# B * heads * H * W * k * k > 2**31: the logits of the training path and the bias of the fused
# path need 64-bit indices. With k = 13 and 4 heads of 1800 x 1800 pixels there are 2.19e9
# window slots; fp16 keeps it at ~30 GB of GPU memory.
LARGE_HEADS, LARGE_HW, LARGE_K, LARGE_D = 4, 1800, 13, 2


@pytest.mark.skipif(not torch.cuda.is_available() or
                    torch.cuda.get_device_properties(0).total_memory < 60 * 2**30,
                    reason='needs a GPU with 60 GiB of memory')
@pytest.mark.parametrize('training', [False, True], ids=['fused-with-bias', 'training'])
def test_na2d_cuda_64bit_indexing(training):
    heads, L, ks, D = LARGE_HEADS, LARGE_HW, LARGE_K, LARGE_D
    assert heads * L * L * ks * ks > 2**31
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v = (torch.randn(1, heads, L, L, D, device=DEVICE, dtype=torch.float16, generator=g)
               for _ in range(3))
    bias = None if training else torch.randn(1, heads, L, L, ks * ks, device=DEVICE,
                                             dtype=torch.float16, generator=g)
    r = ks // 2
    n = 2 * r + 1  # the bottom-right n x n crop holds every key of its last r + 1 rows/columns
    crop = (slice(None), slice(heads - 1, heads), slice(L - n, L), slice(L - n, L))
    if training:
        for x in (q, k, v):
            x.requires_grad_(True)
    with torch.set_grad_enabled(training):
        out = na2d(q, k, v, ks, bias=bias)
    # reference on the crop of the last head, in float64 on the CPU
    q_c, k_c, v_c = (x.detach()[crop].double().cpu().requires_grad_() for x in (q, k, v))
    bias_c = None if bias is None else bias[crop].double().cpu()
    ref = na2d_reference(q_c, k_c, v_c, ks, bias=bias_c)
    corner = (slice(None), slice(None), slice(n - r - 1, n), slice(n - r - 1, n))
    torch.testing.assert_close(out.detach()[crop][corner].double().cpu(), ref.detach()[corner],
                               **TOLERANCES[torch.float16])
    if training:
        # loss on the corner outputs of the last head only: the gradients live in the crop
        grad_out = torch.zeros_like(out)
        grad_out[crop][corner] = 1.0
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_out)
        grad_ref = torch.zeros_like(ref)
        grad_ref[corner] = 1.0
        ref_grads = torch.autograd.grad(ref, (q_c, k_c, v_c), grad_ref)
        for name, grad, expected in zip('qkv', (dq, dk, dv), ref_grads):
            scale = expected.abs().max().item()
            torch.testing.assert_close(grad[crop].double().cpu() / scale, expected / scale,
                                       **GRAD_TOLERANCES[torch.float16],
                                       msg=lambda m: f'd_{name}: {m}')
            total = grad.double().abs().sum().item()
            inside = grad[crop].double().abs().sum().item()
            assert total == pytest.approx(inside, rel=1e-6), f'd_{name} written outside the crop'
