# Mask R-CNN with a small LW-PLG-ViT on the toy shapes: the ResNet-18 toy config with a 4-stage
# PLG-ViT built with the LW-A switches (SiLU / SE 1/8 / 1x1 stride-2 + depthwise 3x3 stem and
# downsamplers, CCF-FFN+ with GRN, max-pool global window, head width 16) at widths 32-64-96-128,
# one block per stage, no final expansion conv (dense backbone), trained from scratch on CPU with
# the AdamW recipe of the PLG-ViT detection configs (no decay on norms and position tables). The
# FPN and the heads are 128 channels wide, as in the ELSA toy detector, to keep CPU runs short.
_base_ = './mask-rcnn_r18_fpn_toy-shapes.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='PLGViT',
        arch=dict(widths=(32, 64, 96, 128), depths=(1, 1, 1, 1), local_heads=(1, 2, 3, 4),
                  global_heads=(1, 2, 3, 4), split_ratios=(0.5, 0.5, 0.5, 0.5), ffn='ccf+',
                  global_pool='max', lw_conv=True, expand_channels=None),
        drop_path_rate=0.,
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[32, 64, 96, 128], out_channels=128),
    rpn_head=dict(in_channels=128, feat_channels=128),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=128),
        bbox_head=dict(in_channels=128, fc_out_channels=512),
        mask_roi_extractor=dict(out_channels=128),
        mask_head=dict(in_channels=128, conv_out_channels=128)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys=dict(
        relative_position_bias_table=dict(decay_mult=0.), norm=dict(decay_mult=0.))),
    clip_grad=dict(max_norm=10, norm_type=2))
