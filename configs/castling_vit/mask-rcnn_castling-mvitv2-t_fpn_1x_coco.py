# Mask R-CNN 1x with Castling-MViTv2-T: mmdet's Swin-T Mask R-CNN 1x (single scale 1333x800, 12
# epochs, steps 8 and 11, 1000-iteration warm-up, AdamW 1e-4, wd 0.05, no decay on norms, batch
# 8 x 2) with the CastlingMViT backbone, drop path 0.1 (specs/castling_vit.md D7).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', './_base_/castling-mvitv2_coco.py']
custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)

model = dict(backbone={{_base_.castling_mvit_backbone}}, neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = {{_base_.castling_optim_wrapper}}
