# Shared by the COCO configs of PLG-ViT (specs/plg_vit.md D11): the backbone that replaces
# mmdet's Swin, the AdamW recipe of mmdet's Swin detection configs (lr 1e-4, wd 0.05, no decay on
# position tables and norms, 1000-iteration linear warm-up), the 3x schedule and, through the
# base below, the multi-scale + crop ("DETR") training pipeline of the 3x configs.
_base_ = '../../_base_/datasets/coco_ms-crop_pipeline.py'

plg_backbone = dict(
    _delete_=True,
    type='PLGViT',
    arch='tiny',
    drop_path_rate=0.2,
    out_indices=(0, 1, 2, 3),
    # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
    init_cfg=None)
plg_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys=dict(
        relative_position_bias_table=dict(decay_mult=0.), norm=dict(decay_mult=0.))))
plg_schedule_1x = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
plg_schedule_3x = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
