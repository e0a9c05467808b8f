# Mask R-CNN with a small ELSA-Swin on the toy shapes: the project's demo (`make demo`).
# The ResNet-18 toy config with a 4-stage ELSA-Swin of width 32 (7x7 ELSA with the ghost head in
# stages 0-2, Swin window attention in stage 3), trained from scratch on CPU with the AdamW recipe
# of the ELSA detection configs (no decay on norms and position tables). The FPN and the heads are
# 128 channels wide instead of 256: on 128x128 images the 4-conv mask head at 256 channels costs
# more than everything else together, and the demo must finish within 10 minutes on 2 cores.
_base_ = './mask-rcnn_r18_fpn_toy-shapes.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ELSASwin',
        arch=dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), group_width=4),
        drop_path_rate=0.,
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=128),
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
