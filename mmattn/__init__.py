"""mmattn: attention backbones for dense prediction as an OpenMMLab 2.x plugin.

Importing ``mmattn`` is cheap and never imports mmdet, mmsegmentation or mmpretrain. Use one of
the adapters in a config to register the backbones into a codebase::

    custom_imports = dict(imports=['mmattn.det'], allow_failed_imports=False)

``python -m mmattn.env`` prints the versions and compiled-op status a bug report needs.
"""
from .version import __version__


def collect_env() -> dict:
    """Versions and compiled-op status for a bug report (see :mod:`mmattn.env`)."""
    from .env import collect_env as _collect
    return _collect()


__all__ = ['__version__', 'collect_env']
