# UperNet 160k on ADE20K with ELSA-Swin-T (official upernet_elsa_tiny_160k: 47.9 mIoU ms+flip):
# mmseg's Swin-T UperNet (AdamW 6e-5, wd 0.01, 1500-iteration warm-up, poly decay, batch 8 x 2)
# with the ELSA backbone and drop_path 0.3 (specs/elsa_swin.md 11.3).
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmattn.seg'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ELSASwin',
        arch='t',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        init_cfg=None),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

# the papers' ADE20K "ms+flip" test, mmseg 0.x's MultiScaleFlipAug(img_scale=(2048, 512),
# img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True): python tools/test.py CONFIG CKPT --tta
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='ScaleRatioFlipAug', scale=(2048, 512),
         transforms=[dict(type='LoadAnnotations', reduce_zero_label=True),
                     dict(type='PackSegInputs')]),
]
