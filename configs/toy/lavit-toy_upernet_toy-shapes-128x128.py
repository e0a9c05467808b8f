# UperNet with a small LaViT (width 32, 2 blocks per stage: one vanilla-attention and one
# less-attention layer each) on the toy shapes (ADE20K layout): the ResNet-18 toy config with the
# LaViT backbone, AdamW with the LaViT parameter groups, and the diagonality-preserving loss
# (loss_dp, weight 0.1) added to the segmentor's losses by BackboneAuxLossHook.
_base_ = './upernet_r18_toy-shapes-128x128.py'

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
    decode_head=dict(in_channels=[32, 64, 128, 256]),
    auxiliary_head=dict(in_channels=128))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.,
                       custom_keys=dict(pos_embed=dict(decay_mult=0.),
                                        gamma=dict(decay_mult=0.))))
custom_hooks = [dict(type='BackboneAuxLossHook')]
