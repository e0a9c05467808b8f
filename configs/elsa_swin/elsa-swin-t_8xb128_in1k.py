# ELSA-Swin-T on ImageNet-1k with the official recipe (specs/elsa_swin.md 11.1): mmpretrain's
# Swin recipe (AdamW lr 1e-3 at batch 1024, wd 0.05, 20 warm-up epochs, cosine to 1e-5, grad clip
# 5, RandAugment m9, mixup 0.8, cutmix 1.0, label smoothing 0.1, random erasing 0.25) plus the
# official 10 cool-down epochs at the minimum lr and crop_pct 0.9 (resize 248, crop 224, bicubic).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmattn.cls'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='ELSASwin', arch='t', drop_path_rate=0.1, out_indices=(3, ),
                  pad_small_map=False),  # official classifier: no shift on the 7x7 stage-4 map
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        init_cfg=None,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        dict(type='Constant', layer='LayerNorm', val=1., bias=0.),
    ],
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

# batch 8 x 128 = 1024; lr 1e-3 for 1024 without automatic scaling (the official README)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=248, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=280, eta_min=1e-5, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
    dict(type='ConstantLR', factor=1.0, by_epoch=True, begin=300, end=310),  # cool-down at 1e-5
]
train_cfg = dict(by_epoch=True, max_epochs=310, val_interval=10)
auto_scale_lr = dict(enable=False, base_batch_size=1024)
