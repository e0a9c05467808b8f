# RetinaNet 1x with mmattn LaViT-B (the LaViT-T config, drop_path 0.2; specs/lavit.md 6.2).
_base_ = './retinanet_lavit-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='b', drop_path_rate=0.2))
