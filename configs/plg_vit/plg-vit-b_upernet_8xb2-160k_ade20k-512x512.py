# UperNet 160k on ADE20K with PLG-ViT-B: the PLG-ViT-T recipe with the base backbone,
# drop_path 0.4.
_base_ = './plg-vit-t_upernet_8xb2-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.4),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
