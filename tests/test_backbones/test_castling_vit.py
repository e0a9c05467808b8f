"""Castling-DeiT and Castling-MViTv2 backbones: spec counts and FLOPs, mmpretrain key layout,
whole-network equivalence with mmpretrain's layouts under a reference linear-angular attention,
dense-prediction options, bad arguments."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmattn.backbones import CastlingMViT, CastlingViT
from mmattn.layers import LinearAngularAttention

VIT_SMALL = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
MVIT_SMALL = dict(embed_dims=16, num_layers=4, num_heads=1, downscale_indices=(1, 2, 3))

# spec D6: classifier parameters (backbone + 1000-class head)
VIT_PARAMS = {'deit-tiny': 5_717_740, 'deit-small': 22_051_312, 'deit-base': 86_568_952}
MVIT_PARAMS = {'tiny': 24_092_281, 'small': 34_758_289, 'base': 51_300_808}


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('arch', sorted(VIT_PARAMS))
def test_vit_parameter_counts(arch):
    with torch.device('meta'):
        model = CastlingViT(arch)
    assert _count(model) + model.embed_dims * 1000 + 1000 == VIT_PARAMS[arch]


@pytest.mark.parametrize('arch', sorted(MVIT_PARAMS))
def test_mvit_parameter_counts(arch):
    with torch.device('meta'):
        model = CastlingMViT(arch, out_scales=(3, ))
    assert _count(model) + 768 * 1000 + 1000 == MVIT_PARAMS[arch]


def test_parameter_targets_of_the_issue():
    """D6 targets: DeiT-T in 5.6-5.8 M, DeiT-B ~86.6 M, MViTv2-B ~51.3 M (within 0.5%)."""
    assert 5.6e6 <= VIT_PARAMS['deit-tiny'] <= 5.8e6
    assert VIT_PARAMS['deit-base'] == pytest.approx(86.6e6, rel=5e-3)
    assert MVIT_PARAMS['base'] == pytest.approx(51.3e6, rel=5e-3)


@pytest.mark.parametrize('cls,arch,gmac,rel', [(CastlingViT, 'deit-tiny', 1.14, 0.01),
                                               (CastlingMViT, 'tiny', 4.24, 0.015)])
def test_flops(cls, arch, gmac, rel):
    """Spec D6 estimates (softmax FLOPs minus the section-5 savings) counted by mmengine: the
    linear-angular matmuls and the conv are counted (no custom op). MViT within 1.5%: the
    spec's estimate subtracts from mmpretrain's softmax count, which includes rel-pos terms."""
    from mmengine.analysis import get_model_complexity_info
    model = cls(arch).eval()
    info = get_model_complexity_info(model, input_shape=(3, 224, 224), show_table=False,
                                     show_arch=False)
    assert info['flops'] / 1e9 == pytest.approx(gmac, rel=rel)


def test_vit_keys_match_mmpretrain():
    from mmpretrain.models.backbones import VisionTransformer
    with torch.device('meta'):
        ours = CastlingViT('deit-tiny').state_dict()
        ref = VisionTransformer('deit-tiny').state_dict()
    dconv = {k for k in ours if k.endswith('attn.dconv.weight')}
    assert len(dconv) == 12
    assert set(ours) - dconv == set(ref)
    for k in ref:
        assert ours[k].shape == ref[k].shape, k
    assert tuple(ours['layers.0.attn.dconv.weight'].shape) == (3, 1, 9, 1)


@pytest.mark.parametrize('arch', ['tiny', 'base'])
def test_mvit_keys_match_mmpretrain(arch):
    from mmpretrain.models.backbones import MViT
    with torch.device('meta'):
        ours = CastlingMViT(arch, out_scales=(0, 1, 2, 3)).state_dict()
        ref = MViT(arch, out_scales=(0, 1, 2, 3)).state_dict()
    dconv = {k for k in ours if k.endswith('attn.dconv.weight')}
    rel = {k for k in ref if k.endswith(('rel_pos_h', 'rel_pos_w'))}
    assert len(dconv) == CastlingMViT.arch_zoo[arch]['num_layers']
    assert set(ours) - dconv == set(ref) - rel
    for k in set(ref) - rel:
        assert ours[k].shape == ref[k].shape, k
    removed = sum(ref[k].numel() for k in rel)
    assert removed == {'tiny': 81_408, 'base': 172_800}[arch]  # spec D4


def _ref_attention(x, qkv, proj, num_heads, q_pool=None):
    """Linear-angular attention from the spec's formulas with zero conv taps (float64)."""
    b, length, _ = x.shape
    q, k, v = F.linear(x, qkv.weight, qkv.bias).reshape(b, length, 3, num_heads, -1) \
        .permute(2, 0, 3, 1, 4)
    vq = v
    if q_pool is not None:
        q, k, v, vq = q_pool(q, k, v)
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    y = 0.5 * vq + qn @ (kn.transpose(-2, -1) @ v) / math.pi
    y = y / y.norm(dim=-1, keepdim=True)
    return y, q


