# Mask R-CNN 1x with PLG-ViT-T: mmdet's Swin-T Mask R-CNN 1x (single scale 1333x800, AdamW 1e-4,
# wd 0.05, 1000-iteration warm-up, steps at 8 and 11, batch 8 x 2) with the PLG-ViT backbone,
# drop_path 0.2 (specs/plg_vit.md D11).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', './_base_/plg-vit_coco.py']
custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)

model = dict(backbone={{_base_.plg_backbone}}, neck=dict(in_channels=[64, 128, 256, 512]))
optim_wrapper = {{_base_.plg_optim_wrapper}}
param_scheduler = {{_base_.plg_schedule_1x}}
train_cfg = dict(max_epochs=12)
