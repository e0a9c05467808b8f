# UperNet 160k on ADE20K with Castling-MViTv2-T: mmseg's Swin-T UperNet (AdamW 6e-5, wd 0.01, no
# decay on norms, 1500-iteration warm-up from 1e-6, poly to 0, batch 8 x 2, crop 512) with the
# CastlingMViT backbone (strides 4-32, channels 96-768), drop path 0.1, UPerHead (pool scales 1,
# 2, 3, 6, 512 channels) and the auxiliary FCN head on level 2 (specs/castling_vit.md D7).
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmattn.seg'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='CastlingMViT',
        arch='tiny',
        drop_path_rate=0.1,
        out_scales=(0, 1, 2, 3),
        dconv_mode='seq1d',
        sparse_reg=False,
        # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        init_cfg=None),
    decode_head=dict(in_channels=[96, 192, 384, 768], channels=512, pool_scales=(1, 2, 3, 6),
                     num_classes=150),
    auxiliary_head=dict(in_channels=384, in_index=2, num_classes=150))

# the papers' ADE20K "ms+flip" test, mmseg 0.x's MultiScaleFlipAug(img_scale=(2048, 512),
# img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True): python tools/test.py CONFIG CKPT --tta
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='ScaleRatioFlipAug', scale=(2048, 512),
         transforms=[dict(type='LoadAnnotations', reduce_zero_label=True),
                     dict(type='PackSegInputs')]),
]
