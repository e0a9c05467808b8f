"""ELSA-Swin last stage and patch merging against independent oracles written in this file.

The oracles share no code with mmattn: they take the modules' parameters by name only
(``dict(module.named_parameters())``) and rebuild every step with plain tensor arithmetic, so a
wrong constant or order in ``mmattn.layers.window_attention`` or ``mmattn.backbones.elsa_swin``
cannot cancel out. Parameters are perturbed with ``torch.randn`` (the position table included, to
unit scale) and everything runs in float64 in eval mode.

* ``oracle_swin_block``: the Swin block of Liu et al., "Swin Transformer" (arXiv 2103.14030,
  Sec. 3.2 and the official microsoft/Swin-Transformer code) as stage 3 of ELSA-Swin uses it
  (``specs/elsa_swin.md`` section 4; dense-prediction padding section 8): pre-norm, zero padding
  at the bottom/right to multiples of the window, cyclic shift by ``-window // 2`` on the shifted
  blocks, windows visited one by one, q/k/v in that order from ``qkv``, logits
  ``q.k * head_dim**-0.5`` plus ``table[(dy + w - 1) * (2w - 1) + (dx + w - 1), head]`` with
  ``(dy, dx)`` = query minus key coordinates (built here with Python loops), the region mask of
  the official code (the padded map cut into 3 x 3 slices ``[0, -w)``, ``[-w, -s)``, ``[-s, end)``
  numbered 0..8, -100 between tokens of different regions), softmax, ``proj``, reverse shift,
  crop of the padding, residual, then ``fc2(GELU(fc1(norm2 x)))`` and the second residual.
* ``oracle_patch_merging``: spec section 5 and the official ELSA/Swin ``PatchMerging``: for each
  output cell the channels of ``x[2i, 2j]``, ``x[2i+1, 2j]``, ``x[2i, 2j+1]``, ``x[2i+1, 2j+1]``
  (row, column) are concatenated in that order (x0, x1, x2, x3 of the official code), missing
  rows/columns of an odd map read 0, then LayerNorm(4C) and the bias-free Linear 4C -> 2C.
* ``oracle_layer_norm`` / ``oracle_gelu``: LayerNorm (eps 1e-5, biased variance) and the exact
  (erf) GELU, written out.

Tests: a single block on window-multiple, padded and smaller-than-window maps, with and without
shift; patch merging on odd and even maps; the whole last stage of a small dense ``ELSASwin``
(non-shifted then shifted block, input captured by a hook) and its ``norm3`` NCHW output.
"""
import functools
import math

import pytest
import torch

from mmattn.backbones import ELSASwin
from mmattn.backbones.elsa_swin import PatchMerging
from mmattn.layers import SwinBlock

WINDOW = 7
MASK_VALUE = -100.
SWIN_BLOCK_PARAMS = {
    'norm1.weight', 'norm1.bias', 'attn.relative_position_bias_table', 'attn.qkv.weight',
    'attn.qkv.bias', 'attn.proj.weight', 'attn.proj.bias', 'norm2.weight', 'norm2.bias',
    'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight', 'mlp.fc2.bias'
}
# a small dense backbone (the toy config's width 32, two blocks in the last stage)
TINY = dict(embed_dims=32, depths=(1, 1, 1, 2), num_heads=(1, 2, 4, 8), group_width=4)


# ----------------------------------------------------------------------------------- oracles
def oracle_layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean)**2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def oracle_gelu(x):
    return 0.5 * x * (1. + torch.erf(x / math.sqrt(2.)))


def oracle_linear(x, weight, bias=None):
    y = torch.einsum('...i,oi->...o', x, weight)
    return y if bias is None else y + bias


@functools.lru_cache(maxsize=None)
def oracle_relative_index(window):
    """``(w*w, w*w)``: token ``t = r * w + c`` of a window; entry ``(i, j)`` is
    ``(r_i - r_j + w - 1) * (2w - 1) + (c_i - c_j + w - 1)`` (Swin: query minus key)."""
    rows = []
    for i in range(window * window):
        ri, ci = divmod(i, window)
        row = []
        for j in range(window * window):
            rj, cj = divmod(j, window)
            row.append((ri - rj + window - 1) * (2 * window - 1) + (ci - cj + window - 1))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


@functools.lru_cache(maxsize=None)
def oracle_region_ids(hp, wp, window, shift):
    """Official Swin ``img_mask`` of the (padded, rolled) ``hp x wp`` map: 3 x 3 slices numbered
    row-major, each token's id read from its coordinates."""
    def band(i, n):  # slices (0, -window), (-window, -shift), (-shift, None)
        if i < n - window:
            return 0
        return 1 if i < n - shift else 2

    return torch.tensor([[band(r, hp) * 3 + band(c, wp) for c in range(wp)] for r in range(hp)])


