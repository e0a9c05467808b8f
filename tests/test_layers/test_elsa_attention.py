"""ELSA attention and block against a plain-PyTorch rebuild from the spec's formulas.

The reference below is written from ``specs/elsa_swin.md`` sections 2.2-2.7 and 3.3(a) only
(unfold aggregation, official key names read from the module's state dict), not from mmattn's
code: pre_proj 1x1 conv -> split (q, k, v) -> q * k * scale -> grouped k x k conv -> GELU -> 1x1
conv to k*k*G logits (head-major) -> softmax over all taps -> unfold(v) weighted by
``A * O**lam + gamma * S`` -> post_proj Linear; pre-norm residual block with an MLP.
"""
import pytest
import torch
import torch.nn.functional as F

from mmattn.layers import ELSAAttention, ELSABlock, round_dim_qk
from mmattn.layers import elsa_attention as elsa_module


def reference_attention(x, sd, *, heads, k, dim_qk, group_width, scale, lam, gamma, prefix=''):
    """``x`` (B, H, W, C) -> (B, H, W, C) from the official formulas and state dict ``sd``."""
    b, h, w, c = x.shape
    p = lambda name: sd[prefix + name]  # noqa: E731
    t = F.conv2d(x.permute(0, 3, 1, 2), p('pre_proj.weight'), p('pre_proj.bias'))
    q, kk, v = t[:, :dim_qk], t[:, dim_qk:2 * dim_qk], t[:, 2 * dim_qk:]
    hadamard = q * kk * scale
    a = F.conv2d(hadamard, p('attn.0.weight'), p('attn.0.bias'), padding=k // 2,
                 groups=dim_qk // group_width)
    a = F.gelu(a)
    a = F.conv2d(a, p('attn.2.weight'), p('attn.2.bias'))
    a = a.reshape(b * heads, k * k, h * w).softmax(dim=1)  # all taps, padded ones included
    cols = F.unfold(v.reshape(b * heads, c // heads, h, w), k, padding=k // 2)
    cols = cols.view(b, heads, c // heads, k * k, h * w)
    a = a.view(b, heads, 1, k * k, h * w)
    ghost = sd.get(prefix + 'ghost_head')
    mul = torch.ones(c, k * k, dtype=x.dtype)
    add = torch.zeros(c, k * k, dtype=x.dtype)
    if lam != 0 and gamma != 0:
        mul, add = ghost[0].reshape(c, -1)**lam, gamma * ghost[1].reshape(c, -1)
    elif lam != 0:
        mul = ghost.reshape(c, -1)**lam
    elif gamma != 0:
        add = gamma * ghost.reshape(c, -1)
    mul = mul.view(1, heads, c // heads, k * k, 1)
    add = add.view(1, heads, c // heads, k * k, 1)
    out = (cols * (a * mul + add)).sum(3).view(b, c, h, w).permute(0, 2, 3, 1)
    return F.linear(out, p('post_proj.weight'), p('post_proj.bias'))


def reference_block(x, hw, sd, **kw):
    b, n, c = x.shape
    y = F.layer_norm(x, (c, ), sd['norm1.weight'], sd['norm1.bias'])
    x = x + reference_attention(y.view(b, *hw, c), sd, prefix='attn.', **kw).view(b, n, c)
    y = F.layer_norm(x, (c, ), sd['norm2.weight'], sd['norm2.bias'])
    y = F.linear(F.gelu(F.linear(y, sd['mlp.fc1.weight'], sd['mlp.fc1.bias'])),
                 sd['mlp.fc2.weight'], sd['mlp.fc2.bias'])
    return x + y


def _randomise(module):
    """Non-trivial values everywhere (norm affine, biases, ghost matrices) to expose swaps."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.5 if 'ghost_head' in name else 0.2
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale
                    + (1. if name.endswith('norm1.weight') or name.endswith('norm2.weight')
                       else 0.))


@pytest.mark.parametrize('lam,gamma', [(0, 1.), (1, 1.), (1, 0.), (0, 0.), (2, 0.5), (0, 2.)])
@pytest.mark.parametrize('size', [(9, 11), (5, 4)])
def test_block_matches_spec_rebuild(lam, gamma, size):
    torch.manual_seed(0)
    dim, heads, gw = 24, 3, 4
    block = ELSABlock(dim, heads, kernel_size=7, qkv_bias=True, qk_scale=1., group_width=gw,
                      lam=lam, gamma=gamma).double()
    _randomise(block)
    x = torch.randn(2, size[0] * size[1], dim, dtype=torch.float64)
    ref = reference_block(x, size, block.state_dict(), heads=heads, k=7,
                          dim_qk=round_dim_qk(dim, None, gw), group_width=gw, scale=1.,
                          lam=lam, gamma=gamma)
    out = block(x, size)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('lam,gamma', [(0, 1.), (1, 1.), (0, 0.)])
def test_inference_fuses_the_softmax_and_matches_the_spec_rebuild(lam, gamma, monkeypatch):
    """Without gradients (eval mode, no_grad) the softmax and attn.2's bias run inside
    ghost_head_softmax_aggregate (with the compiled ops), and the block still matches the
    float64 rebuild; with gradients on, or attention dropout active in training, the softmax
    runs before ghost_head_aggregate."""
    from mmattn.ops import has_compiled_ops
    torch.manual_seed(0)
    block = ELSABlock(24, 3, kernel_size=7, group_width=4, lam=lam, gamma=gamma,
                      attn_drop=0.5).double().eval()
    _randomise(block)
    fused, unfused = [], []
    for name, calls in (('ghost_head_softmax_aggregate', fused),
                        ('ghost_head_aggregate', unfused)):
        original = getattr(elsa_module, name)
        monkeypatch.setattr(elsa_module, name,
                            lambda *a, _f=original, _c=calls, **k: _c.append(1) or _f(*a, **k))
    x = torch.randn(2, 9 * 11, 24, dtype=torch.float64)
    ref = reference_block(x, (9, 11), block.state_dict(), heads=3, k=7, dim_qk=16,
                          group_width=4, scale=1., lam=lam, gamma=gamma)
    with torch.no_grad():
        out = block(x, (9, 11))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)
    assert (len(fused), len(unfused)) == ((1, 0) if has_compiled_ops() else (0, 1))
    fused.clear(), unfused.clear()
    torch.testing.assert_close(block(x, (9, 11)), ref, rtol=1e-5, atol=1e-7)  # grad mode
    block.train()
    with torch.no_grad():
        torch.manual_seed(1)
        first = block(x, (9, 11))  # attention dropout must apply: two draws differ
        torch.manual_seed(2)
        second = block(x, (9, 11))
    assert (len(fused), len(unfused)) == (0, 3)
    assert not torch.allclose(first, second)


def test_inference_with_qk_scale_matches_the_spec_rebuild():
    """qk_scale != 1 (None: (dim / heads) ** -0.5): the fused inference folds the scale into
    attn.0's weights; float32 eval under no_grad and the training-mode path against the float64
    rebuild."""
    torch.manual_seed(3)
    block = ELSABlock(24, 3, kernel_size=5, group_width=4, qk_scale=None)
    _randomise(block)
    scale = block.attn.scale
    assert scale == pytest.approx(8**-0.5)
    x = torch.randn(1, 9 * 10, 24)
    ref = reference_block(x.double(), (9, 10), {n: t.double() for n, t in
                                                 block.state_dict().items()},
                          heads=3, k=5, dim_qk=16, group_width=4, scale=scale, lam=0, gamma=1.)
    tol = dict(rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    torch.testing.assert_close(block(x, (9, 10)).double(), ref, **tol)
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x, (9, 10)).double(), ref, **tol)


def test_block_matches_spec_rebuild_fp32_official_shapes():
    """Stage 0 of ELSA-Swin-T (d 96, 3 heads, dim_qk 64, group width 4) in fp32 against the fp64
    rebuild: errors within 1e-5 of the output's scale (spec O5)."""
    torch.manual_seed(1)
    block = ELSABlock(96, 3, kernel_size=7, group_width=4)
    assert block.attn.dim_qk == 64
    _randomise(block)
    x = torch.randn(1, 14 * 13, 96)
    ref = reference_block(x.double(), (14, 13), {k: v.double() for k, v in
                                                  block.state_dict().items()},
                          heads=3, k=7, dim_qk=64, group_width=4, scale=1., lam=0, gamma=1.)
    scale = ref.abs().max().item()
    torch.testing.assert_close(block(x, (14, 13)).double(), ref, rtol=1e-5, atol=1e-5 * scale)
    # inference: hadamard_conv_gelu and ghost_head_softmax_aggregate run their fused kernels
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x, (14, 13)).double(), ref, rtol=1e-5,
                                   atol=1e-5 * scale)


def test_official_parameter_shapes():
    """Spec 6.2, stage 0 of T and stage 2 of B."""
    t = ELSAAttention(96, 3, 7, group_width=4)
    shapes = {k: tuple(v.shape) for k, v in t.state_dict().items()}
    assert shapes == {
        'pre_proj.weight': (224, 96, 1, 1), 'pre_proj.bias': (224, ),
        'attn.0.weight': (64, 4, 7, 7), 'attn.0.bias': (64, ),
        'attn.2.weight': (147, 64, 1, 1), 'attn.2.bias': (147, ),
        'ghost_head': (96, 7, 7),
        'post_proj.weight': (96, 96), 'post_proj.bias': (96, )}
    b = ELSAAttention(512, 16, 7, group_width=8)
    assert b.dim_qk == 344 and b.attn[0].groups == 43
    assert tuple(b.pre_proj.weight.shape) == (1200, 512, 1, 1)
    assert tuple(b.attn[2].weight.shape) == (784, 344, 1, 1)
    both = ELSAAttention(16, 2, 3, group_width=4, lam=1, gamma=1.)
    assert tuple(both.ghost_head.shape) == (2, 16, 3, 3)
    assert ELSAAttention(16, 2, 3, group_width=4, lam=0, gamma=0.).ghost_head is None


@pytest.mark.parametrize('dim,gw,expected', [(96, 4, 64), (192, 4, 128), (384, 4, 256),
                                             (128, 8, 88), (256, 8, 176), (512, 8, 344)])
def test_dim_qk_rounding(dim, gw, expected):
    assert ELSAAttention(dim, 1, 3, group_width=gw).dim_qk == expected


def test_border_semantics_uniform_logits():
    """Spec V4: uniform logits, v = 1, no ghost: corner 16/49, edge centre 28/49, inside 1."""
    attn = ELSAAttention(8, 2, 7, group_width=4, lam=0, gamma=0.).double()
    with torch.no_grad():
        attn.attn[2].weight.zero_()
        attn.attn[2].bias.zero_()
        attn.pre_proj.weight.zero_()
        attn.pre_proj.bias.fill_(1.)
        attn.post_proj.weight.copy_(torch.eye(8))
        attn.post_proj.bias.zero_()
    out = attn(torch.randn(1, 13, 13, 8, dtype=torch.float64))[0, ..., 0]
    assert out[0, 0].item() == pytest.approx(16 / 49)
    assert out[0, 6].item() == pytest.approx(28 / 49)
    assert out[6, 6].item() == pytest.approx(1.)
    assert out[12, 12].item() == pytest.approx(16 / 49)


def test_ghost_matrix_handed_to_op_without_batch_copy(monkeypatch):
    """Spec V6: the (C, k, k) parameter reaches the op itself (no expand to the batch)."""
    attn = ELSAAttention(12, 3, 7, group_width=4)
    seen = {}
    real = elsa_module.ghost_head_aggregate

    def spy(v, a, mul, add, kernel_size, dilation):
        seen.update(mul=mul, add=add, a=a.shape, v=v.shape)
        return real(v, a, mul, add, kernel_size, dilation)

    monkeypatch.setattr(elsa_module, 'ghost_head_aggregate', spy)
    attn(torch.randn(5, 6, 7, 12))
    assert seen['mul'] is None
    assert seen['add'] is attn.ghost_head
    assert seen['a'] == (5, 3, 49, 6, 7) and seen['v'] == (5, 12, 6, 7)


@pytest.mark.parametrize('lam,gamma', [(1, 1.), (0, 1.), (2, 0.5)])
def test_ghost_gradient_matches_the_spec_rebuild(lam, gamma):
    """The ghost matrices' gradient (the compiled op's backward, summed over the batch) equals
    autograd through the plain-PyTorch rebuild of the official formulas, in float64."""
    torch.manual_seed(0)
    attn = ELSAAttention(8, 2, 3, group_width=4, lam=lam, gamma=gamma, qk_scale=1.).double()
    _randomise(attn)
    if lam:  # ghost ** lam: positive bases (the multiplicative matrix is ghost_head[0] with both)
        with torch.no_grad():
            (attn.ghost_head[0] if gamma else attn.ghost_head).abs_().add_(0.5)
    x = torch.randn(3, 4, 5, 8, dtype=torch.float64)
    upstream = torch.randn(3, 4, 5, 8, dtype=torch.float64)
    (attn(x) * upstream).sum().backward()
    sd = {name: p.detach().clone().requires_grad_(name == 'ghost_head')
          for name, p in attn.named_parameters()}
    ref = reference_attention(x, sd, heads=2, k=3, dim_qk=round_dim_qk(8, None, 4), group_width=4,
                              scale=1., lam=lam, gamma=gamma)
    (ref * upstream).sum().backward()
    assert attn.ghost_head.grad.abs().max() > 0
    torch.testing.assert_close(attn.ghost_head.grad, sd['ghost_head'].grad)


def test_scale_and_init():
    assert ELSAAttention(96, 3).scale == 1.
    assert ELSAAttention(96, 3, qk_scale=None).scale == pytest.approx(32**-0.5)
    torch.manual_seed(0)
    s = ELSAAttention(256, 8, 7).ghost_head
    assert abs(s.std().item() - 0.02) < 0.002 and s.abs().max().item() <= 2.
    o = ELSAAttention(256, 8, 7, lam=1, gamma=0.).ghost_head
    assert abs(o.std().item() - 1.) < 0.05


@pytest.mark.parametrize('kwargs,error', [
    (dict(dim=10, num_heads=3), ValueError),
    (dict(dim=12, num_heads=3, kernel_size=4), ValueError),
    (dict(dim=12, num_heads=3, dilation=0), ValueError),
    (dict(dim=12, num_heads=3, lam=0.5), TypeError),
    (dict(dim=12, num_heads=3, window_size=7), TypeError),  # official silently swallowed it
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        ELSAAttention(**kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match='x must be'):
        ELSAAttention(12, 3)(torch.randn(1, 12, 5, 5))
    with pytest.raises(ValueError, match='x must be'):
        ELSABlock(12, 3)(torch.randn(1, 20, 12), (4, 4))


def test_fallback_without_extension_matches_compiled(monkeypatch):
    """Spec V5: with the extension treated as absent the block runs (forward and backward)
    through the plain-PyTorch reference and agrees with the compiled op."""
    from mmattn.ops import ghost_head as ghost_module
    from mmattn.ops import has_compiled_ops
    torch.manual_seed(0)
    block = ELSABlock(16, 2, kernel_size=7, group_width=4).double()
    assert block.attn.dim_qk == 12  # floor(16 / 3) * 2 = 10, rounded up to the group width
    _randomise(block)
    x = torch.randn(2, 6 * 9, 16, dtype=torch.float64, requires_grad=True)
    results = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(ghost_module, 'has_compiled_ops', lambda: False)
        elif not has_compiled_ops():
            continue
        block.zero_grad()
        x.grad = None
        out = block(x, (6, 9))
        out.pow(2).sum().backward()
        results.append((out.detach(), x.grad.clone(), block.attn.ghost_head.grad.clone()))
    assert len(results) >= 1
    ref = reference_block(x.detach(), (6, 9), block.state_dict(), heads=2, k=7, dim_qk=12,
                          group_width=4, scale=1., lam=0, gamma=1.)
    for out, _, _ in results:
        torch.testing.assert_close(out, ref)
    if len(results) == 2:
        torch.testing.assert_close(results[0][1], results[1][1])
        torch.testing.assert_close(results[0][2], results[1][2])


def test_autocast_bfloat16_follows_value_dtype():
    """Spec O2: under autocast the op gets one dtype (v's) and the result stays close to fp32."""
    torch.manual_seed(0)
    attn = ELSAAttention(16, 2, 7, group_width=4)
    x = torch.randn(2, 8, 9, 16)
    ref = attn(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = attn(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_torch_compile_matches_eager():
    """The block compiles (inductor, the op's fake kernel and autograd) and matches eager."""
    torch.manual_seed(0)
    block = ELSABlock(12, 3, kernel_size=5, group_width=4)
    _randomise(block)
    x = torch.randn(2, 7 * 6, 12, requires_grad=True)
    compiled = torch.compile(block, backend='inductor', fullgraph=True)
    out_c = compiled(x, (7, 6))
    grad_c, = torch.autograd.grad(out_c.square().sum(), x)
    out_e = block(x, (7, 6))
    grad_e, = torch.autograd.grad(out_e.square().sum(), x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('bias', [True, False])
def test_pointwise_conv_nchw_matches_the_conv(bias):
    """attn.2 on the channels-last hidden map: one batched GEMM, NCHW-contiguous logits, the
    conv's values and gradients (float64)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 27, 1, bias=bias).double()
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    out = elsa_module.pointwise_conv_nchw(x, conv)
    assert out.is_contiguous()
    x_ref = x.detach().contiguous().requires_grad_()
    ref = F.conv2d(x_ref, conv.weight, conv.bias)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [x] + list(conv.parameters()), g)
    grads_ref = torch.autograd.grad(ref, [x_ref] + list(conv.parameters()), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kwargs', [dict(stride=2), dict(padding=1), dict(groups=3)], ids=str)
def test_pointwise_conv_nchw_other_convs_run_the_conv(kwargs):
    """Strided, padded or grouped 1x1 convs are not one GEMM: the conv itself runs."""
    conv = torch.nn.Conv2d(12, 9, 1, **kwargs).double()
    x = torch.randn(2, 12, 6, 7, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(elsa_module.pointwise_conv_nchw(x, conv), conv(x), rtol=0, atol=0)
