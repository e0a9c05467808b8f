# Cascade Mask R-CNN 3x with ELSA-Swin-T (official cascade_elsa_tiny_3x: 51.0 / 44.2):
# 36 epochs, steps at 27 and 33, drop_path 0.2.
_base_ = './cascade-mask-rcnn_elsa-swin-t_fpn_1x_coco.py'

model = dict(backbone=dict(drop_path_rate=0.2))
param_scheduler = {{_base_.elsa_schedule_3x}}
train_cfg = dict(max_epochs=36)
