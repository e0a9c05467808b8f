# Mask R-CNN 3x with ELSA-Swin-S (official mask_elsa_small_3x: 49.2 / 43.6): drop_path 0.75, as
# the official config (the Swin-S config it derives from uses 0.2).
_base_ = './mask-rcnn_elsa-swin-t_fpn_ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='s', drop_path_rate=0.75))
