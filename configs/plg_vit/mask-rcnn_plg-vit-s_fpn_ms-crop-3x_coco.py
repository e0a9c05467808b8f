# Mask R-CNN 3x with PLG-ViT-S: the PLG-ViT-T config with the small backbone, drop_path 0.3.
_base_ = './mask-rcnn_plg-vit-t_fpn_ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3),
             neck=dict(in_channels=[96, 192, 384, 768]))
