# Mask R-CNN 1x with SASA-ResNet-50 (conv stem): mmdet's mask-rcnn_r50_fpn_1x_coco with the
# attention-backbone protocol (AdamW 1e-4, wd 0.05; specs/sasa_resnet.md S9).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/sasa-resnet-50_coco.py']
custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)

model = dict(backbone={{_base_.sasa_backbone}}, neck=dict(in_channels=[256, 512, 1024, 2048]))
optim_wrapper = {{_base_.sasa_optim_wrapper}}
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
