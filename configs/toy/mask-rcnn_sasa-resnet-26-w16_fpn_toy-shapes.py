# Mask R-CNN with a small SASA-ResNet-26 (base width 16, 5x5 attention) on the toy shapes:
# the ResNet-18 toy config with the SASA backbone, for end-to-end tests of the family on CPU.
_base_ = './mask-rcnn_r18_fpn_toy-shapes.py'

model = dict(
    backbone=dict(_delete_=True, type='SASAResNet', depth=26, base_channels=16, kernel_size=5,
                  out_indices=(0, 1, 2, 3), norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]))
