# Mask R-CNN 3x with Castling-MViTv2-T: mmdet's Swin-T ms-crop 3x config (DETR-style multi-scale
# resize 480-800 or 400/500/600 -> crop 384x600 -> 480-800, 36 epochs, steps 27 and 33, AdamW 1e-4,
# wd 0.05, batch 8 x 2) with the CastlingMViT backbone, drop path 0.1 (specs/castling_vit.md D7).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
          './_base_/castling-mvitv2_coco.py']
custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)

model = dict(backbone={{_base_.castling_mvit_backbone}}, neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = {{_base_.castling_optim_wrapper}}
