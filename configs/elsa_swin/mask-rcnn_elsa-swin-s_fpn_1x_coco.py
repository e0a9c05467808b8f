# Mask R-CNN 1x with ELSA-Swin-S (official mask_elsa_small_1x: 48.3 / 43.0): drop_path 0.2.
_base_ = './mask-rcnn_elsa-swin-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='s', drop_path_rate=0.2))
