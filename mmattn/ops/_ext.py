"""Loads the compiled extension ``mmattn._C`` (which registers ``torch.ops.mmattn.*``)."""
import logging
from functools import lru_cache

logger = logging.getLogger('mmattn')


@lru_cache(maxsize=None)
def has_compiled_ops() -> bool:
    """Whether ``mmattn._C`` is built and importable. Logs once when it is not."""
    try:
        from mmattn import _C  # noqa: F401  (importing registers the ops)
    except ImportError as e:
        logger.warning(
            'mmattn: the compiled ops (mmattn._C) are not available (%s); na2d and '
            'ghost_head_aggregate fall back to the plain-PyTorch reference, which is slower '
            'and uses much more memory. Build them with `pip install -e .` (MMATTN_WITH_OPS=1).', e)
        return False
    return True
