"""ELSA-Swin backbone: spec parameter counts and shapes, dense-prediction options, bad arguments."""
import math

import pytest
import torch

from mmattn.backbones import ELSASwin
from mmattn.layers import SwinBlock

SMALL = dict(embed_dims=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), group_width=4)

# spec 6.3: classifier (backbone + final norm + 1000-class head) and dense backbone (norm0..3)
PARAMS = {
    't': (29_140_978, 28_373_322),
    's': (52_874_626, 52_106_970),
    'b': (92_682_464, 91_659_256),
}


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('arch', sorted(PARAMS))
def test_parameter_counts(arch):
    cls_params, dense_params = PARAMS[arch]
    with torch.device('meta'):
        classifier_backbone = ELSASwin(arch, out_indices=(3, ))
        dense = ELSASwin(arch)
    width = classifier_backbone.num_features[3]
    assert _count(classifier_backbone) + width * 1000 + 1000 == cls_params
    assert _count(dense) == dense_params


@pytest.mark.parametrize('arch,gmac', [('t', 4.77), ('b', 16.67)])
def test_flops(arch, gmac):
    """Spec 6.4 estimates (classifier at 224; the 1000-class head adds < 0.001 GMAC), counted
    by mmengine with mmattn's ghost_head_aggregate handle (2 C k^2 per pixel)."""
    from mmengine.analysis import get_model_complexity_info

    from mmattn.ops.flops import register_flop_handles
    register_flop_handles()
    model = ELSASwin(arch, out_indices=(3, ), pad_small_map=False).eval()
    info = get_model_complexity_info(model, input_shape=(3, 224, 224), show_table=False,
                                     show_arch=False)
    assert info['flops'] / 1e9 == pytest.approx(gmac, rel=0.01)


def test_stage_shapes_tiny_and_base():
    """Spec 6.2 rows (T stage 3, B stage 2, merging reductions)."""
    with torch.device('meta'):
        t, b = ELSASwin('tiny'), ELSASwin('base')
    st = {k: tuple(v.shape) for k, v in t.state_dict().items()}
    sb = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    assert st['layers.0.blocks.0.attn.attn.0.weight'] == (64, 4, 7, 7)
    assert st['layers.0.downsample.reduction.weight'] == (192, 384)
    assert st['layers.2.downsample.reduction.weight'] == (768, 1536)
    assert st['layers.3.blocks.1.attn.qkv.weight'] == (2304, 768)
    assert st['layers.3.blocks.1.attn.relative_position_bias_table'] == (169, 24)
    assert 'layers.3.downsample.reduction.weight' not in st
    assert not any('relative_position_index' in k for k in st)
    assert sb['layers.2.blocks.17.attn.pre_proj.weight'] == (1200, 512, 1, 1)
    assert sb['layers.2.blocks.17.attn.attn.0.weight'] == (344, 8, 7, 7)
    assert sb['layers.2.blocks.17.attn.ghost_head'] == (512, 7, 7)
    assert sb['layers.3.blocks.0.attn.relative_position_bias_table'] == (169, 32)
    assert sb['patch_embed.proj.weight'] == (128, 3, 4, 4)


@pytest.mark.parametrize('size', [(97, 131), (64, 64), (30, 20)])
def test_output_shapes(size):
    model = ELSASwin(SMALL)
    model.init_weights()
    outs = model(torch.randn(1 if size[0] == 97 else 2, 3, *size))
    assert len(outs) == 4
    h, w = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    for i, out in enumerate(outs):
        assert out.shape[1:] == (16 * 2**i, h, w)
        h, w = math.ceil(h / 2), math.ceil(w / 2)


def test_out_indices_and_norms():
    model = ELSASwin(SMALL, out_indices=(1, 3))
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm1') and hasattr(model, 'norm3')
    outs = model(torch.randn(1, 3, 64, 48))
    assert [o.shape[1] for o in outs] == [32, 128]


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = ELSASwin(SMALL, drop_path_rate=0.)  # a dropped branch would get zero gradients
    model.init_weights()
    outs = model(torch.randn(2, 3, 61, 75))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    plain = ELSASwin(SMALL, drop_path_rate=0.2)
    plain.init_weights()
    ckpt = ELSASwin(SMALL, drop_path_rate=0.2, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 45, 70)
    outs = []
    for m in (plain, ckpt):  # same drop-path masks: same seed before each forward
        torch.manual_seed(1)
        outs.append(sum((o * o).sum() for o in m(x)))
    torch.testing.assert_close(outs[0], outs[1])
    for o in outs:
        o.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize('frozen', [0, 2, 4])
