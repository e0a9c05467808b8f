"""Distributed data-parallel training on CPU processes (gloo), e.g. ``dist_train.sh CFG 2``
on a machine without GPUs.

mmengine 0.10.7 assumes CUDA for the 'pytorch' launcher: it calls ``torch.cuda.set_device`` and
wraps the model with ``device_ids=[LOCAL_RANK]``. :func:`setup_cpu_distributed` initialises the
gloo process group itself (mmengine then skips its own initialisation) and selects
:class:`CPUDistributedDataParallel`, which drops ``device_ids`` for CPU modules.
"""
import datetime
import os

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also wraps modules whose parameters live on the CPU."""

    def __init__(self, module: torch.nn.Module, device_ids=None, **kwargs) -> None:
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        super().__init__(module, device_ids=None if on_cpu else device_ids, **kwargs)


def setup_cpu_distributed(cfg) -> None:
    """For ``--launcher pytorch`` without CUDA: gloo process group and the CPU DDP wrapper."""
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout')
        kwargs = {} if timeout is None else {'timeout': datetime.timedelta(seconds=timeout)}
        dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']), **kwargs)
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel')