def oracle_swin_block(x, hw, p, num_heads, window, shift):
    """One Swin block on tokens ``x`` ``(B, H*W, C)`` of an ``hw`` map; ``p``: parameters by
    name (``norm1.weight``, ``attn.qkv.weight``, ...); ``shift``: bool (shift ``window // 2``)."""
    b, n, c = x.shape
    h, w = hw
    head_dim = c // num_heads
    scale = head_dim**-0.5
    s = window // 2 if shift else 0
    hp, wp = -(-h // window) * window, -(-w // window) * window
    nt = window * window

    y = oracle_layer_norm(x, p['norm1.weight'], p['norm1.bias']).reshape(b, h, w, c)
    padded = x.new_zeros(b, hp, wp, c)  # zero padding after the norm, bottom/right
    padded[:, :h, :w] = y
    # cyclic shift towards the top-left: rolled[r, q] = padded[(r + s) % hp, (q + s) % wp]
    rows, cols = (torch.arange(hp) + s) % hp, (torch.arange(wp) + s) % wp
    rolled = padded[:, rows][:, :, cols]

    table = p['attn.relative_position_bias_table']  # ((2w-1)^2, heads)
    bias = table[oracle_relative_index(window)].permute(2, 0, 1)  # (heads, nt, nt)
    region = oracle_region_ids(hp, wp, window, s)
    out = torch.zeros_like(rolled)
    for r0 in range(0, hp, window):
        for c0 in range(0, wp, window):
            tokens = rolled[:, r0:r0 + window, c0:c0 + window].reshape(b, nt, c)
            qkv = oracle_linear(tokens, p['attn.qkv.weight'], p['attn.qkv.bias'])
            q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(b, nt, num_heads, head_dim)
                       for i in range(3))
            logits = torch.einsum('bihd,bjhd->bhij', q, k) * scale + bias
            if s:
                ids = region[r0:r0 + window, c0:c0 + window].reshape(nt)
                same = ids[:, None] == ids[None, :]
                logits = logits + torch.where(same, 0., MASK_VALUE).to(x.dtype)
            e = (logits - logits.amax(-1, keepdim=True)).exp()
            attn = e / e.sum(-1, keepdim=True)
            o = torch.einsum('bhij,bjhd->bihd', attn, v).reshape(b, nt, c)
            o = oracle_linear(o, p['attn.proj.weight'], p['attn.proj.bias'])
            out[:, r0:r0 + window, c0:c0 + window] = o.reshape(b, window, window, c)
    # reverse shift: back[R] = out[(R - s) % hp], then crop the padding
    back = out[:, (torch.arange(hp) - s) % hp][:, :, (torch.arange(wp) - s) % wp]
    x = x + back[:, :h, :w].reshape(b, n, c)
    y = oracle_layer_norm(x, p['norm2.weight'], p['norm2.bias'])
    y = oracle_gelu(oracle_linear(y, p['mlp.fc1.weight'], p['mlp.fc1.bias']))
    return x + oracle_linear(y, p['mlp.fc2.weight'], p['mlp.fc2.bias'])


def oracle_patch_merging(x, hw, p):
    """``x`` ``(B, H*W, C)`` -> ``(B, ceil(H/2)*ceil(W/2), 2C)`` and the output size."""
    b, _, c = x.shape
    h, w = hw
    m = x.reshape(b, h, w, c)
    ho, wo = (h + 1) // 2, (w + 1) // 2

    def at(r, q):
        return m[:, r, q] if r < h and q < w else x.new_zeros(b, c)

    cells = x.new_zeros(b, ho, wo, 4 * c)
    for i in range(ho):
        for j in range(wo):
            cells[:, i, j] = torch.cat([at(2 * i, 2 * j), at(2 * i + 1, 2 * j),
                                        at(2 * i, 2 * j + 1), at(2 * i + 1, 2 * j + 1)], dim=-1)
    y = oracle_layer_norm(cells.reshape(b, ho * wo, 4 * c), p['norm.weight'], p['norm.bias'])
    return oracle_linear(y, p['reduction.weight']), (ho, wo)


