# PLG-ViT-T on ImageNet-1k (specs/plg_vit.md D11): mmpretrain's Swin recipe for 300 epochs -- batch
# 16 x 64 = 1024, AdamW lr 1e-3, wd 0.05 (none on norms, biases, 1-D parameters such as GRN's, and
# the relative position tables), 20-epoch linear warm-up, cosine to 1e-5, grad clip 5,
# RandomResizedCrop 224 bicubic, flip, RandAugment (2 ops, m9, std 0.5), random erasing 0.25,
# mixup 0.8, cutmix 1.0, label smoothing 0.1, test resize 256 -> crop 224; drop_path 0.2.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmattn.cls'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='PLGViT', arch='tiny', drop_path_rate=0.2, out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        init_cfg=None,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        dict(type='Constant', layer='LayerNorm', val=1., bias=0.),
    ],
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

optim_wrapper = dict(clip_grad=dict(max_norm=5.0))
