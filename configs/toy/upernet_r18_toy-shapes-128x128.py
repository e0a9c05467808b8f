# UperNet with a randomly initialised ResNetV1c-18 on the toy shapes (ADE20K layout), trained on
# CPU in minutes: mmseg's upernet_r50 with ResNetV1c-18, BN instead of SyncBN (one process),
# 3 classes, 128x128 crops and a short iteration schedule.
# Make the data first: python tools/dataset_converters/make_toy_shapes.py
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    '../_base_/datasets/toy_ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_20k.py',
]
custom_imports = dict(imports=['mmattn.seg'], allow_failed_imports=False)

num_classes = 3
max_iters = 400
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[64, 128, 256, 512], channels=128, num_classes=num_classes,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=num_classes,
                        norm_cfg=norm_cfg))

train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=200, max_keep_ckpts=2))
randomness = dict(seed=0)