def test_frozen_stages(frozen):
    model = ELSASwin(SMALL, frozen_stages=frozen)
    model.train()
    frozen_mods = [model.patch_embed] + [model.layers[i] for i in range(frozen)] + \
        [getattr(model, f'norm{i}') for i in range(frozen)]
    frozen_ids = {id(p) for m in frozen_mods for p in m.parameters()}
    for m in frozen_mods:
        assert not m.training
    out = sum((o * torch.randn_like(o)).sum() for o in model(torch.randn(1, 3, 64, 64)))
    if out.requires_grad:
        out.backward()
    for p in model.parameters():
        if id(p) in frozen_ids:
            assert not p.requires_grad and p.grad is None
        else:
            assert p.requires_grad
    assert model.layers[frozen].training if frozen < 4 else True


def test_small_map_shift_rule():
    """Dense mode shifts odd last-stage blocks even on maps <= window; classifier mode does not."""
    torch.manual_seed(0)
    shifted = SwinBlock(16, 2, 7, shift=True, pad_small_map=True)
    no_shift = SwinBlock(16, 2, 7, shift=False)
    cls_mode = SwinBlock(16, 2, 7, shift=True, pad_small_map=False)
    with torch.no_grad():
        for m in (no_shift, cls_mode):
            m.load_state_dict(shifted.state_dict())
    x = torch.randn(2, 49, 16)
    torch.testing.assert_close(cls_mode(x, (7, 7)), no_shift(x, (7, 7)))
    assert not torch.allclose(shifted(x, (7, 7)), no_shift(x, (7, 7)))
    # larger maps: both modes shift
    x = torch.randn(1, 100, 16)
    torch.testing.assert_close(cls_mode(x, (10, 10)), shifted(x, (10, 10)))


def test_no_weight_decay_lists_the_tables():
    model = ELSASwin(SMALL)
    assert model.no_weight_decay() == {'layers.3.blocks.0.attn.relative_position_bias_table',
                                       'layers.3.blocks.1.attn.relative_position_bias_table'}


def test_drop_path_is_linear_over_all_blocks():
    model = ELSASwin(SMALL, drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.
             for stage in model.layers for b in stage.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 6))


def test_init_follows_official_scheme():
    torch.manual_seed(0)
    model = ELSASwin('t', out_indices=(3, ))
    model.init_weights()
    fc1 = model.layers[2].blocks[0].mlp.fc1
    assert abs(fc1.weight.std().item() - 0.02) < 0.002 and not fc1.bias.any()
    table = model.layers[3].blocks[0].attn.relative_position_bias_table
    assert 0.015 < table.std().item() < 0.025
    conv = model.layers[0].blocks[0].attn.pre_proj  # PyTorch default: U(-1/sqrt(fan_in), ...)
    assert conv.weight.abs().max().item() <= 1 / math.sqrt(96) + 1e-6
    assert conv.weight.std().item() > 0.05


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(arch='huge'), ValueError, 'arch must be one of'),
    (dict(arch=3), TypeError, 'arch must be'),
    (dict(arch=dict(embed_dims=16, depths=(1, 1, 1), num_heads=(1, 2, 2, 4), group_width=4)),
     ValueError, "arch\\['depths'\\]"),
    (dict(arch=dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4), group_width=4)),
     ValueError, "arch\\['num_heads'\\]"),
    (dict(arch=dict(embed_dims=16, depths=(1, 1, 1, 1))), ValueError, 'missing'),
    (dict(arch='t', out_indices=(0, 4)), ValueError, 'out_indices'),
    (dict(arch='t', out_indices=()), ValueError, 'out_indices'),
    (dict(arch='t', frozen_stages=5), ValueError, 'frozen_stages'),
    (dict(arch='t', use_checkpoint=True), TypeError, 'use_checkpoint'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match), torch.device('meta'):
        ELSASwin(**kwargs)
