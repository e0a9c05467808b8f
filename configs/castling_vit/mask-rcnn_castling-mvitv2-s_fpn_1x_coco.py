# Mask R-CNN 1x with Castling-MViTv2-S: the T config with the small backbone, drop path 0.2.
_base_ = './mask-rcnn_castling-mvitv2-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.2))
