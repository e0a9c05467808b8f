# PLG-ViT-B on ImageNet-1k: the PLG-ViT-T recipe with the base backbone, drop_path 0.5.
_base_ = './plg-vit-tiny_16xb64_in1k.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.5), head=dict(in_channels=1024))
