"""LaViT backbone: spec parameter counts and FLOPs, shapes at any size, the DP loss, dense
prediction options, initialisation, checkpoints, bad arguments (``specs/lavit.md`` V1-V12)."""
import math

import pytest
import torch
import torch.nn.functional as F

import mmattn.layers.less_attention as less_attention
from mmattn.backbones import LaViT
from mmattn.layers import LaViTAttentionLA, LaViTBlock

# widths with 2 heads of 8 channels in stage 2 etc.; every stage has VA and LA layers but one
SMALL = dict(embed_dims=(8, 16, 32, 32), num_heads=(1, 2, 4, 4), mlp_ratios=(2, 2, 2, 2),
             depths=(2, 2, 3, 1))

# spec section 5: classifier (1000 classes), backbone out_indices (0, 1, 2, 3), (1, 2, 3)
PARAMS = {
    't': (11_383_139, 10_871_163, 10_871_035),
    's': (19_539_357, 19_027_381, 19_027_253),
    'b': (33_168_717, 32_656_741, 32_656_613),
}
GMAC = {'t': 1.79, 's': 3.42, 'b': 5.78}


def _count(module):
    return sum(p.numel() for p in module.parameters())


def small(**kwargs):
    kwargs.setdefault('img_size', 64)
    kwargs.setdefault('pool_size', 3)
    kwargs.setdefault('out_indices', (0, 1, 2, 3))
    kwargs.setdefault('drop_path_rate', 0.)
    model = LaViT(SMALL, **kwargs)
    model.init_weights()
    return model


def randomise_transforms(model, scale=0.05):
    """Non-zero Theta/Psi deviations (the identity start would hide their effect)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LaViTAttentionLA):
                for p in (*m.theta.parameters(), *m.psi.parameters()):
                    p.copy_(torch.randn_like(p) * scale)


@pytest.mark.parametrize('arch', sorted(PARAMS))
def test_parameter_counts(arch):
    cls_params, dense, dense_no_first = PARAMS[arch]
    with torch.device('meta'):
        counts = [_count(LaViT(arch, out_indices=o)) for o in ((3, ), (0, 1, 2, 3), (1, 2, 3))]
    assert counts[0] + 512 * 1000 + 1000 == cls_params
    assert counts[1:] == [dense, dense_no_first]


def test_arch_names_and_state_dict_layout():
    """L7 depths and VA/LA split, L9 names and shapes."""
    with torch.device('meta'):
        t, b = LaViT('tiny'), LaViT('b', out_indices=(0, 1, 2, 3))
    assert [len(getattr(b, f'block{m}')) for m in range(1, 5)] == [3, 4, 18, 3]
    assert sum(not blk.vanilla for m in range(1, 5) for blk in getattr(b, f'block{m}')) == 24
    sd = {k: tuple(v.shape) for k, v in t.state_dict().items()}
    assert sd['patch_embed1.proj.weight'] == (64, 3, 4, 4)
    assert sd['patch_embed4.proj.weight'] == (512, 320, 2, 2)
    assert sd['pos_embed1'] == (1, 3136, 64) and sd['pos_embed4'] == (1, 49, 512)
    assert sd['block2.0.attn.q.weight'] == (128, 128)
    assert sd['block2.0.attn.kv.weight'] == (256, 128)
    assert sd['block2.0.attn.sr.weight'] == (128, 128, 1, 1)
    assert sd['block3.1.attn.v.weight'] == (320, 320)
    assert sd['block3.1.attn.theta.weight_delta'] == (49, 49)
    assert sd['block3.1.attn.psi.weight_delta'] == (245, 1, 3, 3)
    assert sd['block4.1.mlp.fc1.weight'] == (2048, 512)
    assert not any(k.startswith('block3.1.attn.q') or k.startswith('block3.1.attn.kv')
                   for k in sd)
    assert sd['attn_res2.dw.weight'] == (49, 1, 3, 3) and sd['attn_res2.pw'] == (2, 1)
    assert sd['attn_res4.dw.weight'] == (245, 1, 3, 3) and sd['attn_res4.pw'] == (8, 5)
    assert sd['attn_res4.gamma'] == (8, ) and 'attn_res1.pw' not in sd
    assert {k for k in sd if k.startswith('norm')} == {'norm4.weight', 'norm4.bias'}
    assert 'cls_token' not in sd


@pytest.mark.parametrize('arch', sorted(GMAC))
def test_flops_within_3_percent_of_spec(arch):
    """V11: mmengine's count at 224 (linear, conv, matmul: Theta and Psi are convolutions)."""
    from mmengine.analysis import get_model_complexity_info
    model = LaViT(arch).eval()
    info = get_model_complexity_info(model, input_shape=(3, 224, 224), show_table=False,
                                     show_arch=False)
    assert info['flops'] / 1e9 == pytest.approx(GMAC[arch], rel=0.03)


