# ELSA-Swin-T on ImageNet-1k with the official recipe (specs/elsa_swin.md 11.1; the official
# timm-based cls/train.py): mmpretrain's Swin recipe (AdamW lr 1e-3 at batch 1024, wd 0.05, grad
# clip 5, RandAugment m9, mixup 0.8, cutmix 1.0, label smoothing 0.1, random erasing 0.25) with
# the official schedule exactly: timm's CosineLRScheduler(t_initial=300, warmup_t=20,
# warmup_lr_init=1e-6, lr_min=1e-5, t_in_epochs=True), i.e. one lr per epoch, the cosine counted
# from epoch 0 with the linear warm-up over its first 20 epochs, then 10 cool-down epochs at 1e-5
# (310 in all); native AMP (--amp); train-time interpolation drawn at random between bilinear and
# bicubic for the crop and for RandAugment (--train-interpolation random); validation every
# epoch keeping the best checkpoint; crop_pct 0.9 at test (resize 248, crop 224, bicubic).
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
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomInterpolation',
         transform=dict(type='RandomResizedCrop', scale=224, backend='pillow')),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomInterpolation', key='hparams.interpolation',
         transform=dict(type='RandAugment', policies='timm_increasing', num_policies=2,
                        total_level=10, magnitude_level=9, magnitude_std=0.5,
                        hparams=dict(pad_val=[round(x) for x in bgr_mean]))),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=128, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# native AMP as the official runs (--amp); on a machine without a GPU override it with
# --cfg-options optim_wrapper.type=OptimWrapper
optim_wrapper = dict(type='AmpOptimWrapper', optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='TimmCosineLR', t_initial=300, warmup_t=20, warmup_lr_init=1e-6, lr_min=1e-5,
         by_epoch=True, begin=0, end=310),
]
train_cfg = dict(by_epoch=True, max_epochs=310, val_interval=1)
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3, save_best='accuracy/top1',
                                     rule='greater'))
auto_scale_lr = dict(enable=False, base_batch_size=1024)
