# UperNet 160k on ADE20K with ELSA-Swin-S (official upernet_elsa_small_160k: 50.4 mIoU ms+flip):
# the ELSA-Swin-T recipe with the small backbone (drop_path 0.3).
_base_ = './elsa-swin-t_upernet_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='s'))
