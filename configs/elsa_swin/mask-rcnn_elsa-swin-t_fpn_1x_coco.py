# Mask R-CNN 1x with ELSA-Swin-T (official mask_elsa_tiny_1x: 45.7 box AP / 41.1 mask AP): mmdet's
# Swin-T Mask R-CNN with the ELSA backbone, drop_path 0.1, the multi-scale + crop pipeline and a
# 500-iteration warm-up (specs/elsa_swin.md 11.2).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', './_base_/elsa-swin_coco.py']
custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)

model = dict(backbone={{_base_.elsa_backbone}}, neck=dict(in_channels=[96, 192, 384, 768]))
train_dataloader = dict(batch_size=2, dataset=dict(pipeline={{_base_.ms_crop_train_pipeline}}))
optim_wrapper = {{_base_.elsa_optim_wrapper}}
param_scheduler = {{_base_.elsa_schedule_1x}}
train_cfg = dict(max_epochs=12)
