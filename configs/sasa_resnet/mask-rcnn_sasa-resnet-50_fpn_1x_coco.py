# Mask R-CNN 1x with SASA-ResNet-50 (conv stem): mmdet's mask-rcnn_r50_fpn_1x_coco with the
# attention-backbone protocol (AdamW 1e-4, wd 0.05; specs/sasa_resnet.md S9).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='SASAResNet',
        depth=50,
        stem='conv',
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        init_cfg=None),
    neck=dict(in_channels=[256, 512, 1024, 2048]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={name: dict(decay_mult=0.)
                     for name in ('rel_h', 'rel_w', 'emb_row', 'emb_col', 'emb_mix')}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
