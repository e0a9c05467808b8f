"""``vis_attention.py`` and its per-family hooks: the drawn weights are the attention the layer
computes (checked against float64 rebuilds of the ELSA and SASA formulas, not the hooks' own
path), corner queries show the masked border, and the command line draws a real photograph."""
import os.path as osp
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmattn.layers import ELSAAttention, SASAAttention
from mmattn.utils.attention_maps import (ATTENTION_HOOKS, attention_layers, find_layer, heatmap,
                                         query_map)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(ROOT, 'configs', 'toy')


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def elsa_attention_rebuild(layer, x):
    """ELSA's softmax over the k*k taps (zero-padded ones included), ``(heads, k*k, H, W)``,
    and the ghost matrices, from the layer's parameters (the official formulas)."""
    b, h, w, c = x.shape
    sd = layer.state_dict()
    dq = layer.dim_qk
    t = F.conv2d(x.permute(0, 3, 1, 2), sd['pre_proj.weight'], sd['pre_proj.bias'])
    q, k = t[:, :dq], t[:, dq:2 * dq]
    a = F.conv2d(q * k * layer.scale, sd['attn.0.weight'], sd['attn.0.bias'],
                 padding=layer.kernel_size // 2, groups=dq // sd['attn.0.weight'].shape[1])
    a = F.conv2d(F.gelu(a), sd['attn.2.weight'], sd['attn.2.bias'])
    return a.view(layer.num_heads, -1, h, w).softmax(1)


@pytest.mark.parametrize('query,corner', [((2, 3), False), ((0, 0), True)])
def test_elsa_weights_are_the_layers_attention(query, corner):
    torch.manual_seed(0)
    layer = _randomise(ELSAAttention(8, 2, 3, group_width=4, lam=1, gamma=1., qk_scale=1.))
    layer = layer.double().eval()
    with torch.no_grad():
        layer.ghost_head[0].abs_().add_(0.5)
    x = torch.randn(1, 6, 7, 8, dtype=torch.float64)
    qmap = query_map(layer, x, query, (6, 7))  # image = map: stride 1
    attn = elsa_attention_rebuild(layer, x)
    mul, add = (layer.ghost_head[i].detach().reshape(8, 9) for i in range(2))
    r = 1
    for head in range(2):
        expected = attn[head, :, query[0], query[1]].reshape(3, 3).numpy().copy()
        got = qmap.maps[f'head {head}']
        inside = ~np.isnan(got)
        np.testing.assert_allclose(got[inside], expected[inside], rtol=1e-12)
        if corner:  # taps above and left of the image: masked in the drawing, weighted by ELSA
            assert not inside[0].any() and not inside[:, 0].any() and inside[r:, r:].all()
            assert qmap.outside[f'head {head}'] == pytest.approx(expected[~inside].sum())
            assert qmap.outside[f'head {head}'] > 0
        else:
            assert inside.all()
    per_channel = attn[:, :, query[0], query[1]].repeat_interleave(4, 0) * mul + add
    got = qmap.maps['with ghost head (mean over channels)']
    inside = ~np.isnan(got)
    np.testing.assert_allclose(got[inside], per_channel.mean(0).reshape(3, 3).numpy()[inside],
                               rtol=1e-12)


@pytest.mark.parametrize('query,corner', [((3, 4), False), ((0, 0), True)])
def test_sasa_weights_are_the_layers_attention(query, corner):
    torch.manual_seed(0)
    layer = _randomise(SASAAttention(16, 2, kernel_size=3)).double().eval()
    x = torch.randn(1, 16, 6, 7, dtype=torch.float64)
    qmap = query_map(layer, x, query, (6, 7))
    qkv = F.conv2d(x, layer.qkv.weight).view(3, 2, 8, 6, 7)
    q, k = qkv[0], qkv[1]
    for head in range(2):
        i, j = query
        logits = np.full((3, 3), -np.inf)
        for a in range(3):
            for b in range(3):
                y, xx = i + a - 1, j + b - 1
                if 0 <= y < 6 and 0 <= xx < 7:
                    qv = q[head, :, i, j]
                    logits[a, b] = float(qv @ k[head, :, y, xx] + qv[:4] @ layer.rel_h[head, a]
                                         + qv[4:] @ layer.rel_w[head, b])
        expected = np.exp(logits - logits.max())
        expected /= expected.sum()
        got = qmap.maps[f'head {head}']
        inside = ~np.isnan(got)
        np.testing.assert_allclose(got[inside], expected[inside], rtol=1e-12)
        assert qmap.outside[f'head {head}'] == 0  # masked taps carry no weight
        assert inside.all() != corner
        if corner:
            assert not inside[0].any() and not inside[:, 0].any() and inside[1:, 1:].all()


def test_heatmap_puts_each_weight_on_its_image_cells():
    layer = _randomise(SASAAttention(16, 2, kernel_size=3)).eval()
    x = torch.randn(1, 16, 6, 7)
    qmap = query_map(layer, x, (9, 14), (24, 28))  # stride 4: map pixel (2, 3)
    assert qmap.query == (2, 3) and qmap.map_size == (6, 7)
    heat = heatmap(qmap, 'head 1', (24, 28))
    window = qmap.maps['head 1']
    for a in range(3):
        for b in range(3):
            y, x0 = 2 + a - 1, 3 + b - 1
            cell = heat[4 * y:4 * y + 4, 4 * x0:4 * x0 + 4]
            np.testing.assert_array_equal(cell, np.full((4, 4), window[a, b]))
    assert np.isnan(heat).sum() == 24 * 28 - 9 * 16
    # a corner query: the in-image taps (rows and columns 0 and 1) are drawn, the rest is not
    corner = query_map(layer, x, (0, 0), (24, 28))
    heat = heatmap(corner, 'head 0', (24, 28))
    np.testing.assert_array_equal(heat[:4, :4], np.full((4, 4), corner.maps['head 0'][1, 1]))
    np.testing.assert_array_equal(heat[4:8, 4:8], np.full((4, 4), corner.maps['head 0'][2, 2]))
    assert np.isnan(heat).sum() == 24 * 28 - 4 * 16


def test_layer_lookup_and_errors():
    from mmattn.backbones import SASAResNet
    model = SASAResNet(26, base_channels=16, kernel_size=3)
    layers = attention_layers(model)
    assert layers and all(type(m) in ATTENTION_HOOKS for _, m in layers)
    assert find_layer(model, '0') == layers[0] and find_layer(model, '-1') == layers[-1]
    assert find_layer(model, layers[1][0]) == layers[1]
    with pytest.raises(ValueError, match='out of range'):
        find_layer(model, str(len(layers)))
    with pytest.raises(ValueError, match='not one of the attention layers'):
        find_layer(model, 'layer9.attn')
    with pytest.raises(ValueError, match='no attention-map hook for Linear'):
        query_map(torch.nn.Linear(2, 2), torch.randn(1, 2), (0, 0), (1, 1))
    with pytest.raises(ValueError, match='query must lie in the 6x7 image'):
        query_map(layers[0][1], torch.randn(1, 64, 6, 7), (6, 0), (6, 7))


@pytest.mark.parametrize('config,query', [
    ('mask-rcnn_elsa-swin-toy_fpn_toy-shapes.py', ['30', '40']),
    ('mask-rcnn_sasa-resnet-26-w16_fpn_toy-shapes.py', ['0', '0'])])
def test_command_line_draws_a_photograph(config, query, tmp_path):
    import matplotlib.cbook
    import matplotlib.image as mpimg
    image = matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)
    sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis_tools'))
    import vis_attention
    out = tmp_path / 'attn.png'
    result = vis_attention.main([osp.join(TOY, config), '--image', image, '--size', '64', '80',
                                 '--layer', '0', '--query', *query, '--out', str(out)])
    assert mpimg.imread(str(out)).ndim == 3
    qmap = result['qmap']
    assert result['image_size'] == (64, 80)
    assert 'mean over heads' in qmap.maps
    if query == ['0', '0']:
        assert np.isnan(qmap.maps['mean over heads'][0]).all()  # the masked border row


