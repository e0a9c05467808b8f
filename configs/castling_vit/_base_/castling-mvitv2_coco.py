# Shared by the COCO configs of Castling-MViTv2 (specs/castling_vit.md D7): the backbone that
# replaces mmdet's ResNet/Swin and the AdamW recipe of mmdet's Swin-T detection configs. The
# masked-softmax branch belongs to ImageNet pretraining: off here (sparse_reg=False, no hook),
# dconv_mode as in pretraining.
castling_mvit_backbone = dict(
    _delete_=True,
    type='CastlingMViT',
    arch='tiny',
    drop_path_rate=0.1,
    out_scales=(0, 1, 2, 3),
    dconv_mode='seq1d',
    sparse_reg=False,
    # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
    init_cfg=None)
castling_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.))))
