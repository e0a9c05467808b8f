# UperNet 160k on ADE20K with PLG-ViT-S: the PLG-ViT-T recipe with the small backbone,
# drop_path 0.3.
_base_ = './plg-vit-t_upernet_8xb2-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
