# UperNet with a small Castling-MViTv2 (as the toy detector's) on the toy shapes (ADE20K layout):
# the ResNet-18 toy config with the CastlingMViT backbone and the AdamW recipe of the Castling
# segmentation configs (no decay on norms), for end-to-end tests on CPU.
_base_ = './upernet_r18_toy-shapes-128x128.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='CastlingMViT',
        arch=dict(embed_dims=32, num_layers=4, num_heads=1, downscale_indices=(1, 2, 3)),
        drop_path_rate=0.,
        out_scales=(0, 1, 2, 3),
        sparse_reg=False),
    decode_head=dict(in_channels=[32, 64, 128, 256]),
    auxiliary_head=dict(in_channels=128))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.))))
