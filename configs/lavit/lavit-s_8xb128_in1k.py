# mmattn LaViT-S on ImageNet-1k: the LaViT-T recipe (lr 5e-3 unconfirmed, see there),
# drop_path 0.1 (specs/lavit.md 6.1, L7).
_base_ = './lavit-t_8xb128_in1k.py'

model = dict(backbone=dict(arch='s', drop_path_rate=0.1))
