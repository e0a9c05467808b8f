# Semantic FPN 80k on ADE20K with SASA-ResNet-50 (conv stem), PVT protocol: AdamW 1e-4,
# wd 1e-4, poly (power 0.9) decay (specs/sasa_resnet.md S9).
_base_ = [
    'mmseg::_base_/models/fpn_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_80k.py'
]
custom_imports = dict(imports=['mmattn.seg'], allow_failed_imports=False)

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='SASAResNet',
        depth=50,
        stem='conv',
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        init_cfg=None),
    neck=dict(in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=4),
    decode_head=dict(channels=128, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={name: dict(decay_mult=0.)
                     for name in ('rel_h', 'rel_w', 'emb_row', 'emb_col', 'emb_mix')}))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=80000, by_epoch=False),
]

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
