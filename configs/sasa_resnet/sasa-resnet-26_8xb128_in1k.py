# SASA-ResNet-26, conv stem, ImageNet-1k: the recipe of sasa-resnet-50_8xb128_in1k.py.
_base_ = './sasa-resnet-50_8xb128_in1k.py'

model = dict(backbone=dict(depth=26, stem='conv'))
