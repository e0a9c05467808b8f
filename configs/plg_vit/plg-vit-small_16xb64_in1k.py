# PLG-ViT-S on ImageNet-1k: the PLG-ViT-T recipe with the small backbone, drop_path 0.3.
_base_ = './plg-vit-tiny_16xb64_in1k.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3), head=dict(in_channels=768))
