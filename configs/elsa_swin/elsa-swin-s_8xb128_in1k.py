# ELSA-Swin-S on ImageNet-1k: the ELSA-Swin-T recipe with drop_path 0.3 (specs/elsa_swin.md 11.1).
_base_ = './elsa-swin-t_8xb128_in1k.py'

model = dict(backbone=dict(arch='s', drop_path_rate=0.3))
