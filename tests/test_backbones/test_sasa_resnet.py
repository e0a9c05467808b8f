"""SASA-ResNet backbones (specs/sasa_resnet.md S3-S6, V9-V11) and the family checklist."""
from unittest import mock

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmattn.backbones import SASAResNet
from mmattn.layers import SASAAttention

HEAD_PARAMS = 2048 * 1000 + 1000  # LinearClsHead(2048, 1000)
# (depth, stem): expected classifier parameters (spec S5), the paper's count, expected GMAC
VARIANTS = {
    (26, 'conv'): (10_342_632, 10.3e6, 2.24),
    (26, 'attention'): (10_335_592, 10.3e6, 2.35),
    (38, 'conv'): (14_190_632, 14.1e6, 2.86),
    (38, 'attention'): (14_183_592, 14.1e6, 2.97),
    (50, 'conv'): (18_038_632, 18.0e6, 3.48),
    (50, 'attention'): (18_031_592, 18.0e6, 3.59),
}
IDS = [f'r{d}-{s}' for d, s in VARIANTS]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def tiny(**kwargs) -> SASAResNet:
    """A small SASA-ResNet-26 (base width 16, head dims 2/4/8/16) for the functional tests."""
    kwargs.setdefault('out_indices', (0, 1, 2, 3))
    model = SASAResNet(26, base_channels=16, kernel_size=3, **kwargs)
    model.init_weights()
    return model


@pytest.mark.parametrize('variant', VARIANTS, ids=IDS)
def test_parameter_counts(variant):
    expected, paper, _ = VARIANTS[variant]
    n = n_params(SASAResNet(variant[0], stem=variant[1])) + HEAD_PARAMS
    assert n == expected
    assert abs(n - paper) / paper < 0.02


@pytest.mark.parametrize('conv_stages, expected_m', [
    ((True, False, False, False), 18.11), ((True, True, False, False), 18.50),
    ((True, True, True, False), 20.85), ((True, True, True, True), 25.56)])
def test_table3_mixed_variants(conv_stages, expected_m):
    attn = tuple(not c for c in conv_stages)
    n = n_params(SASAResNet(50, attn_stages=attn)) + HEAD_PARAMS
    assert n / 1e6 == pytest.approx(expected_m, rel=5e-3)


@pytest.mark.parametrize('variant', VARIANTS, ids=IDS)
def test_flops(variant):
    """V10: mmengine's analysis with the na2d handle, multiply-accumulates at 224x224."""
    from mmengine.analysis import get_model_complexity_info

    from mmattn.ops.flops import register_flop_handles
    register_flop_handles()
    model = SASAResNet(variant[0], stem=variant[1]).eval()
    info = get_model_complexity_info(model, input_shape=(3, 224, 224), show_table=False,
                                     show_arch=False)
    assert info['flops'] / 1e9 == pytest.approx(VARIANTS[variant][2], rel=0.03)


