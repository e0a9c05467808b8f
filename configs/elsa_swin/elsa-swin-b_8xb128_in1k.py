# ELSA-Swin-B on ImageNet-1k: the ELSA-Swin-T recipe with drop_path 0.5 and a weight EMA (decay
# 0.99992 per step, i.e. momentum 8e-5); the EMA weights are the reported model (84.0 top-1).
# mmengine's EMAHook swaps the EMA weights in for validation, so the per-epoch validation and the
# best checkpoint (save_best) use the EMA model's metric, as the official run did.
_base_ = './elsa-swin-t_8xb128_in1k.py'

model = dict(backbone=dict(arch='b', drop_path_rate=0.5), head=dict(in_channels=1024))
custom_hooks = [dict(type='EMAHook', momentum=8e-5, priority='ABOVE_NORMAL')]
