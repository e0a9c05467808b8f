# A small Castling-DeiT classifier (width 32, 2 layers, 2 heads, 8x8 patches) on the toy shapes:
# the ResNet-18 toy classifier with the CastlingViT backbone, the ViT class-token head, AdamW, the
# masked-softmax branch on and CastlingSwitchHook annealing it to 0 over the first half of the
# run (the ImageNet recipe's switch, at toy scale), for end-to-end tests on CPU.
_base_ = './resnet18_toy-shapes.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='CastlingViT',
        arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
        img_size=64,
        patch_size=8,
        sparse_reg=True,
        # 65 tokens: uniform attention is 1/65 > 0.01, so the mask keeps entries (at 0.02, the
        # ImageNet value for 197 tokens, it would keep almost none)
        sparse_threshold=0.01),
    neck=None,
    head=dict(
        _delete_=True,
        type='VisionTransformerClsHead',
        num_classes=3,
        in_channels=32,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., custom_keys={
        '.cls_token': dict(decay_mult=0.), '.pos_embed': dict(decay_mult=0.)}),
    clip_grad=dict(max_norm=5.0))
custom_hooks = [dict(type='CastlingSwitchHook', start=0., end=0.5)]
