"""BackboneAuxLossHook: LaViT's ``loss_dp`` in the losses of mmpretrain, mmdet and mmseg models
(one training step each, also under a DDP wrapper), in the logged total, and nowhere else
(``specs/lavit.md`` L6, V8)."""
import importlib
import os.path as osp
from types import SimpleNamespace

import pytest
import torch

from mmattn.engine import HOOKS, BackboneAuxLossHook
from mmattn.engine.aux_loss import add_backbone_aux_losses, merge_aux_losses

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LAVIT = osp.join(ROOT, 'configs', 'lavit')
TOY = osp.join(ROOT, 'configs', 'toy')
ADAPTERS = {'mmdet': 'mmattn.det', 'mmseg': 'mmattn.seg', 'mmpretrain': 'mmattn.cls'}


def build(path, scope, **backbone):
    """The config's model, with a shallow LaViT (depths 1-2-1-1: one LA layer) unless the
    config is a toy one, BN instead of SyncBN and 64x64 inputs."""
    pytest.importorskip(scope)
    from mmengine.config import Config
    importlib.import_module(ADAPTERS[scope])
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(path)
    if not path.startswith(TOY):
        backbone.setdefault('arch', dict(depths=(1, 2, 1, 1)))
    cfg.model.backbone.update(backbone)
    if scope == 'mmpretrain':
        cfg.model.data_preprocessor = cfg.data_preprocessor
    if scope == 'mmseg':
        cfg.model.data_preprocessor.size = (64, 64)
        for head in ('decode_head', 'auxiliary_head'):
            if head in cfg.model:
                cfg.model[head].norm_cfg = dict(type='BN', requires_grad=True)
    torch.manual_seed(0)
    return importlib.import_module(f'{scope}.registry').MODELS.build(cfg.model)


def batch(scope, num_classes):
    torch.manual_seed(1)
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
    if scope == 'mmpretrain':
        from mmpretrain.structures import DataSample
        return dict(inputs=images, data_samples=[DataSample().set_gt_label(i) for i in (0, 1)])
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(batch_size=2, image_shapes=(3, 64, 64), num_items=[2, 1],
                              num_classes=num_classes, with_mask=True)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in images:
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                             pad_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, 64, 64)))
        samples.append(sample)
    return dict(inputs=images, data_samples=samples)


def train_step(model, data):
    from mmengine.optim import OptimWrapper
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.))
    return {k: float(v) for k, v in model.train_step(data, wrapper).items()}


def assert_total_includes_loss_dp(log_vars):
    assert 'loss_dp' in log_vars
    parts = [v for k, v in log_vars.items() if 'loss' in k and k != 'loss']
    assert log_vars['loss'] == pytest.approx(sum(parts), rel=1e-5)


@pytest.mark.parametrize('config,scope,classes', [
    ('lavit-t_8xb128_in1k.py', 'mmpretrain', 1000),
    ('retinanet_lavit-t_fpn_1x_coco.py', 'mmdet', 80),
    ('mask-rcnn_lavit-t_fpn_1x_coco.py', 'mmdet', 80),
    ('lavit-t-in1k-pre_fpn_8xb2-80k_ade20k-512x512.py', 'mmseg', 150),
    ('lavit-t-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py', 'mmseg', 150),
], ids=['ImageClassifier', 'RetinaNet', 'MaskRCNN', 'SemanticFPN', 'UperNet'])
def test_loss_dp_in_every_codebase(config, scope, classes):
    model = build(osp.join(LAVIT, config), scope)
    BackboneAuxLossHook().before_train(SimpleNamespace(model=model))
    log_vars = train_step(model, batch(scope, classes))
    assert_total_includes_loss_dp(log_vars)
    assert -0.1 <= log_vars['loss_dp'] <= 0.1 * (2 / 49 + 1 / 48)
    if scope == 'mmpretrain':  # the head's 'loss' is renamed, the logged 'loss' is the total
        assert 'loss_cls' in log_vars


def test_hook_under_ddp(tmp_path):
    """Single-process gloo group, mmattn's CPU DDP wrapper: the hook unwraps ``.module``."""
    import torch.distributed as dist

    from mmattn.engine.cpu_ddp import CPUDistributedDataParallel
    if dist.is_initialized():
        pytest.skip('a process group already exists in this test session')
    model = build(osp.join(TOY, 'lavit-toy_toy-shapes.py'), 'mmpretrain')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0,
                            world_size=1)
    try:
        ddp = CPUDistributedDataParallel(module=model)
        BackboneAuxLossHook().before_train(SimpleNamespace(model=ddp))
        for _ in range(2):
            log_vars = train_step(ddp, batch('mmpretrain', 3))
            assert_total_includes_loss_dp(log_vars)
    finally:
        dist.destroy_process_group()


def test_without_hook_one_warning_and_no_loss_dp():
    model = build(osp.join(TOY, 'lavit-toy_toy-shapes.py'), 'mmpretrain')
    data = batch('mmpretrain', 3)
    with pytest.warns(UserWarning) as record:
        for _ in range(3):
            log_vars = train_step(model, data)
            assert 'loss_dp' not in log_vars
    assert sum('BackboneAuxLossHook' in str(w.message) for w in record) == 1


def test_weight_0_adds_nothing():
    model = build(osp.join(TOY, 'lavit-toy_toy-shapes.py'), 'mmpretrain', dp_loss_weight=0.)
    BackboneAuxLossHook().before_train(SimpleNamespace(model=model))
    log_vars = train_step(model, batch('mmpretrain', 3))
    assert 'loss_dp' not in log_vars and 'loss_cls' not in log_vars
    assert set(k for k in log_vars if 'loss' in k) == {'loss'}


def test_other_backbones_are_left_alone_and_wrapping_is_idempotent():
    resnet = build(osp.join(TOY, 'resnet18_toy-shapes.py'), 'mmpretrain')
    assert not add_backbone_aux_losses(resnet) and 'loss' not in vars(resnet)
    BackboneAuxLossHook().before_train(SimpleNamespace(model=resnet))  # warns, no error
    model = build(osp.join(TOY, 'lavit-toy_toy-shapes.py'), 'mmpretrain')
    assert add_backbone_aux_losses(model)
    wrapped = model.loss
    assert add_backbone_aux_losses(model) and model.loss is wrapped
    assert HOOKS['BackboneAuxLossHook'] is BackboneAuxLossHook


def test_merge_rejects_collisions():
    one = torch.tensor(1.)
    with pytest.raises(KeyError, match='loss_dp'):
        merge_aux_losses({'loss_dp': one}, {'loss_dp': one})
    with pytest.raises(KeyError, match='loss_cls'):
        merge_aux_losses({'loss': one, 'loss_cls': one}, {'loss_dp': one})
    assert merge_aux_losses({'loss': one}, {}) == {'loss': one}
    assert set(merge_aux_losses({'loss': one, 'acc': one}, {'loss_dp': one})) == {
        'loss_cls', 'acc', 'loss_dp'}
