# SASA-ResNet-50 (conv stem) on ImageNet-1k: the paper's App. A.2 recipe at batch 1024
# (specs/sasa_resnet.md S9). Nesterov SGD, 130 epochs, 10-epoch linear warm-up, cosine decay,
# weight EMA; no weight decay on BN and on the relative/stem embeddings.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmattn.cls'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='SASAResNet', depth=50, stem='conv', kernel_size=7, num_heads=8,
                  out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=1000, in_channels=2048,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, 5)))

train_dataloader = dict(batch_size=128)  # 8 GPUs x 128 = 1024
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.4, momentum=0.9, nesterov=True, weight_decay=1e-4),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={name: dict(decay_mult=0.)
                     for name in ('rel_h', 'rel_w', 'emb_row', 'emb_col', 'emb_mix')}))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=120, eta_min=0., by_epoch=True, begin=10, end=130,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=130, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024)

# EMA of weights and BN buffers; 0.9999 per step at batch 4096 is the same window in images as
# momentum 2.5e-5 per step at batch 1024. The EMA model is the reported one.
custom_hooks = [
    dict(type='EMAHook', momentum=2.5e-5, update_buffers=True, priority='ABOVE_NORMAL'),
]
