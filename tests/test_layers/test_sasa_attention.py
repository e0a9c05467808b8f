"""SASA attention layer and stem against the paper's formulas (specs/sasa_resnet.md V1-V8)."""
import pytest
import torch
import torch.nn.functional as F

from mmattn.layers import SASAAttention, SASAStem
from mmattn.layers.sasa_attention import avg_pool_2x2
from mmattn.ops import concat_relative_embedding, has_compiled_ops, na2d

F64 = dict(dtype=torch.float64)


def sasa_unfold_reference(layer: SASAAttention, x: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 3 with unfold: centred k x k window, out-of-image taps masked, logits
    q.k + q[:d/2].rel_h[a-i] + q[d/2:].rel_w[b-j], no scaling; then the optional 2x2 avg-pool."""
    B, C, H, W = x.shape
    h, k, d = layer.num_heads, layer.kernel_size, layer.head_dim
    q, key, v = F.conv2d(x, layer.qkv.weight).split(C, dim=1)
    unfold = lambda t: F.unfold(t, k, padding=k // 2).view(B, h, d, k * k, H, W)  # noqa: E731
    keys, values = unfold(key), unfold(v)
    valid = F.unfold(torch.ones(1, 1, H, W, dtype=x.dtype), k, padding=k // 2).view(k * k, H, W) > 0
    q = q.view(B, h, d, 1, H, W)
    logits = (q * keys).sum(2)  # (B, h, k*k, H, W)
    rows = torch.einsum('bhdij,hud->bhuij', q[:, :, :d // 2, 0], layer.rel_h)  # (B,h,k,H,W)
    cols = torch.einsum('bhdij,hvd->bhvij', q[:, :, d // 2:, 0], layer.rel_w)
    logits = logits + (rows[:, :, :, None] + cols[:, :, None, :]).reshape(B, h, k * k, H, W)
    logits = logits.masked_fill(~valid, float('-inf'))
    out = (logits.softmax(2).unsqueeze(2) * values).sum(3).reshape(B, C, H, W)
    if layer.stride == 2:
        return F.avg_pool2d(out, 2, 2, ceil_mode=True, count_include_pad=False)
    return out


@pytest.mark.parametrize('size', [(5, 5), (8, 7), (13, 11), (3, 4)], ids=str)
@pytest.mark.parametrize('kernel_size', [3, 5, 7, 9, 11])
def test_layer_matches_unfold_reference(size, kernel_size):
    torch.manual_seed(kernel_size)
    layer = SASAAttention(16, num_heads=2, kernel_size=kernel_size).to(**F64)  # head dim 8
    x = torch.randn(2, 16, *size, **F64, requires_grad=True)
    out, ref = layer(x), sasa_unfold_reference(layer, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    params = [x, layer.qkv.weight, layer.rel_h, layer.rel_w]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('head_dim', [8, 16, 32, 64])
def test_layer_head_dims(head_dim):
    torch.manual_seed(0)
    layer = SASAAttention(2 * head_dim, num_heads=2, kernel_size=7).to(**F64)
    x = torch.randn(1, 2 * head_dim, 6, 9, **F64)
    torch.testing.assert_close(layer(x), sasa_unfold_reference(layer, x), rtol=1e-10,
                               atol=1e-10)


@pytest.mark.skipif(not has_compiled_ops(), reason='mmattn._C is not built')
@pytest.mark.parametrize('head_dim, stride, dtype', [(8, 1, torch.float64), (16, 2, torch.float64),
                                                     (32, 1, torch.float32),
                                                     (64, 2, torch.float32)])
def test_inference_takes_the_two_tables(head_dim, stride, dtype, record_ops):
    """Without gradients the layer hands na2d_split_rpe its rel_h / rel_w (no concatenated
    table; mmattn::na2d_split_rpe runs); the output is still the paper's."""
    torch.manual_seed(head_dim)
    layer = SASAAttention(2 * head_dim, num_heads=2, kernel_size=7, stride=stride).to(**F64)
    x = torch.randn(1, 2 * head_dim, 10, 9, **F64)
    expect = sasa_unfold_reference(layer, x).detach()
    layer.to(dtype).eval()
    with record_ops() as rec, torch.no_grad():
        out = layer(x.to(dtype))
    assert 'mmattn::na2d_split_rpe' in rec.ops and 'aten::cat' not in rec.ops
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), expect, rtol=tol, atol=tol)


