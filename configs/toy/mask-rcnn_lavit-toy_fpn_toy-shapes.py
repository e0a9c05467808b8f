# Mask R-CNN with a small LaViT (width 32, 2 blocks per stage: one vanilla-attention and one
# less-attention layer each) on the toy shapes: the ResNet-18 toy config with the LaViT backbone,
# FPN and heads 128 channels wide (as the ELSA toy detector), AdamW with the LaViT parameter
# groups, and the diagonality-preserving loss (loss_dp, weight 0.1) through BackboneAuxLossHook.
_base_ = './mask-rcnn_r18_fpn_toy-shapes.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='LaViT',
        arch=dict(embed_dims=(32, 64, 128, 256), num_heads=(1, 2, 4, 8),
                  mlp_ratios=(4, 4, 4, 4), depths=(2, 2, 2, 2)),
        img_size=128,
        drop_path_rate=0.,
        dp_loss_weight=0.1,
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
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.,
                       custom_keys=dict(pos_embed=dict(decay_mult=0.),
                                        gamma=dict(decay_mult=0.))),
    clip_grad=dict(max_norm=10, norm_type=2))
custom_hooks = [dict(type='BackboneAuxLossHook')]
