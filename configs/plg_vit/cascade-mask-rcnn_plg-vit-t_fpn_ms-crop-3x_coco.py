# Cascade Mask R-CNN 3x with PLG-ViT-T: mmdet's Cascade Mask R-CNN with the Swin detection heads
# (three ConvFCBBoxHead stages: 4 shared convs + 1 fc with SyncBN, decoded-box GIoU loss of weight
# 10, target stds 0.1/0.2, 0.05/0.1, 0.033/0.067), the multi-scale + crop pipeline, AdamW 1e-4,
# 36 epochs with steps at 27 and 33, drop_path 0.2 (specs/plg_vit.md D11).
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    './_base_/plg-vit_coco.py',
]
custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)


def _stage(stds):
    return dict(
        type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=256,
        conv_out_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                        target_stds=stds),
        reg_class_agnostic=False, reg_decoded_bbox=True,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


model = dict(
    backbone={{_base_.plg_backbone}},
    neck=dict(in_channels=[64, 128, 256, 512]),
    roi_head=dict(bbox_head=[_stage([0.1, 0.1, 0.2, 0.2]), _stage([0.05, 0.05, 0.1, 0.1]),
                             _stage([0.033, 0.033, 0.067, 0.067])]))
del _stage
train_dataloader = dict(batch_size=2, dataset=dict(pipeline={{_base_.ms_crop_train_pipeline}}))
optim_wrapper = {{_base_.plg_optim_wrapper}}
param_scheduler = {{_base_.plg_schedule_3x}}
train_cfg = dict(max_epochs=36)
