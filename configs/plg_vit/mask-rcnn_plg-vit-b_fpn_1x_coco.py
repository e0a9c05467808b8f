# Mask R-CNN 1x with PLG-ViT-B: the PLG-ViT-T config with the base backbone, drop_path 0.4.
_base_ = './mask-rcnn_plg-vit-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.4),
             neck=dict(in_channels=[128, 256, 512, 1024]))
