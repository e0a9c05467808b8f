"""PLG-ViT / LW-PLG-ViT backbone (specs/plg_vit.md): D9 parameter counts and MACs, D8 key layout,
shapes at odd sizes, LW expansion, dense-prediction options, checkpoints, bad arguments."""
import math

import pytest
import torch

from mmattn.backbones import PLGViT
from mmattn.layers import GRN

# spec D9: classifier (backbone + norm3 [+ expand] + 1000-class head) and dense backbone
# (norm0..3, no head, no expansion), exact
PARAMS = {
    'tiny': (26_286_446, 25_774_342),
    'small': (51_835_820, 51_068_164),
    'base': (91_536_268, 90_513_060),
    'lw-a': (4_998_996, 3_839_724),
    'lw-r': (4_945_547, 3_675_651),
}
# spec D9 components: stem, downsamplers of stages 1-3, all blocks of each stage, expand
COMPONENTS = {
    'tiny': (81_920, (117_120, 467_712, 1_869_312),
             (140_214, 717_968, 11_248_768, 11_129_408), None),
    'small': (182_784, (263_232, 1_051_776, 4_204_800),
              (307_596, 1_195_800, 25_141_504, 18_717_792), None),
    'base': (323_584, (467_712, 1_869_312, 7_474_176),
             (538_476, 2_109_144, 44_517_632, 33_209_184), None),
    'lw-a': (48_704, (49_312, 111_776, 301_024), (101_704, 223_212, 1_822_620, 1_180_284),
             774_912),
    'lw-r': (27_888, (29_376, 111_776, 306_496), (29_691, 113_142, 1_518_850, 1_537_312),
             885_504),
}
# the published targets (papers: 27 / 52 / 91 M; LW: about 5 M) and the tolerances
TARGETS = {'tiny': (27e6, .05), 'small': (52e6, .05), 'base': (91e6, .05), 'lw-a': (5e6, .10),
           'lw-r': (5e6, .10)}

TOY = dict(widths=(16, 24, 32, 48), depths=(1, 1, 2, 1), local_heads=(1, 1, 2, 2),
           global_heads=(1, 1, 2, 2), split_ratios=(.5, .5, .5, .5), ffn='ccf+',
           global_pool='max', lw_conv=True, expand_channels=64)
TOY_ORIG = dict(TOY, ffn='ccf', global_pool='max+avg', lw_conv=False, expand_channels=None,
                split_ratios=(.5, 1 / 3, .5, .5), widths=(16, 24, 32, 48),
                local_heads=(1, 1, 2, 2), global_heads=(1, 2, 2, 2))


def _count(module):
    return sum(p.numel() for p in module.parameters())


def _model(arch=TOY, **kwargs):
    torch.manual_seed(0)
    model = PLGViT(arch, **kwargs)
    model.init_weights()
    with torch.no_grad():  # GRN starts as the identity; give it weights so it is exercised
        for m in model.modules():
            if isinstance(m, GRN):
                m.gamma.normal_(0, 0.1)
                m.beta.normal_(0, 0.1)
    return model


@pytest.mark.parametrize('arch', sorted(PARAMS))
def test_parameter_counts(arch):
    cls_params, dense_params = PARAMS[arch]
    with torch.device('meta'):
        classifier = PLGViT(arch)
        dense = PLGViT(arch, out_indices=(0, 1, 2, 3), with_expand=False)
    head = classifier.num_features[3] * 1000 + 1000
    assert _count(classifier) + head == cls_params
    assert _count(dense) == dense_params
    target, tol = TARGETS[arch]
    assert abs(cls_params / target - 1) <= tol
    stem, downs, blocks, expand = COMPONENTS[arch]
    assert _count(classifier.patch_embed) == stem
    assert [_count(s.downsample) for s in classifier.stages[1:]] == list(downs)
    assert [_count(s.blocks) for s in classifier.stages] == list(blocks)
    assert (_count(classifier.expand) if classifier.with_expand else None) == expand
    assert classifier.stages[0].downsample is None


