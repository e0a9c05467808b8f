# Mask R-CNN 3x with SASA-ResNet-50: the 1x config with 36 epochs (steps at 27, 33) and the
# multi-scale-and-crop training pipeline of mmdet's mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.
_base_ = ['./mask-rcnn_sasa-resnet-50_fpn_1x_coco.py',
          '../_base_/datasets/coco_ms-crop_pipeline.py']

train_dataloader = dict(dataset=dict(pipeline={{_base_.ms_crop_train_pipeline}}))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]
