# Semantic FPN on ADE20K with LW-PLG-ViT-R: the LW-A recipe with the LW-R backbone.
_base_ = './plg-vit-lw-a_fpn_8xb2-80k_ade20k-512x512.py'

model = dict(backbone=dict(arch='lw-r'), neck=dict(in_channels=[48, 96, 160, 256]))
