"""Builds mmattn and its compiled operators ``mmattn._C``.

Environment variables:
    MMATTN_WITH_OPS=0   skip compiling; the ops then fall back to plain PyTorch.
    FORCE_CUDA=1        compile the CUDA kernels even when torch reports no GPU
                        (needs a CUDA build of torch and ``CUDA_HOME``).
    MAX_JOBS            parallel compile jobs (ninja).
"""
import glob
import os
import os.path as osp

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
CSRC = osp.join('mmattn', 'ops', 'csrc')


def get_version() -> str:
    scope: dict = {}
    with open(osp.join(ROOT, 'mmattn', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def get_extensions() -> list:
    """The ``mmattn._C`` extension: C++ kernels always, CUDA kernels when available."""
    if os.getenv('MMATTN_WITH_OPS', '1') == '0':
        return []
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob(osp.join(CSRC, '*.cpp')) + glob.glob(osp.join(CSRC, 'cpu', '*.cpp')))
    # No -std flag: torch's BuildExtension adds the standard its headers need (C++20 from torch
    # 2.13 on; torch >= 2.14 rejects C++17), and nvcc refuses a second -std.
    cxx_flags = ['-O3', '-fopenmp']
    define_macros = []
    with_cuda = torch.cuda.is_available() or os.getenv('FORCE_CUDA', '0') == '1'
    if with_cuda and torch.version.cuda is None:
        raise RuntimeError('FORCE_CUDA=1 needs a CUDA build of torch; this torch is '
                           f'{torch.__version__} without CUDA.')
    include_dirs = [osp.join(ROOT, CSRC)]
    if with_cuda:
        sources += sorted(glob.glob(osp.join(CSRC, 'cuda', '*.cu')))
        define_macros.append(('MMATTN_WITH_CUDA', None))
        return [CUDAExtension(
            'mmattn._C', sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={'cxx': cxx_flags,
                                'nvcc': ['-O3', '--expt-relaxed-constexpr']},
            extra_link_args=['-fopenmp'])]
    return [CppExtension(
        'mmattn._C', sources, include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args={'cxx': cxx_flags}, extra_link_args=['-fopenmp'])]


def get_cmdclass() -> dict:
    if os.getenv('MMATTN_WITH_OPS', '1') == '0':
        return {}
    from torch.utils.cpp_extension import BuildExtension
    return {'build_ext': BuildExtension.with_options(use_ninja=True)}


setup(
    name='mmattn',
    version=get_version(),
    description='Attention backbones for dense prediction as an OpenMMLab 2.x plugin',
    long_description=open(osp.join(ROOT, 'README.md')).read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['mmattn', 'mmattn.*']),
    install_requires=['torch>=2.1', 'mmengine>=0.10,<1.0', 'numpy'],
    extras_require={'det': ['mmdet>=3.3,<3.4'], 'seg': ['mmsegmentation>=1.2,<1.3'],
                    'cls': ['mmpretrain>=1.2,<1.3']},
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
    zip_safe=False,
)
