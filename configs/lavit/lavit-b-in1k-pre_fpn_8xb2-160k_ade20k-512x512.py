# Semantic FPN 160k on ADE20K with mmattn LaViT-B (the LaViT-T config, drop_path 0.2).
_base_ = './lavit-t-in1k-pre_fpn_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='b', drop_path_rate=0.2))
