# UperNet 160k on ADE20K with Castling-DeiT-S: mmseg's
# vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512
# (AdamW 6e-5, wd 0.01, no decay on pos_embed / cls_token / norms, 1500-iteration warm-up from
# 1e-6, poly to 0, batch 8 x 2, crop 512) with CastlingViT at 512 (the 14x14 position table is
# resized to 32x32 on loading), outputs of layers 3, 5, 7, 11 through MultiLevelNeck (scales 4, 2,
# 1, 0.5 -> strides 4-32), drop path 0.1 and the auxiliary FCN head on level 2
# (specs/castling_vit.md D7). The masked-softmax branch is off (pretraining only).
_base_ = 'mmseg::vit/vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmattn.seg'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='CastlingViT',
        arch='deit-small',
        img_size=512,
        patch_size=16,
        drop_path_rate=0.1,
        out_type='featmap',
        out_indices=(3, 5, 7, 11),
        final_norm=True,
        dconv_mode='seq1d',
        sparse_reg=False,
        # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        init_cfg=None),
    neck=dict(in_channels=[384] * 4, out_channels=384, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[384] * 4, channels=512, num_classes=150),
    auxiliary_head=dict(in_channels=384, in_index=2, num_classes=150))

# the papers' ADE20K "ms+flip" test, mmseg 0.x's MultiScaleFlipAug(img_scale=(2048, 512),
# img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True): python tools/test.py CONFIG CKPT --tta
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='ScaleRatioFlipAug', scale=(2048, 512),
         transforms=[dict(type='LoadAnnotations', reduce_zero_label=True),
                     dict(type='PackSegInputs')]),
]
