# Semantic FPN 160k on ADE20K with mmattn LaViT-S (the LaViT-T config, drop_path 0.1).
_base_ = './lavit-t-in1k-pre_fpn_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='s', drop_path_rate=0.1))