def test_vit_equals_mmpretrain_layout_with_reference_attention(monkeypatch):
    """mmpretrain's VisionTransformer with its attention forward replaced by the reference
    linear-angular formula gives the same features as CastlingViT with zero conv taps."""
    from mmpretrain.models.backbones import VisionTransformer
    from mmpretrain.models.utils import MultiheadAttention

    def forward(self, x):
        y, _ = _ref_attention(x, self.qkv, self.proj, self.num_heads)
        return self.proj(y.transpose(1, 2).reshape(x.shape))

    monkeypatch.setattr(MultiheadAttention, 'forward', forward)
    torch.manual_seed(0)
    ref = VisionTransformer(VIT_SMALL, img_size=64, out_type='featmap',
                            out_indices=(1, 3)).double()
    ref.init_weights()
    ours = CastlingViT(VIT_SMALL, img_size=64, out_type='featmap', out_indices=(1, 3)).double()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(k.endswith('attn.dconv.weight') for k in missing)
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, LinearAngularAttention):
                m.dconv.weight.zero_()
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 80, dtype=torch.float64)  # pos embed resized at run time
    for a, b in zip(ours(x), ref(x)):
        torch.testing.assert_close(a, b)


def test_mvit_equals_mmpretrain_layout_with_reference_attention(monkeypatch):
    """Same for mmpretrain's MViT (no relative positions) with D4's pooling and v_q."""
    from mmpretrain.models.backbones import MViT
    from mmpretrain.models.backbones.mvit import MultiScaleAttention, attention_pool

    def forward(self, x, in_size):
        def pool(q, k, v):
            q, q_shape = attention_pool(q, self.pool_q, in_size, norm=self.norm_q)
            k, _ = attention_pool(k, self.pool_k, in_size, norm=self.norm_k)
            v, kv_shape = attention_pool(v, self.pool_v, in_size, norm=self.norm_v)
            b, h, _, d = v.shape
            vq = F.adaptive_avg_pool2d(v.transpose(2, 3).reshape(b * h, d, *kv_shape),
                                       tuple(q_shape))
            pool.q_shape = tuple(q_shape)
            return q, k, v, vq.reshape(b, h, d, -1).transpose(2, 3)
        y, q = _ref_attention(x, self.qkv, self.proj, self.num_heads, pool)
        y = y + q
        return self.proj(y.transpose(1, 2).reshape(x.shape[0], -1, self.out_dims)), pool.q_shape

    monkeypatch.setattr(MultiScaleAttention, 'forward', forward)
    torch.manual_seed(0)
    ref = MViT(MVIT_SMALL, out_scales=(0, 1, 2, 3), rel_pos_spatial=False).double()
    ours = CastlingMViT(MVIT_SMALL, out_scales=(0, 1, 2, 3)).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(k.endswith('attn.dconv.weight') for k in missing)
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, LinearAngularAttention):
                m.dconv.weight.zero_()
    x = torch.randn(2, 3, 61, 75, dtype=torch.float64)
    outs, refs = ours(x), ref(x)
    assert len(outs) == 4
    for a, b in zip(outs, refs):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('size', [(97, 131), (64, 64)])
def test_vit_output_shapes(size):
    model = CastlingViT(VIT_SMALL, img_size=64, out_type='featmap', out_indices=(0, 1, 2, 3))
    outs = model(torch.randn(1 if size[0] == 97 else 2, 3, *size))
    assert len(outs) == 4
    for out in outs:
        assert out.shape[1:] == (32, math.ceil(size[0] / 16), math.ceil(size[1] / 16))
    cls = CastlingViT(VIT_SMALL, img_size=64)(torch.randn(2, 3, 64, 64))
    assert len(cls) == 1 and cls[0].shape == (2, 32)


def test_vit_dense_outputs_at_512():
    """V9: out_indices (3, 5, 7, 11) at 512 give four (B, C, 32, 32) maps."""
    model = CastlingViT('deit-tiny', img_size=512, out_type='featmap',
                        out_indices=(3, 5, 7, 11)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 512, 512))
    assert [tuple(o.shape) for o in outs] == [(1, 192, 32, 32)] * 4


