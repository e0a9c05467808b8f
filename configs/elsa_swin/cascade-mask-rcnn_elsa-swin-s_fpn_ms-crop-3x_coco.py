# Cascade Mask R-CNN 3x with ELSA-Swin-S (official cascade_elsa_small_3x: 52.3 / 45.2):
# drop_path 0.75, as the official config.
_base_ = './cascade-mask-rcnn_elsa-swin-t_fpn_ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='s', drop_path_rate=0.75))
