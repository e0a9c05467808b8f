# Shared by the COCO configs of ELSA-Swin (specs/elsa_swin.md 11.2): the backbone that replaces
# mmdet's Swin, the AdamW recipe of the official Swin/ELSA detection configs and, through the base
# below, their multi-scale + crop ("AutoAugment") training pipeline, which the official 1x
# configs use too.
_base_ = '../../_base_/datasets/coco_ms-crop_pipeline.py'

elsa_backbone = dict(
    _delete_=True,
    type='ELSASwin',
    arch='t',
    drop_path_rate=0.1,
    out_indices=(0, 1, 2, 3),
    # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
    init_cfg=None)
elsa_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys=dict(
        absolute_pos_embed=dict(decay_mult=0.),
        relative_position_bias_table=dict(decay_mult=0.),
        norm=dict(decay_mult=0.))))
elsa_schedule_1x = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
elsa_schedule_3x = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
