# Mask R-CNN 1x with mmattn LaViT-T, PVT protocol (specs/lavit.md 6.2): mmdet's
# mask-rcnn_r50_fpn_1x_coco (12 epochs, 500-iteration warm-up, steps at 8 and 11, 1333x800, batch
# 8 x 2) with AdamW lr 1e-4, wd 1e-4, drop_path 0.1, four backbone outputs and loss_dp.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/lavit_dense.py']
custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)

model = dict(backbone={{_base_.lavit_backbone}}, neck=dict(in_channels=[64, 128, 320, 512]))
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg={{_base_.lavit_paramwise_cfg}})
