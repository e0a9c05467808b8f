# LW-PLG-ViT-A on ImageNet-1k: the PLG-ViT-T recipe with the LW-A backbone, drop_path 0.05; the
# head reads the 384 channels of the final 3x3 expansion conv.
_base_ = './plg-vit-tiny_16xb64_in1k.py'

model = dict(backbone=dict(arch='lw-a', drop_path_rate=0.05), head=dict(in_channels=384))
