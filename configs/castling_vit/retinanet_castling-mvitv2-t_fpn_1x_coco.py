# RetinaNet 1x with Castling-MViTv2-T: mmdet's retinanet_r50_fpn_1x (12 epochs, steps 8 and 11,
# 500-iteration warm-up, batch 8 x 2) with the CastlingMViT backbone (stages 1-3, strides 8-32),
# FPN from stride 8 with extra convs on the input (5 levels) and AdamW 1e-4, wd 0.05, no decay on
# norms (specs/castling_vit.md D7).
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/castling-mvitv2_coco.py']
custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CastlingMViT',
        arch='tiny',
        drop_path_rate=0.1,
        out_scales=(1, 2, 3),  # only the levels the FPN uses: every parameter gets a gradient
        dconv_mode='seq1d',
        sparse_reg=False,
        # ImageNet weights: init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        init_cfg=None),
    neck=dict(in_channels=[192, 384, 768], start_level=0, add_extra_convs='on_input',
              num_outs=5))
optim_wrapper = {{_base_.castling_optim_wrapper}}
