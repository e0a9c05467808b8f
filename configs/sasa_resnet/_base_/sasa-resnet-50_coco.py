# Shared by the COCO configs of SASA-ResNet (specs/sasa_resnet.md S8-S9): the backbone that
# replaces mmdet's ResNet-50 and the attention-backbone optimiser (AdamW 1e-4, wd 0.05, no decay
# on BN and on the relative/stem tables). Used as {{_base_.sasa_backbone}} etc.
sasa_backbone = dict(
    _delete_=True,
    type='SASAResNet',
    depth=50,
    stem='conv',
    out_indices=(0, 1, 2, 3),
    frozen_stages=1,
    norm_cfg=dict(type='BN', requires_grad=True),
    norm_eval=True,
    # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
    init_cfg=None)
sasa_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={name: dict(decay_mult=0.)
                     for name in ('rel_h', 'rel_w', 'emb_row', 'emb_col', 'emb_mix')}))
