# Semantic FPN with mmattn LaViT-T on the project's 160k ADE20K schedule (the 80k config, longer).
_base_ = './lavit-t-in1k-pre_fpn_8xb2-80k_ade20k-512x512.py'

train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
default_hooks = dict(checkpoint=dict(interval=16000))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=160000, by_epoch=False),
]