@pytest.mark.parametrize('arch,gmac', [('lw-a', 1.73), ('lw-r', 1.09), ('tiny', 4.85)])
def test_flops_and_no_uncounted_matmuls(arch, gmac):
    """V10: mmengine's count at 224 (classifier backbone) within 5 % of the D9 estimates; the
    operators it does not count are only element-wise ones, pooling and padding (no custom
    operation, no matrix product left at zero)."""
    from mmengine.analysis import FlopAnalyzer
    model = PLGViT(arch).eval()
    analyzer = FlopAnalyzer(model, (torch.randn(1, 3, 224, 224), ))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    assert analyzer.total() / 1e9 == pytest.approx(gmac, rel=0.05)
    uncounted = set(analyzer.unsupported_ops())
    assert uncounted <= {'aten::gelu', 'aten::silu', 'aten::sigmoid', 'aten::mean', 'aten::mul',
                         'aten::add', 'aten::sub', 'aten::neg', 'aten::pad', 'aten::softmax',
                         'aten::div', 'aten::adaptive_max_pool2d',
                         'aten::linalg_vector_norm'}, uncounted


def _expected_keys(arch):
    """D8 key table, written out for the classifier backbone (out_indices=(3, ))."""
    row = PLGViT.arch_zoo[arch]
    lw = row['lw_conv']

    def down(p):
        red = [f'{p}.reduction.0.weight', f'{p}.reduction.1.weight'] if lw else \
            [f'{p}.reduction.weight']
        return [f'{p}.norm1.weight', f'{p}.norm1.bias', f'{p}.mbconv.conv.weight',
                f'{p}.mbconv.se.fc1.weight', f'{p}.mbconv.se.fc2.weight',
                f'{p}.mbconv.pw.weight', f'{p}.norm2.weight', f'{p}.norm2.bias', *red]

    keys = ['patch_embed.proj.weight', 'patch_embed.proj.bias', *down('patch_embed.down')]
    for i, depth in enumerate(row['depths']):
        if i:
            keys += down(f'stages.{i}.downsample')
        for j in range(depth):
            p = f'stages.{i}.blocks.{j}'
            keys += [f'{p}.{n}' for n in (
                'norm1.weight', 'norm1.bias', 'norm2.weight', 'norm2.bias',
                'attn.local_attn.qkv.weight', 'attn.local_attn.qkv.bias',
                'attn.local_attn.relative_position_bias_table', 'attn.global_attn.qkv.weight',
                'attn.global_attn.qkv.bias', 'attn.global_attn.relative_position_bias_table',
                'attn.proj.weight', 'attn.proj.bias', 'ffn.fc1.weight', 'ffn.fc1.bias',
                'ffn.dwconv.weight', 'ffn.dwconv.bias', 'ffn.fc2.weight', 'ffn.fc2.bias')]
            if row['ffn'] == 'ccf+':
                keys += [f'{p}.ffn.grn.gamma', f'{p}.ffn.grn.beta']
    keys += ['norm3.weight', 'norm3.bias']
    if row['expand_channels']:
        keys += ['expand.conv.weight', 'expand.norm.weight', 'expand.norm.bias']
    return sorted(keys)


