# Cascade Mask R-CNN 3x with LW-PLG-ViT-R: the PLG-ViT-T config with the lw-r backbone (dense LW
# backbone: no final expansion conv, stage 4 keeps its width), drop_path 0.05.
_base_ = './cascade-mask-rcnn_plg-vit-t_fpn_ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='lw-r', drop_path_rate=0.05, with_expand=False),
             neck=dict(in_channels=[48, 96, 160, 256]))
