"""mmattn: attention backbones for dense prediction as an OpenMMLab 2.x plugin.

Importing ``mmattn`` is cheap and never imports mmdet, mmsegmentation or mmpretrain. Use one of
the adapters in a config to register the backbones into a codebase::

    custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)
"""
from .version import __version__

__all__ = ['__version__']
