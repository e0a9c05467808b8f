# Castling-DeiT-B on ImageNet-1k (specs/castling_vit.md D7): mmpretrain's
# deit-base_16xb64_in1k recipe unchanged (300 epochs, AdamW 1e-3 at batch 1024, wd 0.05, 20 warm-up
# epochs, cosine to 1e-5, RandAugment, mixup 0.8 / cutmix 1.0, label smoothing 0.1, grad clip 5,
# no decay on norms, biases, cls_token and pos_embed, drop path 0.1 and EMA) with the CastlingViT
# backbone.
# The masked-softmax branch (threshold 0.02) is on and CastlingSwitchHook anneals its weight from
# 1 to 0 over the first half of training; the second half and inference use pure linear-angular
# attention.
_base_ = 'mmpretrain::deit/deit-base_16xb64_in1k.py'
custom_imports = dict(imports=['mmattn.cls'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CastlingViT',
        arch='deit-base',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.1,
        dconv_mode='seq1d',
        sparse_reg=True,
        sparse_threshold=0.02))
custom_hooks = [
    dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL'),
    dict(type='CastlingSwitchHook', start=0., end=0.5),
]
