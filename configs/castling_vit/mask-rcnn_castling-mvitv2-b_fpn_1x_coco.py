# Mask R-CNN 1x with Castling-MViTv2-B: the T config with the base backbone, drop path 0.3.
_base_ = './mask-rcnn_castling-mvitv2-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.3))
