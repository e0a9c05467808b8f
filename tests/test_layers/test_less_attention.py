"""LaViT layers against float64 oracles written from ``specs/lavit.md`` (L2-L6): pooled keys,
VA and LA attention (Theta along keys, Psi along queries), attention residual, DP loss."""
import math

import pytest
import torch

from mmattn.layers import (AttentionResidual, LaViTAttentionLA, LaViTAttentionVA, LaViTBlock,
                           diagonality_loss)
from mmattn.layers.less_attention import pool_attention_to_cells

D = torch.float64


# ---------------------------------------------------------------- oracles (spec formulas)
def ref_adaptive_pool(img, p):
    """PyTorch's adaptive average pooling cells: rows floor(i H / P) .. ceil((i + 1) H / P)."""
    _, _, h, w = img.shape
    rows = []
    for i in range(p):
        r0, r1 = (i * h) // p, -(-((i + 1) * h) // p)
        cols = []
        for j in range(p):
            c0, c1 = (j * w) // p, -(-((j + 1) * w) // p)
            cols.append(img[:, :, r0:r1, c0:c1].mean(dim=(2, 3)))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)  # (B, C, P, P)


def ref_pooled_tokens(attn, u, hw):
    """``GELU(LN(Conv1x1(AdaptiveAvgPool2d(P)(u))))``, row-major cells: (B, P*P, C)."""
    b, _, c = u.shape
    img = u.reshape(b, *hw, c).permute(0, 3, 1, 2)
    z = ref_adaptive_pool(img, attn.pool_size).flatten(2).transpose(1, 2)
    z = z @ attn.sr.weight[:, :, 0, 0].T + attn.sr.bias
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean)**2).mean(-1, keepdim=True)
    z = (z - mean) / torch.sqrt(var + attn.norm.eps) * attn.norm.weight + attn.norm.bias
    return 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))


