# RetinaNet 1x with mmattn LaViT-T, PVT protocol (specs/lavit.md 6.2): mmdet's
# retinanet_r50_fpn_1x_coco (12 epochs, 500-iteration warm-up, steps at 8 and 11, 1333x800, batch
# 8 x 2) with AdamW lr 1e-4, wd 1e-4 (as mmdet's retinanet_pvt-* configs), drop_path 0.1 and
# loss_dp. Stages 2-4 feed the FPN from start_level 0 (no unused stage-1 output norm under DDP).
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/lavit_dense.py']
custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='LaViT',
        arch='t',
        img_size=224,
        drop_path_rate=0.1,
        dp_loss_weight=0.1,
        out_indices=(1, 2, 3),
        # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        init_cfg=None),
    neck=dict(in_channels=[128, 320, 512], start_level=0, add_extra_convs='on_input',
              num_outs=5))
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg={{_base_.lavit_paramwise_cfg}})