@pytest.mark.parametrize('arch', ['tiny', 'lw-r'])
def test_state_dict_layout(arch):
    """V8 / D8: exactly the key table (no persistent buffers) with the spec's shapes."""
    with torch.device('meta'):
        model = PLGViT(arch)
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(sd) == _expected_keys(arch)
    if arch == 'tiny':
        assert sd['patch_embed.proj.weight'] == (64, 3, 3, 3)
        assert sd['patch_embed.down.mbconv.conv.weight'] == (64, 64, 3, 3)
        assert sd['patch_embed.down.mbconv.se.fc1.weight'] == (16, 64)
        assert sd['patch_embed.down.reduction.weight'] == (64, 64, 3, 3)
        assert sd['stages.0.blocks.0.attn.local_attn.qkv.weight'] == (96, 32)
        assert sd['stages.0.blocks.0.attn.local_attn.relative_position_bias_table'] == (169, 1)
        assert sd['stages.0.blocks.0.attn.global_attn.qkv.weight'] == (96, 32)
        assert sd['stages.0.blocks.0.attn.global_attn.relative_position_bias_table'] == (169, 1)
        assert sd['stages.0.blocks.0.attn.proj.weight'] == (64, 64)
        assert sd['stages.0.blocks.0.ffn.fc1.weight'] == (256, 64)
        assert sd['stages.0.blocks.0.ffn.dwconv.weight'] == (256, 1, 3, 3)
        assert sd['stages.0.blocks.0.ffn.fc2.weight'] == (64, 256)
        assert sd['stages.3.downsample.reduction.weight'] == (512, 256, 3, 3)
        assert sd['stages.3.blocks.3.attn.global_attn.relative_position_bias_table'] == (169, 8)
    else:  # LW-R: r = 1/3 in stages 0-1, decoupled heads, CCF-FFN+, LW reduction, expansion
        assert sd['stages.0.blocks.0.attn.local_attn.qkv.weight'] == (48, 16)
        assert sd['stages.0.blocks.0.attn.global_attn.qkv.weight'] == (96, 32)
        assert sd['stages.1.blocks.0.attn.local_attn.relative_position_bias_table'] == (169, 2)
        assert sd['stages.1.blocks.0.attn.global_attn.relative_position_bias_table'] == (169, 4)
        assert sd['stages.2.blocks.0.ffn.grn.gamma'] == (480, )
        assert sd['stages.2.blocks.0.ffn.fc2.weight'] == (160, 960)
        assert sd['patch_embed.down.mbconv.se.fc1.weight'] == (6, 48)
        assert sd['stages.3.downsample.reduction.0.weight'] == (256, 160, 1, 1)
        assert sd['stages.3.downsample.reduction.1.weight'] == (256, 1, 3, 3)
        assert sd['expand.conv.weight'] == (384, 256, 3, 3)


@pytest.mark.parametrize('arch', [TOY, TOY_ORIG], ids=['lw', 'orig'])
@pytest.mark.parametrize('size', [(97, 131), (64, 64), (30, 20)])
def test_output_shapes(arch, size):
    model = _model(arch, out_indices=(0, 1, 2, 3), with_expand=False)
    outs = model(torch.randn(1 if size[0] == 97 else 2, 3, *size))
    h, w = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    for i, out in enumerate(outs):
        assert out.shape[1:] == (arch['widths'][i], h, w)
        h, w = math.ceil(h / 2), math.ceil(w / 2)


def test_lw_expansion_and_classifier_output():
    """V7: the LW classifier output has expand_channels channels; with_expand=False builds no
    expand.* keys and keeps the stage width."""
    model = _model(TOY)
    out, = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 64, 2, 2) and model.num_features[3] == 64
    dense = PLGViT(TOY, out_indices=(0, 1, 2, 3), with_expand=False)
    assert not any(k.startswith('expand') for k in dense.state_dict())
    assert dense(torch.randn(1, 3, 64, 64))[3].shape[1] == 48
    assert not hasattr(PLGViT('tiny'), 'expand')


def test_backward_reaches_every_parameter():
    for arch in (TOY, TOY_ORIG):
        model = _model(arch, out_indices=(0, 1, 2, 3), drop_path_rate=0.)
        outs = model(torch.randn(2, 3, 61, 75))
        sum((o * torch.randn_like(o)).sum() for o in outs).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
        assert not missing


def test_with_cp_same_outputs_and_grads():
    plain = _model(TOY, out_indices=(0, 1, 2, 3), drop_path_rate=0.2)
    ckpt = PLGViT(TOY, out_indices=(0, 1, 2, 3), drop_path_rate=0.2, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 45, 70)
    losses = []
    for m in (plain, ckpt):  # same drop-path masks: same seed before each forward
        torch.manual_seed(1)
        losses.append(sum((o * o).sum() for o in m(x)))
    torch.testing.assert_close(losses[0], losses[1])
    for loss in losses:
        loss.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize('frozen', [0, 2, 4])
