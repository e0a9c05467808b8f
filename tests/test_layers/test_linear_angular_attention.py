"""LinearAngularAttention against a plain-PyTorch reimplementation of the released forward pass
(spec 3.2: bare norms, no epsilon), state-dict layout, branch invariance, spatial2d, MViT
pooling."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmattn.layers import LinearAngularAttention, MultiScaleLinearAngularAttention


def released_forward(x, w, num_heads, sparse_reg=False, tau=0.02, alpha=1.0):
    """The official LinAngularAttention.forward written from spec 3.2 with explicit tensors:
    qkv split (3, B, h, L, d); masked softmax from un-normalised q, k; bare L2 norms; 0.5 v +
    q^ (k^T v) / pi; output normalised, then the (9, 1) depthwise sequence conv of v added."""
    b, length, c = x.shape
    d = c // num_heads
    qkv = x @ w['qkv.weight'].T
    if 'qkv.bias' in w:
        qkv = qkv + w['qkv.bias']
    q, k, v = qkv.reshape(b, length, 3, num_heads, d).permute(2, 0, 3, 1, 4)
    out = 0.5 * v
    if sparse_reg:
        attn = torch.softmax(q * d**-0.5 @ k.transpose(-2, -1), dim=-1)
        out = out + alpha * (attn * (attn > tau).to(attn.dtype)) @ v
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    out = out + (1 / math.pi) * (q @ (k.transpose(-2, -1) @ v))
    out = out / out.norm(dim=-1, keepdim=True)
    # depthwise conv along the sequence, one 9-tap kernel per head, zero padding 4
    taps = w['dconv.weight'][:, 0, :, 0]  # (h, 9)
    ksize = taps.shape[1]
    vp = F.pad(v, (0, 0, ksize // 2, ksize // 2))
    conv = sum(taps[None, :, t, None, None] * vp[:, :, t:t + length] for t in range(ksize))
    out = (out + conv).transpose(1, 2).reshape(b, length, c)
    return out @ w['proj.weight'].T + w['proj.bias']


def _module(c=256, h=8, **kwargs):
    torch.manual_seed(0)
    m = LinearAngularAttention(c, h, qkv_bias=True, **kwargs)
    with torch.no_grad():
        m.dconv.weight.normal_()
    return m


@pytest.mark.parametrize('length', [196, 197])
@pytest.mark.parametrize('branch', [False, True])
def test_matches_released_forward(length, branch):
    m = _module(sparse_reg=branch).train()  # train mode: the branch runs when enabled
    m.sparse_weight = 1.0
    x = torch.randn(2, length, 256)
    w = {k: v.double() for k, v in m.state_dict().items()}
    ref = released_forward(x.double(), w, 8, sparse_reg=branch)
    out = m(x)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    if branch:  # the branch contributes: the branch-off reference differs
        assert not torch.allclose(out.double(), released_forward(x.double(), w, 8), atol=1e-4)


def test_alpha_scales_the_branch():
    m = _module(sparse_reg=True, sparse_threshold=0.005).train()
    m.sparse_weight = 0.3
    x = torch.randn(1, 50, 256)
    w = {k: v.double() for k, v in m.state_dict().items()}
    ref = released_forward(x.double(), w, 8, sparse_reg=True, tau=0.005, alpha=0.3)
    torch.testing.assert_close(m(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_eps_keeps_zero_rows_finite():
    """A token whose q, k, v are exactly zero: the bare-norm definition gives NaN everywhere
    (0/0 enters the shared context), mmattn stays finite; with the conv taps zeroed, the zero
    token drops out of the context, so the other tokens equal the definition without it, and
    the zero token itself outputs proj(0)."""
    m = _module()
    with torch.no_grad():
        m.qkv.bias.zero_()
        m.dconv.weight.zero_()
    x = torch.randn(1, 20, 256)
    x[:, 3] = 0.
    w = {k: v.double() for k, v in m.state_dict().items()}
    assert torch.isnan(released_forward(x.double(), w, 8)).all()
    out = m(x)
    assert torch.isfinite(out).all()
    keep = [i for i in range(20) if i != 3]
    ref = released_forward(x[:, keep].double(), w, 8)
    torch.testing.assert_close(out[:, keep].double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0, 3], m.proj.bias)


@pytest.mark.parametrize('mode,shape', [('seq1d', (8, 1, 9, 1)), ('spatial2d', (8, 1, 3, 3))])
@pytest.mark.parametrize('qkv_bias', [False, True])
def test_state_dict_keys(mode, shape, qkv_bias):
    m = LinearAngularAttention(256, 8, qkv_bias=qkv_bias, dconv_mode=mode)
    sd = m.state_dict()
    expected = {'qkv.weight', 'proj.weight', 'proj.bias', 'dconv.weight'} | \
        ({'qkv.bias'} if qkv_bias else set())
    assert set(sd) == expected
    assert tuple(sd['dconv.weight'].shape) == shape
    assert tuple(sd['qkv.weight'].shape) == (768, 256)
    assert not list(m.buffers())


def test_branch_invariance():
    on, off = _module(sparse_reg=True), _module(sparse_reg=False)
    on.sparse_weight = 0.7
    assert on.state_dict().keys() == off.state_dict().keys()
    for a, b in zip(on.state_dict().values(), off.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(2, 30, 256)
    on.eval(), off.eval()
    assert not on.branch_active()
    assert torch.equal(on(x), off(x))
    on.train(), off.train()
    assert not torch.allclose(on(x), off(x))
    on.sparse_weight = 0.
    assert not on.branch_active()
    assert torch.equal(on(x), off(x))


def test_branch_off_never_builds_the_token_map(monkeypatch):
    """Without the branch no L x L tensor exists: the softmax is never called."""
    m = _module(sparse_reg=True).eval()
    calls, orig = [], torch.Tensor.softmax
    monkeypatch.setattr(torch.Tensor, 'softmax',
                        lambda self, *a, **k: calls.append(self.shape) or orig(self, *a, **k))
    m(torch.randn(1, 40, 256))
    assert not calls
    m.train()
    m(torch.randn(1, 40, 256))
    assert calls and tuple(calls[0][-2:]) == (40, 40)


def test_missing_hook_warns_once(monkeypatch):
    import mmattn.layers.linear_angular_attention as mod
    messages = []
    monkeypatch.setattr(mod, 'print_log', lambda msg, **kw: messages.append((msg, kw)))
    m = _module(sparse_reg=True).train()
    m(torch.randn(1, 10, 256))
    m(torch.randn(1, 10, 256))
    assert len(messages) == 1 and 'CastlingSwitchHook' in messages[0][0]
    hooked = _module(sparse_reg=True).train()
    hooked.sparse_weight = 1.0  # set by a hook: no warning
    hooked(torch.randn(1, 10, 256))
    assert len(messages) == 1


def test_spatial2d_conv_term():
    """Grid of ones with a class token: interior conv term = sum of the head's taps, class
    token 0; seq1d and spatial2d differ for W > 1."""
    torch.manual_seed(0)
    m = LinearAngularAttention(16, 2, dconv_mode='spatial2d')
    with torch.no_grad():
        m.dconv.weight.normal_()
    v = torch.ones(1, 2, 1 + 5 * 6, 8)
    conv = m._conv(v, (5, 6), num_extra_tokens=1)
    assert torch.equal(conv[:, :, 0], torch.zeros(1, 2, 8))
    grid = conv[:, :, 1:].reshape(1, 2, 5, 6, 8)
    taps = m.dconv.weight.sum(dim=(1, 2, 3))
    torch.testing.assert_close(grid[0, :, 2, 3, 0], taps)
    seq = LinearAngularAttention(16, 2)
    x = torch.randn(1, 31, 16)
    with torch.no_grad():
        seq.qkv.load_state_dict(m.qkv.state_dict())
        seq.proj.load_state_dict(m.proj.state_dict())
        seq.dconv.weight.copy_(m.dconv.weight[:, :, :, 0].repeat(1, 1, 3)[..., None])
    assert not torch.allclose(seq(x), m(x, (5, 6), 1))
    with pytest.raises(ValueError, match='hw_shape'):
        m(x)


def _pool_ref(x, conv, norm, hw):
    b, h, length, d = x.shape
    y = conv(x.reshape(b * h, *hw, d).permute(0, 3, 1, 2))
    out_hw = y.shape[-2:]
    return norm(y.reshape(b, h, d, -1).transpose(2, 3)), tuple(out_hw)


@pytest.mark.parametrize('hw,stride_q,stride_kv', [((8, 8), 1, 4), ((8, 8), 2, 2),
                                                   ((7, 9), 2, 1), ((6, 6), 1, 1)])
def test_multiscale_matches_d4_steps(hw, stride_q, stride_kv):
    """D4 steps 1-8 written out: pool + LayerNorm q/k/v, v resampled to the q grid by adaptive
    average pooling, linear-angular terms, normalise, seq conv on the q grid, + q, proj."""
    torch.manual_seed(0)
    m = MultiScaleLinearAngularAttention(12, 16, 2, stride_q=stride_q, stride_kv=stride_kv).double()
    with torch.no_grad():
        m.dconv.weight.normal_()
        for n in ('q', 'k', 'v'):
            getattr(m, f'norm_{n}').weight.normal_()
    x = torch.randn(2, hw[0] * hw[1], 12, dtype=torch.float64)
    out, q_hw = m(x, hw)
    b = 2
    q, k, v = (x @ m.qkv.weight.T + m.qkv.bias).reshape(b, -1, 3, 2, 8).permute(2, 0, 3, 1, 4)
    q, qhw = _pool_ref(q, m.pool_q, m.norm_q, hw)
    k, _ = _pool_ref(k, m.pool_k, m.norm_k, hw)
    v, kvhw = _pool_ref(v, m.pool_v, m.norm_v, hw)
    assert q_hw == qhw
    vq = F.adaptive_avg_pool2d(v.reshape(b * 2, *kvhw, 8).permute(0, 3, 1, 2), qhw)
    vq = vq.reshape(b, 2, 8, -1).transpose(2, 3)
    assert vq.shape[2] == qhw[0] * qhw[1]
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    y = 0.5 * vq + qn @ (kn.transpose(-2, -1) @ v) / math.pi
    y = y / y.norm(dim=-1, keepdim=True)
    taps = m.dconv.weight[:, 0, :, 0]
    lq = vq.shape[2]
    vp = F.pad(vq, (0, 0, 4, 4))
    y = y + sum(taps[None, :, t, None, None] * vp[:, :, t:t + lq] for t in range(9)) + q
    ref = y.transpose(1, 2).reshape(b, lq, 16) @ m.proj.weight.T + m.proj.bias
    torch.testing.assert_close(out, ref)


def test_autocast_bf16_close_to_fp32():
    m = _module(c=64, h=2)
    x = torch.randn(1, 4096, 64)
    ref = m(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = m(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize('kwargs,match', [
    (dict(in_channels=10, num_heads=3), 'num_heads'),
    (dict(in_channels=0), 'in_channels'),
    (dict(in_channels=16, num_heads=2, res_kernel_size=4), 'res_kernel_size'),
    (dict(in_channels=16, num_heads=2, dconv_mode='conv3d'), 'dconv_mode'),
    (dict(in_channels=16, num_heads=2, sparse_threshold=1.5), 'sparse_threshold'),
    (dict(in_channels=16, num_heads=2, norm_eps=0.), 'norm_eps'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearAngularAttention(**kwargs)


def test_bad_sparse_weight():
    with pytest.raises(ValueError, match='sparse_weight'):
        LinearAngularAttention(16, 2).sparse_weight = 1.5


def test_sequence_conv_equals_the_released_conv2d():
    from mmattn.layers.linear_angular_attention import SequenceDepthwiseConv
    torch.manual_seed(0)
    conv = SequenceDepthwiseConv(3, 9)
    ref = torch.nn.Conv2d(3, 3, (9, 1), padding=(4, 0), groups=3, bias=False)
    ref.load_state_dict(conv.state_dict())
    v = torch.randn(2, 3, 50, 8, requires_grad=True)
    torch.testing.assert_close(conv(v), ref(v))
    conv(v).square().sum().backward()
    g = conv.weight.grad.clone()
    ref(v).square().sum().backward()
    torch.testing.assert_close(g, ref.weight.grad)
    # the traced path (FLOP counters, ONNX) is the convolution itself
    traced = torch.jit.trace(conv, (v.detach(), ))
    torch.testing.assert_close(traced(v.detach()), ref(v.detach()))
    assert 'aten::_convolution' in str(traced.graph)
