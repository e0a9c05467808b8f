"""Builds mmattn and its compiled operators ``mmattn._C``.

Install into an environment that already has torch, with pip's build isolation off (isolation
hides the installed torch, and the ops must be compiled against it)::

    pip install --no-build-isolation .        # or -e . for a checkout you edit

With the ops compiled, the version carries the torch build in its local tag
(``0.1.0+torch2.14.1.cpu``, ``0.1.0+torch2.14.1.cu130``), and ``mmattn/ops/_build.json``
records it, so that importing mmattn under another torch falls back to the plain-PyTorch ops
with a warning instead of failing on undefined symbols.

Environment variables:
    MMATTN_WITH_OPS=0   skip compiling (no torch needed to install); the ops then fall back to
                        plain PyTorch.
    FORCE_CUDA=1        compile the CUDA kernels even when torch reports no GPU
                        (needs a CUDA build of torch and ``CUDA_HOME``).
    MAX_JOBS            parallel compile jobs (ninja).
"""
import glob
import json
import os
import os.path as osp
import platform
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
CSRC = osp.join('mmattn', 'ops', 'csrc')
WITH_OPS = os.getenv('MMATTN_WITH_OPS', '1') != '0'
# The vectorised CPU kernels are built once per ATen CPU capability; cpu/isa/*_<isa>.cpp get these
# flags (x86-64 only; elsewhere only the DEFAULT build of the same code exists).
ISA_FLAGS = {
    'avx2': ['-mavx2', '-mfma', '-mf16c', '-mbmi2'],
    'avx512': ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mavx2', '-mfma', '-mf16c',
               '-mbmi2'],
}


def isa_sources() -> dict:
    """{isa: sources} of the per-capability kernel builds for this machine's architecture."""
    if platform.machine().lower() not in ('x86_64', 'amd64'):
        return {}
    return {isa: sorted(glob.glob(osp.join(CSRC, 'cpu', 'isa', f'*_{isa}.cpp')))
            for isa in ISA_FLAGS}

NO_TORCH = """
mmattn: torch is not importable by this build, and mmattn's operators are compiled against it.

  1. Install torch (and torchvision, mmcv, mmengine, mmdet / mmsegmentation / mmpretrain) first;
     README.md, "Install into your own environment", lists the tested versions.
  2. Install mmattn with pip's build isolation off, so the build sees that torch:
         pip install --no-build-isolation .        (or: pip install --no-build-isolation -e .)

Without compiled operators (plain-PyTorch fallbacks, slower): MMATTN_WITH_OPS=0 pip install .
"""


def import_torch():
    """torch, or a clear message and exit (no traceback) when the build cannot import it."""
    try:
        import torch
    except ImportError:
        sys.exit(NO_TORCH)
    return torch


def with_cuda(torch) -> bool:
    return torch.cuda.is_available() or os.getenv('FORCE_CUDA', '0') == '1'


def build_tag(torch) -> str:
    """The local version tag of a build with compiled ops: ``torch<version>.<cpu|cuXYZ>``."""
    flavour = 'cu' + torch.version.cuda.replace('.', '') if with_cuda(torch) and \
        torch.version.cuda else 'cpu'
    return f"torch{torch.__version__.split('+')[0]}.{flavour}"


def get_version() -> str:
    scope: dict = {}
    with open(osp.join(ROOT, 'mmattn', 'version.py')) as f:
        exec(f.read(), scope)
    version = scope['__version__']
    if WITH_OPS:
        version += '+' + build_tag(import_torch())
    return version


def build_info(torch, version: str) -> dict:
    """What ``mmattn/ops/_build.json`` records (read by ``mmattn.ops._ext`` at import)."""
    return dict(mmattn=version, torch=torch.__version__,
                cuda=torch.version.cuda if with_cuda(torch) else None)


def get_extensions() -> list:
    """The ``mmattn._C`` extension: C++ kernels always, CUDA kernels when available."""
    if not WITH_OPS:
        return []
    torch = import_torch()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob(osp.join(CSRC, '*.cpp')) + glob.glob(osp.join(CSRC, 'cpu', '*.cpp')))
    # No -std flag: torch's BuildExtension adds the standard its headers need (C++20 from torch
    # 2.13 on; torch >= 2.14 rejects C++17), and nvcc refuses a second -std.
    cxx_flags = ['-O3', '-fopenmp']
    define_macros = [(f'MMATTN_HAVE_{isa.upper()}', None) for isa, srcs in isa_sources().items()
                     if srcs]
    cuda = with_cuda(torch)
    if cuda and torch.version.cuda is None:
        raise RuntimeError('FORCE_CUDA=1 needs a CUDA build of torch; this torch is '
                           f'{torch.__version__} without CUDA.')
    include_dirs = [osp.join(ROOT, CSRC)]
    if cuda:
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
    if not WITH_OPS:
        return {}
    torch = import_torch()
    from torch.utils.cpp_extension import BuildExtension

    class BuildExtensionWithRecord(BuildExtension):
        """torch's ``BuildExtension`` that also writes ``_build.json`` next to the extension
        (in the wheel, or in the checkout for an editable install)."""

        def build_extension(self, ext) -> None:
            # Per-file flags, which torch's ninja build does not have: the capability builds are
            # compiled first, with their -m flags, and linked in as extra objects.
            cflags = ext.extra_compile_args
            cflags = list(cflags['cxx'] if isinstance(cflags, dict) else cflags)
            objects = []
            for isa, sources in isa_sources().items():
                if sources:
                    objects += self.compiler.compile(
                        sources, output_dir=self.build_temp, macros=ext.define_macros,
                        include_dirs=ext.include_dirs, extra_postargs=cflags + ISA_FLAGS[isa],
                        depends=ext.depends)
            ext.extra_objects = list(ext.extra_objects or []) + objects
            super().build_extension(ext)

        def run(self) -> None:
            super().run()
            package = osp.dirname(self.get_ext_fullpath('mmattn._C'))
            path = osp.join(package, 'ops', '_build.json')
            os.makedirs(osp.dirname(path), exist_ok=True)
            with open(path, 'w') as f:
                json.dump(build_info(torch, VERSION), f, indent=1)
                f.write('\n')

    return {'build_ext': BuildExtensionWithRecord.with_options(use_ninja=True)}


VERSION = get_version()

setup(
    name='mmattn',
    version=VERSION,
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