def ref_heads(t, h):
    """(B, L, C) -> (B, h, L, C / h), head ``g`` owning channels ``g d .. (g + 1) d``."""
    b, length, c = t.shape
    return t.reshape(b, length, h, c // h).transpose(1, 2)


def ref_merge_and_project(attn_mod, a, v):
    out = a @ v  # (B, h, N, d)
    b, h, length, d = out.shape
    out = out.transpose(1, 2).reshape(b, length, h * d)
    return out @ attn_mod.proj.weight.T + attn_mod.proj.bias


def ref_va(attn, u, hw, residual=None):
    h, c = attn.num_heads, attn.dim
    z = ref_pooled_tokens(attn, u, hw)
    q = ref_heads(u @ attn.q.weight.T + attn.q.bias, h)
    kv = z @ attn.kv.weight.T + attn.kv.bias
    k, v = ref_heads(kv[..., :c], h), ref_heads(kv[..., c:], h)
    s = q @ k.transpose(-2, -1) / math.sqrt(c // h)
    if residual is not None:
        s = s + residual
    a = torch.softmax(s, -1)
    return ref_merge_and_project(attn, a, v), s, a


def ref_theta(theta, s):
    """``Theta(S)[..., j] = sum_i (I + dTheta)[j, i] S[..., i] + b[j]``."""
    n = s.shape[-1]
    w = torch.eye(n, dtype=s.dtype) + theta.weight_delta
    return torch.einsum('ji,bhqi->bhqj', w, s) + theta.bias


def ref_psi(psi, s, hw):
    """Explicit 3x3 stencil over the query grid, zero padding, kernel ``delta + dPsi``."""
    b, h, length, n = s.shape
    rows, cols = hw
    grid = s.reshape(b, h, rows, cols, n)
    out = torch.zeros_like(grid)
    kernel = psi.weight_delta.reshape(h, n, 3, 3).clone()
    kernel[:, :, 1, 1] += 1
    for y in range(rows):
        for x in range(cols):
            acc = psi.bias.reshape(h, n).expand(b, h, n).clone()
            for dy in range(3):
                for dx in range(3):
                    yy, xx = y + dy - 1, x + dx - 1
                    if 0 <= yy < rows and 0 <= xx < cols:
                        acc = acc + kernel[:, :, dy, dx] * grid[:, :, yy, xx]
            out[:, :, y, x] = acc
    return out.reshape(b, h, length, n)


def ref_la(attn, u, hw, prev):
    z = ref_pooled_tokens(attn, u, hw)
    v = ref_heads(z @ attn.v.weight.T + attn.v.bias, attn.num_heads)
    s = ref_psi(attn.psi, ref_theta(attn.theta, prev), hw)
    a = torch.softmax(s, -1)
    return ref_merge_and_project(attn, a, v), s, a


def randomise(module, scale=0.3):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return module


# ---------------------------------------------------------------- VA / LA
@pytest.mark.parametrize('hw,pool', [((3, 5), 2), ((5, 4), 3), ((2, 2), 3)])
def test_va_matches_reference(hw, pool):
    """V4 (also a grid smaller than P: overlapping cells)."""
    attn = randomise(LaViTAttentionVA(8, 2, pool)).to(D)
    torch.manual_seed(2)
    u = torch.randn(2, hw[0] * hw[1], 8, dtype=D)
    res = torch.randn(2, 2, hw[0] * hw[1], pool * pool, dtype=D)
    for r in (None, res):
        out, logits, a = attn(u, hw, r)
        ref_out, ref_s, ref_a = ref_va(attn, u, hw, r)
        assert logits.shape == (2, 2, hw[0] * hw[1], pool * pool)
        torch.testing.assert_close(logits, ref_s)
        torch.testing.assert_close(a, ref_a)
        torch.testing.assert_close(out, ref_out)


@pytest.mark.parametrize('hw,pool', [((3, 5), 2), ((4, 4), 3)])
def test_la_matches_softmax_psi_theta_times_v(hw, pool):
    """V5: the LA output is proj(softmax(Psi(Theta(previous logits))) V), from the formulas."""
    attn = randomise(LaViTAttentionLA(8, 2, pool)).to(D)
    assert attn.theta.weight_delta.abs().min() > 0 and attn.psi.weight_delta.abs().min() > 0
    torch.manual_seed(3)
    u = torch.randn(2, hw[0] * hw[1], 8, dtype=D)
    prev = torch.randn(2, 2, hw[0] * hw[1], pool * pool, dtype=D)
    out, logits, a = attn(u, hw, prev)
    ref_out, ref_s, ref_a = ref_la(attn, u, hw, prev)
    assert logits.shape == (2, 2, hw[0] * hw[1], pool * pool)
    torch.testing.assert_close(logits, ref_s)
    torch.testing.assert_close(a, ref_a)
    torch.testing.assert_close(out, ref_out)


def test_la_has_no_query_or_key_projection():
    attn = LaViTAttentionLA(64, 2, 7)
    names = {n for n, _ in attn.named_parameters()}
    assert names == {'v.weight', 'v.bias', 'sr.weight', 'sr.bias', 'norm.weight', 'norm.bias',
                     'theta.weight_delta', 'theta.bias', 'psi.weight_delta', 'psi.bias',
                     'proj.weight', 'proj.bias'}
    shapes = {n: tuple(p.shape) for n, p in attn.named_parameters()}
    assert shapes['theta.weight_delta'] == (49, 49) and shapes['theta.bias'] == (49, )
    assert shapes['psi.weight_delta'] == (98, 1, 3, 3) and shapes['psi.bias'] == (98, )
    va = {n for n, _ in LaViTAttentionVA(64, 2, 7).named_parameters()}
    assert {'q.weight', 'kv.weight'} <= va and 'v.weight' not in va


def test_la_gradcheck():
    attn = randomise(LaViTAttentionLA(4, 2, 2), 0.5).to(D)
    torch.manual_seed(4)
    u = torch.randn(1, 6, 4, dtype=D, requires_grad=True)
    prev = torch.randn(1, 2, 6, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: attn(a, (2, 3), b)[0], (u, prev))


def test_identity_start():
    """V2: at initialisation an LA layer's logits equal its predecessor's exactly."""
    attn = LaViTAttentionLA(16, 2, 3)
    torch.manual_seed(5)
    prev = torch.randn(2, 2, 20, 9)
    _, logits, a = attn(torch.randn(2, 20, 16), (4, 5), prev)
    assert torch.equal(logits, prev)
    torch.testing.assert_close(a, prev.softmax(-1))


def test_la_rejects_wrong_logits():
    attn = LaViTAttentionLA(16, 2, 3)
    with pytest.raises(ValueError, match='prev_logits'):
        attn(torch.randn(1, 20, 16), (4, 5), torch.randn(1, 2, 20, 4))


@pytest.mark.parametrize('kwargs,match', [
    (dict(dim=10, num_heads=3), 'dim'), (dict(dim=8, num_heads=0), 'num_heads'),
    (dict(dim=8, num_heads=2, pool_size=1), 'pool_size')])
def test_bad_attention_arguments(kwargs, match):
    for cls in (LaViTAttentionVA, LaViTAttentionLA):
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)


# ---------------------------------------------------------------- attention residual
def ref_residual(mod, logits, in_hw):
    b, h_in, _, n = logits.shape
    img = logits.transpose(-2, -1).reshape(b, h_in * n, *in_hw)
    rows, cols = -(-in_hw[0] // 2), -(-in_hw[1] // 2)
    dw = torch.zeros(b, h_in * n, rows, cols, dtype=logits.dtype)
    for y in range(rows):
        for x in range(cols):
            acc = mod.dw.bias.expand(b, -1).clone()
            for ky in range(3):
                for kx in range(3):
                    yy, xx = 2 * y + ky - 1, 2 * x + kx - 1
                    if 0 <= yy < in_hw[0] and 0 <= xx < in_hw[1]:
                        acc = acc + mod.dw.weight[:, 0, ky, kx] * img[:, :, yy, xx]
            dw[:, :, y, x] = acc
    dw = dw.reshape(b, h_in, n, rows * cols)
    mixed = torch.einsum('gk,bknp->bgpn', mod.pw, dw) * mod.gamma[None, :, None, None]
    return mixed, (rows, cols)


@pytest.mark.parametrize('in_hw', [(5, 7), (4, 4), (1, 3)])
def test_attention_residual_matches_reference(in_hw):
    """V6: odd grids give ceil(H / 2); equality with an explicit reference."""
    mod = randomise(AttentionResidual(2, 3, 2)).to(D)
    torch.manual_seed(6)
    logits = torch.randn(2, 2, in_hw[0] * in_hw[1], 4, dtype=D)
    out, out_hw = mod(logits, in_hw)
    ref, ref_hw = ref_residual(mod, logits, in_hw)
    assert out_hw == ref_hw == (math.ceil(in_hw[0] / 2), math.ceil(in_hw[1] / 2))
    assert out.shape == (2, 3, out_hw[0] * out_hw[1], 4)
    torch.testing.assert_close(out, ref)


def test_attention_residual_init_and_gamma_scaling():
    mod = AttentionResidual(5, 8, 7, init_value=1e-2)
    assert torch.all(mod.dw.weight == 1 / 9) and not mod.dw.bias.any()
    assert mod.pw.shape == (8, 5) and torch.allclose(mod.pw, torch.full((8, 5), 0.2))
    assert torch.all(mod.gamma == 1e-2)
    # initial residual: 1 % of the smoothed head average (interior pixel of a constant map)
    const = torch.ones(1, 5, 36, 49)
    out, _ = mod(const, (6, 6))
    torch.testing.assert_close(out[0, :, 4], torch.full((8, 49), 1e-2))
    torch.manual_seed(7)
    logits = torch.randn(1, 5, 12, 49)
    out1, _ = mod(logits, (3, 4))
    with torch.no_grad():
        mod.gamma.mul_(3)
    out3, _ = mod(logits, (3, 4))
    torch.testing.assert_close(out3, 3 * out1)


# ---------------------------------------------------------------- DP loss
def ref_dp(a_bar):
    n = a_bar.shape[-1]
    asym = (a_bar - a_bar.transpose(-2, -1)).abs().mean()
    eye = torch.eye(n, dtype=torch.bool)
    off = (a_bar * ~eye).sum(-1)
    diag = a_bar.diagonal(dim1=-2, dim2=-1)
    return asym + ((off - (n - 1) * diag) / (n - 1)).mean()


def test_cells_average_the_query_axis():
    """A 2P x 2P grid: each cell is the mean of a 2 x 2 block of query rows."""
    torch.manual_seed(8)
    p = 3
    a = torch.randn(2, 2, 36, 9, dtype=D).softmax(-1)
    a_bar = pool_attention_to_cells(a, (6, 6), p)
    grid = a.reshape(2, 2, 6, 6, 9)
    for i in range(p * p):
        r, c = divmod(i, p)
        block = grid[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(2, 2, 4, 9).mean(2)
        torch.testing.assert_close(a_bar[:, :, i], block)
    torch.testing.assert_close(a_bar.sum(-1), torch.ones(2, 2, 9, dtype=D))
    torch.testing.assert_close(diagonality_loss(a, (6, 6), p), ref_dp(a_bar).float())


def test_dp_loss_values_and_bounds():
    """V7: -1 for A_bar = I, 0 for uniform attention, bounded on random attention, rows of
    A_bar sum to 1 on a grid smaller than P."""
    n = 49
    eye = torch.eye(n).expand(2, 3, n, n)  # grid 7x7 = P x P: query cell i attends to key i
    torch.testing.assert_close(diagonality_loss(eye, (7, 7), 7), torch.tensor(-1.))
    uniform = torch.full((2, 3, 35, n), 1 / n)
    torch.testing.assert_close(diagonality_loss(uniform, (5, 7), 7), torch.tensor(0.),
                               atol=1e-7, rtol=0)
    torch.manual_seed(9)
    small = (torch.randn(2, 2, 20, n) * 3).softmax(-1)
    a_bar = pool_attention_to_cells(small, (4, 5), 7)
    torch.testing.assert_close(a_bar.sum(-1), torch.ones(2, 2, n))
    for scale in (0.1, 1., 10., 100.):
        a = (torch.randn(2, 2, 63, n) * scale).softmax(-1)
        loss = diagonality_loss(a, (7, 9), 7)
        assert -1 <= loss.item() <= 2 / n + 1 / (n - 1)


def test_raising_a_diagonal_entry_lowers_the_loss():
    torch.manual_seed(10)
    n = 49
    a = torch.randn(1, 1, n, n).softmax(-1)  # 7x7 grid: A_bar = A
    base = diagonality_loss(a, (7, 7), 7)
    for i in (0, 17, 48):
        b = a.clone()
        b[0, 0, i, i] += 0.2
        b = b / b.sum(-1, keepdim=True)
        assert diagonality_loss(b, (7, 7), 7) < base


def test_dp_loss_fitting_lowers_asymmetry_and_raises_the_diagonal():
    """A small fitting run: minimising the DP loss of an LA block (its Theta/Psi and values
    only) makes the pooled attention more symmetric and more diagonal."""
    torch.manual_seed(11)
    block = LaViTBlock(16, 2, 2., vanilla=False, pool_size=3)
    x = torch.randn(2, 36, 16)
    prev = torch.randn(2, 2, 36, 9) * 2

    def stats():
        with torch.no_grad():
            a = block.attn(block.norm1(x), (6, 6), prev)[2]
            a_bar = pool_attention_to_cells(a, (6, 6), 3)
            return ((a_bar - a_bar.transpose(-2, -1)).abs().mean().item(),
                    a_bar.diagonal(dim1=-2, dim2=-1).mean().item())

    asym0, diag0 = stats()
    opt = torch.optim.Adam(block.parameters(), lr=0.02)
    for _ in range(40):
        opt.zero_grad()
        block(x, (6, 6), prev, with_dp=True)[2].backward()
        opt.step()
    asym1, diag1 = stats()
    assert asym1 < 0.6 * asym0 and diag1 > diag0 + 0.3


# ---------------------------------------------------------------- block
def test_block_outputs_and_checkpointing():
    """V9 at block level: with_cp gives the same outputs, DP term and gradients."""
    torch.manual_seed(12)
    plain = randomise(LaViTBlock(16, 2, 2., vanilla=False, pool_size=3), 0.2)
    ckpt = LaViTBlock(16, 2, 2., vanilla=False, pool_size=3, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 20, 16, requires_grad=True)
    prev = torch.randn(2, 2, 20, 9)
    results = []
    for block in (plain, ckpt):
        out, logits, dp = block(x, (4, 5), prev, with_dp=True)
        assert logits.shape == (2, 2, 20, 9) and dp.dim() == 0
        (out.square().mean() + dp).backward()
        results.append((out, logits, dp))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    va = LaViTBlock(16, 2, 2., vanilla=True, pool_size=3)
    assert va(x, (4, 5), with_dp=True)[2] is None  # the DP term belongs to LA layers
    with pytest.raises(ValueError, match='logits'):
        plain(x, (4, 5))
    with pytest.raises(ValueError, match='x must be'):
        plain(x, (4, 4), prev)
