# Toy "coloured shapes" classification set (tools/dataset_converters/make_toy_shapes.py): one
# shape per 64x64 image in class sub-folders, read by mmpretrain's CustomDataset. mmpretrain's
# imagenet_bs32.py with the toy paths, 64x64 inputs and no worker processes.
_base_ = 'mmpretrain::_base_/datasets/imagenet_bs32.py'

dataset_type = 'CustomDataset'
data_root = 'data/toy/cls'
classes = ('circle', 'square', 'triangle')
data_preprocessor = dict(num_classes=len(classes))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.7, 1.0)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(_delete_=True, type=dataset_type, data_root=data_root, data_prefix='train',
                 classes=classes, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_delete_=True, type=dataset_type, data_root=data_root, data_prefix='val',
                 classes=classes, pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
