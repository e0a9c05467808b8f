"""The papers' test-time augmentation (ScaleRatioFlipAug) and timm's random train interpolation
(RandomInterpolation), against the protocols written out independently."""
import glob
import os.path as osp
import random

import numpy as np
import pytest
from mmengine.config import Config

pytest.importorskip('mmseg')
import mmattn.seg  # noqa: E402,F401  (registers the transforms)
from mmattn.datasets import RandomInterpolation, ScaleRatioFlipAug  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def mmseg0_scale(h, w, ratio, test_scale=(2048, 512)):
    """mmseg 0.x MultiScaleFlipAug + Resize(keep_ratio=True): the image fits into the test
    scale times the ratio (long edge <= long side, short edge <= short side), sizes rounded as
    mmcv's rescale_size does. Returns (h, w)."""
    long_side, short_side = int(test_scale[0] * ratio), int(test_scale[1] * ratio)
    factor = min(long_side / max(h, w), short_side / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _augment(transform, h, w):
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    img = np.zeros((h, w, 3), np.uint8)
    return transform(dict(img=img, img_shape=(h, w), ori_shape=(h, w)))


@pytest.mark.parametrize('h,w', [(512, 683), (375, 500), (300, 1200), (1000, 250), (512, 512),
                                 (2000, 3000)])
def test_scales_are_ratios_of_the_test_scale(h, w):
    out = _augment(ScaleRatioFlipAug(scale=(2048, 512)), h, w)
    got = list(zip(out['img_shape'], out['flip']))
    expected = [(mmseg0_scale(h, w, r), flip) for r in RATIOS for flip in (False, True)]
    assert got == expected
    for img, (shape, flip) in zip(out['img'], got):
        assert img.shape[:2] == shape
    assert [d for d in out['flip_direction'] if d is not None] == ['horizontal'] * 6


def test_differs_from_mmseg1_stock_tta_for_images_of_another_short_side():
    """mmseg 1.x's stock tta_pipeline scales the image by r; the papers' protocol scales the
    test scale: for a 375x500 image they differ at every ratio."""
    from mmcv.transforms import TestTimeAug
    stock = TestTimeAug([[dict(type='Resize', scale_factor=r, keep_ratio=True) for r in RATIOS]])
    ours = ScaleRatioFlipAug(scale=(2048, 512), flip=False)
    stock_shapes = _augment(stock, 375, 500)['img_shape']
    our_shapes = _augment(ours, 375, 500)['img_shape']
    assert all(a != b for a, b in zip(stock_shapes, our_shapes))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='scale'):
        ScaleRatioFlipAug(scale=(2048, ))
    with pytest.raises(ValueError, match='ratios'):
        ScaleRatioFlipAug(scale=(2048, 512), ratios=[0.5, -1])
    with pytest.raises(TypeError, match='transform'):
        RandomInterpolation(transform='RandomResizedCrop')


ADE_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '*', '*ade20k*.py')))


@pytest.mark.parametrize('path', ADE_CONFIGS, ids=osp.basename)
def test_every_ade20k_config_carries_the_papers_tta(path):
    cfg = Config.fromfile(path)
    (aug, ) = [t for t in cfg.tta_pipeline if t['type'] == 'ScaleRatioFlipAug']
    assert tuple(aug['scale']) == (2048, 512)
    assert list(aug.get('ratios', RATIOS)) == RATIOS and aug.get('flip', True)
    assert [t['type'] for t in aug['transforms']] == ['LoadAnnotations', 'PackSegInputs']
    # the single-scale test pipeline is the same test scale
    resize = [t for t in cfg.test_pipeline if t['type'] == 'Resize']
    assert resize and tuple(resize[0]['scale']) == (2048, 512)


def test_random_interpolation_draws_both_and_sets_the_nested_key():
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    crop = RandomInterpolation(dict(type='RandomResizedCrop', scale=32, backend='pillow'))
    assert [t.interpolation for t in crop.transforms] == ['bilinear', 'bicubic']
    aug = RandomInterpolation(dict(type='RandAugment', policies='timm_increasing', num_policies=2,
                                   total_level=10, magnitude_level=9,
                                   hparams=dict(pad_val=0)), key='hparams.interpolation')
    assert [t.hparams['interpolation'] for t in aug.transforms] == ['bilinear', 'bicubic']
    assert all(t.hparams['pad_val'] == 0 for t in aug.transforms)
    used = []
    for t, name in zip(crop.transforms, crop.interpolations):
        t.transform = (lambda results, name=name: used.append(name) or results)
    random.seed(0)
    for _ in range(40):
        crop(dict(img=np.zeros((8, 8, 3), np.uint8)))
    assert set(used) == {'bilinear', 'bicubic'} and 10 < used.count('bicubic') < 30


def test_elsa_imagenet_train_pipeline_runs():
    from mmcv.transforms import Compose
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'elsa_swin', 'elsa-swin-t_8xb128_in1k.py'))
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert [t['type'] for t in pipeline].count('RandomInterpolation') == 2
    steps = Compose(pipeline[1:])  # without LoadImageFromFile
    rng = np.random.default_rng(0)
    out = steps(dict(img=rng.integers(0, 255, (300, 400, 3), dtype=np.uint8),
                     img_shape=(300, 400), ori_shape=(300, 400), gt_label=3))
    assert tuple(out['inputs'].shape) == (3, 224, 224)
