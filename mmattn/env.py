"""What a bug report needs: ``python -m mmattn.env`` (or ``mmattn.collect_env()``).

Versions are read from the installed distributions' metadata, so collecting them does not import
mmdet, mmsegmentation or mmpretrain (and works when one of them is broken).
"""
import os.path as osp
import platform
import sys
from collections import OrderedDict
from importlib import metadata
from typing import Dict

# distribution name -> the name shown (OpenMMLab's own spelling)
STACK = (('mmcv', 'mmcv'), ('mmengine', 'mmengine'), ('mmdet', 'mmdet'),
         ('mmsegmentation', 'mmseg'), ('mmpretrain', 'mmpretrain'),
         ('onnx', 'onnx'), ('onnxruntime', 'onnxruntime'))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return 'not installed'


def collect_env() -> Dict[str, str]:
    """mmattn's environment as ``{name: value}``: Python, mmattn (the installed build's version
    with its ``+torch...`` tag, and where it is imported from), torch and CUDA, the OpenMMLab
    stack, and whether mmattn's compiled ops (CPU, CUDA kernels) are in use, and for which torch
    they were built."""
    import torch

    import mmattn
    from mmattn.ops._ext import build_info, has_compiled_ops, has_cuda_kernels, torch_mismatch

    env: Dict[str, str] = OrderedDict()
    env['sys.platform'] = sys.platform
    env['Python'] = sys.version.replace('\n', ' ')
    env['machine'] = platform.machine()
    env['mmattn'] = f'{mmattn.__version__} (installed as {_version("mmattn")})'
    env['mmattn path'] = osp.dirname(osp.abspath(mmattn.__file__))
    env['torch'] = torch.__version__
    env['torch CUDA'] = str(torch.version.cuda)
    env['CUDA available'] = str(torch.cuda.is_available())
    if torch.cuda.is_available():
        env['GPU 0'] = torch.cuda.get_device_name(0)
    env['torchvision'] = _version('torchvision')
    for dist, name in STACK:
        env[name] = _version(dist)
    info = build_info()
    compiled = has_compiled_ops()
    env['mmattn compiled ops (CPU)'] = ('in use' if compiled else
                                        'not in use (plain-PyTorch fallback)')
    env['mmattn compiled ops (CUDA kernels)'] = 'yes' if has_cuda_kernels() else 'no'
    if info:
        flavour = f"CUDA {info['cuda']}" if info.get('cuda') else 'CPU only'
        env['mmattn ops built for'] = f"torch {info['torch']} ({flavour})"
        problem = torch_mismatch(info, torch.__version__)
        if problem:
            env['mmattn ops problem'] = problem
    else:
        env['mmattn ops built for'] = 'not recorded' if compiled else 'no compiled build'
    return env


def main() -> None:
    """Prints :func:`collect_env` one ``name: value`` per line."""
    for name, value in collect_env().items():
        print(f'{name}: {value}')


if __name__ == '__main__':
    main()
