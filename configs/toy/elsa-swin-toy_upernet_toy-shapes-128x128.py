# UperNet with a small ELSA-Swin (width 32, as the demo's detector) on the toy shapes (ADE20K
# layout): the ResNet-18 toy config with the ELSA backbone and the AdamW recipe of the ELSA
# segmentation configs (no decay on norms and position tables), for end-to-end tests on CPU.
_base_ = './upernet_r18_toy-shapes-128x128.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ELSASwin',
        arch=dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), group_width=4),
        drop_path_rate=0.,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[32, 64, 128, 256]),
    auxiliary_head=dict(in_channels=128))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(
        relative_position_bias_table=dict(decay_mult=0.), norm=dict(decay_mult=0.))))
