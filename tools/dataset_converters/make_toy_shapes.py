"""Generates the toy "coloured shapes" dataset used by the demo, the toy configs and the tests.

Every image shows filled circles, squares and triangles in random saturated colours on a dark,
noisy, blotchy background. The class is the shape; the colour carries no information. The same
scenes are written in three formats, each following the conventions of the OpenMMLab codebase
that reads it::

    <out>/coco/{train,val}/000000.png                 instance detection / segmentation
    <out>/coco/annotations/instances_{train,val}.json  (COCO: xywh boxes, polygons, ids from 1)
    <out>/ade/images/{training,validation}/000000.jpg  semantic segmentation (ADE20K layout:
    <out>/ade/annotations/{training,validation}/000000.png  uint8 maps, 0 = background, which
                                                       ``reduce_zero_label=True`` ignores;
                                                       1..3 = circle, square, triangle)
    <out>/cls/{train,val}/<class>/000000.png           classification, one shape per image
                                                       (mmpretrain ``CustomDataset`` folders)

The output is a pure function of the arguments: each image draws from its own random stream,
seeded by ``(seed, part, split, index)``, so the same seed gives byte-identical files (for a
given numpy, Pillow and zlib/libjpeg), and changing ``--num-train`` leaves the other images as
they were. Only numpy and Pillow are needed. The default sizes take a few seconds.

Examples::

    python tools/dataset_converters/make_toy_shapes.py                  # everything, data/toy
    python tools/dataset_converters/make_toy_shapes.py --parts coco --num-train 50 --seed 1
"""
import argparse
import colorsys
import json
import math
import os
import os.path as osp
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle')
# palette used by the toy configs' metainfo (visualisation only)
PALETTE: Tuple[Tuple[int, int, int], ...] = ((220, 20, 60), (0, 130, 230), (250, 170, 30))
PARTS: Tuple[str, ...] = ('coco', 'ade', 'cls')
CIRCLE_VERTICES = 24
JPEG_QUALITY = 95
# shape extent as a fraction of the image side: 20-58 px on 128 px images
SCENE_SIZE_RANGE = (0.16, 0.45)
CLS_SIZE_RANGE = (0.35, 0.8)
MAX_SHAPES = 4
MAX_ROTATION_DEG = 20.0
NOISE_STD = 6.0

_SPLITS = {'coco': ('train', 'val'), 'ade': ('training', 'validation'), 'cls': ('train', 'val')}


@dataclass
class Shape:
    """One drawn shape: 0-based class index, polygon in COCO pixel coordinates, RGB colour.

    COCO coordinates: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``.
    """
    label: int
    polygon: np.ndarray  # (K, 2) float64, x then y
    color: Tuple[int, int, int]

    @property
    def bbox(self) -> List[float]:
        """``[x, y, w, h]`` of the polygon's extent."""
        x0, y0 = self.polygon.min(axis=0)
        x1, y1 = self.polygon.max(axis=0)
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]

    @property
    def area(self) -> float:
        """Polygon area (shoelace formula)."""
        x, y = self.polygon[:, 0], self.polygon[:, 1]
        return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def shape_polygon(label: int, size: float, angle_deg: float = 0.0) -> np.ndarray:
    """Vertices of a shape centred on the origin.

    Args:
        label: 0-based index into :data:`CLASSES`.
        size: diameter of a circle, side of a triangle, 0.85 x side of a square, in pixels.
        angle_deg: rotation of squares and triangles (circles ignore it).

    Returns:
        ``(K, 2)`` float64 array of ``(x, y)`` vertices (K = 24, 4 or 3).
    """
    name = CLASSES[label]
    if name == 'circle':
        t = np.arange(CIRCLE_VERTICES) * (2 * math.pi / CIRCLE_VERTICES)
        return np.stack([np.cos(t), np.sin(t)], axis=1) * (size / 2)
    if name == 'square':
        half = 0.85 * size / 2
        pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    elif name == 'triangle':  # equilateral, pointing up before rotation
        radius = size / math.sqrt(3)
        t = math.pi / 2 + np.arange(3) * (2 * math.pi / 3)
        pts = np.stack([np.cos(t), -np.sin(t)], axis=1) * radius
    else:  # pragma: no cover - CLASSES and this function change together
        raise ValueError(f'unknown shape {name!r}')
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pts @ rot.T