def test_frozen_stages(frozen):
    model = PLGViT(TOY, out_indices=(0, 1, 2, 3), frozen_stages=frozen)
    model.train()
    frozen_mods = [model.patch_embed] + [model.stages[i] for i in range(frozen)] + \
        [getattr(model, f'norm{i}') for i in range(frozen)] + \
        ([model.expand] if frozen == 4 else [])
    frozen_ids = {id(p) for m in frozen_mods for p in m.parameters()}
    assert all(not m.training for fm in frozen_mods for m in fm.modules())
    out = sum((o * torch.randn_like(o)).sum() for o in model(torch.randn(1, 3, 64, 64)))
    if out.requires_grad:
        out.backward()
    for p in model.parameters():
        if id(p) in frozen_ids:
            assert not p.requires_grad and p.grad is None
        else:
            assert p.requires_grad and p.grad is not None
    if frozen < 4:
        assert model.stages[frozen].training


def test_classifier_checkpoint_loads_into_dense_backbone(tmp_path):
    """An mmpretrain classifier checkpoint (LW, with the expansion) initialises the dense
    backbone (no expansion) through init_cfg: every shared key is loaded; the classifier's only
    unused backbone keys are expand.*, and the dense-only keys are norm0-norm2."""
    pytest.importorskip('mmpretrain')
    import mmattn.cls  # noqa: F401
    from mmpretrain.registry import MODELS
    classifier = MODELS.build(dict(
        type='ImageClassifier', backbone=dict(type='PLGViT', arch=TOY),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=64)))
    classifier.init_weights()
    with torch.no_grad():
        for p in classifier.backbone.parameters():
            p.add_(torch.randn_like(p))  # nothing may be left at its initial value
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': classifier.state_dict(), 'meta': {}}, path)
    dense = PLGViT(TOY, out_indices=(0, 1, 2, 3), with_expand=False,
                   init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    dense.init_weights()
    src, dst = classifier.backbone.state_dict(), dense.state_dict()
    assert {k.split('.')[0] for k in set(src) - set(dst)} == {'expand'}
    assert {k.split('.')[0] for k in set(dst) - set(src)} == {'norm0', 'norm1', 'norm2'}
    for name in set(src) & set(dst):
        torch.testing.assert_close(dst[name], src[name], msg=name)
    classifier.eval()
    logits = classifier(torch.randn(2, 3, 64, 64), mode='tensor')
    assert logits.shape == (2, 10)


def test_imagenet_config_trains_one_step():
    """V9: the LW-A ImageNet config's classifier (shrunk to the toy arch) takes one optimiser step
    on CPU; its paramwise settings exempt the position tables, GRN, norms and biases from weight
    decay and keep it on the linear weights."""
    pytest.importorskip('mmpretrain')
    import os.path as osp

    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    import mmattn.cls  # noqa: F401
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    from mmpretrain.utils import register_all_modules
    register_all_modules()
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    cfg = Config.fromfile(osp.join(root, 'configs', 'plg_vit', 'plg-vit-lw-a_16xb64_in1k.py'))
    assert cfg.model.backbone.arch == 'lw-a' and cfg.model.head.in_channels == 384
    cfg.model.backbone.arch = TOY
    cfg.model.head.update(in_channels=64, num_classes=5)
    cfg.model.data_preprocessor = dict(cfg.data_preprocessor, num_classes=5)  # as the runner
    model = MODELS.build(cfg.model)
    model.init_weights()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g['weight_decay'] for g in optim.param_groups for p in g['params']}
    blk = model.backbone.stages[0].blocks[0]
    for p in (blk.attn.local_attn.relative_position_bias_table,
              blk.attn.global_attn.relative_position_bias_table, blk.ffn.grn.gamma,
              blk.ffn.grn.beta, blk.norm1.weight, blk.ffn.fc1.bias):
        assert decay[id(p)] == 0
    assert decay[id(blk.ffn.fc1.weight)] == 0.05
    data = dict(inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in range(2)],
                data_samples=[DataSample().set_gt_label(i) for i in range(2)])
    before = blk.attn.global_attn.qkv.weight.detach().clone()
    losses = model.train_step(data, optim)
    assert torch.isfinite(losses['loss'])
    assert not torch.equal(before, blk.attn.global_attn.qkv.weight)


