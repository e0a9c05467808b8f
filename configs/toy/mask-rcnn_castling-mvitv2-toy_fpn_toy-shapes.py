# Mask R-CNN with a small Castling-MViTv2 (width 32, one block per stage, heads 1-2-4-8) on the toy
# shapes: the ResNet-18 toy config with the CastlingMViT backbone, FPN and heads 128 channels wide
# and the AdamW recipe of the Castling detection configs (no decay on norms), for end-to-end tests
# on CPU. The masked-softmax branch is off, as in every detection config.
_base_ = './mask-rcnn_r18_fpn_toy-shapes.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='CastlingMViT',
        arch=dict(embed_dims=32, num_layers=4, num_heads=1, downscale_indices=(1, 2, 3)),
        drop_path_rate=0.,
        out_scales=(0, 1, 2, 3),
        sparse_reg=False),
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
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.))),
    clip_grad=dict(max_norm=10, norm_type=2))
