# UperNet 160k on ADE20K with SASA-ResNet-50 (conv stem), with the protocol of mmseg's Swin
# UperNet configs: AdamW 6e-5, wd 0.01, 1500-iteration warm-up, poly decay (S9).
_base_ = [
    'mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py'
]
custom_imports = dict(imports=['mmattn.seg'], allow_failed_imports=False)

crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='SASAResNet',
        depth=50,
        stem='conv',
        out_indices=(0, 1, 2, 3),
        norm_cfg=norm_cfg,
        norm_eval=False,
        # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        init_cfg=None),
    decode_head=dict(in_channels=[256, 512, 1024, 2048], channels=512,
                     pool_scales=(1, 2, 3, 6), num_classes=150),
    auxiliary_head=dict(in_channels=1024, num_classes=150, loss_decode=dict(
        type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={name: dict(decay_mult=0.)
                     for name in ('rel_h', 'rel_w', 'emb_row', 'emb_col', 'emb_mix')}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]

# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

# the papers' ADE20K "ms+flip" test, mmseg 0.x's MultiScaleFlipAug(img_scale=(2048, 512),
# img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True): python tools/test.py CONFIG CKPT --tta
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='ScaleRatioFlipAug', scale=(2048, 512),
         transforms=[dict(type='LoadAnnotations', reduce_zero_label=True),
                     dict(type='PackSegInputs')]),
]
