# UperNet with a small SASA-ResNet-26 (base width 16, 5x5 attention) on the toy shapes (ADE20K
# format): the ResNet-18 toy config with the SASA backbone, for end-to-end tests on CPU.
_base_ = './upernet_r18_toy-shapes-128x128.py'

model = dict(
    backbone=dict(_delete_=True, type='SASAResNet', depth=26, base_channels=16, kernel_size=5,
                  out_indices=(0, 1, 2, 3), norm_cfg=dict(type='BN', requires_grad=True), init_cfg=None),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