def _first_call(model, cls, image):
    from mmattn.utils.attention_maps import layer_call
    (name, layer) = [(n, m) for n, m in attention_layers(model) if isinstance(m, cls)][0]
    return layer, layer_call(model, layer, image)


def test_lavit_maps_are_the_attention_the_layer_returns():
    from mmattn.backbones import LaViT
    from mmattn.layers.less_attention import LaViTAttentionLA, LaViTAttentionVA
    torch.manual_seed(0)
    model = LaViT('t').eval()
    image = torch.randn(1, 3, 64, 80)
    for cls in (LaViTAttentionVA, LaViTAttentionLA):
        layer, call = _first_call(model, cls, image)
        h, w = call.args[1]
        qmap = query_map(layer, call, (20, 33), (64, 80))
        row, col = qmap.query
        assert qmap.layout == 'grid' and (row, col) == (20 * h // 64, 33 * w // 80)
        attn = call.output[2][0, :, row * w + col]
        for i in range(layer.num_heads):
            np.testing.assert_allclose(qmap.maps[f'head {i}'].ravel(), attn[i].double().numpy())
            assert qmap.maps[f'head {i}'].sum() == pytest.approx(1.)


def test_plg_local_window_and_global_grid():
    from mmattn.backbones import PLGViT
    from mmattn.layers.plg_attention import PLGAttention
    torch.manual_seed(0)
    model = PLGViT('lw-r').eval()
    layer, call = _first_call(model, PLGAttention, torch.randn(1, 3, 64, 64))
    _, h, w, _ = call.args[0].shape  # 16x16 map, window 7: windows of rows/cols 0-6, 7-13, 14-20
    qmap = query_map(layer, call, (40, 60), (64, 64))  # map pixel (10, 15): window (1, 2)
    assert qmap.query == (10, 15)
    local = qmap.maps['local head 0']
    inside = ~np.isnan(local)
    assert inside[7:14, 14:].all() and inside.sum() == 7 * 2  # the window's part inside the map
    assert local[inside].sum() + qmap.outside['local head 0'] == pytest.approx(1.)
    assert qmap.outside['local head 0'] > 0  # the zero padding of the border window
    glob = qmap.maps['global head 0']
    assert glob.shape == (7, 7) and glob.sum() == pytest.approx(1.)


def test_castling_weights_are_the_linear_angular_kernel():
    from mmattn.backbones import CastlingViT
    from mmattn.layers.linear_angular_attention import LinearAngularAttention
    torch.manual_seed(0)
    model = CastlingViT(arch='deit-tiny', img_size=64, patch_size=8).eval()
    layer, call = _first_call(model, LinearAngularAttention, torch.randn(1, 3, 64, 64))
    qmap = query_map(layer, call, (30, 12), (64, 64))
    row, col = qmap.query
    x = call.args[0][0].double()
    qkv = F.linear(x, layer.qkv.weight.double(),
                   None if layer.qkv.bias is None else layer.qkv.bias.double())
    heads = layer.num_heads
    q, k, _ = qkv.view(x.shape[0], 3, heads, -1).unbind(1)  # (L, heads, d)
    q_hat, k_hat = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    query_token = 1 + row * 8 + col  # after the class token
    for i in range(heads):
        expected = (k_hat[1:, i] @ q_hat[query_token, i]) / np.pi
        np.testing.assert_allclose(qmap.maps[f'head {i}'].ravel(), expected.detach().numpy(),
                                   rtol=1e-5, atol=1e-6)  # q, k in fp32


def test_castling_mvit_weights_cover_the_pooled_key_grid():
    from mmattn.backbones import CastlingMViT
    from mmattn.layers.linear_angular_attention import (MultiScaleLinearAngularAttention,
                                                        pool_tokens)
    torch.manual_seed(0)
    model = CastlingMViT(arch='tiny').eval()
    layer, call = _first_call(model, MultiScaleLinearAngularAttention, torch.randn(1, 3, 96, 64))
    qmap = query_map(layer, call, (50, 10), (96, 64))
    x, hw = call.args[0], call.args[1]
    q, k, _ = layer._split_heads(layer.qkv(x))
    q, q_hw = pool_tokens(q, layer.pool_q, hw, layer.norm_q)
    k, kv_hw = pool_tokens(k, layer.pool_k, hw, layer.norm_k)
    assert qmap.layout == 'grid' and qmap.map_size == tuple(q_hw)
    assert qmap.maps['head 0'].shape == tuple(kv_hw) and kv_hw[0] * kv_hw[1] < q_hw[0] * q_hw[1]
    row, col = qmap.query
    q_hat = F.normalize(q[0, 0, row * q_hw[1] + col].double(), dim=-1)
    k_hat = F.normalize(k[0, 0].double(), dim=-1)
    np.testing.assert_allclose(qmap.maps['head 0'].ravel(),
                               (k_hat @ q_hat).detach().numpy() / np.pi, rtol=1e-5, atol=1e-6)


def test_castling_layer_called_without_extra_tokens():
    """A bare LinearAngularAttention call (no class token, the layer's default): the query is
    token row * W + col."""
    from mmattn.layers.linear_angular_attention import LinearAngularAttention
    from mmattn.utils.attention_maps import LayerCall
    torch.manual_seed(0)
    layer = LinearAngularAttention(16, 2).double().eval()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    qmap = query_map(layer, LayerCall((x, (3, 4)), {}, None), (2, 1), (3, 4))
    q, k, _ = F.linear(x[0], layer.qkv.weight).view(12, 3, 2, 8).unbind(1)
    expected = F.normalize(k[:, 1], dim=-1) @ F.normalize(q[2 * 4 + 1, 1], dim=-1) / np.pi
    np.testing.assert_allclose(qmap.maps['head 1'].ravel(), expected.detach().numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match='hw_shape'):
        query_map(layer, LayerCall((x, ), {}, None), (0, 0), (3, 4))
