# Semantic FPN with the small LW-PLG-ViT of the toy detector (LW-A switches, widths 32-64-96-128,
# one block per stage, no expansion conv) on the toy shapes (ADE20K layout): the ResNet-18 toy
# segmentation config with mmseg's FPN neck + FPNHead in place of UperNet (the LW segmentation
# recipe, specs/plg_vit.md D11) and AdamW 1e-3 (no decay on norms and position tables).
_base_ = './upernet_r18_toy-shapes-128x128.py'

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='PLGViT',
        arch=dict(widths=(32, 64, 96, 128), depths=(1, 1, 1, 1), local_heads=(1, 2, 3, 4),
                  global_heads=(1, 2, 3, 4), split_ratios=(0.5, 0.5, 0.5, 0.5), ffn='ccf+',
                  global_pool='max', lw_conv=True, expand_channels=None),
        drop_path_rate=0.,
        out_indices=(0, 1, 2, 3)),
    neck=dict(type='FPN', in_channels=[32, 64, 96, 128], out_channels=64, num_outs=4),
    decode_head=dict(
        _delete_=True,
        type='FPNHead',
        in_channels=[64, 64, 64, 64],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=64,
        dropout_ratio=0.1,
        num_classes=3,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=None)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(
        relative_position_bias_table=dict(decay_mult=0.), norm=dict(decay_mult=0.))))
