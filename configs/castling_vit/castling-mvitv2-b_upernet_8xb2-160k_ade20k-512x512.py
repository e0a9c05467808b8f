# UperNet 160k on ADE20K with Castling-MViTv2-B: the T config with the base backbone.
_base_ = './castling-mvitv2-t_upernet_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='base'))
