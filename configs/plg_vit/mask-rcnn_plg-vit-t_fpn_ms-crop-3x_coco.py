# Mask R-CNN 3x with PLG-ViT-T: 36 epochs, steps at 27 and 33, and the multi-scale + crop
# pipeline of mmdet's Swin-T 3x config (short side 480-800, or 400/500/600 -> crop 384-600 ->
# 480-800).
_base_ = './mask-rcnn_plg-vit-t_fpn_1x_coco.py'

train_dataloader = dict(dataset=dict(pipeline={{_base_.ms_crop_train_pipeline}}))
param_scheduler = {{_base_.plg_schedule_3x}}
train_cfg = dict(max_epochs=36)