@pytest.mark.parametrize('size', [(97, 131), (64, 64), (30, 20)])
def test_mvit_output_shapes(size):
    model = CastlingMViT(MVIT_SMALL, out_scales=(0, 1, 2, 3))
    outs = model(torch.randn(1 if size[0] == 97 else 2, 3, *size))
    h, w = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    for i, out in enumerate(outs):
        assert out.shape[1:] == (16 * 2**i, h, w)
        h, w = math.ceil(h / 2), math.ceil(w / 2)


def test_mvit_grids_of_the_tiny_arch():
    """D4 table: q/kv grids of castling-mvit-t at 224 (stage 1: 56 vs 14; stage 3 first block:
    14 vs 28; stage 4 first block: 7 vs 14)."""
    model = CastlingMViT('tiny').eval()
    seen = {}
    for i in (0, 3, 8):
        attn = model.blocks[i].attn
        attn.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, (a[1], out[1])))
    strides = [(b.attn.pool_q.stride[0], b.attn.pool_k.stride[0]) for b in model.blocks]
    assert strides == [(1, 4), (2, 2), (1, 2), (2, 1), (1, 1), (1, 1), (1, 1), (1, 1), (2, 1),
                       (1, 1)]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert seen[0] == ((56, 56), (56, 56)) and seen[3] == ((28, 28), (14, 14))
    assert seen[8] == ((14, 14), (7, 7))


def test_mvit_tiny_strides_at_256x320():
    """V7: castling-mvit-t at 256x320 gives strides 4/8/16/32 with channels 96-768."""
    model = CastlingMViT('tiny', out_scales=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 256, 320))
    assert [tuple(o.shape[1:]) for o in outs] == [(96, 64, 80), (192, 32, 40), (384, 16, 20),
                                                  (768, 8, 10)]


def test_vit_through_multilevel_neck_gives_strides_4_to_32():
    """V9: the four stride-16 maps become strides 4/8/16/32 through mmseg's MultiLevelNeck."""
    from mmseg.models.necks import MultiLevelNeck
    vit = CastlingViT(VIT_SMALL, img_size=64, out_type='featmap', out_indices=(0, 1, 2, 3))
    neck = MultiLevelNeck([32] * 4, 32, scales=[4, 2, 1, 0.5])
    outs = neck(vit(torch.randn(1, 3, 64, 96)))
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize('cls,arch,kwargs', [
    (CastlingViT, VIT_SMALL, dict(out_type='featmap', out_indices=(1, 3), img_size=32)),
    (CastlingMViT, MVIT_SMALL, dict(out_scales=(0, 1, 2, 3))),
])
def test_backward_reaches_every_parameter(cls, arch, kwargs):
    torch.manual_seed(0)
    model = cls(arch, sparse_reg=True, **kwargs)
    model.init_weights()
    model.train()
    outs = model(torch.randn(2, 3, 45, 61))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


@pytest.mark.parametrize('cls,arch,kwargs', [
    (CastlingViT, VIT_SMALL, dict(out_type='featmap', out_indices=(1, 3), img_size=32)),
    (CastlingMViT, MVIT_SMALL, dict(out_scales=(0, 1, 2, 3))),
])
def test_with_cp_same_outputs_and_grads(cls, arch, kwargs):
    torch.manual_seed(0)
    plain = cls(arch, drop_path_rate=0.2, sparse_reg=True, **kwargs)
    plain.init_weights()
    ckpt = cls(arch, drop_path_rate=0.2, sparse_reg=True, with_cp=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 45, 70)
    losses = []
    for m in (plain, ckpt):
        torch.manual_seed(1)
        losses.append(sum((o * o).sum() for o in m(x)))
    torch.testing.assert_close(losses[0], losses[1])
    for loss in losses:
        loss.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize('frozen', [1, 4])
def test_vit_frozen_stages(frozen):
    model = CastlingViT(VIT_SMALL, img_size=32, frozen_stages=frozen, out_type='featmap',
                        out_indices=(3, ))
    model.train()
    frozen_mods = [model.patch_embed] + list(model.layers[:frozen]) + \
        ([model.ln1] if frozen == 4 else [])
    frozen_ids = {id(p) for m in frozen_mods for p in m.parameters()}
    frozen_ids |= {id(model.pos_embed), id(model.cls_token)}
    assert all(not m.training for m in frozen_mods)
    out = model(torch.randn(1, 3, 32, 32))[0]
    if out.requires_grad:
        out.sum().backward()
    for p in model.parameters():
        assert p.requires_grad == (id(p) not in frozen_ids)
        if id(p) in frozen_ids:
            assert p.grad is None