def test_no_weight_decay_and_drop_path():
    model = PLGViT(TOY, drop_path_rate=0.3)
    assert model.no_weight_decay() == {
        f'stages.{i}.blocks.{j}.attn.{b}_attn.relative_position_bias_table'
        for i, d in enumerate(TOY['depths']) for j in range(d) for b in ('local', 'global')}
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.
             for stage in model.stages for b in stage.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 5))


def test_init_scheme():
    """D7: Linear trunc-normal 0.02 / bias 0, tables trunc-normal 0.02, GRN zero, LN (1, 0)."""
    torch.manual_seed(0)
    model = PLGViT('lw-a')
    model.init_weights()
    blk = model.stages[2].blocks[0]
    assert abs(blk.ffn.fc1.weight.std().item() - 0.02) < 0.002 and not blk.ffn.fc1.bias.any()
    assert 0.015 < blk.attn.global_attn.relative_position_bias_table.std().item() < 0.025
    assert not blk.ffn.grn.gamma.any() and not blk.ffn.grn.beta.any()
    assert (blk.norm1.weight == 1).all() and model.norm3.eps == 1e-5


def test_registered_in_every_codebase():
    import mmattn.cls  # noqa: F401
    import mmattn.det  # noqa: F401
    import mmattn.seg  # noqa: F401
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as CLS
    from mmseg.registry import MODELS as SEG
    for registry in (CLS, DET, SEG):
        assert registry.get('PLGViT') is PLGViT


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(arch='huge'), ValueError, 'arch must be one of'),
    (dict(arch=3), TypeError, 'arch must be'),
    (dict(arch=dict(TOY, depths=(1, 1, 1))), ValueError, "arch\\['depths'\\]"),
    (dict(arch=dict(TOY, local_heads=(1, 1, 2))), ValueError, "arch\\['local_heads'\\]"),
    (dict(arch=dict(TOY, global_heads=(1, 1, 3, 2))), ValueError, 'global_heads'),
    (dict(arch=dict(TOY, split_ratios=(.5, .5, 1., .5))), ValueError, 'split_ratios'),
    (dict(arch=dict(TOY, ffn='mlp')), ValueError, "arch\\['ffn'\\]"),
    (dict(arch=dict(TOY, global_pool='avg')), ValueError, "arch\\['global_pool'\\]"),
    (dict(arch=dict(TOY, lw_conv=1)), TypeError, "arch\\['lw_conv'\\]"),
    (dict(arch={k: v for k, v in TOY.items() if k != 'ffn'}), ValueError, 'missing'),
    (dict(arch=dict(TOY, mlp_ratio=4)), ValueError, 'unknown'),
    (dict(arch='tiny', with_expand=True), ValueError, 'with_expand'),
    (dict(arch='lw-a', with_expand=True, out_indices=(0, 1)), ValueError, 'with_expand'),
    (dict(arch='tiny', out_indices=(0, 4)), ValueError, 'out_indices'),
    (dict(arch='tiny', out_indices=()), ValueError, 'out_indices'),
    (dict(arch='tiny', frozen_stages=5), ValueError, 'frozen_stages'),
    (dict(arch='tiny', window_size=0), ValueError, 'window_size'),
    (dict(arch='tiny', use_checkpoint=True), TypeError, 'use_checkpoint'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match), torch.device('meta'):
        PLGViT(**kwargs)
