# Castling-DeiT-T on ImageNet-1k (specs/castling_vit.md D7): mmpretrain's
# deit-tiny_4xb256_in1k recipe unchanged (300 epochs, AdamW 1e-3 at batch 1024, wd 0.05, 20 warm-up
# epochs, cosine to 1e-5, RandAugment, mixup 0.8 / cutmix 1.0, label smoothing 0.1, grad clip 5,
# no decay on norms, biases, cls_token and pos_embed) with the CastlingViT backbone.
# The masked-softmax branch (threshold 0.02) is on and CastlingSwitchHook anneals its weight from
# 1 to 0 over the first half of training; the second half and inference use pure linear-angular
# attention.
_base_ = 'mmpretrain::deit/deit-tiny_4xb256_in1k.py'
custom_imports = dict(imports=['mmattn.cls'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CastlingViT',
        arch='deit-tiny',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.0,
        dconv_mode='seq1d',
        sparse_reg=True,
        sparse_threshold=0.02))
custom_hooks = [dict(type='CastlingSwitchHook', start=0., end=0.5)]
