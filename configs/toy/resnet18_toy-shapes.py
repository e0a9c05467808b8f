# ResNet-18 classifier, randomly initialised, on the toy shapes (one shape per 64x64 image,
# class sub-folders), trained on CPU in minutes: mmpretrain's resnet18 with 3 classes, top-1
# accuracy and a short iteration schedule.
# Make the data first: python tools/dataset_converters/make_toy_shapes.py
_base_ = [
    'mmpretrain::_base_/models/resnet18.py',
    '../_base_/datasets/toy_cls.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmattn.cls'], allow_failed_imports=False)

num_classes = 3
max_iters = 300
model = dict(head=dict(num_classes=num_classes, topk=(1, )))

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=max_iters, eta_min=1e-4),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=32)