# ----------------------------------------------------------------------------------- helpers
def _randomise(module, seed):
    """Perturb every parameter with ``torch.randn``: unit scale for the position tables,
    ``fan_in**-0.5`` for weight matrices, 0.5 for vectors (norm weights, biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith('relative_position_bias_table'):
                std = 1.
            elif param.dim() >= 2:
                std = param[0].numel()**-0.5
            else:
                std = 0.5
            param.add_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * std)


def _params(module, prefix=''):
    return {k[len(prefix):]: v.detach() for k, v in module.named_parameters()
            if k.startswith(prefix)}


# ------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize('shift', [False, True], ids=['plain', 'shifted'])
@pytest.mark.parametrize('hw,window', [((14, 14), WINDOW), ((10, 17), WINDOW), ((5, 6), WINDOW),
                                       ((7, 8), 3)], ids=['14x14', '10x17', '5x6', '7x8-w3'])
def test_swin_block_matches_oracle(shift, hw, window):
    """14x14: 2x2 windows, no padding; 10x17: padded to 14x21; 5x6: smaller than the window,
    padded to 7x7 and still shifted (dense-prediction behaviour, ``pad_small_map=True``);
    7x8 with window 3: shift 1, the smallest shift."""
    torch.manual_seed(0)
    dim, heads = 16, 2
    block = SwinBlock(dim, heads, window, shift=shift).double().eval()
    assert set(_params(block)) == SWIN_BLOCK_PARAMS
    _randomise(block, seed=1)
    x = torch.randn(2, hw[0] * hw[1], dim, dtype=torch.float64)
    with torch.no_grad():
        out = block(x, hw)
    expected = oracle_swin_block(x, hw, _params(block), heads, window, shift)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize('hw', [(7, 9), (6, 8), (8, 5)], ids=['7x9', '6x8', '8x5'])
def test_patch_merging_matches_oracle(hw):
    torch.manual_seed(0)
    dim = 6
    merge = PatchMerging(dim).double().eval()
    assert set(_params(merge)) == {'norm.weight', 'norm.bias', 'reduction.weight'}  # no bias
    _randomise(merge, seed=2)
    x = torch.randn(2, hw[0] * hw[1], dim, dtype=torch.float64)
    with torch.no_grad():
        out, out_hw = merge(x, hw)
    expected, expected_hw = oracle_patch_merging(x, hw, _params(merge))
    assert out_hw == expected_hw == (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))
    torch.testing.assert_close(out, expected)


def test_last_stage_matches_oracle():
    """Stage 3 of a dense ``ELSASwin`` (blocks 0 and 1: not shifted, then shifted by 3) on an
    8x10 map (225x300 input; padded to 14x14, four windows), fed the stage input captured by a
    hook; also the merging that makes that input (``layers.2.downsample``, 15x19 -> 8x10) and
    the ``norm3`` NCHW output."""
    torch.manual_seed(0)
    model = ELSASwin(TINY).double()
    model.init_weights()
    _randomise(model, seed=3)
    model.eval()  # drop path (default rate 0.1) off
    captured = {}

    def pre_hook(module, args):
        captured['x'], captured['hw'] = args[0].detach().clone(), tuple(args[1])

    def hook(module, args, output):
        captured['out'] = output[0].detach().clone()

    def merge_pre_hook(module, args):
        captured['merge_x'], captured['merge_hw'] = args[0].detach().clone(), tuple(args[1])

    stage = model.layers[3]
    handles = [stage.register_forward_pre_hook(pre_hook), stage.register_forward_hook(hook),
               model.layers[2].downsample.register_forward_pre_hook(merge_pre_hook)]
    try:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, 225, 300, dtype=torch.float64))
    finally:
        for handle in handles:
            handle.remove()

    x, hw = captured['x'], captured['hw']
    assert hw == (8, 10) and x.shape == (1, 80, 8 * TINY['embed_dims'])
    assert captured['merge_hw'] == (15, 19)
    merged, merged_hw = oracle_patch_merging(captured['merge_x'], captured['merge_hw'],
                                             _params(model, 'layers.2.downsample.'))
    assert merged_hw == hw
    torch.testing.assert_close(x, merged)
    assert len(stage.blocks) == 2 and stage.downsample is None
    heads = TINY['num_heads'][3]
    y = x
    for j, shift in enumerate((False, True)):
        prefix = f'layers.3.blocks.{j}.'
        params = _params(model, prefix)
        assert set(params) == SWIN_BLOCK_PARAMS
        y = oracle_swin_block(y, hw, params, heads, WINDOW, shift)
    torch.testing.assert_close(captured['out'], y)

    norm3 = _params(model, 'norm3.')
    feat = oracle_layer_norm(y, norm3['weight'], norm3['bias'])
    torch.testing.assert_close(outs[3], feat.reshape(1, *hw, -1).permute(0, 3, 1, 2))
