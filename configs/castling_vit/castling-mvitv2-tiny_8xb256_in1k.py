# Castling-MViTv2-T on ImageNet-1k (specs/castling_vit.md D7): mmpretrain's
# mvitv2-tiny_8xb256_in1k layout (batch 8 x 256 = 2048, 300 epochs, 70 warm-up epochs from 1e-3,
# cosine to 1e-5, grad clip 1.0, the DeiT augmentation, drop path 0.1) with the CastlingMViT
# backbone (no relative position tables), AdamW lr 2e-3 (2.5e-4 per 256 images) and wd 0.05 as
# facebookresearch/mvit MVITv2_T.yaml, no decay on norms and biases. The masked-softmax branch
# is annealed to 0 over the first half of training by CastlingSwitchHook.
_base_ = 'mmpretrain::mvit/mvitv2-tiny_8xb256_in1k.py'
custom_imports = dict(imports=['mmattn.cls'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CastlingMViT',
        arch='tiny',
        drop_path_rate=0.1,
        out_scales=(3, ),
        dconv_mode='seq1d',
        sparse_reg=True,
        sparse_threshold=0.02))

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(_delete_=True, norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=70, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=70, end=300,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
auto_scale_lr = dict(base_batch_size=2048)
custom_hooks = [dict(type='CastlingSwitchHook', start=0., end=0.5)]