@pytest.mark.parametrize('frozen', [0, 2, 4])
def test_mvit_frozen_stages(frozen):
    model = CastlingMViT(MVIT_SMALL, frozen_stages=frozen, out_scales=(0, 1, 2, 3))
    model.train()
    frozen_mods = [model.patch_embed] + [b for b, s in zip(model.blocks, model.stage_of)
                                         if s < frozen] + \
        [getattr(model, f'norm{s}') for s in range(frozen)]
    frozen_ids = {id(p) for m in frozen_mods for p in m.parameters()}
    assert all(not m.training for m in frozen_mods)
    out = sum(o.sum() for o in model(torch.randn(1, 3, 32, 32)))
    if out.requires_grad:
        out.backward()
    for p in model.parameters():
        assert p.requires_grad == (id(p) not in frozen_ids)


def test_pretrained_init_cfg_loads_classifier_checkpoint(tmp_path):
    """A classifier checkpoint (``backbone.`` prefix, head keys) initialises a dense backbone
    through init_cfg with every tensor loaded."""
    torch.manual_seed(0)
    src = CastlingMViT(MVIT_SMALL, out_scales=(0, 1, 2, 3))
    sd = {f'backbone.{k}': v.normal_() for k, v in src.state_dict().items()}
    sd['head.fc.weight'] = torch.randn(10, 128)
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': sd, 'meta': {}}, path)
    dense = CastlingMViT(MVIT_SMALL, out_scales=(0, 1, 2, 3),
                         init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                       prefix='backbone.'))
    dense.init_weights()
    for k, v in dense.state_dict().items():
        assert torch.equal(v, sd[f'backbone.{k}']), k


def test_pos_embed_resized_on_load():
    src = CastlingViT(VIT_SMALL, img_size=64)
    dst = CastlingViT(VIT_SMALL, img_size=96)
    dst.load_state_dict(src.state_dict())
    assert dst.pos_embed.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(dst.pos_embed[:, 0], src.pos_embed[:, 0])


def test_no_weight_decay():
    assert CastlingViT(VIT_SMALL, img_size=32).no_weight_decay() == {'pos_embed', 'cls_token'}


@pytest.mark.parametrize('cls,arch,kwargs', [
    (CastlingViT, dict(embed_dims=16, num_layers=1, num_heads=2, feedforward_channels=32),
     dict(img_size=32, out_type='featmap', out_indices=(0, ))),
])
def test_torch_compile_matches_eager(cls, arch, kwargs):
    """Inductor on a one-layer Castling-DeiT (the linear-angular core, sequence conv, class
    token). CastlingMViT compiles too (its extra parts are standard pooling, convs and
    LayerNorms) but costs another ~40 s of cold compilation on our CI machine."""
    torch.manual_seed(0)
    model = cls(arch, **kwargs).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, backend='inductor')(x)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('cls,kwargs,error,match', [
    (CastlingViT, dict(arch='deit-huge'), ValueError, 'arch must be one of'),
    (CastlingViT, dict(arch=3), TypeError, 'arch must be'),
    (CastlingViT, dict(arch=dict(embed_dims=32, num_layers=2)), ValueError, 'missing'),
    (CastlingViT, dict(arch=dict(VIT_SMALL, num_heads=3)), ValueError, 'num_heads'),
    (CastlingViT, dict(out_indices=(12, )), ValueError, 'out_indices'),
    (CastlingViT, dict(out_indices=()), ValueError, 'out_indices'),
    (CastlingViT, dict(out_type='tokens'), ValueError, 'out_type'),
    (CastlingViT, dict(with_cls_token=False), ValueError, 'with_cls_token'),
    (CastlingViT, dict(frozen_stages=13), ValueError, 'frozen_stages'),
    (CastlingViT, dict(dconv_mode='2d'), ValueError, 'dconv_mode'),
    (CastlingViT, dict(sparse_reg='yes'), TypeError, 'sparse_reg'),
    (CastlingMViT, dict(arch='huge'), ValueError, 'arch must be one of'),
    (CastlingMViT, dict(arch=dict(MVIT_SMALL, downscale_indices=(1, 2))), ValueError,
     'downscale_indices'),
    (CastlingMViT, dict(arch=dict(MVIT_SMALL, downscale_indices=(2, 1, 3))), ValueError,
     'downscale_indices'),
    (CastlingMViT, dict(out_scales=(4, )), ValueError, 'out_scales'),
    (CastlingMViT, dict(frozen_stages=5), ValueError, 'frozen_stages'),
    (CastlingMViT, dict(res_kernel_size=4), ValueError, 'res_kernel_size'),
    (CastlingMViT, dict(use_checkpoint=True), TypeError, 'use_checkpoint'),
])
def test_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match), torch.device('meta'):
        cls(**kwargs)