@pytest.mark.skipif(not has_compiled_ops(), reason='mmattn._C is not built')
def test_training_takes_the_split_training_op(record_ops):
    """With gradients (float32/float64 on the CPU) the layer trains through
    mmattn::na2d_split_rpe_train: no concatenated table, the paper's output and gradients."""
    torch.manual_seed(1)
    layer = SASAAttention(16, num_heads=2, kernel_size=5).to(**F64).train()
    x = torch.randn(2, 16, 7, 6, **F64, requires_grad=True)
    with record_ops() as rec:
        out = layer(x)
    assert 'mmattn::na2d_split_rpe_train' in rec.ops and 'aten::cat' not in rec.ops
    ref = sasa_unfold_reference(layer, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    params = [x, layer.qkv.weight, layer.rel_h, layer.rel_w]
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_rpe_path_equals_bias_path():
    """V2: q.r through na2d's rpe argument equals the same term passed as a per-query bias."""
    torch.manual_seed(0)
    B, h, H, W, d, k = 2, 4, 9, 11, 8, 7
    q, key, v = (torch.randn(B, h, H, W, d, requires_grad=True) for _ in range(3))
    rel_h = torch.randn(h, k, d // 2, requires_grad=True)
    rel_w = torch.randn(h, k, d // 2, requires_grad=True)
    rpe = torch.cat([rel_h[:, :, None].expand(h, k, k, d // 2),
                     rel_w[:, None].expand(h, k, k, d // 2)], -1)
    bias = (torch.einsum('bhijd,hud->bhiju', q[..., :d // 2], rel_h)[..., :, None]
            + torch.einsum('bhijd,hvd->bhijv', q[..., d // 2:], rel_w)[..., None, :])
    out_rpe = na2d(q, key, v, k, rpe=rpe, scale=1.0)
    out_bias = na2d(q, key, v, k, bias=bias.reshape(B, h, H, W, k * k), scale=1.0)
    torch.testing.assert_close(out_rpe, out_bias, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out_rpe)
    params = [q, key, v, rel_h, rel_w]
    for a, b in zip(torch.autograd.grad(out_rpe, params, g), torch.autograd.grad(out_bias, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('pos, slots', [((0, 0), 16), ((0, 5), 28), ((5, 5), 49)],
                         ids=['corner', 'edge', 'inside'])
def test_mask_semantics(pos, slots):
    """V3: with q = 0 the attention is uniform over exactly the valid taps of the window."""
    k, H, W = 7, 11, 11
    q = torch.zeros(1, 1, H, W, 2, **F64)
    key = torch.randn(1, 1, H, W, 2, **F64)
    i, j = pos
    for (pi, pj) in [(i, j), (min(i + 3, H - 1), min(j + 3, W - 1))]:  # two taps inside
        v = torch.zeros(1, 1, H, W, 2, **F64)
        v[0, 0, pi, pj] = 1.0
        out = na2d(q, key, v, k, rpe=torch.randn(1, k, k, 2, **F64), scale=1.0)
        assert out[0, 0, i, j, 0].item() == pytest.approx(1.0 / slots)
    # a pixel outside the query's window does not change its output
    v = torch.randn(1, 1, H, W, 2, **F64)
    out = na2d(q, key, v, k)
    v2 = v.clone()
    v2[0, 0, (i + 4) % H if i + 4 < H else 0, (j + 4) % W if j + 4 < W else 0] += 100.0
    far = (i + 4 < H) and (j + 4 < W)
    if far:
        assert torch.equal(na2d(q, key, v2, k)[0, 0, i, j], out[0, 0, i, j])


def test_no_scaling():
    """V4: with zero tables the logits are the raw dot products (no 1/sqrt(d))."""
    torch.manual_seed(0)
    layer = SASAAttention(32, num_heads=2, kernel_size=5).to(**F64)
    with torch.no_grad():
        layer.rel_h.zero_()
        layer.rel_w.zero_()
    x = torch.randn(1, 32, 7, 8, **F64)
    q, key, v = F.conv2d(x, layer.qkv.weight).view(1, 3, 2, 16, 7, 8).permute(1, 0, 2, 4, 5, 3)
    raw = na2d(q, key, v, 5, scale=1.0).permute(0, 1, 4, 2, 3).reshape(1, 32, 7, 8)
    scaled = na2d(q, key, v, 5).permute(0, 1, 4, 2, 3).reshape(1, 32, 7, 8)
    torch.testing.assert_close(layer(x), raw)
    assert not torch.allclose(layer(x), scaled)


def test_rpe_layout_and_gradcheck():
    """V5: rpe[h,u,v] = concat(rel_h[h,u], rel_w[h,v]); gradients reach both tables."""
    torch.manual_seed(0)
    layer = SASAAttention(8, num_heads=2, kernel_size=3).to(**F64)
    rpe = layer.relative_embedding()
    for h in range(2):
        for u in range(3):
            for v in range(3):
                torch.testing.assert_close(rpe[h, u, v],
                                           torch.cat([layer.rel_h[h, u], layer.rel_w[h, v]]))
    x = torch.randn(1, 8, 4, 5, **F64)

    rel_h = layer.rel_h.detach().clone().requires_grad_()
    rel_w = layer.rel_w.detach().clone().requires_grad_()

    def through_layer(rh, rw):
        h, k, half = rh.shape
        r = torch.cat([rh[:, :, None].expand(h, k, k, half), rw[:, None].expand(h, k, k, half)], -1)
        q, key, v = F.conv2d(x, layer.qkv.weight).view(1, 3, 2, 4, 4, 5).permute(1, 0, 2, 4, 5, 3)
        return na2d(q, key, v, 3, rpe=r, scale=1.0)

    assert torch.autograd.gradcheck(through_layer, (rel_h, rel_w))


def test_relative_embedding_follows_writes_through_data():
    """The rpe table follows rel_h / rel_w whatever writes them: in place, through ``.data``
    (EMA hooks; no version bump) and by reassigning ``.data``, with and without gradients."""
    torch.manual_seed(0)
    layer = SASAAttention(8, num_heads=2, kernel_size=3).eval()
    x = torch.randn(1, 8, 5, 6)

    def fresh():
        return concat_relative_embedding(layer.rel_h.detach(), layer.rel_w.detach())

    with torch.no_grad():
        layer(x)
        layer.rel_h.add_(1.0)
        torch.testing.assert_close(layer.relative_embedding(), fresh(), rtol=0, atol=0)
    layer.rel_w.data.mul_(0.5).add_(0.25)
    with torch.no_grad():
        torch.testing.assert_close(layer.relative_embedding(), fresh(), rtol=0, atol=0)
        torch.testing.assert_close(layer(x), _dense_sasa(layer, x))
    layer.rel_h.data = torch.randn_like(layer.rel_h)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _dense_sasa(layer, x))
    assert layer.relative_embedding().requires_grad


def _dense_sasa(layer, x):
    """The layer's output through na2d with the rpe built here from the current tables."""
    B, C, H, W = x.shape
    heads, d = layer.num_heads, layer.head_dim
    q, key, v = F.conv2d(x, layer.qkv.weight).view(B, 3, heads, d, H, W).permute(1, 0, 2, 4, 5, 3)
    rpe = concat_relative_embedding(layer.rel_h, layer.rel_w)
    out = na2d(q, key, v, layer.kernel_size, rpe=rpe, scale=1.0)
    return out.permute(0, 1, 4, 2, 3).reshape(B, C, H, W)


def test_global_limit_equals_dense_attention():
    """V6: k >= 2 max(H, W) - 1 sees every pixel: plain dense attention with relative logits."""
    torch.manual_seed(0)
    H, W, k = 4, 5, 9
    layer = SASAAttention(16, num_heads=2, kernel_size=k).to(**F64)
    x = torch.randn(1, 16, H, W, **F64)
    q, key, v = F.conv2d(x, layer.qkv.weight).view(1, 3, 2, 8, H * W).unbind(1)
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij')
    ii, jj = ii.flatten(), jj.flatten()
    du = ii[None, :] - ii[:, None] + k // 2  # (queries, keys) row offset index
    dv = jj[None, :] - jj[:, None] + k // 2
    logits = torch.einsum('bhdq,bhdk->bhqk', q, key)
    rows = torch.einsum('bhdq,hud->bhqu', q[:, :, :4], layer.rel_h)
    cols = torch.einsum('bhdq,hvd->bhqv', q[:, :, 4:], layer.rel_w)
    logits = logits + rows.gather(-1, du.expand(1, 2, -1, -1)) + cols.gather(-1, dv.expand(1, 2, -1, -1))
    dense = torch.einsum('bhqk,bhdk->bhdq', logits.softmax(-1), v).reshape(1, 16, H, W)
    torch.testing.assert_close(layer(x), dense)


@pytest.mark.parametrize('size', [(8, 8), (9, 7), (5, 13)], ids=str)
def test_downsampling_is_ceil_avg_pool_of_stride_one(size):
    """V7: the stride-2 layer equals the ceil-mode 2x2 average of the stride-1 layer."""
    torch.manual_seed(0)
    s1 = SASAAttention(16, num_heads=2, kernel_size=5).to(**F64)
    s2 = SASAAttention(16, num_heads=2, kernel_size=5, stride=2).to(**F64)
    s2.load_state_dict(s1.state_dict())
    x = torch.randn(2, 16, *size, **F64)
    expected = F.avg_pool2d(s1(x), 2, 2, ceil_mode=True, count_include_pad=False)
    torch.testing.assert_close(s2(x), expected)  # parameters need grad: ATen's pool
    with torch.no_grad():
        torch.testing.assert_close(s2(x), expected)  # even maps: the strided-slice pool
    shortcut = F.conv2d(x, torch.ones(1, 16, 1, 1, **F64), stride=2)
    assert s2(x).shape[-2:] == shortcut.shape[-2:]


@pytest.mark.parametrize('size', [(6, 4), (7, 4), (6, 5), (1, 1), (2, 2)], ids=str)
@pytest.mark.parametrize('grad', [False, True], ids=['no-grad', 'grad'])
def test_avg_pool_2x2_matches_ceil_mode_pool(size, grad):
    """Both of avg_pool_2x2's paths (strided slices for even maps without grad, ATen's pool for
    the rest) against the ceil-mode pool over in-image pixels, computed cell by cell; and its
    gradient: a quarter of the output gradient on each pixel of a full cell."""
    torch.manual_seed(size[0] * 10 + size[1])
    x = torch.randn(2, 3, *size, **F64, requires_grad=grad)
    H, W = size
    ref = torch.empty(2, 3, (H + 1) // 2, (W + 1) // 2, **F64)
    for i in range(ref.shape[2]):
        for j in range(ref.shape[3]):
            ref[:, :, i, j] = x.detach()[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean((2, 3))
    out = avg_pool_2x2(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert out.is_contiguous()
    if grad:
        g = torch.randn_like(out)
        out.backward(g)
        if H % 2 == 0 and W % 2 == 0:
            expected = g.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4
            torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)
        assert torch.autograd.gradcheck(avg_pool_2x2, (x.detach().requires_grad_(), ))


def test_stride_two_layer_dynamic_export_runs_at_odd_sizes():
    """A dynamic export at an even map size holds the plain ceil-mode pool, not the eager
    strided-slice path: the program runs at odd sizes and matches eager there (the slices fixed
    the maps' parity, and the exported segmentor failed in ONNX Runtime at other sizes)."""
    from mmattn.ops.export import export_program
    torch.manual_seed(0)
    layer = SASAAttention(16, num_heads=2, kernel_size=3, stride=2).eval()
    program = export_program(layer, torch.randn(2, 16, 8, 12))
    assert 'avg_pool2d' in str(program.graph)
    for size in [(9, 7), (8, 12), (5, 10)]:
        x = torch.randn(2, 16, *size)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), layer(x), rtol=1e-5, atol=1e-5)


def test_kernel_size_mismatch_resizes_tables():
    import logging

    from mmengine.logging import MMLogger
    small, big = SASAAttention(16, 2, kernel_size=3), SASAAttention(16, 2, kernel_size=7)
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        big.load_state_dict(small.state_dict())
    finally:
        logger.removeHandler(handler)
    assert 'rel_h: kernel size 3 in the checkpoint, 7 in the model; table resized around ' \
        'offset 0' in records
    torch.testing.assert_close(big.rel_h[:, 2:5], small.rel_h)
    assert big.rel_h[:, :2].abs().sum() == 0 and big.rel_w[:, 5:].abs().sum() == 0
    small.load_state_dict(big.state_dict())
    torch.testing.assert_close(small.rel_w, big.rel_w[:, 2:5])


def test_layer_init():
    """V13: tables ~ N(0, d^-1/2); W_Q std = d^-1/2 * std(W_K)."""
    torch.manual_seed(0)
    layer = SASAAttention(256, num_heads=8, kernel_size=7)  # d = 32
    d = 32
    assert layer.rel_h.std().item() == pytest.approx(d**-0.5, rel=0.1)
    wq, wk, _ = layer.qkv.weight.split(256)
    assert (wq.std() / wk.std()).item() == pytest.approx(d**-0.5, rel=0.1)
    assert wk.std().item() == pytest.approx((2 / 256)**0.5, rel=0.1)  # Kaiming fan-in, ReLU


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match='num_heads'):
        SASAAttention(20, num_heads=3)
    with pytest.raises(ValueError, match='even'):
        SASAAttention(24, num_heads=8)  # head dim 3
    with pytest.raises(ValueError, match='kernel_size'):
        SASAAttention(16, num_heads=2, kernel_size=4)
    with pytest.raises(ValueError, match='stride'):
        SASAAttention(16, num_heads=2, stride=3)


class TestStem:

    def make(self):
        torch.manual_seed(0)
        return SASAStem(out_channels=64, num_heads=4, mixtures=4).to(**F64).eval()

    def test_parameters(self):
        # q/k 384, values 768, tables 448, embeddings 768, BN 128 (spec S4)
        assert sum(p.numel() for p in SASAStem().parameters()) == 2496

    @pytest.mark.parametrize('size', [(16, 16), (13, 17), (5, 3)], ids=str)
    def test_output_size(self, size):
        out = self.make()(torch.randn(2, 3, *size, **F64))
        assert out.shape == (2, 64, -(-size[0] // 4), -(-size[1] // 4))

    def test_block_locality(self):
        stem = self.make()
        x = torch.randn(1, 3, 16, 16, **F64)
        base = stem(x)
        x2 = x.clone()
        x2[0, :, 6, 9] += 5.0  # block (1, 2)
        changed = (stem(x2) - base).abs().amax(1)[0] > 0
        expected = torch.zeros(4, 4, dtype=torch.bool)
        expected[1, 2] = True
        assert torch.equal(changed, expected)

    def test_mixture_weights(self):
        stem = self.make()
        p = stem.mixture_weights()
        assert p.shape == (4, 4, 4)
        torch.testing.assert_close(p.sum(-1), torch.ones(4, 4, **F64))

    def test_padding_does_not_change_interior_blocks(self):
        stem = self.make()
        x = torch.randn(1, 3, 13, 14, **F64)
        full, cropped = stem(x), stem(x[..., :12, :12])
        torch.testing.assert_close(full[..., :3, :3], cropped)


def test_stem_batchnorm_sees_only_the_image_pixels():
    """On a 9x11 input (padded to 12x12 inside), the stem's BN normalises the 9x11 image pixels:
    its training statistics never include the padding."""
    stem = SASAStem(out_channels=16, num_heads=4, mixtures=2).train()
    seen = []
    stem.bn.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    out = stem(torch.randn(2, 3, 9, 11))
    assert tuple(seen[0].shape) == (2, 16, 9, 11)
    mean = seen[0].detach().mean((0, 2, 3))
    torch.testing.assert_close(stem.bn.running_mean, 0.1 * mean)
    assert tuple(out.shape) == (2, 16, 3, 3) and torch.isfinite(out).all()


def test_stem_init():
    """The stem's tables ~ N(0, d^-1/2), its mixture embeddings ~ N(0, C^-1/2)."""
    torch.manual_seed(0)
    stem = SASAStem(out_channels=256, num_heads=4, mixtures=4)  # d = 64
    for table in (stem.attn.rel_h, stem.attn.rel_w):
        assert table.std().item() == pytest.approx(64**-0.5, rel=0.1)
    for emb in (stem.attn.emb_row, stem.attn.emb_col, stem.attn.emb_mix):
        assert emb.std().item() == pytest.approx(256**-0.5, rel=0.25)