@pytest.mark.parametrize('stem', ['conv', 'attention'])
@pytest.mark.parametrize('size', [(97, 131), (64, 64), (112, 137)], ids=str)
def test_output_shapes(stem, size):
    model = tiny(stem=stem)
    outs = model(torch.randn(2, 3, *size))
    assert len(outs) == 4
    for i, out in enumerate(outs):
        s = 2**(i + 2)
        assert out.shape == (2, 16 * 2**i * 4, -(-size[0] // s), -(-size[1] // s))


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_conv_stem_channels_last_path_matches_nchw(train):
    """The CPU stem runs channels-last: same values and gradients as ATen's NCHW conv / BN /
    ReLU / max-pool (float64), a channels-last output (the backbone sets each stage's layout),
    and the same BN running statistics."""
    import copy

    import torch.nn.functional as F

    from mmattn.backbones.sasa_resnet import ConvStem
    torch.manual_seed(0)
    stem = ConvStem(16).double().train(train)
    with torch.no_grad():
        stem.bn.weight.uniform_(0.5, 2)
        stem.bn.bias.uniform_(-1, 1)
        stem.bn.running_mean.uniform_(-0.5, 0.5)
        stem.bn.running_var.uniform_(0.5, 2)
    ref_stem = copy.deepcopy(stem)
    x = torch.randn(2, 3, 29, 34, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()
    out = stem(x)
    bn = ref_stem.bn
    ref = F.max_pool2d(
        F.relu(F.batch_norm(F.conv2d(x_ref, ref_stem.conv.weight, stride=2, padding=3),
                            bn.running_mean, bn.running_var, bn.weight, bn.bias, train,
                            bn.momentum, bn.eps)), 3, 2, 1)
    assert out.shape == (2, 16, 8, 9) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for a, b in [(x.grad, x_ref.grad), (stem.conv.weight.grad, ref_stem.conv.weight.grad),
                 (stem.bn.weight.grad, ref_stem.bn.weight.grad),
                 (stem.bn.running_mean, bn.running_mean), (stem.bn.running_var, bn.running_var)]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_full_size_shapes():
    outs = SASAResNet(26, out_indices=(0, 1, 2, 3))(torch.randn(1, 3, 112, 137))
    assert [tuple(o.shape[-2:]) for o in outs] == [(28, 35), (14, 18), (7, 9), (4, 5)]
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048]


def stage_formats(model, x, grad=False):
    """Per stage, whether its first block's input and its attention's output were
    channels-last (and not also NCHW-contiguous), and the backbone's outputs."""
    seen = []

    def channels_last(t):
        return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()

    hooks = []
    for name in model.layer_names:
        block = getattr(model, name)[0]
        hooks.append(block.register_forward_pre_hook(
            lambda m, args: seen.append([channels_last(args[0])])))
        hooks.append(block.attn.register_forward_hook(
            lambda m, args, out: seen[-1].append(channels_last(out))))
    with torch.set_grad_enabled(grad):
        outs = model(x)
    for h in hooks:
        h.remove()
    return seen, outs


def test_stage_layouts_follow_map_size_and_autograd():
    """stage_layout: channels-last on the CPU for stages that build no autograd graph and whose
    output map has >= channels_last_min_pixels pixels (28x28: stages 1-2 at 224x224, 1-3 at
    512x512 for SASA-ResNet-50); NCHW for training and under graph capture."""
    model = tiny().eval()
    cin = model.out_channels
    assert model.channels_last_min_pixels == 28 * 28

    def layouts(size, **kw):
        ins = [torch.empty(1, 16, size // 4, size // 4, **kw)] + [
            torch.empty(1, cin[i], size // 2**(i + 2), size // 2**(i + 2), **kw)
            for i in range(3)]
        return [model.stage_layout(i, x) == torch.channels_last for i, x in enumerate(ins)]

    with torch.no_grad():
        assert layouts(224) == [True, True, False, False]
        assert layouts(512) == [True, True, True, False]
        assert layouts(800) == [True, True, True, False]  # stage 4: 25x25 = 625 pixels
    # grad mode with trainable parameters (training): NCHW; frozen parameters: channels-last
    assert layouts(224) == [False] * 4
    model.layer1.requires_grad_(False)
    assert layouts(224) == [True, False, False, False]
    assert layouts(224, requires_grad=True) == [False] * 4  # a graph through the input
    with torch.no_grad():
        model.channels_last_min_pixels = 1
        assert layouts(224) == [True] * 4
        with mock.patch('mmattn.ops._ext.capturing_graph', return_value=True):
            assert layouts(224) == [False] * 4
        assert layouts(224, device='meta') == [False] * 4  # not the CPU


def test_frozen_stage_trains_channels_last_and_outputs_are_copied_once():
    """Mask R-CNN's setting (stage 1 frozen, BN in eval): stage 1 runs channels-last in
    training, the others NCHW, with the gradients of a forced-NCHW run; a channels-last stage's
    NCHW output is also the next NCHW stage's input (one copy, not two)."""
    torch.manual_seed(0)
    model = tiny(frozen_stages=1, norm_eval=True, zero_init_residual=False)
    ref = tiny(frozen_stages=1, norm_eval=True, zero_init_residual=False)
    ref.load_state_dict(model.state_dict())
    ref.channels_last_min_pixels = 10**9
    model.train(), ref.train()
    x = torch.randn(2, 3, 128, 128)  # stage outputs 32x32 (channels-last), 16x16, 8x8, 4x4
    inputs = []
    model.layer2.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    seen, outs = stage_formats(model, x, grad=True)
    assert seen == [[True, True], [False, False], [False, False], [False, False]]
    assert all(o.is_contiguous() for o in outs)
    assert inputs[-1].data_ptr() == outs[0].data_ptr()
    ref_outs = ref(x)
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not outs[0].requires_grad  # the frozen stage's
    g = [torch.randn_like(o) for o in outs[1:]]
    torch.autograd.backward(outs[1:], g)
    torch.autograd.backward(ref_outs[1:], g)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert p.grad is None and name.startswith(('stem', 'layer1')), name


@pytest.mark.parametrize('stem', ['conv', 'attention'])
def test_channels_last_stages_match_nchw(stem):
    """Inference with channels-last stages gives the NCHW run's outputs; the attention keeps the
    channels-last layout (na2d writes its output in its views' layout, no conversion), and the
    backbone's outputs are NCHW-contiguous."""
    torch.manual_seed(0)
    model = tiny(stem=stem).eval()
    x = torch.randn(2, 3, 129, 147)  # stage outputs 33x37, 17x19, 9x10, 5x5
    model.channels_last_min_pixels = 17 * 19
    seen, outs = stage_formats(model, x)
    assert seen == [[True, True], [True, True], [False, False], [False, False]]
    assert all(o.is_contiguous() for o in outs)
    model.channels_last_min_pixels = 10**9
    seen, ref = stage_formats(model, x)
    assert seen == [[False, False]] * 4
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    model.train()  # training (grad) stays NCHW whatever the threshold
    model.channels_last_min_pixels = 1
    seen, _ = stage_formats(model, x, grad=True)
    assert seen == [[False, False]] * 4


@pytest.mark.parametrize('stem', ['conv', 'attention'])
def test_backward_reaches_every_parameter(stem):
    model = tiny(stem=stem, zero_init_residual=False)
    sum(o.mean() for o in model(torch.randn(2, 3, 32, 32))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_with_cp_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = tiny(zero_init_residual=False)
    ckpt = tiny(zero_init_residual=False, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    results = []
    for model in (plain, ckpt):
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, [p.grad.clone() for p in model.parameters()]))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('frozen', [0, 2])
def test_frozen_stages(frozen):
    model = tiny(frozen_stages=frozen)
    model.train()
    parts = [model.stem, model.layer1, model.layer2, model.layer3, model.layer4]
    for i, part in enumerate(parts):
        is_frozen = i <= frozen
        assert all(p.requires_grad != is_frozen for p in part.parameters())
        assert all(m.training != is_frozen for m in part.modules())
    sum(o.mean() for o in model(torch.randn(2, 3, 32, 32))).backward()
    assert all(p.grad is None for p in model.stem.parameters())


def test_norm_eval():
    model = tiny(norm_eval=True)
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    assert model.layer1[0].attn.training


@pytest.mark.parametrize('kwargs, match', [
    (dict(depth=34), 'depth'), (dict(depth=26, stem='patch'), 'stem'),
    (dict(depth=26, attn_stages=(True, True)), 'attn_stages'),
    (dict(depth=26, out_indices=(4, )), 'out_indices'),
    (dict(depth=26, out_indices=()), 'out_indices'),
    (dict(depth=26, frozen_stages=5), 'frozen_stages')])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SASAResNet(**kwargs)


def test_init():
    """V13 at the backbone level: bn3 gamma = 0, the attention layers keep their own scheme."""
    model = SASAResNet(26)
    model.init_weights()
    assert all(blk.bn3.weight.abs().sum() == 0 for layer in
               (model.layer1, model.layer2, model.layer3, model.layer4) for blk in layer)
    attn: SASAAttention = model.layer4[0].attn  # d = 64
    assert attn.rel_h.std().item() == pytest.approx(64**-0.5, rel=0.1)
    wq, wk, _ = attn.qkv.weight.split(512)
    assert (wq.std() / wk.std()).item() == pytest.approx(64**-0.5, rel=0.1)


def test_classifier_checkpoint_loads_into_dense_backbone(tmp_path):
    mmpretrain = pytest.importorskip('mmpretrain')  # noqa: F841
    import mmattn.cls  # noqa: F401
    from mmpretrain.registry import MODELS
    classifier = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='SASAResNet', depth=26, base_channels=16, stem='attention'),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=512)))
    classifier.init_weights()
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': classifier.state_dict(), 'meta': {}}, path)
    backbone = SASAResNet(26, base_channels=16, stem='attention', out_indices=(0, 1, 2, 3),
                          init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                        prefix='backbone.'))
    backbone.init_weights()
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, classifier.backbone.state_dict()[name], msg=name)


