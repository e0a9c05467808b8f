"""Data transforms mmattn's configs use, registered into each codebase by the adapters.

``TRANSFORMS`` maps registry names to classes (imports mmcv, which every codebase has).
"""
from typing import Dict

from .transforms import RandomInterpolation, ScaleRatioFlipAug

TRANSFORMS: Dict[str, type] = {
    'RandomInterpolation': RandomInterpolation,
    'ScaleRatioFlipAug': ScaleRatioFlipAug,
}

__all__ = ['TRANSFORMS', 'RandomInterpolation', 'ScaleRatioFlipAug']
