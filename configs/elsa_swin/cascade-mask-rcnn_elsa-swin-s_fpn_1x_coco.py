# Cascade Mask R-CNN 1x with ELSA-Swin-S (official cascade_elsa_small_1x: 51.6 / 44.4):
# drop_path 0.2.
_base_ = './cascade-mask-rcnn_elsa-swin-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='s', drop_path_rate=0.2))
