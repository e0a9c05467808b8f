# Shared by the COCO and ADE20K configs of LaViT (specs/lavit.md 6): the backbone that replaces
# the stock one (every mmattn LaViT config adds loss_dp through BackboneAuxLossHook) and the
# parameter groups of every LaViT config: no weight decay on norms, biases, position embeddings
# and the attention-residual layer scales; Theta/Psi deviations and attn_res convolutions decay.
lavit_backbone = dict(
    _delete_=True,
    type='LaViT',
    arch='t',
    img_size=224,  # the ImageNet checkpoint's grid; other sizes resize the position embeddings
    drop_path_rate=0.1,
    dp_loss_weight=0.1,
    out_indices=(0, 1, 2, 3),
    # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
    init_cfg=None)
lavit_paramwise_cfg = dict(
    norm_decay_mult=0.,
    bias_decay_mult=0.,
    custom_keys=dict(pos_embed=dict(decay_mult=0.), gamma=dict(decay_mult=0.)))
custom_hooks = [dict(type='BackboneAuxLossHook')]