def test_flops_of_one_la_layer_count_theta_psi_and_av():
    """No op of an LA layer is counted as zero: mmengine's count equals the formula."""
    from mmengine.analysis import FlopAnalyzer
    c, h, n, hw = 64, 2, 49, (8, 10)
    big_n = hw[0] * hw[1]
    attn = LaViTAttentionLA(c, h, 7).eval()

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x, prev):
            return self.attn(x, hw, prev)[0]

    inputs = (torch.randn(1, big_n, c), torch.randn(1, h, big_n, n))
    flops = FlopAnalyzer(Wrap(), inputs).total()
    expected = (n * c * c  # sr (1x1 conv on the pooled grid)
                + n * c * c  # v
                + h * big_n * n * n  # Theta
                + h * n * 9 * big_n  # Psi
                + h * big_n * n * (c // h)  # A V
                + big_n * c * c  # proj
                + big_n * c  # adaptive pooling (mmengine: one per input element)
                + 5 * n * c)  # the pooled tokens' LayerNorm (mmengine: 5 per element)
    assert flops == expected


@pytest.mark.parametrize('batch,size', [(1, (97, 131)), (2, (64, 64)), (1, (112, 137))])
def test_output_shapes_and_logits_at_any_size(batch, size):
    """V1/L8: grids ceil(H / 4), ceil(H / 8), ...; every layer's logits are (B, h, N, P*P)."""
    model = small()
    seen = []
    hooks = [blk.register_forward_hook(lambda mod, args, out: seen.append(
        (mod.attn.num_heads, args[1], tuple(out[1].shape))))
        for m in range(1, 5) for blk in getattr(model, f'block{m}')]
    outs = model(torch.randn(batch, 3, *size))
    for hook in hooks:
        hook.remove()
    h, w = size
    grids = []
    for out, ch in zip(outs, SMALL['embed_dims']):
        h, w = math.ceil(h / (4 if not grids else 2)), math.ceil(w / (4 if not grids else 2))
        grids.append((h, w))
        assert out.shape == (batch, ch, h, w)
    if size == (112, 137):
        assert grids == [(28, 35), (14, 18), (7, 9), (4, 5)]
    assert len(seen) == sum(SMALL['depths'])
    for heads, hw, shape in seen:
        assert hw in grids and shape == (batch, heads, hw[0] * hw[1], 9)


def test_same_state_dict_at_224_448_and_800x1333():
    """V3: no size-dependent tensors; the native grid uses the position embedding as is; a
    448 input (stage 2 as large as stage 1's native grid) and 800x1333 run."""
    model = LaViT(dict(SMALL, depths=(1, 2, 1, 1)), pool_size=7, drop_path_rate=0.,
                  out_indices=(0, 1, 2, 3)).eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert model._pos_embed(0, (56, 56)) is model.pos_embed1
    assert model._pos_embed(1, (56, 56)).shape == (1, 3136, 16)
    with torch.no_grad():
        for size in ((224, 224), (448, 448), (800, 1333)):
            outs = model(torch.randn(1, 3, *size))
            assert outs[3].shape[2:] == (math.ceil(size[0] / 32), math.ceil(size[1] / 32))
            assert all(torch.isfinite(o).all() for o in outs)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes


def test_position_embedding_resize_is_bilinear():
    model = small(img_size=32)
    pos = model.pos_embed1  # native 8x8
    ref = F.interpolate(pos.reshape(1, 8, 8, 8).permute(0, 3, 1, 2), size=(5, 11),
                        mode='bilinear', align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model._pos_embed(0, (5, 11)), ref)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = small()
    randomise_transforms(model)
    outs = model(torch.randn(2, 3, 61, 75))
    loss = sum((o * torch.randn_like(o)).sum() for o in outs) + model.get_aux_losses()['loss_dp']
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_with_cp_same_outputs_loss_dp_and_grads():
    """V9."""
    torch.manual_seed(0)
    plain = small(drop_path_rate=0.2)
    randomise_transforms(plain)
    ckpt = small(drop_path_rate=0.2, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 45, 70)
    results = []
    for model in (plain, ckpt):  # same drop-path masks: same seed before each forward
        torch.manual_seed(1)
        out = sum((o * o).mean() for o in model(x))
        dp = model.get_aux_losses()['loss_dp']
        (out + dp).backward()
        results.append((out, dp))
    torch.testing.assert_close(results[0], results[1])
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def _record_dp_terms(monkeypatch):
    calls = []
    original = less_attention.diagonality_loss

    def recording(attn, hw_shape, pool_size):
        value = original(attn, hw_shape, pool_size)
        calls.append((hw_shape, value.detach()))
        return value

    monkeypatch.setattr(less_attention, 'diagonality_loss', recording)
    return calls


def test_loss_dp_is_the_weighted_mean_over_la_layers(monkeypatch):
    calls = _record_dp_terms(monkeypatch)
    model = small(dp_loss_weight=0.3)
    randomise_transforms(model, 0.5)
    model(torch.randn(2, 3, 64, 64))
    loss = model.get_aux_losses()['loss_dp']
    assert len(calls) == 4  # LA layers: 1 + 1 + 2 + 0
    torch.testing.assert_close(loss, 0.3 * torch.stack([v for _, v in calls]).mean())
    assert model.get_aux_losses() == {}  # cleared on collection


@pytest.mark.parametrize('kwargs,train', [(dict(), False), (dict(dp_loss_weight=0.), True),
                                          (dict(frozen_stages=4), True)])
def test_no_dp_loss_in_eval_with_weight_0_or_all_frozen(monkeypatch, kwargs, train):
    """V7: no DP work and no (zero-valued) loss_dp."""
    calls = _record_dp_terms(monkeypatch)
    model = small(**kwargs).train(train)
    model(torch.randn(1, 3, 32, 32))
    assert model.get_aux_losses() == {} and calls == []


def test_dp_loss_skips_frozen_stages_and_reaches_va_and_la(monkeypatch):
    calls = _record_dp_terms(monkeypatch)
    model = small(frozen_stages=2)
    model(torch.randn(1, 3, 64, 64))
    assert [hw for hw, _ in calls] == [(4, 4), (4, 4)]  # stage 3's two LA layers only
    model = small()
    model(torch.randn(1, 3, 64, 64))
    model.get_aux_losses()['loss_dp'].backward()
    for name in ('block2.0.attn.q.weight', 'block2.0.attn.kv.weight',
                 'block2.1.attn.theta.weight_delta', 'block2.1.attn.psi.weight_delta',
                 'block3.2.attn.theta.weight_delta', 'attn_res2.gamma'):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.any(), name


def test_uncollected_loss_warns_once():
    model = small()
    x = torch.randn(1, 3, 32, 32)
    with pytest.warns(UserWarning, match='BackboneAuxLossHook') as record:
        for _ in range(4):
            model(x)
    assert len([w for w in record if 'BackboneAuxLossHook' in str(w.message)]) == 1


@pytest.mark.parametrize('frozen', [0, 1, 2, 4])
def test_frozen_stages(frozen):
    """V12 / L8."""
    model = small(frozen_stages=frozen, norm_eval=True)
    model.train()
    names = ['patch_embed1', 'pos_embed1']
    for m in range(1, frozen + 1):
        names += [f'patch_embed{m}', f'pos_embed{m}', f'block{m}', f'attn_res{m}', f'norm{m}']
    frozen_names = {n for n, _ in model.named_parameters()
                    if any(n == k or n.startswith(k + '.') for k in names)}
    for n, mod in model.named_modules():
        if n and any(n == k or n.startswith(k + '.') for k in names):
            assert not mod.training, n
    outs = model(torch.randn(1, 3, 64, 64))
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    aux = model.get_aux_losses()
    if aux:
        loss = loss + aux['loss_dp']
    if loss.requires_grad:
        loss.backward()
    for n, p in model.named_parameters():
        assert p.requires_grad == (n not in frozen_names), n
        if n in frozen_names:
            assert p.grad is None, n
    if frozen < 4:
        assert getattr(model, f'block{frozen + 1}').training


def test_init_survives_generic_initialisers():
    """V10: a classifier's TruncNormal(Linear) / Constant(LayerNorm) / Kaiming(Conv2d) init_cfg
    leaves the identity start of Theta/Psi and the attention-residual inits intact."""
    pytest.importorskip('mmpretrain')
    import mmattn.cls  # noqa: F401
    from mmpretrain.registry import MODELS
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='LaViT', arch=SMALL, img_size=32, pool_size=3),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=32),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
                  dict(type='Constant', layer='LayerNorm', val=1., bias=0.),
                  dict(type='Kaiming', layer='Conv2d')]))
    randomise_transforms(model.backbone)
    model.init_weights()
    bb = model.backbone
    for m in range(1, 5):
        for blk in getattr(bb, f'block{m}'):
            if not blk.vanilla:
                for p in (*blk.attn.theta.parameters(), *blk.attn.psi.parameters()):
                    assert not p.any()
    for m in (2, 3, 4):
        res = getattr(bb, f'attn_res{m}')
        assert torch.all(res.dw.weight == 1 / 9) and not res.dw.bias.any()
        assert torch.all(res.pw == 1 / res.in_heads) and torch.all(res.gamma == 1e-2)
    assert bb.pos_embed2.std() > 0.01
    assert abs(bb.block1[0].mlp.fc1.weight.std().item() - 0.02) < 0.005


