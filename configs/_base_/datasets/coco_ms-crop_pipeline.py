# The multi-scale + crop COCO training pipeline of the Swin / ELSA detection recipes (mmdet's
# mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco, after DETR): flip, then either a resize of the short
# side to 480-800 (step 32, long side <= 1333) or a resize to 400/500/600, an absolute-range crop
# of 384-600 and the same 480-800 resize. A variable, not a dataloader, so that configs with
# other dataset bases can use it:
#   train_dataloader = dict(dataset=dict(pipeline={{_base_.ms_crop_train_pipeline}}))
ms_crop_train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=[(s, 1333) for s in range(480, 801, 32)],
              keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)],
              keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
              allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=[(s, 1333) for s in range(480, 801, 32)],
              keep_ratio=True)],
    ]),
    dict(type='PackDetInputs'),
]
