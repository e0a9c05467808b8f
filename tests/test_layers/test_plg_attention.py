"""PLG-SA (specs/plg_vit.md D3, V3-V5): float64 references written from the spec with explicit
loops over windows, explicit adaptive pooling, attention and bilinear upsampling; padding and
masking at odd sizes; branch independence; bias indices; the global window's fixed cost."""
import math

import pytest
import torch

from mmattn.backbones import PLGViT
from mmattn.layers import PLGAttention, PLGBlock, WindowMSA, shifted_window_attention
from mmattn.layers.plg_attention import GlobalWindowAttention


def _randomise(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


def _bias(table, rows, cols, size):
    """``(heads, n, n)`` bias of a ``rows x cols`` grid of tokens from a ``(2 size - 1)^2`` table:
    ``table[(dr + size - 1) * (2 size - 1) + dc + size - 1]`` for ``d = query - key``."""
    pos = [(r, c) for r in range(rows) for c in range(cols)]
    idx = torch.tensor([[(qi - ki + size - 1) * (2 * size - 1) + qj - kj + size - 1
                         for ki, kj in pos] for qi, qj in pos])
    return table[idx].permute(2, 0, 1)


def _mha(tokens, qkv_w, qkv_b, heads, bias, valid=None):
    """Multi-head self-attention over ``tokens`` (n, C) with q, k, v from one linear layer."""
    n, c = tokens.shape
    d = c // heads
    q, k, v = (tokens @ qkv_w.T + qkv_b).split(c, dim=-1)
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        logits = (q[:, sl] * d**-0.5) @ k[:, sl].T + bias[h]
        if valid is not None:  # padded keys excluded from the softmax
            logits = logits.masked_fill(~valid[None, :], float('-inf'))
        outs.append(logits.softmax(-1) @ v[:, sl])
    return torch.cat(outs, dim=-1)


def ref_local(x, sd, heads, window, mask_padding=False):
    """Spec D3.2: zero-pad to window multiples, per window attention with the Swin bias, crop."""
    b, h, w, c = x.shape
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    xp = x.new_zeros(b, hp, wp, c)
    xp[:, :h, :w] = x
    valid = torch.zeros(hp, wp, dtype=torch.bool)
    valid[:h, :w] = True
    bias = _bias(sd['relative_position_bias_table'], window, window, window)
    out = torch.zeros_like(xp)
    for n in range(b):
        for r0 in range(0, hp, window):
            for c0 in range(0, wp, window):
                tokens = xp[n, r0:r0 + window, c0:c0 + window].reshape(-1, c)
                keys = valid[r0:r0 + window, c0:c0 + window].reshape(-1) if mask_padding else None
                y = _mha(tokens, sd['qkv.weight'], sd['qkv.bias'], heads, bias, keys)
                out[n, r0:r0 + window, c0:c0 + window] = y.view(window, window, c)
    return out[:, :h, :w]


def _bins(length, size):
    return [(math.floor(i * length / size), math.ceil((i + 1) * length / size))
            for i in range(size)]


def _bilinear_matrix(out_len, in_len):
    """Rows: weights of the ``in_len`` samples for each output (half-pixel centres, clamped)."""
    m = torch.zeros(out_len, in_len, dtype=torch.float64)
    for i in range(out_len):
        src = max((i + 0.5) * in_len / out_len - 0.5, 0.)
        i0 = min(int(math.floor(src)), in_len - 1)
        i1 = min(i0 + 1, in_len - 1)
        lam = src - i0
        m[i, i0] += 1 - lam
        m[i, i1] += lam
    return m


def ref_global(x, sd, heads, global_size, pool):
    """Spec D3.3: adaptive pooling to G' = min(G, H, W), attention with the bias of the G' grid
    in the (2G-1)^2 table, bilinear upsampling (align_corners=False)."""
    b, h, w, c = x.shape
    g = min(global_size, h, w)
    pooled = x.new_zeros(b, g, g, c)
    for i, (r0, r1) in enumerate(_bins(h, g)):
        for j, (c0, c1) in enumerate(_bins(w, g)):
            cell = x[:, r0:r1, c0:c1].reshape(b, -1, c)
            pooled[:, i, j] = cell.amax(1) + (cell.mean(1) if pool == 'max+avg' else 0)
    bias = _bias(sd['relative_position_bias_table'], g, g, global_size)
    att = torch.stack([_mha(pooled[n].reshape(-1, c), sd['qkv.weight'], sd['qkv.bias'], heads,
                            bias).view(g, g, c) for n in range(b)])
    mh, mw = _bilinear_matrix(h, g), _bilinear_matrix(w, g)
    return torch.einsum('hi,bijc,wj->bhwc', mh, att, mw)


def ref_plg(x, attn: PLGAttention, lh, gh, window, global_size, pool, mask_padding=False):
    sd = attn.state_dict()
    sub = lambda p: {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}  # noqa: E731
    cl = attn.local_dim
    local = ref_local(x[..., :cl], sub('local_attn.'), lh, window, mask_padding)
    glob = ref_global(x[..., cl:], sub('global_attn.'), gh, global_size, pool)
    return torch.cat([local, glob], -1) @ sd['proj.weight'].T + sd['proj.bias']


@pytest.mark.parametrize('dim,local_dim,lh,gh,pool,size', [
    (16, 8, 2, 2, 'max+avg', (9, 11)),      # ratio 1/2, local padding 5x3, G' = 7
    (24, 8, 1, 2, 'max', (13, 8)),          # ratio 1/3 (LW-R), odd sizes
    (16, 8, 2, 1, 'max+avg', (5, 6)),       # map smaller than G: G' = 5, upsampling 5 -> 5x6
    (12, 4, 1, 2, 'max', (7, 7)),           # one window, pooling is the identity
])
def test_plg_attention_matches_reference_float64(dim, local_dim, lh, gh, pool, size):
    attn = PLGAttention(dim, local_dim, lh, gh, window_size=7, global_size=7,
                        global_pool=pool).double()
    _randomise(attn)
    x = torch.randn(2, *size, dim, dtype=torch.float64)
    torch.testing.assert_close(attn(x), ref_plg(x, attn, lh, gh, 7, 7, pool))


@pytest.mark.parametrize('size', [(9, 11), (13, 8), (3, 10), (15, 15)])
@pytest.mark.parametrize('mask_padding', [False, True])
def test_local_branch_padding_and_masking_float64(size, mask_padding):
    """Windows that do not divide the map: zero padding (spec: padded tokens attend) and the
    optional key mask (padded tokens excluded) against the explicit-loop reference."""
    msa = WindowMSA(12, 3, 7, with_proj=False).double()
    _randomise(msa)
    x = torch.randn(2, *size, 12, dtype=torch.float64)
    out = shifted_window_attention(x, msa, 0, mask_padding=mask_padding)
    ref = ref_local(x, msa.state_dict(), 3, 7, mask_padding=mask_padding)
    torch.testing.assert_close(out, ref)
    if size[0] % 7 or size[1] % 7:  # the two modes differ only where there is padding
        other = ref_local(x, msa.state_dict(), 3, 7, mask_padding=not mask_padding)
        assert not torch.allclose(out, other)


def test_plg_attention_mask_padding_option():
    attn = PLGAttention(16, 8, 2, 2, mask_padding=True).double()
    _randomise(attn)
    x = torch.randn(1, 10, 12, 16, dtype=torch.float64)
    torch.testing.assert_close(attn(x), ref_plg(x, attn, 2, 2, 7, 7, 'max+avg', True))


def test_window_msa_defaults_unchanged():
    """with_proj / mask_padding extend WindowMSA and shifted_window_attention; the defaults keep
    the projection and the unmasked padding."""
    torch.manual_seed(0)
    msa = WindowMSA(8, 2, 7)
    assert isinstance(msa.proj, torch.nn.Linear)
    assert not any(k.startswith('proj') for k in WindowMSA(8, 2, 7, with_proj=False).state_dict())
    x = torch.randn(1, 9, 10, 8)
    torch.testing.assert_close(shifted_window_attention(x, msa, 3),
                               shifted_window_attention(x, msa, 3, mask_padding=False))
    # one window row, padded columns (7x9 -> 7x14): the windows are not a view of the map
    assert shifted_window_attention(torch.randn(1, 7, 9, 8), msa, 0).shape == (1, 7, 9, 8)
    # shifted windows with the padding mask stay finite and differ from the unmasked result
    masked = shifted_window_attention(x, msa, 3, mask_padding=True)
    assert torch.isfinite(masked).all()
    assert not torch.allclose(masked, shifted_window_attention(x, msa, 3))


def test_branch_independence():
    """V4: with proj = identity, output channels [0, C_l) depend only on X_l and [C_l, C) only
    on X_g."""
    attn = PLGAttention(16, 8, 2, 2).double()
    _randomise(attn)
    with torch.no_grad():
        attn.proj.weight.copy_(torch.eye(16))
        attn.proj.bias.zero_()
    x = torch.randn(1, 9, 10, 16, dtype=torch.float64)
    base = attn(x)
    for sl, other in ((slice(0, 8), slice(8, 16)), (slice(8, 16), slice(0, 8))):
        y = x.clone()
        y[..., other] += torch.randn_like(y[..., other])
        out = attn(y)
        torch.testing.assert_close(out[..., sl], base[..., sl])
        assert not torch.allclose(out[..., other], base[..., other])


def test_relative_position_indices():
    """V5: the local index of w = 7 covers all 169 entries; the global index of G' = 5 uses only
    the 9x9 centre block of the 13x13 table, with Swin's offsets."""
    msa = WindowMSA(8, 2, 7)
    assert set(msa.relative_position_index.unique().tolist()) == set(range(169))
    glob = GlobalWindowAttention(8, 2, 7)
    with torch.no_grad():
        glob.relative_position_bias_table.copy_(
            torch.arange(169, dtype=torch.float32)[:, None].expand(169, 2))
    used = set(glob._bias(5)[0].flatten().long().tolist())
    centre = {r * 13 + c for r in range(2, 11) for c in range(2, 11)}
    assert used == centre
    torch.testing.assert_close(glob._bias(5), _bias(glob.relative_position_bias_table, 5, 5, 7))
    torch.testing.assert_close(glob._bias(7), _bias(glob.relative_position_bias_table, 7, 7, 7))


def test_no_index_in_state_dict():
    attn = PLGAttention(16, 8, 2, 2)
    assert sorted(attn.state_dict()) == sorted([
        'local_attn.relative_position_bias_table', 'local_attn.qkv.weight', 'local_attn.qkv.bias',
        'global_attn.relative_position_bias_table', 'global_attn.qkv.weight',
        'global_attn.qkv.bias', 'proj.weight', 'proj.bias'])


def _global_attention_shapes(model, x):
    shapes = []
    hooks = [m.attn_drop.register_forward_hook(lambda mod, i, o: shapes.append(tuple(o.shape)))
             for m in model.modules() if isinstance(m, GlobalWindowAttention)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


def test_global_attention_matrix_is_fixed_window():
    """The global branch attends G^2 = 49 pooled tokens at 224x224 and at 800x1333 alike (stage-0
    maps of 56x56 and 200x334): its attention matrix is (49, 49) in every block."""
    arch = dict(widths=(8, 8, 16, 16), depths=(1, 1, 1, 1), local_heads=(1, 1, 1, 1),
                global_heads=(1, 1, 2, 2), split_ratios=(.5, ) * 4, ffn='ccf+',
                global_pool='max', lw_conv=True, expand_channels=None)
    model = PLGViT(arch, out_indices=(0, 1, 2, 3)).eval()
    for size in ((224, 224), (800, 1333)):
        shapes = _global_attention_shapes(model, torch.randn(1, 3, *size))
        assert shapes == [(1, 1, 49, 49), (1, 1, 49, 49), (1, 2, 49, 49), (1, 2, 49, 49)]


def test_global_window_clamps_on_small_maps():
    """G' = min(G, H, W): a 96x96 input has a 3x3 stage-4 map, attended as 9 tokens."""
    arch = dict(widths=(8, 8, 16, 16), depths=(1, 1, 1, 1), local_heads=(1, 1, 1, 1),
                global_heads=(1, 1, 1, 1), split_ratios=(.5, ) * 4, ffn='ccf',
                global_pool='max+avg', lw_conv=False, expand_channels=None)
    shapes = _global_attention_shapes(PLGViT(arch).eval(), torch.randn(1, 3, 96, 96))
    assert [s[-1] for s in shapes] == [49, 49, 36, 9]  # maps 24, 12, 6, 3


def test_block_matches_composition():
    """D3 block: x + attn(norm1(x)), then + ffn(norm2(x)) (no drop path, no layer scale)."""
    block = PLGBlock(16, 8, 2, 2, ffn='ccf+', global_pool='max').double()
    _randomise(block)
    x = torch.randn(2, 9 * 10, 16, dtype=torch.float64)
    n1 = torch.nn.functional.layer_norm(x, (16, ), block.norm1.weight, block.norm1.bias, 1e-5)
    y = x + ref_plg(n1.view(2, 9, 10, 16), block.attn, 2, 2, 7, 7, 'max').reshape(2, 90, 16)
    n2 = torch.nn.functional.layer_norm(y, (16, ), block.norm2.weight, block.norm2.bias, 1e-5)
    torch.testing.assert_close(block(x, (9, 10)), y + block.ffn(n2, (9, 10)))


def test_torch_compile_matches_eager():
    """The LW block (local padding 9x11 -> 14x14, pooled global window, CCF-FFN+ with GRN)
    compiles with inductor as one graph and matches eager. The whole backbone compiles too
    (checked by hand: 4 such blocks cost ~90 s of C++ compilation on the 2-core CI machine, over
    the family's test budget); its other layers are stock convolutions and LayerNorms."""
    block = PLGBlock(16, 8, 1, 2, ffn='ccf+', global_pool='max').eval()
    _randomise(block)
    x = torch.randn(1, 9 * 11, 16)
    compiled = torch.compile(block, backend='inductor', fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, (9, 11)), block(x, (9, 11)), rtol=1e-4,
                                   atol=1e-4)


def test_dynamic_export_keeps_the_global_window_symbolic():
    """One torch.export program (exported at 5x6, G' = 5) gives eager's result at sizes with
    G' = 7, 3 and 2: min(G, H, W) and the pooling stay symbolic."""
    from mmattn.ops.export import export_program

    class Channels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = GlobalWindowAttention(8, 2, pool='max+avg')

        def forward(self, x):
            return self.attn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    model = Channels().eval()
    _randomise(model)
    program = export_program(model, torch.randn(2, 8, 5, 6)).module()
    with torch.no_grad():
        for size in ((5, 6), (9, 11), (3, 4), (2, 2)):
            x = torch.randn(1, 8, *size)
            torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(dim=16, local_dim=16, local_heads=1, global_heads=1), 'local_dim'),
    (dict(dim=16, local_dim=0, local_heads=1, global_heads=1), 'local_dim'),
    (dict(dim=16, local_dim=8, local_heads=3, global_heads=1), 'num_heads'),
    (dict(dim=16, local_dim=8, local_heads=1, global_heads=3), 'global channels'),
    (dict(dim=16, local_dim=8, local_heads=1, global_heads=1, global_pool='avg'), 'pool'),
    (dict(dim=16, local_dim=8, local_heads=1, global_heads=1, global_size=0), 'global_size'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PLGAttention(**kwargs)
    with pytest.raises(ValueError, match='ffn'):
        PLGBlock(16, 8, 1, 1, ffn='mlp')