def test_torch_compile_matches_eager():
    model = tiny().eval()
    x = torch.randn(1, 3, 32, 32)
    compiled = torch.compile(model)
    with torch.no_grad():
        for a, b in zip(model(x), compiled(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stem', ['conv', 'attention'])
def test_imagenet_config_trains_one_step(stem):
    """V12: the ImageNet config's classifier runs one optimiser step on tiny inputs on CPU."""
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
    cfg = Config.fromfile(osp.join(root, 'configs', 'sasa_resnet', 'sasa-resnet-50_8xb128_in1k.py'))
    cfg.model.backbone.update(depth=26, stem=stem, base_channels=16)
    cfg.model.head.update(in_channels=512, num_classes=5)
    model = MODELS.build(cfg.model)
    model.init_weights()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    # S8: no weight decay on the relative tables and embeddings
    decay = {id(p): g['weight_decay'] for g in optim.param_groups for p in g['params']}
    assert decay[id(model.backbone.layer1[0].attn.rel_h)] == 0
    data = dict(inputs=[torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8) for _ in range(2)],
                data_samples=[DataSample().set_gt_label(i) for i in range(2)])
    before = model.backbone.layer1[0].attn.qkv.weight.detach().clone()
    losses = model.train_step(data, optim)
    assert torch.isfinite(losses['loss'])
    assert not torch.equal(before, model.backbone.layer1[0].attn.qkv.weight)
