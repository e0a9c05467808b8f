"""tools/dataset_converters/make_toy_shapes.py: determinism, COCO/ADE/folder formats, geometry."""
import filecmp
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    'make_toy_shapes', osp.join(ROOT, 'tools', 'dataset_converters', 'make_toy_shapes.py'))
mts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mts)

SMALL = dict(img_size=96, num_train=4, num_val=3, cls_img_size=48, cls_num_train=3,
             cls_num_val=2)


def _files(root):
    return sorted(osp.relpath(osp.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('toy'))
    mts.make_toy_shapes(out, seed=3, **SMALL)
    return out


def test_same_seed_gives_identical_bytes(toy, tmp_path):
    again = str(tmp_path / 'again')
    mts.main(['--out', again, '--seed', '3', '--img-size', '96', '--num-train', '4',
              '--num-val', '3', '--cls-img-size', '48', '--cls-num-train', '3',
              '--cls-num-val', '2'])
    files = _files(toy)
    assert files == _files(again)
    assert any(f.endswith('.jpg') for f in files) and any(f.endswith('.json') for f in files)
    match, mismatch, errors = filecmp.cmpfiles(toy, again, files, shallow=False)
    assert mismatch == [] and errors == []


def test_different_seed_differs(toy, tmp_path):
    other = str(tmp_path / 'other')
    mts.make_toy_shapes(other, seed=4, **SMALL)
    files = _files(toy)
    _, mismatch, _ = filecmp.cmpfiles(toy, other, files, shallow=False)
    assert len(mismatch) == len(files)


def test_images_do_not_depend_on_the_split_sizes(toy, tmp_path):
    more = str(tmp_path / 'more')
    mts.make_toy_shapes(more, seed=3, parts=['ade'], **dict(SMALL, num_train=5))
    assert filecmp.cmp(osp.join(toy, 'ade/images/training/000003.jpg'),
                       osp.join(more, 'ade/images/training/000003.jpg'), shallow=False)
    assert osp.isfile(osp.join(more, 'ade/images/training/000004.jpg'))
    assert not osp.exists(osp.join(more, 'coco'))


def test_coco_loads_and_boxes_match_polygons(toy):
    COCO = pytest.importorskip('pycocotools.coco').COCO
    for split, count in (('train', SMALL['num_train']), ('val', SMALL['num_val'])):
        ann_file = osp.join(toy, 'coco', 'annotations', f'instances_{split}.json')
        coco = COCO(ann_file)
        assert sorted(coco.getImgIds()) == list(range(1, count + 1))
        cats = coco.loadCats(coco.getCatIds())
        assert [(c['id'], c['name']) for c in cats] == [(1, 'circle'), (2, 'square'),
                                                         (3, 'triangle')]
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) >= count
        ids_per_image = {}
        for ann in anns:
            img = coco.loadImgs(ann['image_id'])[0]
            ids_per_image.setdefault(ann['image_id'], []).append(ann)
            assert osp.isfile(osp.join(toy, 'coco', split, img['file_name']))
            assert ann['iscrowd'] == 0 and ann['category_id'] in (1, 2, 3)
            poly = np.asarray(ann['segmentation'][0]).reshape(-1, 2)
            assert len(poly) == {1: mts.CIRCLE_VERTICES, 2: 4, 3: 3}[ann['category_id']]
            x, y, w, h = ann['bbox']
            np.testing.assert_allclose([x, y, x + w, y + h],
                                       [*poly.min(axis=0), *poly.max(axis=0)], atol=0.02)
            assert 0 <= x and 0 <= y and x + w <= img['width'] and y + h <= img['height']
            assert 8 <= w <= 0.6 * img['width'] and 8 <= h <= 0.6 * img['height']
            # the rasterised polygon covers about its area, all of it inside the box
            mask = coco.annToMask(ann)
            assert abs(mask.sum() - ann['area']) <= 0.15 * ann['area']
            ys, xs = np.nonzero(mask)
            assert xs.min() >= int(x) and xs.max() <= x + w and ys.min() >= int(y)
            assert ys.max() <= y + h
        assert all(1 <= len(a) <= mts.MAX_SHAPES for a in ids_per_image.values())


