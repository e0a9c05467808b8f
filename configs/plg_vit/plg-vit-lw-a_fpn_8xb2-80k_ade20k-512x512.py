# Semantic FPN on ADE20K with LW-PLG-ViT-A (specs/plg_vit.md D11): mmseg's PoolFormer Semantic FPN
# recipe (FPN neck with 256 channels and 4 outputs, FPNHead with 128 channels, AdamW, wd 1e-4,
# poly 0.9 to 0, no warm-up, crop 512x512) linearly scaled from batch 32 / lr 2e-4 / 40k
# iterations to batch 8 x 2 / lr 1e-4 / 80k iterations; the dense LW backbone has no final
# expansion conv (with_expand=False), drop_path 0.05. Trains in fp32 (the PoolFormer config uses
# AMP: add --amp to tools/train.py).
_base_ = 'mmseg::poolformer/fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py'
custom_imports = dict(imports=['mmattn.seg'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PLGViT',
        arch='lw-a',
        drop_path_rate=0.05,
        with_expand=False,
        out_indices=(0, 1, 2, 3),
        # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        init_cfg=None),
    neck=dict(in_channels=[64, 96, 160, 224]))

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4))
param_scheduler = [dict(type='PolyLR', power=0.9, begin=0, end=80000, eta_min=0., by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=8000))

# the papers' ADE20K "ms+flip" test, mmseg 0.x's MultiScaleFlipAug(img_scale=(2048, 512),
# img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True): python tools/test.py CONFIG CKPT --tta
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='ScaleRatioFlipAug', scale=(2048, 512),
         transforms=[dict(type='LoadAnnotations', reduce_zero_label=True),
                     dict(type='PackSegInputs')]),
]