def test_default_init():
    torch.manual_seed(0)
    model = LaViT('t', out_indices=(3, ))
    randomise_transforms(model)
    model.init_weights()
    fc1 = model.block3[0].mlp.fc1
    assert abs(fc1.weight.std().item() - 0.02) < 0.002 and not fc1.bias.any()
    sr = model.block1[0].attn.sr  # normal, std sqrt(2 / fan_out) = sqrt(2 / 64)
    assert abs(sr.weight.std().item() - math.sqrt(2 / 64)) < 0.01 and not sr.bias.any()
    assert not model.block1[1].attn.theta.weight_delta.any()
    assert 0.015 < model.pos_embed1.std().item() < 0.025


def test_classifier_checkpoint_initialises_dense_backbone(tmp_path):
    """Checklist: Pretrained init_cfg with prefix 'backbone.' loads every backbone weight
    (non-zero Theta/Psi deviations included); only norm1-norm3 are new. A checkpoint trained at
    another img_size has its position embeddings resized on load."""
    torch.manual_seed(0)
    cls_backbone = small(img_size=32, out_indices=(3, ))
    randomise_transforms(cls_backbone)
    state = {f'backbone.{k}': v for k, v in cls_backbone.state_dict().items()}
    state['head.fc.weight'] = torch.randn(3, 32)
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': state, 'meta': {}}, path)
    dense = small(img_size=32, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                             prefix='backbone.'))
    dense.init_weights()
    ours, theirs = dense.state_dict(), cls_backbone.state_dict()
    assert set(theirs) <= set(ours)
    assert {k.split('.')[0] for k in set(ours) - set(theirs)} == {'norm1', 'norm2', 'norm3'}
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, msg=name)
    # another img_size: 64 -> 16x16 native stage-1 grid, resized from the checkpoint's 8x8
    bigger = small(img_size=64, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                              prefix='backbone.'))
    bigger.init_weights()
    src = theirs['pos_embed1'].reshape(1, 8, 8, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(src, size=(16, 16), mode='bilinear', align_corners=False)
    torch.testing.assert_close(bigger.pos_embed1.detach(), ref.flatten(2).transpose(1, 2))
    torch.testing.assert_close(bigger.block2[1].attn.theta.weight_delta,
                               theirs['block2.1.attn.theta.weight_delta'])


def test_torch_compile_matches_eager():
    model = LaViT(dict(SMALL, depths=(1, 2, 1, 1)), img_size=32, pool_size=3,
                  out_indices=(0, 1, 2, 3)).eval()
    model.init_weights()
    randomise_transforms(model)
    x = torch.randn(1, 3, 40, 36)
    compiled = torch.compile(model)
    with torch.no_grad():
        for a, b in zip(model(x), compiled(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_drop_path_linear_and_no_weight_decay():
    model = LaViT(SMALL, drop_path_rate=0.35)
    blocks = [b for m in range(1, 5) for b in getattr(model, f'block{m}')]
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for b in blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.35, 8))
    assert model.no_weight_decay() == {'pos_embed1', 'pos_embed2', 'pos_embed3', 'pos_embed4',
                                       'attn_res2.gamma', 'attn_res3.gamma', 'attn_res4.gamma'}
    assert all(isinstance(b, LaViTBlock) for b in blocks)
    assert [b.vanilla for b in model.block3] == [True, False, False]
    assert [b.vanilla for b in LaViT(SMALL, num_va=(1, 2, 2, 1)).block3] == [True, True, False]


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(arch='huge'), ValueError, 'arch must be one of'),
    (dict(arch=3), TypeError, 'arch must be'),
    (dict(arch=dict(embed_dims=(8, 16, 32, 64))), ValueError, 'missing'),
    (dict(arch=dict(depths=(1, 1, 1, 1), width=3)), ValueError, 'unknown'),
    (dict(arch=dict(depths=(1, 1, 1))), ValueError, "arch\\['depths'\\]"),
    (dict(arch=dict(depths=(1, 1, 1, 1), num_heads=(1, 2, 5))), ValueError,
     "arch\\['num_heads'\\]"),
    (dict(arch=dict(depths=(1, 1, 1, 1), num_heads=(1, 3, 5, 8))), ValueError, 'multiples'),
    (dict(arch='t', num_va=3), ValueError, 'num_va'),
    (dict(arch='t', num_va=0), ValueError, 'num_va'),
    (dict(arch='t', num_va=(1, 1, 1)), ValueError, 'num_va'),
    (dict(arch='t', pool_size=1), ValueError, 'pool_size'),
    (dict(arch='t', img_size=(224, )), ValueError, 'img_size'),
    (dict(arch='t', dp_loss_weight=-1.), ValueError, 'dp_loss_weight'),
    (dict(arch='t', dp_loss_weight='0.1'), TypeError, 'dp_loss_weight'),
    (dict(arch='t', norm_eval=1), TypeError, 'norm_eval'),
    (dict(arch='t', out_indices=(0, 4)), ValueError, 'out_indices'),
    (dict(arch='t', out_indices=()), ValueError, 'out_indices'),
    (dict(arch='t', frozen_stages=5), ValueError, 'frozen_stages'),
    (dict(arch='t', use_checkpoint=True), TypeError, 'use_checkpoint'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match), torch.device('meta'):
        LaViT(**kwargs)