def test_coco_pixels_show_the_shapes(toy):
    """Inside each shape the image is one bright colour (plus noise); the background is dark."""
    coco = json.load(open(osp.join(toy, 'coco', 'annotations', 'instances_train.json')))
    ann = coco['annotations'][0]
    img = np.asarray(Image.open(osp.join(toy, 'coco', 'train', '000000.png')), np.float32)
    assert img.shape == (SMALL['img_size'], SMALL['img_size'], 3)
    poly = np.asarray(ann['segmentation'][0]).reshape(-1, 2)
    cx, cy = poly.mean(axis=0).astype(int)
    inside = img[cy - 2:cy + 3, cx - 2:cx + 3].reshape(-1, 3)
    assert inside.std(axis=0).max() < 4 * mts.NOISE_STD
    assert inside.mean(axis=0).max() > 150


def test_ade_label_maps_match_the_drawn_shapes(toy):
    for split, count in (('training', SMALL['num_train']), ('validation', SMALL['num_val'])):
        imgs = sorted(os.listdir(osp.join(toy, 'ade', 'images', split)))
        maps = sorted(os.listdir(osp.join(toy, 'ade', 'annotations', split)))
        assert imgs == [f'{i:06d}.jpg' for i in range(count)]
        assert maps == [f'{i:06d}.png' for i in range(count)]
        for name in maps:
            label = Image.open(osp.join(toy, 'ade', 'annotations', split, name))
            assert label.mode == 'L' and label.size == (SMALL['img_size'],) * 2
            label = np.asarray(label)
            values = set(np.unique(label).tolist())
            assert 0 in values and values <= {0, 1, 2, 3} and len(values) >= 2
            img = np.asarray(Image.open(osp.join(toy, 'ade', 'images', split,
                                                 name.replace('.png', '.jpg'))), np.float32)
            # shapes are bright and saturated, the background dark: brightness separates them
            brightness = img.max(axis=2)
            assert np.median(brightness[label > 0]) > np.median(brightness[label == 0]) + 60


def test_ade_labels_are_the_rendered_scene():
    rng = np.random.default_rng(0)
    img, label, shapes = mts.render(rng, 96, (4, 4), mts.SCENE_SIZE_RANGE)
    assert len(shapes) >= 2
    for shape in shapes:
        x, y, w, h = shape.bbox
        ys, xs = np.nonzero(label == shape.label + 1)
        inside = (xs >= x - 1) & (xs <= x + w) & (ys >= y - 1) & (ys <= y + h)
        mine = inside.sum()
        assert abs(mine - shape.area) <= 0.15 * shape.area
        cx, cy = shape.polygon.mean(axis=0).astype(int)
        assert label[cy, cx] == shape.label + 1


def test_cls_folders(toy):
    for split, count in (('train', SMALL['cls_num_train']), ('val', SMALL['cls_num_val'])):
        root = osp.join(toy, 'cls', split)
        assert sorted(os.listdir(root)) == list(mts.CLASSES)
        for name in mts.CLASSES:
            files = sorted(os.listdir(osp.join(root, name)))
            assert files == [f'{i:06d}.png' for i in range(count)]
            img = Image.open(osp.join(root, name, files[0]))
            assert img.mode == 'RGB' and img.size == (SMALL['cls_img_size'],) * 2


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='parts'):
        mts.make_toy_shapes(str(tmp_path), parts=['voc'])
    with pytest.raises(ValueError, match='img_size'):
        mts.make_toy_shapes(str(tmp_path), img_size=8)
    with pytest.raises(SystemExit):
        mts.main(['--parts', 'voc'])
