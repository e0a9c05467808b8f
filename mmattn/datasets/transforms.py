"""Transforms for the papers' protocols that OpenMMLab 2.x does not provide as such.

* :class:`ScaleRatioFlipAug`: mmseg 0.x's ``MultiScaleFlipAug(img_scale, img_ratios, flip=True)``,
  the ADE20K "ms+flip" test of the papers: every ratio scales the configured *test scale*
  (keep-ratio resize into ``(int(W * r), int(H * r))``), not the image. mmseg 1.x's stock
  ``tta_pipeline`` (``Resize(scale_factor=r)``) scales the original image instead, which differs
  for every image whose short side is not the test scale's.
* :class:`RandomInterpolation`: timm's ``--train-interpolation random``, a transform applied
  with an interpolation drawn at random (bilinear or bicubic) for each image.
"""
import copy
import random
from typing import List, Sequence, Tuple

from mmcv.transforms import BaseTransform, TestTimeAug
from mmcv.transforms.builder import TRANSFORMS

PAPER_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def ratio_scales(scale: Tuple[int, int], ratios: Sequence[float]) -> List[Tuple[int, int]]:
    """mmseg 0.x's scales of ``MultiScaleFlipAug``: ``(int(W * r), int(H * r))`` per ratio."""
    return [(int(scale[0] * r), int(scale[1] * r)) for r in ratios]


class ScaleRatioFlipAug(TestTimeAug):
    """Multi-scale (+ flip) test-time augmentation at ratios of a fixed test scale.

    Args:
        scale (tuple[int, int]): the test scale ``(long, short)`` edges the keep-ratio resize
            fits the image into, e.g. ``(2048, 512)`` for ADE20K.
        ratios (sequence[float]): ratios of ``scale``. Defaults to the papers' six,
            0.5 to 1.75.
        flip (bool): add a horizontally flipped copy of every scale. Defaults to True.
        transforms (list[dict]): applied to every augmented copy after the resize and flip,
            e.g. ``[dict(type='LoadAnnotations'), dict(type='PackSegInputs')]``.
    """

    def __init__(self, scale: Tuple[int, int], ratios: Sequence[float] = PAPER_RATIOS,
                 flip: bool = True, transforms: Sequence[dict] = ()) -> None:
        if len(scale) != 2 or not all(isinstance(s, int) and s > 0 for s in scale):
            raise ValueError(f'scale must be two positive ints (W, H), got {scale!r}')
        if not ratios or not all(r > 0 for r in ratios):
            raise ValueError(f'ratios must be positive numbers, got {ratios!r}')
        self.scale, self.ratios, self.flip = tuple(scale), tuple(ratios), flip
        self.scales = ratio_scales(self.scale, self.ratios)
        resizes = [dict(type='Resize', scale=s, keep_ratio=True) for s in self.scales]
        flips = [dict(type='RandomFlip', prob=0., direction='horizontal')]
        if flip:
            flips.append(dict(type='RandomFlip', prob=1., direction='horizontal'))
        super().__init__([resizes, flips] + [[copy.deepcopy(t)] for t in transforms])

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(scale={self.scale}, ratios={self.ratios}, '
                f'flip={self.flip}: scales {self.scales})')


def _set_key(cfg: dict, key: str, value) -> dict:
    """``cfg`` with the (dotted) ``key`` set to ``value``, e.g. ``hparams.interpolation``."""
    cfg = copy.deepcopy(cfg)
    node = cfg
    *parents, last = key.split('.')
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TypeError(f'key {key!r}: {part!r} of the transform is not a dict')
    node[last] = value
    return cfg


class RandomInterpolation(BaseTransform):
    """Applies ``transform`` with an interpolation drawn at random for each call.

    Args:
        transform (dict): the transform's config, without the interpolation.
        interpolations (sequence[str]): the choices. Defaults to bilinear and bicubic (timm's
            ``random``).
        key (str): the transform's argument that takes the interpolation; dotted for nested
            dicts, e.g. ``'hparams.interpolation'`` for RandAugment's geometric policies.
            Defaults to ``'interpolation'``.
    """

    def __init__(self, transform: dict, interpolations: Sequence[str] = ('bilinear', 'bicubic'),
                 key: str = 'interpolation') -> None:
        if not isinstance(transform, dict) or 'type' not in transform:
            raise TypeError(f'transform must be a transform config dict, got {transform!r}')
        if len(interpolations) < 1:
            raise ValueError('interpolations must name at least one interpolation')
        self.interpolations, self.key = tuple(interpolations), key
        self.transforms = [TRANSFORMS.build(_set_key(transform, key, i))
                           for i in self.interpolations]

    def transform(self, results: dict) -> dict:
        return random.choice(self.transforms)(results)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}({self.transforms[0]!r}, {self.key} in '
                f'{self.interpolations})')
