# RetinaNet 1x with mmattn LaViT-S (the LaViT-T config, drop_path 0.1; specs/lavit.md 6.2).
_base_ = './retinanet_lavit-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='s', drop_path_rate=0.1))