def _random_colors(rng: np.random.Generator, n: int) -> List[Tuple[int, int, int]]:
    """``n`` saturated, bright colours with hues at least 0.1 apart."""
    hues: List[float] = []
    while len(hues) < n:
        h = float(rng.uniform(0, 1))
        if all(min(abs(h - g), 1 - abs(h - g)) >= 0.1 for g in hues):
            hues.append(h)
    colors = []
    for h in hues:
        s, v = rng.uniform(0.55, 1.0), rng.uniform(0.75, 1.0)
        colors.append(tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v)))
    return colors


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dark, low-saturation background with smooth blotches, float32 ``(H, W, 3)``."""
    base = rng.uniform(25, 100) + rng.uniform(-15, 15, size=3)
    coarse = rng.uniform(-25, 25, size=(6, 6)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    img = base[None, None, :] + blotch[:, :, None]
    return img.astype(np.float32)


def _place(rng: np.random.Generator, img_size: int, num: int,
           size_range: Tuple[float, float]) -> List[Shape]:
    """Up to ``num`` shapes whose boxes keep at least 2 px apart and 1 px from the border."""
    shapes: List[Shape] = []
    boxes: List[Tuple[float, float, float, float]] = []
    colors = _random_colors(rng, num)
    lo, hi = size_range[0] * img_size, size_range[1] * img_size
    for color in colors:
        for _ in range(50):
            label = int(rng.integers(len(CLASSES)))
            size = float(rng.uniform(lo, hi))
            angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
            poly = shape_polygon(label, size, angle)
            pmin, pmax = poly.min(axis=0), poly.max(axis=0)
            low, high = 1 - pmin, img_size - 1 - pmax  # centre range keeping it inside
            if np.any(high < low):
                continue
            centre = rng.uniform(low, high)
            poly = poly + centre
            x0, y0 = poly.min(axis=0)
            x1, y1 = poly.max(axis=0)
            if any(x0 < bx1 + 2 and bx0 < x1 + 2 and y0 < by1 + 2 and by0 < y1 + 2
                   for bx0, by0, bx1, by1 in boxes):
                continue
            poly = np.round(poly, 2)
            boxes.append((x0, y0, x1, y1))
            shapes.append(Shape(label, poly, color))
            break
    return shapes


def render(rng: np.random.Generator, img_size: int, shapes_per_image: Tuple[int, int],
           size_range: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray, List[Shape]]:
    """Draws one scene.

    Args:
        rng: the image's random stream.
        img_size: side of the square image in pixels.
        shapes_per_image: inclusive range of the number of shapes.
        size_range: shape size range as fractions of ``img_size``.

    Returns:
        ``(image, label_map, shapes)``: uint8 RGB ``(H, W, 3)``, uint8 ``(H, W)`` with 0 for
        background and ``label + 1`` under each shape, and the shapes.
    """
    num = int(rng.integers(shapes_per_image[0], shapes_per_image[1] + 1))
    img = _background(rng, img_size, img_size)
    shapes = _place(rng, img_size, num, size_range)
    label_map = Image.new('L', (img_size, img_size), 0)
    draw = ImageDraw.Draw(label_map)
    for shape in shapes:
        mask_img = Image.new('L', (img_size, img_size), 0)
        # PIL's pixel (i, j) is centred on the integer point; COCO's on (i + .5, j + .5)
        xy = [(float(x), float(y)) for x, y in shape.polygon - 0.5]
        ImageDraw.Draw(mask_img).polygon(xy, fill=1)
        draw.polygon(xy, fill=shape.label + 1)
        mask = np.asarray(mask_img, dtype=bool)
        img[mask] = np.asarray(shape.color, dtype=np.float32)
    img += rng.normal(0, NOISE_STD, size=img.shape).astype(np.float32)
    return (np.clip(np.rint(img), 0, 255).astype(np.uint8), np.asarray(label_map, np.uint8),
            shapes)


def _rng(seed: int, part: str, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, PARTS.index(part), split, index])


def _save_png(array: np.ndarray, path: str) -> None:
    Image.fromarray(array).save(path, format='PNG')


def _make_coco(root: str, seed: int, img_size: int, counts: Sequence[int]) -> Dict[str, int]:
    written = {}
    for split_idx, (split, count) in enumerate(zip(_SPLITS['coco'], counts)):
        img_dir = osp.join(root, split)
        _makedirs(img_dir, osp.join(root, 'annotations'))
        images, annotations = [], []
        for i in range(count):
            img, _, shapes = render(_rng(seed, 'coco', split_idx, i), img_size,
                                    (1, MAX_SHAPES), SCENE_SIZE_RANGE)
            file_name = f'{i:06d}.png'
            _save_png(img, osp.join(img_dir, file_name))
            images.append(dict(id=i + 1, file_name=file_name, width=img_size, height=img_size))
            for shape in shapes:
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=shape.label + 1,
                    bbox=[round(v, 2) for v in shape.bbox], area=round(shape.area, 2),
                    iscrowd=0, segmentation=[[float(v) for v in shape.polygon.reshape(-1)]]))
        coco = dict(
            info=dict(description='mmattn toy shapes', version='1.0', year=2024,
                      contributor='tools/dataset_converters/make_toy_shapes.py',
                      url='', date_created=''),
            licenses=[],
            images=images,
            annotations=annotations,
            categories=[dict(id=k + 1, name=name, supercategory='shape')
                        for k, name in enumerate(CLASSES)])
        ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(ann_file, 'w') as f:
            json.dump(coco, f)
        written[split] = count
        written[f'{split}_instances'] = len(annotations)
    return written


def _make_ade(root: str, seed: int, img_size: int, counts: Sequence[int]) -> Dict[str, int]:
    written = {}
    for split_idx, (split, count) in enumerate(zip(_SPLITS['ade'], counts)):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        _makedirs(img_dir, ann_dir)
        for i in range(count):
            img, label_map, _ = render(_rng(seed, 'ade', split_idx, i), img_size,
                                       (1, MAX_SHAPES), SCENE_SIZE_RANGE)
            Image.fromarray(img).save(osp.join(img_dir, f'{i:06d}.jpg'), format='JPEG',
                                      quality=JPEG_QUALITY)
            _save_png(label_map, osp.join(ann_dir, f'{i:06d}.png'))
        written[split] = count
    return written


def _make_cls(root: str, seed: int, img_size: int, counts: Sequence[int]) -> Dict[str, int]:
    written = {}
    for split_idx, (split, count) in enumerate(zip(_SPLITS['cls'], counts)):
        for label, name in enumerate(CLASSES):
            class_dir = osp.join(root, split, name)
            _makedirs(class_dir)
            for i in range(count):
                rng = _rng(seed, 'cls', split_idx, label * 1_000_000 + i)
                img = _render_single(rng, img_size, label)
                _save_png(img, osp.join(class_dir, f'{i:06d}.png'))
        written[split] = count * len(CLASSES)
    return written


def _render_single(rng: np.random.Generator, img_size: int, label: int) -> np.ndarray:
    """One image with exactly one shape of class ``label``."""
    img = _background(rng, img_size, img_size)
    size = float(rng.uniform(*CLS_SIZE_RANGE)) * img_size
    poly = shape_polygon(label, size, float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)))
    low, high = 1 - poly.min(axis=0), img_size - 1 - poly.max(axis=0)
    poly = poly + rng.uniform(low, np.maximum(low, high))
    mask_img = Image.new('L', (img_size, img_size), 0)
    ImageDraw.Draw(mask_img).polygon([(float(x), float(y)) for x, y in poly - 0.5], fill=1)
    img[np.asarray(mask_img, dtype=bool)] = np.asarray(_random_colors(rng, 1)[0], np.float32)
    img += rng.normal(0, NOISE_STD, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _makedirs(*dirs: str) -> None:
    for d in dirs:
        os.makedirs(d, exist_ok=True)


def make_toy_shapes(out: str = 'data/toy', seed: int = 0, img_size: int = 128,
                    num_train: int = 200, num_val: int = 50, cls_img_size: int = 64,
                    cls_num_train: int = 100, cls_num_val: int = 20,
                    parts: Sequence[str] = PARTS) -> Dict[str, Dict[str, int]]:
    """Writes the toy dataset; each requested part's folder is replaced.

    Args:
        out: output root; the parts go to ``out/coco``, ``out/ade`` and ``out/cls``.
        seed: random seed; the same arguments give byte-identical files.
        img_size: side of the COCO and ADE images (square) in pixels.
        num_train: number of COCO and ADE training images.
        num_val: number of COCO and ADE validation images.
        cls_img_size: side of the classification images in pixels.
        cls_num_train: classification training images per class.
        cls_num_val: classification validation images per class.
        parts: any of ``'coco'``, ``'ade'``, ``'cls'``.

    Returns:
        ``{part: {split: number of images, ...}}`` of what was written.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f'parts must be among {PARTS}, got {unknown}')
    for name, value, minimum in (('img_size', img_size, 32), ('cls_img_size', cls_img_size, 16),
                                 ('num_train', num_train, 0), ('num_val', num_val, 0),
                                 ('cls_num_train', cls_num_train, 0),
                                 ('cls_num_val', cls_num_val, 0)):
        if int(value) != value or value < minimum:
            raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')
    makers = {'coco': (_make_coco, img_size, (num_train, num_val)),
              'ade': (_make_ade, img_size, (num_train, num_val)),
              'cls': (_make_cls, cls_img_size, (cls_num_train, cls_num_val))}
    summary = {}
    for part in PARTS:
        if part not in parts:
            continue
        maker, size, counts = makers[part]
        root = osp.join(out, part)
        if osp.isdir(root):
            shutil.rmtree(root)
        summary[part] = maker(root, seed, size, counts)
    return summary


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/toy',
                        help='output root (default: data/toy); the requested parts\' folders '
                        'under it are replaced')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--img-size', type=int, default=128,
                        help='side of the COCO and ADE images in pixels (default: 128)')
    parser.add_argument('--num-train', type=int, default=200,
                        help='COCO and ADE training images (default: 200)')
    parser.add_argument('--num-val', type=int, default=50,
                        help='COCO and ADE validation images (default: 50)')
    parser.add_argument('--cls-img-size', type=int, default=64,
                        help='side of the classification images in pixels (default: 64)')
    parser.add_argument('--cls-num-train', type=int, default=100,
                        help='classification training images per class (default: 100)')
    parser.add_argument('--cls-num-val', type=int, default=20,
                        help='classification validation images per class (default: 20)')
    parser.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS),
                        help='which datasets to write (default: all three)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    summary = make_toy_shapes(args.out, seed=args.seed, img_size=args.img_size,
                              num_train=args.num_train, num_val=args.num_val,
                              cls_img_size=args.cls_img_size, cls_num_train=args.cls_num_train,
                              cls_num_val=args.cls_num_val, parts=args.parts)
    for part, counts in summary.items():
        root = osp.join(args.out, part)
        if part == 'coco':
            for split in _SPLITS['coco']:
                print(f'{root}/{split}/: {counts[split]} images, {counts[split + "_instances"]} '
                      f'instances ({root}/annotations/instances_{split}.json)')
        elif part == 'ade':
            for split in _SPLITS['ade']:
                print(f'{root}/images/{split}/, {root}/annotations/{split}/: '
                      f'{counts[split]} images and label maps')
        else:
            for split in _SPLITS['cls']:
                print(f'{root}/{split}/{{{",".join(CLASSES)}}}/: {counts[split]} images')
    print(f'classes: {", ".join(CLASSES)} (seed {args.seed}, '
          f'{time.perf_counter() - start:.1f} s)')


if __name__ == '__main__':
    sys.exit(main())
